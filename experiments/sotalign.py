r"""SOTAlign and its baselines (this project's recipe) on an embedding cache or on embedding files.

  python experiments/sotalign.py --config configs/proj/sotalign/config.py:demo --workdir workdirs/sotalign_demo

A preset of the experiment engine (:mod:`sotalign_jax.runtime.engine`: protocol → registry → evaluators → cell
store → statistics); the presets, fields and the recipe (``config.hparams.<method>``) are in
``configs/proj/sotalign/config.py``, the results in ``configs/proj/sotalign/README.md``. Every fitted alignment is
saved in its cell's run directory for ``python -m sotalign_jax.cli.evaluate``.
"""

from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import engine

CONFIG = cfg_lib.experiment_config(__file__)  # configs/proj/sotalign/config.py


def run(cfg, workdir: str) -> dict:
  """:func:`engine.run` after the preset's own checks (the recipe's option values: a one-line user error)."""
  with cfg_lib.user_errors():
    CONFIG.validate(cfg)
  return engine.run(cfg, workdir)


if __name__ == "__main__":
  cfg_lib.launch(run, "configs/proj/sotalign/config.py")
