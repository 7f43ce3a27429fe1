r"""Evaluate any saved alignment (any method, any cell of an experiment) with the experiments' own evaluators.

  python -m sotalign_jax.cli.evaluate --alignment RUN_DIR/alignment [--x test_x.npy --y test_y.npy | --cache DIR]
  python -m sotalign_jax.cli.evaluate --workdir WORKDIR [--method sotalign --p P --seed S] [--x X --y Y | --cache DIR]
  python -m sotalign_jax.cli.evaluate --workdir WORKDIR --folder DIR [--method sotalign --p P --seed S]

**Which alignment.** Every experiment saves each cell's fitted alignment in ``<workdir>/runs/<method>/<cell>__<key>/
alignment`` (:func:`sotalign_jax.aligners.io.save`). Give that directory (``--alignment``), or the workdir and the
cell: ``--method`` (default ``sotalign``), ``--p`` and ``--seed``, which may be left out when the workdir holds one
cell of that method for them; the cell is found through its record, ``done/<method>/p<p>_s<seed>__<key>.json``
(its ``run_dir``; when a method has records under several settings, the one of the workdir's ``results.json``).

**On what.** ``--x`` / ``--y``: row-aligned float32 ``.npy`` embeddings (row i of x goes with row i of y, one
positive each), checked as the experiments check their test files. ``--cache DIR``: the items of an embedding
cache's ``--split`` (default ``test``; ``all``: every item), every caption of an image counting as a positive.
``--folder DIR``: an image–caption folder in the generic format (``DIR/captions.jsonl``), embedded once with the
run's own frozen encoders (named by its cache's manifest) into ``<workdir>/eval_cache/<folder>-<hash>``
(resumable, reused by later calls). Nothing given, with a workdir: the run's own test set (the numbers of its
record).

**Which evaluators.** Those of the run's ``config.evals`` (:mod:`sotalign_jax.evaluators`) that score the test set
(retrieval: R@1/5/10, mean and median rank, both directions; matching: FOSCTTM, assignment accuracy; …), and on the
run's own test set also those with their own caches (zero-shot, other datasets). Without a workdir (an alignment
directory outside one): retrieval and matching. ``--evals a,b`` keeps some of them. The metrics are printed as one
JSON object (NaN as ``null``); what was evaluated goes to stderr. User errors print one line ``error: …``, exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import math
import os
import sys
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from sotalign_jax import evaluators
from sotalign_jax.aligners import io as aligner_io
from sotalign_jax.aligners.base import Alignment
from sotalign_jax.data.files import FILE_KEYS, open_embedding_files

__all__ = ["Cell", "find_cell", "evaluate", "evaluate_alignment", "evaluate_folder", "evaluate_files", "main"]

DEFAULT_EVALS = {"retrieval": {"type": "retrieval"}, "matching": {"type": "matching"}}
"""The evaluators of an alignment saved outside a workdir (the engine's defaults that score the test set)."""


class Cell(NamedTuple):
  """A saved cell of an experiment.

  Attributes:
    alignment: its alignment directory.
    workdir: the experiment's workdir, or ``None`` (an alignment directory outside one).
    record: its record (``done/<method>/…json``: method, p, seed, metrics, …), or ``None``.
  """
  alignment: str
  workdir: str | None = None
  record: dict | None = None


# ----------------------------------------------------------------------------------------------------------------
# Which alignment.
# ----------------------------------------------------------------------------------------------------------------
def _records(workdir: str, method: str) -> list[tuple[str, dict]]:
  out = []
  for path in sorted(glob.glob(os.path.join(glob.escape(os.path.join(workdir, "done", method)), "p*_s*.json"))):
    with open(path, encoding="utf-8") as f:
      out.append((path, json.load(f)))
  return out


def _current_keys(workdir: str) -> set[str] | None:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return {c.get("key") for c in json.load(f).get("cells", [])}


def find_cell(workdir: str, method: str = "sotalign", *, p: int | None = None, seed: int | None = None) -> Cell:
  """The cell of ``method`` at ``p`` and ``seed`` in ``workdir`` (either may be ``None`` when only one is stored).

  Raises:
    FileNotFoundError: no workdir, or no finished cell of ``method`` there.
    ValueError: several cells match (name them with ``p`` and ``seed``), or the cell saved no alignment.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir} does not exist: give the --workdir of a finished experiment")
  records = _records(workdir, method)
  if not records:
    done = sorted(os.listdir(os.path.join(workdir, "done"))) if os.path.isdir(os.path.join(workdir, "done")) else []
    raise FileNotFoundError(f"no finished cell of '{method}' in {workdir} (methods with cells: "
                            f"{', '.join(done) or 'none'}); check --method and --workdir")
  ok = [(f, r) for f, r in records if r.get("status") == "ok"]
  match = [(f, r) for f, r in ok if (p is None or r.get("p") == p) and (seed is None or r.get("seed") == seed)]
  if not match:
    have = sorted({(r.get("p"), r.get("seed")) for _, r in ok})
    raise FileNotFoundError(f"no finished cell of '{method}' at p={p if p is not None else 'any'}, seed="
                            f"{seed if seed is not None else 'any'} in {workdir} (its cells: "
                            f"{', '.join(f'p={a} seed={b}' for a, b in have) or 'none finished'})")
  by_dir = {}
  for f, r in match:  # an all-pairs method stores one fit under every p: one run directory
    by_dir.setdefault(r.get("run_dir"), (f, r))
  if len(by_dir) > 1:
    current = _current_keys(workdir)
    if current is not None:
      by_dir = {d: fr for d, fr in by_dir.items() if fr[1].get("key") in current} or by_dir
  if len(by_dir) > 1:
    cells = sorted({(r.get("p"), r.get("seed")) for _, r in by_dir.values()})
    if len(cells) > 1:
      raise ValueError(f"{workdir} holds {len(cells)} cells of '{method}' ("
                       f"{', '.join(f'p={a} seed={b}' for a, b in cells)}): choose one with --p and --seed")
    raise ValueError(f"{workdir} holds '{method}' at p={cells[0][0]} seed={cells[0][1]} under {len(by_dir)} "
                     f"settings ({', '.join(os.path.basename(f) for f, _ in by_dir.values())}) and no results.json "
                     "names one: pass its directory with --alignment <run_dir>/alignment")
  ((run_dir, (path, record)),) = by_dir.items()
  if not run_dir:
    raise ValueError(f"{path} names no run directory (written before alignments were saved): rerun the experiment "
                     "in this workdir to save them, or pass --alignment")
  alignment = os.path.join(workdir, run_dir, "alignment")
  if not os.path.exists(alignment):
    raise FileNotFoundError(f"{alignment} not found: the cell of {path} saved no alignment (a run made before "
                            "alignments were saved); rerun the experiment in this workdir to save it")
  return Cell(alignment, workdir, record)


def _cell_of(alignment: str) -> Cell:
  """``alignment`` with its workdir and record when it lies in a workdir (``<wd>/runs/<method>/<cell>/alignment``)."""
  alignment = os.path.abspath(alignment)
  cell_dir = os.path.dirname(alignment)
  runs = os.path.dirname(os.path.dirname(cell_dir))
  workdir = os.path.dirname(runs)
  if os.path.basename(runs) != "runs" or not os.path.exists(os.path.join(workdir, "config.json")):
    return Cell(alignment)
  method = os.path.basename(os.path.dirname(cell_dir))
  rel = os.path.relpath(cell_dir, workdir)
  record = next((r for _, r in _records(workdir, method) if r.get("run_dir") == rel), None)
  return Cell(alignment, workdir, record)


# ----------------------------------------------------------------------------------------------------------------
# On what.
# ----------------------------------------------------------------------------------------------------------------
def _config(workdir: str):
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not the workdir of an experiment")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def files_set(x: str, y: str) -> evaluators.EvalSet:
  """Row-aligned ``.npy`` files as a set with one positive each (checked as the experiments' test files)."""
  f = open_embedding_files({"test_x": x, "test_y": y}, names={"test_x": "--x", "test_y": "--y"})
  rows = np.arange(len(f.test_x))
  return evaluators.EvalSet(np.asarray(f.test_x, np.float32), np.asarray(f.test_y, np.float32),
                            i2t=[[i] for i in rows], t2i=rows, first=rows)


def cache_split_set(path: str, split: str = "test") -> evaluators.EvalSet:
  """The images of an embedding cache's ``split`` (``"all"``: every item) with all their captions."""
  if split == "all":
    return evaluators.cache_set(path, "retrieval")
  from sotalign_jax.data.cache import open_cache  # pylint: disable=g-import-not-at-top
  cache = open_cache(path, key="evaluate --cache", check_values=True)
  if cache.image_emb is None:
    raise ValueError(f"--cache {path} is text-only: retrieval needs images and captions")
  rows = cache.caption_rows(split)
  if not len(rows):
    splits = sorted({str(r["split"]) for r in cache.index})
    raise ValueError(f"--cache {path} has no items in split {split!r} (its splits: {', '.join(splits)}); choose one "
                     "with --split, or --split all")
  images, owner = np.unique(cache.caption_image_rows(split), return_inverse=True)
  return evaluators.EvalSet(np.asarray(cache.image_emb[images], np.float32), np.asarray(cache.text_emb[rows],
                                                                                         np.float32),
                            i2t=[np.where(owner == i)[0].tolist() for i in range(len(images))], t2i=owner,
                            first=np.array([np.where(owner == i)[0][0] for i in range(len(images))], np.int64))


def folder_cache(workdir: str, folder: str, *, progress: bool = True) -> str:
  """Embeds ``folder`` (generic image–caption format) once with the run's encoders; returns the cache's path."""
  cfg = _config(workdir)
  if any(cfg.data.get(k) for k in FILE_KEYS):
    raise ValueError(f"{workdir} was trained from embedding files, so its encoders are unknown here: embed the "
                     "folder with the encoders that made those files and pass --x test_x.npy --y test_y.npy")
  with open(os.path.join(cfg.data.cache, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  folder = os.path.abspath(folder)
  if not os.path.exists(os.path.join(folder, "captions.jsonl")):
    raise FileNotFoundError(f"--folder {folder} has no captions.jsonl: give a folder in the generic format (one "
                            '{"image": ..., "caption": ...} per line)')
  tag = hashlib.sha256(folder.encode()).hexdigest()[:10]
  out = os.path.join(workdir, "eval_cache", f"{os.path.basename(folder.rstrip('/'))}-{tag}")
  if not os.path.exists(os.path.join(out, "manifest.json")):
    from sotalign_jax.cli.embed import embed_dataset, load_encoder  # pylint: disable=g-import-not-at-top
    from sotalign_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
    embed_dataset(load_dataset(f"folder:{folder}"), out_dir=out,
                  image_encoder=load_encoder(manifest["image_encoder"]["name"], "image"),
                  text_encoder=load_encoder(manifest["text_encoder"]["name"], "text"),
                  split_fractions={"test": 1.0}, progress=progress)
  return out


def run_test_set(workdir: str) -> evaluators.EvalSet:
  """The run's own held-out test set, rebuilt from its ``config.json`` as the experiment built it."""
  from sotalign_jax.runtime import engine  # pylint: disable=g-import-not-at-top
  return engine.test_set(engine.read_data(_config(workdir)))


# ----------------------------------------------------------------------------------------------------------------
# Evaluate.
# ----------------------------------------------------------------------------------------------------------------
def _on_test_set(options: Mapping[str, Any]) -> bool:
  return options.get("cache") is None and options.get("set", "test") == "test"


def evaluate(alignment: Alignment, test: evaluators.EvalSet | None, evals: Mapping[str, Mapping[str, Any]], *,
             seed: int = 0) -> dict[str, float]:
  """The metrics of every evaluator of ``evals`` (``config.evals`` entries) on ``test`` (or their own caches)."""
  with contextlib.redirect_stdout(sys.stderr):  # notes about missing caches: stdout carries the JSON only
    built = evaluators.from_config(evals, {"test": test})
  out = {}
  for e in built.values():
    out.update(e.run(alignment, seed=seed)[0])
  return out


def _select(evals: Mapping[str, Mapping[str, Any]], names: str | None, *, own_data: bool) -> dict:
  """The entries to run: those on the test set (and, on the run's own data, those with their own caches)."""
  evals = {k: dict(v) for k, v in evals.items()}
  usable = {k: v for k, v in evals.items() if own_data or _on_test_set(v)}
  if not names:
    return usable
  wanted = [n.strip() for n in names.split(",") if n.strip()]
  unknown = [n for n in wanted if n not in usable]
  if unknown:
    raise ValueError(f"--evals {','.join(unknown)}: not an evaluator of this run on this data (available: "
                     f"{', '.join(usable)})")
  return {n: usable[n] for n in wanted}


def evaluate_alignment(cell: Cell, *, x: str | None = None, y: str | None = None, cache: str | None = None,
                       split: str = "test", folder: str | None = None, evals: str | None = None,
                       progress: bool = False) -> tuple[dict[str, float], str]:
  """``(metrics, what was evaluated)`` of ``cell``'s alignment on the data given (see the module docstring)."""
  if folder is not None and cell.workdir is None:
    raise ValueError("--folder embeds with the run's encoders: give the run's --workdir (or an --alignment inside it)")
  alignment = aligner_io.load(cell.alignment)  # first: a wrong path is the first thing to hear about
  cfg = _config(cell.workdir) if cell.workdir else None
  own_data = x is None and cache is None and folder is None
  if own_data and cfg is None:
    raise ValueError(f"{cell.alignment} is not inside an experiment's workdir: give the data, --x X.npy --y Y.npy or "
                     "--cache DIR")
  chosen = _select(cfg.evals if cfg is not None else DEFAULT_EVALS, evals, own_data=own_data)
  if not chosen:
    raise ValueError("no evaluator to run: the run's config.evals has none on its test set")
  if x is not None:
    test, what = files_set(x, y), f"--x {x} --y {y}"
  elif cache is not None:
    test, what = cache_split_set(cache, split), f"the {split!r} split of {cache}"
  elif folder is not None:
    out = folder_cache(cell.workdir, folder, progress=progress)
    test, what = cache_split_set(out, "all"), f"{folder} (embedded in {out})"
  else:
    test, what = run_test_set(cell.workdir), "the run's test set"
  seed = int(cell.record["seed"]) if cell.record else 0
  try:
    metrics = evaluate(alignment, test, chosen, seed=seed)
  except ValueError as e:
    raise ValueError(f"{cell.alignment} ({type(alignment).__name__}) on {what} ({len(test.x)} x-rows of "
                     f"{test.x.shape[1]} features, {len(test.y)} y-rows of {test.y.shape[1]}): {e}; are these "
                     "embeddings from the encoders the run was trained on?") from None
  return metrics, f"{cell.alignment} ({type(alignment).__name__}) on {what}: {len(test.x)} x-rows, {len(test.y)} " \
                  f"y-rows; evaluators {', '.join(chosen)}"


def evaluate_folder(workdir: str, folder: str, *, method: str = "sotalign", p: int | None = None,
                    seed: int | None = None, progress: bool = True) -> dict:
  """Metrics of ``method``'s alignment on ``folder``, embedded with the run's encoders (cached in the workdir)."""
  return evaluate_alignment(find_cell(workdir, method, p=p, seed=seed), folder=folder, progress=progress)[0]


def evaluate_files(workdir: str, x: str, y: str, *, method: str = "sotalign", p: int | None = None,
                   seed: int | None = None) -> dict:
  """Metrics of ``method``'s alignment on row-aligned evaluation files ``x``, ``y`` (one positive each)."""
  return evaluate_alignment(find_cell(workdir, method, p=p, seed=seed), x=x, y=y)[0]


def _json(metrics: Mapping[str, float]) -> str:
  return json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()})


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog="python -m sotalign_jax.cli.evaluate", description=__doc__.split("\n\n")[0])
  p.add_argument("--alignment", help="a saved alignment directory (<workdir>/runs/<method>/<cell>/alignment)")
  p.add_argument("--workdir", help="the --workdir of an experiment; the cell is --method, --p, --seed")
  p.add_argument("--method", default="sotalign", help="with --workdir: the method (or variant) (default: sotalign)")
  p.add_argument("--p", type=int, help="with --workdir: the cell's number of pairs (if the method has several)")
  p.add_argument("--seed", type=int, help="with --workdir: the cell's seed (if the method has several)")
  p.add_argument("--x", help="row-aligned evaluation image embeddings (.npy float32), with --y")
  p.add_argument("--y", help="row-aligned evaluation text embeddings (.npy float32), with --x")
  p.add_argument("--cache", help="an embedding cache to evaluate on (its --split)")
  p.add_argument("--split", default="test", help="with --cache: the split (default: test; all: every item)")
  p.add_argument("--folder", help="with a workdir: a directory with captions.jsonl (generic image-caption format)")
  p.add_argument("--evals", help="comma-separated config.evals names to run (default: all that apply)")
  a = p.parse_args(argv)
  if (a.alignment is None) == (a.workdir is None):
    p.error("give either --alignment DIR or --workdir DIR (with --method, --p, --seed)")
  if (a.x is None) != (a.y is None):
    p.error("give both --x FILE and --y FILE")
  if sum(v is not None for v in (a.x, a.cache, a.folder)) > 1:
    p.error("give one of --x/--y, --cache, --folder")
  if a.alignment is not None and (a.p is not None or a.seed is not None):
    p.error("--p and --seed choose a cell of --workdir; --alignment names one already")
  try:
    cell = _cell_of(a.alignment) if a.alignment else find_cell(a.workdir, a.method, p=a.p, seed=a.seed)
    result, what = evaluate_alignment(cell, x=a.x, y=a.y, cache=a.cache, split=a.split, folder=a.folder,
                                      evals=a.evals, progress=sys.stderr.isatty())
  except (FileNotFoundError, ValueError) as e:
    p.exit(2, f"error: {' '.join(str(e).split())}\n")
  print(f"evaluated {what}", file=sys.stderr)
  print(_json(result))


if __name__ == "__main__":
  main()
