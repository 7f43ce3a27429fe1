"""sotalign_jax.cmcr against plainly written numpy: losses, soft retrieval, noise, projector, input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sotalign_jax import cmcr
from sotalign_jax.nn import projectors


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_spaces(seed=0, *, n_text=1500, n_memory=1200, n_eval=200, n_train=800, latent=6, d1=24, d2=20,
                noise=0.15, gap=0.8):
  """Two synthetic contrastive spaces with a hidden linear relation.

  Every item has a latent ``z``; space 1 embeds A and B as ``z R1`` plus a per-modality offset (the modality
  gap) and noise, space 2 embeds B' and C as ``z R2`` likewise. A-memory, C-memory, the texts and the
  evaluation pairs use independent latents, so A and C are only related through ``R1``, ``R2`` and the texts.
  """
  rng = np.random.default_rng(seed)
  r1, r2 = rng.normal(size=(latent, d1)), rng.normal(size=(latent, d2))
  g = {m: gap * unit(rng.normal(size=d)) * np.sqrt(latent) for m, d in (("a", d1), ("b", d1), ("bp", d2),
                                                                         ("c", d2))}
  emb = lambda z, r, m: unit(z @ r + g[m] + noise * np.sqrt(latent) * rng.normal(size=(len(z), r.shape[1])))
  z_text, z_eval, z_train = (rng.normal(size=(n, latent)) for n in (n_text, n_eval, n_train))
  f32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}
  return f32({
      "a_memory": emb(rng.normal(size=(n_memory, latent)), r1, "a"),
      "b": emb(z_text, r1, "b"), "b_prime": emb(z_text, r2, "bp"),
      "c_memory": emb(rng.normal(size=(n_memory, latent)), r2, "c"),
      "a_eval": emb(z_eval, r1, "a"), "c_eval": emb(z_eval, r2, "c"),
      "a_train": emb(z_train, r1, "a"), "c_train": emb(z_train, r2, "c"),
  })


# ------------------------------------------------------------------------------------------------------------
# Losses.
# ------------------------------------------------------------------------------------------------------------
def np_info_nce(a, b, t):
  n = len(a)
  total = 0.0
  for i in range(n):
    row = [a[i] @ b[j] / t for j in range(n)]
    col = [a[j] @ b[i] / t for j in range(n)]
    total += -(row[i] - np.log(np.sum(np.exp(row)))) - (col[i] - np.log(np.sum(np.exp(col))))
  return total / (2 * n)


def test_intra_alignment_and_objective_match_numpy(rng):
  zb, zbp, za, zc = (unit(rng.normal(size=(9, 4))).astype(np.float32) for _ in range(4))
  dist = lambda x, y: np.mean([np.sqrt(np.sum((x[i] - y[i]) ** 2)) for i in range(len(x))])
  np.testing.assert_allclose(cmcr.intra_alignment(zb, za), dist(zb, za), rtol=1e-5)
  out = cmcr.cmcr_objective(zb, zbp, za, zc, temperature=0.1, intra_weight=0.3, pseudo_weight=0.7)
  text, pseudo = np_info_nce(zb, zbp, 0.1), np_info_nce(za, zc, 0.1)
  intra = dist(zb, za) + dist(zbp, zc)
  np.testing.assert_allclose([out.text, out.pseudo, out.intra], [text, pseudo, intra], rtol=1e-5)
  np.testing.assert_allclose(out.total, text + 0.7 * pseudo + 0.3 * intra, rtol=1e-5)


def test_intra_alignment_rejects_misaligned_rows():
  with pytest.raises(ValueError, match="same shape"):
    cmcr.intra_alignment(jnp.ones((3, 2)), jnp.ones((3, 5)))


# ------------------------------------------------------------------------------------------------------------
# Semantic enhancement.
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [None, 4, 13])
def test_soft_retrieve_matches_a_loop(rng, chunk):
  q, m = unit(rng.normal(size=(13, 6))), unit(rng.normal(size=(20, 6)))
  tau = 0.1
  want = []
  for qi in q:
    s = np.array([qi @ mj / tau for mj in m])
    w = np.exp(s - s.max())
    w /= w.sum()
    v = sum(w[j] * m[j] for j in range(len(m)))
    want.append(v / np.linalg.norm(v))
  got = cmcr.soft_retrieve(jnp.asarray(q, jnp.float32), jnp.asarray(m, jnp.float32), temperature=tau,
                           chunk_size=chunk)
  np.testing.assert_allclose(got, np.array(want), atol=1e-5)


def test_soft_retrieve_at_low_temperature_is_the_nearest_neighbour(rng):
  q, m = unit(rng.normal(size=(10, 8))), unit(rng.normal(size=(30, 8)))
  got = cmcr.soft_retrieve(jnp.asarray(q, jnp.float32), jnp.asarray(m, jnp.float32), temperature=1e-4)
  np.testing.assert_allclose(got, m[np.argmax(q @ m.T, axis=1)], atol=1e-4)


def test_soft_retrieve_rejects_bad_input():
  with pytest.raises(ValueError, match="temperature"):
    cmcr.soft_retrieve(jnp.ones((2, 3)), jnp.ones((4, 3)), temperature=0.0)
  with pytest.raises(ValueError, match="share d"):
    cmcr.soft_retrieve(jnp.ones((2, 3)), jnp.ones((4, 5)), temperature=0.1)
  with pytest.raises(ValueError, match="memory is empty"):
    cmcr.soft_retrieve(jnp.ones((2, 3)), jnp.ones((0, 3)), temperature=0.1)


def test_semantic_noise_gives_unit_rows_at_the_expected_angle(rng):
  # For unit x and θ ~ N(0, σ² I_d) in high dimension, cos(x, x + θ) ≈ 1 / sqrt(1 + d σ²).
  d, var = 512, 0.004
  x = unit(rng.normal(size=(400, d))).astype(np.float32)
  out = np.asarray(cmcr.semantic_noise(jax.random.key(0), jnp.asarray(x), variance=var))
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.mean(np.sum(out * x, axis=1)), 1 / np.sqrt(1 + d * var), atol=0.01)
  same = np.asarray(cmcr.semantic_noise(jax.random.key(0), jnp.asarray(3 * x), variance=0.0))
  np.testing.assert_allclose(same, x, atol=1e-6)
  with pytest.raises(ValueError, match="variance"):
    cmcr.semantic_noise(jax.random.key(0), jnp.asarray(x), variance=-1.0)


# ------------------------------------------------------------------------------------------------------------
# Projector.
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("train", [True, False])
def test_projector_matches_numpy_forward(rng, train):
  f, v = projectors.init_projector(jax.random.key(1), 6, hidden=5, out=3)
  x = rng.normal(size=(16, 6)).astype(np.float32)
  p, s = v["params"], v["batch_stats"]

  def bn(h, scale, bias, stats):
    mean, var = (h.mean(0), h.var(0)) if train else (np.asarray(stats["mean"]), np.asarray(stats["var"]))
    return (h - mean) / np.sqrt(var + 1e-5) * np.asarray(scale) + np.asarray(bias)

  h = x @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"])
  h = np.maximum(bn(h, p["BatchNorm_0"]["scale"], p["BatchNorm_0"]["bias"], s["BatchNorm_0"]), 0)
  h = h @ np.asarray(p["Dense_1"]["kernel"]) + np.asarray(p["Dense_1"]["bias"])
  want = unit(bn(h, p["BatchNorm_1"]["scale"], p["BatchNorm_1"]["bias"], s["BatchNorm_1"]))
  if train:
    got, upd = f.apply(v, x, train=True, mutable=["batch_stats"])
    # running mean moves 10% of the way towards the batch mean (momentum 0.9)
    h0 = x @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"])
    np.testing.assert_allclose(upd["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * h0.mean(0), atol=1e-5)
  else:
    got = f.apply(v, x, train=False)
  np.testing.assert_allclose(got, want, atol=2e-4)


def test_init_projector_rejects_bad_sizes():
  with pytest.raises(ValueError, match="dim_in"):
    projectors.init_projector(jax.random.key(0), 0)
  with pytest.raises(ValueError, match="hidden"):
    projectors.init_projector(jax.random.key(0), 4, hidden=-1)


# ------------------------------------------------------------------------------------------------------------
# Input checks.
# ------------------------------------------------------------------------------------------------------------
def test_check_spaces_accepts_consistent_spaces():
  s = make_spaces(n_text=50, n_memory=40, n_eval=10, n_train=20)
  out = cmcr.check_spaces(**s)
  assert set(out) == set(s) and all(v.dtype == np.float32 for v in out.values())


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(b_prime=s["b_prime"][:-1]), "b has 50 rows but b_prime 49"),
    (lambda s: s.update(a_memory=s["a_memory"][:, :5]), "a_memory has dimension 5 but space 1"),
    (lambda s: s.update(c_eval=s["c_eval"][:, :5]), "c_eval has dimension 5 but space 2"),
    (lambda s: s.update(c_eval=s["c_eval"][:-2]), "a_eval has 10 rows but c_eval 8"),
    (lambda s: s["a_memory"].__setitem__((3, 1), np.nan), r"a_memory contains NaN or Inf in 1 row \(first: row 3\)"),
    (lambda s: s.update(b=s["b"][:0]), "b must be a non-empty"),
    (lambda s: s.update(c_memory=s["c_memory"][0]), "c_memory must be a non-empty \\[n, d\\]"),
    (lambda s: s.pop("c_train"), "a_train and c_train come together"),
])
def test_check_spaces_rejects_bad_input_naming_the_array(change, message):
  s = make_spaces(n_text=50, n_memory=40, n_eval=10, n_train=20)
  change(s)
  with pytest.raises(ValueError, match=message):
    cmcr.check_spaces(**s)


# ------------------------------------------------------------------------------------------------------------
# Projector heads and BatchNorm over both modalities of a space.
# ------------------------------------------------------------------------------------------------------------
def test_mlp_half_head_is_linear_batchnorm_relu_then_unit(rng):
  f, v = projectors.init_projector(jax.random.key(2), 6, hidden=99, out=5, kind="mlp_half")
  assert set(v["params"]) == {"Dense_0", "BatchNorm_0"}  # hidden is not read: one layer
  x = rng.normal(size=(32, 6)).astype(np.float32)
  p = v["params"]
  h = x @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"])
  h = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5) * np.asarray(p["BatchNorm_0"]["scale"]) + np.asarray(
      p["BatchNorm_0"]["bias"])
  h = np.maximum(h, 0)
  want = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)  # an all-zero row stays zero
  got, _ = f.apply(v, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(got, want, atol=2e-4)
  assert np.all(np.asarray(got) >= 0)  # every cosine in the shared space is >= 0
  with pytest.raises(ValueError, match="kind must be one of"):
    projectors.init_projector(jax.random.key(0), 4, kind="mlp_full")


def two_modalities(rng, n=64, d=6, offset=3.0):
  """Texts and images of one space with different means (a modality gap) and different spreads."""
  g = offset * unit(rng.normal(size=d))
  return (rng.normal(size=(n, d)) + g).astype(np.float32), (0.5 * rng.normal(size=(n, d)) - g).astype(np.float32)


def settle(f, v, apply):
  """Runs ``apply(variables) -> batch_stats`` in training mode until the running averages stop moving."""
  for _ in range(300):  # momentum 0.9: 0.9^300 ~ 2e-14
    v = {"params": v["params"], "batch_stats": apply(v)}
  return v


def test_apply_together_gives_the_same_outputs_in_train_and_eval_mode(rng):
  # One BatchNorm over [b; a] (one forward over both modalities): once the running averages have settled they are
  # the statistics of the mixture, so evaluation (each modality alone) reproduces what training computed.
  b, a = two_modalities(rng)
  f, v = projectors.init_projector(jax.random.key(3), 6, hidden=8, out=4)
  v = settle(f, v, lambda v: projectors.apply_together(f, v, [b, a], train=True)[1])
  (zb_train, za_train), _ = projectors.apply_together(f, v, [b, a], train=True)
  np.testing.assert_allclose(f.apply(v, b, train=False), zb_train, atol=1e-4)
  np.testing.assert_allclose(f.apply(v, a, train=False), za_train, atol=1e-4)
  (zb_eval, za_eval), stats = projectors.apply_together(f, v, [b, a], train=False)
  np.testing.assert_allclose(zb_eval, zb_train, atol=1e-4)
  assert stats is v["batch_stats"]


def test_one_call_per_modality_would_train_and_evaluate_different_functions(rng):
  # What the experiment did before: f(b) and f(a) in two training calls normalise each modality with its own
  # statistics (the gap disappears at every BatchNorm), while the running averages end between the two.
  b, a = two_modalities(rng)
  f, v = projectors.init_projector(jax.random.key(3), 6, hidden=8, out=4)

  def two_calls(v):
    _, s = projectors.apply_together(f, v, [b], train=True)
    _, s = projectors.apply_together(f, {"params": v["params"], "batch_stats": s}, [a], train=True)
    return s
  v = settle(f, v, two_calls)
  (zb_train,), _ = projectors.apply_together(f, v, [b], train=True)
  assert np.max(np.abs(np.asarray(f.apply(v, b, train=False)) - np.asarray(zb_train))) > 0.1


# ------------------------------------------------------------------------------------------------------------
# Hard retrieval, the modality gap and the zero-pair baselines through the texts.
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [None, 5])
def test_nearest_is_the_argmax_row(rng, chunk):
  q, m = unit(rng.normal(size=(13, 6))), unit(rng.normal(size=(20, 6)))
  got = cmcr.nearest(jnp.asarray(q, jnp.float32), jnp.asarray(m, jnp.float32), chunk_size=chunk)
  np.testing.assert_allclose(got, m[[int(np.argmax([qi @ mj for mj in m])) for qi in q]], atol=1e-6)
  with pytest.raises(ValueError, match="share d"):
    cmcr.nearest(jnp.ones((2, 3)), jnp.ones((4, 5)))


def test_modality_gap_is_the_distance_between_the_means_of_unit_rows(rng):
  x, y = rng.normal(size=(30, 5)) + 2.0, rng.normal(size=(40, 5))
  want = np.linalg.norm(unit(x).mean(0) - unit(y).mean(0))
  assert cmcr.modality_gap(x, y) == pytest.approx(want, rel=1e-9)
  assert cmcr.modality_gap(x, x) == 0.0


def test_pivot_scores_match_a_loop(rng):
  a, c = unit(rng.normal(size=(7, 5))), unit(rng.normal(size=(9, 4)))
  b, bp = unit(rng.normal(size=(11, 5))), unit(rng.normal(size=(11, 4)))
  tau = 0.2

  def carry(q, src, dst):
    w = np.exp(q @ src.T / tau)
    v = (w / w.sum()) @ dst
    return v / np.linalg.norm(v)
  want = np.array([[0.5 * (carry(ai, b, bp) @ cj + ai @ carry(cj, bp, b)) for cj in c] for ai in a])
  got = cmcr.pivot_scores(*(jnp.asarray(v, jnp.float32) for v in (a, c, b, bp)), temperature=tau)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_text_lstsq_recovers_a_linear_relation_between_the_spaces(rng):
  b = rng.normal(size=(200, 6))
  w = rng.normal(size=(6, 4))
  np.testing.assert_allclose(cmcr.text_lstsq(b, b @ w, ridge=0.0), w, atol=1e-4)
  shrunk = cmcr.text_lstsq(b, b @ w, ridge=1.0)  # the ridge shrinks the map
  assert np.linalg.norm(shrunk) < np.linalg.norm(w)
