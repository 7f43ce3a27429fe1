r"""Retrieval and zero-shot metrics on embeddings (cosine similarity).

Ranks are computed in query chunks, so a 25k × 125k evaluation never holds the full score matrix.
For each query, the rank of its best-scoring positive is

.. math::

  r_q = \#\{g : s(q, g) > \max_{p \in P_q} s(q, p)\}\quad(\text{0-based; ties count in the query's favour}),

``R@k`` is the fraction of queries with :math:`r_q < k`, and the median rank is :math:`\operatorname{median}(r_q+1)`.

:func:`positive_ranks`, :func:`retrieval_recall`, :func:`median_rank` and :func:`zero_shot_accuracy` are
traceable: called eagerly they return host numbers (NumPy arrays, Python floats); called on traced values (inside
``jax.jit``, ``vmap``, ...) they return the same quantities as ``jax.Array`` scalars / vectors (float32, int32), so
``jax.jit(metrics.retrieval_recall)`` equals the eager call. Under a trace, ``positives`` (and ``labels``) may be
host data, converted and checked while tracing, or traced int arrays: ``[nq]`` one gallery index per query, or
``[nq, k]`` padded index lists as :func:`positive_lists` returns (``-1`` padding); traced indices are not
range-checked, and a boolean mask must be host data (its lists have a data-dependent size). With device inputs the
eager calls run under ``jax.transfer_guard("disallow")``: the scores are computed in one compiled call and the only
transfers are explicit ones — the ranks (or predictions) come back with ``jax.device_get``, and ``positives`` given
as host arrays go over with ``jax.device_put``. Values (NaN/Inf) follow :mod:`sotalign_jax._arrays`: host data and
concrete ``jax.Array`` inputs raise, traced ones only under ``jax.experimental.checkify.checkify``.

**Host-side drivers.** The benchmark metrics below (:func:`partner_ranks`, :func:`per_query_metrics`,
:func:`retrieval_metrics`, :func:`foscttm_per_query`, :func:`foscttm`, :func:`matching_hits`,
:func:`matching_accuracy`) and :func:`positive_lists` are not traceable: they return float64 NumPy per-query arrays
(the inputs of :func:`sotalign_jax.stats.paired_difference`'s bootstrap), raise on data-dependent conditions (a
query without negatives, a ``partner`` that is not a permutation) and the matching shuffles its keys with a NumPy
generator before a host ``linear_sum_assignment``. Call them outside ``jit``; the score matrix they read is computed
in one compiled call. Their NaN rule differs on purpose: NaN/Inf in host data raise, while a NaN score in a
``jax.Array`` counts as the lowest possible score (so a diverged method scores as badly as possible instead of
stopping a benchmark sweep).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.lax import PrecisionLike
from jax.typing import ArrayLike

from sotalign_jax._arrays import DEFAULT_PRECISION, check_features, is_tracer, unit

__all__ = ["positive_ranks", "retrieval_recall", "median_rank", "zero_shot_accuracy", "normalize",
           "partner_ranks", "per_query_metrics", "retrieval_metrics", "foscttm_per_query", "foscttm",
           "matching_hits", "matching_accuracy", "positive_lists"]

_HI = DEFAULT_PRECISION


normalize = unit  # L2-normalise along ``axis`` (norms clipped at ``eps``): :func:`sotalign_jax._arrays.unit` itself
_unit = jax.jit(unit)


def _check_emb(a, name) -> jax.Array:
  return check_features(a, name, dtype=jnp.float32)


def positive_lists(positives: ArrayLike | Sequence[Sequence[int]] | None, nq: int, ng: int) -> np.ndarray | None:
  """The positives of every query as a padded index array: ``None`` (query i ↔ gallery i), or int32
  ``[nq, k_max]`` whose row ``i`` holds query ``i``'s distinct positive gallery indices, padded with ``-1``.

  Accepts ``None``, an int array ``[nq]`` (one positive per query), a list of index lists (several per query, e.g.
  the captions of an image) or a boolean ``[nq, ng]`` mask. Memory is ``O(nq · k_max)``, never ``O(nq · ng)``
  (a 25k-image × 125k-caption mask would be 3 GB; its index lists are 25k × 5).

  Host-side (NumPy in, NumPy out): the lists of a mask have a data-dependent size. Inside ``jit`` pass the result
  (or traced ``[nq]`` indices) to the traceable metrics instead.
  """
  _host_only("positive_lists", positives)
  if positives is None:
    if nq != ng:
      raise ValueError(
          f"without `positives`, query i's partner is gallery row i, so both need the same length (got {nq} queries, "
          f"{ng} gallery rows); pass positives=[gallery index per query], a list of index lists or a [nq, ng] "
          "boolean mask")
    return None
  if isinstance(positives, (list, tuple)) and positives and not np.isscalar(positives[0]):
    if len(positives) != nq:
      raise ValueError(f"`positives` has {len(positives)} entries for {nq} queries")
    rows = []
    for i, pi in enumerate(positives):
      pi = np.unique(np.asarray(list(pi), np.int64))
      if pi.size == 0 or pi.min() < 0 or pi.max() >= ng:
        raise ValueError(f"`positives[{i}]` must be a non-empty list of gallery indices in [0, {ng}), got "
                         f"{pi.tolist()}")
      rows.append(pi)
  else:
    p = np.asarray(positives)
    if p.dtype == bool:
      if p.shape != (nq, ng):
        raise ValueError(f"a boolean `positives` mask must have shape ({nq}, {ng}), got {p.shape}")
      if not p.any(1).all():
        raise ValueError(f"{int((~p.any(1)).sum())} queries have no positive in the gallery")
      rows = [np.flatnonzero(r) for r in p]
    else:
      if p.shape != (nq,) or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"integer `positives` must give one gallery index per query, shape ({nq},), got "
                         f"{p.shape} {p.dtype}")
      if p.min() < 0 or p.max() >= ng:
        raise ValueError(f"`positives` indices must lie in [0, {ng}), got range [{p.min()}, {p.max()}]")
      return p.astype(np.int32)[:, None]
  out = np.full((nq, max(len(r) for r in rows)), -1, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def _chunked_positives(idx: jax.Array | None, nq: int, pad: int, chunk: int) -> jax.Array:
  """``[n_chunks, chunk, k]`` positive indices (identity if ``idx is None``); padded query rows get index 0."""
  if idx is None:
    idx = jnp.arange(nq, dtype=jnp.int32)[:, None]
  return jnp.pad(idx, ((0, pad), (0, 0))).reshape(-1, chunk, idx.shape[1])


def _best_positive(s: jax.Array, pc: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(best [c, 1], positive scores [c, k], valid [c, k])`` of a chunk of scores ``s [c, ng]``."""
  valid = pc >= 0
  sp = jnp.take_along_axis(s, jnp.maximum(pc, 0), axis=1)
  return jnp.max(jnp.where(valid, sp, -jnp.inf), axis=1, keepdims=True), sp, valid


