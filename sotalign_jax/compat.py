r"""Workarounds for ott-jax 0.6.0 on jax >= 0.9 — the one place that knows about them.

What breaks (ott-jax 0.6.0, jax 0.10.2, reproduced 2026-11 in this repo's venv):

1. **Online point clouds.** ``PointCloud(x, y, batch_size=8)`` followed by any Sinkhorn solve fails with::

     AttributeError: module 'jax.interpreters.batching' has no attribute 'is_vmappable'

   raised in ``ott/utils.py:_batch_and_remainder`` (called by ``utils.batched_vmap`` from
   ``PointCloud.apply_lse_kernel``). jax deprecated ``batching.is_vmappable`` and removed it in 0.9.0; ott uses
   it as the ``is_leaf`` predicate of ``batched_vmap``. Offline point clouds (``batch_size=None``) are fine.
   Upstream: ott-jax/ott issue #700.

2. **Gromov–Wasserstein with** ``scale_cost="max_cost"``. ``quadratic.solve(PointCloud(x, scale_cost="max_cost"),
   PointCloud(y, scale_cost="max_cost"), epsilon=...)`` fails with the same ``AttributeError``, raised in
   ``LRCGeometry._max_cost_matrix`` (``ott/geometry/low_rank.py``): the GW initializer turns squared-Euclidean
   point clouds into low-rank geometries (whenever ``n > d + 2``, i.e. in practice always), whose
   ``"max_cost"`` scale is computed with ``batched_vmap``.
   Dense ``Geometry(cost_matrix=..., scale_cost="max_cost")`` is unaffected.

The shims: :func:`pointcloud` builds a dense (offline) ``PointCloud`` whenever the online path is broken — same
numbers, but the cost is materialised, :math:`O(nm)` memory instead of :math:`O(\text{batch} \cdot m)` — and
:func:`gw_geometry` builds a dense geometry whose cost is already divided by its own maximum (or mean, or a
given scale), so ott never computes a scale itself.

When to delete this module: when a released ott-jax no longer needs it, i.e. when :func:`online_pointcloud_broken`
and :func:`gw_max_cost_broken` both return ``False`` (``tests/test_compat.py`` has strict-xfail tests that start
failing at that moment). Then replace ``compat.pointcloud(...)`` by ``PointCloud(...)`` and ``gw_geometry`` by
``PointCloud(x, scale_cost="max_cost")``.
"""

from __future__ import annotations

import functools
from typing import Literal, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["online_pointcloud_broken", "gw_max_cost_broken", "pointcloud", "gw_geometry"]


def _is_upstream_break(err: Exception) -> bool:
  return isinstance(err, AttributeError) and "is_vmappable" in str(err)


@functools.lru_cache(maxsize=None)
def online_pointcloud_broken() -> bool:
  """Whether ott's online ``PointCloud(batch_size=...)`` still fails with the ``is_vmappable`` error.

  Runs one tiny online log-sum-exp kernel application (milliseconds; cached per process).
  """
  from ott.geometry import pointcloud as ott_pc
  x = jnp.zeros((4, 2))
  geom = ott_pc.PointCloud(x, x, batch_size=2, epsilon=1.0)
  try:
    geom.apply_lse_kernel(jnp.zeros(4), jnp.zeros(4), 1.0, axis=0)
  except Exception as err:  # noqa: BLE001 - only the known break is swallowed, anything else re-raises.
    if _is_upstream_break(err):
      return True
    raise
  return False


@functools.lru_cache(maxsize=None)
def gw_max_cost_broken() -> bool:
  """Whether ott's Gromov–Wasserstein on ``PointCloud(..., scale_cost="max_cost")`` still fails (cached)."""
  from ott.geometry import pointcloud as ott_pc
  from ott.solvers import quadratic
  x = jnp.linspace(0.0, 1.0, 12).reshape(6, 2)  # n > d + 2: ott then takes the (broken) low-rank path.
  try:
    quadratic.solve(ott_pc.PointCloud(x, scale_cost="max_cost"), ott_pc.PointCloud(x + 1.0, scale_cost="max_cost"),
                    epsilon=1.0, max_iterations=2, min_iterations=1)
  except Exception as err:  # noqa: BLE001
    if _is_upstream_break(err):
      return True
    raise
  return False


