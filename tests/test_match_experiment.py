"""experiments/match.py end to end on small synthetic caches: results, planted structure, resume, bad config."""

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
N_QUERY = 30  # configs/match.py:smoke
# XLA's CPU backend optimisation is not what these tests check, and at level 0 FAQ compiles about twice as fast
ENV = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip())


def launch(workdir, caches, *overrides):
  return [sys.executable, SCRIPT, "--config", os.path.join(REPO, "configs", "match.py") + ":smoke",
          "--workdir", str(workdir), f"--config.data.cache={caches['main']}",
          f"--config.cross_domain.cache={caches['xdomain']}", f"--config.zeroshot.cache={caches['fashion']}",
          *overrides]


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


def test_results_have_every_method_and_beat_chance_on_planted_structure(first_run):
  workdir, out = first_run
  text = open(workdir / "results.json").read()
  assert "NaN" not in text  # strict JSON: a missing metric is null
  res = json.loads(text)
  methods = res["methods"]
  assert set(methods) == METHODS
  for m, r in methods.items():
    assert {"match_acc", "r1", "r5", "r10"} <= set(r)
    assert r["match_acc"] > 5 / N_QUERY, (m, r)  # chance is 1 / N_QUERY
    if m.startswith("qap"):
      assert r["r1"] == r["match_acc"] and r["r5"] is None and r["r10"] is None
    else:
      assert r["match_acc"] > 0.3 and r["r1"] <= r["r5"] <= r["r10"] <= 1.0, (m, r)
  assert set(res["by_n_base"]) == {"12", "24"}
  assert all(res["by_n_base"]["24"][m]["match_acc"] == methods[m]["match_acc"] for m in METHODS)
  small = np.mean([res["by_n_base"]["12"][m]["match_acc"] for m in METHODS])
  assert np.mean([methods[m]["match_acc"] for m in METHODS]) > small  # more base pairs help, on average
  assert "| localcka_both |" in out.stdout and "match_acc by n_base" in out.stdout
  assert os.path.getsize(workdir / "match_acc_vs_sizes.png") > 1000
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert any("eval/main/qap_both/b24_q30/match_acc" in l for l in lines)


def test_cross_domain_and_zeroshot_rows(first_run):
  workdir, _ = first_run
  res = json.load(open(workdir / "results.json"))
  assert set(res["cross_domain"]) == METHODS
  assert all(r["match_acc"] > 5 / N_QUERY for r in res["cross_domain"].values()), res["cross_domain"]
  zs = res["zeroshot"]
  assert set(zs) == {m for m in METHODS if not m.startswith("qap")}  # QAP cannot classify
  assert res["zeroshot_chance"] == 0.25
  assert zs["localcka_none"]["accuracy"] > 0.45 and zs["linreg"]["accuracy"] > 0.45, zs


def test_rerun_resumes_from_done_cells_and_notes_missing_caches(first_run, caches, tmp_path):
  workdir, _ = first_run
  before = json.load(open(workdir / "results.json"))["methods"]
  done = sorted(os.listdir(workdir / "done"))
  os.remove(workdir / "done" / "relrep_b24_q30_t1.json")
  caches = dict(caches, fashion=str(tmp_path / "no_such_cache"))
  out = subprocess.run(launch(workdir, caches), capture_output=True, text=True, timeout=600, cwd=REPO, env=ENV)
  assert out.returncode == 0, out.stderr[-3000:]
  n_zeroshot = sum(f.startswith("zeroshot_") for f in done)
  assert f"resumed: {len(done) - n_zeroshot - 1} of {len(done) - n_zeroshot} cells" in out.stdout
  assert "skipping the zeroshot rows" in out.stdout and "--dataset fashion_mnist" in out.stdout
  assert sorted(os.listdir(workdir / "done")) == done
  after = json.load(open(workdir / "results.json"))
  assert "zeroshot" not in after
  for m in METHODS:  # identical draws: identical numbers (timings aside)
    for k in ("match_acc", "r1", "r5", "r10"):
      assert after["methods"][m][k] == pytest.approx(before[m][k], nan_ok=True), (m, k)


def test_unknown_config_key_is_rejected_at_start_up_naming_it(caches, tmp_path):
  out = subprocess.run(launch(tmp_path, caches, "--config.qap.no_such_key=1"), capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=ENV)
  assert out.returncode != 0
  assert "no_such_key" in out.stderr
  assert not (tmp_path / "results.json").exists()


