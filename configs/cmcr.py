r"""C-MCR: connect two contrastive spaces through shared texts, with no A–C pair (experiments/cmcr.py).

Launch (one convention for every experiment; a rerun with the same workdir reuses the (method, seed) cells computed
with the same settings and computes the others)::

  python experiments/cmcr.py --config configs/cmcr.py:demo --workdir workdirs/cmcr_demo
  python experiments/cmcr.py --config configs/cmcr.py:byo --workdir workdirs/clip_clap \
      --config.data.a_memory=clip_images.npy --config.data.b=clip_texts.npy \
      --config.data.b_prime=clap_texts.npy --config.data.c_memory=clap_audio.npy \
      --config.data.a_eval=clip_eval_images.npy --config.data.c_eval=clap_eval_audio.npy
  python experiments/cmcr.py --config configs/cmcr.py:demo,steps=600 --workdir workdirs/cmcr_tau \
      --config.temperature=0.02 --config.methods="('cmcr','no_connection')" --config.seeds=3

The argument after ``:`` is a comma list of presets and ``key=value`` fields, applied left to right
(:func:`sotalign_jax.runtime.config.parse_arg`). Presets:

* ``demo`` (the default) — offline: space 1 = (EfficientNet-Lite0 image, all-MiniLM-L6-v2 text) and space 2 =
  (all-mpnet-base-v2 text, EfficientNet-Lite2 image) on openclipart, each first aligned by a closed-form teacher
  on its own half of the training images; C-MCR connects them through the training captions and is evaluated on
  Lite0-image ↔ Lite2-image retrieval of held-out pictures. CPU-sized settings chosen on val (README, C-MCR).
* ``byo`` — bring your own spaces as ``.npy`` files (paper-size projectors and batch, for a GPU).
* ``smoke`` — ``.npy`` input, tiny projectors and a few steps: for tests.

Fields: ``source`` (``demo`` | ``npy``), ``steps`` (int), ``tiny`` (bool); preset ``sensitivity`` runs ``cmcr`` and
its σ² / λ variants. Methods (``sotalign_jax.cmcr.METHODS``; the default is every one but the sensitivity): ``cmcr``
(the paper), the ablations ``cmcr_ttc`` / ``cmcr_ttc_avc`` / ``cmcr_ttc_intra`` / ``cmcr_no_consistency`` /
``cmcr_no_noise``, ``supervised`` (the same projectors trained with A–C pairs: needs ``a_train`` and ``c_train``),
and the zero-pair baselines ``no_connection`` (cosine between the raw spaces when their dimensions match, else
chance), ``text_pivot``, ``text_lstsq``, ``wasserstein_procrustes`` and ``mini_vec2vec`` (between the A and C
memories, no texts), ``text_anchored`` (mini-vec2vec's refinement from the texts' pseudo pairs). ``seeds`` (demo:
3): each method runs with seeds ``0 .. seeds-1`` (projector initialisation, batches, noise) and the table shows
the mean with a 95% interval, paired differences to ``cmcr`` and the goal test of every method.
Unknown names, and unknown ``--config.KEY`` overrides, are rejected naming the known ones.
"""

import ml_collections
import optax

from sotalign_jax import teachers
from sotalign_jax.cmcr import ABLATIONS, BASELINES, METHODS, SENSITIVITY
from sotalign_jax.runtime import config as cfg_lib

