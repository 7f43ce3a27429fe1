"""Layer grids and calibrated scores against the Platonic-Representation definitions written plainly in numpy."""

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sotalign_jax import cka, scores
from sotalign_jax.scores import calibrated, score_grid

from test_cka import cka_ref, cknna_ref, hsic_loop, hsic_unbiased_ref, mutual_knn_ref, rbf_ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- plain references (Huh et al., 2024, platonic-rep metrics.py) -----------------------------------------------
def linear_cka_ref(x, y, unbiased=False):
  return cka_ref(x @ x.T, y @ y.T, hsic_unbiased_ref if unbiased else hsic_loop)


def rbf_cka_ref(x, y, unbiased=False):
  return cka_ref(rbf_ref(x), rbf_ref(y), hsic_unbiased_ref if unbiased else hsic_loop)


def svcca_ref(x, y, dim):
  """Mean canonical correlation of the top-``dim`` singular subspaces (exact CCA of two orthonormal bases)."""
  def top(a):
    a = (a - a.mean(0)) / (a.std(0, ddof=1) + 1e-8)
    return np.linalg.svd(a, full_matrices=False)[0][:, :dim]
  return np.mean(np.linalg.svd(top(x).T @ top(y), compute_uv=False))


K, DIM = 5, 3
REFS = {
    "linear_cka": lambda a, b: linear_cka_ref(a, b),
    "unbiased_linear_cka": lambda a, b: linear_cka_ref(a, b, True),
    "rbf_cka": lambda a, b: rbf_cka_ref(a, b),
    "unbiased_rbf_cka": lambda a, b: rbf_cka_ref(a, b, True),
    "mutual_knn": lambda a, b: mutual_knn_ref(a, b, K),
    "cknna": lambda a, b: cknna_ref(a, b, K),
    "svcca": lambda a, b: svcca_ref(a, b, DIM),
}
N_TUPLES = 3000  # random tuples of the order scores (tsi, qsi)


def order_ref(x, y, key, quadruplets):
  """TSI / QSI by a loop over the tuples `scores` draws from `key` (documented: fold_in(key, 2**32 - 1)).

  The fraction of valid tuples (no repeated index: triplets distinct, quadruplets i != j and k != l) whose
  d(i, j) < d(k, l) holds in both spaces or in neither; a triplet (i, j, k) compares d(i, j) with d(i, k).
  """
  m = 4 if quadruplets else 3
  t = np.asarray(jax.random.randint(jax.random.fold_in(key, 2**32 - 1), (m, N_TUPLES), 0, len(x)))
  dx, dy = (np.linalg.norm(a[:, None] - a[None], axis=-1) for a in (x, y))
  agree = valid = 0
  for tup in t.T:
    i, j, k, l = tup if quadruplets else (tup[0], tup[1], tup[0], tup[2])
    if i == j or k == l or j == l and not quadruplets:
      continue
    valid += 1
    agree += (dx[i, j] < dx[k, l]) == (dy[i, j] < dy[k, l])
  return agree / valid


def reference(metric, a, b, key=None):
  """The plain value of `metric`; `key` is the scores' key (default jax.random.key(0)), used by tsi / qsi only."""
  if metric in ("tsi", "qsi"):
    return order_ref(a, b, jax.random.key(0) if key is None else key, metric == "qsi")
  return REFS[metric](a, b)


@pytest.fixture(scope="module")
def layers():
  """Two 'encoders' of 40 samples: 3 and 2 layers of different widths sharing a latent factor."""
  r = np.random.default_rng(0)
  n = 40
  z = r.normal(size=(n, 6))
  xs = [z @ r.normal(size=(6, d)) + s * r.normal(size=(n, d)) + 1.0 for d, s in ((5, 2.0), (12, 0.3), (7, 1.0))]
  ys = [np.tanh(z @ r.normal(size=(6, d))) + s * r.normal(size=(n, d)) for d, s in ((9, 0.2), (4, 1.5))]
  return [a.astype(np.float32) for a in xs], [a.astype(np.float32) for a in ys]


