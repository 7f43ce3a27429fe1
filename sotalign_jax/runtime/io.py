"""Atomic file writing: a reader never sees a half-written file under its final name.

Every writer here writes to a temporary file in the *same directory* as the target, flushes and
``fsync``\\ s it, then ``os.replace``\\ s it onto the final name (atomic on POSIX) and ``fsync``\\ s the
directory so the rename itself survives a crash. A killed process therefore leaves either the old
file, or the new one, plus at worst a stray ``.tmp-*`` file that the next write ignores.

Use these helpers for anything an experiment or a resumable job reads back (caches, manifests,
metrics, checkpoints' side files).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

__all__ = [
    "atomic_open",
    "write_bytes",
    "write_text",
    "write_json",
    "write_jsonl",
    "save_npy",
    "save_npz",
    "read_jsonl",
]


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _fsync_dir(directory: str) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:  # Some filesystems do not allow opening directories.
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None) -> Iterator[Any]:
  """Opens a temporary file that replaces ``path`` atomically when the ``with`` block succeeds.

  If the block raises, the temporary file is removed and ``path`` is left untouched.

  Args:
    path: final file name; its directory is created if missing.
    mode: ``"wb"`` or ``"w"``.
    encoding: text encoding for ``mode="w"`` (default ``"utf-8"``).

  Yields:
    The open temporary file object.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", dir=directory)
  try:
    with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": encoding or "utf-8"})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the final file the usual permissions
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise
  _fsync_dir(directory)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically."""
  with atomic_open(path, "wb") as f:
    f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` atomically."""
  with atomic_open(path, "w") as f:
    f.write(text)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
  """Writes ``obj`` as JSON (UTF-8, keys in insertion order) to ``path`` atomically."""
  write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
  """Writes one JSON object per line to ``path`` atomically."""
  with atomic_open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False, default=_json_default))
      f.write("\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """Reads a JSON-lines file written by :func:`write_jsonl` (blank lines are ignored)."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def save_npy(path: str | os.PathLike, array: Any) -> None:
  """Saves ``array`` in ``.npy`` format to ``path`` atomically (no pickles)."""
  array = np.asarray(array)
  with atomic_open(path, "wb") as f:
    np.save(f, array, allow_pickle=False)


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
  """Saves named arrays in ``.npz`` format to ``path`` atomically (no pickles)."""
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
  write_bytes(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")
