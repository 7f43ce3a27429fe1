"""experiments/benchmark.py: the smoke variant end to end, resume, the protocol's sets, the planted statistics."""

import glob
import json
import os
import subprocess
import sys

import jax
import ml_collections
import jax.numpy as jnp
import optax
from flax.training import train_state
import numpy as np
import pytest

from conftest import REPO
from sotalign_jax import aligners
from sotalign_jax.aligners.linear import LinearAlignment
from sotalign_jax.data import protocol
from sotalign_jax.data.cache import load_cache
from sotalign_jax.data.fake import make_fake_cache
from sotalign_jax.runtime import config as cfg_lib

SCRIPT = os.path.join(REPO, "experiments", "benchmark.py")
CONFIG_FILE = os.path.join(REPO, "configs", "proj", "benchmark", "config.py")
SMOKE_METHODS = ("lstsq", "cca", "asif")


def experiment():
  from sotalign_jax.runtime import engine  # pylint: disable=g-import-not-at-top
  return engine  # experiments/benchmark.py launches engine.run


def smoke_config(cache, **fields):
  cfg = cfg_lib.config_module(CONFIG_FILE).get_config("smoke")
  cfg.data.cache = cache
  cfg.methods = SMOKE_METHODS
  for k, v in fields.items():
    setattr(cfg, k, v)
  return cfg


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return make_fake_cache(str(tmp_path_factory.mktemp("cache")), n_images=600)


def main_tables(workdir) -> str:
  """results.md without the (wall-clock) timing section."""
  return (workdir / "results.md").read_text().split("### fit seconds")[0]


# ----------------------------------------------------------------------------------------------------------------
# End to end: the launch convention, outputs, resume.
# ----------------------------------------------------------------------------------------------------------------
def test_smoke_end_to_end_then_resume_skips_every_cell(cache, tmp_path):
  argv = [sys.executable, SCRIPT, "--config", CONFIG_FILE + ":smoke", "--workdir", str(tmp_path),
          f"--config.data.cache={cache}", "--config.methods=" + ",".join(SMOKE_METHODS)]
  out = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.load(open(tmp_path / "results.json"))
  assert {"cells", "summary", "comparison", "reference", "protocol", "provenance", "p_values"} <= set(res)
  assert {"commit", "versions", "host", "seconds"} <= set(res["provenance"])
  ps = res["p_values"]
  assert ps[0] == 0 and res["p_labels"][str(ps[-1])] == "max" and len(ps) == 3
  assert len(res["cells"]) == len(SMOKE_METHODS) * len(ps) * 2
  for c in res["cells"]:
    if c["p"] == 0:  # every method here needs pairs: recorded as such, never as a chance score
      assert c["status"] == "needs_pairs" and "metrics" not in c
    else:
      assert c["status"] == "ok"
      assert {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "foscttm", "i2t_mean_rank",
              "t2i_median_rank", "matching_acc", "fit_seconds"} <= set(c["metrics"])
      assert os.path.exists(tmp_path / "cells" / c["method"] / f"p{c['p']}_s{c['seed']}__{c['key'][:12]}.npz")
    assert len(c["key"]) == 64 and c["settings"]["fit"]["method"] == c["method"]  # each cell's key and settings
  p_max = ps[-1]
  s = res["summary"]["cca"][str(p_max)]["i2t_r1"]
  assert s["n"] == 2 and s["low"] <= s["mean"] <= s["high"] and s["mean"] > 10 / 150  # far above chance
  assert res["summary"]["cca"]["0"] is None
  assert res["protocol"]["n_test_images"] == 150 and res["protocol"]["n_val_images"] == 50
  table = main_tables(tmp_path)
  assert "### i2t_r1" in table and "| cca | – |" in table and f"p=max ({p_max})" in table
  assert "### Δ i2t_r1" in table and "best other" in table
  assert table.split("## Alignment benchmark")[1][:200] in out.stdout  # the same markdown is printed
  assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
  assert os.path.isdir(tmp_path / "tb") and (tmp_path / "metrics.jsonl").stat().st_size > 0

  assert "Traceback" not in out.stderr
  # a rerun skips every cell and writes the same table
  first = main_tables(tmp_path)
  again = experiment().run(smoke_config(cache), str(tmp_path))
  assert again["cells_run_now"] == 0
  assert main_tables(tmp_path) == first

  # a sweep that lost cells (as a killed one would) recomputes only those and reaches the same table
  done = sorted(glob.glob(str(tmp_path / "done" / "*" / "*.json")))
  for path in done[::2]:
    os.remove(path)
  again = experiment().run(smoke_config(cache), str(tmp_path))
  assert again["cells_run_now"] == len(done[::2])
  assert main_tables(tmp_path) == first


