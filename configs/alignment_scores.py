r"""Calibrated layer × layer alignment grids of image and text encoders (experiments/alignment_scores.py).

Launch (a rerun with the same workdir resumes: cached features and finished encoder pairs are reused)::

  python experiments/alignment_scores.py --config configs/alignment_scores.py --workdir workdirs/scores
  python experiments/alignment_scores.py --config configs/alignment_scores.py:quick --workdir workdirs/scores_quick

Variants: ``default`` (EfficientNet-Lite0/1/2 stages × MiniLM / MPNet layers, 2000 openclipart images),
``quick`` (Lite0 × MiniLM, 1000 images, fewer permutations: a few minutes on 2 CPU cores) and ``smoke``
(synthetic layer features, no encoders: for tests).
"""

import ml_collections

VARIANTS = ("default", "quick", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/alignment_scores.py; choose one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "openclipart"
  c.n_images = 2000            # images (with their first caption), chosen by a stable hash of the image id
  c.image_encoders = "efficientnet-lite0,efficientnet-lite1,efficientnet-lite2"
  c.text_encoders = "all-MiniLM-L6-v2,all-mpnet-base-v2"
  c.text_pooling = "mean"      # mean | cls | last-token, applied to every layer
  c.batch_size = 32            # encoder forward batch
  c.synthetic = False          # smoke: random layers sharing a latent factor instead of encoders

  c.metrics = "linear_cka,unbiased_linear_cka,mutual_knn,cknna"  # comma-separated subset of scores.METRICS
  c.primary = "linear_cka"     # the metric of best_cka / best_z / best_layer_pair in results.json
  c.k = 10                     # neighbours of the k-NN metrics (features are L2-normalised for them)
  c.n_perm_grid = 200          # permutations shared by every cell of a grid (z / p heatmaps); 0: none
  c.n_perm = 1000              # permutations of the best pair's calibration
  c.n_boot = 200               # bootstrap resamples of the best pair's interval
  c.block_size = 1024

  if variant == "quick":
    c.n_images = 1000
    c.image_encoders = "efficientnet-lite0"
    c.text_encoders = "all-MiniLM-L6-v2"
    c.n_perm_grid = 50
    c.n_perm = 500
    c.n_boot = 100
  elif variant == "smoke":
    c.synthetic = True
    c.n_images = 120
    c.image_encoders = "syn0"
    c.text_encoders = "syn1"
    c.metrics = "linear_cka,mutual_knn"
    c.k = 5
    c.n_perm_grid = 20
    c.n_perm = 99
    c.n_boot = 20
    c.block_size = 64
  return c
