r"""The alignment benchmark: every registered aligner × a few-pair sweep × seeds, with intervals.

  python experiments/benchmark.py --config configs/benchmark.py:quick --workdir workdirs/bench_quick

Reads top to bottom: config (``configs/benchmark.py``: ``get_config``, ``validate``) → the protocol on the cache
(:mod:`sotalign_jax.data.protocol`: held-out test and validation images, per seed nested pairs and unpaired pools)
→ for every (method, p, seed) cell: ``aligners.fit`` → scores on the test set → metrics, saved as one ``done/``
record and one ``cells/*.npz`` of per-query values (:class:`sotalign_jax.runtime.sweep.CellStore`) → intervals
over seeds and paired differences (:mod:`sotalign_jax.runtime.sweep`) → ``results.json``, ``results.md``, the
plot ``sweep.png``, and the markdown on stdout.

**Reruns: cells are keyed by their settings.** A cell's key is the hash of everything that determines its numbers
(:func:`cell_settings`): the method and its resolved options (the registry's defaults with ``config.hparams.
<method>`` over them), the data (the cache's ``manifest.json`` and a content hash of its files, or in file mode the
files' sizes and content hashes; never paths), the protocol options, ``config.seed``, the seed and p, and the
optional evaluation caches in use. A cell is stored as ``done/<method>/p<p>_s<seed>__<key12>.json``
(:class:`sotalign_jax.runtime.sweep.CellStore`). A rerun in the same workdir reuses exactly the cells whose
settings did not change and computes the others; cells of other settings stay on disk, unused (rerunning those
settings finds them again). A trained cell checkpoints in ``runs/<method>/p<p>_s<seed>__<key12>`` (keyed by its fit
settings), so an interrupted fit resumes only under the same settings; with changed ones it starts fresh and one
line names the old directory. A killed sweep reruns to the same table (closed-form and training-free methods are
deterministic; trained ones get the key ``fold_in(fold_in(key(seed), s), p)``). An all-pairs method (the upper
bound) is fitted once per seed on every training pair and shown at every p.

**What the tables show.** ``results.json``, ``results.md`` and ``sweep.png`` show every method of
``config.methods`` at every p and seed of the config, computed under the current settings, followed by every other
registered method whose cells for all those p and seeds are stored in the workdir under the same settings (its
options read from ``config.hparams``). A researcher trying variants in one workdir therefore sees: a rerun with
fewer methods, or with one method added, keeps the full table (it grows, never shrinks to the subset); a rerun with
changed data, protocol, p, seeds or options shows only numbers computed with exactly those, and the older cells
come back when the older settings are rerun. To drop a method from the tables, delete ``done/<method>``.
``results.json`` lists every cell with its ``key`` and resolved ``settings``, ``methods_run`` (``config.methods``)
and ``methods_from_store`` (the others shown).

**User errors** (an unknown key, a bad value, a missing cache or file, a sweep in which every cell needs pairs)
print one line ``error: …`` and exit with code 2 before the workdir is created.

Metrics of a cell, on the test images with all their captions: R@1/5/10 image→text (a hit is any caption of the
image) and text→image; mean and median rank (1-based, ties count half, :func:`sotalign_jax.metrics.
per_query_metrics`); FOSCTTM and matching accuracy on the square score matrix of the test images against their
first caption (:func:`~sotalign_jax.metrics.foscttm_per_query`, the per-query value the mean of both directions;
:func:`~sotalign_jax.metrics.matching_hits`, a linear assignment); zero-shot fashion-mnist accuracy and tuxpaint
image→text R@1 when those caches exist; the fit's wall-clock seconds.

Before any fit, the **geometry scores** of the two spaces (``config.eval.geometry``: linear CKA, mutual k-NN, TSI,
QSI by default; :func:`sotalign_jax.scores.calibrated` with a permutation null) on the first
``config.eval.geometry_pairs`` training pairs of seed 0: how similar the spaces look from a small paired sample,
which Schnaus et al. (2026) find predicts whether alignment without pairs works. Saved in ``geometry.json`` (reused
by a rerun) and reported with the tables.
"""