@functools.partial(jax.jit, static_argnames=("chunk", "precision"))
def _ranks(q, g, positives, chunk, precision=DEFAULT_PRECISION):
  """Ranks of the best positive; ``positives`` is ``None`` (identity) or padded index lists ``[nq, k]``.

  No positive scores above the best one, so the rows scored strictly higher are all negatives."""
  q, g = unit(q), unit(g)
  nq = q.shape[0]
  pad = (-nq) % chunk
  qp = jnp.pad(q, ((0, pad), (0, 0))).reshape(-1, chunk, q.shape[1])

  def one(args):
    qc, pc = args
    s = jnp.matmul(qc, g.T, precision=precision)
    best, _, _ = _best_positive(s, pc)
    return jnp.sum(s > best, axis=1)

  return jax.lax.map(one, (qp, _chunked_positives(positives, nq, pad, chunk))).ravel()[:nq]


def _traced(*args) -> bool:
  return any(is_tracer(a) for a in jax.tree.leaves(args))


_HOST_SIDE = ("a host-side driver (see sotalign_jax.metrics): it returns float64 NumPy per-query arrays and raises on "
              "data-dependent conditions, so it cannot run inside jax.jit / vmap; call it on concrete arrays (the "
              "traceable metrics are positive_ranks, retrieval_recall, median_rank and zero_shot_accuracy)")


