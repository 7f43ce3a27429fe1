"""Any local Hugging Face Flax checkpoint as a frozen text or image encoder (``hf:/path`` names).

``load_text(path)`` runs a Flax text model (``FlaxBertModel``, ``FlaxRobertaModel``, CLIP's text
tower, ...) under the shared length-bucketed batcher of :mod:`sotalign_jax.encoders.text`, with
masked mean pooling and L2 normalisation by default. ``load_image(path)`` runs a Flax vision model
(``FlaxCLIPVisionModel``, ``FlaxDinov2Model``, ``FlaxViTModel``, ...) and returns its
``pooler_output`` (or the CLS token / token mean). Preprocessing follows the checkpoint's
``preprocessor_config.json`` (resize, centre crop, ``image_mean`` / ``image_std``) as the Hugging
Face image processors do; without one, the shorter side is resized to ``config.image_size``,
centre-cropped and normalised with the ImageNet statistics.

Nothing is downloaded: ``path`` must be a directory written by ``save_pretrained`` (with
``flax_model.msgpack``, or a ``model.safetensors`` whose names mirror the Flax modules).
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax.encoders import ImageEncoder, TextEncoder
from sotalign_jax.encoders import text as text_lib

IMAGE_POOLINGS = ("pooler", "cls", "mean")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _checkpoint(path: str) -> pathlib.Path:
  p = pathlib.Path(path).expanduser()
  if not (p / "config.json").is_file():
    raise ValueError(f"path={path!r} is not a local Hugging Face checkpoint directory (no config.json); "
                     "pass a directory written by save_pretrained")
  return p


def _load_model(path: pathlib.Path, kind: str) -> tuple[Any, Any]:
  """Returns ``(model, params)`` for the text or vision tower stored at ``path``."""
  import transformers  # pylint: disable=g-import-not-at-top
  config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
  cls = {("clip", "text"): transformers.FlaxCLIPTextModel,
         ("clip", "image"): transformers.FlaxCLIPVisionModel,
         ("clip_text_model", "text"): transformers.FlaxCLIPTextModel,
         ("clip_vision_model", "image"): transformers.FlaxCLIPVisionModel}.get(
             (config.model_type, kind), transformers.FlaxAutoModel)
  if (path / "flax_model.msgpack").is_file() or not (path / "model.safetensors").is_file():
    return cls.from_pretrained(str(path), local_files_only=True, _do_init=False)
  # A PyTorch safetensors checkpoint: convert by name with numpy (no torch).
  model = (cls.from_config(config, _do_init=False) if cls is transformers.FlaxAutoModel
           else cls(config, _do_init=False))
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  state = load_file(str(path / "model.safetensors"))
  prefix = model.base_model_prefix + "."
  state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
  return model, text_lib.torch_to_flax(state, model.params_shape_tree)


def load_text_with_layers(path: str, *, batch_size: int = 64, bucket: int = 16, max_seq_length: int | None = None,
                          pooling: str = "mean", normalize: bool = True
                          ) -> tuple[TextEncoder, Callable[..., np.ndarray]]:
  """Like :func:`load_text`, also returning ``encode_layers(texts, *, pooling, normalize) -> [L + 1, B, d]``."""
  import transformers  # pylint: disable=g-import-not-at-top
  p = _checkpoint(path)
  model, params = _load_model(p, "text")
  tok = transformers.AutoTokenizer.from_pretrained(str(p), local_files_only=True)
  if not tok.is_fast:
    raise ValueError(f"{path}: a fast tokenizer (tokenizer.json or vocab files it can be built from) is needed")
  limit = min(getattr(model.config, "max_position_embeddings", 512), tok.model_max_length)
  if model.config.model_type in ("roberta", "xlm-roberta", "camembert"):
    limit -= 2  # positions start at padding_idx + 1
  max_len = limit if max_seq_length is None else int(max_seq_length)
  if not 2 <= max_len <= limit:
    raise ValueError(f"max_seq_length={max_seq_length} must lie in [2, {limit}]")
  pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

  def forward(prm, ids, mask):
    out = model(ids, attention_mask=mask, params=prm, output_hidden_states=True)
    return list(out.hidden_states)

  dim = int(model.config.hidden_size)
  info = dict(weights=f"local:{p.resolve()}", pooling=pooling, normalize=normalize, max_seq_length=max_len,
              architecture=type(model).__name__)
  batcher = text_lib.Batcher(tok, max_len, pad_id, batch_size=batch_size, bucket=bucket)
  return text_lib.build_text_encoder(f"hf:{path}", forward, jax.device_put(params), batcher, dim=dim,
                                    pooling=pooling, normalize=normalize, info=info)


def load_text(path: str, *, batch_size: int = 64, bucket: int = 16, max_seq_length: int | None = None,
              pooling: str = "mean", normalize: bool = True) -> TextEncoder:
  """Text encoder from a local Flax checkpoint directory.

  Args:
    path: directory with ``config.json``, weights and tokenizer files.
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
  from PIL import Image  # pylint: disable=g-import-not-at-top
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
  """Image encoder from a local Flax vision checkpoint directory.

  Args:
    path: directory with ``config.json`` and weights, optionally ``preprocessor_config.json``.
    pooling: ``pooler`` (the model's ``pooler_output``; CLS token if it has none), ``cls`` (first
      token of ``last_hidden_state``) or ``mean`` (mean over all tokens).

  Returns:
    an :class:`ImageEncoder`; ``apply`` maps float32 ``[B, H, W, 3]`` to ``[B, d]`` (not normalised).
  """
  if pooling not in IMAGE_POOLINGS:
    raise ValueError(f"pooling={pooling!r} is not supported; choose one of {IMAGE_POOLINGS}")
  p = _checkpoint(path)
  model, params = _load_model(p, "image")
  pre_path = p / "preprocessor_config.json"
  cfg = json.loads(pre_path.read_text()) if pre_path.is_file() else {}
  default = int(getattr(model.config, "image_size", 224))
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

  def forward(prm, x):
    out = model(jnp.transpose(x, (0, 3, 1, 2)), params=prm)
    pooled = getattr(out, "pooler_output", None)
    if pooling == "pooler" and pooled is not None:
      return pooled
    h = out.last_hidden_state
    return h[:, 0] if pooling in ("pooler", "cls") else h.mean(axis=1)

  params = jax.device_put(params)
  apply = functools.partial(jax.jit(forward), params)
  dim = int(jax.eval_shape(forward, params, jax.ShapeDtypeStruct((1, *resolution, 3), jnp.float32)).shape[-1])
  preprocess = functools.partial(preprocess_image, resize=resize, crop=crop, mean=mean, std=std, rescale=rescale,
                                 resample=resample)
  info = dict(weights=f"local:{p.resolve()}", pooling=pooling, architecture=type(model).__name__,
              preprocess=dict(resize=list(resize) if resize else None, crop=list(crop) if crop else None,
                              mean=mean.tolist(), std=std.tolist(), rescale=rescale, resample=resample))
  return ImageEncoder(name=f"hf:{path}", dim=dim, resolution=int(resolution[0]), preprocess=preprocess,
                      apply=apply, info=info)
