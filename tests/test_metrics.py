"""Retrieval metrics against a plain argsort written here."""

import numpy as np
import pytest

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
  with pytest.raises(ValueError, match="positives indices"):
    metrics.retrieval_recall(q, q, positives=np.array([0, 1, 2, 3, 9]))
  with pytest.raises(ValueError, match="labels"):
    metrics.zero_shot_accuracy(q, q[:2], np.array([0, 1, 2, 0, 0]))
