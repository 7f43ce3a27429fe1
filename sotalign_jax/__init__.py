"""sotalign-jax: align frozen unimodal encoders with little supervision, in JAX.

The folders are the layers, each importing only from those before it:

* the top level — pure math on arrays (``ot``, ``cka``, ``scores``, ``teachers``, ``losses``, ``objectives``,
  ``metrics``, ``qap``, ``matching``, ``cmcr``); it imports nothing below;
* ``nn`` — small Flax modules (alignment heads, C-MCR projectors) with their save/load;
* ``data`` — datasets and the embedding cache every experiment reads; ``encoders`` — frozen image/text encoders;
* ``runtime`` — workdirs (metrics, checkpoints, results), atomic file writes, multi-host launch;
* ``cli`` — ``python -m sotalign_jax.cli.embed`` and ``python -m sotalign_jax.cli.evaluate``.

Submodules are imported lazily so that ``from sotalign_jax import cka`` stays cheap.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("cka", "scores", "teachers", "metrics", "ot", "losses", "qap", "matching", "cmcr", "objectives", "stats",
               "aligners",
               "nn", "data", "encoders", "runtime", "cli")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
