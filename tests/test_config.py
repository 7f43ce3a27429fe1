"""runtime/config.py: the get_config(arg) mini-language, the validate() checks, and the checked command line."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from conftest import REPO
from sotalign_jax.runtime import config as cfg_lib

CONFIGS = ("sotalign", "cmcr", "match", "alignment_scores")


SOTALIGN_CONFIG = os.path.join(REPO, "configs", "proj", "sotalign", "config.py")  # a preset of the engine


def config_module(name):
  proj = os.path.join(REPO, "configs", "proj", name, "config.py")
  return cfg_lib.config_module(proj if os.path.exists(proj) else os.path.join(REPO, "configs", f"{name}.py"))


# ---- parse_arg ----------------------------------------------------------------------------------------------------
PRESETS = {"demo": {}, "smoke": {"tiny": True, "n_pairs": 64, "steps": 20}, "long": {"steps": 3000, "lr": 0.5},
           "sweep": {"sizes": (1, 2)}}


def parse(arg):
  return cfg_lib.parse_arg(arg, presets=PRESETS, n_pairs=500, steps=600, lr=1e-3, name="cca", tiny=False,
                           sizes=())


def test_parse_arg_defaults_and_typed_values():
  assert parse(None).to_dict() == {"n_pairs": 500, "steps": 600, "lr": 1e-3, "name": "cca", "tiny": False,
                                   "sizes": ()}
  assert parse("") == parse(None)
  got = parse("n_pairs=64,lr=0.5,name=ridge,tiny=true")
  assert (got.n_pairs, got.lr, got.name, got.tiny) == (64, 0.5, "ridge", True)
  assert isinstance(got.n_pairs, int) and isinstance(got.lr, float)
  assert parse("lr=2").lr == 2.0 and isinstance(parse("lr=2").lr, float)
  assert parse("tiny").tiny is True and parse("smoke,tiny=false").tiny is False  # a bare bool field sets True
  assert isinstance(parse(None), ml_collections.ConfigDict)


def test_parse_arg_composes_presets_and_fields_left_to_right():
  got = parse("demo,smoke,n_pairs=100")
  assert (got.tiny, got.n_pairs, got.steps) == (True, 100, 20)
  assert parse("n_pairs=100,smoke").n_pairs == 64  # a later preset overrides an earlier field
  got = parse("smoke,long")
  assert (got.tiny, got.n_pairs, got.steps, got.lr) == (True, 64, 3000, 0.5)
  assert parse("long,smoke").steps == 20
  assert parse(" smoke , steps=7 ").steps == 7
  assert parse("sweep").sizes == (1, 2)


@pytest.mark.parametrize("arg, message", [
    ("smok", "unknown name 'smok'"),
    ("n_paris=3", "unknown key 'n_paris'"),
    ("n_pairs", "it needs a value"),
    ("n_pairs=1.5", "n_pairs=1.5: expected an int"),
    ("lr=fast", "lr=fast: expected a float"),
    ("tiny=maybe", "tiny=maybe: expected a bool"),
    ("sizes=1", "sizes is a tuple"),
])
def test_parse_arg_rejects_unknown_names_and_bad_values(arg, message):
  with pytest.raises(ValueError, match=message) as e:
    parse(arg)
  if "unknown" in message:  # the known presets and keys are listed
    assert "presets: demo, smoke, long, sweep" in str(e.value) and "n_pairs=500" in str(e.value)


def test_parse_arg_rejects_a_preset_setting_an_undeclared_field():
  with pytest.raises(ValueError, match=r"preset 'bad' sets undeclared field\(s\) \['n_pair'\]"):
    cfg_lib.parse_arg("bad", presets={"bad": {"n_pair": 3}}, n_pairs=1)


# ---- the config files -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_every_preset_builds_and_the_default_is_the_first(name):
  module = config_module(name)
  first = next(iter(module.PRESETS))
  assert module.get_config().to_dict() == module.get_config(first).to_dict()
  for preset in module.PRESETS:
    cfg = module.get_config(preset)
    assert "eval_every" not in cfg
    for key in ("methods", "data.n_pairs_sweep", "data.base_splits", "n_base_sweep", "metrics", "image_encoders"):
      try:
        value = cfg_lib.get(cfg, key)
      except AttributeError:
        continue
      assert isinstance(value, tuple), (name, preset, key)  # lists are tuples, never comma strings


def test_presets_compose_in_the_config_argument():
  cfg = config_module("sotalign").get_config("demo,smoke,steps=100")
  h = cfg.hparams.sotalign
  assert (cfg.n_pairs, h.steps, h.batch_paired, h.teacher_dim, cfg.hparams.cca.dim) == ((64,), 100, 32, 16, 16)
  cfg = config_module("sotalign").get_config("sotalign,steps=50,seeds=3")
  assert (cfg.methods, cfg.hparams.sotalign.steps, cfg.hparams.sotalign.batch_paired, cfg.seeds) == (
      ("sotalign",), 50, 256, 3)
  cfg = config_module("cmcr").get_config("smoke,source=demo")
  assert (cfg.data.source, cfg.head.kind, cfg.head.dim, cfg.steps) == ("demo", "linear", 32, 60)
  cfg = config_module("match").get_config("quick,seeds=1")
  assert (cfg.seeds, cfg.data.test_size, cfg.hparams.qap.n_init) == (1, 200, 20)
  assert cfg.variants.qap_both.to_dict() == {"method": "qap", "stretch": "queries", "base": "cluster",
                                             "select_from": 3000, "cluster_iter": 50}


def test_the_sotalign_preset_runs_registered_methods_with_its_recipe_as_hparams():
  """One meaning per method name: the preset's rows are registry methods; its recipe is their options."""
  from sotalign_jax import aligners  # pylint: disable=g-import-not-at-top
  s, c = config_module("sotalign").get_config("full"), config_module("cmcr").get_config("byo")
  for m in s.methods:
    assert set(s.hparams[m]) <= set(aligners.get(m).defaults), m
    assert (s.hparams[m].center, s.hparams[m].normalize) == ("pairs", False), m
  assert (s.hparams.cca.dim, s.hparams.cca.reg, s.hparams.ridge.lam) == (256, 0.1, 10.0)
  assert (s.hparams.sotalign.alpha, s.hparams.sotalign.eps_teacher, s.hparams.sotalign.steps) == (10.0, 0.005, 3000)
  assert s.hparams.sotalign_paper.steps == 2000 and s.hparams.sotalign_paper.normalize  # the paper's own recipe
  assert s.hparams.sail.head == "linear" and s.hparams.sail.optimizer == c.optimizer == "adamw"


