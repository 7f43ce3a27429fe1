"""Workdir helpers: checkpoint fallback on corruption, non-finite checks, results tables."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from sotalign_jax.runtime import workdir as wd


def test_corrupted_latest_checkpoint_falls_back_to_previous_step(tmp_path, capsys):
  import orbax.checkpoint as ocp
  mgr = wd.checkpoint_manager(tmp_path / "ckpt", max_to_keep=3)
  for step in (10, 20):
    mgr.save(step, args=ocp.args.StandardSave({"w": jnp.full((4,), float(step))}))
  mgr.wait_until_finished()
  # truncate every file of the newest step
  for root, _, files in os.walk(tmp_path / "ckpt" / "20"):
    for f in files:
      open(os.path.join(root, f), "wb").close()
  mgr = wd.checkpoint_manager(tmp_path / "ckpt", max_to_keep=3)
  state, step = wd.restore_latest(mgr, {"w": jnp.zeros((4,))})
  assert step == 10
  np.testing.assert_array_equal(state["w"], np.full(4, 10.0))
  assert "step 20 is unreadable" in capsys.readouterr().out
  assert (tmp_path / "ckpt" / "corrupt-20").exists()


def test_no_checkpoint_returns_target_and_zero(tmp_path):
  state, step = wd.restore_latest(wd.checkpoint_manager(tmp_path / "c"), {"w": jnp.ones(2)})
  assert step == 0 and float(state["w"][0]) == 1.0


def test_check_finite_names_step_and_quantity():
  wd.check_finite(3, loss=jnp.float32(1.0))
  with pytest.raises(wd.NonFiniteError, match="step 7: grad_norm is not finite"):
    wd.check_finite(7, loss=jnp.float32(1.0), grad_norm=jnp.float32(np.nan))


def test_itstime():
  assert [s for s in range(1, 11) if wd.itstime(s, 4, 10)] == [4, 8, 10]
  assert [s for s in range(1, 11) if wd.itstime(s, 4, 10, first=True)] == [1, 4, 8, 10]


def test_write_results_json_and_markdown(tmp_path):
  table = wd.write_results(str(tmp_path), {"a": {"r1": 0.5, "r5": float("nan")}, "b": {"r1": 0.25}}, note="x")
  res = json.load(open(tmp_path / "results.json"))
  assert res.pop("provenance")["n_devices"] == res.pop("n_devices") == 1
  assert res == {"methods": {"a": {"r1": 0.5, "r5": None}, "b": {"r1": 0.25}}, "note": "x"}
  assert table.splitlines()[0] == "| method | r1 | r5 |"
  assert "| a | 0.5000 | – |" in table and "| b | 0.2500 | – |" in table
  assert open(tmp_path / "results.md").read().strip() == table


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  w = wd.MetricWriter(str(tmp_path))
  w.write(1, {"loss": jnp.float32(2.0), "skip": float("nan")}, prefix="train/")
  w.close()
  line = json.loads(open(tmp_path / "metrics.jsonl").read())
  assert line["step"] == 1 and line["train/loss"] == 2.0
  assert any(f.startswith("events") for f in os.listdir(tmp_path / "tb"))


def test_only_process_zero_writes_results_metrics_and_figures(tmp_path, monkeypatch):
  import jax
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  monkeypatch.setattr(jax, "process_index", lambda: 1)  # what every host but the first sees
  assert not wd.is_primary()
  table = wd.write_results(str(tmp_path), {"m": {"r1": 0.5}})
  assert "| m | 0.5000 |" in table  # still returned, for printing
  writer = wd.MetricWriter(str(tmp_path / "w"))
  assert writer.write(3, {"loss": jnp.float32(2.0)}, prefix="train/") == {"train/loss": 2.0}
  writer.close()
  wd.save_figure(plt.figure(), str(tmp_path / "fig.png"))
  wd.sync("noop")  # one process: returns at once
  assert os.listdir(tmp_path) == []
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  wd.write_results(str(tmp_path), {"m": {"r1": 0.5}})
  assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md"]


# ------------------------------------------------------------------------------------------------------------
# Checkpoints of a different state: an error naming the differences, never a silent restart.
# ------------------------------------------------------------------------------------------------------------
def _train_state(dim=4, tx=None):
  import optax
  from flax.training import train_state
  params = {"f": {"kernel": jnp.ones((dim, 3))}, "t_log": jnp.float32(0.5)}
  return train_state.TrainState.create(apply_fn=None, params=params, tx=tx or optax.adamw(1e-3))


def _save_steps(directory, state, steps=(10, 20)):
  import orbax.checkpoint as ocp
  mgr = wd.checkpoint_manager(directory)
  for step in steps:
    mgr.save(step, args=ocp.args.StandardSave(state.replace(step=step)))
  mgr.wait_until_finished()


@pytest.mark.parametrize("changed, lines", [
    (lambda: _train_state(dim=5),  # a head of another input size
     ["params.f.kernel: checkpoint shape (4, 3) float32, this run shape (5, 3) float32"]),
    (lambda: _train_state(tx=__import__("optax").lion(1e-3)),  # another optimizer: lion has no second moment
     ["opt_state.0.nu.f.kernel: only in the checkpoint"]),
    (lambda: _train_state().replace(params={"f": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
                                            "t_log": jnp.float32(0.5)}),  # a head with an extra parameter
     ["params.f.bias: only in this run"]),
])
def test_checkpoint_of_a_different_state_is_an_error_naming_the_difference(tmp_path, capsys, changed, lines):
  _save_steps(tmp_path / "ckpt", _train_state())
  before = sorted(os.listdir(tmp_path / "ckpt"))
  with pytest.raises(wd.CheckpointMismatchError) as err:
    wd.restore_latest(wd.checkpoint_manager(tmp_path / "ckpt"), changed())
  msg = str(err.value)
  assert "checkpoint step 20" in msg and str(tmp_path / "ckpt") in msg
  assert "use a new --workdir" in msg and f"delete {tmp_path / 'ckpt'}" in msg
  for line in lines:
    assert line in msg, msg
  # nothing moved aside or deleted, no fallback announced: the checkpoint still restores into the old state
  assert sorted(os.listdir(tmp_path / "ckpt")) == before and "unreadable" not in capsys.readouterr().out
  state, step = wd.restore_latest(wd.checkpoint_manager(tmp_path / "ckpt"), _train_state())
  assert step == 20 and int(state.step) == 20


def test_resume_of_an_intact_checkpoint_logs_no_warning(tmp_path, caplog):
  import logging
  _save_steps(tmp_path / "ckpt", _train_state())
  with caplog.at_level(logging.INFO):
    state, step = wd.restore_latest(wd.checkpoint_manager(tmp_path / "ckpt"), _train_state())
  assert step == 20 and int(state.step) == 20
  noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert not noisy, noisy  # e.g. Orbax's "Metadata file does not exist: .../default/_CHECKPOINT_METADATA"


def test_truncated_step_of_the_same_state_still_falls_back(tmp_path, capsys):
  _save_steps(tmp_path / "ckpt", _train_state())
  # cut the array data of step 20 (OCDBT's d/ chunks) but keep its metadata: the tree agrees, the data is damaged
  data = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "ckpt" / "20") for f in fs
          if os.path.basename(r) == "d"]
  assert data
  for path in data:
    open(path, "wb").close()
  state, step = wd.restore_latest(wd.checkpoint_manager(tmp_path / "ckpt"), _train_state())
  assert step == 10 and int(state.step) == 10
  assert "step 20 is unreadable" in capsys.readouterr().out and (tmp_path / "ckpt" / "corrupt-20").exists()


# ------------------------------------------------------------------------------------------------------------
# Provenance in results.json.
# ------------------------------------------------------------------------------------------------------------
def _git(cwd, *args):
  import subprocess
  return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                        capture_output=True, text=True).stdout.strip()


def test_results_record_provenance(tmp_path):
  import importlib.metadata
  import platform
  import shutil
  import socket
  import jax
  wd.write_results(str(tmp_path), {"m": {"r1": 0.5}}, seconds=12.5)
  res = json.load(open(tmp_path / "results.json"))
  prov = res["provenance"]
  assert res["seconds"] == prov["seconds"] == 12.5 and prov["process_seconds"] > 0
  assert res["n_devices"] == prov["n_devices"] == len(jax.devices())
  assert prov["platform"] == jax.devices()[0].platform and prov["device_kind"] == jax.devices()[0].device_kind
  assert prov["process_count"] == 1 and prov["host"] == socket.gethostname()
  assert prov["versions"]["python"] == platform.python_version()
  for pkg in ("jax", "jaxlib", "flax", "optax", "ott-jax", "orbax-checkpoint", "numpy"):
    assert prov["versions"][pkg] == importlib.metadata.version(pkg), pkg
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if shutil.which("git") and os.path.isdir(os.path.join(repo, ".git")):  # the checkout the tests run from
    assert prov["commit"] == _git(repo, "rev-parse", "HEAD")
    assert prov["dirty"] == bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))


def test_git_state_of_a_checkout_clean_then_dirty(tmp_path, monkeypatch):
  import shutil
  from conftest import skip_or_fail
  if not shutil.which("git"):
    skip_or_fail("git not installed")
  repo = tmp_path / "repo"
  (repo / "pkg").mkdir(parents=True)
  (repo / "pkg" / "a.py").write_text("x = 1\n")
  _git(repo, "init", "-q")
  _git(repo, "add", ".")
  _git(repo, "commit", "-q", "-m", "one")
  monkeypatch.setattr(wd, "_SOURCE_DIR", str(repo / "pkg"))
  assert wd.git_state() == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False}
  (repo / "untracked.txt").write_text("not counted")
  assert wd.git_state()["dirty"] is False
  (repo / "pkg" / "a.py").write_text("x = 2\n")
  assert wd.git_state()["dirty"] is True


def test_provenance_without_git_records_null_commit(tmp_path, monkeypatch):
  monkeypatch.setattr(wd, "_SOURCE_DIR", str(tmp_path))  # not a git checkout
  monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
  assert wd.git_state() == {"commit": None, "dirty": None}
  monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # git not installed at all
  wd.write_results(str(tmp_path), {"m": {"r1": 0.5}})
  prov = json.load(open(tmp_path / "results.json"))["provenance"]
  assert prov["commit"] is None and prov["dirty"] is None and prov["n_devices"] >= 1


def test_seconds_default_to_the_process_wall_time():
  # the module is imported 1.5 s after the process started: the default counts from the start, not the import
  import subprocess
  import sys
  code = "import time; time.sleep(1.5); from sotalign_jax.runtime import workdir as wd; print(wd.process_seconds())"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
  assert 1.5 <= float(out.stdout) < 60


def test_eight_fake_devices_are_recorded(tmp_path):
  from conftest import run_with_fake_devices
  run_with_fake_devices(f"""
      from sotalign_jax.runtime import workdir as wd
      wd.write_results({str(tmp_path)!r}, {{"m": {{"r1": 0.5}}}})
  """, n_devices=8)
  res = json.load(open(tmp_path / "results.json"))
  assert res["n_devices"] == res["provenance"]["n_devices"] == 8
  assert res["provenance"]["platform"] == "cpu"
