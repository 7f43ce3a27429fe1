"""``sotalign_jax.aligners.io``: every registered aligner's fitted alignment saved and loaded gives exactly the same
scores on fresh queries; the loader imports only sotalign_jax classes; a failed save leaves nothing behind; bad
paths fail with one line naming the path."""

import dataclasses
import json
import os
import sys

import jax
import numpy as np
import pytest

from sotalign_jax import aligners
from sotalign_jax.aligners import io
from sotalign_jax.aligners.linear import LinearAlignment

# Tiny options (the defaults are sized for real data); a method missing here is fitted with its defaults.
_TRAINED = dict(steps=2, batch_paired=16, batch_unpaired=32, teacher_dim=4, sinkhorn_iters=5, warmup_steps=1)
TINY = {
    "cca": dict(dim=4),
    "asif": dict(k=10, power=2),
    "qap": dict(n_init=2, maxiter=3),
    "wasserstein_procrustes": dict(n_clusters=4, n_restarts=2, batch_size=64, n_iterations=2, refine_batch_size=32,
                                   kmeans_iters=5, qap_inits=2),
    "mini_vec2vec": dict(num_clusters=4, num_runs=2, num_samples=64, num_restarts=2, num_neighbors=4,
                         refine1_iterations=2, refine1_samples=32, refine2_clusters=6, kmeans_iters=5),
    "sotalign_paper": dict(alpha_grid=(1e-3, 1e-1)),  # chosen on val: info holds nested tuples of floats
}
# Options that make another class or other leaves / static values (a mesh, an MLP head, fit-time scales).
VARIANTS = {
    "ridge_stretch_fit": ("ridge", dict(stretch="fit", lam=0.1)),
    "relative_queries": ("relative", dict(stretch="queries")),
    "local_cka_rbf": ("local_cka", dict(kernel="rbf", stretch="none")),
    "qap_mesh_queries": ("qap", dict(n_init=2, maxiter=3, stretch="queries", kernel="linear")),
    "sail_mlp_raw": ("sail", dict(head="mlp", hidden=8, normalize=False)),
}


def _options(name: str, extra: dict) -> dict:
  spec = aligners.get(name)
  opts = {k: v for k, v in _TRAINED.items() if k in spec.defaults} if spec.trained else {}
  return {**opts, **TINY.get(name, {}), **extra}


@pytest.fixture(scope="module")
def data():
  """Two planted 12- and 10-dim views: 40 pairs, 80 unpaired rows per side, 40 validation pairs, fresh queries."""
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((5, 12)), rng.standard_normal((5, 10))
  view = lambda z, m: (z @ m + 0.3 * rng.standard_normal((len(z), m.shape[1]))).astype(np.float32)  # noqa: E731
  z = rng.standard_normal((260, 5))
  x, y = view(z, a), view(z, b)
  train = aligners.AlignData(x[40:120], y[120:200], x[:40], y[:40])
  val = aligners.AlignData.create(pairs_x=x[200:230], pairs_y=y[200:230])
  return train, val, x[230:], y[230:]


_FITTED = {}  # (name, options) -> alignment: a test reuses what another test of this worker fitted


def _fit(name: str, extra: dict, data):
  memo = (name, repr(sorted(extra.items())))
  if memo not in _FITTED:
    _FITTED[memo] = _fit_now(name, extra, data)
  return _FITTED[memo]


def _fit_now(name: str, extra: dict, data):
  train, val, _, _ = data
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)) if "mesh" in str(extra.get("_tag", "")) else None
  extra = {k: v for k, v in extra.items() if k != "_tag"}
  return aligners.fit(name, jax.random.key(3), train, val=val, mesh=mesh, **_options(name, extra))


