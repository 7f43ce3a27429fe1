r"""Zero-shot classification: each image is given the class whose prompt it scores highest (CLIP's protocol,
Radford et al., 2021); accuracy per image."""

from __future__ import annotations

import jax
import numpy as np

from sotalign_jax.evaluators.common import EvalSet


class Evaluator:
  """``metric`` (default ``zeroshot_<name>``): the fraction of ``data.x`` whose highest-scoring row of ``data.y``
  (one prompt per class) is its label.

  Args:
    data: the :class:`EvalSet` (``x``, ``y`` one row per class, ``labels``), or ``None``: NaN.
    name: the entry's name in ``config.evals``.
    metric: the metric's name.
  """

  def __init__(self, data: EvalSet | None, *, name: str = "zeroshot", metric: str = ""):
    self.check(name, metric=metric)
    self.data, self.metrics = data, (metric or f"zeroshot_{name}",)
    self.square = False  # one prompt per class: no set matching

  @staticmethod
  def check(name: str, *, metric: str = ""):
    del name, metric

  def run(self, alignment, *, seed: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    del seed
    if self.data is None:
      return {self.metrics[0]: float("nan")}, {}
    d = self.data
    pred = np.argmax(np.asarray(jax.device_get(alignment.similarity(d.x, d.y))), axis=1)
    hits = (pred == d.labels).astype(np.float64)
    return {self.metrics[0]: float(hits.mean())}, {self.metrics[0]: hits}
