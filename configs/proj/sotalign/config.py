r"""SOTAlign and its baselines, this project's recipe: a preset of the engine (:mod:`sotalign_jax.runtime.engine`;
launched by experiments/sotalign.py; results in ``configs/proj/sotalign/README.md``).

Launch (a rerun with the same workdir reuses every (method, p, seed) cell whose settings are unchanged, and resumes a
trained cell's checkpoint only under the same settings: cells and checkpoints are keyed by a hash of everything that
determines their numbers; see sotalign_jax/runtime/engine.py)::

  python experiments/sotalign.py --config configs/proj/sotalign/config.py:demo --workdir workdirs/sotalign_demo
  python experiments/sotalign.py --config configs/proj/sotalign/config.py:full --workdir workdirs/sotalign_full
  python experiments/sotalign.py --config configs/proj/sotalign/config.py:sotalign --workdir workdirs/n2000 \
      --config.n_pairs=2000
  python experiments/sotalign.py --config configs/proj/sotalign/config.py:demo --workdir workdirs/alpha \
      --config.hparams.sotalign.alpha=0.5 --config.methods=cca,sail,sotalign

On your own embeddings, float32 ``.npy`` files (:mod:`sotalign_jax.data.files`; ``data.cache`` is then not read;
the pairs at p are the first p rows of a per-seed order of the pair files, the pools the unpaired files)::

  python experiments/sotalign.py --config configs/proj/sotalign/config.py:demo --workdir workdirs/mine \
      --config.n_pairs=-1 --config.data.pairs_x=px.npy --config.data.pairs_y=py.npy \
      --config.data.unpaired_x=ux.npy --config.data.unpaired_y=uy.npy \
      --config.data.val_x=vx.npy --config.data.val_y=vy.npy --config.data.test_x=tx.npy --config.data.test_y=ty.npy

The argument after ``:`` is a comma list of presets and ``key=value`` fields, applied left to right
(:func:`sotalign_jax.runtime.config.parse_arg`). Presets:

* ``demo`` (the default): every method of :data:`METHODS` but ``sotalign_paper`` at p = 500, one seed;
* ``full``: p ∈ {100, 500, 2000}, 3,000 steps (the tables and the plot ``sweep.png`` over p);
* ``smoke``: ``tiny`` at p = 64 and 20 steps, on whatever cache is given (for tests);
* ``teachers``: the closed forms only (``cca``, ``ridge``, ``procrustes``);
* one per trained method (``sail``, ``sail_semi``, ``structure``, ``pseudo_label``, ``nnclr``, ``sotalign``,
  ``sotalign_paper``, ``upper_bound``) that runs only it. ``sotalign_paper`` runs only when named: its 2,000-step
  recipe with an α grid at batches of up to 32k is for an accelerator.

Fields: ``steps`` (int: every trained method of this recipe; ``sotalign_paper`` keeps its own 2,000 unless
``tiny``), ``seeds`` (int, default 1: seeds 0 … seeds − 1, each with its own nested pairs), ``tiny`` (bool: tiny
batches and solver sizes, small statistics, no Tux Paint / Fashion-MNIST caches). ``methods`` and ``n_pairs`` are
tuples: set them with ``--config.methods=...`` / ``--config.n_pairs=...``. Unknown names, and unknown
``--config.KEY`` overrides, are rejected naming the known ones.

**One meaning per method name.** This preset runs the *same* registered methods (:data:`sotalign_jax.aligners.
ALIGNERS`) as the benchmark (``configs/proj/benchmark/config.py``); what differs is their options, which are this
project's recipe (:data:`RECIPE`, :data:`TEACHER_OPTIONS`, :data:`METHOD_OPTIONS`) written into
``config.hparams.<method>.<option>``: every method is centred on the pairs' mean without unit norm
(``center="pairs"``, ``normalize=False``), so the closed forms are ``sotalign_jax.teachers.fit`` and every fitted
map folds into heads on raw features; the teacher is a regularised CCA (λ = 0.1, d = min(256, p − 1)) and ridge's
λ is 10. The benchmark uses the registry's defaults (centred on all rows and unit-normed). The difference is in the
hparams, which are part of every cell's key and recorded with every cell in ``results.json`` — never in the method
name. Any of them can be overridden, e.g. ``--config.hparams.sotalign.alpha=3``.

**Data** (:mod:`sotalign_jax.data.protocol`): the cache's own ``test`` split is the test set and its ``val`` split
the validation set (``data.split="cache"``; ``val`` is for tuning, and for ``sotalign_paper``'s α; ``test`` is never
tuned on). The other images (the cache's ``paired`` and ``unpaired`` splits alike) are the training images: per seed
the first p of a hashed order are the pairs (with their first caption; nested across p), and the images *and all
captions* of the rest are the unpaired pools with the pairing dropped (``data.unpaired_mode="shared"``, as this
experiment always did). The cache is read memory-mapped (``data.mmap``) and the pools are handed to the methods as
lazy row sources, so on several hosts each reads only its rows. ``data.extra_unpaired_text`` /
``extra_unpaired_images`` append other caches (e.g. WordNet lemmas) to every unpaired pool.

**Evaluation**: retrieval (R@1/5/10 and ranks, every caption of a test image a positive), matching on the test
images with their first captions (FOSCTTM and assignment accuracy: one ≈ 460 × 460 assignment on openclipart, a
few milliseconds), zero-shot Fashion-MNIST and Tux Paint image→text R@1 (``evals.<name>.cache=""`` switches one
off; a missing cache gives NaN).
"""

import ml_collections
import optax

from sotalign_jax import aligners
from sotalign_jax.aligners.base import CENTER_MODES
from sotalign_jax.aligners.trained import TEACHERS
from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import engine

