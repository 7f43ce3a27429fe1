"""Reads PyTorch ``torch.save`` checkpoints into numpy arrays, without torch and without arbitrary code.

Two on-disk formats exist:

* the **legacy** format (``torch.save(..., _use_new_zipfile_serialization=False)``, the default before torch 1.6):
  five pickles back to back — magic number, protocol version, system info, the object itself (tensors refer to
  storages by *persistent id*), the list of storage keys — followed by every storage's raw bytes, each preceded by
  its element count as a little-endian ``int64``;
* the **zip** format (torch >= 1.6): ``<archive>/data.pkl`` holds the object and ``<archive>/data/<key>`` each
  storage's raw bytes.

Both are read with a restricted :class:`pickle.Unpickler` that resolves only the globals a state dict needs
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and the typed storage
classes); anything else raises :class:`pickle.UnpicklingError`, so a hostile file cannot run code. Tensors come back
as C-contiguous numpy arrays (``bfloat16`` through :mod:`ml_dtypes`).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Storage:
  """A storage whose bytes may arrive after the object pickle (legacy format)."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype = np.dtype(dtype)
    self.numel = numel
    self.array: np.ndarray | None = None


class _StorageView:
  """An old-style view into a storage (legacy ``view_metadata``)."""

  def __init__(self, base: _Storage, offset: int, numel: int):
    self.base, self.offset, self.numel = base, offset, numel


class _LazyTensor:
  """``_rebuild_tensor_v2`` arguments, turned into an array once the storage bytes are known."""

  def __init__(self, storage, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def materialize(self) -> np.ndarray:
    storage, offset = self.storage, self.offset
    if isinstance(storage, _StorageView):
      storage, offset = storage.base, storage.offset + offset
    if storage.array is None:
      raise pickle.UnpicklingError("tensor refers to a storage whose data is missing from the file")
    flat = storage.array
    if not self.size:
      return np.array(flat[offset])  # 0-d array, like a 0-d tensor
    needed = offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
    if any(n == 0 for n in self.size):
      return np.zeros(self.size, flat.dtype)
    if needed > flat.size or offset < 0 or min(self.stride) < 0:
      raise pickle.UnpicklingError(f"tensor of size {self.size} stride {self.stride} overruns its storage")
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=self.size, strides=[s * item for s in self.stride])
    return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
  del requires_grad, backward_hooks, rest
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
  del requires_grad, backward_hooks, rest
  return data


class _StorageClass:
  """Stands in for ``torch.FloatStorage`` and friends; only its dtype is used."""

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals of a tensor state dict; storages come through ``persistent_load``."""

  def __init__(self, file: BinaryIO, storages: dict, load_storage=None):
    super().__init__(file, encoding="utf-8")
    self._storages = storages
    self._load_storage = load_storage

  def find_class(self, module: str, name: str):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor_v2
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageClass(_STORAGE_DTYPES[name])
    raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a torch checkpoint")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    storage_type, key, _, numel = pid[1:5]
    view_metadata = pid[5] if len(pid) > 5 else None
    if not isinstance(storage_type, _StorageClass):
      raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
    key = str(key)
    if key not in self._storages:
      storage = _Storage(storage_type.dtype, int(numel))
      if self._load_storage is not None:
        storage.array = self._load_storage(key, storage.dtype, storage.numel)
      self._storages[key] = storage
    storage = self._storages[key]
    if view_metadata is not None:
      _, offset, view_numel = view_metadata
      return _StorageView(storage, int(offset), int(view_numel))
    return storage


def _materialize(obj: Any) -> Any:
  if isinstance(obj, _LazyTensor):
    return obj.materialize()
  if isinstance(obj, collections.OrderedDict):
    return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
  if isinstance(obj, dict):
    return {k: _materialize(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_materialize(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_materialize(v) for v in obj)
  return obj


def _load_legacy(f: BinaryIO) -> Any:
  def plain() -> Any:
    return _RestrictedUnpickler(f, {}).load()

  if plain() != _MAGIC_NUMBER:
    raise ValueError("not a torch checkpoint: bad magic number")
  if plain() != _PROTOCOL_VERSION:
    raise ValueError("unsupported legacy torch protocol version")
  sys_info = plain()
  if not sys_info.get("little_endian", True):
    raise ValueError("big-endian torch checkpoints are not supported")
  storages: dict[str, _Storage] = {}
  obj = _RestrictedUnpickler(f, storages).load()
  keys = plain()
  for key in keys:
    storage = storages.get(str(key))
    if storage is None:
      raise pickle.UnpicklingError(f"storage {key!r} listed but never referenced")
    header = f.read(8)
    if len(header) != 8:
      raise ValueError("truncated torch checkpoint (storage header)")
    (numel,) = struct.unpack("<q", header)
    nbytes = numel * storage.dtype.itemsize
    data = f.read(nbytes)
    if len(data) != nbytes:
      raise ValueError(f"truncated torch checkpoint (storage {key!r} wants {nbytes} bytes, has {len(data)})")
    storage.array = np.frombuffer(data, storage.dtype).copy()
  return _materialize(obj)


def _load_zip(zf: zipfile.ZipFile) -> Any:
  pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
  if len(pkl) != 1:
    raise ValueError("zip torch checkpoint without a unique data.pkl")
  prefix = pkl[0][: -len("data.pkl")]

  def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
    data = zf.read(f"{prefix}data/{key}")
    if len(data) < numel * dtype.itemsize:
      raise ValueError(f"truncated storage {key!r} in zip torch checkpoint")
    return np.frombuffer(data[: numel * dtype.itemsize], dtype).copy()

  with zf.open(pkl[0]) as f:
    obj = _RestrictedUnpickler(io.BytesIO(f.read()), {}, load_storage).load()
  return _materialize(obj)


def load(path_or_file: str | os.PathLike | BinaryIO) -> Any:
  """Loads a ``torch.save`` file (legacy or zip format) holding tensors, dicts, lists and plain values.

  Args:
    path_or_file: file name or binary file object.

  Returns:
    The saved object with every tensor replaced by a C-contiguous :class:`numpy.ndarray` (a state dict comes back as
    an ``OrderedDict[str, ndarray]``).

  Raises:
    ValueError: not a torch checkpoint, truncated, or big-endian.
    pickle.UnpicklingError: the file references a global outside the state-dict whitelist.
  """
  if isinstance(path_or_file, (str, os.PathLike)):
    with open(path_or_file, "rb") as f:
      return load(f)
  f = path_or_file
  start = f.tell()
  head = f.read(4)
  f.seek(start)
  if head.startswith(b"PK"):
    with zipfile.ZipFile(f) as zf:
      return _load_zip(zf)
  if not head.startswith(b"\x80"):
    raise ValueError("not a torch checkpoint (neither a pickle stream nor a zip archive)")
  return _load_legacy(f)
