r"""Embedding *files*: the alignment data of a researcher who has their own embeddings, as plain float32 ``.npy``.

Eight files, each optional unless said otherwise, named by the keys of :data:`FILE_KEYS` (the config keys
``data.<key>`` of ``experiments/sotalign.py``; ``python -m sotalign_jax.cli.convert`` writes and reads them):

==================================  ==========================================================================
``pairs_x``, ``pairs_y``            row-aligned pairs: row ``i`` of ``pairs_x`` (an image) goes with row ``i``
                                    of ``pairs_y`` (its caption). Optional: none given is zero pairs.
``unpaired_x``, ``unpaired_y``      unpaired images and unpaired texts: any sizes, no alignment. Optional.
``val_x``, ``val_y``                row-aligned validation pairs (for methods that choose a hyperparameter).
``test_x``, ``test_y``              row-aligned test pairs: image ``i`` ↔ caption ``i``. Required.
==================================  ==========================================================================

Every file is a 2-D float32 ``[rows, dim]`` ``.npy`` with at least one row and no NaN/Inf; every ``*_x`` file
has one dimension and every ``*_y`` file another (one image encoder, one text encoder). A couple (``pairs``,
``val``, ``test``) is given whole or not at all, and its two files have the same number of rows.

:func:`open_embedding_files` memory-maps the files (``np.load(path, mmap_mode="r")``) and checks all of the
above; each error names the key and the file and says what to do. The NaN/Inf scan reads ``block_rows`` rows at
a time, so a file larger than memory is never read whole; the returned arrays are still the memory maps, so a
pool built on them reads only the rows it is asked for.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, NamedTuple

import numpy as np

__all__ = ["FILE_KEYS", "COUPLES", "EmbeddingFiles", "open_embedding_files", "config_names", "check_keys",
           "first_nonfinite_row"]

FILE_KEYS = ("pairs_x", "pairs_y", "unpaired_x", "unpaired_y", "val_x", "val_y", "test_x", "test_y")
COUPLES = ("pairs", "val", "test")  # row-aligned x/y couples; the unpaired files have no alignment
REQUIRED = ("test_x", "test_y")
NPY_MAGIC = b"\x93NUMPY"
CONVERT_HINT = ("convert it with `np.save(path, np.load(path).astype(np.float32))`, or write the files with "
                "`python -m sotalign_jax.cli.convert`")


class EmbeddingFiles(NamedTuple):
  """The memory-mapped embedding files (``np.memmap`` ``[rows, dim]`` float32, or ``None`` for a file not given).

  Attributes:
    pairs_x … test_y: one per key of :data:`FILE_KEYS`.
    paths: key → absolute path of each file given.
  """
  pairs_x: np.ndarray | None
  pairs_y: np.ndarray | None
  unpaired_x: np.ndarray | None
  unpaired_y: np.ndarray | None
  val_x: np.ndarray | None
  val_y: np.ndarray | None
  test_x: np.ndarray | None
  test_y: np.ndarray | None
  paths: dict

  @property
  def n_pairs(self) -> int:
    """Rows of the pair files (0 when none are given)."""
    return 0 if self.pairs_x is None else len(self.pairs_x)

  @property
  def sizes(self) -> dict[str, list[int]]:
    """key → ``[rows, dim]`` of each file given (for manifests and results)."""
    return {k: list(getattr(self, k).shape) for k in FILE_KEYS if getattr(self, k) is not None}


def config_names(prefix: str = "config.data.") -> dict[str, str]:
  """key → the name an error message gives it (``config.data.pairs_x`` by default)."""
  return {k: prefix + k for k in FILE_KEYS}


def _open_one(name: str, path: str) -> np.ndarray:
  """``np.load(path, mmap_mode="r")`` after checking that ``path`` is a readable 2-D float32 ``.npy``."""
  if not os.path.isfile(path):
    what = "is a directory, not a file" if os.path.isdir(path) else "not found"
    raise FileNotFoundError(f"{name}: {path} {what}; give the path of a float32 .npy file [rows, dim] "
                            f"(python -m sotalign_jax.cli.convert to-files writes an example set)")
  try:
    with open(path, "rb") as f:
      head = f.read(len(NPY_MAGIC))
  except OSError as e:
    raise ValueError(f"{name}: cannot read {path} ({e.strerror}); check its permissions") from None
  if head != NPY_MAGIC:
    kind = " (it is a zip archive: an .npz? save each array on its own with np.save)" if head[:2] == b"PK" else ""
    raise ValueError(f"{name}: {path} is not a .npy file{kind}; save the embeddings with "
                     f"`np.save(path, array.astype(np.float32))`")
  try:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"{name}: {path} is not a readable .npy file ({e}); it may be truncated: write it again "
                     f"with np.save") from None
  if array.ndim != 2:
    raise ValueError(f"{name}: {path} has shape {array.shape}, expected 2-D [rows, dim]; reshape it "
                     f"(e.g. `a.reshape(len(a), -1)`) and save it again")
  if array.dtype != np.float32:
    raise ValueError(f"{name}: {path} has dtype {array.dtype}, expected float32 (little-endian <f4); "
                     + CONVERT_HINT)
  if array.shape[0] == 0 or array.shape[1] == 0:
    raise ValueError(f"{name}: {path} is empty (shape {array.shape}); it needs at least one row and one column "
                     f"(leave {name} unset instead if there is no such data)")
  return array


def first_nonfinite_row(array: np.ndarray, *, rows: slice | None = None, block_rows: int = 65536) -> int | None:
  """The first row of ``array[rows]`` with a NaN or Inf (an index into ``array``), or ``None``.

  Reads ``block_rows`` rows at a time, so a memory-mapped file is never loaded whole.
  """
  rows = slice(0, len(array)) if rows is None else rows
  for start in range(rows.start, rows.stop, block_rows):
    block = np.asarray(array[start:min(start + block_rows, rows.stop)])
    bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
    if len(bad):
      return start + int(bad[0])
  return None


def check_keys(paths: Mapping[str, str], *, names: Mapping[str, str] | None = None) -> dict[str, str]:
  """The checks that need no file: known keys, whole couples, the test files given.

  Args:
    paths: key → path (empty: not given).
    names: key → its name in error messages (default :func:`config_names`).

  Returns:
    key → absolute path of each file given.
  """
  names = {**config_names(), **(names or {})}
  unknown = sorted(set(paths) - set(FILE_KEYS))
  if unknown:
    raise ValueError(f"unknown embedding file key(s) {unknown}; the keys are {list(FILE_KEYS)}")
  given = {k: os.path.abspath(os.fspath(p)) for k, p in paths.items() if p}
  for couple in COUPLES:
    x, y = f"{couple}_x", f"{couple}_y"
    if (x in given) != (y in given):
      have, miss = (x, y) if x in given else (y, x)
      raise ValueError(f"{names[have]} is set ({given[have]}) but {names[miss]} is not: the {couple} files are "
                       f"row-aligned couples, give both (or neither)")
  missing = [k for k in REQUIRED if k not in given]
  if missing:
    raise ValueError(f"{' and '.join(names[k] for k in missing)} not set: the test pairs are required (row i of "
                     f"test_x is the image of caption i of test_y)")
  return given


def open_embedding_files(paths: Mapping[str, str], *, check_values: bool = True, block_rows: int = 65536,
                         names: Mapping[str, str] | None = None,
                         scan_rows: Callable[[int], slice] | None = None) -> EmbeddingFiles:
  """Memory-maps the files of ``paths`` and checks them (module docstring).

  Args:
    paths: key of :data:`FILE_KEYS` → path; an empty or missing entry means "not given".
    check_values: scan every file for NaN/Inf rows (``block_rows`` rows at a time).
    block_rows: rows per block of the scan.
    names: key → its name in error messages (default :func:`config_names`: ``config.data.<key>``; the converter
      passes its flags).
    scan_rows: ``n_rows → slice`` of the rows to scan of each file (default all); on several hosts the experiment
      passes :func:`sotalign_jax.runtime.distributed.host_shard` so that each host scans its own block.

  Raises:
    FileNotFoundError: a file does not exist.
    ValueError: anything else (not a .npy, not 2-D, not float32, empty, NaN/Inf, mismatched rows or dimensions,
      half a couple, no test files, an unknown key); the message names the key and the file.
  """
  names = {**config_names(), **(names or {})}
  given = check_keys(paths, names=names)
  arrays = {k: _open_one(names[k], p) for k, p in given.items()}
  for couple in COUPLES:
    x, y = f"{couple}_x", f"{couple}_y"
    if x in arrays and len(arrays[x]) != len(arrays[y]):
      raise ValueError(f"{names[x]} ({given[x]}) has {len(arrays[x])} rows but {names[y]} ({given[y]}) has "
                       f"{len(arrays[y])} rows: the {couple} files must be row-aligned (row i of one goes with row i "
                       f"of the other)")
  for side, what in (("x", "image"), ("y", "text")):
    keys = [k for k in FILE_KEYS if k.endswith(f"_{side}") and k in arrays]
    dims = {k: arrays[k].shape[1] for k in keys}
    if len(set(dims.values())) > 1:
      listing = ", ".join(f"{names[k]} {given[k]} has {d}" for k, d in dims.items())
      raise ValueError(f"the *_{side} files must share one dimension (one {what} encoder): {listing}; re-embed "
                       f"the odd one out with the same encoder")
  if check_values:  # last: the only check that reads the data
    for k, a in arrays.items():
      bad = first_nonfinite_row(a, rows=None if scan_rows is None else scan_rows(len(a)), block_rows=block_rows)
      if bad is not None:
        raise ValueError(f"{names[k]}: {given[k]} has NaN/Inf in row {bad} (the first such row); fix or drop "
                         f"those rows (in every file of its couple) and save the file again")
  return EmbeddingFiles(**{k: arrays.get(k) for k in FILE_KEYS}, paths=given)
