"""A small Flax MPNet encoder (Song et al., 2020), numerically matching Hugging Face's ``MPNetModel``.

Transformers ships no Flax MPNet, so this module writes the forward pass out: a post-LayerNorm
BERT-style encoder whose self-attention adds a T5-style bucketed relative position bias (Raffel et
al., 2020) that is computed once and shared by every layer, with absolute position ids offset by
``padding_idx + 1`` as in RoBERTa. Parameter names mirror the PyTorch checkpoint
(``encoder.layer.0.attention.attn.q`` -> ``params['encoder']['layer']['0']['attention']['attn']['q']``),
so :func:`sotalign_jax.encoders.text.torch_to_flax` converts a ``model.safetensors`` state dict.

References:
  K. Song, X. Tan, T. Qin, J. Lu, T.-Y. Liu. MPNet: Masked and Permuted Pre-training for Language
  Understanding. NeurIPS 2020.
  C. Raffel et al. Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer.
  JMLR 2020.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class MPNetConfig:
  """Hyper-parameters of an MPNet encoder (the fields of its ``config.json`` that the forward uses)."""
  vocab_size: int = 30527
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 514
  layer_norm_eps: float = 1e-5
  pad_token_id: int = 1
  relative_attention_num_buckets: int = 32
  hidden_act: str = "gelu"

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "MPNetConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def relative_position_bucket(
    relative_position: np.ndarray, *, num_buckets: int = 32, max_distance: int = 128
) -> np.ndarray:
  """T5-style bidirectional bucketing of relative positions, as in HF ``MPNetEncoder``.

  With :math:`n = -r`, half of the buckets go to :math:`n < 0`; inside each half, distances
  :math:`|n| < m` with :math:`m = \\text{num\\_buckets} / 4` get their own bucket and larger ones
  a logarithmically spaced bucket:

  .. math::
    b(n) = \\mathbb{1}[n < 0] \\frac{N}{2} + \\begin{cases} |n| & |n| < m \\\\
      \\min\\left(m + \\left\\lfloor \\frac{\\log(|n| / m)}{\\log(D / m)} (N/2 - m) \\right\\rfloor,
      N/2 - 1\\right) & \\text{otherwise} \\end{cases}

  computed in float32 like the PyTorch original, so bucket boundaries agree exactly.

  Args:
    relative_position: integer array of ``memory_position - query_position``, any shape.
    num_buckets: total number of buckets :math:`N`.
    max_distance: distance :math:`D` from which all positions share the last bucket.

  Returns:
    int32 array of bucket ids in ``[0, num_buckets)``, same shape as ``relative_position``.
  """
  n = -np.asarray(relative_position, dtype=np.int64)
  half = num_buckets // 2
  ret = (n < 0).astype(np.int64) * half
  n = np.abs(n)
  max_exact = half // 2
  is_small = n < max_exact
  scaled = (np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  val_if_large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
  return (ret + np.where(is_small, n, val_if_large)).astype(np.int32)


def position_ids_from_input_ids(input_ids: jnp.ndarray, padding_idx: int) -> jnp.ndarray:
  """RoBERTa/MPNet position ids: ``padding_idx + 1, padding_idx + 2, ...`` on tokens, ``padding_idx`` on pads.

  Args:
    input_ids: ``[b, l]`` integer token ids.
    padding_idx: id of the padding token.

  Returns:
    ``[b, l]`` int32 position ids.
  """
  mask = (input_ids != padding_idx).astype(jnp.int32)
  return jnp.cumsum(mask, axis=1) * mask + padding_idx


class MPNetEmbeddings(nn.Module):
  config: MPNetConfig

  @nn.compact
  def __call__(self, input_ids: jnp.ndarray) -> jnp.ndarray:
    c = self.config
    words = nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
    positions = position_ids_from_input_ids(input_ids, c.pad_token_id)
    pos = nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(positions)
    return nn.LayerNorm(epsilon=c.layer_norm_eps, name="LayerNorm")(words + pos)


class MPNetSelfAttention(nn.Module):
  config: MPNetConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    c = self.config
    b, l, d = x.shape
    h = c.num_attention_heads
    split = lambda t: t.reshape(b, l, h, d // h)
    q = split(nn.Dense(d, name="q")(x))
    k = split(nn.Dense(d, name="k")(x))
    v = split(nn.Dense(d, name="v")(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // h) + bias
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, d)
    return nn.Dense(d, name="o")(out)


class MPNetLayer(nn.Module):
  config: MPNetConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    c = self.config
    attn = _Attention(c, name="attention")(x, bias)
    hidden = jax.nn.gelu(_Dense(c.intermediate_size, name="intermediate")(attn), approximate=False)
    return DenseLayerNorm(c, name="output")(hidden, attn)


class _Attention(nn.Module):
  config: MPNetConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    y = MPNetSelfAttention(self.config, name="attn")(x, bias)
    return nn.LayerNorm(epsilon=self.config.layer_norm_eps, name="LayerNorm")(y + x)


class _Dense(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return nn.Dense(self.features, name="dense")(x)


class DenseLayerNorm(nn.Module):
  """``LayerNorm(dense(x) + residual)``: HF's ``*SelfOutput`` / ``*Output`` (MPNet and BERT)."""
  config: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, residual: jnp.ndarray) -> jnp.ndarray:
    y = nn.Dense(self.config.hidden_size, name="dense")(x)
    return nn.LayerNorm(epsilon=self.config.layer_norm_eps, name="LayerNorm")(y + residual)