from __future__ import annotations

import json
import os
import time
from typing import NamedTuple

import jax
import numpy as np

from sotalign_jax import aligners, metrics, scores
from sotalign_jax.data.cache import open_cache
from sotalign_jax.data import files as files_lib
from sotalign_jax.data.protocol import Protocol, resolve_n_pairs, stack_files
from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import io as sio, sweep, train as train_lib, workdir as wd

CONFIG = cfg_lib.experiment_config(__file__)  # configs/benchmark.py: get_config, validate


# ================================================================================================================
# Data: the protocol, the evaluation sets, one cell's AlignData
# ================================================================================================================
def read_cache(path: str, key: str):
  """The cache ``config.<key>`` names, with its arrays in memory as float32 (rows are indexed many times)."""
  cache = open_cache(path, key=key, check_values=True)
  img = None if cache.image_emb is None else np.asarray(cache.image_emb, np.float32)
  return cache._replace(image_emb=img, text_emb=np.asarray(cache.text_emb, np.float32))


class Stacked(NamedTuple):
  """The embedding files of file mode stacked in memory, read like a cache by the rest of this file."""
  image_emb: np.ndarray
  text_emb: np.ndarray


def file_paths(cfg) -> dict:
  return {k: cfg.data[k] for k in files_lib.FILE_KEYS if cfg.data[k]}


def read_data(cfg):
  """``(cache, protocol, source)``: ``config.data.cache`` and its :class:`Protocol`, or in file mode (any
  ``config.data.<file key>`` set) the embedding files stacked in memory and their
  :class:`~sotalign_jax.data.protocol.FileProtocol` (test / val from their files, nested pairs from the pair
  files, unpaired pools from the unpaired files)."""
  paths = file_paths(cfg)
  if not paths:
    cache = read_cache(cfg.data.cache, "data.cache")
    return cache, make_protocol(cache, cfg), cfg.data.cache
  f = files_lib.open_embedding_files(paths)
  x, y, proto = stack_files(f, split_seed=cfg.data.split_seed, max_unpaired=cfg.data.max_unpaired)
  return Stacked(x, y), proto, "files " + ", ".join(f"{k}={v}" for k, v in f.paths.items())


def make_protocol(cache, cfg) -> Protocol:
  d = cfg.data
  try:
    return Protocol.from_cache(cache, split=d.split, test_size=d.test_size, val_size=d.val_size,
                               split_seed=d.split_seed, unpaired_mode=d.unpaired_mode, max_unpaired=d.max_unpaired,
                               min_unpaired=d.min_unpaired)
  except ValueError as e:
    raise ValueError(f"config.data (test_size={d.test_size}, val_size={d.val_size}) on {d.cache}: {e}") from None


def retrieval_set(cache, held: dict) -> dict:
  return {"x": cache.image_emb[held["image_rows"]], "y": cache.text_emb[held["caption_rows"]],
          "i2t": held["positives"], "t2i": held["owner"], "first": held["first"]}


def whole_cache_set(cache) -> dict:
  """Every image of a cache with all its captions (tuxpaint: a cross-domain test set)."""
  rows, owner = np.unique(cache.caption_image_rows(), return_inverse=True)
  return {"x": cache.image_emb[rows], "y": cache.text_emb,
          "i2t": [np.where(owner == i)[0].tolist() for i in range(len(rows))]}


