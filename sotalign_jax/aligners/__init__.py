r"""Every aligner behind one interface: ``fit(name, key, data, **hparams) -> Alignment``.

.. code-block:: python

  from sotalign_jax import aligners

  data = aligners.AlignData(x=images, y=texts, pairs_x=px, pairs_y=py)   # unpaired pools may be [0, d]
  a = aligners.fit("cca", key, data, dim=64)
  scores = a.similarity(test_images, test_texts)                        # [n, m]
  aligners.ALIGNERS["cca"].needs_pairs, aligners.ALIGNERS["cca"].min_pairs

Registered now (closed form and training free, each with its citation and defaults in ``fit_<name>``):

==========================  ===========================================================  =========
name                        method                                                       min pairs
==========================  ===========================================================  =========
``lstsq``                   least squares, :math:`W = \hat X^+ \hat Y` (pseudo-inverse)  1
``ridge``                   ridge regression x → y                                       2
``procrustes``              orthogonal Procrustes x → y                                  2
``cca``                     regularised CCA into a shared space                          2
``relative``                relative representations (Moschella et al. 2023)             1
``asif``                    ASIF sparse relative representations (Norelli et al. 2023)   1
``local_cka``               localized-CKA retrieval (Maniparambil et al. 2024)           2
``qap``                     seeded graph matching, FAQ (Maniparambil et al. 2024)        2
``wasserstein_procrustes``  Wasserstein–Procrustes, geometric init (Schnaus et al.)      0
``mini_vec2vec``            mini-vec2vec, unpaired anchors + refinement (Dar 2025)       0
==========================  ===========================================================  =========

``qap`` is *transductive* (``AlignerSpec.transductive``): ``similarity(qx, ky)`` matches two equal-size query sets
as one problem (0/1 scores, no embeddings), so it is evaluated on the exact evaluation sets. The training-free
matching experiment's families are ``qap``, ``local_cka``, ``ridge`` (``linreg``) and ``relative`` (``relrep``)
with the options ``stretch`` and ``base`` (:mod:`sotalign_jax.aligners.matching`, :data:`MATCH_METHODS`).

Trained (heads started at a closed-form teacher, SigLIP on the pairs + α · an unpaired term;
:mod:`sotalign_jax.aligners.trained`): ``sail``, ``sail_semi`` (unpaired rows as extra negatives), ``structure``,
``pseudo_label`` (S-CLIP-style), ``nnclr`` (nearest-neighbour positives), ``sotalign`` (this project's recipe),
``sotalign_paper`` (the paper's recipe, α chosen on validation pairs) and ``upper_bound`` (SAIL on every training
pair: ``AlignerSpec.all_pairs``). They take ``loop=`` (a checkpointed training loop) and ``mesh=`` from the caller.
"""

import importlib

from sotalign_jax.aligners.base import (ALIGNERS, CENTER_MODES, INJECTED, AlignData, AlignerSpec, Alignment,
                                        NeedsPairsError, check_data, cosine, fit, get, register,
                                        resolved_options)
from sotalign_jax.aligners.linear import (LinearAlignment, StretchedRidgeAlignment, fit_cca, fit_lstsq, fit_procrustes,
                                          fit_ridge)
from sotalign_jax.aligners.training_free import (ASIFAlignment, LocalCKAAlignment, RelativeAlignment,
                                                 asif_representation, fit_asif, fit_local_cka, fit_relative)
from sotalign_jax.aligners.matching import MATCH_METHODS, QAPAlignment, fit_qap
from sotalign_jax.aligners.trained import HeadsAlignment, fit_heads, folded_heads
from sotalign_jax.aligners.unpaired import fit_mini_vec2vec, fit_wasserstein_procrustes
from sotalign_jax.aligners import io  # save / load any fitted Alignment (pylint: disable=redefined-builtin)

__all__ = [
    "AlignData", "Alignment", "AlignerSpec", "NeedsPairsError", "ALIGNERS", "CENTER_MODES", "register", "fit", "get",
    "check_data", "cosine", "resolved_options", "LinearAlignment", "RelativeAlignment", "ASIFAlignment",
    "LocalCKAAlignment", "asif_representation", "fit_lstsq", "fit_ridge", "fit_procrustes", "fit_cca", "fit_relative",
    "fit_asif",
    "fit_local_cka", "HeadsAlignment", "fit_heads", "folded_heads", "INJECTED", "fit_wasserstein_procrustes",
    "fit_mini_vec2vec", "QAPAlignment", "StretchedRidgeAlignment", "fit_qap", "MATCH_METHODS", "io",
]

# Modules whose import registers methods (closed-form and training-free ones are imported above).
_METHOD_MODULES = ("sotalign_jax.aligners.linear", "sotalign_jax.aligners.training_free",
                   "sotalign_jax.aligners.matching", "sotalign_jax.aligners.trained", "sotalign_jax.aligners.unpaired")
for _m in _METHOD_MODULES:
  importlib.import_module(_m)
del _m
