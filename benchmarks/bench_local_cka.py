"""Closed-form batched local CKA (sotalign_jax.matching.local_cka_scores) vs the naive per-pair definition.

The naive score of the reference code builds, for every pair (i, j), the linear kernels of [base; x_i] and
[base; y_j] and evaluates CKA with centring matrices: O(q² (m+1)² d) work. It is timed on ``--sample`` pairs and
extrapolated to all q² pairs; the same pairs are checked against the batched scores (max abs error).

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_local_cka.py [--base 320 --queries 500]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from sotalign_jax import matching  # noqa: E402


def naive_local_cka(xb, yb, xi, yj):
  k = np.vstack([xb, xi[None]])
  l = np.vstack([yb, yj[None]])
  n = k.shape[0]
  h = np.eye(n, dtype=k.dtype) - 1.0 / n
  kc = h @ (k @ k.T) @ h
  lc = h @ (l @ l.T) @ h
  return np.sum(kc * lc) / np.sqrt(np.sum(kc * kc) * np.sum(lc * lc))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--base", type=int, default=320)
  ap.add_argument("--queries", type=int, default=500)
  ap.add_argument("--dx", type=int, default=768)
  ap.add_argument("--dy", type=int, default=512)
  ap.add_argument("--sample", type=int, default=100)
  ap.add_argument("--reps", type=int, default=5)
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  m, q = args.base, args.queries
  z = rng.standard_normal((m + q, 32))
  x = (z @ rng.standard_normal((32, args.dx)) + rng.standard_normal((m + q, args.dx))).astype(np.float32)
  y = (z @ rng.standard_normal((32, args.dy)) + rng.standard_normal((m + q, args.dy))).astype(np.float32)
  xb, xq, yb, yq = x[:m], x[m:], y[:m], y[m:]

  s = matching.local_cka_scores(xb, yb, xq, yq).block_until_ready()  # compile
  t = time.perf_counter()
  for _ in range(args.reps):
    s = matching.local_cka_scores(xb, yb, xq, yq).block_until_ready()
  t_fast = (time.perf_counter() - t) / args.reps
  s = np.asarray(s)

  pairs = rng.integers(0, q, (args.sample, 2))
  xb64, yb64, xq64, yq64 = (a.astype(np.float64) for a in (xb, yb, xq, yq))
  t = time.perf_counter()
  ref = np.array([naive_local_cka(xb64, yb64, xq64[i], yq64[j]) for i, j in pairs])
  t_naive = (time.perf_counter() - t) / args.sample * q * q
  err = float(np.max(np.abs(ref - s[pairs[:, 0], pairs[:, 1]])))
  out = dict(base=m, queries=q, device=jax.devices()[0].platform, batched_s=round(t_fast, 5),
             naive_s_extrapolated=round(t_naive, 2), speedup=round(t_naive / t_fast, 1), max_abs_err=err)
  print(json.dumps(out, indent=1))
  print(f"local CKA {q}x{q} with {m} base pairs: batched {t_fast * 1e3:.2f} ms vs naive ≈{t_naive:.1f} s "
        f"(x{t_naive / t_fast:.0f}); max |err| {err:.2e}")


if __name__ == "__main__":
  main()
