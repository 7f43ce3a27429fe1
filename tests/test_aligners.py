"""Tests of sotalign_jax.aligners: each method against a plainly written NumPy reference, the registry, pytrees,
and a planted two-view case where every method must beat chance by far."""

import dataclasses

import jax
import numpy as np
import pytest

from sotalign_jax import aligners, metrics, teachers

_K, _DX, _DY = 6, 20, 14
# trained methods: test_trained_aligners.py; zero-pair ones (min_pairs = 0): test_unpaired_aligners.py; transductive
# ones (qap: similarity matches two equal-size sets, eagerly, and returns 0/1 scores): test_match_aligners.py
TRANSDUCTIVE = sorted(m for m, spec in aligners.ALIGNERS.items() if spec.transductive)
CLOSED_FORM = sorted(m for m, spec in aligners.ALIGNERS.items()
                     if not spec.trained and spec.needs_pairs and not spec.transductive)
ZERO_PAIR = sorted(m for m, spec in aligners.ALIGNERS.items() if not spec.needs_pairs)


def _views(rng, n, a, b, noise=0.3):
  """Two noisy linear views of a shared latent, with different offsets (so centring matters)."""
  z = rng.standard_normal((n, a.shape[0]))
  x = z @ a + noise * rng.standard_normal((n, a.shape[1])) + 2.0
  y = z @ b + noise * rng.standard_normal((n, b.shape[1])) - 1.0
  return x.astype(np.float32), y.astype(np.float32)


@pytest.fixture(scope="module")
def planted():
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((_K, _DX)), rng.standard_normal((_K, _DY))
  px, py = _views(rng, 60, a, b)
  ux, _ = _views(rng, 200, a, b)
  _, uy = _views(rng, 200, a, b)  # independent of ux: unpaired
  tx, ty = _views(rng, 150, a, b)
  return aligners.AlignData(ux, uy, px, py), tx, ty


def _unit(a):
  return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _cos(u, v):
  return _unit(u) @ _unit(v).T


def _np_pre(data, center, normalize):
  """Reference preprocessing in float64: the side means and the preprocessed pairs."""
  x, y, px, py = (np.asarray(v, np.float64) for v in data)
  if center == "all":
    mx, my = np.vstack([x, px]).mean(0), np.vstack([y, py]).mean(0)
  elif center == "pairs":
    mx, my = px.mean(0), py.mean(0)
  else:
    mx, my = np.zeros(px.shape[1]), np.zeros(py.shape[1])
  f = _unit if normalize else (lambda v: v)
  return mx, my, f(px - mx), f(py - my), f


# ----------------------------------------------------------------------------------------------------------------
# Independent references.
# ----------------------------------------------------------------------------------------------------------------
# p < dx: the minimum-norm solution of an underdetermined system; p > dx: the least-squares solution.
@pytest.mark.parametrize("center,normalize,p", [("pairs", False, 8), ("all", True, 40)])
def test_lstsq_matches_numpy_pinv_and_lstsq(planted, center, normalize, p):
  data, tx, ty = planted
  data = data._replace(pairs_x=data.pairs_x[:p], pairs_y=data.pairs_y[:p])
  mx, my, xh, yh, f = _np_pre(data, center, normalize)
  w = np.linalg.pinv(xh) @ yh
  np.testing.assert_allclose(w, np.linalg.lstsq(xh, yh, rcond=None)[0], atol=1e-8)  # the two numpy routes agree
  a = aligners.fit("lstsq", None, data, center=center, normalize=normalize)
  np.testing.assert_allclose(np.asarray(a.wx), w, atol=2e-3 * np.abs(w).max())
  np.testing.assert_allclose(np.asarray(a.mx), mx, atol=1e-5)
  np.testing.assert_allclose(np.asarray(a.similarity(tx, ty)), _cos(f(tx - mx) @ w, f(ty - my)), atol=2e-3)


