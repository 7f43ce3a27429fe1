"""Records shared by every dataset loader, and robust image decoding.

A dataset is a list of :class:`Record`\\ s, one per (image, caption) pair; several records may share
an image (same ``image_id``). Text-only datasets (an unpaired text pool) have records without image.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from sotalign_jax import _extras

if TYPE_CHECKING:
  from PIL import Image

__all__ = ["Record", "Dataset", "load_image", "dedupe_captions", "DEFAULT_MAX_PIXELS"]

# Images with more pixels than this are skipped (and reported) rather than decoded: PNG has no
# reduced-size decoding, and a 600 M-pixel RGBA image needs > 2 GiB of memory. This is PIL's own
# decompression-bomb *error* threshold (2 x Image.MAX_IMAGE_PIXELS).
DEFAULT_MAX_PIXELS = 2 * 89_478_485
# Decoding of images larger than this is serialised (one at a time) to bound peak memory when
# several worker threads decode in parallel.
_LARGE_PIXELS = 16_000_000
_LARGE_LOCK = threading.Lock()


class Record(NamedTuple):
  """One (image, caption) pair, or one text of a text-only pool.

  Attributes:
    image_id: stable identifier of the image (splits hash it); for text-only records an identifier
      of the text.
    caption: the text paired with the image.
    image_path: file to decode, or ``None``.
    image: in-memory image (``[H, W]`` or ``[H, W, 3]`` uint8), or ``None``.
    label: optional class label (e.g. a category name).
    split: optional split fixed by the dataset itself (e.g. COCO's Karpathy ``"test"``); ``None`` lets
      :mod:`sotalign_jax.data.splits` assign one from the hash of ``image_id``.
  """

  image_id: str
  caption: str
  image_path: str | None = None
  image: np.ndarray | None = None
  label: str | None = None
  split: str | None = None

  @property
  def has_image(self) -> bool:
    return self.image_path is not None or self.image is not None


class Dataset(NamedTuple):
  """A loaded dataset: its records plus provenance and statistics (recorded in cache manifests)."""

  name: str
  records: list[Record]
  info: dict[str, Any]

  @property
  def text_only(self) -> bool:
    return not any(r.has_image for r in self.records)


def load_image(source: str | os.PathLike | np.ndarray, *, max_side: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
  """Decodes an image to RGB, compositing any transparency on a white background.

  JPEGs are decoded at a reduced scale (``Image.draft``) when ``max_side`` allows it; every image is
  then shrunk (aspect preserved, Lanczos) so that its longer side is at most ``max_side``.

  Args:
    source: a file path (PNG, JPEG, anything PIL reads) or a uint8 array ``[H, W]`` / ``[H, W, 3]`` /
      ``[H, W, 4]``.
    max_side: longest side of the returned image, or ``None`` to keep the full size.
    max_pixels: images with more pixels are refused (``ValueError``) instead of being decoded.

  Returns:
    An RGB ``PIL.Image.Image``.

  Raises:
    ValueError: the image is larger than ``max_pixels`` or the array has a bad shape.
    OSError: the file is missing, truncated or not an image.
  """
  Image = _pil()
  if isinstance(source, np.ndarray):
    if source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[-1] not in (1, 3, 4)):
      raise ValueError(f"image array must be [H, W], [H, W, 3] or [H, W, 4], got shape {source.shape}")
    arr = source.astype(np.uint8) if source.dtype != np.uint8 else source
    if arr.ndim == 3 and arr.shape[-1] == 1:
      arr = arr[..., 0]
    im = Image.fromarray(arr)
    return _finish(_to_rgb(im), max_side)
  with Image.open(source) as im:
    w, h = im.size
    if w * h > max_pixels:
      raise ValueError(f"image has {w}x{h} = {w * h} pixels, more than max_pixels={max_pixels}")
    if max_side is not None and im.format == "JPEG":
      im.draft("RGB", (max_side, max_side))
    if w * h > _LARGE_PIXELS:
      with _LARGE_LOCK:
        return _decode(im, max_side)
    return _decode(im, max_side)


def _decode(im: Image.Image, max_side: int | None) -> Image.Image:
  im.load()
  if max_side is not None:
    factor = max(im.size) // (2 * max_side)
    if factor >= 2:  # Cheap box reduction first; the final Lanczos resize happens in _finish.
      if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA")
      im = im.reduce(factor)
  return _finish(_to_rgb(im), max_side)


def _pil():
  """``PIL.Image`` (the ``encoders`` extra), imported on first use so that ``sotalign_jax.data`` stays light."""
  return _extras.require("PIL.Image", what="image decoding")


def _to_rgb(im: Image.Image) -> Image.Image:
  Image = _pil()
  if im.mode == "P" or (im.mode in ("L", "RGB") and "transparency" in im.info):
    im = im.convert("RGBA")
  if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    im = im.convert("RGBA")
    background = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, im).convert("RGB")
  if im.mode == "I;16" or im.mode == "I":
    arr = np.asarray(im, dtype=np.float64)
    im = Image.fromarray((255 * arr / max(float(arr.max()), 1.0)).astype(np.uint8))
  return im.convert("RGB")


def _finish(im: Image.Image, max_side: int | None) -> Image.Image:
  Image = _pil()
  if max_side is not None and max(im.size) > max_side:
    im = im.copy()
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
  return im


def dedupe_captions(records: list[Record]) -> tuple[list[Record], int]:
  """Keeps, for each distinct caption (case- and space-insensitive), only its first record.

  Returns:
    ``(kept_records, n_dropped)``.
  """
  seen: set[str] = set()
  kept = []
  for r in records:
    key = " ".join(r.caption.lower().split())
    if key in seen:
      continue
    seen.add(key)
    kept.append(r)
  return kept, len(records) - len(kept)
