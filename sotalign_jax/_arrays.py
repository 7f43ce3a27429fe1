"""Private helpers every math module shares: unit rows, the tracer test, the ``[n, d]`` validator, the precision.

Checks of *values* (NaN/Inf, positivity) run only on host data (NumPy arrays, Python numbers and lists); for a
``jax.Array`` they would copy the array to the host on every call (and block asynchronous dispatch), so device
arrays get shape checks only and their values are checked where data enter (the experiments' loaders,
:func:`sotalign_jax.runtime.workdir.check_finite`) instead. Together with :func:`jit_with_host_scalars` this is
what lets the public functions run under ``jax.transfer_guard("disallow")`` on device inputs
(``tests/test_transfer_guard.py``).
"""

from __future__ import annotations

import functools

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
  """True inside ``jit``/``vmap``/``grad`` traces, where values are unknown.

  ``jax.core.Tracer`` is public and not deprecated in JAX 0.10 (unlike most of ``jax.core``; checked with
  ``python -W error::DeprecationWarning``).
  """
  return isinstance(x, jax.core.Tracer)


def on_host(x) -> bool:
  """True for data whose values can be checked without a device-to-host copy (NumPy arrays, Python numbers)."""
  return isinstance(x, (np.ndarray, np.generic, int, float, list, tuple))


def _check_shape(shape: tuple, name: str, min_n: int, dims: str) -> None:
  if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
    raise ValueError(f"{name} must be a non-empty {dims} array (2-D, with at least one row and one column), got "
                     f"shape {tuple(shape)}")
  if shape[0] < min_n:
    raise ValueError(f"{name} needs at least {min_n} rows, got n={shape[0]}")


def _check_host_values(a: np.ndarray, name: str) -> None:
  if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
    raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
  bad = ~np.isfinite(a).all(axis=1)
  if bad.any():
    count = int(bad.sum())
    raise ValueError(f"{name} contains NaN or Inf in {count} row{'s' if count > 1 else ''} (first: row "
                     f"{int(np.argmax(bad))}); clean or drop those rows first")


def check_features(x, name: str, *, min_n: int = 1, dtype=None, dims: str = "[n, d]", host: bool = False):
  """A non-empty ``[n, d]`` array with ``n >= min_n``; raises ``ValueError`` naming ``name`` otherwise.

  Shapes are always checked; NaN/Inf (and a numeric dtype) only for host data (see the module docstring), never
  for device arrays or tracers.

  Args:
    x: the array.
    name: how the error messages call it (the argument's name).
    min_n: fewest rows accepted.
    dtype: cast to this dtype; ``None`` keeps a floating dtype and casts anything else to float32.
    dims: how the messages write the expected shape (``"[n, m]"`` for a similarity matrix).
    host: return a float32 NumPy array instead of a ``jax.Array`` (validators of data being loaded); the values
      are then always checked.

  Returns:
    ``x`` as a ``jax.Array`` (or NumPy array if ``host``).
  """
  if host or on_host(x):
    a = np.asarray(x)
    _check_shape(a.shape, name, min_n, dims)
    _check_host_values(a, name)
    if host:
      return a.astype(np.float32, copy=False)
  else:
    _check_shape(jnp.shape(x), name, min_n, dims)
  x = jnp.asarray(x)
  if dtype is not None:
    return x.astype(dtype)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def check_positive(name: str, value) -> None:
  """Raises ``ValueError`` naming ``name`` unless a host ``value`` is a positive finite scalar (arrays: no check)."""
  if on_host(value):
    v = np.asarray(value)
    if v.ndim != 0 or not np.issubdtype(v.dtype, np.number) or not np.isfinite(v) or v <= 0:
      raise ValueError(f"`{name}` must be a positive finite scalar, got {value!r}.")


def _host_scalar(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) or (
      isinstance(v, np.ndarray) and v.ndim == 0)


def jit_with_host_scalars(fn=None, *, scalars: tuple[str, ...] = (), static_argnames: tuple[str, ...] = ()):
  """``jax.jit(fn)`` whose keyword arguments named in ``scalars`` are compiled in when they are host numbers.

  Passing a Python float to a jitted function (or doing eager arithmetic with one) is an implicit host-to-device
  transfer, refused by ``jax.transfer_guard("disallow")``. Host numbers among ``scalars`` are therefore made
  static (one executable per value: these are hyperparameters such as ``epsilon``, fixed during a run), while
  arrays and tracers stay traced, so a scheduled or learned value still works. The ``scalars`` must be passed
  by keyword.
  """
  if fn is None:
    return functools.partial(jit_with_host_scalars, scalars=scalars, static_argnames=static_argnames)

  @functools.lru_cache(maxsize=None)
  def compiled(static: tuple[str, ...]):
    return jax.jit(fn, static_argnames=tuple(static_argnames) + static)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    static = tuple(n for n in scalars if n in kwargs and _host_scalar(kwargs[n]))
    for n in static:
      kwargs[n] = float(kwargs[n])
    return compiled(static)(*args, **kwargs)

  return wrapper


def device_scalar(v, dtype=jnp.float32) -> jax.Array:
  """``v`` as a 0-d ``jax.Array``: a host number goes over with an explicit ``jax.device_put`` (which
  ``jax.transfer_guard("disallow")`` allows), an array or tracer is only cast."""
  if _host_scalar(v):
    return jax.device_put(np.asarray(v, dtype))
  return jnp.asarray(v, dtype)