NPY_KEYS = ("a_memory", "b", "b_prime", "c_memory", "a_eval", "c_eval", "a_train", "c_train")
MAIN = ("cmcr", "supervised", *ABLATIONS, *BASELINES)  # every method but the σ² / λ sensitivity
PRESETS = {
    "demo": {"source": "demo", "steps": 1200},
    "sensitivity": {"methods": ("cmcr", *SENSITIVITY)},  # σ² × 1/4, × 4 and λ × 1/10, × 10 around the config's
    "byo": {"source": "npy", "steps": 5000, "methods": ("cmcr", "no_connection")},  # + supervised given A–C pairs
    "smoke": {"source": "npy", "steps": 60, "tiny": True},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = cfg_lib.parse_arg(arg, presets=PRESETS, methods=MAIN, source="demo", steps=1200, tiny=False)
  c = ml_collections.ConfigDict()
  c.seed = 0                     # base of every PRNG key: seed s trains with fold_in(key(seed), s)
  c.seeds = 3 if arg.source == "demo" else 1  # seeds 0 .. seeds-1 per method: intervals and paired differences
  c.methods = arg.methods        # subset of METHODS, in the order they run

  # --- data --------------------------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.source = arg.source     # demo (two openclipart embedding caches) | npy (the files below)
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
  c.demo.eval_split = "test"     # held-out pictures neither space nor C-MCR saw ("val" while tuning)
  c.demo.gap = 0.75              # planted modality gap g (experiments/cmcr.py planted_gap; ‖μ_t − μ_i‖ ≈ 0.85, CLIP's
  #                                is ≈ 0.8); 0 keeps the CCA spaces, which centre every modality and have no gap
  c.teacher = ml_collections.ConfigDict()  # the closed form that makes each demo space contrastive
  c.teacher.name = "cca"         # cca | ridge | procrustes
  c.teacher.cca_dim = 256
  c.teacher.cca_reg = 0.1
  c.teacher.ridge_lam = 10.0

  # --- C-MCR (paper values in comments) ---------------------------------------------------------------------
  c.head = ml_collections.ConfigDict()  # the projector of each space
  c.head.kind = "mlp"            # mlp (Linear → BN → ReLU → Linear → BN, the paper's CLIP–CLAP head) | linear
  #                                (Linear → BN) | mlp_half (Linear → BN → ReLU, the CLIP–ULIP head: outputs ≥ 0)
  c.head.hidden = 1024           # MLP width (paper 1024)
  c.head.dim = 512               # shared dimension (paper 512)
  c.noise_variance = 0.004       # σ² of the semantic-completion noise (paper 0.004)
  c.retrieval_temperature = 0.01  # τ1 of the soft memory retrieval (paper 0.01)
  c.temperature = 0.05           # τ2 of the InfoNCE losses (paper 0.05)
  c.intra_weight = 0.1           # λ of the intra-space loss (paper 0.1)
  c.pseudo_weight = 1.0          # weight of the pseudo A–C pair loss

  # --- zero-pair baselines (no training) ------------------------------------------------------------------
  c.baselines = ml_collections.ConfigDict()
  c.baselines.lstsq_ridge = 1e-3  # text_lstsq: ridge α per text of the least-squares map b → b'
  c.baselines.wp = ml_collections.ConfigDict()  # wasserstein_procrustes between the A and C memories: the
  c.baselines.wp.batch_size = 2000              # benchmark's CPU-sized options (ZERO_PAIR_CPU in
  c.baselines.wp.refine_batch_size = 2000       # configs/proj/benchmark/config.py)
  c.baselines.wp.n_iterations = 50
  c.baselines.mv2v = ml_collections.ConfigDict()  # mini_vec2vec between the A and C memories (the library's defaults)
  c.baselines.mv2v.num_runs = 30                  # anchor runs of matched k-means centres
  c.baselines.mv2v.num_restarts = 30              # QAP starts per run
  c.baselines.mv2v.refine1_iterations = 100       # also text_anchored's
  c.baselines.mv2v.refine2_clusters = 500         # also text_anchored's (capped by the memories' rows)
  c.baselines.anchors = 1000     # text_anchored: shared texts drawn per seed whose pseudo pairs are the anchors

  # --- optimisation ---------------------------------------------------------------------------------------
  c.optimizer = "adamw"          # any optax optimizer taking (learning_rate, weight_decay); cosine decay after warm-up
  c.lr = 1e-3
  c.weight_decay = 1e-4
  c.warmup_steps = 100
  c.steps = arg.steps
  c.batch_size = 4096            # texts per step (paper 4096); sampled with replacement if larger than the pool

  # --- bookkeeping ----------------------------------------------------------------------------------------
  c.log_every = 100
  c.ckpt_every = 1000

  if arg.source == "demo":       # CPU-sized: a few minutes for all six methods on two cores; chosen on val
    c.head.kind = "linear"       # Linear → BatchNorm: with ~3k shared texts the MLP projector over-fits the text link
    c.head.dim = 256
    c.temperature = 0.1
    c.noise_variance = 0.008     # the paper's noise-to-signal ratio d·σ² ≈ 2 at d = 256 (0.004 is for d = 512)
    c.teacher.cca_reg = 10.0     # a strongly regularised CCA keeps each space's image geometry
    c.batch_size = 512
    c.warmup_steps = 30
    c.log_every = 25
    c.ckpt_every = 100
  if arg.tiny:
    c.baselines.wp.batch_size = c.baselines.wp.refine_batch_size = 500
    c.baselines.wp.n_iterations = 10
    c.baselines.wp.qap_inits = 30  # the library's 3,000 starts per centre matching are for real spaces
    c.baselines.mv2v.num_runs = c.baselines.mv2v.num_restarts = 5
    c.baselines.mv2v.refine1_iterations = 20
    c.baselines.mv2v.refine2_clusters = 50
    c.baselines.anchors = 200
    c.head.hidden = 64
    c.head.dim = 32
    c.batch_size = 128
    c.warmup_steps = 5
    c.log_every = c.ckpt_every = 10
  return c


def validate(c: ml_collections.ConfigDict):
  """Raises ``ValueError`` naming the first bad key (the checks that need no data)."""
  methods = cfg_lib.check_subset(c, "methods", METHODS)
  cfg_lib.check_ints(c, ("seeds", "steps", "batch_size", "head.hidden", "head.dim", "teacher.cca_dim", "log_every",
                        "ckpt_every"))
  cfg_lib.check_ints(c, ("warmup_steps",), minimum=0)
  cfg_lib.check_positive(c, ("lr", "temperature", "retrieval_temperature", "teacher.cca_reg", "teacher.ridge_lam"))
  cfg_lib.check_nonnegative(c, ("noise_variance", "intra_weight", "pseudo_weight", "weight_decay"))
  cfg_lib.check_one_of(c, "head.kind", ("linear", "mlp", "mlp_half"))
  cfg_lib.check_nonnegative(c, ("demo.gap", "baselines.lstsq_ridge"))
  cfg_lib.check_ints(c, ("baselines.wp.batch_size", "baselines.wp.refine_batch_size", "baselines.wp.n_iterations",
                        "baselines.mv2v.num_runs", "baselines.mv2v.num_restarts", "baselines.mv2v.refine1_iterations",
                        "baselines.mv2v.refine2_clusters", "baselines.anchors"))
  cfg_lib.check_one_of(c, "data.source", ("demo", "npy"))
  cfg_lib.check_one_of(c, "teacher.name", teachers.TEACHERS)
  cfg_lib.check_one_of(c, "demo.eval_split", ("val", "test"))
  if not hasattr(optax, c.optimizer):
    raise ValueError(f"config.optimizer: optax has no optimizer {c.optimizer!r} (try adamw or lion)")
  if c.data.source == "npy":
    missing = [k for k in NPY_KEYS[:6] if not c.data[k]]
    if missing:
      raise ValueError(f"config.data.source='npy' needs config.data.{{{','.join(missing)}}}: paths of .npy files")
    if "supervised" in methods and not (c.data.a_train and c.data.c_train):
      raise ValueError("config.methods includes 'supervised', which needs A–C training pairs: set "
                       "config.data.a_train and config.data.c_train, or drop it from config.methods")