def _host_only(fn_name: str, *args) -> None:
  if _traced(*args):
    raise TypeError(f"metrics.{fn_name} is {_HOST_SIDE}")


def _positive_index(positives, nq: int, ng: int):
  """:func:`positive_lists` for host data; a traced int ``[nq]`` / ``[nq, k]`` index array as ``[nq, k]``."""
  if not is_tracer(positives):
    return positive_lists(positives, nq, ng)
  if not jnp.issubdtype(positives.dtype, jnp.integer) or positives.ndim not in (1, 2) or positives.shape[0] != nq:
    raise ValueError(f"traced `positives` must be int gallery indices, [{nq}] or [{nq}, k] padded with -1 (a boolean "
                     f"mask must be host data), got {positives.shape} {positives.dtype}")
  return (positives[:, None] if positives.ndim == 1 else positives).astype(jnp.int32)


def positive_ranks(queries: ArrayLike, gallery: ArrayLike, *,
                   positives: ArrayLike | Sequence[Sequence[int]] | None = None, chunk: int = 1024,
                   precision: PrecisionLike = DEFAULT_PRECISION) -> np.ndarray | jax.Array:
  """0-based rank of the best positive of each query among the gallery, by cosine similarity.

  Traceable (see the module docstring); ``chunk`` and ``precision`` are static.

  Args:
    queries: ``[nq, d]`` embeddings.
    gallery: ``[ng, d]`` embeddings in the same space.
    positives: ``None`` (query i ↔ gallery i), an int array ``[nq]`` (one gallery index per query), a list of
      index lists (several positives per query, e.g. the captions of an image) or a boolean ``[nq, ng]`` mask.
      A rank counts the gallery rows scored strictly higher than the best positive (ties favour the query).
      Under a trace also a traced int ``[nq]`` or ``-1``-padded ``[nq, k]`` index array.
    chunk: queries scored at once.
    precision: of the query-gallery matrix product (default ``HIGHEST``).

  Returns:
    ``[nq]`` int NumPy array (an int32 ``jax.Array`` when traced).
  """
  traced = _traced(queries, gallery, positives)
  q, g = _check_emb(queries, "queries"), _check_emb(gallery, "gallery")
  if q.shape[1] != g.shape[1]:
    raise ValueError(f"queries and gallery must share the embedding dimension, got {q.shape[1]} and {g.shape[1]}")
  pos = _positive_index(positives, q.shape[0], g.shape[0])
  if isinstance(pos, np.ndarray):
    pos = jnp.asarray(pos) if traced else jax.device_put(pos)  # eager: explicit, host data the caller gave
  chunk = int(min(chunk, q.shape[0]))
  ranks = _ranks(q, g, pos, chunk, precision)
  return ranks if traced else np.asarray(jax.device_get(ranks))


def _check_ks(ks) -> None:
  if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
    raise ValueError(f"ks must be positive integers, got {ks}")


def retrieval_recall(queries: ArrayLike, gallery: ArrayLike, *, ks: Sequence[int] = (1, 5, 10),
                     positives: ArrayLike | Sequence[Sequence[int]] | None = None, chunk: int = 1024,
                     precision: PrecisionLike = DEFAULT_PRECISION) -> dict[str, float | jax.Array]:
  """Recall@k for each k in ``ks``: the fraction of queries whose best positive ranks in the top k.

  Traceable: ``jax.jit(retrieval_recall)`` gives the eager values (``ks``, ``chunk`` and ``precision`` are static).

  Arguments as :func:`positive_ranks`. Returns ``{"r1": ..., "r5": ..., "r10": ...}`` (keys ``f"r{k}"``): Python
  floats, or float32 ``jax.Array`` scalars when traced.
  """
  _check_ks(ks)
  ranks = positive_ranks(queries, gallery, positives=positives, chunk=chunk, precision=precision)
  if isinstance(ranks, jax.Array):
    return {f"r{k}": jnp.mean(ranks < k, dtype=jnp.float32) for k in ks}
  return {f"r{k}": float(np.mean(ranks < k)) for k in ks}