# ---- grids ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", scores.METRICS)
def test_grid_matches_platonic_definitions(layers, metric):
  xs, ys = layers
  g = score_grid(xs, ys, metric=metric, k=K, dim=DIM, block_size=7, n_tuples=N_TUPLES)  # 7 ∤ 40: ragged last block
  ref = np.array([[reference(metric, a.astype(np.float64), b.astype(np.float64)) for b in ys] for a in xs])
  np.testing.assert_allclose(g.scores, ref, rtol=2e-4, atol=1e-5)
  assert g.best == np.unravel_index(np.argmax(ref), ref.shape)
  assert g.metric == metric and g.scores.shape == (3, 2)


def test_grid_entry_equals_single_pair_functions(layers):
  xs, ys = layers
  single = {"linear_cka": cka.linear_cka(xs[1], ys[0]), "rbf_cka": cka.rbf_cka(xs[1], ys[0]),
            "mutual_knn": cka.mutual_knn(xs[1], ys[0], k=K), "cknna": cka.cknna(xs[1], ys[0], k=K)}
  for metric, value in single.items():
    np.testing.assert_allclose(score_grid(xs, ys, metric=metric, k=K, block_size=7).scores[1, 0], value, rtol=1e-5)


@pytest.mark.parametrize("metric, single", [("tsi", cka.triplet_similarity_index),
                                            ("qsi", cka.quadruplet_similarity_index)])
def test_order_scores_are_the_single_pair_function_on_the_documented_tuples(layers, metric, single):
  """Grid cells, the calibrated score and its null are exactly cka's TSI / QSI with key fold_in(key, 2**32 - 1)."""
  xs, ys = layers
  key = jax.random.key(3)
  pair = functools.partial(single, key=jax.random.fold_in(key, 2**32 - 1), n_samples=N_TUPLES)
  g = score_grid(xs, ys, metric=metric, k=K, dim=DIM, block_size=7, key=key, n_tuples=N_TUPLES)
  np.testing.assert_array_equal(g.scores[1, 0], pair(xs[1], ys[0]))
  c = calibrated(metric, xs[1], ys[0], n_perm=40, n_boot=0, key=key, k=K, dim=DIM, block_size=7, n_tuples=N_TUPLES)
  perms, _ = _perms_and_rows(key, len(xs[1]), 40, 0)
  np.testing.assert_array_equal(c.score, g.scores[1, 0])
  np.testing.assert_array_equal(c.null[:3], [pair(xs[1], ys[0][p]) for p in perms[:3]])


@pytest.mark.parametrize("metric", ["linear_cka", "unbiased_rbf_cka", "mutual_knn", "cknna"])
def test_chunked_equals_unchunked(layers, metric):
  xs, ys = layers
  chunked = score_grid(xs, ys, metric=metric, k=K, block_size=7).scores
  whole = score_grid(xs, ys, metric=metric, k=K, block_size=4096).scores
  # the unbiased estimator cancels large sums: float32 rounding, not chunking, sets its tolerance
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=3e-5 if metric.startswith("unbiased") else 1e-7)


def test_stacked_layers_and_identical_layers(layers):
  xs, _ = layers
  stack = np.stack([xs[0], 2.0 * xs[0], xs[0] + 3.0])  # [L, n, d]; CKA is invariant to scale and shift
  g = score_grid(stack, [xs[0]], metric="linear_cka")
  np.testing.assert_allclose(g.scores, 1.0, rtol=1e-5)
  assert g.scores.shape == (3, 1)


def test_memory_stays_bounded_at_20k_samples():
  """Compiled working memory of the grids at n = 20k is far below one n×n float32 matrix (1.6 GB)."""
  n, nn = 20000, 20000 * 20000 * 4
  xs = (jax.ShapeDtypeStruct((n, 16), jnp.float32), jax.ShapeDtypeStruct((n, 8), jnp.float32))
  ys = (jax.ShapeDtypeStruct((n, 12), jnp.float32),)
  temp = lambda f, *a: f.lower(*a).compile().memory_analysis().temp_size_in_bytes
  assert temp(jax.jit(lambda a, b: scores._linear_grid(a, b, False, 1024)), xs, ys) < nn / 100
  assert temp(jax.jit(lambda a, b: scores._knn_grid(a, b, "cknna", 10, 512)), xs, ys) < nn / 20
  bw = jnp.ones(2), jnp.ones(1)
  assert temp(jax.jit(lambda a, b: scores._rbf_grid(a, b, *bw, False, 512)), xs, ys) < nn / 20


