r"""Helpers every math module shares: unit rows and cosines, the tracer test, the ``[n, d]`` validator, the precision.

:func:`unit` and :func:`cosine` are the library's one row normalisation and one cosine matrix; the public names
``metrics.normalize``, ``cmcr.normalize`` (both :func:`unit` itself) and ``ot.cosine_similarity`` (:func:`cosine` with
its shapes checked, compiled) are them.

**Value checks (NaN/Inf, positivity): one rule for every array type.** A check runs when the values are *known*
at the call, wherever they live:

* **Host data** (NumPy arrays, Python numbers and lists) is checked on the host.
* **Concrete jax arrays** (a ``jax.Array`` passed to an eager call) are checked too, with the same error message:
  one fused reduction on the array's device (``all(isfinite(x))``, compiled once per shape) and one boolean read
  back with an explicit ``jax.device_get``. That is a synchronisation point per checked array, never a copy of it
  (the rows are read back only to name them once the check has failed), and ``jax.transfer_guard("disallow")``
  allows it, since it refuses only implicit transfers (``tests/test_transfer_guard.py``). Arrays that span several
  processes (not fully addressable) are not checked here; their values are checked where they are loaded (the
  experiments' cache and file scans).
* **Abstract values** (inside ``jax.jit``, ``jax.vmap``, ``lax.scan``, ``shard_map``, ...) cannot raise a Python
  exception, and a compiled check would cost every step of a training loop. The check is emitted as
  :func:`jax.experimental.checkify.debug_check`, a no-op unless the caller opts in by wrapping the function with
  :func:`jax.experimental.checkify.checkify`; the returned error's ``.throw()`` then raises
  ``checkify.JaxRuntimeError`` with the same text. In a plain jitted call a NaN input propagates (a NaN CKA, a NaN
  KLOT) and nothing is raised.

The eager call is where a user meets a NaN first, and one boolean read is cheap next to any score or solver here;
inside compiled code the caller decides (``checkify``). Together with :func:`jit_with_host_scalars` this is what
lets the public functions run under ``jax.transfer_guard("disallow")`` on device inputs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.lax import PrecisionLike
from jax.typing import ArrayLike, DTypeLike

# Scores and solvers must not silently drop to TF32/bf16 on GPU/TPU: every public function that multiplies
# matrices takes ``precision=`` with this default.
DEFAULT_PRECISION = jax.lax.Precision.HIGHEST


def unit(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  r"""``x`` divided by its L2 norm along ``axis``, :math:`x / \max(\|x\|_2, \epsilon)` (a zero row stays zero).

  Args:
    x: e.g. ``[n, d]`` rows (any shape; host arrays are converted).
    axis: the axis normalised.
    eps: floor of the norms.

  Returns:
    ``x`` with unit L2 norm along ``axis``, same shape.
  """
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def cosine(u: jax.Array, v: jax.Array, precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""``[n, m]`` cosine similarities :math:`\langle u_i, v_j\rangle / (\|u_i\| \|v_j\|)` of the rows (zero rows give
  zeros).

  Args:
    u: ``[n, d]``.
    v: ``[m, d]``.
    precision: of the matrix product (default ``HIGHEST``: float32 on every backend).

  Returns:
    ``[n, m]`` matrix in :math:`[-1, 1]`.
  """
  return jnp.matmul(unit(u), unit(v).T, precision=precision)


def is_tracer(x: Any) -> bool:
  """True inside ``jit``/``vmap``/``grad`` traces, where values are unknown.

  ``jax.core.Tracer`` is public and not deprecated in JAX 0.10 (unlike most of ``jax.core``; checked with
  ``python -W error::DeprecationWarning``).
  """
  return isinstance(x, jax.core.Tracer)


def on_host(x: Any) -> bool:
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
  _raise_bad_rows(~np.isfinite(a).all(axis=1), name)


def _raise_bad_rows(bad: np.ndarray, name: str) -> None:
  if bad.any():
    count = int(bad.sum())
    raise ValueError(f"{name} contains NaN or Inf in {count} row{'s' if count > 1 else ''} (first: row "
                     f"{int(np.argmax(bad))}); clean or drop those rows first")


@jax.jit
def _all_finite(x: jax.Array) -> jax.Array:
  return jnp.all(jnp.isfinite(x))


@jax.jit
def _bad_rows(x: jax.Array) -> jax.Array:
  return ~jnp.all(jnp.isfinite(x), axis=1)


