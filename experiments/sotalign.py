r"""SOTAlign: semi-supervised alignment of a frozen image encoder and a frozen text encoder.

  python experiments/sotalign.py --config configs/sotalign.py:demo --workdir workdirs/sotalign_demo

  python experiments/sotalign.py --config configs/sotalign.py:demo --workdir workdirs/sotalign_files \
      --config.data.pairs_x=px.npy --config.data.pairs_y=py.npy \
      --config.data.unpaired_x=ux.npy --config.data.unpaired_y=uy.npy \
      --config.data.val_x=vx.npy --config.data.val_y=vy.npy --config.data.test_x=tx.npy --config.data.test_y=ty.npy

Reads top to bottom: config (``configs/sotalign.py``: ``get_config``, ``validate``) → data pools → per method
``aligners.fit`` through the registry (:mod:`sotalign_jax.aligners`; trained methods on the shared checkpointed loop,
:func:`sotalign_jax.runtime.train.checkpointed_loop`) → evaluation → ``results.json`` + markdown table + plot.
Methods are registry names: ``cca``, ``ridge``, ``procrustes`` (closed form, pairs only), ``sail`` (SigLIP on the
pairs), ``sail_semi``, ``structure``, ``pseudo_label``, ``nnclr`` (semi-supervised baselines), ``sotalign``
(SigLIP + α·KLOT on unpaired data), ``sotalign_paper`` (the paper's recipe) and ``upper_bound`` (SigLIP on every
training pair). For many seeds and intervals use ``experiments/benchmark.py``.

**Data.** From an embedding cache (``data.cache``, the default), or, when any ``data.<key>`` of
:data:`sotalign_jax.data.files.FILE_KEYS` is set, from embedding *files* (float32 ``.npy``, memory-mapped, checked
by :func:`sotalign_jax.data.files.open_embedding_files`): the first ``data.n_pairs`` rows of the row-aligned
``pairs_x`` / ``pairs_y`` are the pairs (-1: every row), ``unpaired_x`` / ``unpaired_y`` the unpaired pools
(``data.max_unpaired`` caps them as in cache mode), ``test_x`` / ``test_y`` the evaluation pairs (image ``i`` ↔
caption ``i``, one positive each) and ``val_x`` / ``val_y`` the validation pairs (``eval.split="val"`` evaluates on
them). In file mode ``data.cache`` is not read, ``upper_bound`` trains on every row of the pair files (the unpaired
files have no pairing to give it), and the Tux Paint / Fashion-MNIST evaluations are skipped (their caches hold the
project's encoders, not the files').

Data-parallel over all devices: the pools are row-sharded over a 1-D mesh (:func:`distributed.shard_rows`), the
batches too. On several hosts each reads from the memory-mapped cache only the pool rows its devices hold, and
process 0 alone writes files (README, Multi-device and multi-host).

**Reruns: results are keyed by their settings.** Each (method, n_pairs) result is keyed by the hash of everything
that determines it (:func:`cell_settings`): the method's resolved options (registry defaults with the shared keys of
:data:`CONFIG_KEYS` and its own section ``config.<method>`` over them), the data (fingerprints of the cache and
extra caches, or of the files: manifest, sizes and content hashes, never paths), ``data.max_unpaired``,
``n_pairs``, ``config.seed``, and the evaluation split and caches. It is stored as
``done/<method>/p<n_pairs>_s<seed>__<key12>.json`` (:class:`sotalign_jax.runtime.sweep.CellStore`, the benchmark's
cell store). A rerun in the same workdir reuses a result only when nothing that determines it changed (it says
"stored" beside the number) and computes it anew otherwise. A trained method checkpoints in
``runs/<method>_n<n_pairs>__<key12>`` (keyed by its fit settings): an interrupted run rerun with the same settings
resumes from its latest checkpoint (resume order: workdir checkpoint > scratch) and, because every step's
randomness is ``fold_in(seed, step)``, reaches the same final metrics as an uninterrupted run; rerun with a changed
setting (say ``--config.sotalign.alpha``) it starts at step 0 in a new directory and one line names the old one.

**What the tables show.** ``results.json`` / ``results.md`` (and the n_pairs sweep's table and plot) show every
method of ``config.methods`` computed under the current settings, followed by every other method of the config that
is stored in the workdir for every n_pairs under the same settings: a rerun with fewer methods keeps the full table,
a rerun with changed settings shows only results computed with them. ``results.json`` gives each result's ``key``
and resolved ``settings`` (``cells``), ``methods_run`` and ``methods_from_store``.

**User errors** (an unknown key, a bad value, a missing cache or file, too few pairs for a method) print one line
``error: …`` and exit with code 2 before the workdir is created.
"""

