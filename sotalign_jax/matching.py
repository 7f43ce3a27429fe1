r"""Training-free matching of two embedding spaces from a few anchor ("base") pairs.

:cite:t:`maniparambil2024vision` ("Do Vision and Language Encoders Represent the World Similarly?") match ``q``
query images to ``q`` query captions given ``m`` paired base samples, without training anything:

* :func:`qap_match` — seeded graph matching :cite:p:`fishkind2019seeded`: the centred, normalised kernels of
  ``[base; queries]`` in each space are the two graphs, the base pairs are seeds, solved by batched FAQ
  (:func:`sotalign_jax.qap.faq`).
* :func:`local_cka_scores` — local CKA, :math:`s_{ij} = \mathrm{CKA}([B_x; x_i], [B_y; y_j])`, then
  :func:`local_cka_match` (linear assignment) or :func:`local_cka_retrieve` (top-k). Computed in closed form for
  all pairs at once (derivation in :func:`local_cka_scores`).
* Baselines: :func:`linreg_scores` (ridge map from the base pairs + cosine) and :func:`relative_scores`
  (relative representations, :cite:t:`moschella2023relative`).

Also :func:`kernel_matrix`, :func:`centered_kernel`, :func:`stretch` and :func:`kmeans_base_selection` (base pairs
as the points nearest to k-means centroids), as in the paper. Every score is pure and jit-able; the assignment
steps call :func:`sotalign_jax.qap.linear_assignment`.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.lax import PrecisionLike
from jax.sharding import Mesh
from jax.typing import ArrayLike

from sotalign_jax import clustering
from sotalign_jax import qap as qap_lib
from sotalign_jax._arrays import DEFAULT_PRECISION, check_features, cosine, device_scalar, on_host
from sotalign_jax._hsic import sq_dists as _sq_dists

__all__ = [
    "kernel_matrix", "centered_kernel", "stretch", "kmeans_base_selection", "qap_match", "local_cka_scores",
    "local_cka_match", "local_cka_retrieve", "linreg_scores", "linreg_match", "linreg_retrieve", "relative_scores",
    "relative_match", "relative_retrieve", "match_scores", "retrieve_scores",
]

Kernel = Literal["linear", "rbf"]
"""The kernels of :func:`kernel_matrix` and the matchings."""
_KERNELS = ("linear", "rbf")


# ----------------------------------------------------------------------------------------------------------------
# Checks.
# ----------------------------------------------------------------------------------------------------------------
def _check_feats(x, name: str, *, min_n: int = 1) -> jax.Array:
  return check_features(x, name, min_n=min_n, dtype=jnp.float32)


def _check_four(x_base, y_base, x_query, y_query, *, same_q: bool = False):
  xb = _check_feats(x_base, "x_base", min_n=2)
  yb = _check_feats(y_base, "y_base", min_n=2)
  xq = _check_feats(x_query, "x_query")
  yq = _check_feats(y_query, "y_query")
  if xb.shape[0] != yb.shape[0]:
    raise ValueError(f"x_base and y_base must hold the same (paired) samples, got {xb.shape[0]} and {yb.shape[0]} "
                     "rows")
  if xq.shape[1] != xb.shape[1]:
    raise ValueError(f"x_query must have the feature size of x_base ({xb.shape[1]}), got {xq.shape[1]}")
  if yq.shape[1] != yb.shape[1]:
    raise ValueError(f"y_query must have the feature size of y_base ({yb.shape[1]}), got {yq.shape[1]}")
  if same_q and xq.shape[0] != yq.shape[0]:
    raise ValueError(f"x_query and y_query must have the same number of rows for a one-to-one matching, got "
                     f"{xq.shape[0]} and {yq.shape[0]}")
  return xb, yb, xq, yq


def _check_kernel(kernel: str):
  if kernel not in _KERNELS:
    raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")


# ----------------------------------------------------------------------------------------------------------------
# Kernels and preprocessing.
# ----------------------------------------------------------------------------------------------------------------
def _bandwidth(x: jax.Array, bandwidth, precision=DEFAULT_PRECISION) -> jax.Array:
  if bandwidth is not None:
    return device_scalar(bandwidth)
  from sotalign_jax.cka import median_bandwidth  # pylint: disable=g-import-not-at-top

  return median_bandwidth(x, precision=precision)


def _kernel(a: jax.Array, b: jax.Array, kernel: str, sigma, precision=DEFAULT_PRECISION) -> jax.Array:
  if kernel == "linear":
    return jnp.matmul(a, b.T, precision=precision)
  return jnp.exp(-_sq_dists(a, b, precision) / (2.0 * sigma * sigma))


@functools.partial(jax.jit, static_argnames=("kernel", "precision"))
def _kernel_matrix(x, sigma, kernel: str, precision):
  k = _kernel(x, x, kernel, sigma, precision)
  return 0.5 * (k + k.T)


@functools.partial(jax.jit, static_argnames=("kernel", "precision"))
def _centered_kernel(x, sigma, kernel: str, precision):
  k = _kernel_matrix(x, sigma, kernel, precision)
  k = k - k.mean(0, keepdims=True)
  k = k - k.mean(1, keepdims=True)
  k = 0.5 * (k + k.T)
  return k / jnp.linalg.norm(k)


def kernel_matrix(x: ArrayLike, *, kernel: Kernel = "rbf", bandwidth: float | None = None,
                  precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""Kernel of one space, :math:`K = XX^\top` or :math:`K_{ij} = \exp(-\|x_i - x_j\|^2 / 2\sigma^2)`.

  Args:
    x: ``[n, d]`` features.
    kernel: ``"linear"`` or ``"rbf"``.
    bandwidth: RBF :math:`\sigma`; default the median heuristic
      :math:`\sigma = \sqrt{\operatorname{median}\{\|x_i - x_j\|^2 \neq 0\}}`
      (:func:`sotalign_jax.cka.median_bandwidth`).
    precision: of the matrix products (default ``HIGHEST``).

  Returns:
    ``[n, n]`` symmetric kernel matrix.
  """
  _check_kernel(kernel)
  x = _check_feats(x, "x")
  sigma = _bandwidth(x, bandwidth, precision) if kernel == "rbf" else None
  return _kernel_matrix(x, sigma, kernel, precision)


