r"""The unpaired terms that distinguish SOTAlign from its baselines, picked by name from :data:`UNPAIRED_TERMS`.

Each term takes the student's embeddings of an *unpaired* batch — images ``zx = f(X_u)`` and texts
``zy = g(Y_u)`` (independent draws, no pairing) — plus the raw features and the teacher's embeddings of the
same batch, and returns ``(value, diagnostics)``: the scalar to add to the paired SigLIP loss and a dict of scalar
diagnostics (empty for most terms) that the training step logs with its metrics; the pair suits
``jax.value_and_grad(..., has_aux=True)``. The terms that solve an OT problem report how converged it is (``klot``:
both plans' marginal errors and whether both are below the threshold; ``pseudo_label``: the teacher plan's), so a
run shows when the fixed number of Sinkhorn iterations did not converge:

* ``klot`` — SOTAlign :cite:p:`roschmann2026sotalign`: :math:`\mathrm{KL}(P_{\varepsilon^*}(K^*)\,\|\,P_\varepsilon(K))`
  between the entropic OT plans of the teacher's and the student's cosine matrices (:func:`sotalign_jax.ot.klot`).
* ``sinkhorn_divergence`` — the classic debiased Sinkhorn divergence between the two embedded clouds (ablation).
* ``structure`` — STRUCTURE-style regulariser (Gröger et al.): each modality keeps its own neighbourhood
  structure in the aligned space (:func:`sotalign_jax.losses.structure_regularizer`).
* ``pseudo_label`` — S-CLIP-style soft pseudo-captions: the teacher's OT plan between the unpaired images and
  texts, row- and column-normalised, is the target of the student's softmax over the batch.
* ``extra_negatives`` — semi-supervised SAIL: the unpaired images and texts join the SigLIP batch as extra
  negatives (every entry of the enlarged batch that is not a true pair is labelled −1).
* ``nn_positives`` — NNCLR-style nearest-neighbour positives (after Dwibedi et al., ICCV 2021): each unpaired image
  borrows the caption of its nearest *paired* image (in the frozen image space) as a positive, each unpaired text
  the image of its nearest paired text.
* ``none`` — no unpaired term (SAIL-style supervised training, and the all-pairs upper bound).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from sotalign_jax import losses, ot
from sotalign_jax._arrays import unit

__all__ = ["UnpairedBatch", "UNPAIRED_TERMS", "Term", "klot_term", "sinkhorn_divergence_term", "structure_term",
           "pseudo_label_term", "extra_negatives_term", "nn_positives_term", "no_term"]

Term = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
"""``term(batch: UnpairedBatch, **options) -> (value, diagnostics)``: a scalar and a dict of scalars."""

_NONE: dict[str, jax.Array] = {}


class UnpairedBatch(NamedTuple):
  """One step's unpaired batch (and, for the terms that relate it to the pairs, the step's paired batch)."""
  x: jax.Array    # [n, dx] raw image features
  y: jax.Array    # [m, dy] raw text features
  zx: jax.Array   # [n, k] student image embeddings (unnormalised)
  zy: jax.Array   # [m, k] student text embeddings
  tx: jax.Array   # [n, k'] teacher image embeddings (constants)
  ty: jax.Array   # [m, k'] teacher text embeddings
  logit_scale: jax.Array  # exp(t'), the student's SigLIP temperature
  logit_bias: jax.Array | None = None  # b, the student's SigLIP bias
  pair_x: jax.Array | None = None   # [p, dx] raw features of the paired batch
  pair_y: jax.Array | None = None   # [p, dy]
  pair_zx: jax.Array | None = None  # [p, k] student embeddings of the paired batch
  pair_zy: jax.Array | None = None  # [p, k]


def klot_term(b: UnpairedBatch, *, eps_student: float, eps_teacher: float, sinkhorn_iters: int,
              shard_klot: bool = False, mesh: jax.sharding.Mesh | None = None,
              threshold: float = 1e-3) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""SOTAlign: KLOT between the teacher's (fixed) and the student's entropic plans of the unpaired batch, and how
  converged the two plans are.

  .. math::

    \mathrm{KLOT}(K, K^*) = \mathrm{KL}\big(P_{\varepsilon^*}(K^*) \,\|\, P_\varepsilon(K)\big),\qquad
    K = \cos(z_x, z_y),\ K^* = \cos(t_x, t_y)

  (:func:`sotalign_jax.ot.klot`, :cite:t:`roschmann2026sotalign`). The closed-form gradient is exact only at converged
  plans, so the diagnostics are ``klot/student_marginal_error`` and ``klot/teacher_marginal_error`` (:math:`\|P1 - a\|_1
  + \|P^\top 1 - b\|_1` of each plan after ``sinkhorn_iters`` iterations) and ``klot/converged`` (1.0 when both are
  below ``threshold``, else 0.0), at no extra cost.

  With ``shard_klot`` and a ``mesh`` (whose ``"data"`` axis splits the batch), both ``[n, m]`` matrices stay
  split by rows over the devices (:func:`sotalign_jax.ot.klot_sharded`: ``≈ 6 · (n / p) · m · 4`` bytes per
  device instead of ``6 · n · m · 4``); the same value, gradient and diagnostics up to float rounding.

  Returns:
    ``(value, diagnostics)``.
  """
  k_teacher = jax.lax.stop_gradient(ot.cosine_similarity(b.tx, b.ty))
  k_student = ot.cosine_similarity(b.zx, b.zy)
  opts = dict(eps_student=eps_student, eps_teacher=eps_teacher, num_iters=sinkhorn_iters, return_diagnostics=True,
              threshold=threshold)
  if shard_klot and mesh is not None:
    value, diag = ot.klot_sharded(k_student, k_teacher, mesh=mesh, axis_name="data", **opts)
  else:
    value, diag = ot.klot(k_student, k_teacher, **opts)
  return value, {"klot/student_marginal_error": diag.student_marginal_error,
                 "klot/teacher_marginal_error": diag.teacher_marginal_error,
                 "klot/converged": diag.converged.astype(jnp.float32)}




