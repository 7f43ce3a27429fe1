r"""Calibrated layer × layer alignment grids of image and text encoders (experiments/alignment_scores.py).

Launch (a rerun with the same workdir reuses the features and encoder pairs computed with the same settings, and
computes those whose settings changed)::

  python experiments/alignment_scores.py --config configs/alignment_scores.py --workdir workdirs/scores
  python experiments/alignment_scores.py --config configs/alignment_scores.py:quick --workdir workdirs/scores_quick
  python experiments/alignment_scores.py --config configs/alignment_scores.py:quick,n_images=500 \
      --workdir workdirs/scores_500 --config.metrics="('linear_cka','cknna')"

The argument after ``:`` is a comma list of presets and ``key=value`` fields, applied left to right
(:func:`sotalign_jax.runtime.config.parse_arg`). Presets: ``default`` (EfficientNet-Lite0/1/2 stages × MiniLM /
MPNet layers, 2000 openclipart images; also what no argument gives), ``quick`` (Lite0 × MiniLM, 1000 images,
fewer permutations: a few minutes on 2 CPU cores) and ``smoke`` (synthetic layer features, no encoders: for
tests). Fields: ``n_images`` (int), ``quick``, ``synthetic`` (bool). Unknown names, and unknown
``--config.KEY`` overrides, are rejected naming the known ones.
"""

import ml_collections

from sotalign_jax import scores
from sotalign_jax.runtime import config as cfg_lib

PRESETS = {
    "default": {},
    "quick": {"quick": True, "n_images": 1000},
    "smoke": {"synthetic": True, "n_images": 120},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = cfg_lib.parse_arg(arg, presets=PRESETS, n_images=2000, quick=False, synthetic=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "openclipart"
  c.n_images = arg.n_images    # images (with their first caption), chosen by a stable hash of the image id
  c.image_encoders = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
  c.text_encoders = ("all-MiniLM-L6-v2", "all-mpnet-base-v2")
  c.text_pooling = "mean"      # mean | cls | last-token, applied to every layer
  c.batch_size = 32            # encoder forward batch
  c.synthetic = arg.synthetic  # smoke: random layers sharing a latent factor instead of encoders

  c.metrics = ("linear_cka", "unbiased_linear_cka", "mutual_knn", "cknna")  # subset of scores.METRICS
  c.primary = "linear_cka"     # the metric of best_cka / best_z / best_layer_pair in results.json
  c.k = 10                     # neighbours of the k-NN metrics (features are L2-normalised for them)
  c.n_perm_grid = 200          # permutations shared by every cell of a grid (z / p heatmaps); 0: none
  c.n_perm = 1000              # permutations of the best pair's calibration
  c.n_boot = 200               # bootstrap resamples of the best pair's interval
  c.block_size = 1024

  if arg.quick:
    c.image_encoders = ("efficientnet-lite0",)
    c.text_encoders = ("all-MiniLM-L6-v2",)
    c.n_perm_grid = 50
    c.n_perm = 500
    c.n_boot = 100
  if arg.synthetic:
    c.image_encoders = ("syn0",)
    c.text_encoders = ("syn1",)
    c.metrics = ("linear_cka", "mutual_knn")
    c.k = 5
    c.n_perm_grid = 20
    c.n_perm = 99
    c.n_boot = 20
    c.block_size = 64
  return c


def validate(c: ml_collections.ConfigDict):
  """Raises ``ValueError`` naming the first bad key."""
  metrics = cfg_lib.check_subset(c, "metrics", scores.METRICS, what="metric")
  if c.primary not in metrics:
    raise ValueError(f"config.primary={c.primary!r} must be one of config.metrics {metrics}")
  cfg_lib.check_ints(c, ("n_images", "n_perm", "k", "batch_size", "block_size"))
  cfg_lib.check_ints(c, ("n_perm_grid", "n_boot"), minimum=0)
  cfg_lib.check_one_of(c, "text_pooling", ("mean", "cls", "last-token"))  # sotalign_jax.encoders.text.POOLINGS
  for key in ("image_encoders", "text_encoders"):
    if not c[key] or not all(isinstance(s, str) and s for s in c[key]):
      raise ValueError(f"config.{key} must be a non-empty tuple of encoder names, got {c[key]!r}")