def _np_asif(q, anchors, k, power, clip):
  """ASIF's relative representation, row by row: cosines, keep the top k, (clip,) power, normalise."""
  out = np.zeros((q.shape[0], anchors.shape[0]))
  k = min(k, anchors.shape[0])
  for i in range(q.shape[0]):
    c = np.array([q[i] @ a / (np.linalg.norm(q[i]) * np.linalg.norm(a)) for a in anchors])
    keep = np.argsort(-c)[:k]
    r = np.zeros_like(c)
    r[keep] = c[keep]
    if clip:
      r = np.maximum(r, 0.0)
    r = r**power
    out[i] = r / max(np.linalg.norm(r), 1e-12)
  return out


@pytest.mark.parametrize("k,power,clip", [(10, 8, True), (800, 8, True), (800, 2, False)])
def test_asif_matches_numpy_definition(planted, k, power, clip):
  data, tx, ty = planted
  mx, my, ax, ay, _ = _np_pre(data, "all", False)
  a = aligners.fit("asif", None, data, k=k, power=power, clip_negative=clip)
  assert a.k == min(k, data.n_pairs)
  rx, ry = _np_asif(tx - mx, ax, k, power, clip), _np_asif(ty - my, ay, k, power, clip)
  np.testing.assert_allclose(np.asarray(a.similarity(tx, ty)), rx @ ry.T, atol=1e-4)
  if k == 10:
    np.testing.assert_allclose(np.asarray(a.embed_x(tx)), rx, atol=1e-4)
    assert (np.asarray(a.embed_x(tx)) > 0).sum(1).max() <= 10  # at most k non-zeros per row


def test_asif_defaults_are_the_papers():
  spec = aligners.ALIGNERS["asif"]
  assert spec.defaults["k"] == 800 and spec.defaults["power"] == 8


def test_relative_matches_numpy(planted):
  data, tx, ty = planted
  mx, my, ax, ay, _ = _np_pre(data, "all", False)
  a = aligners.fit("relative", None, data)
  want = _cos(_cos(tx - mx, ax), _cos(ty - my, ay))
  np.testing.assert_allclose(np.asarray(a.similarity(tx, ty)), want, atol=1e-4)
  raw = aligners.fit("relative", None, data, center="none")  # = matching.relative_scores
  want = _cos(_cos(tx, data.pairs_x), _cos(ty, data.pairs_y))
  np.testing.assert_allclose(np.asarray(raw.similarity(tx, ty)), want, atol=1e-4)


def _np_cka(k, l):
  n = k.shape[0]
  h = np.eye(n) - 1.0 / n
  kc, lc = h @ k @ h, h @ l @ h
  return np.sum(kc * lc) / np.sqrt(np.sum(kc * kc) * np.sum(lc * lc))


def test_local_cka_matches_bordered_cka(planted):
  data, tx, ty = planted
  a = aligners.fit("local_cka", None, data)
  x, y, px, py = (np.asarray(v, np.float64) for v in data)
  sx, sy = np.vstack([x, px]).std(0, ddof=1), np.vstack([y, py]).std(0, ddof=1)
  raw = aligners.fit("local_cka", None, data, stretch="none")
  for al, (fx, fy) in ((a, (sx, sy)), (raw, (1.0, 1.0))):
    got = np.asarray(al.similarity(tx, ty))
    bx, by = px / fx, py / fy
    for i in range(5):
      kx = np.vstack([bx, tx[i] / fx])
      for j in range(4):
        ky = np.vstack([by, ty[j] / fy])
        np.testing.assert_allclose(got[i, j], _np_cka(kx @ kx.T, ky @ ky.T), atol=1e-4)
  with pytest.raises(NotImplementedError, match="similarity"):
    a.embed_x(tx)
  assert not a.has_embeddings


