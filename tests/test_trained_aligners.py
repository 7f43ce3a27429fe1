"""Tests of the trained aligners (sotalign_jax.aligners.trained) and their unpaired terms: each term against a
plainly written NumPy version of its definition, the heads' start at the teacher, the O(batch) draws, the paper
recipe's α selection, and the checkpointed loop giving exactly the in-memory loop's parameters."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sotalign_jax import aligners, losses, objectives
from sotalign_jax.aligners import trained
from sotalign_jax.nn.heads import AlignmentHead
from sotalign_jax.nn.optim import plain_loop
from sotalign_jax.runtime import train as train_lib, workdir as wd

TRAINED = sorted(m for m, spec in aligners.ALIGNERS.items() if spec.trained)
FAST = dict(steps=8, batch_paired=16, batch_unpaired=32, teacher_dim=4, sinkhorn_iters=10)


def _log_sigmoid(v):
  return -np.logaddexp(0.0, -v)


def _cos(u, v):
  u = u / np.linalg.norm(u, axis=1, keepdims=True)
  v = v / np.linalg.norm(v, axis=1, keepdims=True)
  return u @ v.T


@pytest.fixture(scope="module")
def planted():
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((5, 12)), rng.standard_normal((5, 10))
  view = lambda z, m, s: (z @ m + 0.3 * rng.standard_normal((len(z), m.shape[1])) + s).astype(np.float32)  # noqa
  z = rng.standard_normal((400, 5))
  x, y = view(z, a, 1.0), view(z, b, -0.5)
  data = aligners.AlignData(x[40:200], y[200:360], x[:40], y[:40])  # unpaired halves: no pair among them
  return data, x[360:], y[360:]


@pytest.fixture
def batch():
  rng = np.random.default_rng(1)
  p, n, m, k = 5, 7, 6, 4
  f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
  return objectives.UnpairedBatch(x=f(n, 9), y=f(m, 8), zx=f(n, k), zy=f(m, k), tx=f(n, 3), ty=f(m, 3),
                                  logit_scale=np.float32(7.0), logit_bias=np.float32(-2.0), pair_x=f(p, 9),
                                  pair_y=f(p, 8), pair_zx=f(p, k), pair_zy=f(p, k))


# ----------------------------------------------------------------------------------------------------------------
# The unpaired terms against their definitions.
# ----------------------------------------------------------------------------------------------------------------
def test_extra_negatives_plus_pair_loss_is_siglip_of_the_enlarged_batch(batch):
  s, b = float(batch.logit_scale), float(batch.logit_bias)
  img = np.vstack([batch.pair_zx, batch.zx])       # [p + n, k]
  txt = np.vstack([batch.pair_zy, batch.zy])       # [p + m, k]
  p = batch.pair_zx.shape[0]
  labels = -np.ones((len(img), len(txt)))
  labels[np.arange(p), np.arange(p)] = 1.0         # only the true pairs are positives
  want = -_log_sigmoid(labels * (s * _cos(img, txt) + b)).sum() / p
  got = losses.siglip_loss(batch.pair_zx, batch.pair_zy, t_log=np.log(s), bias=b) + \
      objectives.extra_negatives_term(batch)[0]
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_nn_positives_matches_a_plain_loop(batch):
  s, b = float(batch.logit_scale), float(batch.logit_bias)

  def side(queries, raw_q, raw_support, partners):
    total = 0.0
    sims = _cos(raw_q, raw_support)
    nn = [int(np.argmax(sims[i])) for i in range(len(raw_q))]
    for i in range(len(queries)):
      for j in range(len(queries)):
        c = _cos(queries[i:i + 1], partners[nn[j]:nn[j] + 1])[0, 0]
        label = 1.0 if nn[i] == nn[j] else -1.0
        total -= _log_sigmoid(label * (s * c + b))
    return total / len(queries)

  want = 0.5 * (side(batch.zx, batch.x, batch.pair_x, batch.pair_zy) + side(batch.zy, batch.y, batch.pair_y,
                                                                            batch.pair_zx))
  np.testing.assert_allclose(float(objectives.nn_positives_term(batch)[0]), want, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The recipe.
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("center,normalize", [("all", True), ("pairs", False)])
def test_heads_start_at_the_teacher(planted, center, normalize):
  """With a zero learning rate the trained heads *are* the registry's CCA (same options): training starts there."""
  data, tx, ty = planted
  sail = aligners.fit("sail", jax.random.key(0), data, lr=0.0, steps=3, teacher_dim=4, center=center,
                      normalize=normalize)
  cca = aligners.fit("cca", None, data, dim=4, center=center, normalize=normalize)
  np.testing.assert_allclose(np.asarray(sail.similarity(tx, ty)), np.asarray(cca.similarity(tx, ty)), atol=2e-5)