def median_rank(queries: ArrayLike, gallery: ArrayLike, *, positives: ArrayLike | Sequence[Sequence[int]] | None = None,
                chunk: int = 1024, precision: PrecisionLike = DEFAULT_PRECISION) -> float | jax.Array:
  """Median over queries of the 1-based rank of the best positive (traceable: a float32 scalar when traced)."""
  ranks = positive_ranks(queries, gallery, positives=positives, chunk=chunk, precision=precision)
  if isinstance(ranks, jax.Array):
    return jnp.median((ranks + 1).astype(jnp.float32))
  return float(np.median(ranks + 1))


@functools.partial(jax.jit, static_argnames=("precision",))
def _predict(x, t, precision=DEFAULT_PRECISION):
  return jnp.argmax(jnp.matmul(unit(x), unit(t).T, precision=precision), axis=1)


def zero_shot_accuracy(image_emb: ArrayLike, class_text_emb: ArrayLike, labels: ArrayLike, *,
                       precision: PrecisionLike = DEFAULT_PRECISION) -> float | jax.Array:
  """Fraction of images whose most similar (cosine) class-prompt embedding is their label.

  Traceable: a Python float eagerly, a float32 ``jax.Array`` scalar when traced (traced ``labels`` are not
  range-checked).

  Args:
    image_emb: ``[n, d]`` image embeddings.
    class_text_emb: ``[c, d]`` one embedding per class (e.g. of "a photo of a {class}").
    labels: ``[n]`` integer class index of each image (host data, or a traced int array under ``jit``).
    precision: of the image-prompt matrix product.
  """
  traced = _traced(image_emb, class_text_emb, labels)
  x, t = _check_emb(image_emb, "image_emb"), _check_emb(class_text_emb, "class_text_emb")
  if jnp.shape(labels) != (x.shape[0],):
    raise ValueError(f"labels must have shape ({x.shape[0]},), got {jnp.shape(labels)}")
  if not is_tracer(labels):
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() >= t.shape[0]:
      raise ValueError(f"labels must lie in [0, {t.shape[0]}), got range [{labels.min()}, {labels.max()}]")
  pred = _predict(x, t, precision)
  if traced:
    return jnp.mean(pred == jnp.asarray(labels), dtype=jnp.float32)
  return float(np.mean(np.asarray(jax.device_get(pred)) == labels))


# ----------------------------------------------------------------------------------------------------------------
# Benchmark metrics from a score matrix or embeddings: tie-aware ranks, FOSCTTM, per-query values, matching.
#
# A query's positives P_q (one partner, or a mask such as the captions of an image) are scored by the best of them,
# s* = max_{p ∈ P_q} s(q, p), against the negatives N_q (every other key):
#
#   g_q = #{j ∈ N_q : s(q, j) > s*},   t_q = #{j ∈ N_q : s(q, j) = s*}.
#
# Ties are broken uniformly at random *in expectation*, so a constant score gets chance values instead of a perfect
# one: rank_q = 1 + g_q + t_q / 2 (the mid-rank, 1-based), FOSCTTM_q = (g_q + t_q / 2) / |N_q| and
# hit@k_q = clip((k − g_q) / (t_q + 1), 0, 1), the probability that the random rank g_q + U{1..t_q+1} is ≤ k.
# ----------------------------------------------------------------------------------------------------------------


