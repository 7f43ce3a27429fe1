"""Tests of the benchmark statistics: sotalign_jax.stats against scipy and planted cases, and the tie-aware
retrieval / FOSCTTM / matching metrics appended to sotalign_jax.metrics against plain double loops."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from sotalign_jax import metrics, stats


# ----------------------------------------------------------------------------------------------------------------
# Student t.
# ----------------------------------------------------------------------------------------------------------------
def test_t_ppf_matches_scipy():
  for df in (1, 2, 3, 4, 5, 7, 10, 19, 30, 100, 1000, 0.7, 2.5):
    for q in (0.001, 0.025, 0.05, 0.3, 0.5, 0.8, 0.95, 0.975, 0.995, 0.9995):
      assert abs(stats.t_ppf(q, df) - scipy.stats.t.ppf(q, df)) < 1e-6, (q, df)
  for t in (-3.0, -0.2, 0.0, 1.5, 12.0):
    assert abs(stats.t_cdf(t, 4) - scipy.stats.t.cdf(t, 4)) < 1e-9
  with pytest.raises(ValueError, match="q must lie in"):
    stats.t_ppf(1.0, 3)
  with pytest.raises(ValueError, match="df must be"):
    stats.t_ppf(0.9, 0)


def test_seed_interval_matches_scipy_t_interval():
  v = np.array([0.112, 0.118, 0.104, 0.121, 0.109])
  for conf in (0.9, 0.95, 0.99):
    got = stats.seed_interval(v, confidence=conf)
    lo, hi = scipy.stats.t.interval(conf, len(v) - 1, loc=v.mean(), scale=scipy.stats.sem(v))
    assert got.n == 5 and math.isclose(got.mean, v.mean())
    assert abs(got.low - lo) < 1e-9 and abs(got.high - hi) < 1e-9
  one = stats.seed_interval([0.3])
  assert one.mean == 0.3 and math.isnan(one.low) and math.isnan(one.high) and one.n == 1
  with pytest.raises(ValueError, match="NaN"):
    stats.seed_interval([0.1, np.nan])
  with pytest.raises(ValueError, match="confidence"):
    stats.seed_interval(v, confidence=95)


def test_seed_interval_coverage():
  rng = np.random.default_rng(1)
  hits = [stats.seed_interval(rng.normal(0.5, 0.1, 5)).excludes(0.5) for _ in range(2000)]
  assert 0.035 < np.mean(hits) < 0.065  # exact t interval on normal data: 5% non-coverage


# ----------------------------------------------------------------------------------------------------------------
# Paired differences.
# ----------------------------------------------------------------------------------------------------------------
def test_paired_difference_detects_a_planted_gain():
  rng = np.random.default_rng(0)
  base = rng.random((5, 400)) < 0.3                  # method b's per-query hits
  gain = rng.random((5, 400)) < 0.08                 # a fixes 8% more queries, never breaks one
  a, b = (base | gain).astype(float), base.astype(float)
  r = stats.paired_difference(a, b, n_boot=500)
  assert r.excludes_zero and r.low > 0 and r.wins == 5 and r.n_seeds == 5
  assert r.low <= r.diff <= r.high and math.isclose(r.diff, float((a - b).mean()))
  np.testing.assert_allclose(r.per_seed, (a - b).mean(1))
  assert r.seed_interval.low > 0
  flipped = stats.paired_difference(b, a, n_boot=500)
  assert flipped.excludes_zero and flipped.high < 0 and flipped.wins == 0


def test_paired_difference_equal_methods_cover_zero():
  rng = np.random.default_rng(0)
  covered, n = 0, 40
  for _ in range(n):
    p = rng.uniform(0.1, 0.5, size=(5, 1))  # per-seed difficulty shared by both methods
    a, b = (rng.random((5, 300)) < p).astype(float), (rng.random((5, 300)) < p).astype(float)
    r = stats.paired_difference(a, b, n_boot=400, seed=int(rng.integers(1 << 30)))
    covered += not r.excludes_zero
  assert covered >= 0.85 * n, covered


def test_paired_difference_pairs_the_resample():
  # b = a + a constant shift on every query: the paired interval collapses onto the shift (an unpaired bootstrap
  # of the two means would be wide because a varies a lot across queries).
  rng = np.random.default_rng(0)
  a = rng.normal(size=(3, 200)) * 10
  r = stats.paired_difference(a, a - 0.01, n_boot=200)
  assert abs(r.low - 0.01) < 1e-9 and abs(r.high - 0.01) < 1e-9 and r.excludes_zero


@pytest.mark.parametrize("resample_seeds", [False, True])
def test_paired_difference_is_the_plain_paired_bootstrap_query_by_query(resample_seeds):
  """The replicates, written out: for each replicate (and seed) draw query indices once and average a[s, q] - b[s, q]
  over those *same* indices of both methods; the same draws as the library's generator (one block: the seed draws,
  then the query draws), so every number agrees. b is a smooth shift of a per query: pairing a with anything but
  its own query (a reversed b, b resampled on other indices) widens the interval many times."""
  rng = np.random.default_rng(1)
  n_seeds, n_q, n_boot, seed = 3, 40, 300, 7
  a = rng.normal(size=(n_seeds, n_q)) * 10                                 # large spread between queries
  b = a - np.linspace(0.0, 0.2, n_q) - rng.normal(size=(n_seeds, n_q)) * 0.01  # per-query shift of a
  r = stats.paired_difference(a, b, n_boot=n_boot, seed=seed, resample_seeds=resample_seeds)

  draw = np.random.default_rng(seed)
  seeds = draw.integers(0, n_seeds, size=(n_boot, n_seeds)) if resample_seeds else None
  queries = draw.integers(0, n_q, size=(n_boot, n_seeds, n_q))
  reps = np.empty(n_boot)
  for i in range(n_boot):
    per_seed = []
    for j in range(n_seeds):
      s, q = (seeds[i, j] if resample_seeds else j), queries[i, j]
      per_seed.append(np.mean([a[s, k] - b[s, k] for k in q]))            # a and b on the same seed and queries
    reps[i] = np.mean(per_seed)
  low, high = np.quantile(reps, [0.025, 0.975])
  np.testing.assert_allclose([r.low, r.high], [low, high], rtol=1e-12, atol=1e-12)
  want_per_seed = [np.mean([a[s, k] - b[s, k] for k in range(n_q)]) for s in range(n_seeds)]
  np.testing.assert_allclose(r.per_seed, want_per_seed, rtol=1e-12)
  assert math.isclose(r.diff, float(np.mean(want_per_seed)), rel_tol=1e-12)
  assert r.wins == sum(v > 0 for v in want_per_seed) == n_seeds
  if not resample_seeds:
    assert r.high - r.low < 0.1 and r.excludes_zero  # paired: the shift only (a's own spread cancels)
    assert stats.paired_difference(a, b[:, ::-1], n_boot=n_boot, seed=seed).high - r.low > 1.0  # unpaired: wide


def test_paired_difference_options_and_checks():
  rng = np.random.default_rng(0)
  shift = rng.normal(0, 0.05, size=(5, 1))  # a seed-level effect: only resampling seeds sees its spread
  a = rng.normal(size=(5, 200)) * 0.1 + shift
  b = rng.normal(size=(5, 200)) * 0.1
  q = stats.paired_difference(a, b, n_boot=300, seed=3)
  s = stats.paired_difference(a, b, n_boot=300, seed=3, resample_seeds=True)
  assert s.high - s.low > q.high - q.low
  again = stats.paired_difference(a, b, n_boot=300, seed=3)
  assert (again.low, again.high) == (q.low, q.high)  # deterministic given the seed
  one = stats.paired_difference(a[0], b[0], n_boot=100)
  assert one.n_seeds == 1 and math.isnan(one.seed_interval.low)
  with pytest.raises(ValueError, match="same seeds and queries"):
    stats.paired_difference(a, b[:, :10])
  with pytest.raises(ValueError, match="n_boot"):
    stats.paired_difference(a, b, n_boot=0)


# ----------------------------------------------------------------------------------------------------------------
# Metrics: plain double-loop references.
# ----------------------------------------------------------------------------------------------------------------
def _loop_counts(s, pos_mask):
  """(greater, tied, negatives) per query: a plain loop over keys."""
  out = []
  for i in range(s.shape[0]):
    best = max(s[i, j] for j in range(s.shape[1]) if pos_mask[i, j])
    g = t = n = 0
    for j in range(s.shape[1]):
      if pos_mask[i, j]:
        continue
      n += 1
      g += s[i, j] > best
      t += s[i, j] == best
    out.append((g, t, n))
  return np.array(out, float).T


def _loop_expected_hit(g, t, k):
  """P(rank <= k) when the true key is placed uniformly among its t tied rivals: enumerate the t + 1 positions."""
  return np.mean([g + pos + 1 <= k for pos in range(int(t) + 1)])


def test_foscttm_matches_double_loop_with_ties():
  rng = np.random.default_rng(0)
  s = rng.integers(0, 6, size=(40, 40)).astype(np.float32)  # many ties
  want_x = [(sum(s[i, j] > s[i, i] for j in range(40) if j != i)
             + 0.5 * sum(s[i, j] == s[i, i] for j in range(40) if j != i)) / 39 for i in range(40)]
  want_y = [(sum(s[i, j] > s[j, j] for i in range(40) if i != j)
             + 0.5 * sum(s[i, j] == s[j, j] for i in range(40) if i != j)) / 39 for j in range(40)]
  pq = metrics.foscttm_per_query(s, chunk=8)
  np.testing.assert_allclose(pq["x2y"], want_x)
  np.testing.assert_allclose(pq["y2x"], want_y)
  f = metrics.foscttm(s, chunk=8)
  assert math.isclose(f["x2y"], np.mean(want_x)) and math.isclose(f["y2x"], np.mean(want_y))
  assert math.isclose(f["mean"], 0.5 * (np.mean(want_x) + np.mean(want_y)))


def test_foscttm_from_embeddings_uses_cosine():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) * 3.0
  cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (y / np.linalg.norm(y, axis=1, keepdims=True)).T
  got, want = metrics.foscttm_per_query(x, y), metrics.foscttm_per_query(cos)
  np.testing.assert_allclose(got["x2y"], want["x2y"], atol=1e-9)
  np.testing.assert_allclose(got["y2x"], want["y2x"], atol=1e-9)
  assert metrics.foscttm(y * 0 + x, x)["mean"] == 0.0  # identical embeddings: every true match is closest


def test_per_query_metrics_match_loops_and_tie_breaking():
  rng = np.random.default_rng(0)
  s = rng.integers(0, 4, size=(25, 31)).astype(np.float32)
  partner = rng.integers(0, 31, size=25)
  mask = np.zeros((25, 31), bool)
  mask[np.arange(25), partner] = True
  g, t, n = _loop_counts(s, mask)
  pq = metrics.per_query_metrics(s, positives=partner, ks=(1, 3, 10), chunk=4)
  np.testing.assert_allclose(pq["rank"], 1 + g + 0.5 * t)
  np.testing.assert_allclose(pq["foscttm"], (g + 0.5 * t) / n)
  for k in (1, 3, 10):
    np.testing.assert_allclose(pq[f"r{k}"], [_loop_expected_hit(gi, ti, k) for gi, ti in zip(g, t)])
  np.testing.assert_allclose(metrics.partner_ranks(s, positives=partner, chunk=4), 1 + g + 0.5 * t)
  summary = metrics.retrieval_metrics(s, positives=partner, ks=(1, 3, 10), chunk=4)
  assert math.isclose(summary["mean_rank"], np.mean(1 + g + 0.5 * t))
  assert math.isclose(summary["median_rank"], np.median(1 + g + 0.5 * t))
  assert math.isclose(summary["r3"], pq["r3"].mean())


def test_constant_scores_give_chance_not_perfection():
  s = np.zeros((50, 50), np.float32)
  m = metrics.retrieval_metrics(s)
  assert math.isclose(m["r1"], 1 / 50) and math.isclose(m["r10"], 10 / 50)
  assert math.isclose(m["foscttm"], 0.5) and math.isclose(m["mean_rank"], 25.5)
  assert metrics.matching_accuracy(s) < 0.2  # not the identity a solver returns for a constant matrix


def test_multi_positive_recall_matches_existing_retrieval_recall():
  rng = np.random.default_rng(2)
  img, cap = rng.normal(size=(20, 8)), rng.normal(size=(60, 8))
  owner = rng.permutation(np.repeat(np.arange(20), 3))   # caption j belongs to image owner[j]
  cap += 2.0 * img[owner]
  positives = [list(np.flatnonzero(owner == i)) for i in range(20)]
  got = metrics.retrieval_metrics(img, cap, positives=positives, ks=(1, 5))
  want = metrics.retrieval_recall(img, cap, positives=positives, ks=(1, 5))  # continuous scores: no ties
  assert math.isclose(got["r1"], want["r1"]) and math.isclose(got["r5"], want["r5"])
  cos = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (cap / np.linalg.norm(cap, axis=1, keepdims=True)).T
  mask = np.zeros((20, 60), bool)
  for i, p in enumerate(positives):
    mask[i, p] = True
  g, t, n = _loop_counts(cos, mask)
  assert (n == 57).all()
  np.testing.assert_allclose(metrics.per_query_metrics(cos, positives=mask)["foscttm"], (g + 0.5 * t) / n)


def test_matching_matches_scipy_assignment():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(30, 30))
  partner = rng.permutation(30)
  s[np.arange(30), partner] += 1.5
  rows, cols = scipy.optimize.linear_sum_assignment(s, maximize=True)
  want = (cols[np.argsort(rows)] == partner).astype(float)
  np.testing.assert_array_equal(metrics.matching_hits(s, partner=partner), want)
  assert math.isclose(metrics.matching_accuracy(s, partner=partner, seed=5), want.mean())
  with pytest.raises(ValueError, match="square"):
    metrics.matching_accuracy(s[:, :20])
  with pytest.raises(ValueError, match="permutation"):
    metrics.matching_accuracy(s, partner=np.zeros(30, int))


def test_metric_input_checks_name_the_argument():
  with pytest.raises(ValueError, match="same length"):
    metrics.per_query_metrics(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="indices must lie in"):
    metrics.per_query_metrics(np.zeros((3, 4)), positives=np.array([0, 1, 4]))
  with pytest.raises(ValueError, match="`sim` contains NaN"):
    metrics.foscttm(np.full((3, 3), np.nan))
  s = jnp.asarray(np.where(np.eye(4, dtype=bool), np.nan, 0.5))  # device scores are not copied back to be checked:
  assert metrics.retrieval_metrics(s)["mean_rank"] == 4.0        # a NaN true score ranks last, never first
  with pytest.raises(ValueError, match="share the embedding dimension"):
    metrics.foscttm(np.zeros((3, 2)), np.zeros((3, 4)))
  with pytest.raises(ValueError, match="ks must be positive"):
    metrics.per_query_metrics(np.eye(3), ks=(0,))
