"""Helpers shared by the benchmark scripts: timing, the machine's matmul peak, memory, tables."""

from __future__ import annotations

import resource
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def timeit(fn: Callable, *, repeat: int = 3, warmup: int = 1) -> float:
  """Best wall time of ``fn()`` over ``repeat`` runs (results are blocked on), after ``warmup`` runs."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  best = np.inf
  for _ in range(repeat):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best


def matmul_peak_gflops(n: int = 2048, *, precision=None, with_numpy: bool = True) -> dict[str, float]:
  """Measured float32 GEMM throughput (GFLOP/s) of numpy and of jitted JAX on an n×n×n product.

  ``precision`` is the JAX product's (``None``: the backend's default, which may use TF32 on a GPU;
  ``jax.lax.Precision.HIGHEST``: true float32); ``with_numpy=False`` times JAX only."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(n, n)).astype(np.float32)
  b = rng.normal(size=(n, n)).astype(np.float32)
  flops = 2.0 * n**3
  out = {"numpy": flops / timeit(lambda: a @ b) / 1e9} if with_numpy else {}
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  mm = jax.jit(lambda u, v: jnp.matmul(u, v, precision=precision))
  out["jax"] = flops / timeit(lambda: mm(ja, jb)) / 1e9
  return out


def peak_rss_mb() -> float:
  """Peak resident memory of this process so far (MiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compiled_temp_mb(jitted, *args) -> float:
  """XLA's temporary buffer size (MiB) for ``jitted(*args)``: the working memory beyond inputs and outputs."""
  return jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20


def blas_info() -> str:
  try:
    from threadpoolctl import threadpool_info
    return ", ".join(f"{i['internal_api']} {i.get('architecture', '?')} x{i['num_threads']}"
                     for i in threadpool_info() if i["user_api"] == "blas")
  except ImportError:
    return "threadpoolctl not installed"


def write_json(path: str, obj) -> None:
  """Writes a benchmark's numbers to ``path`` (its folder created) and says so."""
  import json
  import os
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=1)
  print(f"wrote {path}")


def print_table(rows: list[dict], columns: list[str]):
  """Prints ``rows`` as a markdown table."""
  fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
  print("| " + " | ".join(columns) + " |")
  print("|" + "---|" * len(columns))
  for r in rows:
    print("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
