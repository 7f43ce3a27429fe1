"""Optional dependencies: import one, or fail with the one command that installs it.

The core install (``pip install sotalign-jax``) holds what the math modules, the aligners and the runtime import.
Everything else is an extra, named here once:

* ``encoders`` — ``tokenizers``, ``PIL`` (the frozen encoders and image datasets; weights are read with numpy);
* ``coco`` — ``tensorflow_datasets`` (COCO captions);
* ``plots`` — ``matplotlib`` (result plots);
* ``tb`` — ``tensorboardX`` (TensorBoard event files beside ``metrics.jsonl``).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

EXTRAS = {
    "tokenizers": "encoders",
    "PIL": "encoders",
    "tensorflow_datasets": "coco",
    "matplotlib": "plots",
    "tensorboardX": "tb",
}


def install_hint(module: str) -> str:
  """``pip install 'sotalign-jax[extra]'`` for the extra that provides ``module``."""
  return f"pip install 'sotalign-jax[{EXTRAS[module.split('.')[0]]}]'"


def require(module: str, *, what: str) -> ModuleType:
  """Imports ``module`` (e.g. ``"safetensors.numpy"``), or raises an ImportError naming the extra to install.

  Args:
    module: a module of one of the packages in :data:`EXTRAS`.
    what: what needs it, for the message (``"the MiniLM encoder"``).

  Raises:
    ImportError: ``"<what> needs <package>: pip install 'sotalign-jax[<extra>]'"``.
  """
  try:
    return importlib.import_module(module)
  except ImportError as e:
    top = module.split(".")[0]
    raise ImportError(f"{what} needs {top!r}, which is not installed: {install_hint(top)}") from e


def available(module: str) -> bool:
  """Whether the top-level package of ``module`` is installed (without importing it)."""
  return importlib.util.find_spec(module.split(".")[0]) is not None
