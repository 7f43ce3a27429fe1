r"""Training-free aligners that keep the pairs as anchors: relative representations, ASIF, local CKA retrieval.

Nothing is optimised: the fitted :class:`~sotalign_jax.aligners.base.Alignment` stores the (preprocessed) anchor
pairs and scores queries against keys through them.

* ``relative`` — Moschella et al., ICLR 2023: :math:`r(x) = (\cos(x, a^x_k))_{k \le p}`, compared by cosine.
* ``asif`` — Norelli et al., NeurIPS 2023: the same cosines, sparsified to the top ``k``, raised to a power and
  normalised, compared by inner product.
* ``local_cka`` — Maniparambil et al., CVPR 2024: :math:`s_{ij} = \mathrm{CKA}([A_x; x_i], [A_y; y_j])`; a scorer
  without a shared space (``embed_*`` raise).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sotalign_jax import cka as cka_lib
from sotalign_jax import matching
from sotalign_jax._arrays import DEFAULT_PRECISION, unit
from sotalign_jax.aligners.base import (AlignData, Alignment, Base, Center, Stretch, check_queries, check_stretch,
                                        cosine, fit_scales, register, select_base, side_mean, static_field,
                                        stretch_with_queries)

__all__ = ["RelativeAlignment", "ASIFAlignment", "LocalCKAAlignment", "fit_relative", "fit_asif", "fit_local_cka",
           "asif_representation"]


# ----------------------------------------------------------------------------------------------------------------
# Relative representations.
# ----------------------------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RelativeAlignment(Alignment):
  r"""``embed_x(x) = cos((x − m_x) / s_x, A_x)``, ``embed_y(y) = cos((y − m_y) / s_y, A_y)`` (``[n, p]``); cosine
  similarity. With ``stretch="queries"`` the anchors and queries are stretched together at every ``similarity``
  call, so there are no embeddings (``embed_*`` raise).

  Attributes:
    anchors_x: ``[p, dx]`` centred x-anchors (the base pairs' x-rows), divided by ``sx``.
    anchors_y: ``[p, dy]`` centred y-anchors, divided by ``sy``.
    mx: ``[dx]`` x-side centring vector.
    my: ``[dy]`` y-side centring vector.
    sx, sy: ``[dx]``, ``[dy]`` fit-time feature scales (ones unless ``stretch="fit"``).
    stretch: ``"none"`` | ``"fit"`` | ``"queries"`` (static).
  """
  anchors_x: jax.Array
  anchors_y: jax.Array
  mx: jax.Array
  my: jax.Array
  sx: jax.Array
  sy: jax.Array
  stretch: str = static_field("none")

  @property
  def has_embeddings(self) -> bool:
    return self.stretch != "queries"

  def _centred_x(self, x) -> jax.Array:
    return (check_queries(x, self.mx.shape[0], "x") - self.mx) / self.sx

  def _centred_y(self, y) -> jax.Array:
    return (check_queries(y, self.my.shape[0], "y") - self.my) / self.sy

  def _embed_x(self, x) -> jax.Array:
    return cosine(self._centred_x(x), self.anchors_x)

  def _embed_y(self, y) -> jax.Array:
    return cosine(self._centred_y(y), self.anchors_y)

  def _similarity(self, qx, ky) -> jax.Array:
    if self.stretch != "queries":
      return cosine(self._embed_x(qx), self._embed_y(ky))
    ax, qx = stretch_with_queries(self.anchors_x, self._centred_x(qx))
    ay, ky = stretch_with_queries(self.anchors_y, self._centred_y(ky))
    return cosine(cosine(qx, ax), cosine(ky, ay))


def _anchors(data: AlignData, center: Center):
  mx = side_mean(data.x, data.pairs_x, center)
  my = side_mean(data.y, data.pairs_y, center)
  return data.pairs_x - mx, data.pairs_y - my, mx, my


@register("relative", needs_pairs=True, uses_unpaired=False, min_pairs=1,
          citation="Moschella et al., ICLR 2023, 'Relative representations enable zero-shot latent space "
                   "communication'")
def fit_relative(key: jax.Array | None, data: AlignData, *, center: Center = "all", stretch: Stretch = "none",
                 base: Base = "all", n_base: int | None = None, cluster_side: Literal["x", "y"] = "x",
                 cluster_iter: int = 50) -> RelativeAlignment:
  r"""Relative representations with the (base) pairs as anchors:

  .. math::

    r_x(x) = \big(\cos(x - m_x,\, a^x_k - m_x)\big)_{k=1}^{p},\qquad s(x, y) = \cos\big(r_x(x), r_y(y)\big).

  With ``center="none"`` this is :func:`sotalign_jax.matching.relative_scores` (the match experiment's
  ``relrep``; ``stretch="queries"`` and ``base="cluster"`` are its variants, see
  :mod:`sotalign_jax.aligners.matching`).

  Args:
    key: PRNG key of ``base="cluster"``'s k-means (unused otherwise; ``None`` is accepted then).
    data: :class:`AlignData` with ``p >= 1`` pairs.
    center: rows whose mean centres each side before the cosines (see :mod:`sotalign_jax.aligners.base`).
    stretch: divide every feature by its std over ``"fit"`` (unpaired + pairs) or ``"queries"`` (the anchors and
      the query set given to ``similarity``: the paper's stretching; the scores of a row then depend on the other
      rows of its set, and ``embed_*`` raise) rows, or ``"none"``.
    base: ``"all"`` pairs are anchors, or ``"cluster"``: the ``n_base`` pairs nearest to k-means centroids
      (:func:`sotalign_jax.aligners.matching.select_base`).
    n_base: anchors kept by ``base="cluster"`` (capped at ``p``).
    cluster_side: rows k-means clusters, ``"x"`` | ``"y"``.
    cluster_iter: Lloyd iterations.
  """
  check_stretch(stretch)
  data = select_base(key, data, base=base, n_base=n_base, cluster_side=cluster_side, cluster_iter=cluster_iter)
  ax, ay, mx, my = _anchors(data, center)
  sx, sy = fit_scales(data, stretch)
  return RelativeAlignment(ax / sx, ay / sy, mx, my, sx, sy, stretch)


# ----------------------------------------------------------------------------------------------------------------
# ASIF.
# ----------------------------------------------------------------------------------------------------------------
def asif_representation(x: ArrayLike, anchors: ArrayLike, *, k: int, power: int | float,
                        clip_negative: bool = True) -> jax.Array:
  r"""ASIF's sparse relative representation of the rows of ``x`` (Norelli et al., NeurIPS 2023, Sec. 3):

  .. math::

    c_k = \cos(x, a_k),\qquad \tilde c_k = \begin{cases} \max(c_k, 0)^{\,p} & k \in \operatorname{top}_k(c)
    \\ 0 & \text{otherwise}\end{cases},\qquad r(x) = \tilde c / \|\tilde c\|_2.

  Args:
    x: ``[n, d]`` rows (already centred as the anchors are).
    anchors: ``[m, d]`` anchors of the same space.
    k: entries kept per row, ``1 <= k``; capped at ``m``.
    power: exponent ``p`` (> 0; an integer unless ``clip_negative``).
    clip_negative: set negative cosines to zero before the power, so that an even power cannot turn a dissimilar
      anchor into a similar one (as unpaired-rosetta's ASIF; it matters when ``k`` keeps negative cosines, e.g.
      ``k >= m`` on centred data). ``False`` is the official code's plain power.

  Returns:
    ``[n, m]`` rows of unit norm (all-zero rows stay zero).
  """
  c = cosine(x, anchors)
  k = min(int(k), c.shape[1])
  if k < c.shape[1]:
    vals, idx = jax.lax.top_k(c, k)
    c = jnp.zeros_like(c).at[jnp.arange(c.shape[0])[:, None], idx].set(vals)
  if clip_negative:
    c = jnp.maximum(c, 0.0)
  return unit(c ** power)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ASIFAlignment(Alignment):
  """``embed_*`` = :func:`asif_representation` against the side's anchors (``[n, p]``); inner-product similarity.

  Attributes:
    anchors_x, anchors_y: ``[p, dx]``, ``[p, dy]`` centred anchors.
    mx, my: centring vectors.
    k: entries kept per row, already capped at ``p`` (static).
    power: exponent (static).
    clip_negative: see :func:`asif_representation` (static).
  """
  anchors_x: jax.Array
  anchors_y: jax.Array
  mx: jax.Array
  my: jax.Array
  k: int = static_field(800)
  power: int | float = static_field(8)
  clip_negative: bool = static_field(True)

  def _embed_x(self, x) -> jax.Array:
    x = check_queries(x, self.mx.shape[0], "x") - self.mx
    return asif_representation(x, self.anchors_x, k=self.k, power=self.power, clip_negative=self.clip_negative)

  def _embed_y(self, y) -> jax.Array:
    y = check_queries(y, self.my.shape[0], "y") - self.my
    return asif_representation(y, self.anchors_y, k=self.k, power=self.power, clip_negative=self.clip_negative)

  def _similarity(self, qx, ky) -> jax.Array:
    return jnp.matmul(self._embed_x(qx), self._embed_y(ky).T, precision=DEFAULT_PRECISION)


@register("asif", needs_pairs=True, uses_unpaired=False, min_pairs=1,
          citation="Norelli et al., NeurIPS 2023, 'ASIF: Coupled Data Turns Unimodal Models to Multimodal Without "
                   "Training'")
def fit_asif(key: jax.Array | None, data: AlignData, *, k: int = 800, power: int | float = 8,
             clip_negative: bool = True, center: Center = "all") -> ASIFAlignment:
  r"""ASIF with the pairs as the coupled anchors: :math:`s(x, y) = \langle r_x(x), r_y(y)\rangle` with
  :func:`asif_representation` on each side.

  Defaults ``k = 800`` non-zero entries and exponent ``p = 8`` are ASIF's (the ``non_zeros`` / ``val_exp`` of the
  official code, as carried over by unpaired-rosetta's port); ``k`` is capped at the number of pairs, so with
  ``p <= 800`` pairs every anchor is kept and only the power sparsifies.

  Args:
    key: unused.
    data: :class:`AlignData` with ``p >= 1`` pairs.
    k: entries kept per relative representation (capped at the number of pairs).
    power: exponent applied to the kept cosines.
    clip_negative: zero negative cosines before the power (see :func:`asif_representation`).
    center: rows whose mean centres each side (see :mod:`sotalign_jax.aligners.base`).
  """
  del key
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive integer, got {k!r}")
  if not power > 0:
    raise ValueError(f"power must be > 0, got {power!r}")
  if not clip_negative and float(power) != int(power):
    raise ValueError(f"a non-integer power ({power}) needs clip_negative=True (negative cosines have no real power)")
  ax, ay, mx, my = _anchors(data, center)
  return ASIFAlignment(ax, ay, mx, my, min(int(k), data.n_pairs), power, bool(clip_negative))


# ----------------------------------------------------------------------------------------------------------------
# Local CKA.
# ----------------------------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LocalCKAAlignment(Alignment):
  r"""Local CKA scorer, :math:`s_{ij} = \mathrm{CKA}([A_x; x_i / \sigma_x], [A_y; y_j / \sigma_y])`
  (:func:`sotalign_jax.matching.local_cka_scores`); there is no shared space, so ``embed_*`` raise.

  Attributes:
    anchors_x, anchors_y: ``[p, dx]``, ``[p, dy]`` stretched anchors (pairs divided by the feature scales).
    sx, sy: ``[dx]``, ``[dy]`` per-feature scales (standard deviations, or ones).
    bandwidth_x, bandwidth_y: RBF bandwidths (scalars; ignored by the linear kernel, and by ``stretch="queries"``,
      which takes the median heuristic of the anchors stretched with the queries).
    kernel: ``"linear"`` or ``"rbf"`` (static).
    stretch: ``"queries"``: anchors and queries are stretched together at every call (static).
  """
  has_embeddings = False
  anchors_x: jax.Array
  anchors_y: jax.Array
  sx: jax.Array
  sy: jax.Array
  bandwidth_x: jax.Array
  bandwidth_y: jax.Array
  kernel: str = static_field("linear")
  stretch: str = static_field("fit")

  def _similarity(self, qx, ky) -> jax.Array:
    qx = check_queries(qx, self.sx.shape[0], "qx") / self.sx
    ky = check_queries(ky, self.sy.shape[0], "ky") / self.sy
    if self.stretch == "queries":  # the match experiment's stretching: bandwidths from the stretched anchors
      ax, qx = stretch_with_queries(self.anchors_x, qx)
      ay, ky = stretch_with_queries(self.anchors_y, ky)
      return matching.local_cka_scores(ax, ay, qx, ky, kernel=self.kernel)
    rbf = self.kernel == "rbf"
    return matching.local_cka_scores(self.anchors_x, self.anchors_y, qx, ky, kernel=self.kernel,
                                     bandwidth_x=self.bandwidth_x if rbf else None,
                                     bandwidth_y=self.bandwidth_y if rbf else None)


@register("local_cka", needs_pairs=True, uses_unpaired=False, min_pairs=2,
          citation="Maniparambil et al., CVPR 2024, 'Do Vision and Language Encoders Represent the World "
                   "Similarly?' (localized CKA retrieval)")
def fit_local_cka(key: jax.Array | None, data: AlignData, *, kernel: Literal["linear", "rbf"] = "linear",
                  stretch: Stretch = "fit", base: Base = "all", n_base: int | None = None,
                  cluster_side: Literal["x", "y"] = "x", cluster_iter: int = 50) -> LocalCKAAlignment:
  r"""Local CKA retrieval with the (base) pairs as the base set: query ``x_i`` and key ``y_j`` score the (biased,
  linear or RBF) CKA of the base kernels bordered by them (closed form in
  :func:`sotalign_jax.matching.local_cka_scores`). The match experiment's ``localcka_*`` methods are
  ``stretch="none" | "queries"`` × ``base="all" | "cluster"`` (:mod:`sotalign_jax.aligners.matching`).

  Args:
    key: PRNG key of ``base="cluster"``'s k-means (unused otherwise; ``None`` is accepted then).
    data: :class:`AlignData` with ``p >= 2`` pairs.
    kernel: ``"linear"`` (the paper's default) or ``"rbf"`` (bandwidths: median heuristic on the stretched pairs).
    stretch: divide every feature by its standard deviation over the ``"fit"`` rows of its side (unpaired and
      paired: the paper's "stretching", Sec. 4.3, estimated without the test queries), over the base pairs and the
      ``"queries"`` given to ``similarity`` (the paper's own estimate; the scores of a row then depend on the other
      rows of its set), or ``"none"``. CKA needs no centring.
    base: ``"all"`` pairs form the base set, or ``"cluster"``: the ``n_base`` pairs nearest to k-means centroids
      (:func:`sotalign_jax.aligners.matching.select_base`).
    n_base: base pairs kept by ``base="cluster"`` (capped at ``p``).
    cluster_side: rows k-means clusters, ``"x"`` | ``"y"``.
    cluster_iter: Lloyd iterations.
  """
  if kernel not in ("linear", "rbf"):
    raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
  check_stretch(stretch)
  data = select_base(key, data, base=base, n_base=n_base, cluster_side=cluster_side, cluster_iter=cluster_iter,
                     min_n=2)
  sx, sy = fit_scales(data, stretch)
  ax, ay = data.pairs_x / sx, data.pairs_y / sy
  if kernel == "rbf":
    bx, by = cka_lib.median_bandwidth(ax), cka_lib.median_bandwidth(ay)
  else:
    bx = by = jnp.float32(1.0)
  return LocalCKAAlignment(ax, ay, sx, sy, jnp.asarray(bx, jnp.float32), jnp.asarray(by, jnp.float32), kernel,
                           stretch)
