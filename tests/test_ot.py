"""Tests of sotalign_jax.ot against POT, ott-jax and plain float64 numpy written here."""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from jax.experimental import checkify
from ott.geometry import geometry
from ott.solvers import linear
from scipy.special import logsumexp
from sklearn.metrics.pairwise import cosine_similarity as sk_cosine

from sotalign_jax import ot


# ---------------------------------------------------------------------------------------------- numpy oracles


def np_sinkhorn(k, eps, iters, a=None, b=None, tol=None):
  """Plain float64 log-domain Sinkhorn on similarities, g then f updates; returns (log_plan, f, g).

  Runs ``iters`` iterations, or stops earlier once the column marginals are within ``tol`` (L1) when given.
  """
  k = np.asarray(k, np.float64)
  n, m = k.shape
  la = np.log(np.full(n, 1 / n) if a is None else np.asarray(a, np.float64))
  lb = np.log(np.full(m, 1 / m) if b is None else np.asarray(b, np.float64))
  ks = k / eps
  f, g = np.zeros(n), np.zeros(m)
  for _ in range(iters):
    g = lb - logsumexp(ks + f[:, None], axis=0)
    f = la - logsumexp(ks + g[None, :], axis=1)
    if tol is not None and np.abs(np.exp(logsumexp(ks + f[:, None] + g[None, :], axis=0)) - np.exp(lb)).sum() < tol:
      break
  return ks + f[:, None] + g[None, :], f * eps, g * eps


def np_klot(k_s, k_t, eps_s, eps_t, iters=5000):
  lp_s, _, _ = np_sinkhorn(k_s, eps_s, iters, tol=1e-14)
  lp_t, _, _ = np_sinkhorn(k_t, eps_t, iters, tol=1e-14)
  return float(np.sum(np.exp(lp_t) * (lp_t - lp_s)))


def cos_pair(rng, n, m, d=8, noise=0.0):
  x = rng.normal(size=(n, d))
  y = rng.normal(size=(m, d))
  k = sk_cosine(x, y)
  k_t = sk_cosine(x + noise * rng.normal(size=x.shape), y)
  return k.astype(np.float32), k_t.astype(np.float32)


# ---------------------------------------------------------------------------------------------- sinkhorn


@pytest.mark.parametrize("eps", [0.1, 0.02])
def test_sinkhorn_plan_matches_pot(rng, eps):
  k, _ = cos_pair(rng, 20, 30)
  out = ot.sinkhorn(k, epsilon=eps, num_iters=1000)
  ref = pot.sinkhorn(np.full(20, 1 / 20), np.full(30, 1 / 30), -k.astype(np.float64), eps, method="sinkhorn_log",
                     numItermax=20000, stopThr=1e-13)
  np.testing.assert_allclose(np.asarray(out.plan), ref, atol=2e-6, rtol=2e-3)
  assert bool(out.converged) and float(out.marginal_error) < 1e-4


def test_sinkhorn_weighted_matches_pot(rng):
  k, _ = cos_pair(rng, 12, 9)
  a = rng.uniform(0.5, 1.5, 12)
  a /= a.sum()
  b = rng.uniform(0.5, 1.5, 9)
  b /= b.sum()
  out = ot.sinkhorn(k, epsilon=0.05, a=a, b=b, num_iters=2000)
  ref = pot.sinkhorn(a, b, -k.astype(np.float64), 0.05, method="sinkhorn_log", numItermax=20000, stopThr=1e-13)
  np.testing.assert_allclose(np.asarray(out.plan), ref, atol=2e-6, rtol=2e-3)
  np.testing.assert_allclose(np.asarray(out.plan).sum(1), a, atol=1e-6)


@pytest.mark.parametrize("iters", [2, 10])
def test_sinkhorn_fixed_iterations_match_ott(rng, iters):
  k, _ = cos_pair(rng, 15, 25)
  out = ot.sinkhorn(k, epsilon=0.01, num_iters=iters)
  ref = linear.solve(geometry.Geometry(cost_matrix=-jnp.asarray(k), epsilon=0.01), min_iterations=iters,
                     max_iterations=iters, inner_iterations=1)
  assert int(ref.n_iters) == iters
  np.testing.assert_allclose(out.f, ref.f, atol=1e-5)
  np.testing.assert_allclose(out.g, ref.g, atol=1e-5)


