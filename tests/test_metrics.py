"""Retrieval metrics against a plain argsort written here."""

import jax
import numpy as np
import pytest
from jax.experimental import checkify

from sotalign_jax import metrics


def ranks_ref(q, g, pos_sets):
  q = q / np.linalg.norm(q, axis=1, keepdims=True)
  g = g / np.linalg.norm(g, axis=1, keepdims=True)
  s = q @ g.T
  out = []
  for i in range(len(q)):
    order = np.argsort(-s[i], kind="stable")
    out.append(min(int(np.where(order == p)[0][0]) for p in pos_sets[i]))
  return np.array(out)


def test_recall_and_median_rank_one_to_one(rng):
  q = rng.normal(size=(60, 8))
  g = q + 1.2 * rng.normal(size=(60, 8))
  ref = ranks_ref(q, g, [[i] for i in range(60)])
  np.testing.assert_array_equal(metrics.positive_ranks(q, g, chunk=7), ref)
  rec = metrics.retrieval_recall(q, g, ks=(1, 5, 10))
  assert rec == {f"r{k}": float(np.mean(ref < k)) for k in (1, 5, 10)}
  assert metrics.median_rank(q, g) == float(np.median(ref + 1))


def test_several_positives_per_query(rng):
  images = rng.normal(size=(10, 6))
  captions = np.repeat(images, 3, axis=0) + 0.8 * rng.normal(size=(30, 6))
  owner = np.repeat(np.arange(10), 3)
  pos = [list(np.where(owner == i)[0]) for i in range(10)]
  ref = ranks_ref(images, captions, pos)
  np.testing.assert_array_equal(metrics.positive_ranks(images, captions, positives=pos), ref)
  mask = owner[None, :] == np.arange(10)[:, None]
  np.testing.assert_array_equal(metrics.positive_ranks(images, captions, positives=mask), ref)
  # text -> image: one positive per caption, given as indices
  ref_t = ranks_ref(captions, images, [[o] for o in owner])
  np.testing.assert_array_equal(metrics.positive_ranks(captions, images, positives=owner), ref_t)


def test_zero_shot_accuracy(rng):
  classes = rng.normal(size=(4, 5))
  labels = rng.integers(0, 4, size=50)
  imgs = classes[labels] + 0.9 * rng.normal(size=(50, 5))
  c = classes / np.linalg.norm(classes, axis=1, keepdims=True)
  i = imgs / np.linalg.norm(imgs, axis=1, keepdims=True)
  assert metrics.zero_shot_accuracy(imgs, classes, labels) == np.mean(np.argmax(i @ c.T, 1) == labels)


def test_bad_input(rng):
  q = rng.normal(size=(5, 3))
  with pytest.raises(ValueError, match="same length"):
    metrics.retrieval_recall(q, q[:4])
  with pytest.raises(ValueError, match="embedding dimension"):
    metrics.retrieval_recall(q, q[:, :2])
  with pytest.raises(ValueError, match="NaN"):
    metrics.retrieval_recall(np.full_like(q, np.nan), q)
  with pytest.raises(ValueError, match="indices must lie in"):
    metrics.retrieval_recall(q, q, positives=np.array([0, 1, 2, 3, 9]))
  with pytest.raises(ValueError, match="labels"):
    metrics.zero_shot_accuracy(q, q[:2], np.array([0, 1, 2, 0, 0]))


def test_index_positives_equal_the_mask_and_precision_default_is_close(rng):
  q = rng.normal(size=(40, 8))
  g = rng.normal(size=(50, 8))
  idx = rng.integers(0, 50, size=40)
  mask = np.zeros((40, 50), bool)
  mask[np.arange(40), idx] = True
  ref = ranks_ref(q, g, [[i] for i in idx])
  np.testing.assert_array_equal(metrics.positive_ranks(q, g, positives=idx, chunk=16), ref)
  np.testing.assert_array_equal(metrics.positive_ranks(q, g, positives=mask, chunk=16), ref)
  np.testing.assert_array_equal(metrics.positive_ranks(q, g, positives=idx, precision=jax.lax.Precision.DEFAULT), ref)
  assert metrics.zero_shot_accuracy(q, g[:4], idx % 4, precision=jax.lax.Precision.DEFAULT) == \
      metrics.zero_shot_accuracy(q, g[:4], idx % 4)


def test_nan_raises_for_numpy_and_concrete_jax_arrays_and_only_under_checkify_when_jitted(rng):
  """One rule (sotalign_jax._arrays) for the traceable metrics: NumPy and concrete jax arrays raise the same error;
  a jitted call is not checked unless wrapped with checkify."""
  q = rng.normal(size=(5, 3))
  bad = np.full_like(q, np.nan).astype(np.float32)
  for arg in (bad, jax.device_put(bad)):
    with pytest.raises(ValueError, match="queries contains NaN or Inf in 5 rows"):
      metrics.positive_ranks(arg, q)
  assert jax.jit(metrics.positive_ranks)(bad, q).shape == (5,)  # NaN scores are never above the positive's
  err, _ = checkify.checkify(jax.jit(metrics.retrieval_recall))(bad, q)
  with pytest.raises(checkify.JaxRuntimeError, match="queries contains NaN or Inf"):
    err.throw()


