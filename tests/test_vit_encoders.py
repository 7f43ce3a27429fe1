"""Tests for sotalign_jax.encoders.vit (and hf.load_image) on tiny random checkpoints written to a tmp dir.

Each checkpoint is a ``config.json`` plus a ``model.safetensors`` with Hugging Face PyTorch parameter names.
Oracles: a float64 numpy forward pass written out here (patchify as reshape + matmul, layer norm, softmax
attention, the activations, layer scale, PyTorch's bicubic resize as a loop over taps, SigLIP's probe
attention), and PIL + numpy preprocessing.
"""

import json
import math

import jax
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file
from scipy.special import erf

from sotalign_jax.encoders import hf, load_image_encoder, vit

D, HEADS, LAYERS, WIDTH, PATCH = 32, 4, 2, 48, 8
CLIP_MEAN, CLIP_STD = [0.4815, 0.4578, 0.4082], [0.2686, 0.2613, 0.2758]
ATOL = 5e-6


# ----------------------------------------------------------------------------------------------------------------
# Tiny checkpoints in PyTorch naming.


def _w(rng, *shape, scale=None):
  scale = 1 / math.sqrt(shape[-1]) if scale is None else scale
  return (rng.standard_normal(shape) * scale).astype(np.float32)


def _norm(rng, name):
  return {f"{name}.weight": (1 + _w(rng, D, scale=0.2)), f"{name}.bias": _w(rng, D, scale=0.2)}


def _dense(rng, name, n_out, n_in):
  return {f"{name}.weight": _w(rng, n_out, n_in), f"{name}.bias": _w(rng, n_out, scale=0.2)}


def _clip_like_layers(rng, prefix):
  s = {}
  for i in range(LAYERS):
    p = f"{prefix}encoder.layers.{i}."
    s |= _norm(rng, p + "layer_norm1") | _norm(rng, p + "layer_norm2")
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
      s |= _dense(rng, f"{p}self_attn.{name}", D, D)
    s |= _dense(rng, p + "mlp.fc1", WIDTH, D) | _dense(rng, p + "mlp.fc2", D, WIDTH)
  return s


def clip_state(rng, grid, prefix="vision_model."):
  s = {f"{prefix}embeddings.patch_embedding.weight": _w(rng, D, 3, PATCH, PATCH, scale=0.1),
       f"{prefix}embeddings.class_embedding": _w(rng, D, scale=1.0),
       f"{prefix}embeddings.position_embedding.weight": _w(rng, grid ** 2 + 1, D, scale=0.5),
       f"{prefix}embeddings.position_ids": np.arange(grid ** 2 + 1, dtype=np.int64)[None]}
  s |= _norm(rng, prefix + "pre_layrnorm") | _clip_like_layers(rng, prefix) | _norm(rng, prefix + "post_layernorm")
  return s


def siglip_state(rng, grid):
  prefix = "vision_model."
  s = {f"{prefix}embeddings.patch_embedding.weight": _w(rng, D, 3, PATCH, PATCH, scale=0.1),
       f"{prefix}embeddings.patch_embedding.bias": _w(rng, D, scale=0.2),
       f"{prefix}embeddings.position_embedding.weight": _w(rng, grid ** 2, D, scale=0.5)}
  s |= _clip_like_layers(rng, prefix) | _norm(rng, prefix + "post_layernorm")
  s |= {f"{prefix}head.probe": _w(rng, 1, 1, D, scale=1.0),
        f"{prefix}head.attention.in_proj_weight": _w(rng, 3 * D, D),
        f"{prefix}head.attention.in_proj_bias": _w(rng, 3 * D, scale=0.2)}
  s |= _dense(rng, prefix + "head.attention.out_proj", D, D) | _norm(rng, prefix + "head.layernorm")
  s |= _dense(rng, prefix + "head.mlp.fc1", WIDTH, D) | _dense(rng, prefix + "head.mlp.fc2", D, WIDTH)
  return s


