"""The embedding cache that ``python -m sotalign_jax.cli.embed`` writes and every experiment reads.

A cache directory holds ``image_embeddings.npy`` (float32 ``[n_images, d_img]``, absent for text-only data),
``text_embeddings.npy`` (float32 ``[n_captions, d_txt]``), ``index.jsonl`` (one record per caption: ``caption``,
``image``, ``image_id``, ``label``, ``split``) and ``manifest.json`` (written last: its presence means complete).
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Sequence

import numpy as np

from sotalign_jax.runtime import io as sio

__all__ = ["Cache", "load_cache", "open_cache", "embed_command"]


class Cache(NamedTuple):
  """An embedding cache read back by :func:`load_cache`.

  Attributes:
    image_emb: float32 ``[n_images, d_img]`` or ``None`` for text-only data.
    text_emb: float32 ``[n_captions, d_txt]``; row ``i`` belongs to ``index[i]``.
    index: one dict per caption (``caption``, ``image``, ``image_id``, ``label``, ``split``).
    manifest: the run's ``manifest.json``.
  """

  image_emb: np.ndarray | None
  text_emb: np.ndarray
  index: list[dict]
  manifest: dict

  def caption_rows(self, split: str | None = None) -> np.ndarray:
    """Rows of ``text_emb`` whose caption is in ``split`` (all if ``None``): int ``[m]``."""
    return np.array([i for i, r in enumerate(self.index) if split is None or r["split"] == split], dtype=np.int64)

  def caption_image_rows(self, split: str | None = None) -> np.ndarray:
    """Image row of each caption of :meth:`caption_rows` (aligned with it): int ``[m]``."""
    if self.image_emb is None:
      raise ValueError("this cache is text-only: it has no image rows")
    return np.array([r["image"] for r in self.index if split is None or r["split"] == split], dtype=np.int64)

  def image_rows(self, split: str | None = None) -> np.ndarray:
    """Sorted distinct rows of ``image_emb`` in ``split``: int ``[k]``."""
    if self.image_emb is None:
      raise ValueError("this cache is text-only: it has no image rows")
    return np.unique(self.caption_image_rows(split)).astype(np.int64)

  def first_captions(self, splits: str | Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The distinct images of ``splits`` (one split, several, or ``None``: all) and the first caption of each.

    Returns:
      ``(image_rows, caption_rows)``, int ``[k]`` each and row-aligned: sorted rows of ``image_emb`` and, for
      each, the first row of ``text_emb`` (in index order) that captions it.
    """
    if self.image_emb is None:
      raise ValueError("this cache is text-only: it has no image rows")
    splits = (splits,) if isinstance(splits, str) else splits
    rows = np.array([i for i, r in enumerate(self.index) if splits is None or r["split"] in splits], np.int64)
    images, first = np.unique(np.array([self.index[i]["image"] for i in rows], np.int64), return_index=True)
    return images, rows[first]

  def labels(self, split: str | None = None) -> list[str | None]:
    """Label of each caption of :meth:`caption_rows`."""
    return [r.get("label") for r in self.index if split is None or r["split"] == split]


def load_cache(out_dir: str | os.PathLike, *, mmap: bool = False) -> Cache:
  """Reads a complete cache written by :func:`embed_dataset`.

  Args:
    out_dir: the ``--out`` directory.
    mmap: memory-map the arrays instead of reading them.

  Raises:
    FileNotFoundError: the cache is missing or incomplete (no ``manifest.json``).
    ValueError: the files disagree with each other.
  """
  out_dir = os.fspath(out_dir)
  manifest_path = os.path.join(out_dir, "manifest.json")
  if not os.path.exists(manifest_path):
    raise FileNotFoundError(f"{manifest_path} not found: {out_dir} is not a complete embedding cache "
                            "(rerun the same `python -m sotalign_jax.cli.embed ...` command to finish it)")
  with open(manifest_path, encoding="utf-8") as f:
    manifest = json.load(f)
  mode = "r" if mmap else None
  text = np.load(os.path.join(out_dir, "text_embeddings.npy"), mmap_mode=mode)
  image_path = os.path.join(out_dir, "image_embeddings.npy")
  image = np.load(image_path, mmap_mode=mode) if os.path.exists(image_path) else None
  index = sio.read_jsonl(os.path.join(out_dir, "index.jsonl"))
  if text.shape[0] != len(index):
    raise ValueError(f"{out_dir}: text_embeddings has {text.shape[0]} rows but index.jsonl {len(index)} lines")
  if image is not None and index and max(r["image"] for r in index) >= image.shape[0]:
    raise ValueError(f"{out_dir}: index.jsonl points past the {image.shape[0]} image rows")
  return Cache(image, text, index, manifest)


def embed_command(path: str, dataset: str = "...") -> str:
  """The command that builds the cache at ``path``.

  The dataset and encoders come from a ``<dataset>__<image encoder>__<text encoder>`` directory name (the
  Makefile's), else ``dataset`` and the default encoders.
  """
  parts = os.path.basename(os.path.normpath(path)).split("__")
  dataset, image, text = parts if len(parts) == 3 else (dataset, "efficientnet-lite0", "all-MiniLM-L6-v2")
  if dataset == "wordnet_two_view":  # two text views (python -m sotalign_jax.cli.two_view; make wordnet-cache)
    return f"python -m sotalign_jax.cli.two_view --x-encoder {image} --y-encoder {text} --out {path}"
  return (f"python -m sotalign_jax.cli.embed --dataset {dataset} --image-encoder {image} --text-encoder {text} "
          f"--out {path}")


def open_cache(path: str, *, key: str, dataset: str = "...", mmap: bool = False, check_values: bool = False) -> Cache:
  """:func:`load_cache`, or a ``FileNotFoundError`` saying how to build the cache that ``config.<key>`` names.

  Args:
    path: the cache directory.
    key: the dotted config key that holds ``path``, for the message.
    dataset: the dataset to suggest when ``path``'s name does not say (:func:`embed_command`).
    mmap: memory-map the arrays.
    check_values: scan the embeddings for NaN/Inf rows (in 65,536-row chunks, so a memory-mapped cache is never
      read whole; on several hosts each scans its own block, :func:`sotalign_jax.runtime.distributed.host_shard`)
      and raise a ``ValueError`` naming the file and the count.
  """
  try:
    cache = load_cache(path, mmap=mmap)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.{key}: {e}\nBuild it with `{embed_command(path, dataset)}` (`make caches` "
                            f"builds the demo caches), or point config.{key} elsewhere.") from None
  if check_values:
    from sotalign_jax.runtime import distributed  # pylint: disable=g-import-not-at-top
    for name, emb in (("image_embeddings.npy", cache.image_emb), ("text_embeddings.npy", cache.text_emb)):
      if emb is None:
        continue
      block = distributed.host_shard(len(emb))
      bad = sum(int((~np.isfinite(emb[a:min(a + 65536, block.stop)])).any(1).sum())
                for a in range(block.start, block.stop, 65536))
      if bad:
        raise ValueError(f"config.{key}: {os.path.join(path, name)} has {bad} rows with NaN/Inf; rebuild the cache "
                         "(delete it and rerun `python -m sotalign_jax.cli.embed ...`)")
  return cache
