"""Any local Hugging Face Flax checkpoint as a frozen text or image encoder (``hf:/path`` names).

``load_text(path)`` runs a BERT, RoBERTa, XLM-RoBERTa or MPNet checkpoint on this project's own Flax
modules (:func:`sotalign_jax.encoders.text.load_model`; ``model.safetensors`` with PyTorch names or
``flax_model.msgpack``), tokenised by the ``tokenizers`` library from its ``tokenizer.json``, under the shared
length-bucketed batcher of :mod:`sotalign_jax.encoders.text`, with masked mean pooling and L2 normalisation by
default. ``load_image(path)`` runs a CLIP vision, DINOv2 or SigLIP vision tower on this project's own Flax
ViT (:mod:`sotalign_jax.encoders.vit`; ``model.safetensors`` with PyTorch names, the vision tower of a full
CLIP / SigLIP checkpoint is picked out) and returns its ``pooler_output`` (or the CLS token, the patch-token
mean, or both concatenated). Preprocessing follows the checkpoint's
``preprocessor_config.json`` (resize, centre crop, ``image_mean`` / ``image_std``) as the Hugging
Face image processors do; without one, the shorter side is resized to ``config.image_size``,
centre-cropped and normalised with the ImageNet statistics.

Nothing is downloaded and neither transformers nor torch is used: ``path`` must be a local directory written
by ``save_pretrained``.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax import _extras
from sotalign_jax.encoders import ImageEncoder, TextEncoder
from sotalign_jax.encoders import text as text_lib
from sotalign_jax.encoders import vit

IMAGE_POOLINGS = vit.POOLINGS
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _checkpoint(path: str) -> pathlib.Path:
  p = pathlib.Path(path).expanduser()
  if not (p / "config.json").is_file():
    raise ValueError(f"path={path!r} is not a local Hugging Face checkpoint directory (no config.json); "
                     "pass a directory written by save_pretrained")
  return p


def load_text_with_layers(path: str, *, batch_size: int = 64, bucket: int = 16, max_seq_length: int | None = None,
                          pooling: str = "mean", normalize: bool = True
                          ) -> tuple[TextEncoder, Callable[..., np.ndarray]]:
  """Like :func:`load_text`, also returning ``encode_layers(texts, *, pooling, normalize) -> [L + 1, B, d]``."""
  p = _checkpoint(path)
  if not (p / "tokenizer.json").is_file():
    raise ValueError(f"{path}: no tokenizer.json; save the model's fast tokenizer into the checkpoint directory")
  model = text_lib.load_model(p)
  limit = model.max_tokens  # max_position_embeddings, minus padding_idx + 1 for RoBERTa-style positions
  tok_cfg = p / "tokenizer_config.json"
  if tok_cfg.is_file():
    limit = min(limit, int(json.loads(tok_cfg.read_text()).get("model_max_length") or limit))
  max_len = limit if max_seq_length is None else int(max_seq_length)
  if not 2 <= max_len <= limit:
    raise ValueError(f"max_seq_length={max_seq_length} must lie in [2, {limit}]")
  tok = text_lib.load_tokenizer(p / "tokenizer.json", max_len)
  info = dict(weights=f"local:{p.resolve()}", pooling=pooling, normalize=normalize, max_seq_length=max_len,
              architecture=model.architecture)
  batcher = text_lib.Batcher(tok, max_len, model.pad_id, batch_size=batch_size, bucket=bucket)
  return text_lib.build_text_encoder(f"hf:{path}", model.forward, jax.device_put(model.params), batcher,
                                    dim=model.dim, pooling=pooling, normalize=normalize, info=info)


def load_text(path: str, *, batch_size: int = 64, bucket: int = 16, max_seq_length: int | None = None,
              pooling: str = "mean", normalize: bool = True) -> TextEncoder:
  """Text encoder from a local Hugging Face BERT / RoBERTa / XLM-RoBERTa / MPNet checkpoint directory.

  Args:
    path: directory with ``config.json``, ``model.safetensors`` (or ``flax_model.msgpack``) and ``tokenizer.json``.
    batch_size: rows per jitted forward call.
    bucket: padded lengths are multiples of this.
    max_seq_length: truncation length; defaults to the model's maximum.
    pooling: ``mean`` (masked mean), ``cls`` or ``last-token``.
    normalize: L2-normalise the pooled vectors.

  Returns:
    a :class:`TextEncoder` mapping ``list[str]`` to float32 ``[B, d]``.
  """
  return load_text_with_layers(path, batch_size=batch_size, bucket=bucket, max_seq_length=max_seq_length,
                               pooling=pooling, normalize=normalize)[0]


def _size_spec(cfg: dict, default: int) -> tuple[tuple[str, Any], tuple[int, int] | None]:
  """``(resize, crop)`` from a preprocessor config: resize is ``('short', n)``, ``('exact', (h, w))`` or None."""
  if not cfg:  # no preprocessor_config.json
    return ("short", default), (default, default)
  size, crop = cfg.get("size"), cfg.get("crop_size")
  do_crop = cfg.get("do_center_crop", crop is not None)
  as_hw = lambda s: (s, s) if isinstance(s, int) else (int(s["height"]), int(s["width"]))
  crop_hw = as_hw(crop if crop is not None else default) if do_crop else None
  if not cfg.get("do_resize", True):
    resize = None
  elif size is None:
    resize = ("short", default)
  elif isinstance(size, int):
    resize = ("short", size) if do_crop else ("exact", (size, size))
  elif "shortest_edge" in size:
    resize = ("short", int(size["shortest_edge"]))
  else:
    resize = ("exact", as_hw(size))
  return resize, crop_hw


def preprocess_image(image: Any, *, resize: tuple[str, Any] | None, crop: tuple[int, int] | None,
                     mean: np.ndarray, std: np.ndarray, rescale: float = 1 / 255, resample: int = 3) -> np.ndarray:
  """PIL image -> float32 ``[H, W, 3]``: resize, centre crop, rescale, normalise (HF image-processor order).

  ``('short', n)`` resizes the shorter side to ``n`` and the longer to ``int(n * long / short)``;
  ``('exact', (h, w))`` resizes to ``h x w``. The crop keeps the window starting at
  ``((H - h) // 2, (W - w) // 2)``. Then :math:`x = (\\text{rescale} \\cdot p - \\mu) / \\sigma`.
  """
  Image = _extras.require("PIL.Image", what="hf: image preprocessing")
  img = image.convert("RGB")
  if resize is not None:
    w, h = img.size
    if resize[0] == "short":
      n = resize[1]
      new = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
    else:
      new = (resize[1][1], resize[1][0])
    if new != img.size:
      img = img.resize(new, resample=Image.Resampling(resample))
  x = np.asarray(img, dtype=np.float32)
  if crop is not None:
    h, w = x.shape[:2]
    ch, cw = crop
    if h < ch or w < cw:  # pad like HF's center_crop does for small images
      ph, pw = max(ch - h, 0), max(cw - w, 0)
      x = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
      h, w = x.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    x = x[top:top + ch, left:left + cw]
  return ((x * np.float32(rescale) - mean) / std).astype(np.float32)


def load_image(path: str, *, pooling: str = "pooler") -> ImageEncoder:
  """Image encoder from a local CLIP vision / DINOv2 / SigLIP vision checkpoint directory.

  Args:
    path: directory with ``config.json`` and ``model.safetensors`` (PyTorch names), optionally
      ``preprocessor_config.json``.
    pooling: ``pooler`` (the model's ``pooler_output``), ``cls`` (first token of ``last_hidden_state``; not for
      SigLIP), ``mean`` (mean of the patch tokens) or ``cls_mean`` (CLS ‖ patch mean, ``2d`` wide); see
      :func:`sotalign_jax.encoders.vit.pool`.

  Returns:
    an :class:`ImageEncoder`; ``apply`` maps float32 ``[B, H, W, 3]`` to ``[B, d]`` (not normalised).
  """
  if pooling not in IMAGE_POOLINGS:
    raise ValueError(f"pooling={pooling!r} is not supported; choose one of {IMAGE_POOLINGS}")
  p = _checkpoint(path)
  config = vit.config_from_dict(json.loads((p / "config.json").read_text()))
  vit.check_pooling(config, pooling)
  _, params = vit.load_checkpoint(p)
  pre_path = p / "preprocessor_config.json"
  cfg = json.loads(pre_path.read_text()) if pre_path.is_file() else {}
  default = config.image_size
  resize, crop = _size_spec(cfg, default)
  do_norm = cfg.get("do_normalize", True)
  mean = np.asarray(cfg.get("image_mean", IMAGENET_MEAN) if do_norm else (0.0, 0.0, 0.0), np.float32)
  std = np.asarray(cfg.get("image_std", IMAGENET_STD) if do_norm else (1.0, 1.0, 1.0), np.float32)
  rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
  resample = int(cfg.get("resample", 3))
  if crop is not None:
    resolution = crop
  elif resize is not None and resize[0] == "exact":
    resolution = resize[1]
  else:
    resolution = (default, default)

  forward = functools.partial(vit.features, config=config, pooling=pooling)
  params = jax.device_put(params)
  apply = functools.partial(jax.jit(forward), params)
  dim = int(jax.eval_shape(forward, params, jax.ShapeDtypeStruct((1, *resolution, 3), jnp.float32)).shape[-1])
  preprocess = functools.partial(preprocess_image, resize=resize, crop=crop, mean=mean, std=std, rescale=rescale,
                                 resample=resample)
  info = dict(weights=f"local:{p.resolve()}", pooling=pooling, architecture=config.family,
              preprocess=dict(resize=list(resize) if resize else None, crop=list(crop) if crop else None,
                              mean=mean.tolist(), std=std.tolist(), rescale=rescale, resample=resample))
  return ImageEncoder(name=f"hf:{path}", dim=dim, resolution=int(resolution[0]), preprocess=preprocess,
                      apply=apply, info=info)