def test_sinkhorn_small_epsilon_and_outliers_match_float64(rng):
  """eps = 0.001 on cosines (k / eps up to 1e3): the scalings drift, so the solver must re-absorb; and an outlier
  column 150 eps below the rest."""
  k, _ = cos_pair(rng, 20, 30)
  out = ot.sinkhorn(k, epsilon=0.001, num_iters=50)
  lp, f, g = np_sinkhorn(k, 0.001, 50)
  assert int(out.num_absorptions) > 1
  np.testing.assert_allclose(out.f, f, atol=1e-5)
  np.testing.assert_allclose(out.g, g, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.plan), np.exp(lp), atol=1e-5)
  k = (0.3 * rng.normal(size=(20, 30))).astype(np.float32)
  k[:, 0] -= 1.5
  out = ot.sinkhorn(k, epsilon=0.01, num_iters=50)
  lp, f, g = np_sinkhorn(k, 0.01, 50)
  np.testing.assert_allclose(out.f, f, atol=1e-4)
  np.testing.assert_allclose(np.asarray(out.plan), np.exp(lp), atol=1e-6)


def test_sinkhorn_teacher_epsilon_more_accurate_than_needed(rng):
  """SOTAlign's teacher setting (eps = 0.005 on cosines): plan within 1e-3 relative of a float64 reference."""
  k, _ = cos_pair(rng, 64, 64, d=16)
  out = ot.sinkhorn(k, epsilon=0.005, num_iters=100)
  lp, _, _ = np_sinkhorn(k, 0.005, 100)
  np.testing.assert_allclose(np.asarray(out.log_plan)[lp > -30], lp[lp > -30], atol=1e-3)


def test_sinkhorn_jit_and_vmap_agree(rng):
  k, _ = cos_pair(rng, 10, 12)
  eager = ot.sinkhorn(k, epsilon=0.05, num_iters=20)
  jitted = jax.jit(lambda x: ot.sinkhorn(x, epsilon=0.05, num_iters=20))(k)
  batched = jax.vmap(lambda x: ot.sinkhorn(x, epsilon=0.05, num_iters=20))(jnp.stack([k, 2 * k]))
  np.testing.assert_allclose(jitted.log_plan, eager.log_plan, atol=1e-5)
  np.testing.assert_allclose(batched.log_plan[0], eager.log_plan, atol=1e-5)
  np.testing.assert_allclose(batched.f[1], ot.sinkhorn(2 * k, epsilon=0.05, num_iters=20).f, atol=1e-5)


def test_sinkhorn_target_can_be_stop_gradiented(rng):
  k, _ = cos_pair(rng, 6, 7)
  grad = jax.grad(lambda x: jnp.sum(jax.lax.stop_gradient(ot.sinkhorn(x, epsilon=0.1).plan) * x))(jnp.asarray(k))
  np.testing.assert_allclose(grad, np.exp(np_sinkhorn(k, 0.1, 100)[0]), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=np.ones(3)), "k"),
    (dict(k=np.full((2, 2), np.nan)), "NaN"),
    (dict(k=np.ones((0, 3))), "non-empty"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(epsilon=-1.0), "epsilon"),
    (dict(num_iters=0), "num_iters"),
    (dict(num_iters=2.5), "num_iters"),
    (dict(a=np.ones(4) / 4), "a"),
    (dict(a=np.array([1.0, 0.0, 0.0])), "positive"),
    (dict(a=np.ones(3)), "mass"),
])
def test_sinkhorn_rejects_bad_input(kwargs, match):
  args = dict(k=np.ones((3, 2)), epsilon=0.1) | kwargs
  k = args.pop("k")
  with pytest.raises(ValueError, match=match):
    ot.sinkhorn(k, **args)


# ---------------------------------------------------------------------------------------------- klot


def test_klot_value_matches_numpy(rng):
  k, k_t = cos_pair(rng, 10, 14, noise=0.5)
  value = ot.klot(k, k_t, eps_student=0.1, eps_teacher=0.05, num_iters=3000)
  assert float(value) == pytest.approx(np_klot(k, k_t, 0.1, 0.05), rel=2e-3, abs=1e-5)
  assert float(ot.klot(k, k, eps_student=0.1, eps_teacher=0.1, num_iters=500)) == pytest.approx(0.0, abs=1e-5)


