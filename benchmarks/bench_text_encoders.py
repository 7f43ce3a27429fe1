"""Throughput of the text encoders: sentences/s, FLOPs per sentence, fraction of float32 matmul peak.

Run (alone on the machine)::

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_text_encoders.py \
      --names all-MiniLM-L6-v2 all-mpnet-base-v2 --n 2048

The peak is measured in the same process (best of a few ``[m, m] @ [m, m]`` float32 matmuls), and
FLOPs are counted analytically on the padded shapes actually run:
``2 (4 d^2 + 2 d f) + 4 l d`` per token and layer (projections, MLP, attention scores and mix).
Goal on the 2-core CPU: all-MiniLM-L6-v2 >= 500 captions/s.
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sotalign_jax.encoders import load_text_encoder
from sotalign_jax.encoders import text as text_lib

_WORDS = ("a man woman dog cat two young small large red blue white black green is are sitting standing "
          "walking running on in at with of near the a table street field beach water grass park bike car "
          "train plate pizza kitchen room people group child holding looking riding playing frisbee ball").split()

_SHAPES = {  # layers, d, ffn
    "all-MiniLM-L6-v2": (6, 384, 1536),
    "all-mpnet-base-v2": (12, 768, 3072),
}


def captions(n: int, *, seed: int = 0) -> list[str]:
  """``n`` caption-like sentences of 8-14 words (COCO captions average ~10.5 words)."""
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(_WORDS, size=rng.integers(8, 15))).capitalize() + "." for _ in range(n)]


def matmul_peak(*, m: int = 2048, reps: int = 5) -> float:
  """Best measured float32 FLOP/s of a jitted ``[m, m] @ [m, m]`` on the default device."""
  a = jnp.ones((m, m), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = np.inf
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * m ** 3 / best


def flops_per_token(name: str, length: int) -> float:
  layers, d, ffn = _SHAPES[name]
  return layers * (2 * (4 * d * d + 2 * d * ffn) + 4 * length * d)


def bench_text(names: Sequence[str], *, n: int = 1024, batch_size: int = 128, bucket: int = 16,
               reps: int = 2) -> dict[str, dict[str, float]]:
  """Encodes ``n`` synthetic captions with each encoder and prints/returns throughput numbers.

  Returns:
    ``{name: dict(sentences_per_s, gflop_per_sentence, gflop_per_s, fraction_of_peak, ...)}``.
  """
  peak = matmul_peak()
  print(f"float32 matmul peak: {peak / 1e9:.1f} GFLOP/s on {jax.devices()[0].device_kind}")
  texts = captions(n)
  results = {}
  for name in names:
    enc = load_text_encoder(name, batch_size=batch_size, bucket=bucket)
    batcher = text_lib.Batcher(text_lib.load_tokenizer(text_lib.model_dir(name) / "tokenizer.json",
                                                       enc.info["max_seq_length"]),
                               enc.info["max_seq_length"], 0, batch_size=batch_size, bucket=bucket)
    ids = batcher.tokenize(texts)
    order = np.argsort([-len(t) for t in ids], kind="stable")
    flops = 0.0
    for start in range(0, n, batch_size):  # the padded shapes Batcher.run executes
      rows = order[start:start + batch_size]
      l = min(-(-max(len(ids[i]) for i in rows) // bucket) * bucket, enc.info["max_seq_length"])
      b = min(1 << (len(rows) - 1).bit_length(), batch_size)
      flops += b * l * flops_per_token(name, l)
    useful = sum(len(t) * flops_per_token(name, len(t)) for t in ids)
    enc.encode(texts)  # compile every shape
    best = np.inf
    for _ in range(reps):
      t = time.perf_counter()
      enc.encode(texts)
      best = min(best, time.perf_counter() - t)
    r = dict(sentences_per_s=n / best, tokens_per_sentence=float(np.mean([len(t) for t in ids])),
             gflop_per_sentence=flops / n / 1e9, useful_fraction=useful / flops,
             gflop_per_s=flops / best / 1e9, fraction_of_peak=flops / best / peak)
    results[name] = r
    print(f"{name}: {r['sentences_per_s']:.0f} sentences/s, {r['tokens_per_sentence']:.1f} tokens, "
          f"{r['gflop_per_sentence']:.3f} GFLOP/sentence (padded; {r['useful_fraction']:.0%} on real tokens), "
          f"{r['gflop_per_s']:.1f} GFLOP/s = {r['fraction_of_peak']:.2f} x matmul peak")
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--names", nargs="+", default=["all-MiniLM-L6-v2"])
  parser.add_argument("--n", type=int, default=1024)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--bucket", type=int, default=16)
  args = parser.parse_args()
  bench_text(args.names, n=args.n, batch_size=args.batch_size, bucket=args.bucket)


if __name__ == "__main__":
  main()
