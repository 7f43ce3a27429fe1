"""Keyed cells and runs: a rerun with a changed setting computes new numbers, never reuses or resumes old ones.

The mechanism is in sotalign_jax/runtime (workdir.settings_key / keyed_dir, sweep.CellSettings / CellStore); the
end-to-end tests drive the engine (sotalign_jax/runtime/engine.py) with the benchmark's and the SOTAlign preset
in process on small fake caches, and both launchers as subprocesses for the user errors.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from sotalign_jax.data.fake import make_fake_cache
from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import sweep
from sotalign_jax.runtime import workdir as wd

BENCH = os.path.join(REPO, "experiments", "benchmark.py")
BENCH_CONFIG = os.path.join(REPO, "configs", "proj", "benchmark", "config.py")
SOTALIGN = os.path.join(REPO, "experiments", "sotalign.py")
SOTALIGN_CONFIG = os.path.join(REPO, "configs", "proj", "sotalign", "config.py")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return make_fake_cache(str(tmp_path_factory.mktemp("cache")), n_images=400)


def bench_config(cache, methods=("cca",), **fields):
  """The benchmark's smoke variant, shrunk: one p, one seed, no geometry scores."""
  cfg = cfg_lib.config_module(BENCH_CONFIG).get_config("smoke")
  cfg.data.cache = cache
  cfg.methods = tuple(methods)
  cfg.n_pairs = (30,)
  cfg.seeds = 1
  cfg.eval.geometry = ()
  cfg.eval.n_boot = 50
  for k, v in fields.items():
    setattr(cfg, k, v)
  return cfg


def bench_run(cfg, workdir):
  from sotalign_jax.runtime import engine  # pylint: disable=g-import-not-at-top
  return engine.run(cfg, str(workdir))


def sotalign_config(cache, methods=("cca",), **fields):
  """The SOTAlign preset's smoke variant (tiny: no optional eval caches) on the fake cache, no geometry scores."""
  cfg = cfg_lib.config_module(SOTALIGN_CONFIG).get_config("smoke")
  cfg.data.cache = cache
  cfg.methods = tuple(methods)
  cfg.eval.geometry = ()
  cfg.eval.n_boot = 50
  for k, v in fields.items():
    setattr(cfg, k, v)
  return cfg


def sotalign_run(cfg, workdir):
  """What experiments/sotalign.py runs: the preset's checks, then the engine."""
  cfg_lib.config_module(SOTALIGN_CONFIG).validate(cfg)
  return bench_run(cfg, workdir)


def r1(res, method="cca"):
  return next(c["metrics"]["t2i_r1"] for c in res["cells"] if c["method"] == method and c["status"] == "ok")


# ----------------------------------------------------------------------------------------------------------------
# The pieces: keys, fingerprints, keyed run directories, progress lines.
# ----------------------------------------------------------------------------------------------------------------
def test_settings_key_sees_every_value_and_fingerprints_see_content_not_paths(tmp_path):
  a = {"method": "cca", "hparams": {"reg": 0.1, "dim": None}, "p": 30, "grid": (1, 2)}
  assert wd.settings_key(a) == wd.settings_key({"grid": [1, 2], "p": 30, "hparams": {"dim": None, "reg": 0.1},
                                               "method": "cca"})  # order and tuple/list do not matter
  for changed in ({**a, "hparams": {"reg": 100.0, "dim": None}}, {**a, "p": 31}, {**a, "grid": (1, 3)}):
    assert wd.settings_key(changed) != wd.settings_key(a)
  one = make_fake_cache(str(tmp_path / "one"), n_images=40)
  shutil.copytree(one, tmp_path / "moved")
  other = make_fake_cache(str(tmp_path / "other"), n_images=40, seed=1)  # same manifest, other embeddings
  assert wd.cache_fingerprint(one) == wd.cache_fingerprint(str(tmp_path / "moved"))
  assert wd.cache_fingerprint(one) != wd.cache_fingerprint(other)
  s = sweep.CellSettings({"method": "cca"}, {"split": "test"})
  assert s.fit_key != s.key and s.fit_key == sweep.CellSettings({"method": "cca"}, {"split": "val"}).fit_key


