"""sotalign-jax: align frozen unimodal encoders with little supervision, in JAX.

Submodules are imported lazily so that ``from sotalign_jax import cka`` stays cheap.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("cka", "teachers", "metrics", "ot", "losses", "compat", "qap", "matching", "cmcr", "heads", "objectives",
               "encoders", "data", "embed", "io", "workdir")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
