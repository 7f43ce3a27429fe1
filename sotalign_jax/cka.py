r"""Representation-alignment scores: CKA (linear, RBF, biased/unbiased), mutual k-NN, CKNNA and SVCCA.

All scores take two sets of features of the *same* ``n`` samples, ``x: [n, dx]`` and ``y: [n, dy]``, and
return a float32 scalar. They are pure and jit/vmap-able; input checks run on concrete (non-traced) inputs.

Centered kernel alignment (Kornblith et al., 2019) normalises the Hilbert–Schmidt independence criterion:

.. math::

  \mathrm{CKA}(K, L) = \frac{\mathrm{HSIC}(K, L)}{\sqrt{\mathrm{HSIC}(K, K)\,\mathrm{HSIC}(L, L)}},
  \qquad \mathrm{HSIC}_0(K, L) = \operatorname{tr}(K H L H),\ H = I - \tfrac{1}{n}\mathbf{1}\mathbf{1}^\top,

and the unbiased estimator of Song et al. (2012, eq. 5), with :math:`\tilde K` the kernel with zeroed diagonal,

.. math::

  \mathrm{HSIC}_1(K, L) = \frac{1}{n(n-3)}\Big[\operatorname{tr}(\tilde K \tilde L)
  + \frac{\mathbf{1}^\top\tilde K\mathbf{1}\,\mathbf{1}^\top\tilde L\mathbf{1}}{(n-1)(n-2)}
  - \frac{2}{n-2}\mathbf{1}^\top\tilde K\tilde L\mathbf{1}\Big].

Both estimators only need the sufficient statistics :math:`\sum K\circ L`, the row sums and the diagonals of
``K`` and ``L`` (:func:`_hsic_from_stats`). For the linear kernel these come from feature-space products
(:math:`\|X^\top Y\|_F^2`, :math:`X(X^\top\mathbf 1)`), so no ``n × n`` matrix is ever built; for the RBF
kernel they are accumulated over row blocks of the kernel, so memory is ``O(block · n)``.

The k-NN scores follow the definitions of the Platonic Representation Hypothesis code (Huh et al., 2024):
inner-product neighbourhoods that exclude the sample itself.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax._hsic import KernelStats, cka_from_stats, rbf_cka_stats, sq_dists

__all__ = [
    "linear_cka", "rbf_cka", "median_bandwidth", "mutual_knn", "cknna", "svcca", "hsic_biased", "hsic_unbiased",
]

_HI = jax.lax.Precision.HIGHEST  # scores must not silently drop to TF32/bf16 on GPU/TPU


# ----------------------------------------------------------------------------------------------------------------
# Input checks (only on concrete arrays: inside jit/vmap the shapes are already known to be right).
# ----------------------------------------------------------------------------------------------------------------
def _is_concrete(a) -> bool:
  return not isinstance(a, jax.core.Tracer)


def check_pair(x, y, *, names=("x", "y"), min_n: int = 2):
  """Validates two feature matrices of the same samples; returns them as float32 arrays."""
  for name, a in zip(names, (x, y)):  # values are checked on concrete inputs only (inside jit they are tracers)
    if _is_concrete(a) and not np.isfinite(np.asarray(a, np.float32)).all():
      raise ValueError(f"{name} contains NaN or Inf; clean or drop those rows first")
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  for name, a in zip(names, (x, y)):
    if a.ndim != 2:
      raise ValueError(f"{name} must be a 2-D array [n, d] of features, got shape {a.shape}")
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
def hsic_biased(k, l) -> jax.Array:
  r"""Biased HSIC :math:`\operatorname{tr}(KHLH)` of two ``[n, n]`` kernel matrices (no 1/(n-1)² factor).

  ``K`` and ``L`` need not be symmetric (CKNNA masks them row-wise).
  """
  k, l = jnp.asarray(k), jnp.asarray(l)
  kc = k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()  # HKH
  return jnp.sum(kc * l.T)


def hsic_unbiased(k, l) -> jax.Array:
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
def _linear_stats(x: jax.Array, y: jax.Array) -> KernelStats:
  """Stats of K = x xᵀ, L = y yᵀ from d×d products only."""
  xty = jnp.matmul(x.T, y, precision=_HI)
  return KernelStats(
      jnp.sum(xty * xty),
      jnp.matmul(x, x.sum(0), precision=_HI), jnp.matmul(y, y.sum(0), precision=_HI),
      jnp.sum(x * x, 1), jnp.sum(y * y, 1))


@functools.partial(jax.jit, static_argnames=("unbiased",))
def _linear_cka(x, y, unbiased):
  # Both estimators are invariant to a shift of the features (the biased one by centring, the unbiased one
  # because the U-statistic only sees differences), so centring first only removes cancellation error.
  x = x - x.mean(0)
  y = y - y.mean(0)
  return cka_from_stats(_linear_stats(x, y), _linear_stats(x, x), _linear_stats(y, y), unbiased=unbiased)


def linear_cka(x, y, *, unbiased: bool = False) -> jax.Array:
  r"""Linear CKA between ``x: [n, dx]`` and ``y: [n, dy]``, in feature space (memory ``O(d²)``, never ``n²``).

  With centred features :math:`X, Y`, the biased form is

  .. math::

    \mathrm{CKA}_{lin} = \frac{\|X^\top Y\|_F^2}{\|X^\top X\|_F\,\|Y^\top Y\|_F},

  and ``unbiased=True`` evaluates :math:`\mathrm{HSIC}_1` of ``K = XXᵀ``, ``L = YYᵀ`` from the same
  feature-space products plus row sums and diagonals.

  Args:
    x: ``[n, dx]`` features.
    y: ``[n, dy]`` features of the same ``n`` samples.
    unbiased: use the unbiased HSIC estimator (Song et al., 2012); needs ``n >= 4``.

  Returns:
    A float32 scalar in [0, 1] (the unbiased estimate can be slightly negative).
  """
  x, y = check_pair(x, y, min_n=4 if unbiased else 2)
  return _linear_cka(x, y, unbiased)


# ----------------------------------------------------------------------------------------------------------------
# RBF CKA, accumulated over row blocks.
# ----------------------------------------------------------------------------------------------------------------
MEDIAN_MAX_ROWS = 4096


def _median_positive(d: np.ndarray) -> np.float32:
  """Median of the positive entries of a symmetric distance matrix (``np.median`` selects in O(size), no sort).

  Every off-diagonal value appears twice in a symmetric matrix, which leaves the median unchanged, so this is the
  median over the pairs ``i < j``.
  """
  d = np.asarray(d)
  v = d[~np.eye(d.shape[0], dtype=bool)]  # the computed diagonal can be a rounding error above 0
  v = v[v > 0]
  return np.float32(np.median(v)) if v.size else np.float32(np.nan)


@jax.jit
def _stridedsq_dists(x: jax.Array) -> jax.Array:
  xs = x[::-(-x.shape[0] // MEDIAN_MAX_ROWS)]
  return sq_dists(xs, xs)


def _median_positive_traced(d: jax.Array) -> jax.Array:
  """The same median inside a trace: a sort of the upper triangle (slower, O(m² log m))."""
  m = d.shape[0]
  valid = jnp.triu(jnp.ones((m, m), bool), 1) & (d > 0)
  vals = jnp.sort(jnp.where(valid, d, jnp.inf).ravel())
  cnt = valid.sum()
  mid = 0.5 * (vals[jnp.maximum((cnt - 1) // 2, 0)] + vals[jnp.maximum(cnt // 2, 0)])
  return jnp.where(cnt > 0, mid, jnp.nan)


def median_bandwidth(x) -> jax.Array:
  r"""Median heuristic :math:`\sigma = \sqrt{\operatorname{median}_{i<j}\{\|x_i - x_j\|^2 \ne 0\}}`.

  Exact for ``n <= 4096``; for larger ``n`` it is computed on the 4096 rows ``x[:: ceil(n / 4096)]`` (an
  evenly strided subsample), which keeps it ``O(4096²)`` in time and memory. Called on concrete arrays, the
  distances are computed on the device and the median is selected on the host in linear time; inside
  ``jit``/``vmap`` a device sort is used instead (≈6 s for 4096 rows on 2 CPU cores, against ≈0.2 s). NaN when all
  samples are identical.
  """
  x = jnp.asarray(x, jnp.float32) if _is_concrete(x) else x
  if _is_concrete(x):
    return jnp.sqrt(jnp.float32(_median_positive(np.asarray(_stridedsq_dists(x)))))
  return jnp.sqrt(_median_positive_traced(_stridedsq_dists(x.astype(jnp.float32))))


def rbf_cka(x, y, *, bandwidth=None, unbiased: bool = False, block_size: int = 512) -> jax.Array:
  r"""CKA with Gaussian kernels :math:`K_{ij} = \exp(-\|x_i - x_j\|^2 / 2\sigma_x^2)` (and likewise ``L``).

  The kernels are never held whole: symmetric ``block_size × block_size`` tiles of the upper triangle are
  generated one at a time and only their HSIC statistics are kept, so memory is ``O(block_size² + n)``.

  Args:
    x: ``[n, dx]`` features.
    y: ``[n, dy]`` features of the same samples.
    bandwidth: ``None`` for the median heuristic on each side (:func:`median_bandwidth`, as in
      Maniparambil et al., 2024), a float for both sides, or a pair ``(sigma_x, sigma_y)``.
    unbiased: use the unbiased HSIC estimator; needs ``n >= 4``.
    block_size: side of the kernel tiles generated at once.
  """
  x, y = check_pair(x, y, min_n=4 if unbiased else 2)
  if bandwidth is None:
    sx, sy = median_bandwidth(x), median_bandwidth(y)
  elif isinstance(bandwidth, (tuple, list)):
    sx, sy = bandwidth
  else:
    sx = sy = bandwidth
  for name, s in (("bandwidth (x)", sx), ("bandwidth (y)", sy)):
    if _is_concrete(s) and not 0 < float(s) < np.inf:
      raise ValueError(f"{name} must be finite and > 0, got {float(s)} (are all samples identical?)")
  block = int(min(block_size, x.shape[0]))
  return rbf_cka_stats(x, y, jnp.float32(sx), jnp.float32(sy), unbiased, block)


# ----------------------------------------------------------------------------------------------------------------
# k-NN scores and SVCCA (Huh et al., 2024).
# ----------------------------------------------------------------------------------------------------------------
def _knn_indices(x: jax.Array, k: int) -> jax.Array:
  g = jnp.matmul(x, x.T, precision=_HI)
  g = jnp.where(jnp.eye(x.shape[0], dtype=bool), -jnp.inf, g)
  return jax.lax.top_k(g, k)[1]


def _knn_mask(x: jax.Array, k: int) -> jax.Array:
  n = x.shape[0]
  idx = _knn_indices(x, k)
  return jnp.zeros((n, n), x.dtype).at[jnp.arange(n)[:, None], idx].set(1.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _mutual_knn(x, y, k):
  return jnp.mean(jnp.sum(_knn_mask(x, k) * _knn_mask(y, k), 1) / k)


def mutual_knn(x, y, *, k: int) -> jax.Array:
  r"""Mutual k-NN alignment: the mean over samples of :math:`|N_k^x(i) \cap N_k^y(i)| / k`.

  Neighbourhoods are the ``k`` largest inner products, excluding the sample itself (Huh et al., 2024).
  Normalise the features first if cosine neighbourhoods are wanted.
  """
  x, y = check_pair(x, y)
  _check_k(k, x.shape[0])
  return _mutual_knn(x, y, int(k))


@functools.partial(jax.jit, static_argnames=("k", "unbiased"))
def _cknna(x, y, k, unbiased):
  kx = jnp.matmul(x, x.T, precision=_HI)
  ly = jnp.matmul(y, y.T, precision=_HI)
  if unbiased:
    mx, my = _knn_mask(x, k), _knn_mask(y, k)
  else:  # neighbourhoods may include the sample itself
    n = x.shape[0]
    mk = lambda g: jnp.zeros((n, n), x.dtype).at[jnp.arange(n)[:, None], jax.lax.top_k(g, k)[1]].set(1.0)
    mx, my = mk(kx), mk(ly)
  h = hsic_unbiased if unbiased else hsic_biased
  m = mx * my
  return h(m * kx, m * ly) / jnp.sqrt(h(mx * kx, mx * kx) * h(my * ly, my * ly))


def cknna(x, y, *, k: int, unbiased: bool = True) -> jax.Array:
  r"""CKNNA (Huh et al., 2024): CKA restricted to pairs that are mutual k-nearest neighbours.

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
  return _cknna(x, y, int(k), unbiased)