def _round_trip(alignment, tmp_path, data):
  _, _, qx, qy = data
  path = tmp_path / "cell" / "alignment"
  io.save(path, alignment)
  assert sorted(os.listdir(path)) == ["alignment.json", "arrays.npz"]
  assert os.listdir(tmp_path / "cell") == ["alignment"]  # no temporary directory left beside it
  loaded = io.load(path)
  assert type(loaded) is type(alignment)
  want = np.asarray(alignment.similarity(qx, qy))
  got = np.asarray(loaded.similarity(qx, qy))
  np.testing.assert_array_equal(got, want)
  assert want.shape == (len(qx), len(qy)) and np.isfinite(want).all() and np.ptp(want) > 0
  return loaded


def _same_pytree(a, b):
  """Leaves equal (arrays by value and dtype, keys by key data), the same tree structure and static options."""
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb  # the treedef holds the class and every static value
  for u, v in zip(la, lb):
    if jax.dtypes.issubdtype(u.dtype, jax.dtypes.prng_key):
      assert jax.random.key_impl(u) == jax.random.key_impl(v)
      u, v = jax.random.key_data(u), jax.random.key_data(v)
    assert type(u) is type(v) and u.dtype == v.dtype
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize("name", sorted(aligners.ALIGNERS))
def test_every_registered_aligner_round_trips_exactly(name, data, tmp_path):
  alignment = _fit(name, {}, data)
  _same_pytree(alignment, _round_trip(alignment, tmp_path, data))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_round_trip_exactly(variant, data, tmp_path):
  name, extra = VARIANTS[variant]
  alignment = _fit(name, {**extra, "_tag": variant}, data)
  loaded = _round_trip(alignment, tmp_path, data)
  meta = json.loads((tmp_path / "cell" / "alignment" / "alignment.json").read_text())
  if "mesh" in variant:
    assert alignment.mesh is not None and loaded.mesh is None and meta["dropped"] == ["mesh"]
    _same_pytree(dataclasses.replace(alignment, mesh=None), loaded)
  else:
    _same_pytree(alignment, loaded)


def test_the_json_names_class_static_options_version_and_each_leaf(data, tmp_path):
  a = _fit("sotalign_paper", {}, data)
  io.save(tmp_path / "a", a)
  meta = json.loads((tmp_path / "a" / "alignment.json").read_text())
  assert meta["class"] == "sotalign_jax.aligners.trained:HeadsAlignment" and meta["format"] == 1
  assert meta["version"] == __import__("sotalign_jax").__version__
  assert set(meta["static"]) == {"normalize", "hidden", "info"}
  assert meta["leaves"]["params"]["dict"]["f"]["dict"]["linear"]["dict"]["kernel"]["array"] == "params/f/linear/kernel"
  assert io.load(tmp_path / "a").info == a.info and isinstance(a.info[1][1], tuple)  # tuples stay tuples
  with np.load(tmp_path / "a" / "arrays.npz", allow_pickle=False) as z:
    assert set(z.files) == {"mx", "my", "params/f/linear/kernel", "params/f/linear/bias", "params/g/linear/kernel",
                            "params/g/linear/bias"}


def test_none_leaves_and_old_style_keys_round_trip(data, tmp_path):
  a = _fit("lstsq", {}, data)
  assert a.wy is None
  b = io.load((io.save(tmp_path / "a", a), tmp_path / "a")[1])
  assert b.wy is None
  qap = _fit("qap", {}, data)
  raw = dataclasses.replace(qap, key=jax.random.PRNGKey(5))  # a uint32 key array is an ordinary array
  _same_pytree(raw, io.load((io.save(tmp_path / "q", raw), tmp_path / "q")[1]))


