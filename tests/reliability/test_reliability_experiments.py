"""Faults during real experiment runs (subprocesses on a small fake cache / synthetic .npy spaces).

* the newest Orbax checkpoint is truncated → the rerun reports it unreadable, resumes from the previous step;
* the rerun has another head or optimizer → CheckpointMismatchError naming the difference, no silent restart;
* the loss diverges → NonFiniteError naming the step and the quantity, checkpoints left restorable;
* NaN in the cache → rejected at start-up naming the file;
* bad config values (types, sizes) → rejected at start-up naming the key.

kill -9 + resume is tested in tests/test_sotalign_experiment.py and tests/test_cmcr_experiment.py.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)
from sotalign_jax.data.fake import make_fake_cache  # noqa: E402  pylint: disable=g-import-not-at-top
from conftest import keyed_run_dir  # noqa: E402  pylint: disable=g-import-not-at-top
from test_cmcr import make_spaces  # noqa: E402  pylint: disable=g-import-not-at-top

from sotalign_jax.runtime import io as sio  # noqa: E402  pylint: disable=g-import-not-at-top

SOTALIGN = os.path.join(REPO, "experiments", "sotalign.py")
CMCR = os.path.join(REPO, "experiments", "cmcr.py")
ARGS = ["--config.methods=sotalign", "--config.hparams.sotalign.steps=30", "--config.ckpt_every=10",
        "--config.log_every=10"]
RUN = "sotalign/p64_s0"  # the trained cell's run directory: runs/sotalign/p64_s0__<settings key>


def sotalign(workdir, cache, *overrides):
  cmd = [sys.executable, SOTALIGN, "--config", os.path.join(REPO, "configs", "proj", "sotalign", "config.py") +
         ":smoke", "--workdir", str(workdir), f"--config.data.cache={cache}", "--config.evals.fashion_mnist.cache=",
         "--config.evals.tuxpaint.cache=", *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)


def cmcr(workdir, files, *overrides):
  cmd = [sys.executable, CMCR, "--config", os.path.join(REPO, "configs", "cmcr.py") + ":smoke",
         "--workdir", str(workdir), *(f"--config.data.{k}={v}" for k, v in files.items()), *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return make_fake_cache(str(tmp_path_factory.mktemp("cache")), n_images=400)


@pytest.fixture(scope="module")
def finished(cache, tmp_path_factory):
  """A finished SOTAlign run with checkpoints at steps 10, 20 and 30."""
  workdir = tmp_path_factory.mktemp("finished")
  out = sotalign(workdir, cache, *ARGS)
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(os.listdir(keyed_run_dir(workdir, RUN) / "ckpt")) == ["10", "20", "30"]
  return workdir


def interrupted_copy(finished, dst):
  """The finished run as if it had been killed after its last checkpoint (before writing its results)."""
  shutil.copytree(finished, dst)
  shutil.rmtree(dst / "done")
  for f in ("results.json", "results.md"):
    os.remove(dst / f)
  return dst, keyed_run_dir(dst, RUN) / "ckpt"


def test_truncated_latest_checkpoint_is_reported_and_the_previous_step_resumed(cache, finished, tmp_path):
  workdir, ckpt = interrupted_copy(finished, tmp_path / "w")
  truncated = 0
  for root, _, files in os.walk(ckpt / "30"):
    for f in files:
      with open(os.path.join(root, f), "r+b") as fh:
        fh.truncate(os.path.getsize(os.path.join(root, f)) // 3)
      truncated += 1
  assert truncated > 0
  again = sotalign(workdir, cache, *ARGS)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "warning: checkpoint step 30 is unreadable" in again.stdout
  assert f"[{RUN}] resuming from step 20" in again.stdout  # not from 0, not from the corrupt 30
  assert (ckpt / "corrupt-30").is_dir() and sorted(p for p in os.listdir(ckpt) if p.isdigit()) == ["10", "20", "30"]
  # steps 21..30 are replayed with the same fold_in(seed, step) randomness: the same final metrics
  metrics = lambda d: {k: v for k, v in json.load(open(d / "results.json"))["methods"]["sotalign"].items()  # noqa
                       if not k.endswith("fit_seconds")}
  ref, got = metrics(finished), metrics(workdir)
  assert got == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("override", ["--config.hparams.sotalign.head=mlp", "--config.hparams.sotalign.optimizer=lion"])
def test_resume_with_a_changed_head_or_optimizer_starts_fresh_beside_the_old_checkpoint(cache, finished, tmp_path,
                                                                                      override):
  """A changed setting is part of the run's key: the old checkpoint is neither resumed nor touched."""
  workdir, ckpt = interrupted_copy(finished, tmp_path / "w")
  before = {os.path.relpath(os.path.join(r, f), ckpt): os.path.getsize(os.path.join(r, f))
            for r, _, fs in os.walk(ckpt) for f in fs}
  out = sotalign(workdir, cache, *ARGS, override)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"settings changed since the checkpoint in {ckpt.parent}" in out.stdout + out.stderr
  assert "resuming from step" not in out.stdout
  runs = sorted(p for p in (workdir / "runs" / "sotalign").iterdir() if p.name.startswith("p64_s0__"))
  assert len(runs) == 2 and ckpt.parent in runs
  assert sorted(os.listdir(next(r for r in runs if r != ckpt.parent) / "ckpt")) == ["10", "20", "30"]
  after = {os.path.relpath(os.path.join(r, f), ckpt): os.path.getsize(os.path.join(r, f))
           for r, _, fs in os.walk(ckpt) for f in fs}
  assert after == before