from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax import aligners, metrics
from sotalign_jax.data.cache import open_cache
from sotalign_jax.data.files import FILE_KEYS, open_embedding_files
from sotalign_jax.data.splits import stable_uniform
from sotalign_jax.nn.heads import linear_params, save_heads
from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import distributed, io as sio, sweep, train as train_lib, workdir as wd

CONFIG = cfg_lib.experiment_config(__file__)  # configs/sotalign.py: get_config, validate
TRAIN_SPLITS = ("paired", "unpaired")


# ================================================================================================================
# Data: pools of pairs, unpaired images, unpaired texts, and evaluation sets, from embedding caches or files
# ================================================================================================================
def file_mode(cfg) -> bool:
  """Whether the data are embedding files (any ``config.data.<file key>`` set) rather than ``config.data.cache``."""
  return any(cfg.data[k] for k in FILE_KEYS)


def read_cache(path: str, key: str):
  """The cache that ``config.<key>`` names, memory-mapped (rows are read only when a pool or eval set takes them),
  after a NaN/Inf scan split over hosts."""
  return open_cache(path, key=key, mmap=True, check_values=True)


class Pool(NamedTuple):
  """Rows ``idx`` of each array of ``parts = ((array, idx), ...)``, concatenated, read only on demand.

  The arrays are memory-mapped caches, so a host that reads one block of a pool (:func:`distributed.shard_rows`)
  never loads the rest.
  """
  parts: tuple

  @classmethod
  def of(cls, array, idx=None) -> "Pool":
    return cls(((array, np.arange(len(array)) if idx is None else np.asarray(idx, np.int64)),))

  def __len__(self) -> int:
    return sum(len(idx) for _, idx in self.parts)

  def __add__(self, other: "Pool") -> "Pool":
    return Pool(self.parts + other.parts)

  def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``[start, stop)`` of the concatenation as a float32 ``[stop - start, d]`` array."""
    stop = len(self) if stop is None else stop
    out, offset = [], 0
    for array, idx in self.parts:
      lo, hi = max(start - offset, 0), min(stop - offset, len(idx))
      if lo < hi:
        out.append(np.asarray(array[idx[lo:hi]], np.float32))
      offset += len(idx)
    return np.concatenate(out)

  @property
  def shape(self) -> tuple[int, int]:
    return (len(self), int(self.parts[0][0].shape[1]))

  def __getitem__(self, rows: slice) -> np.ndarray:
    """Rows ``[start, stop)`` (a slice with step 1): a pool is a lazy row source of ``aligners.AlignData``."""
    if not isinstance(rows, slice) or rows.step not in (None, 1):
      raise TypeError("a Pool is read by contiguous slices, pool[start:stop]")
    start, stop, _ = rows.indices(len(self))
    return self.read(start, stop) if stop > start else np.zeros((0, self.shape[1]), np.float32)

  def subset(self, positions: np.ndarray) -> "Pool":
    """The rows at sorted ``positions`` of the concatenation."""
    parts, offset = [], 0
    for array, idx in self.parts:
      mine = positions[(positions >= offset) & (positions < offset + len(idx))] - offset
      parts.append((array, idx[mine]))
      offset += len(idx)
    return Pool(tuple(parts))


def make_pools(cache, cfg, n_pairs: int) -> dict[str, Pool]:
  """Pairs, unpaired images and unpaired texts from the training images (as :class:`Pool` s of cache rows)."""
  ids = np.array([r["image_id"] for r in cache.index])
  split = np.array([r["split"] for r in cache.index])
  img_of = np.array([r["image"] for r in cache.index])
  train_caps = np.where(np.isin(split, TRAIN_SPLITS))[0]
  # training images in a fixed hash order, the cache's 'paired' split first: the first n_pairs are the pairs
  train_imgs, first_cap = cache.first_captions(TRAIN_SPLITS)
  order = np.lexsort((stable_uniform(ids[first_cap].tolist(), seed="pairs"), split[first_cap] != "paired"))
  train_imgs, first_cap = train_imgs[order], first_cap[order]
  if n_pairs >= len(train_imgs):
    raise ValueError(f"config.data.n_pairs={n_pairs} must be smaller than the {len(train_imgs)} training images of "
                     f"{cfg.data.cache} (the rest form the unpaired pools)")
  paired_imgs, unpaired_imgs = train_imgs[:n_pairs], train_imgs[n_pairs:]
  unpaired_caps = train_caps[np.isin(img_of[train_caps], unpaired_imgs)]
  x, y = cache.image_emb, cache.text_emb
  pools = {
      "pair_x": Pool.of(x, paired_imgs), "pair_y": Pool.of(y, first_cap[:n_pairs]),
      "unp_x": Pool.of(x, unpaired_imgs), "unp_y": Pool.of(y, unpaired_caps),
      "all_x": Pool.of(x, img_of[train_caps]), "all_y": Pool.of(y, train_caps),  # upper bound: every pair
  }
  for path in cfg.data.extra_unpaired_text:
    pools["unp_y"] += Pool.of(read_cache(path, "data.extra_unpaired_text").text_emb)
  for path in cfg.data.extra_unpaired_images:
    pools["unp_x"] += Pool.of(read_cache(path, "data.extra_unpaired_images").image_emb)
  return cap_unpaired(pools, cfg)


def cap_unpaired(pools: dict[str, Pool], cfg) -> dict[str, Pool]:
  """Keeps ``config.data.max_unpaired`` random rows of each unpaired pool (seeded by ``config.seed``)."""
  if cfg.data.max_unpaired > 0:
    rng = np.random.default_rng(cfg.seed)
    for k in ("unp_x", "unp_y"):
      if len(pools[k]) > cfg.data.max_unpaired:
        pools[k] = pools[k].subset(np.sort(rng.choice(len(pools[k]), cfg.data.max_unpaired, replace=False)))
  for k in ("unp_x", "unp_y"):
    if len(pools[k]) == 0:
      raise ValueError(f"the unpaired pool {k} is empty: lower config.data.n_pairs or add extra unpaired data")
  return pools


def read_files(cfg):
  """The embedding files of ``config.data.<key>``, memory-mapped, after the checks of
  :func:`open_embedding_files` (the NaN/Inf scan split over hosts)."""
  return open_embedding_files({k: cfg.data[k] for k in FILE_KEYS}, scan_rows=distributed.host_shard)


def file_pools(files, cfg, n_pairs: int) -> dict[str, Pool]:
  """File mode: the first ``n_pairs`` rows of the pair files, the unpaired files whole (then capped); the upper
  bound's "every pair" is every row of the pair files."""
  if n_pairs > files.n_pairs:
    raise ValueError(f"config.data.n_pairs={n_pairs} exceeds the {files.n_pairs} rows of config.data.pairs_x "
                     f"({files.paths['pairs_x']}); lower it (-1: every row)")
  head = np.arange(n_pairs)
  pools = {
      "pair_x": Pool.of(files.pairs_x, head), "pair_y": Pool.of(files.pairs_y, head),
      "unp_x": Pool.of(files.unpaired_x), "unp_y": Pool.of(files.unpaired_y),
      "all_x": Pool.of(files.pairs_x), "all_y": Pool.of(files.pairs_y),
  }
  return cap_unpaired(pools, cfg)


