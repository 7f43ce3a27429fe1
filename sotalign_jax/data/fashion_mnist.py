"""Fashion-MNIST (Xiao et al., 2017): 70k 28x28 grey images of 10 clothing classes, from the Debian
package ``dataset-fashion-mnist``, for zero-shot classification with class-name prompts.

Each image becomes one record whose caption is the prompt of its class
(``"a photo of a {class}"`` by default) and whose label is the class name. The official split is kept
in the image id (``train/00042``, ``test/00007``) and, with ``official_split=True``, in
``Record.split`` (official ``test`` -> ``test``, the rest assigned by hash).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from sotalign_jax.data.core import Dataset, Record
from sotalign_jax.data.debian import require_package

__all__ = ["CLASSES", "load_fashion_mnist", "read_idx", "prompts", "DEFAULT_ROOT"]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle boot")


def prompts(template: str = "a photo of a {}") -> list[str]:
  """The class prompts, in label order: ``[10]`` strings."""
  if "{}" not in template:
    raise ValueError(f"template must contain '{{}}', got {template!r}")
  return [template.format(c) for c in CLASSES]


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (``.gz`` or plain) into a uint8 array."""
  opener = gzip.open if os.fspath(path).endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f"{path} is not a uint8 IDX file")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
  arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
  if arr.size != int(np.prod(shape)):
    raise ValueError(f"{path}: header says {shape} but holds {arr.size} values")
  return arr.reshape(shape)


def load_fashion_mnist(root: str | None = None, *, template: str = "a photo of a {}",
                       official_split: bool = True, install: bool = True) -> Dataset:
  """Loads Fashion-MNIST as (image, class prompt) records.

  Args:
    root: directory with the four ``*-idx?-ubyte.gz`` files; default the Debian location (installing
      ``dataset-fashion-mnist`` if missing, when root).
    template: prompt template, ``{}`` is replaced by the class name.
    official_split: fix the official test images to the ``test`` split.
    install: allow ``apt-get install`` (only with the default ``root``).
  """
  if root is None:
    root = require_package("dataset-fashion-mnist", DEFAULT_ROOT, install=install)
  texts = prompts(template)
  records = []
  for part, prefix in (("train", "train"), ("test", "t10k")):
    images = read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
    if images.shape[0] != labels.shape[0]:
      raise ValueError(f"{root}: {prefix} has {images.shape[0]} images but {labels.shape[0]} labels")
    for k in range(images.shape[0]):
      y = int(labels[k])
      records.append(Record(image_id=f"{part}/{k:05d}", caption=texts[y], image=images[k],
                            label=CLASSES[y], split="test" if official_split and part == "test" else None))
  info = {"source": os.path.abspath(root), "packages": ["dataset-fashion-mnist"], "license": "MIT",
          "classes": list(CLASSES), "template": template, "prompts": texts, "n_pairs": len(records)}
  return Dataset(name="fashion_mnist", records=records, info=info)
