"""Your own images: a folder with a ``captions.jsonl`` file.

Each line of ``DIR/captions.jsonl`` is ``{"image": "relative/path.png", "caption": "...", "label": "..."}``
(``label`` optional; several lines may name the same image). The image id is the path relative to
``DIR``. Images are decoded only when embedded; unreadable ones are skipped and reported there.
"""

from __future__ import annotations

import json
import os

from sotalign_jax.data.core import Dataset, Record

__all__ = ["load_folder"]


def load_folder(directory: str | os.PathLike) -> Dataset:
  """Reads ``directory/captions.jsonl`` into records.

  Raises:
    FileNotFoundError: no ``captions.jsonl`` in ``directory``.
    ValueError: a line is not a JSON object with string ``image`` and ``caption``.
  """
  directory = os.fspath(directory)
  index = os.path.join(directory, "captions.jsonl")
  if not os.path.isfile(index):
    raise FileNotFoundError(
        f"{index} not found: a folder dataset needs a captions.jsonl with lines like "
        '{"image": "relative/path.png", "caption": "a red car"}')
  records = []
  with open(index, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{index}:{lineno}: not valid JSON ({e})") from e
      if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not isinstance(obj.get("caption"), str):
        raise ValueError(f"{index}:{lineno}: each line needs string fields 'image' and 'caption', "
                         f"got {line.strip()[:200]}")
      if not obj["caption"].strip():
        raise ValueError(f"{index}:{lineno}: empty caption")
      rel = os.path.normpath(obj["image"])
      label = obj.get("label")
      records.append(Record(image_id=rel, caption=obj["caption"].strip(),
                            image_path=os.path.join(directory, rel),
                            label=None if label is None else str(label)))
  if not records:
    raise ValueError(f"{index} has no records")
  return Dataset(name=f"folder:{os.path.abspath(directory)}", records=records,
                 info={"source": os.path.abspath(directory), "n_pairs": len(records),
                       "n_images": len({r.image_id for r in records})})
