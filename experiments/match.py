r"""Training-free matching (Maniparambil et al., CVPR 2024): seeded graph matching, local CKA, linear regression and
relative representations from a few base pairs, each with none / stretching / k-means base selection / both.

  python experiments/match.py --config configs/proj/match/config.py:quick --workdir workdirs/match_quick

A preset of the experiment engine (:mod:`sotalign_jax.runtime.engine`); the methods are variants of registered
aligners (:data:`sotalign_jax.aligners.MATCH_METHODS`), the presets and fields are in
``configs/proj/match/config.py``, the results in ``configs/proj/match/README.md``.
"""

from sotalign_jax.runtime import config as cfg_lib
from sotalign_jax.runtime import engine

if __name__ == "__main__":
  cfg_lib.launch(engine.run, "configs/proj/match/config.py")