def test_klot_gradient_matches_finite_differences(rng):
  """Theorem 5.1 against central differences of a float64 numpy KLOT (converged plans)."""
  k, k_t = cos_pair(rng, 6, 7, noise=0.5)
  eps_s, eps_t = 0.2, 0.1
  grad = np.asarray(jax.grad(lambda x: ot.klot(x, k_t, eps_student=eps_s, eps_teacher=eps_t, num_iters=3000))(k))
  for _ in range(3):
    v = rng.normal(size=k.shape)
    h = 1e-4
    fd = (np_klot(k + h * v, k_t, eps_s, eps_t) - np_klot(k - h * v, k_t, eps_s, eps_t)) / (2 * h)
    assert float(np.sum(grad * v)) == pytest.approx(fd, rel=5e-3, abs=1e-4)


def test_klot_gradient_matches_autodiff_through_converged_sinkhorn(rng):
  """Unrolled autodiff through a long, converged log-domain Sinkhorn (written here) gives the same gradient."""
  k, k_t = cos_pair(rng, 8, 9, noise=0.5)
  eps_s, eps_t, iters = 0.2, 0.1, 1000

  def log_plan(x, eps):
    n, m = x.shape
    xs = x / eps

    def body(_, fg):
      f, g = fg
      g = -jnp.log(m) - jax.nn.logsumexp(xs + f[:, None], axis=0)
      f = -jnp.log(n) - jax.nn.logsumexp(xs + g[None, :], axis=1)
      return f, g

    f, g = jax.lax.fori_loop(0, iters, body, (jnp.zeros(n), jnp.zeros(m)))
    return xs + f[:, None] + g[None, :]

  def unrolled(x):
    lp_t = jax.lax.stop_gradient(log_plan(jnp.asarray(k_t), eps_t))
    return jnp.sum(jnp.exp(lp_t) * (lp_t - log_plan(x, eps_s)))

  g_auto = jax.grad(unrolled)(jnp.asarray(k))
  g_custom = jax.grad(lambda x: ot.klot(x, k_t, eps_student=eps_s, eps_teacher=eps_t, num_iters=iters))(k)
  np.testing.assert_allclose(g_custom, g_auto, atol=2e-4 * float(jnp.abs(g_auto).max()))


def test_klot_gradient_is_plan_difference_and_teacher_gets_none(rng):
  k, k_t = cos_pair(rng, 5, 6, noise=0.5)
  g_s, g_t = jax.grad(lambda x, y: ot.klot(x, y, num_iters=200), argnums=(0, 1))(k, k_t)
  p = ot.sinkhorn(k, epsilon=0.05, num_iters=200).plan
  p_t = ot.sinkhorn(k_t, epsilon=0.005, num_iters=200).plan
  np.testing.assert_allclose(g_s, (p - p_t) / 0.05, atol=1e-5)
  assert not np.any(np.asarray(g_t))


def test_klot_backward_memory_does_not_grow_with_iterations(rng):
  k, k_t = cos_pair(rng, 32, 32, noise=0.5)

  def temp_bytes(iters):
    fn = jax.jit(jax.grad(lambda x: ot.klot(x, k_t, num_iters=iters)))
    return fn.lower(k).compile().memory_analysis().temp_size_in_bytes

  assert temp_bytes(200) == temp_bytes(10)


def test_klot_rejects_bad_input():
  with pytest.raises(ValueError, match="same shape"):
    ot.klot(np.ones((3, 4)), np.ones((4, 3)))
  with pytest.raises(ValueError, match="eps_teacher"):
    ot.klot(np.ones((3, 4)), np.ones((3, 4)), eps_teacher=0.0)
  with pytest.raises(ValueError, match="NaN"):
    ot.klot(np.full((3, 4), np.nan), np.ones((3, 4)))