def _bench_scores(a, b, name_a: str, name_b: str):
  """``(q, g, cosine)``: a ``[nq, ng]`` score matrix (``b is None``) or two embedding matrices, normalised.

  NaN/Inf raise for host data (NumPy, lists); device arrays are not copied back to be checked — a NaN score there
  counts as the lowest possible score (see :func:`_tie_counts`), so it can only hurt the method that produced it.
  """
  def arr(v, name):
    if isinstance(v, (np.ndarray, np.generic, list, tuple)) and not np.isfinite(np.asarray(v, np.float32)).all():
      raise ValueError(f"`{name}` contains NaN or Inf")
    v = jnp.asarray(v, jnp.float32)
    if v.ndim != 2 or 0 in v.shape:
      raise ValueError(f"`{name}` must be a non-empty 2-D array, got shape {v.shape}")
    return v

  if b is None:
    s = arr(a, "sim")
    return s, None, False
  q, g = arr(a, name_a), arr(b, name_b)
  if q.shape[1] != g.shape[1]:
    raise ValueError(f"`{name_a}` and `{name_b}` must share the embedding dimension, got {q.shape[1]} and "
                     f"{g.shape[1]}")
  return _unit(q), _unit(g), True


@functools.partial(jax.jit, static_argnames=("chunk", "cos"))
def _tie_counts(q, g, idx, *, chunk: int, cos: bool):
  """Per query ``(g_q, t_q, |N_q|)``; ``q`` is a score matrix (``cos=False``) or normalised embeddings, ``idx`` the
  padded positive index lists (:func:`positive_lists`). With ``s*`` the best positive score, no positive is above
  ``s*``, so ``g_q = #{j : s_j > s*}`` and ``t_q = #{j : s_j = s*} − #{p ∈ P_q : s_p = s*}``."""
  nq = q.shape[0]
  ng = g.shape[0] if cos else q.shape[1]
  pad = (-nq) % chunk
  qp = jnp.pad(q, ((0, pad), (0, 0))).reshape(-1, chunk, q.shape[1])

  def one(args):
    qc, pc = args
    s = jnp.matmul(qc, g.T, precision=DEFAULT_PRECISION) if cos else qc
    s = jnp.where(jnp.isnan(s), -jnp.inf, s)  # a missing (NaN) score ranks last
    best, sp, valid = _best_positive(s, pc)
    n_pos = jnp.sum(valid, axis=1)
    ties = jnp.sum(s == best, axis=1) - jnp.sum(valid & (sp == best), axis=1)
    return jnp.sum(s > best, axis=1), ties, ng - n_pos

  out = jax.lax.map(one, (qp, _chunked_positives(idx, nq, pad, chunk)))
  return tuple(o.ravel()[:nq] for o in out)


def _counts(a, b, positives, chunk: int, names=("queries", "keys"), caller: str = "per_query_metrics"):
  _host_only(caller, a, b, positives)
  q, g, cos = _bench_scores(a, b, *names)
  nq, ng = q.shape[0], (g.shape[0] if cos else q.shape[1])
  idx = positive_lists(positives, nq, ng)
  idx = None if idx is None else jax.device_put(idx)  # explicit: host data the caller gave
  if not isinstance(chunk, (int, np.integer)) or chunk < 1:
    raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
  gr, ti, nn = (np.asarray(v, np.float64) for v in
                _tie_counts(q, g if cos else jnp.zeros((0, 1)), idx, chunk=int(min(chunk, nq)), cos=cos))
  if (nn == 0).any():
    raise ValueError(f"{int((nn == 0).sum())} queries have every key as a positive (no negatives to rank against)")
  return gr, ti, nn


def partner_ranks(a: ArrayLike, b: ArrayLike | None = None, *,
                  positives: ArrayLike | Sequence[Sequence[int]] | None = None, chunk: int = 1024) -> np.ndarray:
  """1-based mid-rank of each query's best positive, ``1 + g_q + t_q / 2`` (ties count half; see above).

  Args:
    a: ``[nq, ng]`` scores (``b is None``), or ``[nq, d]`` query embeddings compared by cosine with ``b``.
    b: ``[ng, d]`` key embeddings, or ``None``.
    positives: ``None`` (query i ↔ key i), an int array ``[nq]`` (one key per query), a list of index lists or a
      boolean ``[nq, ng]`` mask (several positives per query, e.g. the captions of an image).
    chunk: queries processed at once.

  Returns:
    ``[nq]`` float64 ranks in ``[1, |N_q| + 1]``.

  Host-side driver (not traceable; a ``TypeError`` under ``jit``): see the module docstring.
  """
  gr, ti, _ = _counts(a, b, positives, chunk, caller="partner_ranks")
  return 1.0 + gr + 0.5 * ti