def test_bad_configs_are_rejected_naming_the_key(cache):
  validate = cfg_lib.config_module(CONFIG_FILE).validate
  for field, value, key in [("methods", ("cca", "magic"), "config.methods"), ("n_pairs", (10, -3), "config.n_pairs"),
                            ("reference", "ridge", "config.reference"), ("seeds", 0, "config.seeds")]:
    with pytest.raises(ValueError, match=key):
      validate(smoke_config(cache, **{field: value}))


# ----------------------------------------------------------------------------------------------------------------
# The protocol.
# ----------------------------------------------------------------------------------------------------------------
def _owners(c, caption_rows):
  return {c.index[i]["image"] for i in caption_rows}


def test_nested_pairs_disjoint_halves_and_held_out_sets(cache):
  c = load_cache(cache)
  proto = protocol.Protocol.from_cache(c, test_size=150, val_size=50, min_unpaired=20)
  test, val = proto.held_out("test"), proto.held_out("val")
  held = set(test["image_rows"]) | set(val["image_rows"])
  assert len(test["image_rows"]) == 150 and len(val["image_rows"]) == 50
  assert not set(test["image_rows"]) & set(val["image_rows"])
  assert _owners(c, test["caption_rows"]) == set(test["image_rows"])  # every caption of a test image is held out
  assert len(test["caption_rows"]) == 300
  ps = [0, 5, 20, 100, proto.p_max]
  for seed in range(3):
    draws = [proto.draw(seed, p) for p in ps]
    for small, big in zip(draws, draws[1:]):
      assert set(small["pair_x"]) < set(big["pair_x"])  # nested
      assert set(big["unp_x"]) <= set(small["unp_x"]) and set(big["unp_y"]) <= set(small["unp_y"])
    for p, d in zip(ps, draws):
      assert len(d["pair_x"]) == p
      assert [c.index[i]["image"] for i in d["pair_y"]] == list(d["pair_x"])  # pairs are row-aligned
      text_images = _owners(c, d["unp_y"])
      assert not set(d["unp_x"]) & text_images  # no unpaired image has its caption in the text pool
      assert not (set(d["unp_x"]) | text_images) & set(d["pair_x"])
      assert not (set(d["unp_x"]) | text_images | set(d["pair_x"])) & held
      assert min(len(d["unp_x"]), len(text_images)) >= 20
    assert len(set(draws[-1]["unp_x"]) | _owners(c, draws[-1]["unp_y"])) + proto.p_max == 400
  assert set(proto.draw(0, 20)["pair_x"]) != set(proto.draw(1, 20)["pair_x"])  # seeds draw other pairs
  with pytest.raises(ValueError, match="exceeds"):
    proto.draw(0, proto.p_max + 1)

  shared = protocol.Protocol.from_cache(c, test_size=150, val_size=50, unpaired_mode="shared", min_unpaired=20)
  d = shared.draw(0, 20)
  assert _owners(c, d["unp_y"]) == set(d["unp_x"]) and len(d["unp_x"]) == 400 - 20
  assert shared.p_max == 380 and proto.p_max == 360
  capped = protocol.Protocol.from_cache(c, test_size=150, val_size=50, max_unpaired=30, min_unpaired=20)
  assert len(capped.draw(0, 5)["unp_x"]) == 30


def test_held_out_sets_depend_on_the_ids_only():
  ids = [f"im{i}" for i in range(300)]
  roles = protocol.holdout_roles(ids, test_size=40, val_size=20)
  perm = np.random.default_rng(0).permutation(300)
  again = protocol.holdout_roles([ids[i] for i in perm], test_size=40, val_size=20)
  assert (again == roles[perm]).all() and (roles == "test").sum() == 40 and (roles == "val").sum() == 20
  bigger = protocol.holdout_roles(ids, test_size=40, val_size=60)  # test does not move when val grows
  assert (bigger[roles == "test"] == "test").all()
  assert protocol.resolve_n_pairs((0, 10, 10, 5000, -1), 300) == ((0, 10, 300), {0: "0", 10: "10", 300: "max"})


