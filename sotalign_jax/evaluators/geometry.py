r"""Geometry of the two spaces on a small paired sample, before any fit.

How similar the two embedding spaces look from a few pairs — linear CKA (Kornblith et al., 2019), mutual k-NN
(Huh et al., 2024), TSI and QSI (Schnaus et al., 2026) — each calibrated against a permutation null
(:func:`sotalign_jax.scores.calibrated`). Schnaus et al. (2026) find that such scores predict whether alignment
*without* pairs works; the benchmark reports them beside its tables.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from sotalign_jax import scores

__all__ = ["space_scores", "markdown"]


def space_scores(x: np.ndarray, y: np.ndarray, *, metrics: Sequence[str], n_perm: int, seed: int) -> dict:
  """``{metric: {score, null_mean, z, p_value}}`` of the paired sample ``x`` ``[n, dx]`` ↔ ``y`` ``[n, dy]``.

  Args:
    x: ``[n, dx]`` x-side rows of the pairs.
    y: ``[n, dy]`` their partners.
    metrics: names of :data:`sotalign_jax.scores.METRICS`.
    n_perm: permutations of each score's null.
    seed: of the permutations (metric ``i`` uses ``fold_in(key(seed), i)``).
  """
  n = len(x)
  out = {}
  for i, metric in enumerate(metrics):
    c = scores.calibrated(metric, x, y, n_perm=int(n_perm), n_boot=0, key=jax.random.fold_in(jax.random.key(seed), i),
                          k=min(10, n - 1))
    out[metric] = {k: float(getattr(c, k)) for k in ("score", "null_mean", "z", "p_value")}
  return out


def markdown(geo: dict) -> str:
  """One line for the results' header (empty when nothing was scored)."""
  if not geo["scores"]:
    return ""
  st = geo["settings"]
  parts = [f"{m} {v['score']:.3f} (null {v['null_mean']:.3f}, z {v['z']:.1f}, p {v['p_value']:.3g})"
           for m, v in geo["scores"].items()]
  return (f"Geometry of the two spaces on {st['pairs']} training pairs (seed 0; permutation null of "
          f"{st['n_perm']}): " + "; ".join(parts) + ".\n")
