"""Throughput of the frozen encoders (images per second), with ratios against a reference in the same process.

Image rows (``bench_image``): for each EfficientNet-Lite variant,

* ``forward``: jitted ``apply`` on a preprocessed ``[batch, res, res, 3]`` batch (default ``chunk``: 4 on CPU);
* ``whole batch``: the same with ``chunk=0`` (the batch in one piece) — shows the cache effect of chunking;
* ``grouped-conv ref``: the same network with depthwise layers as XLA grouped convolutions
  (``feature_group_count``) — the ratio ``forward / ref`` is the speed-up of the shifted multiply-add depthwise;
* ``end-to-end``: JPEG decode + ``preprocess`` (one thread) + ``apply``, on synthetic 500x375 JPEGs.

Run (alone on the machine)::

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_encoders.py
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_encoders.py --small
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from typing import Callable, Sequence
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from sotalign_jax.encoders import efficientnet
from sotalign_jax.encoders import load_image_encoder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import matmul_peak_gflops  # noqa: E402


def _time(fn: Callable[[], object], repeats: int) -> float:
  """Best wall time of ``repeats`` calls after one warm-up call (seconds)."""
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def _best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
  """Best wall time of each function, calls interleaved round-robin so that machine load hits all alike."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  best = dict.fromkeys(fns, float("inf"))
  for _ in range(repeats):
    for key, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      best[key] = min(best[key], time.perf_counter() - start)
  return best


def _grouped_depthwise(x: jax.Array, w: jax.Array, b: jax.Array, *, stride: int) -> jax.Array:
  k = w.shape[0]
  pad = [efficientnet._same_pad(x.shape[1], k, stride), efficientnet._same_pad(x.shape[2], k, stride)]  # pylint: disable=protected-access
  y = jax.lax.conv_general_dilated(x, w[:, :, None, :], (stride, stride), pad,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
  return y + b


def _jpegs(n: int, *, seed: int = 0) -> list[bytes]:
  """``n`` synthetic 500x375 JPEGs (smooth gradients + noise, quality 90)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:375, 0:500]
  out = []
  for _ in range(n):
    base = np.stack([np.sin(xx / rng.uniform(10, 60) + c) * np.cos(yy / rng.uniform(10, 60)) for c in range(3)], -1)
    pixels = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    out.append(buf.getvalue())
  return out


def bench_image(names: Sequence[str], *, batch: int = 16, repeats: int = 3,
                reference: bool = True, peak_gflops: float | None = None, end_to_end: bool = True) -> list[dict]:
  """Benchmarks image encoders; returns one row per name (img/s figures and ratios).

  Args:
    names: image encoder names (``efficientnet-lite0`` ...).
    batch: images per forward call.
    repeats: timed calls per measurement (the best is kept).
    reference: also time the grouped-convolution depthwise reference (EfficientNet only).
    peak_gflops: the float32 matmul peak that ``forward_peak_frac`` divides by.
    end_to_end: also time JPEG decoding + preprocessing (``False``: the forward passes only).

  Returns:
    Rows ``{"encoder", "batch", "forward_img_s", "whole_batch_img_s", "ref_img_s", "speedup_vs_ref",
    "preprocess_img_s", "end_to_end_img_s", "gflop_per_img" (XLA's count for the forward pass),
    "forward_peak_frac" (forward throughput × FLOPs as a fraction of ``peak_gflops``, when given)}``.
  """
  rows = []
  jpegs = _jpegs(batch) if end_to_end else []
  for name in names:
    enc = load_image_encoder(name)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, enc.resolution, enc.resolution, 3)), jnp.float32)
    fns = {"forward": lambda: enc.apply(x)}  # pylint: disable=cell-var-from-loop
    if reference and name.startswith("efficientnet"):
      params, kw = enc.apply.args[0], enc.apply.keywords
      raw = efficientnet._apply.__wrapped__  # pylint: disable=protected-access
      whole = jax.jit(lambda p, x: raw(p, x, layout=kw["layout"], output="pooled", chunk=0))  # pylint: disable=cell-var-from-loop
      # A fresh function object, so that jit traces anew (its cache is keyed on the function) under the patch.
      ref_apply = jax.jit(lambda p, x: raw(p, x, **kw))  # pylint: disable=cell-var-from-loop
      with mock.patch.object(efficientnet, "_depthwise", _grouped_depthwise):
        jax.block_until_ready(ref_apply(params, x))  # compile the reference now, while patched
      fns["whole_batch"] = lambda: whole(params, x)  # pylint: disable=cell-var-from-loop
      fns["ref"] = lambda: ref_apply(params, x)  # pylint: disable=cell-var-from-loop
    best = _best_times(fns, repeats)
    row = {"encoder": name, "batch": batch, "forward_img_s": batch / best["forward"]}
    if "ref" in best:
      row["whole_batch_img_s"] = batch / best["whole_batch"]
      row["ref_img_s"] = batch / best["ref"]
      row["speedup_vs_ref"] = best["ref"] / best["forward"]

    def preprocess_all():
      return np.stack([enc.preprocess(Image.open(io.BytesIO(j))) for j in jpegs])  # pylint: disable=cell-var-from-loop

    if end_to_end:
      t_pre = _time(preprocess_all, repeats)
      t_e2e = _time(lambda: enc.apply(preprocess_all()), repeats)  # pylint: disable=cell-var-from-loop
      row["preprocess_img_s"] = batch / t_pre
      row["end_to_end_img_s"] = batch / t_e2e
    # XLA counts a loop body once, so count FLOPs on the unchunked forward pass when there is one.
    counted = whole.lower(params, x) if "ref" in best else jax.jit(lambda v: enc.apply(v)).lower(x)  # pylint: disable=cell-var-from-loop
    cost = counted.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    row["gflop_per_img"] = float(cost["flops"]) / batch / 1e9
    if peak_gflops:
      row["forward_peak_frac"] = row["forward_img_s"] * row["gflop_per_img"] / peak_gflops
    rows.append(row)
    print_rows([row])
  return rows


def print_rows(rows: Sequence[dict]) -> None:
  """Prints benchmark rows as ``key=value`` lines (floats to one decimal)."""
  for row in rows:
    print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--small", action="store_true", help="quick check: Lite0 only, batch 4, one repeat")
  parser.add_argument("--images", nargs="*", default=list(efficientnet._VARIANTS))  # pylint: disable=protected-access
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  if args.small:
    args.images, args.batch, args.repeats = ["efficientnet-lite0"], 4, 1
  peak = max(matmul_peak_gflops().values())
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; float32 matmul peak {peak:.1f} GFLOP/s; "
        f"rows: img/s, best of {args.repeats}")
  bench_image(args.images, batch=args.batch, repeats=args.repeats, peak_gflops=peak)


if __name__ == "__main__":
  main()
