"""Tests for the text half of sotalign_jax.encoders.hf (on sotalign_jax.encoders.bert) with tiny random checkpoints.

Each checkpoint is written to a tmp dir as Hugging Face stores one: ``config.json``, a ``model.safetensors`` with
PyTorch names (``safetensors.numpy``) and a ``tokenizer.json`` built with the ``tokenizers`` library. The oracle is
Hugging Face's ``BertModel`` / ``RobertaModel`` forward (eval mode) written out in float64 numpy below, run on each
sentence alone, unpadded, on token ids truncated by hand; the encoder under test pads and batches them.
"""

import json
import shutil

import jax
import numpy as np
import pytest
import tokenizers
from safetensors.numpy import save_file
from scipy.special import erf
from tokenizers import models, normalizers, pre_tokenizers, processors

from sotalign_jax.encoders import bert, checkpoint, hf, load_text_encoder, mpnet, text

WORDS = ["a", "dog", "cat", "runs", "in", "the", "park", "red", "ball", "!", ",", "."]
SENTENCES = ["A dog runs in the park.", "the cats", "", "red ball , red ball ! " * 6, "  unknownword dog "]
MAX_LEN = 20
# Max |float32 JAX - float64 numpy| allowed on hidden states (values up to ~4) and on unit sentence vectors:
# ~2.5-4x the measured maxima (BERT 8.1e-7 / 1.3e-7, RoBERTa 8.2e-7 / 1.1e-7).
ATOL_STATES = 2e-6
ATOL_VECTORS = 5e-7


# ---------------------------------------------------------------- checkpoints


def _random_state(rng, *, vocab, d, layers, inter, max_pos, type_vocab, prefix=""):
  """A random state dict with Hugging Face ``BertModel``'s parameter names and PyTorch layouts (and a pooler)."""
  normal = lambda *shape, scale=1.0: (scale * rng.normal(size=shape)).astype(np.float32)
  state = {"embeddings.word_embeddings.weight": normal(vocab, d),
           "embeddings.position_embeddings.weight": normal(max_pos, d),
           "embeddings.token_type_embeddings.weight": normal(type_vocab, d),
           "embeddings.position_ids": np.arange(max_pos)[None]}  # a buffer, ignored by the loader
  linear = lambda name, n_out, n_in: state.update({f"{name}.weight": normal(n_out, n_in, scale=n_in ** -0.5),
                                                   f"{name}.bias": normal(n_out, scale=0.1)})
  layer_norm = lambda name: state.update({f"{name}.weight": 1 + normal(d, scale=0.1),
                                          f"{name}.bias": normal(d, scale=0.1)})
  layer_norm("embeddings.LayerNorm")
  for i in range(layers):
    pre = f"encoder.layer.{i}."
    for m in ("query", "key", "value"):
      linear(pre + f"attention.self.{m}", d, d)
    linear(pre + "attention.output.dense", d, d)
    layer_norm(pre + "attention.output.LayerNorm")
    linear(pre + "intermediate.dense", inter, d)
    linear(pre + "output.dense", d, inter)
    layer_norm(pre + "output.LayerNorm")
  linear("pooler.dense", d, d)
  return {prefix + k: v for k, v in state.items()}


def _bert_tokenizer(vocab):
  tok = tokenizers.Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))])
  return tok


def _roberta_tokenizer(vocab):
  tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
      single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
      special_tokens=[("<s>", vocab.index("<s>")), ("</s>", vocab.index("</s>"))])
  return tok


def _write(d, config, state, tok):
  (d / "config.json").write_text(json.dumps(config))
  save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
  tok.save(str(d / "tokenizer.json"))
  return d


SIZES = dict(d=32, layers=2, inter=64, max_pos=64)
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s"]
ROBERTA_VOCAB = ["<s>", "<pad>", "</s>", "<unk>"] + WORDS + ["cats"]