@jax.jit
def _all_positive_finite(x: jax.Array) -> jax.Array:
  return jnp.all(jnp.isfinite(x) & (x > 0))


def _spans_processes(x) -> bool:
  return isinstance(x, jax.Array) and not is_tracer(x) and not x.is_fully_addressable


def _debug_check(ok: jax.Array, message: str) -> None:
  """``checkify.debug_check``: a no-op unless the caller wraps the traced function with ``checkify.checkify``."""
  checkify.debug_check(ok, message.replace("{", "{{").replace("}", "}}"))


def check_all(ok: ArrayLike, message: str) -> None:
  """Raises ``ValueError(message)`` unless every entry of ``ok`` is true, by the rule of the module docstring.

  Args:
    ok: booleans: host data (read directly), a concrete ``jax.Array`` (reduced on its device, one bool read back
      with ``jax.device_get``) or a tracer (a :func:`jax.experimental.checkify.debug_check`, active only under
      ``checkify.checkify``).
    message: the error message.
  """
  if on_host(ok):
    if not np.all(ok):
      raise ValueError(message)
    return
  if _spans_processes(ok):
    return
  ok = jnp.all(ok)
  if is_tracer(ok):
    _debug_check(ok, message)
  elif not bool(jax.device_get(ok)):  # explicit: one bool
    raise ValueError(message)


def _check_device_values(x, name: str) -> None:
  """NaN/Inf of a ``jax.Array`` (see the module docstring): the device reduction, or a ``debug_check`` if traced."""
  if _spans_processes(x):
    return
  ok = _all_finite(x)
  if is_tracer(ok):
    _debug_check(ok, f"{name} contains NaN or Inf; clean or drop those rows first")
  elif not bool(jax.device_get(ok)):  # explicit: one bool; the rows are read only to name them in the error
    _raise_bad_rows(np.asarray(jax.device_get(_bad_rows(x))), name)


def check_features(x: ArrayLike, name: str, *, min_n: int = 1, dtype: DTypeLike | None = None, dims: str = "[n, d]",
                   host: bool = False) -> jax.Array | np.ndarray:
  """A non-empty ``[n, d]`` array with ``n >= min_n``; raises ``ValueError`` naming ``name`` otherwise.

  Shapes are always checked; NaN/Inf by the rule of the module docstring: host data and concrete ``jax.Array``
  inputs raise (the same message), traced inputs only under ``jax.experimental.checkify.checkify``.

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
    x = jnp.asarray(x)
  else:
    _check_shape(jnp.shape(x), name, min_n, dims)
    x = jnp.asarray(x)
    _check_device_values(x, name)
  if dtype is not None:
    return x.astype(dtype)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def check_positive(name: str, value: ArrayLike, *, hint: str = "") -> None:
  """Raises ``ValueError`` naming ``name`` unless ``value`` is positive and finite (a scalar, for host data).

  Host numbers are checked on the host; a ``jax.Array`` (every entry) by the rule of the module docstring (a
  concrete one raises, a traced one only under ``checkify.checkify``). ``hint`` is appended to the message.
  """
  if on_host(value):
    v = np.asarray(value)
    if v.ndim != 0 or not np.issubdtype(v.dtype, np.number) or not np.isfinite(v) or v <= 0:
      raise ValueError(f"`{name}` must be a positive finite scalar, got {value!r}.{hint}")
  elif not _spans_processes(value):
    ok = _all_positive_finite(value)
    if is_tracer(ok):
      _debug_check(ok, f"`{name}` must be positive and finite.{hint}")
    elif not bool(jax.device_get(ok)):  # explicit: one bool
      raise ValueError(f"`{name}` must be positive and finite, got {jax.device_get(value)!r}.{hint}")


def _host_scalar(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) or (
      isinstance(v, np.ndarray) and v.ndim == 0)


def jit_with_host_scalars(fn: Callable[..., Any] | None = None, *, scalars: tuple[str, ...] = (),
                          static_argnames: tuple[str, ...] = ()) -> Callable[..., Any]:
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


def device_scalar(v: ArrayLike, dtype: DTypeLike = jnp.float32) -> jax.Array:
  """``v`` as a 0-d ``jax.Array``: a host number goes over with an explicit ``jax.device_put`` (which
  ``jax.transfer_guard("disallow")`` allows), an array or tracer is only cast."""
  if _host_scalar(v):
    return jax.device_put(np.asarray(v, dtype))
  return jnp.asarray(v, dtype)
