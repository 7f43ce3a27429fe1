"""Openclipart: ≈8k public-domain clip-art images with their SVG metadata (Debian ``openclipart-png``
+ ``openclipart-svg``). Default data of ``make demo``.

Every ``png/<path>.png`` has a twin ``svg/<path>.svg`` whose RDF metadata (``cc:Work``; the ``cc``
namespace URI varies between files, so elements are matched by local name) gives ``dc:title``,
``dc:description``, ``dc:subject`` keywords and ``dc:creator``. Titles are dominated by collection
names (of 8,121 images, 1,375 are titled "gramastar", ≈950 "Part of the Flat Icon Collection (…)",
431 "Lemon SVG theme", 226 "card"), so titles cannot be used as captions as they are.

Caption rule (:data:`CAPTION_RULE`, applied in sorted path order):

1. A title is a *collection title* if it is empty, or shared by at least ``collection_min_count``
   files, or matches ``COLLECTION_PATTERN`` (``collection``, ``theme``, ``icon set``, ``svg``, …).
   ``"Clipart by <author> - <name>"`` titles are reduced to ``<name>`` first.
2. Not a collection title → the caption is the (cleaned) title.
3. Collection member → the caption is the file-name words (letters only, camelCase split, words of
   one letter, ``FILE_STOPWORDS`` and prefixes of the creator's name — Debian appends the author
   to file names — removed) followed by up to ``max_keywords`` keywords that are not generic
   (``GENERIC_KEYWORDS``) and not already in the caption: ``"help index, application"``.
   No file-name word left → the image is dropped.
4. Byte-identical PNGs (the package files many images under several categories) are dropped but
   the first one.
5. Captions are de-duplicated (case- and space-insensitively): only the first image with a given
   caption is kept. This removes near-identical collections (the 1,375 "gramastar" stars all become
   ``"star pt step, stars, magick, geometry"``) and guarantees that no split, in particular ``test``,
   holds two images with the same caption.

Some titles are Italian (e.g. "Barattolo di pillole"); they are kept as they are. The label of each
record is its top-level category directory (``animals``, ``food``, …).
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import xml.etree.ElementTree as ET
from typing import NamedTuple

from sotalign_jax.data.core import Dataset, Record, dedupe_captions
from sotalign_jax.data.debian import require_package

__all__ = ["SvgMeta", "parse_svg_metadata", "caption_for", "build_records", "load_openclipart",
           "CAPTION_RULE", "DEFAULT_ROOT"]

DEFAULT_ROOT = "/usr/share/openclipart"
_DC = "http://purl.org/dc/elements/1.1/"
COLLECTION_PATTERN = re.compile(
    r"collection|theme|icon ?set|iconset|cliparts|\bsvg\b|s[iu]bmission|^various\b|^part of\b", re.I)
FILE_STOPWORDS = frozenset({"png", "svg", "gnome", "mime", "stock", "fs", "icon", "icons", "the", "of", "and",
                            "clipart", "clip", "art", "v", "md", "pt"})
GENERIC_KEYWORDS = frozenset({
    "hash", "icon", "icons", "computer", "theme", "unsorted", "clipart", "clip art", "svg", "image",
    "picture", "shapes", "shape", "special", "mimetypes", "mime-types", "mime types", "filesystem",
    "lemon_theme_icon", "lemon theme icon", "mapsym", "symbol", "application", "action", "buttons", "none",
    "shapes", "openclipart", "png", "media", "etiquette", "gramastar"})
CAPTION_RULE = (
    "title if it is not a collection title (empty, shared by >= collection_min_count files, or matching "
    f"{COLLECTION_PATTERN.pattern!r}); else file-name words (author suffix and stopwords removed) + up to "
    "max_keywords non-generic keywords; byte-identical PNGs and repeated captions (case-insensitive) keep "
    "only their first image in sorted path order")


class SvgMeta(NamedTuple):
  title: str
  description: str
  keywords: tuple[str, ...]
  creator: str


def parse_svg_metadata(path: str | os.PathLike) -> SvgMeta:
  """Reads title, description, keywords and creator from an SVG's RDF ``cc:Work`` metadata.

  Parsing stops at the end of the ``metadata`` element, so large drawings are not read whole.
  Any ``cc`` namespace URI is accepted (elements are matched by local name ``Work``). A file
  without metadata gives empty fields.
  """
  empty = SvgMeta("", "", (), "")
  try:
    for _, el in ET.iterparse(os.fspath(path), events=("end",)):
      local = el.tag.rsplit("}", 1)[-1]
      if local == "Work":
        return _meta_from_work(el)
      if local == "metadata":
        return empty
  except ET.ParseError:
    return empty
  return empty


def _text(el) -> str:
  return " ".join((el.text or "").split()) if el is not None else ""


def _meta_from_work(work) -> SvgMeta:
  title = _text(work.find(f"{{{_DC}}}title"))
  description = _text(work.find(f"{{{_DC}}}description"))
  subject = work.find(f"{{{_DC}}}subject")
  keywords: list[str] = []
  if subject is not None:
    for el in subject.iter():
      if el.tag.rsplit("}", 1)[-1] == "li" and el.text and el.text.strip():
        keywords.append(" ".join(el.text.split()))
    if not keywords and subject.text and subject.text.strip():  # Some files use a plain comma list.
      keywords = [k.strip() for k in re.split(r"[,;]", subject.text) if k.strip()]
  creator_el = work.find(f"{{{_DC}}}creator")
  creator = ""
  if creator_el is not None:
    t = creator_el.find(f".//{{{_DC}}}title")
    creator = _text(t) or _text(creator_el)
  return SvgMeta(title, description, tuple(keywords), creator)


def _clean_title(title: str) -> str:
  title = " ".join(title.replace("_", " ").split())
  m = re.match(r"^clipart by [^-]+ - (.+)$", title, re.I)
  return m.group(1).strip() if m else title


def _file_words(stem: str, creator: str) -> list[str]:
  stem = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
  words = [w.lower() for w in re.findall(r"[A-Za-z]+", stem)]
  author = [a.lower() for a in re.findall(r"[A-Za-z]+", creator) if len(a) >= 3]
  out = []
  for w in words:
    if len(w) <= 1 or w in FILE_STOPWORDS:
      continue
    if len(w) >= 3 and any(a.startswith(w) for a in author):
      continue
    out.append(w)
  return out


def caption_for(meta: SvgMeta, stem: str, *, is_collection: bool, max_keywords: int = 3) -> str | None:
  """The caption of one image under :data:`CAPTION_RULE` (``None``: no usable words)."""
  if not is_collection:
    return _clean_title(meta.title) or None
  words = _file_words(stem, meta.creator)
  if not words:
    return None
  caption = " ".join(words)
  seen = set(words)
  extra = []
  for kw in meta.keywords:
    k = " ".join(kw.replace("_", " ").lower().split())
    if not k or k in GENERIC_KEYWORDS or kw.lower() in GENERIC_KEYWORDS or k in seen:
      continue
    if all(part in seen for part in k.split()):
      continue
    seen.add(k)
    extra.append(k)
    if len(extra) >= max_keywords:
      break
  return ", ".join([caption] + extra)


def is_collection_title(title: str, count: int, *, collection_min_count: int) -> bool:
  t = _clean_title(title)
  return not t or count >= collection_min_count or bool(COLLECTION_PATTERN.search(t))


def build_records(metas: dict[str, SvgMeta], png_paths: dict[str, str], *, collection_min_count: int = 3,
                  max_keywords: int = 3, content_keys: dict[str, str] | None = None) -> tuple[list[Record], dict]:
  """Applies :data:`CAPTION_RULE` to parsed metadata.

  Args:
    metas: image id (path without extension, relative to the package root) -> metadata.
    png_paths: image id -> PNG file.
    collection_min_count: a title shared by this many files is a collection title.
    max_keywords: keywords appended to collection members' captions.
    content_keys: image id -> content hash; images with a repeated key are dropped (``None``: keep all).

  Returns:
    ``(records, stats)``.
  """
  if collection_min_count < 2:
    raise ValueError(f"collection_min_count must be >= 2, got {collection_min_count}")
  if max_keywords < 0:
    raise ValueError(f"max_keywords must be >= 0, got {max_keywords}")
  ids = sorted(set(metas) & set(png_paths))
  title_counts = collections.Counter(_clean_title(metas[i].title) for i in ids)
  records, seen_content = [], set()
  n_collection = n_no_words = n_dup_images = 0
  for i in ids:
    if content_keys is not None:
      key = content_keys[i]
      if key in seen_content:
        n_dup_images += 1
        continue
      seen_content.add(key)
    meta = metas[i]
    coll = is_collection_title(meta.title, title_counts[_clean_title(meta.title)],
                               collection_min_count=collection_min_count)
    n_collection += coll
    cap = caption_for(meta, os.path.basename(i), is_collection=coll, max_keywords=max_keywords)
    if cap is None:
      n_no_words += 1
      continue
    label = i.split("/", 1)[0] if "/" in i else None
    records.append(Record(image_id=i, caption=cap, image_path=png_paths[i], label=label))
  kept, n_dup_captions = dedupe_captions(records)
  stats = {
      "n_files": len(ids),
      "n_titled": sum(1 for i in ids if metas[i].title),
      "n_unique_titles": len({metas[i].title for i in ids if metas[i].title}),
      "n_duplicate_images_dropped": n_dup_images,
      "n_collection_members": n_collection,
      "n_no_caption_dropped": n_no_words,
      "n_duplicate_captions_dropped": n_dup_captions,
      "n_pairs": len(kept),
      "n_unique_captions": len({" ".join(r.caption.lower().split()) for r in kept}),
      "collection_min_count": collection_min_count,
      "max_keywords": max_keywords,
      "caption_rule": CAPTION_RULE,
  }
  return kept, stats


def load_openclipart(root: str | None = None, *, collection_min_count: int = 3, max_keywords: int = 3,
                     dedupe_images: bool = True, install: bool = True) -> Dataset:
  """Loads openclipart (PNG images + captions from SVG metadata, see :data:`CAPTION_RULE`).

  Args:
    root: directory holding ``png/`` and ``svg/``; default the Debian location (installing
      ``openclipart-png`` and ``openclipart-svg`` if missing, when root).
    collection_min_count: a title shared by this many files is a collection title.
    max_keywords: keywords appended to collection members' captions.
    dedupe_images: drop byte-identical PNGs but the first.
    install: allow ``apt-get install`` (only with the default ``root``).
  """
  if root is None:
    root = DEFAULT_ROOT
    require_package("openclipart-png", os.path.join(root, "png"), install=install)
    require_package("openclipart-svg", os.path.join(root, "svg"), install=install)
  for sub in ("png", "svg"):
    if not os.path.isdir(os.path.join(root, sub)):
      raise FileNotFoundError(f"{os.path.join(root, sub)} is missing (Debian package openclipart-{sub})")
  png_dir, svg_dir = os.path.join(root, "png"), os.path.join(root, "svg")
  png_paths = {}
  for dirpath, _, files in os.walk(png_dir):
    for f in files:
      if f.lower().endswith(".png"):
        full = os.path.join(dirpath, f)
        png_paths[os.path.relpath(full, png_dir)[:-4].replace(os.sep, "/")] = full
  metas = {}
  for i in png_paths:
    svg = os.path.join(svg_dir, i + ".svg")
    metas[i] = parse_svg_metadata(svg) if os.path.exists(svg) else SvgMeta("", "", (), "")
  content_keys = None
  if dedupe_images:
    content_keys = {}
    for i, p in png_paths.items():
      with open(p, "rb") as f:
        content_keys[i] = hashlib.sha1(f.read()).hexdigest()
  records, stats = build_records(metas, png_paths, collection_min_count=collection_min_count,
                                 max_keywords=max_keywords, content_keys=content_keys)
  stats.update(source=os.path.abspath(root), packages=["openclipart-png", "openclipart-svg"],
               license="public domain (Openclipart)")
  return Dataset(name="openclipart", records=records, info=stats)