def _config(model_type, vocab, **kw):
  roberta = model_type != "bert"
  return dict(model_type=model_type, vocab_size=len(vocab), hidden_size=SIZES["d"],
              num_hidden_layers=SIZES["layers"], num_attention_heads=4, intermediate_size=SIZES["inter"],
              hidden_act="gelu", max_position_embeddings=SIZES["max_pos"], type_vocab_size=1 if roberta else 2,
              layer_norm_eps=1e-3,  # not a default, so a loader that ignores it fails
              pad_token_id=1 if roberta else 0, position_embedding_type="absolute", **kw)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  config = _config("bert", BERT_VOCAB)
  state = _random_state(np.random.default_rng(0), vocab=len(BERT_VOCAB), type_vocab=2, **SIZES)
  return _write(tmp_path_factory.mktemp("tiny_bert"), config, state, _bert_tokenizer(BERT_VOCAB))


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
  config = _config("xlm-roberta", ROBERTA_VOCAB)
  state = _random_state(np.random.default_rng(1), vocab=len(ROBERTA_VOCAB), type_vocab=1, prefix="roberta.",
                        **SIZES)
  state["lm_head.dense.weight"] = np.ones((3, 3), np.float32)  # a head: ignored
  return _write(tmp_path_factory.mktemp("tiny_roberta"), config, state, _roberta_tokenizer(ROBERTA_VOCAB))


# ---------------------------------------------------------------- the float64 oracle


def _activation(name, x):
  if name == "gelu":
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))
  if name == "gelu_new":
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
  return np.maximum(x, 0)  # relu