def eval_sets(cache, proto: Protocol, cfg) -> dict:
  sets = {"test": retrieval_set(cache, proto.held_out("test"))}
  if len(sets["test"]["x"]) < 2:
    raise ValueError(f"config.data: the test set has {len(sets['test']['x'])} images (at least 2 are needed)")
  if isinstance(cache, Stacked):  # own files: the optional eval caches hold the project's encoders
    return sets
  if cfg.eval.tuxpaint_cache and os.path.exists(os.path.join(cfg.eval.tuxpaint_cache, "manifest.json")):
    sets["tuxpaint"] = whole_cache_set(read_cache(cfg.eval.tuxpaint_cache, "eval.tuxpaint_cache"))
  if cfg.eval.fashion_mnist_cache and os.path.exists(os.path.join(cfg.eval.fashion_mnist_cache, "manifest.json")):
    fm = read_cache(cfg.eval.fashion_mnist_cache, "eval.fashion_mnist_cache")
    labels = np.array(fm.labels())
    classes = sorted(set(labels))
    prompt_row = [int(np.where(labels == c)[0][0]) for c in classes]  # every caption of a class is its prompt
    sets["fashion"] = {"x": fm.image_emb[fm.caption_image_rows()], "y": fm.text_emb[prompt_row],
                       "labels": np.searchsorted(classes, labels)}
  return sets


def cell_data(cache, rows: dict) -> aligners.AlignData:
  x, y = cache.image_emb, cache.text_emb
  return aligners.AlignData.create(x=x[rows["unp_x"]], y=y[rows["unp_y"]], pairs_x=x[rows["pair_x"]],
                                   pairs_y=y[rows["pair_y"]])


