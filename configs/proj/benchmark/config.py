r"""The alignment benchmark: every registered aligner × a few-pair sweep × seeds (a preset of the engine,
:mod:`sotalign_jax.runtime.engine`; launched by experiments/benchmark.py).

Launch (a rerun with the same workdir reuses every (method, p, seed) cell whose settings are unchanged and computes
the others: cells are keyed by a hash of everything that determines their numbers; see sotalign_jax/runtime/engine.py)::

  python experiments/benchmark.py --config configs/proj/benchmark/config.py:quick --workdir workdirs/bench_quick
  python experiments/benchmark.py --config configs/proj/benchmark/config.py:full --workdir workdirs/bench_full
  python experiments/benchmark.py --config configs/proj/benchmark/config.py:full --workdir workdirs/bench_other \
      --config.data.cache=data_cache/openclipart__efficientnet-lite2__all-mpnet-base-v2
  python experiments/benchmark.py --config configs/proj/benchmark/config.py:quick --workdir workdirs/b \
      --config.methods=cca,asif --config.n_pairs=10,100,-1 --config.hparams.cca.reg=0.3 --config.reference=cca

The argument after ``:`` is a comma list of presets and ``key=value`` fields, applied left to right
(:func:`sotalign_jax.runtime.config.parse_arg`). Presets:

* ``full`` (the default): every registered aligner but ``sotalign_paper`` (whose 2,000-step, 32k-batch recipe is
  for an accelerator: add it with ``--config.methods``) and the zero-pair ones (``zero_pair`` below),
  p ∈ {0, 10, 30, 100, 300, 1000, max}, 5 seeds, the trained methods at :data:`CPU_BUDGET`;
* ``demo``: what ``make demo`` runs — the closed forms, SAIL, SOTAlign and the upper bound at p = 1,000 (the
  low end of the paper's 10³–10⁴ regime), 3 seeds;
* ``wordnet``: the lemma ↔ gloss two-view testbed (``make wordnet-cache``), p ∈ {100, 300, 1000, 3000}, 3 seeds,
  2,000 test items; combine with ``pool=1000`` etc. for the unpaired pool size;
* ``zero_pair``: the zero-pair aligners (Wasserstein–Procrustes, mini-vec2vec) against CCA, Procrustes, ASIF,
  local CKA, SOTAlign and the upper bound at p ∈ {0, 10, 100}, 5 seeds;
* ``text_pair``: the same on the same-text two-view cache (WordNet glosses seen by MiniLM and by MPNet,
  ``make glosses-cache``), unpaired pools capped at 3,000 per side, 3 seeds;
* ``quick``: the closed-form and training-free aligners, p ∈ {0, 10, 100, 1000}, 3 seeds (``make bench-align``);
* ``smoke``: ≈ 30 s on a small fake cache, for tests.

Fields: ``seeds`` (int), ``tiny`` (bool: small held-out sets, few bootstrap replicates, no optional eval caches),
``cpu_budget`` (bool: :data:`CPU_BUDGET`), ``wordnet`` (bool), ``glosses`` (bool: the same-text cache), ``pool``
(int: ``data.max_unpaired``, -1 = all).
``methods`` and ``n_pairs`` are tuples: set them with ``--config.methods=...`` / ``--config.n_pairs=...``. Unknown
names, and unknown ``--config.KEY`` overrides, are rejected naming the known ones.

``hparams.<method>.<option>`` holds every registered method's options with their registry defaults (options whose
default is ``None`` are left out and keep it), so any of them can be overridden from the command line.
"""

import ml_collections

from sotalign_jax import aligners
from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import engine

ALL_METHODS = tuple(aligners.ALIGNERS)  # whatever is registered when the config is read
ZERO_PAIR_METHODS = tuple(m for m in ALL_METHODS if not aligners.ALIGNERS[m].needs_pairs)
FAST_METHODS = tuple(m for m in ALL_METHODS if not aligners.ALIGNERS[m].trained and m not in ZERO_PAIR_METHODS
                     and not aligners.ALIGNERS[m].transductive)  # the set matchers run in configs/proj/match
# sotalign_paper: 2,000 steps × an α grid at batches of up to 32k, for an accelerator; it runs when named. The
# zero-pair methods (up to 100 exact 10k × 10k assignments per fit) have their own presets, `zero_pair` and
# `text_pair`, which compare them with the few-pair methods at small p.
GPU_METHODS = ("sotalign_paper",) + ZERO_PAIR_METHODS
SET_MATCHERS = tuple(m for m in ALL_METHODS if aligners.ALIGNERS[m].transductive)  # qap: configs/proj/match
CPU_METHODS = tuple(m for m in ALL_METHODS if m not in GPU_METHODS + SET_MATCHERS)
WORDNET = "data_cache/wordnet_two_view__all-MiniLM-L6-v2__all-mpnet-base-v2"  # make wordnet-cache
WORDNET_GLOSSES = "data_cache/wordnet_glosses__all-MiniLM-L6-v2__all-mpnet-base-v2"  # make glosses-cache
DEMO_METHODS = ("cca", "ridge", "procrustes", "sail", "sotalign", "upper_bound")
ZERO_PAIR_SWEEP = ("wasserstein_procrustes", "mini_vec2vec", "cca", "procrustes", "asif", "local_cka", "sotalign",
                   "upper_bound")