def test_the_presets_validate():
  for name in CONFIGS:
    module = config_module(name)
    for preset in module.PRESETS:
      if name != "cmcr" or preset == "demo":  # the other C-MCR presets need .npy paths
        module.validate(module.get_config(preset))


def with_values(cfg, **values):
  for key, value in values.items():
    *parents, leaf = key.split("__")
    setattr(cfg_lib.get(cfg, ".".join(parents)) if parents else cfg, leaf, value)
  return cfg


@pytest.mark.parametrize("name, arg, values, message", [
    ("sotalign", None, {"hparams__sail__head": "transformer"}, "config.hparams.sail.head must be one of"),
    ("sotalign", None, {"methods": ("sotalign", "magic")}, r"config.methods: unknown method\(s\) \['magic'\]"),
    ("sotalign", None, {"methods": ()}, r"config.methods: unknown method\(s\) \[\]"),
    ("sotalign", None, {"n_pairs": (100, -2)}, "config.n_pairs must be a tuple"),
    ("sotalign", None, {"hparams__nnclr__optimizer": "sgdd"}, "config.hparams.nnclr.optimizer: optax has no optimizer"),
    ("sotalign", None, {"data__split": "train"}, "config.data.split"),
    ("cmcr", None, {"temperature": 0.0}, "config.temperature must be > 0"),
    ("cmcr", None, {"head__dim": -1}, "config.head.dim must be a positive integer"),
    ("cmcr", "smoke", {}, r"config.data.source='npy' needs config.data.\{a_memory,b,b_prime,c_memory,a_eval,c_eval\}"),
    ("match", "smoke", {"select_from": 5}, r"config.variants.\w+_(cluster|both).select_from=5 \(config.select_from\)"),
    ("match", "smoke", {"evals__q100__lap": "magic"}, "config.evals.q100.lap must be one of"),
    ("match", "smoke", {"n_pairs": (10, "x")}, "config.n_pairs must be a tuple"),
    ("match", "smoke", {"hparams__qap__nope": 0}, r"unknown option\(s\) \['nope'\] of qap"),
    ("alignment_scores", "smoke", {"primary": "cknna"}, "config.primary='cknna' must be one of config.metrics"),
])
def test_validate_names_the_bad_key(name, arg, values, message):
  module = config_module(name)
  with pytest.raises(ValueError, match=message):
    module.validate(with_values(module.get_config(arg), **values))


