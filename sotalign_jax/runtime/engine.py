r"""The experiment engine: protocol → registry → evaluators → cell store → statistics, tables and plots.

Every alignment experiment is a preset of :func:`run` (``configs/proj/<name>/config.py``, with the results README
beside it); ``experiments/<name>.py`` only launches it::

  python experiments/benchmark.py --config configs/proj/benchmark/config.py:quick --workdir workdirs/bench_quick

Reads top to bottom:

1. **Config** (validated before anything is written: a user error prints one line ``error: …``, exit 2, and leaves
   no workdir behind).
2. **Data** (:func:`read_data`): an embedding cache and its :class:`~sotalign_jax.data.protocol.Protocol` (held-out
   test and validation images; per seed nested pairs and unpaired pools from the rest), or your own ``.npy`` files
   and their :class:`~sotalign_jax.data.protocol.FileProtocol`. ``data.mmap`` reads the cache memory-mapped and
   hands the unpaired pools to the methods as lazy :class:`~sotalign_jax.data.pool.Pool` s;
   ``data.extra_unpaired_text`` / ``extra_unpaired_images`` append other caches' rows to every unpaired pool.
3. **Cells**: for every (method, p, seed), ``aligners.fit`` (trained methods on the shared checkpointed loop, in
   ``runs/<method>/<cell>__<fit key>``) → the evaluators of ``config.evals`` (:mod:`sotalign_jax.evaluators`) →
   one record and its per-query values in the :class:`~sotalign_jax.runtime.sweep.CellStore`, and the fitted
   alignment (:func:`sotalign_jax.aligners.io.save`) for ``python -m sotalign_jax.cli.evaluate``.
4. **Statistics**: intervals over seeds and paired differences against a reference
   (:mod:`~sotalign_jax.runtime.sweep`) → ``results.json``, ``results.md``, the plot ``sweep.png``, and the markdown on
   stdout.

**Methods** are registry names (:data:`sotalign_jax.aligners.ALIGNERS`) or *variants*: ``config.variants.<label> =
dict(method=<registered name>, **options)`` is a row of its own (e.g. ``qap_stretch = dict(method="qap",
stretch=True)``). A method's options are the registry's defaults, then ``config.hparams.<method>``, then the
variant's.

**Reruns: cells are keyed by their settings.** A cell's key is the hash of everything that determines its numbers
(:func:`cell_settings`): the method and its resolved options, the data (the cache's ``manifest.json`` and a content
hash of its files, or the files' sizes and content hashes; never paths), the protocol options, ``config.seed``, the
seed and p, and the evaluators with their data. A cell is stored as ``done/<method>/p<p>_s<seed>__<key12>.json``. A
rerun reuses exactly the cells whose settings did not change and computes the others; cells of other settings stay
on disk, unused (rerunning those settings finds them again). A trained cell checkpoints in a directory keyed by its
fit settings, so an interrupted fit resumes only under the same settings; with changed ones it starts fresh and one
line names the old directory. Closed-form and training-free methods are deterministic; trained ones get the key
``fold_in(fold_in(key(config.seed), seed), p)``. An all-pairs method (the upper bound) is fitted once per seed on
every training pair and shown at every p.

**What the tables show.** Every method of ``config.methods`` at every p and seed of the config, computed under the
current settings, then every other registered method or variant whose cells for all those p and seeds are stored in
the workdir under the same settings. A rerun with fewer methods, or with one added, keeps the full table (it grows,
never shrinks to the subset); a rerun with changed data, protocol, p, seeds or options shows only numbers computed
with exactly those. To drop a method from the tables, delete ``done/<method>``. ``results.json`` lists every cell
with its ``key`` and resolved ``settings``, ``methods_run`` and ``methods_from_store``.

Before any fit, the **geometry scores** of the two spaces (``config.eval.geometry``;
:mod:`sotalign_jax.evaluators.geometry`) on the first ``config.eval.geometry_pairs`` training pairs of seed 0, saved in
``geometry.json`` (reused by a rerun with the same settings) and reported with the tables.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import typing
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from sotalign_jax import aligners, evaluators, scores
from sotalign_jax.aligners import io as aligner_io
from sotalign_jax.data import files as files_lib
from sotalign_jax.data.cache import open_cache
from sotalign_jax.data.pool import Pool
from sotalign_jax.data.protocol import SPLIT_MODES, UNPAIRED_MODES, Protocol, resolve_n_pairs, stack_files
from sotalign_jax.evaluators import geometry as geometry_lib
from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import io as sio, sweep, train as train_lib, workdir as wd

__all__ = ["run", "validate", "read_data", "cell_settings", "fit_kwargs", "method_of", "table_methods",
           "metric_names"]


# ================================================================================================================
# Methods: registry names and variants
# ================================================================================================================
def method_of(label: str, cfg: ml_collections.ConfigDict) -> str:
  """The registered aligner behind a row of the tables: ``label`` itself, or its variant's ``method``."""
  return cfg.variants[label].method if label in cfg.get("variants", {}) else label


