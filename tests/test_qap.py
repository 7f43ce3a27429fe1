"""Tests of sotalign_jax.qap against scipy.optimize (quadratic_assignment, linear_sum_assignment) and brute force."""

import itertools

import jax
import numpy as np
import pytest
import scipy.optimize

from sotalign_jax import qap
from conftest import run_with_fake_devices, scipy_starts as _scipy_starts


def _objective(a, b, col):
  return float(np.sum(a * b[col][:, col]))


@pytest.mark.parametrize("symmetric,maximize", [(True, True), (False, False)])
def test_faq_equals_scipy_from_the_same_starts(rng, symmetric, maximize):
  n, s, n_init = 30, 8, 3
  a, b = rng.standard_normal((2, n, n))
  if symmetric:
    a, b = a + a.T, b + b.T
  seeds = np.stack([rng.permutation(n)[:s], rng.permutation(n)[:s]], 1)
  key = jax.random.key(1)
  res = qap.faq(a, b, seeds=seeds, n_init=n_init, maximize=maximize, key=key)
  ref = [scipy.optimize.quadratic_assignment(a, b, method="faq", options=dict(
      P0=p0, partial_match=seeds, maximize=maximize, tol=1e-5)) for p0 in _scipy_starts(key, n_init, n - s)]
  np.testing.assert_allclose(res.fun_per_init, [r.fun for r in ref], rtol=1e-4)
  best = (max if maximize else min)(ref, key=lambda r: r.fun)
  np.testing.assert_array_equal(res.col_ind, best.col_ind)
  np.testing.assert_allclose(res.fun, best.fun, rtol=1e-10)
  assert res.fun == pytest.approx(_objective(a, b, res.col_ind))
  assert (res.col_ind[seeds[:, 0]] == seeds[:, 1]).all()
  assert sorted(res.col_ind.tolist()) == list(range(n))


@pytest.mark.parametrize("n,n_seeds", [(6, 0), (7, 2)])
def test_faq_finds_brute_force_optimum(rng, n, n_seeds):
  for _ in range(3):
    x = rng.standard_normal((n, 2))
    a = x @ x.T
    pi = rng.permutation(n)
    b = a[np.ix_(pi, pi)] + 0.3 * rng.standard_normal((n, n))
    b = b + b.T
    seeds = np.stack([np.arange(n_seeds), np.arange(n_seeds)], 1)
    free = list(range(n_seeds, n))
    best = -np.inf
    for p in itertools.permutations(free):
      col = np.concatenate([np.arange(n_seeds), p]).astype(int)
      best = max(best, _objective(a, b, col))
    res = qap.faq(a, b, seeds=seeds, n_init=16, key=jax.random.key(0))
    np.testing.assert_allclose(res.fun, best, rtol=1e-9)


def test_faq_recovers_planted_matching(rng):
  """Noisy isomorphic copy: B = A[π][:, π] + noise; 10 seeds, 50 unknown nodes."""
  n = 60
  z = rng.standard_normal((n, 5))
  d = ((z[:, None] - z[None]) ** 2).sum(-1)
  a = np.exp(-d / np.median(d))
  pi = rng.permutation(n)
  b = a[np.ix_(pi, pi)] + 0.01 * rng.standard_normal((n, n))
  b = 0.5 * (b + b.T)
  truth = np.argsort(pi)  # node i of a is node truth[i] of b
  seeds = np.stack([np.arange(10), truth[:10]], 1)
  res = qap.faq(a, b, seeds=seeds, n_init=8, key=jax.random.key(0))
  assert np.mean(res.col_ind == truth) >= 0.95
  ref = scipy.optimize.quadratic_assignment(a, b, method="faq", options=dict(partial_match=seeds, maximize=True))
  assert res.fun >= ref.fun * (1 - 1e-6)


@pytest.mark.parametrize("lap", ["scipy", "auction", pytest.param("hungarian", marks=pytest.mark.slow)])
def test_linear_assignment_matches_scipy(rng, lap):
  for cost in (rng.standard_normal((3, 40, 40)), rng.integers(0, 5, (3, 40, 40)).astype(float)):
    for maximize in (False, True):
      cols = np.asarray(qap.linear_assignment(cost, maximize=maximize, lap=lap))
      for c, col in zip(cost, cols):
        r, ref = scipy.optimize.linear_sum_assignment(c, maximize=maximize)
        assert sorted(col.tolist()) == list(range(40))
        np.testing.assert_allclose(c[np.arange(40), col].sum(), c[r, ref].sum(), rtol=1e-5)


