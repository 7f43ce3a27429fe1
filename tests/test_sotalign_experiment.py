"""experiments/sotalign.py end to end on a small synthetic cache: results, resume after kill -9, bad config."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, run_on_devices, run_processes
from sotalign_jax.data.fake import make_fake_cache

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


SHARDED_ARGS = ["--config.methods=teacher_cca,sotalign,upper_bound", "--config.steps=20"]


@pytest.fixture(scope="module")
def one_device_run(cache, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_device")
  run_on_devices(launch(workdir, cache, *SHARDED_ARGS), 1)
  return workdir


def assert_same_run(a_dir, b_dir):
  """Same final metrics (to float tolerance) and the same logged training losses, each step logged once."""
  a = json.load(open(a_dir / "results.json"))["methods"]
  b = json.load(open(b_dir / "results.json"))["methods"]
  assert set(a) == set(b)
  for m in a:
    np.testing.assert_allclose([v for v in a[m].values() if v is not None],
                               [v for v in b[m].values() if v is not None], atol=1e-6)
  la = [json.loads(l) for l in open(a_dir / "metrics.jsonl")]
  lb = [json.loads(l) for l in open(b_dir / "metrics.jsonl")]
  assert [l["step"] for l in la] == [l["step"] for l in lb]
  for method in ("sotalign", "upper_bound"):
    loss = lambda ls: [l[f"train/{method}/loss"] for l in ls if f"train/{method}/loss" in l]
    assert loss(la) and len(loss(la)) == len(set(l["step"] for l in la if f"train/{method}/loss" in l))
    np.testing.assert_allclose(loss(la), loss(lb), rtol=1e-4)


def test_eight_fake_devices_give_the_single_device_metrics(cache, one_device_run, tmp_path):
  run_on_devices(launch(tmp_path / "eight", cache, *SHARDED_ARGS), 8)
  assert_same_run(one_device_run, tmp_path / "eight")


def test_two_hosts_read_disjoint_halves_of_the_pools_and_give_the_single_device_metrics(cache, one_device_run,
                                                                                        tmp_path):
  # two JAX processes on localhost with two fake devices each: a multi-host launch in miniature
  outs = run_processes(launch(tmp_path / "two", cache, *SHARDED_ARGS), 2, devices_per_process=2)
  assert_same_run(one_device_run, tmp_path / "two")
  reads = [[line for line in out.splitlines() if line.startswith("[sotalign] process")] for out in outs]
  assert reads[0] == ["[sotalign] process 0/2 reads rows unp_x [0, 114), unp_y [0, 226)"], outs[0][-2000:]
  assert reads[1] == ["[sotalign] process 1/2 reads rows unp_x [114, 226), unp_y [226, 452)"], outs[1][-2000:]
  pools = next(line for line in outs[0].splitlines() if line.startswith("n_pairs="))
  assert "226 unpaired images, 452 unpaired texts" in pools  # the two blocks cover each pool exactly
  # process 0 alone reports (and writes) the results
  assert "SOTAlign results" in outs[0] and "SOTAlign results" not in outs[1]


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