def per_query_metrics(a: ArrayLike, b: ArrayLike | None = None, *,
                      positives: ArrayLike | Sequence[Sequence[int]] | None = None, ks: Sequence[int] = (1, 5, 10),
                      chunk: int = 1024) -> dict[str, np.ndarray]:
  """Every per-query retrieval quantity, for averaging or for bootstrapping over queries.

  Args:
    a, b, positives, chunk: as in :func:`partner_ranks`.
    ks: cut-offs of the hits.

  Returns:
    ``{"rank": [nq] mid-rank (1-based), "foscttm": [nq] (g + t/2) / |N_q|, "r{k}": [nq] expected hit@k}``,
    float64; without ties ``r{k}`` is the indicator ``rank <= k``.

  Host-side driver (not traceable; a ``TypeError`` under ``jit``): see the module docstring.
  """
  if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
    raise ValueError(f"ks must be positive integers, got {ks}")
  gr, ti, nn = _counts(a, b, positives, chunk)
  out = {"rank": 1.0 + gr + 0.5 * ti, "foscttm": (gr + 0.5 * ti) / nn}
  for k in ks:
    out[f"r{k}"] = np.clip((k - gr) / (ti + 1.0), 0.0, 1.0)
  return out


def retrieval_metrics(a: ArrayLike, b: ArrayLike | None = None, *,
                      positives: ArrayLike | Sequence[Sequence[int]] | None = None, ks: Sequence[int] = (1, 5, 10),
                      chunk: int = 1024) -> dict[str, float]:
  """Means over queries of :func:`per_query_metrics`, with the median rank.

  Returns:
    ``{"r1": ..., "r5": ..., "r10": ..., "foscttm": ..., "mean_rank": ..., "median_rank": ...}``.

  Host-side driver (not traceable; a ``TypeError`` under ``jit``): see the module docstring.
  """
  pq = per_query_metrics(a, b, positives=positives, ks=ks, chunk=chunk)
  out = {k: float(v.mean()) for k, v in pq.items() if k != "rank"}
  out["mean_rank"] = float(pq["rank"].mean())
  out["median_rank"] = float(np.median(pq["rank"]))
  return out


def foscttm_per_query(a: ArrayLike, b: ArrayLike | None = None, *, chunk: int = 1024) -> dict[str, np.ndarray]:
  r"""Per-query FOSCTTM of paired rows ``x_i ↔ y_i`` in both directions (:cite:t:`liu2019foscttm`, "Jointly embedding
  multiple single-cell omics measurements"):

  .. math::

    \mathrm{FOSCTTM}^{x\to y}_i = \frac{\#\{j \ne i: s_{ij} > s_{ii}\} + \tfrac12\#\{j \ne i: s_{ij} = s_{ii}\}}{n-1},
    \qquad \mathrm{FOSCTTM}^{y\to x}_j \text{ the same on the columns}.

  Args:
    a: ``[n, n]`` scores ``s_ij`` of x-row i against y-row j (``b is None``), or ``[n, dx']`` x-embeddings.
    b: ``[n, d]`` y-embeddings in the same space as ``a`` (cosine), or ``None``.
    chunk: rows processed at once.

  Returns:
    ``{"x2y": [n], "y2x": [n]}``; 0 is perfect, 0.5 is chance.

  Host-side driver (not traceable; a ``TypeError`` under ``jit``): see the module docstring.
  """
  _host_only("foscttm_per_query", a, b)
  if b is None:
    if np.ndim(a) != 2 or np.shape(a)[0] != np.shape(a)[1]:
      raise ValueError(f"`sim` must be a square [n, n] matrix of paired rows, got shape {np.shape(a)}")
    fx = per_query_metrics(a, ks=(), chunk=chunk)["foscttm"]
    fy = per_query_metrics(jnp.asarray(a).T, ks=(), chunk=chunk)["foscttm"]
  else:
    if np.shape(a)[0] != np.shape(b)[0]:
      raise ValueError(f"paired embeddings need the same number of rows, got {np.shape(a)[0]} and {np.shape(b)[0]}")
    fx = per_query_metrics(a, b, ks=(), chunk=chunk)["foscttm"]
    fy = per_query_metrics(b, a, ks=(), chunk=chunk)["foscttm"]
  return {"x2y": fx, "y2x": fy}