# ---- calibration --------------------------------------------------------------------------------------------------
def _perms_and_rows(key, n, n_perm, n_boot):
  """The permutations and bootstrap rows `calibrated` draws from `key` (documented: split, then one key each)."""
  kp, kb = jax.random.split(key)
  perms = [np.asarray(jax.random.permutation(k, n)) for k in jax.random.split(kp, n_perm)]
  rows = [np.asarray(jax.random.choice(k, n, (n,), replace=True)) for k in jax.random.split(kb, n_boot)]
  return perms, rows


@pytest.mark.parametrize("metric", ["linear_cka", "unbiased_linear_cka", "mutual_knn", "cknna", "svcca", "tsi", "qsi"])
def test_calibrated_null_is_the_metric_of_permuted_y(layers, metric):
  x, y = layers[0][1].astype(np.float64), layers[1][0].astype(np.float64)
  key = jax.random.key(3)
  c = calibrated(metric, x, y, n_perm=40, n_boot=0, key=key, k=K, dim=DIM, block_size=7, n_tuples=N_TUPLES)
  perms, _ = _perms_and_rows(key, len(x), 40, 0)
  ref = np.array([reference(metric, x, y[p], key) for p in perms[:6]])
  np.testing.assert_allclose(c.null[:6], ref, rtol=2e-4, atol=1e-5)
  np.testing.assert_allclose(c.score, reference(metric, x, y, key), rtol=2e-4)
  null = np.asarray(c.null)
  np.testing.assert_allclose(c.p_value, (1 + np.sum(null >= float(c.score))) / 41, rtol=1e-6)
  np.testing.assert_allclose(c.z, (float(c.score) - null.mean()) / null.std(), rtol=1e-4)
  assert float(c.p_value) < 0.05  # the layers share a latent factor
  assert np.isnan(float(c.ci_low)) and np.isnan(float(c.ci_high))


@pytest.mark.parametrize("metric", ["linear_cka", "tsi"])
def test_bootstrap_interval_is_percentiles_of_resampled_scores(layers, metric):
  """Resamples rows with replacement; TSI keeps the tuples (positions), so copies of a sample give zero distances."""
  x, y = layers[0][1], layers[1][0]
  key = jax.random.key(5)
  c = calibrated(metric, x, y, n_perm=5, n_boot=30, key=key, ci=0.8, n_tuples=N_TUPLES)
  _, rows = _perms_and_rows(key, len(x), 5, 30)
  boot = [reference(metric, x[r].astype(np.float64), y[r].astype(np.float64), key) for r in rows]
  np.testing.assert_allclose([c.ci_low, c.ci_high], np.quantile(boot, [0.1, 0.9]), rtol=1e-4)
  assert float(c.ci_low) <= float(c.score) <= float(c.ci_high)


