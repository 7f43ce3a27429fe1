"""Tux Paint stamps: ≈785 PNG stamps with one-sentence English descriptions (Debian
``tuxpaint-stamps-default``, GPL: installed at run time, never committed).

Each ``stamps/<category>/.../<name>.png`` has a ``<name>.txt`` whose first line that is not a
``<locale>.utf8=`` translation is the English description, used as the caption. Stamps shipped only as
SVG (no PNG) are skipped. The label is the top-level category (``animals``, ``food``, …).
"""

from __future__ import annotations

import os
import re

from sotalign_jax.data.core import Dataset, Record, dedupe_captions
from sotalign_jax.data.debian import require_package

__all__ = ["load_tuxpaint", "english_description", "DEFAULT_ROOT"]

DEFAULT_ROOT = "/usr/share/tuxpaint/stamps"
_LOCALE_LINE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?(@[A-Za-z]+)?\.utf8=")


def english_description(path: str | os.PathLike) -> str | None:
  """The English description in a Tux Paint stamp ``.txt`` file (``None`` if there is none)."""
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      line = line.strip()
      if line and not _LOCALE_LINE.match(line):
        return " ".join(line.split())
  return None


def load_tuxpaint(root: str | None = None, *, dedupe: bool = False, install: bool = True) -> Dataset:
  """Loads the Tux Paint stamps with their English descriptions.

  Args:
    root: the ``stamps`` directory; default the Debian location (installing
      ``tuxpaint-stamps-default`` if missing, when root).
    dedupe: keep only the first stamp of each repeated description (e.g. six "A flower.").
    install: allow ``apt-get install`` (only with the default ``root``).
  """
  if root is None:
    root = require_package("tuxpaint-stamps-default", DEFAULT_ROOT, install=install)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{root} is missing (Debian package tuxpaint-stamps-default)")
  records, n_txt, n_no_png, n_no_text = [], 0, 0, 0
  for dirpath, dirs, files in os.walk(root):
    dirs.sort()
    for f in sorted(files):
      if not f.endswith(".txt"):
        continue
      n_txt += 1
      stem = os.path.join(dirpath, f[:-4])
      if not os.path.exists(stem + ".png"):
        n_no_png += 1
        continue
      desc = english_description(stem + ".txt")
      if not desc:
        n_no_text += 1
        continue
      rel = os.path.relpath(stem, root).replace(os.sep, "/")
      records.append(Record(image_id=rel, caption=desc, image_path=stem + ".png",
                            label=rel.split("/", 1)[0] if "/" in rel else None))
  n_dup = 0
  if dedupe:
    records, n_dup = dedupe_captions(records)
  info = {"source": os.path.abspath(root), "packages": ["tuxpaint-stamps-default"], "license": "GPL-2+",
          "n_description_files": n_txt, "n_svg_only_skipped": n_no_png, "n_without_english": n_no_text,
          "n_duplicate_captions_dropped": n_dup, "n_pairs": len(records),
          "n_unique_captions": len({" ".join(r.caption.lower().split()) for r in records})}
  return Dataset(name="tuxpaint", records=records, info=info)