VARIANT_KEYS = ("method", "select_from")
"""Keys of a variant that are not the method's options: ``method`` (the registered aligner) and ``select_from``
(the cell draws this many pairs, -1 = the protocol's maximum, and the method keeps ``n_base = p`` of them by its own
selection, e.g. the k-means base selection of Maniparambil et al.: p is then the annotation budget)."""


def fit_kwargs(label: str, cfg: ml_collections.ConfigDict, p: int | None = None) -> dict:
  """The options given to ``aligners.fit`` (lists as tuples): ``config.hparams.<method>`` with the variant's over
  them (the registry's defaults fill the rest); a ``select_from`` variant gets ``n_base = p``."""
  method = method_of(label, cfg)
  kwargs = dict(cfg.hparams[method]) if method in cfg.hparams else {}
  variant = cfg.variants[label] if label in cfg.get("variants", {}) else {}
  kwargs.update({k: v for k, v in variant.items() if k not in VARIANT_KEYS})
  if "select_from" in variant and p is not None:
    kwargs["n_base"] = int(p)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def pairs_drawn(label: str, p: int, p_max: int, cfg) -> int:
  """The pairs a cell draws: ``p``, or a ``select_from`` variant's pool (at least p, at most ``p_max``)."""
  variant = cfg.variants[label] if label in cfg.get("variants", {}) else {}
  if "select_from" not in variant:
    return p
  pool = p_max if variant.select_from == -1 else min(int(variant.select_from), p_max)
  return max(pool, p)


