r"""The unpaired terms that distinguish SOTAlign from its baselines, picked by name from :data:`UNPAIRED_TERMS`.

Each term takes the student's embeddings of an *unpaired* batch — images ``zx = f(X_u)`` and texts
``zy = g(Y_u)`` (independent draws, no pairing) — plus the raw features and the teacher's embeddings of the
same batch, and returns a scalar to add to the paired SigLIP loss:

* ``klot`` — SOTAlign (Roschmann et al., 2026): :math:`\mathrm{KL}(P_{\varepsilon^*}(K^*)\,\|\,P_\varepsilon(K))`
  between the entropic OT plans of the teacher's and the student's cosine matrices (:func:`sotalign_jax.ot.klot`).
* ``sinkhorn_divergence`` — the classic debiased Sinkhorn divergence between the two embedded clouds (ablation).
* ``structure`` — STRUCTURE-style regulariser (Gröger et al.): each modality keeps its own neighbourhood
  structure in the aligned space (:func:`sotalign_jax.losses.structure_regularizer`).
* ``pseudo_label`` — S-CLIP-style soft pseudo-captions: the teacher's OT plan between the unpaired images and
  texts, row- and column-normalised, is the target of the student's softmax over the batch.
* ``none`` — no unpaired term (SAIL-style supervised training, and the all-pairs upper bound).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from sotalign_jax import losses, ot

__all__ = ["UnpairedBatch", "UNPAIRED_TERMS", "cosine"]


class UnpairedBatch(NamedTuple):
  x: jax.Array    # [n, dx] raw image features
  y: jax.Array    # [m, dy] raw text features
  zx: jax.Array   # [n, k] student image embeddings (unnormalised)
  zy: jax.Array   # [m, k] student text embeddings
  tx: jax.Array   # [n, k'] teacher image embeddings (constants)
  ty: jax.Array   # [m, k'] teacher text embeddings
  logit_scale: jax.Array  # exp(t'), the student's SigLIP temperature


def _unit(a):
  return a / jnp.linalg.norm(a, axis=-1, keepdims=True).clip(1e-12)


cosine = ot.cosine_similarity


def klot_term(b: UnpairedBatch, cfg) -> jax.Array:
  k_teacher = jax.lax.stop_gradient(cosine(b.tx, b.ty))
  return ot.klot(cosine(b.zx, b.zy), k_teacher, eps_student=cfg.eps_student, eps_teacher=cfg.eps_teacher,
                 num_iters=cfg.sinkhorn_iters)


def sinkhorn_divergence_term(b: UnpairedBatch, cfg) -> jax.Array:
  return ot.sinkhorn_divergence(_unit(b.zx), _unit(b.zy), epsilon=cfg.eps_student)


def structure_term(b: UnpairedBatch, cfg) -> jax.Array:
  return (losses.structure_regularizer(b.x, b.zx, temperature=cfg.temperature)
          + losses.structure_regularizer(b.y, b.zy, temperature=cfg.temperature))


def pseudo_label_term(b: UnpairedBatch, cfg) -> jax.Array:
  plan = jax.lax.stop_gradient(ot.sinkhorn(cosine(b.tx, b.ty), epsilon=cfg.eps, num_iters=100).plan)
  logits = b.logit_scale * cosine(b.zx, b.zy)
  rows = plan / plan.sum(1, keepdims=True)
  cols = plan / plan.sum(0, keepdims=True)
  ce_i2t = -jnp.sum(rows * jax.nn.log_softmax(logits, axis=1), axis=1).mean()
  ce_t2i = -jnp.sum(cols * jax.nn.log_softmax(logits, axis=0), axis=0).mean()
  return 0.5 * (ce_i2t + ce_t2i)


def no_term(b: UnpairedBatch, cfg) -> jax.Array:
  del b, cfg
  return jnp.zeros((), jnp.float32)


UNPAIRED_TERMS: dict[str, Callable[[UnpairedBatch, object], jax.Array]] = {
    "klot": klot_term,
    "sinkhorn_divergence": sinkhorn_divergence_term,
    "structure": structure_term,
    "pseudo_label": pseudo_label_term,
    "none": no_term,
}
