r"""Aligners that need no pairs: Wasserstein–Procrustes with a geometric initialization, and mini-vec2vec.

Both fit one linear map ``W: [dx, dy]`` from two *unpaired* sets ``X: [n, dx]`` and ``Y: [m, dy]`` (known pairs,
if any, are optional extra evidence) and return a :class:`~sotalign_jax.aligners.linear.LinearAlignment` from x into
y-space (``wy = None``), scored by cosine.

* ``wasserstein_procrustes`` — Schnaus et al., arXiv 2610.09411, "Shared Geometry as a Rosetta Stone: Cross-Modal
  Alignment Without Paired Data" (Algorithms 1 and 2; repository ``dominik-schnaus/unpaired-rosetta``,
  ``unpaired_rosetta/wasserstein_procrustes.py`` and ``geometric_initialization.py``):

  .. math::

    \max_{W \in \mathrm{St}(d_x, d_y),\ T \in \Pi}\ \operatorname{tr}(X W Y^\top T^\top),

  alternating linear assignments for the coupling ``T`` and orthogonal Procrustes for ``W`` on random batches,
  started from a coarse correspondence of matched k-means centres.
* ``mini_vec2vec`` — Dar, 2025, "mini-vec2vec" (github.com/guy-dar/mini-vec2vec, ``linear_vec2vec.ipynb``), as
  re-implemented by the peer in ``unpaired_rosetta/baselines/mini_vec2vec.py``: matched centres as anchors,
  relative representations, Procrustes on neighbour means, then two smoothed refinement stages.

**Preprocessing** (``center``, ``normalize``; :mod:`sotalign_jax.aligners.base`): every row is centred with its
side's mean and scaled to unit norm, as the peer does (``center_and_normalize`` with the unpaired training mean).
With zero pairs ``center="all"`` *is* the unpaired mean; with pairs it also counts the ``p`` paired rows.

**Different dimensions.** Nothing is projected: the k-means centres are compared through their ``C × C`` Gram
matrices (dimension-free), and the polar factor of the ``[dx, dy]`` cross-covariance is semi-orthogonal
(orthonormal columns if ``dx >= dy``, rows otherwise), as the peer's ``polar`` (``unpaired_rosetta/linalg.py``).
For ``dx > dy`` the map drops ``dx − dy`` directions, so ``‖xW‖ ≤ ‖x‖`` and the cosine differs from the peer's
inner product by a per-query scale (the x → y rankings are the same).

**Identifiability.** Without pairs ``W`` is determined only up to the symmetries of the data distribution: any
orthogonal ``R`` with ``Y R ≅ Y`` in distribution (e.g. a rotation of an isotropic subspace, a sign flip of a
symmetric direction) gives an equally good ``W R``; a permutation of the axes is such an ``R`` only if the data
are symmetric under it. Data with generic cluster geometry has no symmetry, and then ``W`` recovers the planted
rotation itself (``tests/test_unpaired_aligners.py``: 20 clusters in 16 dimensions; with fewer clusters than
dimensions the rotation outside the span of the means is only weakly determined and the refinement can stall).

**Randomness and the device.** Every random draw comes from the ``key``; k-means (greedy k-means++ then Lloyd),
the centre matching (2-opt or :mod:`sotalign_jax.qap`'s FAQ, from several random starts) and the refinement are
``jit``-compiled, and the ``S`` restarts run as one batched (``vmap``-ed) computation, compiled once and shared by
both aligners. Known pairs enter as fixed-size statistics (:class:`PairStats`), so a sweep over the number of pairs
compiles once. The linear assignments (one ``b × b`` problem per read-out block and per refinement step: each
step of the defaults solves one ``10,000 × 10,000`` assignment, as the peer does) are
:func:`sotalign_jax.qap.linear_assignment` with the solver ``lap``: ``"auto"`` runs
``scipy.optimize.linear_sum_assignment`` (exact) on the host through :func:`jax.pure_callback` on a CPU backend,
where it is the fastest (``benchmarks/bench_assignment.py``; on a single CPU core the callback can deadlock, so
``"auto"`` takes the auction there: :func:`sotalign_jax.qap.resolve_lap`), and
:func:`sotalign_jax.qap.auction` (ε-scaling auction, pure XLA, within ``b · 1e-6`` of the optimal total score
range) on an accelerator, so the refinement never leaves the device; ``"hungarian"`` (optax, exact, pure XLA) is
the third choice.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax._arrays import DEFAULT_PRECISION, unit
from sotalign_jax.aligners.base import (AlignData, Center, check_data, is_row_source, preprocess, register,
                                        side_mean)
from sotalign_jax.aligners.linear import LinearAlignment
from sotalign_jax import qap as qap_lib
from sotalign_jax.clustering import kmeans, kmeans_plus_plus_from_uniforms, kpp_trials, lloyd
from sotalign_jax.qap import _faq_core

__all__ = ["fit_wasserstein_procrustes", "fit_mini_vec2vec", "geometric_initialization", "matched_centres",
           "match_centres", "polar", "mini_vec2vec_refine", "mini_vec2vec_from_anchors", "PairStats", "pair_stats",
           "QAP_SOLVERS", "WP_QAP_INITS"]

_HI = DEFAULT_PRECISION
_mm = functools.partial(jnp.matmul, precision=_HI)

_SCHNAUS = ("Schnaus, Dagès, Cremers, Wang & Isola, arXiv 2610.09411, 'Shared Geometry as a Rosetta Stone: "
            "Cross-Modal Alignment Without Paired Data' (Algorithms 1-2; dominik-schnaus/unpaired-rosetta)")
_DAR = ("Dar, 2025, 'mini-vec2vec' (github.com/guy-dar/mini-vec2vec), as in unpaired-rosetta's "
        "baselines/mini_vec2vec.py (Schnaus et al., arXiv 2610.09411)")


# ----------------------------------------------------------------------------------------------------------------
# Primitives: polar factor, linear assignment (k-means: sotalign_jax.clustering).
# ----------------------------------------------------------------------------------------------------------------
def polar(m: jax.Array) -> jax.Array:
  r"""Semi-orthogonal polar factor :math:`UV^\top` of :math:`M = USV^\top` (thin SVD).

  For row-aligned ``A, B``, :math:`\mathrm{polar}(A^\top B) = \arg\max_{W \in \mathrm{St}} \operatorname{tr}(A W
  B^\top)` (orthogonal Procrustes, Schönemann 1966).
  """
  u, _, vt = jnp.linalg.svd(m, full_matrices=False)
  return _mm(u, vt)


def _assignment(scores: jax.Array, lap: str = "scipy") -> tuple[jax.Array, jax.Array]:
  """Rows and columns of the maximum-score one-to-one assignment of a ``[k1, k2]`` score matrix (``min(k1, k2)``
  pairs) by :func:`sotalign_jax.qap.linear_assignment` with the solver ``lap``; a tall matrix is solved
  transposed."""
  k1, k2 = scores.shape
  flip = k1 > k2
  cols = qap_lib.linear_assignment(scores.T if flip else scores, maximize=True, lap=lap)
  rows = jnp.arange(min(k1, k2), dtype=jnp.int32)
  return (cols, rows) if flip else (rows, cols)


def _subset(key: jax.Array, n: int, size: int) -> jax.Array:
  """``size`` distinct random row indices out of ``n`` (a random order of all rows if ``size == n``): the order
  of ``jax.random.uniform(key, (n,))`` (one random call; ``jax.random.permutation`` costs several to compile)."""
  return jnp.argsort(jax.random.uniform(key, (n,)))[:size]


class PairStats(NamedTuple):
  r"""What the known pairs :math:`(\hat X, \hat Y)` contribute, as fixed-size statistics (so one compiled fit
  serves every number of pairs ``p``, including 0).

  Attributes:
    sxy: ``[dx, dy]`` :math:`\hat X^\top \hat Y`.
    sx: ``[dx]`` :math:`\hat X^\top \mathbf 1`.
    sy: ``[dy]`` :math:`\hat Y^\top \mathbf 1`.
    p: scalar, the number of pairs (float32).
  """
  sxy: jax.Array
  sx: jax.Array
  sy: jax.Array
  p: jax.Array


def pair_stats(pairs_x: jax.Array, pairs_y: jax.Array) -> PairStats:
  """:class:`PairStats` of ``[p, dx]`` / ``[p, dy]`` row-aligned pairs (``p`` may be 0)."""
  return PairStats(_mm(pairs_x.T, pairs_y), pairs_x.sum(0), pairs_y.sum(0), jnp.float32(pairs_x.shape[0]))


def _with_pairs(cross: jax.Array, k: int, pairs: PairStats) -> jax.Array:
  """``cross + (k / p) X̂ᵀŶ``: the ``p`` known pairs weigh as much as all ``k`` pseudo-pairs together (the peer's
  ``procrustes``); nothing is added without pairs."""
  return cross + jnp.where(pairs.p > 0, k / jnp.maximum(pairs.p, 1.0), 0.0) * pairs.sxy


def _procrustes(mx: jax.Array, my: jax.Array, pairs: PairStats) -> jax.Array:
  r""":math:`\mathrm{polar}(X_m^\top Y_m + \tfrac{k}{p}\hat X^\top \hat Y)` for ``k`` matched rows and ``p`` known
  pairs (lines 5 and 9 of Algorithm 1)."""
  return polar(_with_pairs(_mm(mx.T, my), mx.shape[0], pairs))


# ----------------------------------------------------------------------------------------------------------------
# Geometric initialization (Algorithm 2).
# ----------------------------------------------------------------------------------------------------------------
def _joint_terms(ca: jax.Array, cb: jax.Array, pairs: PairStats):
  r"""The centred centres and the pair term of the jointly centred kernels of ``vstack(A, X̂)`` and ``vstack(B, Ŷ)``.

  With the joint means :math:`\mu_x = (A^\top\mathbf 1 + \hat X^\top \mathbf 1)/(C + p)` (likewise
  :math:`\mu_y`), the centre block is :math:`K_{cc} = (A - \mu_x)(A - \mu_x)^\top` and the centre–pair blocks
  enter only through :math:`K_{cp}L_{cp}^\top = (A - \mu_x)\,N\,(B - \mu_y)^\top` with
  :math:`N = (\hat X - \mu_x)^\top(\hat Y - \mu_y) = \hat X^\top\hat Y - s_x\mu_y^\top - \mu_x s_y^\top +
  p\,\mu_x\mu_y^\top`, computed from :class:`PairStats` (``[dx, dy]``, whatever ``p``).

  Returns:
    ``(A - μx, B - μy, N)``.
  """
  c = ca.shape[0]
  mux = (ca.sum(0) + pairs.sx) / (c + pairs.p)
  muy = (cb.sum(0) + pairs.sy) / (c + pairs.p)
  n = pairs.sxy - jnp.outer(pairs.sx, muy) - jnp.outer(mux, pairs.sy) + pairs.p * jnp.outer(mux, muy)
  return ca - mux, cb - muy, n


def _two_opt(a: jax.Array, b: jax.Array, lin: jax.Array, perm: jax.Array, max_steps: int) -> jax.Array:
  r"""Best-improvement 2-opt for :math:`\max_\pi f(\pi) = \sum_{ij} A_{ij} B_{\pi(i)\pi(j)} + \sum_i L_{i\pi(i)}`
  (symmetric ``A``, ``B``), from the permutation ``perm``; stops when no swap gains more than ``1e-6 · |f|``.

  With :math:`B' = B_{\pi\pi}`, :math:`G = AB'`, :math:`L' = L_{:,\pi}` and the diagonals :math:`a, b'`, swapping
  :math:`\pi(i) \leftrightarrow \pi(j)` changes ``f`` by

  .. math::

    \Delta_{ij} = 2\big[G_{ij} + G_{ji} - G_{ii} - G_{jj} - (a_i - A_{ij})(B'_{ij} - b'_i)
    - (A_{ij} - a_j)(b'_j - B'_{ij})\big] + (a_i - a_j)(b'_j - b'_i) + L'_{ij} + L'_{ji} - L'_{ii} - L'_{jj},

  so one ``C × C`` product scores every swap; each step applies the best one.
  """
  c = a.shape[0]
  da = jnp.diag(a)
  eye = jnp.eye(c, dtype=bool)

  def gains(p):
    bp = b[p][:, p]
    g = _mm(a, bp)
    gd, db, lp = jnp.diag(g), jnp.diag(bp), lin[:, p]
    ld = jnp.diag(lp)
    delta = (2.0 * (g + g.T - gd[:, None] - gd[None, :] - (da[:, None] - a) * (bp - db[:, None])
                    - (a - da[None, :]) * (db[None, :] - bp))
             + (da[:, None] - da[None, :]) * (db[None, :] - db[:, None]) + lp + lp.T - ld[:, None] - ld[None, :])
    f = jnp.sum(a * bp) + jnp.sum(ld)
    return jnp.where(eye, -jnp.inf, delta), f

  def cond(s):
    p, t, done = s
    return ~done & (t < max_steps)

  def body(s):
    p, t, _ = s
    delta, f = gains(p)
    flat = jnp.argmax(delta)
    i, j = flat // c, flat % c
    better = delta.reshape(-1)[flat] > 1e-6 * jnp.maximum(jnp.abs(f), 1e-12)
    swapped = p.at[i].set(p[j]).at[j].set(p[i])
    return jnp.where(better, swapped, p), t + 1, ~better

  return jax.lax.while_loop(cond, body, (perm, 0, False))[0]


def _objective(a, b, lin, p):
  return jnp.sum(a * b[p][:, p]) + jnp.sum(lin[jnp.arange(p.shape[0]), p])


QAP_SOLVERS = ("2opt", "faq", "faq_2opt")

WP_QAP_INITS = 3000
"""Random 2-opt starts per centre matching of ``wasserstein_procrustes`` (default ``qap_inits``). On the k-means
centres of real embeddings (C = 30; WordNet glosses, MiniLM vs MPNet) the best of 30 starts was below the best of
3,000 in 28 of 30 restarts and disagreed with it on 5–10 of the 30 centres, while the peer's MPOpt found the
3,000-start permutation in 5 of 6 restarts (and a worse one in the sixth); with 3,000 starts the mean R@1 rose by
2–3 points over 5 seeds (docs/results/zero_pairs.md). Cost: ≈ 2 CPU s per restart, a fraction of one MPOpt solve."""


def match_centres(centres_x: jax.Array, centres_y: jax.Array, key: jax.Array, *, pairs: PairStats | None = None,
                  n_init: int = 30, solver: str = "2opt", maxiter: int = 30, tol: float = 1e-5,
                  lap: str = "scipy") -> tuple[jax.Array, jax.Array]:
  r"""The permutation ``π`` of ``centres_y`` maximising linear CKA with ``centres_x`` (a QAP), best of ``n_init``
  local searches.

  Without pairs, :math:`\arg\max_P \mathrm{CKA}(A, PB) = \arg\max_P \operatorname{tr}(\bar K_A P \bar K_B P^\top)`
  for the centred Gram matrices :math:`\bar K = HAA^\top H` (Lemma 1 of Schnaus et al.). With ``p`` known pairs the
  centres and pairs of each side are centred together and the pairs are fixed seeds (seeded graph matching); they
  add the linear term :math:`2\operatorname{tr}(K_{cp} L_{cp}^\top P^\top)` (their Lemma 3).

  The peer solves this QAP with MPOpt. Solvers here (``n_init`` starts from ``key``):

  * ``"2opt"`` (default): best-improvement 2-opt (:func:`_two_opt`) from uniformly random permutations (the
    row-wise order of ``jax.random.uniform(key, (n_init, C))``), as mini-vec2vec's matching (best of 30 random
    2-opt searches).
  * ``"faq"``: :mod:`sotalign_jax.qap`'s FAQ from scipy's ``P0="randomized"`` starts (the starts
    :func:`sotalign_jax.qap.faq` draws for ``key``). On centred Gram matrices of k-means centres FAQ's
    maximisation often stalls far from the optimum (20 centres in 16 dimensions: 1,000 FAQ starts reach 30 of the
    optimal 40.7, while 4 of 30 random 2-opt searches reach it), hence the default.
  * ``"faq_2opt"``: FAQ, each start's permutation then polished by 2-opt.

  Args:
    centres_x: ``[C, dx]``.
    centres_y: ``[C, dy]``.
    key: PRNG key of the starts.
    pairs: :class:`PairStats` of the known pairs (``None``: none).
    n_init: starts (best kept).
    solver: one of :data:`QAP_SOLVERS`.
    maxiter: Frank–Wolfe iterations per FAQ start (2-opt: at most ``C²`` swaps).
    tol: FAQ's stopping tolerance.
    lap: FAQ's linear assignment solver (:func:`sotalign_jax.qap.linear_assignment`; ``"auto"`` allowed).

  Returns:
    ``(perm [C] int32, fun)``: centre ``i`` of x is matched to centre ``perm[i]`` of y; ``fun`` is the best
    objective :math:`\sum_{ij} \bar K_{A,ij} \bar K_{B,\pi(i)\pi(j)}` plus the pair term (without the constant
    pair–pair term).
  """
  if solver not in QAP_SOLVERS:
    raise ValueError(f"solver must be one of {QAP_SOLVERS}, got {solver!r}")
  c = centres_x.shape[0]
  if pairs is None:
    pairs = pair_stats(centres_x[:0], centres_y[:0])
  ac, bc, nxy = _joint_terms(centres_x, centres_y, pairs)
  a22, b22 = _mm(ac, ac.T), _mm(bc, bc.T)
  a21, b21 = ac, _mm(bc, nxy.T)  # a21 b21ᵀ = K_cp L_cpᵀ, with blocks of width dx instead of p
  lin = 2.0 * _mm(a21, b21.T)
  if solver == "2opt":
    starts = jnp.argsort(jax.random.uniform(key, (n_init, c)), axis=1).astype(jnp.int32)
  else:
    keys = jax.random.split(key, n_init)
    zero = jnp.zeros((1, 1), a22.dtype)  # the pair–pair block only adds a constant: left out
    starts, _, _ = _faq_core(keys, zero, a21.T, a21, a22, zero, b21.T, b21, b22, maximize=True, symmetric=True,
                             maxiter=int(maxiter), tol=float(tol), lap=qap_lib.resolve_lap(lap))
  if solver != "faq":  # in batches of 256 starts: the same result as one vmap, a bounded memory for 3,000 starts
    polish = lambda p: _two_opt(a22, b22, lin, p, c * c)  # noqa: E731
    starts = jax.lax.map(polish, starts, batch_size=min(starts.shape[0], 256))
  fun = jax.vmap(lambda p: _objective(a22, b22, lin, p))(starts)
  best = jnp.argmax(fun)
  return starts[best], fun[best]


def matched_centres(key: jax.Array, x: jax.Array, y: jax.Array, pairs: PairStats, *,
                    n_clusters: int, batch_size: int, kmeans_iters: int = 100, qap_inits: int = 30,
                    qap_solver: str = "2opt", qap_maxiter: int = 30, lap: str = "scipy") -> tuple[jax.Array, jax.Array]:
  """One restart of the geometric initialization: ``b`` random rows per side, ``C`` k-means centres each, matched
  by :func:`match_centres` (lines 3–6 of Algorithm 2).

  ``(k_draw, k_qap) = jax.random.split(key)``; ``jax.random.uniform(k_draw, (n + m + 2 C t,))`` holds every other
  draw (the row orders of both sides, then the k-means++ uniforms of x and y, ``t`` trials per seed), so a restart
  costs two random calls. ``batch_size`` and ``n_clusters`` must already be capped by the data (``b <= n, m``;
  ``C <= b``).

  Returns:
    ``(A [C, dx], B_π [C, dy])``: the x-centres and the matched y-centres, row ``i`` of one matched to row ``i``
    of the other.
  """
  n, m, c, t = x.shape[0], y.shape[0], n_clusters, kpp_trials(n_clusters)
  kd, kq = jax.random.split(key)
  u = jax.random.uniform(kd, (n + m + 2 * c * t,), x.dtype)
  bx = x[jnp.argsort(u[:n])[:min(batch_size, n)]]
  by = y[jnp.argsort(u[n:n + m])[:min(batch_size, m)]]
  ca = lloyd(bx, kmeans_plus_plus_from_uniforms(bx, u[n + m:n + m + c * t].reshape(c, t)), kmeans_iters)
  cb = lloyd(by, kmeans_plus_plus_from_uniforms(by, u[n + m + c * t:].reshape(c, t)), kmeans_iters)
  perm, _ = match_centres(ca, cb, kq, pairs=pairs, n_init=qap_inits, solver=qap_solver,
                          maxiter=qap_maxiter, lap=lap)
  return ca, cb[perm]


@functools.partial(jax.jit, static_argnames=("n_restarts", "restart_batch", "n_clusters", "batch_size",
                                             "kmeans_iters", "qap_inits", "qap_solver", "qap_maxiter", "lap"))
def _all_restarts(key, x, y, pairs, *, n_restarts: int, restart_batch: int | None, **opts):
  """``(A [S, C, dx], B_π [S, C, dy])`` of ``n_restarts`` restarts (keys ``jax.random.split(key, S)``), vmapped in
  batches of ``restart_batch`` (all at once if ``None``). Compiled on its own, so both aligners (and any ``p``)
  share it."""
  keys = jax.random.split(key, n_restarts)
  one = lambda k: matched_centres(k, x, y, pairs, **opts)
  if restart_batch is None or restart_batch >= n_restarts:
    return jax.vmap(one)(keys)
  return jax.lax.map(one, keys, batch_size=int(restart_batch))


def geometric_initialization(key: jax.Array, x: jax.Array, y: jax.Array, pairs: PairStats, *,
                             n_clusters: int, batch_size: int, n_restarts: int = 30, restart_batch: int | None = None,
                             kmeans_iters: int = 100, qap_inits: int = 30, qap_solver: str = "2opt",
                             qap_maxiter: int = 30, lap: str = "scipy") -> jax.Array:
  r"""Coarse correspondence :math:`M = \frac{1}{SC}\sum_{s=1}^{S} A_s^\top P_s B_s` (``[dx, dy]``, Algorithm 2).

  Each restart is :func:`matched_centres` with the key ``jax.random.split(key, S)[s]``; the restarts run as one
  batched computation (``jax.vmap``; ``restart_batch`` restarts at a time through ``jax.lax.map`` to bound the
  memory of the gathered rows, ``≈ restart_batch · b · (dx + dy) · 4`` bytes), with the same result as a loop.

  Args:
    key: PRNG key.
    x, y: ``[n, dx]``, ``[m, dy]`` preprocessed unpaired rows.
    pairs: :class:`PairStats` of the preprocessed known pairs (``p`` may be 0).
    n_clusters, batch_size: ``C`` and ``b`` (capped by the data already).
    n_restarts: ``S``.
    restart_batch: restarts per vmapped batch (``None``: all).
    kmeans_iters, qap_inits, qap_solver, qap_maxiter, lap: see :func:`matched_centres`.
  """
  ca, cb = _all_restarts(key, x, y, pairs, n_restarts=int(n_restarts), restart_batch=restart_batch,
                         n_clusters=int(n_clusters), batch_size=int(batch_size), kmeans_iters=int(kmeans_iters),
                         qap_inits=int(qap_inits), qap_solver=str(qap_solver), qap_maxiter=int(qap_maxiter),
                         lap=str(lap))
  return jnp.einsum("sci,scj->ij", ca, cb, precision=_HI) / (ca.shape[0] * ca.shape[1])


# ----------------------------------------------------------------------------------------------------------------
# Wasserstein–Procrustes (Algorithm 1).
# ----------------------------------------------------------------------------------------------------------------
def _centre_lap(qap_solver: str, lap: str) -> str:
  """The ``lap`` of the centre matching: only FAQ uses one, so 2-opt restarts get a fixed value and compile once
  whatever the read-out's solver."""
  return "scipy" if qap_solver == "2opt" else lap


