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
