r"""Training-free matching of a frozen image encoder and a frozen text encoder from a few base pairs.

  python experiments/match.py --config configs/match.py:quick --workdir workdirs/match_quick

Maniparambil et al. (CVPR 2024), "Do Vision and Language Encoders Represent the World Similarly?". Given ``m``
paired base samples ``(B_x, B_y)`` and ``q`` query images with their ``q`` captions in an unknown order, recover
the pairing with nothing trained:

* ``qap_*`` — seeded graph matching of the centred kernels of ``[B; queries]`` (:func:`matching.qap_match`);
* ``localcka_*`` — local CKA :math:`s_{ij} = \mathrm{CKA}([B_x; x_i], [B_y; y_j])`, then linear assignment;
* ``linreg*`` — cosine after a ridge map fitted on the base pairs; ``relrep*`` — relative representations;

each with ``none`` / ``stretch`` (per-feature standardisation of base + queries) / ``cluster`` (base pairs
nearest to k-means centroids of the base pool instead of random ones) / ``both``.

Reads top to bottom: config → image/caption pools (distinct images, one caption each; base pool and query pool
from disjoint splits) → cells ``(method, n_base, n_query, trial)`` of the main point and the two sweeps through it
→ optional cross-domain cells (queries from another cache, e.g. tuxpaint) and zero-shot cells (fashion-mnist
images against class prompts) → ``results.json`` + markdown tables + plot.

Metrics: ``match_acc`` (fraction of images matched to their own caption by the one-to-one matching; chance
``1/q``) and image→caption retrieval ``r1``/``r5``/``r10`` over the ``q`` query captions. QAP returns a matching,
not a ranking: its ``r1`` is its ``match_acc`` and ``r5``/``r10`` are ``None``. ``seconds`` is the time of one
cell (the minimum over trials: the first trial of each shape also compiles). Every other value is the mean over
``n_trials`` random draws of base and query sets (their ``std`` is in results.json).

For reference, the paper's COCO matching accuracy (their encoders, 320 base, 500 queries), QAP / local CKA:
none 48.8 / 48.5, stretch 57.3 / 56.7, cluster 56.2 / 55.1, both 65.5 / 63.3.

Devices: every device of the host is used. Each QAP cell's FAQ restarts are split over a 1-D ``("data",)`` mesh of
``jax.local_devices()`` (``config.qap.batch_size`` restarts per call, rounded down to a multiple of the device
count); restart ``i`` starts from the ``i``-th split of the cell's key whatever the batching, so 1 and 8 devices give
the same numbers. ``results.json`` records ``n_devices``. Launched on several hosts, each host computes every cell
(the work is small) and process 0 alone writes files.

A rerun with the same workdir resumes: every finished cell is saved atomically under ``done/`` and read back.
Every cell's randomness is derived from ``(seed, trial, sizes)`` alone, so a resumed run gives the same numbers.
Cells are named by method and sizes only: after changing any other setting, use a fresh workdir.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
from jax.sharding import Mesh
import numpy as np
from tqdm import tqdm

from sotalign_jax import matching, metrics
from sotalign_jax.data.cache import embed_command, load_cache, open_cache
from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import io as sio, workdir as wd

CONFIG = cfg_lib.experiment_config(__file__)  # configs/match.py: get_config, validate
METRICS = ("match_acc", "r1", "r5", "r10")
ZEROSHOT_FAMILIES = ("localcka", "linreg", "relrep")  # QAP needs as many captions as images: no zero-shot


class Method(NamedTuple):
  family: str     # qap | localcka | linreg | relrep
  stretch: bool
  cluster: bool


def parse_method(name: str) -> Method:
  family, _, variant = name.partition("_")
  variant = variant or "none"
  return Method(family, variant in ("stretch", "both"), variant in ("cluster", "both"))


# ================================================================================================================
# Devices
# ================================================================================================================
def qap_batch_size(n_init: int, batch_size: int, n_devices: int) -> int:
  """Restarts per FAQ call when each call's restarts are split over ``n_devices`` devices.

  :func:`sotalign_jax.qap.faq` needs the batch to be a multiple of the device count; this rounds ``batch_size``
  (at most ``n_init``) down to one (never above the memory the config asked for), or up to ``n_devices`` when it
  is smaller (fewer restarts than devices: faq pads the one batch and drops the padding). Which restarts run does
  not depend on it (restart ``i`` always starts from the ``i``-th split of the cell's key; the padding of a last,
  short batch is dropped), so any device count gives the same matching.

  Args:
    n_init: FAQ restarts of one cell (``config.qap.n_init``).
    batch_size: restarts per call asked for (``config.qap.batch_size``).
    n_devices: devices the restarts are split over.

  Returns:
    The batch size to pass to FAQ (``batch_size`` itself for one device).
  """
  if n_devices == 1:
    return batch_size
  b = min(batch_size, n_init)
  return b - b % n_devices or n_devices


# ================================================================================================================
# Data: distinct images with one caption each
# ================================================================================================================
def optional_cache(path: str, what: str, dataset: str):
  """The cache at ``path``, or ``None`` (with a printed note saying how to build it) when it is missing."""
  if not path:
    return None
  if not os.path.exists(os.path.join(path, "manifest.json")):
    print(f"note: skipping the {what} rows: no complete cache at {path}. Build it with\n  "
          f"{embed_command(path, dataset)}\nor set --config.{what}.cache=<dir> ('' turns this off).")
    return None
  return load_cache(path)


def image_caption_pool(cache, splits: tuple[str, ...], what: str) -> tuple[np.ndarray, np.ndarray]:
  """Distinct images of ``splits`` (``()``: all) and the first caption of each: ``x [n, dx]``, ``y [n, dy]``."""
  if cache.image_emb is None:
    raise ValueError(f"{what}: the cache is text-only; matching needs images")
  imgs, caps = cache.first_captions(splits or None)
  if len(imgs) == 0:
    raise ValueError(f"{what}: the cache has no captions in splits {splits}")
  return np.asarray(cache.image_emb[imgs], np.float32), np.asarray(cache.text_emb[caps], np.float32)


def check_same_encoders(main, other, what: str):
  """Cross-cache use needs the same two encoders: compares the manifests' encoder names and the dimensions."""
  for side in ("image_encoder", "text_encoder"):
    a, b = (c.manifest.get(side) for c in (main, other))
    if isinstance(a, dict) and isinstance(b, dict) and a.get("name") != b.get("name"):
      raise ValueError(f"config.{what}.cache uses {side} {b.get('name')!r} but config.data.cache uses "
                       f"{a.get('name')!r}: embed both with the same encoders")
  if other.image_emb is not None and other.image_emb.shape[1] != main.image_emb.shape[1]:
    raise ValueError(f"config.{what}.cache has image dimension {other.image_emb.shape[1]}, "
                     f"config.data.cache {main.image_emb.shape[1]}: embed both with the same image encoder")
  if other.text_emb.shape[1] != main.text_emb.shape[1]:
    raise ValueError(f"config.{what}.cache has text dimension {other.text_emb.shape[1]}, "
                     f"config.data.cache {main.text_emb.shape[1]}: embed both with the same text encoder")


