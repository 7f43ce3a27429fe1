"""Flax ViT image towers (CLIP vision, DINOv2, SigLIP vision) read from Hugging Face PyTorch checkpoints.

Transformers 5 ships no Flax models, so the three towers are written out here, numerically following Hugging
Face's ``CLIPVisionModel``, ``Dinov2Model`` and ``SiglipVisionModel``. All three are pre-LayerNorm
Vision Transformers (Dosovitskiy et al., 2021): ``p x p`` patches are embedded by a stride-``p`` convolution,
a CLS token is prepended (CLIP, DINOv2) and learned position embeddings are added; every layer computes

.. math::
  x \\leftarrow x + \\gamma_1 \\odot \\mathrm{Attn}(\\mathrm{LN}_1(x)), \\qquad
  x \\leftarrow x + \\gamma_2 \\odot \\mathrm{MLP}(\\mathrm{LN}_2(x))

with softmax attention :math:`\\mathrm{softmax}(q k^\\top / \\sqrt{d_h}) v` per head and layer scales
:math:`\\gamma` only in DINOv2 (Oquab et al., 2024). The towers differ at the ends:

* CLIP (Radford et al., 2021): LayerNorm ``pre_layrnorm`` before the encoder; ``last_hidden_state`` is the
  encoder output and ``pooler_output = post_layernorm(h[:, 0])``. Activation ``quick_gelu``
  :math:`x\\,\\sigma(1.702 x)` unless the config says otherwise.
* DINOv2: ``last_hidden_state = layernorm(h)``, ``pooler_output`` its CLS token; exact GELU or SwiGLU MLPs.
  When the input's patch grid differs from the pretraining grid (``config.image_size / patch_size`` square,
  e.g. 37 x 37 for the hub checkpoints at 518 px, while 224 px inputs give 16 x 16), the patch position
  embeddings are resized like Hugging Face's ``Dinov2Embeddings.interpolate_pos_encoding``
  (transformers 4.57): ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`` without
  antialiasing, i.e. Keys' cubic kernel with :math:`a = -0.75`, half-pixel centres and clamped borders
  (:func:`bicubic_matrix`). The CLS position is kept as is. On the native grid nothing is resized.
* SigLIP (Zhai et al., 2023): no CLS token, ``gelu_pytorch_tanh``; ``last_hidden_state = post_layernorm(h)``
  and ``pooler_output`` comes from the multi-head attention-pooling head: one learned probe attends to all
  tokens, then :math:`y \\leftarrow y + \\mathrm{MLP}(\\mathrm{LN}(y))`.

CLIP and SigLIP accept only their pretraining grid (Hugging Face's default ``interpolate_pos_encoding=False``);
other sizes raise ``ValueError``.

Parameters are a plain nested dict of float32 numpy arrays whose names follow Hugging Face's CLIP vision tower
(``vision_model.encoder.layers.0.self_attn.q_proj.weight`` -> ``params['encoder']['layers']['0']['self_attn']
['q_proj']['kernel']``, transposed). DINOv2 names are renamed onto them (``encoder.layer.N.norm1`` ->
``encoder.layers.N.layer_norm1``, ``attention.attention.query`` -> ``self_attn.q_proj``,
``attention.output.dense`` -> ``self_attn.out_proj``, ``layer_scaleK.lambda1`` -> ``layer_scaleK``,
``mlp.weights_in/out`` -> ``mlp.fc1/fc2``, ``layernorm`` -> ``post_layernorm``, ``cls_token`` ->
``class_embedding``), and SigLIP's packed ``head.attention.in_proj_weight`` is split into ``q/k/v_proj``, so
one attention and one MLP serve all three towers. Conv kernels go from ``[D, C, p, p]`` to ``[p, p, C, D]``.

Poolings (:func:`pool`): ``pooler`` (the model's ``pooler_output``), ``cls`` (``last_hidden_state[:, 0]``),
``mean`` (mean of the patch tokens of ``last_hidden_state``) and ``cls_mean`` (CLS concatenated with that mean,
``[B, 2d]``: the SOTAlign image feature for DINO models).

References:
  A. Dosovitskiy et al. An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale. ICLR 2021.
  A. Radford et al. Learning Transferable Visual Models From Natural Language Supervision. ICML 2021.
  M. Oquab et al. DINOv2: Learning Robust Visual Features without Supervision. TMLR 2024.
  X. Zhai, B. Mustafa, A. Kolesnikov, L. Beyer. Sigmoid Loss for Language Image Pre-Training. ICCV 2023.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import re
from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax.encoders import checkpoint

__all__ = ["MODEL_TYPES", "POOLINGS", "ViTConfig", "VisionTransformer", "bicubic_matrix", "check_pooling",
           "config_from_dict", "convert_state", "dot_product_attention", "features", "load_checkpoint",
           "param_shapes", "pool"]

Family = Literal["clip", "dinov2", "siglip"]
# config.json ``model_type`` -> tower; ``clip`` / ``siglip`` are full dual-encoder checkpoints (``vision_config``).
MODEL_TYPES = {"clip": "clip", "clip_vision_model": "clip", "dinov2": "dinov2", "siglip": "siglip",
               "siglip_vision_model": "siglip"}
POOLINGS = ("pooler", "cls", "mean", "cls_mean")

# Hugging Face's config defaults (CLIPVisionConfig, Dinov2Config, SiglipVisionConfig), for fields a config omits.
_DEFAULTS = {
    "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "dinov2": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, hidden_act="gelu",
                   layer_norm_eps=1e-6, image_size=224, patch_size=14, num_channels=3, qkv_bias=True,
                   use_swiglu_ffn=False),
    "siglip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                   layer_norm_eps=1e-6, vision_use_head=True),
}
_PREFIXES = {"clip": "vision_model.", "dinov2": "dinov2.", "siglip": "vision_model."}

_ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Hyper-parameters of one vision tower (the ``config.json`` fields the forward pass uses)."""
  family: Family
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072  # MLP width; for SwiGLU the width of each of the two halves
  image_size: int = 224
  patch_size: int = 16
  num_channels: int = 3
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  use_swiglu_ffn: bool = False
  use_head: bool = False  # SigLIP's attention-pooling head

  @property
  def has_cls(self) -> bool:
    return self.family != "siglip"

  @property
  def grid(self) -> int:
    """Side of the square patch grid the position embeddings were trained on."""
    return self.image_size // self.patch_size