def _readout(key, x, y, m, pairs, block: int, lap: str) -> jax.Array:
  """First map from ``M``: match shuffled ``X M`` to shuffled ``Y`` block by block (``b`` rows each, the last block
  possibly rectangular; ``min(n, m)`` pseudo-pairs), then Procrustes on all of them with the pairs (the peer's
  ``readout``, line 9 of Algorithm 2 and line 5 of Algorithm 1)."""
  u = jax.random.uniform(key, (x.shape[0] + y.shape[0],))
  ox, oy = jnp.argsort(u[:x.shape[0]]), jnp.argsort(u[x.shape[0]:])
  total = min(x.shape[0], y.shape[0])
  cross = jnp.zeros((x.shape[1], y.shape[1]), x.dtype)
  for start in range(0, total, block):
    bx, by = x[ox[start:start + block]], y[oy[start:start + block]]
    rows, cols = _assignment(_mm(_mm(bx, m), by.T), lap)
    cross = cross + _mm(bx[rows].T, by[cols])
  return polar(_with_pairs(cross, total, pairs))


def _refine_step(w, key, x, y, pairs, block: int, lap: str) -> tuple[jax.Array, jax.Array]:
  """Match a random batch of ``X W`` to a random batch of ``Y`` (one exact assignment), then Procrustes (lines
  7–9 of Algorithm 1).

  Returns:
    ``(W [dx, dy], partner [n] int32)``: the new map and, for every row of ``X``, the row of ``Y`` it was matched to
    in this step (``-1``: not in the batch or not matched).
  """
  u = jax.random.uniform(key, (x.shape[0] + y.shape[0],))
  ix = jnp.argsort(u[:x.shape[0]])[:min(block, x.shape[0])]
  iy = jnp.argsort(u[x.shape[0]:])[:min(block, y.shape[0])]
  bx, by = x[ix], y[iy]
  rows, cols = _assignment(_mm(_mm(bx, w), by.T), lap)
  partner = jnp.full((x.shape[0],), -1, jnp.int32).at[ix[rows]].set(iy[cols].astype(jnp.int32))
  return _procrustes(bx[rows], by[cols], pairs), partner