def test_keyed_dir_names_the_checkpoint_of_other_settings_once(tmp_path, capsys):
  parent = str(tmp_path / "runs")
  old = wd.keyed_dir(parent, "sotalign_n64", "a" * 64)
  assert old.endswith("sotalign_n64__aaaaaaaaaaaa") and capsys.readouterr().out == ""
  os.makedirs(os.path.join(old, "ckpt", "20"))
  assert wd.keyed_dir(parent, "sotalign_n64", "a" * 64) == old and capsys.readouterr().out == ""  # same: resume
  new = wd.keyed_dir(parent, "sotalign_n64", "b" * 64)
  assert capsys.readouterr().out == (f"settings changed since the checkpoint in {old}: starting fresh under {new}; "
                                     f"delete {old} to reclaim space\n")


def test_progress_prints_lines_when_stdout_is_not_a_terminal(capsys):
  assert list(wd.progress(range(3, 10), desc="fit", total=10, initial=3, min_seconds=0.0)) == list(range(3, 10))
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("[fit] 4/10 (40%)") and lines[-1].startswith("[fit] 10/10 (100%)"), lines
  list(wd.progress(range(100), desc="fast", total=100))  # a fast loop: only the last line
  assert capsys.readouterr().out.startswith("[fast] 100/100 (100%)")


# ----------------------------------------------------------------------------------------------------------------
# The benchmark: changed settings compute new cells; a subset rerun keeps the full table.
# ----------------------------------------------------------------------------------------------------------------
def test_benchmark_changed_hparam_computes_new_cells_same_settings_reuse(cache, tmp_path):
  first = bench_run(bench_config(cache), tmp_path / "w")
  assert first["cells_run_now"] == 1
  again = bench_run(bench_config(cache), tmp_path / "w")
  assert again["cells_run_now"] == 0 and r1(again) == r1(first)  # same settings: reused

  strong = bench_config(cache)
  strong.hparams.cca.reg = 100.0
  changed = bench_run(strong, tmp_path / "w")
  assert changed["cells_run_now"] == 1 and r1(changed) != r1(first)  # nothing reused: the number changes
  fresh = bench_run(strong, tmp_path / "fresh")
  assert r1(changed) == r1(fresh)  # and is the number of a fresh workdir
  cell = next(c for c in json.load(open(tmp_path / "w" / "results.json"))["cells"] if c["method"] == "cca")
  assert cell["settings"]["fit"]["hparams"]["reg"] == 100.0 and len(cell["key"]) == 64

  back = bench_run(bench_config(cache), tmp_path / "w")  # the old cell was kept, not overwritten
  assert back["cells_run_now"] == 0 and r1(back) == r1(first)
  other_seed = bench_run(bench_config(cache, seed=1), tmp_path / "w")
  assert other_seed["cells_run_now"] == 1


def test_lap_auto_is_keyed_by_the_solver_it_stands_for(cache, monkeypatch):
  # "auto" runs scipy on a CPU with >= 2 cores and the auction on one core or an accelerator: the numbers differ, so
  # a cell computed with one must never be reused where "auto" means the other
  from sotalign_jax import qap  # pylint: disable=g-import-not-at-top
  from sotalign_jax.runtime import engine  # pylint: disable=g-import-not-at-top
  cfg = bench_config(cache, ("wasserstein_procrustes",))
  assert cfg.hparams.wasserstein_procrustes.lap == "auto"
  keyed = {}
  for cores in (2, 1):
    monkeypatch.setattr(qap, "_host_cores", lambda c=cores: c)
    keyed[cores] = engine.cell_settings("wasserstein_procrustes", 30, 0, cfg, data={}, evaluation={})
  assert keyed[2].fit["hparams"]["lap"] == "scipy" and keyed[1].fit["hparams"]["lap"] == "auction"
  assert keyed[2].key != keyed[1].key
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert engine.cell_settings("wasserstein_procrustes", 30, 0, cfg, data={}, evaluation={}).key == keyed[1].key


def test_benchmark_subset_rerun_keeps_the_full_table(cache, tmp_path, capsys):
  full = bench_run(bench_config(cache, ("lstsq", "cca")), tmp_path)
  full_md = set((tmp_path / "results.md").read_text().split("### fit seconds")[0].splitlines())
  sub = bench_run(bench_config(cache, ("cca",)), tmp_path)
  assert sub["cells_run_now"] == 0 and sub["methods_from_store"] == ["lstsq"]
  assert set((tmp_path / "results.md").read_text().split("### fit seconds")[0].splitlines()) == full_md
  res = json.load(open(tmp_path / "results.json"))
  assert set(res["methods"]) == {"lstsq", "cca"} and res["summary"] == full["summary"]
  assert "also in the tables: lstsq" in capsys.readouterr().out
  # a changed cca setting shows the new cca next to the unchanged lstsq, never the old cca
  strong = bench_config(cache, ("cca",))
  strong.hparams.cca.reg = 100.0
  changed = bench_run(strong, tmp_path)
  assert changed["methods_from_store"] == ["lstsq"]
  assert changed["summary"]["lstsq"] == full["summary"]["lstsq"]
  assert changed["summary"]["cca"] != full["summary"]["cca"]