def test_klot_nan_raises_for_numpy_and_concrete_jax_arrays_and_only_under_checkify_when_jitted(rng):
  """One rule (sotalign_jax._arrays): NaN/Inf in a value known at the call raises, NumPy or jax array alike; a
  jitted KLOT (and its gradient) returns NaN, and reports it only when wrapped with checkify."""
  ks, kt = cos_pair(rng, 6, 5)
  bad = np.asarray(ks, np.float32).copy()
  bad[2, 1] = np.nan
  for arg in (bad, jax.device_put(bad)):
    with pytest.raises(ValueError, match=r"k_student contains NaN or Inf in 1 row \(first: row 2\)"):
      ot.klot(arg, kt)
    with pytest.raises(ValueError, match="k_teacher contains NaN"):
      ot.klot(kt, arg)
  with pytest.raises(ValueError, match="`a` must be"):  # concrete weights too
    ot.klot(ks, kt, a=jnp.asarray([0.5, 0.5, 0.0, 0.0, 0.0, 0.0]))
  with pytest.raises(ValueError, match="eps_student"):
    ot.klot(ks, kt, eps_student=jnp.float32(-1.0))

  jitted = jax.jit(lambda k, t: ot.klot(k, t, num_iters=20))
  assert np.isnan(float(jitted(bad, kt)))
  assert np.isnan(np.asarray(jax.jit(jax.grad(lambda k: ot.klot(k, kt, num_iters=20)))(bad))).any()
  err, _ = checkify.checkify(jitted)(bad, kt)
  with pytest.raises(checkify.JaxRuntimeError, match="k_student contains NaN or Inf"):
    err.throw()
  err, value = checkify.checkify(jitted)(ks, kt)
  assert err.get() is None
  np.testing.assert_allclose(value, ot.klot(ks, kt, num_iters=20), rtol=1e-5)


@pytest.mark.parametrize("name, call", [
    ("sinkhorn", lambda k, t: ot.sinkhorn(k, epsilon=0.05, num_iters=30).log_plan),
    ("klot", lambda k, t: ot.klot(k, t, num_iters=30)),
    ("klot_diagnostics", lambda k, t: ot.klot(k, t, num_iters=30, return_diagnostics=True)),
    ("sinkhorn_divergence", lambda k, t: ot.sinkhorn_divergence(k, t, epsilon=0.5)),
    ("cosine_similarity", lambda k, t: ot.cosine_similarity(k, t)),
])
def test_every_public_function_under_jit_equals_the_eager_call(rng, name, call):
  """The README's claim that ``ot`` runs inside ``jax.jit`` (options static; the sharded solvers have their tests)."""
  k, t = (jnp.asarray(a, jnp.float32) for a in cos_pair(rng, 8, 8))
  jax.tree.map(lambda e, j: np.testing.assert_allclose(j, e, rtol=1e-4, atol=1e-6, err_msg=name),
               call(k, t), jax.jit(call)(k, t))


# ---------------------------------------------------------------------------------------------- divergence, cosine


def np_reg_ot(x, y, eps, iters=5000):
  """Primal entropic OT cost <P, C> + eps KL(P | a b^T) with C = squared Euclidean, float64."""
  c = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
  lp, _, _ = np_sinkhorn(-c, eps, iters, tol=1e-13)
  p = np.exp(lp)
  n, m = c.shape
  return float(np.sum(p * c) + eps * np.sum(p * (lp + np.log(n) + np.log(m))))


def test_sinkhorn_divergence_matches_numpy_and_is_differentiable(rng):
  x = rng.normal(size=(12, 3))
  y = rng.normal(size=(12, 3)) + 0.5
  eps = 0.5
  value_and_grad = jax.jit(jax.value_and_grad(
      lambda x, y: ot.sinkhorn_divergence(x, y, epsilon=eps, threshold=1e-6, max_iterations=5000)))
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  val, grad = value_and_grad(xj, yj)
  ref = np_reg_ot(x, y, eps) - 0.5 * (np_reg_ot(x, x, eps) + np_reg_ot(y, y, eps))
  assert float(val) == pytest.approx(ref, rel=1e-3, abs=1e-4)
  assert float(value_and_grad(xj, xj)[0]) == pytest.approx(0.0, abs=1e-4)
  v = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  h = 1e-2
  fd = (value_and_grad(xj + h * v, yj)[0] - value_and_grad(xj - h * v, yj)[0]) / (2 * h)
  assert float(jnp.sum(grad * v)) == pytest.approx(float(fd), rel=2e-2, abs=1e-3)


def test_sinkhorn_divergence_rejects_bad_input():
  with pytest.raises(ValueError, match="same d"):
    ot.sinkhorn_divergence(np.ones((3, 2)), np.ones((3, 4)), epsilon=0.1)
  with pytest.raises(ValueError, match="cost"):
    ot.sinkhorn_divergence(np.ones((3, 2)), np.ones((3, 2)), epsilon=0.1, cost="l1")