def foscttm(a: ArrayLike, b: ArrayLike | None = None, *, chunk: int = 1024) -> dict[str, float]:
  """Mean FOSCTTM of paired rows per direction and their average (see :func:`foscttm_per_query`).

  FOSCTTM :cite:p:`liu2019foscttm`.

  Returns:
    ``{"x2y": ..., "y2x": ..., "mean": ...}``.

  Host-side driver (not traceable; a ``TypeError`` under ``jit``): see the module docstring.
  """
  pq = foscttm_per_query(a, b, chunk=chunk)
  fx, fy = float(pq["x2y"].mean()), float(pq["y2x"].mean())
  return {"x2y": fx, "y2x": fy, "mean": 0.5 * (fx + fy)}


def matching_hits(sim: ArrayLike, *, partner: ArrayLike | None = None, seed: int = 0, lap: str = "scipy") -> np.ndarray:
  r"""Per query, 1.0 if the one-to-one matching maximising the total score assigns it its partner, else 0.0.

  The matching is the linear assignment :math:`\sigma = \arg\max_\sigma \sum_i s_{i\sigma(i)}`
  (:func:`sotalign_jax.qap.linear_assignment`). The keys are shuffled first (by ``seed``) and the result mapped
  back, so a solver's tie-breaking by position cannot reward a score that ignores the data (a constant score
  would otherwise "match" the identity perfectly).

  Args:
    sim: ``[n, n]`` scores of x-query i against y-key j.
    partner: ``[n]`` int permutation, the key of each query (default: the identity).
    seed: seed of the key shuffle.
    lap: the solver of :func:`sotalign_jax.qap.linear_assignment` (``"scipy"``, on the host, by default).

  Returns:
    ``[n]`` float64 in {0, 1}; its mean is the matching accuracy.

  Host-side driver (not traceable; a ``TypeError`` under ``jit``): the key shuffle is a NumPy generator and the
  result is compared with ``partner`` on the host (see the module docstring).
  """
  from sotalign_jax import qap  # pylint: disable=g-import-not-at-top

  _host_only("matching_hits", sim, partner)

  s, _, _ = _bench_scores(sim, None, "sim", "")
  n = s.shape[0]
  if s.shape != (n, n):
    raise ValueError(f"`sim` must be a square [n, n] matrix for a one-to-one matching, got shape {s.shape}")
  partner = np.arange(n) if partner is None else np.asarray(partner)
  if partner.shape != (n,) or not np.array_equal(np.sort(partner), np.arange(n)):
    raise ValueError(f"`partner` must be a permutation of range({n})")
  perm = np.random.default_rng(seed).permutation(n)
  cols = np.asarray(qap.linear_assignment(s[:, perm], maximize=True, lap=lap))
  return (perm[cols] == partner).astype(np.float64)


def matching_accuracy(sim: ArrayLike, *, partner: ArrayLike | None = None, seed: int = 0, lap: str = "scipy") -> float:
  """Fraction of queries the linear assignment on ``sim`` matches to their partner (see :func:`matching_hits`;
  a host-side driver)."""
  return float(matching_hits(sim, partner=partner, seed=seed, lap=lap).mean())
