"""Tests of sotalign_jax.objectives: the unpaired terms, looked up by name in UNPAIRED_TERMS, against plain NumPy
written here from their definitions (S-CLIP soft pseudo-labels, STRUCTURE, SOTAlign's KLOT with ε and ε*)."""

import jax
import numpy as np
import pytest
from scipy.special import log_softmax, logsumexp

from sotalign_jax import objectives, ot

TERMS = objectives.UNPAIRED_TERMS


def _cos(u, v):
  u = np.asarray(u, np.float64)
  v = np.asarray(v, np.float64)
  u = u / np.linalg.norm(u, axis=1, keepdims=True)
  v = v / np.linalg.norm(v, axis=1, keepdims=True)
  return u @ v.T


def _plan(k, eps, iters=300):
  """Entropic OT plan of a similarity matrix, uniform marginals: float64 log-domain Sinkhorn (g then f)."""
  n, m = k.shape
  ks = np.asarray(k, np.float64) / eps
  f, g = np.zeros(n), np.zeros(m)
  for _ in range(iters):
    g = -np.log(m) - logsumexp(ks + f[:, None], axis=0)
    f = -np.log(n) - logsumexp(ks + g[None, :], axis=1)
  return np.exp(ks + f[:, None] + g[None, :])


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  n, m, k = 7, 6, 4  # n != m: a row/column mix-up changes the shapes or the numbers
  f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
  return objectives.UnpairedBatch(x=f(n, 9), y=f(m, 8), zx=f(n, k), zy=f(m, k), tx=f(n, 3), ty=f(m, 3),
                                  logit_scale=np.float32(5.0), logit_bias=np.float32(-1.0))


def test_pseudo_label_term_is_cross_entropy_to_the_teachers_normalised_plan(batch):
  """S-CLIP-style soft pseudo-captions: P = the teacher's entropic plan on cos(tx, ty); image i's target over the
  texts is row i of P normalised, text j's target over the images is column j normalised; the term is the mean of
  the two cross-entropies to the student's softmax of s · cos(zx, zy)."""
  eps = 0.1
  p = _plan(_cos(batch.tx, batch.ty), eps)
  rows, cols = p / p.sum(1, keepdims=True), p / p.sum(0, keepdims=True)
  logits = float(batch.logit_scale) * _cos(batch.zx, batch.zy)
  ce_i2t = np.mean([-np.sum(rows[i] * log_softmax(logits[i])) for i in range(p.shape[0])])
  ce_t2i = np.mean([-np.sum(cols[:, j] * log_softmax(logits[:, j])) for j in range(p.shape[1])])
  want = 0.5 * (ce_i2t + ce_t2i)
  # one jitted value-and-grad (a single compilation): the plan is a constant target, so gradients reach the
  # student's embeddings only
  term = lambda tx, zx: TERMS["pseudo_label"](batch._replace(tx=tx, zx=zx), eps=eps)  # noqa: E731
  (got, diag), (g_t, g_z) = jax.jit(jax.value_and_grad(term, argnums=(0, 1), has_aux=True))(batch.tx, batch.zx)
  assert float(diag["pseudo_label/teacher_marginal_error"]) < 1e-3  # the teacher plan (eps 0.1) has converged
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  assert abs(want - np.log(p.shape[1])) > 0.05  # not the uniform target's value: the plan matters here
  assert not np.any(np.asarray(g_t)) and np.abs(np.asarray(g_z)).max() > 1e-3


def _np_structure(raw, z, tau):
  """Row-wise Jensen–Shannon divergence between the softmax(cos / τ) neighbourhoods of raw and z, mean over rows."""
  def neighbours(e):
    s = _cos(e, e) / tau
    return np.exp(s - logsumexp(s, axis=1, keepdims=True))

  px, pz = neighbours(raw), neighbours(z)
  mid = 0.5 * (px + pz)
  js = 0.5 * np.sum(px * np.log(px / mid), 1) + 0.5 * np.sum(pz * np.log(pz / mid), 1)
  return float(js.mean())


