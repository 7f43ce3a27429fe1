"""experiments/match.py (the match preset of the engine) end to end on small synthetic caches: every method beats
chance on planted structure, the cross-domain and zero-shot evaluators, keyed resume, bad config, 1 vs 8 devices."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from sotalign_jax.data.fake import make_fake_cache
from sotalign_jax.runtime import io as sio

SCRIPT = os.path.join(REPO, "experiments", "match.py")
METHODS = {f"{f}_{v}" for f in ("qap", "localcka", "linreg", "relrep") for v in ("none", "stretch", "cluster", "both")}
METHODS = (METHODS - {"linreg_none", "relrep_none"}) | {"linreg", "relrep"}
N_QUERY = 30  # configs/proj/match/config.py:smoke
# XLA's CPU backend optimisation is not what these tests check, and at level 0 FAQ compiles about twice as fast
ENV = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip())


def launch(workdir, caches, *overrides):
  return [sys.executable, SCRIPT, "--config", os.path.join(REPO, "configs", "proj", "match", "config.py") + ":smoke",
          "--workdir", str(workdir), f"--config.data.cache={caches['main']}",
          f"--config.evals.tuxpaint.cache={caches['xdomain']}",
          f"--config.evals.fashion_mnist.cache={caches['fashion']}",
          "--config.evals.tuxpaint.queries=30", *overrides]


def make_fashion_like(out_dir, main_dir, n_classes=4):
  """Images of the fake cache, each captioned by the prompt of its class (the caption of one of ``n_classes``
  prototype images, class = the prototype whose caption is nearest to the image's own caption): the format of the
  fashion-mnist cache, with classes that exist in both spaces."""
  x = np.load(os.path.join(main_dir, "image_embeddings.npy"))
  t = np.load(os.path.join(main_dir, "text_embeddings.npy"))[::2]  # first caption of every image
  rng = np.random.default_rng(1)
  protos = rng.choice(len(x), n_classes, replace=False)
  unit = t / np.linalg.norm(t, axis=1, keepdims=True)
  label = np.argmax(unit @ unit[protos].T, 1)
  sio.save_npy(os.path.join(out_dir, "image_embeddings.npy"), x)
  sio.save_npy(os.path.join(out_dir, "text_embeddings.npy"), t[protos][label])
  sio.write_jsonl(os.path.join(out_dir, "index.jsonl"), [
      {"caption": f"a photo of a c{c}", "image": i, "image_id": f"f{i}", "label": f"c{c}", "split": "test"}
      for i, c in enumerate(label)])
  sio.write_json(os.path.join(out_dir, "manifest.json"), {"fake": True})
  return out_dir


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
  root = tmp_path_factory.mktemp("caches")
  main = make_fake_cache(str(root / "main"), n_images=400)
  # same fake encoders (same seed), every image a query of the "other dataset"
  xdomain = make_fake_cache(str(root / "xdomain"), n_images=400, splits=np.array(["test"] * 400))
  fashion = make_fashion_like(str(root / "fashion"), main)
  return {"main": main, "xdomain": xdomain, "fashion": fashion}


@pytest.fixture(scope="module")
def first_run(caches, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  out = subprocess.run(launch(workdir, caches), capture_output=True, text=True, timeout=600, cwd=REPO, env=ENV)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out


def means(res, p, metric):
  return {m: res["summary"][m][str(p)][metric]["mean"] if res["summary"][m][str(p)][metric] else None
          for m in res["summary"]}


def test_every_method_beats_chance_on_planted_structure_and_more_pairs_help(first_run):
  workdir, out = first_run
  text = open(workdir / "results.json").read()
  assert "NaN" not in text  # strict JSON: a missing metric is null
  res = json.loads(text)
  assert set(res["summary"]) == METHODS
  acc24, acc12 = means(res, 24, "matching_acc"), means(res, 12, "matching_acc")
  r1, r10 = means(res, 24, "i2t_r1"), means(res, 24, "i2t_r10")
  for m in METHODS:
    assert acc24[m] > 5 / N_QUERY, (m, acc24[m])  # chance is 1 / N_QUERY
    if m.startswith("qap"):
      assert r1[m] == pytest.approx(acc24[m])  # a matching, not a ranking: its R@1 is its matching accuracy
    else:
      assert acc24[m] > 0.3 and r1[m] <= r10[m] <= 1.0, (m, acc24[m], r1[m])
  assert np.mean(list(acc24.values())) > np.mean(list(acc12.values()))  # more base pairs help, on average
  assert "| localcka_both |" in out.stdout and "### matching_acc" in out.stdout
  assert os.path.getsize(workdir / "sweep.png") > 1000
  cells = {(c["method"], c["p"], c["seed"]): c for c in res["cells"]}
  assert cells["qap_cluster", 12, 0]["settings"]["fit"]["hparams"]["n_base"] == 12  # selected from the pool
  assert cells["qap_cluster", 12, 0]["sizes"]["pairs"] == 120 and cells["qap_none", 12, 0]["sizes"]["pairs"] == 12


def test_cross_domain_and_zeroshot(first_run):
  workdir, _ = first_run
  res = json.load(open(workdir / "results.json"))
  xdomain = means(res, 24, "tuxpaint_matching_acc")
  assert all(v > 5 / N_QUERY for v in xdomain.values()), xdomain
  zs = means(res, 24, "zeroshot_fashion_mnist")
  assert {m for m, v in zs.items() if v is None} == {m for m in METHODS if m.startswith("qap")}  # QAP can't classify
  assert zs["localcka_none"] > 0.45 and zs["linreg"] > 0.45, zs  # chance 0.25


def test_rerun_reuses_cells_and_a_changed_option_computes_new_ones(first_run, caches, tmp_path):
  workdir, _ = first_run
  before = json.load(open(workdir / "results.json"))
  out = subprocess.run(launch(workdir, caches), capture_output=True, text=True, timeout=600, cwd=REPO, env=ENV)
  assert out.returncode == 0, out.stderr[-3000:]
  n = len(METHODS) * 2 * 2
  assert f"{n} of {n} cells done before with these settings, 0 to run" in out.stdout
  out = subprocess.run(launch(workdir, caches, "--config.hparams.ridge.lam=10.0", "--config.methods=linreg"),
                       capture_output=True, text=True, timeout=600, cwd=REPO, env=ENV)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "0 of 4 cells done before with these settings, 4 to run" in out.stdout
  after = json.load(open(workdir / "results.json"))
  assert after["methods_run"] == ["linreg"]
  assert set(after["methods_from_store"]) == METHODS - {"linreg", "linreg_stretch", "linreg_cluster", "linreg_both"}
  for m in ("qap_both", "localcka_none"):
    assert means(after, 24, "matching_acc")[m] == means(before, 24, "matching_acc")[m]


def test_bad_config_is_one_error_line_and_no_workdir(caches, tmp_path):
  for bad in ("--config.hparams.qap.no_such_key=1", "--config.methods=qap_none,magic", "--config.select_from=5",
              "--config.hparams.qap.kernel=cosine"):
    workdir = tmp_path / bad.split("=")[0].rsplit(".", 1)[-1]
    out = subprocess.run(launch(workdir, caches, bad), capture_output=True, text=True, timeout=300, cwd=REPO,
                         env=ENV)
    assert out.returncode == 2, (bad, out.stderr[-2000:])
    assert out.stderr.strip().count("\n") == 0 and "error:" in out.stderr, (bad, out.stderr)
    assert not workdir.exists(), bad


def test_qap_restart_batch_splits_restarts_evenly_over_devices():
  from sotalign_jax.aligners.matching import restart_batch  # pylint: disable=g-import-not-at-top
  for n_init, batch, n_dev, want in [(500, 100, 1, 100), (500, 100, 8, 96), (20, 20, 8, 16), (8, 8, 8, 8),
                                     (16, 4, 8, 8), (500, 1000, 8, 496), (3, 7, 1, 7), (4, 4, 8, 8), (1, 9, 2, 2)]:
    got = restart_batch(n_init, batch, n_dev)
    assert got == want, (n_init, batch, n_dev, got, want)
    assert got % n_dev == 0 or n_dev == 1


@pytest.mark.slow
def test_eight_fake_devices_give_the_single_device_metrics(caches, tmp_path):
  # QAP with and without stretch + k-means base (the sharded restarts), local CKA alongside; with 4 base pairs the
  # matching found depends on the restarts' random starts, so this also checks that 1 and 8 devices run the same.
  args = ["--config.methods=qap_none,qap_both,localcka_none,localcka_both", "--config.n_pairs=4",
          "--config.hparams.qap.n_init=8", "--config.hparams.qap.batch_size=8", "--config.seeds=1"]
  env8 = dict(ENV, XLA_FLAGS=ENV["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
  runs = {}
  for name, env in (("one", ENV), ("eight", env8)):
    out = subprocess.run(launch(tmp_path / name, caches, *args), capture_output=True, text=True, timeout=600,
                         cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    runs[name] = json.load(open(tmp_path / name / "results.json"))
  one, eight = runs["one"], runs["eight"]
  for c1, c8 in zip(one["cells"], eight["cells"]):
    assert c1["method"] == c8["method"]
    for k, v in c1["metrics"].items():
      if k.endswith("seconds"):
        continue
      assert (v is None and c8["metrics"][k] is None) or c8["metrics"][k] == pytest.approx(v, abs=1e-6), (c1, k)
