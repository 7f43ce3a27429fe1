r"""Paired and structural losses: SigLIP, symmetric InfoNCE and a STRUCTURE-style regulariser.

All functions are pure, take ``[n, d]`` embeddings (normalised inside: every similarity here is a cosine) and
return a scalar mean over the batch.

References:
  Zhai, Mustafa, Kolesnikov, Beyer. Sigmoid Loss for Language Image Pre-Training (SigLIP). ICCV 2023.
  Radford et al. Learning Transferable Visual Models From Natural Language Supervision (CLIP). ICML 2021;
  van den Oord, Li, Vinyals. Representation Learning with Contrastive Predictive Coding (InfoNCE). 2018.
  Gröger, Wen, Le, Brbić. With Limited Data for Multimodal Alignment, Let the STRUCTURE Guide You.
  arXiv:2506.16895, 2025.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax._arrays import check_features, check_positive, jit_with_host_scalars, unit

__all__ = ["SIGLIP_INIT_T_LOG", "SIGLIP_INIT_BIAS", "siglip_loss", "info_nce", "structure_regularizer"]

SIGLIP_INIT_T_LOG = math.log(10.0)  # t = exp(t') = 10 at init (Zhai et al. 2023).
SIGLIP_INIT_BIAS = -10.0


def _check_pair(name_a: str, a, name_b: str, b, *, same_n: bool = True) -> tuple[jax.Array, jax.Array]:
  a, b = check_features(a, f"`{name_a}`"), check_features(b, f"`{name_b}`")
  if same_n and a.shape[0] != b.shape[0]:
    raise ValueError(f"`{name_a}` {a.shape} and `{name_b}` {b.shape} must have the same batch size n "
                     "(row i of one is paired with row i of the other).")
  return a, b


def siglip_loss(img: jax.Array, txt: jax.Array, *, t_log: jax.Array, bias: jax.Array) -> jax.Array:
  r"""Sigmoid contrastive loss of SigLIP on a batch of ``n`` paired embeddings.

  .. math::

    \mathcal{L} = -\frac{1}{n} \sum_{i=1}^n \sum_{j=1}^n \log \sigma\big(z_{ij} (e^{t'} \cos(x_i, y_j) + b)\big),
    \qquad z_{ij} = \begin{cases} +1 & i = j \\ -1 & i \ne j \end{cases}

  (:cite:t:`zhai2023siglip`, Algorithm 1). Learnable ``t_log`` (:math:`t'`) and ``bias`` (:math:`b`) are initialised to
  :data:`SIGLIP_INIT_T_LOG` (:math:`\log 10`) and :data:`SIGLIP_INIT_BIAS` (:math:`-10`).

  SigLIP :cite:p:`zhai2023siglip`.

  Args:
    img: ``[n, d]`` image embeddings (normalised here).
    txt: ``[n, d]`` text embeddings, row ``i`` paired with ``img[i]``.
    t_log: scalar log-temperature :math:`t'`.
    bias: scalar bias :math:`b`.

  Returns:
    The scalar loss.

  Raises:
    ValueError: if the embeddings are not ``[n, d]`` with the same ``n`` and ``d``.
  """
  img, txt = _check_pair("img", img, "txt", txt)
  if img.shape[1] != txt.shape[1]:
    raise ValueError(f"`img` {img.shape} and `txt` {txt.shape} must have the same embedding dimension d.")
  return _siglip(img, txt, t_log=t_log, bias=bias)


@functools.partial(jit_with_host_scalars, scalars=("t_log", "bias"))
def _siglip(img, txt, *, t_log, bias):
  n = img.shape[0]
  logits = jnp.exp(t_log) * (unit(img) @ unit(txt).T) + bias
  labels = 2.0 * jnp.eye(n, dtype=logits.dtype) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / n


def info_nce(a: jax.Array, b: jax.Array, *, temperature: float) -> jax.Array:
  r"""Symmetric InfoNCE (CLIP) loss on a batch of ``n`` paired embeddings.

  .. math::

    \mathcal{L} = -\frac{1}{2n} \sum_{i=1}^n \Big[\log \frac{e^{s_{ii}}}{\sum_j e^{s_{ij}}}
      + \log \frac{e^{s_{ii}}}{\sum_j e^{s_{ji}}}\Big], \qquad s_{ij} = \cos(a_i, b_j) / \tau.

  Args:
    a: ``[n, d]`` embeddings of one modality.
    b: ``[n, d]`` embeddings of the other, row ``i`` paired with ``a[i]``.
    temperature: :math:`\tau > 0` (CLIP learns :math:`1/\tau`, initialised at 1/0.07).

  Returns:
    The scalar loss.

  Raises:
    ValueError: on mismatched shapes or a non-positive temperature.
  """
  a, b = _check_pair("a", a, "b", b)
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"`a` {a.shape} and `b` {b.shape} must have the same embedding dimension d.")
  check_positive("temperature", temperature)
  return _info_nce(a, b, temperature=temperature)


@functools.partial(jit_with_host_scalars, scalars=("temperature",))
def _info_nce(a, b, *, temperature):
  s = (unit(a) @ unit(b).T) / temperature
  diag = jnp.diagonal(s)
  a2b = jax.nn.logsumexp(s, axis=1) - diag
  b2a = jax.nn.logsumexp(s, axis=0) - diag
  return 0.5 * (jnp.mean(a2b) + jnp.mean(b2a))


def _js_rows(p: jax.Array, q: jax.Array) -> jax.Array:
  """Mean over rows of the Jensen–Shannon divergence between row distributions ``p`` and ``q`` (nats)."""
  m = 0.5 * (p + q)
  # Softmax rows are strictly positive, but clip so that an underflowed entry contributes 0 and not NaN.
  tiny = jnp.finfo(p.dtype).tiny
  log_m = jnp.log(jnp.clip(m, tiny))
  kl_pm = jnp.sum(p * (jnp.log(jnp.clip(p, tiny)) - log_m), axis=1)
  kl_qm = jnp.sum(q * (jnp.log(jnp.clip(q, tiny)) - log_m), axis=1)
  return jnp.mean(0.5 * (kl_pm + kl_qm))


def structure_regularizer(x_raw: jax.Array, z: jax.Array, *, temperature: float, levels: int = 1) -> jax.Array:
  r"""STRUCTURE-style regulariser: keep a modality's neighbourhood structure in the aligned space.

  For the frozen features :math:`X` and their aligned embeddings :math:`Z` of the same ``n`` samples, build the
  row-stochastic neighbourhood matrices of the batch

  .. math::

    P_X = \operatorname{softmax}_{\text{rows}}\big(\cos(X, X) / \tau\big), \qquad
    P_Z = \operatorname{softmax}_{\text{rows}}\big(\cos(Z, Z) / \tau\big),

  and average the row-wise Jensen–Shannon divergence over ``levels`` random-walk scales:

  .. math::

    R(X, Z) = \frac{1}{L} \sum_{l=1}^{L} \frac{1}{n} \sum_{i=1}^n
      \mathrm{JS}\big((P_X^l)_{i\cdot} \,\|\, (P_Z^l)_{i\cdot}\big).

  This is our reading of :cite:t:`groger2025structure`: multi-scale neighbourhood distributions compared with JS. We
  could not check the paper's exact choices offline; here the self-similarity stays in the softmax (no diagonal mask),
  features are not centred, and :math:`X` is a constant target (``stop_gradient``). ``levels=1`` is the single-scale
  term. It is per modality: add one term for images and one for texts.

  Args:
    x_raw: ``[n, d_raw]`` frozen unimodal features (target structure).
    z: ``[n, d]`` aligned embeddings of the same samples.
    temperature: softmax temperature :math:`\tau > 0`.
    levels: number of random-walk scales :math:`L \ge 1`.

  Returns:
    The scalar regulariser, in nats, in :math:`[0, \log 2]`.

  Raises:
    ValueError: on mismatched batch sizes, a non-positive temperature or ``levels < 1``.
  """
  x_raw, z = _check_pair("x_raw", x_raw, "z", z)
  check_positive("temperature", temperature)
  if not isinstance(levels, (int, np.integer)) or isinstance(levels, bool) or levels < 1:
    raise ValueError(f"`levels` must be an int >= 1, got {levels!r}.")
  return _structure(x_raw, z, temperature=temperature, levels=int(levels))


@functools.partial(jit_with_host_scalars, scalars=("temperature",), static_argnames=("levels",))
def _structure(x_raw, z, *, temperature, levels: int):
  xn = unit(jax.lax.stop_gradient(x_raw))
  zn = unit(z)
  p_x = jax.nn.softmax((xn @ xn.T) / temperature, axis=1)
  p_z = jax.nn.softmax((zn @ zn.T) / temperature, axis=1)
  total = 0.0
  walk_x, walk_z = p_x, p_z
  for level in range(levels):
    if level > 0:
      walk_x, walk_z = walk_x @ p_x, walk_z @ p_z
    total = total + _js_rows(walk_x, walk_z)
  return total / levels
