"""Tests of sotalign_jax.losses against plain numpy written here."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sotalign_jax import losses


def unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def np_siglip(img, txt, t_log, bias):
  n = img.shape[0]
  total = 0.0
  for i in range(n):
    for j in range(n):
      logit = math.exp(t_log) * float(unit(img)[i] @ unit(txt)[j]) + bias
      z = 1.0 if i == j else -1.0
      total += -math.log(1.0 / (1.0 + math.exp(-z * logit)))
  return total / n


def np_info_nce(a, b, tau):
  s = unit(a) @ unit(b).T / tau
  n = s.shape[0]
  row = [-(s[i, i] - math.log(np.exp(s[i]).sum())) for i in range(n)]
  col = [-(s[i, i] - math.log(np.exp(s[:, i]).sum())) for i in range(n)]
  return 0.5 * (np.mean(row) + np.mean(col))


def np_structure(x, z, tau, levels):
  def walk(e):
    s = unit(e) @ unit(e).T / tau
    p = np.exp(s - s.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)

  px, pz = walk(x), walk(z)
  out = []
  wx, wz = px, pz
  for level in range(levels):
    if level:
      wx, wz = wx @ px, wz @ pz
    m = 0.5 * (wx + wz)
    js = 0.5 * (wx * np.log(wx / m)).sum(1) + 0.5 * (wz * np.log(wz / m)).sum(1)
    out.append(js.mean())
  return float(np.mean(out))


@pytest.mark.parametrize("t_log, bias", [(losses.SIGLIP_INIT_T_LOG, losses.SIGLIP_INIT_BIAS), (1.3, -2.0)])
def test_siglip_matches_numpy(rng, t_log, bias):
  img, txt = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  val = losses.siglip_loss(jnp.asarray(img), jnp.asarray(txt), t_log=t_log, bias=bias)
  assert float(val) == pytest.approx(np_siglip(img, txt, t_log, bias), rel=1e-5)


def test_siglip_init_values_are_the_papers():
  assert math.exp(losses.SIGLIP_INIT_T_LOG) == pytest.approx(10.0)
  assert losses.SIGLIP_INIT_BIAS == -10.0


def test_siglip_gradients_reach_temperature_and_bias(rng):
  img, txt = jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=(4, 3)))
  g_t, g_b = jax.grad(lambda t, b: losses.siglip_loss(img, txt, t_log=t, bias=b), argnums=(0, 1))(1.0, -1.0)
  h = 1e-3
  loss_at = lambda b: losses.siglip_loss(img, txt, t_log=1.0, bias=b)
  fd_b = loss_at(-1.0 + h) - loss_at(-1.0 - h)
  assert float(g_b) == pytest.approx(float(fd_b) / (2 * h), rel=1e-2)
  assert np.isfinite(float(g_t))


@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_info_nce_matches_numpy(rng, tau):
  a, b = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
  assert float(losses.info_nce(jnp.asarray(a), jnp.asarray(b), temperature=tau)) == pytest.approx(
      np_info_nce(a, b, tau), rel=1e-5)


def test_info_nce_perfect_pairs_beat_shuffled(rng):
  a = rng.normal(size=(8, 16))
  good = losses.info_nce(a, a, temperature=0.1)
  bad = losses.info_nce(a, a[::-1], temperature=0.1)
  assert float(good) < float(bad)


@pytest.mark.parametrize("levels", [1, 3])
def test_structure_matches_numpy(rng, levels):
  x, z = rng.normal(size=(9, 6)), rng.normal(size=(9, 4))
  val = losses.structure_regularizer(jnp.asarray(x), jnp.asarray(z), temperature=0.5, levels=levels)
  assert float(val) == pytest.approx(np_structure(x, z, 0.5, levels), rel=1e-4)
  assert 0.0 <= float(val) <= math.log(2)


def test_structure_is_zero_for_same_geometry_and_has_no_raw_gradient(rng):
  x = rng.normal(size=(6, 5))
  rot, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  assert float(losses.structure_regularizer(x, 3.0 * x @ rot, temperature=0.1)) == pytest.approx(0.0, abs=1e-6)
  gx, gz = jax.grad(lambda a, b: losses.structure_regularizer(a, b, temperature=0.3), argnums=(0, 1))(
      jnp.asarray(x), jnp.asarray(rng.normal(size=(6, 3))))
  assert not np.any(np.asarray(gx))
  assert np.all(np.isfinite(np.asarray(gz))) and np.any(np.asarray(gz))


@pytest.mark.parametrize("call, match", [
    (lambda: losses.siglip_loss(np.ones((3, 2)), np.ones((4, 2)), t_log=0.0, bias=0.0), "batch size"),
    (lambda: losses.siglip_loss(np.ones((3, 2)), np.ones((3, 5)), t_log=0.0, bias=0.0), "dimension"),
    (lambda: losses.siglip_loss(np.ones(3), np.ones(3), t_log=0.0, bias=0.0), r"\[n, d\]"),
    (lambda: losses.info_nce(np.ones((3, 2)), np.ones((3, 2)), temperature=0.0), "temperature"),
    (lambda: losses.structure_regularizer(np.ones((3, 2)), np.ones((4, 2)), temperature=0.1), "batch size"),
    (lambda: losses.structure_regularizer(np.ones((3, 2)), np.ones((3, 2)), temperature=0.1, levels=0), "levels"),
])
def test_losses_reject_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()
