r"""Closed-form linear teachers fitted on a few paired rows ``(x_i, y_i)``.

These are the starting point of SOTAlign (a coarse shared geometry from a few hundred pairs) and the
linear-regression baselines of training-free matching. All of them work when ``n < d`` (few pairs, wide
features): ridge switches to its dual form, Procrustes and CCA only ever factor ``d × d`` or smaller matrices.

* :func:`ridge` — ``W = argmin ||XW − Y||² + λ||W||²`` maps x-space into y-space.
* :func:`procrustes` — the orthogonal (semi-orthogonal if ``dx ≠ dy``) ``W`` minimising ``||XW − Y||``.
* :func:`cca` — regularised CCA, ``(Wx, Wy)`` project both spaces into a shared ``dim``-space.

Options: ``center`` (all; fit on data centred with the pairs' means and apply the maps to data centred the
same way — :func:`fit` keeps the means for you) and ``whiten`` (ridge and Procrustes; ZCA-whiten with the
regularised pair covariance first, the returned map includes the x-side whitening; CCA whitens by design).
Every fit takes ``precision=`` for its matrix products (default ``HIGHEST``: float32 on every backend) and runs as
one compiled call; hyperparameters given as Python numbers are compiled in (no host-to-device transfer).
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.lax import PrecisionLike
from jax.typing import ArrayLike

from sotalign_jax._arrays import DEFAULT_PRECISION, check_positive, jit_with_host_scalars, on_host
from sotalign_jax.cka import check_pair

__all__ = ["ridge", "procrustes", "cca", "fit", "LinearTeacher", "TEACHERS"]


def _inv_sqrt_psd(c: jax.Array, reg, mm) -> jax.Array:
  """(C + reg·I)^(-1/2) of a symmetric PSD matrix by eigendecomposition."""
  w, v = jnp.linalg.eigh(c)
  w = jnp.maximum(w, 0.0) + reg
  return mm(v * (1.0 / jnp.sqrt(w)), v.T)


def _prepare(x, y, mm, *, center: bool, whiten_x: bool = False, whiten_y: bool = False, whiten_reg=0.1):
  """Centres and optionally ZCA-whitens each side (inside a trace); returns (x, y, whitener_x or None)."""
  if center:
    x = x - x.mean(0)
    y = y - y.mean(0)
  n = x.shape[0]
  wx = _inv_sqrt_psd(mm(x.T, x) / (n - 1), whiten_reg, mm) if whiten_x else None
  if whiten_x:
    x = mm(x, wx)
  if whiten_y:
    y = mm(y, _inv_sqrt_psd(mm(y.T, y) / (n - 1), whiten_reg, mm))
  return x, y, wx


def _matmul(precision):
  return lambda a, b: jnp.matmul(a, b, precision=precision)


@functools.partial(jit_with_host_scalars, scalars=("lam", "whiten_reg"),
                   static_argnames=("center", "whiten", "precision"))
def _ridge(x, y, *, lam, center: bool, whiten: bool, whiten_reg, precision):
  mm = _matmul(precision)
  x, y, wx = _prepare(x, y, mm, center=center, whiten_x=whiten, whiten_reg=whiten_reg)
  n, dx = x.shape
  if n >= dx:
    w = jnp.linalg.solve(mm(x.T, x) + lam * jnp.eye(dx, dtype=x.dtype), mm(x.T, y))
  else:
    w = mm(x.T, jnp.linalg.solve(mm(x, x.T) + lam * jnp.eye(n, dtype=x.dtype), y))
  return mm(wx, w) if whiten else w


def ridge(x: ArrayLike, y: ArrayLike, *, lam: float = 1e-2, center: bool = True, whiten: bool = False,
          whiten_reg: float = 0.1, precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""Ridge regression from x-space to y-space.

  .. math::

    W = \arg\min_W \|XW - Y\|_F^2 + \lambda\|W\|_F^2 = (X^\top X + \lambda I)^{-1} X^\top Y
      = X^\top (X X^\top + \lambda I)^{-1} Y,

  evaluated in the primal form when ``n >= dx`` and in the dual (``n × n``) form otherwise.

  Args:
    x: ``[n, dx]`` paired x-rows.
    y: ``[n, dy]`` paired y-rows.
    lam: ridge penalty λ > 0.
    center: fit on data centred with the pairs' means.
    whiten: regress from ZCA-whitened x (so λ penalises every direction of x equally); the returned ``W``
      includes the whitening, i.e. it still maps (centred) raw x to y.
    whiten_reg: ridge added to the x covariance before whitening.
    precision: of the matrix products.

  Returns:
    ``W: [dx, dy]``.
  """
  check_positive("lam", lam)
  x, y = check_pair(x, y, min_n=2)
  return _ridge(x, y, lam=lam, center=bool(center), whiten=bool(whiten), whiten_reg=whiten_reg, precision=precision)