@functools.partial(jax.jit, static_argnames=("batch_size", "n_iterations", "refine_batch_size", "lap"))
def _wp_refine(key, x, y, m, pairs, *, batch_size, n_iterations, refine_batch_size, lap="scipy"):
  r"""Read-out from ``M`` and the ``R`` refinement steps.

  When a refinement batch holds every row of both sides (``refine_batch_size >= n, m``, as at the defaults on up
  to 10,000 rows per side) a step is a deterministic map :math:`W \mapsto \mathrm{polar}(X^\top T(W) Y)` (the
  random order of the rows does not change an exact assignment, up to ties): once a step matches every row of
  ``X`` to the same row of ``Y`` as the step before, ``W`` is a fixed point and every later step would repeat it,
  so the loop stops there (same ``W`` as all ``R`` steps, for a fraction of the assignments). With smaller batches
  all ``R`` steps run.
  """
  k_read, k_ref = jax.random.split(key)
  w = _readout(k_read, x, y, m, pairs, batch_size, lap)
  keys = jax.random.split(k_ref, n_iterations)
  full = refine_batch_size >= x.shape[0] and refine_batch_size >= y.shape[0]
  if not full:
    step = lambda w, k: (_refine_step(w, k, x, y, pairs, refine_batch_size, lap)[0], None)
    return jax.lax.scan(step, w, keys)[0]

  def cond(s):
    _, _, t, done = s
    return (t < n_iterations) & ~done

  def body(s):
    w, prev, t, _ = s
    w, partner = _refine_step(w, keys[t], x, y, pairs, refine_batch_size, lap)
    return w, partner, t + 1, jnp.all(partner == prev)

  start = (w, jnp.full((x.shape[0],), -2, jnp.int32), jnp.int32(0), jnp.bool_(False))
  return jax.lax.while_loop(cond, body, start)[0]