def config_from_dict(d: dict[str, Any]) -> ViTConfig:
  """Reads a Hugging Face ``config.json`` dict (the ``vision_config`` of a full CLIP / SigLIP one).

  Raises:
    ValueError: for a ``model_type`` other than those of :data:`MODEL_TYPES`, or an unknown activation.
  """
  model_type = d.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r} is not a supported vision tower; supported: {sorted(MODEL_TYPES)}")
  family = MODEL_TYPES[model_type]
  if model_type in ("clip", "siglip"):
    d = d.get("vision_config") or {}
  v = {**_DEFAULTS[family], **d}
  if family == "dinov2":
    width = int(v["hidden_size"] * v["mlp_ratio"])
    if v["use_swiglu_ffn"]:
      width = (int(width * 2 / 3) + 7) // 8 * 8
    v["intermediate_size"] = width
  if v["hidden_act"] not in _ACTIVATIONS:
    raise ValueError(f"hidden_act={v['hidden_act']!r} is not supported; choose one of {sorted(_ACTIVATIONS)}")
  return ViTConfig(family=family, hidden_size=int(v["hidden_size"]), num_hidden_layers=int(v["num_hidden_layers"]),
                   num_attention_heads=int(v["num_attention_heads"]), intermediate_size=int(v["intermediate_size"]),
                   image_size=int(v["image_size"]), patch_size=int(v["patch_size"]),
                   num_channels=int(v["num_channels"]), hidden_act=v["hidden_act"],
                   layer_norm_eps=float(v["layer_norm_eps"]), qkv_bias=bool(v.get("qkv_bias", True)),
                   use_swiglu_ffn=bool(v.get("use_swiglu_ffn", False)),
                   use_head=family == "siglip" and bool(v.get("vision_use_head", True)))


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``[n_out, n_in]`` weights of PyTorch's 1-D bicubic resize (``align_corners=False``, no antialiasing).

  Output ``i`` samples :math:`s = (i + \\frac12) n_{in} / n_{out} - \\frac12` from the taps
  :math:`\\lfloor s \\rfloor - 1, \\dots, \\lfloor s \\rfloor + 2` (clamped to the border) with Keys' cubic kernel

  .. math:: W(x) = \\begin{cases} (a + 2)|x|^3 - (a + 3)|x|^2 + 1 & |x| \\le 1 \\\\
            a|x|^3 - 5a|x|^2 + 8a|x| - 4a & 1 < |x| < 2 \\end{cases}, \\qquad a = -0.75.
  """
  a = -0.75
  cubic = lambda x: np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a)
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  base = np.floor(src)
  w = np.zeros((n_out, n_in))
  for tap in range(-1, 3):
    idx = base + tap
    np.add.at(w, (np.arange(n_out), np.clip(idx, 0, n_in - 1).astype(int)), cubic(np.abs(src - idx)))
  return w


def dot_product_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, *, num_heads: int) -> jnp.ndarray:
  """Multi-head softmax attention: ``q`` ``[b, m, d]``, ``k`` / ``v`` ``[b, n, d]`` -> ``[b, m, d]``."""
  b, m, d = q.shape
  split = lambda t: t.reshape(t.shape[0], t.shape[1], num_heads, d // num_heads)
  scores = jnp.einsum("bqhc,bkhc->bhqk", split(q), split(k)) / math.sqrt(d // num_heads)
  probs = jax.nn.softmax(scores, axis=-1)
  return jnp.einsum("bhqk,bkhc->bqhc", probs, split(v)).reshape(b, m, d)


class Attention(nn.Module):
  """``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj`` attention of ``x`` ``[b, m, d]`` to ``context`` (or itself)."""
  num_heads: int
  qkv_bias: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, context: jnp.ndarray | None = None) -> jnp.ndarray:
    context = x if context is None else context
    d = x.shape[-1]
    q = nn.Dense(d, use_bias=self.qkv_bias, name="q_proj")(x)
    k = nn.Dense(d, use_bias=self.qkv_bias, name="k_proj")(context)
    v = nn.Dense(d, use_bias=self.qkv_bias, name="v_proj")(context)
    return nn.Dense(d, name="out_proj")(dot_product_attention(q, k, v, num_heads=self.num_heads))


class Mlp(nn.Module):
  """``fc2(act(fc1(x)))``, or with ``swiglu`` ``fc2(silu(u) * g)`` where ``[u, g] = fc1(x)`` (DINOv2's SwiGLU)."""
  width: int
  act: str
  swiglu: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    h = nn.Dense(2 * self.width if self.swiglu else self.width, name="fc1")(x)
    if self.swiglu:
      u, g = jnp.split(h, 2, axis=-1)
      h = jax.nn.silu(u) * g
    else:
      h = _ACTIVATIONS[self.act](h)
    return nn.Dense(x.shape[-1], name="fc2")(h)


def _layer_norm(config: ViTConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, name=name)


class EncoderLayer(nn.Module):
  """One pre-LN transformer layer; DINOv2 scales both branches by its ``layer_scale1/2`` vectors."""
  config: ViTConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = self.config
    scale = ((lambda name, y: y * self.param(name, nn.initializers.ones, (c.hidden_size,)))
             if c.family == "dinov2" else (lambda name, y: y))
    y = Attention(c.num_attention_heads, c.qkv_bias, name="self_attn")(_layer_norm(c, "layer_norm1")(x))
    x = x + scale("layer_scale1", y)
    y = Mlp(c.intermediate_size, c.hidden_act, c.use_swiglu_ffn, name="mlp")(_layer_norm(c, "layer_norm2")(x))
    return x + scale("layer_scale2", y)


class _Layers(nn.Module):
  config: ViTConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for i in range(self.config.num_hidden_layers):
      x = EncoderLayer(self.config, name=str(i))(x)
    return x


class _Encoder(nn.Module):
  config: ViTConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return _Layers(self.config, name="layers")(x)


def _position_table(table: jnp.ndarray, grid_hw: tuple[int, int], config: ViTConfig) -> jnp.ndarray:
  """Position embeddings ``[n_prefix + gh * gw, d]`` for a ``gh x gw`` patch grid (see the module docstring)."""
  n = config.grid
  if grid_hw == (n, n):
    return table
  if config.family != "dinov2":
    raise ValueError(f"{config.family} position embeddings cover a {n}x{n} patch grid ({config.image_size} px "
                     f"inputs); got a {grid_hw[0]}x{grid_hw[1]} grid: resize inputs to {config.image_size} px")
  prefix, patches = table[:1], table[1:].reshape(n, n, -1)
  wh, ww = (jnp.asarray(bicubic_matrix(n, g), jnp.float32) for g in grid_hw)
  resized = jnp.einsum("ih,jw,hwd->ijd", wh, ww, patches).reshape(grid_hw[0] * grid_hw[1], -1)
  return jnp.concatenate([prefix, resized], axis=0)


class Embeddings(nn.Module):
  """Patch convolution, CLS token (CLIP, DINOv2) and position embeddings: ``[b, H, W, C] -> [b, l, d]``."""
  config: ViTConfig

  @nn.compact
  def __call__(self, pixel_values: jnp.ndarray) -> jnp.ndarray:
    c = self.config
    p, d = c.patch_size, c.hidden_size
    x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", use_bias=c.family != "clip",
                name="patch_embedding")(pixel_values)
    b, gh, gw, _ = x.shape
    x = x.reshape(b, gh * gw, d)
    init = nn.initializers.normal(0.02)
    if c.has_cls:
      cls = self.param("class_embedding", init, (d,))
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)
    table = self.param("position_embedding", init, (c.grid ** 2 + int(c.has_cls), d))
    return x + _position_table(table, (gh, gw), c)


