"""Disk-full and permission faults while writing caches, results and checkpoints.

The fault is injected *below* the atomic writers of :mod:`sotalign_jax.runtime.io` (its ``os`` / ``tempfile`` are
replaced by proxies whose ``write``, ``fsync``, ``replace`` or ``mkstemp`` raise ``ENOSPC`` / ``EACCES``), so
what is tested is the real write path. Tests run as root, where ``chmod 0o555`` does not block writes: the
read-only directory is simulated by ``mkstemp`` raising ``EACCES``. After every fault: the final name holds
its old content (or does not exist), no ``.tmp-*`` file is left, and a rerun without the fault completes.
"""

import errno
import json
import os
import tempfile

import numpy as np
import pytest
from PIL import Image

from sotalign_jax.cli import embed
from sotalign_jax.data.cache import load_cache
from sotalign_jax.runtime import io as sio
from sotalign_jax.data import folder
from sotalign_jax.encoders import ImageEncoder, TextEncoder


class _Proxy:
  """A stand-in for a module: every attribute is the module's, except the ones given."""

  def __init__(self, module, **overrides):
    self._module = module
    self.__dict__.update(overrides)

  def __getattr__(self, name):
    return getattr(self._module, name)


class _FullDiskFile:
  """A file object that writes a few bytes, then fails like a full disk."""

  def __init__(self, f):
    self._f = f

  def write(self, data):
    self._f.write(data[:3])
    raise OSError(errno.ENOSPC, "No space left on device")

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()

  def __getattr__(self, name):
    return getattr(self._f, name)


