"""CKA family against numpy double-loop HSIC and the Platonic-Representation definitions written plainly here."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify
from scipy.stats import ortho_group
from sklearn.cross_decomposition import CCA

from sotalign_jax import cka
from conftest import run_with_fake_devices


# ---- plain references ----------------------------------------------------------------------------------------
def hsic_loop(K, L):
  """Biased HSIC tr(KHLH) with explicit loops over the centred kernels."""
  n = K.shape[0]
  Kc = K - K.mean(0, keepdims=True) - K.mean(1, keepdims=True) + K.mean()
  Lc = L - L.mean(0, keepdims=True) - L.mean(1, keepdims=True) + L.mean()
  total = 0.0
  for i in range(n):
    for j in range(n):
      total += Kc[i, j] * Lc[i, j]
  return total


def hsic_unbiased_ref(K, L):
  m = K.shape[0]
  Kt, Lt = K.copy(), L.copy()
  np.fill_diagonal(Kt, 0)
  np.fill_diagonal(Lt, 0)
  return (np.sum(Kt * Lt.T) + Kt.sum() * Lt.sum() / ((m - 1) * (m - 2)) - 2 * np.sum(Kt @ Lt) / (m - 2)) / (m * (m - 3))


def cka_ref(K, L, hsic):
  return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def rbf_ref(x, sigma=None):
  d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  if sigma is None:
    sigma = np.sqrt(np.median(d[d != 0]))
  return np.exp(-d / (2 * sigma**2))


def knn_ref(x, k):
  g = x @ x.T
  np.fill_diagonal(g, -1e8)
  return np.argsort(-g, axis=1, kind="stable")[:, :k]


def mutual_knn_ref(x, y, k):
  a, b = knn_ref(x, k), knn_ref(y, k)
  return np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(x))])


def cknna_ref(x, y, k):
  n = len(x)
  K, L = x @ x.T, y @ y.T

  def sim(K, L):
    Kh, Lh = K.copy(), L.copy()
    np.fill_diagonal(Kh, -np.inf)
    np.fill_diagonal(Lh, -np.inf)
    mk = np.zeros((n, n))
    ml = np.zeros((n, n))
    for i in range(n):
      mk[i, np.argsort(-Kh[i])[:k]] = 1
      ml[i, np.argsort(-Lh[i])[:k]] = 1
    m = mk * ml
    return hsic_unbiased_ref(m * K, m * L)

  return sim(K, L) / np.sqrt(sim(K, K) * sim(L, L))


@pytest.fixture
def pair(rng):
  x = rng.normal(size=(40, 12)) + 2.0
  y = np.tanh(x @ rng.normal(size=(12, 7))) + 0.3 * rng.normal(size=(40, 7)) - 1.0
  return x, y


# ---- CKA values ---------------------------------------------------------------------------------------------------
def test_linear_cka_matches_double_loop_hsic(pair):
  x, y = pair
  K, L = x @ x.T, y @ y.T
  np.testing.assert_allclose(cka.linear_cka(x, y), cka_ref(K, L, hsic_loop), rtol=1e-5)


def test_linear_unbiased_cka_matches_song_estimator(pair):
  x, y = pair
  K, L = x @ x.T, y @ y.T  # uncentred features: the estimator is shift-invariant, our centring must not matter
  np.testing.assert_allclose(cka.linear_cka(x, y, unbiased=True), cka_ref(K, L, hsic_unbiased_ref), rtol=1e-4)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("block", [7, 40, 1024])
def test_rbf_cka_matches_reference_with_median_heuristic(pair, unbiased, block):
  x, y = pair
  K, L = rbf_ref(x), rbf_ref(y)
  ref = cka_ref(K, L, hsic_unbiased_ref if unbiased else hsic_loop)
  np.testing.assert_allclose(cka.rbf_cka(x, y, unbiased=unbiased, block_size=block), ref, rtol=1e-4)


def test_rbf_cka_explicit_bandwidths(pair):
  x, y = pair
  ref = cka_ref(rbf_ref(x, 3.0), rbf_ref(y, 0.5), hsic_loop)
  np.testing.assert_allclose(cka.rbf_cka(x, y, bandwidth=(3.0, 0.5)), ref, rtol=1e-5)


def test_median_bandwidth_exact_and_strided(rng):
  x = rng.normal(size=(30, 4))
  d = ((x[:, None] - x[None]) ** 2).sum(-1)
  np.testing.assert_allclose(cka.median_bandwidth(x), np.sqrt(np.median(d[np.triu_indices(30, 1)])), rtol=1e-5)
  big = rng.normal(size=(cka.MEDIAN_MAX_ROWS + 10, 3)).astype(np.float32)
  sub = big[::2]
  ds = ((sub[:, None] - sub[None]) ** 2).sum(-1)
  np.testing.assert_allclose(cka.median_bandwidth(big), np.sqrt(np.median(ds[np.triu_indices(len(sub), 1)])),
                             rtol=1e-4)


def _np_median_positive(d):
  """The median over the pairs i < j of the positive entries, written plainly (a sort)."""
  v = np.sort(d[np.triu_indices(len(d), 1)])
  v = v[v > 0]
  return 0.5 * (v[(len(v) - 1) // 2] + v[len(v) // 2]) if len(v) else np.nan


@pytest.mark.parametrize("case", ["gaussian", "ties", "duplicates", "two_points", "one_outlier", "wide"])
def test_median_selection_equals_a_sort_eager_and_jitted(rng, case):
  """The on-device selection (bisection on float bits) returns the exact order statistics, on one path."""
  x = {"gaussian": lambda: rng.normal(size=(300, 5)),
       "ties": lambda: rng.integers(0, 3, size=(200, 2)).astype(float),   # few distinct distances: many ties
       "duplicates": lambda: np.repeat(rng.normal(size=(7, 3)), 5, 0),    # an even count of pairs, zeros dropped
       "two_points": lambda: np.array([[0.0, 0.0], [3.0, 4.0]]),
       "one_outlier": lambda: np.concatenate([np.zeros((50, 2)), [[1e3, 0.0]]]),
       "wide": lambda: rng.normal(size=(64, 2000)) * np.exp(rng.normal(size=(64, 1)))}[case]().astype(np.float32)
  d = np.asarray(jax.jit(lambda a: cka.sq_dists(a, a))(x), np.float64)
  want = np.sqrt(np.float32(_np_median_positive(d)))
  got = cka.median_bandwidth(x)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_array_equal(jax.jit(cka.median_bandwidth)(x), got)
  np.testing.assert_array_equal(jax.vmap(cka.median_bandwidth)(x[None])[0], got)


def test_median_selection_is_exact_when_the_sample_bracket_fails():
  """A bracket read off the random sample that misses the middle ranks falls back to the whole float range."""
  d = np.zeros((64, 64), np.float32)
  iu = np.triu_indices(64, 1)
  vals = np.arange(1, len(iu[0]) + 1, dtype=np.float32)
  d[iu] = vals
  d = d + d.T
  for margin in (0.0, 8.0):  # margin 0: a bracket of ~2 sample ranks, which usually misses
    got = jax.jit(lambda a: cka._median_positive(a, sample=64, margin=margin))(d)
    assert float(got) == _np_median_positive(d)
  assert np.isnan(float(jax.jit(cka._median_positive)(np.zeros((4, 4), np.float32))))


@pytest.mark.parametrize("fn", [cka.linear_cka, cka.rbf_cka])
def test_cka_invariances(pair, fn):
  x, y = pair
  base = fn(x, y)
  q = ortho_group.rvs(x.shape[1], random_state=1)
  np.testing.assert_allclose(fn(x @ q, y), base, rtol=1e-4)   # orthogonal transform
  np.testing.assert_allclose(fn(3.7 * x, y), base, rtol=1e-4)  # isotropic scaling
  np.testing.assert_allclose(fn(x, x), 1.0, rtol=1e-5)
  assert not np.isclose(fn(x * np.arange(1, 13), y), base, rtol=1e-3)  # but not to anisotropic scaling


def test_linear_cka_does_not_build_n_by_n(rng):
  x = jnp.asarray(rng.normal(size=(20000, 8)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(20000, 6)), jnp.float32)
  compiled = jax.jit(lambda a, b: cka._linear_cka(a, b, False)).lower(x, y).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 20000 * 20000 * 4 / 100, temp  # far below one 20k×20k float32 Gram (1.6 GB)
  ref = cka_ref(*(np.asarray(a, np.float64) @ np.asarray(a, np.float64).T for a in (x[:300], y[:300])), hsic_loop)
  np.testing.assert_allclose(cka.linear_cka(x[:300], y[:300]), ref, rtol=1e-4)


# ---- k-NN metrics and SVCCA ------------------------------------------------------------------------------------------
def test_mutual_knn_matches_reference(pair):
  x, y = pair
  for k in (1, 5, 10):
    np.testing.assert_allclose(cka.mutual_knn(x, y, k=k), mutual_knn_ref(x, y, k), rtol=1e-6)
  np.testing.assert_allclose(cka.mutual_knn(x, x, k=5), 1.0)


def test_cknna_matches_reference(pair):
  x, y = pair
  np.testing.assert_allclose(cka.cknna(x, y, k=10), cknna_ref(x, y, 10), rtol=1e-4)
  np.testing.assert_allclose(cka.cknna(x, x, k=10), 1.0, rtol=1e-5)


def test_svcca_matches_sklearn_cca_on_singular_subspaces(rng):
  x = rng.normal(size=(200, 20))
  y = x[:, :15] @ rng.normal(size=(15, 15)) + 0.5 * rng.normal(size=(200, 15))
  dim = 5

  def top(a):
    a = (a - a.mean(0)) / (a.std(0) + 1e-8)
    return np.linalg.svd(a, full_matrices=False)[0][:, :dim]

  u1, u2 = top(x), top(y)
  a, b = CCA(n_components=dim, max_iter=5000, tol=1e-12).fit(u1, u2).transform(u1, u2)
  ref = np.mean([np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(dim)])
  np.testing.assert_allclose(cka.svcca(x, y, dim=dim), ref, atol=2e-3)


# ---- transformations ----------------------------------------------------------------------------------------------
def test_jit_and_vmap_equal_eager(rng):
  xs = rng.normal(size=(3, 30, 6)).astype(np.float32)
  ys = rng.normal(size=(3, 30, 5)).astype(np.float32)
  eager = [float(cka.linear_cka(a, b)) for a, b in zip(xs, ys)]
  np.testing.assert_allclose(jax.vmap(lambda a, b: cka.linear_cka(a, b))(xs, ys), eager, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(lambda a, b: cka.rbf_cka(a, b, bandwidth=2.0))(xs[0], ys[0]),
                             cka.rbf_cka(xs[0], ys[0], bandwidth=2.0), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(lambda a, b: cka.rbf_cka(a, b))(xs[0], ys[0]), cka.rbf_cka(xs[0], ys[0]),
                             rtol=1e-5)


def test_sharded_inputs_on_eight_devices_match_single_device():
  out = run_with_fake_devices("""
    import json, numpy as np, jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sotalign_jax import cka
    assert len(jax.devices()) == 8
    r = np.random.default_rng(0)
    x = r.normal(size=(256, 16)).astype(np.float32); y = r.normal(size=(256, 12)).astype(np.float32) + x[:, :12]
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sh = NamedSharding(mesh, P("data", None))
    xs, ys = jax.device_put(x, sh), jax.device_put(y, sh)
    print(json.dumps([float(cka.linear_cka(xs, ys)), float(cka.rbf_cka(xs, ys, block_size=64)),
                      float(cka.linear_cka(xs, ys, unbiased=True))]))
  """)
  sharded = json.loads(out.strip().splitlines()[-1])
  r = np.random.default_rng(0)
  x = r.normal(size=(256, 16)).astype(np.float32)
  y = r.normal(size=(256, 12)).astype(np.float32) + x[:, :12]
  single = [float(cka.linear_cka(x, y)), float(cka.rbf_cka(x, y, block_size=64)),
            float(cka.linear_cka(x, y, unbiased=True))]
  np.testing.assert_allclose(sharded, single, rtol=1e-5)


# ---- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda x, y: cka.linear_cka(x, y[:-1]), "same samples"),
    (lambda x, y: cka.linear_cka(x[:1], y[:1]), "at least 2"),
    (lambda x, y: cka.linear_cka(x[:3], y[:3], unbiased=True), "at least 4"),
    (lambda x, y: cka.rbf_cka(np.where(np.arange(len(x))[:, None] == 3, np.nan, x), y), r"x contains NaN .*row 3"),
    (lambda x, y: cka.mutual_knn(x, y, k=len(x)), "k must be"),
    (lambda x, y: cka.cknna(x, y, k=1), "k must be >= 2"),
    (lambda x, y: cka.svcca(x, y, dim=50), "dim must"),
    (lambda x, y: cka.linear_cka(x[0], y), "2-D"),
    (lambda x, y: cka.rbf_cka(np.ones_like(x), y), "bandwidth"),
])
def test_bad_input_raises_value_error_naming_the_argument(pair, call, match):
  x, y = pair
  with pytest.raises(ValueError, match=match):
    call(x, y)


def test_nan_raises_for_numpy_and_concrete_jax_arrays_and_only_under_checkify_when_jitted(pair):
  """One rule (sotalign_jax._arrays): values known at the call are checked, NumPy or jax array alike, with the same
  message; a jitted call returns NaN, and raises only when wrapped with checkify."""
  x, y = pair
  bad = np.where(np.arange(len(x))[:, None] == 3, np.nan, x).astype(np.float32)
  for arg in (bad, jax.device_put(bad)):
    with pytest.raises(ValueError, match=r"x contains NaN or Inf in 1 row \(first: row 3\)"):
      cka.linear_cka(arg, y)
  with pytest.raises(ValueError, match="y contains NaN or Inf"):
    cka.rbf_cka(x, jax.device_put(np.where(np.arange(len(y))[:, None] == 0, np.inf, y)))
  with pytest.raises(ValueError, match="bandwidth"):  # the median of identical device samples is NaN
    cka.rbf_cka(jax.device_put(np.ones_like(x)), y)
  with pytest.raises(ValueError, match="2-D"):  # shapes are checked for device arrays too
    cka.linear_cka(jax.device_put(x[0]), y)

  jitted = jax.jit(cka.linear_cka)
  assert np.isnan(float(jitted(bad, y)))  # traced: not checked, the NaN propagates
  err, _ = checkify.checkify(jitted)(bad, y)
  with pytest.raises(checkify.JaxRuntimeError, match="x contains NaN or Inf"):
    err.throw()
  err, value = checkify.checkify(jitted)(x, y)
  assert err.get() is None
  np.testing.assert_allclose(value, cka.linear_cka(x, y), rtol=1e-6)


@pytest.mark.parametrize("name, call", [
    ("linear_cka", lambda x, y: cka.linear_cka(x, y)),
    ("linear_cka_unbiased", lambda x, y: cka.linear_cka(x, y, unbiased=True)),
    ("rbf_cka", lambda x, y: cka.rbf_cka(x, y, block_size=16)),
    ("median_bandwidth", lambda x, y: cka.median_bandwidth(x)),
    ("mutual_knn", lambda x, y: cka.mutual_knn(x, y, k=5)),
    ("cknna", lambda x, y: cka.cknna(x, y, k=5)),
    ("svcca", lambda x, y: cka.svcca(x, y, dim=4)),
    ("hsic_biased", lambda x, y: cka.hsic_biased(x @ x.T, y @ y.T)),
    ("hsic_unbiased", lambda x, y: cka.hsic_unbiased(x @ x.T, y @ y.T)),
    ("tsi", lambda x, y: cka.triplet_similarity_index(x, y, key=jax.random.key(0), n_samples=500)),
    ("qsi", lambda x, y: cka.quadruplet_similarity_index(x, y, key=jax.random.key(0), n_samples=500)),
])
def test_every_public_function_under_jit_equals_the_eager_call(pair, name, call):
  """The README's claim that ``cka`` runs inside ``jax.jit`` (options static)."""
  x, y = (jnp.asarray(a[:40], jnp.float32) for a in pair)
  np.testing.assert_allclose(jax.jit(call)(x, y), call(x, y), rtol=1e-4, atol=1e-6, err_msg=name)  # XLA may fuse