def test_diverging_loss_names_step_and_quantity_and_keeps_checkpoints(cache, finished, tmp_path):
  import orbax.checkpoint as ocp
  workdir, ckpt = interrupted_copy(finished, tmp_path / "w")
  before = {os.path.relpath(os.path.join(r, f), ckpt): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(ckpt) for f in fs}
  out = sotalign(workdir, cache, "--config.methods=sotalign", "--config.hparams.sotalign.steps=40",
                 "--config.ckpt_every=10", "--config.log_every=1", "--config.hparams.sotalign.lr=1e6")
  assert out.returncode != 0
  assert "settings changed since the checkpoint" in out.stdout  # lr and steps are in the run's key: a new run
  err = out.stderr.strip().splitlines()[-1]
  assert "cell sotalign p=64 seed=0 failed: NonFiniteError: step " in err, err  # the engine names the cell
  step = int(err.split("NonFiniteError: step ")[1].split(":")[0])
  assert 1 <= step <= 40 and any(q in err for q in ("loss is not finite", "grad_norm is not finite")), err
  for run in (workdir / "runs" / "sotalign").iterdir():  # whatever the diverging run saved before it stopped is finite
    for saved in sorted(p for p in os.listdir(run / "ckpt") if p.isdigit()) if (run / "ckpt").is_dir() else []:
      leaves = __import__("jax").tree.leaves(ocp.CheckpointManager(str(run / "ckpt")).restore(int(saved)))
      assert all(np.isfinite(np.asarray(x)).all() for x in leaves
                 if np.issubdtype(np.asarray(x).dtype, np.floating)), (run, saved)
  assert not (workdir / "results.json").exists() and not (workdir / "done").exists()
  after = {os.path.relpath(os.path.join(r, f), ckpt): open(os.path.join(r, f), "rb").read()
           for r, _, fs in os.walk(ckpt) for f in fs}
  assert after == before  # no non-finite state was saved; nothing was touched
  restored = ocp.CheckpointManager(str(ckpt)).restore(30)  # and the last good step still reads back
  leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(restored)]
  assert leaves and all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.floating))


@pytest.mark.parametrize("name", ["image_embeddings.npy",
                                  pytest.param("text_embeddings.npy", marks=pytest.mark.slow)])
def test_nan_in_the_cache_is_rejected_at_start_up_naming_the_file(cache, tmp_path, name):
  bad = tmp_path / "cache"
  shutil.copytree(cache, bad)
  x = np.load(bad / name)
  x[5, 3] = np.nan
  x[7, 0] = np.inf
  sio.save_npy(bad / name, x)
  out = sotalign(tmp_path / "w", bad, "--config.methods=('ridge','sotalign')")
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr  # one line, no traceback
  err = out.stderr.strip()
  assert err.startswith("error: ") and str(bad / name) in err and "2 rows with NaN/Inf" in err, err
  assert not (tmp_path / "w").exists()  # caught before anything was written


# ------------------------------------------------------------------------------------------------------------
# Bad config values. Already covered elsewhere: unknown keys, unknown methods, too many pairs, unknown head
# (test_sotalign_experiment.py); unknown keys / methods, mismatched or NaN spaces, missing pairs
# (test_cmcr_experiment.py). These are the missing ones.
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("--config.hparams.sotalign.steps=abc", "flag --config.hparams.sotalign.steps=abc: invalid literal for int()"),
    pytest.param("--config.n_pairs=1.5", "config.n_pairs", marks=pytest.mark.slow),
    ("--config.hparams.sotalign.steps=0", "config.hparams.sotalign.steps must be a positive integer"),
    pytest.param("--config.hparams.sotalign.batch_unpaired=-4",
                 "config.hparams.sotalign.batch_unpaired must be a positive integer", marks=pytest.mark.slow),
    ("--config.hparams.sotalign.lr=-1", "config.hparams.sotalign.lr must be > 0"),
    pytest.param("--config.data.split=train", "config.data.split", marks=pytest.mark.slow),
])
def test_sotalign_bad_value_is_rejected_at_start_up_naming_the_key(cache, tmp_path, override, message):
  out = sotalign(tmp_path, cache, override)
  assert out.returncode != 0
  assert message in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / "results.json").exists() and not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  directory = tmp_path_factory.mktemp("spaces")
  out = {}
  for k, v in make_spaces(n_text=300, n_memory=300, n_eval=50, n_train=100).items():
    out[k] = str(directory / f"{k}.npy")
    np.save(out[k], v)
  return out


@pytest.mark.parametrize("override, message", [
    ("--config.steps=abc", "flag --config.steps=abc: invalid literal for int()"),
    ("--config.batch_size=0", "config.batch_size must be a positive integer"),
    pytest.param("--config.temperature=0", "config.temperature must be > 0", marks=pytest.mark.slow),
    ("--config.batch_size=4096", "config.batch_size=4096 exceeds the 300 shared texts"),
])
def test_cmcr_bad_value_is_rejected_at_start_up_naming_the_key(files, tmp_path, override, message):
  # no_connection trains nothing: a start-up check fails fast, a missing one lets the run finish quickly
  out = cmcr(tmp_path, files, "--config.methods=no_connection", override)
  assert out.returncode != 0
  assert message in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / "results.json").exists() and not (tmp_path / "runs").exists()
