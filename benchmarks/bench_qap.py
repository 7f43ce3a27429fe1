"""Batched seeded FAQ (sotalign_jax.qap.faq) vs a loop of scipy.optimize.quadratic_assignment, same instance.

The paper's setting (Maniparambil et al., CVPR 2024): n = 320 seeds + 500 queries, centred normalised RBF
kernels of each space, P0 = "randomized", tol = 1e-5, best of 100 (paper: 500) restarts.

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_qap.py [--restarts 100] [--scipy-restarts 10]
      [--base 320 --queries 500] [--embeddings DIR] [--batch-size 50] [--lap scipy|hungarian|auction]

scipy is timed on ``--scipy-restarts`` restarts and extrapolated linearly to ``--restarts`` (each restart is an
independent run). Prints time ratio, best objectives, matching accuracy, GFLOP/s of the FAQ GEMMs against the
measured float32 matmul peak, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import scipy.optimize  # noqa: E402

from sotalign_jax import matching, qap  # noqa: E402


def synthetic(n: int, rng, dx=64, dy=48, latent=16, noise=0.3):
  z = rng.standard_normal((n, latent))
  x = z @ rng.standard_normal((latent, dx)) + noise * rng.standard_normal((n, dx))
  y = z @ rng.standard_normal((latent, dy)) + noise * rng.standard_normal((n, dy))
  return x.astype(np.float32), y.astype(np.float32)


def from_cache(path: str, n: int, rng):
  """``n`` random (image, caption) pairs of an embedding cache, in random order (the cache is sorted by category)."""
  from sotalign_jax.data.cache import load_cache
  cache = load_cache(path)
  caps = cache.caption_rows()
  imgs = cache.caption_image_rows()
  _, first = np.unique(imgs, return_index=True)  # one caption per image
  if len(first) < n:
    raise SystemExit(f"--embeddings {path}: {len(first)} images, need {n}")
  pick = rng.permutation(first)[:n]
  return np.asarray(cache.image_emb[imgs[pick]], np.float32), np.asarray(cache.text_emb[caps[pick]], np.float32)


def matmul_peak(q: int, reps: int = 5) -> float:
  a = jnp.ones((q * 20, q), jnp.float32)
  b = jnp.ones((q, q), jnp.float32)
  f = jax.jit(lambda u, v: u @ v)
  f(a, b).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    f(a, b).block_until_ready()
  return 2 * 20 * q**3 * reps / (time.perf_counter() - t) / 1e9


def instance(base: int, queries: int, rng, embeddings: str | None = None):
  """``(a, b, seeds, truth)``: centred kernels of ``base + queries`` points of each space (float64), the ``base``
  seeds ``[base, 2]``, and the true match of the shuffled queries (x-query ``i`` is y-query ``truth[i]``)."""
  m, q = base, queries
  n = m + q
  x, y = (from_cache(embeddings, n, rng) if embeddings else synthetic(n, rng))
  shuffle = rng.permutation(q)
  y = np.concatenate([y[:m], y[m:][shuffle]])
  a = np.asarray(matching.centered_kernel(x), np.float64)
  b = np.asarray(matching.centered_kernel(y), np.float64)
  return a, b, np.stack([np.arange(m), np.arange(m)], 1), np.argsort(shuffle)


def compare(a, b, seeds, truth, *, restarts: int, scipy_restarts: int, batch_size: int, seed: int = 0,
            lap: str = "scipy", peak_gflops: float | None = None) -> dict:
  """Batched ``qap.faq`` (``lap``; compiled on a warm-up batch first) vs a loop of scipy's FAQ timed on
  ``scipy_restarts`` restarts and extrapolated linearly to ``restarts``; returns the numbers :func:`main` prints.
  ``peak_gflops``: the float32 matmul peak (``None``: measured here by :func:`matmul_peak`)."""
  m, n = len(seeds), a.shape[0]
  q = n - m

  # --- JAX batched FAQ (compile on a 1-batch warm-up of the same shape) ---
  bs = min(batch_size, restarts)
  qap.faq(a, b, seeds=seeds, n_init=bs, batch_size=bs, key=jax.random.key(99), lap=lap)
  t = time.perf_counter()
  res = qap.faq(a, b, seeds=seeds, n_init=restarts, batch_size=bs, key=jax.random.key(seed), lap=lap)
  t_jax = time.perf_counter() - t

  # --- scipy loop ---
  srng = np.random.default_rng(seed)
  t = time.perf_counter()
  ref = [scipy.optimize.quadratic_assignment(a, b, method="faq", options=dict(
      P0="randomized", maximize=True, partial_match=seeds, tol=1e-5, rng=srng)) for _ in range(scipy_restarts)]
  t_sp = (time.perf_counter() - t) / scipy_restarts * restarts
  sp_best = max(ref, key=lambda r: r.fun)

  iters = int(res.n_iters.sum())
  # GEMMs: 2 per restart for N(P0) + 1 per iteration, each 2 q^3 flops (symmetric kernels)
  flops = 2 * q**3 * (2 * restarts + iters)
  peak = matmul_peak(q) if peak_gflops is None else peak_gflops
  acc = lambda col: float(np.mean(col[m:] - m == truth))
  return dict(
      n=n, seeds=m, restarts=restarts, device=str(jax.devices()[0].platform), lap=lap,
      jax_s=round(t_jax, 3), jax_s_per_restart=round(t_jax / restarts, 4),
      scipy_s_extrapolated=round(t_sp, 3), scipy_s_per_restart=round(t_sp / restarts, 4),
      speedup=round(t_sp / t_jax, 2),
      jax_best_fun=res.fun, scipy_best_fun=sp_best.fun,
      rel_gap_vs_scipy=(sp_best.fun - res.fun) / abs(sp_best.fun),
      jax_acc=acc(res.col_ind), scipy_acc=acc(sp_best.col_ind),
      mean_iters_jax=float(res.n_iters.mean()), mean_iters_scipy=float(np.mean([r.nit for r in ref])),
      gemm_gflop=flops / 1e9, gemm_gflops=round(flops / t_jax / 1e9, 1), matmul_peak_gflops=round(peak, 1),
      peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--base", type=int, default=320)
  ap.add_argument("--queries", type=int, default=500)
  ap.add_argument("--restarts", type=int, default=100, help="paper: 500")
  ap.add_argument("--scipy-restarts", type=int, default=10)
  ap.add_argument("--batch-size", type=int, default=50)
  ap.add_argument("--lap", default="scipy", choices=qap.LAPS, help="FAQ's linear assignment solver")
  ap.add_argument("--embeddings", default=None, help="cache dir with image_embeddings.npy / text_embeddings.npy")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  rng = np.random.default_rng(args.seed)
  a, b, seeds, truth = instance(args.base, args.queries, rng, args.embeddings)
  out = compare(a, b, seeds, truth, restarts=args.restarts, scipy_restarts=args.scipy_restarts,
                batch_size=args.batch_size, seed=args.seed, lap=args.lap)
  print(json.dumps(out, indent=1))
  print(f"FAQ n={out['n']}: JAX {out['jax_s']:.2f}s vs scipy {out['scipy_s_extrapolated']:.2f}s "
        f"(x{out['speedup']:.2f}) at {args.restarts} restarts; "
        f"best objective JAX {out['jax_best_fun']:.6f} vs scipy {out['scipy_best_fun']:.6f}")


if __name__ == "__main__":
  main()