def dinov2_state(rng, grid, width, swiglu=False):
  s = {"embeddings.cls_token": _w(rng, 1, 1, D, scale=1.0), "embeddings.mask_token": _w(rng, 1, D),
       "embeddings.position_embeddings": _w(rng, 1, grid ** 2 + 1, D, scale=0.5),
       "embeddings.patch_embeddings.projection.weight": _w(rng, D, 3, PATCH, PATCH, scale=0.1),
       "embeddings.patch_embeddings.projection.bias": _w(rng, D, scale=0.2)}
  for i in range(LAYERS):
    p = f"encoder.layer.{i}."
    s |= _norm(rng, p + "norm1") | _norm(rng, p + "norm2")
    for name in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                 "attention.output.dense"):
      s |= _dense(rng, p + name, D, D)
    s[p + "layer_scale1.lambda1"] = 1 + _w(rng, D, scale=0.5)
    s[p + "layer_scale2.lambda1"] = 1 + _w(rng, D, scale=0.5)
    if swiglu:
      s |= _dense(rng, p + "mlp.weights_in", 2 * width, D) | _dense(rng, p + "mlp.weights_out", D, width)
    else:
      s |= _dense(rng, p + "mlp.fc1", width, D) | _dense(rng, p + "mlp.fc2", D, width)
  return s | _norm(rng, "layernorm")


def _write(directory, config, state, preprocessor=None):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(config))
  save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
  if preprocessor is not None:
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
  return directory


CLIP_VISION = dict(model_type="clip_vision_model", hidden_size=D, intermediate_size=WIDTH, num_hidden_layers=LAYERS,
                   num_attention_heads=HEADS, image_size=32, patch_size=PATCH, hidden_act="quick_gelu",
                   layer_norm_eps=1e-5)
SIGLIP_VISION = dict(model_type="siglip_vision_model", hidden_size=D, intermediate_size=WIDTH,
                     num_hidden_layers=LAYERS, num_attention_heads=HEADS, image_size=32, patch_size=PATCH)