def _wp(key, x, y, pairs, *, batch_size, n_iterations, refine_batch_size, lap="scipy", **init):
  """Wasserstein–Procrustes on preprocessed rows: ``(W, M)``. Two compiled stages (the restarts, shared with
  mini-vec2vec, then the read-out and refinement); ``jit``-able as a whole."""
  k_init, k_rest = jax.random.split(key)
  centre_lap = _centre_lap(init.get("qap_solver", "2opt"), lap)
  m = geometric_initialization(k_init, x, y, pairs, batch_size=batch_size, lap=centre_lap, **init)
  w = _wp_refine(k_rest, x, y, m, pairs, batch_size=batch_size, n_iterations=n_iterations,
                 refine_batch_size=refine_batch_size, lap=lap)
  return w, m


def _rows(a) -> jax.Array:
  return jnp.asarray(a[0:a.shape[0]], jnp.float32) if is_row_source(a) else jnp.asarray(a, jnp.float32)


def _prepared(data: AlignData, center: Center, normalize: bool, name: str):
  x, y = _rows(data.x), _rows(data.y)
  if x.shape[0] < 2 or y.shape[0] < 2:
    raise ValueError(f"{name} aligns unpaired rows: it needs at least 2 unpaired rows per side, got "
                     f"{x.shape[0]} and {y.shape[0]}")
  px, py = jnp.asarray(data.pairs_x, jnp.float32), jnp.asarray(data.pairs_y, jnp.float32)
  mx, my = side_mean(x, px, center), side_mean(y, py, center)
  pairs = pair_stats(preprocess(px, mx, normalize), preprocess(py, my, normalize))
  return preprocess(x, mx, normalize), preprocess(y, my, normalize), pairs, mx, my


