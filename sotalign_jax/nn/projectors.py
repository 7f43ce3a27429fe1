"""C-MCR projectors :cite:p:`wang2023cmcr`: the Flax modules that map each contrastive space into the shared one."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax.cmcr import normalize

__all__ = ["Projector", "init_projector", "apply_together", "KINDS"]

KINDS = ("mlp", "linear", "mlp_half")


# ------------------------------------------------------------------------------------------------------------
class Projector(nn.Module):
  r"""C-MCR projector: ``Linear → BatchNorm → ReLU → Linear → BatchNorm``, then L2 normalisation.

  ``kind`` (the heads of the official ``cmcr/cmcr_projector.py``):

  * ``"mlp"`` — ``Linear(hidden) → BatchNorm → ReLU → Linear(out) → BatchNorm`` (``MLP``, the CLIP–CLAP head;
    ``hidden=0`` gives ``"linear"``).
  * ``"linear"`` — ``Linear(out) → BatchNorm``.
  * ``"mlp_half"`` — ``Linear(out) → BatchNorm → ReLU`` (``MLP_Half``, the CLIP–ULIP head): the outputs are
    non-negative before the normalisation, so every cosine in the shared space is :math:`\ge 0`.

  BatchNorm uses batch statistics when ``train=True`` (pass ``mutable=["batch_stats"]``) and its running averages
  otherwise. One projector serves both modalities of its space (texts and images in the official inference code,
  with one set of running statistics): apply it to the modalities of a batch *together*
  (:func:`apply_together`), so that training normalises them with the same statistics evaluation will use.
  """
  hidden: int = 1024
  out: int = 512
  momentum: float = 0.9
  kind: str = "mlp"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=1e-5)
    if self.kind == "mlp_half":
      return normalize(nn.relu(bn()(nn.Dense(self.out)(x))))
    if self.hidden and self.kind == "mlp":
      x = nn.relu(bn()(nn.Dense(self.hidden)(x)))
    x = bn()(nn.Dense(self.out)(x))
    return normalize(x)


def apply_together(f: Projector, variables: dict, xs: Sequence[jax.Array], *,
                   train: bool) -> tuple[list[jax.Array], dict]:
  r"""``f`` applied to several modalities of one space as ONE batch: :math:`[x_1; \dots; x_k]`.

  In training mode every BatchNorm normalises the concatenated batch with one mean and variance, and its running
  averages become those of the mixture — the statistics evaluation then uses for each modality alone. Applying
  ``f`` to each modality in its own call would instead normalise each with its own statistics in training (which
  removes the modality gap at every BatchNorm) while the running averages alternate between the calls, so the
  evaluated projector would differ from the trained one.

  Args:
    f: the projector.
    variables: ``{"params", "batch_stats"}``.
    xs: a sequence of ``[n_i, d]`` arrays (e.g. texts and pseudo images of the same space).
    train: batch statistics (and updated running averages) if true, running averages otherwise.

  Returns:
    ``(outputs, batch_stats)``: the ``[n_i, out]`` projections in the order of ``xs`` and the (updated when
    ``train``) batch statistics.
  """
  sizes = [x.shape[0] for x in xs]
  x = jnp.concatenate(list(xs), axis=0)
  if train:
    z, upd = f.apply(variables, x, train=True, mutable=["batch_stats"])
    stats = upd["batch_stats"]
  else:
    z, stats = f.apply(variables, x, train=False), variables["batch_stats"]
  return jnp.split(z, np.cumsum(sizes)[:-1].tolist(), axis=0), stats


def init_projector(key: jax.Array, dim_in: int, *, hidden: int = 1024, out: int = 512,
                   kind: str = "mlp") -> tuple[Projector, dict]:
  """Returns ``(module, variables)`` with ``variables = {"params": ..., "batch_stats": ...}`` (``kind``: see
  :class:`Projector`; ``hidden`` is read by ``"mlp"`` only)."""
  for name, v in (("dim_in", dim_in), ("out", out)):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be a positive integer, got {v!r}")
  if not isinstance(hidden, (int, np.integer)) or hidden < 0:
    raise ValueError(f"hidden must be a non-negative integer (0: no hidden layer), got {hidden!r}")
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  module = Projector(hidden=int(hidden) if kind == "mlp" else 0, out=int(out), kind=kind)
  variables = module.init(key, jnp.zeros((2, int(dim_in)), jnp.float32), train=False)
  return module, dict(variables)
