r"""Evaluators of a fitted alignment, one per file, built by name from ``config.evals``.

As in big_vision (``evaluators/common.py:from_config``), ``config.evals`` maps an evaluator's *name* (which prefixes
nothing: it names the entry) to its options, one of which is ``type``, the module that evaluates
(:data:`TYPES`; default: the name itself)::

  config.evals.retrieval = dict(type="retrieval")                           # R@k and ranks, both directions
  config.evals.matching = dict(type="matching")                             # FOSCTTM, assignment accuracy
  config.evals.fashion_mnist = dict(type="zeroshot", cache="data_cache/fashion_mnist__...",
                                    metric="zeroshot_fashion_mnist")       # class prompts
  config.evals.tuxpaint = dict(type="retrieval", cache="data_cache/tuxpaint__...", prefix="tuxpaint_",
                               ks=(1,), directions=("i2t",), ranks=False)   # another dataset

An evaluator runs on an :class:`EvalSet`: the protocol's held-out test set (``set="test"``, the default) or every
item of another embedding cache (``cache=...``). ``run(alignment, seed=...)`` returns ``(metrics, per_query)``:
scalar metrics by name, and the per-query arrays behind the means (for paired comparisons between methods). An
evaluator whose cache is missing returns NaN for its metrics (not evaluated), with one note when it is built.

* :mod:`~sotalign_jax.evaluators.retrieval` — R@k, mean and median rank, image→text and text→image;
* :mod:`~sotalign_jax.evaluators.matching` — FOSCTTM and one-to-one matching accuracy on a square set;
* :mod:`~sotalign_jax.evaluators.zeroshot` — zero-shot classification against one prompt per class;
* :mod:`~sotalign_jax.evaluators.geometry` — scores of the two *spaces* on a paired sample before any fit
  (Schnaus et al., 2026: how much geometry the spaces share predicts whether zero-pair alignment works).
"""

from sotalign_jax.evaluators.common import (TYPES, EvalSet, Evaluator, cache_set, check_config, from_config,
                                            settings)

__all__ = ["TYPES", "EvalSet", "Evaluator", "cache_set", "check_config", "from_config", "settings"]