def _positive(**kw):
  for k, v in kw.items():
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{k} must be a positive integer, got {v!r}")


@register("wasserstein_procrustes", needs_pairs=False, uses_unpaired=True, min_pairs=0, citation=_SCHNAUS)
def fit_wasserstein_procrustes(key: jax.Array, data: AlignData, *, n_clusters: int = 30, n_restarts: int = 30,
                               batch_size: int = 10_000, n_iterations: int = 100, refine_batch_size: int = 10_000,
                               kmeans_iters: int = 100, qap_inits: int = WP_QAP_INITS, qap_solver: str = "2opt",
                               qap_maxiter: int = 30, lap: str = "auto",
                               restart_batch: int | None = None, center: Center = "all",
                               normalize: bool = True) -> LinearAlignment:
  r"""Wasserstein–Procrustes with the geometric initialization (Schnaus et al., Algorithms 1 and 2).

  Maximises :math:`\operatorname{tr}(X W Y^\top T^\top)` over a semi-orthogonal ``W`` and a coupling ``T`` of the
  preprocessed unpaired sets:

  1. **Initialization** (:func:`geometric_initialization`): ``S`` restarts, each ``b`` random rows per side,
     ``C`` k-means centres :math:`A_s, B_s` per side, matched by
     :math:`P_s = \arg\max_P \operatorname{tr}(\bar K_{A_s} P \bar K_{B_s} P^\top)` (:func:`match_centres`);
     :math:`M = \frac{1}{SC}\sum_s A_s^\top P_s B_s`.
  2. **Read-out** (the peer's ``readout``): shuffle both sets, match :math:`XM` to :math:`Y` in blocks of ``b``
     rows by exact assignments on the scores :math:`XMY^\top`, and :math:`W_0 = \mathrm{polar}(X_m^\top Y_m +
     \tfrac{k}{p}\hat X^\top\hat Y)` on the ``k = min(n, m)`` pseudo-pairs (the peer scores with ``M`` itself, not
     with :math:`\mathrm{polar}(M)`).
  3. **Refinement**: ``R`` times, an exact assignment between a random batch of :math:`XW` and a random batch of
     ``Y`` (``refine_batch_size`` rows each, the peer's ``b``), then
     :math:`W = \mathrm{polar}(X_m^\top Y_m + \tfrac{k}{p}\hat X^\top\hat Y)`.
     When a batch holds all rows the steps stop at the first fixed point (every row matched as in the step before:
     every later step would repeat it), with the ``W`` of all ``R`` steps.

  With ``p`` known pairs :math:`(\hat X, \hat Y)` the pairs weigh as much as all ``k`` pseudo-pairs of a step
  together (weight ``k / p``, the peer's ``procrustes``), and they enter the centre matching as fixed seeds. They
  are passed as fixed-size statistics (:class:`PairStats`), so one compiled fit serves every ``p`` (0 included).
  Every size is capped by the data (``b <= n, m``; ``C <= b``).

  Args:
    key: PRNG key (``None``: ``jax.random.key(0)``).
    data: :class:`AlignData`; ``x`` and ``y`` need at least 2 rows each, pairs are optional.
    n_clusters: ``C`` k-means centres per restart (peer: 30).
    n_restarts: ``S`` restarts of the initialization (peer: 30).
    batch_size: ``b`` rows per side per restart, and the block of the read-out (peer: 10,000).
    n_iterations: ``R`` refinement steps (peer: 100).
    refine_batch_size: rows per side of a refinement step (peer: ``b`` = 10,000).
    kmeans_iters: Lloyd iterations of each k-means.
    qap_inits: QAP starts per centre matching (best kept; :data:`WP_QAP_INITS` = 3,000: 30 starts often
      stop at a worse matching of the centres, see there).
    qap_solver: ``"2opt"`` | ``"faq"`` | ``"faq_2opt"`` (:func:`match_centres`; the peer uses MPOpt).
    qap_maxiter: Frank–Wolfe iterations per FAQ start.
    lap: linear assignment solver of the read-out, the refinement and FAQ's centre matching, ``"auto"`` (scipy on a
      CPU backend, the auction on an accelerator) | ``"scipy"`` | ``"auction"`` | ``"hungarian"``
      (:func:`sotalign_jax.qap.resolve_lap`).
    restart_batch: restarts per vmapped batch (``None``: all ``S`` at once).
    center: ``"all"`` | ``"pairs"`` | ``"none"`` (:mod:`sotalign_jax.aligners.base`).
    normalize: scale centred rows to unit norm (the peer always does).

  Returns:
    :class:`LinearAlignment` mapping x into y-space (``wy = None``).
  """
  _positive(n_clusters=n_clusters, n_restarts=n_restarts, batch_size=batch_size, n_iterations=n_iterations,
            refine_batch_size=refine_batch_size, kmeans_iters=kmeans_iters, qap_inits=qap_inits,
            qap_maxiter=qap_maxiter)
  x, y, pairs, mx, my = _prepared(data, center, normalize, "wasserstein_procrustes")
  b = min(int(batch_size), x.shape[0], y.shape[0])
  c = min(int(n_clusters), b)
  if c < 2:
    raise ValueError(f"n_clusters must be >= 2 (after capping by the rows), got {c}")
  key = jax.random.key(0) if key is None else key
  w, _ = _wp(key, x, y, pairs, n_clusters=c, n_restarts=int(n_restarts), batch_size=b,
             n_iterations=int(n_iterations), refine_batch_size=int(refine_batch_size),
             kmeans_iters=int(kmeans_iters), qap_inits=int(qap_inits), qap_solver=str(qap_solver),
             qap_maxiter=int(qap_maxiter), lap=qap_lib.resolve_lap(lap),
             restart_batch=None if restart_batch is None else int(restart_batch))
  return LinearAlignment(w, None, mx, my, normalize)