def test_folded_heads_apply_to_raw_features(planted):
  data, tx, ty = planted
  a = aligners.fit("sotalign", jax.random.key(0), data, center="pairs", normalize=False, head="mlp", hidden=8,
                   **FAST)
  folded = aligners.folded_heads(a)
  head = AlignmentHead(dim=a.params["f"]["linear"]["kernel"].shape[1], hidden=8)
  np.testing.assert_allclose(head.apply({"params": folded["f"]}, tx), a.embed_x(tx), atol=1e-5)
  np.testing.assert_allclose(head.apply({"params": folded["g"]}, ty), a.embed_y(ty), atol=1e-5)
  with pytest.raises(ValueError, match="normalize=False"):
    aligners.folded_heads(aligners.fit("sail", jax.random.key(0), data, **{k: FAST[k] for k in ("steps",)}))


def test_unpaired_draws_cost_o_batch_not_o_pool():
  """A draw from a million-row pool traces to no sort or permutation of the pool (``choice`` without replacement
  would); the pair draw, without replacement, is exact (distinct rows)."""
  jaxpr = str(jax.make_jaxpr(lambda k: trained._draw(k, 1_000_000, 512, replace=True))(jax.random.key(0)))
  assert "sort" not in jaxpr and "[1000000" not in jaxpr  # no sort, no pool-sized array (the pool size is a scalar)
  choice = str(jax.make_jaxpr(lambda k: jax.random.choice(k, 1_000_000, (512,), replace=False))(jax.random.key(0)))
  assert "sort" in choice or "[1000000" in choice  # what the check would catch
  out = trained._draw(jax.random.key(0), 1_000_000, 512, replace=True)
  assert out.shape == (512,) and 0 <= int(out.min()) and int(out.max()) < 1_000_000
  pairs = np.asarray(trained._draw(jax.random.key(1), 50, 20, replace=False))
  assert len(set(pairs.tolist())) == 20
  np.testing.assert_array_equal(trained._draw(jax.random.key(2), 30, 64, replace=False), np.arange(30))


def test_checkpointed_loop_gives_the_in_memory_loops_parameters(planted, tmp_path):
  data, tx, ty = planted
  plain = aligners.fit("sotalign", jax.random.key(3), data, **FAST)
  writer = wd.MetricWriter(str(tmp_path))
  loop = train_lib.checkpointed_loop(str(tmp_path / "run"), writer=writer, name="sotalign", log_every=2,
                                     ckpt_every=4, mesh=train_lib.data_mesh())
  ckpt = aligners.fit("sotalign", jax.random.key(3), data, loop=loop, **FAST)
  writer.close()
  for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(ckpt.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (tmp_path / "run" / "ckpt").is_dir()
  resumed = aligners.fit("sotalign", jax.random.key(3), data, loop=loop, **FAST)  # restores the last checkpoint
  np.testing.assert_array_equal(np.asarray(resumed.similarity(tx, ty)), np.asarray(plain.similarity(tx, ty)))


@pytest.mark.parametrize("iters, converged", [(1, False), (300, True)])
def test_the_training_log_shows_whether_klots_sinkhorn_converged(planted, tmp_path, iters, converged):
  """Every logged step carries both KLOT plans' marginal errors and ``klot/converged``: one Sinkhorn iteration
  leaves the plans off their marginals (logged as not converged), 300 bring both below the 1e-3 threshold."""
  data, _, _ = planted
  writer = wd.MetricWriter(str(tmp_path), tensorboard=False)
  loop = train_lib.checkpointed_loop(str(tmp_path / "run"), writer=writer, name="sotalign", log_every=1,
                                     ckpt_every=100, mesh=train_lib.data_mesh())
  aligners.fit("sotalign", jax.random.key(0), data, loop=loop, **dict(FAST, steps=3, sinkhorn_iters=iters),
               eps_student=0.05, eps_teacher=0.05)
  writer.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3]
  for r in rows:
    errors = [r[f"train/sotalign/klot/{who}_marginal_error"] for who in ("student", "teacher")]
    assert r["train/sotalign/klot/converged"] == float(converged)
    if converged:
      assert max(errors) < 1e-3
    else:
      assert max(errors) > 1e-2