def centered_kernel(x: ArrayLike, *, kernel: Kernel = "rbf", bandwidth: float | None = None,
                    precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""Centred kernel normalised to unit Frobenius norm, :math:`HKH / \|HKH\|_F` (the paper's QAP graph).

  With this normalisation :math:`\langle \bar K, \bar L\rangle` is exactly the (biased) CKA of the two spaces,
  so the FAQ objective of :func:`qap_match` is the CKA of the matched sets.

  Args:
    x: ``[n, d]`` features.
    kernel: ``"linear"`` or ``"rbf"`` (median-heuristic bandwidth unless ``bandwidth`` is given).
    bandwidth: RBF :math:`\sigma`.
    precision: of the matrix products.

  Returns:
    ``[n, n]`` symmetric matrix with zero row sums and unit Frobenius norm.
  """
  _check_kernel(kernel)
  x = _check_feats(x, "x")
  sigma = _bandwidth(x, bandwidth, precision) if kernel == "rbf" else None
  return _centered_kernel(x, sigma, kernel, precision)


def stretch(x: ArrayLike) -> jax.Array:
  r"""Divides every feature by its standard deviation over the samples, :math:`x_{:,k} / \mathrm{std}(x_{:,k})`.

  The paper's "stretching" (applied to base and query embeddings of one space together). Constant features are
  left unscaled.

  Args:
    x: ``[n, d]`` features, ``n >= 2``.

  Returns:
    ``[n, d]`` stretched features.
  """
  return _stretch(_check_feats(x, "x", min_n=2))


@jax.jit
def _stretch(x):
  sd = jnp.std(x, axis=0, ddof=1)
  return x / jnp.where(sd > 0, sd, 1.0)


@functools.partial(jax.jit, static_argnames=("k", "n_iter"))
def _kmeans_select(x, key, k: int, n_iter: int):
  cent = clustering.kmeans(x, key, k, n_iter=n_iter, init="random")
  d = _sq_dists(cent, x)  # [k, n]

  def pick(used, row):  # nearest still-unused point, so the k representatives are distinct
    i = jnp.argmin(jnp.where(used, jnp.inf, row))
    return used.at[i].set(True), i

  _, idx = jax.lax.scan(pick, jnp.zeros((x.shape[0],), bool), d)
  return idx


def kmeans_base_selection(x: ArrayLike, k: int, *, key: jax.Array, n_iter: int = 50) -> jax.Array:
  r"""Indices of ``k`` base samples: the points nearest to the centroids of ``k``-means on ``x``.

  :func:`sotalign_jax.clustering.kmeans` with ``init="random"``: Lloyd iterations from ``k`` random distinct
  points, :math:`c_j \leftarrow \operatorname{mean}\{x_i : \arg\min_l \|x_i - c_l\| = j\}`; then each centroid
  picks its nearest point not already picked by a previous centroid, so the ``k`` indices are distinct. The paper
  clusters one space (e.g. the images) and uses the chosen indices for both members of each pair.

  Args:
    x: ``[n, d]`` features.
    k: number of base samples, ``1 <= k <= n``.
    key: PRNG key of the initial centroids.
    n_iter: Lloyd iterations.

  Returns:
    ``[k]`` int32 distinct indices into ``x``.
  """
  x = _check_feats(x, "x")
  n = x.shape[0]
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
    raise ValueError(f"k must be an integer in [1, n={n}], got {k!r}")
  if not isinstance(n_iter, (int, np.integer)) or n_iter < 0:
    raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}")
  return _kmeans_select(x, key, int(k), int(n_iter)).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------------------------
# Generic assignment / retrieval from a score matrix.
# ----------------------------------------------------------------------------------------------------------------
def match_scores(scores: ArrayLike, *, lap: str = "scipy") -> np.ndarray:
  """One-to-one matching maximising the total score: ``perm[i]`` is the column matched to row ``i``.

  :func:`sotalign_jax.qap.linear_assignment` with ``maximize=True``, checked and returned on the host.

  Args:
    scores: ``[q, q]`` similarity of x-query ``i`` to y-query ``j``.
    lap: the assignment solver (:data:`sotalign_jax.qap.LAPS` or ``"auto"``; default scipy's exact one).

  Returns:
    ``[q]`` int permutation.
  """
  if jnp.ndim(scores) != 2 or jnp.shape(scores)[0] != jnp.shape(scores)[1]:
    raise ValueError(f"scores must be a square [q, q] matrix, got shape {jnp.shape(scores)}")
  if on_host(scores) and not np.isfinite(np.asarray(scores, np.float32)).all():
    raise ValueError("scores contains NaN or Inf")
  return np.asarray(qap_lib.linear_assignment(jnp.asarray(scores, jnp.float32), maximize=True, lap=lap))


def retrieve_scores(scores: ArrayLike, k: int) -> jax.Array:
  """Top-``k`` columns of each row, best first.

  Args:
    scores: ``[q_x, q_y]`` similarities.
    k: number of candidates, ``1 <= k <= q_y``.

  Returns:
    ``[q_x, k]`` int32 column indices.
  """
  scores = jnp.asarray(scores, jnp.float32)
  if scores.ndim != 2:
    raise ValueError(f"scores must be a 2-D [q_x, q_y] matrix, got shape {scores.shape}")
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= scores.shape[1]:
    raise ValueError(f"k must be an integer in [1, {scores.shape[1]}], got {k!r}")
  return jax.lax.top_k(scores, int(k))[1].astype(jnp.int32)


# ----------------------------------------------------------------------------------------------------------------
# Seeded graph matching.
# ----------------------------------------------------------------------------------------------------------------
def qap_match(x_base: ArrayLike, y_base: ArrayLike, x_query: ArrayLike, y_query: ArrayLike, *, kernel: Kernel = "rbf",
              n_init: int = 100, key: jax.Array, maxiter: int = 30, tol: float = 1e-5, batch_size: int | None = None,
              lap: str = "scipy", mesh: Mesh | None = None) -> np.ndarray:
  r"""Seeded graph matching of the queries, with the base pairs as seeds (the paper's QAP matching).

  The graphs are :math:`\bar K_X = HK_XH/\|HK_XH\|_F` of ``[x_base; x_query]`` and :math:`\bar K_Y` of
  ``[y_base; y_query]`` (:func:`centered_kernel`); base ``i`` of X is seeded to base ``i`` of Y and FAQ
  maximises :math:`\operatorname{tr}(\bar K_X P \bar K_Y P^\top)` over the query block with ``n_init`` restarts
  (the paper uses 500).

  The QAP matching of :cite:t:`maniparambil2024vision`, solved by FAQ :cite:p:`vogelstein2015faq`.

  Args:
    x_base: ``[m, dx]`` base samples in space X.
    y_base: ``[m, dy]`` the paired base samples in space Y.
    x_query: ``[q, dx]`` queries in X.
    y_query: ``[q, dy]`` queries in Y (unpaired: any order).
    kernel: ``"rbf"`` (paper; median heuristic per space) or ``"linear"``.
    n_init: random FAQ restarts.
    key: PRNG key of the restarts.
    maxiter: Frank–Wolfe iterations per restart.
    tol: FAQ stopping tolerance.
    batch_size: restarts per batched call (memory), see :func:`sotalign_jax.qap.faq`.
    lap: linear assignment solver of FAQ.
    mesh: optional device mesh to split the restarts over.

  Returns:
    ``[q]`` int permutation: x-query ``i`` is matched to y-query ``perm[i]``.
  """
  _check_kernel(kernel)
  xb, yb, xq, yq = _check_four(x_base, y_base, x_query, y_query, same_q=True)
  m = xb.shape[0]
  ka = centered_kernel(jnp.concatenate([xb, xq]), kernel=kernel)
  kb = centered_kernel(jnp.concatenate([yb, yq]), kernel=kernel)
  seeds = np.stack([np.arange(m), np.arange(m)], 1)
  res = qap_lib.faq(np.asarray(ka), np.asarray(kb), seeds=seeds, n_init=n_init, maxiter=maxiter, tol=tol,
                    maximize=True, key=key, batch_size=batch_size, lap=lap, mesh=mesh)
  return res.col_ind[m:] - m


# ----------------------------------------------------------------------------------------------------------------
# Local CKA, closed form.
# ----------------------------------------------------------------------------------------------------------------
def _bordered_stats(base: jax.Array, query: jax.Array, kernel: str, sigma, precision=DEFAULT_PRECISION):
  """Base-centred base Gram, centred border vectors and diagonals (see :func:`local_cka_scores`)."""
  if kernel == "linear":  # HSIC is translation invariant: centre on the base mean for accuracy
    mu = base.mean(0)
    base, query = base - mu, query - mu
  kb = _kernel(base, base, kernel, sigma, precision)
  kb = 0.5 * (kb + kb.T)
  kqb = _kernel(query, base, kernel, sigma, precision)  # [q, m]
  kqq = jnp.sum(query * query, 1) if kernel == "linear" else jnp.ones((query.shape[0],), kb.dtype)
  rb = kb.mean(1)  # [m]
  sb = kb.mean()
  kb_c = kb - rb[:, None] - rb[None, :] + sb
  rq = kqb.mean(1)  # [q]
  a = kqb - rb[None, :] - rq[:, None] + sb
  alpha = kqq - 2.0 * rq + sb
  return kb_c, a, alpha


@functools.partial(jax.jit, static_argnames=("kernel", "precision"))
def _local_cka(xb, yb, xq, yq, sx, sy, kernel: str, precision=DEFAULT_PRECISION):
  kx, a, alpha = _bordered_stats(xb, xq, kernel, sx, precision)
  ky, b, beta = _bordered_stats(yb, yq, kernel, sy, precision)
  m = xb.shape[0]
  c = m / (m + 1.0)
  cross = jnp.sum(kx * ky)
  hsic = cross + 2.0 * c * jnp.matmul(a, b.T, precision=precision) + c * c * alpha[:, None] * beta[None, :]
  hx = jnp.sum(kx * kx) + 2.0 * c * jnp.sum(a * a, 1) + c * c * alpha * alpha
  hy = jnp.sum(ky * ky) + 2.0 * c * jnp.sum(b * b, 1) + c * c * beta * beta
  return hsic / jnp.sqrt(hx[:, None] * hy[None, :])


def local_cka_scores(x_base: ArrayLike, y_base: ArrayLike, x_query: ArrayLike, y_query: ArrayLike, *,
                     kernel: Kernel = "linear", bandwidth_x: float | None = None, bandwidth_y: float | None = None,
                     precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""Local CKA of every query pair, :math:`s_{ij} = \mathrm{CKA}(K_i, L_j)` with :math:`K_i` the kernel of
  ``[x_base; x_query[i]]`` and :math:`L_j` that of ``[y_base; y_query[j]]`` (biased HSIC, ``n = m + 1`` points).

  **Closed form.** Centring is invariant to :math:`K \mapsto K - \mathbf{1}f^\top - f\mathbf{1}^\top`, so each
  bordered kernel may be replaced by its *base-centred* version

  .. math::

    \tilde K_i = \begin{pmatrix} \tilde K_b & \tilde a_i \\ \tilde a_i^\top & \tilde\alpha_i \end{pmatrix},\quad
    \tilde K_b = H_m K_b H_m,\quad \tilde a_i = a_i - \bar r - \bar a_i \mathbf 1 + \bar s\,\mathbf 1,\quad
    \tilde \alpha_i = \alpha_i - 2\bar a_i + \bar s,

  with :math:`a_i = k(B_x, x_i)`, :math:`\alpha_i = k(x_i, x_i)`, :math:`\bar r = K_b\mathbf 1/m`,
  :math:`\bar s = \mathbf 1^\top K_b \mathbf 1/m^2`, :math:`\bar a_i = \mathbf 1^\top a_i/m`. Its row sums are
  :math:`(\tilde a_i; \tilde\alpha_i)` and its total sum is :math:`\tilde\alpha_i`, and with
  :math:`\langle HKH, HLH\rangle = \langle K, L\rangle - \tfrac{2}{n}(K\mathbf 1)^\top(L\mathbf 1) +
  \tfrac{1}{n^2}(\mathbf 1^\top K\mathbf 1)(\mathbf 1^\top L \mathbf 1)` this gives, for ``c = m / (m + 1)``,

  .. math::

    \mathrm{HSIC}(K_i, L_j) \propto \langle\tilde K_b, \tilde L_b\rangle + 2c\,\tilde a_i^\top \tilde b_j
    + c^2\,\tilde\alpha_i\tilde\beta_j,

  i.e. one ``[q_x, m] × [m, q_y]`` GEMM for all pairs instead of ``q_x q_y`` separate ``(m+1)²`` kernels.

  The localized CKA of :cite:t:`maniparambil2024vision`.

  Args:
    x_base: ``[m, dx]`` base samples in X.
    y_base: ``[m, dy]`` paired base samples in Y.
    x_query: ``[q_x, dx]`` queries in X.
    y_query: ``[q_y, dy]`` queries in Y.
    kernel: ``"linear"`` (paper's default) or ``"rbf"``.
    bandwidth_x: RBF :math:`\sigma` of X; default the median heuristic on ``x_base`` (fixed for all pairs; the
      reference code re-estimates it on every bordered set, which moves it negligibly).
    bandwidth_y: same for Y.
    precision: of the matrix products (default ``HIGHEST``).

  Returns:
    ``[q_x, q_y]`` local CKA scores in ``[-1, 1]``.
  """
  _check_kernel(kernel)
  xb, yb, xq, yq = _check_four(x_base, y_base, x_query, y_query)
  sx = _bandwidth(xb, bandwidth_x, precision) if kernel == "rbf" else None
  sy = _bandwidth(yb, bandwidth_y, precision) if kernel == "rbf" else None
  return _local_cka(xb, yb, xq, yq, sx, sy, kernel, precision)


def local_cka_match(x_base: ArrayLike, y_base: ArrayLike, x_query: ArrayLike, y_query: ArrayLike, *,
                    kernel: Kernel = "linear") -> np.ndarray:
  """Matching of the queries by linear assignment on :func:`local_cka_scores`; ``[q]`` permutation."""
  _check_four(x_base, y_base, x_query, y_query, same_q=True)
  return match_scores(local_cka_scores(x_base, y_base, x_query, y_query, kernel=kernel))


def local_cka_retrieve(x_base: ArrayLike, y_base: ArrayLike, x_query: ArrayLike, y_query: ArrayLike, *, k: int = 10,
                       kernel: Kernel = "linear") -> jax.Array:
  """Top-``k`` y-queries of each x-query by :func:`local_cka_scores`; ``[q_x, k]`` indices, best first."""
  return retrieve_scores(local_cka_scores(x_base, y_base, x_query, y_query, kernel=kernel), k)


# ----------------------------------------------------------------------------------------------------------------
# Baselines.
# ----------------------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("precision",))
def _linreg_scores(xq, yq, w, precision):
  return cosine(jnp.matmul(xq, w, precision=precision), yq, precision)


@functools.partial(jax.jit, static_argnames=("precision",))
def _relative_scores(xb, yb, xq, yq, precision):
  return cosine(cosine(xq, xb, precision), cosine(yq, yb, precision), precision)


def linreg_scores(x_base: ArrayLike, y_base: ArrayLike, x_query: ArrayLike, y_query: ArrayLike, *, lam: float = 1e-2,
                  precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""Linear-regression baseline: :math:`\cos(x_i W, y_j)` with :math:`W` the ridge map fitted on the base pairs
  (no intercept, as the paper's ``LinearRegression(fit_intercept=False)``; ``lam → 0`` recovers it).

  Args:
    x_base, y_base: ``[m, dx]``, ``[m, dy]`` base pairs.
    x_query, y_query: ``[q_x, dx]``, ``[q_y, dy]`` queries.
    lam: ridge penalty.
    precision: of the matrix products.

  Returns:
    ``[q_x, q_y]`` cosine similarities.
  """
  from sotalign_jax.teachers import ridge  # pylint: disable=g-import-not-at-top

  xb, yb, xq, yq = _check_four(x_base, y_base, x_query, y_query)
  w = ridge(xb, yb, lam=lam, center=False, precision=precision)
  return _linreg_scores(xq, yq, w, precision)


def relative_scores(x_base: ArrayLike, y_base: ArrayLike, x_query: ArrayLike, y_query: ArrayLike, *,
                    precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""Relative representations :cite:p:`moschella2023relative`: each query becomes its cosine similarities to the
  base anchors of its own space, :math:`r(x) = (\cos(x, b^x_k))_{k \le m}`, and queries are compared across
  spaces by :math:`\cos(r(x_i), r(y_j))`.

  Args:
    x_base, y_base: ``[m, dx]``, ``[m, dy]`` base pairs (the anchors).
    x_query, y_query: ``[q_x, dx]``, ``[q_y, dy]`` queries.
    precision: of the matrix products.

  Returns:
    ``[q_x, q_y]`` cosine similarities of relative representations.
  """
  xb, yb, xq, yq = _check_four(x_base, y_base, x_query, y_query)
  return _relative_scores(xb, yb, xq, yq, precision)


def linreg_match(x_base: ArrayLike, y_base: ArrayLike, x_query: ArrayLike, y_query: ArrayLike, *,
                 lam: float = 1e-2) -> np.ndarray:
  """Matching by linear assignment on :func:`linreg_scores`; ``[q]`` permutation."""
  _check_four(x_base, y_base, x_query, y_query, same_q=True)
  return match_scores(linreg_scores(x_base, y_base, x_query, y_query, lam=lam))


def linreg_retrieve(x_base: ArrayLike, y_base: ArrayLike, x_query: ArrayLike, y_query: ArrayLike, *, k: int = 10,
                    lam: float = 1e-2) -> jax.Array:
  """Top-``k`` y-queries of each x-query by :func:`linreg_scores`; ``[q_x, k]``."""
  return retrieve_scores(linreg_scores(x_base, y_base, x_query, y_query, lam=lam), k)


def relative_match(x_base: ArrayLike, y_base: ArrayLike, x_query: ArrayLike, y_query: ArrayLike) -> np.ndarray:
  """Matching by linear assignment on :func:`relative_scores`; ``[q]`` permutation."""
  _check_four(x_base, y_base, x_query, y_query, same_q=True)
  return match_scores(relative_scores(x_base, y_base, x_query, y_query))


def relative_retrieve(x_base: ArrayLike, y_base: ArrayLike, x_query: ArrayLike, y_query: ArrayLike, *,
                      k: int = 10) -> jax.Array:
  """Top-``k`` y-queries of each x-query by :func:`relative_scores`; ``[q_x, k]``."""
  return retrieve_scores(relative_scores(x_base, y_base, x_query, y_query), k)
