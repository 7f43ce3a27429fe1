r"""Alignment heads: small Flax modules mapping a frozen encoder's features into the shared space.

``save_heads`` / ``load_heads`` store a pair of heads (image side ``f``, text side ``g``) as ``heads.msgpack`` +
``heads.json`` in a run directory; ``python -m sotalign_jax.cli.evaluate`` and the experiments read them back.

Every head contains an affine map initialised from a linear teacher, :math:`z = (x - \mu)W`, so training
starts exactly at the teacher's geometry. The ``mlp`` variant adds a residual two-layer MLP whose output layer
starts at zero: :math:`z = (x - \mu)W + W_2\,\mathrm{gelu}(W_1 x + b_1)`.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax.runtime import io as sio

__all__ = ["AlignmentHead", "init_head", "linear_params", "save_heads", "load_heads"]


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
  params.update(linear_params(w, mean))  # new arrays
  return head, params


def linear_params(w: jax.Array, mean: jax.Array) -> dict:
  """The parameters of a linear head computing ``(x - mean) @ w`` (a closed-form teacher as a head)."""
  w = jnp.asarray(w, jnp.float32)
  return {"linear": {"kernel": w, "bias": -jnp.asarray(mean, jnp.float32) @ w}}


def save_heads(run_dir: str, params: dict, *, hidden: int) -> None:
  """Writes ``{"f": image-head params, "g": text-head params}`` to ``run_dir`` (atomic; call it on one process).

  Args:
    run_dir: the method's run directory (created if missing).
    params: the two heads' parameters; device arrays are read from their first addressable shard.
    hidden: the heads' MLP width (0: linear).
  """
  local = jax.tree.map(lambda a: np.asarray(a.addressable_data(0) if isinstance(a, jax.Array) else a), params)
  w = local["f"]["linear"]["kernel"]
  meta = {"dim": int(w.shape[1]), "hidden": int(hidden), "d_x": int(w.shape[0]),
          "d_y": int(local["g"]["linear"]["kernel"].shape[0])}
  sio.write_bytes(os.path.join(run_dir, "heads.msgpack"), flax.serialization.to_bytes(local))
  sio.write_json(os.path.join(run_dir, "heads.json"), meta)


def load_heads(run_dir: str) -> tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
  """Reads the heads saved by :func:`save_heads`; returns jitted ``(embed_x, embed_y)``.

  Raises:
    FileNotFoundError: if ``run_dir`` has no ``heads.json`` (the method has not finished there).
  """
  meta_path = os.path.join(run_dir, "heads.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{meta_path} not found: this method has not finished in this workdir "
                            "(rerun the experiment command to finish it)")
  with open(meta_path) as f:
    meta = json.load(f)
  f_head = AlignmentHead(dim=meta["dim"], hidden=meta["hidden"])
  g_head = AlignmentHead(dim=meta["dim"], hidden=meta["hidden"])
  template = {
      "f": f_head.init(jax.random.key(0), jnp.zeros((1, meta["d_x"])))["params"],
      "g": g_head.init(jax.random.key(0), jnp.zeros((1, meta["d_y"])))["params"],
  }
  with open(os.path.join(run_dir, "heads.msgpack"), "rb") as f:
    params = flax.serialization.from_bytes(template, f.read())
  embed_x = jax.jit(lambda x: f_head.apply({"params": params["f"]}, x))
  embed_y = jax.jit(lambda y: g_head.apply({"params": params["g"]}, y))
  return embed_x, embed_y