class AttentionPoolingHead(nn.Module):
  """SigLIP's pooling head: a learned ``probe`` attends to ``x`` ``[b, l, d]``, then a residual MLP -> ``[b, d]``."""
  config: ViTConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = self.config
    probe = self.param("probe", nn.initializers.normal(0.02), (c.hidden_size,))
    q = jnp.broadcast_to(probe, (x.shape[0], 1, c.hidden_size)).astype(x.dtype)
    y = Attention(c.num_attention_heads, name="attention")(q, x)
    y = y + Mlp(c.intermediate_size, c.hidden_act, name="mlp")(_layer_norm(c, "layernorm")(y))
    return y[:, 0]


class VisionTransformer(nn.Module):
  """CLIP / DINOv2 / SigLIP vision tower.

  Args of ``__call__``:
    pixel_values: ``[b, H, W, C]`` float32 normalised images.

  Returns:
    ``{'last_hidden_state': [b, l, d], 'pooler_output': [b, d] or None}`` as in Hugging Face (``None`` for a
    SigLIP tower without head).
  """
  config: ViTConfig

  @nn.compact
  def __call__(self, pixel_values: jnp.ndarray) -> dict[str, jnp.ndarray | None]:
    c = self.config
    x = Embeddings(c, name="embeddings")(pixel_values)
    if c.family == "clip":
      x = _layer_norm(c, "pre_layrnorm")(x)
    x = _Encoder(c, name="encoder")(x)
    if c.family == "clip":
      return dict(last_hidden_state=x, pooler_output=_layer_norm(c, "post_layernorm")(x[:, 0]))
    x = _layer_norm(c, "post_layernorm")(x)
    if c.family == "dinov2":
      return dict(last_hidden_state=x, pooler_output=x[:, 0])
    return dict(last_hidden_state=x, pooler_output=AttentionPoolingHead(c, name="head")(x) if c.use_head else None)


