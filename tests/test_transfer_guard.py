"""The math API on device arrays runs with no implicit host<->device transfer (``jax.transfer_guard("disallow")``).

Each call is made twice: on host (NumPy) inputs without the guard — the reference, whose values are also checked —
and on ``jax.device_put`` inputs under the guard, which must give the same numbers. Hyperparameters are Python
floats (compiled in, see ``sotalign_jax._arrays.jit_with_host_scalars``).

What is exempt, by design: functions that return host numbers (``metrics.*``) bring their result back with an
explicit ``jax.device_get`` and send host ``positives`` with an explicit ``jax.device_put`` — both allowed by
"disallow", which only refuses *implicit* transfers. On the CPU backend device-to-host copies are not guarded at all
(they are zero-copy), so this file checks host-to-device transfers everywhere and device-to-host ones only when run
on an accelerator.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sotalign_jax import cka, losses, matching, metrics, objectives, ot, qap, scores, teachers
from sotalign_jax.aligners import unpaired


def _unit(a):
  return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
  r = np.random.default_rng(0)
  x = r.normal(size=(48, 12)).astype(np.float32)
  y = (np.tanh(x @ r.normal(size=(12, 8))) + 0.3 * r.normal(size=(48, 8))).astype(np.float32)
  zx = _unit(r.normal(size=(32, 6))).astype(np.float32)
  zy = _unit(zx + 0.5 * r.normal(size=zx.shape)).astype(np.float32)
  return dict(x=x, y=y, k=zx @ zy.T, kt=_unit(zx + 0.2 * r.normal(size=zx.shape)).astype(np.float32) @ zy.T,
              zx=zx, zy=zy, zc=zy[:5].copy(), xb=x[:30].copy(), yb=y[:30].copy(), xq=x[30:].copy(),
              yq=y[30:].copy(), y5=y[:, :5].copy())


def _guarded(fn, host_args):
  """``fn`` on host inputs (no guard), then on device inputs under the guard; returns both results as NumPy."""
  want = fn(*host_args)
  dev = [jax.device_put(a) for a in host_args]
  with jax.transfer_guard("disallow"):
    got = fn(*dev)
    jax.block_until_ready(got)
  return jax.tree.map(np.asarray, jax.device_get(want)), jax.tree.map(np.asarray, jax.device_get(got))


CASES = {
    "ot.sinkhorn": (lambda k: ot.sinkhorn(k, epsilon=0.05, num_iters=50).plan, ("k",)),
    "ot.sinkhorn_small_eps": (lambda k: ot.sinkhorn(k, epsilon=0.005, num_iters=100).marginal_error, ("k",)),
    "ot.klot": (lambda k, kt: ot.klot(k, kt, eps_student=0.05, eps_teacher=0.01, num_iters=50), ("k", "kt")),
    "ot.klot_diagnostics": (lambda k, kt: ot.klot(k, kt, num_iters=50, return_diagnostics=True), ("k", "kt")),
    "ot.klot_grad": (jax.jit(jax.grad(lambda k, kt: ot.klot(k, kt, num_iters=50))), ("k", "kt")),
    "ot.cosine_similarity": (ot.cosine_similarity, ("zx", "zy")),
    "cka.linear_cka": (cka.linear_cka, ("x", "y")),
    "cka.linear_cka_unbiased": (lambda x, y: cka.linear_cka(x, y, unbiased=True), ("x", "y")),
    "cka.rbf_cka_bandwidth": (lambda x, y: cka.rbf_cka(x, y, bandwidth=2.5, block_size=16), ("x", "y")),
    "cka.rbf_cka_median": (lambda x, y: cka.rbf_cka(x, y, block_size=16), ("x", "y")),
    "cka.median_bandwidth": (cka.median_bandwidth, ("x",)),
    "cka.mutual_knn": (lambda x, y: cka.mutual_knn(x, y, k=5), ("x", "y")),
    "cka.cknna": (lambda x, y: cka.cknna(x, y, k=5), ("x", "y")),
    "cka.svcca": (lambda x, y: cka.svcca(x, y, dim=4), ("x", "y")),
    "teachers.ridge": (lambda x, y: teachers.ridge(x, y, lam=0.1, whiten=True), ("x", "y")),
    "teachers.procrustes": (teachers.procrustes, ("x", "y")),
    "teachers.cca": (lambda x, y: teachers.cca(x, y, dim=4), ("x", "y")),
    "teachers.fit": (lambda x, y: teachers.fit("cca", x, y, dim=4).embed_x(x), ("x", "y")),
    "losses.siglip_loss": (lambda a, b: losses.siglip_loss(a, b, t_log=2.3, bias=-10.0), ("zx", "zy")),
    "losses.info_nce": (lambda a, b: losses.info_nce(a, b, temperature=0.07), ("zx", "zy")),
    "losses.structure_regularizer": (lambda a, b: losses.structure_regularizer(a, b, temperature=0.1, levels=2),
                                     ("zx", "zy")),
    "objectives.klot_term": (
        lambda a, b: objectives.klot_term(
            objectives.UnpairedBatch(a, b, a, b, a, b, 10.0), eps_student=0.05, eps_teacher=0.005,
            sinkhorn_iters=30), ("zx", "zy")),
    "matching.local_cka_scores": (matching.local_cka_scores, ("xb", "yb", "xq", "yq")),
    "matching.local_cka_scores_rbf": (lambda *a: matching.local_cka_scores(*a, kernel="rbf"), ("xb", "yb", "xq", "yq")),
    "matching.relative_scores": (matching.relative_scores, ("xb", "yb", "xq", "yq")),
    "matching.linreg_scores": (matching.linreg_scores, ("xb", "yb", "xq", "yq")),
    "scores.score_grid": (lambda *a: scores.score_grid(a[:2], a[2:]).scores, ("x", "y5", "y")),
    # Return host numbers through explicit device_get (see the module docstring).
    "metrics.retrieval_recall": (lambda a, b: metrics.retrieval_recall(a, b, chunk=8), ("zx", "zy")),
    "metrics.positive_ranks_index": (
        lambda a, b: metrics.positive_ranks(a, b, positives=np.arange(32)[::-1].copy()), ("zx", "zy")),
    "metrics.zero_shot_accuracy": (lambda a, c: metrics.zero_shot_accuracy(a, c, np.arange(32) % 5), ("zx", "zc")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_device_inputs_run_without_implicit_transfers(data, name):
  fn, keys = CASES[name]
  want, got = _guarded(fn, [data[k] for k in keys])
  jax.tree.map(lambda w, g: np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6), want, got)


def test_guard_does_catch_an_implicit_transfer(data):
  """The guard is on: an eager op with a NumPy array on a device array is refused."""
  k = jax.device_put(data["k"])
  with jax.transfer_guard("disallow"), pytest.raises(Exception, match="Disallowed host-to-device"):
    jax.block_until_ready(k + np.ones_like(data["k"]))


def test_traced_hyperparameters_still_work(data):
  """Scalars that are arrays (a schedule, a learned temperature) stay traced: no recompilation per value.

  (A compiled-in epsilon lets XLA fold ``k / eps`` into a multiplication, hence agreement to 1e-4, not bitwise.)
  """
  k, kt = jnp.asarray(data["k"]), jnp.asarray(data["kt"])
  step = jax.jit(lambda e: ot.klot(k, kt, eps_student=e, num_iters=50))
  np.testing.assert_allclose(step(jnp.float32(0.05)), ot.klot(k, kt, eps_student=0.05, num_iters=50), rtol=1e-4)
  np.testing.assert_allclose(losses.info_nce(data["zx"], data["zy"], temperature=jnp.float32(0.07)),
                             losses.info_nce(data["zx"], data["zy"], temperature=0.07), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# The zero-pair fit and FAQ with their device solvers (assignment="auction", lap="auction"): the compiled hot paths
# hold no host callback (the guard cannot see one on a CPU, so the lowered program is searched for it; the scipy
# solver is the positive control) and run on device inputs under the guard, with the unguarded run's numbers.
# ----------------------------------------------------------------------------------------------------------------
def _callbacks(jitted, *args) -> list[str]:
  """The host-callback custom calls (``jax.pure_callback`` / ``io_callback``) in ``jitted``'s lowered program."""
  return [line.strip()[:120] for line in jitted.lower(*args).as_text().splitlines() if "callback" in line]


