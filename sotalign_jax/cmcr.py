r"""C-MCR: connecting two multi-modal contrastive spaces through their overlapping modality, with no pairs.

:cite:t:`wang2023cmcr`, "Connecting Multi-modal Contrastive Representations", NeurIPS 2023 (arXiv:2305.14381).

Space 1 embeds modalities ``A`` and ``B`` (e.g. CLIP image/text), space 2 embeds ``B`` and ``C`` (e.g. CLAP
text/audio). The same texts encoded in both spaces, :math:`b_i` (space 1) and :math:`b'_i` (space 2), are the
only link. Two projectors :math:`f_1` (space 1 → shared) and :math:`f_2` (space 2 → shared) are trained so that
``A`` and ``C`` become comparable, although no ``A``–``C`` pair is ever seen.

* :class:`sotalign_jax.nn.projectors.Projector` — Linear → BatchNorm → ReLU → Linear → BatchNorm, L2-normalised
  output (paper: hidden 1024, output 512; ``kind="mlp_half"``: the CLIP–ULIP head Linear → BatchNorm → ReLU);
  :func:`sotalign_jax.nn.projectors.init_projector` builds one. Each projector is applied to the texts and the
  pseudo embeddings of its space as one batch (:func:`sotalign_jax.nn.projectors.apply_together`): one set of
  BatchNorm statistics, the one the official heads use for every modality at inference.
* :func:`semantic_noise` — semantic *completion*: :math:`\tilde x = \mathrm{norm}(x + \theta)`,
  :math:`\theta\sim\mathcal N(0, \sigma^2 I)` (paper :math:`\sigma^2 = 0.004`).
* :func:`soft_retrieve` — semantic *consistency*: a pseudo embedding of the other modality of a text's own space,
  :math:`\hat a_i = \mathrm{norm}\big(\mathrm{softmax}(b_i M_A^\top / \tau_1)\, M_A\big)` (paper
  :math:`\tau_1 = 0.01`).
* :func:`nearest` — the same without aggregation (the nearest memory row): the "no semantic consistency" ablation.
* :func:`sotalign_jax.losses.info_nce` — symmetric InfoNCE at temperature :math:`\tau_2` (paper 0.05).
* :func:`intra_alignment` — mean L2 distance between a text and its pseudo embedding after projection.
* :func:`cmcr_objective` — the full loss:

  .. math::

    \mathcal L = \underbrace{\mathrm{NCE}_{\tau_2}\big(f_1(\tilde b), f_2(\tilde b')\big)}_{\text{text}}
      + w_p\,\underbrace{\mathrm{NCE}_{\tau_2}\big(f_1(\tilde a), f_2(\tilde c)\big)}_{\text{pseudo pairs}}
      + \lambda\,\underbrace{\tfrac1B\textstyle\sum_i \|f_1(\tilde b_i) - f_1(\tilde a_i)\|_2
      + \|f_2(\tilde b'_i) - f_2(\tilde c_i)\|_2}_{\text{intra-space}},

  with :math:`\hat a_i, \hat c_i` the soft-retrieved pseudo embeddings of text :math:`i` in each space (tildes:
  after :func:`semantic_noise`), :math:`w_p = 1` and :math:`\lambda = 0.1` in the paper. The inter-space terms
  connect the spaces; the intra-space term closes the modality gap inside each space, so that what was learnt
  on texts transfers to ``A`` and ``C``.

* :func:`modality_gap` — :math:`\|\mu_A - \mu_B\|` of the unit rows, what the intra-space term is there to close.
* Zero-pair baselines without training: :func:`pivot_scores` (``A`` → its nearest texts in space 1 → the same texts
  in space 2, and back for ``C``) and :func:`text_lstsq` (a least-squares map fitted on ``b → b'``). The
  experiment adds the registry's zero-pair aligners between ``A`` and ``C`` (no texts), and mini-vec2vec's
  refinement anchored by the texts' pseudo pairs.
* :func:`check_spaces` — validates user-provided embedding arrays (row counts, dimensions, finiteness).

Everything here is a pure function of arrays (jit-able); the training loop is ``experiments/cmcr.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sotalign_jax._arrays import DEFAULT_PRECISION, check_features, unit
from sotalign_jax.losses import info_nce

__all__ = ["semantic_noise", "soft_retrieve", "nearest", "intra_alignment", "cmcr_objective",
           "CmcrLoss", "check_spaces", "normalize", "modality_gap", "pivot_scores", "text_lstsq"]

# The methods of the C-MCR experiment (experiments/cmcr.py): the paper's objective; its ablations (Wang et al. 2023,
# Tables 5–6): L_ttc alone, L_ttc + L_avc, L_ttc + L_intra, without semantic consistency (hard nearest neighbours
# instead of memory aggregation), without semantic completion (σ² = 0); the σ² and λ sensitivity (× 1/4 and × 4, ×
# 1/10 and × 10 of the configured values); the same projectors trained on A–C pairs (the ceiling); and the zero-pair
# baselines: the raw spaces compared directly, a text pivot, a least-squares map fitted on the shared texts,
# Wasserstein–Procrustes and mini-vec2vec between A and C with no shared modality at all, and mini-vec2vec's
# refinement anchored by the shared texts' pseudo pairs (the texts and the geometry together).
ABLATIONS = ("cmcr_ttc", "cmcr_ttc_avc", "cmcr_ttc_intra", "cmcr_no_consistency", "cmcr_no_noise")
SENSITIVITY = ("cmcr_noise_low", "cmcr_noise_high", "cmcr_lambda_low", "cmcr_lambda_high")
BASELINES = ("no_connection", "text_pivot", "text_lstsq", "wasserstein_procrustes", "mini_vec2vec", "text_anchored")
METHODS = ("cmcr", "supervised", *ABLATIONS, *BASELINES, *SENSITIVITY)

_HI = DEFAULT_PRECISION


normalize = unit  # L2-normalises the rows of ``x: [n, d]`` (norms clipped at ``eps``): ``_arrays.unit`` itself


# ------------------------------------------------------------------------------------------------------------
# Semantic enhancement.
# ------------------------------------------------------------------------------------------------------------
def semantic_noise(key: jax.Array, x: jax.Array, *, variance: float) -> jax.Array:
  r"""Semantic completion (C-MCR §3.2): :math:`\mathrm{norm}(x + \theta),\ \theta\sim\mathcal N(0,\sigma^2 I)`.

  C-MCR :cite:p:`wang2023cmcr`.

  Args:
    key: PRNG key.
    x: ``[n, d]`` embeddings.
    variance: :math:`\sigma^2 \ge 0` per coordinate (paper 0.004); 0 only re-normalises.

  Returns:
    ``[n, d]`` unit rows.
  """
  if variance < 0:
    raise ValueError(f"variance must be >= 0, got {variance}")
  if variance == 0:
    return normalize(x)
  return normalize(x + jnp.sqrt(variance) * jax.random.normal(key, x.shape, x.dtype))


def soft_retrieve(queries: jax.Array, memory: jax.Array, *, temperature: float,
                  chunk_size: int | None = None) -> jax.Array:
  r"""Semantic consistency (C-MCR §3.2): a pseudo embedding retrieved softly from a memory.

  .. math::

    \hat m_i = \mathrm{norm}\Big(\sum_j \mathrm{softmax}_j\big(q_i^\top m_j / \tau_1\big)\, m_j\Big),

  i.e. the attention-weighted mean of the memory rows most similar to the query (paper :math:`\tau_1 = 0.01`
  on unit embeddings). With a text as query and a memory of images of the *same* space, it gives the image
  the text would be paired with.

  C-MCR :cite:p:`wang2023cmcr`.

  Args:
    queries: ``[n, d]`` (unit rows; e.g. texts of one space).
    memory: ``[m, d]`` (unit rows; e.g. images of the same space).
    temperature: :math:`\tau_1 > 0`.
    chunk_size: if given, queries are processed in chunks of this many rows (memory use ``chunk × m``).

  Returns:
    ``[n, d]`` unit pseudo embeddings.
  """
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")

  def one(q):
    w = jax.nn.softmax(jnp.matmul(q, memory.T, precision=_HI) / temperature, axis=-1)
    return normalize(jnp.matmul(w, memory, precision=_HI))

  return _retrieve_in_chunks(one, queries, memory, chunk_size)


def _retrieve_in_chunks(one, queries: jax.Array, memory: jax.Array, chunk_size: int | None) -> jax.Array:
  """``one(queries)`` for a row-wise retrieval from ``memory``, in chunks of ``chunk_size`` query rows (all at once
  if ``None``), after the checks every retrieval shares."""
  if queries.ndim != 2 or memory.ndim != 2 or queries.shape[1] != memory.shape[1]:
    raise ValueError(f"queries [n, d] and memory [m, d] must share d, got {queries.shape} and {memory.shape}")
  if memory.shape[0] == 0:
    raise ValueError("memory is empty: give at least one embedding of the modality to retrieve")
  n = queries.shape[0]
  if chunk_size is None or chunk_size >= n:
    return one(queries)
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
  pad = (-n) % chunk_size
  q = jnp.pad(queries, ((0, pad), (0, 0))).reshape(-1, chunk_size, queries.shape[1])
  return jax.lax.map(one, q).reshape(-1, queries.shape[1])[:n]


def nearest(queries: jax.Array, memory: jax.Array, *, chunk_size: int | None = None) -> jax.Array:
  r"""The memory row most similar to each query, :math:`m_{\arg\max_j q_i^\top m_j}` — :func:`soft_retrieve` without
  the aggregation (its :math:`\tau_1 \to 0` limit): the "without semantic consistency" ablation.

  Args:
    queries: ``[n, d]``.
    memory: ``[m, d]`` (unit rows).
    chunk_size: if given, queries are processed in chunks of this many rows.

  Returns:
    ``[n, d]`` rows of ``memory``.
  """
  one = lambda q: memory[jnp.argmax(jnp.matmul(q, memory.T, precision=_HI), axis=-1)]  # noqa: E731
  return _retrieve_in_chunks(one, queries, memory, chunk_size)


def modality_gap(x: ArrayLike, y: ArrayLike) -> float:
  r"""The modality gap of Liang et al. (2022), :math:`\|\mu_x - \mu_y\|_2` with :math:`\mu` the mean of the
  L2-normalised rows: 0 when both modalities are centred alike, about 0.8 between CLIP's images and texts.

  Args:
    x: ``[n, d]`` embeddings of one modality.
    y: ``[m, d]`` embeddings of the other modality of the same space.
  """
  x, y = (np.asarray(v, np.float64) for v in (x, y))
  mu = lambda v: (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).mean(0)
  return float(np.linalg.norm(mu(x) - mu(y)))


# ------------------------------------------------------------------------------------------------------------
# Zero-pair baselines through the shared texts (no training).
# ------------------------------------------------------------------------------------------------------------
def pivot_scores(a: jax.Array, c: jax.Array, b: jax.Array, b_prime: jax.Array, *, temperature: float) -> jax.Array:
  r"""Text pivot: ``A`` reaches space 2 through the texts nearest to it in space 1, and ``C`` space 1 likewise.

  .. math::

    S_{ij} = \tfrac12\Big(\cos\big(\mathrm{softmax}(a_i B^\top/\tau) B',\ c_j\big)
      + \cos\big(a_i,\ \mathrm{softmax}(c_j B'^\top/\tau) B\big)\Big),

  i.e. each side is replaced by the (soft) nearest shared texts of its own space, carried over to the other space
  as the same texts, and the two directions are averaged.

  Args:
    a: ``[n, d1]`` ``A`` queries (unit rows).
    c: ``[m, d2]`` ``C`` keys (unit rows).
    b: ``[t, d1]`` shared texts in space 1.
    b_prime: ``[t, d2]`` the same texts in space 2.
    temperature: :math:`\tau > 0` of the soft retrieval (:func:`soft_retrieve`).

  Returns:
    ``[n, m]`` scores.
  """
  def carry(q, src, dst):
    w = jax.nn.softmax(jnp.matmul(q, src.T, precision=_HI) / temperature, axis=-1)
    return normalize(jnp.matmul(w, dst, precision=_HI))
  to2, to1 = carry(a, b, b_prime), carry(c, b_prime, b)
  return 0.5 * (jnp.matmul(to2, normalize(c).T, precision=_HI) + jnp.matmul(normalize(a), to1.T, precision=_HI))


def text_lstsq(b: ArrayLike, b_prime: ArrayLike, *, ridge: float = 1e-3) -> np.ndarray:
  r"""The least-squares map from space 1 to space 2 fitted on the shared texts,
  :math:`W = \arg\min_W \|BW - B'\|_F^2 + \alpha t\|W\|_F^2 = (B^\top B + \alpha t I)^{-1} B^\top B'`; ``A``
  is then compared with ``C`` as :math:`\cos(aW, c)`.

  Args:
    b: ``[t, d1]`` texts in space 1.
    b_prime: ``[t, d2]`` the same texts in space 2.
    ridge: :math:`\alpha \ge 0`, per text.

  Returns:
    ``[d1, d2]`` float32.
  """
  b, bp = np.asarray(b, np.float64), np.asarray(b_prime, np.float64)
  w = np.linalg.solve(b.T @ b + ridge * len(b) * np.eye(b.shape[1]), b.T @ bp)
  return w.astype(np.float32)


# ------------------------------------------------------------------------------------------------------------
# Losses.
# ------------------------------------------------------------------------------------------------------------
def intra_alignment(x: jax.Array, y: jax.Array) -> jax.Array:
  r"""Mean Euclidean distance between row-aligned embeddings, :math:`\frac1n\sum_i\|x_i - y_i\|_2`.

  In C-MCR (§3.4, intra-MCR alignment) ``x`` and ``y`` are the projections of a text and of its retrieved
  pseudo embedding of the other modality of the same space.
  """
  if x.shape != y.shape:
    raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
  return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(x - y), axis=-1) + 1e-12))


class CmcrLoss(NamedTuple):
  """The C-MCR objective and its terms (scalars)."""
  total: jax.Array
  text: jax.Array    # NCE(f1(b), f2(b'))
  pseudo: jax.Array  # NCE(f1(â), f2(ĉ))
  intra: jax.Array   # mean ||f1(b) - f1(â)|| + mean ||f2(b') - f2(ĉ)||


def cmcr_objective(z_b: jax.Array, z_b_prime: jax.Array, z_a: jax.Array, z_c: jax.Array, *, temperature: float,
                   intra_weight: float = 0.1, pseudo_weight: float = 1.0) -> CmcrLoss:
  r"""The C-MCR loss on projected (unit) embeddings of one batch of texts.

  .. math::

    \mathcal L = \mathrm{NCE}_{\tau_2}(z_b, z_{b'}) + w_p\,\mathrm{NCE}_{\tau_2}(z_a, z_c)
      + \lambda\Big(\tfrac1B\sum_i\|z_{b,i} - z_{a,i}\|_2 + \tfrac1B\sum_i\|z_{b',i} - z_{c,i}\|_2\Big).

  C-MCR :cite:p:`wang2023cmcr`.

  Args:
    z_b: ``[B, k]`` :math:`f_1(b)`, texts of space 1.
    z_b_prime: ``[B, k]`` :math:`f_2(b')`, the same texts in space 2.
    z_a: ``[B, k]`` :math:`f_1(\hat a)`, pseudo ``A`` embeddings retrieved with ``b``.
    z_c: ``[B, k]`` :math:`f_2(\hat c)`, pseudo ``C`` embeddings retrieved with ``b'``.
    temperature: :math:`\tau_2` (paper 0.05).
    intra_weight: :math:`\lambda` (paper 0.1; 0 drops the intra-space term).
    pseudo_weight: :math:`w_p` (paper 1; 0 drops the pseudo-pair term).
  """
  text = info_nce(z_b, z_b_prime, temperature=temperature)
  pseudo = info_nce(z_a, z_c, temperature=temperature)
  intra = intra_alignment(z_b, z_a) + intra_alignment(z_b_prime, z_c)
  return CmcrLoss(text + pseudo_weight * pseudo + intra_weight * intra, text, pseudo, intra)


# ------------------------------------------------------------------------------------------------------------
# Input checks (host side).
# ------------------------------------------------------------------------------------------------------------
def _matrix(x, name: str) -> np.ndarray:
  return check_features(x, name, host=True)  # float32 NumPy, values checked: these are data being loaded


def check_spaces(*, a_memory: ArrayLike, b: ArrayLike, b_prime: ArrayLike, c_memory: ArrayLike,
                 a_eval: ArrayLike | None = None, c_eval: ArrayLike | None = None, a_train: ArrayLike | None = None,
                 c_train: ArrayLike | None = None) -> dict[str, np.ndarray]:
  """Validates the embeddings of two spaces to connect; returns them as float32 arrays (``None`` dropped).

  Args:
    a_memory: ``[m_a, d1]`` embeddings of modality ``A`` in space 1 (unpaired).
    b: ``[n, d1]`` texts in space 1.
    b_prime: ``[n, d2]`` the same texts, in the same order, in space 2.
    c_memory: ``[m_c, d2]`` embeddings of modality ``C`` in space 2 (unpaired).
    a_eval: ``[n_eval, d1]`` optional evaluation ``A`` rows, row-aligned with ``c_eval``.
    c_eval: ``[n_eval, d2]``.
    a_train: ``[n_pairs, d1]`` optional ``A``–``C`` training pairs (only for a supervised reference).
    c_train: ``[n_pairs, d2]``.

  Raises:
    ValueError: naming the array, if one is empty, not 2-D, non-finite, or disagrees in rows/dimensions.
  """
  out = {"a_memory": _matrix(a_memory, "a_memory"), "b": _matrix(b, "b"), "b_prime": _matrix(b_prime, "b_prime"),
         "c_memory": _matrix(c_memory, "c_memory")}
  for name, v in (("a_eval", a_eval), ("c_eval", c_eval), ("a_train", a_train), ("c_train", c_train)):
    if v is not None:
      out[name] = _matrix(v, name)
  if out["b"].shape[0] != out["b_prime"].shape[0]:
    raise ValueError(f"b has {out['b'].shape[0]} rows but b_prime {out['b_prime'].shape[0]}: they must be the same "
                     "texts, in the same order, encoded in space 1 and space 2")
  d1, d2 = out["b"].shape[1], out["b_prime"].shape[1]
  for name, d in (("a_memory", d1), ("a_eval", d1), ("a_train", d1), ("c_memory", d2), ("c_eval", d2),
                  ("c_train", d2)):
    if name in out and out[name].shape[1] != d:
      space = "1 (the dimension of b)" if name.startswith("a") else "2 (the dimension of b_prime)"
      raise ValueError(f"{name} has dimension {out[name].shape[1]} but space {space} is {d}")
  for x, y in (("a_eval", "c_eval"), ("a_train", "c_train")):
    if (x in out) != (y in out):
      raise ValueError(f"{x} and {y} come together (row-aligned pairs): give both or neither")
    if x in out and out[x].shape[0] != out[y].shape[0]:
      raise ValueError(f"{x} has {out[x].shape[0]} rows but {y} {out[y].shape[0]}: row i of both must be the same item")
  return out