def param_shapes(config: ViTConfig) -> Any:
  """Shape tree of :class:`VisionTransformer`'s parameters at the pretraining resolution (no allocation)."""
  x = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.num_channels), jnp.float32)
  return jax.eval_shape(VisionTransformer(config).init, jax.random.PRNGKey(0), x)["params"]


def check_pooling(config: ViTConfig, pooling: str) -> None:
  """Raises ``ValueError`` unless ``pooling`` is one of :data:`POOLINGS` and the tower provides it."""
  if pooling not in POOLINGS:
    raise ValueError(f"pooling={pooling!r} is not supported; choose one of {POOLINGS}")
  if pooling in ("cls", "cls_mean") and not config.has_cls:
    raise ValueError(f"pooling={pooling!r} needs a CLS token, which {config.family} has not; use 'pooler' or 'mean'")
  if pooling == "pooler" and config.family == "siglip" and not config.use_head:
    raise ValueError("pooling='pooler' needs SigLIP's attention-pooling head (vision_use_head=false); use 'mean'")


def pool(out: dict[str, jnp.ndarray | None], pooling: str, config: ViTConfig) -> jnp.ndarray:
  """``[b, d]`` (``[b, 2d]`` for ``cls_mean``) image features from :class:`VisionTransformer`'s outputs.

  Args:
    out: the model's ``{'last_hidden_state': [b, l, d], 'pooler_output': [b, d]}``.
    pooling: ``pooler``, ``cls``, ``mean`` (patch tokens only) or ``cls_mean`` (CLS ‖ patch mean).
    config: the tower's config (whether it has a CLS token).
  """
  check_pooling(config, pooling)
  h = out["last_hidden_state"]
  if pooling == "pooler":
    return out["pooler_output"]
  mean = h[:, int(config.has_cls):].mean(axis=1)
  return {"cls": lambda: h[:, 0], "mean": lambda: mean,
          "cls_mean": lambda: jnp.concatenate([h[:, 0], mean], axis=-1)}[pooling]()