def retrieval_set(cache, split: str) -> dict:
  """Images of ``split`` with their captions, and the positives for both directions."""
  caps = cache.caption_rows(split)
  if len(caps) == 0:
    raise ValueError(f"the cache has no captions in split {split!r}")
  img_rows = cache.caption_image_rows(split)
  imgs, owner = np.unique(img_rows, return_inverse=True)
  return {"x": np.asarray(cache.image_emb[imgs]), "y": np.asarray(cache.text_emb[caps]), "t2i": owner,
          "i2t": [np.where(owner == i)[0].tolist() for i in range(len(imgs))]}


def validation_pairs(cache) -> aligners.AlignData | None:
  """The cache's ``val`` images with their first captions, for methods that choose a hyperparameter (None if none)."""
  if not len(cache.caption_rows("val")):
    return None
  imgs, caps = cache.first_captions("val")
  return aligners.AlignData.create(pairs_x=np.asarray(cache.image_emb[imgs], np.float32),
                                   pairs_y=np.asarray(cache.text_emb[caps], np.float32))


def file_retrieval_set(x, y) -> dict:
  """Row-aligned evaluation files: image ``i`` ↔ caption ``i``, the only positive of each."""
  n = len(x)
  return {"x": np.asarray(x, np.float32), "y": np.asarray(y, np.float32), "t2i": np.arange(n),
          "i2t": [[i] for i in range(n)]}


