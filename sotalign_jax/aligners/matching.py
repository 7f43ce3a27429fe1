r"""Training-free *matching* (Maniparambil et al., CVPR 2024) as registry aligners: seeded graph matching (``qap``)
and the base-pair options shared with the score-based aligners.

The paper matches ``q`` query images to their ``q`` captions from ``m`` paired *base* samples with four families,
each × how the base pairs are prepared. Every family is one registered aligner (one implementation per scorer):

==============  ====================================================  ======================================
match family    aligner                                               scores
==============  ====================================================  ======================================
``qap``         ``qap`` (this module; *transductive*)                 1 at the FAQ matching, 0 elsewhere
``localcka``    ``local_cka`` (:mod:`~.training_free`)                local CKA of the bordered base kernels
``linreg``      ``ridge`` with ``center="none", normalize=False``     cosine after the ridge map of the base
``relrep``      ``relative`` with ``center="none"``                   cosine of relative representations
==============  ====================================================  ======================================

The base-pair variants are options of each of them:

* ``stretch`` — every feature divided by its standard deviation (:func:`sotalign_jax.matching.stretch`):
  ``"queries"`` estimates it on the base pairs **and the query set** given to ``similarity`` (the paper's
  "stretching", Sec. 4.3; it makes the scores of a row depend on the other query rows), ``"fit"`` on the rows the
  method is fitted on (unpaired + pairs: inductive), ``"none"`` not at all.
* ``base`` — ``"all"``: every given pair is a base pair; ``"cluster"``: the ``n_base`` pairs nearest to the
  centroids of k-means on the pairs' x-rows (or y-rows, ``cluster_side="y"``;
  :func:`sotalign_jax.matching.kmeans_base_selection`, seeded by the fit's ``key``).

Both are implemented once, in :mod:`sotalign_jax.aligners.base` (:func:`~.base.select_base`,
:func:`~.base.fit_scales`, :func:`~.base.stretch_with_queries`).

:data:`MATCH_METHODS` translates the match experiment's method names (``qap_both``, ``localcka_stretch``,
``linreg``, …; the former ``matching.METHODS``) into ``(aligner, hparams)``.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sotalign_jax import matching as match_lib
from sotalign_jax.aligners.base import (AlignData, Alignment, Base, Stretch, check_queries, check_stretch, fit_scales,
                                        register, select_base, static_field, stretch_with_queries)

__all__ = ["QAPAlignment", "fit_qap", "MATCH_METHODS", "restart_batch"]

# ----------------------------------------------------------------------------------------------------------------
# Seeded graph matching.
# ----------------------------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QAPAlignment(Alignment):
  r"""Seeded graph matching of two equal-size query sets (:func:`sotalign_jax.matching.qap_match`); transductive.

  ``similarity(qx, ky)`` matches the ``n`` x-queries to the ``n`` y-queries as one problem and returns the
  permutation matrix, :math:`S_{ij} = [\pi(i) = j]`, so retrieval R@1 is the matching accuracy (ranks beyond the
  first are ties). It runs eagerly (FAQ's assignment steps call the host), not under ``jit``, and is deterministic:
  the restarts are drawn from the stored ``key``.

  Attributes:
    base_x, base_y: ``[m, dx]``, ``[m, dy]`` base pairs (the seeds), divided by ``sx`` / ``sy``.
    sx, sy: ``[dx]``, ``[dy]`` fit-time feature scales (ones unless ``stretch="fit"``).
    key: PRNG key of the FAQ restarts (a leaf).
    kernel, n_init, maxiter, tol, batch_size, lap: options of :func:`sotalign_jax.matching.qap_match` (static).
    stretch: ``"queries"`` stretches base and queries together at every call (static).
    mesh: device mesh the restarts are split over, or ``None`` (static).
  """
  has_embeddings = False
  base_x: jax.Array
  base_y: jax.Array
  sx: jax.Array
  sy: jax.Array
  key: jax.Array
  kernel: str = static_field("rbf")
  n_init: int = static_field(100)
  maxiter: int = static_field(30)
  tol: float = static_field(1e-5)
  batch_size: int | None = static_field(None)
  lap: str = static_field("scipy")
  stretch: str = static_field("none")
  mesh: object = static_field(None)

  def similarity(self, qx, ky) -> jax.Array:
    """``[n, n]`` 0/1 matrix of the matching of ``qx`` (``[n, dx]``) to ``ky`` (``[n, dy]``); eager."""
    return self._similarity(qx, ky)

  def _similarity(self, qx, ky) -> jax.Array:
    qx = check_queries(qx, self.sx.shape[0], "qx") / self.sx
    ky = check_queries(ky, self.sy.shape[0], "ky") / self.sy
    if qx.shape[0] != ky.shape[0]:
      raise ValueError(f"QAP matches equal-size query sets one to one: got {qx.shape[0]} x-rows and {ky.shape[0]} "
                       "y-rows")
    xb, yb = self.base_x, self.base_y
    if self.stretch == "queries":
      xb, qx = stretch_with_queries(xb, qx)
      yb, ky = stretch_with_queries(yb, ky)
    perm = match_lib.qap_match(xb, yb, qx, ky, kernel=self.kernel, n_init=self.n_init, key=self.key,
                               maxiter=self.maxiter, tol=self.tol, batch_size=self.batch_size, lap=self.lap,
                               mesh=self.mesh)
    n = qx.shape[0]
    return jnp.zeros((n, n), jnp.float32).at[jnp.arange(n), jnp.asarray(perm)].set(1.0)


@register("qap", needs_pairs=True, uses_unpaired=False, min_pairs=2, transductive=True,
          citation="Maniparambil et al., CVPR 2024, 'Do Vision and Language Encoders Represent the World "
                   "Similarly?' (seeded graph matching, FAQ: Vogelstein et al. 2015, Fishkind et al. 2019)")
def fit_qap(key: jax.Array | None, data: AlignData, *, kernel: Literal["rbf", "linear"] = "rbf", n_init: int = 100,
            maxiter: int = 30, tol: float = 1e-5, batch_size: int | None = None,
            lap: Literal["scipy", "hungarian"] = "scipy", stretch: Stretch = "none", base: Base = "all",
            n_base: int | None = None, cluster_side: Literal["x", "y"] = "x", cluster_iter: int = 50,
            mesh: Mesh | None = None) -> QAPAlignment:
  r"""Seeded graph matching with the pairs as seeds. The graphs are the centred, normalised kernels
  :math:`\bar K_X` of ``[base_x; qx]`` and :math:`\bar K_Y` of ``[base_y; ky]``; FAQ maximises

  .. math::

    \operatorname{tr}(\bar K_X P \bar K_Y P^\top)\quad\text{over permutations } P \text{ fixing the seeds},

  i.e. the CKA of the matched sets, from ``n_init`` random restarts. Transductive (``AlignerSpec.transductive``):
  ``similarity(qx, ky)`` needs ``qx`` and ``ky`` of equal size and returns the 0/1 matching matrix; there is no
  embedding.

  Args:
    key: PRNG key (required): ``base="cluster"`` seeds k-means with it, the FAQ restarts use
      ``jax.random.fold_in(key, 1)`` (stored in the alignment, so ``similarity`` is deterministic).
    data: :class:`AlignData` with ``p >= 2`` pairs (the unpaired rows only enter ``stretch="fit"``).
    kernel: ``"rbf"`` (the paper's; median-heuristic bandwidth per space) or ``"linear"``.
    n_init: FAQ random restarts (the paper uses 500).
    maxiter: Frank–Wolfe iterations per restart.
    tol: FAQ stopping tolerance.
    batch_size: restarts per batched call (memory), see :func:`sotalign_jax.qap.faq`; with ``mesh`` a multiple
      of its device count.
    lap: FAQ's assignment step, ``"scipy"`` (host callback) or ``"hungarian"`` (pure XLA).
    stretch: ``"none"`` | ``"queries"`` (base + the two query sets, the paper's) | ``"fit"`` (unpaired + pairs).
    base: ``"all"`` | ``"cluster"`` (see :func:`select_base`).
    n_base: base pairs kept by ``base="cluster"``.
    cluster_side: rows k-means clusters, ``"x"`` | ``"y"``.
    cluster_iter: Lloyd iterations.
    mesh: (injected) device mesh to split the restarts over.
  """
  if key is None:
    raise ValueError("aligner 'qap' needs a PRNG key (jax.random.key(seed)) for its FAQ restarts")
  if kernel not in ("rbf", "linear"):
    raise ValueError(f"kernel must be 'rbf' or 'linear', got {kernel!r}")
  if lap not in ("scipy", "hungarian"):
    raise ValueError(f"lap must be 'scipy' or 'hungarian', got {lap!r}")
  if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
    raise ValueError(f"n_init must be a positive integer, got {n_init!r}")
  check_stretch(stretch)
  data = select_base(key, data, base=base, n_base=n_base, cluster_side=cluster_side, cluster_iter=cluster_iter,
                     min_n=2)
  sx, sy = fit_scales(data, stretch)
  if mesh is not None and batch_size is not None:
    batch_size = restart_batch(int(n_init), int(batch_size), int(mesh.devices.size))
  return QAPAlignment(jnp.asarray(data.pairs_x) / sx, jnp.asarray(data.pairs_y) / sy, sx, sy,
                      jax.random.fold_in(key, 1), kernel, int(n_init), int(maxiter), float(tol),
                      None if batch_size is None else int(batch_size), lap, stretch, mesh)


def restart_batch(n_init: int, batch_size: int, n_devices: int) -> int:
  """Restarts per FAQ call when each call's restarts are split over ``n_devices`` devices.

  :func:`sotalign_jax.qap.faq` needs the batch to be a multiple of the device count; this rounds ``batch_size``
  (at most ``n_init``) down to one (never above the memory asked for), or up to ``n_devices`` when it is smaller
  (faq pads the one batch and drops the padding). Which restarts run does not depend on it (restart ``i`` always
  starts from the ``i``-th split of the key), so any device count gives the same matching.
  """
  if n_devices == 1:
    return batch_size
  b = min(batch_size, n_init)
  return b - b % n_devices or n_devices


# ----------------------------------------------------------------------------------------------------------------
# The match experiment's method names.
# ----------------------------------------------------------------------------------------------------------------
def _match_methods() -> Mapping[str, tuple[str, Mapping]]:
  family = {"qap": ("qap", {}), "localcka": ("local_cka", {}), "linreg": ("ridge", {"center": "none",
                                                                                     "normalize": False}),
            "relrep": ("relative", {"center": "none"})}
  variant = {"none": {"stretch": "none"}, "stretch": {"stretch": "queries"}, "cluster": {"stretch": "none",
                                                                                         "base": "cluster"},
             "both": {"stretch": "queries", "base": "cluster"}}
  out = {}
  for f, (name, opts) in family.items():
    for v, vopts in variant.items():
      method = f if f in ("linreg", "relrep") and v == "none" else f"{f}_{v}"
      out[method] = (name, MappingProxyType({**opts, **vopts}))
  return MappingProxyType(out)


MATCH_METHODS: Mapping[str, tuple[str, Mapping]] = _match_methods()
"""Match experiment method name (``qap_both``, ``localcka_stretch``, ``linreg``, …) -> ``(aligner, hparams)``.

``cluster`` / ``both`` also need ``n_base`` (the experiment's base size; the experiment's base *pool* is then the
pairs) and, to cluster the text side as the former match experiment could, ``cluster_side="y"`` and
``cluster_iter=cluster.n_iter``; ``linreg`` needs ``lam=linreg.lam``, ``localcka`` ``kernel=local_cka.kernel``, ``qap``
the ``qap.*`` options. ``linreg`` *is* ``ridge`` on raw features: :func:`sotalign_jax.matching.linreg_scores` is
``teachers.ridge(x_base, y_base, center=False)`` then cosine, which ``ridge`` with ``center="none",
normalize=False`` computes.
"""
