"""The zero-pair fit (Wasserstein–Procrustes with the geometric initialization) vs a plain numpy/scipy reference.

Compares ``sotalign_jax.aligners.unpaired.fit_wasserstein_procrustes`` (Schnaus et al., arXiv 2610.09411,
Algorithms 1–2; the ``S`` restarts vmapped and jitted, linear assignments on the host with scipy through
``jax.pure_callback``) with a reference written below in plain numpy + scipy that runs the same steps the way the
peer (``dominik-schnaus/unpaired-rosetta``, PyTorch on CPU) does: a sequential Python loop over the restarts.

Both fit the same synthetic data in the same process: ``n`` unpaired rows per side from a mixture of Gaussian
clusters (unequal sizes, one shared anisotropic covariance) in ``--dim`` dimensions; ``y = z Q + noise`` for a
random orthogonal ``Q``, with different offsets per side; y holds the rotated x-rows in a random order (no pair is
given; ``--disjoint``: y is an independent draw, so no row has its partner at all). ``Q`` is the known answer: both
implementations print ``‖polar(M) − Q‖/‖Q‖`` (initialization), ``‖W − Q‖/‖Q‖`` (fit) and FOSCTTM on held-out
pairs (0 perfect, 0.5 chance), so a reader sees that both did the same job. (With ``--disjoint`` at these sizes
``W`` aligns the clusters, FOSCTTM ≈ 0, but the rotation within the clusters is left undetermined by the few
independent rows per cluster: ``‖W − Q‖/‖Q‖`` stayed ≈ 0.7 for the reference at n = 2,000.)

The reference (same sizes, same stopping rules, its own numpy random draws):

* preprocessing: centre each side with its mean, scale rows to unit norm;
* ``S`` restarts, one after another: ``b`` random rows per side; greedy k-means++ (``2 + ⌊ln C⌋`` candidates per
  seed, the one lowering the potential most, as scikit-learn) then ``--kmeans-iters`` Lloyd iterations (fixed
  count, an empty cluster keeps its centre), ``C`` centres per side; the centres matched by best-improvement 2-opt
  (the swap of largest gain each step, stop when no gain exceeds ``1e-6 |f|``, at most ``C²`` swaps; as ours)
  on the centred Gram matrices, best of ``--qap-inits`` random permutations; ``M = (1/(S C)) Σ A_sᵀ P_s B_s``;
* read-out: both sides shuffled, ``X M`` matched to ``Y`` in blocks of ``b`` rows by
  ``scipy.optimize.linear_sum_assignment``, ``W0 = polar`` of the matched cross-covariance (numpy SVD);
* ``R`` refinement steps: random batches of ``--refine-batch`` rows per side, exact assignment on ``X W Yᵀ``
  (scipy), ``W = polar(X_mᵀ Y_m)``.

Timing: the reference once, first; then ours twice — the first call of the public fit (compiles), then the same
fit stage by stage with the same key (steady state; its ``W`` is checked to equal the first call's). The exact
``b × b`` assignments run on the host with scipy in *both* (ours through a callback, timed here by wrapping the
module's host function), so their ratio is ≈ 1 and they dominate the refinement at b = 10,000. What differs is
the initialization (S restarts of two k-means and 30 2-opt searches: one compiled batched computation vs a Python
loop) and the non-assignment part of the refinement. **ratio** = reference time / ours steady-state time, per
stage (> 1: ours is faster). On a CPU both initializations are bound by the same Lloyd FLOPs (measured ≈ 1.1x on
2 busy cores at ``--small``); the gain is expected on a GPU backend, where the same command prints ours' device
times (the assignments still run on the host with scipy); the reference always runs on the CPU
(``--skip-reference`` leaves it out).

numpy's threaded BLAS on small products (Lloyd's ``b × C``) slows down 10-50x when the cores are shared with
another process, and several-fold right after XLA's threads have worked: the reference therefore runs before any
JAX work, and ``--blas-threads 1`` pins it (threadpoolctl) on a busy machine.

``--lap`` (alias ``--assignment``) picks ours' solver (:func:`sotalign_jax.qap.resolve_lap`; default ``auto``:
scipy on a CPU backend, the on-device auction on an accelerator, so on a GPU the refinement never leaves the
device; ``benchmarks/bench_assignment.py`` times the solvers alone).

Usage (the issue's size: n = 10,000 per side, C = 30, S = 30, b = 10,000, R = 100; ``--small``: n = 2,000,
R = 20, a quick check)::

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_zero_pair.py [--small]
      [--json PATH] [--skip-reference] [--blas-threads 1] [--self-test] [--disjoint]
      [--lap auto|scipy|auction|hungarian]

Measured here (2 cores shared with another job, ``--blas-threads 1``): ``--small`` takes ≈ 80 s; at the full size
one 10,000 × 10,000 assignment took 45 s for the read-out (scores from ``M``) and 2–5 s per refinement step, so one
fit is ≈ 1.5 min (initialization, read-out) + 100 × (3–6 s) ≈ 6.5–11.5 min and the script (reference + ours twice)
≈ 20–35 min; with ``--skip-reference`` two thirds of that, most of it host assignments whatever the backend.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import scipy.optimize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import blas_info, peak_rss_mb, print_table, write_json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sotalign_jax import metrics, qap  # noqa: E402
from sotalign_jax.aligners import AlignData, base, unpaired  # noqa: E402

FULL = dict(n=10_000, batch=10_000, refine_batch=10_000, iterations=100)
SMALL = dict(n=2_000, batch=2_000, refine_batch=2_000, iterations=20)


# ----------------------------------------------------------------------------------------------------------------
# Synthetic unpaired data with a known rotation.
# ----------------------------------------------------------------------------------------------------------------
def synthetic(rng, *, n: int, dim: int, clusters: int, noise: float, n_test: int, disjoint: bool):
  """``(x [n, dim], y [n, dim], test_x, test_y, Q)``: a mixture of ``clusters`` Gaussians; ``y = z Q + noise``."""
  means = 3.0 * rng.standard_normal((clusters, dim))
  v, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  factor = (v * np.linspace(0.2, 0.6, dim)) @ v.T  # shared anisotropic within-cluster covariance
  sizes = 1.0 + np.arange(clusters) / 4.0
  sizes /= sizes.sum()
  q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
  q *= np.sign(np.diag(r))  # Haar-distributed
  draw = lambda k: means[rng.choice(clusters, size=k, p=sizes)] + rng.standard_normal((k, dim)) @ factor  # noqa: E731
  to_x = lambda z: z + 1.0  # noqa: E731
  to_y = lambda z: z @ q + noise * rng.standard_normal(z.shape) - 2.0  # noqa: E731
  zx = draw(n)
  zy = draw(n) if disjoint else zx[rng.permutation(n)]
  zt = draw(n_test)
  f32 = lambda a: np.ascontiguousarray(a, np.float32)  # noqa: E731
  return f32(to_x(zx)), f32(to_y(zy)), f32(to_x(zt)), f32(to_y(zt)), q


# ----------------------------------------------------------------------------------------------------------------
# The numpy / scipy reference (sequential, as the peer on CPU).
# ----------------------------------------------------------------------------------------------------------------
def ref_preprocess(a: np.ndarray, mean: np.ndarray) -> np.ndarray:
  a = a - mean
  return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def ref_polar(m: np.ndarray) -> np.ndarray:
  u, _, vt = np.linalg.svd(np.asarray(m, np.float64), full_matrices=False)
  return u @ vt


def ref_kmeans_pp(x: np.ndarray, k: int, rng) -> np.ndarray:
  """Greedy k-means++: ``2 + ⌊ln k⌋`` candidates ∝ D², keep the one lowering ``Σ D²`` most."""
  n, trials = x.shape[0], 2 + int(math.log(k))
  xx = np.einsum("ij,ij->i", x, x)
  cent = np.empty((k, x.shape[1]), x.dtype)
  cent[0] = x[rng.integers(n)]
  d2 = np.maximum(xx - 2.0 * x @ cent[0] + cent[0] @ cent[0], 0.0)
  for t in range(1, k):
    cdf = np.cumsum(d2, dtype=np.float64)
    cand = (np.searchsorted(cdf, rng.random(trials) * cdf[-1], side="right") if cdf[-1] > 0
            else rng.integers(n, size=trials))
    cand = np.minimum(cand, n - 1)
    c = x[cand]
    new = np.minimum(d2[None], np.maximum(xx[None] - 2.0 * c @ x.T + np.einsum("ij,ij->i", c, c)[:, None], 0.0))
    best = int(np.argmin(new.sum(1)))
    cent[t], d2 = c[best], new[best]
  return cent


def ref_lloyd(x: np.ndarray, cent: np.ndarray, n_iter: int) -> np.ndarray:
  """``n_iter`` Lloyd iterations (fixed count); a centre that loses all its rows stays."""
  k, n = cent.shape[0], x.shape[0]
  rows = np.arange(n)
  onehot = np.zeros((k, n), x.dtype)
  for _ in range(n_iter):
    lab = np.argmin(np.einsum("ij,ij->i", cent, cent)[None] - 2.0 * x @ cent.T, axis=1)
    onehot[:] = 0.0
    onehot[lab, rows] = 1.0
    cnt = onehot.sum(1)
    tot = onehot @ x
    cent = np.where(cnt[:, None] > 0, tot / np.maximum(cnt, 1.0)[:, None], cent)
  return cent


def two_opt_gains(a: np.ndarray, bp: np.ndarray) -> np.ndarray:
  r"""``Δ[i, j]``: the change of :math:`\sum_{kl} A_{kl} B'_{kl}` when rows/columns ``i, j`` of ``B'`` swap
  (symmetric ``A, B'``): :math:`2\sum_{k \ne i,j}(A_{ik} - A_{jk})(B'_{jk} - B'_{ik}) + (A_{ii} - A_{jj})
  (B'_{jj} - B'_{ii})` (Taillard's swap gain with the diagonal), through one ``C × C`` product."""
  da, db = np.diag(a), np.diag(bp)
  g = a @ bp
  gd = np.diag(g)
  full = g + g.T - gd[:, None] - gd[None, :]  # the sum over all k, k = i and k = j included
  k_is_i = (da[:, None] - a) * (bp - db[:, None])  # (A_ii - A_ji)(B'_ji - B'_ii)
  k_is_j = (a - da[None, :]) * (db[None, :] - bp)  # (A_ij - A_jj)(B'_jj - B'_ij)
  delta = 2.0 * (full - k_is_i - k_is_j) + (da[:, None] - da[None, :]) * (db[None, :] - db[:, None])
  np.fill_diagonal(delta, -np.inf)
  return delta


def ref_two_opt(a: np.ndarray, b: np.ndarray, perm: np.ndarray) -> np.ndarray:
  """Best-improvement 2-opt for ``max_π Σ A_ij B_π(i)π(j)`` from ``perm`` (at most ``C²`` swaps)."""
  c = a.shape[0]
  perm = perm.copy()
  for _ in range(c * c):
    bp = b[np.ix_(perm, perm)]
    delta = two_opt_gains(a, bp)
    flat = int(np.argmax(delta))
    if not delta.flat[flat] > 1e-6 * max(abs(float(np.sum(a * bp))), 1e-12):
      break
    i, j = divmod(flat, c)
    perm[i], perm[j] = perm[j], perm[i]
  return perm


def ref_match_centres(ca: np.ndarray, cb: np.ndarray, rng, n_init: int) -> np.ndarray:
  """Best of ``n_init`` 2-opt searches from random permutations on the centred Gram matrices."""
  a, b = ca - ca.mean(0), cb - cb.mean(0)
  ka, kb = (a @ a.T).astype(np.float64), (b @ b.T).astype(np.float64)
  best, best_f = None, -np.inf
  for _ in range(n_init):
    p = ref_two_opt(ka, kb, rng.permutation(ca.shape[0]))
    f = float(np.sum(ka * kb[np.ix_(p, p)]))
    if f > best_f:
      best, best_f = p, f
  return best


def ref_lsa(scores: np.ndarray, clock: dict) -> tuple[np.ndarray, np.ndarray]:
  t = time.perf_counter()
  rows, cols = scipy.optimize.linear_sum_assignment(np.asarray(scores, np.float64), maximize=True)
  clock["lsa"] += time.perf_counter() - t
  clock["n_lsa"] += 1
  clock["lsa_calls"].append(time.perf_counter() - t)
  return rows, cols


def reference_fit(x_raw, y_raw, rng, *, n_clusters, n_restarts, batch, n_iterations, refine_batch, kmeans_iters,
                  qap_inits) -> dict:
  """The whole zero-pair fit in numpy/scipy; returns ``W``, ``M``, the means and the time of each stage."""
  clock = dict(lsa=0.0, n_lsa=0, kmeans=0.0, qap=0.0, lsa_calls=[])
  t0 = time.perf_counter()
  mx, my = x_raw.mean(0), y_raw.mean(0)
  x, y = ref_preprocess(x_raw, mx), ref_preprocess(y_raw, my)
  n, m = x.shape[0], y.shape[0]
  t1 = time.perf_counter()
  acc = np.zeros((x.shape[1], y.shape[1]), np.float64)
  for _ in range(n_restarts):
    t = time.perf_counter()
    bx, by = x[rng.permutation(n)[:batch]], y[rng.permutation(m)[:batch]]
    ca = ref_lloyd(bx, ref_kmeans_pp(bx, n_clusters, rng), kmeans_iters)
    cb = ref_lloyd(by, ref_kmeans_pp(by, n_clusters, rng), kmeans_iters)
    clock["kmeans"] += time.perf_counter() - t
    t = time.perf_counter()
    acc += ca.T.astype(np.float64) @ cb[ref_match_centres(ca, cb, rng, qap_inits)]
    clock["qap"] += time.perf_counter() - t
  mm = (acc / (n_restarts * n_clusters)).astype(np.float32)
  t2 = time.perf_counter()
  ox, oy = rng.permutation(n), rng.permutation(m)
  cross = np.zeros((x.shape[1], y.shape[1]), np.float64)
  for start in range(0, min(n, m), batch):
    bx, by = x[ox[start:start + batch]], y[oy[start:start + batch]]
    r, c = ref_lsa((bx @ mm) @ by.T, clock)
    cross += bx[r].T.astype(np.float64) @ by[c]
  w = ref_polar(cross).astype(np.float32)
  t3 = time.perf_counter()
  for _ in range(n_iterations):
    bx, by = x[rng.permutation(n)[:refine_batch]], y[rng.permutation(m)[:refine_batch]]
    r, c = ref_lsa((bx @ w) @ by.T, clock)
    w = ref_polar(bx[r].T.astype(np.float64) @ by[c]).astype(np.float32)
  t4 = time.perf_counter()
  return dict(w=w, m=mm, mx=mx, my=my, prep_s=t1 - t0, init_s=t2 - t1, readout_s=t3 - t2, refine_s=t4 - t3,
              total_s=t4 - t0, **{f"{k}_s" if k in ("lsa", "kmeans", "qap") else k: v for k, v in clock.items()})


def self_test():
  """Quick checks of the reference's pieces (a second or two): the 2-opt gains against brute force, 2-opt reaches
  the known optimum of a planted QAP, k-means recovers separated clusters."""
  rng = np.random.default_rng(0)
  for c in (5, 12):
    a, b = rng.standard_normal((2, c, c))
    a, b = a + a.T, b + b.T
    p = rng.permutation(c)
    bp = b[np.ix_(p, p)]
    delta = two_opt_gains(a, bp)
    f = lambda q: np.sum(a * b[np.ix_(q, q)])  # noqa: E731
    for i in range(c):
      for j in range(c):
        if i != j:
          q = p.copy()
          q[i], q[j] = q[j], q[i]
          assert abs(delta[i, j] - (f(q) - f(p))) < 1e-9 * max(1.0, abs(f(p))), (c, i, j)
  pts = rng.standard_normal((15, 6))
  truth = rng.permutation(15)
  ka = (pts - pts.mean(0)) @ (pts - pts.mean(0)).T
  found = ref_match_centres(pts, pts[truth] @ np.linalg.qr(rng.standard_normal((6, 6)))[0], rng, 30)
  kb = (pts[truth] - pts.mean(0)) @ (pts[truth] - pts.mean(0)).T
  assert np.isclose(np.sum(ka * kb[np.ix_(found, found)]), np.sum(ka * ka)), "2-opt missed the planted optimum"
  means = 10.0 * rng.standard_normal((4, 3))
  x = (means[np.repeat(np.arange(4), 50)] + 0.1 * rng.standard_normal((200, 3))).astype(np.float32)
  cent = ref_lloyd(x, ref_kmeans_pp(x, 4, rng), 20)
  assert np.abs(np.sort(cent[:, 0]) - np.sort(means[:, 0])).max() < 0.2, "k-means missed separated clusters"
  w = ref_polar(rng.standard_normal((5, 3)))
  assert np.allclose(w.T @ w, np.eye(3)), "polar factor is not semi-orthogonal"
  print("self-test of the reference: ok")


# ----------------------------------------------------------------------------------------------------------------
# Ours, with the host assignments timed.
# ----------------------------------------------------------------------------------------------------------------
_LAP = dict(s=0.0, n=0, calls=[])
_lap_host = qap._lap_host


def _timed_lap_host(*args, **kwargs):
  t = time.perf_counter()
  out = _lap_host(*args, **kwargs)
  _LAP["s"] += time.perf_counter() - t
  _LAP["n"] += 1
  _LAP["calls"].append(time.perf_counter() - t)
  return out


# The callback is looked up when the fit is traced: wrap it before the first trace to time the host assignments.
qap._lap_host = _timed_lap_host


def _lap_since(start: dict) -> tuple[float, int]:
  return _LAP["s"] - start["s"], _LAP["n"] - start["n"]


def ours(x_raw, y_raw, key, hp: dict, lap: str = "auto") -> dict:
  """The public fit (first call, compiles), then the same fit stage by stage (steady state, same key)."""
  solver = qap.resolve_lap(lap)
  data = AlignData.create(x=x_raw, y=y_raw)
  lap0 = dict(s=_LAP["s"], n=_LAP["n"])
  t = time.perf_counter()
  first = unpaired.fit_wasserstein_procrustes(key, data, n_clusters=hp["n_clusters"], n_restarts=hp["n_restarts"],
                                              batch_size=hp["batch"], n_iterations=hp["n_iterations"],
                                              refine_batch_size=hp["refine_batch"],
                                              kmeans_iters=hp["kmeans_iters"], qap_inits=hp["qap_inits"],
                                              lap=solver)
  w_first = np.asarray(jax.block_until_ready(first.wx))
  first_s = time.perf_counter() - t
  first_lsa_s, _ = _lap_since(lap0)

  # Steady state: the stages of fit_wasserstein_procrustes (compiled by the first call), with its key splits.
  t0 = time.perf_counter()
  xj, yj = jnp.asarray(data.x, jnp.float32), jnp.asarray(data.y, jnp.float32)
  empty = jnp.zeros((0, xj.shape[1]), jnp.float32)
  mx, my = base.side_mean(xj, empty, "all"), base.side_mean(yj, empty, "all")
  x, y = base.preprocess(xj, mx, True), base.preprocess(yj, my, True)
  pairs = unpaired.pair_stats(empty, empty)
  x, y = jax.block_until_ready((x, y))
  t1 = time.perf_counter()
  k_init, k_rest = jax.random.split(key)
  m = jax.block_until_ready(unpaired.geometric_initialization(
      k_init, x, y, pairs, n_clusters=hp["n_clusters"], batch_size=hp["batch"], n_restarts=hp["n_restarts"],
      kmeans_iters=hp["kmeans_iters"], qap_inits=hp["qap_inits"]))
  t2 = time.perf_counter()
  lap1 = dict(s=_LAP["s"], n=_LAP["n"])
  w = jax.block_until_ready(unpaired._wp_refine(k_rest, x, y, m, pairs, batch_size=hp["batch"],
                                                n_iterations=hp["n_iterations"],
                                                refine_batch_size=hp["refine_batch"], lap=solver))
  t3 = time.perf_counter()
  lsa_s, n_lsa = _lap_since(lap1)
  w = np.asarray(w)
  return dict(w=w, m=np.asarray(m), mx=np.asarray(first.mx), my=np.asarray(first.my), first_s=first_s,
              first_lsa_s=first_lsa_s, prep_s=t1 - t0, init_s=t2 - t1, refine_s=t3 - t2, total_s=t3 - t0,
              lsa_s=lsa_s, n_lsa=n_lsa, lsa_calls=_LAP["calls"][lap1["n"]:],
              steady_vs_first_max_abs=float(np.abs(w - w_first).max()), assignment=solver)


# ----------------------------------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------------------------------
def quality(res: dict, q: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> dict:
  rel = lambda a: float(np.linalg.norm(np.asarray(a, np.float64) - q) / np.linalg.norm(q))  # noqa: E731
  ex = ref_preprocess(tx, res["mx"]) @ res["w"]
  ey = ref_preprocess(ty, res["my"])
  return dict(init_rel_err=rel(ref_polar(res["m"])), w_rel_err=rel(res["w"]),
              foscttm=metrics.foscttm(ex, ey)["mean"])


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--small", action="store_true", help="quick check: n 2000, b 2000, R 20 (flags given override)")
  p.add_argument("--n", type=int, default=None, help=f"rows per side (default {FULL['n']}; --small {SMALL['n']})")
  p.add_argument("--dim", type=int, default=64, help="features per side")
  p.add_argument("--clusters", type=int, default=30, help="C, k-means centres per side per restart")
  p.add_argument("--restarts", type=int, default=30, help="S, restarts of the initialization")
  p.add_argument("--iterations", type=int, default=None,
                 help=f"R, refinement steps (default {FULL['iterations']}; --small {SMALL['iterations']})")
  p.add_argument("--batch", type=int, default=None, help="b, rows per side per restart and read-out block "
                 f"(default {FULL['batch']}; --small {SMALL['batch']}; capped by --n unless given)")
  p.add_argument("--refine-batch", type=int, default=None, help="rows per side of a refinement step (default: b)")
  p.add_argument("--kmeans-iters", type=int, default=100, help="Lloyd iterations per k-means")
  p.add_argument("--qap-inits", type=int, default=30, help="2-opt starts per centre matching")
  p.add_argument("--data-clusters", type=int, default=40, help="Gaussian clusters of the synthetic mixture")
  p.add_argument("--noise", type=float, default=0.05, help="std of the noise added to y = z Q")
  p.add_argument("--n-test", type=int, default=2000, help="held-out pairs for FOSCTTM")
  p.add_argument("--disjoint", action="store_true", help="y is an independent draw (no row has its partner) "
                 "instead of the rotated x-rows, shuffled")
  p.add_argument("--blas-threads", type=int, default=None,
                 help="cap numpy/scipy's BLAS threads (threadpoolctl; default: the library's own)")
  p.add_argument("--lap", "--assignment", dest="lap", default="auto", choices=qap.LAPS + ("auto",),
                 help="ours' assignment solver (auto: scipy on a CPU backend, the auction on an accelerator)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--skip-reference", action="store_true", help="time ours only")
  p.add_argument("--self-test", action="store_true", help="check the reference's pieces first (seconds)")
  p.add_argument("--json", default=None, metavar="PATH", help="write the numbers here")
  args = p.parse_args(argv)
  preset = SMALL if args.small else FULL
  args.n = preset["n"] if args.n is None else args.n
  args.iterations = preset["iterations"] if args.iterations is None else args.iterations
  args.batch = min(preset["batch"], args.n) if args.batch is None else args.batch
  args.refine_batch = args.batch if args.refine_batch is None else args.refine_batch
  for name in ("n", "dim", "restarts", "iterations", "batch", "refine_batch", "kmeans_iters", "qap_inits",
               "data_clusters", "n_test"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if args.n < 2:
    p.error(f"--n must be >= 2, got {args.n}")
  if args.batch > args.n:
    p.error(f"--batch {args.batch} exceeds --n {args.n} (b rows are drawn per side)")
  if args.refine_batch > args.n:
    p.error(f"--refine-batch {args.refine_batch} exceeds --n {args.n}")
  if not 2 <= args.clusters <= args.batch:
    p.error(f"--clusters must lie in [2, --batch = {args.batch}], got {args.clusters}")
  if args.n_test < 2:
    p.error(f"--n-test must be >= 2, got {args.n_test}")
  if args.blas_threads is not None and args.blas_threads < 1:
    p.error(f"--blas-threads must be >= 1, got {args.blas_threads}")
  if args.noise < 0:
    p.error(f"--noise must be >= 0, got {args.noise}")
  return args


def main(argv=None):
  args = parse(argv)
  if args.blas_threads is None:
    return run(args)
  from threadpoolctl import threadpool_limits
  with threadpool_limits(limits=args.blas_threads, user_api="blas"):
    return run(args)


def run(args):
  backend = jax.default_backend()
  print(f"jax {jax.__version__}, backend {backend}, devices {jax.devices()}, {os.cpu_count()} CPUs, "
        f"BLAS (numpy): {blas_info()}")
  print(f"n = {args.n} per side, dim {args.dim}, C = {args.clusters}, S = {args.restarts}, b = {args.batch}, "
        f"R = {args.iterations} (refine batch {args.refine_batch}), Lloyd {args.kmeans_iters}, "
        f"2-opt starts {args.qap_inits}; data: {args.data_clusters} clusters, noise {args.noise}, "
        f"{'independent draws (--disjoint)' if args.disjoint else 'y = shuffled rotated x-rows'}", flush=True)
  if args.self_test:
    self_test()
  rng = np.random.default_rng(args.seed)
  x, y, tx, ty, q = synthetic(rng, n=args.n, dim=args.dim, clusters=args.data_clusters, noise=args.noise,
                              n_test=args.n_test, disjoint=args.disjoint)
  hp = dict(n_clusters=args.clusters, n_restarts=args.restarts, batch=args.batch, n_iterations=args.iterations,
            refine_batch=args.refine_batch, kmeans_iters=args.kmeans_iters, qap_inits=args.qap_inits)

  ref = None
  if not args.skip_reference:
    print("reference (numpy/scipy, sequential) ...", flush=True)
    ref = reference_fit(x, y, np.random.default_rng(args.seed + 1), **hp)
  print("ours: first call (compiles), then steady state by stage ...", flush=True)
  mine = ours(x, y, jax.random.key(args.seed), hp, args.lap)

  dev = f"ours ({backend})"
  ratio = lambda a, b: a / b if b > 0 else float("nan")  # noqa: E731
  rows = [
      dict(key="preprocess", stage="preprocess", **{dev: mine["prep_s"]}),
      dict(key="init", stage=f"init: S = {args.restarts} restarts", **{dev: mine["init_s"]}),
      dict(key="readout_refine", stage=f"read-out + R = {args.iterations} refinement steps", **{dev: mine["refine_s"]}),
      dict(key="lsa", stage=f"  of which exact LSA, scipy on host ({mine['n_lsa']} calls; ours: lap="
                            f"{mine['assignment']!r})", **{dev: mine["lsa_s"]}),
      dict(key="rest", stage="  the rest (scores, gathers, polar)", **{dev: mine["refine_s"] - mine["lsa_s"]}),
      dict(key="total_steady", stage="total, steady state", **{dev: mine["total_s"]}),
      dict(key="total_first_call", stage="total, first call (compile included)", **{dev: mine["first_s"]}),
  ]
  if ref is not None:
    ref_vals = [ref["prep_s"], ref["init_s"], ref["readout_s"] + ref["refine_s"], ref["lsa_s"],
                ref["readout_s"] + ref["refine_s"] - ref["lsa_s"], ref["total_s"], ref["total_s"]]
    for r, v in zip(rows, ref_vals):
      r["reference (numpy, cpu)"] = v
      r["ratio ref / ours"] = ratio(v, r[dev])
  print()
  print_table(rows, ["stage", dev, "reference (numpy, cpu)", "ratio ref / ours"])
  n_read = -(-args.n // args.batch)
  calls = lambda c: (f"read-out {sum(c[:n_read]):.3g}, refinement steps 1-3 "  # noqa: E731
                     f"{', '.join(f'{v:.3g}' for v in c[n_read:n_read + 3])}, median "
                     f"{np.median(c[n_read:]) if len(c) > n_read else float('nan'):.3g}, max {max(c):.3g}")
  if mine["lsa_calls"]:
    print(f"\nexact LSA per call (s), ours: {calls(mine['lsa_calls'])}")
  else:
    print(f"\nours' assignments ran on the device ({mine['assignment']!r}), inside the refinement's time")
  if ref is not None:
    print(f"exact LSA per call (s), reference: {calls(ref['lsa_calls'])}")
    print(f"reference init: k-means {ref['kmeans_s']:.3g} s, 2-opt matching {ref['qap_s']:.3g} s; read-out "
          f"{ref['readout_s']:.3g} s")
  print(f"ours: steady-state W equals the first call's W to {mine['steady_vs_first_max_abs']:.2g} (max abs); "
        f"host LSA in the first call {mine['first_lsa_s']:.3g} s, so compile + device work "
        f"{mine['first_s'] - mine['first_lsa_s']:.3g} s")

  qual = [dict(impl=dev, **quality(mine, q, tx, ty))]
  if ref is not None:
    qual.append(dict(impl="reference (numpy)", **quality(ref, q, tx, ty)))
  print()
  print_table(qual, ["impl", "init_rel_err", "w_rel_err", "foscttm"])
  print("init_rel_err = ‖polar(M) − Q‖/‖Q‖, w_rel_err = ‖W − Q‖/‖Q‖ (Q: the planted rotation), foscttm on "
        f"{args.n_test} held-out pairs (0 perfect, 0.5 chance)")
  agree = None
  if ref is not None:
    agree = float(np.linalg.norm(mine["w"].astype(np.float64) - ref["w"]) / np.linalg.norm(q))
    print(f"‖W_ours − W_ref‖/‖Q‖ = {agree:.3g} (different random draws, same algorithm)")
  print(f"peak RSS {peak_rss_mb():.0f} MiB")

  if args.json:
    drop = ("w", "m", "mx", "my")
    out = dict(args=vars(args), backend=backend, devices=[str(d) for d in jax.devices()], blas=blas_info(),
               ours={k: v for k, v in mine.items() if k not in drop},
               reference=None if ref is None else {k: v for k, v in ref.items() if k not in drop},
               quality={r["impl"]: {k: v for k, v in r.items() if k != "impl"} for r in qual},
               w_ours_vs_ref_rel=agree, peak_rss_mb=peak_rss_mb())
    if ref is not None:
      out["ratios_ref_over_ours"] = {r["key"]: r["ratio ref / ours"] for r in rows}
    write_json(args.json, out)


if __name__ == "__main__":
  main()
