"""C-MCR projectors (Wang et al. 2023): the Flax modules that map each contrastive space into the shared one."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax.cmcr import normalize

__all__ = ["Projector", "init_projector"]


# ------------------------------------------------------------------------------------------------------------
class Projector(nn.Module):
  """C-MCR projector: ``Linear → BatchNorm → ReLU → Linear → BatchNorm``, then L2 normalisation.

  ``hidden=0`` gives a single ``Linear → BatchNorm`` layer. BatchNorm uses batch statistics when
  ``train=True`` (pass ``mutable=["batch_stats"]``) and its running averages otherwise.
  """
  hidden: int = 1024
  out: int = 512
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=1e-5)
    if self.hidden:
      x = nn.relu(bn()(nn.Dense(self.hidden)(x)))
    x = bn()(nn.Dense(self.out)(x))
    return normalize(x)


def init_projector(key: jax.Array, dim_in: int, *, hidden: int = 1024, out: int = 512) -> tuple[Projector, dict]:
  """Returns ``(module, variables)`` with ``variables = {"params": ..., "batch_stats": ...}``."""
  for name, v in (("dim_in", dim_in), ("out", out)):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be a positive integer, got {v!r}")
  if not isinstance(hidden, (int, np.integer)) or hidden < 0:
    raise ValueError(f"hidden must be a non-negative integer (0: no hidden layer), got {hidden!r}")
  module = Projector(hidden=int(hidden), out=int(out))
  variables = module.init(key, jnp.zeros((2, int(dim_in)), jnp.float32), train=False)
  return module, dict(variables)