def sinkhorn_divergence_term(b: UnpairedBatch, *, eps_student: float,
                             **unused: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Ablation of SOTAlign: the debiased Sinkhorn divergence between the two embedded clouds (no teacher)."""
  del unused
  return ot.sinkhorn_divergence(unit(b.zx), unit(b.zy), epsilon=eps_student), _NONE


def structure_term(b: UnpairedBatch, *, temperature: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """STRUCTURE: each modality keeps its frozen neighbourhood structure in the aligned space."""
  return (losses.structure_regularizer(b.x, b.zx, temperature=temperature)
          + losses.structure_regularizer(b.y, b.zy, temperature=temperature)), _NONE


def pseudo_label_term(b: UnpairedBatch, *, eps: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """S-CLIP-style soft pseudo-captions: the teacher's OT plan is the target of the student's softmax; the diagnostic
  ``pseudo_label/teacher_marginal_error`` is that plan's marginal error after its 100 Sinkhorn iterations."""
  out = ot.sinkhorn(jax.lax.stop_gradient(ot.cosine_similarity(b.tx, b.ty)), epsilon=eps, num_iters=100)
  plan = jax.lax.stop_gradient(out.plan)
  logits = b.logit_scale * ot.cosine_similarity(b.zx, b.zy)
  rows = plan / plan.sum(1, keepdims=True)
  cols = plan / plan.sum(0, keepdims=True)
  ce_i2t = -jnp.sum(rows * jax.nn.log_softmax(logits, axis=1), axis=1).mean()
  ce_t2i = -jnp.sum(cols * jax.nn.log_softmax(logits, axis=0), axis=0).mean()
  return 0.5 * (ce_i2t + ce_t2i), {"pseudo_label/teacher_marginal_error": out.marginal_error}


def _sigmoid_terms(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits))