def test_save_replaces_a_previous_alignment_but_nothing_else(data, tmp_path):
  a, b = _fit("ridge", {}, data), _fit("procrustes", {}, data)
  io.save(tmp_path / "a", a)
  io.save(tmp_path / "a", b)
  _same_pytree(b, io.load(tmp_path / "a"))
  assert os.listdir(tmp_path) == ["a"]
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep")
  with pytest.raises(ValueError, match="is not a saved alignment: refusing to replace"):
    io.save(tmp_path / "mine", a)
  assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_loading_refuses_classes_outside_sotalign_jax(data, tmp_path, monkeypatch):
  io.save(tmp_path / "a", _fit("ridge", {}, data))
  meta_path = tmp_path / "a" / "alignment.json"
  meta = json.loads(meta_path.read_text())
  (tmp_path / "evil_mod.py").write_text("import sys\nsys.modules[__name__].imported = True\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  for name in ("evil_mod:Cls", "os:system", "subprocess:Popen", "sotalign_jax_evil.mod:Cls", "builtins:dict"):
    meta_path.write_text(json.dumps({**meta, "class": name}))
    with pytest.raises(ValueError, match="refusing to import it") as e:
      io.load(tmp_path / "a")
    assert "\n" not in str(e.value) and str(meta_path) in str(e.value)
  assert "evil_mod" not in sys.modules  # refused before any import
  # a sotalign_jax name that is not an Alignment dataclass is refused too
  meta_path.write_text(json.dumps({**meta, "class": "sotalign_jax.aligners.base:AlignData"}))
  with pytest.raises(ValueError, match="not an Alignment dataclass"):
    io.load(tmp_path / "a")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _MyAlignment(LinearAlignment):
  """An alignment class of the user's own (outside sotalign_jax)."""
  tag: str = aligners.base.static_field("mine")


def test_a_class_of_your_own_loads_only_when_given(data, tmp_path):
  ridge = _fit("ridge", {}, data)
  mine = _MyAlignment(ridge.wx, ridge.wy, ridge.mx, ridge.my, ridge.normalize, tag="t")
  io.save(tmp_path / "m", mine)
  with pytest.raises(ValueError, match="refusing to import it"):
    io.load(tmp_path / "m")
  _same_pytree(mine, io.load(tmp_path / "m", classes=(_MyAlignment,)))


def test_a_failed_save_leaves_no_directory(data, tmp_path, monkeypatch):
  a = _fit("ridge", {}, data)
  target = tmp_path / "runs" / "alignment"
  # an option that cannot be saved: refused before anything is written
  bad = dataclasses.replace(a, normalize=object())
  with pytest.raises(ValueError, match="static option normalize"):
    io.save(target, bad)
  assert not target.exists()
  # a failure while writing (a full disk): the temporary directory is removed, nothing is left in the parent
  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(io.np, "savez", full_disk)
  with pytest.raises(OSError, match="No space left"):
    io.save(target, a)
  assert os.listdir(tmp_path / "runs") == []
  # and a failure while replacing an existing alignment keeps the previous one whole
  monkeypatch.undo()
  io.save(target, a)
  monkeypatch.setattr(io.np, "savez", full_disk)
  with pytest.raises(OSError):
    io.save(target, _fit("procrustes", {}, data))
  assert os.listdir(tmp_path / "runs") == ["alignment"]
  monkeypatch.undo()
  _same_pytree(a, io.load(target))


def test_bad_paths_fail_with_one_line_naming_the_path(data, tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(FileNotFoundError, match="nope not found: give the directory io.save wrote") as e:
    io.load(missing)
  assert "\n" not in str(e.value)
  npy = tmp_path / "x.npy"
  np.save(npy, np.zeros(3))
  other = tmp_path / "other"
  other.mkdir()
  (other / "heads.json").write_text("{}")
  for p in (npy, other):
    with pytest.raises(ValueError, match="is not a saved alignment") as e:
      io.load(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
  io.save(tmp_path / "a", _fit("ridge", {}, data))
  (tmp_path / "a" / "alignment.json").write_text("not json")
  with pytest.raises(ValueError, match="is not valid JSON"):
    io.load(tmp_path / "a")
  (tmp_path / "a" / "alignment.json").write_text(json.dumps({"format": 99, "version": "9.9"}))
  with pytest.raises(ValueError, match="has format 99"):
    io.load(tmp_path / "a")
  with pytest.raises(TypeError, match="saves a fitted Alignment"):
    io.save(tmp_path / "b", {"wx": np.zeros(2)})