# ================================================================================================================
# Geometry scores of the two spaces on a small paired sample (before any fit)
# ================================================================================================================
def geometry_scores(cache, proto: Protocol, cfg, workdir: str, *, data: dict) -> dict:
  """``{metric: {score, null_mean, z, p_value}}`` on the first ``eval.geometry_pairs`` pairs of seed 0 (at most
  ``p_max``), written once to ``geometry.json`` and read back by a rerun with the same settings (``data``: the
  fingerprint of the data and protocol, :func:`data_settings`)."""
  e = cfg.eval
  n = min(int(e.geometry_pairs), proto.p_max)
  settings = wd.canonical({"metrics": list(e.geometry), "pairs": n, "n_perm": int(e.geometry_perms), "seed": 0,
                           "base_seed": cfg.seed, "data_key": wd.settings_key(data)})
  path = os.path.join(workdir, "geometry.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get("settings") == settings:
      return saved
  if not e.geometry or n < 4:
    return {"settings": settings, "scores": {}}
  rows = proto.draw(0, n)
  x, y = cache.image_emb[rows["pair_x"]], cache.text_emb[rows["pair_y"]]
  out = {}
  for i, metric in enumerate(e.geometry):
    c = scores.calibrated(metric, x, y, n_perm=int(e.geometry_perms), n_boot=0,
                          key=jax.random.fold_in(jax.random.key(cfg.seed), i), k=min(10, n - 1))
    out[metric] = {k: float(getattr(c, k)) for k in ("score", "null_mean", "z", "p_value")}
  result = {"settings": settings, "scores": out}
  if wd.is_primary():
    sio.write_json(path, result)
  return result


def geometry_markdown(geo: dict) -> str:
  if not geo["scores"]:
    return ""
  st = geo["settings"]
  parts = [f"{m} {v['score']:.3f} (null {v['null_mean']:.3f}, z {v['z']:.1f}, p {v['p_value']:.3g})"
           for m, v in geo["scores"].items()]
  return (f"Geometry of the two spaces on {st['pairs']} training pairs (seed 0; permutation null of "
          f"{st['n_perm']}): " + "; ".join(parts) + ".\n")


# ================================================================================================================
# Evaluation of one fitted alignment
# ================================================================================================================
def evaluate(alignment: aligners.Alignment, sets: dict, *, seed: int) -> tuple[dict, dict]:
  """``(metrics, per_query)`` of a fitted alignment (see the module docstring)."""
  t = sets["test"]
  sim = np.asarray(jax.device_get(alignment.similarity(t["x"], t["y"])), np.float32)  # [images, captions]
  i2t = metrics.per_query_metrics(sim, positives=t["i2t"])
  t2i = metrics.per_query_metrics(sim.T, positives=t["t2i"])
  square = sim[:, t["first"]]
  fos = metrics.foscttm_per_query(square)
  per_query = {**{f"i2t_{k}": v for k, v in i2t.items() if k != "rank"}, "i2t_mean_rank": i2t["rank"],
               **{f"t2i_{k}": v for k, v in t2i.items() if k != "rank"}, "t2i_mean_rank": t2i["rank"],
               "foscttm": 0.5 * (fos["x2y"] + fos["y2x"]), "matching_acc": metrics.matching_hits(square, seed=seed)}
  per_query = {k: per_query[k] for k in sweep.PER_QUERY_METRICS}
  out = {k: float(np.mean(v)) for k, v in per_query.items()}
  out["i2t_median_rank"] = float(np.median(i2t["rank"]))
  out["t2i_median_rank"] = float(np.median(t2i["rank"]))
  out["zeroshot_fashion_mnist"] = out["tuxpaint_i2t_r1"] = float("nan")  # NaN: not evaluated
  if "fashion" in sets:
    s = sets["fashion"]
    pred = np.argmax(np.asarray(alignment.similarity(s["x"], s["y"])), axis=1)
    out["zeroshot_fashion_mnist"] = float(np.mean(pred == s["labels"]))
  if "tuxpaint" in sets:
    s = sets["tuxpaint"]
    sim_t = np.asarray(alignment.similarity(s["x"], s["y"]), np.float32)
    out["tuxpaint_i2t_r1"] = float(metrics.per_query_metrics(sim_t, positives=s["i2t"], ks=(1,))["r1"].mean())
  return out, per_query


# ================================================================================================================
# Keys: what determines a cell's numbers
# ================================================================================================================
def fit_kwargs(method: str, cfg) -> dict:
  """The method's options from ``config.hparams`` (lists as tuples)."""
  kwargs = dict(cfg.hparams[method]) if method in cfg.hparams else {}
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def data_settings(cfg) -> dict:
  """The data and protocol part of every key: the cache's fingerprint (or the files') and the protocol options
  that read them (file mode uses only ``split_seed`` and ``max_unpaired``)."""
  d = cfg.data
  paths = file_paths(cfg)
  if paths:
    return {"files": wd.files_fingerprint(paths), "split_seed": d.split_seed, "max_unpaired": d.max_unpaired}
  return {"cache": wd.cache_fingerprint(d.cache), "split": d.split, "split_seed": d.split_seed,
          "test_size": d.test_size, "val_size": d.val_size, "unpaired_mode": d.unpaired_mode,
          "max_unpaired": d.max_unpaired, "min_unpaired": d.min_unpaired}


def eval_settings(cfg, sets: dict) -> dict:
  """The evaluation part of every key: the optional evaluation caches in use (the test set is the protocol's)."""
  fp = lambda name, path: wd.cache_fingerprint(path) if name in sets else None  # noqa: E731
  return {"tuxpaint": fp("tuxpaint", cfg.eval.tuxpaint_cache),
          "fashion_mnist": fp("fashion", cfg.eval.fashion_mnist_cache)}


def cell_settings(method: str, p: int, seed: int, cfg, *, data: dict, evaluation: dict) -> sweep.CellSettings:
  """Everything that determines a cell's numbers: the method with its resolved options (registry defaults, the
  config's over them), the data and protocol, the base seed, the seed and p (``"all"`` for an all-pairs method)."""
  spec = aligners.get(method)
  fit = {"method": method, "hparams": {**spec.defaults, **fit_kwargs(method, cfg)}, "data": data,
         "base_seed": cfg.seed, "seed": int(seed), "p": "all" if spec.all_pairs else int(p)}
  return sweep.CellSettings(fit, evaluation)


def measurable(method: str, p: int, p_max: int) -> bool:
  """Whether the cell can produce a metric (the method gets at least its ``min_pairs`` pairs)."""
  spec = aligners.get(method)
  return (p_max if spec.all_pairs else p) >= spec.min_pairs


def needs_pairs_message(cfg, methods, ps, p_max: int) -> str:
  need = ", ".join(f"{m} needs >= {aligners.get(m).min_pairs}" for m in methods)
  give = ("config.data.pairs_x and config.data.pairs_y (row-aligned pairs; file mode)" if file_paths(cfg) else
          f"config.n_pairs with a p of at least {min(aligners.get(m).min_pairs for m in methods)} (the data give "
          f"up to {p_max})")
  free = [m for m in aligners.ALIGNERS if not aligners.get(m).needs_pairs]
  return (f"no cell can produce a metric: every method of config.methods needs pairs ({need}) and the sweep gives "
          f"p ∈ {list(ps)} (at most {p_max} pairs in the data); give {give}, or add a method that runs without "
          f"pairs to config.methods ({', '.join(free) or 'none registered'})")


# ================================================================================================================
# One cell: fit, time, evaluate
# ================================================================================================================
def run_cell(method: str, p: int, seed: int, *, settings: sweep.CellSettings, cache, proto: Protocol, sets: dict,
             val, cfg, workdir: str, writer: wd.MetricWriter):
  """``(record, per_query or None)`` of one (method, p, seed) cell. Trained methods train on the shared checkpointed
  loop in ``runs/<method>/p<p>_s<seed>__<fit key>`` (a killed cell resumes from its last checkpoint; a cell with
  other settings never does)."""
  spec = aligners.get(method)
  record = {"method": method, "p": int(p), "seed": int(seed), "status": "ok", "key": settings.key,
            "settings": settings.to_json()}
  if not measurable(method, p, proto.p_max):
    return {**record, "status": sweep.NEEDS_PAIRS, "reason": f"needs >= {spec.min_pairs} pairs"}, None
  rows = proto.all_pairs() if spec.all_pairs else proto.draw(seed, p)
  data = cell_data(cache, rows)
  record["sizes"] = {"pairs": len(rows["pair_x"]), "unpaired_x": len(rows["unp_x"]), "unpaired_y": len(rows["unp_y"])}
  p_key = 2**31 - 1 if spec.all_pairs else p  # the all-pairs data do not depend on p
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), seed), p_key)
  cell = f"{'all' if spec.all_pairs else f'p{p}'}_s{seed}"
  run_dir = wd.keyed_dir(os.path.join(workdir, "runs", method), cell, settings.fit_key) if spec.trained else \
      os.path.join(workdir, "runs", method, cell)
  loop = train_lib.checkpointed_loop(run_dir, writer=writer, name=f"{method}/{cell}", log_every=cfg.log_every,
                                     ckpt_every=cfg.ckpt_every, mesh=train_lib.data_mesh())
  start = time.perf_counter()
  try:
    alignment = aligners.fit(method, key, data, loop=loop, mesh=train_lib.data_mesh(), val=val,
                             **fit_kwargs(method, cfg))
    jax.block_until_ready(jax.tree.leaves(alignment))
  except aligners.NeedsPairsError as e:
    return {**record, "status": sweep.NEEDS_PAIRS, "reason": str(e)}, None
  except Exception as e:
    raise RuntimeError(f"cell {method} p={p} seed={seed} failed: {type(e).__name__}: {e}") from e
  fit_seconds = time.perf_counter() - start
  out, per_query = evaluate(alignment, sets, seed=seed)
  record["metrics"] = {**out, "fit_seconds": fit_seconds}
  record["eval_seconds"] = time.perf_counter() - start - fit_seconds
  return record, per_query