def test_cosine_similarity_matches_sklearn(rng):
  u, v = rng.normal(size=(5, 4)), rng.normal(size=(7, 4))
  np.testing.assert_allclose(ot.cosine_similarity(u, v), sk_cosine(u, v), atol=1e-6)
  with pytest.raises(ValueError, match="same d"):
    ot.cosine_similarity(u, v[:, :3])


def test_sinkhorn_sharded_over_eight_devices_equals_the_dense_solve():
  import json
  from conftest import run_with_fake_devices
  out = run_with_fake_devices("""
    import json, numpy as np, jax
    from jax.sharding import Mesh
    from sotalign_jax import ot
    r = np.random.default_rng(0)
    x = r.normal(size=(64, 8)).astype(np.float32); y = r.normal(size=(48, 8)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    f, g = ot.sinkhorn_sharded(x, y, epsilon=0.05, mesh=mesh, num_iters=30)
    assert len(f.sharding.device_set) == 8
    # built once per (mesh, axis, iterations, precision): a second call, another epsilon, reuses the executable
    f2, _ = ot.sinkhorn_sharded(x, y, epsilon=0.1, mesh=mesh, num_iters=30)
    info = ot._sharded_solver.cache_info()
    assert (info.misses, info.hits) == (1, 1), info
    assert ot._sharded_solver(mesh, "data", 30, ot.DEFAULT_PRECISION)._cache_size() == 1
    assert not np.allclose(np.asarray(f), np.asarray(f2))
    try:
      ot.sinkhorn_sharded(x[:63], y, epsilon=0.05, mesh=mesh, num_iters=2)
      raise AssertionError("63 rows over 8 devices were accepted")
    except ValueError as e:
      assert "split evenly" in str(e)
    print(json.dumps({"f": np.asarray(f).tolist(), "g": np.asarray(g).tolist()}))
  """)
  got = json.loads(out.strip().splitlines()[-1])
  r = np.random.default_rng(0)
  x = r.normal(size=(64, 8)).astype(np.float32)
  y = r.normal(size=(48, 8)).astype(np.float32)
  ref = ot.sinkhorn(ot.cosine_similarity(x, y), epsilon=0.05, num_iters=30)
  np.testing.assert_allclose(got["f"], ref.f, atol=1e-5)
  np.testing.assert_allclose(got["g"], ref.g, atol=1e-5)
  k = np.asarray(ot.cosine_similarity(x, y), np.float64)
  plan = np.exp((k + np.array(got["f"])[:, None] + np.array(got["g"])[None, :]) / 0.05)
  np.testing.assert_allclose(plan.sum(1), 1 / 64, rtol=1e-4)  # rows exact after the last f update


def test_sinkhorn_sharded_on_one_device_reuses_its_compiled_function(rng):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.normal(size=(12, 4)).astype(np.float32)
  ot._sharded_solver.cache_clear()
  for eps in (0.05, 0.2, 0.05):
    f, g = ot.sinkhorn_sharded(x, y, epsilon=eps, mesh=mesh, num_iters=20)
    ref = ot.sinkhorn(ot.cosine_similarity(x, y), epsilon=eps, num_iters=20)
    np.testing.assert_allclose(f, ref.f, atol=1e-5)
    np.testing.assert_allclose(g, ref.g, atol=1e-5)
  assert ot._sharded_solver.cache_info().misses == 1
  assert ot._sharded_solver(mesh, "data", 20, ot.DEFAULT_PRECISION)._cache_size() == 1  # one executable
  with pytest.raises(ValueError, match="axis_name"):
    ot.sinkhorn_sharded(x, y, epsilon=0.1, mesh=mesh, axis_name="model")


# ---------------------------------------------------------------------------------------------- klot diagnostics