@pytest.mark.parametrize("call", [
    lambda x, y, p: cka.linear_cka(x, y, precision=p),
    lambda x, y, p: cka.linear_cka(x, y, unbiased=True, precision=p),
    lambda x, y, p: cka.rbf_cka(x, y, precision=p),
    lambda x, y, p: cka.median_bandwidth(x, precision=p),
    lambda x, y, p: cka.mutual_knn(x, y, k=5, precision=p),
    lambda x, y, p: cka.cknna(x, y, k=5, precision=p),
    lambda x, y, p: cka.svcca(x, y, dim=4, precision=p),
])
def test_precision_default_is_accepted_and_close_on_cpu(pair, call):
  x, y = pair
  np.testing.assert_allclose(call(x, y, jax.lax.Precision.DEFAULT), call(x, y, cka.DEFAULT_PRECISION), rtol=1e-4,
                             atol=1e-6)


def test_concrete_array_captured_inside_jit_and_vmap(rng):
  layers = rng.normal(size=(3, 30, 6)).astype(np.float32)
  target = rng.normal(size=(30, 5)).astype(np.float32)
  got = jax.jit(jax.vmap(lambda h: cka.linear_cka(h, target)))(layers)
  np.testing.assert_allclose(got, [float(cka.linear_cka(h, target)) for h in layers], rtol=1e-5)
  np.testing.assert_allclose(jax.jit(lambda a: cka.median_bandwidth(a))(layers[0]), cka.median_bandwidth(layers[0]),
                             rtol=1e-6)
