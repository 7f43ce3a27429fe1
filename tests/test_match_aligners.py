"""Tests of the training-free matching families as registry aligners (sotalign_jax.aligners.matching): every match
experiment method through ``aligners.fit`` against the experiment's own calls to ``sotalign_jax.matching``, QAP on a
planted permutation, the ``stretch`` / ``base`` options and the transductive flag."""

import jax
import numpy as np
import pytest

from sotalign_jax import aligners, matching

_P, _Q, _M, _DX, _DY = 48, 16, 20, 10, 8
_SMOKE = dict(kernel="rbf", n_init=4, maxiter=15, tol=1e-5, batch_size=4, lap="scipy")  # configs/match.py:smoke
_CLUSTER_ITER = 10


@pytest.fixture(scope="module")
def problem():
  """A base pool of pairs and ``q`` queries whose captions are shuffled (``yq[truth[i]]`` belongs to ``xq[i]``);
  features of very different scales, so that stretching matters."""
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((6, _DX)), rng.standard_normal((6, _DY))
  sx, sy = np.geomspace(0.1, 30.0, _DX), np.geomspace(50.0, 0.5, _DY)

  def views(n):
    z = rng.standard_normal((n, 6))
    x = (z @ a + 0.3 * rng.standard_normal((n, _DX))) * sx + 1.0
    y = (z @ b + 0.3 * rng.standard_normal((n, _DY))) * sy - 2.0
    return x.astype(np.float32), y.astype(np.float32)

  px, py = views(_P)
  xq, yq = views(_Q)
  shuffle = rng.permutation(_Q)
  return px, py, xq, yq[shuffle], np.argsort(shuffle)


def _reference(method, px, py, xq, yq, key):
  """The match experiment's path (experiments/match.py: draw_base, stretched, evaluate), written out with the same
  calls to sotalign_jax.matching: ``(perm, scores or None)``. k-means is seeded with ``key``, FAQ with
  ``fold_in(key, 1)`` (the aligners' convention)."""
  family, _, variant = method.partition("_")
  variant = variant or "none"
  idx = np.arange(_P)
  if variant in ("cluster", "both"):
    idx = np.asarray(matching.kmeans_base_selection(px, _M, key=key, n_iter=_CLUSTER_ITER))
  xb, yb = px[idx], py[idx]
  if variant in ("stretch", "both"):
    sx = np.asarray(matching.stretch(np.concatenate([xb, xq])))
    sy = np.asarray(matching.stretch(np.concatenate([yb, yq])))
    xb, xq, yb, yq = sx[:len(xb)], sx[len(xb):], sy[:len(yb)], sy[len(yb):]
  if family == "qap":
    return np.asarray(matching.qap_match(xb, yb, xq, yq, key=jax.random.fold_in(key, 1), **_SMOKE)), None
  fn = {"localcka": lambda *a: matching.local_cka_scores(*a, kernel="linear"),
        "linreg": lambda *a: matching.linreg_scores(*a, lam=1e-2), "relrep": matching.relative_scores}[family]
  scores = np.asarray(fn(xb, yb, xq, yq))
  return matching.match_scores(scores), scores


def _fit(method, data, key):
  name, hparams = aligners.MATCH_METHODS[method]
  extra = {}
  if hparams.get("base") == "cluster":
    extra.update(n_base=_M, cluster_iter=_CLUSTER_ITER)
  if name == "qap":
    extra.update({k: v for k, v in _SMOKE.items()})
  return aligners.fit(name, key, data, **hparams, **extra)


# ----------------------------------------------------------------------------------------------------------------
# The match experiment's methods.
# ----------------------------------------------------------------------------------------------------------------
# The match experiment's method names (written out: a matcher family × how the base pairs are prepared).
OLD_METHODS = tuple(f if f in ("linreg", "relrep") and v == "none" else f"{f}_{v}"
                    for f in ("qap", "localcka", "linreg", "relrep") for v in ("none", "stretch", "cluster", "both"))