PRESETS = {
    "full": {"cpu_budget": True},
    "quick": {"seeds": 3, "n_pairs": (0, 10, 100, 1000), "methods": FAST_METHODS},
    "smoke": {"seeds": 2, "n_pairs": (0, 8, -1), "methods": FAST_METHODS, "tiny": True},
    "demo": {"seeds": 3, "n_pairs": (1000,), "methods": DEMO_METHODS, "cpu_budget": True},
    "wordnet": {"wordnet": True, "seeds": 3, "n_pairs": (100, 300, 1000, 3000),
                "methods": ("cca", "procrustes", "sail", "sotalign", "upper_bound"), "cpu_budget": True},
    "zero_pair": {"seeds": 5, "n_pairs": (0, 10, 100), "methods": ZERO_PAIR_SWEEP, "cpu_budget": True},
    "text_pair": {"glosses": True, "pool": 3000, "seeds": 3, "n_pairs": (0, 10, 100), "methods": ZERO_PAIR_SWEEP,
                  "cpu_budget": True},
}
CPU_BUDGET = {"steps": 400, "batch_unpaired": 256}
ZERO_PAIR_CPU = {"wasserstein_procrustes": {"batch_size": 2000, "refine_batch_size": 2000, "n_iterations": 50,
                                            "qap_inits": 30},
                 "mini_vec2vec": {"num_samples": 2000, "refine2_clusters": 200, "refine1_iterations": 50}}
"""What ``cpu_budget`` sets for the zero-pair aligners: 2,000-row k-means samples and assignments instead of
10,000, half the refinement steps (a 10k × 10k exact assignment takes 2–5 s here, 45 s for the first read-out;
see ``benchmarks/bench_zero_pair.py``) and 30 2-opt starts per centre matching instead of ``WP_QAP_INITS`` (the
setting of the published sweep; 3,000 add ≈ 60 CPU s per fit). With pools below 2,000 rows per side (openclipart)
only the step and start counts change."""
"""What ``cpu_budget`` sets for every trained method but ``sotalign_paper``: fewer steps and a smaller unpaired batch
than the registry's recipe (600 and 512), so that the full sweep's ≈ 200 trained fits finish in about an hour on 2
CPU cores. The README reports the sweep with this budget; set ``cpu_budget=false`` for the registry's recipe."""


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = cfg_lib.parse_arg(arg, presets=PRESETS, methods=CPU_METHODS, n_pairs=(0, 10, 30, 100, 300, 1000, -1),
                          seeds=5, tiny=False, cpu_budget=False, wordnet=False, glosses=False, pool=-1)
  c = engine.base_config(methods=arg.methods, n_pairs=arg.n_pairs, seeds=arg.seeds)
  c.data.max_unpaired = arg.pool  # cap on each unpaired pool (-1: all the remainder gives)
  registered = tuple(aligners.ALIGNERS)  # now, not at import: methods may be registered (and removed) since
  if arg.cpu_budget:
    for m in registered:
      if aligners.ALIGNERS[m].trained and m not in GPU_METHODS:
        c.hparams[m].update({k: v for k, v in CPU_BUDGET.items() if k in c.hparams[m]})
    for m, opts in ZERO_PAIR_CPU.items():
      if m in c.hparams:
        c.hparams[m].update(opts)
  if arg.wordnet or arg.glosses:  # lemmas or glosses (MiniLM) ↔ glosses (MPNet): text-only views, no image eval sets
    c.data.cache = WORDNET if arg.wordnet else WORDNET_GLOSSES
    c.data.test_size = 2000
    del c.evals["fashion_mnist"], c.evals["tuxpaint"]
    c.eval.table_metrics = tuple(m for m in c.eval.table_metrics if m not in ("zeroshot_fashion_mnist",
                                                                               "tuxpaint_i2t_r1"))
  if arg.tiny:
    c.data.test_size = 150
    c.data.val_size = 50
    c.data.min_unpaired = 20
    c.eval.n_boot = 200
    c.eval.geometry_pairs = 100
    c.eval.geometry_perms = 20
    c.evals.fashion_mnist.cache = c.evals.tuxpaint.cache = ""
    for m in registered:
      if aligners.ALIGNERS[m].trained:
        tiny = dict(steps=20, batch_paired=32, batch_unpaired=64, teacher_dim=16, sinkhorn_iters=20)
        c.hparams[m].update({k: v for k, v in tiny.items() if k in c.hparams[m]})
  return c


validate = engine.validate
