"""Reading Hugging Face checkpoint weights with numpy alone: ``model.safetensors`` (or its shards).

The safetensors format is an 8-byte little-endian header length, a JSON header mapping each tensor name to its
``dtype``, ``shape`` and ``data_offsets`` into the byte buffer that follows, then that buffer. Reading it here (a
memory map and ``np.frombuffer``) needs no ``safetensors`` package and handles ``BF16`` (through ``ml_dtypes``,
which jax already requires), which ``safetensors.numpy`` cannot; every tensor comes back as float32 or its integer
dtype. The tests check it against files written by the ``safetensors`` library itself.
"""

from __future__ import annotations

import json
import pathlib
import struct

from typing import Any

import jax
import ml_dtypes
import numpy as np

__all__ = ["read_safetensors", "read_safetensors_dir", "flatten_tree", "nest_tree"]

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_FLOATS = ("F64", "F32", "F16", "BF16")


def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of one ``.safetensors`` file, floating ones as float32 (numpy arrays, copied out of the file).

  Raises:
    ValueError: the file is not a safetensors file, or holds a dtype numpy cannot represent (e.g. FP8).
  """
  path = pathlib.Path(path)
  with open(path, "rb") as fh:
    head = fh.read(8)
    if len(head) != 8:
      raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", head)
    try:
      header = json.loads(fh.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{path}: not a safetensors file (unreadable JSON header: {e})") from e
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
  out = {}
  for name, spec in header.items():
    if name == "__metadata__":
      continue
    if spec["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has dtype {spec['dtype']}, which is not supported; "
                       f"save the checkpoint in one of {sorted(_DTYPES)}")
    start, end = spec["data_offsets"]
    arr = np.frombuffer(data[start:end], dtype=_DTYPES[spec["dtype"]]).reshape(spec["shape"])
    out[name] = arr.astype(np.float32) if spec["dtype"] in _FLOATS else arr.copy()
  return out


def read_safetensors_dir(directory: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Every tensor of ``directory/model.safetensors``, or of the shards named by ``model.safetensors.index.json``.

  Raises:
    FileNotFoundError: the directory holds neither.
  """
  directory = pathlib.Path(directory)
  index = directory / "model.safetensors.index.json"
  if (directory / "model.safetensors").is_file():
    files = [directory / "model.safetensors"]
  elif index.is_file():
    files = [directory / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
  else:
    raise FileNotFoundError(f"{directory}: no model.safetensors (nor model.safetensors.index.json) found")
  state: dict[str, np.ndarray] = {}
  for f in files:
    state.update(read_safetensors(f))
  return state


def flatten_tree(tree: Any) -> dict[str, Any]:
  """``{"a/b/kernel": leaf}`` for a nested dict (or any pytree of dicts)."""
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def nest_tree(flat: dict[str, np.ndarray], want: dict[str, Any], *, model: str = "") -> dict:
  """Nests ``{"a/b/kernel": array}`` into a dict tree, once it covers every key of ``want`` (a flat tree).

  Raises:
    ValueError: ``flat`` lacks keys of ``want`` (the message names a few and asks whether it is the right model).
  """
  missing = sorted(set(want) - set(flat))
  if missing:
    raise ValueError(f"checkpoint lacks {model + ' ' if model else ''}parameters {missing[:5]} (of {len(missing)}); "
                     "is it the right model?")
  tree: dict = {}
  for target, arr in flat.items():
    *dirs, leaf = target.split("/")
    node = tree
    for d in dirs:
      node = node.setdefault(d, {})
    node[leaf] = arr
  return tree
