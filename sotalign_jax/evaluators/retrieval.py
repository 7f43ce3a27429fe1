r"""Cross-modal retrieval: R@k, mean and median rank, image→text and text→image.

A hit of an image query is any of its captions; a caption query's hit is its image. Ranks are 1-based with ties
counted half (:func:`sotalign_jax.metrics.per_query_metrics`), so a constant score ranks every key in the middle.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from sotalign_jax import metrics
from sotalign_jax.evaluators.common import EvalSet

DIRECTIONS = ("i2t", "t2i")


class Evaluator:
  """R@k (``{prefix}{dir}_r{k}``), mean rank (``{prefix}{dir}_mean_rank``) and median rank
  (``{prefix}{dir}_median_rank``, no per-query value) for each direction of ``directions``.

  Args:
    data: the :class:`EvalSet` (``x``, ``y``, ``i2t``, ``t2i``), or ``None``: NaN metrics.
    name: the entry's name in ``config.evals``.
    prefix: of every metric name.
    ks: the k of R@k.
    directions: ``"i2t"`` and/or ``"t2i"``.
    ranks: whether to report mean and median ranks.
    captions: ``"all"`` (every caption of an image is a key) or ``"first"`` (one caption per image: a square set,
      for methods that match sets rather than rank keys).
  """

  def __init__(self, data: EvalSet | None, *, name: str = "retrieval", prefix: str = "", ks: Sequence[int] = (1, 5, 10),
               directions: Sequence[str] = DIRECTIONS, ranks: bool = True, captions: str = "all"):
    self.check(name, prefix=prefix, ks=ks, directions=directions, ranks=ranks, captions=captions)
    self.data, self.prefix, self.ks, self.directions = data, prefix, tuple(ks), tuple(directions)
    self.ranks, self.captions = ranks, captions
    self.square = captions == "first"  # one caption per image: a set matcher can be scored
    per_dir = [f"r{k}" for k in self.ks] + (["mean_rank", "median_rank"] if ranks else [])
    self.metrics = tuple(f"{prefix}{d}_{m}" for d in self.directions for m in per_dir)

  @staticmethod
  def check(name: str, *, prefix: str = "", ks=(1, 5, 10), directions=DIRECTIONS, ranks: bool = True,
            captions: str = "all"):
    if not ks or any(int(k) != k or k < 1 for k in ks):
      raise ValueError(f"config.evals.{name}.ks must be positive integers, got {tuple(ks)}")
    if not directions or set(directions) - set(DIRECTIONS):
      raise ValueError(f"config.evals.{name}.directions must be among {DIRECTIONS}, got {tuple(directions)}")
    if captions not in ("all", "first"):
      raise ValueError(f"config.evals.{name}.captions must be 'all' or 'first', got {captions!r}")

  def run(self, alignment, *, seed: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    del seed  # deterministic
    if self.data is None:
      return {m: float("nan") for m in self.metrics}, {}
    d = self.data
    if self.captions == "first":
      y, i2t, t2i = d.y[d.first], [[i] for i in range(len(d.x))], np.arange(len(d.x))
    else:
      y, i2t, t2i = d.y, d.i2t, d.t2i
    sim = np.asarray(jax.device_get(alignment.similarity(d.x, y)), np.float32)  # [images, captions]
    out, per_query = {}, {}
    for direction in self.directions:
      s, pos = (sim, i2t) if direction == "i2t" else (sim.T, t2i)
      pq = metrics.per_query_metrics(s, positives=pos, ks=self.ks)
      name = f"{self.prefix}{direction}_"
      for k in self.ks:
        per_query[f"{name}r{k}"] = pq[f"r{k}"]
      if self.ranks:
        per_query[f"{name}mean_rank"] = pq["rank"]
        out[f"{name}median_rank"] = float(np.median(pq["rank"]))
    out.update({k: float(np.mean(v)) for k, v in per_query.items()})
    return {m: out[m] for m in self.metrics}, per_query