def pointcloud(
    x: jax.Array,
    y: Optional[jax.Array] = None,
    *,
    cost_fn=None,
    epsilon: Optional[float] = None,
    scale_cost: Union[float, Literal["mean", "max_cost", "max_norm", "max_bound", "median"]] = 1.0,
    batch_size: Optional[int] = None,
):
  """An ott ``PointCloud`` that works on this jax: online when ott can, dense otherwise.

  Same arguments as ``ott.geometry.pointcloud.PointCloud``. With ``batch_size`` set and the online path broken
  (see the module docstring) the geometry is built with ``batch_size=None``: identical results, but the
  ``[n, m]`` cost matrix is materialised (e.g. 64 MiB at 4096 x 4096 in float32).

  Args:
    x: ``[n, d]`` source points.
    y: ``[m, d]`` target points (``x`` when ``None``).
    cost_fn: an ``ott.geometry.costs.CostFn``; squared Euclidean when ``None``.
    epsilon: entropic regularisation (ott's default when ``None``).
    scale_cost: ott's cost scaling.
    batch_size: online batch size, or ``None`` for a dense geometry.

  Returns:
    An ``ott.geometry.pointcloud.PointCloud``.

  Raises:
    ValueError: if ``batch_size`` is not a positive int or the point clouds are not ``[n, d]`` / ``[m, d]``.
  """
  from ott.geometry import pointcloud as ott_pc
  x = jnp.asarray(x)
  y_ = x if y is None else jnp.asarray(y)
  if x.ndim != 2 or y_.ndim != 2 or x.shape[1] != y_.shape[1]:
    raise ValueError(f"`x` [n, d] and `y` [m, d] must be 2-D with the same d; got {x.shape} and {y_.shape}.")
  if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
    raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}.")
  if batch_size is not None and online_pointcloud_broken():
    batch_size = None
  return ott_pc.PointCloud(x, y, cost_fn=cost_fn, epsilon=epsilon, scale_cost=scale_cost, batch_size=batch_size)


def gw_geometry(
    x: jax.Array,
    *,
    cost_fn=None,
    scale_cost: Union[float, Literal["max_cost", "mean"]] = "max_cost",
):
  r"""Dense intra-domain geometry for Gromov–Wasserstein, with the cost scale computed here.

  .. math::

    C_{ij} = c(x_i, x_j) / s, \qquad s = \max_{ij} c(x_i, x_j) \ (\texttt{"max\_cost"}),\
      \operatorname{mean}_{ij} c(x_i, x_j) \ (\texttt{"mean"}) \text{ or the given float.}

  Pass two of these to ``ott.solvers.quadratic.solve(geom_xx, geom_yy, epsilon=...)``; the result equals ott's
  ``PointCloud(x, scale_cost="max_cost")`` path where that path works. Memory is :math:`O(n^2)` (dense).

  Args:
    x: ``[n, d]`` points of one domain.
    cost_fn: an ``ott.geometry.costs.CostFn``; squared Euclidean when ``None``.
    scale_cost: ``"max_cost"``, ``"mean"`` or a positive float to divide the cost by.

  Returns:
    An ``ott.geometry.geometry.Geometry`` with the scaled ``[n, n]`` cost matrix.

  Raises:
    ValueError: on a non-2-D ``x``, an unknown ``scale_cost`` or a non-positive scale.
  """
  from ott.geometry import costs, geometry
  x = jnp.asarray(x)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"`x` must be a non-empty [n, d] array, got shape {x.shape}.")
  cost_fn = costs.SqEuclidean() if cost_fn is None else cost_fn
  cost = cost_fn.all_pairs(x, x)
  if scale_cost in ("max_cost", "mean"):
    scale = jnp.max(cost) if scale_cost == "max_cost" else jnp.mean(cost)
    scale = jnp.where(scale > 0, scale, 1.0)  # all points identical: the cost is all zeros, leave it unscaled.
  elif isinstance(scale_cost, (int, float, np.floating)) and not isinstance(scale_cost, bool):
    if scale_cost <= 0:
      raise ValueError(f"`scale_cost` must be positive, got {scale_cost!r}.")
    scale = scale_cost
  else:
    raise ValueError(f"`scale_cost` must be 'max_cost', 'mean' or a positive float, got {scale_cost!r}.")
  return geometry.Geometry(cost_matrix=cost / scale)
