r"""Retrieval and zero-shot metrics on embeddings (cosine similarity).

Ranks are computed in query chunks, so a 25k × 125k evaluation never holds the full score matrix.
For each query, the rank of its best-scoring positive is

.. math::

  r_q = \#\{g : s(q, g) > \max_{p \in P_q} s(q, p)\}\quad(\text{0-based; ties count in the query's favour}),

``R@k`` is the fraction of queries with :math:`r_q < k`, and the median rank is :math:`\operatorname{median}(r_q+1)`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["positive_ranks", "retrieval_recall", "median_rank", "zero_shot_accuracy", "normalize"]

_HI = jax.lax.Precision.HIGHEST


def normalize(x, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """L2-normalises ``x`` along ``axis``."""
  x = jnp.asarray(x, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def _check_emb(a, name):
  a = np.asarray(a, np.float32)
  if a.ndim != 2 or a.shape[0] == 0:
    raise ValueError(f"{name} must be a non-empty [n, d] array, got shape {a.shape}")
  if not np.isfinite(a).all():
    raise ValueError(f"{name} contains NaN or Inf")
  return a


def _positives_mask(positives, nq: int, ng: int) -> np.ndarray:
  if positives is None:
    if nq != ng:
      raise ValueError(
          f"without `positives`, query i must match gallery row i, so both need the same length (got {nq} queries, "
          f"{ng} gallery rows); pass positives=[gallery index per query] or a [nq, ng] boolean mask")
    return np.eye(nq, dtype=bool)
  if isinstance(positives, (list, tuple)) and positives and not np.isscalar(positives[0]):
    mask = np.zeros((nq, ng), bool)  # a list of index lists: several positives per query
    if len(positives) != nq:
      raise ValueError(f"positives has {len(positives)} entries for {nq} queries")
    for i, p in enumerate(positives):
      mask[i, list(p)] = True
  else:
    p = np.asarray(positives)
    if p.dtype == bool:
      if p.shape != (nq, ng):
        raise ValueError(f"a boolean positives mask must have shape ({nq}, {ng}), got {p.shape}")
      mask = p
    else:
      if p.shape != (nq,):
        raise ValueError(f"integer positives must give one gallery index per query, shape ({nq},), got {p.shape}")
      if p.min() < 0 or p.max() >= ng:
        raise ValueError(f"positives indices must lie in [0, {ng}), got range [{p.min()}, {p.max()}]")
      mask = np.zeros((nq, ng), bool)
      mask[np.arange(nq), p] = True
  if not mask.any(1).all():
    raise ValueError(f"{int((~mask.any(1)).sum())} queries have no positive in the gallery")
  return mask


@functools.partial(jax.jit, static_argnames=("chunk",))
def _ranks(q, g, mask, chunk):
  nq = q.shape[0]
  pad = (-nq) % chunk
  qp = jnp.pad(q, ((0, pad), (0, 0))).reshape(-1, chunk, q.shape[1])
  mp = jnp.pad(mask, ((0, pad), (0, 0)), constant_values=True).reshape(-1, chunk, mask.shape[1])

  def one(args):
    qc, mc = args
    s = jnp.matmul(qc, g.T, precision=_HI)
    best = jnp.max(jnp.where(mc, s, -jnp.inf), axis=1, keepdims=True)
    return jnp.sum(s > best, axis=1)

  return jax.lax.map(one, (qp, mp)).ravel()[:nq]


def positive_ranks(queries, gallery, *, positives=None, chunk: int = 1024) -> np.ndarray:
  """0-based rank of the best positive of each query among the gallery, by cosine similarity.

  Args:
    queries: ``[nq, d]`` embeddings.
    gallery: ``[ng, d]`` embeddings in the same space.
    positives: ``None`` (query i ↔ gallery i), an int array ``[nq]`` (one gallery index per query), a list of
      index lists (several positives per query, e.g. the captions of an image) or a boolean ``[nq, ng]`` mask.
    chunk: queries scored at once.
  """
  q, g = _check_emb(queries, "queries"), _check_emb(gallery, "gallery")
  if q.shape[1] != g.shape[1]:
    raise ValueError(f"queries and gallery must share the embedding dimension, got {q.shape[1]} and {g.shape[1]}")
  mask = _positives_mask(positives, q.shape[0], g.shape[0])
  chunk = int(min(chunk, q.shape[0]))
  return np.asarray(_ranks(normalize(q), normalize(g), jnp.asarray(mask), chunk))


def retrieval_recall(queries, gallery, *, ks: Sequence[int] = (1, 5, 10), positives=None,
                     chunk: int = 1024) -> dict[str, float]:
  """Recall@k for each k in ``ks``: the fraction of queries whose best positive ranks in the top k.

  Returns ``{"r1": ..., "r5": ..., "r10": ...}`` (keys ``f"r{k}"``).
  """
  ranks = positive_ranks(queries, gallery, positives=positives, chunk=chunk)
  if any((not isinstance(k, (int, np.integer))) or k < 1 for k in ks):
    raise ValueError(f"ks must be positive integers, got {ks}")
  return {f"r{k}": float(np.mean(ranks < k)) for k in ks}


def median_rank(queries, gallery, *, positives=None, chunk: int = 1024) -> float:
  """Median over queries of the 1-based rank of the best positive."""
  return float(np.median(positive_ranks(queries, gallery, positives=positives, chunk=chunk) + 1))


def zero_shot_accuracy(image_emb, class_text_emb, labels) -> float:
  """Fraction of images whose most similar (cosine) class-prompt embedding is their label.

  Args:
    image_emb: ``[n, d]`` image embeddings.
    class_text_emb: ``[c, d]`` one embedding per class (e.g. of "a photo of a {class}").
    labels: ``[n]`` integer class index of each image.
  """
  x, t = _check_emb(image_emb, "image_emb"), _check_emb(class_text_emb, "class_text_emb")
  labels = np.asarray(labels)
  if labels.shape != (x.shape[0],):
    raise ValueError(f"labels must have shape ({x.shape[0]},), got {labels.shape}")
  if labels.min() < 0 or labels.max() >= t.shape[0]:
    raise ValueError(f"labels must lie in [0, {t.shape[0]}), got range [{labels.min()}, {labels.max()}]")
  pred = np.asarray(jnp.argmax(jnp.matmul(normalize(x), normalize(t).T, precision=_HI), axis=1))
  return float(np.mean(pred == labels))