def test_benchmark_trained_method_does_not_resume_a_checkpoint_of_another_alpha(cache, tmp_path, capsys):
  import jax
  import jax.numpy as jnp
  import ml_collections
  import optax
  from flax.training import train_state
  from sotalign_jax import aligners
  from sotalign_jax.aligners.linear import LinearAlignment

  @aligners.register("_test_alpha", needs_pairs=False, uses_unpaired=True, min_pairs=0, citation="test",
                     trained=True)
  def fit_alpha(key, data, *, alpha: float = 1.0, steps: int = 4, loop=None) -> LinearAlignment:
    """Stands in for a trained method: ``steps`` updates of w += alpha on the checkpointed loop."""
    state = train_state.TrainState.create(apply_fn=None, params={"w": jnp.zeros(())}, tx=optax.sgd(1.0))
    step = lambda st, d, rng: (st.apply_gradients(grads={"w": -alpha * jnp.ones(())}),  # noqa: E731
                               {"loss": jnp.zeros(()), "grad_norm": jnp.ones(())})
    final = loop(state, step, {}, key=key, steps=steps)
    dx, dy = data.dims
    w = jax.random.normal(key, (dx, dy)) + final.params["w"]
    return LinearAlignment(w, None, data.x.mean(0), data.y.mean(0), True)

  def config(alpha):
    cfg = bench_config(cache, ("_test_alpha",), ckpt_every=2, log_every=1)
    with cfg.unlocked():
      cfg.hparams["_test_alpha"] = ml_collections.ConfigDict({"alpha": alpha, "steps": 4})
    return cfg

  def interrupt():  # what a kill after the checkpoint at step 2 leaves: no done file, no step 4
    for f in glob.glob(str(tmp_path / "done" / "_test_alpha" / "*.json")):
      os.remove(f)
    for d in glob.glob(str(tmp_path / "runs" / "_test_alpha" / "*" / "ckpt" / "4")):
      shutil.rmtree(d)

  try:
    bench_run(config(10.0), tmp_path)
    interrupt()
    capsys.readouterr()
    bench_run(config(0.1), tmp_path)
    out = capsys.readouterr().out
    assert "settings changed since the checkpoint in" in out and "resuming from step" not in out, out
    dirs = sorted(glob.glob(str(tmp_path / "runs" / "_test_alpha" / "p30_s0__*")))
    assert len(dirs) == 2 and all(sorted(os.listdir(os.path.join(d, "ckpt"))) in (["2"], ["2", "4"]) for d in dirs)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")
             if "train/_test_alpha/p30_s0/loss" in line]
    assert steps == [1, 2, 3, 4] + [1, 2, 3, 4], steps  # the α = 0.1 run restarted at step 0
    interrupt()
    bench_run(config(0.1), tmp_path)  # the same settings do resume
    out = capsys.readouterr().out
    assert "resuming from step 2" in out and "settings changed" not in out, out
  finally:
    aligners.ALIGNERS.pop("_test_alpha", None)


# ----------------------------------------------------------------------------------------------------------------
# The SOTAlign experiment: the reproductions.
# ----------------------------------------------------------------------------------------------------------------
def test_sotalign_changed_cca_reg_is_not_reused(cache, tmp_path, capsys):
  first = sotalign_run(sotalign_config(cache), tmp_path / "w")
  again = sotalign_run(sotalign_config(cache), tmp_path / "w")
  assert again["cells_run_now"] == 0 and again["summary"] == first["summary"]
  assert "1 of 1 cells done before with these settings, 0 to run" in capsys.readouterr().out
  strong = sotalign_config(cache)
  strong.hparams.cca.reg = 100.0
  changed = sotalign_run(strong, tmp_path / "w")
  assert changed["cells_run_now"] == 1 and r1(changed) != r1(first)
  assert "(1 of them stored under other settings, kept but not used)" in capsys.readouterr().out
  assert r1(changed) == r1(sotalign_run(strong, tmp_path / "fresh"))  # the number of a fresh workdir
  cell = next(c for c in json.load(open(tmp_path / "w" / "results.json"))["cells"] if c["method"] == "cca")
  assert cell["settings"]["fit"]["hparams"]["reg"] == 100.0
  assert cell["settings"]["fit"]["hparams"]["center"] == "pairs"  # the preset's recipe, in the key