def features(params: Any, pixel_values: jnp.ndarray, *, config: ViTConfig, pooling: str) -> jnp.ndarray:
  """Pooled features of ``pixel_values`` ``[b, H, W, C]``: the pure function that :mod:`.hf` jits."""
  return pool(VisionTransformer(config).apply({"params": params}, pixel_values), pooling, config)


# DINOv2 parameter names -> the CLIP-style names of VisionTransformer (applied after the prefix is stripped).
_DINOV2_RENAMES = (
    (r"^embeddings\.cls_token$", "embeddings.class_embedding"),
    (r"^embeddings\.position_embeddings$", "embeddings.position_embedding"),
    (r"^embeddings\.patch_embeddings\.projection\.", "embeddings.patch_embedding."),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"encoder.layers.\1.layer_norm\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"encoder.layers.\1.self_attn.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"encoder.layers.\1.self_attn.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"encoder.layers.\1.self_attn.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"encoder.layers.\1.layer_scale\2"),
    (r"^encoder\.layer\.(\d+)\.mlp\.(fc1|weights_in)\.", r"encoder.layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.mlp\.(fc2|weights_out)\.", r"encoder.layers.\1.mlp.fc2."),
    (r"^layernorm\.", "post_layernorm."),
)


def _canonical_names(state: dict[str, np.ndarray], family: Family) -> dict[str, np.ndarray]:
  """Strips the tower prefix (dropping other towers), renames DINOv2 keys and splits packed ``in_proj`` tensors."""
  prefix = _PREFIXES[family]
  if any(k.startswith(prefix) for k in state):
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
  out = {}
  for key, value in state.items():
    if family == "dinov2":
      for pattern, repl in _DINOV2_RENAMES:
        key = re.sub(pattern, repl, key)
    packed = re.match(r"^(.*)\.in_proj_(weight|bias)$", key)
    if packed:
      for name, part in zip(("q_proj", "k_proj", "v_proj"), np.split(value, 3)):
        out[f"{packed[1]}.{name}.{packed[2]}"] = part
    else:
      out[key] = value
  return out