def test_paper_recipe_keeps_the_alpha_with_the_best_validation_score(planted):
  data, tx, ty = planted
  val = aligners.AlignData.create(pairs_x=tx[:30], pairs_y=ty[:30])
  hp = dict(FAST, batch_paired=40, alpha_grid=(1e-3, 300.0), lr=1e-2, optimizer="adamw")
  a = aligners.fit("sotalign_paper", jax.random.key(0), data, val=val, **hp)
  info = dict(a.info)
  scores = dict(info["val_mean_r1"])
  assert set(scores) == {1e-3, 300.0} and info["alpha"] == max(scores, key=scores.get)
  direct = aligners.fit("sotalign_paper", jax.random.key(0), data, **dict(hp, alpha_grid=(info["alpha"],)))
  np.testing.assert_allclose(np.asarray(a.similarity(tx, ty)), np.asarray(direct.similarity(tx, ty)), atol=1e-6)
  assert aligners.get("sotalign_paper").defaults["alpha_grid"] == (1e-3, 1e-4, 1e-5)  # the paper's grid
  paper = aligners.get("sotalign_paper").defaults
  assert (paper["optimizer"], paper["lr"], paper["weight_decay"], paper["steps"], paper["siglip_t"],
          paper["siglip_b"], paper["eps_student"], paper["eps_teacher"], paper["sinkhorn_iters"]) == (
              "lion", 1e-4, 1e-5, 2000, 20.0, -10.0, 0.05, 0.01, 100)


@pytest.mark.parametrize("name", [n if n in ("sail", "sotalign", "nnclr") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in TRAINED])  # the others: make test-all (their terms are tested above)
def test_every_trained_method_fits_and_checks_its_input(planted, name):
  data, tx, ty = planted
  hp = {k: v for k, v in FAST.items() if k in aligners.get(name).defaults}
  a = aligners.fit(name, jax.random.key(0), data, **hp)
  sim = np.asarray(a.similarity(tx, ty))
  assert sim.shape == (len(tx), len(ty)) and np.isfinite(sim).all()
  assert np.mean(sim.argmax(1) == np.arange(len(tx))) > 5 / len(tx)  # far above chance from the teacher's start
  with pytest.raises(aligners.NeedsPairsError):
    aligners.fit(name, jax.random.key(0), data._replace(pairs_x=data.pairs_x[:1], pairs_y=data.pairs_y[:1]), **hp)
  with pytest.raises(ValueError, match="PRNG key"):
    aligners.fit(name, None, data, **hp)
  if aligners.get(name).uses_unpaired:
    empty = data._replace(x=data.x[:0], y=data.y[:0])
    with pytest.raises(ValueError, match="needs unpaired images and texts"):
      aligners.fit(name, jax.random.key(0), empty, **hp)


def _recording_loop(seen: dict):
  """:func:`plain_loop`, keeping the parameters it starts from and ends at, and the full-batch objective (the step
  function's loss, a function of the parameters only when every batch is the whole pool)."""
  def loop(state, step_fn, data, *, key, steps, name=""):
    start = jax.tree.map(np.array, state)  # copied before plain_loop donates the state
    seen["start"] = start.params
    seen["objective"] = jax.jit(lambda params: step_fn(start.replace(params=params), data, key)[1]["loss"])
    end = plain_loop(state, step_fn, data, key=key, steps=steps, name=name)
    seen["end"] = jax.tree.map(np.array, end.params)
    return end
  return loop


@pytest.mark.parametrize("name", TRAINED)
def test_every_trained_method_moves_off_the_teacher_and_lowers_its_objective(planted, name):
  """Full batches (all 40 pairs, the whole unpaired pools) make each step a descent step on one fixed objective,
  SigLIP + α · term: a few small steps from the teacher must change the heads' similarities and lower it (a fit
  that did not train, or climbed, fails)."""
  data, tx, ty = planted
  hp = dict(steps=6, lr=1e-3, batch_paired=40, batch_unpaired=160, teacher_dim=4, sinkhorn_iters=50,
            alpha_grid=(1e-3,))
  hp = {k: v for k, v in hp.items() if k in aligners.get(name).defaults}
  seen = {}
  a = aligners.fit(name, jax.random.key(0), data, loop=_recording_loop(seen), **hp)
  start = dataclasses.replace(a, params={"f": seen["start"]["f"], "g": seen["start"]["g"]})
  moved = np.abs(np.asarray(a.similarity(tx, ty)) - np.asarray(start.similarity(tx, ty))).max()
  assert moved > 5e-3, moved
  before, after = float(seen["objective"](seen["start"])), float(seen["objective"](seen["end"]))
  assert after < before - 1e-3 * abs(before), (before, after)


class _TermCalled(Exception):
  pass


