r"""Resumable embedding cache: frozen image and text encoders applied once to a dataset.

Command line::

  python -m sotalign_jax.cli.embed --dataset openclipart \
      --image-encoder efficientnet-lite0 --text-encoder all-MiniLM-L6-v2 --out workdirs/cache/openclipart
  python -m sotalign_jax.cli.embed --folder my_images/ --image-encoder ... --text-encoder ... --out ...
  python -m sotalign_jax.cli.embed --dataset wordnet --text-encoder all-MiniLM-L6-v2 --out ...   # text only

writes into ``OUT``:

* ``image_embeddings.npy`` — float32 ``[n_images, d_img]`` (images that decoded; others are skipped),
* ``text_embeddings.npy`` — float32 ``[n_captions, d_txt]``, row ``i`` is line ``i`` of the index,
* ``index.jsonl`` — one line per caption: ``caption``, ``image`` (row in ``image_embeddings.npy``,
  ``null`` for text-only data), ``image_id``, ``label``, ``split``,
* ``manifest.json`` — encoders and their ``info``, versions, preprocessing, counts, skipped files;
  written last, so its presence means the cache is complete.

Work is done in chunks saved as atomic shard files under ``OUT/shards/``; a killed run, rerun with the
same arguments, continues from the last finished chunk and gives the same arrays as an uninterrupted
run. Images are decoded and preprocessed by a thread pool while the jitted forward pass runs.
Encoders are named as in :mod:`sotalign_jax.encoders`, or ``package.module:factory`` for your own
(a zero-argument callable returning an ``ImageEncoder`` / ``TextEncoder``).

Read a cache back with :func:`sotalign_jax.data.cache.load_cache`.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import hashlib
import importlib
import json
import os
import platform
import shutil
import signal
import sys
import time
from typing import Any, Iterator, Sequence

import numpy as np

from sotalign_jax.runtime import io as sio
from sotalign_jax.data import core
from sotalign_jax.data import splits as splits_lib

__all__ = ["embed_dataset", "load_encoder", "main", "KILL_ENV"]

# Test hook: when set to N, the process SIGKILLs itself right after writing its N-th shard.
KILL_ENV = "SOTALIGN_EMBED_KILL_AFTER_SHARDS"
_FORMAT = 1


def load_encoder(name: str, kind: str) -> Any:
  """Loads an encoder by name, or by ``module:factory`` (a zero-argument callable)."""
  if kind not in ("image", "text"):
    raise ValueError(f"kind must be 'image' or 'text', got {kind!r}")
  if ":" in name and not name.startswith("hf:"):
    module, fn = name.split(":", 1)
    enc = getattr(importlib.import_module(module), fn)()
    # record the spec as the name, so a manifest names an encoder that `load_encoder` can load again
    return enc._replace(name=name) if hasattr(enc, "_replace") else enc
  from sotalign_jax import encoders  # pylint: disable=g-import-not-at-top
  return encoders.load_image_encoder(name) if kind == "image" else encoders.load_text_encoder(name)


def _versions() -> dict[str, str]:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  out = {"python": platform.python_version()}
  for pkg in ("sotalign-jax", "jax", "jaxlib", "flax", "numpy", "pillow", "transformers"):
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      pass
  return out


def _encoder_desc(enc: Any) -> dict | None:
  if enc is None:
    return None
  d = {"name": enc.name, "dim": int(enc.dim), "info": dict(enc.info)}
  if hasattr(enc, "resolution"):
    d["resolution"] = int(enc.resolution)
  return d


def _fingerprint(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class _Killer:
  """Counts shards written by this process; SIGKILLs it after ``KILL_ENV`` of them (tests only)."""

  def __init__(self) -> None:
    v = os.environ.get(KILL_ENV)
    self.after = int(v) if v else None
    self.n = 0

  def shard_written(self) -> None:
    self.n += 1
    if self.after is not None and self.n >= self.after:
      os.kill(os.getpid(), signal.SIGKILL)


def _select(records: Sequence[core.Record], limit: int | None) -> list[core.Record]:
  if limit is None:
    return list(records)
  if limit <= 0:
    raise ValueError(f"limit must be positive, got {limit}")
  ids = list(dict.fromkeys(r.image_id for r in records))
  if limit >= len(ids):
    return list(records)
  u = splits_lib.stable_uniform(ids, seed="limit")
  keep = {ids[k] for k in np.argsort(u, kind="stable")[:limit]}
  return [r for r in records if r.image_id in keep]


def _split_of_ids(records: Sequence[core.Record], *, fractions: dict | None, sizes: dict | None,
                  seed: str) -> dict[str, str]:
  fixed: dict[str, str] = {}
  for r in records:
    if r.split is not None:
      fixed[r.image_id] = r.split
  free = [i for i in dict.fromkeys(r.image_id for r in records) if i not in fixed]
  fixed_names = set(fixed.values())
  if sizes is None:
    fr = dict(splits_lib.DEFAULT_FRACTIONS if fractions is None else fractions)
    if fixed_names:  # Splits the dataset fixes itself are not also drawn from the free ids.
      fr = {k: v for k, v in fr.items() if k not in fixed_names}
      total = sum(fr.values())
      if total <= 0:
        raise ValueError(f"split fractions {fractions} leave nothing for the ids the dataset does not fix")
      fr = {k: v / total for k, v in fr.items()}
    assigned = splits_lib.assign_splits(free, fractions=fr, seed=seed)
  else:
    sz = {k: v for k, v in sizes.items() if k not in fixed_names}
    assigned = splits_lib.assign_splits(free, sizes=sz, seed=seed)
  return {**fixed, **dict(zip(free, assigned))}


def _prefetch(fn, items: Sequence[Any], pool: cf.Executor, depth: int) -> Iterator[Any]:
  """Yields ``fn(item)`` in order, keeping at most ``depth`` calls in flight on ``pool``."""
  pending: collections.deque = collections.deque()
  it = iter(items)
  for item in it:
    pending.append(pool.submit(fn, item))
    if len(pending) >= depth:
      break
  while pending:
    fut = pending.popleft()
    nxt = next(it, None)
    if nxt is not None:
      pending.append(pool.submit(fn, nxt))
    yield fut.result()


def _embed_images(images: list[core.Record], encoder: Any, *, shard_dir: str, chunk_size: int, batch_size: int,
                  workers: int, max_side: int | None, max_pixels: int, progress: bool, killer: _Killer) -> None:
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  n_chunks = -(-len(images) // chunk_size)
  todo = [c for c in range(n_chunks) if not os.path.exists(os.path.join(shard_dir, f"images-{c:05d}.npz"))]
  if not todo:
    return

  def work(k: int) -> tuple[np.ndarray | None, str]:
    rec = images[k]
    try:
      src = rec.image if rec.image is not None else rec.image_path
      pil = core.load_image(src, max_side=max_side, max_pixels=max_pixels)
      arr = np.asarray(encoder.preprocess(pil), dtype=np.float32)
      if arr.ndim != 3 or not np.all(np.isfinite(arr)):
        raise ValueError(f"preprocess returned shape {arr.shape} or non-finite values")
      return arr, ""
    except Exception as e:  # pylint: disable=broad-except  # Never crash on one bad image.
      return None, f"{type(e).__name__}: {e}"[:300]

  rows = [k for c in todo for k in range(c * chunk_size, min((c + 1) * chunk_size, len(images)))]
  done_before = len(images) - len(rows)
  bar = tqdm(total=len(images), initial=done_before, desc="images", unit="img", disable=not progress)
  with cf.ThreadPoolExecutor(max_workers=workers) as pool:
    stream = _prefetch(work, rows, pool, depth=max(2 * batch_size, 4 * workers))
    for c in todo:
      lo, hi = c * chunk_size, min((c + 1) * chunk_size, len(images))
      ok = np.zeros(hi - lo, dtype=bool)
      errors = [""] * (hi - lo)
      embs, batch = [], []

      def flush() -> None:
        x = np.stack(batch)
        n = x.shape[0]
        if n < batch_size:  # Pad to one static shape: one compilation, batch-independent rows.
          x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
        embs.append(np.asarray(encoder.apply(x), dtype=np.float32)[:n])
        batch.clear()

      for j in range(hi - lo):
        arr, err = next(stream)
        if arr is None:
          errors[j] = err
        else:
          ok[j] = True
          batch.append(arr)
          if len(batch) == batch_size:
            flush()
        bar.update(1)
      if batch:
        flush()
      emb = np.concatenate(embs) if embs else np.zeros((0, encoder.dim), np.float32)
      sio.save_npz(os.path.join(shard_dir, f"images-{c:05d}.npz"), emb=emb, ok=ok, errors=np.array(errors, dtype=str))
      killer.shard_written()
  bar.close()


def _embed_texts(texts: list[str], encoder: Any, *, shard_dir: str, chunk_size: int, batch_size: int,
                 progress: bool, killer: _Killer) -> None:
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  n_chunks = -(-len(texts) // chunk_size)
  todo = [c for c in range(n_chunks) if not os.path.exists(os.path.join(shard_dir, f"texts-{c:05d}.npy"))]
  if not todo:
    return
  done_before = len(texts) - sum(min((c + 1) * chunk_size, len(texts)) - c * chunk_size for c in todo)
  bar = tqdm(total=len(texts), initial=done_before, desc="texts", unit="txt", disable=not progress)
  for c in todo:
    chunk = texts[c * chunk_size:(c + 1) * chunk_size]
    out = []
    for b in range(0, len(chunk), batch_size):
      batch = chunk[b:b + batch_size]
      n = len(batch)
      padded = batch + [batch[-1]] * (batch_size - n)
      out.append(np.asarray(encoder.encode(padded), dtype=np.float32)[:n])
      bar.update(n)
    sio.save_npy(os.path.join(shard_dir, f"texts-{c:05d}.npy"), np.concatenate(out))
    killer.shard_written()
  bar.close()


def finished_manifest(out_dir: str, job_id: str, *, overwrite: bool) -> dict | None:
  """The manifest of a finished cache at ``out_dir`` made by the same job (then there is nothing to do), else
  ``None``; a finished cache of *another* job is an error unless ``overwrite``, which removes its manifest.

  Raises:
    FileExistsError: ``out_dir`` holds a finished cache made with other arguments and ``overwrite`` is false.
  """
  manifest_path = os.path.join(out_dir, "manifest.json")
  if not os.path.exists(manifest_path):
    return None
  with open(manifest_path, encoding="utf-8") as f:
    old = json.load(f)
  if old.get("job_id") == job_id:
    print(f"{out_dir}: already complete (nothing to do)", file=sys.stderr)
    return old
  if not overwrite:
    raise FileExistsError(f"{out_dir} holds a cache made with other arguments: choose another --out "
                          "or pass --overwrite")
  os.remove(manifest_path)
  return None


def embed_dataset(dataset: core.Dataset, *, out_dir: str | os.PathLike, text_encoder: Any, image_encoder: Any = None,
                  limit: int | None = None, batch_size: int = 64, chunk_size: int | None = None, workers: int = 4,
                  split_fractions: dict[str, float] | None = None, split_sizes: dict[str, int] | None = None,
                  split_seed: str = "", max_side: int | None = -1, max_pixels: int = core.DEFAULT_MAX_PIXELS,
                  overwrite: bool = False, progress: bool = True) -> dict:
  """Embeds a dataset into ``out_dir`` (resumable, atomic); returns the manifest.

  Args:
    dataset: from :mod:`sotalign_jax.data`.
    out_dir: output directory (see module docstring for its files).
    text_encoder: a :class:`sotalign_jax.encoders.TextEncoder`.
    image_encoder: a :class:`sotalign_jax.encoders.ImageEncoder`; ``None`` only for text-only data.
    limit: keep only this many images (texts for text-only data), chosen by a stable hash of the id.
    batch_size: forward-pass batch size (the last batch is padded to it).
    chunk_size: images / texts per shard file; default ``16 * batch_size``.
    workers: decoding threads.
    split_fractions: see :func:`sotalign_jax.data.splits.assign_splits`; splits fixed by the dataset
      (``Record.split``) are kept and the others renormalised over the remaining ids.
    split_sizes: counts instead of fractions.
    split_seed: seed of the split hash.
    max_side: images are shrunk to this longest side before ``preprocess``; ``-1``: twice the encoder
      resolution; ``None``: no shrinking.
    max_pixels: larger images are skipped (PNG cannot be decoded at reduced size).
    overwrite: replace a complete cache made with other arguments instead of raising.
    progress: show tqdm bars.
  """
  out_dir = os.fspath(out_dir)
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  chunk_size = 16 * batch_size if chunk_size is None else int(chunk_size)
  if chunk_size <= 0:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  if workers <= 0:
    raise ValueError(f"workers must be positive, got {workers}")
  records = _select(dataset.records, limit)
  if not records:
    raise ValueError(f"dataset {dataset.name!r} has no records")
  text_only = not any(r.has_image for r in records)
  if not text_only and image_encoder is None:
    raise ValueError(f"dataset {dataset.name!r} has images: pass an image encoder (--image-encoder)")
  if text_only:
    image_encoder = None
  if max_side == -1:
    max_side = None if image_encoder is None else 2 * int(image_encoder.resolution)

  split_of = _split_of_ids(records, fractions=split_fractions, sizes=split_sizes, seed=split_seed)
  first: dict[str, core.Record] = {}
  for r in records:
    first.setdefault(r.image_id, r)
  images = [] if text_only else list(first.values())
  texts = list(dict.fromkeys(r.caption for r in records))
  job = {
      "format": _FORMAT, "dataset": dataset.name,
      "ids": _fingerprint([[r.image_id, r.caption, r.image_path] for r in records]),
      "image_encoder": _encoder_desc(image_encoder), "text_encoder": _encoder_desc(text_encoder),
      "batch_size": batch_size, "chunk_size": chunk_size, "max_side": max_side, "max_pixels": max_pixels,
      "splits": {"fractions": split_fractions, "sizes": split_sizes, "seed": split_seed}, "limit": limit,
  }
  job_id = _fingerprint(job)
  done = finished_manifest(out_dir, job_id, overwrite=overwrite)
  if done is not None:
    return done
  shard_dir = os.path.join(out_dir, "shards")
  job_path = os.path.join(shard_dir, "job.json")
  if os.path.exists(job_path):
    with open(job_path, encoding="utf-8") as f:
      if json.load(f).get("job_id") != job_id:
        print(f"{shard_dir}: shards of another job, starting over", file=sys.stderr)
        shutil.rmtree(shard_dir)
  os.makedirs(shard_dir, exist_ok=True)
  if not os.path.exists(job_path):
    sio.write_json(job_path, {"job_id": job_id, **job})

  killer = _Killer()
  t0 = time.perf_counter()
  if images:
    _embed_images(images, image_encoder, shard_dir=shard_dir, chunk_size=chunk_size, batch_size=batch_size,
                  workers=workers, max_side=max_side, max_pixels=max_pixels, progress=progress, killer=killer)
  t_img = time.perf_counter() - t0
  _embed_texts(texts, text_encoder, shard_dir=shard_dir, chunk_size=chunk_size, batch_size=batch_size,
               progress=progress, killer=killer)
  t_txt = time.perf_counter() - t0 - t_img

  # Assemble.
  image_row: dict[str, int] = {}
  skipped = []
  if images:
    embs, n_chunks = [], -(-len(images) // chunk_size)
    for c in range(n_chunks):
      with np.load(os.path.join(shard_dir, f"images-{c:05d}.npz"), allow_pickle=False) as z:
        embs.append(z["emb"])
        for j, (ok, err) in enumerate(zip(z["ok"], z["errors"])):
          rec = images[c * chunk_size + j]
          if ok:
            image_row[rec.image_id] = len(image_row)
          else:
            skipped.append({"image_id": rec.image_id, "path": rec.image_path, "error": str(err)})
    image_emb = np.concatenate(embs).astype(np.float32)
    assert image_emb.shape[0] == len(image_row)
  n_text_chunks = -(-len(texts) // chunk_size)
  unique_text_emb = np.concatenate([np.load(os.path.join(shard_dir, f"texts-{c:05d}.npy"))
                                    for c in range(n_text_chunks)]).astype(np.float32)
  text_pos = {t: k for k, t in enumerate(texts)}
  index, rows = [], []
  for r in records:
    if images and r.image_id not in image_row:
      continue
    index.append({"caption": r.caption, "image": image_row[r.image_id] if images else None,
                  "image_id": r.image_id, "label": r.label, "split": split_of[r.image_id]})
    rows.append(text_pos[r.caption])
  text_emb = unique_text_emb[np.array(rows, dtype=np.int64)] if rows else unique_text_emb[:0]
  if images:
    sio.save_npy(os.path.join(out_dir, "image_embeddings.npy"), image_emb)
  elif os.path.exists(os.path.join(out_dir, "image_embeddings.npy")):
    os.remove(os.path.join(out_dir, "image_embeddings.npy"))
  sio.save_npy(os.path.join(out_dir, "text_embeddings.npy"), text_emb)
  sio.write_jsonl(os.path.join(out_dir, "index.jsonl"), index)

  split_counts = collections.Counter(x["split"] for x in index)
  image_split_counts = collections.Counter(split_of[i] for i in image_row)
  n_ok = len(image_row)
  manifest = {
      "format": _FORMAT, "job_id": job_id, "dataset": {"name": dataset.name, "info": dataset.info},
      "image_encoder": job["image_encoder"], "text_encoder": job["text_encoder"], "versions": _versions(),
      "preprocessing": {
          "decode": "PIL; RGBA/LA/P transparency composited on white; JPEG decoded at reduced scale (draft)",
          "max_side": max_side, "max_pixels": max_pixels, "resize": "box reduce then Lanczos thumbnail to max_side",
          "encoder_preprocess": None if image_encoder is None else image_encoder.info.get("preprocessing"),
          "batch_size": batch_size, "last_batch": "zero-padded to batch_size",
      },
      "splits": {"fractions": split_fractions or (None if split_sizes else splits_lib.DEFAULT_FRACTIONS),
                 "sizes": split_sizes, "seed": split_seed, "hash": "sha256(seed:image_id)",
                 "fixed_by_dataset": sorted({r.split for r in records if r.split is not None}),
                 "captions": dict(split_counts), "images": dict(image_split_counts)},
      "counts": {"records": len(records), "images": len(images), "images_embedded": n_ok,
                 "images_skipped": len(skipped), "captions": len(index), "unique_captions": len(texts),
                 "captions_dropped_with_their_image": len(records) - len(index), "limit": limit},
      "skipped": skipped,
      "timing": {"images_s": round(t_img, 3), "texts_s": round(t_txt, 3),
                 "images_per_s": round(len(images) / t_img, 2) if images and t_img > 0 else None,
                 "note": "this run only (0 if resumed after its chunks were done)"},
      "files": {"image_embeddings": "image_embeddings.npy" if images else None,
                "text_embeddings": "text_embeddings.npy", "index": "index.jsonl"},
      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  sio.write_json(os.path.join(out_dir, "manifest.json"), manifest)
  shutil.rmtree(shard_dir, ignore_errors=True)
  return manifest


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m sotalign_jax.cli.embed", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  from sotalign_jax.data import DATASETS, load_dataset  # pylint: disable=g-import-not-at-top
  src.add_argument("--dataset", choices=sorted(DATASETS), help="a built-in dataset")
  src.add_argument("--folder", help="a directory with captions.jsonl")
  p.add_argument("--image-encoder", help="image encoder name or module:factory (not needed for text-only data)")
  p.add_argument("--text-encoder", required=True, help="text encoder name or module:factory")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--limit", type=int, help="embed only N images (N texts for text-only data)")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--chunk-size", type=int, help="images/texts per resumable shard (default 16 x batch size)")
  p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding threads")
  p.add_argument("--splits", help="fractions or counts, e.g. 'paired=0.1,unpaired=0.7,val=0.1,test=0.1' or "
                 "'paired=500,val=500,test=1000' (counts: remainder goes to unpaired)")
  p.add_argument("--split-seed", default="")
  p.add_argument("--max-side", type=int, default=-1, help="shrink images to this side before preprocessing "
                 "(-1: twice the encoder resolution, 0: never)")
  p.add_argument("--no-install", action="store_true", help="never apt-get install missing Debian data")
  p.add_argument("--overwrite", action="store_true", help="replace a finished cache made with other arguments")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  a = p.parse_args(argv)
  fractions = sizes = None
  if a.splits:
    spec = splits_lib.parse_split_spec(a.splits)
    if all(v >= 1 and float(v).is_integer() for v in spec.values()):
      sizes = {k: int(v) for k, v in spec.items()}
    else:
      fractions = spec
  if a.folder:
    dataset = load_dataset(f"folder:{a.folder}")
  else:
    dataset = load_dataset(a.dataset, **({} if a.dataset == "coco_captions" else {"install": not a.no_install}))
  text_encoder = load_encoder(a.text_encoder, "text")
  image_encoder = None if dataset.text_only or not a.image_encoder else load_encoder(a.image_encoder, "image")
  manifest = embed_dataset(dataset, out_dir=a.out, text_encoder=text_encoder, image_encoder=image_encoder,
                           limit=a.limit, batch_size=a.batch_size, chunk_size=a.chunk_size, workers=a.workers,
                           split_fractions=fractions, split_sizes=sizes, split_seed=a.split_seed,
                           max_side=None if a.max_side == 0 else a.max_side, overwrite=a.overwrite,
                           progress=not a.quiet)
  c = manifest["counts"]
  print(json.dumps({"out": a.out, "images_embedded": c["images_embedded"], "images_skipped": c["images_skipped"],
                    "captions": c["captions"], "splits": manifest["splits"]["captions"]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