@pytest.fixture(scope="module")
def planted():
  """120 unit rows per side in 6 dimensions; y = x Q + noise, shuffled (a zero-pair problem with an answer)."""
  r = np.random.default_rng(1)
  x = _unit(r.normal(size=(120, 6))).astype(np.float32)
  q, _ = np.linalg.qr(r.normal(size=(6, 6)))
  y = (x @ q + 0.01 * r.normal(size=x.shape))[r.permutation(120)].astype(np.float32)
  return x, y


def _wp_fit(assignment: str):
  """The zero-pair fit's compiled stages (initialization, read-out, refinement) as one jitted function."""
  return jax.jit(functools.partial(unpaired._wp, n_clusters=4, n_restarts=3, batch_size=60, n_iterations=3,
                                   refine_batch_size=60, kmeans_iters=5, qap_inits=4, qap_solver="2opt",
                                   qap_maxiter=10, restart_batch=None, lap=assignment))


def test_zero_pair_fit_with_the_auction_stays_on_device(planted):
  x, y = planted
  pairs = unpaired.pair_stats(jnp.zeros((0, 6)), jnp.zeros((0, 6)))
  key = jax.random.key(0)
  fit = _wp_fit("auction")
  assert _callbacks(_wp_fit("scipy"), key, x, y, pairs), "the positive control lost its host callback"
  assert not _callbacks(fit, key, x, y, pairs)
  want = jax.device_get(fit(key, x, y, pairs))
  dev = jax.device_put((key, x, y, pairs))
  with jax.transfer_guard("disallow"):
    got = jax.block_until_ready(fit(*dev))
  jax.tree.map(lambda w, g: np.testing.assert_allclose(np.asarray(g), w, rtol=1e-6, atol=1e-6), want, got)