def extra_negatives_term(b: UnpairedBatch) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""Semi-supervised SAIL: SigLIP on the paired batch enlarged by the unpaired rows, which are negatives only.

  With :math:`s = e^{t'}`, bias :math:`b` and the paired batch of size :math:`p`, the term adds every entry of the
  enlarged :math:`(p + n) \times (p + m)` logit matrix outside the paired block, all labelled −1:

  .. math::

    \frac{1}{p}\Big[\sum_{i \le p, j \le m} \ell^-(z^x_i, u^y_j) + \sum_{i \le n, j \le p} \ell^-(u^x_i, z^y_j)
      + \sum_{i \le n, j \le m} \ell^-(u^x_i, u^y_j)\Big], \qquad \ell^-(a, c) = -\log\sigma(-(s\cos(a, c) + b)),

  so with weight α = 1 the total loss is exactly :func:`sotalign_jax.losses.siglip_loss` of the enlarged batch
  with the same :math:`1/p` normalisation as the pair loss.
  """
  s, bias = b.logit_scale, b.logit_bias
  ux, uy, px, py = unit(b.zx), unit(b.zy), unit(b.pair_zx), unit(b.pair_zy)
  neg = lambda a, c: _sigmoid_terms(s * (a @ c.T) + bias, -1.0)  # noqa: E731
  return (neg(px, uy) + neg(ux, py) + neg(ux, uy)) / px.shape[0], _NONE


def nn_positives_term(b: UnpairedBatch) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""NNCLR-style nearest-neighbour positives for unpaired rows (after Dwibedi et al., ICCV 2021, "With a Little
  Help from My Friends", whose positives are nearest neighbours in a support set; here the support set is the
  step's paired batch and the neighbours are found in the *frozen* unimodal space, so no positive depends on the
  model being trained).

  Each unpaired image :math:`u^x_i` takes as positive the text :math:`z^y_{\nu(i)}` of its nearest paired image
  :math:`\nu(i) = \arg\max_j \cos(x^u_i, x^p_j)`, and each unpaired text the image of its nearest paired text;
  both pseudo-pair batches get a SigLIP loss whose label is +1 wherever two rows borrowed the same partner (so a
  duplicated partner is never a negative of itself). The term is the mean of the two, each normalised by its
  batch size as :func:`sotalign_jax.losses.siglip_loss`.
  """
  s, bias = b.logit_scale, b.logit_bias

  def pseudo_siglip(queries, raw_queries, raw_support, partners, image_side: bool):
    nn_idx = jnp.argmax(unit(raw_queries) @ unit(raw_support).T, axis=1)
    keys = unit(partners)[nn_idx]
    q = unit(queries)
    logits = s * (q @ keys.T if image_side else keys @ q.T) + bias
    labels = jnp.where(nn_idx[:, None] == nn_idx[None, :], 1.0, -1.0)
    return _sigmoid_terms(logits, labels) / q.shape[0]

  return 0.5 * (pseudo_siglip(b.zx, b.x, b.pair_x, b.pair_zy, True)
                + pseudo_siglip(b.zy, b.y, b.pair_y, b.pair_zx, False)), _NONE


def no_term(b: UnpairedBatch) -> tuple[jax.Array, dict[str, jax.Array]]:
  """No unpaired term (SAIL-style supervised training and the all-pairs upper bound)."""
  del b
  return jnp.zeros((), jnp.float32), _NONE


UNPAIRED_TERMS: dict[str, Term] = {
    "klot": klot_term,
    "sinkhorn_divergence": sinkhorn_divergence_term,
    "structure": structure_term,
    "pseudo_label": pseudo_label_term,
    "extra_negatives": extra_negatives_term,
    "nn_positives": nn_positives_term,
    "none": no_term,
}