class LayerStack(nn.Module):
  """``config.num_hidden_layers`` layers ``layer(config, name="0"), ...``; returns the input and every layer's output
  (``L + 1`` states). Shared by MPNet and BERT (:mod:`sotalign_jax.encoders.bert`)."""
  config: Any
  layer: Any  # the layer's module class, called as layer(config, name=str(i))(x, bias)

  @nn.compact
  def __call__(self, x: jnp.ndarray, bias: jnp.ndarray) -> list[jnp.ndarray]:
    states = [x]
    for i in range(self.config.num_hidden_layers):
      x = self.layer(self.config, name=str(i))(x, bias)
      states.append(x)
    return states


class MPNetEncoder(nn.Module):
  config: MPNetConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray, attention_mask: jnp.ndarray) -> list[jnp.ndarray]:
    c = self.config
    l = x.shape[1]
    pos = np.arange(l)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], num_buckets=c.relative_attention_num_buckets)
    table = nn.Embed(c.relative_attention_num_buckets, c.num_attention_heads, name="relative_attention_bias")
    position_bias = jnp.transpose(table(jnp.asarray(buckets)), (2, 0, 1))[None]  # [1, h, l, l]
    mask_bias = (1.0 - attention_mask[:, None, None, :].astype(x.dtype)) * jnp.finfo(x.dtype).min
    return LayerStack(c, MPNetLayer, name="layer")(x, position_bias + mask_bias)


class MPNetModel(nn.Module):
  """MPNet encoder without pooler; returns the ``L + 1`` hidden states (embeddings first).

  Args of ``__call__``:
    input_ids: ``[b, l]`` token ids, right-padded with ``config.pad_token_id``.
    attention_mask: ``[b, l]`` with 1 on tokens and 0 on padding.

  Returns:
    list of ``L + 1`` arrays ``[b, l, d]``; the last one is ``last_hidden_state``.
  """
  config: MPNetConfig

  @nn.compact
  def __call__(self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray) -> list[jnp.ndarray]:
    x = MPNetEmbeddings(self.config, name="embeddings")(input_ids)
    return MPNetEncoder(self.config, name="encoder")(x, attention_mask)


def param_shapes(config: MPNetConfig) -> Any:
  """Shape tree of :class:`MPNetModel`'s parameters (no allocation)."""
  ids = jnp.ones((1, 4), jnp.int32)
  tree = jax.eval_shape(MPNetModel(config).init, jax.random.PRNGKey(0), ids, ids)
  return tree["params"]