# ----------------------------------------------------------------------------------------------------------------
# mini-vec2vec.
# ----------------------------------------------------------------------------------------------------------------
def _neighbour_means(q: jax.Array, keys: jax.Array, targets: jax.Array, k: int, chunk: int = 1024) -> jax.Array:
  """Row ``i``: the mean of ``targets[j]`` over the ``k`` keys ``j`` of largest cosine with query ``i``."""
  kn = unit(keys)

  def one(qi):
    idx = jax.lax.top_k(_mm(unit(qi), kn.T), k)[1]
    return targets[idx].mean(1)

  n = q.shape[0]
  pad = -n % chunk if n > chunk else 0
  qp = jnp.concatenate([q, jnp.zeros((pad, q.shape[1]), q.dtype)]) if pad else q
  size = min(chunk, n)
  return jax.lax.map(one, qp.reshape(-1, size, q.shape[1])).reshape(-1, targets.shape[1])[:n]


def mini_vec2vec_refine(key: jax.Array, x: jax.Array, y: jax.Array, anchors_x: jax.Array, anchors_y: jax.Array, *,
                        pairs: PairStats | None = None,
                        num_neighbors: int = 50, refine1_iterations: int = 100, refine1_samples: int = 1000,
                        refine2_clusters: int = 500, smoothing: float = 0.5, kmeans_iters: int = 100) -> jax.Array:
  r"""mini-vec2vec after the anchors: read-out, refine1, refine2 (the peer's ``readout``, ``refine1_step``,
  ``refine2_step``). Sizes must already be capped by the data.

  * Read-out: relative representations :math:`r(x) = x\,\mathrm{unit}(A_x)^\top`, :math:`r(y) = y\,
    \mathrm{unit}(A_y)^\top`; each ``x`` is paired with the mean :math:`\bar y(x)` of the ``num_neighbors`` rows of
    ``Y`` whose relative representations have the largest cosine with its own; :math:`W = \mathrm{polar}(X^\top
    \bar Y)`.
  * refine1, ``refine1_iterations`` times (key ``jax.random.split(k1, R)[t]``, rows
    ``_subset(key_t, n, refine1_samples)``): pair each batch row ``x`` with the mean of the
    ``num_neighbors`` rows of ``Y`` of largest cosine with ``xW``, and
    :math:`W \leftarrow (1-\alpha) W + \alpha\,\mathrm{polar}(X_b^\top \bar Y_b)`.
  * refine2: ``K = refine2_clusters`` k-means centres ``C_x`` of ``X`` (k-means++ seeds from ``k2``), k-means of
    ``Y`` started at :math:`C_x W`, and :math:`W \leftarrow (1-\alpha) W + \alpha\,\mathrm{polar}(C_x^\top C_y)`.

  ``(k1, k2) = jax.random.split(key)``. As in the notebook, ``W`` is an average of orthogonal maps and is not
  projected back. (The peer shuffles both sets before refine2's k-means, which only changes scikit-learn's
  seeding; not repeated here.) Known ``pairs`` (our addition; the peer's baseline takes none) join each of the three
  Procrustes problems with the weight of Wasserstein–Procrustes (as much as all the pseudo-pairs of that step).
  """
  pairs = pair_stats(x[:0], y[:0]) if pairs is None else pairs
  procrustes = lambda a, b: polar(_with_pairs(_mm(a.T, b), a.shape[0], pairs))  # noqa: E731
  k1, k2 = jax.random.split(key)
  w = procrustes(x, _neighbour_means(_mm(x, unit(anchors_x).T), _mm(y, unit(anchors_y).T), y, num_neighbors))

  def refine1(w, kt):
    bx = x[_subset(kt, x.shape[0], refine1_samples)]
    new = procrustes(bx, _neighbour_means(_mm(bx, w), y, y, num_neighbors))
    return (1.0 - smoothing) * w + smoothing * new, None

  w, _ = jax.lax.scan(refine1, w, jax.random.split(k1, refine1_iterations))
  cx = kmeans(x, k2, refine2_clusters, n_iter=kmeans_iters)
  cy = lloyd(y, _mm(cx, w), kmeans_iters)
  return (1.0 - smoothing) * w + smoothing * procrustes(cx, cy)


