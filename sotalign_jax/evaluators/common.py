"""The evaluator interface, its sets, and :func:`from_config` (see :mod:`sotalign_jax.evaluators`)."""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Mapping, NamedTuple, Protocol

import numpy as np

__all__ = ["TYPES", "EvalSet", "Evaluator", "from_config", "check_config", "cache_set", "settings"]

TYPES = ("retrieval", "matching", "zeroshot")
"""Evaluator types of a fitted alignment (modules of this package); ``geometry`` scores the spaces instead."""


class EvalSet(NamedTuple):
  """Embeddings an evaluator scores an alignment on.

  Attributes:
    x: ``[n, dx]`` x-side (image) embeddings.
    y: ``[m, dy]`` y-side (text) embeddings: the captions, or one prompt per class (zero-shot).
    i2t: ``n`` lists of the positions in ``y`` of each x-row's captions (retrieval), or ``None``.
    t2i: ``[m]`` position in ``x`` of each caption's image, or ``None``.
    first: ``[n]`` position in ``y`` of one caption per x-row (a square set for matching), or ``None``.
    labels: ``[n]`` class of each x-row, the row of its prompt in ``y`` (zero-shot), or ``None``.
  """
  x: np.ndarray
  y: np.ndarray
  i2t: list | None = None
  t2i: np.ndarray | None = None
  first: np.ndarray | None = None
  labels: np.ndarray | None = None


class Evaluator(Protocol):
  """What :func:`from_config` builds: ``run(alignment, seed=...) -> (metrics, per_query)``; ``metrics`` names
  every scalar it reports (NaN when not evaluated); ``square`` says whether its sets pair every x-row with exactly
  one y-row (the only sets a transductive set matcher such as ``qap`` can be scored on)."""
  metrics: tuple[str, ...]
  square: bool

  def run(self, alignment, *, seed: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    ...


def cache_set(path: str, kind: str) -> EvalSet:
  """Every item of the embedding cache at ``path`` as an :class:`EvalSet`.

  ``kind="retrieval"``: every image with all its captions (a cross-domain test set: tuxpaint);
  ``kind="zeroshot"``: every captioned image against one prompt per class (every caption of a class is its prompt;
  the cache's ``labels``).
  """
  from sotalign_jax.data.cache import open_cache  # pylint: disable=g-import-not-at-top

  cache = open_cache(path, key=f"the evaluation cache {path}", check_values=True)
  x, y = np.asarray(cache.image_emb, np.float32), np.asarray(cache.text_emb, np.float32)
  if kind == "zeroshot":
    labels = np.array(cache.labels())
    classes = sorted(set(labels))
    prompt_row = [int(np.where(labels == c)[0][0]) for c in classes]
    return EvalSet(x[cache.caption_image_rows()], y[prompt_row], labels=np.searchsorted(classes, labels))
  rows, owner = np.unique(cache.caption_image_rows(), return_inverse=True)
  return EvalSet(x[rows], y, i2t=[np.where(owner == i)[0].tolist() for i in range(len(rows))], t2i=owner,
                 first=np.array([np.where(owner == i)[0][0] for i in range(len(rows))], np.int64))


def _options(name: str, options: Mapping[str, Any]) -> tuple[str, str, str, dict]:
  opts = dict(options)
  kind = opts.pop("type", name)
  if kind not in TYPES:
    raise ValueError(f"config.evals.{name}: unknown evaluator type {kind!r}; known: {', '.join(TYPES)}")
  source, cache = opts.pop("set", "test"), opts.pop("cache", None)
  if cache is not None and source != "test":
    raise ValueError(f"config.evals.{name}: give set= or cache=, not both")
  return kind, source, cache, opts


def _module(kind: str):
  return importlib.import_module(f"sotalign_jax.evaluators.{kind}")


def check_config(evals: Mapping[str, Mapping[str, Any]], sets: tuple[str, ...] = ("test",)) -> None:
  """Raises ``ValueError`` naming the first bad entry of ``config.evals`` (an unknown type, set or option)."""
  if not evals:
    raise ValueError("config.evals is empty: give at least one evaluator (e.g. retrieval)")
  for name, options in evals.items():
    kind, source, cache, opts = _options(name, options)
    if cache is None and source not in sets:
      raise ValueError(f"config.evals.{name}.set={source!r}: known sets are {', '.join(sets)}")
    _module(kind).Evaluator.check(name, **opts)


def _active(cache) -> bool:
  return cache is None or (bool(cache) and os.path.exists(os.path.join(cache, "manifest.json")))


def settings(evals: Mapping[str, Mapping[str, Any]], fingerprint: Callable[[str], Any]) -> dict:
  """What of ``config.evals`` determines the metrics: each evaluator's options, with its cache replaced by the
  cache's ``fingerprint(path)`` (``None`` when the cache is missing: not evaluated)."""
  out = {}
  for name, options in evals.items():
    kind, source, cache, opts = _options(name, options)
    data = source if cache is None else (fingerprint(cache) if _active(cache) else None)
    out[name] = {"type": kind, "data": data, **opts}
  return out


def from_config(evals: Mapping[str, Mapping[str, Any]], sets: Mapping[str, EvalSet], *, verbose: bool = True,
                data: bool = True) -> dict[str, Evaluator]:
  """The evaluators of ``config.evals``, by name, on ``sets`` (``{"test": EvalSet}``) or their caches.

  An evaluator whose ``cache`` is ``""`` or missing evaluates nothing and reports NaN (one printed note for a
  missing one: how to build it). ``data=False`` builds every evaluator without data (to read its ``metrics``).
  """
  out = {}
  for name, options in evals.items():
    kind, source, cache, opts = _options(name, options)
    module = _module(kind)
    if not data or not _active(cache):
      if data and cache and verbose:
        print(f"note: config.evals.{name}: no complete cache at {cache}; its metrics are NaN (build it with "
              f"`python -m sotalign_jax.cli.embed`, or set config.evals.{name}.cache='' to silence this)")
      out[name] = module.Evaluator(None, name=name, **opts)
      continue
    out[name] = module.Evaluator(sets[source] if cache is None else cache_set(cache, kind), name=name, **opts)
  return out
