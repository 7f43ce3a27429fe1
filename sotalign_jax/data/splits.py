"""Deterministic train/eval splits from a stable hash of the image id.

Each id is mapped to a number in ``[0, 1)``:

.. math::

  u(\\mathrm{id}) = \\mathrm{int}\\big(\\mathrm{SHA256}(
  \\mathrm{seed} \\,\\|\\, \\texttt{":"} \\,\\|\\, \\mathrm{id})_{[0:8]}\\big) / 2^{64}

(``hashlib``, not Python's salted ``hash``), so the split of an image depends on nothing but its id and
the seed: it is the same on every machine and run, whatever the order or the rest of the data.
With *fractions* an id goes to the split whose cumulative interval contains ``u``; with *sizes* the ids
are ranked by ``u`` and consecutive blocks are taken, in the order of :data:`SPLITS`, except that
``test`` and ``val`` are taken first so that evaluation sets do not move when ``paired`` grows.
All captions of an image share its split, so no image is on both sides of a train/test boundary.
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np

__all__ = ["SPLITS", "DEFAULT_FRACTIONS", "stable_uniform", "assign_splits", "parse_split_spec"]

SPLITS = ("paired", "unpaired", "val", "test")
DEFAULT_FRACTIONS = {"paired": 0.1, "unpaired": 0.7, "val": 0.1, "test": 0.1}


def stable_uniform(ids: Sequence[str], *, seed: str = "") -> np.ndarray:
  """Maps each id to a reproducible number in ``[0, 1)``: float64 ``[n]``."""
  out = np.empty(len(ids), dtype=np.float64)
  for i, s in enumerate(ids):
    digest = hashlib.sha256(f"{seed}:{s}".encode("utf-8")).digest()
    out[i] = int.from_bytes(digest[:8], "big") / 2.0**64
  return out


def assign_splits(ids: Sequence[str], *, fractions: Mapping[str, float] | None = None,
                  sizes: Mapping[str, int] | None = None, seed: str = "") -> list[str]:
  """Assigns each id to one of :data:`SPLITS`.

  Args:
    ids: ``[n]`` ids (duplicates get the same split).
    fractions: split name -> fraction; must sum to 1. Default :data:`DEFAULT_FRACTIONS`.
    sizes: split name -> number of *distinct* ids, instead of ``fractions``; splits not named get
      nothing, except that ``unpaired`` gets the remainder when not named.
    seed: changes the whole assignment.

  Returns:
    ``[n]`` split names.
  """
  if fractions is not None and sizes is not None:
    raise ValueError("give fractions or sizes, not both")
  ids = [str(i) for i in ids]
  if sizes is None:
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    _check_names(fractions)
    vals = np.array([float(fractions.get(s, 0.0)) for s in SPLITS])
    if np.any(~np.isfinite(vals)) or np.any(vals < 0) or abs(vals.sum() - 1.0) > 1e-6:
      raise ValueError(f"fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    edges = np.cumsum(vals)
    edges[-1] = np.inf
    u = stable_uniform(ids, seed=seed)
    return [SPLITS[k] for k in np.searchsorted(edges, u, side="right")]
  sizes = dict(sizes)
  _check_names(sizes)
  if any(int(v) < 0 for v in sizes.values()):
    raise ValueError(f"sizes must be >= 0, got {sizes}")
  unique = sorted(set(ids))
  u = stable_uniform(unique, seed=seed)
  ranked = [unique[k] for k in np.argsort(u, kind="stable")]
  if sum(int(v) for v in sizes.values()) > len(ranked):
    raise ValueError(f"sizes {sizes} ask for more than the {len(ranked)} distinct ids")
  order = ("test", "val", "paired", "unpaired")
  which: dict[str, str] = {}
  start = 0
  for name in order:
    if name in sizes:
      n = int(sizes[name])
    elif name == "unpaired":
      n = len(ranked) - start
    else:
      n = 0
    for s in ranked[start:start + n]:
      which[s] = name
    start += n
  return [which.get(s, "unused") for s in ids]


def parse_split_spec(spec: str) -> dict[str, float]:
  """Parses ``"paired=0.1,unpaired=0.7,val=0.1,test=0.1"`` (values may be counts: ``"test=500"``)."""
  out: dict[str, float] = {}
  for part in spec.split(","):
    if not part.strip():
      continue
    if "=" not in part:
      raise ValueError(f"split spec must look like 'paired=0.1,test=0.2', got {spec!r}")
    k, v = part.split("=", 1)
    out[k.strip()] = float(v)
  _check_names(out)
  return out


def _check_names(m: Mapping[str, float]) -> None:
  bad = set(m) - set(SPLITS)
  if bad:
    raise ValueError(f"unknown split names {sorted(bad)}; use {list(SPLITS)}")
