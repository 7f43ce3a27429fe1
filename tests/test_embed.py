"""Tests of the embedding cache (sotalign_jax.embed) and the atomic writers (sotalign_jax.io), with fake
encoders: no real weights needed."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import importable_module
from PIL import Image

from sotalign_jax.cli import embed
from sotalign_jax.data.cache import load_cache
from sotalign_jax.runtime import io as sio
from sotalign_jax.data import core, folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fake encoder module, importable as `fake_enc:image` / `fake_enc:text` by the CLI (also in a subprocess).
FAKE_SRC = '''
import hashlib
import jax
import jax.numpy as jnp
import numpy as np
from sotalign_jax.encoders import ImageEncoder, TextEncoder

W = np.random.default_rng(0).standard_normal((8 * 8 * 3, 16)).astype(np.float32) / 8

def preprocess(im):
  return np.asarray(im.convert("RGB").resize((8, 8)), np.float32) / 255.0

@jax.jit
def apply(x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ W)

def encode(texts):
  return np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:12], np.uint8) / 255.0
                   for t in texts]).astype(np.float32)

def image():
  return ImageEncoder("fake-image", 16, 8, preprocess, apply, {"kind": "fake", "preprocessing": "resize 8"})

def text():
  return TextEncoder("fake-text", 12, encode, {"kind": "fake"})
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
  d = importable_module(tmp_path, monkeypatch, "fake_enc", FAKE_SRC)
  return d, embed.load_encoder("fake_enc:image", "image"), embed.load_encoder("fake_enc:text", "text")


def _make_folder(root, n=9, corrupt=True):
  rng = np.random.default_rng(1)
  lines = []
  for k in range(n):
    arr = rng.integers(0, 256, (10 + k, 12, 4 if k % 3 == 0 else 3), dtype=np.uint8)
    Image.fromarray(arr).save(root / f"im{k}.png")
    lines.append({"image": f"im{k}.png", "caption": f"picture number {k}", "label": f"c{k % 2}"})
    if k % 4 == 0:
      lines.append({"image": f"im{k}.png", "caption": f"another view {k}"})
  if corrupt:
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    lines.append({"image": "broken.png", "caption": "broken"})
    lines.append({"image": "missing.png", "caption": "missing"})
  (root / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
  return folder.load_folder(root)


def test_embed_folder_end_to_end_against_direct_encoding(tmp_path, fake):
  _, img_enc, txt_enc = fake
  (tmp_path / "ds").mkdir()
  ds = _make_folder(tmp_path / "ds")
  out = tmp_path / "out"
  manifest = embed.embed_dataset(ds, out_dir=out, image_encoder=img_enc, text_encoder=txt_enc, batch_size=4,
                                 chunk_size=4, workers=2, max_side=None, progress=False)
  cache = load_cache(out)
  assert cache.image_emb.shape == (9, 16) and cache.image_emb.dtype == np.float32
  assert cache.text_emb.shape == (12, 12)  # 9 + 3 extra captions; broken/missing images dropped
  assert manifest["counts"]["images_skipped"] == 2
  assert sorted(s["image_id"] for s in manifest["skipped"]) == ["broken.png", "missing.png"]
  assert manifest["image_encoder"]["name"] == "fake_enc:image" and manifest["text_encoder"]["info"] == {"kind": "fake"}
  assert not os.path.exists(out / "shards")
  # Oracle: each image and caption encoded alone, outside the pipeline.
  by_id = {}
  for line, t_row in zip(cache.index, cache.text_emb):
    np.testing.assert_allclose(t_row, txt_enc.encode([line["caption"]])[0], rtol=1e-6)
    by_id[line["image_id"]] = line["image"]
  for image_id, row in by_id.items():
    x = img_enc.preprocess(core.load_image(str(tmp_path / "ds" / image_id)))[None]
    np.testing.assert_allclose(cache.image_emb[row], np.asarray(img_enc.apply(x))[0], rtol=1e-5, atol=1e-6)
  assert len(set(by_id.values())) == 9
  # Split helpers: captions of an image share its split; splits partition the rows.
  rows = [cache.caption_rows(s) for s in ("paired", "unpaired", "val", "test")]
  assert sorted(np.concatenate(rows).tolist()) == list(range(12))
  imgs = [set(cache.image_rows(s).tolist()) for s in ("paired", "unpaired", "val", "test")]
  assert sum(len(s) for s in imgs) == 9 and len(set().union(*imgs)) == 9
  for s in ("paired", "test"):
    np.testing.assert_array_equal(cache.caption_image_rows(s), [cache.index[i]["image"] for i in cache.caption_rows(s)])
  assert cache.labels()[0] == "c0"
  # A rerun is a no-op; other arguments need --overwrite.
  assert embed.embed_dataset(ds, out_dir=out, image_encoder=img_enc, text_encoder=txt_enc, batch_size=4,
                             chunk_size=4, workers=2, max_side=None, progress=False)["job_id"] == manifest["job_id"]
  with pytest.raises(FileExistsError, match="--overwrite"):
    embed.embed_dataset(ds, out_dir=out, image_encoder=img_enc, text_encoder=txt_enc, batch_size=2,
                        progress=False)


def test_fixed_splits_limit_and_text_only(tmp_path, fake):
  _, img_enc, txt_enc = fake
  recs = [core.Record(f"i{k}", f"text {k}", image=np.full((5, 5), k, np.uint8), split="test" if k < 3 else None)
          for k in range(20)]
  ds = core.Dataset("arrays", recs, {})
  m = embed.embed_dataset(ds, out_dir=tmp_path / "a", image_encoder=img_enc, text_encoder=txt_enc, batch_size=8,
                          split_fractions={"paired": 0.5, "unpaired": 0.5, "val": 0.0, "test": 0.0}, progress=False)
  cache = load_cache(tmp_path / "a")
  assert [r["image_id"] for r in cache.index if r["split"] == "test"] == ["i0", "i1", "i2"]
  assert m["splits"]["fixed_by_dataset"] == ["test"]
  embed.embed_dataset(ds, out_dir=tmp_path / "b", image_encoder=img_enc, text_encoder=txt_enc, limit=7,
                      progress=False)
  small = load_cache(tmp_path / "b")
  assert small.image_emb.shape == (7, 16)
  again = embed.embed_dataset(ds, out_dir=tmp_path / "c", image_encoder=img_enc, text_encoder=txt_enc, limit=7,
                              progress=False)
  assert again["counts"]["images"] == 7
  assert [r["image_id"] for r in load_cache(tmp_path / "c").index] == [r["image_id"] for r in small.index]
  texts = core.Dataset("pool", [core.Record(f"t{k}", f"word {k}") for k in range(5)], {})
  m = embed.embed_dataset(texts, out_dir=tmp_path / "t", text_encoder=txt_enc, batch_size=2, progress=False)
  tc = load_cache(tmp_path / "t")
  assert tc.image_emb is None and tc.text_emb.shape == (5, 12) and m["files"]["image_embeddings"] is None
  assert not os.path.exists(tmp_path / "t" / "image_embeddings.npy")
  with pytest.raises(ValueError, match="text-only"):
    tc.image_rows("test")
  with pytest.raises(ValueError, match="image encoder"):
    embed.embed_dataset(ds, out_dir=tmp_path / "x", text_encoder=txt_enc, progress=False)
  with pytest.raises(FileNotFoundError, match="complete"):
    load_cache(tmp_path / "x")


def test_cli_kill_and_resume_gives_identical_arrays(tmp_path, fake):
  fake_dir, img_enc, txt_enc = fake
  (tmp_path / "ds").mkdir()
  ds = _make_folder(tmp_path / "ds")
  ref = tmp_path / "ref"
  embed.embed_dataset(ds, out_dir=ref, image_encoder=img_enc, text_encoder=txt_enc, batch_size=2, chunk_size=2,
                      progress=False)
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "sotalign_jax.cli.embed", "--folder", str(tmp_path / "ds"), "--image-encoder",
         "fake_enc:image", "--text-encoder", "fake_enc:text", "--out", str(out), "--batch-size", "2",
         "--chunk-size", "2", "--workers", "2", "--quiet"]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([fake_dir, ROOT]), JAX_PLATFORMS="cpu")
  killed = subprocess.run(cmd, env={**env, embed.KILL_ENV: "3"}, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert not os.path.exists(out / "manifest.json") and not os.path.exists(out / "image_embeddings.npy")
  assert sorted(os.listdir(out / "shards")) == ["images-00000.npz", "images-00001.npz", "images-00002.npz",
                                                "job.json"]
  done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.strip().splitlines()[-1])["images_skipped"] == 2
  a, b = load_cache(ref), load_cache(out)
  np.testing.assert_array_equal(a.image_emb, b.image_emb)
  np.testing.assert_array_equal(a.text_emb, b.text_emb)
  assert a.index == b.index
  assert [s["image_id"] for s in b.manifest["skipped"]] == ["broken.png", "missing.png"]
  assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def test_atomic_writers(tmp_path):
  p = tmp_path / "sub" / "x.json"
  sio.write_json(p, {"a": np.float32(1.5), "b": [1, 2]})
  assert json.loads(p.read_text()) == {"a": 1.5, "b": [1, 2]}
  with pytest.raises(RuntimeError):
    with sio.atomic_open(p, "w") as f:
      f.write("half")
      raise RuntimeError("killed")
  assert json.loads(p.read_text()) == {"a": 1.5, "b": [1, 2]}  # untouched
  assert os.listdir(tmp_path / "sub") == ["x.json"]  # no temp file left
  arr = np.arange(6, dtype=np.float32).reshape(2, 3)
  sio.save_npy(tmp_path / "a.npy", arr)
  np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), arr)
  sio.save_npz(tmp_path / "b.npz", x=arr, s=np.array(["u", ""]))
  with np.load(tmp_path / "b.npz") as z:
    assert z["s"].tolist() == ["u", ""]
  sio.write_jsonl(tmp_path / "c.jsonl", [{"k": 1}, {"k": "é"}])
  assert sio.read_jsonl(tmp_path / "c.jsonl") == [{"k": 1}, {"k": "é"}]
  with pytest.raises(ValueError, match="mode"):
    with sio.atomic_open(p, "a"):
      pass