def capped(n: int, cap: int, seed: int, tag: int) -> np.ndarray:
  """Sorted indices of a fixed random subset of ``range(n)`` of size ``cap`` (all of them for ``cap=-1``)."""
  if cap < 0 or cap >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng([seed, tag]).choice(n, cap, replace=False))


# ================================================================================================================
# Draws: every draw depends only on (seed, trial, size), so cells are independent and resumable
# ================================================================================================================
def draw_queries(pool_x, pool_y, q: int, *, seed: int, trial: int, what: str):
  """``q`` query images, their captions in a random order, and ``truth[i]`` = row of image ``i``'s caption.

  Query sets of one trial are nested (the first ``q`` of one permutation of the pool).
  """
  if q > len(pool_x):
    raise ValueError(f"{what}={q} queries but the query pool has only {len(pool_x)} images: lower it or add "
                     "splits to config.data.query_splits")
  idx = np.random.default_rng([seed, trial, 0]).permutation(len(pool_x))[:q]
  shuffle = np.random.default_rng([seed, trial, 1, q]).permutation(q)  # y row j is the caption of image shuffle[j]
  return pool_x[idx], pool_y[idx][shuffle], np.argsort(shuffle)


def draw_base(pool_x, pool_y, m: int, *, cluster: bool, cfg, trial: int, what: str) -> np.ndarray:
  """Indices of ``m`` base pairs: random (nested over ``m``), or the pool points nearest to k-means centroids."""
  if m > len(pool_x):
    raise ValueError(f"{what}={m} base pairs but the base pool has only {len(pool_x)} images: lower it or add "
                     "splits to config.data.base_splits")
  if not cluster:
    return np.random.default_rng([cfg.seed, trial, 2]).permutation(len(pool_x))[:m]
  feats = pool_x if cfg.cluster.space == "image" else pool_y
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), trial), m)
  return np.asarray(matching.kmeans_base_selection(feats, m, key=key, n_iter=cfg.cluster.n_iter))