def file_validation_pairs(files) -> aligners.AlignData | None:
  """The validation files as pairs, for methods that choose a hyperparameter (None if not given)."""
  if files.val_x is None:
    return None
  return aligners.AlignData.create(pairs_x=np.asarray(files.val_x, np.float32),
                                   pairs_y=np.asarray(files.val_y, np.float32))


def eval_sets(cache, cfg) -> dict:
  sets = {"main": retrieval_set(cache, cfg.eval.split)}
  if cfg.eval.tuxpaint_cache and os.path.exists(os.path.join(cfg.eval.tuxpaint_cache, "manifest.json")):
    sets["tuxpaint"] = retrieval_set(read_cache(cfg.eval.tuxpaint_cache, "eval.tuxpaint_cache"), None)
  if cfg.eval.fashion_mnist_cache and os.path.exists(os.path.join(cfg.eval.fashion_mnist_cache, "manifest.json")):
    fm = read_cache(cfg.eval.fashion_mnist_cache, "eval.fashion_mnist_cache")
    labels = np.array(fm.labels())
    classes = sorted(set(labels))
    prompt_row = [int(np.where(labels == c)[0][0]) for c in classes]  # every caption of a class is its prompt
    img = fm.caption_image_rows()
    sets["fashion"] = {"x": np.asarray(fm.image_emb[img]), "y": np.asarray(fm.text_emb[prompt_row]),
                       "labels": np.searchsorted(classes, labels)}
  return sets


class Data(NamedTuple):
  """What ``run`` needs of the data, from a cache or from files.

  Attributes:
    sets: evaluation sets (``"main"``, and ``"tuxpaint"`` / ``"fashion"`` when their caches exist).
    val: validation pairs for methods that choose a hyperparameter, or None.
    pools_at: ``n_pairs → pools`` (:func:`make_pools` / :func:`file_pools`).
    n_pairs: the main number of pairs (``config.data.n_pairs``; in file mode -1 resolved to the pair rows).
    record: where the data came from, for ``results.json``.
  """
  sets: dict
  val: aligners.AlignData | None
  pools_at: Callable[[int], dict]
  n_pairs: int
  record: dict


def read_data(cfg) -> Data:
  """The data of ``config.data``: the embedding files in file mode (:func:`file_mode`), else ``config.data.cache``."""
  if not file_mode(cfg):
    cache = read_cache(cfg.data.cache, "data.cache")
    return Data(eval_sets(cache, cfg), validation_pairs(cache), lambda n: make_pools(cache, cfg, n),
                cfg.data.n_pairs, {"cache": cfg.data.cache})
  files = read_files(cfg)
  split = cfg.eval.split
  print(f"file mode: {', '.join(f'{k} {r}x{d}' for k, (r, d) in files.sizes.items())} (config.data.cache and the "
        "Tux Paint / Fashion-MNIST evaluations are not used)")
  return Data({"main": file_retrieval_set(getattr(files, f"{split}_x"), getattr(files, f"{split}_y"))},
              file_validation_pairs(files), lambda n: file_pools(files, cfg, n),
              files.n_pairs if cfg.data.n_pairs == -1 else cfg.data.n_pairs,
              {"files": files.paths, "sizes": files.sizes})