def test_sotalign_subset_rerun_keeps_the_full_table(cache, tmp_path):
  full = sotalign_run(sotalign_config(cache, ("cca", "ridge")), tmp_path)
  sub = sotalign_run(sotalign_config(cache, ("ridge",)), tmp_path)
  assert sub["cells_run_now"] == 0 and sub["methods_from_store"] == ["cca"]
  res = json.load(open(tmp_path / "results.json"))
  assert set(res["methods"]) == {"ridge", "cca"} and res["summary"] == full["summary"]
  assert "| cca |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow  # ≈ 12 s (two SOTAlign compilations); the benchmark's stand-in above tests the same in the fast set
def test_sotalign_changed_alpha_mid_run_starts_fresh(cache, tmp_path, capsys):
  def config(alpha):
    cfg = sotalign_config(cache, ("sotalign",), ckpt_every=2, log_every=1)
    cfg.hparams.sotalign.steps = 4
    cfg.hparams.sotalign.alpha = alpha
    return cfg

  sotalign_run(config(10.0), tmp_path)
  for f in (glob.glob(str(tmp_path / "done" / "*" / "*.json")) +
            glob.glob(str(tmp_path / "runs" / "*" / "*" / "ckpt" / "4"))):
    shutil.rmtree(f) if os.path.isdir(f) else os.remove(f)  # killed after the checkpoint at step 2
  capsys.readouterr()
  sotalign_run(config(0.1), tmp_path)
  out = capsys.readouterr().out
  assert "settings changed since the checkpoint in" in out and "resuming" not in out, out
  steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")
           if "train/sotalign/p64_s0/loss" in line]
  assert steps == [1, 2, 3, 4] * 2, steps


# ----------------------------------------------------------------------------------------------------------------
# User errors: one line, exit code 2, no workdir.
# ----------------------------------------------------------------------------------------------------------------
def test_every_cell_needing_pairs_is_a_user_error_naming_what_to_give(tmp_path):
  rng = np.random.default_rng(0)
  np.save(tmp_path / "tx.npy", rng.normal(size=(20, 8)).astype(np.float32))
  np.save(tmp_path / "ty.npy", rng.normal(size=(20, 6)).astype(np.float32))
  cfg = bench_config("does/not/exist", ("cca", "lstsq"), n_pairs=(0, 10, -1))
  cfg.data.test_x, cfg.data.test_y = str(tmp_path / "tx.npy"), str(tmp_path / "ty.npy")
  with pytest.raises(cfg_lib.UserError, match="config.data.pairs_x and config.data.pairs_y"):
    bench_run(cfg, tmp_path / "w")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("experiment, args, message", [
    ("benchmark", ["--config.data.cache=/does/not/exist"], "config.data.cache"),
    ("benchmark", ["--config.seeds=0"], "config.seeds must be a positive integer"),
    ("benchmark", ["--config.hparams.cca.regg=1"], "unknown config key --config.hparams.cca.regg"),
    ("benchmark", ["--config.data.test_x=TX", "--config.data.test_y=TY", "--config.methods=cca"],
     "give config.data.pairs_x and config.data.pairs_y"),
    ("sotalign", ["--config.hparams.sotalign.lr=-1"], "config.hparams.sotalign.lr must be > 0"),
    ("sotalign", ["--config.n_pairs=()"], "config.n_pairs is empty"),
])
def test_bad_input_exits_2_with_one_line_and_no_workdir(cache, tmp_path, experiment, args, message):
  rng = np.random.default_rng(0)
  np.save(tmp_path / "tx.npy", rng.normal(size=(20, 8)).astype(np.float32))
  np.save(tmp_path / "ty.npy", rng.normal(size=(20, 6)).astype(np.float32))
  args = [a.replace("TX", str(tmp_path / "tx.npy")).replace("TY", str(tmp_path / "ty.npy")) for a in args]
  script, config = (BENCH, BENCH_CONFIG) if experiment == "benchmark" else (SOTALIGN, SOTALIGN_CONFIG)
  workdir = tmp_path / "w"
  argv = [sys.executable, script, "--config", config + ":smoke", "--workdir", str(workdir)]
  if experiment == "sotalign" or "test_x" not in " ".join(args):
    argv.append(f"--config.data.cache={cache}")
  out = subprocess.run(argv + args, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 2, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr[-3000:]
  assert not workdir.exists()
