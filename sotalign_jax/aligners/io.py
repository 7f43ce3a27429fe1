r"""Saving and loading a fitted :class:`~sotalign_jax.aligners.Alignment` (any registered method's).

.. code-block:: python

  from sotalign_jax.aligners import io

  io.save("runs/sotalign/p100_s0__3f2a…/alignment", alignment)
  a = io.load("runs/sotalign/p100_s0__3f2a…/alignment")      # the same class, the same scores
  scores = a.similarity(test_images, test_texts)

An alignment is a pytree: a frozen dataclass whose array fields are leaves and whose options are static metadata.
:func:`save` writes a directory of two files:

* ``arrays.npz`` — every leaf as a host numpy array, named by its path in the dataclass (``wx``,
  ``params/f/linear/kernel``); no pickles. A PRNG key leaf is stored as its key data (``jax.random.key_data``).
* ``alignment.json`` — ``format`` (1), the package ``version`` that wrote it, the ``class`` as ``module:qualname``,
  the ``static`` fields with their JSON values (tuples kept as tuples), and the ``leaves``: each data field's
  structure (``None``, nested dicts / lists / tuples) with, for each array, its npz name, dtype and kind (a jax
  array, a numpy array, a PRNG key or a Python scalar), so :func:`load` rebuilds exactly what was saved.

The write is atomic: both files go into a temporary directory beside ``path``, which is then renamed onto
``path`` (a previous alignment there is replaced), so a reader never sees a half-written alignment and a failed
save leaves nothing behind. A static option that is a device mesh (QAP's ``mesh``) is placement, not part of the
fit: it is saved as ``None`` and named in ``dropped``.

:func:`load` imports only classes defined in ``sotalign_jax`` modules (a saved file cannot make it import anything
else); an alignment class of your own is loaded by passing it, ``load(path, classes=(MyAlignment,))``.

This module imports only numpy, jax and the aligners' base (the aligners sit above :mod:`sotalign_jax.runtime`), so
its atomic write is its own (the same scheme as :mod:`sotalign_jax.runtime.io`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import shutil
import tempfile
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax.aligners.base import Alignment

__all__ = ["save", "load", "FORMAT", "ARRAYS", "META"]

FORMAT = 1
"""Version of the directory format; :func:`load` refuses others."""
ARRAYS = "arrays.npz"
META = "alignment.json"
_PACKAGE = "sotalign_jax"


# ----------------------------------------------------------------------------------------------------------------
# Classes.
# ----------------------------------------------------------------------------------------------------------------
def _fields(cls) -> tuple[list[dataclasses.Field], list[dataclasses.Field]]:
  """``(data fields, static fields)`` of an alignment dataclass (``static_field`` marks the static ones)."""
  fields = dataclasses.fields(cls)
  return ([f for f in fields if not f.metadata.get("static", False)],
          [f for f in fields if f.metadata.get("static", False)])


def _class_name(cls) -> str:
  return f"{cls.__module__}:{cls.__qualname__}"


def _check_class(obj) -> type:
  cls = type(obj)
  if not (isinstance(obj, Alignment) and dataclasses.is_dataclass(cls)):
    raise TypeError(f"io.save saves a fitted Alignment (a dataclass, e.g. what aligners.fit returns), got "
                    f"{cls.__name__}")
  if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
    raise ValueError(f"cannot save a {_class_name(cls)}: the class must be importable (defined at the top level of "
                     "a module other than __main__) to be loaded back")
  return cls


def _resolve_class(name: str, path: str, classes: Iterable[type]) -> type:
  """The class saved as ``module:qualname``: one of ``classes``, or an ``Alignment`` of a ``sotalign_jax`` module
  (nothing else is imported)."""
  given = {_class_name(c): c for c in classes}
  if name in given:
    return given[name]
  module, _, qualname = name.partition(":")
  if not qualname or not (module == _PACKAGE or module.startswith(_PACKAGE + ".")):
    raise ValueError(f"{path} names the class {name!r}, not one of sotalign_jax's: refusing to import it (io.load "
                     "imports only sotalign_jax classes; pass your own class as io.load(path, classes=(Cls,)))")
  try:
    obj = importlib.import_module(module)
    for part in qualname.split("."):
      obj = getattr(obj, part)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"{path}: the saved class {name!r} is not in this version of sotalign_jax ({e}); load it with "
                     "the version that saved it") from None
  if not (isinstance(obj, type) and issubclass(obj, Alignment) and dataclasses.is_dataclass(obj)):
    raise ValueError(f"{path} names {name!r}, which is not an Alignment dataclass: refusing to build it")
  return obj


# ----------------------------------------------------------------------------------------------------------------
# Static fields: JSON with tuples kept (static metadata must stay hashable).
# ----------------------------------------------------------------------------------------------------------------
def _encode_static(v, where: str):
  if v is None or isinstance(v, (bool, str)):
    return v
  if isinstance(v, (int, float)) and type(v) in (int, float):
    return v
  if isinstance(v, np.generic) and v.dtype.kind in "biuf":
    return {"__numpy__": v.dtype.name, "value": v.item()}
  if isinstance(v, tuple):
    return {"__tuple__": [_encode_static(x, f"{where}[{i}]") for i, x in enumerate(v)]}
  if isinstance(v, list):
    return [_encode_static(x, f"{where}[{i}]") for i, x in enumerate(v)]
  if isinstance(v, dict) and all(isinstance(k, str) for k in v):
    return {"__dict__": {k: _encode_static(x, f"{where}[{k!r}]") for k, x in v.items()}}
  raise ValueError(f"cannot save the static option {where} = {v!r} ({type(v).__name__}): static options must be "
                   "None, bool, int, float, str, numpy scalars, or tuples / lists / str-keyed dicts of them")


def _decode_static(v):
  if isinstance(v, list):
    return [_decode_static(x) for x in v]
  if isinstance(v, dict):
    if "__tuple__" in v:
      return tuple(_decode_static(x) for x in v["__tuple__"])
    if "__numpy__" in v:
      return np.dtype(v["__numpy__"]).type(v["value"])
    if "__dict__" in v:
      return {k: _decode_static(x) for k, x in v["__dict__"].items()}
    raise ValueError(f"unknown static value {v!r}")
  return v


def _is_mesh(v) -> bool:
  return isinstance(v, jax.sharding.Mesh)


# ----------------------------------------------------------------------------------------------------------------
# Leaves: a JSON skeleton of each data field, arrays by their path.
# ----------------------------------------------------------------------------------------------------------------
def _host(a, where: str) -> np.ndarray:
  if isinstance(a, jax.Array) and not a.is_fully_addressable:
    if not a.is_fully_replicated:
      raise ValueError(f"cannot save {where}: it is sharded across hosts; gather it (or save on each host's "
                       "replicated copy) first")
    a = a.addressable_data(0)
  return np.asarray(jax.device_get(a))


def _store(a: np.ndarray) -> tuple[np.ndarray, str]:
  """``(array npz can hold, its dtype name)``: extension dtypes (bfloat16, …) are stored as same-size uints."""
  if a.dtype.kind in "biufc" and a.dtype.isbuiltin:
    return a, a.dtype.name
  return a.view(f"u{a.dtype.itemsize}"), a.dtype.name


def _encode_leaves(v, name: str, arrays: dict):
  """The JSON skeleton of one data field's value, adding its arrays to ``arrays`` under ``name``-based keys."""
  if v is None:
    return None
  if isinstance(v, dict):
    if not all(isinstance(k, str) and k and "/" not in k for k in v):
      raise ValueError(f"cannot save the field {name}: dict keys must be non-empty strings without '/', got "
                       f"{sorted(map(repr, v))}")
    return {"dict": {k: _encode_leaves(x, f"{name}/{k}", arrays) for k, x in v.items()}}
  if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
    kind = "list" if isinstance(v, list) else "tuple"
    return {kind: [_encode_leaves(x, f"{name}/{i}", arrays) for i, x in enumerate(v)]}
  if isinstance(v, (bool, int, float)) and type(v) in (bool, int, float):
    return {"scalar": type(v).__name__, "value": v}
  if isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jax.dtypes.prng_key):
    arrays[name] = _host(jax.random.key_data(v), name)
    return {"array": name, "kind": "key", "impl": str(jax.random.key_impl(v)), "dtype": arrays[name].dtype.name}
  if isinstance(v, (jax.Array, np.ndarray, np.generic)):
    kind = "jax" if isinstance(v, jax.Array) else "numpy"
    arrays[name], dtype = _store(_host(v, name))
    return {"array": name, "kind": kind, "dtype": dtype}
  raise ValueError(f"cannot save the field {name}: a {type(v).__name__} (a leaf must be an array, a Python scalar "
                   "or None, inside dicts, lists or tuples)")


