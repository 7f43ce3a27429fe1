r"""Private: HSIC from sufficient statistics and the RBF kernel tiles, shared by :mod:`cka` and :mod:`scores`.

Both estimators of HSIC (biased :math:`\operatorname{tr}(KHLH)`, unbiased of Song et al. 2012) need only
:math:`\sum K \circ L`, the row sums and the diagonals of ``K`` and ``L``; see :mod:`sotalign_jax.cka`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.lax import PrecisionLike
from jax.typing import ArrayLike

from sotalign_jax._arrays import DEFAULT_PRECISION


class KernelStats(NamedTuple):
  """Sufficient statistics of a kernel pair for both HSIC estimators."""
  sum_kl: jax.Array  # sum_ij K_ij L_ij
  row_k: jax.Array   # [n] row sums of K
  row_l: jax.Array   # [n] row sums of L
  diag_k: jax.Array  # [n]
  diag_l: jax.Array  # [n]


def hsic_from_stats(s: KernelStats, *, unbiased: bool) -> jax.Array:
  n = s.row_k.shape[0]
  if not unbiased:
    # tr(KHLH) = sum K∘L - (2/n) rK·rL + (1ᵀK1)(1ᵀL1)/n²
    return s.sum_kl - 2.0 / n * jnp.dot(s.row_k, s.row_l) + jnp.sum(s.row_k) * jnp.sum(s.row_l) / float(n)**2
  tr_kl = s.sum_kl - jnp.dot(s.diag_k, s.diag_l)
  rk, rl = s.row_k - s.diag_k, s.row_l - s.diag_l
  return ((tr_kl + jnp.sum(rk) * jnp.sum(rl) / (float(n - 1) * (n - 2)) - 2.0 / (n - 2) * jnp.dot(rk, rl))
          / (float(n) * (n - 3)))


def cka_from_stats(kl: KernelStats, kk: KernelStats, ll: KernelStats, *, unbiased: bool) -> jax.Array:
  h = functools.partial(hsic_from_stats, unbiased=unbiased)
  return h(kl) / jnp.sqrt(h(kk) * h(ll))


def sq_dists(a: jax.Array, b: jax.Array, precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  """``[n, m]`` squared Euclidean distances ``|a_i|² + |b_j|² - 2 a_i·b_j``, clipped at 0."""
  d = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * jnp.matmul(a, b.T, precision=precision)
  return jnp.maximum(d, 0.0)


def _rbf_block_stats(x, y, sx, sy, block: int, precision=DEFAULT_PRECISION):
  """Accumulates the KL, KK and LL stats of RBF kernels over the upper-triangular ``block × block`` tiles.

  Kernels are symmetric, so only tiles ``(i, j)`` with ``i <= j`` are generated (half the work of full rows):
  an off-diagonal tile counts twice in the sums and adds its column sums to block ``j``'s row sums.
  """
  n = x.shape[0]
  pad = (-n) % block
  nb = (n + pad) // block
  xb = jnp.pad(x, ((0, pad), (0, 0))).reshape(nb, block, x.shape[1])
  yb = jnp.pad(y, ((0, pad), (0, 0))).reshape(nb, block, y.shape[1])
  valid = jnp.pad(jnp.ones(n, x.dtype), (0, pad)).reshape(nb, block)
  gx, gy = -0.5 / sx**2, -0.5 / sy**2
  ti, tj = np.triu_indices(nb)

  def tile(carry, ij):
    sums, rk, rl = carry
    i, j = ij
    mask = valid[i][:, None] * valid[j][None, :]
    k = jnp.exp(gx * sq_dists(xb[i], xb[j], precision)) * mask
    l = jnp.exp(gy * sq_dists(yb[i], yb[j], precision)) * mask
    w = jnp.where(i == j, 1.0, 2.0)
    sums = sums + w * jnp.stack([jnp.sum(k * l), jnp.sum(k * k), jnp.sum(l * l)])
    off = jnp.where(i == j, 0.0, 1.0)
    rk = rk.at[i].add(k.sum(1)).at[j].add(off * k.sum(0))
    rl = rl.at[i].add(l.sum(1)).at[j].add(off * l.sum(0))
    return (sums, rk, rl), None

  init = (jnp.zeros(3, x.dtype), jnp.zeros((nb, block), x.dtype), jnp.zeros((nb, block), x.dtype))
  (sums, rk, rl), _ = jax.lax.scan(tile, init, (jnp.asarray(ti), jnp.asarray(tj)))
  rk, rl = rk.ravel()[:n], rl.ravel()[:n]
  ones = jnp.ones(n, x.dtype)  # RBF kernels have a unit diagonal
  return (KernelStats(sums[0], rk, rl, ones, ones), KernelStats(sums[1], rk, rk, ones, ones),
          KernelStats(sums[2], rl, rl, ones, ones))


@functools.partial(jax.jit, static_argnames=("unbiased", "block", "precision"))
def rbf_cka_stats(x: jax.Array, y: jax.Array, sx: ArrayLike, sy: ArrayLike, unbiased: bool, block: int,
                  precision: PrecisionLike = DEFAULT_PRECISION) -> jax.Array:
  """RBF CKA of ``x`` and ``y`` with bandwidths ``sx``, ``sy`` from the upper-triangular tiles."""
  return cka_from_stats(*_rbf_block_stats(x, y, sx, sy, block, precision), unbiased=unbiased)
