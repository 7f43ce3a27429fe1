r"""Training-free matching of frozen vision and language encoders: a preset of the engine
(:mod:`sotalign_jax.runtime.engine`; launched by ``experiments/match.py``).

Maniparambil et al. (CVPR 2024), "Do Vision and Language Encoders Represent the World Similarly?": given ``p``
paired *base* samples, match ``q`` query images to their ``q`` captions with nothing trained::

  python experiments/match.py --config configs/proj/match/config.py:quick --workdir workdirs/match_quick
  python experiments/match.py --config configs/proj/match/config.py --workdir workdirs/match      # paper sizes
  python experiments/match.py --config configs/proj/match/config.py:quick --workdir workdirs/m2 \
      --config.methods=qap_both,localcka_both --config.n_pairs=10,40,160,640

Methods are the match experiment's names, each a *variant* of a registered aligner
(:data:`sotalign_jax.aligners.MATCH_METHODS`): ``qap_*`` → ``qap`` (seeded graph matching, transductive),
``localcka_*`` → ``local_cka``, ``linreg*`` → ``ridge`` (no centring, no unit norm), ``relrep*`` → ``relative``;
``*_stretch`` divides every feature by its standard deviation over the base pairs and the query set
(``stretch="queries"``); ``*_cluster`` keeps the ``p`` pairs nearest to the k-means centroids of a pool of
``select_from`` training pairs instead of ``p`` random ones (``base="cluster"``); ``*_both`` does both. The engine
sweeps p (the base size, the annotation budget) and seeds (random draws of the base pairs); the query set is the
protocol's held-out test set of ``n_query`` images with their first caption (``data.test_size``).

Evaluators: ``matching`` (one-to-one matching accuracy and FOSCTTM on the whole query set), ``retrieval`` with one
caption per image (R@1/5/10 among the q captions; a set matcher's R@1 is its matching accuracy, its R@5/R@10 count
ties), matching on random subsets of the query set (``q<n>_matching_acc``: the query-size sweep), matching on
Tux Paint (base pairs from openclipart, queries from another dataset: ``tuxpaint_matching_acc``) and zero-shot
Fashion-MNIST (not for ``qap``: one prompt per class is not a set to match; NaN).

Presets: ``default`` (the paper's sizes: 500 queries, 500 QAP restarts, p up to 640, 3 seeds; hours on a CPU),
``quick`` (what ``make match`` runs: 200 queries, 20 restarts, a pool of 3,000 for the cluster variants, 2 seeds),
``smoke`` (seconds, for tests). Fields: ``seeds``, ``n_query`` (int), ``quick``, ``tiny`` (bool).
"""

import ml_collections

from sotalign_jax import aligners
from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import engine

METHODS = tuple(aligners.MATCH_METHODS)
PRESETS = {
    "default": {},
    "quick": {"quick": True, "seeds": 2, "n_query": 200},
    "smoke": {"tiny": True, "seeds": 2, "n_query": 30},
}
def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = cfg_lib.parse_arg(arg, presets=PRESETS, methods=METHODS, n_pairs=(10, 40, 80, 160, 320, 640), seeds=3,
                          n_query=500, quick=False, tiny=False)
  c = engine.base_config(methods=arg.methods, n_pairs=arg.n_pairs, seeds=arg.seeds,
                         title="Training-free matching")
  c.data.split = "hash"
  c.data.test_size = arg.n_query  # the query set: held-out images with their first caption
  c.data.val_size = 0
  c.data.unpaired_mode = "shared"
  c.data.min_unpaired = 1
  c.select_from = -1              # the cluster variants' pool of training pairs (-1: every training image)

  c.evals = ml_collections.ConfigDict()
  c.evals.matching = {"type": "matching"}
  c.evals.retrieval = {"type": "retrieval", "captions": "first", "directions": ("i2t",), "ranks": False}
  c.evals.q100 = {"type": "matching", "queries": 100, "trials": 3, "prefix": "q100_", "foscttm": False}
  c.evals.tuxpaint = {"type": "matching", "cache": engine.TUXPAINT, "queries": arg.n_query, "trials": 1,
                      "prefix": "tuxpaint_", "foscttm": False}
  c.evals.fashion_mnist = {"type": "zeroshot", "cache": engine.FASHION_MNIST, "metric": "zeroshot_fashion_mnist"}
  c.eval.table_metrics = ("matching_acc", "i2t_r1", "i2t_r10", "q100_matching_acc", "tuxpaint_matching_acc",
                          "zeroshot_fashion_mnist", "foscttm")
  c.eval.compare_metrics = ("matching_acc",)
  c.eval.plot_metrics = ("matching_acc", "q100_matching_acc", "tuxpaint_matching_acc")
  c.eval.geometry = ()

  # the families' options (the paper's): QAP restarts and solver, local CKA's kernel, the ridge penalty
  c.hparams.qap.update(kernel="rbf", n_init=500, maxiter=30, tol=1e-5, lap="scipy")
  c.hparams.qap.batch_size = 100  # restarts per batched call (memory ≈ 32 · batch · q² bytes)
  c.hparams.local_cka.kernel = "linear"
  c.hparams.ridge.lam = 1e-2
  c.cluster_iter = 50             # Lloyd iterations of the base selection
  if arg.quick:
    c.n_pairs = (10, 40, 160, 320)
    c.select_from = 3000
    c.hparams.qap.update(n_init=20, batch_size=20)
  if arg.tiny:
    c.n_pairs = (12, 24)
    c.select_from = 120
    c.hparams.qap.update(n_init=4, batch_size=4, maxiter=15)
    c.cluster_iter = 10
    c.evals.q100.update(queries=10, trials=2)
    c.evals.tuxpaint.cache = c.evals.fashion_mnist.cache = ""
  c.variants = variants(c)
  return c


def variants(c) -> ml_collections.ConfigDict:
  """Every match method as a variant of its registered aligner, with the family options of ``c.hparams``."""
  out = ml_collections.ConfigDict()
  for label, (method, options) in aligners.MATCH_METHODS.items():
    v = {"method": method, **options}
    if options.get("base") == "cluster":
      v.update(select_from=c.get_ref("select_from"), cluster_iter=c.get_ref("cluster_iter"))
    out[label] = v
  return out


validate = engine.validate