def _decode_leaves(s, arrays, path: str):
  if s is None:
    return None
  if "dict" in s:
    return {k: _decode_leaves(x, arrays, path) for k, x in s["dict"].items()}
  if "list" in s:
    return [_decode_leaves(x, arrays, path) for x in s["list"]]
  if "tuple" in s:
    return tuple(_decode_leaves(x, arrays, path) for x in s["tuple"])
  if "scalar" in s:
    return {"bool": bool, "int": int, "float": float}[s["scalar"]](s["value"])
  if s["array"] not in arrays.files:
    raise ValueError(f"{path}: {ARRAYS} has no array {s['array']!r} named in {META}: the directory is damaged; "
                     "save the alignment again")
  a = arrays[s["array"]]
  if s["kind"] == "key":
    return jax.random.wrap_key_data(jnp.asarray(a), impl=s["impl"])
  if a.dtype.name != s["dtype"]:
    a = a.view(jnp.dtype(s["dtype"]))
  return jnp.asarray(a) if s["kind"] == "jax" else a


# ----------------------------------------------------------------------------------------------------------------
# Save and load.
# ----------------------------------------------------------------------------------------------------------------
def _fsync(path: str) -> None:
  with contextlib.suppress(OSError):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def save(path: str | os.PathLike, alignment: Alignment) -> None:
  """Saves ``alignment`` as the directory ``path`` (``arrays.npz`` + ``alignment.json``; see the module docstring).

  Atomic: written beside ``path`` and renamed onto it; a previous *alignment* directory at ``path`` is replaced,
  anything else there is refused. Call it on one process (every leaf must be on this host or replicated).

  Args:
    path: the directory to write (its parent is created if missing).
    alignment: a fitted :class:`~sotalign_jax.aligners.Alignment`.

  Raises:
    TypeError: ``alignment`` is not an Alignment dataclass.
    ValueError: a field cannot be saved (named), or ``path`` holds something other than a saved alignment.
  """
  from sotalign_jax import __version__  # pylint: disable=g-import-not-at-top

  cls = _check_class(alignment)
  path = os.path.abspath(os.fspath(path))
  if os.path.lexists(path) and not (os.path.isdir(path) and os.path.exists(os.path.join(path, META))):
    raise ValueError(f"{path} exists and is not a saved alignment: refusing to replace it (choose another path or "
                     "remove it)")
  data_fields, static_fields = _fields(cls)
  # Everything is encoded in memory first: a field that cannot be saved fails before anything is written.
  arrays, leaves, static, dropped = {}, {}, {}, []
  for f in data_fields:
    leaves[f.name] = _encode_leaves(getattr(alignment, f.name), f.name, arrays)
  for f in static_fields:
    v = getattr(alignment, f.name)
    if _is_mesh(v):
      static[f.name] = None
      dropped.append(f.name)
    else:
      static[f.name] = _encode_static(v, f.name)
  meta = {"format": FORMAT, "version": __version__, "class": _class_name(cls), "static": static, "leaves": leaves,
          "dropped": dropped}
  text = json.dumps(meta, indent=2, allow_nan=True) + "\n"

  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
  old = None
  try:
    with open(os.path.join(tmp, ARRAYS), "wb") as fh:
      np.savez(fh, **arrays)
      fh.flush()
      os.fsync(fh.fileno())
    with open(os.path.join(tmp, META), "w", encoding="utf-8") as fh:
      fh.write(text)
      fh.flush()
      os.fsync(fh.fileno())
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
    _fsync(tmp)
    if os.path.exists(path):  # a previous alignment: moved aside, then removed once the new one is in place
      old = tempfile.mkdtemp(prefix=f".old-{os.path.basename(path)}-", dir=parent)
      os.replace(path, os.path.join(old, "alignment"))
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None and not os.path.exists(path) and os.path.exists(os.path.join(old, "alignment")):
      os.replace(os.path.join(old, "alignment"), path)  # put the previous alignment back
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
  _fsync(parent)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def load(path: str | os.PathLike, *, classes: Iterable[type] = ()) -> Alignment:
  """The alignment :func:`save` wrote to ``path``: the same class, options and arrays (jax arrays as jax arrays).

  Args:
    path: a directory written by :func:`save`.
    classes: alignment classes defined outside ``sotalign_jax`` that may be built (by their ``module:qualname``).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: ``path`` is not a saved alignment, a format this version does not read, or names a class outside
      ``sotalign_jax`` (not imported).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: give the directory io.save wrote (a run's <run_dir>/alignment)")
  meta_path, arrays_path = os.path.join(path, META), os.path.join(path, ARRAYS)
  if not os.path.isdir(path) or not (os.path.isfile(meta_path) and os.path.isfile(arrays_path)):
    raise ValueError(f"{path} is not a saved alignment (a directory with {META} and {ARRAYS}, written by "
                     "sotalign_jax.aligners.io.save); give such a directory, e.g. <run_dir>/alignment")
  try:
    with open(meta_path, encoding="utf-8") as fh:
      meta = json.load(fh)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{meta_path} is not valid JSON ({e}): the directory is damaged; save the alignment again") \
        from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    got = meta.get("format") if isinstance(meta, dict) else None
    raise ValueError(f"{meta_path} has format {got!r}, this version of sotalign_jax reads format {FORMAT}: load it "
                     f"with the version that saved it ({meta.get('version') if isinstance(meta, dict) else '?'})")
  cls = _resolve_class(str(meta.get("class", "")), meta_path, classes)
  data_fields, static_fields = _fields(cls)
  want = {f.name for f in data_fields}, {f.name for f in static_fields}
  got = set(meta.get("leaves", {})), set(meta.get("static", {}))
  if want != got:
    raise ValueError(f"{meta_path}: the saved fields of {meta['class']} (arrays {sorted(got[0])}, options "
                     f"{sorted(got[1])}) differ from this version's (arrays {sorted(want[0])}, options "
                     f"{sorted(want[1])}); load it with the version that saved it ({meta.get('version')})")
  try:
    arrays = np.load(arrays_path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"{arrays_path} is not a readable .npz ({e}): the directory is damaged; save the alignment "
                     "again") from None
  with arrays:
    values = {k: _decode_leaves(s, arrays, arrays_path) for k, s in meta["leaves"].items()}
  values.update({k: _decode_static(v) for k, v in meta["static"].items()})
  init = {f.name for f in dataclasses.fields(cls) if f.init}
  obj = cls(**{k: v for k, v in values.items() if k in init})
  for k, v in values.items():
    if k not in init:
      object.__setattr__(obj, k, v)
  return obj
