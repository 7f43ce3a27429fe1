r"""Representation-alignment scores: CKA (linear, RBF, biased/unbiased), mutual k-NN, CKNNA, SVCCA, TSI and QSI.

All scores take two sets of features of the *same* ``n`` samples, ``x: [n, dx]`` and ``y: [n, dy]``, and
return a float32 scalar. They are pure and jit/vmap-able. Inputs are checked when their values are known at the
call: NaN/Inf in host data *or* a concrete ``jax.Array`` raises ``ValueError`` naming the argument and row (one
device reduction and one boolean read for a jax array); inside ``jit``/``vmap`` values are checked only under
``jax.experimental.checkify.checkify`` (:mod:`sotalign_jax._arrays`), otherwise a NaN input gives a NaN score.

Centered kernel alignment :cite:p:`kornblith2019cka` normalises the Hilbert–Schmidt independence criterion:

.. math::

  \mathrm{CKA}(K, L) = \frac{\mathrm{HSIC}(K, L)}{\sqrt{\mathrm{HSIC}(K, K)\,\mathrm{HSIC}(L, L)}},
  \qquad \mathrm{HSIC}_0(K, L) = \operatorname{tr}(K H L H),\ H = I - \tfrac{1}{n}\mathbf{1}\mathbf{1}^\top,

and the unbiased estimator of Song et al. (2012, eq. 5), with :math:`\tilde K` the kernel with zeroed diagonal,

.. math::

  \mathrm{HSIC}_1(K, L) = \frac{1}{n(n-3)}\Big[\operatorname{tr}(\tilde K \tilde L)
  + \frac{\mathbf{1}^\top\tilde K\mathbf{1}\,\mathbf{1}^\top\tilde L\mathbf{1}}{(n-1)(n-2)}
  - \frac{2}{n-2}\mathbf{1}^\top\tilde K\tilde L\mathbf{1}\Big].

Both estimators only need the sufficient statistics :math:`\sum K\circ L`, the row sums and the diagonals of
``K`` and ``L`` (``sotalign_jax._hsic.hsic_from_stats``). For the linear kernel these come from feature-space products
(:math:`\|X^\top Y\|_F^2`, :math:`X(X^\top\mathbf 1)`), so no ``n × n`` matrix is ever built; for the RBF
kernel they are accumulated over row blocks of the kernel, so memory is ``O(block · n)``.

The k-NN scores follow the definitions of the Platonic Representation Hypothesis code (Huh et al., 2024):
inner-product neighbourhoods that exclude the sample itself. The order scores TSI and QSI (Soares et al., 2026, as
computed by Schnaus et al., 2026) compare the order of Euclidean distances over random triplets / quadruplets.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.lax import PrecisionLike
from jax.typing import ArrayLike

from sotalign_jax._arrays import DEFAULT_PRECISION, check_features, check_positive, device_scalar
from sotalign_jax._hsic import KernelStats, cka_from_stats, rbf_cka_stats, sq_dists

__all__ = [
    "linear_cka", "rbf_cka", "median_bandwidth", "mutual_knn", "cknna", "svcca", "hsic_biased", "hsic_unbiased",
    "triplet_similarity_index", "quadruplet_similarity_index",
]


# ----------------------------------------------------------------------------------------------------------------
# Input checks: shapes always; values when known at the call (host or concrete jax arrays; sotalign_jax._arrays).
# ----------------------------------------------------------------------------------------------------------------
def check_pair(x, y, *, names=("x", "y"), min_n: int = 2):
  """Validates two feature matrices of the same samples; returns them as float32 arrays."""
  x = check_features(x, names[0], dtype=jnp.float32)
  y = check_features(y, names[1], dtype=jnp.float32)
  if x.shape[0] != y.shape[0]:
    raise ValueError(
        f"{names[0]} and {names[1]} must hold the same samples (same number of rows); got n={x.shape[0]} "
        f"and n={y.shape[0]}")
  if x.shape[0] < min_n:
    raise ValueError(f"{names[0]}/{names[1]} need at least {min_n} samples, got n={x.shape[0]}")
  return x, y


def _check_k(k: int, n: int, name: str = "k"):
  if not isinstance(k, (int, np.integer)) or k < 1 or k >= n:
    raise ValueError(f"{name} must be an integer with 1 <= {name} < n (n={n}), got {k!r}")


# ----------------------------------------------------------------------------------------------------------------
# HSIC from sufficient statistics.
# ----------------------------------------------------------------------------------------------------------------
def hsic_biased(k: ArrayLike, l: ArrayLike) -> jax.Array:
  r"""Biased HSIC :math:`\operatorname{tr}(KHLH)` of two ``[n, n]`` kernel matrices (no 1/(n-1)² factor).

  ``K`` and ``L`` need not be symmetric (CKNNA masks them row-wise).
  """
  k, l = jnp.asarray(k), jnp.asarray(l)
  kc = k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()  # HKH
  return jnp.sum(kc * l.T)


def hsic_unbiased(k: ArrayLike, l: ArrayLike) -> jax.Array:
  """Unbiased HSIC of Song et al. (2012, eq. 5) of two ``[n, n]`` kernel matrices (not necessarily symmetric)."""
  k, l = jnp.asarray(k), jnp.asarray(l)
  m = k.shape[0]
  if m < 4:
    raise ValueError(f"the unbiased HSIC needs n >= 4 samples, got n={m}")
  off = 1.0 - jnp.eye(m, dtype=k.dtype)
  kt, lt = k * off, l * off
  return (jnp.sum(kt * lt.T) + kt.sum() * lt.sum() / ((m - 1) * (m - 2))
          - 2.0 / (m - 2) * jnp.dot(kt.sum(0), lt.sum(1))) / (m * (m - 3))


# ----------------------------------------------------------------------------------------------------------------
# Linear CKA in feature space.
# ----------------------------------------------------------------------------------------------------------------
def _linear_stats(x: jax.Array, y: jax.Array, precision=DEFAULT_PRECISION) -> KernelStats:
  """Stats of K = x xᵀ, L = y yᵀ from d×d products only."""
  xty = jnp.matmul(x.T, y, precision=precision)
  return KernelStats(
      jnp.sum(xty * xty),
      jnp.matmul(x, x.sum(0), precision=precision), jnp.matmul(y, y.sum(0), precision=precision),
      jnp.sum(x * x, 1), jnp.sum(y * y, 1))


@functools.partial(jax.jit, static_argnames=("unbiased", "precision"))
def _linear_cka(x, y, unbiased, precision=DEFAULT_PRECISION):
  # Both estimators are invariant to a shift of the features (the biased one by centring, the unbiased one
  # because the U-statistic only sees differences), so centring first only removes cancellation error.
  x = x - x.mean(0)
  y = y - y.mean(0)
  stats = functools.partial(_linear_stats, precision=precision)
  return cka_from_stats(stats(x, y), stats(x, x), stats(y, y), unbiased=unbiased)


def linear_cka(x: ArrayLike, y: ArrayLike, *, unbiased: bool = False,
               precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""Linear CKA between ``x: [n, dx]`` and ``y: [n, dy]``, in feature space (memory ``O(d²)``, never ``n²``).

  With centred features :math:`X, Y`, the biased form is

  .. math::

    \mathrm{CKA}_{lin} = \frac{\|X^\top Y\|_F^2}{\|X^\top X\|_F\,\|Y^\top Y\|_F},

  and ``unbiased=True`` evaluates :math:`\mathrm{HSIC}_1` of ``K = XXᵀ``, ``L = YYᵀ`` from the same
  feature-space products plus row sums and diagonals.

  Centered kernel alignment :cite:p:`kornblith2019cka`.

  Args:
    x: ``[n, dx]`` features.
    y: ``[n, dy]`` features of the same ``n`` samples.
    unbiased: use the unbiased HSIC estimator (Song et al., 2012); needs ``n >= 4``.
    precision: of the matrix products (``jax.lax.Precision``; default ``HIGHEST``, float32 on every backend).

  Returns:
    A float32 scalar in [0, 1] (the unbiased estimate can be slightly negative).
  """
  x, y = check_pair(x, y, min_n=4 if unbiased else 2)
  return _linear_cka(x, y, unbiased, precision)


