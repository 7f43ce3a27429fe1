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

from sotalign_jax import cka as cka_lib
from sotalign_jax import matching
from sotalign_jax._arrays import DEFAULT_PRECISION, unit
from sotalign_jax.aligners.base import (AlignData, Alignment, Center, check_queries, cosine, register, side_mean,
                                        static_field)

__all__ = ["RelativeAlignment", "ASIFAlignment", "LocalCKAAlignment", "fit_relative", "fit_asif", "fit_local_cka",
           "asif_representation"]


# ----------------------------------------------------------------------------------------------------------------
# Relative representations.
# ----------------------------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RelativeAlignment(Alignment):
  r"""``embed_x(x) = cos(x − m_x, A_x)``, ``embed_y(y) = cos(y − m_y, A_y)`` (``[n, p]``); cosine similarity.

  Attributes:
    anchors_x: ``[p, dx]`` centred x-anchors (the pairs' x-rows).
    anchors_y: ``[p, dy]`` centred y-anchors.
    mx: ``[dx]`` x-side centring vector.
    my: ``[dy]`` y-side centring vector.
  """
  anchors_x: jax.Array
  anchors_y: jax.Array
  mx: jax.Array
  my: jax.Array

  def _embed_x(self, x) -> jax.Array:
    return cosine(check_queries(x, self.mx.shape[0], "x") - self.mx, self.anchors_x)

  def _embed_y(self, y) -> jax.Array:
    return cosine(check_queries(y, self.my.shape[0], "y") - self.my, self.anchors_y)


def _anchors(data: AlignData, center: Center):
  mx = side_mean(data.x, data.pairs_x, center)
  my = side_mean(data.y, data.pairs_y, center)
  return data.pairs_x - mx, data.pairs_y - my, mx, my


@register("relative", needs_pairs=True, uses_unpaired=False, min_pairs=1,
          citation="Moschella et al., ICLR 2023, 'Relative representations enable zero-shot latent space "
                   "communication'")
def fit_relative(key, data: AlignData, *, center: Center = "all") -> RelativeAlignment:
  r"""Relative representations with the pairs as anchors:

  .. math::

    r_x(x) = \big(\cos(x - m_x,\, a^x_k - m_x)\big)_{k=1}^{p},\qquad s(x, y) = \cos\big(r_x(x), r_y(y)\big).

  With ``center="none"`` this is :func:`sotalign_jax.matching.relative_scores`.

  Args:
    key: unused.
    data: :class:`AlignData` with ``p >= 1`` pairs.
    center: rows whose mean centres each side before the cosines (see :mod:`sotalign_jax.aligners.base`).
  """
  del key
  return RelativeAlignment(*_anchors(data, center))


# ----------------------------------------------------------------------------------------------------------------
# ASIF.
# ----------------------------------------------------------------------------------------------------------------
def asif_representation(x, anchors, *, k: int, power: int | float, clip_negative: bool = True) -> jax.Array:
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
def fit_asif(key, data: AlignData, *, k: int = 800, power: int | float = 8, clip_negative: bool = True,
             center: Center = "all") -> ASIFAlignment:
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
    bandwidth_x, bandwidth_y: RBF bandwidths (scalars; ignored by the linear kernel).
    kernel: ``"linear"`` or ``"rbf"`` (static).
  """
  has_embeddings = False
  anchors_x: jax.Array
  anchors_y: jax.Array
  sx: jax.Array
  sy: jax.Array
  bandwidth_x: jax.Array
  bandwidth_y: jax.Array
  kernel: str = static_field("linear")

  def _similarity(self, qx, ky) -> jax.Array:
    qx = check_queries(qx, self.sx.shape[0], "qx") / self.sx
    ky = check_queries(ky, self.sy.shape[0], "ky") / self.sy
    rbf = self.kernel == "rbf"
    return matching.local_cka_scores(self.anchors_x, self.anchors_y, qx, ky, kernel=self.kernel,
                                     bandwidth_x=self.bandwidth_x if rbf else None,
                                     bandwidth_y=self.bandwidth_y if rbf else None)


def _feature_scale(unpaired: jax.Array, paired: jax.Array) -> jax.Array:
  rows = jnp.concatenate([unpaired, paired])
  if rows.shape[0] < 2:
    return jnp.ones((rows.shape[1],), rows.dtype)
  sd = jnp.std(rows, axis=0, ddof=1)
  return jnp.where(sd > 0, sd, 1.0)


@register("local_cka", needs_pairs=True, uses_unpaired=False, min_pairs=2,
          citation="Maniparambil et al., CVPR 2024, 'Do Vision and Language Encoders Represent the World "
                   "Similarly?' (localized CKA retrieval)")
def fit_local_cka(key, data: AlignData, *, kernel: Literal["linear", "rbf"] = "linear",
                  stretch: bool = True) -> LocalCKAAlignment:
  r"""Local CKA retrieval with the pairs as the base set: query ``x_i`` and key ``y_j`` score the (biased, linear
  or RBF) CKA of the base kernels bordered by them (closed form in :func:`sotalign_jax.matching.local_cka_scores`).

  Args:
    key: unused.
    data: :class:`AlignData` with ``p >= 2`` pairs.
    kernel: ``"linear"`` (the paper's default) or ``"rbf"`` (bandwidths: median heuristic on the stretched pairs).
    stretch: divide every feature by its standard deviation over the training rows of its side (unpaired and
      paired; the paper's "stretching", Sec. 4.3, estimated without the test queries). CKA needs no centring.
  """
  del key
  if kernel not in ("linear", "rbf"):
    raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
  dx, dy = data.dims
  sx = _feature_scale(data.x, data.pairs_x) if stretch else jnp.ones((dx,), jnp.float32)
  sy = _feature_scale(data.y, data.pairs_y) if stretch else jnp.ones((dy,), jnp.float32)
  ax, ay = data.pairs_x / sx, data.pairs_y / sy
  if kernel == "rbf":
    bx, by = cka_lib.median_bandwidth(ax), cka_lib.median_bandwidth(ay)
  else:
    bx = by = jnp.float32(1.0)
  return LocalCKAAlignment(ax, ay, sx, sy, jnp.asarray(bx, jnp.float32), jnp.asarray(by, jnp.float32), kernel)