DINOV2 = dict(model_type="dinov2", hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS, mlp_ratio=1.5,
              image_size=40, patch_size=PATCH)  # a 5 x 5 pretraining grid, so 32 px inputs interpolate


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  rng = np.random.default_rng(0)
  root = tmp_path_factory.mktemp("vit")
  out = {}
  clip = clip_state(rng, 4)
  clip_pre = dict(do_resize=True, size={"shortest_edge": 32}, do_center_crop=True,
                  crop_size={"height": 32, "width": 32}, image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3)
  out["clip"] = (_write(root / "clip", CLIP_VISION, clip, clip_pre), clip)
  # A full CLIP checkpoint: the same vision tower beside a text tower (different shapes) and the projections.
  text = {"text_model.embeddings.token_embedding.weight": _w(rng, 50, 16),
          "text_model.encoder.layers.0.self_attn.q_proj.weight": _w(rng, 16, 16),
          "text_model.final_layer_norm.weight": _w(rng, 16), "visual_projection.weight": _w(rng, 8, D),
          "text_projection.weight": _w(rng, 8, 16), "logit_scale": np.float32([2.6])}
  full_config = dict(model_type="clip", projection_dim=8, text_config=dict(hidden_size=16, num_hidden_layers=1),
                     vision_config={k: v for k, v in CLIP_VISION.items() if k != "model_type"})
  out["clip_full"] = (_write(root / "clip_full", full_config, clip | text, clip_pre), clip)
  siglip = siglip_state(rng, 4)
  siglip_pre = dict(do_resize=True, size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                    resample=3, rescale_factor=1 / 255)
  out["siglip"] = (_write(root / "siglip", SIGLIP_VISION, siglip, siglip_pre), siglip)
  dino = dinov2_state(rng, 5, int(D * 1.5))
  out["dinov2"] = (_write(root / "dinov2", DINOV2, dino), dino)  # no preprocessor_config.json: defaults
  swiglu = dinov2_state(rng, 5, (int(int(D * 1.5) * 2 / 3) + 7) // 8 * 8, swiglu=True)
  out["dinov2_swiglu"] = (_write(root / "dinov2_swiglu", DINOV2 | dict(use_swiglu_ffn=True), swiglu), swiglu)
  return out


# ----------------------------------------------------------------------------------------------------------------
# float64 numpy reference.


def _ln(x, s, name, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * s[f"{name}.weight"] + s[f"{name}.bias"]


def _lin(x, s, name):
  return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]


def _attention(xq, xkv, s, q, k, v, o):
  b, m, d = xq.shape
  heads = lambda t: t.reshape(b, t.shape[1], HEADS, d // HEADS).transpose(0, 2, 1, 3)
  scores = heads(_lin(xq, s, q)) @ heads(_lin(xkv, s, k)).transpose(0, 1, 3, 2) / math.sqrt(d // HEADS)
  p = np.exp(scores - scores.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return _lin((p @ heads(_lin(xkv, s, v))).transpose(0, 2, 1, 3).reshape(b, m, d), s, o)


ACTS = {"quick_gelu": lambda x: x / (1 + np.exp(-1.702 * x)),
        "gelu": lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
        "gelu_pytorch_tanh": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))}


def _patchify(x, s, name):
  b, h, w, c = x.shape
  gh, gw = h // PATCH, w // PATCH
  x = x[:, :gh * PATCH, :gw * PATCH].reshape(b, gh, PATCH, gw, PATCH, c).transpose(0, 1, 3, 5, 2, 4)
  out = x.reshape(b, gh * gw, c * PATCH * PATCH) @ s[f"{name}.weight"].reshape(D, -1).T
  return out + s[f"{name}.bias"] if f"{name}.bias" in s else out


def torch_bicubic(img, out_h, out_w):
  """PyTorch's upsample_bicubic2d (align_corners=False, a = -0.75, clamped taps), pixel by pixel: [h, w, d]."""
  a = -0.75
  near = lambda t: ((a + 2) * t - (a + 3)) * t * t + 1
  far = lambda t: ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  h, w = img.shape[:2]
  out = np.zeros((out_h, out_w, img.shape[2]))
  for i in range(out_h):
    sy = (i + 0.5) * h / out_h - 0.5
    y0, ty = math.floor(sy), sy - math.floor(sy)
    wy = [far(ty + 1), near(ty), near(1 - ty), far(2 - ty)]
    for j in range(out_w):
      sx = (j + 0.5) * w / out_w - 0.5
      x0, tx = math.floor(sx), sx - math.floor(sx)
      wx = [far(tx + 1), near(tx), near(1 - tx), far(2 - tx)]
      for m in range(4):
        for n in range(4):
          yy, xx = min(max(y0 - 1 + m, 0), h - 1), min(max(x0 - 1 + n, 0), w - 1)
          out[i, j] += wy[m] * wx[n] * img[yy, xx]
  return out


def reference(family, state, x, config):
  """``(last_hidden_state, pooler_output)`` of the Hugging Face model, in float64."""
  s = {k: v.astype(np.float64) for k, v in state.items()}
  if family in ("clip", "siglip"):
    s = {k[len("vision_model."):]: v for k, v in s.items() if k.startswith("vision_model.")}
  x = x.astype(np.float64)
  b, gh, gw = x.shape[0], x.shape[1] // PATCH, x.shape[2] // PATCH
  if family == "dinov2":
    h = _patchify(x, s, "embeddings.patch_embeddings.projection")
    h = np.concatenate([np.broadcast_to(s["embeddings.cls_token"], (b, 1, D)), h], 1)
    pos = s["embeddings.position_embeddings"][0]
    n = config["image_size"] // PATCH
    if (gh, gw) != (n, n):
      pos = np.concatenate([pos[:1], torch_bicubic(pos[1:].reshape(n, n, D), gh, gw).reshape(-1, D)])
    h = h + pos
    for i in range(LAYERS):
      p = f"encoder.layer.{i}."
      att = _attention(*[_ln(h, s, p + "norm1", 1e-6)] * 2, s, *[p + "attention.attention." + n
                                                                  for n in ("query", "key", "value")],
                       p + "attention.output.dense")
      h = h + att * s[p + "layer_scale1.lambda1"]
      y = _ln(h, s, p + "norm2", 1e-6)
      if config.get("use_swiglu_ffn"):
        u, g = np.split(_lin(y, s, p + "mlp.weights_in"), 2, axis=-1)
        y = _lin(u / (1 + np.exp(-u)) * g, s, p + "mlp.weights_out")
      else:
        y = _lin(ACTS["gelu"](_lin(y, s, p + "mlp.fc1")), s, p + "mlp.fc2")
      h = h + y * s[p + "layer_scale2.lambda1"]
    h = _ln(h, s, "layernorm", 1e-6)
    return h, h[:, 0]
  eps = config.get("layer_norm_eps", 1e-5 if family == "clip" else 1e-6)
  act = ACTS[config.get("hidden_act", "quick_gelu" if family == "clip" else "gelu_pytorch_tanh")]
  h = _patchify(x, s, "embeddings.patch_embedding")
  if family == "clip":
    h = np.concatenate([np.broadcast_to(s["embeddings.class_embedding"], (b, 1, D)), h], 1)
  h = h + s["embeddings.position_embedding.weight"]
  if family == "clip":
    h = _ln(h, s, "pre_layrnorm", eps)
  for i in range(LAYERS):
    p = f"encoder.layers.{i}."
    h = h + _attention(*[_ln(h, s, p + "layer_norm1", eps)] * 2, s,
                       *[f"{p}self_attn.{n}_proj" for n in ("q", "k", "v", "out")])
    h = h + _lin(act(_lin(_ln(h, s, p + "layer_norm2", eps), s, p + "mlp.fc1")), s, p + "mlp.fc2")
  if family == "clip":
    return h, _ln(h[:, 0], s, "post_layernorm", eps)
  h = _ln(h, s, "post_layernorm", eps)
  wq, wk, wv = np.split(s["head.attention.in_proj_weight"], 3)
  bq, bk, bv = np.split(s["head.attention.in_proj_bias"], 3)
  s |= {"hq.weight": wq, "hq.bias": bq, "hk.weight": wk, "hk.bias": bk, "hv.weight": wv, "hv.bias": bv}
  y = _attention(np.broadcast_to(s["head.probe"], (b, 1, D)), h, s, "hq", "hk", "hv", "head.attention.out_proj")
  y = y + _lin(act(_lin(_ln(y, s, "head.layernorm", eps), s, "head.mlp.fc1")), s, "head.mlp.fc2")
  return h, y[:, 0]


def reference_pool(family, state, x, config, pooling):
  h, pooled = reference(family, state, x, config)
  first = 0 if family == "siglip" else 1
  return {"pooler": pooled, "cls": h[:, 0], "mean": h[:, first:].mean(1),
          "cls_mean": np.concatenate([h[:, 0], h[:, first:].mean(1)], -1)}[pooling]


# ----------------------------------------------------------------------------------------------------------------
# Tests.


def _pixels(b, h, w, seed):
  return np.random.default_rng(seed).standard_normal((b, h, w, 3)).astype(np.float32)


CASES = [("clip", "clip", CLIP_VISION, ("pooler", "cls", "mean", "cls_mean"), (32, 32)),
         ("clip_full", "clip", CLIP_VISION, ("pooler", "cls_mean"), (32, 32)),
         ("siglip", "siglip", SIGLIP_VISION, ("pooler", "mean"), (32, 32)),
         ("dinov2", "dinov2", DINOV2, ("pooler", "cls", "mean", "cls_mean"), (40, 40)),
         ("dinov2_swiglu", "dinov2", DINOV2 | dict(use_swiglu_ffn=True), ("pooler", "mean"), (40, 40))]


@pytest.mark.parametrize("name,family,config,poolings,hw", CASES, ids=[c[0] for c in CASES])
def test_forward_matches_numpy_reference(ckpts, name, family, config, poolings, hw):
  directory, state = ckpts[name]
  cfg, params = vit.load_checkpoint(directory)
  assert cfg.family == family
  x = _pixels(3, *hw, seed=1)
  for pooling in poolings:
    got = np.asarray(vit.features(params, x, config=cfg, pooling=pooling))
    want = reference_pool(family, state, x, config, pooling)
    assert got.shape == want.shape == (3, 2 * D if pooling == "cls_mean" else D)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"{name} {pooling}")


@pytest.mark.parametrize("hw", [(32, 32), (56, 48), (47, 33)])
def test_dinov2_interpolates_position_embeddings_like_torch(ckpts, hw):
  directory, state = ckpts["dinov2"]
  cfg, params = vit.load_checkpoint(directory)
  x = _pixels(2, *hw, seed=2)
  for pooling in ("pooler", "mean"):
    got = np.asarray(vit.features(params, x, config=cfg, pooling=pooling))
    np.testing.assert_allclose(got, reference_pool("dinov2", state, x, DINOV2, pooling), atol=ATOL, rtol=0)


@pytest.mark.parametrize("n_in,n_out", [(5, 4), (37, 16), (4, 9), (6, 6), (1, 3)])
def test_bicubic_matrix_matches_torch_loop(n_in, n_out):
  img = np.random.default_rng(3).standard_normal((n_in, n_in, 2))
  wh, ww = vit.bicubic_matrix(n_in, n_out), vit.bicubic_matrix(n_in, n_out + 1)
  np.testing.assert_allclose(np.einsum("ih,jw,hwd->ijd", wh, ww, img), torch_bicubic(img, n_out, n_out + 1),
                             atol=1e-12)
  np.testing.assert_allclose(wh.sum(1), 1, atol=1e-12)


def _flat(tree):
  return {"/".join(str(k.key) for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_full_clip_checkpoint_uses_only_the_vision_tower(ckpts):
  full, alone = (_flat(vit.load_checkpoint(ckpts[name][0])[1]) for name in ("clip_full", "clip"))
  assert full.keys() == alone.keys()
  for k, v in full.items():
    np.testing.assert_array_equal(v, alone[k], err_msg=k)


def _image(h, w, seed=0):
  return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def _normalise(arr, mean, std):
  return (arr / 255 - np.asarray(mean)) / np.asarray(std)


def test_clip_preprocess_and_encoder(ckpts):
  directory, state = ckpts["clip"]
  enc = load_image_encoder(f"hf:{directory}")
  assert enc.dim == D and enc.resolution == 32 and enc.info["architecture"] == "clip"
  json.dumps(enc.info)
  images = [_image(50, 41, 0), _image(32, 70, 1)]
  x = np.stack([enc.preprocess(im) for im in images])
  # shorter side to 32, longer to int(32 * long / short), bicubic; centre crop 32 x 32; CLIP statistics.
  a = np.asarray(images[0].resize((32, 39), Image.Resampling.BICUBIC), np.float64)[3:35]
  b = np.asarray(images[1].resize((70, 32), Image.Resampling.BICUBIC), np.float64)[:, 19:51]
  want_x = np.stack([_normalise(a, CLIP_MEAN, CLIP_STD), _normalise(b, CLIP_MEAN, CLIP_STD)])
  assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32
  np.testing.assert_allclose(x, want_x, atol=1e-5)
  np.testing.assert_allclose(np.asarray(enc.apply(x)), reference_pool("clip", state, x, CLIP_VISION, "pooler"),
                             atol=ATOL, rtol=0)


def test_siglip_preprocess_and_encoder(ckpts):
  directory, state = ckpts["siglip"]
  enc = hf.load_image(str(directory), pooling="mean")
  assert enc.dim == D and enc.resolution == 32 and enc.info["architecture"] == "siglip"
  im = _image(40, 64, 4)
  want_x = _normalise(np.asarray(im.resize((32, 32), Image.Resampling.BICUBIC), np.float64), [0.5] * 3, [0.5] * 3)
  x = enc.preprocess(im)
  np.testing.assert_allclose(x, want_x, atol=1e-5)
  np.testing.assert_allclose(np.asarray(enc.apply(x[None])), reference_pool("siglip", state, x[None],
                                                                           SIGLIP_VISION, "mean"), atol=ATOL, rtol=0)


def test_dinov2_default_preprocess_and_poolings(ckpts):
  directory, state = ckpts["dinov2"]
  im = _image(48, 64, 2)
  resized = np.asarray(im.resize((53, 40), Image.Resampling.BICUBIC), np.float64)  # short side 40, long int(40*64/48)
  want_x = _normalise(resized[:, 6:46], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
  for pooling in ("pooler", "cls", "mean", "cls_mean"):
    enc = hf.load_image(str(directory), pooling=pooling)
    assert enc.resolution == 40 and enc.dim == (2 * D if pooling == "cls_mean" else D)
    x = enc.preprocess(im)
    np.testing.assert_allclose(x, want_x, atol=1e-5)
    np.testing.assert_allclose(np.asarray(enc.apply(x[None])), reference_pool("dinov2", state, x[None], DINOV2,
                                                                             pooling), atol=ATOL, rtol=0)
    assert enc.info["pooling"] == pooling and enc.info["architecture"] == "dinov2"


def test_config_from_full_clip_and_defaults():
  cfg = vit.config_from_dict(dict(model_type="clip", vision_config=dict(hidden_size=64, patch_size=16)))
  assert (cfg.family, cfg.hidden_size, cfg.patch_size, cfg.hidden_act, cfg.layer_norm_eps, cfg.image_size) == (
      "clip", 64, 16, "quick_gelu", 1e-5, 224)
  cfg = vit.config_from_dict(dict(model_type="siglip", vision_config=dict(vision_use_head=False)))
  assert (cfg.family, cfg.hidden_act, cfg.has_cls, cfg.use_head) == ("siglip", "gelu_pytorch_tanh", False, False)
  cfg = vit.config_from_dict(dict(model_type="dinov2", hidden_size=1536, mlp_ratio=4, use_swiglu_ffn=True))
  assert cfg.intermediate_size == 4096  # HF's Dinov2SwiGLUFFN width of dinov2-giant


def test_errors(ckpts, tmp_path):
  with pytest.raises(ValueError, match=r"model_type='vit' is not a supported vision tower.*dinov2"):
    vit.config_from_dict(dict(model_type="vit"))
  _write(tmp_path / "vit", dict(model_type="vit", hidden_size=D), {"a": np.zeros(2, np.float32)})
  with pytest.raises(ValueError, match="siglip"):
    hf.load_image(str(tmp_path / "vit"))
  with pytest.raises(ValueError, match="pooling"):
    hf.load_image(str(ckpts["dinov2"][0]), pooling="max")
  for pooling in ("cls", "cls_mean"):
    with pytest.raises(ValueError, match="CLS"):
      hf.load_image(str(ckpts["siglip"][0]), pooling=pooling)
  with pytest.raises(ValueError, match="hidden_act"):
    vit.config_from_dict(CLIP_VISION | dict(hidden_act="mish"))
  with pytest.raises(ValueError, match="config.json"):
    hf.load_image(str(tmp_path))
  # A missing tensor, and a checkpoint whose position table does not fit the config's image_size.
  directory, state = ckpts["clip"]
  cfg = vit.config_from_dict(CLIP_VISION)
  with pytest.raises(ValueError, match="lacks"):
    vit.convert_state({k: v for k, v in state.items() if "fc2" not in k}, cfg)
  with pytest.raises(ValueError, match="position_embedding"):
    vit.convert_state(state, vit.config_from_dict(CLIP_VISION | dict(image_size=40)))
  # CLIP and SigLIP accept only their pretraining grid.
  _, params = vit.load_checkpoint(directory)
  with pytest.raises(ValueError, match="4x4 patch grid"):
    vit.features(params, _pixels(1, 40, 40, 0), config=cfg, pooling="pooler")