_mv2v_refine = jax.jit(mini_vec2vec_refine, static_argnames=("num_neighbors", "refine1_iterations",
                                                            "refine1_samples", "refine2_clusters", "kmeans_iters"))


def mini_vec2vec_from_anchors(key: jax.Array, data: AlignData, anchors_x: jax.Array, anchors_y: jax.Array, *,
                              num_neighbors: int = 50, refine1_iterations: int = 100, refine1_samples: int = 1000,
                              refine2_clusters: int = 500, smoothing: float = 0.5, kmeans_iters: int = 100,
                              center: Center = "all", normalize: bool = True) -> LinearAlignment:
  """mini-vec2vec's read-out and refinement (:func:`mini_vec2vec_refine`) from anchors you give, instead of the
  matched k-means centres of :func:`fit_mini_vec2vec`: row ``i`` of ``anchors_x: [a, dx]`` (in x's space) is
  matched with row ``i`` of ``anchors_y: [a, dy]`` (in y's), e.g. the pseudo pairs of texts shared by two spaces
  (``text_anchored`` in ``experiments/cmcr.py``).

  The rows of ``data`` are prepared as :func:`fit_mini_vec2vec` prepares them (``center``, ``normalize``), and the
  anchors like rows of their side (centred with its mean, normalised); the options are :func:`fit_mini_vec2vec`'s,
  capped by the rows as there. ``key`` draws the refinement's batches and k-means seeds. Returns a
  :class:`LinearAlignment` mapping x into y-space (``wy = None``).
  """
  _positive(num_neighbors=num_neighbors, refine1_iterations=refine1_iterations, refine1_samples=refine1_samples,
            refine2_clusters=refine2_clusters, kmeans_iters=kmeans_iters)
  x, y, pairs, mx, my = _prepared(check_data(data), center, normalize, "mini_vec2vec_from_anchors")
  sx, sy = np.shape(anchors_x), np.shape(anchors_y)
  if len(sx) != 2 or len(sy) != 2 or sx != (sy[0], x.shape[1]) or sy[1] != y.shape[1]:
    raise ValueError(f"anchors_x and anchors_y must be matched [a, {x.shape[1]}] and [a, {y.shape[1]}] rows, got "
                     f"shapes {sx} and {sy}")
  ax, ay = (preprocess(jnp.asarray(a, jnp.float32), mean, normalize) for a, mean in ((anchors_x, mx), (anchors_y, my)))
  n, m = x.shape[0], y.shape[0]
  w = _mv2v_refine(key, x, y, ax, ay, pairs=pairs, num_neighbors=min(int(num_neighbors), m),
                   refine1_iterations=int(refine1_iterations), refine1_samples=min(int(refine1_samples), n),
                   refine2_clusters=min(int(refine2_clusters), n, m), smoothing=jnp.float32(smoothing),
                   kmeans_iters=int(kmeans_iters))
  return LinearAlignment(w, None, mx, my, normalize)


