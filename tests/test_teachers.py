"""Linear teachers against numpy.linalg.solve, scipy's orthogonal_procrustes and sklearn's CCA."""

import jax
import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from sklearn.cross_decomposition import CCA

from sotalign_jax import teachers


@pytest.fixture
def pairs(rng):
  x = rng.normal(size=(80, 10)) + 1.0
  y = x @ rng.normal(size=(10, 6)) + 0.1 * rng.normal(size=(80, 6)) - 2.0
  return x, y


@pytest.mark.parametrize("n", [80, 5])  # primal (n >= d) and dual (n < d) forms
def test_ridge_matches_normal_equations(pairs, n):
  x, y = pairs
  x, y = x[:n], y[:n]
  xc, yc = x - x.mean(0), y - y.mean(0)
  lam = 0.3
  ref = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ yc)
  np.testing.assert_allclose(teachers.ridge(x, y, lam=lam), ref, rtol=1e-3, atol=1e-5)
  ref_nc = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)
  np.testing.assert_allclose(teachers.ridge(x, y, lam=lam, center=False), ref_nc, rtol=1e-3, atol=1e-5)


def test_ridge_whitened_maps_raw_x(pairs):
  x, y = pairs
  xc, yc = x - x.mean(0), y - y.mean(0)
  c = xc.T @ xc / (len(x) - 1)
  w, v = np.linalg.eigh(c)
  white = v @ np.diag(1 / np.sqrt(w + 0.1)) @ v.T
  xw = xc @ white
  ref = white @ np.linalg.solve(xw.T @ xw + 0.5 * np.eye(10), xw.T @ yc)
  np.testing.assert_allclose(teachers.ridge(x, y, lam=0.5, whiten=True), ref, rtol=1e-3, atol=1e-5)


def test_procrustes_matches_scipy_square(rng):
  x = rng.normal(size=(50, 8))
  y = rng.normal(size=(50, 8))
  ref, _ = orthogonal_procrustes(x - x.mean(0), y - y.mean(0))
  w = np.asarray(teachers.procrustes(x, y))
  np.testing.assert_allclose(w, ref, atol=1e-5)
  np.testing.assert_allclose(w.T @ w, np.eye(8), atol=1e-5)


def test_procrustes_rectangular_equals_zero_padding(rng):
  x = rng.normal(size=(40, 9))
  y = rng.normal(size=(40, 5))
  ypad = np.concatenate([y, np.zeros((40, 4))], 1)
  ref, _ = orthogonal_procrustes(x - x.mean(0), ypad - ypad.mean(0))
  w = np.asarray(teachers.procrustes(x, y))
  np.testing.assert_allclose(w, ref[:, :5], atol=1e-5)
  np.testing.assert_allclose(w.T @ w, np.eye(5), atol=1e-5)


def test_cca_matches_sklearn_correlations(rng):
  z = rng.normal(size=(500, 3))
  x = z @ rng.normal(size=(3, 6)) + 0.5 * rng.normal(size=(500, 6))
  y = z @ rng.normal(size=(3, 5)) + 0.5 * rng.normal(size=(500, 5))
  wx, wy = teachers.cca(x, y, dim=3, reg=1e-6)
  a, b = (x - x.mean(0)) @ np.asarray(wx), (y - y.mean(0)) @ np.asarray(wy)
  ours = [np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(3)]
  sa, sb = CCA(n_components=3, max_iter=5000, tol=1e-12).fit(x, y).transform(x, y)
  ref = [np.corrcoef(sa[:, i], sb[:, i])[0, 1] for i in range(3)]
  np.testing.assert_allclose(ours, ref, atol=1e-3)
  # canonical variates are uncorrelated with unit variance (whitened) on each side
  np.testing.assert_allclose(np.cov(a.T), np.eye(3), atol=1e-3)
  # and the singular values of the whitened cross-covariance are the correlations
  np.testing.assert_allclose(np.sort(ours)[::-1], ours, atol=1e-6)


def test_cca_few_pairs_high_dims(rng):
  x = rng.normal(size=(20, 100))
  y = rng.normal(size=(20, 60))
  wx, wy = teachers.cca(x, y, dim=19, reg=0.1)
  assert wx.shape == (100, 19) and wy.shape == (60, 19)
  assert np.isfinite(np.asarray(wx)).all() and np.isfinite(np.asarray(wy)).all()
  with pytest.raises(ValueError, match="dim must"):
    teachers.cca(x, y, dim=20)