def table_methods(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Every name a row of the tables can have: the registered aligners and the config's variants."""
  return tuple(aligners.ALIGNERS) + tuple(cfg.get("variants", {}))


def metric_names(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Every scalar metric of a cell: the evaluators' (in ``config.evals`` order), then ``fit_seconds``."""
  evals = evaluators.from_config(cfg.evals, {}, verbose=False, data=False)
  return tuple(m for e in evals.values() for m in e.metrics) + ("fit_seconds",)


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ``ValueError`` naming the first bad key (the checks that need no data)."""
  known = table_methods(cfg)
  for label, variant in cfg.get("variants", {}).items():
    if "method" not in variant or variant.method not in aligners.ALIGNERS:
      raise ValueError(f"config.variants.{label}.method must name a registered aligner ({', '.join(aligners.ALIGNERS)})"
                       f", got {variant.get('method')!r}")
    if label in aligners.ALIGNERS:
      raise ValueError(f"config.variants.{label}: a variant cannot take the name of a registered aligner")
    if "select_from" in variant:
      if "n_base" not in aligners.ALIGNERS[variant.method].defaults:
        raise ValueError(f"config.variants.{label}.select_from: {variant.method} has no n_base option to select with")
  cfg_lib.check_subset(cfg, "methods", known)
  if len(set(cfg.methods)) != len(cfg.methods):
    raise ValueError(f"config.methods lists a method twice: {cfg.methods}")
  cfg_lib.check_ints(cfg, ("seeds", "data.test_size", "eval.n_boot", "data.min_unpaired", "log_every", "ckpt_every",
                           "eval.geometry_perms"))
  cfg_lib.check_ints(cfg, ("eval.geometry_pairs",), minimum=0)
  cfg_lib.check_subset(cfg, "eval.geometry", scores.METRICS, what="geometry score", allow_empty=True)
  cfg_lib.check_ints(cfg, ("data.val_size",), minimum=0)
  cfg_lib.check_ints(cfg, ("n_pairs",), minimum=0, sentinel=-1)
  cfg_lib.check_ints(cfg, ("data.max_unpaired",), sentinel=-1)
  if not cfg.n_pairs:
    raise ValueError("config.n_pairs is empty: give at least one p (e.g. --config.n_pairs=10,100)")
  for label, variant in cfg.get("variants", {}).items():
    if variant.get("select_from", -1) != -1 and variant.select_from < max(cfg.n_pairs):
      raise ValueError(f"config.variants.{label}.select_from={variant.select_from} (config.select_from) must be -1 "
                       f"or at least the largest p, {max(cfg.n_pairs)}")
  if cfg.reference and cfg.reference not in cfg.methods:
    raise ValueError(f"config.reference={cfg.reference!r} is not one of config.methods {list(cfg.methods)} "
                     "(\"\": auto)")
  cfg_lib.check_one_of(cfg, "data.split", SPLIT_MODES)
  paths = file_paths(cfg)
  if paths:
    files_lib.check_keys(paths)
    if not (paths.get("test_x") and paths.get("test_y")):
      raise ValueError("file mode needs config.data.test_x and config.data.test_y (the row-aligned test pairs)")
    for key in ("extra_unpaired_text", "extra_unpaired_images"):
      if cfg.data[key]:
        raise ValueError(f"config.data.{key} reads caches and is for cache mode only; in file mode put the extra "
                         f"rows into config.data.unpaired_{'y' if key.endswith('text') else 'x'}")
  cfg_lib.check_one_of(cfg, "data.unpaired_mode", UNPAIRED_MODES)
  evaluators.check_config(cfg.evals)
  names = metric_names(cfg)
  cfg_lib.check_subset(cfg, "eval.table_metrics", names, what="metric")
  per_query = [m for m in names if not m.endswith("_median_rank") and m != "fit_seconds"]
  cfg_lib.check_subset(cfg, "eval.compare_metrics", per_query, what="per-query metric", allow_empty=True)
  cfg_lib.check_subset(cfg, "eval.plot_metrics", names, what="metric")
  if not 0.0 < cfg.eval.confidence < 1.0:
    raise ValueError(f"config.eval.confidence must lie in (0, 1), got {cfg.eval.confidence!r}")
  for label in cfg.methods:
    method = method_of(label, cfg)
    kwargs = fit_kwargs(label, cfg, 1)
    unknown = sorted(set(kwargs) - set(aligners.ALIGNERS[method].defaults))
    where = f"variants.{label}" if label != method else f"hparams.{method}"
    if unknown:
      raise ValueError(f"config.{where}: unknown option(s) {unknown} of {method} (known: "
                       f"{', '.join(sorted(set(aligners.ALIGNERS[method].defaults) - set(aligners.INJECTED)))})")
    check_choices(aligners.ALIGNERS[method].fn, kwargs, f"config.{where}")


def check_choices(fn, kwargs: dict, where: str):
  """Raises ``ValueError`` when an option annotated ``Literal[...]`` in ``fn``'s signature gets another value."""
  try:
    hints = typing.get_type_hints(inspect.unwrap(fn))
  except Exception:  # pylint: disable=broad-except  (an annotation that cannot be evaluated: nothing to check)
    return
  for k, v in kwargs.items():
    h = hints.get(k)
    if typing.get_origin(h) is typing.Literal and v not in typing.get_args(h):
      raise ValueError(f"{where}.{k} must be one of {typing.get_args(h)}, got {v!r}")


# ================================================================================================================
# Data: the protocol, the evaluation sets, one cell's AlignData
# ================================================================================================================
class Data(NamedTuple):
  """The embeddings a run reads and the protocol naming their rows.

  Attributes:
    image_emb: ``[rows, dx]`` image (x-side) embeddings: float32 in memory, or memory-mapped (``data.mmap``).
    text_emb: ``[rows, dy]`` text (y-side) embeddings.
    proto: :class:`~sotalign_jax.data.protocol.Protocol` or :class:`~sotalign_jax.data.protocol.FileProtocol`.
    source: where the data came from, for the tables.
    extra_x: extra unpaired image arrays (``data.extra_unpaired_images``).
    extra_y: extra unpaired text arrays (``data.extra_unpaired_text``).
  """
  image_emb: Any
  text_emb: Any
  proto: Any
  source: str
  extra_x: tuple = ()
  extra_y: tuple = ()


def file_paths(cfg) -> dict:
  return {k: cfg.data[k] for k in files_lib.FILE_KEYS if cfg.data[k]}


def _open(path: str, key: str, mmap: bool):
  cache = open_cache(path, key=key, check_values=True, mmap=mmap)
  if mmap:
    return cache
  img = None if cache.image_emb is None else np.asarray(cache.image_emb, np.float32)
  return cache._replace(image_emb=img, text_emb=np.asarray(cache.text_emb, np.float32))


def read_data(cfg: ml_collections.ConfigDict) -> Data:
  """The embeddings of ``config.data`` with their protocol: ``data.cache`` (in memory as float32, or memory-mapped
  with ``data.mmap``) and its :class:`Protocol`, or in file mode (any ``config.data.<file key>`` set) the files
  stacked in memory and their :class:`~sotalign_jax.data.protocol.FileProtocol`."""
  d = cfg.data
  paths = file_paths(cfg)
  if paths:
    f = files_lib.open_embedding_files(paths)
    x, y, proto = stack_files(f, split_seed=d.split_seed, max_unpaired=d.max_unpaired)
    return Data(x, y, proto, "files " + ", ".join(f"{k}={v}" for k, v in f.paths.items()))
  cache = _open(d.cache, "data.cache", d.mmap)
  try:
    proto = Protocol.from_cache(cache, split=d.split, test_size=d.test_size, val_size=d.val_size,
                                split_seed=d.split_seed, unpaired_mode=d.unpaired_mode, max_unpaired=d.max_unpaired,
                                min_unpaired=d.min_unpaired)
  except ValueError as e:
    raise ValueError(f"config.data (test_size={d.test_size}, val_size={d.val_size}) on {d.cache}: {e}") from None
  extra_x = tuple(_open(p, "data.extra_unpaired_images", True).image_emb for p in d.extra_unpaired_images)
  extra_y = tuple(_open(p, "data.extra_unpaired_text", True).text_emb for p in d.extra_unpaired_text)
  return Data(cache.image_emb, cache.text_emb, proto, d.cache, extra_x, extra_y)


def _rows(a, idx) -> np.ndarray:
  return np.asarray(a[np.asarray(idx)], np.float32)


def test_set(data: Data) -> evaluators.EvalSet:
  """The protocol's held-out test images with all their captions."""
  held = data.proto.held_out("test")
  if len(held["image_rows"]) < 2:
    raise ValueError(f"config.data: the test set has {len(held['image_rows'])} images (at least 2 are needed)")
  return evaluators.EvalSet(_rows(data.image_emb, held["image_rows"]), _rows(data.text_emb, held["caption_rows"]),
                            i2t=held["positives"], t2i=held["owner"], first=held["first"])


def validation_pairs(data: Data) -> aligners.AlignData:
  """The held-out validation images with their first captions (for methods that choose a hyper-parameter)."""
  held = data.proto.held_out("val")
  return aligners.AlignData.create(pairs_x=_rows(data.image_emb, held["image_rows"]),
                                   pairs_y=_rows(data.text_emb, held["caption_rows"][held["first"]]),
                                   dx=data.image_emb.shape[1], dy=data.text_emb.shape[1])


def cell_data(data: Data, rows: dict, *, lazy: bool) -> aligners.AlignData:
  """One cell's pairs (in memory) and unpaired pools: arrays, or lazy :class:`Pool` s (``lazy``, or when extra
  unpaired caches are appended)."""
  x, y = data.image_emb, data.text_emb
  if lazy or data.extra_x or data.extra_y:
    ux = Pool.of(x, rows["unp_x"])
    uy = Pool.of(y, rows["unp_y"])
    for a in data.extra_x:
      ux += Pool.of(a)
    for a in data.extra_y:
      uy += Pool.of(a)
  else:
    ux, uy = x[rows["unp_x"]], y[rows["unp_y"]]
  return aligners.AlignData.create(x=ux, y=uy, pairs_x=_rows(x, rows["pair_x"]), pairs_y=_rows(y, rows["pair_y"]))


# ================================================================================================================
# Geometry scores of the two spaces on a small paired sample (before any fit)
# ================================================================================================================
def geometry_scores(data: Data, cfg, workdir: str, *, data_key: dict) -> dict:
  """``{"settings", "scores"}`` on the first ``eval.geometry_pairs`` pairs of seed 0 (at most ``p_max``), written
  once to ``geometry.json`` and read back by a rerun with the same settings."""
  e = cfg.eval
  n = min(int(e.geometry_pairs), data.proto.p_max)
  settings = wd.canonical({"metrics": list(e.geometry), "pairs": n, "n_perm": int(e.geometry_perms), "seed": 0,
                           "base_seed": cfg.seed, "data_key": wd.settings_key(data_key)})
  path = os.path.join(workdir, "geometry.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get("settings") == settings:
      return saved
  if not e.geometry or n < 4:
    return {"settings": settings, "scores": {}}
  rows = data.proto.draw(0, n)
  out = geometry_lib.space_scores(_rows(data.image_emb, rows["pair_x"]), _rows(data.text_emb, rows["pair_y"]),
                                  metrics=e.geometry, n_perm=e.geometry_perms, seed=cfg.seed)
  result = {"settings": settings, "scores": out}
  if wd.is_primary():
    sio.write_json(path, result)
  return result


# ================================================================================================================
# Keys: what determines a cell's numbers
# ================================================================================================================
def data_settings(cfg) -> dict:
  """The data and protocol part of every key: the cache's fingerprint (or the files') and the protocol options
  that read them (file mode uses only ``split_seed`` and ``max_unpaired``); extra unpaired caches."""
  d = cfg.data
  paths = file_paths(cfg)
  if paths:
    return {"files": wd.files_fingerprint(paths), "split_seed": d.split_seed, "max_unpaired": d.max_unpaired}
  out = {"cache": wd.cache_fingerprint(d.cache), "split": d.split, "split_seed": d.split_seed,
         "test_size": d.test_size, "val_size": d.val_size, "unpaired_mode": d.unpaired_mode,
         "max_unpaired": d.max_unpaired, "min_unpaired": d.min_unpaired}
  if d.extra_unpaired_text or d.extra_unpaired_images:  # absent from the keys of runs without them
    out["extra_unpaired_text"] = [wd.cache_fingerprint(p) for p in d.extra_unpaired_text]
    out["extra_unpaired_images"] = [wd.cache_fingerprint(p) for p in d.extra_unpaired_images]
  return out


def eval_settings(cfg) -> dict:
  """The evaluation part of every key: each evaluator's options and data (a cache's fingerprint)."""
  return evaluators.settings(cfg.evals, wd.cache_fingerprint)


def cell_settings(label: str, p: int, seed: int, cfg: ml_collections.ConfigDict, *, data: dict,
                  evaluation: dict) -> sweep.CellSettings:
  """Everything that determines a cell's numbers: the method with its resolved options (registry defaults, the
  config's over them: :func:`sotalign_jax.aligners.resolved_options`), the data and protocol, the base seed, the
  seed and p (``"all"`` for an all-pairs method)."""
  method = method_of(label, cfg)
  spec = aligners.get(method)
  fit = {"method": method, "hparams": aligners.resolved_options(method, fit_kwargs(label, cfg, p)), "data": data,
         "base_seed": cfg.seed, "seed": int(seed), "p": "all" if spec.all_pairs else int(p)}
  variant = cfg.variants[label] if label in cfg.get("variants", {}) else {}
  if "select_from" in variant:
    fit["select_from"] = int(variant.select_from)
  return sweep.CellSettings(fit, evaluation)


def measurable(label: str, p: int, p_max: int, cfg) -> bool:
  """Whether the cell can produce a metric (the method gets at least its ``min_pairs`` pairs)."""
  spec = aligners.get(method_of(label, cfg))
  return (p_max if spec.all_pairs else p) >= spec.min_pairs


def needs_pairs_message(cfg, methods, ps, p_max: int) -> str:
  specs = {m: aligners.get(method_of(m, cfg)) for m in methods}
  need = ", ".join(f"{m} needs >= {s.min_pairs}" for m, s in specs.items())
  give = ("config.data.pairs_x and config.data.pairs_y (row-aligned pairs; file mode)" if file_paths(cfg) else
          f"config.n_pairs with a p of at least {min(s.min_pairs for s in specs.values())} (the data give "
          f"up to {p_max})")
  free = [m for m in aligners.ALIGNERS if not aligners.get(m).needs_pairs]
  return (f"no cell can produce a metric: every method of config.methods needs pairs ({need}) and the sweep gives "
          f"p ∈ {list(ps)} (at most {p_max} pairs in the data); give {give}, or add a method that runs without "
          f"pairs to config.methods ({', '.join(free) or 'none registered'})")


# ================================================================================================================
# One cell: fit, time, evaluate
# ================================================================================================================
def evaluate(alignment: aligners.Alignment, evals: dict, *, seed: int, transductive: bool = False
             ) -> tuple[dict, dict]:
  """``(metrics, per_query)`` of a fitted alignment under every evaluator. A transductive method (one matching of
  two equal-size sets) is evaluated only on square sets (``Evaluator.square``); elsewhere its metrics are NaN."""
  out, per_query = {}, {}
  for e in evals.values():
    if transductive and not e.square:
      out.update({k: float("nan") for k in e.metrics})
      continue
    m, pq = e.run(alignment, seed=seed)
    out.update(m)
    per_query.update(pq)
  return out, per_query


def run_cell(label: str, p: int, seed: int, *, settings: sweep.CellSettings, data: Data, evals: dict, val, cfg,
             workdir: str, writer: wd.MetricWriter):
  """``(record, per_query or None)`` of one (method, p, seed) cell. Trained methods train on the shared checkpointed
  loop in ``runs/<method>/<cell>__<fit key>`` (a killed cell resumes from its last checkpoint; a cell with other
  settings never does); every fitted alignment is saved in its run directory (``alignment/``)."""
  spec = aligners.get(method_of(label, cfg))
  proto = data.proto
  record = {"method": label, "p": int(p), "seed": int(seed), "status": "ok", "key": settings.key,
            "settings": settings.to_json()}
  if not measurable(label, p, proto.p_max, cfg):
    return {**record, "status": sweep.NEEDS_PAIRS, "reason": f"needs >= {spec.min_pairs} pairs"}, None
  rows = proto.all_pairs() if spec.all_pairs else proto.draw(seed, pairs_drawn(label, p, proto.p_max, cfg))
  fit_data = cell_data(data, rows, lazy=cfg.data.mmap)
  record["sizes"] = {"pairs": len(rows["pair_x"]), "unpaired_x": len(fit_data.x), "unpaired_y": len(fit_data.y)}
  p_key = 2**31 - 1 if spec.all_pairs else p  # the all-pairs data do not depend on p
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), seed), p_key)
  cell = f"{'all' if spec.all_pairs else f'p{p}'}_s{seed}"
  run_dir = wd.keyed_dir(os.path.join(workdir, "runs", label), cell, settings.fit_key)
  loop = train_lib.checkpointed_loop(run_dir, writer=writer, name=f"{label}/{cell}", log_every=cfg.log_every,
                                     ckpt_every=cfg.ckpt_every, mesh=train_lib.data_mesh())
  start = time.perf_counter()
  try:
    alignment = aligners.fit(spec.name, key, fit_data, loop=loop, mesh=train_lib.data_mesh(), val=val,
                             **fit_kwargs(label, cfg, p))
    jax.block_until_ready(jax.tree.leaves(alignment))
  except aligners.NeedsPairsError as e:
    return {**record, "status": sweep.NEEDS_PAIRS, "reason": str(e)}, None
  except Exception as e:
    raise RuntimeError(f"cell {label} p={p} seed={seed} failed: {type(e).__name__}: {e}") from e
  fit_seconds = time.perf_counter() - start
  save_alignment(run_dir, alignment)
  out, per_query = evaluate(alignment, evals, seed=seed, transductive=spec.transductive)
  record["metrics"] = {**out, "fit_seconds": fit_seconds}
  record["eval_seconds"] = time.perf_counter() - start - fit_seconds
  record["run_dir"] = os.path.relpath(run_dir, workdir)
  return record, per_query


