r"""The alignment benchmark: every registered aligner × a few-pair sweep × seeds, with intervals.

  python experiments/benchmark.py --config configs/proj/benchmark/config.py:quick --workdir workdirs/bench_quick

A preset of the experiment engine (:mod:`sotalign_jax.runtime.engine`: protocol → registry → evaluators → cell
store → statistics); the presets and fields are in ``configs/proj/benchmark/config.py``, the results in
``configs/proj/benchmark/README.md``.
"""

from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import engine

if __name__ == "__main__":
  cfg_lib.launch(engine.run, "configs/proj/benchmark/config.py")