# ----------------------------------------------------------------------------------------------------------------
# Statistics on planted cases: a method worse by construction, and one method under two names.
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def planted_methods():
  names = ("_test_cca_copy", "_test_scrambled")
  aligners.register(names[0], needs_pairs=True, uses_unpaired=False, min_pairs=2, citation="test")(
      aligners.fit_cca.__wrapped__)

  @aligners.register(names[1], needs_pairs=True, uses_unpaired=False, min_pairs=2, citation="test")
  def fit_scrambled(key, data, *, dim: int = 16) -> LinearAlignment:
    """A random linear map: chance level, worse than CCA by construction."""
    k1, k2 = jax.random.split(jax.random.key(0))
    dx, dy = data.dims
    return LinearAlignment(jax.random.normal(k1, (dx, dim)), jax.random.normal(k2, (dy, dim)),
                           data.pairs_x.mean(0), data.pairs_y.mean(0), True)

  yield names
  for n in names:
    aligners.ALIGNERS.pop(n, None)


def test_planted_difference_excludes_zero_and_identical_methods_do_not(cache, tmp_path, planted_methods):
  copy, scrambled = planted_methods
  cfg = smoke_config(cache, methods=("cca", copy, scrambled), reference="cca", n_pairs=(100,), seeds=3)
  res = experiment().run(cfg, str(tmp_path))
  vs = res["comparison"]["vs_reference"]["100"]
  for metric in ("i2t_r1", "t2i_r1", "foscttm", "matching_acc"):
    worse, same = vs[metric][scrambled], vs[metric][copy]
    assert worse["excludes_zero"] and worse["wins"] == 0 and worse["n_seeds"] == 3, (metric, worse)
    assert (worse["diff"] > 0) if metric == "foscttm" else (worse["diff"] < 0)
    assert not same["excludes_zero"] and same["diff"] == 0.0 and same["wins"] == 0, (metric, same)
  best = res["comparison"]["vs_best_other"]["100"]["i2t_r1"]
  assert best["b"] == copy and not best["excludes_zero"]
  rows = {line.split("|")[1].strip(): line for line in main_tables(tmp_path).split("### Δ i2t_r1")[1].splitlines()
          if line.startswith("| ") and "method" not in line}
  assert "*" in rows[scrambled] and "*" not in rows[copy]


def test_a_trained_method_trains_on_the_checkpointed_loop_in_its_run_dir_and_may_run_without_pairs(cache, tmp_path):
  seen = []

  @aligners.register("_test_trained", needs_pairs=False, uses_unpaired=True, min_pairs=0, citation="test",
                     trained=True)
  def fit_trained(key, data, *, steps: int = 3, loop=None) -> LinearAlignment:
    """Stands in for a trained method: a few steps of the loop it is given, on a one-parameter state."""
    state = train_state.TrainState.create(apply_fn=None, params={"w": jnp.zeros(())}, tx=optax.sgd(0.1))
    step = lambda st, d, rng: (st.apply_gradients(grads={"w": jnp.ones(())}),  # noqa: E731
                               {"loss": jnp.zeros(()), "grad_norm": jnp.ones(())})
    final = loop(state, step, {}, key=key, steps=steps)
    seen.append((int(final.step), data.n_pairs))
    dx, dy = data.dims
    w = jax.random.normal(key, (dx, dy))
    return LinearAlignment(w, None, data.x.mean(0), data.y.mean(0), True)

  try:
    cfg = smoke_config(cache, methods=("cca", "_test_trained"), n_pairs=(0, 8), seeds=1)
    with cfg.unlocked():  # the config may have been read before the stand-in was registered
      cfg.hparams["_test_trained"] = ml_collections.ConfigDict({"steps": 5})
    res = experiment().run(cfg, str(tmp_path))
  finally:
    aligners.ALIGNERS.pop("_test_trained", None)
  status = {(c["method"], c["p"]): c["status"] for c in res["cells"]}
  assert status == {("cca", 0): "needs_pairs", ("cca", 8): "ok", ("_test_trained", 0): "ok",
                    ("_test_trained", 8): "ok"}
  assert sorted(seen) == [(5, 0), (5, 8)]  # config.hparams reach the fit
  for cell in ("p0_s0", "p8_s0"):  # each cell checkpoints in a run directory of its own, keyed by its settings
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "_test_trained" / f"{cell}__*"))
    assert sorted(os.listdir(os.path.join(run_dir, "ckpt"))) == ["5"]
  assert res["reference"] == "cca"  # the auto reference is a closed-form method when sotalign is not run


