"""COCO Captions with the Karpathy splits, through TensorFlow Datasets (``coco_captions``), for users
who have it prepared locally.

:func:`records_from_examples` is the whole adapter: it turns an iterable of examples shaped like
tfds's numpy examples (``{"image": uint8 [H, W, 3], "image/id": int, "image/filename": bytes|str,
"captions": {"text": [n] bytes|str, "id": [n] int}}``) into records. :func:`load_coco_captions` is a
thin wrapper that reads those examples with tfds, imported lazily: tfds's ``coco_captions`` builder
needs TensorFlow (not a requirement of this package), so ``tfds.testing.mock_data`` cannot be used
without it either; the adapter is therefore tested on examples built in that shape directly.
Karpathy ``val``/``test`` are kept as the ``val``/``test`` splits; ``train`` and ``restval`` images are
left to the hash split (``paired``/``unpaired``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np

from sotalign_jax import _extras
from sotalign_jax.data.core import Dataset, Record

__all__ = ["records_from_examples", "load_coco_captions", "KARPATHY_SPLITS"]

KARPATHY_SPLITS = ("train", "restval", "val", "test")
_FIXED = {"val": "val", "test": "test"}


def _str(x: Any) -> str:
  if isinstance(x, (bytes, np.bytes_)):
    return bytes(x).decode("utf-8")
  return str(x)


def records_from_examples(examples: Iterable[Mapping[str, Any]], *, split: str) -> list[Record]:
  """Turns tfds-shaped ``coco_captions`` examples of Karpathy ``split`` into records (one per caption).

  Args:
    examples: numpy examples (see module docstring).
    split: the Karpathy split the examples come from (one of :data:`KARPATHY_SPLITS`).
  """
  if split not in KARPATHY_SPLITS:
    raise ValueError(f"split must be one of {KARPATHY_SPLITS}, got {split!r}")
  records = []
  for ex in examples:
    image = np.asarray(ex["image"])
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"example image must be [H, W, 3], got shape {image.shape}")
    image_id = f"coco/{int(np.asarray(ex['image/id']))}"
    for text in np.asarray(ex["captions"]["text"]).reshape(-1):
      caption = " ".join(_str(text).split())
      if caption:
        records.append(Record(image_id=image_id, caption=caption, image=image, split=_FIXED.get(split)))
  return records


def load_coco_captions(*, splits: Iterable[str] = KARPATHY_SPLITS, data_dir: str | None = None,
                       read: Callable[[str], Iterable[Mapping[str, Any]]] | None = None) -> Dataset:
  """Loads COCO Captions (Karpathy splits) from a locally prepared tfds ``coco_captions``.

  Images are held in memory: use ``--limit`` or fewer ``splits`` for a quick run.

  Args:
    splits: Karpathy splits to read.
    data_dir: tfds data directory (default tfds's).
    read: ``split -> iterable of numpy examples``; default reads with tfds (needs TensorFlow and the
      prepared dataset). Tests pass their own.
  """
  if read is None:
    def read(s: str) -> Iterable[Mapping[str, Any]]:
      tfds = _extras.require("tensorflow_datasets", what="coco_captions")
      try:
        ds = tfds.load("coco_captions", split=s, data_dir=data_dir, download=False)
      except Exception as e:  # tfds raises many types: missing TF, missing data, ...
        raise RuntimeError(
            f"tfds.load('coco_captions', split={s!r}) failed: {e}. coco_captions needs TensorFlow "
            "(pip install tensorflow) and the dataset prepared in the tfds data_dir "
            "(tfds build coco_captions, which downloads COCO 2014)") from e
      return tfds.as_numpy(ds)
  records = []
  for s in splits:
    records.extend(records_from_examples(read(s), split=s))
  return Dataset(name="coco_captions", records=records,
                 info={"source": "tfds:coco_captions", "splits": list(splits), "n_pairs": len(records),
                       "n_images": len({r.image_id for r in records}), "license": "CC BY 4.0 (annotations)"})
