r"""Training-free matching of frozen vision and language encoders (experiments/match.py).

Maniparambil et al. (CVPR 2024), "Do Vision and Language Encoders Represent the World Similarly?": given ``m``
paired *base* samples, match ``q`` query images to their ``q`` captions (and retrieve captions) with nothing
trained. Launch (one convention for every experiment; a rerun with the same workdir resumes)::

  python experiments/match.py --config configs/match.py --workdir workdirs/match
  python experiments/match.py --config configs/match.py:quick --workdir workdirs/match_quick
  python experiments/match.py --config configs/match.py:quick,n_trials=1 --workdir workdirs/match_cka \
      --config.methods="('localcka_none','localcka_both')" --config.n_base_sweep="(10,40,160,640)"

The argument after ``:`` is a comma list of presets and ``key=value`` fields, applied left to right
(:func:`sotalign_jax.runtime.config.parse_arg`). Presets: ``default`` (the paper's settings: 320 base, 500
queries, 500 QAP restarts, 3 trials, base-size and query-size sweeps; for a GPU or a long CPU run; also what no
argument gives), ``quick`` (what ``make match`` runs in a few minutes on 2 CPU cores: 200 queries, 20 restarts,
2 trials), ``smoke`` (seconds: for tests). Fields: ``n_trials``, ``n_base``, ``n_query`` (int), ``quick``,
``tiny`` (bool: the smaller sweeps and solver sizes of those presets). Unknown names, and unknown
``--config.KEY`` overrides, are rejected naming the known ones.

Methods are ``{qap,localcka,linreg,relrep}_{none,stretch,cluster,both}`` — "stretch" divides every feature by
its standard deviation over base + queries (per space), "cluster" takes the base pairs nearest to the k-means
centroids of the base pool instead of random ones, "both" does both — with ``linreg`` and ``relrep`` as short
names of ``linreg_none`` and ``relrep_none``.
"""

import ml_collections

from sotalign_jax.data.splits import SPLITS
from sotalign_jax.matching import METHODS
from sotalign_jax.runtime import config as cfg_lib

PRESETS = {
    "default": {},
    "quick": {"quick": True, "n_trials": 2, "n_query": 200},
    "smoke": {"tiny": True, "n_trials": 2, "n_base": 24, "n_query": 30},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = cfg_lib.parse_arg(arg, presets=PRESETS, methods=METHODS, n_trials=3, n_base=320, n_query=500, quick=False,
                          tiny=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.methods = arg.methods        # subset of METHODS, in the order they run
  c.n_trials = arg.n_trials      # random draws of base and query sets, averaged (the paper averages seeds)

  # --- data: embedding caches written by `python -m sotalign_jax.cli.embed` ---------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.cache = "data_cache/openclipart__efficientnet-lite0__all-MiniLM-L6-v2"
  c.data.base_splits = ("paired", "unpaired")  # splits whose images (one caption each) form the base pool
  c.data.query_splits = ("val", "test")        # splits whose images (one caption each) form the query pool
  c.data.max_base_pool = -1               # cap on the base pool (random fixed subset; -1: all), bounds k-means

  # --- sizes: the main cell and the sweeps around it -----------------------------------------------------------
  c.n_base = arg.n_base          # paper: 320 base pairs
  c.n_query = arg.n_query        # paper: 500 queries
  c.n_base_sweep = (10, 40, 80, 160, 320, 640)  # also run these base sizes at n_query (() for none): plot + table
  c.n_query_sweep = (100, 250, 500)            # also run these query sizes at n_base (() for none)

  # --- methods -------------------------------------------------------------------------------------------------
  c.qap = ml_collections.ConfigDict()
  c.qap.kernel = "rbf"           # centred RBF kernels (median heuristic) as graphs; or "linear"
  c.qap.n_init = 500             # FAQ random restarts (paper: 500)
  c.qap.maxiter = 30
  c.qap.tol = 1e-5
  c.qap.batch_size = 100         # restarts per batched call (memory ≈ 32 · batch · q² bytes)
  c.qap.lap = "scipy"            # FAQ's assignment step: scipy (host callback, best on CPU) | hungarian (pure XLA)
  c.local_cka = ml_collections.ConfigDict()
  c.local_cka.kernel = "linear"  # paper: linear
  c.linreg = ml_collections.ConfigDict()
  c.linreg.lam = 1e-2            # ridge penalty of the base-pair map (paper: plain least squares)
  c.cluster = ml_collections.ConfigDict()
  c.cluster.space = "image"      # which space k-means clusters: image | text
  c.cluster.n_iter = 50          # Lloyd iterations

  # --- optional evaluations (skipped with a note when the cache is missing; "" turns them off) ---------------
  c.cross_domain = ml_collections.ConfigDict()
  c.cross_domain.cache = "data_cache/tuxpaint__efficientnet-lite0__all-MiniLM-L6-v2"  # queries from here
  c.cross_domain.splits = ()     # splits of that cache used as queries (() : all)
  c.zeroshot = ml_collections.ConfigDict()
  c.zeroshot.cache = "data_cache/fashion_mnist__efficientnet-lite0__all-MiniLM-L6-v2"
  c.zeroshot.splits = ()         # images classified (() : all; nothing is trained on them)
  c.zeroshot.max_images = 10000  # cap (random fixed subset; -1: all)

  if arg.quick:
    c.n_base_sweep = (10, 40, 160, 320)
    c.n_query_sweep = (50, 100, 200)
    c.data.max_base_pool = 3000
    c.qap.n_init = 20
    c.qap.batch_size = 20
    c.zeroshot.max_images = 2000
  if arg.tiny:
    c.n_base_sweep = (12, 24)    # every (n_base, n_query) shape compiles FAQ once (seconds): keep few
    c.n_query_sweep = ()
    c.qap.n_init = 4
    c.qap.batch_size = 4
    c.qap.maxiter = 15
    c.cluster.n_iter = 10
    c.zeroshot.max_images = 200
  return c


def validate(c: ml_collections.ConfigDict):
  """Raises ``ValueError`` naming the first bad key (the checks that need no data)."""
  cfg_lib.check_subset(c, "methods", METHODS)
  cfg_lib.check_ints(c, ("n_trials", "qap.n_init", "qap.maxiter", "qap.batch_size"))
  cfg_lib.check_ints(c, ("n_base", "n_query", "n_base_sweep", "n_query_sweep"), minimum=2)
  cfg_lib.check_ints(c, ("cluster.n_iter",), minimum=0)
  cfg_lib.check_positive(c, ("qap.tol", "linreg.lam"))
  cfg_lib.check_ints(c, ("data.max_base_pool", "zeroshot.max_images"), minimum=2, sentinel=-1)  # -1: no cap
  cfg_lib.check_one_of(c, ("qap.kernel", "local_cka.kernel"), ("linear", "rbf"))
  cfg_lib.check_one_of(c, "qap.lap", ("scipy", "hungarian"))
  cfg_lib.check_one_of(c, "cluster.space", ("image", "text"))
  cfg_lib.check_subset(c, "data.base_splits", SPLITS, what="split")
  cfg_lib.check_subset(c, "data.query_splits", SPLITS, what="split")
  for key in ("cross_domain.splits", "zeroshot.splits"):
    cfg_lib.check_subset(c, key, SPLITS, what="split", allow_empty=True)
  if set(c.data.base_splits) & set(c.data.query_splits):
    raise ValueError(f"config.data.base_splits {c.data.base_splits} and config.data.query_splits "
                     f"{c.data.query_splits} must not share a split: base and query images must differ")
