r"""Closed-form linear aligners fitted on the pairs: least squares (pseudo-inverse), ridge, Procrustes, CCA.

Each returns a :class:`LinearAlignment`, ``embed_x(x) = pre_x(x) W_x``, ``embed_y(y) = pre_y(y) W_y`` (``W_y = I``
for the maps from x into y-space), scored by cosine. ``pre`` centres with the side mean chosen by ``center``
(:mod:`sotalign_jax.aligners.base`) and, with ``normalize=True`` (default), scales each centred row to unit norm, as
unpaired-rosetta's linear baselines do ("centre and normalise", after Maiorca et al., NeurIPS 2023, "Latent Space
Translation via Semantic Alignment"). ``center="pairs", normalize=False`` reproduces
:func:`sotalign_jax.teachers.fit` exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from sotalign_jax import teachers
from sotalign_jax._arrays import DEFAULT_PRECISION
from sotalign_jax.aligners.base import (AlignData, Alignment, Base, Center, Stretch, check_queries, check_stretch,
                                        cosine, fit_scales, preprocess, register, select_base, side_mean, static_field,
                                        stretch_with_queries)

__all__ = ["LinearAlignment", "StretchedRidgeAlignment", "fit_lstsq", "fit_ridge", "fit_procrustes", "fit_cca"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LinearAlignment(Alignment):
  """Two maps into a shared ``k``-space, ``embed_x(x) = pre(x − m_x) W_x`` and ``embed_y(y) = pre(y − m_y) W_y``.

  Attributes:
    wx: ``[dx, k]``.
    wy: ``[dy, k]``, or ``None`` for the identity (x is mapped into y-space, ``k = dy``).
    mx: ``[dx]`` x-side centring vector.
    my: ``[dy]`` y-side centring vector.
    normalize: rows are scaled to unit norm after centring (static).
  """
  wx: jax.Array
  wy: jax.Array | None
  mx: jax.Array
  my: jax.Array
  normalize: bool = static_field(True)

  def _embed_x(self, x) -> jax.Array:
    x = check_queries(x, self.mx.shape[0], "x")
    return jnp.matmul(preprocess(x, self.mx, self.normalize), self.wx, precision=DEFAULT_PRECISION)

  def _embed_y(self, y) -> jax.Array:
    y = preprocess(check_queries(y, self.my.shape[0], "y"), self.my, self.normalize)
    return y if self.wy is None else jnp.matmul(y, self.wy, precision=DEFAULT_PRECISION)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StretchedRidgeAlignment(Alignment):
  r"""Ridge on stretched features: with :math:`\tilde x = (x - m_x) / s_x` (per-feature scales), the map
  :math:`W` is fitted on the stretched (and, with ``normalize``, unit-norm) pairs and
  :math:`s(x, y) = \cos(\hat{\tilde x} W, \hat{\tilde y})`. With ``stretch="fit"`` the scales are fixed at fit
  time (``embed_*`` work); with ``stretch="queries"`` they are the std over the pairs and the query set given to
  ``similarity``, so ``W`` is refitted at every call and ``embed_*`` raise.

  Attributes:
    pairs_x, pairs_y: ``[p, dx]``, ``[p, dy]`` centred base pairs, divided by ``sx`` / ``sy``.
    mx, my: ``[dx]``, ``[dy]`` centring vectors.
    sx, sy: ``[dx]``, ``[dy]`` fit-time scales (ones for ``stretch="queries"``).
    lam, normalize, whiten: options of :func:`fit_ridge` (static).
    stretch: ``"fit"`` or ``"queries"`` (static).
  """
  pairs_x: jax.Array
  pairs_y: jax.Array
  mx: jax.Array
  my: jax.Array
  sx: jax.Array
  sy: jax.Array
  lam: float = static_field(1e-2)
  normalize: bool = static_field(True)
  whiten: bool = static_field(False)
  stretch: str = static_field("fit")

  @property
  def has_embeddings(self) -> bool:
    return self.stretch != "queries"

  def _map(self, px, py) -> jax.Array:
    pre = lambda a: preprocess(a, 0.0, self.normalize)  # noqa: E731
    return teachers.ridge(pre(px), pre(py), lam=self.lam, center=False, whiten=self.whiten)

  def _embed_x(self, x) -> jax.Array:
    x = (check_queries(x, self.mx.shape[0], "x") - self.mx) / self.sx
    return jnp.matmul(preprocess(x, 0.0, self.normalize), self._map(self.pairs_x, self.pairs_y),
                      precision=DEFAULT_PRECISION)

  def _embed_y(self, y) -> jax.Array:
    return preprocess((check_queries(y, self.my.shape[0], "y") - self.my) / self.sy, 0.0, self.normalize)

  def _similarity(self, qx, ky) -> jax.Array:
    if self.stretch != "queries":
      return super()._similarity(qx, ky)
    px, qx = stretch_with_queries(self.pairs_x, check_queries(qx, self.mx.shape[0], "qx") - self.mx)
    py, ky = stretch_with_queries(self.pairs_y, check_queries(ky, self.my.shape[0], "ky") - self.my)
    ex = jnp.matmul(preprocess(qx, 0.0, self.normalize), self._map(px, py), precision=DEFAULT_PRECISION)
    return cosine(ex, preprocess(ky, 0.0, self.normalize))


def _prepared_pairs(data: AlignData, center: Center, normalize: bool):
  mx = side_mean(data.x, data.pairs_x, center)
  my = side_mean(data.y, data.pairs_y, center)
  return preprocess(data.pairs_x, mx, normalize), preprocess(data.pairs_y, my, normalize), mx, my


_MAIORCA = ("Maiorca et al., NeurIPS 2023, 'Latent Space Translation via Semantic Alignment' (as the few-pair "
            "baselines of Schnaus et al., unpaired-rosetta)")


@register("lstsq", needs_pairs=True, uses_unpaired=False, min_pairs=1, citation=_MAIORCA)
def fit_lstsq(key: jax.Array | None, data: AlignData, *, center: Center = "all", normalize: bool = True,
              rtol: float | None = None) -> LinearAlignment:
  r"""Least squares with the pseudo-inverse: the minimum-norm solution of :math:`\min_W \|\hat X W - \hat Y\|_F`,

  .. math::

    W = \hat X^{+} \hat Y,

  on the preprocessed pairs :math:`\hat X, \hat Y` (``[p, dx]``, ``[p, dy]``). Defined for any ``p >= 1``, also
  ``p < dx`` (then :math:`\hat X W = \hat Y` exactly and ``W`` has the least Frobenius norm).

  Args:
    key: unused (closed form).
    data: :class:`AlignData` with ``p >= 1`` pairs.
    center: ``"all"`` | ``"pairs"`` | ``"none"`` — the rows whose mean centres each side.
    normalize: scale centred rows to unit norm.
    rtol: singular values below ``rtol · σ_max`` are treated as zero (``None``: ``max(p, dx) · eps``, as
      ``jnp.linalg.pinv``).

  Returns:
    :class:`LinearAlignment` mapping x into y-space (``wy = None``).
  """
  del key
  x, y, mx, my = _prepared_pairs(data, center, normalize)
  w = jnp.matmul(jnp.linalg.pinv(x, rtol=rtol), y, precision=DEFAULT_PRECISION)
  return LinearAlignment(w, None, mx, my, normalize)


@register("ridge", needs_pairs=True, uses_unpaired=False, min_pairs=2,
          citation="Hoerl & Kennard, Technometrics 1970 (ridge regression); sotalign_jax.teachers.ridge")
def fit_ridge(key: jax.Array | None, data: AlignData, *, lam: float = 1e-2, center: Center = "all",
              normalize: bool = True, whiten: bool = False, stretch: Stretch = "none", base: Base = "all",
              n_base: int | None = None, cluster_side: Literal["x", "y"] = "x",
              cluster_iter: int = 50) -> LinearAlignment | StretchedRidgeAlignment:
  r"""Ridge regression from x into y-space, :math:`W = \arg\min_W \|\hat XW - \hat Y\|_F^2 + \lambda\|W\|_F^2`
  (:func:`sotalign_jax.teachers.ridge`, primal or dual form), on the preprocessed pairs.

  With ``center="none", normalize=False`` this is the match experiment's ``linreg`` baseline
  (:func:`sotalign_jax.matching.linreg_scores`); its variants are ``stretch="queries"`` and ``base="cluster"``
  (:mod:`sotalign_jax.aligners.matching`).

  Args:
    key: PRNG key of ``base="cluster"``'s k-means (unused otherwise; ``None`` is accepted then).
    data: :class:`AlignData` with ``p >= 2`` pairs.
    lam: ridge penalty λ > 0 (default 1e-2, the teachers' default; rows have unit norm when ``normalize``).
    center: see :func:`fit_lstsq`.
    normalize: see :func:`fit_lstsq`.
    whiten: regress from ZCA-whitened x (``teachers.ridge(whiten=True)``; the whitening uses the pairs).
    stretch: divide every centred feature by its std over the ``"fit"`` rows (unpaired + pairs) or over the pairs
      and the ``"queries"`` given to ``similarity`` (the paper's stretching; ``W`` is then refitted at every call,
      the scores of a row depend on the other rows of its set, and ``embed_*`` raise), or ``"none"``
      (:class:`LinearAlignment`; otherwise :class:`StretchedRidgeAlignment`).
    base: ``"all"`` pairs, or ``"cluster"``: the ``n_base`` pairs nearest to k-means centroids
      (:func:`sotalign_jax.aligners.matching.select_base`).
    n_base: pairs kept by ``base="cluster"`` (capped at ``p``).
    cluster_side: rows k-means clusters, ``"x"`` | ``"y"``.
    cluster_iter: Lloyd iterations.
  """
  check_stretch(stretch)
  data = select_base(key, data, base=base, n_base=n_base, cluster_side=cluster_side, cluster_iter=cluster_iter,
                     min_n=2)
  if stretch == "none":
    x, y, mx, my = _prepared_pairs(data, center, normalize)
    return LinearAlignment(teachers.ridge(x, y, lam=lam, center=False, whiten=whiten), None, mx, my, normalize)
  x, y, mx, my = _prepared_pairs(data, center, False)
  sx, sy = fit_scales(data, stretch)
  return StretchedRidgeAlignment(x / sx, y / sy, mx, my, sx, sy, lam, bool(normalize), bool(whiten), stretch)


@register("procrustes", needs_pairs=True, uses_unpaired=False, min_pairs=2,
          citation="Schönemann, Psychometrika 1966 (orthogonal Procrustes); " + _MAIORCA)
def fit_procrustes(key: jax.Array | None, data: AlignData, *, center: Center = "all",
                   normalize: bool = True) -> LinearAlignment:
  r"""Orthogonal Procrustes, :math:`W = \arg\min_{W^\top W = I} \|\hat XW - \hat Y\|_F = UV^\top` with
  :math:`\hat X^\top \hat Y = USV^\top` (semi-orthogonal if ``dx ≠ dy``; :func:`sotalign_jax.teachers.procrustes`).

  Args:
    key: unused.
    data: :class:`AlignData` with ``p >= 2`` pairs.
    center: see :func:`fit_lstsq`.
    normalize: see :func:`fit_lstsq`.
  """
  del key
  x, y, mx, my = _prepared_pairs(data, center, normalize)
  return LinearAlignment(teachers.procrustes(x, y, center=False), None, mx, my, normalize)


@register("cca", needs_pairs=True, uses_unpaired=False, min_pairs=2,
          citation="Hotelling, Biometrika 1936 (CCA); regularised as sotalign_jax.teachers.cca")
def fit_cca(key: jax.Array | None, data: AlignData, *, dim: int | None = None, reg: float = 0.1, center: Center = "all",
            normalize: bool = True) -> LinearAlignment:
  r"""Regularised CCA of the preprocessed pairs (:func:`sotalign_jax.teachers.cca`):

  .. math::

    M = (\Sigma_{xx}+\lambda I)^{-1/2}\Sigma_{xy}(\Sigma_{yy}+\lambda I)^{-1/2} = USV^\top,\quad
    W_x = (\Sigma_{xx}+\lambda I)^{-1/2}U_{:, :k},\quad W_y = (\Sigma_{yy}+\lambda I)^{-1/2}V_{:, :k}.

  Args:
    key: unused.
    data: :class:`AlignData` with ``p >= 2`` pairs.
    dim: shared dimension ``k``, capped at ``min(p − 1, dx, dy)`` so one setting works across a few-pair sweep;
      ``None``: ``min(p − 1, dx, dy, 512)`` (as :func:`sotalign_jax.teachers.fit`).
    reg: λ added to both covariances (default 0.1, the teachers' default).
    center: see :func:`fit_lstsq`.
    normalize: see :func:`fit_lstsq`.
  """
  del key
  x, y, mx, my = _prepared_pairs(data, center, normalize)
  cap = min(x.shape[0] - 1, x.shape[1], y.shape[1])
  k = min(cap, 512) if dim is None else min(int(dim), cap)
  if dim is not None and int(dim) < 1:
    raise ValueError(f"dim must be >= 1 or None, got {dim!r}")
  wx, wy = teachers.cca(x, y, dim=k, reg=reg, center=False)
  return LinearAlignment(wx, wy, mx, my, normalize)