@pytest.mark.parametrize("name", ["ridge", "procrustes", "cca"])
def test_teacher_wrappers_reproduce_teachers_fit(planted, name):
  data, tx, ty = planted
  # CCA: the 6 planted canonical pairs; within them the correlations are near-degenerate, so the basis may rotate
  # (jointly on both sides) between float32 solvers — the cosine scores are invariant to that rotation.
  opts = {"dim": _K} if name == "cca" else {}
  a = aligners.fit(name, None, data, center="pairs", normalize=False, **opts)
  t = jax.jit(lambda x, y: teachers.fit(name, x, y, **opts))(data.pairs_x, data.pairs_y)
  np.testing.assert_allclose(np.asarray(a.mx), np.asarray(t.mx), atol=1e-5)
  np.testing.assert_allclose(np.asarray(a.my), np.asarray(t.my), atol=1e-5)
  if name == "cca":
    ex, ey = (tx - np.asarray(t.mx)) @ np.asarray(t.wx), (ty - np.asarray(t.my)) @ np.asarray(t.wy)
    np.testing.assert_allclose(np.asarray(a.similarity(tx, ty)), _cos(ex, ey), atol=2e-4)
  else:  # maps from x into y-space: the same W (and the identity on y)
    assert a.wy is None
    np.testing.assert_allclose(np.asarray(a.wx), np.asarray(t.wx), atol=1e-3 * np.abs(np.asarray(t.wx)).max())


def test_cca_dim_is_capped_by_pairs(planted):
  data, tx, _ = planted
  few = data._replace(pairs_x=data.pairs_x[:5], pairs_y=data.pairs_y[:5])
  shape = lambda d, **kw: jax.eval_shape(lambda d: aligners.fit("cca", None, d, **kw).embed_x(tx), d).shape  # noqa
  assert shape(few, dim=64) == (150, 4)   # min(p - 1, dx, dy)
  assert shape(data, dim=3) == (150, 3)
  assert shape(data) == (150, _DY)


# ----------------------------------------------------------------------------------------------------------------
# Every method on the planted case.
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CLOSED_FORM)
def test_every_method_beats_chance_on_planted_views(planted, name):
  data, tx, ty = planted
  a = aligners.fit(name, jax.random.key(0), data)
  m = metrics.retrieval_metrics(np.asarray(a.similarity(tx, ty)))
  n = tx.shape[0]
  assert m["r1"] > 15 / n and m["r10"] > 0.5, (name, m)  # chance: 1 / 150 and 10 / 150
  assert m["foscttm"] < 0.1, (name, m)       # chance: 0.5


def test_alignments_are_pytrees_with_static_options(planted):
  data, tx, ty = planted
  a = aligners.fit("asif", None, data)
  leaves, treedef = jax.tree_util.tree_flatten(a)
  assert all(isinstance(v, jax.Array) for v in leaves) and len(leaves) == 4
  b = jax.tree_util.tree_unflatten(treedef, leaves)
  assert (b.k, b.power, b.clip_negative) == (60, 8, True) and dataclasses.is_dataclass(b)
  # it passes through a user's jit (options static, arrays traced) and gives the same scores
  jitted = jax.jit(lambda al, q, k: al.similarity(q, k))(a, tx, ty)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(a.similarity(tx, ty)), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Registry and data checks.
# ----------------------------------------------------------------------------------------------------------------
def test_registry_records_what_the_benchmark_needs():
  assert {"lstsq", "ridge", "procrustes", "cca", "local_cka", "relative", "asif"} <= set(aligners.ALIGNERS)
  for name, spec in aligners.ALIGNERS.items():
    assert spec.name == name and spec.citation
    assert (spec.min_pairs >= 1) == spec.needs_pairs == (name not in ZERO_PAIR)
    assert spec.all_pairs == (name == "upper_bound")
    assert not set(aligners.INJECTED) & set(spec.defaults)  # loop / mesh / val are passed, never tuned
    if name in CLOSED_FORM or name in TRANSDUCTIVE:
      assert not spec.uses_unpaired and not spec.trained
    elif name in ZERO_PAIR:
      assert spec.uses_unpaired and not spec.trained
    else:
      assert spec.uses_unpaired == (name not in ("sail", "upper_bound")), name
    assert callable(spec.fn) and isinstance(dict(spec.defaults), dict)
  assert aligners.ALIGNERS["lstsq"].defaults == {"center": "all", "normalize": True, "rtol": None}


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_too_few_pairs_raises_needs_pairs(planted, name):
  data, _, _ = planted
  spec = aligners.ALIGNERS[name]
  few = data._replace(pairs_x=data.pairs_x[:spec.min_pairs - 1], pairs_y=data.pairs_y[:spec.min_pairs - 1])
  with pytest.raises(aligners.NeedsPairsError, match="needs pairs"):
    aligners.fit(name, None, few)
  with pytest.raises(ValueError, match="needs pairs"):  # the same check when the fit function is called directly
    spec.fn(None, few)
  ok = data._replace(pairs_x=data.pairs_x[:spec.min_pairs], pairs_y=data.pairs_y[:spec.min_pairs])
  out = jax.eval_shape(lambda d: aligners.fit(name, None, d).similarity(data.x[:9], data.y[:7]), ok)  # traced only
  assert out.shape == (9, 7)


