r"""SOTAlign and its baselines on an embedding cache or on embedding files (experiments/sotalign.py).

Launch (one convention for every experiment; a rerun with the same workdir reuses or resumes only what was computed
with the same settings: results and checkpoints are keyed by them, see experiments/sotalign.py)::

  python experiments/sotalign.py --config configs/sotalign.py:demo --workdir workdirs/sotalign_demo
  python experiments/sotalign.py --config configs/sotalign.py:full --workdir workdirs/sotalign_full
  python experiments/sotalign.py --config configs/sotalign.py:sotalign,n_pairs=2000 --workdir workdirs/n2000
  python experiments/sotalign.py --config configs/sotalign.py:demo --workdir workdirs/alpha \
      --config.sotalign.alpha=0.5 --config.methods=cca,sail,sotalign

On your own embeddings, float32 ``.npy`` files (:mod:`sotalign_jax.data.files`; ``data.cache`` is then not read)::

  python experiments/sotalign.py --config configs/sotalign.py:demo --workdir workdirs/mine \
      --config.data.pairs_x=px.npy --config.data.pairs_y=py.npy \
      --config.data.unpaired_x=ux.npy --config.data.unpaired_y=uy.npy \
      --config.data.val_x=vx.npy --config.data.val_y=vy.npy --config.data.test_x=tx.npy --config.data.test_y=ty.npy

The argument after ``:`` is a comma list of presets and ``key=value`` fields, applied left to right
(:func:`sotalign_jax.runtime.config.parse_arg`). Presets: ``demo`` (500 pairs; also the default), ``full`` (sweeps
n_pairs ∈ {100, 500, 2000}), ``smoke`` (a few tiny steps on whatever cache is given: for tests), ``teachers`` (the
closed forms only) and one per trained method (``sail``, ``sail_semi``, ``structure``, ``pseudo_label``, ``nnclr``,
``sotalign``, ``sotalign_paper``, ``upper_bound``) that runs only it (``sotalign_paper`` runs only when named: its
2,000-step recipe with an α grid is slow on a CPU). Fields: ``n_pairs`` (int), ``steps`` (int), ``tiny`` (bool: tiny
batches and solver sizes). Unknown names, and unknown ``--config.KEY`` overrides, are rejected naming the known
ones. Methods are registry names (:mod:`sotalign_jax.aligners`); ``config.<method>`` holds a method's own options.
"""

import ml_collections
import optax

from sotalign_jax import aligners
from sotalign_jax.aligners.base import CENTER_MODES
from sotalign_jax.aligners.trained import TEACHERS
from sotalign_jax.data.files import FILE_KEYS, check_keys
from sotalign_jax.runtime import config as cfg_lib