def _mv2v(key, x, y, pairs, smoothing, *, num_clusters, num_runs, num_samples, num_restarts, num_neighbors,
          refine1_iterations, refine1_samples, refine2_clusters, kmeans_iters, qap_solver, qap_maxiter,
          restart_batch, lap):
  k_anchor, k_refine = jax.random.split(key)
  ca, cb = _all_restarts(k_anchor, x, y, pairs, n_restarts=num_runs, restart_batch=restart_batch,
                         n_clusters=num_clusters, batch_size=num_samples, kmeans_iters=kmeans_iters,
                         qap_inits=num_restarts, qap_solver=qap_solver, qap_maxiter=qap_maxiter,
                         lap=_centre_lap(qap_solver, lap))
  return _mv2v_refine(k_refine, x, y, ca.reshape(-1, x.shape[1]), cb.reshape(-1, y.shape[1]), pairs=pairs,
                             num_neighbors=num_neighbors,
                             refine1_iterations=refine1_iterations, refine1_samples=refine1_samples,
                             refine2_clusters=refine2_clusters, smoothing=smoothing, kmeans_iters=kmeans_iters)


@register("mini_vec2vec", needs_pairs=False, uses_unpaired=True, min_pairs=0, citation=_DAR)
def fit_mini_vec2vec(key: jax.Array, data: AlignData, *, num_clusters: int = 20, num_runs: int = 30,
                     num_samples: int = 10_000, num_restarts: int = 30, num_neighbors: int = 50,
                     refine1_iterations: int = 100, refine1_samples: int = 1000, refine2_clusters: int = 500,
                     smoothing: float = 0.5, kmeans_iters: int = 100, qap_solver: str = "2opt", qap_maxiter: int = 30,
                     lap: str = "auto", restart_batch: int | None = None,
                     center: Center = "all", normalize: bool = True) -> LinearAlignment:
  r"""mini-vec2vec (Dar, 2025), with the defaults of the peer's re-implementation.

  1. **Anchors**: in each of ``num_runs`` runs, ``num_samples`` random rows per side, ``num_clusters`` k-means
     centres each, matched by :math:`\max_P \operatorname{tr}(\bar K_A P \bar K_B P^\top)` (:func:`matched_centres`,
     the same batched restarts as ``wasserstein_procrustes``); the matched centres of all runs are the anchors
     (``num_runs · num_clusters`` of them). As the peer (after the notebook), the permutation is the best of
     ``num_restarts`` 2-opt searches from random permutations (here best-improvement, there first-improvement).
  2. **Read-out**, 3. **refine1**, 4. **refine2**: :func:`mini_vec2vec_refine`.

  Known pairs, if any (the peer's baseline refuses them), fix the centre matching as seeds and join the three
  Procrustes problems (:func:`mini_vec2vec_refine`), as in ``wasserstein_procrustes``; they enter as fixed-size
  statistics (:class:`PairStats`), so one compiled fit serves every ``p``.

  Args:
    key: PRNG key (``None``: ``jax.random.key(0)``); split into (anchors, refinement).
    data: :class:`AlignData`; ``x`` and ``y`` need at least 2 rows each.
    num_clusters: centres per run (20).
    num_runs: anchor runs (30).
    num_samples: rows per side per run (10,000).
    num_restarts: QAP starts per run (30).
    num_neighbors: neighbours averaged into a pseudo-target (50).
    refine1_iterations: refine1 steps (100).
    refine1_samples: rows of X per refine1 step (1,000).
    refine2_clusters: k-means centres of refine2 (500).
    smoothing: α, the step towards each new Procrustes solution (0.5).
    kmeans_iters: Lloyd iterations of each k-means.
    qap_solver: ``"2opt"`` (the notebook's local search; default) | ``"faq"`` | ``"faq_2opt"``.
    qap_maxiter: Frank–Wolfe iterations per FAQ start.
    lap: FAQ's linear assignment solver (``"faq"``/``"faq_2opt"`` only), as ``wasserstein_procrustes``'s ``lap``.
    restart_batch: anchor runs per vmapped batch (``None``: all).
    center: ``"all"`` | ``"pairs"`` | ``"none"``.
    normalize: scale centred rows to unit norm (the peer always does).

  Returns:
    :class:`LinearAlignment` mapping x into y-space (``wy = None``).
  """
  _positive(num_clusters=num_clusters, num_runs=num_runs, num_samples=num_samples, num_restarts=num_restarts,
            num_neighbors=num_neighbors, refine1_iterations=refine1_iterations, refine1_samples=refine1_samples,
            refine2_clusters=refine2_clusters, kmeans_iters=kmeans_iters, qap_maxiter=qap_maxiter)
  if not 0.0 <= float(smoothing) <= 1.0:
    raise ValueError(f"smoothing must lie in [0, 1], got {smoothing!r}")
  x, y, pairs, mx, my = _prepared(data, center, normalize, "mini_vec2vec")
  n, m = x.shape[0], y.shape[0]
  s = min(int(num_samples), n, m)
  c = min(int(num_clusters), s)
  if c < 2:
    raise ValueError(f"num_clusters must be >= 2 (after capping by the rows), got {c}")
  key = jax.random.key(0) if key is None else key
  w = _mv2v(key, x, y, pairs, jnp.float32(smoothing), num_clusters=c, num_runs=int(num_runs), num_samples=s,
            num_restarts=int(num_restarts), num_neighbors=min(int(num_neighbors), m),
            refine1_iterations=int(refine1_iterations), refine1_samples=min(int(refine1_samples), n),
            refine2_clusters=min(int(refine2_clusters), n, m), kmeans_iters=int(kmeans_iters),
            qap_solver=str(qap_solver), qap_maxiter=int(qap_maxiter),
            restart_batch=None if restart_batch is None else int(restart_batch), lap=qap_lib.resolve_lap(lap))
  return LinearAlignment(w, None, mx, my, normalize)