# ================================================================================================================
# Main
# ================================================================================================================
def run(cfg, workdir: str) -> dict:
  # --- config and data, checked before anything is written (a user error leaves no workdir behind) -------------
  with cfg_lib.user_errors():
    CONFIG.validate(cfg)
    cache, proto, source = read_data(cfg)
    ps, labels = resolve_n_pairs(cfg.n_pairs, proto.p_max)
    sets = eval_sets(cache, proto, cfg)
    data, evaluation = data_settings(cfg), eval_settings(cfg, sets)
  seeds = list(range(cfg.seeds))
  methods = list(cfg.methods)
  if not any(measurable(m, p, proto.p_max) for m in methods for p in ps):
    raise cfg_lib.UserError(needs_pairs_message(cfg, methods, ps, proto.p_max))
  t_start = time.time()
  wd.save_config(workdir, cfg)
  held_val = proto.held_out("val")
  val = aligners.AlignData.create(pairs_x=cache.image_emb[held_val["image_rows"]],
                                  pairs_y=cache.text_emb[held_val["caption_rows"][held_val["first"]]],
                                  dx=cache.image_emb.shape[1], dy=cache.text_emb.shape[1])
  n_train = int((proto.roles == "train").sum())
  print(f"benchmark on {source}: {len(sets['test']['x'])} test images / {len(sets['test']['y'])} captions, "
        f"{len(held_val['image_rows'])} validation images, {n_train} training images; p ∈ "
        f"{[labels[p] for p in ps]} (max = {proto.p_max}), {len(seeds)} seeds, unpaired mode "
        f"{cfg.data.unpaired_mode}; extra eval sets: {sorted(set(sets) - {'test'}) or 'none'}")

  geometry = geometry_scores(cache, proto, cfg, workdir, data=data)
  if geometry["scores"]:
    print(geometry_markdown(geometry), end="")
  store = sweep.CellStore(workdir)
  writer = wd.MetricWriter(workdir)
  settings = lambda m, p, s: cell_settings(m, p, s, cfg, data=data, evaluation=evaluation)  # noqa: E731
  grid = [(m, p, s) for s in seeds for p in ps for m in methods]
  keyed = {c: settings(*c) for c in grid}
  cells = {c: store.load(*c, key=keyed[c].key) for c in grid}
  todo = [c for c in grid if cells[c] is None]
  stale = sum(bool(store.others(*c, key=keyed[c].key)) for c in todo)
  print(f"{len(grid) - len(todo)} of {len(grid)} cells done before with these settings, {len(todo)} to run" +
        (f" ({stale} of them stored under other settings, kept but not used)" if stale else ""))
  upper = {}  # an all-pairs method sees the same data at every p: fitted once per seed
  for method, p, seed in wd.progress(todo, desc="cells", total=len(todo)):
    if aligners.get(method).all_pairs and (method, seed) in upper:
      record, per_query = upper[method, seed]
      record = {**record, "p": int(p)}
    else:
      record, per_query = run_cell(method, p, seed, settings=keyed[method, p, seed], cache=cache, proto=proto,
                                   sets=sets, val=val, cfg=cfg, workdir=workdir, writer=writer)
      if aligners.get(method).all_pairs:
        upper[method, seed] = record, per_query
    if wd.is_primary():
      store.save(record, per_query)
    if record["status"] == "ok":
      writer.write(p, record["metrics"], prefix=f"cell/{method}/seed{seed}/")
    cells[method, p, seed] = sweep.to_json(record)
  if not any(cells[c]["status"] == "ok" for c in grid):
    writer.close()
    reasons = sorted({cells[c].get("reason", "") for c in grid})
    raise cfg_lib.UserError(needs_pairs_message(cfg, methods, ps, proto.p_max) + f" ({'; '.join(reasons)})")

  # --- the table's methods: config.methods, then every other method stored complete under the same settings ----
  extra_methods, partial = [], {}
  for m in aligners.ALIGNERS:
    if m in methods:
      continue
    found = {(m, p, s): store.load(m, p, s, key=settings(m, p, s).key) for s in seeds for p in ps}
    n_found = sum(r is not None for r in found.values())
    if n_found == len(found):
      extra_methods.append(m)
      cells.update(found)
    elif n_found:
      partial[m] = n_found
  shown = methods + extra_methods
  if extra_methods:
    print(f"also in the tables: {', '.join(extra_methods)} (stored earlier in {workdir} with the same settings)")
  if partial:
    print("not in the tables (stored with these settings for only some cells; add them to config.methods to "
          "complete them): " + ", ".join(f"{m} ({k} of {len(ps) * len(seeds)})" for m, k in partial.items()))
  grid = [(m, p, s) for s in seeds for p in ps for m in shown]

  # --- statistics ----------------------------------------------------------------------------------------------
  summary = sweep.summarise(cells, methods=shown, ps=ps, seeds=seeds, confidence=cfg.eval.confidence)
  reference = cfg.reference or sweep.choose_reference(
      summary, methods=shown, trained={m: aligners.get(m).trained for m in shown})
  comparison = sweep.compare(store, cells, summary, reference=reference, methods=shown, ps=ps, seeds=seeds,
                             metrics=cfg.eval.compare_metrics, n_boot=cfg.eval.n_boot,
                             confidence=cfg.eval.confidence,
                             not_competing=[m for m in shown if aligners.get(m).all_pairs])
  for m in shown:
    for p in ps:
      if summary[m][p]:
        writer.write(p, {k: v["mean"] for k, v in summary[m][p].items() if v}, prefix=f"summary/{m}/")
  writer.close()

  # --- outputs -------------------------------------------------------------------------------------------------
  sizes = {labels[p]: next((cells[c]["sizes"] for c in grid if c[1] == p and "sizes" in cells[c]), None)
           for p in ps}
  header = (f"## Alignment benchmark: {source}\n\n{len(sets['test']['x'])} test images "
            f"({len(sets['test']['y'])} captions), {len(held_val['image_rows'])} held-out validation images, "
            f"{n_train} training images; nested pairs per seed, unpaired pools from the rest ({cfg.data.unpaired_mode}"
            f"); {len(seeds)} seeds; reference: {reference}.\n\n{geometry_markdown(geometry)}")
  md = sweep.markdown(summary, comparison, methods=shown, ps=ps, labels=labels, reference=reference,
                      table_metrics=cfg.eval.table_metrics, compare_metrics=cfg.eval.compare_metrics,
                      n_seeds=len(seeds), confidence=cfg.eval.confidence, header=header)
  fit_s = lambda c: c["fit_seconds"]["mean"] if c and c.get("fit_seconds") else None  # noqa: E731
  timing = {m: {f"p={labels[p]}": fit_s(summary[m][p]) for p in ps} for m in shown}
  seconds = round(time.time() - t_start, 1)
  extra = {
      "cells": [sweep.to_json(cells[c]) for c in grid], "summary": sweep.to_json(summary),
      "comparison": sweep.to_json(comparison), "reference": reference, "methods_run": methods,
      "methods_from_store": extra_methods,
      "p_values": list(ps), "p_labels": {str(p): labels[p] for p in ps}, "seeds": seeds,
      "protocol": {"cache": cfg.data.cache if not file_paths(cfg) else None, "files": file_paths(cfg) or None,
                   "split": cfg.data.split, "split_seed": cfg.data.split_seed,
                   "n_test_images": len(sets["test"]["x"]), "n_test_captions": len(sets["test"]["y"]),
                   "n_val_images": len(held_val["image_rows"]), "n_train_images": n_train, "p_max": proto.p_max,
                   "unpaired_mode": cfg.data.unpaired_mode, "max_unpaired": cfg.data.max_unpaired,
                   "sizes_by_p": sizes, "eval_sets": sorted(sets)},
      "geometry": geometry, "cells_run_now": len(todo), "seconds": seconds,
  }
  methods_means = {m: {f"p{p}/{k}": v["mean"] for p in ps if summary[m][p] for k, v in summary[m][p].items() if v}
                   for m in shown}
  wd.write_results(workdir, methods_means, **extra)  # results.json with provenance (results.md is replaced below)
  if not wd.is_primary():
    return extra
  full = md + "\n### fit seconds (wall clock, mean over seeds; not part of the resumable result)\n\n" + \
      wd.markdown_table(timing) + "\n"
  sio.write_text(os.path.join(workdir, "results.md"), full)
  sweep.plot(summary, methods=shown, ps=ps, labels=labels, path=os.path.join(workdir, "sweep.png"))
  print("\n" + md)
  print(f"{len(todo)} cells run in {seconds:.1f} s; results in {workdir}/results.{{json,md}}, plot sweep.png")
  return extra


if __name__ == "__main__":
  cfg_lib.launch(run, "configs/benchmark.py")
