r"""k-means: greedy k-means++ seeding and Lloyd iterations, ``jit``- and ``vmap``-able (fixed shapes, fixed counts).

The one k-means of the library: the unpaired aligners' centres (:mod:`sotalign_jax.aligners.unpaired`) and the
training-free matching's base selection (:func:`sotalign_jax.matching.kmeans_base_selection`) both call it.

.. math::

  \min_{c_1, \dots, c_k} \sum_i \min_j \|x_i - c_j\|^2

* :func:`kmeans_plus_plus` — greedy k-means++ seeds (Arthur & Vassilvitskii, "k-means++: The Advantages of Careful
  Seeding", SODA 2007; greedy as scikit-learn's default).
* :func:`lloyd` — Lloyd's iterations (Lloyd, "Least squares quantization in PCM", IEEE Trans. Inf. Theory 28, 1982).
* :func:`kmeans` — seeds (k-means++ or ``k`` random distinct rows) then :func:`lloyd`.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp

from sotalign_jax._arrays import DEFAULT_PRECISION

__all__ = ["kmeans", "kmeans_plus_plus", "kmeans_plus_plus_from_uniforms", "kpp_trials", "lloyd", "INITS"]

_mm = functools.partial(jnp.matmul, precision=DEFAULT_PRECISION)

INITS = ("k-means++", "random")


def kpp_trials(k: int) -> int:
  r"""scikit-learn's number of greedy k-means++ candidates per seed, :math:`2 + \lfloor\ln k\rfloor`."""
  return 2 + int(math.log(k))


def kmeans_plus_plus(x: jax.Array, key: jax.Array, k: int, *, n_trials: int | None = None) -> jax.Array:
  r"""``[k, d]`` greedy k-means++ seeds of ``x: [n, d]`` :cite:p:`arthur2007kmeanspp`.

  The first seed is a uniform row; each next one is the best of ``n_trials`` candidates drawn with probability
  :math:`\propto D(x)^2` (the squared distance to the nearest seed so far; uniform if all are 0): the candidate
  that lowers the potential :math:`\sum_x D(x)^2` most. ``n_trials`` defaults to :func:`kpp_trials`.

  All draws are the uniforms ``jax.random.uniform(key, (k, n_trials))`` (:func:`kmeans_plus_plus_from_uniforms`),
  so the whole seeding is one random call.

  Args:
    x: ``[n, d]`` rows.
    key: PRNG key.
    k: number of seeds (static).
    n_trials: greedy candidates per seed (static).

  Returns:
    ``[k, d]`` seeds, rows of ``x``.
  """
  trials = kpp_trials(k) if n_trials is None else int(n_trials)
  x = jnp.asarray(x)
  return kmeans_plus_plus_from_uniforms(x, jax.random.uniform(key, (k, trials), x.dtype))


def kmeans_plus_plus_from_uniforms(x: jax.Array, u: jax.Array) -> jax.Array:
  """:func:`kmeans_plus_plus` from its uniforms ``u: [k, trials]``: ``u[0, 0]`` picks the first seed, row ``t``
  the candidates of seed ``t`` by inverse-CDF sampling (for callers that draw every uniform of a step at once)."""
  x = jnp.asarray(x)
  n = x.shape[0]
  k = u.shape[0]
  first = x[jnp.clip(jnp.floor(u[0, 0] * n).astype(jnp.int32), 0, n - 1)]
  cent = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
  d2 = jnp.sum((x - first) ** 2, 1)

  def body(t, s):
    cent, d2 = s
    cdf = jnp.cumsum(d2)
    total = cdf[-1]
    cand = jnp.where(total > 0, jnp.searchsorted(cdf, u[t] * total, side="right"),
                     jnp.floor(u[t] * n).astype(jnp.int32))
    cand = jnp.clip(cand, 0, n - 1)
    new = jnp.minimum(d2[None], jnp.sum((x[None] - x[cand][:, None]) ** 2, 2))  # [trials, n]
    best = jnp.argmin(new.sum(1))
    return cent.at[t].set(x[cand[best]]), new[best]

  return jax.lax.fori_loop(1, k, body, (cent, d2))[0]