def test_faq_restarts_with_the_auction_stay_on_device(monkeypatch):
  """``qap.faq`` (host in, host out) runs its restarts as one compiled call: that call, spied on, holds no callback
  with ``lap="auction"`` and runs on device inputs under the guard."""
  calls = {}
  real = qap._compiled

  def spy(*options):
    fn = real(*options)
    return lambda *args: (calls.setdefault(options[4], (fn, args)), fn(*args))[1]

  monkeypatch.setattr(qap, "_compiled", spy)
  r = np.random.default_rng(2)
  z = r.normal(size=(24, 4))
  perm = r.permutation(24)
  a, b = z @ z.T, (z @ z.T)[np.ix_(perm, perm)]
  seeds = np.stack([np.arange(4), np.argsort(perm)[:4]], 1)
  res = qap.faq(a, b, seeds=seeds, n_init=8, lap="auction", key=jax.random.key(0))
  ref = qap.faq(a, b, seeds=seeds, n_init=8, lap="scipy", key=jax.random.key(0))
  assert res.fun >= ref.fun - 1e-6 * abs(ref.fun)
  control, args = calls["scipy"]
  assert _callbacks(control, *args), "the positive control lost its host callback"
  core, args = calls["auction"]
  assert not _callbacks(core, *args)
  want = jax.device_get(core(*args))
  dev = jax.device_put(args)
  with jax.transfer_guard("disallow"):
    got = jax.block_until_ready(core(*dev))
  jax.tree.map(lambda w, g: np.testing.assert_allclose(np.asarray(g), w, rtol=1e-6), want, got)


def test_auction_alone_stays_on_device(data):
  benefit = jax.device_put(data["k"])
  want = jax.device_get(qap.auction(data["k"]))
  with jax.transfer_guard("disallow"):
    got = jax.block_until_ready(qap.auction(benefit))
  jax.tree.map(lambda w, g: np.testing.assert_array_equal(np.asarray(g), w), want, got)


@pytest.mark.parametrize("backend, cores, solver", [("gpu", 8, "auction"), ("tpu", 8, "auction"), ("cpu", 2, "scipy"),
                                                    ("cpu", 1, "auction"), ("gpu", 1, "auction")])
def test_auto_assignment_picks_the_device_solver_off_cpu(monkeypatch, backend, cores, solver):
  # one CPU core: scipy's host callback can deadlock in a compiled loop (test_unpaired_aligners, one core)
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  monkeypatch.setattr(qap, "_host_cores", lambda: cores)
  assert qap.resolve_lap("auto") == solver
  assert qap.resolve_lap("scipy") == "scipy"  # an explicit choice stays as it is
