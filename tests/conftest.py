"""Shared test helpers."""

import os
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