# method -> (its unpaired term, options given to the fit, the options the term must receive)
_TERM_WIRING = {
    "sail_semi": ("extra_negatives", {}, {}),
    "structure": ("structure", {"temperature": 0.3}, {"temperature": 0.3}),
    "pseudo_label": ("pseudo_label", {"eps": 0.02}, {"eps": 0.02}),
    "nnclr": ("nn_positives", {}, {}),
    "sotalign": ("klot", {"eps_student": 0.3, "eps_teacher": 0.007, "sinkhorn_iters": 7},
                 {"eps_student": 0.3, "eps_teacher": 0.007, "sinkhorn_iters": 7, "shard_klot": False, "mesh": None}),
    "sotalign_paper": ("klot", {"eps_student": 0.3, "eps_teacher": 0.007, "sinkhorn_iters": 7, "alpha_grid": (1.0,)},
                       {"eps_student": 0.3, "eps_teacher": 0.007, "sinkhorn_iters": 7, "shard_klot": False,
                        "mesh": None}),
}


@pytest.mark.parametrize("name", sorted(_TERM_WIRING))
def test_each_method_hands_its_own_term_the_options_it_was_given(planted, monkeypatch, name):
  """The fit calls the method's term by name with its options (ε = 0.3 and ε* = 0.007 by keyword: a swap shows);
  the recording term stops the fit while the first step is traced, so nothing compiles."""
  term, given, want = _TERM_WIRING[name]
  assert aligners.get(name).uses_unpaired and set(TRAINED) - {"sail", "upper_bound"} == set(_TERM_WIRING)
  calls = []
  original = objectives.UNPAIRED_TERMS[term]

  @functools.wraps(original)  # keeps the signature (fit_heads hands a mesh to terms that take one)
  def recorder(batch, **kwargs):
    calls.append(kwargs)
    raise _TermCalled

  monkeypatch.setitem(objectives.UNPAIRED_TERMS, term, recorder)
  with pytest.raises(_TermCalled):
    aligners.fit(name, jax.random.key(0), planted[0], steps=2, teacher_dim=4, **given)
  assert calls == [want]


def test_mesh_placement_reads_blocks_and_pads_with_zeros():
  mesh = train_lib.data_mesh()
  rows = np.arange(21, dtype=np.float32).reshape(7, 3)
  arr, n = trained._place(rows, mesh)
  assert n == 7 and arr.shape[0] >= 7 and arr.shape[0] % mesh.devices.size == 0
  np.testing.assert_array_equal(np.asarray(arr)[:7], rows)
  assert not np.asarray(arr)[7:].any()
  np.testing.assert_allclose(trained._side_mean(arr, n, jnp.ones((2, 3)), "all"), (rows.sum(0) + 2) / 9)


@pytest.mark.slow  # 8-device subprocess, ≈ 80 s; ot.klot_sharded itself is checked in the fast set (tests/test_ot.py)
def test_shard_klot_on_eight_devices_trains_the_heads_of_the_dense_klot():
  """``shard_klot=True`` keeps KLOT's [n, m] matrices split by rows over the mesh (ot.klot_sharded); the trained
  heads equal those of the dense KLOT on the same mesh, up to float rounding."""
  import json
  from conftest import run_with_fake_devices
  out = run_with_fake_devices("""
    import json, numpy as np, jax
    from sotalign_jax import aligners
    from sotalign_jax.runtime import train as train_lib
    r = np.random.default_rng(0)
    z = r.standard_normal((300, 5))
    x = (z @ r.standard_normal((5, 12)) + 0.3 * r.standard_normal((300, 12))).astype(np.float32)
    y = (z @ r.standard_normal((5, 10)) + 0.3 * r.standard_normal((300, 10))).astype(np.float32)
    data = aligners.AlignData(x[40:170], y[170:300], x[:40], y[:40])
    mesh = train_lib.data_mesh()
    assert mesh.devices.size == 8
    hp = dict(steps=6, batch_paired=16, batch_unpaired=32, teacher_dim=4, sinkhorn_iters=30, lr=1e-2)
    fits = [aligners.fit("sotalign", jax.random.key(1), data, mesh=mesh, shard_klot=s, **hp) for s in (False, True)]
    sims = [np.asarray(a.similarity(x[:40], y[:40])).tolist() for a in fits]
    start = aligners.fit("sotalign", jax.random.key(1), data, mesh=mesh, **dict(hp, lr=0.0))  # the teacher's start
    print(json.dumps(sims + [np.asarray(start.similarity(x[:40], y[:40])).tolist()]))
  """)
  dense, sharded, start = (np.array(s) for s in json.loads(out.strip().splitlines()[-1]))
  np.testing.assert_allclose(sharded, dense, atol=2e-5)
  assert np.abs(dense - start).max() > 1e-3  # the heads did move in those 6 steps
