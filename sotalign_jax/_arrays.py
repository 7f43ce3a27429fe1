"""Private helpers every math module shares: unit rows, the tracer test, the ``[n, d]`` validator, the precision.

Checks of *values* (NaN/Inf) run only on concrete host data (NumPy arrays or Python scalars); for a ``jax.Array``
they would copy the array to the host on every call, so device arrays are checked where data enter (the
experiments' loaders, :func:`sotalign_jax.runtime.workdir.check_finite`) instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Scores and solvers must not silently drop to TF32/bf16 on GPU/TPU: every public function that multiplies
# matrices takes ``precision=`` with this default.
DEFAULT_PRECISION = jax.lax.Precision.HIGHEST


def unit(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """``x`` divided by its L2 norm along ``axis`` (norms clipped at ``eps``, so a zero row stays zero)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def is_tracer(x) -> bool:
  """True inside ``jit``/``vmap``/``grad`` traces, where values are unknown."""
  return isinstance(x, jax.core.Tracer)


def on_host(x) -> bool:
  """True for data whose values can be checked without a device-to-host copy (NumPy arrays, Python numbers)."""
  return isinstance(x, (np.ndarray, np.generic, int, float, list, tuple))


def check_features(x, name: str, *, min_n: int = 1) -> jax.Array:
  """A non-empty ``[n, d]`` float array with ``n >= min_n``; raises ``ValueError`` naming ``name`` otherwise.

  NaN/Inf are rejected for host data (see the module docstring), never for device arrays or tracers.
  """
  if on_host(x) and not np.isfinite(np.asarray(x, np.float32)).all():
    raise ValueError(f"`{name}` contains NaN or Inf; clean or drop those rows first")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  if x.ndim != 2 or x.shape[1] == 0:
    raise ValueError(f"`{name}` must be a 2-D [n, d] array of features, got shape {x.shape}")
  if x.shape[0] < min_n:
    raise ValueError(f"`{name}` needs at least {min_n} rows, got n={x.shape[0]}")
  return x