def stretched(base, query):
  """:func:`matching.stretch` of ``[base; query]`` (one space), split back."""
  s = np.asarray(matching.stretch(np.concatenate([base, query])))
  return s[:len(base)], s[len(base):]


# ================================================================================================================
# Scoring
# ================================================================================================================
def score_fn(family: str, cfg) -> Callable[..., Any]:
  """``(x_base, y_base, x_query, y_query) -> [q_x, q_y]`` similarity of a score-based family."""
  if family == "localcka":
    return functools.partial(matching.local_cka_scores, kernel=cfg.local_cka.kernel)
  if family == "linreg":
    return functools.partial(matching.linreg_scores, lam=cfg.linreg.lam)
  if family == "relrep":
    return matching.relative_scores
  raise ValueError(f"no score function for method family {family!r}")


def evaluate(method: Method, xb, yb, xq, yq, truth, cfg, key, *, mesh: Mesh | None = None,
             batch_size: int | None = None) -> dict[str, float]:
  """Matching accuracy and retrieval of one method on one draw (``yq[truth[i]]`` is the caption of ``xq[i]``).

  QAP's restarts are split over ``mesh`` (``None``: one device), ``batch_size`` of them per call (default
  ``config.qap.batch_size``; see :func:`qap_batch_size`).
  """
  if method.stretch:
    xb, xq = stretched(xb, xq)
    yb, yq = stretched(yb, yq)
  if method.family == "qap":
    perm = matching.qap_match(xb, yb, xq, yq, kernel=cfg.qap.kernel, n_init=cfg.qap.n_init, key=key,
                              maxiter=cfg.qap.maxiter, tol=cfg.qap.tol, batch_size=batch_size or cfg.qap.batch_size,
                              lap=cfg.qap.lap, mesh=mesh)
    acc = float(np.mean(np.asarray(perm) == truth))
    return {"match_acc": acc, "r1": acc, "r5": float("nan"), "r10": float("nan")}
  scores = np.asarray(score_fn(method.family, cfg)(xb, yb, xq, yq))
  wd.check_finite(0, scores=scores)
  perm = matching.match_scores(scores)
  recall = metrics.retrieval_metrics(scores, positives=truth, ks=(1, 5, 10))  # image → caption, from the scores
  return {"match_acc": float(np.mean(perm == truth)), **{k: recall[k] for k in ("r1", "r5", "r10")}}


def zeroshot_accuracy(method: Method, xb, yb, images, prompts, labels, cfg) -> dict[str, float]:
  """Zero-shot classification: each image gets the class whose prompt scores highest against it."""
  if method.stretch:
    xb, images = stretched(xb, images)
    yb, prompts = stretched(yb, prompts)
  scores = np.asarray(score_fn(method.family, cfg)(xb, yb, images, prompts))
  return {"accuracy": float(np.mean(np.argmax(scores, 1) == labels))}


