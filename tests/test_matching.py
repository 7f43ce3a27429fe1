"""Tests of sotalign_jax.matching against plain-numpy definitions (naive local CKA, k-means, baselines)."""

import jax
import numpy as np
import pytest
import scipy.optimize

from sotalign_jax import matching


def _naive_cka(k: np.ndarray, l: np.ndarray) -> float:
  n = k.shape[0]
  h = np.eye(n) - 1.0 / n
  kc, lc = h @ k @ h, h @ l @ h
  return float(np.sum(kc * lc) / np.sqrt(np.sum(kc * kc) * np.sum(lc * lc)))


def _rbf(x: np.ndarray, sigma: float) -> np.ndarray:
  d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  return np.exp(-d / (2 * sigma**2))


def _paired(rng, m=30, q=12, dx=6, dy=5, noise=0.05, mean=0.0):
  z = rng.standard_normal((m + q, 4))
  x = z @ rng.standard_normal((4, dx)) + 0.1 * rng.standard_normal((m + q, dx)) + mean
  y = z @ rng.standard_normal((4, dy)) + noise * rng.standard_normal((m + q, dy))
  return x[:m], y[:m], x[m:], y[m:]


@pytest.mark.parametrize("mean", [0.0, 50.0])
def test_local_cka_linear_matches_naive(rng, mean):
  xb, yb, xq, yq = _paired(rng, mean=mean)
  got = np.asarray(matching.local_cka_scores(xb, yb, xq, yq[:9]))
  want = np.array([[_naive_cka(np.vstack([xb, xi[None]]) @ np.vstack([xb, xi[None]]).T,
                               np.vstack([yb, yj[None]]) @ np.vstack([yb, yj[None]]).T) for yj in yq[:9]]
                   for xi in xq])
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_local_cka_rbf_matches_naive(rng):
  xb, yb, xq, yq = _paired(rng)
  sx, sy = 1.3, 0.7
  got = np.asarray(matching.local_cka_scores(xb, yb, xq, yq, kernel="rbf", bandwidth_x=sx, bandwidth_y=sy))
  want = np.array([[_naive_cka(_rbf(np.vstack([xb, xi[None]]), sx), _rbf(np.vstack([yb, yj[None]]), sy))
                    for yj in yq] for xi in xq])
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_local_cka_match_and_retrieve_recover_pairs(rng):
  xb, yb, xq, yq = _paired(rng, m=60, q=25, noise=0.01)
  perm = rng.permutation(25)
  got = matching.local_cka_match(xb, yb, xq, yq[perm])
  # x-query i truly pairs with y-query argsort(perm)[i]
  assert np.mean(got == np.argsort(perm)) >= 0.8
  top = np.asarray(matching.local_cka_retrieve(xb, yb, xq, yq[perm], k=5))
  assert top.shape == (25, 5)
  assert np.mean([np.argsort(perm)[i] in top[i] for i in range(25)]) >= 0.9


def test_median_rbf_kernel_and_centered_kernel(rng):
  x = rng.standard_normal((15, 4))
  d = ((x[:, None] - x[None]) ** 2).sum(-1)
  sigma = np.sqrt(np.median(d[np.triu_indices(15, 1)]))
  np.testing.assert_allclose(np.asarray(matching.kernel_matrix(x)), _rbf(x, sigma), atol=1e-5)
  np.testing.assert_allclose(np.asarray(matching.kernel_matrix(x, kernel="linear")), x @ x.T, rtol=1e-5, atol=1e-5)
  h = np.eye(15) - 1 / 15
  kc = h @ _rbf(x, sigma) @ h
  np.testing.assert_allclose(np.asarray(matching.centered_kernel(x)), kc / np.linalg.norm(kc), atol=1e-5)


def test_stretch(rng):
  x = rng.standard_normal((20, 3)) * np.array([1.0, 10.0, 0.1])
  np.testing.assert_allclose(np.asarray(matching.stretch(x)), x / x.std(0, ddof=1), rtol=1e-5)


