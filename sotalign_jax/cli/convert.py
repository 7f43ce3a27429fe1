r"""Convert between an embedding cache and embedding files (:mod:`sotalign_jax.data.files`), both ways.

Command line::

  # a cache → the eight .npy files, split by the benchmark's protocol (the example set of the README)
  python -m sotalign_jax.cli.convert to-files \
      --cache data_cache/openclipart__efficientnet-lite0__all-MiniLM-L6-v2 --out data_cache/openclipart_files \
      [--n-pairs 1000] [--test-size 1000] [--val-size 500] [--split hash|cache] [--split-seed benchmark] \
      [--max-unpaired -1] [--min-unpaired 100] [--seed 0]

  # your own files → a cache that every cache reader takes
  python -m sotalign_jax.cli.convert to-cache --pairs-x px.npy --pairs-y py.npy [--unpaired-x ux.npy] \
      [--unpaired-y uy.npy] [--val-x vx.npy --val-y vy.npy] --test-x tx.npy --test-y ty.npy --out DIR

(``make example-files`` runs the first command on the openclipart cache.)

**to-files** takes the sets of :class:`sotalign_jax.data.protocol.Protocol` (the benchmark's defaults:
``split="hash"``, disjoint unpaired halves) for seed ``--seed`` at ``--n-pairs`` (``-1``, or more than the protocol
allows: its largest p): ``pairs_*`` are the pairs (each image with its first caption), ``unpaired_x`` the unpaired
images, ``unpaired_y`` every caption of the unpaired-text images, and ``val_*`` / ``test_*`` the held-out images,
each with its *first* caption only, so that the files are row-aligned (the benchmark itself scores every caption of
a test image; the files keep one). A set with no rows (``--n-pairs 0``, ``--val-size 0``) has no files. It writes
``OUT/<key>.npy`` (float32, atomically, a block of rows at a time so a large cache is never read whole), checks
them with :func:`~sotalign_jax.data.files.open_embedding_files` and then writes ``OUT/manifest.json`` (the source
cache and its ``job_id``, the protocol's arguments, the sizes, the command); a rerun replaces the set.

**to-cache** writes an ordinary cache (:mod:`sotalign_jax.data.cache`): image ``i`` ↔ caption ``i`` for the pairs
(split ``paired``), the validation pairs (``val``) and the test pairs (``test``), ``image_id``
``<couple>:<row>`` and the caption ``<couple>_y[<row>]`` (there is no text, only embeddings). **Unpaired files are
not written**: a cache row is a caption *with* its image, so it has no place for a text without an image or an
image without a caption (pairing them up would invent pairs). They are still checked, and the manifest and a note
say they were left out; pass them to ``experiments/sotalign.py`` as ``data.unpaired_x`` / ``data.unpaired_y``
instead. ``to-files --split cache`` on such a cache gives back its test and validation files row for row, and
its pairs as a permutation.

Bad input exits with status 2 and ``error: ...`` naming the flag and the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from typing import Mapping, Sequence

import numpy as np

from sotalign_jax.data.cache import embed_command, load_cache
from sotalign_jax.data.files import COUPLES, FILE_KEYS, open_embedding_files
from sotalign_jax.data.protocol import SPLIT_MODES, Protocol
from sotalign_jax.runtime import io as sio

__all__ = ["to_files", "to_cache", "write_rows", "flag_names", "main"]

_FORMAT = 1
BLOCK_ROWS = 65536
CACHE_SPLIT = {"pairs": "paired", "val": "val", "test": "test"}  # couple → split of the cache rows


def flag_names() -> dict[str, str]:
  """key → its command-line flag (``pairs_x`` → ``--pairs-x``), for error messages."""
  return {k: "--" + k.replace("_", "-") for k in FILE_KEYS}


def write_rows(path: str, parts: Sequence[tuple[np.ndarray, np.ndarray | None]], *,
               block_rows: int = BLOCK_ROWS) -> tuple[int, int]:
  """Writes the concatenation of ``array[rows]`` (all rows if ``rows`` is None) for each part as one float32
  ``.npy`` at ``path``, atomically and ``block_rows`` rows at a time (memory-mapped inputs are never read whole).

  Returns:
    The ``(rows, dim)`` written.
  """
  dims = {int(a.shape[1]) for a, _ in parts}
  if len(dims) != 1:
    raise ValueError(f"{path}: the parts have different dimensions {sorted(dims)}")
  n = sum(len(a) if r is None else len(r) for a, r in parts)
  shape = (n, dims.pop())
  with sio.atomic_open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                             "fortran_order": False, "shape": shape})
    for array, rows in parts:
      m = len(array) if rows is None else len(rows)
      for a in range(0, m, block_rows):
        block = array[a:a + block_rows] if rows is None else array[np.asarray(rows[a:a + block_rows])]
        f.write(np.ascontiguousarray(block, dtype=np.float32).tobytes())
  return shape


def _remove(path: str):
  if os.path.exists(path):
    os.remove(path)


def _claim(out_dir: str, kind: str, inputs: Sequence[str], outputs: Sequence[str]):
  """Refuses an ``--out`` that is an input or whose ``outputs`` (file names) would overwrite one, or that holds
  something this command did not write (its manifest would be replaced); then removes the old manifest, so the
  directory reads as incomplete until it is rewritten."""
  out_dir = os.path.abspath(out_dir)
  written = {out_dir} | {os.path.join(out_dir, name) for name in (*outputs, "manifest.json")}
  for path in inputs:
    if os.path.abspath(path) in written:
      raise ValueError(f"--out {out_dir} would overwrite the input {path}: write to another directory")
  manifest = os.path.join(out_dir, "manifest.json")
  if os.path.exists(manifest):
    with open(manifest, encoding="utf-8") as f:
      old = json.load(f).get("kind")
    if old != kind:
      raise ValueError(f"--out {out_dir} already holds something else (manifest.json of kind {old!r}, not "
                       f"{kind!r}); choose an empty or new directory")
  os.makedirs(out_dir, exist_ok=True)
  _remove(manifest)


# ------------------------------------------------------------------------------------------------------------
# cache → files
# ------------------------------------------------------------------------------------------------------------
def to_files(cache_dir: str, out_dir: str, *, n_pairs: int = 1000, test_size: int = 1000, val_size: int = 500,
             split: str = "hash", split_seed: str = "benchmark", max_unpaired: int = -1, min_unpaired: int = 100,
             seed: int = 0, command: str | None = None, progress: bool = True) -> dict:
  """The protocol's sets of ``cache_dir`` as embedding files in ``out_dir`` (module docstring); returns the
  manifest.

  Raises:
    FileNotFoundError: ``cache_dir`` is not a complete cache.
    ValueError: the protocol cannot be drawn (too few images for the sizes, a text-only cache, bad values).
  """
  if n_pairs < -1:
    raise ValueError(f"--n-pairs must be >= 0 or -1 (the largest the protocol allows), got {n_pairs}")
  if test_size < 1 or val_size < 0:
    raise ValueError(f"--test-size must be >= 1 and --val-size >= 0, got {test_size} and {val_size}")
  try:
    cache = load_cache(cache_dir, mmap=True)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"--cache: {e}\nBuild it with `{embed_command(cache_dir)}`, or point --cache "
                            "elsewhere.") from None
  if cache.image_emb is None:
    raise ValueError(f"--cache: {cache_dir} is text-only (no image_embeddings.npy); to-files needs both sides")
  try:
    proto = Protocol.from_cache(cache, split=split, test_size=test_size, val_size=val_size, split_seed=split_seed,
                                unpaired_mode="disjoint", max_unpaired=max_unpaired, min_unpaired=min_unpaired)
  except ValueError as e:
    raise ValueError(f"--cache {cache_dir}: {e} (lower --test-size / --val-size)") from None
  p = proto.p_max if n_pairs == -1 or n_pairs > proto.p_max else n_pairs
  if p != n_pairs and progress:
    print(f"note: --n-pairs {n_pairs} → {p}, the largest p that leaves --min-unpaired {min_unpaired} images in each "
          "unpaired half", file=sys.stderr)
  d = proto.draw(seed, p)
  x, y = cache.image_emb, cache.text_emb
  sources = {"pairs_x": (x, d["pair_x"]), "pairs_y": (y, d["pair_y"]),
             "unpaired_x": (x, d["unp_x"]), "unpaired_y": (y, d["unp_y"])}
  for role in ("val", "test"):
    held = proto.held_out(role)
    sources[f"{role}_x"] = (x, held["image_rows"])
    sources[f"{role}_y"] = (y, held["caption_rows"][held["first"]])  # the first caption of each image: row-aligned
  _claim(out_dir, "embedding_files", [cache_dir], [f"{k}.npy" for k in FILE_KEYS])
  paths = {}
  for key in FILE_KEYS:
    path = os.path.join(out_dir, f"{key}.npy")
    array, rows = sources[key]
    if len(rows):
      write_rows(path, [(array, rows)])
      paths[key] = path
    else:
      _remove(path)  # a stale file of an earlier run would not match this set
  files = open_embedding_files(paths, names={k: f"{k} (rows of --cache {cache_dir})" for k in FILE_KEYS})
  manifest = {
      "format": _FORMAT, "kind": "embedding_files",
      "source": {"cache": os.path.abspath(cache_dir), "job_id": cache.manifest.get("job_id"),
                 "dataset": cache.manifest.get("dataset", {}).get("name")},
      "protocol": {"split": split, "test_size": test_size, "val_size": val_size, "split_seed": split_seed,
                   "unpaired_mode": "disjoint", "max_unpaired": max_unpaired, "min_unpaired": min_unpaired,
                   "seed": seed, "n_pairs": p, "n_pairs_asked": n_pairs},
      "held_out_captions": "first caption of each val/test image only (the files are row-aligned)",
      "sizes": files.sizes, "files": {k: os.path.basename(v) for k, v in paths.items()},
      "command": command,
  }
  sio.write_json(os.path.join(out_dir, "manifest.json"), manifest)  # last: its presence means complete
  return manifest


# ------------------------------------------------------------------------------------------------------------
# files → cache
# ------------------------------------------------------------------------------------------------------------
def _job_id(files) -> str:
  stats = {k: [p, os.path.getsize(p), os.path.getmtime(p)] for k, p in sorted(files.paths.items())}
  return hashlib.sha256(json.dumps(stats, sort_keys=True).encode("utf-8")).hexdigest()


def to_cache(paths: Mapping[str, str], out_dir: str, *, command: str | None = None, progress: bool = True) -> dict:
  """An embedding cache in ``out_dir`` from the files of ``paths`` (key → path; module docstring); returns its
  manifest. Unpaired files are checked but not written (the cache format cannot hold them)."""
  files = open_embedding_files(paths, names=flag_names())
  couples = [c for c in COUPLES if getattr(files, f"{c}_x") is not None]
  left_out = {k: files.paths[k] for k in ("unpaired_x", "unpaired_y") if k in files.paths}
  _claim(out_dir, "converted_files", list(files.paths.values()),
         ["image_embeddings.npy", "text_embeddings.npy", "index.jsonl"])
  index, offset = [], 0
  for c in couples:
    n = len(getattr(files, f"{c}_x"))
    index += [{"caption": f"{c}_y[{i}]", "image": offset + i, "image_id": f"{c}:{i}", "label": None,
               "split": CACHE_SPLIT[c]} for i in range(n)]
    offset += n
  write_rows(os.path.join(out_dir, "image_embeddings.npy"), [(getattr(files, f"{c}_x"), None) for c in couples])
  write_rows(os.path.join(out_dir, "text_embeddings.npy"), [(getattr(files, f"{c}_y"), None) for c in couples])
  sio.write_jsonl(os.path.join(out_dir, "index.jsonl"), index)
  counts = {CACHE_SPLIT[c]: len(getattr(files, f"{c}_x")) for c in couples}
  manifest = {
      "format": _FORMAT, "kind": "converted_files", "job_id": _job_id(files),
      "dataset": {"name": "embedding_files", "info": {"files": files.paths}},
      "counts": {"images": offset, "captions": offset},
      "splits": {"images": counts, "captions": counts},
      "dims": {"image": int(files.test_x.shape[1]), "text": int(files.test_y.shape[1])},
      "unpaired_not_written": left_out,
      "command": command,
  }
  sio.write_json(os.path.join(out_dir, "manifest.json"), manifest)  # last: its presence means complete
  if left_out and progress:
    print(f"note: {', '.join(flag_names()[k] for k in left_out)} checked but not written: a cache row is a caption "
          "with its image, so the cache format has no place for unpaired rows. Pass them to experiments/sotalign.py "
          "as --config.data.unpaired_x / --config.data.unpaired_y instead.", file=sys.stderr)
  return manifest


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(prog="python -m sotalign_jax.cli.convert", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
  sub = p.add_subparsers(dest="command", required=True)
  f = sub.add_parser("to-files", help="a cache → the eight .npy files, split by the benchmark's protocol")
  f.add_argument("--cache", required=True, help="a complete embedding cache with both sides")
  f.add_argument("--out", required=True, help="directory of the .npy files and manifest.json")
  f.add_argument("--n-pairs", type=int, default=1000, help="pairs (-1: the largest the protocol allows)")
  f.add_argument("--test-size", type=int, default=1000, help="held-out test images (hash split)")
  f.add_argument("--val-size", type=int, default=500, help="held-out validation images (hash split; 0: none)")
  f.add_argument("--split", choices=SPLIT_MODES, default="hash", help="hash: by image id; cache: the cache's splits")
  f.add_argument("--split-seed", default="benchmark", help="salt of the hash split")
  f.add_argument("--max-unpaired", type=int, default=-1, help="cap on each unpaired pool's images (-1: none)")
  f.add_argument("--min-unpaired", type=int, default=100, help="images left in each unpaired half at p = max")
  f.add_argument("--seed", type=int, default=0, help="the protocol's seed (which images are the pairs)")
  c = sub.add_parser("to-cache", help="the .npy files → an embedding cache (pairs, val and test; no unpaired rows)")
  for key in FILE_KEYS:
    c.add_argument(flag_names()[key], dest=key, default="", required=key.startswith("test_"),
                   help=f"float32 .npy [rows, dim] ({key})")
  c.add_argument("--out", required=True, help="output cache directory")
  for q in (f, c):
    q.add_argument("--quiet", action="store_true", help="no notes on stderr")
  a = p.parse_args(argv)
  command = shlex.join(["python", "-m", "sotalign_jax.cli.convert", *argv])
  try:
    if a.command == "to-files":
      m = to_files(a.cache, a.out, n_pairs=a.n_pairs, test_size=a.test_size, val_size=a.val_size, split=a.split,
                   split_seed=a.split_seed, max_unpaired=a.max_unpaired, min_unpaired=a.min_unpaired, seed=a.seed,
                   command=command, progress=not a.quiet)
      print(json.dumps({"out": a.out, "sizes": m["sizes"]}))
    else:
      m = to_cache({k: getattr(a, k) for k in FILE_KEYS}, a.out, command=command, progress=not a.quiet)
      print(json.dumps({"out": a.out, "counts": m["counts"], "splits": m["splits"]["images"]}))
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