# ----------------------------------------------------------------------------------------------------------------
# File mode: your own .npy embeddings instead of a cache.
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # ≈ 60 s; the SOTAlign experiment's file mode keeps its end-to-end test in the fast set
def test_file_mode_reads_the_files_and_draws_nested_pairs_from_the_pair_files(cache, tmp_path):
  from sotalign_jax.cli import convert
  from sotalign_jax.data import files as files_lib
  out = str(tmp_path / "files")
  assert convert.main(["to-files", "--cache", cache, "--out", out, "--n-pairs", "200", "--test-size", "100",
                       "--val-size", "40", "--min-unpaired", "20", "--quiet"]) == 0
  load = lambda k: np.load(os.path.join(out, f"{k}.npy"))  # noqa: E731
  cfg = smoke_config("does/not/exist", n_pairs=(0, 8, -1))
  for k in files_lib.FILE_KEYS:
    cfg.data[k] = os.path.join(out, f"{k}.npy")
  x, y, proto = protocol.stack_files(files_lib.open_embedding_files({k: cfg.data[k] for k in files_lib.FILE_KEYS}))
  # the sets are the files, row for row; the pairs at 8 are among those at 30, and come from the pair files only
  test = proto.held_out("test")
  np.testing.assert_array_equal(x[test["image_rows"]], load("test_x"))
  np.testing.assert_array_equal(y[test["caption_rows"]], load("test_y"))
  d8, d30 = proto.draw(1, 8), proto.draw(1, 30)
  assert set(d8["pair_x"]) <= set(d30["pair_x"]) and proto.p_max == 200
  np.testing.assert_array_equal(x[d30["pair_x"]], load("pairs_x")[d30["pair_x"]])  # pairs first in the stack
  np.testing.assert_array_equal(y[d30["pair_y"]], load("pairs_y")[d30["pair_x"]])  # row-aligned
  np.testing.assert_array_equal(x[d8["unp_x"]], load("unpaired_x"))
  assert not set(proto.draw(2, 8)["pair_x"]) == set(d8["pair_x"])  # another seed, other pairs
  # end to end: the smoke sweep runs on the files, records them, and a missing half of a couple is rejected
  res = experiment().run(cfg, str(tmp_path / "run"))
  assert res["protocol"]["files"]["test_x"].endswith("test_x.npy") and res["protocol"]["cache"] is None
  assert res["protocol"]["n_test_images"] == 100 and res["protocol"]["p_max"] == 200
  assert {c["status"] for c in res["cells"] if c["method"] == "cca"} == {"ok", "needs_pairs"}
  bad = smoke_config("does/not/exist")
  bad.data.test_x = cfg.data.test_x
  with pytest.raises(ValueError, match="test_y is not"):
    cfg_lib.config_module(CONFIG_FILE).validate(bad)


def test_every_method_of_a_full_sweep_gets_its_own_colour_and_marker():
  from sotalign_jax.runtime import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  methods = [f"m{i}" for i in range(20)]
  styles = sweep_lib.method_styles(methods)
  pairs = [(tuple(styles[m]["color"]), styles[m]["marker"]) for m in methods]
  assert len(set(pairs)) == 20 and len({c for c, _ in pairs[:14]}) == 14  # 14 methods: 14 colours (tab20)
  assert sweep_lib.method_styles(methods[:3]) == {m: styles[m] for m in methods[:3]}  # fixed by position


def test_lower_is_better_reads_the_metric_name_under_any_evaluator_prefix():
  lower = ("foscttm", "q100_foscttm", "i2t_mean_rank", "wordnet_t2i_median_rank", "fit_seconds")
  higher = ("i2t_r1", "t2i_r10", "matching_acc", "q100_matching_acc", "zeroshot_fashion_mnist", "tuxpaint_i2t_r1")
  from sotalign_jax.runtime import sweep  # pylint: disable=g-import-not-at-top
  assert all(sweep.lower_is_better(m) for m in lower) and not any(sweep.lower_is_better(m) for m in higher)
