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
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from sotalign_jax.cka import check_pair

__all__ = ["ridge", "procrustes", "cca", "fit", "LinearTeacher", "TEACHERS"]

_HI = jax.lax.Precision.HIGHEST


def _mm(a, b):
  return jnp.matmul(a, b, precision=_HI)


def _inv_sqrt_psd(c: jax.Array, reg: float) -> jax.Array:
  """(C + reg·I)^(-1/2) of a symmetric PSD matrix by eigendecomposition."""
  w, v = jnp.linalg.eigh(c)
  w = jnp.maximum(w, 0.0) + reg
  return _mm(v * (1.0 / jnp.sqrt(w)), v.T)


def _prepare(x, y, *, center: bool, whiten_x: bool = False, whiten_y: bool = False, whiten_reg: float = 0.1):
  """Validates, centres and optionally ZCA-whitens each side; returns (x, y, whitener_x or None)."""
  x, y = check_pair(x, y, min_n=2)
  if center:
    x = x - x.mean(0)
    y = y - y.mean(0)
  n = x.shape[0]
  wx = _inv_sqrt_psd(_mm(x.T, x) / (n - 1), whiten_reg) if whiten_x else None
  if whiten_x:
    x = _mm(x, wx)
  if whiten_y:
    y = _mm(y, _inv_sqrt_psd(_mm(y.T, y) / (n - 1), whiten_reg))
  return x, y, wx


def ridge(x, y, *, lam: float = 1e-2, center: bool = True, whiten: bool = False,
          whiten_reg: float = 0.1) -> jax.Array:
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

  Returns:
    ``W: [dx, dy]``.
  """
  if not lam > 0:
    raise ValueError(f"lam must be > 0, got {lam}")
  x, y, wx = _prepare(x, y, center=center, whiten_x=whiten, whiten_reg=whiten_reg)
  n, dx = x.shape
  if n >= dx:
    w = jnp.linalg.solve(_mm(x.T, x) + lam * jnp.eye(dx), _mm(x.T, y))
  else:
    w = _mm(x.T, jnp.linalg.solve(_mm(x, x.T) + lam * jnp.eye(n), y))
  return _mm(wx, w) if whiten else w


def procrustes(x, y, *, center: bool = True, whiten: bool = False, whiten_reg: float = 0.1) -> jax.Array:
  r"""Orthogonal Procrustes: :math:`W = \arg\min_{W^\top W = I} \|XW - Y\|_F = UV^\top`, :math:`X^\top Y = USV^\top`.

  Projection rule for ``dx ≠ dy``: the thin SVD gives a semi-orthogonal ``W: [dx, dy]`` (orthonormal columns
  if ``dx >= dy``, orthonormal rows otherwise). This equals the square solution after zero-padding the
  narrower space to the wider dimension and dropping the padded coordinates.

  Returns:
    ``W: [dx, dy]``. With ``whiten=True`` both sides are whitened before the rotation is fitted, and ``W``
    includes the x-side whitening: ``x @ W`` lands in the *whitened* y coordinates.
  """
  x, y, wx = _prepare(x, y, center=center, whiten_x=whiten, whiten_y=whiten, whiten_reg=whiten_reg)
  u, _, vt = jnp.linalg.svd(_mm(x.T, y), full_matrices=False)
  w = _mm(u, vt)
  return _mm(wx, w) if whiten else w


def cca(x, y, *, dim: int, reg: float = 0.1, center: bool = True) -> tuple[jax.Array, jax.Array]:
  r"""Regularised canonical correlation analysis.

  With pair covariances :math:`\Sigma_{xx}, \Sigma_{yy}, \Sigma_{xy}` (normalised by ``n − 1``),

  .. math::

    M = (\Sigma_{xx}+\lambda I)^{-1/2}\,\Sigma_{xy}\,(\Sigma_{yy}+\lambda I)^{-1/2} = U S V^\top,\qquad
    W_x = (\Sigma_{xx}+\lambda I)^{-1/2} U_{[:, :d]},\quad W_y = (\Sigma_{yy}+\lambda I)^{-1/2} V_{[:, :d]}.

  The columns of ``x @ Wx`` and ``y @ Wy`` are the canonical variates, paired in decreasing order of the
  (regularised) canonical correlations ``S``. CCA is itself a whitening method, so there is no ``whiten``.

  Args:
    x: ``[n, dx]`` paired x-rows.
    y: ``[n, dy]`` paired y-rows.
    dim: shared dimension ``d``, at most ``min(n − 1, dx, dy)`` (beyond ``n − 1`` the directions are noise).
    reg: λ added to both covariances (must be > 0 when ``n <= d``).

  Returns:
    ``(Wx: [dx, dim], Wy: [dy, dim])``.
  """
  x, y, _ = _prepare(x, y, center=center)
  n, dx = x.shape
  dy = y.shape[1]
  if not isinstance(dim, int) or not 1 <= dim <= min(n - 1, dx, dy):
    raise ValueError(f"dim must be an integer in [1, min(n - 1, dx, dy)] = [1, {min(n - 1, dx, dy)}], got {dim!r}")
  if reg < 0:
    raise ValueError(f"reg must be >= 0, got {reg}")
  cxx, cyy, cxy = _mm(x.T, x) / (n - 1), _mm(y.T, y) / (n - 1), _mm(x.T, y) / (n - 1)
  ix, iy = _inv_sqrt_psd(cxx, reg), _inv_sqrt_psd(cyy, reg)
  u, _, vt = jnp.linalg.svd(_mm(_mm(ix, cxy), iy), full_matrices=False)
  return _mm(ix, u[:, :dim]), _mm(iy, vt.T[:, :dim])


# ------------------------------------------------------------------------------------------------------------
# A fitted teacher with its centring, for experiments.
# ------------------------------------------------------------------------------------------------------------
class LinearTeacher(NamedTuple):
  """Two affine maps into a shared space: ``embed_x(x) = (x − mx) Wx``, ``embed_y(y) = (y − my) Wy``."""
  wx: jax.Array  # [dx, k]
  wy: jax.Array  # [dy, k]
  mx: jax.Array  # [dx]
  my: jax.Array  # [dy]

  def embed_x(self, x):
    return _mm(jnp.asarray(x) - self.mx, self.wx)

  def embed_y(self, y):
    return _mm(jnp.asarray(y) - self.my, self.wy)


TEACHERS = ("cca", "ridge", "procrustes")


def fit(name: Literal["cca", "ridge", "procrustes"], x, y, *, dim: int | None = None, reg: float = 0.1,
        lam: float = 1e-2) -> LinearTeacher:
  """Fits the teacher called ``name`` on pairs ``(x, y)`` and returns it with its centring.

  ``ridge`` and ``procrustes`` map x into y-space (``Wy = I``); ``cca`` maps both into a ``dim``-space
  (default ``min(n − 1, dx, dy, 512)``).
  """
  x, y = check_pair(x, y)
  mx, my = x.mean(0), y.mean(0)
  eye_y = jnp.eye(y.shape[1])
  if name == "ridge":
    return LinearTeacher(ridge(x, y, lam=lam), eye_y, mx, my)
  if name == "procrustes":
    return LinearTeacher(procrustes(x, y), eye_y, mx, my)
  if name == "cca":
    dim = dim or min(x.shape[0] - 1, x.shape[1], y.shape[1], 512)
    wx, wy = cca(x, y, dim=dim, reg=reg)
    return LinearTeacher(wx, wy, mx, my)
  raise ValueError(f"unknown teacher {name!r}; choose one of {TEACHERS}")