def test_traceable_metrics_under_jit_equal_the_eager_call(rng):
  """positive_ranks, retrieval_recall, median_rank and zero_shot_accuracy trace: host numbers eagerly, the same
  values as jax.Arrays under jit, with positives given as host data (closed over) or as traced index arrays."""
  images = rng.normal(size=(12, 6)).astype(np.float32)
  captions = (np.repeat(images, 3, axis=0) + 0.9 * rng.normal(size=(36, 6))).astype(np.float32)
  owner = np.repeat(np.arange(12), 3)
  lists = [list(np.where(owner == i)[0]) for i in range(12)]
  padded = metrics.positive_lists(lists, 12, 36)

  want = metrics.retrieval_recall(images, captions, positives=lists, ks=(1, 5))
  assert all(isinstance(v, float) for v in want.values())
  got = jax.jit(lambda a, b: metrics.retrieval_recall(a, b, positives=lists, ks=(1, 5)))(images, captions)
  assert all(isinstance(v, jax.Array) and v.shape == () for v in got.values())
  assert {k: float(v) for k, v in got.items()} == pytest.approx(want, rel=1e-6)  # float32 under jit
  got = jax.jit(lambda a, b, p: metrics.retrieval_recall(a, b, positives=p, ks=(1, 5)))(images, captions, padded)
  assert {k: float(v) for k, v in got.items()} == pytest.approx(want, rel=1e-6)  # float32 under jit

  ranks = metrics.positive_ranks(captions, images, positives=owner, chunk=7)
  np.testing.assert_array_equal(jax.jit(lambda a, b, p: metrics.positive_ranks(a, b, positives=p, chunk=7))(
      captions, images, owner), ranks)
  assert float(jax.jit(lambda a, b: metrics.median_rank(a, b, positives=owner))(captions, images)) == \
      pytest.approx(metrics.median_rank(captions, images, positives=owner), rel=1e-6)
  assert float(jax.vmap(lambda a: metrics.retrieval_recall(a, images, positives=owner)["r1"])(captions[None])[0]) == \
      pytest.approx(metrics.retrieval_recall(captions, images, positives=owner)["r1"], rel=1e-6)

  labels = owner % 4
  want = metrics.zero_shot_accuracy(captions, images[:4], labels)
  assert float(jax.jit(metrics.zero_shot_accuracy)(captions, images[:4], labels)) == pytest.approx(want, rel=1e-6)
  with pytest.raises(ValueError, match="traced `positives` must be int"):
    jax.jit(lambda a, b, m: metrics.positive_ranks(a, b, positives=m))(images, captions, padded >= 0)


@pytest.mark.parametrize("name, call", [
    ("partner_ranks", lambda s: metrics.partner_ranks(s)),
    ("per_query_metrics", lambda s: metrics.per_query_metrics(s)),
    ("retrieval_metrics", lambda s: metrics.retrieval_metrics(s)),
    ("foscttm_per_query", lambda s: metrics.foscttm_per_query(s)),
    ("foscttm", lambda s: metrics.foscttm(s)),
    ("matching_hits", lambda s: metrics.matching_hits(s)),
    ("matching_accuracy", lambda s: metrics.matching_accuracy(s)),
    ("positive_lists", lambda s: metrics.positive_lists(s > 0, 6, 6)),
])
def test_host_side_drivers_say_so_under_jit(rng, name, call):
  """The documented host-side drivers work eagerly and raise a TypeError naming themselves under jit."""
  s = rng.normal(size=(6, 6)).astype(np.float32) + 3 * np.eye(6, dtype=np.float32)
  call(s)
  with pytest.raises(TypeError, match=r"metrics\.\w+ is a host-side driver"):
    jax.jit(call)(s)


def test_positive_lists_are_padded_indices_not_a_dense_mask(rng):
  """Several positives per query travel as [nq, k_max] index lists (never an [nq, ng] mask): the same ranks and tie
  counts as the mask, repeats ignored, -1 padding."""
  q, g = rng.normal(size=(30, 4)), rng.normal(size=(70, 4))
  lists = [sorted(rng.choice(70, size=1 + i % 4, replace=False).tolist()) for i in range(30)]
  idx = metrics.positive_lists([row + row[:1] for row in lists], 30, 70)  # a repeated index counts once
  assert idx.shape == (30, 4) and idx.dtype == np.int32
  assert [r[r >= 0].tolist() for r in idx] == lists
  mask = np.zeros((30, 70), bool)
  for i, row in enumerate(lists):
    mask[i, row] = True
  np.testing.assert_array_equal(metrics.positive_ranks(q, g, positives=lists, chunk=7),
                                metrics.positive_ranks(q, g, positives=mask, chunk=7))
  sim = np.round(q @ g.T, 1)  # many ties
  by_list = metrics.per_query_metrics(sim, positives=lists, chunk=8)
  by_mask = metrics.per_query_metrics(sim, positives=mask)
  for k in by_list:
    np.testing.assert_allclose(by_list[k], by_mask[k])
  # plain numpy: ties among the negatives of the best positive, counted half
  best = np.array([sim[i, row].max() for i, row in enumerate(lists)])
  neg = ~mask
  ref = 1 + (neg & (sim > best[:, None])).sum(1) + 0.5 * (neg & (sim == best[:, None])).sum(1)
  np.testing.assert_allclose(by_list["rank"], ref)