TEACHER_METHODS = ("cca", "ridge", "procrustes")
TRAINED = ("sail", "sail_semi", "structure", "pseudo_label", "nnclr", "sotalign", "upper_bound")
METHODS = TEACHER_METHODS + TRAINED + ("sotalign_paper",)  # registry names (sotalign_jax.aligners)
PRESETS = {
    "demo": {},
    "full": {"n_pairs_sweep": (100, 500, 2000), "steps": 3000},
    "smoke": {"tiny": True, "n_pairs": 64, "steps": 20},
    "teachers": {"methods": TEACHER_METHODS},
    **{m: {"methods": (m,)} for m in TRAINED + ("sotalign_paper",)},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = cfg_lib.parse_arg(arg, presets=PRESETS, methods=TEACHER_METHODS + TRAINED, n_pairs=500, n_pairs_sweep=(),
                          steps=600,
                          tiny=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.methods = arg.methods        # registry names (METHODS), in the order they run

  # --- data: embedding caches written by `python -m sotalign_jax.cli.embed` ---------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.cache = "data_cache/openclipart__efficientnet-lite0__all-MiniLM-L6-v2"
  c.data.n_pairs = arg.n_pairs   # paired pool, taken from the training images in a fixed hash order
  c.data.n_pairs_sweep = arg.n_pairs_sweep  # e.g. (100, 500, 2000): also train every method at these sizes
  c.data.extra_unpaired_text = ()    # caches of extra unpaired captions (same text encoder)
  c.data.extra_unpaired_images = ()  # caches of extra unpaired images (same image encoder)
  c.data.max_unpaired = -1       # cap on each unpaired pool (-1: all), to study pool size
  # file mode, instead of data.cache: float32 .npy [rows, dim] (sotalign_jax.data.files). pairs_x/pairs_y and
  # val_x/val_y and test_x/test_y are row-aligned couples; unpaired_x/unpaired_y have any sizes. data.n_pairs then
  # takes the first n rows of the pair files (-1: all of them).
  c.data.pairs_x = c.data.pairs_y = ""          # row-aligned pairs
  c.data.unpaired_x = c.data.unpaired_y = ""    # unpaired images, unpaired texts (any sizes)
  c.data.val_x = c.data.val_y = ""              # row-aligned validation pairs (optional)
  c.data.test_x = c.data.test_y = ""            # row-aligned test pairs (required in file mode)

  # --- evaluation ----------------------------------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"          # "val" while tuning; "test" is never tuned on
  c.eval.fashion_mnist_cache = "data_cache/fashion_mnist__efficientnet-lite0__all-MiniLM-L6-v2"  # "": skip
  c.eval.tuxpaint_cache = "data_cache/tuxpaint__efficientnet-lite0__all-MiniLM-L6-v2"  # "": skip

  # --- preprocessing of every method (sotalign_jax.aligners.base): centre on the pairs' mean, no unit norm, so the
  # closed forms are sotalign_jax.teachers.fit and every fitted map folds into heads on raw features -------------
  c.preprocess = ml_collections.ConfigDict()
  c.preprocess.center = "pairs"  # all | pairs | none
  c.preprocess.normalize = False

  # --- teacher (closed form, pairs only) -----------------------------------------------------------------------
  c.teacher = ml_collections.ConfigDict()
  c.teacher.name = "cca"         # the teacher SOTAlign distils and every head starts from: cca | ridge | procrustes
  c.teacher.cca_reg = 0.1
  c.teacher.cca_dim = 256        # shared dimension (capped at n_pairs - 1)
  c.teacher.ridge_lam = 10.0

  # --- heads and optimisation (shared by every trained method) ------------------------------------------------
  c.head = ml_collections.ConfigDict()
  c.head.kind = "linear"         # linear | mlp (residual MLP on top of the linear teacher map)
  c.head.hidden = 512            # MLP width (mlp only); the output dimension is the teacher's
  c.optimizer = "adamw"          # any optax optimizer taking (learning_rate, weight_decay): adamw | lion
  c.lr = 1e-3
  c.weight_decay = 1e-4
  c.warmup_steps = 50
  c.steps = arg.steps
  c.batch_paired = 256
  c.batch_unpaired = 512
  c.siglip_t = 10.0              # SigLIP init: t' = log 10, b = -10
  c.siglip_b = -10.0

  # --- per-method options (README, SOTAlign: how α was chosen); any registry option of a method can be set here --
  c.sotalign = ml_collections.ConfigDict()
  c.sotalign.alpha = 10.0
  c.sotalign.eps_student = 0.05
  c.sotalign.eps_teacher = 0.005
  c.sotalign.sinkhorn_iters = 100
  c.structure = ml_collections.ConfigDict()
  c.structure.alpha = 1.0
  c.structure.temperature = 0.05
  c.pseudo_label = ml_collections.ConfigDict()
  c.pseudo_label.alpha = 1.0
  c.pseudo_label.eps = 0.005
  c.sail_semi = ml_collections.ConfigDict()
  c.sail_semi.alpha = 1.0
  c.nnclr = ml_collections.ConfigDict()
  c.nnclr.alpha = 1.0
  c.sotalign_paper = ml_collections.ConfigDict(  # the paper's recipe is its own: the shared keys above do not apply
      {k: v for k, v in aligners.get("sotalign_paper").defaults.items() if k not in ("alpha_grid",)})
  c.sotalign_paper.alpha_grid = (1e-3, 1e-4, 1e-5)

  # --- bookkeeping -------------------------------------------------------------------------------------------
  c.log_every = 50
  c.ckpt_every = 250

  if arg.tiny:
    c.batch_paired = 32
    c.batch_unpaired = 64
    c.teacher.cca_dim = 16
    c.log_every = c.ckpt_every = 10
    c.sotalign.sinkhorn_iters = 20
    c.sotalign_paper.update(steps=arg.steps, batch_paired=32, batch_unpaired=64, sinkhorn_iters=20, teacher_dim=16)
  return c


def validate(c: ml_collections.ConfigDict):
  """Raises ``ValueError`` naming the first bad key (the checks that need no data)."""
  cfg_lib.check_subset(c, "methods", METHODS)
  cfg_lib.check_ints(c, ("steps", "batch_paired", "batch_unpaired", "data.n_pairs_sweep", "teacher.cca_dim",
                         "head.hidden", "sotalign.sinkhorn_iters"))
  files = {k: c.data[k] for k in FILE_KEYS}
  if any(files.values()):
    validate_file_mode(c, files)
  else:
    cfg_lib.check_ints(c, ("data.n_pairs",))
  cfg_lib.check_positive(c, ("lr", "sotalign.eps_student", "sotalign.eps_teacher", "teacher.ridge_lam"))
  cfg_lib.check_one_of(c, "head.kind", ("linear", "mlp"))
  cfg_lib.check_one_of(c, "teacher.name", TEACHERS)
  cfg_lib.check_one_of(c, "preprocess.center", CENTER_MODES)
  cfg_lib.check_one_of(c, "eval.split", ("val", "test"))
  if not hasattr(optax, c.optimizer):
    raise ValueError(f"config.optimizer: optax has no optimizer {c.optimizer!r} (try adamw or lion)")


def validate_file_mode(c: ml_collections.ConfigDict, files: dict):
  """File mode (some ``config.data.<file key>`` set): the keys this experiment needs, before any file is read."""
  given = ", ".join(f"config.data.{k}" for k, v in files.items() if v)
  if not (files["test_x"] or files["test_y"]):
    raise ValueError(f"{given} set, so the data are embedding files, but config.data.test_x and config.data.test_y "
                     "(the row-aligned test pairs) are not: set them, or unset every file key to read "
                     "config.data.cache")
  check_keys(files)  # whole couples
  for couple in ("pairs", "unpaired"):
    if not (files[f"{couple}_x"] and files[f"{couple}_y"]):
      raise ValueError(f"config.data.{couple}_x and config.data.{couple}_y are both needed in file mode: the "
                       "SOTAlign methods train on pairs and on unpaired images and texts")
  for key in ("extra_unpaired_text", "extra_unpaired_images"):
    if c.data[key]:
      raise ValueError(f"config.data.{key} reads caches and is for cache mode only; in file mode put the extra rows "
                       f"into config.data.unpaired_{'y' if key.endswith('text') else 'x'}")
  if c.eval.split == "val" and not files["val_x"]:
    raise ValueError("config.eval.split='val' needs config.data.val_x and config.data.val_y in file mode")
  cfg_lib.check_ints(c, ("data.n_pairs",), sentinel=-1)