def test_klot_diagnostics_are_the_plans_marginal_errors_and_grad_accepts_them_as_aux(rng):
  k, k_t = cos_pair(rng, 12, 15, noise=0.5)
  value, diag = ot.klot(k, k_t, eps_student=0.1, eps_teacher=0.01, num_iters=20, return_diagnostics=True)
  assert isinstance(diag, ot.KlotDiagnostics)
  student = ot.sinkhorn(k, epsilon=0.1, num_iters=20)
  teacher = ot.sinkhorn(k_t, epsilon=0.01, num_iters=20)
  np.testing.assert_allclose(diag.student_marginal_error, student.marginal_error, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(diag.teacher_marginal_error, teacher.marginal_error, rtol=1e-5, atol=1e-9)
  # the marginal error written out with numpy from the plans
  for out, d in ((student, diag.student_marginal_error), (teacher, diag.teacher_marginal_error)):
    p = np.exp(np.asarray(out.log_plan, np.float64))
    ref = np.abs(p.sum(1) - 1 / 12).sum() + np.abs(p.sum(0) - 1 / 15).sum()
    np.testing.assert_allclose(d, ref, rtol=1e-3, atol=1e-7)
  assert bool(diag.converged) == bool(student.converged & teacher.converged)
  assert float(value) == pytest.approx(float(ot.klot(k, k_t, eps_student=0.1, eps_teacher=0.01, num_iters=20)),
                                       rel=1e-6)
  fn = lambda x: ot.klot(x, k_t, eps_student=0.1, eps_teacher=0.01, num_iters=20, return_diagnostics=True)
  (v, d), g = jax.value_and_grad(fn, has_aux=True)(k)
  g_plain = jax.grad(lambda x: ot.klot(x, k_t, eps_student=0.1, eps_teacher=0.01, num_iters=20))(k)
  np.testing.assert_allclose(g, g_plain, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(d.teacher_marginal_error, diag.teacher_marginal_error, rtol=1e-6)
  # a few iterations at a sharp teacher epsilon are flagged as not converged
  _, few = ot.klot(k, k_t, eps_teacher=0.002, num_iters=2, return_diagnostics=True)
  assert not bool(few.converged) and float(few.teacher_marginal_error) > 1e-3


@pytest.mark.parametrize("d", [64, 256])
@pytest.mark.parametrize("eps_teacher", [0.005, 0.01])
def test_klot_plans_are_converged_at_the_training_settings(d, eps_teacher):
  """SOTAlign's settings: 512 x 512 cosines of random unit vectors, eps 0.05 / eps* 0.005 or 0.01, 100 iterations.

  Theorem 5.1's gradient (P - P*) / eps assumes converged plans. The student plan (eps 0.05) converges to float32
  rounding (measured 5e-7, L1 marginal error of a total mass 1). The sharp teacher plan is the slow one; measured
  on this data at 100 iterations: 1.9e-3 / 4.5e-4 (d = 64, eps* 0.005 / 0.01) and 7.1e-4 / 4.2e-5 (d = 256), with
  the gradient's relative L2 error 7.2e-3 / 2.0e-3 / 2.5e-3 / 5.8e-4 against plans run to convergence (3000
  iterations, marginal errors ~3e-5; the test uses 1000, < 2e-4). Against float64 numpy plans after 5000
  iterations, another draw gave 3.0e-3 -> 1.2e-2 (d = 64, eps* 0.005), 8.4e-4 -> 4.3e-3 (d = 64, 0.01) and
  5.5e-4 -> 2.5e-3 (d = 256, 0.005). So an L1 marginal error e moves the gradient
  by about 4 e, relative to its numerator ||P - P*||_1 ~ 1.6. Bounds asserted: teacher marginal error < 5e-3
  (2.6x the worst case here, 1.7x the worst seen on any draw; the gradient is then within ~2%), student < 1e-5,
  gradient within 2% of the converged one. Runs outside these bounds are visible in ``KlotDiagnostics``.
  """
  r = np.random.default_rng(d)
  x = r.normal(size=(512, d))
  y = r.normal(size=(512, d))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  k_t = (x @ y.T).astype(np.float32)
  k_s = np.asarray(ot.cosine_similarity(x + 0.5 * r.normal(size=x.shape) / np.sqrt(d), y))
  fn = lambda k: ot.klot(k, k_t, eps_student=0.05, eps_teacher=eps_teacher, num_iters=100, return_diagnostics=True)
  (value, diag), grad = jax.value_and_grad(fn, has_aux=True)(k_s)
  # the diagnostics, recomputed in float64 from the 100-iteration plans
  for k, eps, got in ((k_s, 0.05, diag.student_marginal_error), (k_t, eps_teacher, diag.teacher_marginal_error)):
    p = np.exp(np.asarray(ot.sinkhorn(k, epsilon=eps, num_iters=100).log_plan, np.float64))
    np.testing.assert_allclose(got, np.abs(p.sum(1) - 1 / 512).sum() + np.abs(p.sum(0) - 1 / 512).sum(),
                               rtol=1e-2, atol=1e-7)
  assert float(diag.student_marginal_error) < 1e-5
  assert float(diag.teacher_marginal_error) < 5e-3
  p_s = np.asarray(ot.sinkhorn(k_s, epsilon=0.05, num_iters=1000).plan, np.float64)
  p_t = np.asarray(ot.sinkhorn(k_t, epsilon=eps_teacher, num_iters=1000).plan, np.float64)
  g_ref = (p_s - p_t) / 0.05
  assert np.linalg.norm(np.asarray(grad) - g_ref) / np.linalg.norm(g_ref) < 2e-2


# ---------------------------------------------------------------------------------------------- precision


def test_precision_default_is_accepted_and_close_on_cpu(rng):
  u, v = rng.normal(size=(20, 8)), rng.normal(size=(30, 8))
  hi = ot.cosine_similarity(u, v)
  lo = ot.cosine_similarity(u, v, precision=jax.lax.Precision.DEFAULT)
  np.testing.assert_allclose(lo, hi, atol=1e-5)
  np.testing.assert_allclose(lo, sk_cosine(u, v), atol=1e-5)


@pytest.mark.slow  # an 8-device subprocess; the one-device test below checks the same code path in the fast set
def test_klot_sharded_over_eight_devices_equals_the_dense_klot_and_its_gradient():
  import json
  from conftest import run_with_fake_devices
  out = run_with_fake_devices("""
    import json, numpy as np, jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sotalign_jax import ot
    r = np.random.default_rng(0)
    x = r.normal(size=(64, 16)).astype(np.float32); y = r.normal(size=(40, 16)).astype(np.float32)
    ks = np.asarray(ot.cosine_similarity(x, y))
    kt = np.asarray(ot.cosine_similarity(x + 0.3 * r.normal(size=x.shape).astype(np.float32), y))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, P("data", None))
    ksd, ktd = jax.device_put(ks, rows), jax.device_put(kt, rows)
    loss = lambda k: ot.klot_sharded(k, ktd, mesh=mesh, eps_student=0.05, eps_teacher=0.01, num_iters=300)
    v, g = jax.jit(jax.value_and_grad(loss))(ksd)
    assert len(g.sharding.device_set) == 8 and g.sharding.spec == P("data", None), g.sharding
    # working memory: XLA's temporaries of the forward and backward pass stay below 4 [n/p, m] float32 blocks
    temp = jax.jit(jax.value_and_grad(loss)).lower(ksd).compile().memory_analysis().temp_size_in_bytes
    assert temp <= 4 * (64 // 8) * 40 * 4 * 8 + 2**16, temp  # 8 devices' blocks in one process, plus scalars
    try:
      ot.klot_sharded(ks[:63], kt[:63], mesh=mesh)
      raise AssertionError("63 rows over 8 devices were accepted")
    except ValueError as e:
      assert "split evenly" in str(e)
    print(json.dumps({"v": float(v), "g": np.asarray(g).tolist()}))
  """)
  got = json.loads(out.strip().splitlines()[-1])
  r = np.random.default_rng(0)
  x = r.normal(size=(64, 16)).astype(np.float32)
  y = r.normal(size=(40, 16)).astype(np.float32)
  ks = np.asarray(ot.cosine_similarity(x, y))
  kt = np.asarray(ot.cosine_similarity(x + 0.3 * r.normal(size=x.shape).astype(np.float32), y))
  v, g = jax.value_and_grad(lambda k: ot.klot(k, kt, eps_student=0.05, eps_teacher=0.01, num_iters=300))(ks)
  np.testing.assert_allclose(got["v"], float(v), rtol=1e-5)
  np.testing.assert_allclose(got["g"], np.asarray(g), atol=1e-5)


def test_klot_sharded_on_two_fake_devices_combines_their_rows_like_numpy():
  """Two devices, four rows each: the column update and the value must combine both devices' rows (``pmax`` /
  ``psum``); each device alone would see a 4 x 5 problem, whose plans and KL differ from the 8 x 5 one's."""
  import json
  from conftest import run_with_fake_devices
  r = np.random.default_rng(3)
  ks = r.uniform(-1, 1, size=(8, 5)).astype(np.float32)
  kt = r.uniform(-1, 1, size=(8, 5)).astype(np.float32)
  out = run_with_fake_devices(f"""
    import json, numpy as np, jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sotalign_jax import ot
    ks, kt = np.array({ks.tolist()}, np.float32), np.array({kt.tolist()}, np.float32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, P("data", None))
    loss = lambda k: ot.klot_sharded(k, jax.device_put(kt, rows), mesh=mesh, eps_student=0.3, eps_teacher=0.1,
                                     num_iters=300)
    v, g = jax.value_and_grad(loss)(jax.device_put(ks, rows))
    assert len(g.sharding.device_set) == 2
    print(json.dumps({{"v": float(v), "g": np.asarray(g).tolist()}}))
  """, n_devices=2)
  got = json.loads(out.strip().splitlines()[-1])
  ps, pt = (np.exp(np_sinkhorn(k, eps, 2000)[0]) for k, eps in ((ks, 0.3), (kt, 0.1)))
  np.testing.assert_allclose(got["v"], np.sum(pt * np.log(pt / ps)), rtol=1e-4)
  np.testing.assert_allclose(got["g"], (ps - pt) / 0.3, atol=1e-5)


def test_klot_sharded_on_one_device_matches_plain_numpy_sinkhorn(rng):
  """One device: the value against the KL of two plans computed with a plain float64 log-domain Sinkhorn."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  ks = rng.uniform(-1, 1, size=(12, 9)).astype(np.float32)
  kt = rng.uniform(-1, 1, size=(12, 9)).astype(np.float32)

  def plan(k, eps, iters=2000):
    k = k.astype(np.float64) / eps
    f, g = np.zeros(12), np.zeros(9)
    for _ in range(iters):
      g = np.log(1 / 9) - np.log(np.exp(k + f[:, None]).sum(0))
      f = np.log(1 / 12) - np.log(np.exp(k + g[None, :]).sum(1))
    return np.exp(k + f[:, None] + g[None, :])

  ps, pt = plan(ks, 0.2), plan(kt, 0.1)
  value = ot.klot_sharded(ks, kt, mesh=mesh, eps_student=0.2, eps_teacher=0.1, num_iters=500)
  np.testing.assert_allclose(float(value), np.sum(pt * np.log(pt / ps)), rtol=1e-4)
  grad = jax.grad(lambda k: ot.klot_sharded(k, kt, mesh=mesh, eps_student=0.2, eps_teacher=0.1, num_iters=500))(ks)
  np.testing.assert_allclose(grad, (ps - pt) / 0.2, atol=1e-5)
  with pytest.raises(ValueError, match="same shape"):
    ot.klot_sharded(ks, kt[:, :4], mesh=mesh)
  with pytest.raises(ValueError, match="axis_name"):
    ot.klot_sharded(ks, kt, mesh=mesh, axis_name="model")


def test_sinkhorn_knopp_balances_like_scipys_doubly_stochastic(rng):
  """The multiplicative-domain balancing of FAQ's starts: the same alternating scaling and stopping rule as scipy's
  ``_doubly_stochastic`` (written out here), so the same matrix up to float32 rounding; rows and columns sum to 1."""
  k = rng.uniform(size=(30, 30))
  c = 1.0 / k.sum(0)
  r = 1.0 / (k @ c)
  p = r[:, None] * k * c
  while max(np.abs(p.sum(0) - 1).max(), np.abs(p.sum(1) - 1).max()) >= 1e-3:
    c = 1.0 / (r @ k)
    r = 1.0 / (k @ c)
    p = r[:, None] * k * c
  got = np.asarray(jax.jit(ot.sinkhorn_knopp)(k.astype(np.float32)))
  np.testing.assert_allclose(got, p, rtol=1e-4)
  assert np.abs(got.sum(1) - 1).max() < 1e-3 and np.abs(got.sum(0) - 1).max() < 1e-3
  tight = np.asarray(ot.sinkhorn_knopp(k.astype(np.float32), tol=1e-6))
  assert np.abs(tight.sum(0) - 1).max() < 1e-5