def _np_forward(state, config, ids, mask):
  """Hugging Face ``BertModel`` / ``RobertaModel`` forward in float64 numpy; every hidden state ``[L + 1, b, l, d]``.

  Args:
    state: PyTorch-named weights (a ``bert.`` / ``roberta.`` prefix is dropped here).
    config: the ``config.json`` dict.
    ids: ``[b, l]`` token ids.
    mask: ``[b, l]`` attention mask.
  """
  w = {k.split(".", 1)[1] if k.split(".")[0] in ("bert", "roberta") else k: v.astype(np.float64)
       for k, v in state.items()}
  eps, heads, pad = config["layer_norm_eps"], config["num_attention_heads"], config["pad_token_id"]
  layer_norm = lambda x, p: ((x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
                             * w[p + ".weight"] + w[p + ".bias"])
  linear = lambda x, p: x @ w[p + ".weight"].T + w[p + ".bias"]
  b, l = ids.shape
  if config["model_type"] == "bert":
    positions = np.broadcast_to(np.arange(l), (b, l))
  else:  # create_position_ids_from_input_ids: pad + 1, pad + 2, ... over non-pad tokens, pad on padding
    positions = np.zeros_like(ids)
    for i in range(b):
      n = 0
      for j in range(l):
        n += ids[i, j] != pad
        positions[i, j] = n + pad if ids[i, j] != pad else pad
  x = layer_norm(w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][positions]
                 + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
  d_head = x.shape[-1] // heads
  states = [x]
  for i in range(config["num_hidden_layers"]):
    pre = f"encoder.layer.{i}."
    split = lambda t: t.reshape(b, l, heads, d_head).transpose(0, 2, 1, 3)  # [b, h, l, d_head]
    q, k, v = (split(linear(x, pre + f"attention.self.{m}")) for m in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d_head)
    scores = np.where(mask[:, None, None, :] > 0, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, l, -1)
    attn = layer_norm(linear(context, pre + "attention.output.dense") + x, pre + "attention.output.LayerNorm")
    hidden = _activation(config["hidden_act"], linear(attn, pre + "intermediate.dense"))
    x = layer_norm(linear(hidden, pre + "output.dense") + attn, pre + "output.LayerNorm")
    states.append(x)
  return np.stack(states)


def _checkpoint(d):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  return load_file(str(d / "model.safetensors")), json.loads((d / "config.json").read_text())


def _token_ids(d, sentences, max_len):
  """Token ids of each stripped sentence, truncated by hand to ``max_len`` keeping the closing special token."""
  tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
  ids = [tok.encode(s.strip()).ids for s in sentences]
  return [t if len(t) <= max_len else t[:max_len - 1] + t[-1:] for t in ids]


def _reference_states(d, sentences, max_len=MAX_LEN):
  """Per sentence, the numpy oracle on its own unpadded tokens: ``[L + 1, l, d]``."""
  state, config = _checkpoint(d)
  return [_np_forward(state, config, np.asarray([t]), np.ones((1, len(t))))[:, 0]
          for t in _token_ids(d, sentences, max_len)]


POOL = {"mean": lambda h: h.mean(-2), "cls": lambda h: h[..., 0, :], "last-token": lambda h: h[..., -1, :]}


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------- tests


def test_tokenizers_and_truncation_oracle(bert_dir, roberta_dir):
  """The hand-built tokenizers do what the oracle assumes (special tokens, WordPiece, unknown words)."""
  b = _token_ids(bert_dir, SENTENCES, MAX_LEN)
  assert b[0] == [BERT_VOCAB.index(t) for t in ["[CLS]", "a", "dog", "runs", "in", "the", "park", ".", "[SEP]"]]
  assert b[1] == [BERT_VOCAB.index(t) for t in ["[CLS]", "the", "cat", "##s", "[SEP]"]]
  assert b[2] == [2, 3] and len(b[3]) == MAX_LEN and b[3][-1] == 3 and b[4][1] == BERT_VOCAB.index("[UNK]")
  r = _token_ids(roberta_dir, SENTENCES, MAX_LEN)
  assert r[1] == [0, ROBERTA_VOCAB.index("the"), ROBERTA_VOCAB.index("cats"), 2] and r[2] == [0, 2]
  assert len(r[3]) == MAX_LEN and r[3][-1] == 2 and r[4][1] == ROBERTA_VOCAB.index("<unk>")
  enc = hf.load_text(str(bert_dir), max_seq_length=MAX_LEN)  # the loader's tokenizer gives the same ids
  batcher = text.Batcher(text.load_tokenizer(bert_dir / "tokenizer.json", MAX_LEN), MAX_LEN, 0)
  assert batcher.tokenize(SENTENCES) == b and enc.info["max_seq_length"] == MAX_LEN


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_text_states_and_sentence_vectors_match_numpy(arch, request):
  d = request.getfixturevalue(f"{arch}_dir")
  want = _reference_states(d, SENTENCES)
  enc, encode_layers = hf.load_text_with_layers(str(d), batch_size=2, bucket=8, max_seq_length=MAX_LEN)
  got = enc.encode(SENTENCES)  # default head: masked mean + L2 normalisation; padded batches of 2
  assert got.shape == (5, 32) and got.dtype == np.float32 and enc.dim == 32
  assert enc.info["pooling"] == "mean" and enc.info["normalize"] is True
  np.testing.assert_allclose(got, _unit(np.stack([POOL["mean"](h[-1]) for h in want])), rtol=0, atol=ATOL_VECTORS)
  for pooling, fn in POOL.items():
    layers = encode_layers(SENTENCES, pooling=pooling)
    assert layers.shape == (3, 5, 32) and layers.dtype == np.float32
    np.testing.assert_allclose(layers, np.stack([fn(h) for h in want], 1), rtol=0, atol=ATOL_STATES,
                               err_msg=pooling)
  unit_cls = encode_layers(SENTENCES, pooling="cls", normalize=True)
  np.testing.assert_allclose(unit_cls, _unit(np.stack([h[:, 0] for h in want], 1)), rtol=0, atol=ATOL_VECTORS)
  cls = hf.load_text(str(d), batch_size=4, max_seq_length=MAX_LEN, pooling="cls", normalize=False)
  np.testing.assert_allclose(cls.encode(SENTENCES), np.stack([h[-1, 0] for h in want]), rtol=0, atol=ATOL_STATES)
  assert cls.encode([]).shape == (0, 32) and encode_layers([]).shape == (3, 0, 32)


def test_hf_names_defaults_and_info(bert_dir, roberta_dir, tmp_path):
  enc = load_text_encoder(f"hf:{roberta_dir}", install=True)  # local: nothing to install, the flag is ignored
  assert enc.name == f"hf:{roberta_dir}" and enc.info["max_seq_length"] == SIZES["max_pos"] - 2  # from pad + 1
  assert enc.info["architecture"] == "xlm-roberta" and enc.info["weights"] == f"local:{roberta_dir.resolve()}"
  json.dumps(enc.info)
  d = shutil.copytree(bert_dir, tmp_path / "bert")
  (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 40}))
  enc = load_text_encoder(f"hf:{d}")
  assert enc.info["max_seq_length"] == 40 and enc.info["architecture"] == "bert"
  long = ["red " * 60]
  want = _unit(POOL["mean"](_reference_states(d, long, max_len=40)[0][-1]))
  np.testing.assert_allclose(enc.encode(long)[0], want, rtol=0, atol=ATOL_VECTORS)


