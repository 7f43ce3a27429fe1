r"""Matching on a square set (each image against one caption): FOSCTTM and one-to-one assignment accuracy.

FOSCTTM (Liu et al., 2019) is, per query, the fraction of keys scored above its true partner (ties half), the mean
of both directions; matching accuracy is whether the linear assignment maximising the total score gives a query its
partner (:func:`sotalign_jax.metrics.matching_hits`, keys shuffled first so that position cannot help). With
``queries = q > 0`` the set is cut into ``trials`` random subsets of ``q`` images (per cell seed), matched one by
one, as in Maniparambil et al. (CVPR 2024); the per-query values are concatenated.
"""

from __future__ import annotations

import jax
import numpy as np

from sotalign_jax import metrics
from sotalign_jax.evaluators.common import EvalSet


class Evaluator:
  """``{prefix}foscttm`` and ``{prefix}matching_acc`` (per query) on ``data.x`` against ``data.y[data.first]``.

  Args:
    data: the :class:`EvalSet` (``x``, ``y``, ``first``), or ``None``: NaN metrics.
    name: the entry's name in ``config.evals``.
    prefix: of every metric name.
    lap: the linear-assignment solver (:data:`sotalign_jax.qap.LAPS`).
    queries: images per matched subset (0: the whole set at once).
    trials: subsets drawn when ``queries > 0``.
    foscttm: whether to report FOSCTTM (set-matching methods that only give a matching have none).
  """

  def __init__(self, data: EvalSet | None, *, name: str = "matching", prefix: str = "", lap: str = "scipy",
               queries: int = 0, trials: int = 1, foscttm: bool = True):
    self.check(name, prefix=prefix, lap=lap, queries=queries, trials=trials, foscttm=foscttm)
    self.data, self.lap, self.queries, self.trials = data, lap, int(queries), int(trials)
    self.metrics = tuple(f"{prefix}{m}" for m in (("foscttm",) if foscttm else ()) + ("matching_acc",))
    self.prefix, self.foscttm = prefix, foscttm
    self.square = True

  @staticmethod
  def check(name: str, *, prefix: str = "", lap: str = "scipy", queries: int = 0, trials: int = 1,
            foscttm: bool = True):
    from sotalign_jax import qap  # pylint: disable=g-import-not-at-top
    if lap not in qap.LAPS:
      raise ValueError(f"config.evals.{name}.lap must be one of {qap.LAPS}, got {lap!r}")
    if int(queries) != queries or queries < 0 or int(trials) != trials or trials < 1:
      raise ValueError(f"config.evals.{name}: queries must be >= 0 and trials >= 1, got {queries}, {trials}")

  def subsets(self, n: int, seed: int) -> list[np.ndarray]:
    """Positions of the matched subsets of an ``n``-item set for cell seed ``seed``."""
    if not self.queries:
      return [np.arange(n)]
    if self.queries > n:
      raise ValueError(f"config.evals: queries={self.queries} exceeds the {n} items of the evaluation set")
    rng = np.random.default_rng([seed, self.queries, 7919])
    return [np.sort(rng.choice(n, self.queries, replace=False)) for _ in range(self.trials)]

  def run(self, alignment, *, seed: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    if self.data is None:
      return {m: float("nan") for m in self.metrics}, {}
    d = self.data
    parts: dict[str, list] = {m: [] for m in self.metrics}
    for t, rows in enumerate(self.subsets(len(d.x), seed)):
      square = np.asarray(jax.device_get(alignment.similarity(d.x[rows], d.y[d.first[rows]])), np.float32)
      if self.foscttm:
        fos = metrics.foscttm_per_query(square)
        parts[f"{self.prefix}foscttm"].append(0.5 * (fos["x2y"] + fos["y2x"]))
      parts[f"{self.prefix}matching_acc"].append(metrics.matching_hits(square, seed=seed + t, lap=self.lap))
    per_query = {k: np.concatenate(v) for k, v in parts.items()}
    return {k: float(np.mean(v)) for k, v in per_query.items()}, per_query
