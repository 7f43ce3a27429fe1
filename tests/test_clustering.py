"""Tests of sotalign_jax.clustering (the library's one k-means) against plain NumPy loops and planted clusters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sotalign_jax import clustering, matching
from sotalign_jax.aligners import unpaired


def _np_lloyd(x, c, n_iter):
  """Lloyd's iterations as written: nearest centre, then the mean of its rows (an emptied centre stays)."""
  for _ in range(n_iter):
    lab = np.argmin(((x[:, None] - c[None]) ** 2).sum(2), 1)
    c = np.stack([x[lab == j].mean(0) if np.any(lab == j) else c[j] for j in range(len(c))])
  return c


def _planted(rng, k=5, per=40, d=8):
  means = 30.0 * rng.standard_normal((k, d))  # far apart: D² sampling lands in a new cluster almost surely
  x = np.concatenate([m + rng.standard_normal((per, d)) for m in means]).astype(np.float32)
  return x, means


def test_lloyd_matches_numpy(rng):
  x = rng.standard_normal((120, 6)).astype(np.float32)
  c0 = x[:7].copy()
  got = np.asarray(jax.jit(lambda a, c: clustering.lloyd(a, c, 10))(x, c0))
  np.testing.assert_allclose(got, _np_lloyd(x.astype(np.float64), c0.astype(np.float64), 10), atol=1e-5)


def test_lloyd_stopped_at_its_fixed_point_gives_the_centres_of_all_iterations(rng):
  # the loop stops once an iteration repeats the assignment before it; the reference runs all 200 iterations,
  # alone and under vmap (where members that stop early must keep their centres while the others go on)
  x = rng.standard_normal((300, 5)).astype(np.float32)
  starts = np.stack([x[rng.choice(300, 9, replace=False)] for _ in range(4)])
  ref = np.stack([_np_lloyd(x.astype(np.float64), c.astype(np.float64), 200) for c in starts])
  one = np.asarray(jax.jit(lambda c: clustering.lloyd(x, c, 200))(starts[0]))
  many = np.asarray(jax.jit(jax.vmap(lambda c: clustering.lloyd(x, c, 200)))(starts))
  np.testing.assert_allclose(one, ref[0], atol=1e-5)
  np.testing.assert_allclose(many, ref, atol=1e-5)


@pytest.mark.parametrize("init", clustering.INITS)
def test_kmeans_finds_planted_clusters(rng, init):
  x, means = _planted(rng)
  cent = np.asarray(jax.jit(lambda a, k: clustering.kmeans(a, k, 5, n_iter=20, init=init))(x, jax.random.key(1)))
  nearest = np.linalg.norm(cent[:, None] - means[None], axis=2).min(1)
  if init == "k-means++":  # its spread-out seeds find every cluster; random seeds may share one
    assert nearest.max() < 1.0 and len(set(np.argmin(np.linalg.norm(cent[:, None] - means[None], axis=2), 1))) == 5
  assert np.median(nearest) < 1.0


def test_kmeans_plus_plus_draws_its_seeds_from_the_rows_in_one_random_call(rng):
  x = rng.standard_normal((50, 3)).astype(np.float32)
  key = jax.random.key(2)
  seeds = np.asarray(clustering.kmeans_plus_plus(x, key, 6))
  assert all(np.any(np.all(x == s, axis=1)) for s in seeds) and len({tuple(s) for s in seeds}) == 6
  u = jax.random.uniform(key, (6, clustering.kpp_trials(6)))
  np.testing.assert_array_equal(seeds, np.asarray(clustering.kmeans_plus_plus_from_uniforms(jnp.asarray(x), u)))
  with pytest.raises(ValueError, match="init"):
    clustering.kmeans(jnp.asarray(x), key, 3, init="kmeans||")


def test_the_callers_use_this_kmeans(rng):
  """One implementation: the unpaired aligners' k-means and matching's base selection are this module's."""
  assert unpaired.kmeans is clustering.kmeans and unpaired.lloyd is clustering.lloyd
  x, _ = _planted(rng)
  key = jax.random.key(3)
  idx = np.asarray(matching.kmeans_base_selection(x, 5, key=key, n_iter=20))
  cent = np.asarray(clustering.kmeans(jnp.asarray(x), key, 5, n_iter=20, init="random"))
  d = ((cent[:, None] - x[None]) ** 2).sum(2)
  used = set()
  for row in d:  # each centroid's nearest point not already taken
    i = int(np.argmin(np.where(np.isin(np.arange(len(x)), list(used)), np.inf, row)))
    used.add(i)
    assert i == idx[len(used) - 1]