TEACHER_METHODS = ("cca", "ridge", "procrustes")
TRAINED = ("sail", "sail_semi", "structure", "pseudo_label", "nnclr", "sotalign", "upper_bound")
METHODS = TEACHER_METHODS + TRAINED + ("sotalign_paper",)  # registry names (sotalign_jax.aligners)
PRESETS = {
    "demo": {},
    "full": {"n_pairs": (100, 500, 2000), "steps": 3000},
    "smoke": {"tiny": True, "n_pairs": (64,), "steps": 20},
    "teachers": {"methods": TEACHER_METHODS},
    **{m: {"methods": (m,)} for m in TRAINED + ("sotalign_paper",)},
}

PREPROCESS = {"center": "pairs", "normalize": False}
"""Every method but ``sotalign_paper``: centred on the pairs' mean, no unit norm (heads on raw features)."""
TEACHER_OPTIONS = {"dim": 256, "reg": 0.1, "lam": 10.0}
"""The closed forms: CCA's shared dimension (capped at p − 1) and ridge, ridge's λ."""
RECIPE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 50, "batch_paired": 256,
          "batch_unpaired": 512, "head": "linear", "hidden": 512, "siglip_t": 10.0, "siglip_b": -10.0,
          "teacher": "cca", "teacher_dim": 256, "teacher_reg": 0.1, "ridge_lam": 10.0}
"""This project's recipe, shared by every trained method but ``sotalign_paper`` (whose recipe is its own): linear
heads initialised at the CCA teacher, SigLIP (t = 10, b = −10) on the pairs, AdamW."""
METHOD_OPTIONS = {
    "sotalign": {"alpha": 10.0, "eps_student": 0.05, "eps_teacher": 0.005, "sinkhorn_iters": 100},
    "structure": {"alpha": 1.0, "temperature": 0.05},
    "pseudo_label": {"alpha": 1.0, "eps": 0.005},
    "sail_semi": {"alpha": 1.0},
    "nnclr": {"alpha": 1.0},
}
"""Each method's own options (README, SOTAlign: how α was chosen)."""
TINY = {"batch_paired": 32, "batch_unpaired": 64, "teacher_dim": 16, "dim": 16, "sinkhorn_iters": 20}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = cfg_lib.parse_arg(arg, presets=PRESETS, methods=TEACHER_METHODS + TRAINED, n_pairs=(500,), steps=600,
                          seeds=1, tiny=False)
  c = engine.base_config(methods=arg.methods, n_pairs=arg.n_pairs, seeds=arg.seeds, title="SOTAlign")
  c.data.split = "cache"          # the cache's test and val splits; data.test_size / val_size are unused
  c.data.unpaired_mode = "shared"  # the images and all captions of the rest, the pairing dropped
  c.data.mmap = True
  c.eval.table_metrics = ("i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5", "i2t_r10", "t2i_r10", "zeroshot_fashion_mnist",
                          "tuxpaint_i2t_r1")
  c.eval.compare_metrics = ("i2t_r1", "t2i_r1", "foscttm")
  c.eval.plot_metrics = ("i2t_r1", "t2i_r1")
  c.log_every = 50
  c.ckpt_every = 250

  for m in METHODS:
    h = c.hparams[m]
    known = aligners.get(m).defaults
    options = {} if m == "sotalign_paper" else {**PREPROCESS, **TEACHER_OPTIONS, **RECIPE, "steps": arg.steps,
                                                  **METHOD_OPTIONS.get(m, {})}
    if arg.tiny:
      options.update(TINY)
      if m == "sotalign_paper":
        options["steps"] = arg.steps
    for k, v in options.items():
      if k in known:
        h[k] = v  # adds CCA's `dim` too, whose registry default (None: min(dx, dy, p - 1)) is no config field

  if arg.tiny:
    c.data.min_unpaired = 20
    c.eval.n_boot = 200
    c.eval.geometry_pairs = 100
    c.eval.geometry_perms = 20
    c.evals.fashion_mnist.cache = c.evals.tuxpaint.cache = ""
    c.log_every = c.ckpt_every = 10
  return c


TRAINED_CHECKS = {"ints": ("steps", "batch_paired", "batch_unpaired", "teacher_dim", "hidden", "sinkhorn_iters",
                           "dim"),
                  "positive": ("lr", "eps_student", "eps_teacher", "eps", "ridge_lam", "lam", "reg", "teacher_reg",
                               "temperature"),
                  "choices": {"head": ("linear", "mlp"), "teacher": TEACHERS, "center": CENTER_MODES}}


def validate(c: ml_collections.ConfigDict):
  """The engine's checks (:func:`sotalign_jax.runtime.engine.validate`), then the values of the recipe's options of
  every method of ``config.methods`` (so that ``--config.hparams.sotalign.steps=0`` or ``...head=transformer`` is a
  one-line user error at start-up, not a failed cell)."""
  engine.validate(c)
  for label in c.methods:
    method = engine.method_of(label, c)
    h = c.hparams.get(method, {})
    cfg_lib.check_ints(c, [f"hparams.{method}.{k}" for k in TRAINED_CHECKS["ints"] if k in h])
    cfg_lib.check_positive(c, [f"hparams.{method}.{k}" for k in TRAINED_CHECKS["positive"] if k in h])
    for k, choices in TRAINED_CHECKS["choices"].items():
      if k in h:
        cfg_lib.check_one_of(c, f"hparams.{method}.{k}", choices)
    if "optimizer" in h and not hasattr(optax, h.optimizer):
      raise ValueError(f"config.hparams.{method}.optimizer: optax has no optimizer {h.optimizer!r} (try adamw or "
                       "lion)")
