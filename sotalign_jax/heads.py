r"""Alignment heads: small Flax modules mapping a frozen encoder's features into the shared space.

Every head contains an affine map initialised from a linear teacher, :math:`z = (x - \mu)W`, so training
starts exactly at the teacher's geometry. The ``mlp`` variant adds a residual two-layer MLP whose output layer
starts at zero: :math:`z = (x - \mu)W + W_2\,\mathrm{gelu}(W_1 x + b_1)`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["AlignmentHead", "init_head"]


class AlignmentHead(nn.Module):
  """``[n, d_in] -> [n, dim]``; ``hidden > 0`` adds the residual MLP."""
  dim: int
  hidden: int = 0

  @nn.compact
  def __call__(self, x):
    z = nn.Dense(self.dim, name="linear")(x)
    if self.hidden:
      h = nn.gelu(nn.Dense(self.hidden, name="mlp_in")(x))
      z = z + nn.Dense(self.dim, kernel_init=nn.initializers.zeros, name="mlp_out")(h)
    return z


def init_head(key: jax.Array, w: jax.Array, mean: jax.Array, *, hidden: int = 0) -> tuple[AlignmentHead, dict]:
  """Builds a head whose affine part equals the teacher map ``(x - mean) @ w``; returns ``(module, params)``.

  Args:
    key: PRNG key for the MLP's input layer.
    w: ``[d_in, dim]`` teacher matrix.
    mean: ``[d_in]`` centring of the teacher.
    hidden: MLP width (0: linear head).
  """
  w = jnp.array(w, jnp.float32, copy=True)  # own buffers: a train step may donate the params
  head = AlignmentHead(dim=w.shape[1], hidden=hidden)
  params = head.init(key, jnp.zeros((1, w.shape[0]), jnp.float32))["params"]
  params = dict(params)
  params["linear"] = {"kernel": w, "bias": -jnp.asarray(mean, jnp.float32) @ w}  # a new array
  return head, params