def test_structure_term_is_the_sum_of_both_modalities_regularisers(batch):
  """STRUCTURE (Gröger et al.): images keep the neighbourhoods of their raw features x, texts those of y."""
  tau = 0.5
  want = _np_structure(batch.x, batch.zx, tau) + _np_structure(batch.y, batch.zy, tau)
  got, diag = TERMS["structure"](batch, temperature=tau)
  got = float(got)
  assert diag == {}
  np.testing.assert_allclose(got, want, rtol=1e-4)
  image_only = _np_structure(batch.x, batch.zx, tau)
  assert min(image_only, want - image_only) > 1e-2  # each side contributes
  same = batch._replace(x=batch.x[:, :4], zx=batch.x[:, :4], y=batch.y[:, :4], zy=batch.y[:, :4])
  assert float(TERMS["structure"](same, temperature=tau)[0]) == pytest.approx(0.0, abs=1e-6)  # same geometry: zero


def test_klot_term_gives_eps_student_to_the_student_plan_and_eps_teacher_to_the_teachers(batch):
  """KLOT(K, K*) = KL(P_ε*(K*) ‖ P_ε(K)), K = cos(zx, zy) the student's and K* = cos(tx, ty) the teacher's: with ε
  and ε* ten times apart, giving either plan the other's ε (or swapping K and K*) changes the value."""
  eps_s, eps_t, iters = 0.5, 0.05, 300
  ks, kt = _cos(batch.zx, batch.zy), _cos(batch.tx, batch.ty)
  p, p_star = _plan(ks, eps_s), _plan(kt, eps_t)
  want = float(np.sum(p_star * np.log(p_star / p)))
  wrong = [float(np.sum(q_t * np.log(q_t / q_s))) for q_s, q_t in (
      (_plan(ks, eps_t), _plan(kt, eps_s)),   # ε and ε* swapped
      (_plan(kt, eps_s), _plan(ks, eps_t)))]  # student and teacher swapped
  assert min(abs(w - want) for w in wrong) > 0.1 * want

  opts = dict(eps_student=eps_s, eps_teacher=eps_t, sinkhorn_iters=iters)
  explicit = float(ot.klot(ks.astype(np.float32), kt.astype(np.float32), eps_student=eps_s, eps_teacher=eps_t,
                           num_iters=iters))
  np.testing.assert_allclose(explicit, want, rtol=1e-4)
  klot = lambda zx: TERMS["klot"](batch._replace(zx=zx), **opts)  # noqa: E731
  (got, diag), g = jax.jit(jax.value_and_grad(klot, has_aux=True))(batch.zx)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  assert set(diag) == {"klot/student_marginal_error", "klot/teacher_marginal_error", "klot/converged"}
  assert float(diag["klot/converged"]) == 1.0 and float(diag["klot/teacher_marginal_error"]) < 1e-3
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))  # the shard_klot route: ot.klot_sharded
  value, sharded_diag = TERMS["klot"](batch, **opts, shard_klot=True, mesh=mesh)
  np.testing.assert_allclose(float(value), want, rtol=1e-4)
  for k in ("klot/student_marginal_error", "klot/teacher_marginal_error"):  # the same plans, to float rounding
    np.testing.assert_allclose(float(sharded_diag[k]), float(diag[k]), atol=1e-5)
  assert float(sharded_diag["klot/converged"]) == 1.0
  # the gradient of the student's embeddings follows the same wiring: (P_ε(K) - P*) / ε through K = cos(zx, zy)
  zx = np.asarray(batch.zx, np.float64)
  norms = np.linalg.norm(zx, axis=1, keepdims=True)
  zy = np.asarray(batch.zy, np.float64) / np.linalg.norm(batch.zy, axis=1, keepdims=True)
  dk = (p - p_star) / eps_s                                            # dKLOT / dK
  du = dk @ zy                                                         # through K = unit(zx) @ unit(zy)^T
  u = zx / norms
  want_g = (du - np.sum(du * u, 1, keepdims=True) * u) / norms         # through unit(zx) = zx / |zx|
  np.testing.assert_allclose(np.asarray(g), want_g, atol=1e-4 * np.abs(want_g).max())