@pytest.mark.parametrize("lap", ["scipy", "auction", "auto"])
def test_linear_assignment_of_a_wide_matrix_assigns_every_row(rng, lap):
  """``[q, m]`` with ``q < m`` (the unpaired aligners' last read-out block): every row gets a distinct column with
  scipy's optimal total; ``"auto"`` is scipy on a CPU backend with >= 2 cores and the auction otherwise."""
  on_cpu = jax.default_backend() == "cpu" and qap._host_cores() > 1  # pylint: disable=protected-access
  assert qap.resolve_lap("auto") == ("scipy" if on_cpu else "auction")
  c = rng.standard_normal((20, 33)).astype(np.float32)
  cols = np.asarray(jax.jit(lambda m: qap.linear_assignment(m, maximize=True, lap=lap))(c))
  assert cols.shape == (20,) and len(set(cols.tolist())) == 20
  r, ref = scipy.optimize.linear_sum_assignment(c, maximize=True)
  np.testing.assert_allclose(c[np.arange(20), cols].sum(), c[r, ref].sum(), rtol=1e-5)


def test_auction_is_within_its_bound_and_exact_on_integers(rng):
  """The ε-CS bound: total within q · tol · Δ of scipy's optimum; exact on integer benefits once q ε < 1."""
  for q in (2, 7, 120):
    a = rng.standard_normal((q, q)).astype(np.float32)
    cols, rounds = qap.auction(a, tol=1e-6, bidders=16)
    cols = np.asarray(cols)
    assert sorted(cols.tolist()) == list(range(q)) and np.asarray(rounds).min() >= 1
    r, c = scipy.optimize.linear_sum_assignment(a.astype(np.float64), maximize=True)
    gap = a[r, c].astype(np.float64).sum() - a[np.arange(q), cols].astype(np.float64).sum()
    assert -1e-4 <= gap <= q * 1e-6 * float(a.max() - a.min()) + 1e-4
    ints = rng.integers(0, 50, (q, q)).astype(np.float32)  # many ties
    cols = np.asarray(qap.auction(ints, tol=0.5 / (q * 50), bidders=16)[0])
    r, c = scipy.optimize.linear_sum_assignment(ints, maximize=True)
    assert ints[np.arange(q), cols].sum() == ints[r, c].sum()
  a = rng.standard_normal((60, 60)).astype(np.float32)
  cols = np.asarray(qap.auction(a, bidders=4, max_rounds=3)[0])  # capped: still a permutation
  assert sorted(cols.tolist()) == list(range(60))
  with pytest.raises(ValueError, match="square"):
    qap.auction(np.zeros((3, 4)))


@pytest.mark.slow
def test_faq_hungarian_lap_equals_scipy_lap(rng):
  a, b = rng.standard_normal((2, 20, 20))
  a, b = a + a.T, b + b.T
  seeds = np.array([[0, 3], [1, 1]])
  r1 = qap.faq(a, b, seeds=seeds, n_init=2, key=jax.random.key(2), lap="scipy")
  r2 = qap.faq(a, b, seeds=seeds, n_init=2, key=jax.random.key(2), lap="hungarian")
  np.testing.assert_allclose(r1.fun_per_init, r2.fun_per_init, rtol=1e-5)


def test_batching_does_not_change_results(rng):
  a, b = rng.standard_normal((2, 25, 25))
  r1 = qap.faq(a, b, n_init=4, key=jax.random.key(4))
  r2 = qap.faq(a, b, n_init=4, key=jax.random.key(4), batch_size=2)
  np.testing.assert_allclose(r1.fun_per_init, r2.fun_per_init, rtol=1e-5)
  np.testing.assert_array_equal(r1.n_iters, r2.n_iters)
  assert (r1.n_iters >= 1).all() and (r1.n_iters <= 30).all()


def test_sharded_restarts_equal_single_device():
  out = run_with_fake_devices("""
      import jax, numpy as np
      from sotalign_jax import qap
      assert jax.device_count() == 8
      rng = np.random.default_rng(0)
      a, b = rng.standard_normal((2, 30, 30)); a = a + a.T; b = b + b.T
      seeds = np.array([[0, 0], [1, 2], [2, 1]])
      mesh = jax.make_mesh((8,), ("restarts",))
      r1 = qap.faq(a, b, seeds=seeds, n_init=16, key=jax.random.key(0))
      r8 = qap.faq(a, b, seeds=seeds, n_init=16, key=jax.random.key(0), mesh=mesh)
      np.testing.assert_allclose(r1.fun_per_init, r8.fun_per_init, rtol=1e-5)
      np.testing.assert_array_equal(r1.col_ind, r8.col_ind)
      # fewer restarts than devices: one padded batch, the same 3 restarts as on one device
      r1 = qap.faq(a, b, seeds=seeds, n_init=3, key=jax.random.key(1))
      r8 = qap.faq(a, b, seeds=seeds, n_init=3, key=jax.random.key(1), mesh=mesh)
      assert r8.fun_per_init.shape == (3,)
      np.testing.assert_allclose(r1.fun_per_init, r8.fun_per_init, rtol=1e-5)
      # and inside jit: the restarts sharded over the mesh, the padding dropped from a replicated copy
      j8 = jax.jit(lambda a, b: qap.faq(a, b, seeds=seeds, n_init=3, key=jax.random.key(1), mesh=mesh))(a, b)
      np.testing.assert_allclose(np.asarray(j8.fun_per_init), r8.fun_per_init, rtol=1e-5)
      np.testing.assert_array_equal(np.asarray(j8.col_ind), r8.col_ind)
      print("OK")
  """)
  assert "OK" in out