@functools.partial(jit_with_host_scalars, scalars=("whiten_reg",), static_argnames=("center", "whiten", "precision"))
def _procrustes(x, y, *, center: bool, whiten: bool, whiten_reg, precision):
  mm = _matmul(precision)
  x, y, wx = _prepare(x, y, mm, center=center, whiten_x=whiten, whiten_y=whiten, whiten_reg=whiten_reg)
  u, _, vt = jnp.linalg.svd(mm(x.T, y), full_matrices=False)
  w = mm(u, vt)
  return mm(wx, w) if whiten else w


def procrustes(x: ArrayLike, y: ArrayLike, *, center: bool = True, whiten: bool = False, whiten_reg: float = 0.1,
               precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  r"""Orthogonal Procrustes: :math:`W = \arg\min_{W^\top W = I} \|XW - Y\|_F = UV^\top`, :math:`X^\top Y = USV^\top`.

  Projection rule for ``dx ≠ dy``: the thin SVD gives a semi-orthogonal ``W: [dx, dy]`` (orthonormal columns
  if ``dx >= dy``, orthonormal rows otherwise). This equals the square solution after zero-padding the
  narrower space to the wider dimension and dropping the padded coordinates.

  Returns:
    ``W: [dx, dy]``. With ``whiten=True`` both sides are whitened before the rotation is fitted, and ``W``
    includes the x-side whitening: ``x @ W`` lands in the *whitened* y coordinates.
  """
  x, y = check_pair(x, y, min_n=2)
  return _procrustes(x, y, center=bool(center), whiten=bool(whiten), whiten_reg=whiten_reg, precision=precision)


@functools.partial(jit_with_host_scalars, scalars=("reg",), static_argnames=("dim", "center", "precision"))
def _cca(x, y, *, dim: int, reg, center: bool, precision):
  mm = _matmul(precision)
  x, y, _ = _prepare(x, y, mm, center=center)
  n = x.shape[0]
  cxx, cyy, cxy = mm(x.T, x) / (n - 1), mm(y.T, y) / (n - 1), mm(x.T, y) / (n - 1)
  ix, iy = _inv_sqrt_psd(cxx, reg, mm), _inv_sqrt_psd(cyy, reg, mm)
  u, _, vt = jnp.linalg.svd(mm(mm(ix, cxy), iy), full_matrices=False)
  return mm(ix, u[:, :dim]), mm(iy, vt.T[:, :dim])


def cca(x: ArrayLike, y: ArrayLike, *, dim: int, reg: float = 0.1, center: bool = True,
        precision: PrecisionLike = DEFAULT_PRECISION) -> tuple[jax.Array, jax.Array]:
  r"""Regularised canonical correlation analysis.

  With pair covariances :math:`\Sigma_{xx}, \Sigma_{yy}, \Sigma_{xy}` (normalised by ``n − 1``),

  .. math::

    M = (\Sigma_{xx}+\lambda I)^{-1/2}\,\Sigma_{xy}\,(\Sigma_{yy}+\lambda I)^{-1/2} = U S V^\top,\qquad
    W_x = (\Sigma_{xx}+\lambda I)^{-1/2} U_{[:, :d]},\quad W_y = (\Sigma_{yy}+\lambda I)^{-1/2} V_{[:, :d]}.

  The columns of ``x @ Wx`` and ``y @ Wy`` are the canonical variates, paired in decreasing order of the
  (regularised) canonical correlations ``S``. CCA is itself a whitening method, so there is no ``whiten``.

  SOTAlign's linear teacher :cite:p:`roschmann2026sotalign` (regularised CCA on the pairs).

  Args:
    x: ``[n, dx]`` paired x-rows.
    y: ``[n, dy]`` paired y-rows.
    dim: shared dimension ``d``, at most ``min(n − 1, dx, dy)``: ``n`` centred pairs span at most ``n − 1``
      directions, so 100 pairs of 384-d and 768-d features allow ``dim <= 99`` (beyond, the canonical directions
      would be an arbitrary basis of a zero-correlation subspace). ``n`` may be far below ``dx`` and ``dy``.
    reg: λ added to both covariances (must be > 0 when ``n <= d``).
    precision: of the matrix products.

  Returns:
    ``(Wx: [dx, dim], Wy: [dy, dim])``.
  """
  x, y = check_pair(x, y, min_n=2)
  n, dx = x.shape
  dy = y.shape[1]
  if not isinstance(dim, (int, np.integer)) or not 1 <= dim <= min(n - 1, dx, dy):
    raise ValueError(f"dim must be an integer in [1, min(n - 1, dx, dy)] = [1, {min(n - 1, dx, dy)}], got {dim!r}: "
                     f"{n} centred pairs span at most {n - 1} directions, however wide the features")
  if on_host(reg) and not np.asarray(reg) >= 0:
    raise ValueError(f"reg must be >= 0, got {reg}")
  return _cca(x, y, dim=int(dim), reg=reg, center=bool(center), precision=precision)


# ------------------------------------------------------------------------------------------------------------
# A fitted teacher with its centring, for experiments.
# ------------------------------------------------------------------------------------------------------------
class LinearTeacher(NamedTuple):
  """Two affine maps into a shared space: ``embed_x(x) = (x − mx) Wx``, ``embed_y(y) = (y − my) Wy``."""
  wx: jax.Array  # [dx, k]
  wy: jax.Array  # [dy, k]
  mx: jax.Array  # [dx]
  my: jax.Array  # [dy]

  def embed_x(self, x, *, precision=DEFAULT_PRECISION):
    return jnp.matmul(jnp.asarray(x) - self.mx, self.wx, precision=precision)

  def embed_y(self, y, *, precision=DEFAULT_PRECISION):
    return jnp.matmul(jnp.asarray(y) - self.my, self.wy, precision=precision)


TEACHERS = ("cca", "ridge", "procrustes")


@functools.partial(jax.jit, static_argnames=("dy",))
def _means_and_eye(x, y, dy: int):
  return x.mean(0), y.mean(0), jnp.eye(dy, dtype=y.dtype)


def fit(name: Literal["cca", "ridge", "procrustes"], x: ArrayLike, y: ArrayLike, *, dim: int | None = None,
        reg: float = 0.1, lam: float = 1e-2, center: bool = True,
        precision: PrecisionLike = DEFAULT_PRECISION) -> LinearTeacher:
  """Fits the teacher called ``name`` on pairs ``(x, y)`` and returns it with its centring: the one dispatch by name
  over :data:`TEACHERS` (the trained aligners' teacher and the experiments' call this).

  ``ridge`` and ``procrustes`` map x into y-space (``Wy = I``); ``cca`` maps both into a ``dim``-space
  (default ``min(n − 1, dx, dy, 512)``).

  Args:
    name: one of :data:`TEACHERS`.
    x: ``[n, dx]`` paired x-rows.
    y: ``[n, dy]`` paired y-rows.
    dim: CCA's shared dimension (:func:`cca`).
    reg: CCA's covariance regularisation λ.
    lam: ridge's penalty λ.
    center: fit on data centred with the pairs' means, kept in the result; ``False`` fits on ``x``, ``y`` as they
      are (already preprocessed) and the means are zeros.
    precision: of the matrix products.

  Returns:
    :class:`LinearTeacher` ``(Wx, Wy, mx, my)``.
  """
  if name not in TEACHERS:
    raise ValueError(f"unknown teacher {name!r}; choose one of {TEACHERS}")
  x, y = check_pair(x, y)
  mx, my, eye_y = _means_and_eye(x, y, y.shape[1])
  if not center:
    mx, my = jnp.zeros_like(mx), jnp.zeros_like(my)
  if name == "ridge":
    return LinearTeacher(ridge(x, y, lam=lam, center=center, precision=precision), eye_y, mx, my)
  if name == "procrustes":
    return LinearTeacher(procrustes(x, y, center=center, precision=precision), eye_y, mx, my)
  dim = dim or min(x.shape[0] - 1, x.shape[1], y.shape[1], 512)
  wx, wy = cca(x, y, dim=dim, reg=reg, center=center, precision=precision)
  return LinearTeacher(wx, wy, mx, my)