def save_alignment(run_dir: str, alignment) -> None:
  """Saves the fitted alignment in ``run_dir/alignment`` (process 0), for the evaluate CLI."""
  if wd.is_primary():
    aligner_io.save(os.path.join(run_dir, "alignment"), alignment)


# ================================================================================================================
# Main
# ================================================================================================================
def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the experiment ``cfg`` in ``workdir`` (see the module docstring); returns what ``results.json`` holds."""
  # --- config and data, checked before anything is written (a user error leaves no workdir behind) -------------
  with cfg_lib.user_errors():
    validate(cfg)
    data = read_data(cfg)
    proto = data.proto
    ps, labels = resolve_n_pairs(cfg.n_pairs, proto.p_max)
    tests = test_set(data)
    data_key, evaluation = data_settings(cfg), eval_settings(cfg)
    names = metric_names(cfg)
  seeds = list(range(cfg.seeds))
  methods = list(cfg.methods)
  if not any(measurable(m, p, proto.p_max, cfg) for m in methods for p in ps):
    raise cfg_lib.UserError(needs_pairs_message(cfg, methods, ps, proto.p_max))
  t_start = time.time()
  wd.save_config(workdir, cfg)
  evals = evaluators.from_config(cfg.evals, {"test": tests})
  val = validation_pairs(data)
  n_train = int((proto.roles == "train").sum())
  n_val = len(val.pairs_x)
  active = [n for n, e in evals.items() if getattr(e, "data", True) is not None]
  print(f"{cfg.title} on {data.source}: {len(tests.x)} test images / {len(tests.y)} captions, {n_val} validation "
        f"images, {n_train} training images; p ∈ {[labels[p] for p in ps]} (max = {proto.p_max}), {len(seeds)} "
        f"seeds, unpaired mode {cfg.data.unpaired_mode}; evaluators: {', '.join(active)}")

  geometry = geometry_scores(data, cfg, workdir, data_key=data_key)
  if geometry["scores"]:
    print(geometry_lib.markdown(geometry), end="")
  store = sweep.CellStore(workdir)
  writer = wd.MetricWriter(workdir)
  settings = lambda m, p, s: cell_settings(m, p, s, cfg, data=data_key, evaluation=evaluation)  # noqa: E731
  grid = [(m, p, s) for s in seeds for p in ps for m in methods]
  keyed = {c: settings(*c) for c in grid}
  cells = {c: store.load(*c, key=keyed[c].key) for c in grid}
  todo = [c for c in grid if cells[c] is None]
  stale = sum(bool(store.others(*c, key=keyed[c].key)) for c in todo)
  print(f"{len(grid) - len(todo)} of {len(grid)} cells done before with these settings, {len(todo)} to run" +
        (f" ({stale} of them stored under other settings, kept but not used)" if stale else ""))
  upper = {}  # an all-pairs method sees the same data at every p: fitted once per seed
  for label, p, seed in wd.progress(todo, desc="cells", total=len(todo)):
    all_pairs = aligners.get(method_of(label, cfg)).all_pairs
    if all_pairs and (label, seed) in upper:
      record, per_query = upper[label, seed]
      record = {**record, "p": int(p)}
    else:
      record, per_query = run_cell(label, p, seed, settings=keyed[label, p, seed], data=data, evals=evals, val=val,
                                   cfg=cfg, workdir=workdir, writer=writer)
      if all_pairs:
        upper[label, seed] = record, per_query
    if wd.is_primary():
      store.save(record, per_query)
    if record["status"] == "ok":
      writer.write(p, record["metrics"], prefix=f"cell/{label}/seed{seed}/")
    cells[label, p, seed] = sweep.to_json(record)
  wd.sync("engine:cells")  # every host reads process 0's cell files from here on (per-query values for the statistics)
  if not any(cells[c]["status"] == "ok" for c in grid):
    writer.close()
    reasons = sorted({cells[c].get("reason", "") for c in grid})
    raise cfg_lib.UserError(needs_pairs_message(cfg, methods, ps, proto.p_max) + f" ({'; '.join(reasons)})")

  # --- the table's methods: config.methods, then every other method stored complete under the same settings ----
  extra_methods, partial = [], {}
  for m in table_methods(cfg):
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
  summary = sweep.summarise(cells, methods=shown, ps=ps, seeds=seeds, confidence=cfg.eval.confidence, metrics=names)
  ranked_by = ("i2t_r1", "t2i_r1") if {"i2t_r1", "t2i_r1"} <= set(names) else tuple(cfg.eval.compare_metrics[:1])
  reference = cfg.reference or sweep.choose_reference(
      summary, methods=shown, trained={m: aligners.get(method_of(m, cfg)).trained for m in shown},
      metrics=ranked_by or names[:1])
  comparison = sweep.compare(store, cells, summary, reference=reference, methods=shown, ps=ps, seeds=seeds,
                             metrics=cfg.eval.compare_metrics, n_boot=cfg.eval.n_boot,
                             confidence=cfg.eval.confidence,
                             not_competing=[m for m in shown if aligners.get(method_of(m, cfg)).all_pairs])
  for m in shown:
    for p in ps:
      if summary[m][p]:
        writer.write(p, {k: v["mean"] for k, v in summary[m][p].items() if v}, prefix=f"summary/{m}/")
  writer.close()

  # --- outputs -------------------------------------------------------------------------------------------------
  sizes = {labels[p]: next((cells[c]["sizes"] for c in grid if c[1] == p and "sizes" in cells[c]), None)
           for p in ps}
  header = (f"## {cfg.title}: {data.source}\n\n{len(tests.x)} test images ({len(tests.y)} captions), {n_val} "
            f"held-out validation images, {n_train} training images; nested pairs per seed, unpaired pools from the "
            f"rest ({cfg.data.unpaired_mode}); {len(seeds)} seeds; reference: {reference}.\n\n"
            f"{geometry_lib.markdown(geometry)}")
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
                   "n_test_images": len(tests.x), "n_test_captions": len(tests.y),
                   "n_val_images": n_val, "n_train_images": n_train, "p_max": proto.p_max,
                   "unpaired_mode": cfg.data.unpaired_mode, "max_unpaired": cfg.data.max_unpaired,
                   "sizes_by_p": sizes, "evaluators": active},
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
  sweep.plot(summary, methods=shown, ps=ps, labels=labels, path=os.path.join(workdir, "sweep.png"),
             metrics=cfg.eval.plot_metrics)
  print("\n" + md)
  print(f"{len(todo)} cells run in {seconds:.1f} s; results in {workdir}/results.{{json,md}}, plot sweep.png")
  return extra


# ================================================================================================================
# The one config schema every preset fills (configs/proj/<name>/config.py)
# ================================================================================================================
FASHION_MNIST = "data_cache/fashion_mnist__efficientnet-lite0__all-MiniLM-L6-v2"
TUXPAINT = "data_cache/tuxpaint__efficientnet-lite0__all-MiniLM-L6-v2"


def hparams_of(spec):
  """A method's options with their registry defaults, as overridable config fields (scalars and tuples of
  scalars; options whose default is ``None`` are left out and keep it): an ``ml_collections.ConfigDict``."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  scalar = (bool, int, float, str)
  return ml_collections.ConfigDict({k: v for k, v in spec.defaults.items() if k not in aligners.INJECTED and (
      isinstance(v, scalar) or (isinstance(v, tuple) and all(isinstance(x, scalar) for x in v)))})