# ================================================================================================================
# Main
# ================================================================================================================
class Cell(NamedTuple):
  kind: str       # main | cross_domain | zeroshot
  method: str
  n_base: int
  n_query: int    # queries (main / cross-domain) or images (zero-shot)
  trial: int

  @property
  def name(self) -> str:
    prefix = "" if self.kind == "main" else f"{self.kind}_"
    return f"{prefix}{self.method}_b{self.n_base}_q{self.n_query}_t{self.trial}"


def aggregate(results: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
  """Mean and standard deviation over trials of every metric (NaN stays NaN); ``seconds`` is the minimum, as the
  first trial of each shape also pays for JIT compilation."""
  keys = list(results[0])
  vals = {k: np.array([r[k] for r in results], np.float64) for k in keys}
  mean = {k: float(v.min() if k == "seconds" else v.mean()) for k, v in vals.items()}
  return mean, {k: float(v.std()) for k, v in vals.items() if k != "seconds"}


def run(cfg, workdir: str) -> dict:
  CONFIG.validate(cfg)
  methods = cfg.methods
  # data parallelism: each cell's FAQ restarts are split over every visible device (the other methods are a few
  # small matrix products per cell and run on the default device)
  devices = jax.local_devices()
  mesh = Mesh(np.array(devices), ("data",)) if len(devices) > 1 else None
  uses_qap = any(parse_method(m).family == "qap" for m in methods)
  batch_size = qap_batch_size(cfg.qap.n_init, cfg.qap.batch_size, len(devices)) if uses_qap else None
  wd.save_config(workdir, cfg)
  t_start = time.time()

  # --- pools ---------------------------------------------------------------------------------------------------
  cache = open_cache(cfg.data.cache, key="data.cache", dataset="openclipart")
  base_x, base_y = image_caption_pool(cache, cfg.data.base_splits, "config.data.base_splits")
  keep = capped(len(base_x), cfg.data.max_base_pool, cfg.seed, 3)
  base_x, base_y = base_x[keep], base_y[keep]
  query_x, query_y = image_caption_pool(cache, cfg.data.query_splits, "config.data.query_splits")
  split = f"; FAQ restarts split over them, {batch_size} per call" if mesh is not None and uses_qap else ""
  print(f"devices: {len(devices)} x {devices[0].platform}{split}")
  print(f"base pool: {len(base_x)} images ({cfg.data.base_splits}); query pool: {len(query_x)} images "
        f"({cfg.data.query_splits}); data {cfg.data.cache}")

  base_sizes = sorted(set(cfg.n_base_sweep) | {cfg.n_base})
  query_sizes = sorted(set(cfg.n_query_sweep) | {cfg.n_query})
  for key, sizes, pool in (("n_base", base_sizes, base_x), ("n_query", query_sizes, query_x)):
    if max(sizes) > len(pool):
      raise ValueError(f"config.{key} / config.{key}_sweep ask for {max(sizes)} but the {key[2:]} pool has "
                       f"{len(pool)} images: lower them or change config.data.{key[2:]}_splits")
  trials = range(cfg.n_trials)
  cells = [Cell("main", meth, m, cfg.n_query, t) for meth in methods for m in base_sizes for t in trials]
  cells += [Cell("main", meth, cfg.n_base, q, t) for meth in methods for q in query_sizes if q != cfg.n_query
            for t in trials]

  # --- optional evaluations ------------------------------------------------------------------------------------
  xdomain = optional_cache(cfg.cross_domain.cache, "cross_domain", "tuxpaint")
  if xdomain is not None:
    check_same_encoders(cache, xdomain, "cross_domain")
    xd_x, xd_y = image_caption_pool(xdomain, cfg.cross_domain.splits, "config.cross_domain")
    n_xd = min(cfg.n_query, len(xd_x))
    if n_xd < cfg.n_query:
      print(f"note: cross-domain queries capped at the {n_xd} images of {cfg.cross_domain.cache}")
    cells += [Cell("cross_domain", meth, cfg.n_base, n_xd, t) for meth in methods for t in trials]
  zs = optional_cache(cfg.zeroshot.cache, "zeroshot", "fashion_mnist")
  if zs is not None:
    check_same_encoders(cache, zs, "zeroshot")
    zs_images, zs_prompts, zs_labels, zs_classes = zeroshot_set(zs, cfg)
    cells += [Cell("zeroshot", meth, cfg.n_base, len(zs_images), t) for meth in methods
              if parse_method(meth).family in ZEROSHOT_FAMILIES for t in trials]

  # --- cells ---------------------------------------------------------------------------------------------------
  writer = wd.MetricWriter(workdir)
  done_dir = os.path.join(workdir, "done")
  results: dict[Cell, dict[str, float]] = {}
  resumed = 0
  base_cache: dict[tuple[bool, int, int], np.ndarray] = {}  # (cluster, m, trial) -> base indices

  def base_of(cell: Cell, method: Method) -> np.ndarray:
    k = (method.cluster, cell.n_base, cell.trial)
    if k not in base_cache:
      base_cache[k] = draw_base(base_x, base_y, cell.n_base, cluster=method.cluster, cfg=cfg, trial=cell.trial,
                                what="config.n_base")
    return base_cache[k]

  for cell in tqdm(cells, desc="match cells", disable=None):
    path = os.path.join(done_dir, cell.name + ".json")
    if os.path.exists(path):
      with open(path) as fh:
        results[cell] = {k: (float("nan") if v is None else v) for k, v in json.load(fh).items()}
      resumed += 1
      continue
    method = parse_method(cell.method)
    bi = base_of(cell, method)
    xb, yb = base_x[bi], base_y[bi]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), cell.trial),
                                                cell.n_base), cell.n_query)
    t0 = time.time()
    if cell.kind == "zeroshot":
      res = zeroshot_accuracy(method, xb, yb, zs_images, zs_prompts, zs_labels, cfg)
    else:
      px, py = (query_x, query_y) if cell.kind == "main" else (xd_x, xd_y)
      xq, yq, truth = draw_queries(px, py, cell.n_query, seed=cfg.seed + (0 if cell.kind == "main" else 7919),
                                   trial=cell.trial, what="config.n_query")
      res = evaluate(method, xb, yb, xq, yq, truth, cfg, key, mesh=mesh, batch_size=batch_size)
    res["seconds"] = round(time.time() - t0, 3)
    if wd.is_primary():
      sio.write_json(path, nan_to_none(res))
    writer.write(cell.trial, res, prefix=f"eval/{cell.kind}/{cell.method}/b{cell.n_base}_q{cell.n_query}/")
    results[cell] = res
  writer.close()
  if resumed:
    print(f"resumed: {resumed} of {len(cells)} cells read back from {done_dir}")

  # --- tables --------------------------------------------------------------------------------------------------
  def table(kind: str, m: int, q: int) -> tuple[dict, dict]:
    mean, std = {}, {}
    for meth in methods:
      rs = [results[c] for c in cells if (c.kind, c.method, c.n_base, c.n_query) == (kind, meth, m, q)]
      if rs:
        mean[meth], std[meth] = aggregate(rs)
    return mean, std

  main_mean, main_std = table("main", cfg.n_base, cfg.n_query)
  by_base = {m: table("main", m, cfg.n_query)[0] for m in base_sizes}
  by_query = {q: table("main", cfg.n_base, q)[0] for q in query_sizes}
  extra: dict[str, Any] = {
      "n_base": cfg.n_base, "n_query": cfg.n_query, "n_trials": cfg.n_trials, "data": cfg.data.cache,
      "n_devices": len(devices),
      "chance_match_acc": 1.0 / cfg.n_query, "std": main_std,
      "by_n_base": {str(m): r for m, r in by_base.items()}, "by_n_query": {str(q): r for q, r in by_query.items()},
  }
  print(f"\nTraining-free matching ({cfg.n_base} base pairs, {cfg.n_query} queries, mean of {cfg.n_trials} trials, "
        f"chance {1 / cfg.n_query:.4f}; QAP gives a matching, so its r1 is its match_acc):\n")
  print(wd.markdown_table(main_mean))
  for name, sweep in (("n_base", by_base), ("n_query", by_query)):
    if len(sweep) > 1:
      print(f"\nmatch_acc by {name}:\n")
      print(wd.markdown_table({meth: {str(s): sweep[s][meth]["match_acc"] for s in sweep} for meth in methods}))
  if xdomain is not None:
    extra["cross_domain"], _ = table("cross_domain", cfg.n_base, n_xd)
    extra["cross_domain_queries"] = n_xd
    print(f"\nCross-domain: base pairs from {cfg.data.cache}, {n_xd} queries from {cfg.cross_domain.cache}:\n")
    print(wd.markdown_table(extra["cross_domain"]))
  if zs is not None:
    extra["zeroshot"], _ = table("zeroshot", cfg.n_base, len(zs_images))
    extra["zeroshot_images"] = len(zs_images)
    extra["zeroshot_chance"] = 1.0 / len(zs_classes)
    if extra["zeroshot"]:
      print(f"\nZero-shot classification of {len(zs_images)} images of {cfg.zeroshot.cache} against "
            f"{len(zs_classes)} class prompts (chance {1 / len(zs_classes):.4f}):\n")
      print(wd.markdown_table(extra["zeroshot"]))
  if len(base_sizes) > 1 or len(query_sizes) > 1:
    plot_sweeps(by_base, by_query, methods, os.path.join(workdir, "match_acc_vs_sizes.png"), cfg)
  extra["seconds"] = round(time.time() - t_start, 1)
  wd.write_results(workdir, main_mean, **nan_to_none(extra))
  return main_mean