def test_match_methods_cover_every_experiment_method():
  assert set(aligners.MATCH_METHODS) == set(OLD_METHODS)
  for method, (name, hparams) in aligners.MATCH_METHODS.items():
    spec = aligners.get(name)
    assert set(hparams) <= set(spec.defaults), method
    assert name == {"qap": "qap", "localcka": "local_cka", "linreg": "ridge", "relrep": "relative"}[
        method.partition("_")[0]]
  assert aligners.MATCH_METHODS["linreg"] == ("ridge", {"center": "none", "normalize": False, "stretch": "none"})
  assert aligners.MATCH_METHODS["qap_both"] == ("qap", {"stretch": "queries", "base": "cluster"})


# FAQ compiles once per (base, query) size (≈ 15 s on a CPU core): the clustered QAP cells (another base size) run
# with the slow tests; their base selection is the one the clustered local-CKA / linreg / relrep cells check here.
_SLOW = ("qap_cluster", "qap_both")


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in _SLOW else m
                                    for m in OLD_METHODS])
def test_aligner_reproduces_the_match_experiment(problem, method):
  px, py, xq, yq, _ = problem
  key = jax.random.key(3)
  want_perm, want_scores = _reference(method, px, py, xq, yq, key)
  a = _fit(method, aligners.AlignData(pairs_x=px, pairs_y=py), key)
  scores = np.asarray(a.similarity(xq, yq))
  if want_scores is not None:
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
  else:  # QAP: the 0/1 matrix of its matching, so assignment returns it and R@1 is the matching accuracy
    assert set(np.unique(scores)) == {0.0, 1.0} and (scores.sum(0) == 1).all() and (scores.sum(1) == 1).all()
  perm = matching.match_scores(scores)
  np.testing.assert_array_equal(perm, want_perm)
  if want_scores is None:
    np.testing.assert_array_equal(np.argmax(scores, 1), want_perm)


def test_linreg_is_ridge_on_raw_features(problem):
  px, py, xq, yq, _ = problem
  a = aligners.fit("ridge", None, aligners.AlignData(pairs_x=px, pairs_y=py), center="none", normalize=False)
  np.testing.assert_allclose(np.asarray(a.similarity(xq, yq)), np.asarray(matching.linreg_scores(px, py, xq, yq)),
                             atol=1e-5)
  assert isinstance(a, aligners.LinearAlignment)


# ----------------------------------------------------------------------------------------------------------------
# QAP.
# ----------------------------------------------------------------------------------------------------------------
def test_qap_recovers_a_planted_permutation():
  rng = np.random.default_rng(1)
  d, m, q = 8, _P, _Q  # the sizes and options of the parity test: FAQ compiles once for both
  r, _ = np.linalg.qr(rng.standard_normal((d, d)))
  x = rng.standard_normal((m + q, d)).astype(np.float32)
  y = (x @ r + 0.02 * rng.standard_normal((m + q, d))).astype(np.float32)
  shuffle = rng.permutation(q)
  xq, yq, truth = x[m:], y[m:][shuffle], np.argsort(shuffle)
  a = aligners.fit("qap", jax.random.key(0), aligners.AlignData(pairs_x=x[:m], pairs_y=y[:m]), **_SMOKE)
  s = np.asarray(a.similarity(xq, yq))
  assert np.mean(np.argmax(s, 1) == truth) >= 0.9
  np.testing.assert_array_equal(np.asarray(a.similarity(xq, yq)), s)  # the restarts' key is stored: deterministic


def test_qap_is_transductive_and_checks_its_inputs(problem):
  px, py, xq, yq, _ = problem
  data = aligners.AlignData(pairs_x=px, pairs_y=py)
  assert [m for m, spec in aligners.ALIGNERS.items() if spec.transductive] == ["qap"]
  a = aligners.fit("qap", jax.random.key(0), data, n_init=2)
  with pytest.raises(ValueError, match="QAP matches equal-size query sets"):
    a.similarity(xq, yq[:-1])
  with pytest.raises(NotImplementedError, match="similarity"):
    a.embed_x(xq)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    aligners.fit("qap", None, data)
  leaves, treedef = jax.tree_util.tree_flatten(a)  # a pytree: the key is a leaf, the options static
  b = jax.tree_util.tree_unflatten(treedef, leaves)
  assert len(leaves) == 5 and (b.n_init, b.kernel) == (2, "rbf")


