r"""Evaluate a trained alignment run on any image–caption folder.

  python -m sotalign_jax.cli.evaluate --workdir WORKDIR --folder DIR [--method sotalign]

``DIR`` is in the generic format (``DIR/captions.jsonl``: ``{"image": ..., "caption": ...}`` per line). The folder is
embedded once with the run's own frozen encoders (read from the run's embedding-cache manifest) into
``WORKDIR/eval_cache/<folder name>-<hash>`` (resumable, reused by later calls), the run's heads for ``--method``
map both sides into the shared space, and a JSON object with ``i2t_r1``, ``i2t_r5``, ``i2t_r10``, ``t2i_r1``,
``t2i_r5``, ``t2i_r10`` is printed (every caption of an image counts as a positive for it).
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

__all__ = ["evaluate_folder", "main"]


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
  result = {}
  i2t = metrics.retrieval_recall(zx, zy, positives=[np.where(owner == i)[0].tolist() for i in range(len(images))])
  t2i = metrics.retrieval_recall(zy, zx, positives=owner)
  result.update({f"i2t_{k}": v for k, v in i2t.items()})
  result.update({f"t2i_{k}": v for k, v in t2i.items()})
  return result


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m sotalign_jax.cli.evaluate", description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="the --workdir of a finished experiments/sotalign.py run")
  p.add_argument("--folder", required=True, help="directory with captions.jsonl (generic image-caption format)")
  p.add_argument("--method", default="sotalign", help="whose heads to use (default: sotalign)")
  a = p.parse_args(argv)
  try:
    result = evaluate_folder(a.workdir, a.folder, method=a.method, progress=sys.stderr.isatty())
  except (FileNotFoundError, ValueError) as e:
    p.exit(2, f"error: {e}\n")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
