r"""SOTAlign and its baselines on an embedding cache (experiments/sotalign.py).

Launch (one convention for every experiment; a rerun with the same workdir resumes)::

  python experiments/sotalign.py --config configs/sotalign.py:demo --workdir workdirs/sotalign_demo
  python experiments/sotalign.py --config configs/sotalign.py:full --workdir workdirs/sotalign_full
  python experiments/sotalign.py --config configs/sotalign.py:demo --workdir workdirs/alpha \
      --config.sotalign.alpha=0.5 --config.methods=teacher_cca,sail,sotalign

Variants (``configs/sotalign.py:VARIANT``): ``demo`` (500 pairs, what ``make demo`` runs), ``full`` (sweeps
n_pairs ∈ {100, 500, 2000}), ``smoke`` (a few steps on whatever cache is given: for tests), and one per
method (``sail``, ``structure``, ``pseudo_label``, ``sotalign``, ``upper_bound``, ``teachers``) that runs only it.
Unknown keys in overrides are rejected by ml_collections (the config is locked).
"""

import ml_collections

from sotalign_jax.objectives import METHODS
VARIANTS = ("demo", "full", "smoke", "teachers") + tuple(m for m in METHODS if not METHODS[m].teacher)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "demo"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/sotalign.py; choose one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.methods = ",".join(METHODS)  # comma-separated subset of METHODS, in the order they run

  # --- data: embedding caches written by `python -m sotalign_jax.cli.embed` ---------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.cache = "data_cache/openclipart__efficientnet-lite0__all-MiniLM-L6-v2"
  c.data.n_pairs = 500           # paired pool, taken from the training images in a fixed hash order
  c.data.n_pairs_sweep = ""      # e.g. "100,500,2000": also train every method at these sizes (table + plot)
  c.data.extra_unpaired_text = ""   # caches of extra unpaired captions (same text encoder), comma-separated
  c.data.extra_unpaired_images = ""  # caches of extra unpaired images (same image encoder), comma-separated
  c.data.max_unpaired = -1       # cap on each unpaired pool (-1: all), to study pool size

  # --- evaluation ----------------------------------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"          # "val" while tuning; "test" is never tuned on
  c.eval.fashion_mnist_cache = "data_cache/fashion_mnist__efficientnet-lite0__all-MiniLM-L6-v2"
  c.eval.tuxpaint_cache = "data_cache/tuxpaint__efficientnet-lite0__all-MiniLM-L6-v2"

  # --- teacher (closed form, pairs only) -----------------------------------------------------------------------
  c.teacher = ml_collections.ConfigDict()
  c.teacher.name = "cca"         # the teacher SOTAlign distils and every head starts from: cca | ridge | procrustes
  c.teacher.cca_reg = 0.1
  c.teacher.cca_dim = 256        # shared dimension (capped at n_pairs - 1)
  c.teacher.ridge_lam = 10.0

  # --- heads and optimisation (shared by every trained method) ------------------------------------------------
  c.head = "linear"              # linear | mlp (residual MLP on top of the linear teacher map)
  c.mlp_hidden = 512
  c.optimizer = "adamw"          # any optax optimizer taking (learning_rate, weight_decay): adamw | lion
  c.lr = 1e-3
  c.weight_decay = 1e-4
  c.warmup_steps = 50
  c.steps = 600
  c.batch_paired = 256
  c.batch_unpaired = 512
  c.siglip_t = 10.0              # SigLIP init: t' = log 10, b = -10
  c.siglip_b = -10.0

  # --- per-method terms ----------------------------------------------------------------------------------------
  c.sotalign = ml_collections.ConfigDict()
  c.sotalign.divergence = "klot"   # klot | sinkhorn_divergence (ablation)
  c.sotalign.alpha = 10.0        # tuned on val, 500 pairs: α 0.1 / 1 (1000 steps), 10 / 100 (600) → i2t R@1 .100/.105/.112/.110
  c.sotalign.eps_student = 0.05
  c.sotalign.eps_teacher = 0.005
  c.sotalign.sinkhorn_iters = 100
  c.structure = ml_collections.ConfigDict()
  c.structure.alpha = 1.0
  c.structure.temperature = 0.05
  c.pseudo_label = ml_collections.ConfigDict()
  c.pseudo_label.alpha = 1.0
  c.pseudo_label.eps = 0.005

  # --- bookkeeping -------------------------------------------------------------------------------------------
  c.log_every = 50
  c.eval_every = 250
  c.ckpt_every = 250

  if variant == "full":
    c.data.n_pairs_sweep = "100,500,2000"
    c.steps = 3000
  elif variant == "smoke":
    c.steps = 20
    c.batch_paired = 32
    c.batch_unpaired = 64
    c.teacher.cca_dim = 16
    c.data.n_pairs = 64
    c.log_every = c.eval_every = c.ckpt_every = 10
    c.sotalign.sinkhorn_iters = 20
  elif variant == "teachers":
    c.methods = "teacher_cca,teacher_ridge,teacher_procrustes"
  elif variant in METHODS:
    c.methods = variant
  return c