def test_check_helpers_name_the_dotted_key():
  cfg = ml_collections.ConfigDict({"methods": ("a", "c"), "steps": 0, "sizes": (3, 1), "cap": -1,
                                   "opt": {"lr": -1.0, "wd": -0.1, "n": 1.5, "kind": "x"}})
  with pytest.raises(ValueError, match=r"config.methods: unknown method\(s\) \['c'\]; choose from \['a', 'b'\]"):
    cfg_lib.check_subset(cfg, "methods", ("a", "b"))
  assert cfg_lib.check_subset(cfg, "methods", ("a", "c")) == ("a", "c")
  empty = ml_collections.ConfigDict({"m": ()})
  with pytest.raises(ValueError, match=r"config.m: unknown metric\(s\) \[\]"):
    cfg_lib.check_subset(empty, "m", ("a",), what="metric")
  assert cfg_lib.check_subset(empty, "m", ("a",), allow_empty=True) == ()
  with pytest.raises(ValueError, match="config.steps must be a positive integer, got 0"):
    cfg_lib.check_ints(cfg, ("steps",))
  cfg_lib.check_ints(cfg, ("steps",), minimum=0)
  with pytest.raises(ValueError, match="config.opt.n must be an integer >= 0, got 1.5"):
    cfg_lib.check_ints(cfg, ("steps", "opt.n"), minimum=0)
  with pytest.raises(ValueError, match="config.steps must be an integer >= 2"):
    cfg_lib.check_ints(cfg, ("steps",), minimum=2)
  with pytest.raises(ValueError, match=r"config.sizes must be a tuple of which every entry is an integer >= 2, "
                                       r"got \(3, 1\)"):
    cfg_lib.check_ints(cfg, ("sizes",), minimum=2)
  cfg_lib.check_ints(cfg, ("sizes", "cap"), minimum=1, sentinel=-1)
  with pytest.raises(ValueError, match="config.cap must be a positive integer"):
    cfg_lib.check_ints(cfg, ("cap",))
  with pytest.raises(ValueError, match="config.opt.lr must be > 0, got -1.0"):
    cfg_lib.check_positive(cfg, ("opt.lr",))
  with pytest.raises(ValueError, match="config.opt.wd must be >= 0, got -0.1"):
    cfg_lib.check_nonnegative(cfg, ("opt.wd",))
  cfg_lib.check_nonnegative(cfg, ("steps",))
  with pytest.raises(ValueError, match=r"config.opt.kind must be one of \('y', 'z'\), got 'x'"):
    cfg_lib.check_one_of(cfg, "opt.kind", ("y", "z"))


# ---- the command line -------------------------------------------------------------------------------------------
def test_check_overrides_turns_comma_lists_of_tuple_fields_into_tuples():
  spec = SOTALIGN_CONFIG + ":smoke"
  argv = ["x", "--config", spec, "--config.methods=sail,sotalign", "--config.n_pairs=32,100",
          "--config.data.extra_unpaired_text=/a/b,/c", "--config.n_pairs=", "--config.hparams.sail.steps=5",
          "--config.methods=('sail',)", "--config.methods=sail", "--config.methods", "sail,sotalign"]
  assert cfg_lib.check_overrides(argv) == [
      "x", "--config", spec, "--config.methods=('sail', 'sotalign')", "--config.n_pairs=(32, 100)",
      "--config.data.extra_unpaired_text=('/a/b', '/c')", "--config.n_pairs=()", "--config.hparams.sail.steps=5",
      "--config.methods=('sail',)", "--config.methods=sail", "--config.methods", "('sail', 'sotalign')"]
  assert cfg_lib.check_overrides(["x", "--workdir", "w"]) == ["x", "--workdir", "w"]  # no --config: absl says so