def test_fit_rejects_unknown_names_and_options(planted):
  data, _, _ = planted
  with pytest.raises(ValueError, match="unknown aligner 'nope'"):
    aligners.fit("nope", None, data)
  with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['lambda'\]"):
    aligners.fit("ridge", None, data, **{"lambda": 1.0})
  with pytest.raises(ValueError, match="center must be one of"):
    aligners.fit("lstsq", None, data, center="mean")


def test_align_data_checks_name_the_argument():
  x = np.zeros((3, 4), np.float32)
  with pytest.raises(ValueError, match="`pairs_x` and `pairs_y` must hold the same pairs"):
    aligners.check_data(aligners.AlignData(x, np.zeros((2, 5)), np.zeros((3, 4)), np.zeros((2, 5))))
  with pytest.raises(ValueError, match="`x` and `pairs_x` must share the feature size"):
    aligners.check_data(aligners.AlignData(x, np.zeros((2, 5)), np.zeros((2, 3)), np.zeros((2, 5))))
  with pytest.raises(ValueError, match="`pairs_y` contains NaN"):
    aligners.check_data(aligners.AlignData(x, np.zeros((2, 5)), np.zeros((1, 4)), np.full((1, 5), np.nan)))
  d = aligners.AlignData.create(pairs_x=np.ones((2, 4)), pairs_y=np.ones((2, 5)))
  assert d.x.shape == (0, 4) and d.y.shape == (0, 5) and d.n_pairs == 2 and d.dims == (4, 5)
  empty = aligners.AlignData.create(x=x, dy=5)
  assert empty.n_pairs == 0 and empty.pairs_y.shape == (0, 5)


def test_align_data_parts_left_out_are_empty(planted):
  """``AlignData(x=..., y=...)`` (the README's zero-pair call) and ``AlignData(pairs_x=..., pairs_y=...)``."""
  data, _, _ = planted
  unpaired = aligners.AlignData(x=data.x, y=data.y)
  assert unpaired.n_pairs == 0 and unpaired.dims == (data.x.shape[1], data.y.shape[1])
  checked = aligners.check_data(unpaired)
  assert checked.pairs_x.shape == (0, data.x.shape[1]) and checked.pairs_y.shape == (0, data.y.shape[1])
  with pytest.raises(aligners.NeedsPairsError, match="needs pairs"):  # reaches the method's own check
    aligners.fit("cca", None, unpaired)
  paired = aligners.AlignData(pairs_x=data.pairs_x, pairs_y=data.pairs_y)
  full = aligners.AlignData(np.zeros((0, data.x.shape[1]), np.float32), np.zeros((0, data.y.shape[1]), np.float32),
                            data.pairs_x, data.pairs_y)
  np.testing.assert_allclose(aligners.fit("procrustes", None, paired).embed_x(data.pairs_x),
                             aligners.fit("procrustes", None, full).embed_x(data.pairs_x), rtol=1e-6)
  with pytest.raises(ValueError, match="cannot infer dy: give one of y, pairs_y"):
    aligners.check_data(aligners.AlignData(x=data.x))


def test_queries_of_the_wrong_width_are_rejected(planted):
  data, tx, ty = planted
  a = aligners.fit("lstsq", None, data)
  with pytest.raises(ValueError, match=r"`y` must be a \[n, 14\] array"):
    a.similarity(tx, tx)
