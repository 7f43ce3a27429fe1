r"""C-MCR: connect two contrastive spaces (A, B) and (B', C) through shared texts, with no A–C pair.

  python experiments/cmcr.py --config configs/cmcr.py:demo --workdir workdirs/cmcr_demo

Reads top to bottom: config (``configs/cmcr.py``: ``get_config``, ``validate``) → the two spaces (``.npy`` files,
or the openclipart demo built from two embedding caches) → pseudo embeddings (soft retrieval from the memories,
once) → per method: projectors, train step, :func:`sotalign_jax.runtime.train.train_loop` (Orbax checkpoints) → A↔C
retrieval on held-out pairs → ``results.json`` + markdown table + plot.
Method keys: ``cmcr``, ``supervised``, ``no_connection``, ``cmcr_no_noise``, ``cmcr_no_pseudo``,
``cmcr_no_intra``; metrics ``a2c_r1``, ``a2c_r5``, ``c2a_r1``, ``c2a_r5``.

Data-parallel over all devices: texts, pseudo embeddings (and A–C pairs) are row-sharded over a 1-D mesh
(:func:`distributed.shard_rows`), the batches too. On several hosts each computes the pseudo embeddings of its own
block of texts only, and process 0 alone writes files.

A rerun with the same workdir resumes: finished methods are read back from ``done/``, an interrupted one
restarts from its latest checkpoint (resume order: workdir checkpoint > scratch) and, because every step's
randomness is ``fold_in(seed, step)``, reaches the same final metrics as an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax
from flax.training import train_state

from sotalign_jax import cmcr, losses, metrics, teachers
from sotalign_jax.data.cache import open_cache
from sotalign_jax.data.splits import stable_uniform
from sotalign_jax.nn import projectors
from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import distributed, io as sio, train as train_lib, workdir as wd

CONFIG = cfg_lib.experiment_config(__file__)  # configs/cmcr.py: get_config, validate
NPY_KEYS = CONFIG.NPY_KEYS
# method -> (noise on?, pseudo-pair weight factor, intra weight factor); `supervised` trains on A–C pairs.
ABLATIONS = {"cmcr": (True, 1.0, 1.0), "cmcr_no_noise": (False, 1.0, 1.0), "cmcr_no_pseudo": (True, 0.0, 1.0),
             "cmcr_no_intra": (True, 1.0, 0.0)}


# ================================================================================================================
# Data: the two spaces, from .npy files or from the openclipart demo caches
# ================================================================================================================
def load_npy_spaces(cfg) -> dict[str, np.ndarray]:
  arrays = {}
  for k in NPY_KEYS:
    path = getattr(cfg.data, k)
    if path:
      try:
        arrays[k] = np.load(path, allow_pickle=False)
      except FileNotFoundError:
        raise FileNotFoundError(f"config.data.{k}: {path} not found") from None
  return arrays


def demo_spaces(cfg) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Two spaces made contrastive on DISJOINT halves of the training pictures, and held-out A–C eval pairs.

  Space 1: Lite0 image (A) ↔ MiniLM text (B), a closed-form teacher fitted on half 1's pairs. Space 2: mpnet
  text (B') ↔ Lite2 image (C), fitted on half 2's pairs. C-MCR gets every training caption in both spaces,
  half 1's images as the A memory and half 2's as the C memory: the two memories share no picture.
  """
  c1, c2 = (open_cache(cfg.demo[k], key=f"demo.{k}", dataset="openclipart") for k in ("cache_1", "cache_2"))
  for c, what in ((c1, "demo.cache_1"), (c2, "demo.cache_2")):
    if c.image_emb is None:
      raise ValueError(f"config.{what} is a text-only cache; the demo needs images and captions")
  # join the caches by (image_id, caption): the same openclipart records embedded by different encoders
  row2 = {(r["image_id"], r["caption"]): i for i, r in enumerate(c2.index)}
  rows1, rows2 = [], []
  for i, r in enumerate(c1.index):
    j = row2.get((r["image_id"], r["caption"]))
    if j is not None:
      rows1.append(i)
      rows2.append(j)
  if not rows1:
    raise ValueError("config.demo.cache_1 and cache_2 share no (image_id, caption): embed the same dataset in both")
  rows1, rows2 = np.array(rows1), np.array(rows2)
  ids = np.array([c1.index[i]["image_id"] for i in rows1])
  split = np.array([c1.index[i]["split"] for i in rows1])
  img1 = np.array([c1.index[i]["image"] for i in rows1])
  img2 = np.array([c2.index[j]["image"] for j in rows2])
  train = np.isin(split, ("paired", "unpaired"))
  half1 = stable_uniform(ids.tolist(), seed="cmcr-halves") < 0.5
  h1, h2 = train & half1, train & ~half1
  # one row per picture (its first caption): held-out ones for evaluation, training ones for `supervised`
  ev_rows = np.flatnonzero(np.isin(rows1, c1.first_captions(cfg.demo.eval_split)[1]))
  tr_rows = np.flatnonzero(np.isin(rows1, c1.first_captions(("paired", "unpaired"))[1]))
  if min(h1.sum(), h2.sum(), len(ev_rows)) < 10:
    raise ValueError(f"too little data in the demo caches (half 1: {h1.sum()}, half 2: {h2.sum()}, "
                     f"{cfg.demo.eval_split}: {len(ev_rows)} captions)")

  def fit(x, y):
    n = len(x)
    return teachers.fit(cfg.teacher.name, x, y, dim=min(cfg.teacher.cca_dim, n - 1, x.shape[1], y.shape[1]),
                        reg=cfg.teacher.cca_reg, lam=cfg.teacher.ridge_lam)

  t1 = fit(c1.image_emb[img1[h1]], c1.text_emb[rows1[h1]])  # space 1 = (A image, B text)
  t2 = fit(c2.image_emb[img2[h2]], c2.text_emb[rows2[h2]])  # space 2 = (C image, B' text)
  arr = lambda v: np.asarray(v, np.float32)
  spaces = {
      "a_memory": arr(t1.embed_x(c1.image_emb[np.unique(img1[h1])])),
      "b": arr(t1.embed_y(c1.text_emb[rows1[train]])),
      "b_prime": arr(t2.embed_y(c2.text_emb[rows2[train]])),
      "c_memory": arr(t2.embed_x(c2.image_emb[np.unique(img2[h2])])),
      "a_eval": arr(t1.embed_x(c1.image_emb[img1[ev_rows]])),
      "c_eval": arr(t2.embed_x(c2.image_emb[img2[ev_rows]])),
      "a_train": arr(t1.embed_x(c1.image_emb[img1[tr_rows]])),  # A–C pairs, for `supervised` only
      "c_train": arr(t2.embed_x(c2.image_emb[img2[tr_rows]])),
  }
  # how well each space is aligned on its own (image → caption R@1 on the held-out pictures)
  info = {
      "space_1_i2t_r1": metrics.retrieval_recall(spaces["a_eval"], t1.embed_y(c1.text_emb[rows1[ev_rows]]),
                                                 ks=(1,))["r1"],
      "space_2_i2t_r1": metrics.retrieval_recall(spaces["c_eval"], t2.embed_y(c2.text_emb[rows2[ev_rows]]),
                                                 ks=(1,))["r1"],
      "n_half_1_pairs": int(h1.sum()), "n_half_2_pairs": int(h2.sum())}
  return spaces, info


