"""A lazy row source over memory-mapped embedding arrays: the unpaired pools of a large cache or of big files.

A :class:`Pool` is a list of ``(array, rows)`` parts read only on demand, by contiguous slices, so a trained method that
reads one block of the unpaired pool per step (or one host's block, :func:`sotalign_jax.runtime.distributed.shard_rows`)
never loads the rest. :class:`sotalign_jax.aligners.AlignData` accepts one wherever it takes rows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Pool"]


class Pool(NamedTuple):
  """Rows ``idx`` of each array of ``parts = ((array, idx), ...)``, concatenated, read only on demand.

  The arrays are memory-mapped caches, so a host that reads one block of a pool
  (:func:`~sotalign_jax.runtime.distributed.shard_rows`) never loads the rest.
  """
  parts: tuple

  @classmethod
  def of(cls, array, idx=None) -> "Pool":
    return cls(((array, np.arange(len(array)) if idx is None else np.asarray(idx, np.int64)),))

  def __len__(self) -> int:
    return sum(len(idx) for _, idx in self.parts)

  def __add__(self, other: "Pool") -> "Pool":
    return Pool(self.parts + other.parts)

  def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``[start, stop)`` of the concatenation as a float32 ``[stop - start, d]`` array."""
    stop = len(self) if stop is None else stop
    out, offset = [], 0
    for array, idx in self.parts:
      lo, hi = max(start - offset, 0), min(stop - offset, len(idx))
      if lo < hi:
        out.append(np.asarray(array[idx[lo:hi]], np.float32))
      offset += len(idx)
    return np.concatenate(out)

  @property
  def shape(self) -> tuple[int, int]:
    return (len(self), int(self.parts[0][0].shape[1]))

  def __getitem__(self, rows: slice) -> np.ndarray:
    """Rows ``[start, stop)`` (a slice with step 1): a pool is a lazy row source of ``aligners.AlignData``."""
    if not isinstance(rows, slice) or rows.step not in (None, 1):
      raise TypeError("a Pool is read by contiguous slices, pool[start:stop]")
    start, stop, _ = rows.indices(len(self))
    return self.read(start, stop) if stop > start else np.zeros((0, self.shape[1]), np.float32)

  def subset(self, positions: np.ndarray) -> "Pool":
    """The rows at sorted ``positions`` of the concatenation."""
    parts, offset = [], 0
    for array, idx in self.parts:
      mine = positions[(positions >= offset) & (positions < offset + len(idx))] - offset
      parts.append((array, idx[mine]))
      offset += len(idx)
    return Pool(tuple(parts))
