r"""A two-view testbed from WordNet nouns: lemmas (x, the "image" side) against their glosses (y, the "text" side).

Command line::

  python -m sotalign_jax.cli.two_view --x-encoder all-MiniLM-L6-v2 --y-encoder all-mpnet-base-v2 \
      --out data_cache/wordnet_two_view__all-MiniLM-L6-v2__all-mpnet-base-v2 [--limit N] [--batch-size B] [--quiet]

Every noun synset of WordNet (Debian ``wordnet-base``) has lemmas (``"hot dog"``) and a gloss (``"a smooth-textured
sausage of minced beef or pork"``). Embedding the lemmas with one frozen text encoder and the glosses with another
gives two spaces whose lemma ↔ gloss retrieval has the structure of image ↔ caption retrieval, with ≈67k items per
side instead of a few thousand. The result is an ordinary embedding cache (:mod:`sotalign_jax.data.cache`) in which
the lemma view plays the image role, so ``experiments/benchmark.py`` and every cache reader use it unchanged.

**Mapping rule** (:func:`group_synsets`). An x-item is a distinct *first lemma* of a synset (the text
``load_wordnet(kind="lemmas")`` uses), compared case- and space-insensitively as
:func:`sotalign_jax.data.core.dedupe_captions` does: ``"Mercury"`` (the planet, the god) and ``"mercury"`` (the
element) are one item, spelled as first seen. MiniLM and MPNet lower-case their input (uncased tokenisers), so two
such items would have identical x rows and make retrieval ambiguous by construction. The item's captions are the
glosses (the first ``;``-part, as ``load_wordnet(kind="glosses")``) of every synset whose first lemma it is, in
``data.noun`` order: ``"bank"`` is one image with a caption per sense. Empty glosses are dropped (an item left
with none is dropped too); a gloss repeated *within* an item (case/space-insensitively) is kept once, since it
would only add an identical positive; the same gloss under *different* items (``"a variety of aster"`` × 23) is
kept, as those are different synsets. Items are in ``data.noun`` order (first occurrence).

**Ids.** ``image_id`` is ``n<offset>`` of the item's first synset (the id ``load_wordnet(kind="lemmas")`` gives
the same lemma), ``label`` is the lemma, each caption record also carries ``synset`` (its own ``n<offset>``);
``split`` is ``"train"`` for everything: the benchmark makes its own hash splits from ``image_id``
(:mod:`sotalign_jax.data.protocol`), which therefore do not depend on ``--limit``.

**Build.** Each view is embedded into a text-only intermediate cache with
:func:`sotalign_jax.cli.embed.embed_dataset` (``OUT/views/x``: the lemmas, ``OUT/views/y``: the glosses), so an
interrupted build, rerun with the same arguments, resumes shard by shard (a finished view is reused whole). The
final files are then assembled atomically (``manifest.json`` last, its presence means complete) and the views
removed; rerunning a finished build is a no-op. Intermediate views made with other arguments are replaced. The
glosses are embedded sorted by length (less padding per batch) and put back in caption order.
``--limit N`` keeps N items chosen by a stable hash of their id (nested: the items at N are among those at N + 1),
for tests and quick tries.

**Same texts, two encoders** (:func:`build_same_text`)::

  python -m sotalign_jax.cli.two_view \
      --same-text-from data_cache/wordnet_two_view__all-MiniLM-L6-v2__all-mpnet-base-v2 \
      --x-encoder all-MiniLM-L6-v2 --out data_cache/wordnet_glosses__all-MiniLM-L6-v2__all-mpnet-base-v2

takes the captions of any finished cache, keeps each distinct caption once (case/space-insensitively, first
occurrence), embeds them with ``--x-encoder`` and reuses the cache's own text rows as the y view: a cache in which
item ``i`` is one caption seen by two text encoders (MiniLM vs MPNet on the same glosses: far more similar spaces
than lemma vs gloss, or image vs caption). Only the x view is embedded (resumable, as above); ``image_id`` is
``<source image_id>/<caption ordinal within it>``, ``label`` the source's label.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import time
from typing import Any, NamedTuple, Sequence

import numpy as np

from sotalign_jax.cli import embed
from sotalign_jax.data import core, splits as splits_lib, wordnet
from sotalign_jax.data.cache import load_cache
from sotalign_jax.runtime import io as sio

__all__ = ["Item", "group_synsets", "wordnet_items", "build_two_view", "build_same_text", "main", "MAPPING"]

_FORMAT = 1
MAPPING = ("x-item: distinct first lemma of a noun synset (case/space-insensitive, first spelling kept); captions: "
           "the first ';'-part of the gloss of every synset whose first lemma it is, in data.noun order; empty "
           "glosses dropped; repeated glosses within an item kept once, across items kept")


class Item(NamedTuple):
  """One x-item (an "image") with its captions.

  Attributes:
    image_id: ``n<offset>`` of the item's first synset.
    lemma: the first lemma, as first spelled in ``data.noun``.
    synsets: ``n<offset>`` of the synset of each gloss.
    glosses: the captions, aligned with ``synsets``.
  """

  image_id: str
  lemma: str
  synsets: list[str]
  glosses: list[str]


def _key(text: str) -> str:
  return " ".join(text.lower().split())


def group_synsets(synsets: Sequence[tuple[str, list[str], str]], *,
                  limit: int | None = None) -> tuple[list[Item], dict[str, Any]]:
  """Groups parsed synsets into x-items by their first lemma (the module's mapping rule).

  Args:
    synsets: ``(offset, lemmas, gloss)`` per synset, from :func:`sotalign_jax.data.wordnet.parse_data_noun`.
    limit: keep only this many items, those of lowest :func:`sotalign_jax.data.splits.stable_uniform` of their
      id (salt ``"limit"``), still in ``data.noun`` order.

  Returns:
    ``(items, stats)``: the items and counts of what was grouped and dropped.
  """
  if limit is not None and limit <= 0:
    raise ValueError(f"limit must be positive, got {limit}")
  groups: dict[str, Item] = {}
  seen: dict[str, set[str]] = {}
  n_empty = n_dup = 0
  for offset, lemmas, gloss in synsets:
    if not lemmas:
      continue
    key = _key(lemmas[0])
    item = groups.setdefault(key, Item(f"n{offset}", lemmas[0], [], []))
    seen.setdefault(key, set())
    text = gloss.split(";")[0].strip()
    if not text:
      n_empty += 1
      continue
    if _key(text) in seen[key]:
      n_dup += 1
      continue
    seen[key].add(_key(text))
    item.synsets.append(f"n{offset}")
    item.glosses.append(text)
  items = [it for it in groups.values() if it.glosses]
  n_all = len(items)
  if limit is not None and limit < len(items):
    u = splits_lib.stable_uniform([it.image_id for it in items], seed="limit")
    keep = np.sort(np.argsort(u, kind="stable")[:limit])
    items = [items[k] for k in keep]
  per_key = collections.Counter(_key(g) for it in items for g in it.glosses)
  stats = {"n_synsets": len(synsets), "n_first_lemmas": len(groups), "n_items_before_limit": n_all,
           "n_items": len(items), "n_glosses": sum(len(it.glosses) for it in items),
           "n_empty_glosses_dropped": n_empty, "n_lemmas_without_gloss_dropped": len(groups) - n_all,
           "n_repeated_glosses_within_item_dropped": n_dup,
           "n_glosses_shared_across_items": sum(c for c in per_key.values() if c > 1), "limit": limit}
  return items, stats


def wordnet_items(root: str | None = None, *, install: bool = True,
                  limit: int | None = None) -> tuple[list[Item], dict[str, Any]]:
  """Parses WordNet's ``data.noun`` and groups it (:func:`group_synsets`).

  Args:
    root: directory holding ``data.noun``; default the Debian location (installing ``wordnet-base`` if missing,
      when ``install`` and running as root).
    install: allow ``apt-get install wordnet-base`` (default ``root`` only).
    limit: see :func:`group_synsets`.

  Returns:
    ``(items, info)``: the items and the dataset's provenance and counts (recorded in the manifest).

  Raises:
    sotalign_jax.data.MissingDataError: ``wordnet-base`` is not installed (the message says how to install it).
    FileNotFoundError: ``root`` has no ``data.noun``.
  """
  if root is None:
    path = wordnet.require_package("wordnet-base", os.path.join(wordnet.DEFAULT_ROOT, "data.noun"), install=install)
  else:
    path = os.path.join(root, "data.noun")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: --root must hold WordNet's data.noun (the Debian package "
                              f"wordnet-base installs it in {wordnet.DEFAULT_ROOT})")
  items, stats = group_synsets(wordnet.parse_data_noun(path), limit=limit)
  if not items:
    raise ValueError(f"{path} has no noun synsets with a gloss: is it WordNet's data.noun?")
  info = {"source": os.path.abspath(path), "packages": ["wordnet-base"], "license": "WordNet 3.0 license",
          "mapping": MAPPING, **stats}
  return items, info


def _text_encoder(spec: Any, flag: str) -> Any:
  if not isinstance(spec, str):
    enc = spec
  else:
    try:
      enc = embed.load_encoder(spec, "text")
    except (ImportError, AttributeError) as e:
      raise ValueError(f"{flag} {spec!r}: cannot load this module:factory ({type(e).__name__}: {e})") from None
    except ValueError as e:
      raise ValueError(f"{flag}: {e}") from None
  if not all(hasattr(enc, a) for a in ("name", "dim", "encode", "info")):
    raise ValueError(f"{flag} {getattr(enc, 'name', spec)!r} is not a text encoder (needs name, dim, encode, info)")
  return enc


def _chunk_size(batch_size: int, chunk_size: int | None) -> int:
  """The checked shard size (default ``16 * batch_size``)."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  chunk_size = 16 * batch_size if chunk_size is None else int(chunk_size)
  if chunk_size <= 0:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  return chunk_size


def _log(progress: bool, msg: str) -> None:
  if progress:
    print(f"[two_view] {msg}", file=sys.stderr, flush=True)


def _embed_view(texts: Sequence[str], ids: Sequence[str], order: np.ndarray, enc: Any, view_dir: str, name: str, *,
                batch_size: int, chunk_size: int, progress: bool) -> tuple[np.ndarray, dict]:
  """Embeds ``texts`` (in ``order``) into the text-only cache ``view_dir`` (resumable); rows back in text order."""
  ds = core.Dataset(name, [core.Record(ids[j], texts[j]) for j in order], {})
  t0 = time.perf_counter()
  m = embed.embed_dataset(ds, out_dir=view_dir, text_encoder=enc, batch_size=batch_size, chunk_size=chunk_size,
                          overwrite=True, progress=progress)
  wall = time.perf_counter() - t0
  cache = load_cache(view_dir)
  if [r["caption"] for r in cache.index] != [texts[j] for j in order]:
    raise RuntimeError(f"{view_dir} does not hold the texts of this build: delete it and rerun")
  inverse = np.empty(len(order), np.int64)
  inverse[order] = np.arange(len(order))
  n_unique = m["counts"]["unique_captions"]
  timing = {"texts": len(texts), "unique_texts": n_unique, "embed_s": m["timing"]["texts_s"],
            "texts_per_s": round(n_unique / m["timing"]["texts_s"], 2) if m["timing"]["texts_s"] > 0 else None,
            "wall_s": round(wall, 3)}
  return np.asarray(cache.text_emb, np.float32)[inverse], timing


def build_two_view(items: Sequence[Item], info: dict[str, Any], *, out_dir: str | os.PathLike, x_encoder: Any,
                   y_encoder: Any, batch_size: int = 64, chunk_size: int | None = None, overwrite: bool = False,
                   progress: bool = True) -> dict:
  """Embeds both views of ``items`` and assembles them into one cache at ``out_dir`` (resumable); returns its manifest.

  Args:
    items: from :func:`wordnet_items` / :func:`group_synsets`.
    info: the dataset's provenance, recorded in the manifest.
    out_dir: the cache directory; ``out_dir/views/{x,y}`` hold the intermediate view caches while it is built.
    x_encoder: text encoder of the lemmas (the "image" side): a ``TextEncoder``, a name or ``module:factory``.
    y_encoder: text encoder of the glosses (the "text" side), the same way.
    batch_size: forward-pass batch size of both views.
    chunk_size: texts per resumable shard; default ``16 * batch_size``.
    overwrite: replace a finished cache made with other arguments instead of raising.
    progress: show progress bars and messages.

  Raises:
    ValueError: no items, an unknown encoder or bad sizes.
    FileExistsError: ``out_dir`` holds a finished cache made with other arguments and ``overwrite`` is false.
  """
  out_dir = os.fspath(out_dir)
  if not items:
    raise ValueError("no items to embed")
  chunk_size = _chunk_size(batch_size, chunk_size)
  x_encoder = _text_encoder(x_encoder, "--x-encoder")
  y_encoder = _text_encoder(y_encoder, "--y-encoder")
  lemmas = [it.lemma for it in items]
  captions = [(row, it, syn, g) for row, it in enumerate(items) for syn, g in zip(it.synsets, it.glosses)]
  glosses = [c[3] for c in captions]
  job = {"format": _FORMAT, "kind": "two_view", "mapping": MAPPING,
         "items": embed._fingerprint([[it.image_id, it.lemma, it.synsets, it.glosses] for it in items]),
         "x_encoder": embed._encoder_desc(x_encoder), "y_encoder": embed._encoder_desc(y_encoder),
         "batch_size": batch_size, "chunk_size": chunk_size, "limit": info.get("limit"), "y_order": "length"}
  job_id = embed._fingerprint(job)
  done = embed.finished_manifest(out_dir, job_id, overwrite=overwrite)
  if done is not None:
    return done
  manifest_path = os.path.join(out_dir, "manifest.json")

  # The glosses (3 to 114 MPNet tokens) are embedded sorted by length, so a batch pads to about its own length:
  # ≈1.5x fewer tokens and ≈2x less attention than in caption order. The lemmas (≤ 16 tokens: one bucket) keep theirs.
  y_order = np.argsort([len(g) for g in glosses], kind="stable")
  views, timing = {}, {}
  for view, texts, ids, order, enc, what in (
      ("x", lemmas, [it.image_id for it in items], np.arange(len(lemmas)), x_encoder, "lemmas"),
      ("y", glosses, [c[2] for c in captions], y_order, y_encoder, "glosses")):
    view_dir = os.path.join(out_dir, "views", view)
    _log(progress, f"{view} view: {len(texts):,} {what} with {enc.name} -> {view_dir}")
    views[view], timing[view] = _embed_view(texts, ids, order, enc, view_dir, f"wordnet_two_view/{view}",
                                            batch_size=batch_size, chunk_size=chunk_size, progress=progress)
    _log(progress, f"{view} view done: {timing[view]}")

  image_emb, text_emb = views["x"], views["y"]
  assert image_emb.shape == (len(items), x_encoder.dim) and text_emb.shape == (len(captions), y_encoder.dim)
  index = [{"caption": g, "image": row, "image_id": it.image_id, "label": it.lemma, "split": "train",
            "synset": syn} for row, it, syn, g in captions]
  sio.save_npy(os.path.join(out_dir, "image_embeddings.npy"), image_emb)
  sio.save_npy(os.path.join(out_dir, "text_embeddings.npy"), text_emb)
  sio.write_jsonl(os.path.join(out_dir, "index.jsonl"), index)
  x_desc, y_desc = job["x_encoder"], job["y_encoder"]
  manifest = {
      "format": _FORMAT, "job_id": job_id, "kind": "two_view",
      "dataset": {"name": "wordnet_two_view", "info": dict(info)},
      "roles": {"image": "x view: WordNet noun lemmas (one row per item)",
                "text": "y view: WordNet noun glosses (one row per caption)"},
      "x_encoder": x_desc, "y_encoder": y_desc,
      # The names every cache reader knows: the lemma view is the image side, the gloss view the text side.
      "image_encoder": {**x_desc, "modality": "text"}, "text_encoder": y_desc,
      "versions": embed._versions(),
      "preprocessing": {"texts": "verbatim lemma / gloss strings; each encoder's own tokenisation",
                        "batch_size": batch_size, "chunk_size": chunk_size, "last_batch": "padded to batch_size",
                        "embedding_order": {"x": "item order", "y": "by character length (stable); rows then put "
                                            "back in caption order"}},
      "splits": {"captions": {"train": len(index)}, "images": {"train": len(items)},
                 "fixed_by_dataset": ["train"],
                 "note": "everything is 'train': the benchmark makes its own hash splits from image_id"},
      "counts": {"records": len(index), "images": len(items), "images_embedded": len(items), "images_skipped": 0,
                 "captions": len(index), "unique_captions": len(set(glosses)), "limit": info.get("limit")},
      "skipped": [],
      "timing": {**timing, "note": "embed_s: the run that finished the view (only its own chunks, if resumed)"},
      "files": {"image_embeddings": "image_embeddings.npy", "text_embeddings": "text_embeddings.npy",
                "index": "index.jsonl"},
      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  sio.write_json(manifest_path, manifest)
  shutil.rmtree(os.path.join(out_dir, "views"), ignore_errors=True)
  return manifest


SAME_TEXT_MAPPING = ("item: a distinct caption of the source cache (case/space-insensitive, first occurrence kept); "
                     "x: the caption embedded with x_encoder; y: the source cache's own text row of that caption")


def build_same_text(source: str | os.PathLike, *, out_dir: str | os.PathLike, x_encoder: Any, batch_size: int = 64,
                    chunk_size: int | None = None, overwrite: bool = False, progress: bool = True) -> dict:
  """A cache of the captions of ``source`` seen by two text encoders (resumable); returns its manifest.

  Item ``i`` is the ``i``-th distinct caption of ``source`` (index order; repeats compared case- and
  space-insensitively, as :func:`sotalign_jax.data.core.dedupe_captions`, are dropped). Its x row is
  ``x_encoder`` on the caption, its y row (its one caption) is ``source``'s own text row, so the y encoder is
  ``source``'s text encoder and nothing is embedded twice.

  Args:
    source: a finished embedding cache (any kind) whose text side is the y view.
    out_dir: the new cache; ``out_dir/views/x`` holds the x view while it is built.
    x_encoder: text encoder of the x view: a ``TextEncoder``, a name or ``module:factory``.
    batch_size, chunk_size, overwrite, progress: as in :func:`build_two_view`.

  Raises:
    FileNotFoundError: ``source`` is not a finished cache (the message says how to build one).
    ValueError: bad sizes, an unknown encoder, or a source without a text encoder or captions.
    FileExistsError: ``out_dir`` holds a finished cache made with other arguments and ``overwrite`` is false.
  """
  source, out_dir = os.fspath(source), os.fspath(out_dir)
  if not os.path.exists(os.path.join(source, "manifest.json")):
    raise FileNotFoundError(f"{source} is not a finished embedding cache (no manifest.json): build it first, e.g. "
                            "`make wordnet-cache` or `python -m sotalign_jax.cli.embed`")
  chunk_size = _chunk_size(batch_size, chunk_size)
  x_encoder = _text_encoder(x_encoder, "--x-encoder")
  src = load_cache(source, mmap=True)
  y_desc = src.manifest.get("text_encoder")
  if not y_desc:
    raise ValueError(f"{source}/manifest.json names no text_encoder: cannot tell what the y view is")
  keep, seen, ordinal = [], set(), collections.Counter()
  for row, r in enumerate(src.index):
    ordinal[r["image_id"]] += 1
    if r["caption"] and _key(r["caption"]) not in seen:
      seen.add(_key(r["caption"]))
      keep.append((row, f"{r['image_id']}/{ordinal[r['image_id']] - 1}"))
  if not keep:
    raise ValueError(f"{source} has no captions")
  texts = [src.index[row]["caption"] for row, _ in keep]
  job = {"format": _FORMAT, "kind": "same_text", "mapping": SAME_TEXT_MAPPING,
         "source": src.manifest.get("job_id") or embed._fingerprint(src.manifest),
         "x_encoder": embed._encoder_desc(x_encoder), "batch_size": batch_size, "chunk_size": chunk_size,
         "x_order": "length"}
  job_id = embed._fingerprint(job)
  done = embed.finished_manifest(out_dir, job_id, overwrite=overwrite)
  if done is not None:
    return done
  view_dir = os.path.join(out_dir, "views", "x")
  _log(progress, f"x view: {len(texts):,} distinct captions of {source} with {x_encoder.name} -> {view_dir}")
  order = np.argsort([len(t) for t in texts], kind="stable")
  image_emb, timing = _embed_view(texts, [i for _, i in keep], order, x_encoder, view_dir, "same_text/x",
                                  batch_size=batch_size, chunk_size=chunk_size, progress=progress)
  text_emb = np.asarray(src.text_emb[np.array([row for row, _ in keep], np.int64)], np.float32)
  index = [{"caption": t, "image": i, "image_id": item_id, "label": src.index[row].get("label"), "split": "train",
            "source_row": row} for i, ((row, item_id), t) in enumerate(zip(keep, texts))]
  sio.save_npy(os.path.join(out_dir, "image_embeddings.npy"), image_emb)
  sio.save_npy(os.path.join(out_dir, "text_embeddings.npy"), text_emb)
  sio.write_jsonl(os.path.join(out_dir, "index.jsonl"), index)
  x_desc = job["x_encoder"]
  name = f"{src.manifest.get('dataset', {}).get('name', os.path.basename(source))}_same_text"
  manifest = {
      "format": _FORMAT, "job_id": job_id, "kind": "same_text",
      "dataset": {"name": name, "info": {"source": os.path.abspath(source), "source_job_id": job["source"],
                                         "mapping": SAME_TEXT_MAPPING, "n_source_captions": len(src.index),
                                         "n_items": len(index),
                                         "n_repeated_captions_dropped": len(src.index) - len(index)}},
      "roles": {"image": f"x view: the source's captions embedded with {x_desc['name']}",
                "text": f"y view: the same captions, the source's {y_desc.get('name')} rows"},
      "x_encoder": x_desc, "y_encoder": y_desc,
      "image_encoder": {**x_desc, "modality": "text"}, "text_encoder": y_desc,
      "versions": embed._versions(),
      "preprocessing": {"texts": "verbatim captions; each encoder's own tokenisation", "batch_size": batch_size,
                        "chunk_size": chunk_size, "embedding_order": {"x": "by character length (stable); rows "
                                                                      "then put back in item order"}},
      "splits": {"captions": {"train": len(index)}, "images": {"train": len(index)}, "fixed_by_dataset": ["train"],
                 "note": "everything is 'train': the benchmark makes its own hash splits from image_id"},
      "counts": {"records": len(index), "images": len(index), "images_embedded": len(index), "images_skipped": 0,
                 "captions": len(index), "unique_captions": len(index), "limit": None},
      "skipped": [],
      "timing": {"x": timing, "note": "embed_s: the run that finished the view (only its own chunks, if resumed)"},
      "files": {"image_embeddings": "image_embeddings.npy", "text_embeddings": "text_embeddings.npy",
                "index": "index.jsonl"},
      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  sio.write_json(os.path.join(out_dir, "manifest.json"), manifest)
  shutil.rmtree(os.path.join(out_dir, "views"), ignore_errors=True)
  return manifest


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m sotalign_jax.cli.two_view", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--x-encoder", required=True, help="text encoder of the lemmas (image side): name or module:factory")
  p.add_argument("--y-encoder", help="text encoder of the glosses (text side): name or module:factory")
  p.add_argument("--same-text-from", metavar="CACHE",
                 help="instead of WordNet: the captions of this finished cache, x = --x-encoder on each caption, "
                      "y = the cache's own text rows (build_same_text)")
  p.add_argument("--out", required=True, help="output cache directory")
  p.add_argument("--limit", type=int, help="only N lemmas (chosen by a stable hash of their id)")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--chunk-size", type=int, help="texts per resumable shard (default 16 x batch size)")
  p.add_argument("--root", help=f"directory holding WordNet's data.noun (default {wordnet.DEFAULT_ROOT})")
  p.add_argument("--no-install", action="store_true", help="never apt-get install a missing wordnet-base")
  p.add_argument("--overwrite", action="store_true", help="replace a finished cache made with other arguments")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  a = p.parse_args(argv)
  if a.same_text_from:
    if a.y_encoder or a.limit or a.root:
      p.error("--same-text-from takes its y view and items from the cache: drop --y-encoder, --limit and --root")
    try:
      m = build_same_text(a.same_text_from, out_dir=a.out, x_encoder=a.x_encoder, batch_size=a.batch_size,
                          chunk_size=a.chunk_size, overwrite=a.overwrite, progress=not a.quiet)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print(json.dumps({"out": a.out, "items": m["counts"]["images"], "x_dim": m["x_encoder"]["dim"],
                      "y_dim": m["y_encoder"].get("dim")}))
    return 0
  if not a.y_encoder:
    p.error("--y-encoder is required (unless --same-text-from)")
  try:
    items, info = wordnet_items(a.root, install=not a.no_install, limit=a.limit)
    manifest = build_two_view(items, info, out_dir=a.out, x_encoder=a.x_encoder, y_encoder=a.y_encoder,
                              batch_size=a.batch_size, chunk_size=a.chunk_size, overwrite=a.overwrite,
                              progress=not a.quiet)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  c = manifest["counts"]
  print(json.dumps({"out": a.out, "lemmas": c["images"], "glosses": c["captions"],
                    "x_dim": manifest["x_encoder"]["dim"], "y_dim": manifest["y_encoder"]["dim"]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
