"""Tests for sotalign_jax.encoders.hf on tiny randomly initialised checkpoints saved to a tmp dir.

Oracles: the Flax model called directly on one unpadded sentence / image with numpy pooling,
transformers' own CLIPImageProcessor, and PIL + numpy preprocessing written out here.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from PIL import Image

from sotalign_jax.encoders import hf
from sotalign_jax.encoders import load_image_encoder, load_text_encoder

WORDS = ["a", "dog", "cat", "runs", "in", "the", "park", "red", "ball", "##s", "!", ",", "."]
SENTENCES = ["A dog runs in the park.", "the cats", "", "red ball , red ball ! " * 6, "unknownword dog"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tiny_bert")
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
  (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
  transformers.BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True).save_pretrained(str(d))
  config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64)
  transformers.FlaxBertModel(config, seed=0).save_pretrained(str(d))
  return d


@pytest.fixture(scope="module")
def token_states(bert_dir):
  """Per sentence, the model's hidden states on its own unpadded tokens: ``[L + 1, l, d]``."""
  tok = transformers.AutoTokenizer.from_pretrained(str(bert_dir))
  model = transformers.FlaxBertModel.from_pretrained(str(bert_dir))
  states = jax.jit(lambda ids: jnp.stack(model(ids, output_hidden_states=True).hidden_states))
  out = []
  for s in SENTENCES:
    ids = np.asarray(tok(s.strip(), truncation=True, max_length=20)["input_ids"])[None]
    out.append(np.asarray(states(ids))[:, 0])
  return out


def test_text_matches_unpadded_model_calls(bert_dir, token_states):
  enc = load_text_encoder(f"hf:{bert_dir}", batch_size=2, max_seq_length=20)
  want = np.stack([h[-1].mean(0) for h in token_states])  # no padding: a plain mean over tokens
  want /= np.linalg.norm(want, axis=-1, keepdims=True)
  got = enc.encode(SENTENCES)
  assert enc.dim == 32 and got.shape == (5, 32) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert enc.info["max_seq_length"] == 20 and enc.info["pooling"] == "mean"
  json.dumps(enc.info)


def test_text_layers_and_poolings(bert_dir, token_states):
  _, encode_layers = hf.load_text_with_layers(str(bert_dir), max_seq_length=20)
  for pooling, fn in (("mean", lambda h: h.mean(1)), ("cls", lambda h: h[:, 0]), ("last-token", lambda h: h[:, -1])):
    want = np.stack([fn(h) for h in token_states], 1)  # [L + 1, B, d]
    np.testing.assert_allclose(encode_layers(SENTENCES, pooling=pooling), want, atol=1e-5)


def test_text_bad_inputs(bert_dir, tmp_path):
  with pytest.raises(ValueError, match="config.json"):
    hf.load_text(str(tmp_path))
  with pytest.raises(ValueError, match="max_seq_length"):
    hf.load_text(str(bert_dir), max_seq_length=1000)
  with pytest.raises(ValueError, match="pooling"):
    hf.load_text(str(bert_dir), pooling="max")


def _image(h, w, seed=0):
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def test_clip_vision_preprocess_and_pooler(tmp_path):
  config = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4)
  model = transformers.FlaxCLIPVisionModel(config, seed=0)
  model.save_pretrained(str(tmp_path))
  proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
  proc.save_pretrained(str(tmp_path))
  enc = load_image_encoder(f"hf:{tmp_path}")
  assert enc.dim == 32 and enc.resolution == 32
  images = [_image(50, 41, 0), _image(32, 70, 1)]
  x = np.stack([enc.preprocess(im) for im in images])
  want_x = np.transpose(proc(images=images, return_tensors="np")["pixel_values"], (0, 2, 3, 1))
  assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32
  np.testing.assert_allclose(x, want_x, atol=1e-4)
  want = np.asarray(model(np.transpose(x, (0, 3, 1, 2))).pooler_output)
  np.testing.assert_allclose(np.asarray(enc.apply(x)), want, atol=1e-5)
  json.dumps(enc.info)


def test_dinov2_default_preprocess_and_poolings(tmp_path):
  config = transformers.Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, mlp_ratio=2)
  model = transformers.FlaxDinov2Model(config, seed=0)
  model.save_pretrained(str(tmp_path))  # no preprocessor_config.json: defaults apply
  im = _image(40, 64, 2)
  resized = np.asarray(im.resize((51, 32), Image.Resampling.BICUBIC), np.float32)  # short side 32, long int(32*64/40)
  crop = resized[:, 9:41]
  want_x = (crop / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  outs = {}
  for pooling in ("pooler", "cls", "mean"):
    enc = hf.load_image(str(tmp_path), pooling=pooling)
    x = enc.preprocess(im)
    np.testing.assert_allclose(x, want_x, atol=1e-5)
    outs[pooling] = np.asarray(enc.apply(x[None]))
  ref = model(np.transpose(x[None], (0, 3, 1, 2)))
  np.testing.assert_allclose(outs["pooler"], np.asarray(ref.pooler_output), atol=1e-5)
  np.testing.assert_allclose(outs["cls"], np.asarray(ref.last_hidden_state)[:, 0], atol=1e-5)
  np.testing.assert_allclose(outs["mean"], np.asarray(ref.last_hidden_state).mean(1), atol=1e-5)
  with pytest.raises(ValueError, match="pooling"):
    hf.load_image(str(tmp_path), pooling="max")


def test_text_from_pytorch_named_safetensors(bert_dir, token_states, tmp_path):
  """A checkpoint holding only a PyTorch-style model.safetensors loads by name, without torch."""
  import shutil  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  params = transformers.FlaxBertModel.from_pretrained(str(bert_dir)).params
  state = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    *mods, kind = [p.key for p in path]
    w = np.asarray(leaf)
    name = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}[kind]
    state["bert." + ".".join(mods + [name])] = np.ascontiguousarray(w.T if kind == "kernel" else w)
  for f in bert_dir.iterdir():
    if f.name != "flax_model.msgpack":
      shutil.copy(f, tmp_path / f.name)
  save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  enc = hf.load_text(str(tmp_path), max_seq_length=20)
  want = np.stack([h[-1].mean(0) for h in token_states])
  want /= np.linalg.norm(want, axis=-1, keepdims=True)
  np.testing.assert_allclose(enc.encode(SENTENCES), want, atol=1e-5)
