r"""Evaluate a trained alignment run on any image–caption folder, or on your own evaluation embedding files.

  python -m sotalign_jax.cli.evaluate --workdir WORKDIR --folder DIR [--method sotalign]
  python -m sotalign_jax.cli.evaluate --workdir WORKDIR --x test_x.npy --y test_y.npy [--method sotalign]

``DIR`` is in the generic format (``DIR/captions.jsonl``: ``{"image": ..., "caption": ...}`` per line). The folder is
embedded once with the run's own frozen encoders (read from the run's embedding-cache manifest) into
``WORKDIR/eval_cache/<folder name>-<hash>`` (resumable, reused by later calls), the run's heads for ``--method``
map both sides into the shared space, and a JSON object with ``i2t_r1``, ``i2t_r5``, ``i2t_r10``, ``t2i_r1``,
``t2i_r5``, ``t2i_r10`` is printed (every caption of an image counts as a positive for it).

``--x``/``--y`` are row-aligned float32 ``.npy`` embeddings computed with the run's encoders (row i of x goes with
row i of y; one positive each), checked as the experiment checks its ``test_x``/``test_y`` files: the way to
evaluate a run trained from embedding files (``--config.data.pairs_x=...``), whose encoders the project never saw.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys

import numpy as np

from sotalign_jax import metrics
from sotalign_jax.nn.heads import load_heads

__all__ = ["evaluate_folder", "evaluate_files", "main"]


def _run_dir(workdir: str, method: str) -> str:
  with open(os.path.join(workdir, "config.json")) as f:
    cfg = json.load(f)
  candidates = [os.path.join(workdir, "runs", f"{method}_n{cfg['data']['n_pairs']}")]
  candidates += sorted(glob.glob(os.path.join(workdir, "runs", f"{method}_n*")))
  for c in candidates:
    if os.path.exists(os.path.join(c, "heads.json")):
      return c
  raise FileNotFoundError(f"no finished '{method}' heads under {workdir}/runs (finished methods write heads.json); "
                          "check --method and --workdir")


def evaluate_folder(workdir: str, folder: str, *, method: str = "sotalign", progress: bool = True) -> dict:
  """Embeds ``folder`` with the run's encoders (cached) and returns its retrieval metrics under ``method``'s heads."""
  from sotalign_jax.data import load_dataset
  from sotalign_jax.cli.embed import embed_dataset, load_encoder
  from sotalign_jax.data.cache import load_cache
  with open(os.path.join(workdir, "config.json")) as f:
    cfg = json.load(f)
  if cfg["data"].get("test_x"):
    raise ValueError(f"{workdir} was trained from embedding files, so its encoders are unknown here: embed the "
                     "folder with the encoders that made those files and pass --x test_x.npy --y test_y.npy")
  with open(os.path.join(cfg["data"]["cache"], "manifest.json")) as f:
    manifest = json.load(f)
  embed_x, embed_y = load_heads(_run_dir(workdir, method))
  folder = os.path.abspath(folder)
  tag = hashlib.sha256(folder.encode()).hexdigest()[:10]
  out = os.path.join(workdir, "eval_cache", f"{os.path.basename(folder.rstrip('/'))}-{tag}")
  if not os.path.exists(os.path.join(out, "manifest.json")):
    embed_dataset(load_dataset(f"folder:{folder}"), out_dir=out,
                  image_encoder=load_encoder(manifest["image_encoder"]["name"], "image"),
                  text_encoder=load_encoder(manifest["text_encoder"]["name"], "text"),
                  split_fractions={"test": 1.0}, progress=progress)
  cache = load_cache(out)
  img_rows = cache.caption_image_rows()
  images, owner = np.unique(img_rows, return_inverse=True)
  zx = np.asarray(embed_x(cache.image_emb[images]))
  zy = np.asarray(embed_y(cache.text_emb))
  return _recalls(zx, zy, [np.where(owner == i)[0].tolist() for i in range(len(images))], owner)


def _recalls(zx, zy, positives_x, positives_y) -> dict:
  i2t = metrics.retrieval_recall(zx, zy, positives=positives_x)
  t2i = metrics.retrieval_recall(zy, zx, positives=positives_y)
  return {**{f"i2t_{k}": v for k, v in i2t.items()}, **{f"t2i_{k}": v for k, v in t2i.items()}}


def evaluate_files(workdir: str, x: str, y: str, *, method: str = "sotalign") -> dict:
  """Retrieval metrics of ``method``'s heads on row-aligned evaluation files ``x``, ``y`` (one positive each)."""
  from sotalign_jax.data.files import open_embedding_files
  files = open_embedding_files({"test_x": x, "test_y": y}, names={"test_x": "--x", "test_y": "--y"})
  run_dir = _run_dir(workdir, method)
  with open(os.path.join(run_dir, "heads.json")) as f:
    meta = json.load(f)
  for flag, a, d in (("--x", files.test_x, meta["d_x"]), ("--y", files.test_y, meta["d_y"])):
    if a.shape[1] != d:
      raise ValueError(f"{flag} has {a.shape[1]} features but the run's '{method}' head takes {d}: embed it with the "
                       "encoder the run was trained on")
  embed_x, embed_y = load_heads(run_dir)
  zx, zy = np.asarray(embed_x(np.asarray(files.test_x))), np.asarray(embed_y(np.asarray(files.test_y)))
  rows = np.arange(len(zx))
  return _recalls(zx, zy, rows, rows)


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m sotalign_jax.cli.evaluate", description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="the --workdir of a finished experiments/sotalign.py run")
  p.add_argument("--folder", help="directory with captions.jsonl (generic image-caption format)")
  p.add_argument("--x", help="row-aligned evaluation image embeddings (.npy float32), with --y")
  p.add_argument("--y", help="row-aligned evaluation text embeddings (.npy float32), with --x")
  p.add_argument("--method", default="sotalign", help="whose heads to use (default: sotalign)")
  a = p.parse_args(argv)
  if (a.folder is None) == (a.x is None and a.y is None) or (a.x is None) != (a.y is None):
    p.error("give either --folder DIR or both --x FILE and --y FILE")
  try:
    if a.folder is not None:
      result = evaluate_folder(a.workdir, a.folder, method=a.method, progress=sys.stderr.isatty())
    else:
      result = evaluate_files(a.workdir, a.x, a.y, method=a.method)
  except (FileNotFoundError, ValueError) as e:
    p.exit(2, f"error: {e}\n")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
