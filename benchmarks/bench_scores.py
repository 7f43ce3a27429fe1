"""Layer grids and permutation calibration: sotalign_jax.scores vs straightforward numpy loops, same process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_scores.py [--quick]

1. A 6 × 12 grid of linear CKA at n = 5k (image-like widths 32…1280 vs 12 text layers of 768) against a numpy
   loop calling a plain feature-space linear CKA per pair (self terms recomputed per pair, as such loops do).
2. 1000-permutation calibration of one linear CKA (n = 5k, 384 vs 768) against a numpy loop that permutes y's
   rows and recomputes the score; the loop is timed on ``--loop-perms`` permutations and extrapolated
   (printed as such).
Prints both times, the ratio (goal: ≥ 20×), XLA's working memory and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import blas_info, compiled_temp_mb, peak_rss_mb, print_table, timeit  # noqa: E402

from sotalign_jax import scores  # noqa: E402


def numpy_linear_cka(x, y):
  x = x - x.mean(0)
  y = y - y.mean(0)
  return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="n = 1000 and 100 permutations (checks the script runs)")
  ap.add_argument("--loop-perms", type=int, default=20, help="permutations the numpy loop is timed on")
  args = ap.parse_args()
  n = 1000 if args.quick else 5000
  n_perm = 100 if args.quick else 1000
  print(f"devices: {jax.devices()}  BLAS: {blas_info()}  n={n}  n_perm={n_perm}\n")
  rng = np.random.default_rng(0)
  z = rng.normal(size=(n, 32)).astype(np.float32)
  wx = (32, 64, 128, 256, 512, 1280)
  xs = [z @ rng.normal(size=(32, d)).astype(np.float32) + rng.normal(size=(n, d)).astype(np.float32) for d in wx]
  ys = [z @ rng.normal(size=(32, 768)).astype(np.float32) + (1 + l) * rng.normal(size=(n, 768)).astype(np.float32)
        for l in range(12)]
  rows = []

  # 1. grid
  jxs, jys = [jnp.asarray(a) for a in xs], [jnp.asarray(a) for a in ys]
  t_jax = timeit(lambda: scores.score_grid(jxs, jys).scores, repeat=2)
  t0 = time.perf_counter()
  ref = np.array([[numpy_linear_cka(a, b) for b in ys] for a in xs])
  t_np = time.perf_counter() - t0
  np.testing.assert_allclose(scores.score_grid(jxs, jys).scores, ref, rtol=1e-3)
  temp = compiled_temp_mb(jax.jit(lambda a, b: scores._linear_grid(a, b, False, 1024)), tuple(jxs), tuple(jys))
  rows.append(dict(task="6x12 linear CKA grid", numpy_s=t_np, jax_s=t_jax, speedup=t_np / t_jax,
                   xla_temp_mb=temp, note="numpy: full loop"))

  # 2. calibration
  x, y = xs[3][:, :384].copy(), ys[0]
  jx, jy = jnp.asarray(x), jnp.asarray(y)
  run = lambda: scores.calibrated("linear_cka", jx, jy, n_perm=n_perm, n_boot=0).null
  t_jax = timeit(run, repeat=1)
  perm_rng = np.random.default_rng(1)
  m = min(args.loop_perms, n_perm)
  t0 = time.perf_counter()
  null = [numpy_linear_cka(x, y[perm_rng.permutation(n)]) for _ in range(m)]
  t_np = (time.perf_counter() - t0) * n_perm / m
  c = scores.calibrated("linear_cka", jx, jy, n_perm=n_perm, n_boot=0)
  assert abs(float(c.null_mean) - np.mean(null)) < 5 * float(c.null_std), (float(c.null_mean), np.mean(null))
  rows.append(dict(task=f"{n_perm}-perm calibration", numpy_s=t_np, jax_s=t_jax, speedup=t_np / t_jax,
                   xla_temp_mb=float("nan"), note=f"numpy: {m} perms timed, x{n_perm / m:.0f} extrapolated"))
  print_table(rows, ["task", "numpy_s", "jax_s", "speedup", "xla_temp_mb", "note"])
  print(f"\npeak RSS of this process: {peak_rss_mb():.0f} MiB (inputs included)  goal: speedup >= 20x")


if __name__ == "__main__":
  main()