def _leaf(key: str, value: np.ndarray, shapes: dict[str, Any]) -> tuple[str, np.ndarray] | None:
  """``(target, array)`` for one PyTorch tensor, or None when no parameter of the model takes it."""
  stem, _, last = key.rpartition(".")
  stem = stem.replace(".", "/")
  if last == "weight" and f"{stem}/kernel" in shapes:  # Linear [out, in] or Conv2d [out, in, kh, kw]
    return f"{stem}/kernel", value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)
  if last == "weight" and f"{stem}/scale" in shapes:  # LayerNorm
    return f"{stem}/scale", value
  if key.replace(".", "/") in shapes:  # bias, class_embedding, probe, layer scales
    return key.replace(".", "/"), value
  if last == "weight" and stem in shapes:  # nn.Embedding table used whole (position_embedding)
    return stem, value
  return None


def convert_state(state: dict[str, np.ndarray], config: ViTConfig) -> dict:
  """Maps a Hugging Face PyTorch ``state_dict`` onto :class:`VisionTransformer`'s parameter tree.

  Keys of other towers (``text_model.``, ``visual_projection``, ``logit_scale``), buffers (``position_ids``)
  and unused tensors (DINOv2's ``mask_token``) are dropped; leading singleton axes (``cls_token``
  ``[1, 1, d]``, ``position_embeddings`` ``[1, l, d]``, ``probe``) are squeezed.

  Args:
    state: flat ``{dotted_name: array}`` as read from ``model.safetensors``.
    config: the tower's config.

  Returns:
    nested dict of float32 numpy arrays with the structure and shapes of :func:`param_shapes`.

  Raises:
    ValueError: when a parameter is missing or has the wrong shape.
  """
  shapes = {k: tuple(v.shape) for k, v in checkpoint.flatten_tree(param_shapes(config)).items()}
  flat: dict[str, np.ndarray] = {}
  for key, value in _canonical_names(state, config.family).items():
    hit = _leaf(key, np.asarray(value), shapes)
    if hit is None:
      continue
    target, arr = hit
    want = shapes[target]
    lead = arr.shape[:arr.ndim - len(want)]
    if arr.shape[arr.ndim - len(want):] != want or any(s != 1 for s in lead):
      raise ValueError(f"checkpoint tensor {key!r} has shape {arr.shape}; the {config.family} config "
                       f"(image_size={config.image_size}, patch_size={config.patch_size}) expects {want}")
    flat[target] = np.ascontiguousarray(arr.reshape(want), dtype=np.float32)
  return checkpoint.nest_tree(flat, shapes, model=config.family)


def load_checkpoint(path: str | pathlib.Path) -> tuple[ViTConfig, dict]:
  """``(config, params)`` of the vision tower in a local Hugging Face checkpoint directory.

  Args:
    path: directory with ``config.json`` and ``model.safetensors`` (or its sharded index) in PyTorch naming.

  Returns:
    the :class:`ViTConfig` and the float32 numpy parameter tree for :class:`VisionTransformer`.
  """
  p = pathlib.Path(path)
  config = config_from_dict(json.loads((p / "config.json").read_text()))
  return config, convert_state(checkpoint.read_safetensors_dir(p), config)
