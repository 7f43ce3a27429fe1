"""experiments/cmcr.py end to end on synthetic .npy spaces: recovery, resume after kill -9, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import (REPO, assert_resume_is_bit_identical, devices_used, run_on_devices,
                      run_processes)
from test_cmcr import make_spaces

SCRIPT = os.path.join(REPO, "experiments", "cmcr.py")
N_EVAL = 200


def launch(workdir, files, *overrides):
  return [sys.executable, SCRIPT, "--config", os.path.join(REPO, "configs", "cmcr.py") + ":smoke",
          "--workdir", str(workdir), *(f"--config.data.{k}={v}" for k, v in files.items()), *overrides]


def save(directory, spaces):
  os.makedirs(directory, exist_ok=True)
  files = {}
  for k, v in spaces.items():
    files[k] = os.path.join(directory, f"{k}.npy")
    np.save(files[k], v)
  return files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  return save(str(tmp_path_factory.mktemp("spaces")), make_spaces(n_eval=N_EVAL))


@pytest.fixture(scope="module")
def main_run(files, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("main")
  out = subprocess.run(launch(workdir, files, "--config.methods=('cmcr','supervised','no_connection')"),
                       capture_output=True, text=True, timeout=600, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out


def test_cmcr_recovers_the_hidden_relation_without_pairs(main_run):
  workdir, out = main_run
  res = json.load(open(workdir / "results.json"))["methods"]
  assert list(res) == ["cmcr", "supervised", "no_connection"]
  chance = 1 / N_EVAL
  for m in ("cmcr", "supervised"):
    assert set(res[m]) == {"a2c_r1", "a2c_r5", "c2a_r1", "c2a_r5"}
    assert min(res[m]["a2c_r1"], res[m]["c2a_r1"]) > 30 * chance, (m, res[m])
  assert set(res["no_connection"]) == {"a2c_r1", "a2c_r5", "c2a_r1", "c2a_r5"}  # chance: the dimensions differ
  assert "| cmcr |" in out.stdout
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert any("train/cmcr/intra_loss" in l for l in lines)
  assert any("eval/supervised/a2c_r1" in l for l in lines)
  assert os.path.isdir(workdir / "tb")
  assert open(workdir / "training_curves.png", "rb").read(4) == b"\x89PNG"


def np_recalls(queries, gallery, ks=(1, 5)):
  """Recall@k of row i retrieving row i by cosine, written out with numpy (the oracle for no_connection)."""
  unit_rows = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sims = unit_rows(queries.astype(np.float64)) @ unit_rows(gallery.astype(np.float64)).T
  ranks = np.array([np.sum(sims[i] > sims[i, i]) for i in range(len(sims))])  # rows that beat the positive
  return {k: float(np.mean(ranks < k)) for k in ks}


def test_no_connection_with_equal_dimensions_is_raw_cosine_retrieval(tmp_path):
  # Both spaces 20-d; C rows are noisy, arbitrarily rescaled copies of the A rows, so raw cosine retrieval is
  # well above chance but not perfect, and a dot product (no normalisation) would rank differently.
  rng = np.random.default_rng(3)
  spaces = make_spaces(n_eval=N_EVAL, d1=20, d2=20)
  a = spaces["a_eval"]
  spaces["c_eval"] = (rng.uniform(0.3, 3.0, (N_EVAL, 1)) * (a + 0.25 * rng.normal(size=a.shape))).astype(np.float32)
  out = subprocess.run(launch(tmp_path / "w", save(str(tmp_path / "in"), spaces), "--config.methods=no_connection"),
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.load(open(tmp_path / "w" / "results.json"))["methods"]["no_connection"]
  a2c, c2a = np_recalls(a, spaces["c_eval"]), np_recalls(spaces["c_eval"], a)
  want = {"a2c_r1": a2c[1], "a2c_r5": a2c[5], "c2a_r1": c2a[1], "c2a_r5": c2a[5]}
  assert got == pytest.approx(want, abs=1e-12), (got, want)
  assert 10 / N_EVAL < want["a2c_r1"] < 0.9 and want["a2c_r5"] > want["a2c_r1"]  # a non-trivial case


@pytest.mark.slow
def test_every_method_and_ablation_writes_results(files, tmp_path):
  out = subprocess.run(launch(tmp_path, files, "--config.steps=20"), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.load(open(tmp_path / "results.json"))["methods"]
  assert list(res) == ["cmcr", "supervised", "no_connection", "cmcr_no_noise", "cmcr_no_pseudo", "cmcr_no_intra"]
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  # the ablated terms are still logged, but do not enter the loss
  last = {k: v for l in lines for k, v in l.items()}
  assert last["train/cmcr_no_intra/loss"] == pytest.approx(
      last["train/cmcr_no_intra/text_loss"] + last["train/cmcr_no_intra/pseudo_loss"], rel=1e-5)
  assert last["train/cmcr_no_pseudo/loss"] == pytest.approx(
      last["train/cmcr_no_pseudo/text_loss"] + 0.1 * last["train/cmcr_no_pseudo/intra_loss"], rel=1e-5)


def test_kill_and_resume_reaches_the_uninterrupted_metrics(files, main_run, tmp_path):
  proc = subprocess.Popen(launch(tmp_path, files, "--config.methods=cmcr"), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt = tmp_path / "runs" / "cmcr" / "ckpt"
  deadline = time.time() + 300
  while time.time() < deadline and not (ckpt.exists() and any(p.name.isdigit() and int(p.name) >= 20
                                                              for p in ckpt.iterdir())):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "results.json").exists(), "the run finished before it could be killed"
  again = subprocess.run(launch(tmp_path, files, "--config.methods=cmcr"), capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  resumed_from = int(again.stdout.split("[cmcr] resuming from step ")[1].split()[0])
  assert resumed_from >= 20
  # the loss curve after the resume point and the final state are those of the uninterrupted run, bit for bit
  assert_resume_is_bit_identical(main_run[0], tmp_path, "cmcr", resumed_from, "runs/cmcr/ckpt")
  ref = json.load(open(main_run[0] / "results.json"))["methods"]["cmcr"]
  got = json.load(open(tmp_path / "results.json"))["methods"]["cmcr"]
  assert got == ref


@pytest.mark.parametrize("change, override, message", [
    (lambda s: s.update(b_prime=s["b_prime"][:-1]), "", "b has 1500 rows but b_prime 1499"),
    (lambda s: s["c_memory"].__setitem__((7, 0), np.nan), "", "c_memory contains NaN or Inf in 1 row"),
    (lambda s: s.update(a_eval=s["a_eval"][:, :3]), "", "a_eval has dimension 3 but space 1"),
    (lambda s: [s.pop("a_train"), s.pop("c_train")], "--config.methods=('cmcr','supervised')", "config.data.a_train"),
    (lambda s: None, "--config.no_such_key=1", "no_such_key"),
    (lambda s: None, "--config.methods=('cmcr','magic')", "config.methods"),
])
def test_bad_input_is_rejected_at_start_up_naming_it(tmp_path, change, override, message):
  spaces = make_spaces(n_eval=N_EVAL)
  change(spaces)
  out = subprocess.run(launch(tmp_path / "w", save(str(tmp_path / "in"), spaces), *filter(None, [override])),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert message in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / "w" / "results.json").exists()


def test_demo_path_joins_two_caches_and_connects_them(tmp_path):
  # Two fake caches of the same pictures and captions (same seed → same latents) with different "encoders".
  from sotalign_jax.data.fake import make_fake_cache
  splits = np.random.default_rng(1).choice(["paired", "unpaired", "val", "test"], size=500, p=[.3, .5, .1, .1])
  c1 = make_fake_cache(str(tmp_path / "c1"), n_images=500, dx=40, dy=24, noise=0.3, splits=splits)
  c2 = make_fake_cache(str(tmp_path / "c2"), n_images=500, dx=36, dy=28, noise=0.3, splits=splits)
  out = subprocess.run(launch(tmp_path / "w", {}, "--config.data.source=demo", f"--config.demo.cache_1={c1}",
                              f"--config.demo.cache_2={c2}", "--config.teacher.cca_dim=10",
                              "--config.methods=('cmcr','no_connection')"), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.load(open(tmp_path / "w" / "results.json"))
  n_test = int((splits == "test").sum())
  assert r["n_eval"] == n_test and r["n_texts"] == 2 * int(np.isin(splits, ["paired", "unpaired"]).sum())
  assert r["space_1_i2t_r1"] > 5 / n_test and r["space_2_i2t_r1"] > 5 / n_test
  assert r["methods"]["cmcr"]["a2c_r5"] > 5 * 5 / n_test, r["methods"]


def test_demo_without_caches_says_how_to_build_them(tmp_path):
  out = subprocess.run(launch(tmp_path / "w", {}, "--config.data.source=demo",
                              f"--config.demo.cache_1={tmp_path}/openclipart__efficientnet-lite0__all-MiniLM-L6-v2"),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "python -m sotalign_jax.cli.embed --dataset openclipart --image-encoder efficientnet-lite0" in out.stderr


SHARDED_ARGS = ["--config.methods=cmcr", "--config.steps=20"]


@pytest.fixture(scope="module")
def one_device_run(files, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_device")
  run_on_devices(launch(workdir, files, *SHARDED_ARGS), 1)
  return workdir


def assert_same_run(a_dir, b_dir):
  a = json.load(open(a_dir / "results.json"))["methods"]["cmcr"]
  b = json.load(open(b_dir / "results.json"))["methods"]["cmcr"]
  assert a.keys() == b.keys()
  # the losses agree to float precision (each step logged once); a recall can move by near-ties flipping (here
  # 2 queries of 200 = 0.01)
  steps = lambda w: [json.loads(l)["step"] for l in open(w / "metrics.jsonl") if "train/cmcr/loss" in l]
  loss = lambda w: [json.loads(l)["train/cmcr/loss"] for l in open(w / "metrics.jsonl") if "train/cmcr/loss" in l]
  assert steps(a_dir) == steps(b_dir) and len(set(steps(b_dir))) == len(steps(b_dir))
  np.testing.assert_allclose(loss(a_dir), loss(b_dir), rtol=1e-5)
  np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(a)], atol=0.0101)


def test_eight_fake_devices_give_the_single_device_metrics(files, one_device_run, tmp_path):
  run_on_devices(launch(tmp_path / "eight", files, *SHARDED_ARGS), 8)
  assert_same_run(one_device_run, tmp_path / "eight")
  assert devices_used(one_device_run) == (1, 1) and devices_used(tmp_path / "eight") == (8, 1)  # as launched


def test_two_hosts_split_the_texts_and_give_the_single_device_metrics(files, one_device_run, tmp_path):
  outs = run_processes(launch(tmp_path / "two", files, *SHARDED_ARGS), 2, devices_per_process=2)
  assert_same_run(one_device_run, tmp_path / "two")
  assert devices_used(tmp_path / "two") == (4, 2)  # 2 processes × 2 fake devices
  held = [[l for l in out.splitlines() if l.startswith("process ")] for out in outs]
  n = int(held[0][0].split(" of ")[1])
  half = -(-n // 4) * 2  # n padded to a multiple of the 4 devices, half of it on each host
  assert held == [[f"process 0/2 holds texts [0, {half}) of {n}"], [f"process 1/2 holds texts [{half}, {n}) of {n}"]]
  assert "C-MCR results" in outs[0] and "C-MCR results" not in outs[1]