def test_linear_cka_null_centred_on_exact_permutation_mean():
  """Independent Gaussians: null mean = √(β_x β_y)/(n-1) (RV coefficient), raw score ≈ null, p not small."""
  r = np.random.default_rng(1)
  n = 50
  x, y = r.normal(size=(n, 6)), r.normal(size=(n, 4)) @ np.diag([3.0, 1.0, 1.0, 0.3])
  c = calibrated("linear_cka", x, y, n_perm=2000, n_boot=0, key=jax.random.key(0))
  xc, yc = x - x.mean(0), y - y.mean(0)
  beta = lambda a: np.sum(a * a) ** 2 / np.sum((a.T @ a) ** 2)
  exact = np.sqrt(beta(xc) * beta(yc)) / (n - 1)
  np.testing.assert_allclose(scores.linear_cka_null_mean(x, y), exact, rtol=1e-5)
  assert abs(float(c.null_mean) - exact) < 4 * float(c.null_std) / np.sqrt(2000)
  assert abs(float(c.score) - exact) < 3 * float(c.null_std)
  assert float(c.p_value) > 0.01


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["linear_cka", "mutual_knn", "tsi", "qsi"])
def test_p_values_uniform_under_the_null(metric):
  """Over 200 independent datasets the permutation p-values are Uniform(0, 1) (KS test)."""
  r = np.random.default_rng(2)
  ps = [float(calibrated(metric, r.normal(size=(30, 4)), r.normal(size=(30, 3)), n_perm=99, n_boot=0, k=3,
                         key=jax.random.key(s), n_tuples=N_TUPLES).p_value) for s in range(200)]
  assert stats.kstest(ps, "uniform").pvalue > 0.01


# ---- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda x, y: calibrated("linear_cka", x, y, n_perm=0), "n_perm"),
    (lambda x, y: calibrated("linear_cka", x, y[:-1]), "same samples"),
    (lambda x, y: calibrated("mutual_knn", x[:5], y[:5], k=5), "k must be"),
    (lambda x, y: calibrated("cknna", x, y, k=1), "k must be"),
    (lambda x, y: calibrated("linear_cka", x, y, n_boot=-1), "n_boot"),
    (lambda x, y: calibrated("linear_cka", x, y, ci=1.5), "ci must"),
    (lambda x, y: calibrated("cka", x, y), "metric must be one of"),
    (lambda x, y: score_grid([x], [y[:-1]]), "same samples"),
    (lambda x, y: score_grid([x, x[:-1]], [y]), r"xs\[1\] has n="),
    (lambda x, y: score_grid([], [y]), "xs is empty"),
    (lambda x, y: score_grid([x], [np.where(np.arange(len(y))[:, None] == 2, np.nan, y)]), r"ys\[0\] contains NaN"),
    (lambda x, y: score_grid([x], [y], metric="svcca", dim=50), "dim must"),
    (lambda x, y: score_grid([x], [y], block_size=0), "block_size"),
    (lambda x, y: score_grid([x[:3]], [y[:3]], metric="unbiased_linear_cka"), "at least 4"),
    (lambda x, y: score_grid([np.ones_like(x)], [y], metric="rbf_cka"), r"bandwidth of xs\[0\]"),
    (lambda x, y: calibrated("tsi", x[:2], y[:2]), "tsi needs at least 3"),
    (lambda x, y: score_grid([x], [y], metric="qsi", n_tuples=0), "n_tuples must be"),
    (lambda x, y: calibrated("linear_cka", x, y, n_tuples=2.5), "n_tuples must be"),
])
def test_bad_input_raises_value_error_naming_it(layers, call, match):
  x, y = layers[0][0], layers[1][0]
  with pytest.raises(ValueError, match=match):
    call(x, y)


# ---- experiment ---------------------------------------------------------------------------------------------------
def test_experiment_smoke_variant_writes_results_and_resumes(tmp_path):
  sys.path.insert(0, REPO)
  from configs.alignment_scores import get_config  # pylint: disable=g-import-not-at-top
  from experiments import alignment_scores  # pylint: disable=g-import-not-at-top
  cfg = get_config("smoke")
  res = alignment_scores.run(cfg, str(tmp_path))
  assert set(res) == {"syn0_x_syn1"}
  m = res["syn0_x_syn1"]
  assert m["best_z"] > 3 and m["best_p"] < 0.05  # the synthetic layers share a latent factor
  for f in ("results.json", "results.md", "grids.json", "syn0_x_syn1.png"):
    assert (tmp_path / f).exists(), f
  again = alignment_scores.run(cfg, str(tmp_path))  # resumes from done/
  assert again == res
  # the same run on 8 fake devices (permutations and resamples split over them) gives the same results
  from conftest import run_on_devices  # pylint: disable=g-import-not-at-top
  run_on_devices([sys.executable, os.path.join(REPO, "experiments", "alignment_scores.py"), "--config",
                  os.path.join(REPO, "configs", "alignment_scores.py") + ":smoke",
                  "--workdir", str(tmp_path / "eight")],
                 8)
  eight = json.load(open(tmp_path / "eight" / "results.json"))
  assert eight["n_devices"] == 8 and json.load(open(tmp_path / "results.json"))["n_devices"] == 1
  for k, v in res["syn0_x_syn1"].items():
    w = eight["methods"]["syn0_x_syn1"][k]
    assert w == v if isinstance(v, str) else np.isclose(w, v, rtol=1e-5, atol=1e-6), (k, v, w)