def nan_to_none(obj):
  """NaN (a metric a method does not have, e.g. QAP's r5) as JSON null, in nested dicts."""
  if isinstance(obj, dict):
    return {k: nan_to_none(v) for k, v in obj.items()}
  return None if isinstance(obj, float) and np.isnan(obj) else obj


def zeroshot_set(cache, cfg):
  """Images (capped), one prompt per class (its first caption), the label index of each image, the classes."""
  splits = cfg.zeroshot.splits or None
  rows = [i for i, r in enumerate(cache.index) if splits is None or r["split"] in splits]
  labels_all = [r.get("label") for r in cache.index]
  if not rows or any(labels_all[r] is None for r in rows):
    raise ValueError(f"config.zeroshot.cache: need labelled images in split {cfg.zeroshot.splits!r}")
  classes = sorted({labels_all[r] for r in rows})
  prompt_rows = [labels_all.index(c) for c in classes]  # every caption of a class is that class' prompt
  imgs, caps = cache.first_captions(splits)
  labels = np.searchsorted(classes, [labels_all[r] for r in caps])
  keep = capped(len(imgs), cfg.zeroshot.max_images, cfg.seed, 5)
  return (np.asarray(cache.image_emb[imgs[keep]], np.float32), np.asarray(cache.text_emb[prompt_rows], np.float32),
          labels[keep], classes)


def plot_sweeps(by_base: dict, by_query: dict, methods: list[str], path: str, cfg):
  plt = wd.pyplot()
  panels = [(s, n, lab) for s, n, lab in ((by_base, "base pairs", f"{cfg.n_query} queries"),
                                          (by_query, "queries", f"{cfg.n_base} base pairs")) if len(s) > 1]
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
  for ax, (sweep, xlabel, fixed) in zip(axes[0], panels):
    sizes = sorted(sweep)
    for i, meth in enumerate(methods):
      ax.plot(sizes, [sweep[s][meth]["match_acc"] for s in sizes], marker="o", label=meth, color=plt.cm.tab20(i % 20),
              linestyle="-" if parse_method(meth).family in ("qap", "localcka") else ":")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("matching accuracy")
    ax.set_title(fixed)
  axes[0][0].legend(fontsize=6, ncol=2)
  fig.tight_layout()
  wd.save_figure(fig, path)


if __name__ == "__main__":
  cfg_lib.launch(run, "configs/match.py")
