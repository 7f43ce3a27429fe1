r"""Layer-by-layer alignment grids and permutation-calibrated scores, with bounded memory.

Two entry points:

* :func:`score_grid` — every (layer of encoder A) × (layer of encoder B) score in one compiled call.
* :func:`calibrated` — a score with its permutation null (mean, std, z, p-value) and a bootstrap interval.

**Linear CKA grids** never build ``n × n`` matrices. With centred layers :math:`X_i` and :math:`Y_j`, every
HSIC statistic is a feature-space product; the cross terms of all pairs come from one blocked GEMM of the
concatenated layers, :math:`C = [X_1 \dots X_{L_x}]^\top [Y_1 \dots Y_{L_y}]`, reduced block-wise,

.. math::

  S_{ij} = \|X_i^\top Y_j\|_F^2 = \sum_{a \in i,\, b \in j} C_{ab}^2,

and the self terms :math:`\|X_i^\top X_i\|_F^2` once per layer. ``C`` is formed ``block_size`` columns at a
time, so memory is :math:`O(\sum_i d^x_i \cdot \text{block})`.

**RBF grids** accumulate :math:`\sum K_i \circ L_j`, the row sums and the self terms of every layer's
kernel over ``block × block`` tiles of the upper triangle (memory :math:`O((L_x + L_y)\,\text{block}^2)`).

**k-NN metrics** (mutual k-NN, CKNNA; Huh et al., 2024) need only each row's top-``k`` inner products:
similarity rows are formed ``block`` at a time and reduced to their top ``k`` (memory ``O(block · n)``),
then every score is a function of the sparse neighbour lists. CKNNA's unbiased HSIC of the masked kernels
:math:`A = M \circ K`, :math:`B = M \circ L` (``M`` has at most ``k`` entries per row) is

.. math::

  \mathrm{HSIC}_1(A, B) = \frac{1}{n(n-3)}\Big[\sum_{ab} A_{ab} B_{ba}
  + \frac{\mathbf 1^\top A \mathbf 1\ \mathbf 1^\top B \mathbf 1}{(n-1)(n-2)}
  - \frac{2}{n-2} (A^\top \mathbf 1)^\top (B \mathbf 1)\Big],

where :math:`\sum_{ab} A_{ab} B_{ba} = \sum_{ab} M_{ab} M_{ba} K_{ab} L_{ab}` (symmetric kernels), so only
the ``n · k`` masked entries and a reverse-membership test are needed.

**Order scores** (TSI, QSI; Soares et al., 2026, as in Schnaus et al., 2026) use one set of ``T = n_tuples``
random tuples for every cell, drawn from the documented key ``jax.random.fold_in(key, 2**32 - 1)``
(:data:`TUPLE_KEY_DATA`). Each layer contributes one order bit per tuple, :math:`b^X_t = [d_X(i,j) < d_X(k,l)]`
(triplets: :math:`k = i`), computed ``4096`` tuples at a time (memory ``O(4096 · d)``), and a cell is the
agreement of two layers' bits over the valid tuples ``V`` (no repeated index; triplets: :math:`|\{i,j,k\}| = 3`,
quadruplets: :math:`i \ne j, k \ne l`),

.. math::

  \mathrm{TSI}_{ij}\ (\mathrm{QSI}_{ij}) = \frac{1}{|V|} \sum_{t \in V} [\,b^{X_i}_t = b^{Y_j}_t\,].

**Permutation nulls** permute the rows of ``y``. Everything that does not mix ``x`` and ``y`` is invariant and
computed once; for linear CKA a permutation costs one ``dx × dy`` GEMM from gathered rows
(:math:`X^\top P Y`), for the k-NN metrics it only relabels ``y``'s neighbour lists
(:math:`N^{Py}(a) = \pi^{-1}(N^y(\pi(a)))`, ``O(n k²)``), and for TSI / QSI the bits of ``x`` and the valid set
are invariant (a permutation maps distinct indices to distinct indices) while ``P y``'s bits are ``y``'s at the
gathered tuples :math:`\pi(t)` (``O(T · dy)``, no copy of ``y``). The p-value is
:math:`(1 + \#\{\text{null} \ge \text{raw}\}) / (1 + n_\text{perm})` (Phipson & Smyth, 2010). For linear CKA
(the RV coefficient) the permutation mean is known exactly (Josse et al., 2008):
:math:`\mathbb E_\pi[\mathrm{CKA}] = \sqrt{\beta_x \beta_y} / (n - 1)`,
:math:`\beta = (\operatorname{tr} K)^2 / \operatorname{tr} K^2` for centred ``K`` (:func:`linear_cka_null_mean`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
from jax.typing import ArrayLike

from sotalign_jax import cka as _cka
from sotalign_jax import _hsic
from sotalign_jax._arrays import DEFAULT_PRECISION, check_features, device_scalar, is_tracer, on_host

__all__ = ["METRICS", "TUPLE_KEY_DATA", "ScoreGrid", "Calibrated", "score_grid", "calibrated", "linear_cka_null_mean",
           "topk_neighbours"]

_HI = DEFAULT_PRECISION

METRICS = ("linear_cka", "unbiased_linear_cka", "rbf_cka", "unbiased_rbf_cka", "mutual_knn", "cknna", "svcca",
           "tsi", "qsi")
_ORDER = ("tsi", "qsi")

# The TSI / QSI tuples are drawn from jax.random.fold_in(key, TUPLE_KEY_DATA). Not a small number: with JAX's
# default (partitionable) threefry, split(key, m)[i] is fold_in(key, i), so fold_in(key, 1) would be the key of
# permutation 1 (and calibrated's bootstrap key), whose first sort keys are the very random words of the tuples.
TUPLE_KEY_DATA = 2**32 - 1


class ScoreGrid(NamedTuple):
  """Scores of every layer pair.

  Attributes:
    scores: float32 ``[Lx, Ly]``; ``scores[i, j]`` compares layer ``i`` of ``xs`` with layer ``j`` of ``ys``.
    best: ``(i, j)`` of the largest score (NaNs ignored).
    metric: the metric's name.
    null_mean: ``[Lx, Ly]`` permutation-null mean of each cell (``None`` unless ``n_perm > 0``).
    null_std: ``[Lx, Ly]`` its standard deviation.
    z: ``[Lx, Ly]`` ``(scores - null_mean) / null_std``.
    p_value: ``[Lx, Ly]`` ``(1 + #{null >= score}) / (1 + n_perm)``.
  """
  scores: jax.Array
  best: tuple[int, int]
  metric: str
  null_mean: jax.Array | None = None
  null_std: jax.Array | None = None
  z: jax.Array | None = None
  p_value: jax.Array | None = None


class Calibrated(NamedTuple):
  """A score with its permutation null and bootstrap interval (all float32 scalars but ``null``).

  Attributes:
    score: the raw score.
    null_mean: mean of the scores with ``y``'s rows permuted.
    null_std: their standard deviation.
    z: ``(score - null_mean) / null_std``.
    p_value: ``(1 + #{null >= score}) / (1 + n_perm)``.
    ci_low: lower end of the percentile bootstrap interval (NaN when ``n_boot = 0``).
    ci_high: upper end.
    null: ``[n_perm]`` the permutation scores.
    metric: the metric's name.
  """
  score: jax.Array
  null_mean: jax.Array
  null_std: jax.Array
  z: jax.Array
  p_value: jax.Array
  ci_low: jax.Array
  ci_high: jax.Array
  null: jax.Array
  metric: str


# ----------------------------------------------------------------------------------------------------------------
# Checks.
# ----------------------------------------------------------------------------------------------------------------
def _check_metric(metric: str):
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _host_layers(layers) -> bool:
  """Whether the layers are host data (their values can be checked without a device-to-host copy)."""
  if isinstance(layers, (list, tuple)):
    return all(on_host(a) for a in layers)
  return on_host(layers)


def _as_layers(layers, name: str) -> tuple[jax.Array, ...]:
  """A list of ``[n, d_l]`` arrays or one ``[L, n, d]`` array → a tuple of float32 ``[n, d_l]`` arrays.

  Shapes are always checked, values (NaN/Inf) only for host data (see :mod:`sotalign_jax._arrays`).
  """
  if isinstance(layers, (list, tuple)):
    out = tuple(check_features(a, f"{name}[{i}]", dtype=jnp.float32) for i, a in enumerate(layers))
  else:
    if jnp.ndim(layers) != 3:
      raise ValueError(f"{name} must be a list of [n, d_l] arrays or one [L, n, d] array, got shape "
                       f"{jnp.shape(layers)}")
    if on_host(layers):
      out = tuple(check_features(np.asarray(layers)[i], f"{name}[{i}]", dtype=jnp.float32)
                  for i in range(jnp.shape(layers)[0]))
    else:  # a device array: shapes only; list() splits it without indexing ops
      out = tuple(check_features(a, f"{name}[{i}]") for i, a in enumerate(list(jnp.asarray(layers, jnp.float32))))
  if not out:
    raise ValueError(f"{name} is empty: pass at least one layer")
  for i, a in enumerate(out):
    if a.shape[0] != out[0].shape[0]:
      raise ValueError(f"every layer must hold the same samples: {name}[0] has n={out[0].shape[0]} rows but "
                       f"{name}[{i}] has n={a.shape[0]}")
  return out


def _min_n(metric: str) -> int:
  if metric == "tsi":
    return 3
  return 4 if metric.startswith("unbiased") or metric == "cknna" else 2


def _check_options(metric: str, n: int, *, k: int, dim: int, widths: Sequence[int], block_size: int,
                   n_tuples: int):
  if n < _min_n(metric):
    raise ValueError(f"{metric} needs at least {_min_n(metric)} samples, got n={n}")
  if not isinstance(block_size, (int, np.integer)) or block_size < 1:
    raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
  if not isinstance(n_tuples, (int, np.integer)) or n_tuples < 1:
    raise ValueError(f"n_tuples must be a positive integer, got {n_tuples!r}")
  if metric in ("mutual_knn", "cknna"):
    if not isinstance(k, (int, np.integer)) or not (2 if metric == "cknna" else 1) <= k < n:
      raise ValueError(f"k must be an integer with {2 if metric == 'cknna' else 1} <= k < n for {metric} "
                       f"(n={n} samples), got {k!r}: use more samples or a smaller k")
  if metric == "svcca":
    top = min([n] + list(widths))
    if not isinstance(dim, (int, np.integer)) or not 1 <= dim <= top:
      raise ValueError(f"dim must satisfy 1 <= dim <= min(n, every layer's width) = {top}, got {dim!r}")


def _bandwidths(layers, bandwidth, name: str, *, host: bool) -> jax.Array:
  """Per-layer bandwidths; checked (finite, > 0) for host data only, so device layers are never copied back."""
  if bandwidth is None:
    s = jnp.stack([_cka.median_bandwidth(a) for a in layers])
  else:
    s = jax.device_put(np.full((len(layers),), bandwidth, np.float32)) if on_host(bandwidth) else \
        jnp.full((len(layers),), bandwidth, jnp.float32)
  if not (host or on_host(bandwidth)) or is_tracer(s):
    return s
  s_np = np.asarray(jax.device_get(s))
  if not np.all((s_np > 0) & np.isfinite(s_np)):
    bad = int(np.argmin((s_np > 0) & np.isfinite(s_np)))
    raise ValueError(f"bandwidth of {name}[{bad}] must be finite and > 0, got {float(s_np[bad])} "
                     "(are all its samples identical?)")
  return s


# ----------------------------------------------------------------------------------------------------------------
# HSIC of every pair from sufficient statistics (see _hsic.hsic_from_stats for one pair).
# ----------------------------------------------------------------------------------------------------------------
def _hsic_grid(s, rk, rl, dk, dl, *, unbiased: bool) -> jax.Array:
  """HSIC of all pairs: ``s [a, b]`` = ΣK∘L, row sums / diagonals ``rk, dk [a, n]`` and ``rl, dl [b, n]``."""
  n = rk.shape[-1]
  dot = lambda u, v: jnp.matmul(u, v.T, precision=_HI)
  if not unbiased:
    return s - 2.0 / n * dot(rk, rl) + rk.sum(-1)[:, None] * rl.sum(-1)[None, :] / float(n)**2
  tr = s - dot(dk, dl)
  rk, rl = rk - dk, rl - dl
  return (tr + rk.sum(-1)[:, None] * rl.sum(-1)[None, :] / (float(n - 1) * (n - 2))
          - 2.0 / (n - 2) * dot(rk, rl)) / (float(n) * (n - 3))


def _hsic_self(s, r, d, *, unbiased: bool) -> jax.Array:
  """HSIC(K_i, K_i) of each layer: ``s [a]`` = ΣK_i∘K_i, ``r, d [a, n]``."""
  one = lambda s1, r1, d1: _hsic_grid(s1[None, None], r1[None], r1[None], d1[None], d1[None], unbiased=unbiased)[0, 0]
  return jax.vmap(one)(s, r, d)


def _cka_grid(s, sxx, syy, rk, rl, dk, dl, *, unbiased: bool) -> jax.Array:
  hx = _hsic_self(sxx, rk, dk, unbiased=unbiased)
  hy = _hsic_self(syy, rl, dl, unbiased=unbiased)
  return _hsic_grid(s, rk, rl, dk, dl, unbiased=unbiased) / jnp.sqrt(hx[:, None] * hy[None, :])


# ----------------------------------------------------------------------------------------------------------------
# Linear CKA grid.
# ----------------------------------------------------------------------------------------------------------------
def _linear_self(a: jax.Array):
  """Centred-layer stats: (‖AᵀA‖², row sums of AAᵀ, diag of AAᵀ)."""
  ata = jnp.matmul(a.T, a, precision=_HI)
  return jnp.sum(ata * ata), jnp.matmul(a, a.sum(0), precision=_HI), jnp.sum(a * a, 1)


def _segments(widths: Sequence[int], pad: int = 0) -> np.ndarray:
  """One-hot ``[sum(widths) + pad, len(widths)]`` layer membership of concatenated feature columns."""
  seg = np.zeros((sum(widths) + pad, len(widths)), np.float32)
  seg[np.arange(sum(widths)), np.repeat(np.arange(len(widths)), widths)] = 1.0
  return seg


def _cross_sq_norms(xs, ys, block: int) -> jax.Array:
  """``S[i, j] = ‖X_iᵀ Y_j‖_F²`` for all pairs, ``block`` columns of the concatenated ``Y`` at a time."""
  xc = jnp.concatenate(xs, 1)
  yc = jnp.concatenate(ys, 1)
  wy = [a.shape[1] for a in ys]
  cols = yc.shape[1]
  block = min(block, cols)
  nb = -(-cols // block)
  pad = nb * block - cols
  yc = jnp.pad(yc, ((0, 0), (0, pad)))
  seg_x = jnp.asarray(_segments([a.shape[1] for a in xs]))
  seg_y = jnp.asarray(_segments(wy, pad))

  def body(s, b):
    yb = jax.lax.dynamic_slice_in_dim(yc, b * block, block, axis=1)
    qb = jax.lax.dynamic_slice_in_dim(seg_y, b * block, block, axis=0)
    c = jnp.matmul(xc.T, yb, precision=_HI)
    return s + jnp.matmul(seg_x.T, jnp.matmul(c * c, qb, precision=_HI), precision=_HI), None

  s, _ = jax.lax.scan(body, jnp.zeros((len(xs), len(ys)), jnp.float32), jnp.arange(nb))
  return s


def _linear_grid_fn(xs, ys, unbiased: bool, block: int):
  """The linear grid as a function of a permutation of ``ys``' rows (self terms computed once)."""
  xs = [a - a.mean(0) for a in xs]
  ys = [a - a.mean(0) for a in ys]
  sx = [jnp.stack(t) for t in zip(*map(_linear_self, xs))]
  sy = [jnp.stack(t) for t in zip(*map(_linear_self, ys))]
  hx = _hsic_self(sx[0], sx[1], sx[2], unbiased=unbiased)
  hy = _hsic_self(sy[0], sy[1], sy[2], unbiased=unbiased)

  def grid(perm):
    s = _cross_sq_norms(xs, [a[perm] for a in ys], block)
    h = _hsic_grid(s, sx[1], sy[1][:, perm], sx[2], sy[2][:, perm], unbiased=unbiased)
    return h / jnp.sqrt(hx[:, None] * hy[None, :])

  return grid


@functools.partial(jax.jit, static_argnames=("unbiased", "block"))
def _linear_grid(xs, ys, unbiased: bool, block: int) -> jax.Array:
  return _linear_grid_fn(xs, ys, unbiased, block)(jnp.arange(xs[0].shape[0]))


# ----------------------------------------------------------------------------------------------------------------
# RBF CKA grid, over upper-triangular tiles (as _hsic._rbf_block_stats, for all layers at once).
# ----------------------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("unbiased", "block"))
def _rbf_grid(xs, ys, bx, by, unbiased: bool, block: int) -> jax.Array:
  n = xs[0].shape[0]
  pad = (-n) % block
  nb = (n + pad) // block
  tiles = lambda a: jnp.pad(a, ((0, pad), (0, 0))).reshape(nb, block, a.shape[1])
  xb, yb = [tiles(a) for a in xs], [tiles(a) for a in ys]
  valid = jnp.pad(jnp.ones(n, jnp.float32), (0, pad)).reshape(nb, block)
  gx, gy = -0.5 / bx**2, -0.5 / by**2
  ti, tj = np.triu_indices(nb)
  lx, ly = len(xs), len(ys)

  def kernels(blocks, gammas, i, j, mask):
    return jnp.stack([jnp.exp(gammas[l] * _hsic.sq_dists(b[i], b[j])) * mask for l, b in enumerate(blocks)])

  def tile(carry, ij):
    s, sxx, syy, rk, rl = carry
    i, j = ij
    mask = valid[i][:, None] * valid[j][None, :]
    k, l = kernels(xb, gx, i, j, mask), kernels(yb, gy, i, j, mask)  # [Lx, B, B], [Ly, B, B]
    w = jnp.where(i == j, 1.0, 2.0)
    kf, lf = k.reshape(lx, -1), l.reshape(ly, -1)
    s = s + w * jnp.matmul(kf, lf.T, precision=_HI)
    sxx = sxx + w * jnp.sum(kf * kf, 1)
    syy = syy + w * jnp.sum(lf * lf, 1)
    off = jnp.where(i == j, 0.0, 1.0)
    rk = rk.at[:, i].add(k.sum(2)).at[:, j].add(off * k.sum(1))
    rl = rl.at[:, i].add(l.sum(2)).at[:, j].add(off * l.sum(1))
    return (s, sxx, syy, rk, rl), None

  init = (jnp.zeros((lx, ly)), jnp.zeros(lx), jnp.zeros(ly), jnp.zeros((lx, nb, block)), jnp.zeros((ly, nb, block)))
  (s, sxx, syy, rk, rl), _ = jax.lax.scan(tile, init, (jnp.asarray(ti), jnp.asarray(tj)))
  rk, rl = rk.reshape(lx, -1)[:, :n], rl.reshape(ly, -1)[:, :n]
  dk, dl = jnp.ones_like(rk), jnp.ones_like(rl)  # RBF kernels have a unit diagonal
  return _cka_grid(s, sxx, syy, rk, rl, dk, dl, unbiased=unbiased)


# ----------------------------------------------------------------------------------------------------------------
# k-NN metrics from sparse neighbour lists.
# ----------------------------------------------------------------------------------------------------------------
def _topk(x: jax.Array, k: int, block: int) -> tuple[jax.Array, jax.Array]:
  """Top-``k`` inner products of every row, excluding the row itself: values, indices ``[n, k]``."""
  n = x.shape[0]
  block = min(block, n)
  nb = -(-n // block)
  xp = jnp.pad(x, ((0, nb * block - n), (0, 0)))

  def rows(b):
    r = jax.lax.dynamic_slice_in_dim(xp, b * block, block, axis=0)
    g = jnp.matmul(r, x.T, precision=_HI)
    self_col = (b * block + jnp.arange(block))[:, None] == jnp.arange(n)[None, :]
    return jax.lax.top_k(jnp.where(self_col, -jnp.inf, g), k)

  v, i = jax.lax.map(rows, jnp.arange(nb))
  return v.reshape(-1, k)[:n], i.reshape(-1, k)[:n]


@functools.partial(jax.jit, static_argnames=("k", "block"))
def topk_neighbours(x: ArrayLike, *, k: int, block: int = 1024) -> tuple[jax.Array, jax.Array]:
  """Each row's ``k`` largest inner products with the other rows, ``block`` rows at a time.

  Memory is ``O(block · n)``: the ``n × n`` similarity matrix is never held.

  Args:
    x: ``[n, d]`` features.
    k: neighbours per row (``1 <= k < n``).
    block: similarity rows formed at once.

  Returns:
    ``(values, indices)``, each ``[n, k]``, in decreasing order of similarity (ties: lower index first).
  """
  return _topk(jnp.asarray(x, jnp.float32), k, block)


def _row_blocks(n: int, block: int):
  block = min(block, n)
  nb = -(-n // block)
  return block, nb, nb * block - n


def _mutual_knn_sparse(ix, iy, block: int) -> jax.Array:
  """Mean over rows of ``|N^x(a) ∩ N^y(a)| / k`` from neighbour lists ``[n, k]``."""
  n, k = ix.shape
  block, nb, pad = _row_blocks(n, block)
  ixp = jnp.pad(ix, ((0, pad), (0, 0)), constant_values=-1)
  iyp = jnp.pad(iy, ((0, pad), (0, 0)), constant_values=-2)

  def body(acc, b):
    a = jax.lax.dynamic_slice_in_dim(ixp, b * block, block)
    c = jax.lax.dynamic_slice_in_dim(iyp, b * block, block)
    return acc + jnp.sum(a[:, :, None] == c[:, None, :]), None

  hits, _ = jax.lax.scan(body, jnp.zeros((), jnp.int32), jnp.arange(nb))
  return hits.astype(jnp.float32) / (n * k)


def _masked_hsic_sparse(ix, kv, iy, lv, block: int) -> jax.Array:
  """Unbiased HSIC of ``M∘K`` and ``M∘L`` with ``M = M^x ∘ M^y``, from self-excluding neighbour lists.

  ``ix, kv [n, k]``: ``x``'s neighbours and their kernel values ``K[a, ix[a, s]]``; likewise ``iy, lv``.
  Equals ``cka.hsic_unbiased(M * K, M * L)`` for symmetric ``K, L`` (see the module docstring).
  """
  n, k = ix.shape
  block, nb, pad = _row_blocks(n, block)
  ixp = jnp.pad(ix, ((0, pad), (0, 0)))
  iyp = jnp.pad(iy, ((0, pad), (0, 0)))
  kvp = jnp.pad(kv, ((0, pad), (0, 0)))
  lvp = jnp.pad(lv, ((0, pad), (0, 0)))
  validp = jnp.pad(jnp.ones(n, bool), (0, pad))

  def body(carry, b):
    t, col_a, sum_a, sum_b = carry
    sl = lambda z: jax.lax.dynamic_slice_in_dim(z, b * block, block)
    xi, xv, yi, yv, ok = sl(ixp), sl(kvp), sl(iyp), sl(lvp), sl(validp)
    rows = b * block + jnp.arange(block)
    eq = xi[:, :, None] == yi[:, None, :]                        # [B, k, k]: x-slot s is y-slot t
    joint = jnp.any(eq, -1) & ok[:, None]                         # [B, k]: (a, b) in M
    lval = jnp.sum(jnp.where(eq, yv[:, None, :], 0.0), -1)        # L[a, b] at joint slots
    a_ab = jnp.where(joint, xv, 0.0)
    b_ab = jnp.where(joint, lval, 0.0)
    # reverse membership: (b, a) in M  <=>  a in N^x(b) and a in N^y(b)
    back = (jnp.any(ix[xi] == rows[:, None, None], -1) & jnp.any(iy[xi] == rows[:, None, None], -1))
    t = t + jnp.sum(jnp.where(back, a_ab * b_ab, 0.0))
    col_a = col_a.at[xi.ravel()].add(a_ab.ravel())
    row_b = b_ab.sum(1)
    return (t, col_a, sum_a + a_ab.sum(), sum_b + row_b.sum()), row_b

  init = (jnp.zeros(()), jnp.zeros(n), jnp.zeros(()), jnp.zeros(()))
  (t, col_a, sum_a, sum_b), row_b = jax.lax.scan(body, init, jnp.arange(nb))
  row_b = row_b.reshape(-1)[:n]
  return (t + sum_a * sum_b / (float(n - 1) * (n - 2)) - 2.0 / (n - 2) * jnp.dot(col_a, row_b, precision=_HI)) / (
      float(n) * (n - 3))


def _cknna_sparse(ix, kv, iy, lv, hx, hy, block: int) -> jax.Array:
  return _masked_hsic_sparse(ix, kv, iy, lv, block) / jnp.sqrt(hx * hy)


@functools.partial(jax.jit, static_argnames=("metric", "k", "block"))
def _knn_grid(xs, ys, metric: str, k: int, block: int) -> jax.Array:
  nx = [_topk(a, k, block) for a in xs]
  ny = [_topk(a, k, block) for a in ys]
  iy = jnp.stack([i for _, i in ny])
  if metric == "mutual_knn":
    row = lambda ix: jax.lax.map(lambda j: _mutual_knn_sparse(ix, j, block), iy)
    return jnp.stack([row(ix) for _, ix in nx])
  self_h = lambda v, i: _masked_hsic_sparse(i, v, i, v, block)
  hx = jnp.stack([self_h(*t) for t in nx])
  hy = jnp.stack([self_h(*t) for t in ny])
  ly = jnp.stack([v for v, _ in ny])

  def row(v, i, h):
    return jax.lax.map(lambda a: _cknna_sparse(i, v, a[0], a[1], h, a[2], block), (iy, ly, hy))

  return jnp.stack([row(v, i, h) for (v, i), h in zip(nx, hx)])


# ----------------------------------------------------------------------------------------------------------------
# SVCCA grid.
# ----------------------------------------------------------------------------------------------------------------
def _svcca_basis(a: jax.Array, dim: int) -> jax.Array:
  a = a - a.mean(0)
  a = a / (a.std(0) + 1e-8)
  return jnp.linalg.svd(a, full_matrices=False)[0][:, :dim]


@functools.partial(jax.jit, static_argnames=("dim",))
def _svcca_grid(xs, ys, dim: int) -> jax.Array:
  ux = jnp.stack([_svcca_basis(a, dim) for a in xs])
  uy = jnp.stack([_svcca_basis(a, dim) for a in ys])
  m = jnp.einsum("anr,bns->abrs", ux, uy, precision=_HI)
  return jnp.mean(jnp.clip(jnp.linalg.svd(m, compute_uv=False), 0.0, 1.0), -1)


# ----------------------------------------------------------------------------------------------------------------
# TSI / QSI grid: one set of tuples, one order bit per tuple and layer.
# ----------------------------------------------------------------------------------------------------------------
def _tuples(metric: str, key: jax.Array, n: int, n_tuples: int) -> jax.Array:
  """The TSI / QSI tuples ``[3 | 4, n_tuples]`` from ``fold_in(key, TUPLE_KEY_DATA)``; a placeholder otherwise."""
  if metric not in _ORDER:
    return jax.device_put(np.zeros((3, 1), np.int32))  # unused (explicit: no implicit transfer)
  return _cka._order_tuples(jax.random.fold_in(key, TUPLE_KEY_DATA), n, int(n_tuples), metric == "qsi")


def _order_grid_fn(xs, ys, tuples, quadruplets: bool):
  """The TSI / QSI grid as a function of a permutation ``π`` of ``ys``' rows.

  ``xs``' bits and the valid set are computed once; ``P y``'s bits are ``y``'s at the tuples ``π[t]``.
  """
  bits = [_cka._order_bits(a, tuples, quadruplets) for a in xs]
  valid = bits[0][0]
  bx = jnp.stack([b for _, b in bits])  # [Lx, T]

  def grid(perm):
    moved = perm[tuples]
    by = jnp.stack([_cka._order_bits(a, moved, quadruplets)[1] for a in ys])  # [Ly, T]
    return jax.lax.map(lambda b: _cka._order_agreement(valid, b, by), bx)  # one [Ly, T] comparison at a time

  return grid


@functools.partial(jax.jit, static_argnames=("quadruplets",))
def _order_grid(xs, ys, tuples, quadruplets: bool) -> jax.Array:
  return _order_grid_fn(xs, ys, tuples, quadruplets)(jnp.arange(xs[0].shape[0]))


# ----------------------------------------------------------------------------------------------------------------
# Permutation null of a whole grid: one permutation of the samples is shared by every cell.
# ----------------------------------------------------------------------------------------------------------------
def _grid_fn(metric: str, xs, ys, bx, by, tuples, k: int, dim: int, block: int):
  """The grid as a function of a permutation of ``ys``' rows."""
  if metric in _ORDER:
    return _order_grid_fn(xs, ys, tuples, metric == "qsi")
  if metric in ("linear_cka", "unbiased_linear_cka"):
    return _linear_grid_fn(xs, ys, metric.startswith("unbiased"), block)
  if metric in ("mutual_knn", "cknna"):
    nx = [_topk(a, k, block) for a in xs]
    ny = [_topk(a, k, block) for a in ys]
    hx = [_masked_hsic_sparse(i, v, i, v, block) for v, i in nx] if metric == "cknna" else None
    hy = [_masked_hsic_sparse(i, v, i, v, block) for v, i in ny] if metric == "cknna" else None

    def knn(perm):
      inv = _inverse(perm)
      rows = []
      for a, (vx, ix) in enumerate(nx):
        row = []
        for b, (vy, iy) in enumerate(ny):
          iyp = inv[iy[perm]]
          row.append(_mutual_knn_sparse(ix, iyp, block) if metric == "mutual_knn" else
                     _cknna_sparse(ix, vx, iyp, vy[perm], hx[a], hy[b], block))
        rows.append(jnp.stack(row))
      return jnp.stack(rows)

    return knn
  if metric in ("rbf_cka", "unbiased_rbf_cka"):
    return lambda perm: _rbf_grid(xs, [a[perm] for a in ys], bx, by, metric.startswith("unbiased"), block)
  ux = jnp.stack([_svcca_basis(a, dim) for a in xs])
  uy = jnp.stack([_svcca_basis(a, dim) for a in ys])

  def svcca(perm):
    m = jnp.einsum("anr,bns->abrs", ux, uy[:, perm], precision=_HI)
    return jnp.mean(jnp.clip(jnp.linalg.svd(m, compute_uv=False), 0.0, 1.0), -1)

  return svcca


def _split_over(mesh: Mesh | None, keys: jax.Array) -> jax.Array:
  """``keys`` (a batch of permutation keys) split over the first axis of ``mesh``: each device its share."""
  if mesh is None:
    return keys
  auto = Mesh(mesh.devices, mesh.axis_names)  # the same devices with automatic axes (jax.make_mesh's are explicit)
  return jax.lax.with_sharding_constraint(keys, NamedSharding(auto, PartitionSpec(mesh.axis_names[0])))


def _batch_for(batch: int, total: int, mesh: Mesh | None) -> int:
  """``min(batch, total)``, rounded up to a multiple of the mesh's first axis (whole batches split evenly)."""
  b = max(1, min(batch, total))
  if mesh is None:
    return b
  size = mesh.shape[mesh.axis_names[0]]
  return -(-b // size) * size


def _map_batches(fn, keys: jax.Array, batch: int, mesh: Mesh | None) -> jax.Array:
  """``jax.lax.map(fn, keys, batch_size=batch)`` with each batch of keys split over ``mesh``."""
  n = keys.shape[0]
  nb = n // batch
  out = []
  if nb:
    _, full = jax.lax.scan(lambda c, kk: (c, jax.vmap(fn)(_split_over(mesh, kk))), None,
                           keys[:nb * batch].reshape((nb, batch) + keys.shape[1:]))
    out.append(full.reshape((nb * batch,) + full.shape[2:]))
  if n > nb * batch:
    out.append(jax.vmap(fn)(keys[nb * batch:]))
  return jnp.concatenate(out)


@functools.partial(jax.jit, static_argnames=("metric", "n_perm", "k", "dim", "block", "batch", "mesh"))
def _grid_null(xs, ys, bx, by, tuples, key, raw, *, metric: str, n_perm: int, k: int, dim: int, block: int,
               batch: int, mesh: Mesh | None):
  n = xs[0].shape[0]
  grid = _grid_fn(metric, xs, ys, bx, by, tuples, k, dim, block)

  def one(kk):
    g = grid(jax.random.permutation(kk, n))
    return g, g * g, (g >= raw).astype(jnp.float32)

  def body(acc, kk):
    stats = jax.vmap(one)(_split_over(mesh, kk))
    return jax.tree.map(jnp.add, acc, jax.tree.map(lambda a: a.sum(0), stats)), None

  keys = jax.random.split(key, n_perm)
  nb = n_perm // batch
  zero = jnp.zeros_like(raw)
  acc, _ = jax.lax.scan(body, (zero, zero, zero), keys[:nb * batch].reshape((nb, batch) + keys.shape[1:]))
  if n_perm > nb * batch:
    acc = jax.tree.map(jnp.add, acc, jax.tree.map(lambda a: a.sum(0), jax.vmap(one)(keys[nb * batch:])))
  s1, s2, ge = acc
  mean = s1 / n_perm
  std = jnp.sqrt(jnp.maximum(s2 / n_perm - mean * mean, 0.0))
  return mean, std, (raw - mean) / std, (1.0 + ge) / (1.0 + n_perm)


@jax.jit
def _argmax_cell(g: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(i, j)`` of the largest score, NaNs ignored."""
  return jnp.unravel_index(jnp.argmax(jnp.where(jnp.isnan(g), -jnp.inf, g)), g.shape)


# ----------------------------------------------------------------------------------------------------------------
# Public: score_grid.
# ----------------------------------------------------------------------------------------------------------------
def score_grid(xs: ArrayLike | Sequence[np.ndarray | jax.Array], ys: ArrayLike | Sequence[np.ndarray | jax.Array], *,
               metric: str = "linear_cka", k: int = 10, bandwidth: float | None = None, dim: int = 10,
               block_size: int = 1024, n_perm: int = 0, key: jax.Array | None = None, batch_size: int = 8,
               mesh: Mesh | None = None, n_tuples: int = 100_000) -> ScoreGrid:
  r"""Alignment score of every pair of layers of two encoders, in one compiled call.

  .. math:: G_{ij} = \mathrm{score}(X_i, Y_j), \qquad (i^*, j^*) = \arg\max_{ij} G_{ij}.

  Metrics (all equal to the single-pair functions of :mod:`sotalign_jax.cka`): ``linear_cka``,
  ``unbiased_linear_cka`` (:func:`~sotalign_jax.cka.linear_cka`), ``rbf_cka``, ``unbiased_rbf_cka``
  (:func:`~sotalign_jax.cka.rbf_cka`, median bandwidth per layer unless ``bandwidth`` is given),
  ``mutual_knn``, ``cknna`` (unbiased, self-excluding neighbourhoods, Huh et al., 2024), ``svcca``, ``tsi``
  and ``qsi`` (:func:`~sotalign_jax.cka.triplet_similarity_index`,
  :func:`~sotalign_jax.cka.quadruplet_similarity_index`; cell ``(i, j)`` is exactly
  ``triplet_similarity_index(xs[i], ys[j], key=jax.random.fold_in(key, TUPLE_KEY_DATA), n_samples=n_tuples)``,
  the same tuples for every cell).

  Memory: linear metrics never form an ``n × n`` matrix (``O(Σ dx · block_size)`` besides the inputs); RBF
  works on ``block_size²`` kernel tiles per layer; the k-NN metrics hold ``block_size × n`` similarity rows
  and ``[n, k]`` neighbour lists; TSI / QSI hold one bit per tuple and layer and gather ``4096 × d`` rows at
  a time. Results do not depend on ``block_size`` (up to float rounding).

  Args:
    xs: layers of encoder A: a list of ``[n, dx_l]`` arrays (widths may differ) or one ``[Lx, n, dx]`` array.
    ys: layers of encoder B for the same ``n`` samples: list of ``[n, dy_l]`` or ``[Ly, n, dy]``.
    metric: one of :data:`METRICS`.
    k: neighbours for ``mutual_knn`` / ``cknna``.
    bandwidth: RBF bandwidth for every layer; ``None`` for each layer's median heuristic.
    dim: SVCCA subspace dimension.
    block_size: columns of the cross-covariance per GEMM (linear), side of the kernel tiles (RBF), rows of
      similarity formed at once (k-NN).
    n_perm: if > 0, also the permutation null of every cell (``null_mean``, ``null_std``, ``z``, ``p_value``):
      each permutation of the samples is applied to every layer of ``ys`` and scores the whole grid; what
      does not depend on it (linear self terms, k-NN lists of ``xs``, TSI / QSI bits of ``xs``, ...) is
      computed once. A TSI / QSI permutation recomputes ``ys``' bits at the permuted tuples: ``O(T · Σ dy)``.
    key: PRNG key; default ``jax.random.key(0)``. The permutations are ``jax.random.split(key, n_perm)``
      (one key each), the TSI / QSI tuples come from ``jax.random.fold_in(key, TUPLE_KEY_DATA)``.
    batch_size: permutations vmapped together.
    mesh: optional device mesh; each batch of permutations is split over its first axis (``batch_size`` is
      rounded up to a multiple of that axis' size). The permutations are the same with or without it.
    n_tuples: random triplets (``tsi``) / quadruplets (``qsi``) drawn, as ``n_samples`` of the single-pair
      functions; ignored by the other metrics (but checked: a positive integer).

  Returns:
    A :class:`ScoreGrid`.
  """
  _check_metric(metric)
  host = _host_layers(xs) and _host_layers(ys)
  xs, ys = _as_layers(xs, "xs"), _as_layers(ys, "ys")
  if xs[0].shape[0] != ys[0].shape[0]:
    raise ValueError(f"xs and ys must hold the same samples (same number of rows); got n={xs[0].shape[0]} "
                     f"and n={ys[0].shape[0]}")
  n = xs[0].shape[0]
  _check_options(metric, n, k=k, dim=dim, widths=[a.shape[1] for a in xs + ys], block_size=block_size,
                 n_tuples=n_tuples)
  if not isinstance(n_perm, (int, np.integer)) or n_perm < 0:
    raise ValueError(f"n_perm must be an integer >= 0 (0: no permutation null), got {n_perm!r}")
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  block = int(block_size)
  if key is None and (metric in _ORDER or n_perm):  # only then is a key used (no transfer otherwise)
    key = jax.random.key(0)
  tuples = _tuples(metric, key, n, n_tuples)
  bx = by = jax.device_put(np.zeros(1, np.float32))  # unused placeholders (explicit: no implicit transfer)
  if metric in ("rbf_cka", "unbiased_rbf_cka"):
    bx, by = _bandwidths(xs, bandwidth, "xs", host=host), _bandwidths(ys, bandwidth, "ys", host=host)
    block = min(block, n)
  if metric in ("linear_cka", "unbiased_linear_cka"):
    g = _linear_grid(xs, ys, metric.startswith("unbiased"), block)
  elif metric in ("rbf_cka", "unbiased_rbf_cka"):
    g = _rbf_grid(xs, ys, bx, by, metric.startswith("unbiased"), block)
  elif metric in ("mutual_knn", "cknna"):
    g = _knn_grid(xs, ys, metric, int(k), block)
  elif metric in _ORDER:
    g = _order_grid(xs, ys, tuples, metric == "qsi")
  else:
    g = _svcca_grid(xs, ys, int(dim))
  i, j = _argmax_cell(g)
  best = (i, j) if is_tracer(g) else tuple(int(v) for v in jax.device_get((i, j)))  # explicit: host ints
  if not n_perm:
    return ScoreGrid(g, best, metric)
  null = _grid_null(xs, ys, bx, by, tuples, key, g, metric=metric, n_perm=int(n_perm), k=int(k), dim=int(dim),
                    block=block, batch=_batch_for(int(batch_size), int(n_perm), mesh), mesh=mesh)
  return ScoreGrid(g, best, metric, *null)


# ----------------------------------------------------------------------------------------------------------------
# Calibration: one metric as (raw, score of y permuted by π, score on resampled rows).
# ----------------------------------------------------------------------------------------------------------------
def _inverse(perm: jax.Array) -> jax.Array:
  return jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0], dtype=perm.dtype))


def _linear_parts(x, y, unbiased: bool):
  """Raw linear CKA and its permutation statistic (one GEMM of gathered rows per permutation)."""
  x = x - x.mean(0)
  y = y - y.mean(0)
  ssx, rk, dk = _linear_self(x)
  ssy, rl, dl = _linear_self(y)
  hx = _hsic_self(ssx[None], rk[None], dk[None], unbiased=unbiased)[0]
  hy = _hsic_self(ssy[None], rl[None], dl[None], unbiased=unbiased)[0]
  gather_x = x.shape[1] < y.shape[1]  # X^T (P Y) = (P^-1 X)^T Y: gather the narrower side

  def score(perm):
    if gather_x:
      c = jnp.matmul(x[_inverse(perm)].T, y, precision=_HI)
    else:
      c = jnp.matmul(x.T, y[perm], precision=_HI)
    s = jnp.sum(c * c)
    h = _hsic_grid(s[None, None], rk[None], rl[perm][None], dk[None], dl[perm][None], unbiased=unbiased)[0, 0]
    return h / jnp.sqrt(hx * hy)

  return score


def _knn_parts(x, y, metric: str, k: int, block: int):
  vx, ix = _topk(x, k, block)
  vy, iy = _topk(y, k, block)
  if metric == "cknna":
    hx = _masked_hsic_sparse(ix, vx, ix, vx, block)
    hy = _masked_hsic_sparse(iy, vy, iy, vy, block)

  def score(perm):
    iyp = _inverse(perm)[iy[perm]]  # neighbours of row a of P y, in P y's numbering
    if metric == "mutual_knn":
      return _mutual_knn_sparse(ix, iyp, block)
    return _cknna_sparse(ix, vx, iyp, vy[perm], hx, hy, block)

  return score


def _rbf_parts(x, y, sx, sy, unbiased: bool, block: int):
  def score(perm):
    return _hsic.rbf_cka_stats(x, y[perm], sx, sy, unbiased, block)
  return score


def _svcca_parts(x, y, dim: int):
  ux, uy = _svcca_basis(x, dim), _svcca_basis(y, dim)  # the SVD of P y is P U S Vᵀ

  def score(perm):
    s = jnp.linalg.svd(jnp.matmul(ux.T, uy[perm], precision=_HI), compute_uv=False)
    return jnp.mean(jnp.clip(s, 0.0, 1.0))

  return score


def _order_parts(x, y, tuples, quadruplets: bool):
  """Raw TSI / QSI and its permutation statistic: ``x``'s bits and the valid set once, ``y``'s at ``π[t]``."""
  valid, bx = _cka._order_bits(x, tuples, quadruplets)

  def score(perm):
    return _cka._order_agreement(valid, bx, _cka._order_bits(y, perm[tuples], quadruplets)[1])

  return score


def _parts(metric: str, x, y, bw, *, k: int, dim: int, block: int, tuples):
  if metric in _ORDER:
    return _order_parts(x, y, tuples, metric == "qsi")
  if metric in ("linear_cka", "unbiased_linear_cka"):
    return _linear_parts(x, y, metric.startswith("unbiased"))
  if metric in ("rbf_cka", "unbiased_rbf_cka"):
    return _rbf_parts(x, y, bw[0], bw[1], metric.startswith("unbiased"), block)
  if metric in ("mutual_knn", "cknna"):
    return _knn_parts(x, y, metric, k, block)
  return _svcca_parts(x, y, dim)


@functools.partial(jax.jit, static_argnames=("metric", "n_perm", "n_boot", "batch", "k", "dim", "block", "mesh"))
def _calibrate(x, y, bw, tuples, key, ci, *, metric: str, n_perm: int, n_boot: int, batch: int, k: int, dim: int,
               block: int, mesh: Mesh | None):
  n = x.shape[0]
  kp, kb = jax.random.split(key)
  opts = dict(k=k, dim=dim, block=block, tuples=tuples)
  score = _parts(metric, x, y, bw, **opts)
  raw = score(jnp.arange(n))
  null = _map_batches(lambda kk: score(jax.random.permutation(kk, n)), jax.random.split(kp, n_perm),
                      _batch_for(batch, n_perm, mesh), mesh)
  null_mean, null_std = null.mean(), null.std()
  p = (1.0 + jnp.sum(null >= raw)) / (1.0 + n_perm)
  if n_boot:
    def boot_one(kk):
      rows = jax.random.choice(kk, n, (n,), replace=True)
      return _parts(metric, x[rows], y[rows], bw, **opts)(jnp.arange(n))
    boot = _map_batches(boot_one, jax.random.split(kb, n_boot), _batch_for(batch, n_boot, mesh), mesh)
    lo, hi = jnp.nanquantile(boot, jnp.stack([(1.0 - ci) / 2, (1.0 + ci) / 2]))
  else:
    lo = hi = jnp.float32(jnp.nan)
  return raw, null_mean, null_std, (raw - null_mean) / null_std, p, lo, hi, null


def _default_batch(metric: str, n: int, dx: int, dy: int, k: int, block: int, n_tuples: int) -> int:
  """Permutations per vmapped batch, keeping their working memory near 256 MiB."""
  if metric in _ORDER:  # four gathered rows per tuple, one chunk at a time; the permuted tuples and the bits
    per = 4 * min(_cka.ORDER_CHUNK, n_tuples) * max(dx, dy) + 6 * n_tuples
  elif metric in ("linear_cka", "unbiased_linear_cka"):
    per = n * min(dx, dy) + dx * dy
  elif metric in ("mutual_knn", "cknna"):
    per = 2 * min(block, n) * k * k + 4 * n * k
  elif metric == "svcca":
    per = n * min(dx, dy)
  else:
    per = 4 * min(block, n) ** 2
  return int(np.clip(2**26 // max(per, 1), 1, 64))


def calibrated(metric: str, x: ArrayLike, y: ArrayLike, *, n_perm: int = 1000, n_boot: int = 200,
               key: jax.Array | None = None, ci: float = 0.95, k: int = 10, bandwidth: float | None = None,
               dim: int = 10, block_size: int = 1024, batch_size: int | None = None, mesh: Mesh | None = None,
               n_tuples: int = 100_000) -> Calibrated:
  r"""A score with its permutation null (``y``'s rows shuffled) and a percentile bootstrap interval.

  .. math::

    z = \frac{s - \bar s_\pi}{\operatorname{sd}(s_\pi)}, \qquad
    p = \frac{1 + \#\{\pi : s_\pi \ge s\}}{1 + n_\text{perm}}.

  Permutations and bootstrap samples are vmapped in batches of ``batch_size`` inside one compiled call.
  What is invariant to the permutation is computed once: a linear-CKA permutation costs one ``dx × dy``
  GEMM (:math:`X^\top P Y`), a k-NN permutation only relabels ``y``'s neighbour lists (``O(n k²)``); an RBF
  permutation recomputes the tiled kernel sums (``O(n² d)``: use fewer permutations at large ``n``), a TSI /
  QSI permutation only ``y``'s order bits at the permuted tuples (``O(T · dy)``; ``x``'s bits and the valid set
  are invariant). Each bootstrap sample recomputes the score on ``n`` rows drawn with replacement (for the
  k-NN metrics a duplicated row is its copy's nearest neighbour, which shifts their bootstrap distribution
  upwards: read their ``z`` and ``p`` rather than the interval). TSI / QSI keep the same tuples (positions in
  the resampled rows) and recompute both sides' bits on ``x[rows]``, ``y[rows]``: a tuple that picks two copies
  of one sample is still valid and has a zero distance (a tie counts as "not closer", as in the peer), so it
  agrees in both spaces; about ``3 / n`` of the triplets (``2 / n`` of the quadruplets) do, which lifts the
  resampled scores by about that fraction of ``1 - score``.

  Args:
    metric: one of :data:`METRICS`.
    x: ``[n, dx]`` features.
    y: ``[n, dy]`` features of the same samples.
    n_perm: permutations (>= 1); the smallest attainable p-value is ``1 / (1 + n_perm)``.
    n_boot: bootstrap resamples for the interval (0: no interval, NaN bounds).
    key: PRNG key; default ``jax.random.key(0)``. ``jax.random.split(key)`` gives the permutation key and the
      bootstrap key (each split into one key per permutation / resample); the TSI / QSI tuples come from
      ``jax.random.fold_in(key, TUPLE_KEY_DATA)``, so ``score`` is exactly
      ``cka.triplet_similarity_index(x, y, key=jax.random.fold_in(key, TUPLE_KEY_DATA), n_samples=n_tuples)``.
    ci: coverage of the bootstrap interval, in (0, 1).
    k, bandwidth, dim, block_size: as in :func:`score_grid` (``bandwidth`` is fixed from the full data).
    batch_size: permutations / resamples evaluated together; default keeps them near 256 MiB.
    mesh: optional device mesh; each batch of permutations / resamples is split over its first axis (as in
      :func:`score_grid`).
    n_tuples: random tuples of ``tsi`` / ``qsi``, as in :func:`score_grid` (ignored by the other metrics).

  Returns:
    A :class:`Calibrated`.
  """
  _check_metric(metric)
  host = on_host(x) and on_host(y)
  x, y = _cka.check_pair(x, y)
  n = x.shape[0]
  if not isinstance(n_perm, (int, np.integer)) or n_perm < 1:
    raise ValueError(f"n_perm must be a positive integer, got {n_perm!r}")
  if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
    raise ValueError(f"n_boot must be an integer >= 0 (0: no bootstrap interval), got {n_boot!r}")
  if not 0.0 < float(ci) < 1.0:
    raise ValueError(f"ci must lie in (0, 1), got {ci!r}")
  if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
    raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
  _check_options(metric, n, k=k, dim=dim, widths=[x.shape[1], y.shape[1]], block_size=block_size,
                 n_tuples=n_tuples)
  bw = jax.device_put(np.zeros(2, np.float32))
  if metric in ("rbf_cka", "unbiased_rbf_cka"):
    bw = jnp.concatenate([_bandwidths([x], bandwidth, "x", host=host), _bandwidths([y], bandwidth, "y", host=host)])
  block = int(min(block_size, n))
  batch = int(batch_size or _default_batch(metric, n, x.shape[1], y.shape[1], k, block, int(n_tuples)))
  key = jax.random.key(0) if key is None else key
  tuples = _tuples(metric, key, n, n_tuples)
  out = _calibrate(x, y, bw, tuples, key, device_scalar(ci), metric=metric, n_perm=int(n_perm), n_boot=int(n_boot),
                   batch=batch, k=int(k), dim=int(dim), block=block, mesh=mesh)
  return Calibrated(*out, metric=metric)


def linear_cka_null_mean(x: ArrayLike, y: ArrayLike) -> jax.Array:
  r"""Exact mean of linear CKA over all permutations of ``y``'s rows (the RV coefficient's, Josse et al., 2008).

  .. math:: \mathbb E_\pi[\mathrm{CKA}] = \frac{\sqrt{\beta_x \beta_y}}{n - 1}, \qquad
      \beta_x = \frac{(\operatorname{tr} K)^2}{\operatorname{tr} K^2} = \frac{\|X\|_F^4}{\|X^\top X\|_F^2}

  for centred ``X`` (``K = XXᵀ``); likewise :math:`\beta_y`. Shows how large an unrelated pair's CKA is:
  it grows with the effective ranks :math:`\beta` and shrinks with ``n``.
  """
  x, y = _cka.check_pair(x, y)
  n = x.shape[0]

  def beta(a):
    a = a - a.mean(0)
    g = jnp.matmul(a.T, a, precision=_HI)
    return jnp.sum(a * a) ** 2 / jnp.sum(g * g)

  return jnp.sqrt(beta(x) * beta(y)) / (n - 1)