def evaluate(embed_x, embed_y, sets: dict) -> dict[str, float]:
  out = {}
  main = sets["main"]
  zx, zy = np.asarray(embed_x(main["x"])), np.asarray(embed_y(main["y"]))
  for k, v in metrics.retrieval_recall(zx, zy, positives=main["i2t"]).items():
    out[f"i2t_{k}"] = v
  for k, v in metrics.retrieval_recall(zy, zx, positives=main["t2i"]).items():
    out[f"t2i_{k}"] = v
  out["zeroshot_fashion_mnist"] = float("nan")
  out["tuxpaint_i2t_r1"] = float("nan")
  if "fashion" in sets:
    s = sets["fashion"]
    out["zeroshot_fashion_mnist"] = metrics.zero_shot_accuracy(embed_x(s["x"]), embed_y(s["y"]), s["labels"])
  if "tuxpaint" in sets:
    s = sets["tuxpaint"]
    out["tuxpaint_i2t_r1"] = metrics.retrieval_recall(embed_x(s["x"]), embed_y(s["y"]), ks=(1,),
                                                      positives=s["i2t"])["r1"]
  return out


# ================================================================================================================
# Fit one method through the registry (sotalign_jax.aligners), on the shared checkpointed loop
# ================================================================================================================
CONFIG_KEYS = {  # registry option -> config key (the options every trained method shares, and the teachers')
    "steps": "steps", "optimizer": "optimizer", "lr": "lr", "weight_decay": "weight_decay",
    "warmup_steps": "warmup_steps", "batch_paired": "batch_paired", "batch_unpaired": "batch_unpaired",
    "head": "head.kind", "hidden": "head.hidden", "siglip_t": "siglip_t", "siglip_b": "siglip_b",
    "teacher": "teacher.name", "teacher_dim": "teacher.cca_dim", "teacher_reg": "teacher.cca_reg",
    "ridge_lam": "teacher.ridge_lam", "dim": "teacher.cca_dim", "reg": "teacher.cca_reg", "lam": "teacher.ridge_lam",
    "center": "preprocess.center", "normalize": "preprocess.normalize",
}


def method_hparams(method: str, cfg) -> dict:
  """The registry options of ``method``: the shared keys of :data:`CONFIG_KEYS` it takes (not for
  ``sotalign_paper``, whose recipe is its own), then its own section ``config.<method>`` if there is one."""
  spec = aligners.get(method)
  hp = {} if method == "sotalign_paper" else {
      k: cfg_lib.get_path(cfg, path) for k, path in CONFIG_KEYS.items() if k in spec.defaults}
  if method in cfg:
    hp.update({k: tuple(v) if isinstance(v, list) else v for k, v in cfg[method].items()})
  return hp


def fit_method(method: str, pools: dict, cfg, run_dir: str, writer: wd.MetricWriter, val) -> aligners.Alignment:
  """``aligners.fit(method, ...)`` on the pools, trained methods on :func:`train_lib.checkpointed_loop` in
  ``run_dir`` (resumable) over every device."""
  spec = aligners.get(method)
  pair = ("all_x", "all_y") if spec.all_pairs else ("pair_x", "pair_y")
  data = aligners.AlignData(pools["unp_x"], pools["unp_y"], pools[pair[0]].read(), pools[pair[1]].read())
  mesh = train_lib.data_mesh()
  if spec.trained and jax.process_count() > 1:
    print(f"[{method}] process {jax.process_index()}/{jax.process_count()} reads rows " + ", ".join(
        f"{k} [{a}, {b})" for k in ("unp_x", "unp_y")
        for a, b in [distributed.local_row_range(len(pools[k]), mesh=mesh)]))
  loop = train_lib.checkpointed_loop(run_dir, writer=writer, name=method, log_every=cfg.log_every,
                                     ckpt_every=cfg.ckpt_every, mesh=mesh)
  return aligners.fit(method, jax.random.key(cfg.seed), data, loop=loop, mesh=mesh, val=val,
                      **method_hparams(method, cfg))


