r"""C-MCR: connect two contrastive spaces (A, B) and (B', C) through shared texts, with no A–C pair.

  python experiments/cmcr.py --config configs/cmcr.py:demo --workdir workdirs/cmcr_demo

Reads top to bottom: config (``configs/cmcr.py``: ``get_config``, ``validate``) and the two spaces (``.npy`` files,
or the openclipart demo built from two embedding caches), checked before anything is written (a user error prints
one line ``error: …``, exit 2, and leaves no workdir) → pseudo embeddings (soft retrieval from the memories, once,
only when a C-MCR cell is to be trained) → per (method, seed) cell: projectors, train step, the shared checkpointed
loop (:func:`sotalign_jax.runtime.train.checkpointed_loop`, Orbax checkpoints) → A↔C retrieval on the held-out
pairs (:mod:`sotalign_jax.evaluators.retrieval`) → one record in the
:class:`~sotalign_jax.runtime.sweep.CellStore` → mean and interval over seeds (:func:`sotalign_jax.runtime.sweep.
summarise`) → ``results.json`` + markdown table + plot.
Method keys (:data:`sotalign_jax.cmcr.METHODS`): ``cmcr``; ``supervised`` (the ceiling: A–C pairs); the ablations
``cmcr_ttc`` (L_ttc only: no pseudo embedding anywhere), ``cmcr_ttc_avc``, ``cmcr_ttc_intra``,
``cmcr_no_consistency`` (nearest memory row instead of aggregation), ``cmcr_no_noise``; the sensitivity
``cmcr_noise_low`` / ``_high`` (σ² × 1/4, × 4) and ``cmcr_lambda_low`` / ``_high`` (λ × 1/10, × 10); the zero-pair
baselines ``no_connection``, ``text_pivot``, ``text_lstsq``, ``wasserstein_procrustes`` and ``mini_vec2vec``
(between the A and C memories, no shared modality) and ``text_anchored`` (:func:`text_anchored`: mini-vec2vec's
refinement between the memories, anchored by the shared texts' pseudo pairs). Metrics ``a2c_r1``, ``a2c_r5``,
``c2a_r1``, ``c2a_r5`` (A→C and C→A recall at 1 and 5) and, for trained methods, ``gap_1`` / ``gap_2`` (the
modality gap left in the shared space). Every method is compared with ``cmcr`` by a per-query paired bootstrap
(:func:`comparisons`); ``m − 0.85 × supervised`` tests the issue's goal for every method ``m``, and
``text_anchored − mini_vec2vec`` what the texts add to the geometry.
The demo plants a modality gap (``demo.gap``, :func:`planted_gap`) and reports it.

Data-parallel over all devices: texts, pseudo embeddings (and A–C pairs) are row-sharded over a 1-D mesh
(:func:`distributed.shard_rows`), the batches too. On several hosts each computes the pseudo embeddings of its own
block of texts only, and process 0 alone writes files.

**Reruns: cells are keyed by their settings** (:func:`cell_settings`): the method and its resolved options (the
config's values as the method uses them, e.g. ``pseudo_weight`` 0 for ``cmcr_ttc_intra``), the data (npy mode: the
content hashes of the files the method reads, never paths; demo: the two caches' fingerprints and the teacher that
builds the spaces), ``data.normalize``, ``config.seed`` and the seed. A cell is ``done/<method>/p0_s<seed>__<key12>
.json`` (``p0``: no A–C pair; the store's grid has one column). A rerun reuses exactly the cells whose settings did
not change and computes the others; a trained cell checkpoints in ``runs/<method>/s<seed>__<fit key12>``, so an
interrupted one resumes from its latest checkpoint only under the same settings, and, because every step's
randomness is ``fold_in(key, step)``, reaches the same final metrics as an uninterrupted run. Seed ``s`` draws its
projector initialisation, batches and noise from ``fold_in(key(config.seed), s)``.

**What the table shows**: every method of ``config.methods`` for seeds ``0 .. config.seeds-1``, then every other
method whose cells for all those seeds are stored in the workdir under the same settings (a rerun with fewer
methods keeps the full table; delete ``done/<method>`` to drop one). ``results.json`` holds the means
(``methods``), the intervals (``summary``), every cell with its ``key`` and ``settings``, ``methods_run`` and
``methods_from_store``.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax
from flax.training import train_state

from sotalign_jax import aligners, cmcr, losses, metrics, stats, teachers
from sotalign_jax.aligners import unpaired
from sotalign_jax.aligners.linear import LinearAlignment
from sotalign_jax.data.cache import open_cache
from sotalign_jax.data.splits import stable_uniform
from sotalign_jax.evaluators import EvalSet, retrieval
from sotalign_jax.nn import projectors
from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import distributed, io as sio, sweep, train as train_lib, workdir as wd

CONFIG = cfg_lib.experiment_config(__file__)  # configs/cmcr.py: get_config, validate
NPY_KEYS = CONFIG.NPY_KEYS
# method -> what it changes in the paper's recipe, as factors of the configured σ² ("noise"), pseudo-pair weight
# ("pseudo") and λ ("intra"), and "consistency": False for hard nearest neighbours instead of memory aggregation.
# `supervised` trains the same projectors on A–C pairs; the BASELINES are not trained.
VARIANTS = {"cmcr": {}, "cmcr_ttc": {"pseudo": 0.0, "intra": 0.0}, "cmcr_ttc_avc": {"intra": 0.0},
            "cmcr_ttc_intra": {"pseudo": 0.0}, "cmcr_no_consistency": {"consistency": False},
            "cmcr_no_noise": {"noise": 0.0}, "cmcr_noise_low": {"noise": 0.25}, "cmcr_noise_high": {"noise": 4.0},
            "cmcr_lambda_low": {"intra": 0.1}, "cmcr_lambda_high": {"intra": 10.0}}
assert set(VARIANTS) | {"supervised"} | set(cmcr.BASELINES) == set(cmcr.METHODS)
METRICS = ("a2c_r1", "a2c_r5", "c2a_r1", "c2a_r5", "gap_1", "gap_2")
# gap_1 / gap_2: the modality gap left in the shared space, ‖μ f1(A) − μ f1(B)‖ and ‖μ f2(C) − μ f2(B')‖ on the
# evaluation A / C rows and (up to GAP_TEXTS of) the shared texts (trained methods only; what L_intra closes)
GAP_TEXTS = 4096
KS = (1, 5)
CONFIDENCE = 0.95  # of the intervals over seeds and of the paired differences
COMPARED = ("a2c_r1", "c2a_r1")  # the metrics of the paired comparisons with cmcr
GOAL = 0.85  # C-MCR's target share of the supervised ceiling (issue #28): cmcr − GOAL × supervised is tested
# pairs of methods compared head to head when both are shown: what the texts add to the geometry
HEAD_TO_HEAD = (("text_anchored", "mini_vec2vec"),)
NO_PAIRS = 0  # the cell store's p: C-MCR sees no A–C pair (its grid has one column)
# the zero-pair baselines that are registry aligners between the A and C memories -> their config.baselines block
ZERO_PAIR = {"wasserstein_procrustes": "wp", "mini_vec2vec": "mv2v"}
# the options of mini-vec2vec after its anchors, which text_anchored runs with (mini_vec2vec's, resolved)
REFINE = ("num_neighbors", "refine1_iterations", "refine1_samples", "refine2_clusters", "smoothing", "kmeans_iters",
          "center", "normalize")


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
      "b_eval": arr(t1.embed_y(c1.text_emb[rows1[ev_rows]])),  # held-out captions: the info below only
      "b_prime_eval": arr(t2.embed_y(c2.text_emb[rows2[ev_rows]])),
  }
  if cfg.demo.gap:
    spaces = planted_gap(spaces, cfg.demo.gap)
  b_eval, bp_eval = spaces.pop("b_eval"), spaces.pop("b_prime_eval")
  # how well each space is aligned on its own (image → caption R@1 on the held-out pictures)
  info = {
      "space_1_i2t_r1": metrics.retrieval_recall(spaces["a_eval"], b_eval, ks=(1,))["r1"],
      "space_2_i2t_r1": metrics.retrieval_recall(spaces["c_eval"], bp_eval, ks=(1,))["r1"],
      "n_half_1_pairs": int(h1.sum()), "n_half_2_pairs": int(h2.sum())}
  return spaces, info


GAP_GROUPS = (("a_memory", "a_eval", "a_train"), ("b", "b_eval"), ("b_prime", "b_prime_eval"),
              ("c_memory", "c_eval", "c_train"))


def planted_gap(spaces: dict, gap: float) -> dict:
  r"""A modality gap planted in both spaces: each modality's rows become :math:`\mathrm{norm}(\mathrm{norm}(x) + g
  u_m)` with :math:`u_m` a random unit direction of its own (fixed), so the four modalities sit in four cones, as
  the images and texts of a CLIP-like model do (Liang et al. 2022) — where the demo's CCA spaces centre every
  modality on its own mean and have no gap. Two independent directions give a measured gap
  :math:`\|\mu_{\text{text}} - \mu_{\text{image}}\| \approx \sqrt2\, g / \sqrt{1 + g^2}` (``g = 0.75``: ≈ 0.85).
  """
  rng = np.random.default_rng(2_805)  # fixed: the same gap for every run (the settings key holds `gap`)
  unit_rows = lambda v: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
  out = dict(spaces)
  for group in GAP_GROUPS:
    u = rng.normal(size=spaces[group[0]].shape[1])
    u /= np.linalg.norm(u)
    for k in group:
      if k in out:
        out[k] = unit_rows(unit_rows(out[k]) + gap * u).astype(np.float32)
  return out


def load_spaces(cfg) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  spaces, info = (demo_spaces(cfg) if cfg.data.source == "demo" else (load_npy_spaces(cfg), {}))
  spaces = cmcr.check_spaces(**spaces)
  if "a_eval" not in spaces:
    raise ValueError("config.data.a_eval and config.data.c_eval (row-aligned A–C evaluation pairs) are required")
  if cfg.data.normalize:
    spaces = {k: np.asarray(cmcr.normalize(jnp.asarray(v))) for k, v in spaces.items()}
  # the modality gap of each space (Liang et al. 2022): what the intra-space term is there to close
  info["gap_space_1"] = round(cmcr.modality_gap(spaces["a_memory"], spaces["b"]), 4)
  info["gap_space_2"] = round(cmcr.modality_gap(spaces["c_memory"], spaces["b_prime"]), 4)
  return spaces, info


def pseudo_embeddings(spaces: dict, cfg, rows: slice, *, consistency: bool = True) -> dict[str, np.ndarray]:
  """The pseudo A (space 1) and pseudo C (space 2) of texts ``rows``, retrieved once: with semantic consistency,
  aggregated from the memories (:func:`cmcr.soft_retrieve`, keys ``pseudo_a``, ``pseudo_c``); without, the nearest
  memory row (:func:`cmcr.nearest`, keys ``nearest_a``, ``nearest_c``).

  Each host computes the rows it holds in training (:func:`distributed.local_row_range`); retrieval is row-wise.
  """
  temperature = cfg.retrieval_temperature if consistency else None
  return {f"{'pseudo' if consistency else 'nearest'}_{a}": retrieve(spaces[q][rows], spaces[mem], temperature)
          for a, q, mem in (("a", "b", "a_memory"), ("c", "b_prime", "c_memory"))}


def retrieve(queries, memory, temperature: float | None) -> np.ndarray:
  """Each query's pseudo embedding from ``memory``: soft retrieval with τ1 = ``temperature``
  (:func:`cmcr.soft_retrieve`), or the nearest memory row (:func:`cmcr.nearest`) for ``None``; in chunks of queries
  of at most 1 GiB of logits."""
  chunk = int(max(1, min(4096, 2**28 // len(memory))))
  if temperature is None:
    fn = jax.jit(functools.partial(cmcr.nearest, chunk_size=chunk))
  else:
    fn = jax.jit(functools.partial(cmcr.soft_retrieve, temperature=temperature, chunk_size=chunk))
  return np.asarray(fn(queries, memory))


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


def train_names(method: str, o: dict) -> tuple[str, ...]:
  """The arrays ``method`` trains on: A–C pairs (``supervised``); texts only (no pseudo-pair and no intra term:
  no pseudo embedding is ever formed); else texts and their pseudo embeddings, aggregated or nearest."""
  if method == "supervised":
    return ("a_train", "c_train")
  if not (o["pseudo_weight"] or o["intra_weight"]):
    return ("b", "b_prime")
  kind = "pseudo" if o["consistency"] else "nearest"
  return ("b", "b_prime", f"{kind}_a", f"{kind}_c")


def train_step(state, data, rng, *, f1, f2, names, n, cfg_static, sharding):
  """One update: C-MCR (and ablations) on a batch of texts, or `supervised` on a batch of A–C pairs.

  Each projector sees the modalities of its space as ONE batch (:func:`projectors.apply_together`): ``f1`` the
  texts and pseudo-A rows ``[b; â]``, ``f2`` ``[b'; ĉ]``, so BatchNorm normalises both with the statistics of the
  mixture, which its running averages then hold for evaluation (one forward over both modalities, as the official
  heads apply one BatchNorm to every modality of a space).

  The arrays of ``data`` are row-sharded and zero-padded (:func:`distributed.shard_rows`); rows are sampled
  among the first ``n``, the real ones.
  """
  batch, variance, temperature, intra_weight, pseudo_weight = cfg_static
  ki, kn = jax.random.split(rng)
  keys = jax.random.split(kn, 4)
  idx = jax.random.choice(ki, n, (batch,), replace=batch > n)
  xs = [cmcr.semantic_noise(k, jax.lax.with_sharding_constraint(data[name][idx], sharding), variance=variance)
        for k, name in zip(keys, names)]

  def loss_fn(params):
    v = lambda name: {"params": params[name], "batch_stats": state.batch_stats[name]}
    z1, s1 = projectors.apply_together(f1, v("f1"), xs[0::2], train=True)  # b (and â), or A
    z2, s2 = projectors.apply_together(f2, v("f2"), xs[1::2], train=True)  # b' (and ĉ), or C
    stats = {"f1": s1, "f2": s2}
    if len(names) == 2:  # supervised (A, C) or texts only (L_ttc)
      loss = losses.info_nce(z1[0], z2[0], temperature=temperature)
      return loss, ({"loss": loss} if names[0] == "a_train" else {"loss": loss, "text_loss": loss}, stats)
    (zb, za), (zbp, zc) = z1, z2
    out = cmcr.cmcr_objective(zb, zbp, za, zc, temperature=temperature, intra_weight=intra_weight,
                              pseudo_weight=pseudo_weight)
    return out.total, ({"loss": out.total, "text_loss": out.text, "pseudo_loss": out.pseudo,
                        "intra_loss": out.intra}, stats)

  (_, (aux, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads).replace(batch_stats=stats)
  updates = jax.tree.map(lambda a, b: a - b, new_state.params, state.params)
  return new_state, {**aux, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(state.params),
                     "update_norm": optax.tree.norm(updates)}


def train(method: str, spaces: dict, cfg, *, seed: int, run_dir: str, writer: wd.MetricWriter):
  """Trains ``method``'s projectors for ``seed`` with its resolved options (:func:`method_options`) on the shared
  checkpointed loop (resuming from ``run_dir``); returns embed functions for A and C."""
  mesh = train_lib.data_mesh()
  o = method_options(method, cfg)
  k1, k2, key = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), seed), 3)
  head = {"hidden": o["head"]["hidden"], "out": o["head"]["dim"], "kind": o["head"]["kind"]}
  f1, v1 = projectors.init_projector(k1, spaces["b"].shape[1], **head)
  f2, v2 = projectors.init_projector(k2, spaces["b_prime"].shape[1], **head)
  tx = train_lib.make_optimizer(o["optimizer"], lr=o["lr"], weight_decay=o["weight_decay"],
                                warmup_steps=o["warmup_steps"], steps=o["steps"])
  state = TrainState.create(apply_fn=None, params={"f1": v1["params"], "f2": v2["params"]},
                            batch_stats={"f1": v1["batch_stats"], "f2": v2["batch_stats"]}, tx=tx)
  names = train_names(method, o)
  # row-sharded over the devices; a host's pseudo embeddings exist only for its own rows (see `run`)
  n = len(spaces[names[0]])
  data = {k: distributed.shard_rows(spaces[k], n, mesh=mesh) for k in names}
  batch = o["batch_size"] - o["batch_size"] % len(jax.devices()) or len(jax.devices())
  step_fn = functools.partial(
      train_step, f1=f1, f2=f2, names=names, n=n, sharding=NamedSharding(mesh, P("data")),
      cfg_static=(batch, o["noise_variance"], o["temperature"], o["intra_weight"], o["pseudo_weight"]))
  loop = train_lib.checkpointed_loop(run_dir, writer=writer, name=f"{method}/s{seed}", log_every=cfg.log_every,
                                     ckpt_every=cfg.ckpt_every, mesh=mesh)
  state = loop(state, step_fn, data, key=key, steps=o["steps"])
  local = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), (state.params, state.batch_stats))
  variables = lambda name: {"params": local[0][name], "batch_stats": local[1][name]}
  embed_a = jax.jit(lambda x: f1.apply(variables("f1"), x, train=False))
  embed_c = jax.jit(lambda x: f2.apply(variables("f2"), x, train=False))
  return embed_a, embed_c


# ================================================================================================================
# Keys: what determines a cell's numbers
# ================================================================================================================
def method_options(method: str, cfg) -> dict:
  """The options ``method`` runs with, resolved from the config (``{}`` for ``no_connection``): what
  :func:`train` (or the baseline) reads and what its cells are keyed by. An ablation's switched-off term is 0
  whatever the config says, so changing that term's weight recomputes ``cmcr`` but not the ablation."""
  if method == "no_connection":
    return {}
  if method == "text_pivot":
    return {"retrieval_temperature": float(cfg.retrieval_temperature)}
  if method == "text_lstsq":
    return {"ridge": float(cfg.baselines.lstsq_ridge)}
  plain = lambda v: int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v  # noqa: E731
  if method in ZERO_PAIR:  # the registry's defaults, then the config's: a new default is a new cell
    return {k: plain(v) for k, v in aligners.resolved_options(method, cfg.baselines[ZERO_PAIR[method]]).items()}
  if method == "text_anchored":
    mv = aligners.resolved_options("mini_vec2vec", cfg.baselines.mv2v)
    return {"anchors": int(cfg.baselines.anchors), "retrieval_temperature": float(cfg.retrieval_temperature),
            **{k: plain(mv[k]) for k in REFINE}}
  o = {"head": {"kind": cfg.head.kind, "hidden": int(cfg.head.hidden) if cfg.head.kind == "mlp" else 0,
                "dim": int(cfg.head.dim)},
       "temperature": float(cfg.temperature), "optimizer": cfg.optimizer, "lr": float(cfg.lr),
       "weight_decay": float(cfg.weight_decay), "warmup_steps": int(cfg.warmup_steps), "steps": int(cfg.steps),
       "batch_size": int(cfg.batch_size)}
  if method == "supervised":
    return {**o, "noise_variance": float(cfg.noise_variance), "pseudo_weight": 0.0, "intra_weight": 0.0}
  v = VARIANTS[method]
  o = {**o, "noise_variance": float(cfg.noise_variance) * v.get("noise", 1.0),
       "pseudo_weight": float(cfg.pseudo_weight) * v.get("pseudo", 1.0),
       "intra_weight": float(cfg.intra_weight) * v.get("intra", 1.0), "consistency": v.get("consistency", True)}
  if o["pseudo_weight"] or o["intra_weight"]:  # pseudo embeddings are formed
    o["retrieval"] = ({"temperature": float(cfg.retrieval_temperature)} if o["consistency"] else "nearest")
  return o


def _demo_settings(cfg) -> dict:
  """What builds the demo spaces: the two caches' content (never their paths) and the teacher."""
  return {"source": "demo", "cache_1": wd.cache_fingerprint(cfg.demo.cache_1),
          "cache_2": wd.cache_fingerprint(cfg.demo.cache_2), "teacher": dict(cfg.teacher.items()),
          "gap": float(cfg.demo.gap)}


def data_settings(method: str, cfg) -> dict | None:
  """The training data of ``method``'s cells: npy mode, the content hashes of the files it reads (the two spaces,
  or the A–C pairs for ``supervised``); demo, the settings that build the spaces. ``None`` for ``no_connection``."""
  if method == "no_connection":
    return None
  if cfg.data.source == "demo":
    return _demo_settings(cfg)
  keys = {"supervised": ("a_train", "c_train"), "text_pivot": ("b", "b_prime"), "text_lstsq": ("b", "b_prime"),
          **dict.fromkeys(ZERO_PAIR, ("a_memory", "c_memory"))}.get(method, ("a_memory", "b", "b_prime", "c_memory"))
  return {"source": "npy", "files": wd.files_fingerprint({k: cfg.data[k] for k in keys})}


def eval_settings(cfg) -> dict:
  """The evaluation part of every key: the A–C evaluation pairs (their files, or the demo's settings and split)
  and the retrieval evaluator's options."""
  if cfg.data.source == "demo":
    data = {**_demo_settings(cfg), "eval_split": cfg.demo.eval_split}
  else:
    data = {"source": "npy", "files": wd.files_fingerprint({k: cfg.data[k] for k in ("a_eval", "c_eval")})}
  return {"data": data, "normalize": bool(cfg.data.normalize), "retrieval": {"ks": list(KS), "ranks": False}}


def cell_settings(method: str, seed: int, cfg) -> sweep.CellSettings:
  """Everything that determines a (method, seed) cell: the method, its resolved options, its training data,
  ``data.normalize``, ``config.seed`` and the seed; then the evaluation pairs."""
  fit = {"method": method, "options": method_options(method, cfg), "data": data_settings(method, cfg),
         "normalize": bool(cfg.data.normalize), "base_seed": int(cfg.seed), "seed": int(seed)}
  return sweep.CellSettings(fit, eval_settings(cfg))


# ================================================================================================================
# Evaluation: A ↔ C retrieval on the row-aligned evaluation pairs (the retrieval evaluator)
# ================================================================================================================
class Projected:
  """Embeddings already in one space (projected A and C, or raw spaces of equal dimension) as an alignment for the
  evaluators: ``similarity`` is the cosine."""

  @staticmethod
  def similarity(x, y) -> np.ndarray:
    unit_rows = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return unit_rows(np.asarray(x, np.float32)) @ unit_rows(np.asarray(y, np.float32)).T


def _renamed(d: dict) -> dict:
  """The evaluator's ``i2t_`` / ``t2i_`` names as ``a2c_`` / ``c2a_`` (A is the query side)."""
  return {k.replace("i2t_", "a2c_", 1).replace("t2i_", "c2a_", 1): v for k, v in d.items()}


def evaluate(za: np.ndarray, zc: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """``(metrics, per_query)``: A→C and C→A recall at 1 and 5 of row ``i`` retrieving row ``i``."""
  n = len(za)
  pairs = EvalSet(x=za, y=zc, i2t=[[i] for i in range(n)], t2i=np.arange(n), first=np.arange(n))
  out, per_query = retrieval.Evaluator(pairs, name="a2c", ks=KS, ranks=False).run(Projected(), seed=0)
  return _renamed(out), _renamed(per_query)


def no_connection(spaces: dict) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
  """Direct cosine between the two raw spaces when their dimensions match; else the chance level k / n."""
  a, c = spaces["a_eval"], spaces["c_eval"]
  if a.shape[1] == c.shape[1]:
    return evaluate(a, c)
  n = len(a)
  return {"a2c_r1": 1 / n, "a2c_r5": min(5, n) / n, "c2a_r1": 1 / n, "c2a_r5": min(5, n) / n}, None


class Scores:
  """A baseline that scores A queries against C keys directly (no shared embedding): ``similarity`` is
  ``fn(a, c)``."""

  def __init__(self, fn):
    self.similarity = lambda x, y: np.asarray(fn(jnp.asarray(x), jnp.asarray(y)))


def text_anchored(key: jax.Array, spaces: dict, o: dict) -> LinearAlignment:
  r"""mini-vec2vec between the A and C memories with the shared texts' pseudo pairs as its anchors.

  mini-vec2vec (Dar, 2025) finds anchors, matched points of the two sets, by matching k-means centres (a QAP),
  then reads a map out of relative representations and refines it on the sets' own geometry. Here the anchors come
  from the texts instead, as C-MCR's pseudo pairs do: ``o["anchors"]`` texts drawn with ``key`` (all if fewer),
  each giving the pair :math:`(\hat a_t, \hat c_t)` of its soft-retrieved memory embeddings (:func:`retrieve`,
  τ1 = ``retrieval_temperature``), formed in the contrastive spaces as C-MCR forms them. The read-out and the
  refinement are :func:`sotalign_jax.aligners.unpaired.mini_vec2vec_from_anchors`, with mini-vec2vec's options
  (``REFINE``), which prepares the anchors like memory rows (where mini-vec2vec's are k-means centres of the
  prepared rows). Returns the map of A into C's space. Not from a paper: the baseline that uses the texts *and*
  the geometry, where ``mini_vec2vec`` uses the geometry alone and C-MCR the texts alone.
  """
  k_anchor, k_refine = jax.random.split(key)
  n_texts = len(spaces["b"])
  rows = np.sort(np.asarray(jax.random.permutation(k_anchor, n_texts))[:min(o["anchors"], n_texts)])
  x, y = (np.asarray(spaces[k], np.float32) for k in ("a_memory", "c_memory"))
  anchors = [retrieve(np.asarray(spaces[q][rows], np.float32), mem, o["retrieval_temperature"])
             for q, mem in (("b", x), ("b_prime", y))]
  return unpaired.mini_vec2vec_from_anchors(k_refine, aligners.AlignData(x=x, y=y), *anchors,
                                            **{k: o[k] for k in REFINE})


def baseline(method: str, spaces: dict, cfg, *, seed: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """A zero-pair baseline through the texts (``text_pivot``, ``text_lstsq``), with no shared modality at all
  (``wasserstein_procrustes``, ``mini_vec2vec`` between the A and C memories), or both (``text_anchored``),
  evaluated like the trained methods."""
  o = method_options(method, cfg)
  key = jax.random.fold_in(jax.random.key(cfg.seed), seed)
  if method == "text_pivot":
    b, bp = jnp.asarray(spaces["b"]), jnp.asarray(spaces["b_prime"])
    fn = jax.jit(lambda a, c: cmcr.pivot_scores(a, c, b, bp, temperature=o["retrieval_temperature"]))
    scorer = Scores(fn)
  elif method == "text_lstsq":
    w = jnp.asarray(cmcr.text_lstsq(spaces["b"], spaces["b_prime"], ridge=o["ridge"]))
    scorer = Scores(jax.jit(lambda a, c: cmcr.normalize(a @ w) @ cmcr.normalize(c).T))
  elif method in ZERO_PAIR:
    scorer = aligners.fit(method, key, aligners.AlignData(x=spaces["a_memory"], y=spaces["c_memory"]), **o)
  elif method == "text_anchored":
    scorer = text_anchored(key, spaces, o)
  else:
    raise ValueError(f"unknown baseline {method!r}")
  n = len(spaces["a_eval"])
  pairs = EvalSet(x=spaces["a_eval"], y=spaces["c_eval"], i2t=[[i] for i in range(n)], t2i=np.arange(n),
                  first=np.arange(n))
  out, per_query = retrieval.Evaluator(pairs, name="a2c", ks=KS, ranks=False).run(scorer, seed=0)
  return _renamed(out), _renamed(per_query)


def run_cell(method: str, seed: int, *, settings: sweep.CellSettings, spaces: dict, cfg, workdir: str,
             writer: wd.MetricWriter) -> tuple[dict, dict | None]:
  """``(record, per_query)`` of one (method, seed) cell; a trained one runs in ``runs/<method>/s<seed>__<fit
  key>``."""
  record = {"method": method, "p": NO_PAIRS, "seed": int(seed), "status": "ok", "key": settings.key,
            "settings": settings.to_json()}
  start = time.perf_counter()
  if method == "no_connection":
    out, per_query = no_connection(spaces)
  elif method in cmcr.BASELINES:
    out, per_query = baseline(method, spaces, cfg, seed=seed)
  else:
    run_dir = wd.keyed_dir(os.path.join(workdir, "runs", method), f"s{seed}", settings.fit_key)
    embed_a, embed_c = train(method, spaces, cfg, seed=seed, run_dir=run_dir, writer=writer)
    za, zc = np.asarray(embed_a(spaces["a_eval"])), np.asarray(embed_c(spaces["c_eval"]))
    out, per_query = evaluate(za, zc)
    # rounded: the same evaluation rows in another order give the same value (the float sums would not)
    out["gap_1"] = round(cmcr.modality_gap(za, embed_a(spaces["b"][:GAP_TEXTS])), 6)
    out["gap_2"] = round(cmcr.modality_gap(zc, embed_c(spaces["b_prime"][:GAP_TEXTS])), 6)
    record["run_dir"] = os.path.relpath(run_dir, workdir)
  record["metrics"] = out
  record["seconds"] = round(time.perf_counter() - start, 2)
  return record, per_query


# ================================================================================================================
# Main
# ================================================================================================================
def check_data(cfg, spaces: dict):
  """Raises ``ValueError`` where the spaces cannot serve the config (the checks that need the data)."""
  if cfg.batch_size > len(spaces["b"]):
    raise ValueError(f"config.batch_size={cfg.batch_size} exceeds the {len(spaces['b'])} shared texts: lower it "
                     "(a batch drawn with replacement repeats texts, which InfoNCE counts as false negatives)")
  if "supervised" in cfg.methods and "a_train" not in spaces:
    raise ValueError("config.methods includes 'supervised' but there are no A–C training pairs")


def _interval(c) -> str:
  if not c:
    return "–"
  if c["n"] < 2 or c["low"] is None or not np.isfinite(c["low"]):
    return f"{c['mean']:.4f}"
  return f"{c['mean']:.4f} ± {0.5 * (c['high'] - c['low']):.4f}"


def markdown(summary: dict, methods: list[str]) -> str:
  """Methods × metrics: the mean over seeds, ± the half-width of its interval when there are several seeds."""
  lines = ["| method | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
  for m in methods:
    c = summary[m][NO_PAIRS] or {}
    lines.append(f"| {m} | " + " | ".join(_interval(c.get(k)) for k in METRICS) + " |")
  return "\n".join(lines)


def comparisons(store: sweep.CellStore, cells: dict, methods: list[str], seeds: list[int], *,
                n_boot: int = 1000) -> dict:
  """Paired differences on :data:`COMPARED`: ``cmcr − m`` for every other shown method ``m`` with per-query values;
  the goal test ``m − GOAL × supervised`` for every such method but ``supervised`` (``cmcr`` first); and
  :data:`HEAD_TO_HEAD` (``text_anchored − mini_vec2vec``: what the texts add to the geometry) when both are shown.
  The goal and head-to-head rows need no ``cmcr``.

  Per-query hits of the same evaluation queries, over the seeds both have, with a per-query paired bootstrap
  (:func:`sotalign_jax.stats.paired_difference`, as :func:`sotalign_jax.runtime.sweep.compare` does): ``{metric:
  {m: d}}`` with ``d = {"diff", "low", "high", "excludes_zero", "wins", "n_seeds"}`` (``wins``: the seeds on which
  the first term is ahead), plus ``"goal"``: ``{metric: {m: d}}`` and ``"head_to_head"``: ``{metric: {"a − b":
  d}}``. The head-to-head rows compare two zero-pair aligners whose seeds matter more than their queries, so their
  bootstrap resamples the seeds too (``resample_seeds=True``, a two-stage bootstrap; with 3 seeds, wide).
  """
  def per_query(m):
    try:
      return {s: store.per_query(cells[m, NO_PAIRS, s]) for s in seeds if cells.get((m, NO_PAIRS, s))}
    except FileNotFoundError:  # no_connection at chance level (the dimensions differ): nothing per query
      return {}

  hits = {m: per_query(m) for m in methods}
  ref = hits.get("cmcr", {})
  out = {k: {} for k in COMPARED}
  out["goal"] = {k: {} for k in COMPARED}
  out["head_to_head"] = {k: {} for k in COMPARED}

  def diff(a, b, common, k, scale=1.0, resample_seeds=False):
    d = stats.paired_difference(np.stack([a[s][k] for s in common]), scale * np.stack([b[s][k] for s in common]),
                                n_boot=n_boot, confidence=CONFIDENCE, seed=0, resample_seeds=resample_seeds)
    return {"diff": d.diff, "low": d.low, "high": d.high, "excludes_zero": bool(d.excludes_zero),
            "wins": int((d.per_seed > 0).sum()), "n_seeds": int(d.n_seeds)}

  def common(a, b):
    return [s for s in hits.get(a, {}) if s in hits.get(b, {})]

  for m in methods:
    if m != "cmcr" and common("cmcr", m):
      for k in COMPARED:
        out[k][m] = diff(ref, hits[m], common("cmcr", m), k)
  if "supervised" in hits:
    for m in ("cmcr", *(m for m in methods if m not in ("cmcr", "supervised"))):
      if common(m, "supervised"):
        for k in COMPARED:
          out["goal"][k][m] = diff(hits[m], hits["supervised"], common(m, "supervised"), k, scale=GOAL)
  for a, b in HEAD_TO_HEAD:
    if a in hits and b in hits and common(a, b):
      for k in COMPARED:
        out["head_to_head"][k][f"{a} − {b}"] = diff(hits[a], hits[b], common(a, b), k, resample_seeds=True)
  return out


def _fmt_diff(d) -> str:
  return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]{'*' if d['excludes_zero'] else ''} " \
         f"{d['wins']}/{d['n_seeds']}"


def comparison_markdown(comp: dict, summary: dict) -> str:
  """``cmcr − m`` per method and metric with its interval (``*``: excludes zero) and the seeds cmcr wins; then the
  goal test of every method with its share of the supervised ceiling, and the head-to-head rows."""
  if not comp:
    return ""

  def row(name, ds, *extra):
    return "| " + " | ".join([name, *map(_fmt_diff, ds), *extra]) + " |"

  lines = []
  if comp[COMPARED[0]]:
    lines += ["| cmcr − method | " + " | ".join(COMPARED) + " |", "|---|" + "---:|" * len(COMPARED)]
    lines += [row(m, [comp[k][m] for k in COMPARED]) for m in comp[COMPARED[0]]]
  goal, h2h = comp["goal"][COMPARED[0]], comp["head_to_head"][COMPARED[0]]
  if goal or h2h:
    def share(m):
      sup = summary["supervised"][NO_PAIRS]
      return ", ".join(f"{100 * summary[m][NO_PAIRS][k]['mean'] / max(sup[k]['mean'], 1e-12):.1f}%" for k in COMPARED)

    lines += ["", f"| goal ({GOAL:g} × supervised) and head to head | " + " | ".join(COMPARED) +
              " | share of supervised |", "|---|" + "---:|" * (len(COMPARED) + 1)]
    lines += [row(f"{m} − {GOAL:g} × supervised (> 0: reached)", [comp["goal"][k][m] for k in COMPARED], share(m))
              for m in goal]
    lines += [row(f"{name} (seeds resampled too)", [comp["head_to_head"][k][name] for k in COMPARED], "")
              for name in h2h]
  return "\n".join(lines).strip("\n")


def run(cfg, workdir: str) -> dict:
  """Runs the C-MCR experiment ``cfg`` in ``workdir`` (see the module docstring); returns ``{method: {metric:
  mean over seeds}}``."""
  # --- config and data, checked before anything is written (a user error leaves no workdir behind) -------------
  with cfg_lib.user_errors():
    CONFIG.validate(cfg)
    spaces, info = load_spaces(cfg)
    check_data(cfg, spaces)
    seeds, methods = list(range(cfg.seeds)), list(cfg.methods)
    keyed = {(m, s): cell_settings(m, s, cfg) for s in seeds for m in cmcr.METHODS}  # reads the data's hashes
  t_start = time.time()
  wd.save_config(workdir, cfg)
  print(f"space 1: {len(spaces['a_memory'])} A-memory rows, dim {spaces['b'].shape[1]}; space 2: "
        f"{len(spaces['c_memory'])} C-memory rows, dim {spaces['b_prime'].shape[1]}; {len(spaces['b'])} shared "
        f"texts; {len(spaces['a_eval'])} A–C evaluation pairs; {len(seeds)} seed(s)")
  store = sweep.CellStore(workdir)
  cells = {(m, NO_PAIRS, s): store.load(m, NO_PAIRS, s, key=keyed[m, s].key) for s in seeds for m in methods}
  todo = [(m, s) for s in seeds for m in methods if cells[m, NO_PAIRS, s] is None]
  stale = sum(bool(store.others(m, NO_PAIRS, s, key=keyed[m, s].key)) for m, s in todo)
  print(f"{len(cells) - len(todo)} of {len(cells)} cells done before with these settings, {len(todo)} to run" +
        (f" ({stale} of them stored under other settings, kept but not used)" if stale else ""))
  print(f"modality gap ‖μ_text − μ_image‖: space 1 {info['gap_space_1']:.3f}, space 2 {info['gap_space_2']:.3f}")
  trained = [method_options(m, cfg) for m, _ in todo if m in VARIANTS]
  if trained:
    n_texts = len(spaces["b"])
    lo, hi = distributed.local_row_range(n_texts, mesh=train_lib.data_mesh())
    if jax.process_count() > 1:
      print(f"process {jax.process_index()}/{jax.process_count()} holds texts [{lo}, {hi}) of {n_texts}")
    for consistency in sorted({o["consistency"] for o in trained if "retrieval" in o}):
      pseudo = pseudo_embeddings(spaces, cfg, slice(lo, hi), consistency=consistency)
      spaces.update({k: host_block(lo, v) for k, v in pseudo.items()})  # readers of this host's rows
  writer = wd.MetricWriter(workdir)
  for method, seed in wd.progress(todo, desc="cells", total=len(todo)):
    record, per_query = run_cell(method, seed, settings=keyed[method, seed], spaces=spaces, cfg=cfg,
                                 workdir=workdir, writer=writer)
    writer.write(cfg.steps, record["metrics"], prefix=f"eval/{method}/s{seed}/")
    if wd.is_primary():
      store.save(record, per_query)
    wd.sync(f"done:{method}:{seed}")
    cells[method, NO_PAIRS, seed] = sweep.to_json(record)
    r = record["metrics"]
    print(f"  {method:16s} seed {seed}  A→C R@1 {r['a2c_r1']:.4f}  C→A R@1 {r['c2a_r1']:.4f}")
  writer.close()

  # --- the table's methods: config.methods, then every other method stored complete under the same settings ----
  extra_methods = []
  for m in cmcr.METHODS:
    found = {(m, NO_PAIRS, s): store.load(m, NO_PAIRS, s, key=keyed[m, s].key) for s in seeds}
    if m not in methods and all(found.values()):
      extra_methods.append(m)
      cells.update(found)
  shown = methods + extra_methods
  if extra_methods:
    print(f"also in the table: {', '.join(extra_methods)} (stored earlier in {workdir} with the same settings)")
  summary = sweep.summarise(cells, methods=shown, ps=[NO_PAIRS], seeds=seeds, confidence=CONFIDENCE,
                            metrics=METRICS)
  means = {m: {k: v["mean"] for k, v in (summary[m][NO_PAIRS] or {}).items() if v} for m in shown}
  extra = {"summary": {m: summary[m][NO_PAIRS] for m in shown}, "confidence": CONFIDENCE, "seeds": seeds,
           "methods_run": methods, "methods_from_store": extra_methods, "cells_run_now": len(todo),
           "cells": [cells[m, NO_PAIRS, s] for s in seeds for m in shown],
           "n_texts": len(spaces["b"]), "n_eval": len(spaces["a_eval"]), **info,
           "seconds": round(time.time() - t_start, 1)}
  comp = comparisons(store, cells, shown, seeds) if wd.is_primary() else {}
  extra["comparisons"] = comp
  sup, cm = means.get("supervised"), means.get("cmcr")
  if sup and cm and sup["a2c_r1"] + sup["c2a_r1"] > 0:
    extra["cmcr_over_supervised_r1"] = round((cm["a2c_r1"] + cm["c2a_r1"]) / (sup["a2c_r1"] + sup["c2a_r1"]), 4)
  wd.write_results(workdir, means, **sweep.to_json(extra))
  if not wd.is_primary():
    return means
  interval = f"; mean ± {100 * CONFIDENCE:g}% interval over {len(seeds)} seeds" if len(seeds) > 1 else ""
  header = f"C-MCR results (A↔C retrieval over {len(spaces['a_eval'])} held-out pairs{interval}):"
  table = markdown(summary, shown)
  gaps = (f"Modality gap ‖μ_text − μ_image‖: space 1 {info['gap_space_1']:.3f}, space 2 {info['gap_space_2']:.3f}.")
  cmp_table = comparison_markdown(comp, summary)
  if cmp_table:
    table += (f"\n\nPaired differences (per-query bootstrap over the {len(spaces['a_eval'])} evaluation queries and "
              f"the seeds, {100 * CONFIDENCE:g}% interval; * excludes zero; then the seeds on which the first term is "
              "ahead):\n\n"
              + cmp_table)
  table += "\n\n" + gaps
  sio.write_text(os.path.join(workdir, "results.md"), f"{header}\n\n{table}\n")
  plot_curves(os.path.join(workdir, "metrics.jsonl"), [m for m in shown if m != "no_connection"], seeds,
              os.path.join(workdir, "training_curves.png"))
  print(f"\n{header}\n\n{table}")
  print(f"\n{len(todo)} cells run in {time.time() - t_start:.1f} s; results in {workdir}/results.{{json,md}}")
  return means


def plot_curves(metrics_path: str, methods: list[str], seeds: list[int], path: str):
  """Training loss of every trained (method, seed) against the step, from ``metrics.jsonl`` (resumed runs
  included; a step logged again, by a resumed or a re-keyed run, shows its latest value)."""
  if not methods or not os.path.exists(metrics_path):
    return
  plt = wd.pyplot()
  curves: dict[tuple, dict[int, float]] = {(m, s): {} for m in methods for s in seeds}
  for rec in sio.read_jsonl(metrics_path):
    for m, s in curves:
      if f"train/{m}/s{s}/loss" in rec:
        curves[m, s][rec["step"]] = rec[f"train/{m}/s{s}/loss"]
  fig, ax = plt.subplots(figsize=(6, 4))
  styles = sweep.method_styles(methods)
  for (m, s), c in curves.items():
    if c:
      steps = sorted(c)
      ax.plot(steps, [c[i] for i in steps], label=m if s == seeds[0] else None, color=styles[m]["color"], lw=1)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  ax.legend(fontsize=7)
  fig.tight_layout()
  wd.save_figure(fig, path)


if __name__ == "__main__":
  cfg_lib.launch(run, "configs/cmcr.py")