def test_kmeans_base_selection_finds_planted_clusters(rng):
  centers = rng.standard_normal((5, 3)) * 20
  lab = np.repeat(np.arange(5), 12)
  x = centers[lab] + rng.standard_normal((60, 3))
  idx = np.asarray(matching.kmeans_base_selection(x, 5, key=jax.random.key(3)))
  assert len(set(idx.tolist())) == 5
  # one representative per planted cluster, and each is the point nearest its cluster mean (= k-means optimum)
  assert sorted(lab[idx].tolist()) == list(range(5))
  for i in idx:
    members = x[lab == lab[i]]
    assert np.argmin(((members - members.mean(0)) ** 2).sum(1)) == np.where(lab == lab[i])[0].tolist().index(i)


def test_relative_and_linreg_scores(rng):
  xb, yb, xq, yq = _paired(rng)
  cos = lambda u, v: (u / np.linalg.norm(u, axis=1, keepdims=True)) @ (v / np.linalg.norm(v, axis=1,
                                                                                           keepdims=True)).T
  np.testing.assert_allclose(np.asarray(matching.relative_scores(xb, yb, xq, yq)),
                             cos(cos(xq, xb), cos(yq, yb)), atol=1e-5)
  w = np.linalg.solve(xb.T @ xb + 1e-2 * np.eye(xb.shape[1]), xb.T @ yb)
  np.testing.assert_allclose(np.asarray(matching.linreg_scores(xb, yb, xq, yq, lam=1e-2)), cos(xq @ w, yq),
                             atol=1e-4)
  perm = rng.permutation(len(yq))
  s = np.asarray(matching.relative_scores(xb, yb, xq, yq[perm]))
  want = scipy.optimize.linear_sum_assignment(s, maximize=True)[1]
  got = matching.relative_match(xb, yb, xq, yq[perm])
  np.testing.assert_allclose(s[np.arange(len(s)), got].sum(), s[np.arange(len(s)), want].sum(), rtol=1e-6)
  assert np.mean(matching.linreg_match(xb, yb, xq, yq[perm]) == np.argsort(perm)) >= 0.8


def test_qap_match_recovers_planted_pairs(rng):
  # y is a rotated, slightly noisy copy of x: the two kernels are near-isomorphic graphs
  x = rng.standard_normal((60, 8))
  y = x @ np.linalg.qr(rng.standard_normal((8, 8)))[0] + 0.01 * rng.standard_normal((60, 8))
  xb, yb, xq, yq = x[:40], y[:40], x[40:], y[40:]
  perm = rng.permutation(20)
  got = matching.qap_match(xb, yb, xq, yq[perm], n_init=4, key=jax.random.key(0))
  assert np.mean(got == np.argsort(perm)) >= 0.9


def test_bad_inputs(rng):
  xb, yb, xq, yq = _paired(rng)
  with pytest.raises(ValueError, match="x_base and y_base"):
    matching.local_cka_scores(xb, yb[:-1], xq, yq)
  with pytest.raises(ValueError, match="y_query"):
    matching.local_cka_scores(xb, yb, xq, yq[:, :2])
  bad = xq.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="x_query"):
    matching.local_cka_scores(xb, yb, bad, yq)
  with pytest.raises(ValueError, match="x_query and y_query"):
    matching.qap_match(xb, yb, xq, yq[:-1], key=jax.random.key(0))
  with pytest.raises(ValueError, match="kernel"):
    matching.local_cka_scores(xb, yb, xq, yq, kernel="poly")
  with pytest.raises(ValueError, match="k must"):
    matching.kmeans_base_selection(xb, 0, key=jax.random.key(0))
  with pytest.raises(ValueError, match="k must"):
    matching.local_cka_retrieve(xb, yb, xq, yq, k=100)


@pytest.mark.parametrize("call", [
    lambda xb, yb, xq, yq, p: matching.local_cka_scores(xb, yb, xq, yq, precision=p),
    lambda xb, yb, xq, yq, p: matching.local_cka_scores(xb, yb, xq, yq, kernel="rbf", precision=p),
    lambda xb, yb, xq, yq, p: matching.linreg_scores(xb, yb, xq, yq, precision=p),
    lambda xb, yb, xq, yq, p: matching.relative_scores(xb, yb, xq, yq, precision=p),
    lambda xb, yb, xq, yq, p: matching.centered_kernel(xb, precision=p),
])
def test_precision_default_is_accepted_and_close_on_cpu(rng, call):
  args = _paired(rng)
  hi = np.asarray(call(*args, matching.DEFAULT_PRECISION))
  np.testing.assert_allclose(call(*args, jax.lax.Precision.DEFAULT), hi, rtol=1e-4, atol=1e-5)
