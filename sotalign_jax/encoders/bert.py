"""A small Flax BERT / RoBERTa / XLM-R encoder (Devlin et al., 2019; Liu et al., 2019), matching Hugging Face.

Transformers 5 ships no Flax models, so this module writes out the forward pass of Hugging Face's
``BertModel`` (eval mode, absolute positions, no pooler): word + position + token-type embeddings
and a LayerNorm, then ``num_hidden_layers`` post-LayerNorm blocks

.. math::
  a = \\mathrm{LN}(x + W_o\\,\\mathrm{softmax}(Q K^\\top / \\sqrt{d_h} + B_{\\text{mask}})\\,V), \\qquad
  x' = \\mathrm{LN}(a + W_2\\,\\phi(W_1 a)),

with :math:`\\phi` the checkpoint's ``hidden_act``. RoBERTa-style checkpoints (``model_type`` in
:data:`ROBERTA_TYPES`) differ only in their position ids, ``padding_idx + 1, padding_idx + 2, ...``
counted over non-padding tokens (:func:`sotalign_jax.encoders.mpnet.position_ids_from_input_ids`).
Token-type ids are all 0, as in a single-segment ``BertModel`` call.

Parameter names mirror the PyTorch checkpoint and Hugging Face's former Flax classes alike
(``encoder.layer.0.attention.self.query.weight`` -> ``params['encoder']['layer']['0']['attention']['self']
['query']['kernel']``), so :func:`sotalign_jax.encoders.text.torch_to_flax` converts a ``model.safetensors``
state dict and a ``flax_model.msgpack`` loads as is.

References:
  J. Devlin, M.-W. Chang, K. Lee, K. Toutanova. BERT: Pre-training of Deep Bidirectional Transformers for
  Language Understanding. NAACL 2019.
  Y. Liu et al. RoBERTa: A Robustly Optimized BERT Pretraining Approach. arXiv:1907.11692, 2019.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sotalign_jax.encoders.mpnet import DenseLayerNorm, LayerStack, position_ids_from_input_ids

# ``model_type`` values whose position ids start at ``padding_idx + 1`` (HF ``create_position_ids_from_input_ids``).
ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
MODEL_TYPES = ("bert", *ROBERTA_TYPES)

ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # erf form, as torch's default
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),  # tanh form
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters of a BERT-family encoder (the fields of its ``config.json`` that the forward uses)."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  model_type: str = "bert"

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"model_type={self.model_type!r} is not a BERT-family encoder; choose one of {MODEL_TYPES}")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; choose one of {tuple(ACTIVATIONS)}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                       f"num_attention_heads={self.num_attention_heads}")

  @property
  def roberta_style(self) -> bool:
    """Whether position ids start at ``pad_token_id + 1`` and skip padding."""
    return self.model_type in ROBERTA_TYPES

  @property
  def max_tokens(self) -> int:
    """Longest input the position table covers (``max_position_embeddings - pad_token_id - 1`` if RoBERTa-style)."""
    return self.max_position_embeddings - (self.pad_token_id + 1 if self.roberta_style else 0)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "BertConfig":
    """Reads a Hugging Face ``config.json`` dict; absent or null fields take Hugging Face's defaults.

    Raises:
      ValueError: for relative position embeddings or an unsupported ``model_type`` / ``hidden_act``.
    """
    if d.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"position_embedding_type={d['position_embedding_type']!r} is not supported (only absolute)")
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names and v is not None}
    if d.get("model_type") in ROBERTA_TYPES:  # RobertaConfig / XLMRobertaConfig defaults
      kw = {"pad_token_id": 1, "layer_norm_eps": 1e-5, **kw}
    return cls(**kw)


class BertEmbeddings(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jnp.ndarray, token_type_ids: jnp.ndarray) -> jnp.ndarray:
    c = self.config
    if c.roberta_style:
      positions = position_ids_from_input_ids(input_ids, c.pad_token_id)
    else:
      positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    x = (nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
         + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(positions)
         + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(token_type_ids))
    return nn.LayerNorm(epsilon=c.layer_norm_eps, name="LayerNorm")(x)


class BertSelfAttention(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    b, l, d = x.shape
    h = self.config.num_attention_heads
    split = lambda t: t.reshape(b, l, h, d // h)
    q = split(nn.Dense(d, name="query")(x))
    k = split(nn.Dense(d, name="key")(x))
    v = split(nn.Dense(d, name="value")(x))
    probs = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // h) + bias, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, d)


class _Attention(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    return DenseLayerNorm(self.config, name="output")(BertSelfAttention(self.config, name="self")(x, bias), x)


class _Intermediate(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return ACTIVATIONS[self.config.hidden_act](nn.Dense(self.config.intermediate_size, name="dense")(x))


class BertLayer(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    attn = _Attention(self.config, name="attention")(x, bias)
    return DenseLayerNorm(self.config, name="output")(_Intermediate(self.config, name="intermediate")(attn), attn)


class BertEncoder(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray, attention_mask: jnp.ndarray) -> list[jnp.ndarray]:
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(x.dtype).min).astype(x.dtype)
    return LayerStack(self.config, BertLayer, name="layer")(x, bias)


class BertModel(nn.Module):
  """BERT-family encoder without pooler; returns the ``L + 1`` hidden states (embeddings first).

  Args of ``__call__``:
    input_ids: ``[b, l]`` token ids, right-padded with ``config.pad_token_id``.
    attention_mask: ``[b, l]`` with 1 on tokens and 0 on padding.
    token_type_ids: ``[b, l]`` segment ids; ``None`` means all 0.

  Returns:
    list of ``L + 1`` arrays ``[b, l, d]``; the last one is ``last_hidden_state``.
  """
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray,
               token_type_ids: jnp.ndarray | None = None) -> list[jnp.ndarray]:
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = BertEmbeddings(self.config, name="embeddings")(input_ids, token_type_ids)
    return BertEncoder(self.config, name="encoder")(x, attention_mask)


def param_shapes(config: BertConfig) -> Any:
  """Shape tree of :class:`BertModel`'s parameters (no allocation)."""
  ids = jnp.ones((1, 4), jnp.int32)
  return jax.eval_shape(BertModel(config).init, jax.random.PRNGKey(0), ids, ids)["params"]