@pytest.mark.parametrize("metric", ["unbiased_linear_cka", "cknna", pytest.param("tsi", marks=pytest.mark.slow),
                                    pytest.param("qsi", marks=pytest.mark.slow)])
def test_grid_null_is_the_metric_of_permuted_ys(layers, metric):
  """Every cell's null uses the shared permutations split from `key`: compare with numpy on permuted rows."""
  xs, ys = layers
  key = jax.random.key(7)
  g = score_grid(xs, ys, metric=metric, k=K, block_size=7, n_perm=23, key=key, batch_size=4,  # 23 = 5·4 + 3
                 n_tuples=N_TUPLES)
  perms = [np.asarray(jax.random.permutation(k, 40)) for k in jax.random.split(key, 23)]
  for i, j in ((0, 0), (2, 1)):
    null = np.array([reference(metric, xs[i].astype(np.float64), ys[j][p].astype(np.float64), key) for p in perms])
    raw = reference(metric, xs[i].astype(np.float64), ys[j].astype(np.float64), key)
    np.testing.assert_allclose(g.null_mean[i, j], null.mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g.null_std[i, j], null.std(), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(g.p_value[i, j], (1 + np.sum(null >= raw - 1e-6)) / 24, rtol=1e-6)
  np.testing.assert_allclose(g.z, (g.scores - g.null_mean) / g.null_std, rtol=1e-5)


def test_eight_devices_split_the_permutations_and_give_the_single_device_null():
  from conftest import run_with_fake_devices  # pylint: disable=g-import-not-at-top
  out = run_with_fake_devices("""
      import jax, numpy as np
      from sotalign_jax import scores
      assert jax.device_count() == 8
      r = np.random.default_rng(0)
      z = r.normal(size=(48, 4))
      xs = [(z @ r.normal(size=(4, d)) + r.normal(size=(48, d))).astype(np.float32) for d in (6, 9)]
      ys = [(np.tanh(z @ r.normal(size=(4, d))) + r.normal(size=(48, d))).astype(np.float32) for d in (5, 7, 3)]
      mesh = jax.make_mesh((8,), ("perm",))
      key = jax.random.key(3)
      for metric in ("linear_cka", "cknna"):
        # 21 permutations in batches of 5: rounded to 8 on the mesh (2 whole batches split 8 ways + 5 left over)
        one = scores.score_grid(xs, ys, metric=metric, k=4, n_perm=21, key=key, batch_size=5)
        eight = scores.score_grid(xs, ys, metric=metric, k=4, n_perm=21, key=key, batch_size=5, mesh=mesh)
        for a, b in zip(one[3:], eight[3:]):  # null_mean, null_std, z, p_value
          np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
        c1 = scores.calibrated(metric, xs[1], ys[0], n_perm=19, n_boot=11, key=key, k=4, batch_size=3)
        c8 = scores.calibrated(metric, xs[1], ys[0], n_perm=19, n_boot=11, key=key, k=4, batch_size=3, mesh=mesh)
        np.testing.assert_allclose(np.asarray(c1.null), np.asarray(c8.null), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([c1.ci_low, c1.ci_high, c1.p_value], [c8.ci_low, c8.ci_high, c8.p_value],
                                   rtol=1e-5)
      print("OK")
  """)
  assert out.strip().splitlines()[-1] == "OK"