def test_bad_inputs(rng):
  a = rng.standard_normal((5, 5))
  with pytest.raises(ValueError, match="a must be a square"):
    qap.faq(a[:4], a)
  with pytest.raises(ValueError, match="same shape"):
    qap.faq(a, a[:4, :4])
  with pytest.raises(ValueError, match="seeds"):
    qap.faq(a, a, seeds=np.array([[0, 5]]))
  with pytest.raises(ValueError, match="seeds"):
    qap.faq(a, a, seeds=np.array([[0, 1], [0, 2]]))
  with pytest.raises(ValueError, match="seeds"):
    qap.faq(a, a, seeds=np.array([0, 1, 2]))
  bad = a.copy()
  bad[1, 2] = np.nan
  with pytest.raises(ValueError, match="b must be a finite"):
    qap.faq(a, bad)
  with pytest.raises(ValueError, match="n_init"):
    qap.faq(a, a, n_init=0)
  with pytest.raises(ValueError, match="lap"):
    qap.faq(a, a, lap="lapjv")
  with pytest.raises(ValueError, match="cost"):
    qap.linear_assignment(np.zeros((4, 3)))  # tall: transpose it
  with pytest.raises(ValueError, match="lap"):
    qap.linear_assignment(np.zeros((3, 3)), lap="lapjv")


def test_all_seeded_is_trivial(rng):
  a, b = rng.standard_normal((2, 4, 4))
  seeds = np.array([[0, 1], [1, 0], [2, 3], [3, 2]])
  res = qap.faq(a, b, seeds=seeds)
  np.testing.assert_array_equal(res.col_ind, [1, 0, 3, 2])
  assert res.fun == pytest.approx(_objective(a, b, res.col_ind))


@pytest.mark.parametrize("lap, symmetric", [("scipy", True), ("scipy", False), ("auction", False)])
def test_jitted_faq_equals_the_eager_call(rng, lap, symmetric):
  """``jax.jit(faq)`` traces (the scipy assignment through its callback): the same permutation and objectives as
  the eager call, as jax.Arrays (int32, float32) instead of scipy's int64 / float64."""
  n, s = 16, 3
  a, b = rng.standard_normal((2, n, n)).astype(np.float32)
  if symmetric:
    a, b = a + a.T, b + b.T
  seeds = np.stack([rng.permutation(n)[:s], rng.permutation(n)[:s]], 1)
  run = lambda a, b, key: qap.faq(a, b, seeds=seeds, n_init=3, key=key, lap=lap)  # noqa: E731
  want = run(a, b, jax.random.key(5))
  got = jax.jit(run)(a, b, jax.random.key(5))
  assert isinstance(got.col_ind, jax.Array) and got.col_ind.dtype == np.int32
  assert isinstance(want.col_ind, np.ndarray) and want.col_ind.dtype == np.int64 and isinstance(want.fun, float)
  np.testing.assert_array_equal(got.col_ind, want.col_ind)
  np.testing.assert_allclose(got.fun, want.fun, rtol=1e-5)
  np.testing.assert_allclose(got.fun_per_init, want.fun_per_init, rtol=1e-4)
  np.testing.assert_array_equal(got.n_iters, want.n_iters)
  # only the key traced: jax.Array results too
  assert isinstance(jax.jit(lambda k: run(a, b, k))(jax.random.key(5)).col_ind, jax.Array)


def test_jitted_faq_all_seeded_and_its_checks(rng):
  a, b = rng.standard_normal((2, 4, 4)).astype(np.float32)
  seeds = np.array([[0, 1], [1, 0], [2, 3], [3, 2]])
  res = jax.jit(lambda a, b: qap.faq(a, b, seeds=seeds, n_init=2))(a, b)
  np.testing.assert_array_equal(res.col_ind, [1, 0, 3, 2])
  assert float(res.fun) == pytest.approx(_objective(a, b, [1, 0, 3, 2]), rel=1e-6)
  with pytest.raises(TypeError, match="seeds"):
    jax.jit(lambda a, s: qap.faq(a, a, seeds=s))(a, seeds)
  bad = a.copy()
  bad[1, 2] = np.nan
  with pytest.raises(ValueError, match="b must be a finite"):
    qap.faq(a, jax.device_put(bad))  # concrete jax arrays are checked like NumPy ones
  jax.jit(lambda a, b: qap.faq(a, b, lap="auction"))(a, bad)  # traced values are not (documented: no checkify)
