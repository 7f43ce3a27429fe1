"""Real image–text datasets, offline: loaders, deterministic splits and Debian-package data.

Every loader returns a :class:`Dataset` (``name``, ``records``, ``info``); a :class:`Record` is one
(image, caption) pair (``image_id``, ``caption``, ``image_path`` or ``image``, ``label``, ``split``).

=================  ==========================================  ================================
name               source                                      kind
=================  ==========================================  ================================
``openclipart``    Debian ``openclipart-png`` + ``-svg``       ≈4.3k (image, caption) pairs
``tuxpaint``       Debian ``tuxpaint-stamps-default``          785 stamps + descriptions
``fashion_mnist``  Debian ``dataset-fashion-mnist``            70k images, 10 class prompts
``coco_captions``  ``tfds.load("coco_captions")`` (Karpathy)   needs TensorFlow + prepared data
``wordnet``        Debian ``wordnet-base``                     ≈82k noun phrases, text only
``--folder DIR``   ``DIR/captions.jsonl``                      your own images
=================  ==========================================  ================================
"""

from __future__ import annotations

from typing import Any, Callable

from sotalign_jax.data.core import DEFAULT_MAX_PIXELS, Dataset, Record, dedupe_captions, load_image
from sotalign_jax.data.debian import MissingDataError, install_command, require_package
from sotalign_jax.data.splits import DEFAULT_FRACTIONS, SPLITS, assign_splits, parse_split_spec, stable_uniform

__all__ = [
    "Record", "Dataset", "load_image", "dedupe_captions", "DEFAULT_MAX_PIXELS", "MissingDataError",
    "require_package", "install_command", "SPLITS", "DEFAULT_FRACTIONS", "assign_splits", "stable_uniform",
    "parse_split_spec", "DATASETS", "load_dataset",
]


def _loader(module: str, fn: str) -> Callable[..., Dataset]:
  def load(**kwargs: Any) -> Dataset:
    import importlib  # pylint: disable=g-import-not-at-top
    return getattr(importlib.import_module(f"{__name__}.{module}"), fn)(**kwargs)
  load.__name__ = fn
  return load


DATASETS: dict[str, Callable[..., Dataset]] = {
    "openclipart": _loader("openclipart", "load_openclipart"),
    "tuxpaint": _loader("tuxpaint", "load_tuxpaint"),
    "fashion_mnist": _loader("fashion_mnist", "load_fashion_mnist"),
    "coco_captions": _loader("coco", "load_coco_captions"),
    "wordnet": _loader("wordnet", "load_wordnet"),
}


def load_dataset(name: str, **kwargs: Any) -> Dataset:
  """Loads dataset ``name`` (a key of :data:`DATASETS`, or ``folder:/path/to/dir``)."""
  if name.startswith("folder:"):
    from sotalign_jax.data.folder import load_folder  # pylint: disable=g-import-not-at-top
    return load_folder(name[len("folder:"):], **kwargs)
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or 'folder:/path'")
  return DATASETS[name](**kwargs)
