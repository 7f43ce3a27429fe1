"""The linear assignment step of the zero-pair fit: scipy on the host vs the auction and the Hungarian on the device.

Wasserstein–Procrustes (``sotalign_jax.aligners.unpaired``, Schnaus et al., arXiv 2610.09411) solves one ``b × b``
maximum-score assignment per read-out block and per refinement step (``b = 10,000`` by default). Three solvers are
wired in as ``lap=`` (:func:`sotalign_jax.qap.linear_assignment`):

* ``scipy``: ``scipy.optimize.linear_sum_assignment`` (exact, Jonker–Volgenant) on the host through
  ``jax.pure_callback``: the scores leave the device, float64 on the host.
* ``auction``: :func:`sotalign_jax.qap.auction`, Bertsekas' ε-scaling Jacobi auction in pure XLA (total within
  ``q · 1e-6 · Δ`` of the optimum).
* ``hungarian``: ``optax.assignment.hungarian_algorithm`` (exact, pure XLA; ``q`` sequential augmentations).

Each is timed as the fit calls it (``jax.jit(lambda s: unpaired._assignment(s, lap))`` on a device array of
scores, best of ``--repeats`` after one warm-up) on three kinds of ``[q, q]`` score matrices ``X W Yᵀ`` of unit
rows in ``--dim`` dimensions, where ``Y`` holds the rows of ``X Q`` (+ noise) in a random order:

* ``refine``: ``W`` = polar(Q + 0.05 G) — the scores of a refinement step near convergence;
* ``coarse``: ``W`` = polar(Q + 3.0 G) — a coarse map, as at the read-out;
* ``unrelated``: ``Y`` independent of ``X`` — no structure, the auction's hardest case here.

Printed per point: each solver's time, **ratio** = scipy time / solver time (> 1: the device solver is faster),
the auction's rounds, and each solver's optimality gap (scipy's total − its total; ≤ 0 up to rounding for the exact
solvers). ``lap="auto"`` in the fit is ``scipy`` on a CPU backend and ``auction`` on an accelerator: on this
CPU scipy wins (numbers in the README); the same command on a GPU prints the device side of the choice.

Usage::

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_assignment.py
      [--sizes 1000,2000,5000] [--kinds refine,coarse,unrelated] [--hungarian-max 2000] [--json PATH]
  # on a GPU, the fit's size too
  .venv/bin/python benchmarks/bench_assignment.py --sizes 1000,5000,10000 --json workdirs/bench_assignment_gpu.json
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import scipy.optimize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import blas_info, peak_rss_mb, print_table, timeit, write_json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sotalign_jax import qap  # noqa: E402
from sotalign_jax.aligners import unpaired  # noqa: E402

KINDS = {"refine": 0.05, "coarse": 3.0, "unrelated": None}


def _unit(a: np.ndarray) -> np.ndarray:
  return a / np.linalg.norm(a, axis=1, keepdims=True)


def scores(rng, q: int, dim: int, kind: str) -> np.ndarray:
  """``[q, q]`` float32 scores ``X W Yᵀ`` of the given kind (module docstring)."""
  x = _unit(rng.standard_normal((q, dim)))
  rot, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  if KINDS[kind] is None:
    y, w = _unit(rng.standard_normal((q, dim))), rot
  else:
    y = _unit(x @ rot + 0.05 * rng.standard_normal((q, dim)))[rng.permutation(q)]
    u, _, vt = np.linalg.svd(rot + KINDS[kind] * rng.standard_normal((dim, dim)) / np.sqrt(dim))
    w = u @ vt
  return (x @ w @ y.T).astype(np.float32)


def total(s: np.ndarray, rows, cols) -> float:
  rows, cols = np.asarray(rows), np.asarray(cols)
  if len(set(rows.tolist())) != len(rows) or len(set(cols.tolist())) != len(cols):
    return float("nan")  # not one-to-one
  return float(s[rows, cols].astype(np.float64).sum())


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="1000,2000,5000", help="q, rows and columns of the score matrices")
  p.add_argument("--kinds", default=",".join(KINDS), help=f"score kinds, of {list(KINDS)}")
  p.add_argument("--dim", type=int, default=64)
  p.add_argument("--hungarian-max", type=int, default=2000, help="time optax's Hungarian up to this q (O(q³))")
  p.add_argument("--repeats", type=int, default=2, help="timed calls per point (best of), after one warm-up")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None, metavar="PATH")
  args = p.parse_args(argv)
  sizes = [int(v) for v in args.sizes.split(",") if v]
  kinds = [k for k in args.kinds.split(",") if k]
  for k in kinds:
    if k not in KINDS:
      raise SystemExit(f"unknown kind {k!r}: choose from {list(KINDS)}")
  backend = jax.default_backend()
  print(f"jax {jax.__version__}, backend {backend}, devices {jax.devices()}, {os.cpu_count()} CPUs, "
        f"BLAS (numpy): {blas_info()}; lap='auto' is {qap.resolve_lap('auto')!r} here", flush=True)
  rng = np.random.default_rng(args.seed)
  rows = []
  for q in sizes:
    for kind in kinds:
      s = scores(rng, q, args.dim, kind)
      sd = jnp.asarray(s)
      row = dict(q=q, kind=kind)
      r, c = scipy.optimize.linear_sum_assignment(s.astype(np.float64), maximize=True)
      best = float(s[r, c].astype(np.float64).sum())
      for solver in ("scipy", "auction", "hungarian"):
        if solver == "hungarian" and q > args.hungarian_max:
          continue
        fn = jax.jit(lambda m, solver=solver: unpaired._assignment(m, solver))
        row[f"{solver} (s)"] = timeit(lambda fn=fn: fn(sd), repeat=args.repeats)
        row[f"{solver} gap"] = best - total(s, *fn(sd))
        if solver != "scipy":
          row[f"scipy / {solver}"] = row["scipy (s)"] / row[f"{solver} (s)"]
      row["auction rounds"] = int(np.asarray(qap.auction(sd)[1]).sum())
      rows.append(row)
      print(f"  q {q} {kind}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if k not in ("q", "kind")),
            flush=True)
  print()
  print_table(rows, ["q", "kind", "scipy (s)", "auction (s)", "scipy / auction", "auction rounds", "auction gap",
                     "hungarian (s)", "scipy / hungarian", "hungarian gap"])
  print("ratio = scipy time / solver time (> 1: the device solver is faster); gap = scipy's optimal total - the "
        "solver's total")
  print(f"peak RSS {peak_rss_mb():.0f} MiB")
  if args.json:
    write_json(args.json, dict(args=vars(args), backend=backend, devices=[str(d) for d in jax.devices()],
                               blas=blas_info(), rows=rows, peak_rss_mb=peak_rss_mb()))


if __name__ == "__main__":
  main()