def write_heads(run_dir: str, alignment: aligners.Alignment):
  """Saves the fitted maps as heads on raw features (:func:`save_heads`, for ``python -m sotalign_jax.cli.evaluate``)
  when they are affine or trained heads without unit-norm preprocessing; process 0 writes."""
  if isinstance(alignment, aligners.HeadsAlignment) and not alignment.normalize:
    params, hidden = aligners.folded_heads(alignment), alignment.hidden
  elif isinstance(alignment, aligners.LinearAlignment) and not alignment.normalize:
    wy = jnp.eye(alignment.my.shape[0]) if alignment.wy is None else alignment.wy
    params, hidden = {"f": linear_params(alignment.wx, alignment.mx), "g": linear_params(wy, alignment.my)}, 0
  else:
    return
  if wd.is_primary():
    save_heads(run_dir, params, hidden=hidden)
  wd.sync(f"heads:{run_dir}")


# ================================================================================================================
# Keys: what determines a result (sotalign_jax.runtime.sweep.CellSettings)
# ================================================================================================================
def data_settings(cfg, sets: dict) -> tuple[dict, dict]:
  """``(training data, evaluation)`` parts of every key: fingerprints of the cache and extra caches (or of the
  files in file mode; never paths) with ``data.max_unpaired``; the evaluation split and optional eval caches."""
  d = cfg.data
  if file_mode(cfg):
    fit = {"files": wd.files_fingerprint({k: d[k] for k in FILE_KEYS}), "max_unpaired": d.max_unpaired}
  else:
    fit = {"cache": wd.cache_fingerprint(d.cache), "max_unpaired": d.max_unpaired,
           "extra_unpaired_text": [wd.cache_fingerprint(p) for p in d.extra_unpaired_text],
           "extra_unpaired_images": [wd.cache_fingerprint(p) for p in d.extra_unpaired_images]}
  fp = lambda name, path: wd.cache_fingerprint(path) if name in sets else None  # noqa: E731
  evaluation = {"split": cfg.eval.split, "tuxpaint": fp("tuxpaint", cfg.eval.tuxpaint_cache),
                "fashion_mnist": fp("fashion", cfg.eval.fashion_mnist_cache)}
  return fit, evaluation


def cell_settings(method: str, n_pairs: int, cfg, *, data: dict, evaluation: dict) -> sweep.CellSettings:
  """Everything that determines one method's result at ``n_pairs``: its resolved options (registry defaults with
  :func:`method_hparams` over them), the data, ``n_pairs`` and ``config.seed``."""
  fit = {"method": method, "hparams": {**aligners.get(method).defaults, **method_hparams(method, cfg)},
         "data": data, "n_pairs": int(n_pairs), "seed": cfg.seed}
  return sweep.CellSettings(fit, evaluation)


def check_pairs(methods, pools: dict[int, dict]):
  """Raises naming ``config.data.n_pairs`` when a method gets fewer pairs than it needs."""
  for n, pool in pools.items():
    for m in methods:
      spec = aligners.get(m)
      have = len(pool["all_x"]) if spec.all_pairs else n
      if have < spec.min_pairs:
        raise ValueError(f"config.data.n_pairs={n}: {m} needs at least {spec.min_pairs} pairs, it would get {have}; "
                         "raise config.data.n_pairs (and config.data.n_pairs_sweep), or give more pairs")