@functools.partial(jax.jit, static_argnames=("dim",))
def _svcca(x, y, dim):
  def top_directions(a):
    a = a - a.mean(0)
    a = a / (a.std(0) + 1e-8)
    u, _, _ = jnp.linalg.svd(a, full_matrices=False)
    return u[:, :dim]
  # The canonical correlations of two orthonormal bases are the singular values of U1ᵀU2.
  s = jnp.linalg.svd(jnp.matmul(top_directions(x).T, top_directions(y), precision=_HI), compute_uv=False)
  return jnp.mean(jnp.clip(s, 0.0, 1.0))


def svcca(x, y, *, dim: int = 10) -> jax.Array:
  r"""SVCCA (Raghu et al., 2017; as in Huh et al., 2024): mean canonical correlation of the top singular subspaces.

  Each side is centred and scaled per feature; its ``dim`` leading left singular vectors :math:`U_x, U_y`
  span the kept subspace; the canonical correlations between two orthonormal bases are the singular values
  :math:`\rho_i` of :math:`U_x^\top U_y`, and the score is their mean.
  """
  x, y = check_pair(x, y)
  if not isinstance(dim, (int, np.integer)) or dim < 1 or dim > min(x.shape[0], x.shape[1], y.shape[1]):
    raise ValueError(f"dim must satisfy 1 <= dim <= min(n, dx, dy) = {min(x.shape[0], x.shape[1], y.shape[1])}, "
                     f"got {dim!r}")
  return _svcca(x, y, int(dim))
