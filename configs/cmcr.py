r"""C-MCR: connect two contrastive spaces through shared texts, with no A–C pair (experiments/cmcr.py).

Launch (one convention for every experiment; a rerun with the same workdir resumes)::

  python experiments/cmcr.py --config configs/cmcr.py:demo --workdir workdirs/cmcr_demo
  python experiments/cmcr.py --config configs/cmcr.py:byo --workdir workdirs/clip_clap \
      --config.data.a_memory=clip_images.npy --config.data.b=clip_texts.npy \
      --config.data.b_prime=clap_texts.npy --config.data.c_memory=clap_audio.npy \
      --config.data.a_eval=clip_eval_images.npy --config.data.c_eval=clap_eval_audio.npy
  python experiments/cmcr.py --config configs/cmcr.py:demo --workdir workdirs/cmcr_tau \
      --config.temperature=0.02 --config.methods=cmcr,no_connection

Variants (``configs/cmcr.py:VARIANT``):

* ``demo`` — offline: space 1 = (EfficientNet-Lite0 image, all-MiniLM-L6-v2 text) and space 2 =
  (all-mpnet-base-v2 text, EfficientNet-Lite2 image) on openclipart, each first aligned by a closed-form teacher
  on its own half of the training images; C-MCR connects them through the training captions and is evaluated on
  Lite0-image ↔ Lite2-image retrieval of held-out pictures.
* ``byo`` — bring your own spaces as ``.npy`` files (paper-size projectors and batch, for a GPU).
* ``smoke`` — ``.npy`` input, tiny projectors and a few steps: for tests.

Methods: ``cmcr`` (the paper), ``cmcr_no_noise`` / ``cmcr_no_pseudo`` / ``cmcr_no_intra`` (ablations: σ² = 0,
no pseudo-pair term, λ = 0), ``supervised`` (the same projectors trained with A–C pairs: needs ``a_train`` and
``c_train``), ``no_connection`` (cosine between the raw spaces when their dimensions match, else chance).
Unknown keys in overrides are rejected by ml_collections (the config is locked).
"""

import ml_collections

from sotalign_jax.cmcr import METHODS
VARIANTS = ("demo", "byo", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "demo"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/cmcr.py; choose one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.methods = ",".join(METHODS)  # comma-separated subset of METHODS, in the order they run

  # --- data --------------------------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.source = "demo"         # demo (two openclipart embedding caches) | npy (the files below)
  c.data.a_memory = ""           # [m_a, d1] modality A in space 1 (e.g. CLIP images), unpaired
  c.data.b = ""                  # [n, d1] texts in space 1 (e.g. CLIP text)
  c.data.b_prime = ""            # [n, d2] the same texts, same order, in space 2 (e.g. CLAP text)
  c.data.c_memory = ""           # [m_c, d2] modality C in space 2 (e.g. CLAP audio), unpaired
  c.data.a_eval = ""             # [n_eval, d1] evaluation A rows, row-aligned with c_eval
  c.data.c_eval = ""             # [n_eval, d2]
  c.data.a_train = ""            # optional [n_pairs, d1] A–C training pairs, for `supervised` only
  c.data.c_train = ""            # [n_pairs, d2]
  c.data.normalize = True        # L2-normalise every row first (contrastive spaces are cosine spaces)

  # --- demo: two openclipart caches written by `python -m sotalign_jax.cli.embed` ------------------------------
  c.demo = ml_collections.ConfigDict()
  c.demo.cache_1 = "data_cache/openclipart__efficientnet-lite0__all-MiniLM-L6-v2"  # A = image, B = text
  c.demo.cache_2 = "data_cache/openclipart__efficientnet-lite2__all-mpnet-base-v2"  # B' = text, C = image
  c.demo.teacher = "cca"         # closed form that makes each space contrastive: cca | ridge | procrustes
  c.demo.cca_dim = 256
  c.demo.cca_reg = 0.1
  c.demo.ridge_lam = 10.0
  c.demo.eval_split = "test"     # held-out pictures neither space nor C-MCR saw ("val" while tuning)

  # --- C-MCR (paper values in comments) ---------------------------------------------------------------------
  c.hidden = 1024                # projector hidden width (paper 1024; 0: Linear → BatchNorm only)
  c.out = 512                    # shared dimension (paper 512)
  c.noise_variance = 0.004       # σ² of the semantic-completion noise (paper 0.004)
  c.retrieval_temperature = 0.01  # τ1 of the soft memory retrieval (paper 0.01)
  c.temperature = 0.05           # τ2 of the InfoNCE losses (paper 0.05)
  c.intra_weight = 0.1           # λ of the intra-space loss (paper 0.1)
  c.pseudo_weight = 1.0          # weight of the pseudo A–C pair loss

  # --- optimisation ---------------------------------------------------------------------------------------
  c.lr = 1e-3                    # AdamW, cosine decay after a linear warm-up
  c.weight_decay = 1e-4
  c.warmup_steps = 100
  c.steps = 5000
  c.batch_size = 4096            # texts per step (paper 4096); sampled with replacement if larger than the pool

  # --- bookkeeping ----------------------------------------------------------------------------------------
  c.log_every = 100
  c.ckpt_every = 1000

  if variant == "demo":
    # CPU-sized: a few minutes for all six methods on two cores.
    # Chosen on val (C-MCR a2c / c2a R@1; supervised ≈ 0.96 / 0.97 throughout):
    #   hidden 512, τ2 0.05, 300 steps: .596/.607; τ2 0.1: .619/.614; + linear projector: .668/.636;
    #   + 600 steps: .727/.724; 1200: .734/.729; 2400: .713/.729. Noise σ² 0.016 / 0.032 and τ1 0.02 / 0.005 worse.
    c.hidden = 0                 # Linear → BatchNorm: with ~3k shared texts the MLP projector over-fits the text link
    c.out = 256
    c.temperature = 0.1
    c.noise_variance = 0.008     # the paper's noise-to-signal ratio d·σ² ≈ 2 at d = 256 (0.004 is for d = 512)
    c.demo.cca_reg = 10.0        # chosen on val: a strongly regularised CCA keeps each space's image geometry
    c.steps = 1200
    c.batch_size = 512
    c.warmup_steps = 30
    c.log_every = 25
    c.ckpt_every = 100
  elif variant == "byo":
    c.data.source = "npy"
    c.methods = "cmcr,no_connection"  # add supervised when data.a_train / data.c_train are given
  elif variant == "smoke":
    c.data.source = "npy"
    c.hidden = 64
    c.out = 32
    c.steps = 60
    c.batch_size = 128
    c.warmup_steps = 5
    c.log_every = c.ckpt_every = 10
  return c