PRINT_CONFIG = """
import json, sys
from sotalign_jax.runtime import config as cfg_lib
cfg_lib.launch(lambda cfg, workdir: print(json.dumps(cfg.to_dict())), "configs/proj/sotalign/config.py")
"""


def launch(*args):
  return subprocess.run([sys.executable, "-c", PRINT_CONFIG, "--config",
                         SOTALIGN_CONFIG + ":smoke", "--workdir", "w", *args],
                        capture_output=True, text=True, timeout=300, cwd=REPO)


def test_tuple_overrides_reach_the_config_in_every_form():
  out = launch("--config.methods=('sail','sotalign')", "--config.n_pairs=32,100",
               "--config.data.extra_unpaired_text=/a,/b", "--config.data.extra_unpaired_images=/c",
               "--config.hparams.sotalign.alpha=3", "--config.hparams.sail.head=mlp")
  assert out.returncode == 0, out.stderr[-3000:]
  cfg = json.loads(out.stdout.strip().splitlines()[-1])
  assert cfg["methods"] == ["sail", "sotalign"] and cfg["n_pairs"] == [32, 100]
  assert cfg["data"]["extra_unpaired_text"] == ["/a", "/b"] and cfg["data"]["extra_unpaired_images"] == ["/c"]
  hp = cfg["hparams"]
  assert hp["sotalign"]["alpha"] == 3.0 and hp["sail"]["head"] == "mlp" and hp["sotalign"]["steps"] == 20
  out = launch("--config.methods=sail,sotalign", "--config.methods=upper_bound")  # a repeated flag appends
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.strip().splitlines()[-1])["methods"] == ["sail", "sotalign", "upper_bound"]


@pytest.mark.parametrize("override, message", [
    ("--config.nonexistent=1", "error: unknown config key --config.nonexistent (keys of config: ckpt_every, "),
    ("--config.hparams.sotalign.alpah=3", "error: unknown config key --config.hparams.sotalign.alpah; did you mean "
                                          "--config.hparams.sotalign.alpha or "),
    ("--config.hparams.sotalign.alpah=3", "(keys of config.hparams.sotalign: alpha, batch_paired, "),
    ("--config.hparams.sotalgn.alpha=3", "did you mean --config.hparams.sotalign.alpha or "),
    ("--config.evals.tuxpaint.cach=", "did you mean --config.evals.tuxpaint.cache or "),
])
def test_unknown_override_key_is_a_usage_error_naming_the_nearest_keys(override, message):
  out = launch(override)
  assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
  assert message in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert len(out.stderr.strip().splitlines()) == 1  # one line
  assert out.stdout == ""


USER_ERROR = """
import sys
from sotalign_jax.runtime import config as cfg_lib
def run(cfg, workdir):
  with cfg_lib.user_errors():
    open("/does/not/exist/x.npy")
cfg_lib.launch(run, "configs/proj/sotalign/config.py")
"""


def test_a_user_error_in_run_is_one_line_and_exit_code_2():
  out = subprocess.run([sys.executable, "-c", USER_ERROR, "--config", SOTALIGN_CONFIG, "--workdir", "w"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 2 and out.stderr.startswith("error: "), out.stderr[-3000:]
  assert len(out.stderr.strip().splitlines()) == 1 and "/does/not/exist/x.npy" in out.stderr
  with pytest.raises(cfg_lib.UserError, match="bad"), cfg_lib.user_errors():
    raise ValueError("bad")  # a ValueError subclass, so callers of run() still catch ValueError
  with pytest.raises(KeyError), cfg_lib.user_errors():
    raise KeyError("a bug keeps its traceback")


def test_unknown_preset_is_a_usage_error_listing_the_known_ones():
  out = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "sotalign.py"), "--config",
                        SOTALIGN_CONFIG + ":demo,smok", "--workdir", "w"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert "unknown name 'smok'" in out.stderr and "presets: demo, full, smoke, teachers, sail" in out.stderr