def test_cca_with_fewer_pairs_than_dimensions_as_the_readme_says(rng):
  """README: 100 pairs of 384-d / 768-d features; any dim up to n - 1 = 99 works, 128 is refused naming why."""
  x = rng.normal(size=(100, 384)).astype(np.float32)
  y = np.tanh(x @ rng.normal(size=(384, 768)) / 20).astype(np.float32)
  wx, wy = teachers.cca(x, y, dim=99, reg=0.1)
  assert wx.shape == (384, 99) and wy.shape == (768, 99)
  zx, zy = x @ np.asarray(wx[:, :8]), y @ np.asarray(wy[:, :8])
  zx, zy = zx - zx.mean(0), zy - zy.mean(0)
  corr = np.sum(zx * zy, 0) / np.linalg.norm(zx, axis=0) / np.linalg.norm(zy, axis=0)
  assert (corr > 0.9).all(), corr  # the leading canonical variates of the pairs are strongly correlated
  with pytest.raises(ValueError, match=r"\[1, 99\], got 128: 100 centred pairs span at most 99 directions"):
    teachers.cca(x, y, dim=128, reg=0.1)


@pytest.mark.parametrize("name, call", [
    ("ridge", lambda x, y: teachers.ridge(x, y, lam=0.1)),
    ("ridge_dual_whitened", lambda x, y: teachers.ridge(x[:5], y[:5], lam=0.1, whiten=True)),
    ("procrustes", lambda x, y: teachers.procrustes(x, y)),
    ("cca", lambda x, y: teachers.cca(x, y, dim=3)),
    ("fit", lambda x, y: teachers.fit("cca", x, y, dim=3).embed_y(y)),
])
def test_every_public_function_under_jit_equals_the_eager_call(pairs, name, call):
  """The README's claim that ``teachers`` runs inside ``jax.jit`` (options static)."""
  x, y = (np.asarray(a, np.float32) for a in pairs)
  jax.tree.map(lambda e, j: np.testing.assert_allclose(j, e, rtol=1e-4, atol=1e-5 * np.abs(e).max(), err_msg=name),
               call(x, y), jax.jit(call)(x, y))


def test_fit_teacher_embeds_pairs_close_together(pairs):
  x, y = pairs
  for name in teachers.TEACHERS:
    t = teachers.fit(name, x, y, dim=5, lam=1e-3)
    zx, zy = np.array(t.embed_x(x)), np.array(t.embed_y(y))
    zx /= np.linalg.norm(zx, axis=1, keepdims=True)
    zy /= np.linalg.norm(zy, axis=1, keepdims=True)
    diag = np.sum(zx * zy, 1).mean()
    off = (zx @ zy.T).mean()
    assert diag > off + 0.3, (name, diag, off)


def test_bad_input(pairs):
  x, y = pairs
  with pytest.raises(ValueError, match="same samples"):
    teachers.ridge(x, y[:-1])
  with pytest.raises(ValueError, match="lam"):
    teachers.ridge(x, y, lam=0.0)
  with pytest.raises(ValueError, match="NaN"):
    teachers.procrustes(np.full_like(x, np.nan), y)
  with pytest.raises(ValueError, match="unknown teacher"):
    teachers.fit("lasso", x, y)


@pytest.mark.parametrize("call", [
    lambda x, y, p: teachers.ridge(x, y, precision=p),
    lambda x, y, p: teachers.ridge(x[:5], y[:5], whiten=True, precision=p),
    lambda x, y, p: teachers.procrustes(x, y, whiten=True, precision=p),
    lambda x, y, p: teachers.cca(x, y, dim=3, precision=p)[0],
    lambda x, y, p: teachers.fit("cca", x, y, dim=3, precision=p).embed_x(x, precision=p),
])
def test_precision_default_is_accepted_and_close_on_cpu(pairs, call):
  x, y = pairs
  hi = np.asarray(call(x, y, teachers.DEFAULT_PRECISION))
  np.testing.assert_allclose(call(x, y, jax.lax.Precision.DEFAULT), hi, rtol=1e-4,
                             atol=1e-5 * np.abs(hi).max())