# ----------------------------------------------------------------------------------------------------------------
# RBF CKA, accumulated over row blocks.
# ----------------------------------------------------------------------------------------------------------------
MEDIAN_MAX_ROWS = 4096


def _median_positive(d: jax.Array, *, sample: int = 65536, margin: float = 8.0) -> jax.Array:
  """Median over the pairs ``i < j`` of the positive entries of a symmetric ``[m, m]`` matrix, without a full sort.

  The strict upper triangle is first packed into an ``[m / 2, m]`` array (row ``i`` holds row ``i``'s entries
  right of the diagonal and, flipped, row ``m - 1 - i``'s), so every pair is read once, by elementwise ops only.
  Non-negative float32 values are ordered like their bit patterns read as int32, so the lower middle order
  statistic is found by bisection on those integers, each step one comparison and one count over the ``m² / 2``
  pairs (``O(m²)``, no ``O(m² log m)`` sort, no copy to the host). The bisection starts
  from a bracket read off a sorted random sample of ``sample`` entries (``margin`` standard deviations of the
  sample rank either side) once a counting pass has confirmed that the bracket holds both middle ranks; about
  17 steps instead of 31 for 4096 rows. If the check fails the bracket is the whole float range, so the result is
  exact either way: the same order statistics as ``np.median``.
  """
  if d.shape[0] % 2:  # an extra zero row and column: zeros are not counted
    d = jnp.pad(d, ((0, 1), (0, 1)))
  m = d.shape[0]
  rows, cols = np.arange(m // 2)[:, None], np.arange(m)[None, :]
  packed = jnp.where(cols > rows, d[:m // 2], d[m // 2:][::-1, ::-1])
  valid = (packed > 0) & (cols != rows)  # cols == rows: the diagonal, which can be a rounding error above 0
  big = jnp.iinfo(jnp.int32).max
  bits = jnp.where(valid, jax.lax.bitcast_convert_type(packed, jnp.int32), big)
  cnt = jnp.sum(valid, dtype=jnp.int32)
  k_lo, k_hi = (cnt - 1) // 2, cnt // 2  # 0-based ranks of the two middle values

  # Bracket [lo, hi] from a random sample; invalid entries (= big) sort last.
  size = bits.size
  idx = np.random.default_rng(0).integers(0, size, size=min(sample, size))
  s = jnp.sort(bits.ravel()[idx])
  ns = jnp.sum(s < big).astype(jnp.float32)
  pos = k_lo.astype(jnp.float32) / jnp.maximum(cnt, 1).astype(jnp.float32) * ns
  half = margin * jnp.sqrt(ns / 4.0) + 2.0  # the sample rank of a quantile has std <= sqrt(ns / 4)
  lo = s[jnp.clip(jnp.floor(pos - half).astype(jnp.int32), 0, s.shape[0] - 1)]
  hi = s[jnp.clip(jnp.ceil(pos + half).astype(jnp.int32), 0, s.shape[0] - 1)]
  holds = (jnp.sum(bits < lo, dtype=jnp.int32) <= k_lo) & (jnp.sum(bits <= hi, dtype=jnp.int32) > k_hi)
  lo, hi = jnp.where(holds, lo, 0), jnp.where(holds, hi, 0x7F800000)  # else: all of [0, inf]

  def halve(lohi):  # invariant: the k_lo-th smallest lies in [lo, hi]
    lo, hi = lohi
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(bits <= mid, dtype=jnp.int32) > k_lo
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  _, lo_bits = jax.lax.while_loop(lambda c: c[0] < c[1], halve, (lo, hi))
  above = jnp.min(jnp.where(bits > lo_bits, bits, big))
  hi_bits = jnp.where(jnp.sum(bits <= lo_bits, dtype=jnp.int32) > k_hi, lo_bits, above)
  as_float = lambda b: jax.lax.bitcast_convert_type(b, jnp.float32)
  return jnp.where(cnt > 0, 0.5 * as_float(lo_bits) + 0.5 * as_float(hi_bits), jnp.nan)


@functools.partial(jax.jit, static_argnames=("precision",))
def _median_bandwidth(x: jax.Array, precision=DEFAULT_PRECISION) -> jax.Array:
  xs = x[::-(-x.shape[0] // MEDIAN_MAX_ROWS)]
  return jnp.sqrt(_median_positive(sq_dists(xs, xs, precision)))


def median_bandwidth(x: ArrayLike, *, precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""Median heuristic :math:`\sigma = \sqrt{\operatorname{median}_{i<j}\{\|x_i - x_j\|^2 \ne 0\}}`.

  Exact for ``n <= 4096``; for larger ``n`` it is computed on the 4096 rows ``x[:: ceil(n / 4096)]`` (an
  evenly strided subsample), which keeps it ``O(4096²)`` in time and memory. One path, eager or traced: the
  distances and the median are computed on the device in one compiled call, the median by a bisection on the
  float bits (see ``_median_positive``), not a sort. Measured on 4096 x 64 rows on 2 shared CPU cores (load ~2):
  0.3 – 0.5 s, jitted or not; before, a jitted call sorted the upper triangle on the device (5.9 s) and an eager
  call copied the 64 MiB distance matrix to the host for ``np.median`` (0.4 s, plus the copy on an accelerator).
  NaN when all samples are identical.

  Args:
    x: ``[n, d]`` features.
    precision: of the distance computation's matrix product.

  Returns:
    A float32 scalar.
  """
  x = check_features(x, "x", dtype=jnp.float32)
  return _median_bandwidth(x, precision)


def rbf_cka(x: ArrayLike, y: ArrayLike, *, bandwidth: float | tuple[float, float] | None = None, unbiased: bool = False,
            block_size: int = 512, precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""CKA with Gaussian kernels :math:`K_{ij} = \exp(-\|x_i - x_j\|^2 / 2\sigma_x^2)` (and likewise ``L``).

  The kernels are never held whole: symmetric ``block_size × block_size`` tiles of the upper triangle are
  generated one at a time and only their HSIC statistics are kept, so memory is ``O(block_size² + n)``.

  Args:
    x: ``[n, dx]`` features.
    y: ``[n, dy]`` features of the same samples.
    bandwidth: ``None`` for the median heuristic on each side (:func:`median_bandwidth`, as in
      :cite:t:`maniparambil2024vision`), a float for both sides, or a pair ``(sigma_x, sigma_y)``.
    unbiased: use the unbiased HSIC estimator; needs ``n >= 4``.
    block_size: side of the kernel tiles generated at once.
    precision: of the matrix products (distances).

  Bandwidths are checked (finite, > 0) like every value here: host numbers and concrete arrays raise (the median of
  identical samples is NaN), traced ones only under ``checkify.checkify``.
  """
  x, y = check_pair(x, y, min_n=4 if unbiased else 2)
  if bandwidth is None:
    sx, sy = median_bandwidth(x, precision=precision), median_bandwidth(y, precision=precision)
  elif isinstance(bandwidth, (tuple, list)):
    sx, sy = bandwidth
  else:
    sx = sy = bandwidth
  for name, s in (("bandwidth (x)", sx), ("bandwidth (y)", sy)):
    check_positive(name, s, hint=" Are all samples identical?")
  block = int(min(block_size, x.shape[0]))
  return rbf_cka_stats(x, y, device_scalar(sx), device_scalar(sy), unbiased, block, precision)


# ----------------------------------------------------------------------------------------------------------------
# k-NN scores and SVCCA (Huh et al., 2024).
# ----------------------------------------------------------------------------------------------------------------
def _knn_indices(x: jax.Array, k: int, precision=DEFAULT_PRECISION) -> jax.Array:
  g = jnp.matmul(x, x.T, precision=precision)
  g = jnp.where(jnp.eye(x.shape[0], dtype=bool), -jnp.inf, g)
  return jax.lax.top_k(g, k)[1]


def _knn_mask(x: jax.Array, k: int, precision=DEFAULT_PRECISION) -> jax.Array:
  n = x.shape[0]
  idx = _knn_indices(x, k, precision)
  return jnp.zeros((n, n), x.dtype).at[jnp.arange(n)[:, None], idx].set(1.0)


@functools.partial(jax.jit, static_argnames=("k", "precision"))
def _mutual_knn(x, y, k, precision=DEFAULT_PRECISION):
  return jnp.mean(jnp.sum(_knn_mask(x, k, precision) * _knn_mask(y, k, precision), 1) / k)


def mutual_knn(x: ArrayLike, y: ArrayLike, *, k: int, precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""Mutual k-NN alignment: the mean over samples of :math:`|N_k^x(i) \cap N_k^y(i)| / k`.

  Neighbourhoods are the ``k`` largest inner products, excluding the sample itself :cite:p:`huh2024platonic`.
  Normalise the features first if cosine neighbourhoods are wanted.
  """
  x, y = check_pair(x, y)
  _check_k(k, x.shape[0])
  return _mutual_knn(x, y, int(k), precision)


@functools.partial(jax.jit, static_argnames=("k", "unbiased", "precision"))
def _cknna(x, y, k, unbiased, precision=DEFAULT_PRECISION):
  kx = jnp.matmul(x, x.T, precision=precision)
  ly = jnp.matmul(y, y.T, precision=precision)
  if unbiased:
    mx, my = _knn_mask(x, k, precision), _knn_mask(y, k, precision)
  else:  # neighbourhoods may include the sample itself
    n = x.shape[0]
    mk = lambda g: jnp.zeros((n, n), x.dtype).at[jnp.arange(n)[:, None], jax.lax.top_k(g, k)[1]].set(1.0)
    mx, my = mk(kx), mk(ly)
  h = hsic_unbiased if unbiased else hsic_biased
  m = mx * my
  return h(m * kx, m * ly) / jnp.sqrt(h(mx * kx, mx * kx) * h(my * ly, my * ly))


def cknna(x: ArrayLike, y: ArrayLike, *, k: int, unbiased: bool = True,
          precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""CKNNA :cite:p:`huh2024platonic`: CKA restricted to pairs that are mutual k-nearest neighbours.

  With inner-product kernels ``K``, ``L`` and the mask :math:`M_{ij} = [j \in N_k^x(i)][j \in N_k^y(i)]`,

  .. math::

    \mathrm{CKNNA} = \frac{\mathrm{HSIC}(M\circ K, M\circ L)}
    {\sqrt{\mathrm{HSIC}(M_x\circ K, M_x\circ K)\,\mathrm{HSIC}(M_y\circ L, M_y\circ L)}}.

  Builds ``n × n`` matrices: use it for ``n`` up to a few thousand.
  """
  x, y = check_pair(x, y, min_n=4 if unbiased else 2)
  _check_k(k, x.shape[0])
  if k < 2:
    raise ValueError(f"k must be >= 2 for CKNNA, got {k}")
  return _cknna(x, y, int(k), unbiased, precision)


@functools.partial(jax.jit, static_argnames=("dim", "precision"))
def _svcca(x, y, dim, precision=DEFAULT_PRECISION):
  def top_directions(a):
    a = a - a.mean(0)
    a = a / (a.std(0) + 1e-8)
    u, _, _ = jnp.linalg.svd(a, full_matrices=False)
    return u[:, :dim]
  # The canonical correlations of two orthonormal bases are the singular values of U1ᵀU2.
  s = jnp.linalg.svd(jnp.matmul(top_directions(x).T, top_directions(y), precision=precision), compute_uv=False)
  return jnp.mean(jnp.clip(s, 0.0, 1.0))


def svcca(x: ArrayLike, y: ArrayLike, *, dim: int = 10, precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""SVCCA (Raghu et al., 2017; as in Huh et al., 2024): mean canonical correlation of the top singular subspaces.

  Each side is centred and scaled per feature; its ``dim`` leading left singular vectors :math:`U_x, U_y`
  span the kept subspace; the canonical correlations between two orthonormal bases are the singular values
  :math:`\rho_i` of :math:`U_x^\top U_y`, and the score is their mean.

  As in :cite:t:`huh2024platonic`.
  """
  x, y = check_pair(x, y)
  if not isinstance(dim, (int, np.integer)) or dim < 1 or dim > min(x.shape[0], x.shape[1], y.shape[1]):
    raise ValueError(f"dim must satisfy 1 <= dim <= min(n, dx, dy) = {min(x.shape[0], x.shape[1], y.shape[1])}, "
                     f"got {dim!r}")
  return _svcca(x, y, int(dim), precision)


# ----------------------------------------------------------------------------------------------------------------
# Order scores: triplet and quadruplet similarity indices (Soares et al., 2026; as in Schnaus et al., 2026).
# ----------------------------------------------------------------------------------------------------------------
ORDER_CHUNK = 4096  # tuples whose distances are formed at once (lax.map batches)


def _closer(a: jax.Array, i, j, k, l) -> jax.Array:
  """``d(a_i, a_j) < d(a_k, a_l)`` (Euclidean), elementwise over the index vectors."""
  return jnp.linalg.norm(a[i] - a[j], axis=-1) < jnp.linalg.norm(a[k] - a[l], axis=-1)


@functools.partial(jax.jit, static_argnames=("n", "n_samples", "quadruplets"))
def _order_tuples(key: jax.Array, n: int, n_samples: int, quadruplets: bool) -> jax.Array:
  """The random tuples of TSI / QSI, ``jax.random.randint(key, (3 or 4, n_samples), 0, n)`` (as in the peer).

  int32 ``[3, n_samples]`` (triplets) or ``[4, n_samples]`` (quadruplets), uniform with replacement.
  """
  return jax.random.randint(key, (4 if quadruplets else 3, n_samples), 0, n)


def _order_bits(a: jax.Array, idx: jax.Array, quadruplets: bool, chunk: int = ORDER_CHUNK):
  r"""Each tuple's validity and distance order in one space: ``(valid, closer)``, bool ``[T]`` each.

  For the columns ``(i, j, k)`` of ``idx [3, T]``: ``valid`` = the indices are distinct, ``closer`` =
  :math:`d(a_i, a_j) < d(a_i, a_k)`; for ``(i, j, k, l)`` of ``idx [4, T]``: ``valid`` = :math:`i \ne j`
  and :math:`k \ne l`, ``closer`` = :math:`d(a_i, a_j) < d(a_k, a_l)` (strict: a tie is "not closer").
  ``valid`` depends on ``idx`` only. The tuples go ``chunk`` at a time (``lax.map``), so memory is
  ``O(chunk · d)`` (four gathered rows per tuple), never ``O(T · d)``. A permutation ``π`` of ``a``'s rows is
  ``_order_bits(a, π[idx])``: the indices are gathered, not ``a``.
  """
  def one(t):
    if quadruplets:  # d(i, j) < d(k, l)
      return (t[0] != t[1]) & (t[2] != t[3]), _closer(a, t[0], t[1], t[2], t[3])
    # d(i, j) < d(i, k)
    return (t[0] != t[1]) & (t[0] != t[2]) & (t[1] != t[2]), _closer(a, t[0], t[1], t[0], t[2])

  return jax.lax.map(one, idx.T, batch_size=min(chunk, idx.shape[1]))


def _order_agreement(valid: jax.Array, bits_x: jax.Array, bits_y: jax.Array) -> jax.Array:
  r"""The order index :math:`\sum_t [v_t][b^x_t = b^y_t] / \sum_t [v_t]` over the last axis (broadcasting).

  The division is exact (correctly rounded) for every entry, batched or not: XLA turns a division by a broadcast
  count into a product with its rounded reciprocal (1 ulp off for some counts), so a grid cell or a permutation
  score would differ from the single-pair value of the same count. The count is therefore broadcast through a
  ``where`` that depends on the numerator.
  """
  agree = jnp.sum(valid & (bits_x == bits_y), -1)
  return agree / jnp.where(agree >= 0, jnp.sum(valid, -1), 0)


@functools.partial(jax.jit, static_argnames=("n_samples", "quadruplets", "chunk"))
def _order_index(x, y, key, n_samples: int, quadruplets: bool, chunk: int = ORDER_CHUNK):
  idx = _order_tuples(key, x.shape[0], n_samples, quadruplets)
  valid, bits_x = _order_bits(x, idx, quadruplets, chunk)
  _, bits_y = _order_bits(y, idx, quadruplets, chunk)  # the same validity
  return _order_agreement(valid, bits_x, bits_y)


def _check_order(x, y, key, n_samples, min_n):
  x, y = check_pair(x, y, min_n=min_n)
  if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
    raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
  if key is None:
    raise ValueError("key is required: the tuples are drawn at random (e.g. key=jax.random.key(0))")
  return x, y


def triplet_similarity_index(x: ArrayLike, y: ArrayLike, *, key: jax.Array, n_samples: int = 100_000) -> jax.Array:
  r"""Triplet similarity index (TSI): the fraction of random triplets of samples whose distance order agrees in
  both spaces,

  .. math::

    \mathrm{TSI} = \frac{1}{|V|}\sum_{(i,j,k) \in V} \big[\,[d_x(i,j) < d_x(i,k)] = [d_y(i,j) < d_y(i,k)]\,\big],

  with Euclidean distances ``d``. ``n_samples`` triplets are drawn uniformly with replacement (indices
  ``jax.random.randint(key, (3, n_samples), 0, n)``) and those with a repeated index are dropped (``V``), as in
  unpaired-rosetta (``unpaired_rosetta/geometry.py``, :cite:t:`schnaus2026rosetta`, after Soares et al., 2026). A tie
  counts as "not closer" in its space (strict ``<``), as there. 1 for spaces with the same distance order
  (e.g. related by a similarity transform), about 0.5 for unrelated ones.

  Args:
    x: ``[n, dx]`` features.
    y: ``[n, dy]`` features of the same samples (``n >= 3``).
    key: PRNG key of the triplets.
    n_samples: triplets drawn (the peer's default 100,000).

  Returns:
    A float32 scalar (NaN if no triplet was valid).
  """
  x, y = _check_order(x, y, key, n_samples, 3)
  return _order_index(x, y, key, int(n_samples), False)


def quadruplet_similarity_index(x: ArrayLike, y: ArrayLike, *, key: jax.Array, n_samples: int = 100_000) -> jax.Array:
  r"""Quadruplet similarity index (QSI): the fraction of random quadruplets whose order ``d(i, j) < d(k, l)``
  agrees in both spaces,

  .. math::

    \mathrm{QSI} = \frac{1}{|V|}\sum_{(i,j,k,l) \in V} \big[\,[d_x(i,j) < d_x(k,l)] = [d_y(i,j) < d_y(k,l)]\,\big],

  Euclidean distances, indices ``jax.random.randint(key, (4, n_samples), 0, n)``, valid when ``i ≠ j`` and
  ``k ≠ l`` (the peer's definition, ``unpaired_rosetta/geometry.py``); ties count as "not closer".

  As computed by :cite:t:`schnaus2026rosetta`.

  Args:
    x: ``[n, dx]`` features.
    y: ``[n, dy]`` features of the same samples (``n >= 2``).
    key: PRNG key of the quadruplets.
    n_samples: quadruplets drawn (100,000).

  Returns:
    A float32 scalar (NaN if no quadruplet was valid).
  """
  x, y = _check_order(x, y, key, n_samples, 2)
  return _order_index(x, y, key, int(n_samples), True)
