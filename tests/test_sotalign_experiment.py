"""experiments/sotalign.py end to end on a small synthetic cache: results, resume after kill -9, bad config."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from fake_cache import make_fake_cache

SCRIPT = os.path.join(REPO, "experiments", "sotalign.py")


def launch(workdir, cache, *overrides):
  return [sys.executable, SCRIPT, "--config", os.path.join(REPO, "configs", "sotalign.py") + ":smoke",
          "--workdir", str(workdir), f"--config.data.cache={cache}", "--config.eval.fashion_mnist_cache=",
          "--config.eval.tuxpaint_cache=", *overrides]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return make_fake_cache(str(tmp_path_factory.mktemp("cache")), n_images=400)


def test_all_methods_write_results_and_teachers_beat_chance(cache, tmp_path):
  out = subprocess.run(launch(tmp_path, cache), capture_output=True, text=True, timeout=600, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.load(open(tmp_path / "results.json"))["methods"]
  assert set(res) == {"teacher_cca", "teacher_ridge", "teacher_procrustes", "sail", "structure", "pseudo_label",
                      "sotalign", "upper_bound"}
  n_test = len({r["image_id"] for r in map(json.loads, open(os.path.join(cache, "index.jsonl")))
                if r["split"] == "test"})
  for m, r in res.items():
    assert {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"} <= set(r)
    assert r["i2t_r10"] > 3 * 10 / n_test, (m, r)  # far above chance on a planted structure
  assert "| sotalign |" in out.stdout
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert any("train/sotalign/unpaired_loss" in l for l in lines)
  assert os.path.isdir(tmp_path / "tb")


def test_kill_and_resume_reaches_the_uninterrupted_metrics(cache, tmp_path):
  args = ["--config.methods=sotalign", "--config.steps=60", "--config.ckpt_every=10", "--config.log_every=10"]
  ref = subprocess.run(launch(tmp_path / "ref", cache, *args), capture_output=True, text=True, timeout=600)
  assert ref.returncode == 0, ref.stderr[-3000:]
  proc = subprocess.Popen(launch(tmp_path / "killed", cache, *args), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt = tmp_path / "killed" / "runs" / "sotalign_n64" / "ckpt"
  deadline = time.time() + 300
  while time.time() < deadline and not (ckpt.exists() and any(p.name.isdigit() and int(p.name) >= 20
                                                              for p in ckpt.iterdir())):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "killed" / "results.json").exists(), "the run finished before it could be killed"
  again = subprocess.run(launch(tmp_path / "killed", cache, *args), capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from step" in again.stdout
  a = json.load(open(tmp_path / "ref" / "results.json"))["methods"]
  b = json.load(open(tmp_path / "killed" / "results.json"))["methods"]
  np.testing.assert_allclose([a["sotalign"][k] for k in sorted(a["sotalign"]) if a["sotalign"][k] is not None],
                             [b["sotalign"][k] for k in sorted(a["sotalign"]) if a["sotalign"][k] is not None])


@pytest.mark.parametrize("override, message", [
    ("--config.no_such_key=1", "no_such_key"),
    ("--config.methods=sotalign,magic", "config.methods"),
    ("--config.data.n_pairs=100000", "config.data.n_pairs"),
    ("--config.head=transformer", "config.head"),
])
def test_bad_config_is_rejected_at_start_up_naming_the_key(cache, tmp_path, override, message):
  out = subprocess.run(launch(tmp_path, cache, override), capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert message in out.stderr
  assert not (tmp_path / "results.json").exists()


def test_eight_fake_devices_give_the_single_device_metrics(cache, tmp_path):
  args = ["--config.methods=sotalign,upper_bound", "--config.steps=20"]
  env8 = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  one = subprocess.run(launch(tmp_path / "one", cache, *args), capture_output=True, text=True, timeout=600)
  eight = subprocess.run(launch(tmp_path / "eight", cache, *args), capture_output=True, text=True, timeout=600,
                         env=env8)
  assert one.returncode == 0, one.stderr[-3000:]
  assert eight.returncode == 0, eight.stderr[-3000:]
  a = json.load(open(tmp_path / "one" / "results.json"))["methods"]
  b = json.load(open(tmp_path / "eight" / "results.json"))["methods"]
  for m in a:
    np.testing.assert_allclose([v for v in a[m].values() if v is not None],
                               [v for v in b[m].values() if v is not None], atol=1e-6)
  la = [json.loads(l) for l in open(tmp_path / "one" / "metrics.jsonl")]
  lb = [json.loads(l) for l in open(tmp_path / "eight" / "metrics.jsonl")]
  loss = lambda ls: [l["train/sotalign/loss"] for l in ls if "train/sotalign/loss" in l]
  np.testing.assert_allclose(loss(la), loss(lb), rtol=1e-4)


def test_n_pairs_sweep_writes_per_size_results_and_plot(cache, tmp_path):
  out = subprocess.run(launch(tmp_path, cache, "--config.methods=teacher_cca,teacher_ridge",
                              "--config.data.n_pairs_sweep=32,100"), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.load(open(tmp_path / "results.json"))
  assert sorted(res["by_n_pairs"], key=int) == ["32", "64", "100"]
  assert res["methods"] == res["by_n_pairs"]["64"]  # the main table is config.data.n_pairs
  # more pairs make a better ridge teacher on the planted structure
  assert res["by_n_pairs"]["100"]["teacher_ridge"]["i2t_r5"] > res["by_n_pairs"]["32"]["teacher_ridge"]["i2t_r5"]
  assert (tmp_path / "r1_vs_n_pairs.png").stat().st_size > 1000
  assert "100 pairs:" in open(tmp_path / "results_by_n_pairs.md").read()