def base_config(*, methods: tuple, n_pairs: tuple, seeds: int, title: str = "Alignment benchmark"):
  """Every key of the engine with its default; a preset changes what it needs."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.title = title
  c.seed = 0                     # base of every PRNG key (key = fold_in(fold_in(key(seed), s), p))
  c.seeds = seeds                # seeds 0 .. seeds-1: each draws its own nested pairs, shared by every method
  c.methods = methods            # registered aligners or config.variants labels, in table order
  c.n_pairs = n_pairs            # the sweep over p; -1 = max, values above max are capped to it
  c.reference = ""               # differences are method − reference; "": sotalign if run, else best closed form

  # --- data: any embedding cache written by `python -m sotalign_jax.cli.embed` (sotalign_jax/data/protocol.py) ---
  c.data = ml_collections.ConfigDict()
  c.data.cache = "data_cache/openclipart__efficientnet-lite0__all-MiniLM-L6-v2"
  c.data.split = "hash"          # hash: test/val = lowest sha256(split_seed:image_id); cache: the cache's splits
  c.data.split_seed = "benchmark"
  c.data.test_size = 1000        # held-out test images, with all their captions (hash mode)
  c.data.val_size = 500          # held-out validation images (hash mode), passed to methods that take `val`
  c.data.unpaired_mode = "disjoint"  # disjoint: unpaired images and texts from disjoint halves | shared
  c.data.max_unpaired = -1       # cap on each unpaired pool (-1: all the remainder gives)
  c.data.min_unpaired = 100      # p = max leaves this many images in each unpaired half
  c.data.mmap = False            # read the cache memory-mapped; unpaired pools are lazy row sources
  c.data.extra_unpaired_text = ()    # caches of extra unpaired captions (same text encoder), added to every pool
  c.data.extra_unpaired_images = ()  # caches of extra unpaired images (same image encoder)
  # --- or your own float32 .npy files (sotalign_jax/data/files.py); any one set switches to file mode, where test /
  # val are these files, the pairs at p the first p rows of a per-seed order of the pair files, and the unpaired
  # pools the unpaired files (capped by max_unpaired); data.cache, split, test_size and val_size are then unused
  for k in files_lib.FILE_KEYS:
    c.data[k] = ""

  # --- evaluators (sotalign_jax/evaluators): name -> options; "cache": "" switches one off ----------------------
  c.evals = ml_collections.ConfigDict()
  c.evals.retrieval = {"type": "retrieval"}
  c.evals.matching = {"type": "matching"}
  c.evals.fashion_mnist = {"type": "zeroshot", "cache": FASHION_MNIST, "metric": "zeroshot_fashion_mnist"}
  c.evals.tuxpaint = {"type": "retrieval", "cache": TUXPAINT, "prefix": "tuxpaint_", "ks": (1,),
                      "directions": ("i2t",), "ranks": False}

  # --- statistics and tables -------------------------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.table_metrics = ("i2t_r1", "t2i_r1", "i2t_r10", "t2i_r10", "foscttm", "i2t_mean_rank", "t2i_median_rank",
                          "matching_acc", "zeroshot_fashion_mnist", "tuxpaint_i2t_r1")
  c.eval.compare_metrics = ("i2t_r1", "t2i_r1", "foscttm", "matching_acc")  # paired differences (per-query ones)
  c.eval.plot_metrics = ("i2t_r1", "t2i_r1", "foscttm")
  c.eval.n_boot = 1000           # bootstrap replicates of each paired difference
  c.eval.geometry = ("linear_cka", "mutual_knn", "tsi", "qsi")  # scores of the spaces before any fit
  c.eval.geometry_pairs = 1000   # on this many training pairs of seed 0 (capped by p_max; 0: no geometry scores)
  c.eval.geometry_perms = 200    # permutations of each score's null
  c.eval.confidence = 0.95

  # --- per-method options (registry defaults), and variants: label -> dict(method=..., **options) --------------
  c.hparams = ml_collections.ConfigDict({m: hparams_of(aligners.ALIGNERS[m]) for m in aligners.ALIGNERS})
  c.variants = ml_collections.ConfigDict()
  c.log_every = 100              # trained methods: metrics.jsonl / TensorBoard every this many steps
  c.ckpt_every = 200             # and an Orbax checkpoint (a killed cell resumes from it)
  return c
