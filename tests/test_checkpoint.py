"""``encoders.checkpoint``: our numpy safetensors reader against files written by the ``safetensors`` library."""

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.flax import save_file as save_flax
from safetensors.numpy import save_file

from sotalign_jax.encoders import checkpoint


def test_reads_what_the_safetensors_library_writes(tmp_path, rng):
  tensors = {"a.weight": rng.normal(size=(3, 5)).astype(np.float32), "b": rng.normal(size=(7,)).astype(np.float16),
             "c": rng.normal(size=(2, 2, 2)).astype(np.float64), "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
             "empty": np.zeros((0, 4), np.float32)}
  save_file(tensors, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
  out = checkpoint.read_safetensors(tmp_path / "x.safetensors")
  assert sorted(out) == sorted(tensors)
  for k, v in tensors.items():
    want_dtype = np.int64 if k == "ids" else np.float32
    assert out[k].dtype == want_dtype and out[k].shape == v.shape, k
    np.testing.assert_array_equal(out[k], v.astype(want_dtype))


def test_reads_bfloat16_written_by_safetensors_flax(tmp_path, rng):
  x = rng.normal(size=(4, 6)).astype(np.float32)
  save_flax({"w": jnp.asarray(x, jnp.bfloat16)}, str(tmp_path / "bf.safetensors"))
  out = checkpoint.read_safetensors(tmp_path / "bf.safetensors")["w"]
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, x.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_directory_single_file_shards_and_errors(tmp_path, rng):
  a, b = rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)
  save_file({"a": a}, str(tmp_path / "model-00001-of-00002.safetensors"))
  save_file({"b": b}, str(tmp_path / "model-00002-of-00002.safetensors"))
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
  out = checkpoint.read_safetensors_dir(tmp_path)
  np.testing.assert_array_equal(out["a"], a)
  np.testing.assert_array_equal(out["b"], b)
  with pytest.raises(FileNotFoundError, match="no model.safetensors"):
    checkpoint.read_safetensors_dir(tmp_path / "nothing")
  (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
  with pytest.raises(ValueError, match="not a safetensors file"):
    checkpoint.read_safetensors(tmp_path / "bad.safetensors")