# ----------------------------------------------------------------------------------------------------------------
# stretch and base options.
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["relative", "local_cka", "ridge"])
def test_stretch_changes_scores_of_badly_scaled_features(problem, name):
  px, py, xq, yq, _ = problem
  data = aligners.AlignData(pairs_x=px, pairs_y=py)
  got = {s: np.asarray(aligners.fit(name, None, data, stretch=s).similarity(xq, yq)) for s in ("none", "queries")}
  assert np.abs(got["none"] - got["queries"]).max() > 0.05
  q = aligners.fit(name, None, data, stretch="queries")
  with pytest.raises(NotImplementedError, match="similarity"):
    q.embed_x(xq)
  # transductive through the option: the scores of the first rows depend on the rest of the query set
  assert np.abs(np.asarray(q.similarity(xq[:4], yq[:4])) - got["queries"][:4, :4]).max() > 1e-4


@pytest.mark.parametrize("name", ["relative", "local_cka", "ridge", "qap"])
def test_stretch_fit_is_the_method_on_prescaled_features(problem, name):
  px, py, xq, yq, _ = problem
  ux, uy = xq[::-1] * 1.5, yq * 0.5  # unpaired rows enter the scales of stretch="fit"
  sx, sy = np.vstack([ux, px]).std(0, ddof=1), np.vstack([uy, py]).std(0, ddof=1)
  opts = _SMOKE if name == "qap" else {}
  key = jax.random.key(0)
  a = aligners.fit(name, key, aligners.AlignData(ux, uy, px, py), stretch="fit", **opts)
  b = aligners.fit(name, key, aligners.AlignData(ux / sx, uy / sy, px / sx, py / sy), stretch="none", **opts)
  np.testing.assert_allclose(np.asarray(a.similarity(xq, yq)), np.asarray(b.similarity(xq / sx, yq / sy)),
                             atol=2e-4)
  if name != "qap":
    with pytest.raises(ValueError, match="stretch must be one of"):
      aligners.fit(name, None, aligners.AlignData(pairs_x=px, pairs_y=py), stretch=True)


def test_cluster_base_keeps_the_pairs_nearest_to_kmeans_centroids(problem):
  px, py, xq, yq, _ = problem
  data = aligners.AlignData(pairs_x=px, pairs_y=py)
  key = jax.random.key(5)
  a = aligners.fit("relative", key, data, center="none", base="cluster", n_base=_M, cluster_side="y")
  idx = np.asarray(matching.kmeans_base_selection(py, _M, key=key, n_iter=50))
  np.testing.assert_allclose(np.asarray(a.anchors_x), px[idx])
  np.testing.assert_allclose(np.asarray(a.similarity(xq, yq)),
                             np.asarray(matching.relative_scores(px[idx], py[idx], xq, yq)), atol=1e-5)
  capped = aligners.fit("relative", key, data, base="cluster", n_base=10 * _P)  # n_base is capped at p
  assert capped.anchors_x.shape == (_P, _DX)
  with pytest.raises(ValueError, match="n_base=5 is for base='cluster'"):
    aligners.fit("relative", None, data, n_base=5)
  with pytest.raises(ValueError, match="base='cluster' needs n_base"):
    aligners.fit("local_cka", key, data, base="cluster")
  with pytest.raises(ValueError, match="needs a PRNG key"):
    aligners.fit("ridge", None, data, base="cluster", n_base=_M)
  with pytest.raises(ValueError, match="base must be one of"):
    aligners.fit("relative", None, data, base="random")