# ================================================================================================================
# Main
# ================================================================================================================
def run(cfg, workdir: str) -> dict:
  # --- config and data, checked before anything is written (a user error leaves no workdir behind) -------------
  with cfg_lib.user_errors():
    CONFIG.validate(cfg)
    sets, val, pools_at, main_size, data = read_data(cfg)
    sizes = sorted(set(cfg.data.n_pairs_sweep) | {main_size})
    pools = {n: pools_at(n) for n in sizes}
    check_pairs(cfg.methods, pools)
    fit_data, evaluation = data_settings(cfg, sets)
  methods = list(cfg.methods)
  settings = lambda m, n: cell_settings(m, n, cfg, data=fit_data, evaluation=evaluation)  # noqa: E731
  wd.save_config(workdir, cfg)
  writer = wd.MetricWriter(workdir)
  store = sweep.CellStore(workdir)
  by_size: dict[int, dict] = {}
  cells: dict[str, dict] = {}
  t_start = time.time()
  for n_pairs in sizes:
    pool = pools[n_pairs]
    print(f"n_pairs={n_pairs}: {len(pool['pair_x'])} pairs, {len(pool['unp_x'])} unpaired images, "
          f"{len(pool['unp_y'])} unpaired texts, {len(sets['main']['x'])} {cfg.eval.split} images")
    by_size[n_pairs] = {}
    for method in methods:
      st = settings(method, n_pairs)
      record = store.load(method, n_pairs, cfg.seed, key=st.key)
      if record is None:
        run_dir = wd.keyed_dir(os.path.join(workdir, "runs"), f"{method}_n{n_pairs}", st.fit_key)
        alignment = fit_method(method, pool, cfg, run_dir, writer, val)
        write_heads(run_dir, alignment)
        result = evaluate(alignment.embed_x, alignment.embed_y, sets)
        writer.write(n_pairs, result, prefix=f"eval/{method}/")
        record = sweep.to_json({"method": method, "p": n_pairs, "seed": cfg.seed, "status": "ok", "metrics": result,
                                "key": st.key, "settings": st.to_json(), "run_dir": run_dir})
        if wd.is_primary():
          store.save(record)
        wd.sync(f"done:{method}_n{n_pairs}")
        note = ""
      else:
        note = "  (stored: computed before with the same settings)"
      by_size[n_pairs][method] = record["metrics"]
      cells[f"{method}/n{n_pairs}"] = {k: record[k] for k in ("key", "settings")}
      print(f"  {method:20s} i2t R@1 {record['metrics']['i2t_r1']:.4f}  t2i R@1 "
            f"{record['metrics']['t2i_r1']:.4f}{note}")
  writer.close()

  # --- the table's methods: config.methods, then the others stored at every size under the same settings -------
  extra_methods = []
  for method in CONFIG.METHODS:
    if method in methods:
      continue
    found = {n: store.load(method, n, cfg.seed, key=settings(method, n).key) for n in sizes}
    if all(found.values()):
      extra_methods.append(method)
      for n, record in found.items():
        by_size[n][method] = record["metrics"]
        cells[f"{method}/n{n}"] = {k: record[k] for k in ("key", "settings")}
  if extra_methods:
    print(f"also in the tables: {', '.join(extra_methods)} (stored earlier in {workdir} with the same settings)")

  extra = {"n_pairs": main_size, "eval_split": cfg.eval.split, "data": data, "methods_run": methods,
           "methods_from_store": extra_methods, "cells": cells, "seconds": round(time.time() - t_start, 1)}
  if len(sizes) > 1:
    extra["by_n_pairs"] = {str(n): r for n, r in by_size.items()}
    plot_sweep(by_size, os.path.join(workdir, "r1_vs_n_pairs.png"))
  table = wd.write_results(workdir, by_size[main_size], **extra)
  if not wd.is_primary():
    return by_size[main_size]
  source = data.get("cache") or "files in " + ", ".join(sorted({os.path.dirname(p) for p in data["files"].values()}))
  print(f"\nSOTAlign results ({cfg.eval.split} split, {main_size} pairs, data {source}):\n")
  print(table)
  if len(sizes) > 1:  # methods × metrics × n_pairs
    tables = "\n\n".join(f"{n} pairs:\n\n{wd.markdown_table(by_size[n])}" for n in sizes)
    if wd.is_primary():
      sio.write_text(os.path.join(workdir, "results_by_n_pairs.md"), tables + "\n")
    print("\n" + tables)
  return by_size[main_size]


def plot_sweep(by_size: dict, path: str):
  plt = wd.pyplot()
  sizes = sorted(by_size)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key in zip(axes, ("i2t_r1", "t2i_r1")):
    for method in by_size[sizes[0]]:
      ax.plot(sizes, [by_size[n][method][key] for n in sizes], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("paired examples")
    ax.set_ylabel(key)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  wd.save_figure(fig, path)


if __name__ == "__main__":
  cfg_lib.launch(run, "configs/sotalign.py")