def _enospc(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


def _eacces(*args, **kwargs):
  raise PermissionError(errno.EACCES, "Permission denied")


def inject(monkeypatch, fault: str, *, only: str | None = None):
  """Makes the atomic writers of ``sotalign_jax.io`` fail with ``fault`` (for target basename ``only``)."""
  if fault == "write":
    monkeypatch.setattr(sio, "os", _Proxy(os, fdopen=lambda *a, **k: _FullDiskFile(os.fdopen(*a, **k))))
  elif fault == "fsync":
    monkeypatch.setattr(sio, "os", _Proxy(os, fsync=_enospc))
  elif fault == "replace":
    def replace(src, dst):
      if only is None or os.path.basename(dst) == only:
        _enospc()
      os.replace(src, dst)
    monkeypatch.setattr(sio, "os", _Proxy(os, replace=replace))
  elif fault == "read_only_dir":
    monkeypatch.setattr(sio, "tempfile", _Proxy(tempfile, mkstemp=_eacces))
  else:
    raise ValueError(fault)


WRITERS = {
    "write_json": (lambda p, v: sio.write_json(p, {"v": v}), lambda p: json.load(open(p))["v"], "r.json"),
    "write_jsonl": (lambda p, v: sio.write_jsonl(p, [{"v": v}] * 3), lambda p: sio.read_jsonl(p)[2]["v"],
                    "r.jsonl"),
    "save_npy": (lambda p, v: sio.save_npy(p, np.full((50, 4), v, np.float32)), lambda p: float(np.load(p)[49, 3]),
                 "a.npy"),
    "save_npz": (lambda p, v: sio.save_npz(p, emb=np.full((50, 4), v)), lambda p: float(np.load(p)["emb"][49, 3]),
                 "s.npz"),
}
FAULTS = ["write", "fsync", "replace", "read_only_dir"]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("existing", [True, False], ids=["overwrite", "new"])
def test_failed_write_leaves_old_content_or_nothing_and_no_temp_file(tmp_path, monkeypatch, writer, fault, existing):
  write, read, name = WRITERS[writer]
  path = tmp_path / name
  if existing:
    write(path, 1.0)
  with monkeypatch.context() as m:
    inject(m, fault)
    with pytest.raises(OSError) as e:
      write(path, 2.0)
  assert e.value.errno == (errno.EACCES if fault == "read_only_dir" else errno.ENOSPC)
  assert os.listdir(tmp_path) == ([name] if existing else [])  # no half-written final file, no .tmp-*
  if existing:
    assert read(path) == 1.0
  write(path, 2.0)  # the disk has room again: the rerun succeeds
  assert read(path) == 2.0 and os.listdir(tmp_path) == [name]


# ------------------------------------------------------------------------------------------------------------
# The embedding cache CLI: a full disk while writing a shard, an array or the manifest.
# ------------------------------------------------------------------------------------------------------------
W = np.random.default_rng(0).standard_normal((4 * 4 * 3, 6)).astype(np.float32)
IMAGE_ENCODER = ImageEncoder(
    "fake-image", 6, 4, lambda im: np.asarray(im.convert("RGB").resize((4, 4)), np.float32) / 255.0,
    lambda x: np.tanh(np.asarray(x).reshape(len(x), -1) @ W), {"kind": "fake"})
TEXT_ENCODER = TextEncoder("fake-text", 5, lambda ts: np.array([[len(t), t.count("e"), 1, 2, ord(t[-1])]
                                                                for t in ts], np.float32), {"kind": "fake"})


@pytest.fixture
def dataset(tmp_path):
  root = tmp_path / "ds"
  root.mkdir()
  rng = np.random.default_rng(1)
  lines = []
  for k in range(7):
    Image.fromarray(rng.integers(0, 256, (6 + k, 5, 3), dtype=np.uint8)).save(root / f"im{k}.png")
    lines.append({"image": f"im{k}.png", "caption": f"picture number {k}"})
  (root / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
  return folder.load_folder(root)


def _embed(ds, out):
  return embed.embed_dataset(ds, out_dir=out, image_encoder=IMAGE_ENCODER, text_encoder=TEXT_ENCODER,
                             batch_size=2, chunk_size=2, workers=1, progress=False)


def _tmp_files(directory):
  return [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs if f.startswith(".tmp")]


@pytest.mark.parametrize("fault, target", [
    ("replace", "images-00002.npz"),    # third image shard
    ("replace", "texts-00001.npy"),     # second text shard
    ("replace", "text_embeddings.npy"),  # assembling the final arrays
    ("replace", "manifest.json"),       # the very last write
    ("write", None),                    # the first write of all (job.json)
])
def test_embed_full_disk_leaves_no_final_file_and_the_rerun_completes(tmp_path, monkeypatch, dataset, fault, target):
  ref = _embed(dataset, tmp_path / "ref")
  out = tmp_path / "out"
  with monkeypatch.context() as m:
    inject(m, fault, only=target)
    with pytest.raises(OSError) as e:
      _embed(dataset, out)
  assert e.value.errno == errno.ENOSPC
  assert not _tmp_files(out)
  assert not (out / "manifest.json").exists()  # the cache is not "complete"…
  with pytest.raises(FileNotFoundError, match="not a complete embedding cache"):
    load_cache(out)  # …and readers say so instead of reading half of it
  if target is not None and target.startswith(("images-", "texts-")):
    shards = sorted(os.listdir(out / "shards"))
    assert target not in shards
    for s in shards:  # every shard under its final name is complete
      if s.endswith(".npz"):
        with np.load(out / "shards" / s) as z:
          assert z["emb"].shape == (int(z["ok"].sum()), 6)
      elif s.endswith(".npy"):
        assert np.load(out / "shards" / s).shape[1] == 5
  manifest = _embed(dataset, out)  # disk has room again: resume and finish
  a, b = load_cache(tmp_path / "ref"), load_cache(out)
  np.testing.assert_array_equal(a.image_emb, b.image_emb)
  np.testing.assert_array_equal(a.text_emb, b.text_emb)
  assert a.index == b.index and manifest["job_id"] == ref["job_id"]
  assert not _tmp_files(out) and not (out / "shards").exists()


# ------------------------------------------------------------------------------------------------------------
# Checkpoints: a save cut short (disk full / kill during Orbax's write) is never taken for a step.
# ------------------------------------------------------------------------------------------------------------
def test_half_written_orbax_step_is_ignored_on_restore(tmp_path):
  import jax.numpy as jnp
  import orbax.checkpoint as ocp
  from sotalign_jax.runtime import workdir as wd
  mgr = wd.checkpoint_manager(tmp_path / "ckpt")
  mgr.save(10, args=ocp.args.StandardSave({"w": jnp.full((3,), 10.0)}))
  mgr.wait_until_finished()
  # what Orbax leaves behind when a save of step 20 dies mid-write: its temporary directory, partly filled
  partial = tmp_path / "ckpt" / "20.orbax-checkpoint-tmp-1234"
  (partial / "default").mkdir(parents=True)
  (partial / "default" / "_METADATA").write_bytes(b'{"tree_metadata": {"w"')
  mgr = wd.checkpoint_manager(tmp_path / "ckpt")
  assert list(mgr.all_steps()) == [10]
  state, step = wd.restore_latest(mgr, {"w": jnp.zeros(3)})
  assert step == 10
  np.testing.assert_array_equal(state["w"], np.full(3, 10.0))