def load_spaces(cfg) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  spaces, info = (demo_spaces(cfg) if cfg.data.source == "demo" else (load_npy_spaces(cfg), {}))
  spaces = cmcr.check_spaces(**spaces)
  if "a_eval" not in spaces:
    raise ValueError("config.data.a_eval and config.data.c_eval (row-aligned A–C evaluation pairs) are required")
  if cfg.data.normalize:
    spaces = {k: np.asarray(cmcr.normalize(jnp.asarray(v))) for k, v in spaces.items()}
  return spaces, info


def pseudo_embeddings(spaces: dict, cfg, rows: slice) -> dict[str, np.ndarray]:
  """Semantic consistency: the pseudo A (space 1) and pseudo C (space 2) of texts ``rows``, retrieved once.

  Each host computes the rows it holds in training (:func:`distributed.local_row_range`); retrieval is row-wise.
  """
  out = {}
  for name, q, mem in (("pseudo_a", "b", "a_memory"), ("pseudo_c", "b_prime", "c_memory")):
    chunk = int(max(1, min(4096, 2**28 // len(spaces[mem]))))  # ≤ 1 GiB of logits at a time
    fn = jax.jit(functools.partial(cmcr.soft_retrieve, temperature=cfg.retrieval_temperature, chunk_size=chunk))
    out[name] = np.asarray(fn(spaces[q][rows], spaces[mem]))
  return out


# ================================================================================================================
# Training one method
# ================================================================================================================
def host_block(start: int, rows: np.ndarray):
  """``read(a, b)``: rows ``[a, b)`` of a larger array of which this host holds only ``rows``, from row ``start``."""
  def read(a: int, b: int) -> np.ndarray:
    if not start <= a <= b <= start + len(rows):
      raise ValueError(f"rows [{a}, {b}) are not on this host (it holds [{start}, {start + len(rows)}))")
    return rows[a - start:b - start]
  return read


class TrainState(train_state.TrainState):
  batch_stats: Any = None


def _project(f, name, params, stats, x):
  """``f(x)`` in training mode; returns the embeddings and the batch stats with ``name``'s updated."""
  z, upd = f.apply({"params": params[name], "batch_stats": stats[name]}, x, train=True, mutable=["batch_stats"])
  return z, {**stats, name: upd["batch_stats"]}


def train_step(state, data, rng, *, f1, f2, method, n, cfg_static, sharding):
  """One update: C-MCR (and ablations) on a batch of texts, or `supervised` on a batch of A–C pairs.

  The arrays of ``data`` are row-sharded and zero-padded (:func:`distributed.shard_rows`); rows are sampled
  among the first ``n``, the real ones.
  """
  batch, variance, temperature, intra_weight, pseudo_weight = cfg_static
  ki, kn = jax.random.split(rng)
  keys = jax.random.split(kn, 4)
  names = ("a_train", "c_train") if method == "supervised" else ("b", "b_prime", "pseudo_a", "pseudo_c")
  idx = jax.random.choice(ki, n, (batch,), replace=batch > n)
  xs = [cmcr.semantic_noise(k, jax.lax.with_sharding_constraint(data[name][idx], sharding), variance=variance)
        for k, name in zip(keys, names)]

  def loss_fn(params):
    stats = state.batch_stats
    if method == "supervised":
      za, stats = _project(f1, "f1", params, stats, xs[0])
      zc, stats = _project(f2, "f2", params, stats, xs[1])
      loss = losses.info_nce(za, zc, temperature=temperature)
      return loss, ({"loss": loss}, stats)
    zb, stats = _project(f1, "f1", params, stats, xs[0])
    za, stats = _project(f1, "f1", params, stats, xs[2])
    zbp, stats = _project(f2, "f2", params, stats, xs[1])
    zc, stats = _project(f2, "f2", params, stats, xs[3])
    out = cmcr.cmcr_objective(zb, zbp, za, zc, temperature=temperature, intra_weight=intra_weight,
                              pseudo_weight=pseudo_weight)
    return out.total, ({"loss": out.total, "text_loss": out.text, "pseudo_loss": out.pseudo,
                        "intra_loss": out.intra}, stats)

  (_, (aux, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads).replace(batch_stats=stats)
  updates = jax.tree.map(lambda a, b: a - b, new_state.params, state.params)
  return new_state, {**aux, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(state.params),
                     "update_norm": optax.tree.norm(updates)}


def train(method: str, spaces: dict, cfg, run_dir: str, writer: wd.MetricWriter):
  """Trains ``method``'s projectors (resuming from ``run_dir``); returns embed functions for A and C."""
  mesh = train_lib.data_mesh()
  k1, k2, key = jax.random.split(jax.random.key(cfg.seed), 3)
  hidden = cfg.head.hidden if cfg.head.kind == "mlp" else 0
  f1, v1 = projectors.init_projector(k1, spaces["b"].shape[1], hidden=hidden, out=cfg.head.dim)
  f2, v2 = projectors.init_projector(k2, spaces["b_prime"].shape[1], hidden=hidden, out=cfg.head.dim)
  tx = train_lib.make_optimizer(cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                warmup_steps=cfg.warmup_steps, steps=cfg.steps)
  state = TrainState.create(apply_fn=None, params={"f1": v1["params"], "f2": v2["params"]},
                            batch_stats={"f1": v1["batch_stats"], "f2": v2["batch_stats"]}, tx=tx)

  if method == "supervised":
    names = ("a_train", "c_train")
    variance, pseudo_weight, intra_weight = cfg.noise_variance, 0.0, 0.0
  else:
    noise, wp, wi = ABLATIONS[method]
    names = ("b", "b_prime", "pseudo_a", "pseudo_c")
    variance, pseudo_weight, intra_weight = cfg.noise_variance * noise, cfg.pseudo_weight * wp, cfg.intra_weight * wi
  # row-sharded over the devices; a host's pseudo embeddings exist only for its own rows (see `run`)
  n = len(spaces[names[0]])
  data = {k: distributed.shard_rows(spaces[k], n, mesh=mesh) for k in names}
  batch = cfg.batch_size - cfg.batch_size % len(jax.devices()) or len(jax.devices())
  step_fn = functools.partial(
      train_step, f1=f1, f2=f2, method=method, n=n, sharding=NamedSharding(mesh, P("data")),
      cfg_static=(batch, float(variance), float(cfg.temperature), float(intra_weight), float(pseudo_weight)))
  state = train_lib.train_loop(state, step_fn, data, key=key, steps=cfg.steps, run_dir=run_dir, writer=writer,
                               name=method, log_every=cfg.log_every, ckpt_every=cfg.ckpt_every, mesh=mesh)
  local = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), (state.params, state.batch_stats))
  variables = lambda name: {"params": local[0][name], "batch_stats": local[1][name]}
  embed_a = jax.jit(lambda x: f1.apply(variables("f1"), x, train=False))
  embed_c = jax.jit(lambda x: f2.apply(variables("f2"), x, train=False))
  return embed_a, embed_c


# ================================================================================================================
# Evaluation: A ↔ C retrieval on the row-aligned evaluation pairs
# ================================================================================================================
def evaluate(za: np.ndarray, zc: np.ndarray) -> dict[str, float]:
  a2c = metrics.retrieval_recall(za, zc, ks=(1, 5))
  c2a = metrics.retrieval_recall(zc, za, ks=(1, 5))
  return {"a2c_r1": a2c["r1"], "a2c_r5": a2c["r5"], "c2a_r1": c2a["r1"], "c2a_r5": c2a["r5"]}


def no_connection(spaces: dict) -> dict[str, float]:
  """Direct cosine between the two raw spaces when their dimensions match; else the chance level k / n."""
  a, c = spaces["a_eval"], spaces["c_eval"]
  if a.shape[1] == c.shape[1]:
    return evaluate(a, c)
  n = len(a)
  return {"a2c_r1": 1 / n, "a2c_r5": min(5, n) / n, "c2a_r1": 1 / n, "c2a_r5": min(5, n) / n}


# ================================================================================================================
# Main
# ================================================================================================================
def run(cfg, workdir: str) -> dict:
  CONFIG.validate(cfg)
  methods = cfg.methods
  wd.save_config(workdir, cfg)
  spaces, info = load_spaces(cfg)
  if cfg.batch_size > len(spaces["b"]):
    raise ValueError(f"config.batch_size={cfg.batch_size} exceeds the {len(spaces['b'])} shared texts: lower it "
                     "(a batch drawn with replacement repeats texts, which InfoNCE counts as false negatives)")
  if "supervised" in methods and "a_train" not in spaces:
    raise ValueError("config.methods includes 'supervised' but there are no A–C training pairs")
  n_texts = len(spaces["b"])
  lo, hi = distributed.local_row_range(n_texts, mesh=train_lib.data_mesh())
  if jax.process_count() > 1:
    print(f"process {jax.process_index()}/{jax.process_count()} holds texts [{lo}, {hi}) of {n_texts}")
  pseudo = pseudo_embeddings(spaces, cfg, slice(lo, hi))
  spaces.update({k: host_block(lo, v) for k, v in pseudo.items()})  # readers of this host's rows
  print(f"space 1: {len(spaces['a_memory'])} A-memory rows, dim {spaces['b'].shape[1]}; space 2: "
        f"{len(spaces['c_memory'])} C-memory rows, dim {spaces['b_prime'].shape[1]}; {len(spaces['b'])} shared "
        f"texts; {len(spaces['a_eval'])} A–C evaluation pairs")
  writer = wd.MetricWriter(workdir)
  results: dict[str, dict] = {}
  t_start = time.time()
  for method in methods:
    done = os.path.join(workdir, "done", f"{method}.json")
    if os.path.exists(done):
      with open(done) as fh:
        results[method] = json.load(fh)
      continue
    if method == "no_connection":
      result = no_connection(spaces)
    else:
      embed_a, embed_c = train(method, spaces, cfg, os.path.join(workdir, "runs", method), writer)
      result = evaluate(np.asarray(embed_a(spaces["a_eval"])), np.asarray(embed_c(spaces["c_eval"])))
    writer.write(cfg.steps, result, prefix=f"eval/{method}/")
    if wd.is_primary():
      sio.write_json(done, result)
    wd.sync(f"done:{method}")
    results[method] = result
    print(f"  {method:16s} A→C R@1 {result['a2c_r1']:.4f}  C→A R@1 {result['c2a_r1']:.4f}")
  writer.close()

  extra = {"n_texts": len(spaces["b"]), "n_eval": len(spaces["a_eval"]), **info,
           "seconds": round(time.time() - t_start, 1)}
  if "cmcr" in results and "supervised" in results and results["supervised"]["a2c_r1"] > 0:
    extra["cmcr_over_supervised_r1"] = round(
        (results["cmcr"]["a2c_r1"] + results["cmcr"]["c2a_r1"])
        / (results["supervised"]["a2c_r1"] + results["supervised"]["c2a_r1"]), 4)
  table = wd.write_results(workdir, results, **extra)
  if not wd.is_primary():
    return results
  plot_curves(os.path.join(workdir, "metrics.jsonl"), [m for m in methods if m != "no_connection"],
              os.path.join(workdir, "training_curves.png"))
  print(f"\nC-MCR results (A↔C retrieval over {len(spaces['a_eval'])} held-out pairs):\n")
  print(table)
  return results


def plot_curves(metrics_path: str, methods: list[str], path: str):
  """Training loss of every trained method against the step, from ``metrics.jsonl`` (resumed runs included)."""
  if not methods or not os.path.exists(metrics_path):
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  curves: dict[str, dict[int, float]] = {m: {} for m in methods}
  for rec in sio.read_jsonl(metrics_path):
    for m in methods:
      if f"train/{m}/loss" in rec:
        curves[m][rec["step"]] = rec[f"train/{m}/loss"]
  fig, ax = plt.subplots(figsize=(6, 4))
  for m, c in curves.items():
    if c:
      steps = sorted(c)
      ax.plot(steps, [c[s] for s in steps], label=m)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  ax.legend(fontsize=7)
  fig.tight_layout()
  wd.save_figure(fig, path)


if __name__ == "__main__":
  cfg_lib.launch(run, "configs/cmcr.py")
