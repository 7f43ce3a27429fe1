"""CKA speed and memory: sotalign_jax vs a plain numpy implementation, in the same process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_cka.py [--quick]

Prints, for linear and RBF CKA at n = 2k / 10k (d = 384 vs 1280): both times, their ratio, the achieved
GFLOP/s as a fraction of the machine's measured float32 matmul peak, and XLA's working memory; then a
n = 50k linear CKA, which must not need an n×n matrix (50k² float32 = 9.3 GiB).
Goals (issue 4): linear CKA ≥ 70% of the matmul peak, RBF CKA ≥ 3× numpy.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import blas_info, compiled_temp_mb, matmul_peak_gflops, peak_rss_mb, print_table, timeit  # noqa: E402

from sotalign_jax import _hsic, cka  # noqa: E402


def numpy_linear_cka(x, y):
  """The plain feature-space form."""
  x = x - x.mean(0)
  y = y - y.mean(0)
  return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def numpy_rbf_cka(x, y, sx, sy):
  """Full Gram matrices, centred with row/column means (not with an n×n H product)."""
  def centred_rbf(a, s):
    sq = (a * a).sum(1)
    k = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2 * a @ a.T, 0) / (2 * s * s))
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()
  k, l = centred_rbf(x, sx), centred_rbf(y, sy)
  return (k * l).sum() / np.sqrt((k * k).sum() * (l * l).sum())


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="n = 2k only, no 50k run")
  args = ap.parse_args()
  print(f"devices: {jax.devices()}  BLAS: {blas_info()}")
  peak = matmul_peak_gflops()
  peak_best = max(peak.values())
  print(f"float32 matmul peak (2048³): numpy {peak['numpy']:.1f} GFLOP/s, jax {peak['jax']:.1f} GFLOP/s\n")

  rng = np.random.default_rng(0)
  dx, dy = 384, 1280
  rows = []
  for n in (2000,) if args.quick else (2000, 10000):
    x = rng.normal(size=(n, dx)).astype(np.float32)
    y = (x @ rng.normal(size=(dx, dy)) * 0.05 + rng.normal(size=(n, dy))).astype(np.float32)
    jx, jy = jnp.asarray(x), jnp.asarray(y)

    flops = 2.0 * n * (dx * dy + dx * dx + dy * dy)
    t_np = timeit(lambda: numpy_linear_cka(x, y))
    t_jax = timeit(lambda: cka.linear_cka(jx, jy))
    np.testing.assert_allclose(cka.linear_cka(jx, jy), numpy_linear_cka(x, y), rtol=1e-3)
    rows.append(dict(kernel="linear", n=n, numpy_s=t_np, jax_s=t_jax, speedup=t_np / t_jax,
                     gflops=flops / t_jax / 1e9, peak_frac=flops / t_jax / 1e9 / peak_best,
                     numpy_peak_frac=flops / t_np / 1e9 / peak_best,
                     xla_temp_mb=compiled_temp_mb(jax.jit(lambda a, b: cka._linear_cka(a, b, False)), jx, jy)))

    sx, sy = float(cka.median_bandwidth(jx)), float(cka.median_bandwidth(jy))
    t_np = timeit(lambda: numpy_rbf_cka(x, y, sx, sy), repeat=1)
    t_jax = timeit(lambda: cka.rbf_cka(jx, jy, bandwidth=(sx, sy)), repeat=2)
    np.testing.assert_allclose(cka.rbf_cka(jx, jy, bandwidth=(sx, sy)), numpy_rbf_cka(x, y, sx, sy), rtol=1e-3)
    rbf_flops = 2.0 * n * n * (dx + dy)  # the two Gram products dominate
    rows.append(dict(kernel="rbf", n=n, numpy_s=t_np, jax_s=t_jax, speedup=t_np / t_jax,
                     gflops=rbf_flops / t_jax / 1e9, peak_frac=rbf_flops / t_jax / 1e9 / peak_best,
                     xla_temp_mb=compiled_temp_mb(
                         jax.jit(lambda a, b: _hsic.rbf_cka_stats(a, b, jnp.float32(sx), jnp.float32(sy), False, 512)),
                         jx, jy)))
  print_table(rows, ["kernel", "n", "numpy_s", "jax_s", "speedup", "gflops", "peak_frac", "numpy_peak_frac",
                     "xla_temp_mb"])

  if not args.quick:
    n = 50000
    x = jnp.asarray(rng.normal(size=(n, dx)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(n, dy)), jnp.float32)
    t = timeit(lambda: cka.linear_cka(x, y), repeat=1)
    temp = compiled_temp_mb(jax.jit(lambda a, b: cka._linear_cka(a, b, False)), x, y)
    print(f"\nlinear CKA n=50k: {t:.2f} s, XLA working memory {temp:.0f} MiB "
          f"(an n×n float32 Gram would be {n * n * 4 / 2**30:.1f} GiB)")
  print(f"\npeak RSS of this process: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
  main()