def test_padding_positions_and_mask(roberta_dir):
  """Directly on the module: RoBERTa positions skip padding and padded keys get no attention weight."""
  state, config = _checkpoint(roberta_dir)
  cfg = bert.BertConfig.from_dict(config)
  params = text.load_params(roberta_dir, bert.param_shapes(cfg))
  ids = np.array([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
  mask = (ids != 1).astype(np.int32)
  got = np.stack(bert.BertModel(cfg).apply({"params": params}, ids, mask))
  want = _np_forward(state, config, ids, mask)
  np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=0, atol=ATOL_STATES)
  np.testing.assert_allclose(got[:, 1, :3], want[:, 1, :3], rtol=0, atol=ATOL_STATES)
  alone = np.stack(bert.BertModel(cfg).apply({"params": params}, ids[1:, :3], mask[1:, :3]))
  np.testing.assert_allclose(got[:, 1, :3], alone[:, 0], rtol=0, atol=ATOL_STATES)


@pytest.mark.parametrize("act", ["gelu_new", "relu"])
def test_other_activations_match_numpy(bert_dir, act):
  state, config = _checkpoint(bert_dir)
  config = dict(config, hidden_act=act)
  cfg = bert.BertConfig.from_dict(config)
  params = text.load_params(bert_dir, bert.param_shapes(cfg))
  ids = np.array([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
  mask = (ids != 0).astype(np.int32)
  got = np.stack(jax.jit(bert.BertModel(cfg).apply)({"params": params}, ids, mask))
  want = _np_forward(state, config, ids, mask)
  np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=0, atol=ATOL_STATES)
  np.testing.assert_allclose(got[:, 1, :3], want[:, 1, :3], rtol=0, atol=ATOL_STATES)


def test_checkpoint_formats_load_the_same_parameters(bert_dir, tmp_path):
  """Prefixed PyTorch names with legacy gamma/beta, Flax-named safetensors and flax_model.msgpack agree."""
  import flax.serialization  # pylint: disable=g-import-not-at-top
  state, config = _checkpoint(bert_dir)
  shapes = bert.param_shapes(bert.BertConfig.from_dict(config))
  want = text.load_params(bert_dir, shapes)
  legacy = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in state.items()}
  legacy["cls.predictions.bias"] = np.zeros(3, np.float32)
  save_file(legacy, str(tmp_path / "model.safetensors"))
  jax.tree.map(np.testing.assert_array_equal, text.load_params(tmp_path, shapes), want)
  flax_tree = {"bert": {**want, "pooler": {"dense": {"kernel": np.ones((32, 32), np.float32)}}}}
  (tmp_path / "model.safetensors").unlink()
  (tmp_path / "flax_model.msgpack").write_bytes(flax.serialization.msgpack_serialize(flax_tree))
  jax.tree.map(np.testing.assert_array_equal, text.load_params(tmp_path, shapes), want)
  flat = {".".join(str(p.key) for p in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(flax_tree["bert"])[0]}
  save_file(flat, str(tmp_path / "model.safetensors"), metadata={"format": "flax"})
  jax.tree.map(np.testing.assert_array_equal, text.load_params(tmp_path, shapes), want)
  (tmp_path / "model.safetensors").unlink()
  (tmp_path / "flax_model.msgpack").unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    text.load_params(tmp_path, shapes)


def test_mpnet_checkpoint_loads_through_hf(tmp_path):
  """An ``mpnet.``-prefixed MPNet checkpoint runs on mpnet.MPNetModel (numerics: tests/test_text_encoders.py)."""
  cfg = mpnet.MPNetConfig(vocab_size=len(ROBERTA_VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=32, max_position_embeddings=30)
  rng = np.random.default_rng(2)
  shapes = mpnet.param_shapes(cfg)
  flat = {}
  for name, leaf in checkpoint.flatten_tree(shapes).items():  # PyTorch names and layouts of the Flax tree
    *mods, kind = name.split("/")
    shape = leaf.shape[::-1] if kind == "kernel" else leaf.shape
    flat["mpnet." + ".".join(mods + ["bias" if kind == "bias" else "weight"])] = rng.normal(size=shape).astype(
        np.float32)
  config = dict(model_type="mpnet", vocab_size=cfg.vocab_size, hidden_size=16, num_hidden_layers=1,
                num_attention_heads=4, intermediate_size=32, max_position_embeddings=30, pad_token_id=1)
  _write(tmp_path, config, flat, _roberta_tokenizer(ROBERTA_VOCAB))
  enc, encode_layers = hf.load_text_with_layers(str(tmp_path), batch_size=2)
  assert enc.info["architecture"] == "mpnet" and enc.info["max_seq_length"] == 28 and enc.dim == 16
  params = text.load_params(tmp_path, shapes)
  want = [np.stack(mpnet.MPNetModel(cfg).apply({"params": params}, np.asarray([t]), np.ones((1, len(t)))))[:, 0]
          for t in _token_ids(tmp_path, SENTENCES, 28)]
  np.testing.assert_allclose(encode_layers(SENTENCES), np.stack([h.mean(-2) for h in want], 1), rtol=0,
                             atol=ATOL_STATES)


def test_unknown_architecture_is_one_line(bert_dir, tmp_path):
  d = shutil.copytree(bert_dir, tmp_path / "gpt")
  (d / "config.json").write_text(json.dumps(dict(_checkpoint(bert_dir)[1], model_type="gpt2")))
  with pytest.raises(ValueError, match=r"model_type='gpt2' is not a supported text architecture") as e:
    hf.load_text(str(d))
  assert "\n" not in str(e.value) and all(a in str(e.value) for a in ("bert", "roberta", "xlm-roberta", "mpnet"))
  with pytest.raises(ValueError, match="gpt2"):
    load_text_encoder(f"hf:{d}")


def test_text_bad_inputs(bert_dir, tmp_path):
  with pytest.raises(ValueError, match="config.json"):
    hf.load_text(str(tmp_path))
  for n in (1000, SIZES["max_pos"] + 1, 1):
    with pytest.raises(ValueError, match="max_seq_length"):
      hf.load_text(str(bert_dir), max_seq_length=n)
  with pytest.raises(ValueError, match="pooling"):
    hf.load_text(str(bert_dir), pooling="max")
  enc = hf.load_text(str(bert_dir))
  with pytest.raises(ValueError, match="list of str"):
    enc.encode("a sentence")
  d = shutil.copytree(bert_dir, tmp_path / "ckpt")
  config = _checkpoint(bert_dir)[1]
  for key, value, match in (("hidden_act", "swish", "hidden_act"), ("position_embedding_type", "relative_key",
                                                                    "position_embedding_type"),
                            ("num_attention_heads", 5, "num_attention_heads"), ("hidden_size", 48, "lacks")):
    (d / "config.json").write_text(json.dumps(dict(config, **{key: value})))
    with pytest.raises(ValueError, match=match):
      hf.load_text(str(d))
  (d / "config.json").write_text(json.dumps(config))
  (d / "tokenizer.json").unlink()
  with pytest.raises(ValueError, match="tokenizer.json"):
    hf.load_text(str(d))