def test_bad_config_values_are_rejected_naming_the_key(caches, tmp_path):
  code = r"""
import sys
cache, workdir = sys.argv[1:]
sys.argv = ["x"]
sys.path.insert(0, "experiments")
import match
from configs.match import get_config
cases = [("qap.kernel", "cosine"), ("local_cka.kernel", "poly"), ("cluster.space", "audio"), ("n_trials", 0),
         ("qap.n_init", -1), ("linreg.lam", 0.0), ("n_base_sweep", (10, "x")), ("n_query_sweep", (1,)),
         ("methods", ("qap_none", "magic")), ("data.query_splits", ("test", "paired")),
         ("zeroshot.splits", ("holdout",)), ("data.max_base_pool", 0), ("n_base", 100000),
         ("n_query_sweep", (5, 100000))]
for key, value in cases:
  cfg = get_config("smoke")
  cfg.data.cache, cfg.cross_domain.cache, cfg.zeroshot.cache = cache, "", ""
  *parents, leaf = key.split(".")
  node = cfg
  for p in parents:
    node = getattr(node, p)
  setattr(node, leaf, value)
  try:
    match.run(cfg, workdir)
  except ValueError as e:
    assert "config." + key in str(e), (key, e)
    print("ok", key)
  else:
    print("ACCEPTED", key)
"""
  out = subprocess.run([sys.executable, "-c", code, caches["main"], str(tmp_path)], capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=ENV)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ACCEPTED" not in out.stdout and out.stdout.count("ok ") == 14, out.stdout
  assert not (tmp_path / "results.json").exists()


def test_qap_batch_size_splits_restarts_evenly_over_devices(caches, tmp_path):
  code = r"""
import sys
sys.argv = ["x"]
sys.path.insert(0, "experiments")
import match
for n_init, batch, n_dev, want in [(500, 100, 1, 100), (500, 100, 8, 96), (20, 20, 8, 16), (8, 8, 8, 8),
                                   (16, 4, 8, 8), (500, 1000, 8, 496), (3, 7, 1, 7), (4, 4, 8, 8), (1, 9, 2, 2)]:
  got = match.qap_batch_size(n_init, batch, n_dev)
  assert got == want, (n_init, batch, n_dev, got, want)
  assert got % n_dev == 0 and 0 < got <= max(n_init, batch, n_dev)
print("ok")
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO, env=ENV)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ["ok"], out.stdout


def test_eight_fake_devices_give_the_single_device_metrics(caches, tmp_path):
  # QAP with and without stretch + k-means base (the sharded path), local CKA (unsharded) alongside. With 4 base
  # pairs the matching found depends on the restarts' random starts, so this also checks that 1 and 8 devices run
  # the same restarts. One base size (one FAQ shape to compile); 8 restarts, one per device per call.
  args = ["--config.methods=('qap_none','qap_both','localcka_none','localcka_both')", "--config.n_base=4",
          "--config.n_base_sweep=()", "--config.qap.n_init=8", "--config.qap.batch_size=8"]
  env8 = dict(ENV, XLA_FLAGS=ENV["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
  runs = {}
  for name, env in (("one", ENV), ("eight", env8)):
    out = subprocess.run(launch(tmp_path / name, caches, *args), capture_output=True, text=True, timeout=600,
                         cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    runs[name] = (json.load(open(tmp_path / name / "results.json")), out.stdout)
  (one, out1), (eight, out8) = runs["one"], runs["eight"]
  assert one["n_devices"] == 1 and eight["n_devices"] == 8
  assert "devices: 1 x cpu\n" in out1
  assert "devices: 8 x cpu; FAQ restarts split over them, 8 per call" in out8
  for section in ("methods", "cross_domain", "zeroshot"):
    assert set(one[section]) == set(eight[section]), section
    for m, r in one[section].items():
      for k, v in r.items():
        if k == "seconds":
          continue
        w = eight[section][m][k]
        if v is None:
          assert w is None, (section, m, k)
        else:
          assert w == pytest.approx(v, abs=1e-6), (section, m, k, v, w)
  assert {"qap_none", "qap_both"} <= set(one["methods"]) and one["methods"]["qap_both"]["r5"] is None
  for k in ("match_acc", "r1", "r5", "r10"):
    assert k in one["std"]["localcka_both"] and k in one["methods"]["localcka_both"]
    assert eight["std"]["localcka_both"][k] == pytest.approx(one["std"]["localcka_both"][k], abs=1e-6)
  assert eight["std"]["qap_both"]["match_acc"] == pytest.approx(one["std"]["qap_both"]["match_acc"], abs=1e-6)