def lloyd(x: jax.Array, centres: jax.Array, n_iter: int) -> jax.Array:
  r"""``n_iter`` Lloyd iterations (Lloyd, 1982) from ``centres``.

  Each iteration assigns every row to its nearest centre, :math:`\ell_i = \arg\min_j \|x_i - c_j\|^2`
  (computed as :math:`\|x_i\|^2 + \|c_j\|^2 - 2\langle x_i, c_j\rangle`), then moves each centre to the mean of its
  rows, :math:`c_j \leftarrow \operatorname{mean}\{x_i : \ell_i = j\}`; a centre that loses all its rows stays
  where it is. Once an iteration assigns every row as the one before, the centres are a fixed point (the same
  labels give the same means) and every later iteration would return them unchanged: the loop stops there, with the
  centres of all ``n_iter`` iterations (under ``vmap``, when every member has stopped).

  Args:
    x: ``[n, d]`` rows.
    centres: ``[k, d]`` starting centres.
    n_iter: iterations (a fixed count, no tolerance; fewer run when a fixed point comes first).

  Returns:
    ``[k, d]`` centres.
  """
  x, centres = jnp.asarray(x), jnp.asarray(centres)
  k = centres.shape[0]
  xx = jnp.sum(x * x, 1)
  ones = jnp.ones((x.shape[0],), x.dtype)

  def cond(s):
    t, _, _, done = s
    return (t < n_iter) & ~done

  def step(s):
    t, c, previous, _ = s
    d = xx[:, None] + jnp.sum(c * c, 1)[None, :] - 2.0 * _mm(x, c.T)
    lab = jnp.argmin(d, axis=1).astype(jnp.int32)
    tot = jax.ops.segment_sum(x, lab, num_segments=k)
    cnt = jax.ops.segment_sum(ones, lab, num_segments=k)
    c = jnp.where(cnt[:, None] > 0, tot / jnp.maximum(cnt, 1.0)[:, None], c)
    return t + 1, c, lab, jnp.all(lab == previous)

  start = (jnp.int32(0), centres, jnp.full((x.shape[0],), -1, jnp.int32), jnp.bool_(False))
  return jax.lax.while_loop(cond, step, start)[1]


def kmeans(x: jax.Array, key: jax.Array, k: int, *, n_iter: int = 100,
           init: Literal["k-means++", "random"] = "k-means++") -> jax.Array:
  r"""``[k, d]`` k-means centres of ``x: [n, d]``: seeds, then ``n_iter`` :func:`lloyd` iterations.

  Seeds: ``init="k-means++"`` (default) is :func:`kmeans_plus_plus` from ``key``; ``init="random"`` takes ``k``
  distinct uniformly random rows (``jax.random.choice(key, n, (k,), replace=False)``). A fixed ``n_iter`` (scikit-
  learn stops at a tolerance instead and re-seeds empty clusters).

  Seeded by k-means++ :cite:p:`arthur2007kmeanspp` by default.

  Args:
    x: ``[n, d]`` rows.
    key: PRNG key of the seeds.
    k: number of centres, ``1 <= k <= n`` (static).
    n_iter: Lloyd iterations (static).
    init: ``"k-means++"`` or ``"random"`` (static).

  Returns:
    ``[k, d]`` centres.
  """
  x = jnp.asarray(x)
  if init == "k-means++":
    seeds = kmeans_plus_plus(x, key, k)
  elif init == "random":
    seeds = x[jax.random.choice(key, x.shape[0], (k,), replace=False)]
  else:
    raise ValueError(f"init must be one of {INITS}, got {init!r}")
  return lloyd(x, seeds, n_iter)
