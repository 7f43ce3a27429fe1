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


def config_module(name):
  return cfg_lib.config_module(os.path.join(REPO, "configs", f"{name}.py"))


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
  cfg = config_module("sotalign").get_config("demo,smoke,n_pairs=100")
  assert (cfg.data.n_pairs, cfg.steps, cfg.batch_paired, cfg.teacher.cca_dim) == (100, 20, 32, 16)
  cfg = config_module("sotalign").get_config("sotalign,steps=50")
  assert (cfg.methods, cfg.steps, cfg.batch_paired) == (("sotalign",), 50, 256)
  cfg = config_module("cmcr").get_config("smoke,source=demo")
  assert (cfg.data.source, cfg.head.kind, cfg.head.dim, cfg.steps) == ("demo", "linear", 32, 60)
  cfg = config_module("match").get_config("quick,n_trials=1")
  assert (cfg.n_trials, cfg.n_query, cfg.qap.n_init) == (1, 200, 20)


def test_sotalign_and_cmcr_name_their_heads_alike():
  s, c = config_module("sotalign").get_config(), config_module("cmcr").get_config("byo")
  assert set(s.head) == {"kind", "hidden"} and set(c.head) == {"kind", "hidden", "dim"}
  assert set(s.teacher) == set(c.teacher) == {"name", "cca_dim", "cca_reg", "ridge_lam"}
  assert s.optimizer == c.optimizer == "adamw"


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
    ("sotalign", None, {"head__kind": "transformer"}, "config.head.kind must be one of"),
    ("sotalign", None, {"methods": ("sotalign", "magic")}, r"config.methods: unknown method\(s\) \['magic'\]"),
    ("sotalign", None, {"methods": ()}, r"config.methods: unknown method\(s\) \[\]"),
    ("sotalign", None, {"data__n_pairs_sweep": (100, 0)}, "config.data.n_pairs_sweep must be a tuple"),
    ("sotalign", None, {"optimizer": "sgdd"}, "config.optimizer: optax has no optimizer 'sgdd'"),
    ("sotalign", None, {"eval__split": "train"}, "config.eval.split"),
    ("cmcr", None, {"temperature": 0.0}, "config.temperature must be > 0"),
    ("cmcr", None, {"head__dim": -1}, "config.head.dim must be a positive integer"),
    ("cmcr", "smoke", {}, r"config.data.source='npy' needs config.data.\{a_memory,b,b_prime,c_memory,a_eval,c_eval\}"),
    ("match", "smoke", {"data__query_splits": ("test", "paired")}, "must not share a split"),
    ("match", "smoke", {"zeroshot__splits": ("holdout",)}, r"config.zeroshot.splits: unknown split\(s\)"),
    ("match", "smoke", {"n_base_sweep": (10, "x")}, "config.n_base_sweep must be a tuple"),
    ("match", "smoke", {"data__max_base_pool": 0}, "config.data.max_base_pool must be -1 or an integer >= 2"),
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
  spec = os.path.join(REPO, "configs", "sotalign.py") + ":smoke"
  argv = ["x", "--config", spec, "--config.methods=sail,sotalign", "--config.data.n_pairs_sweep=32,100",
          "--config.data.extra_unpaired_text=/a/b,/c", "--config.data.n_pairs_sweep=", "--config.steps=5",
          "--config.methods=('sail',)", "--config.methods=sail", "--config.methods", "sail,sotalign"]
  assert cfg_lib.check_overrides(argv) == [
      "x", "--config", spec, "--config.methods=('sail', 'sotalign')", "--config.data.n_pairs_sweep=(32, 100)",
      "--config.data.extra_unpaired_text=('/a/b', '/c')", "--config.data.n_pairs_sweep=()", "--config.steps=5",
      "--config.methods=('sail',)", "--config.methods=sail", "--config.methods", "('sail', 'sotalign')"]
  assert cfg_lib.check_overrides(["x", "--workdir", "w"]) == ["x", "--workdir", "w"]  # no --config: absl says so


PRINT_CONFIG = """
import json, sys
from sotalign_jax.runtime import config as cfg_lib
cfg_lib.launch(lambda cfg, workdir: print(json.dumps(cfg.to_dict())), "configs/sotalign.py")
"""


def launch(*args):
  return subprocess.run([sys.executable, "-c", PRINT_CONFIG, "--config",
                         os.path.join(REPO, "configs", "sotalign.py") + ":smoke", "--workdir", "w", *args],
                        capture_output=True, text=True, timeout=300, cwd=REPO)


def test_tuple_overrides_reach_the_config_in_every_form():
  out = launch("--config.methods=('sail','sotalign')", "--config.data.n_pairs_sweep=32,100",
               "--config.data.extra_unpaired_text=/a,/b", "--config.data.extra_unpaired_images=/c",
               "--config.sotalign.alpha=3", "--config.head.kind=mlp")
  assert out.returncode == 0, out.stderr[-3000:]
  cfg = json.loads(out.stdout.strip().splitlines()[-1])
  assert cfg["methods"] == ["sail", "sotalign"] and cfg["data"]["n_pairs_sweep"] == [32, 100]
  assert cfg["data"]["extra_unpaired_text"] == ["/a", "/b"] and cfg["data"]["extra_unpaired_images"] == ["/c"]
  assert cfg["sotalign"]["alpha"] == 3.0 and cfg["head"]["kind"] == "mlp" and cfg["steps"] == 20
  out = launch("--config.methods=sail,sotalign", "--config.methods=upper_bound")  # a repeated flag appends
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.strip().splitlines()[-1])["methods"] == ["sail", "sotalign", "upper_bound"]


@pytest.mark.parametrize("override, message", [
    ("--config.nonexistent=1", "error: unknown config key --config.nonexistent (keys of config: batch_paired, "),
    ("--config.sotalign.alpah=3", "error: unknown config key --config.sotalign.alpah; did you mean "
                                  "--config.sotalign.alpha? (keys of config.sotalign: alpha, eps_student, "),
    ("--config.sotalgn.alpha=3", "did you mean --config.sotalign.alpha?"),
    ("--config.head.hiden=3", "did you mean --config.head.hidden? (keys of config.head: hidden, kind)"),
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
cfg_lib.launch(run, "configs/sotalign.py")
"""


def test_a_user_error_in_run_is_one_line_and_exit_code_2():
  out = subprocess.run([sys.executable, "-c", USER_ERROR, "--config", os.path.join(REPO, "configs", "sotalign.py"),
                        "--workdir", "w"], capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 2 and out.stderr.startswith("error: "), out.stderr[-3000:]
  assert len(out.stderr.strip().splitlines()) == 1 and "/does/not/exist/x.npy" in out.stderr
  with pytest.raises(cfg_lib.UserError, match="bad"), cfg_lib.user_errors():
    raise ValueError("bad")  # a ValueError subclass, so callers of run() still catch ValueError
  with pytest.raises(KeyError), cfg_lib.user_errors():
    raise KeyError("a bug keeps its traceback")


def test_unknown_preset_is_a_usage_error_listing_the_known_ones():
  out = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "sotalign.py"), "--config",
                        os.path.join(REPO, "configs", "sotalign.py") + ":demo,smok", "--workdir", "w"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert "unknown name 'smok'" in out.stderr and "presets: demo, full, smoke, teachers, sail" in out.stderr
