"""How time and memory of each primitive grow with the number of points n (log-log slopes).

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_scale.py [--max-n 16384]
      [--cka-max-n 65536] [--qap-max 2000] [--mem-budget-gb 6] [--iters 20] [--out workdirs/bench_scale.png]

Primitives (synthetic embeddings with a shared latent factor, ``--dim`` features per side):

* ``linear_cka``: feature-space statistics, expected time exponent ≈ 1 in n (memory O(d²));
* ``rbf_cka``: kernel tiles, ≈ 2 in time, memory O(block² + n), with the median-heuristic bandwidth (a sort of
  min(n, 4096)² distances per side); ``rbf_cka_fixed_bw``: the same with a given bandwidth (the tiles alone);
* ``sinkhorn``: ``ot.sinkhorn(cosine_similarity(x, y))`` with ``--iters`` iterations, ≈ 2 in time and memory;
* ``klot_vg``: value and gradient of ``ot.klot`` w.r.t. the student features, ≈ 2;
* ``faq``: ``qap.faq`` on centred linear kernels of n nodes (10 % seeds, ``--restarts`` restarts); ≈ 3 per
  Frank–Wolfe step (a q×q×q GEMM plus an O(q³) assignment), the total also depends on the iteration count.

Sizes double from ``--min-n`` (OT, CKA) or ``--qap-min``; jitted functions are timed as the best of ``--repeat``
runs after one compiling run. Memory: XLA's compiled temporary buffers (``memory_analysis().temp_size_in_bytes``,
the working set beyond inputs and outputs) and the process' peak RSS so far. A size whose compiled temp memory
exceeds ``--mem-budget-gb`` is skipped (it is compiled, not run). The exponent is the numpy ``polyfit`` slope of
log time (and log temp memory) against log n on the sizes from the 2nd on (the smallest is overhead-dominated).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from common import blas_info, compiled_temp_mb, peak_rss_mb, print_table, timeit  # noqa: E402
from sotalign_jax import cka, ot, qap  # noqa: E402

EXPECTED = {"linear_cka": "≈1", "rbf_cka": "≈2", "rbf_cka_fixed_bw": "≈2", "sinkhorn": "≈2", "klot_vg": "≈2",
            "faq": "≤3"}


def sizes(lo: int, hi: int) -> list[int]:
  out = []
  n = lo
  while n <= hi:
    out.append(n)
    n *= 2
  return out


def synthetic(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((n, 16))
  x = z @ rng.standard_normal((16, d)) + 0.5 * rng.standard_normal((n, d))
  y = z @ rng.standard_normal((16, d)) + 0.5 * rng.standard_normal((n, d))
  return x.astype(np.float32), y.astype(np.float32)


def jitted_primitives(iters: int) -> dict[str, Callable]:
  cos = ot.cosine_similarity

  def klot_loss(x, y, tx, ty):
    return ot.klot(cos(x, y), jax.lax.stop_gradient(cos(tx, ty)), eps_student=0.05, eps_teacher=0.005,
                   num_iters=iters)

  vg = jax.value_and_grad(klot_loss)
  return {
      "linear_cka": jax.jit(lambda x, y: cka.linear_cka(x, y)),
      "rbf_cka": jax.jit(lambda x, y: cka.rbf_cka(x, y)),
      # σ ≈ the synthetic data's median distance (the time does not depend on its value)
      "rbf_cka_fixed_bw": jax.jit(lambda x, y: cka.rbf_cka(x, y, bandwidth=64.0)),
      "sinkhorn": jax.jit(lambda x, y: ot.sinkhorn(cos(x, y), epsilon=0.05, num_iters=iters).f),
      "klot_vg": jax.jit(lambda x, y: vg(x, y, x[:, ::-1], y[:, ::-1])),
  }


def bench_jitted(name: str, fn, ns: list[int], *, d: int, repeat: int, budget_mb: float) -> list[dict]:
  rows = []
  for n in ns:
    x, y = map(jnp.asarray, synthetic(n, d))
    temp = compiled_temp_mb(fn, x, y)
    row = {"primitive": name, "n": n, "temp_MiB": temp}
    if temp > budget_mb:
      print(f"  {name} n={n}: skipped, compiled temp {temp:.0f} MiB > budget {budget_mb:.0f} MiB", flush=True)
      row["time_s"] = float("nan")
    else:
      row["time_s"] = timeit(lambda: fn(x, y), repeat=repeat)
      print(f"  {name} n={n}: {row['time_s']:.4g} s, temp {temp:.4g} MiB", flush=True)
    row["peak_rss_MiB"] = peak_rss_mb()
    rows.append(row)
  return rows


def faq_instance(n: int, d: int, seed: int = 0):
  x, y = synthetic(n, d, seed)
  x -= x.mean(0)
  y -= y.mean(0)
  a, b = x @ x.T, y @ y.T
  a /= np.linalg.norm(a)
  b /= np.linalg.norm(b)
  k = max(1, n // 10)
  seeds = np.stack([np.arange(k), np.arange(k)], 1)
  return a, b, seeds


def bench_faq(ns: list[int], *, d: int, restarts: int, repeat: int) -> list[dict]:
  rows = []
  for n in ns:
    a, b, seeds = faq_instance(n, d)
    run = lambda: qap.faq(a, b, seeds=seeds, n_init=restarts, key=jax.random.key(0))
    res = run()  # compiles
    t = timeit(lambda: run().col_ind, repeat=repeat, warmup=0)
    its = float(np.mean(res.n_iters))
    rows.append({"primitive": "faq", "n": n, "time_s": t, "iters": its, "time_per_iter_s": t / max(its, 1.0),
                 "peak_rss_MiB": peak_rss_mb()})
    print(f"  faq n={n}: {t:.4g} s, {its:.1f} FW iterations/restart", flush=True)
  return rows


def slope(rows: list[dict], key: str) -> float:
  pts = [(r["n"], r[key]) for r in rows if np.isfinite(r.get(key, np.nan)) and r[key] > 0]
  pts = pts[1:]  # skip the smallest, overhead-dominated size
  if len(pts) < 2:
    return float("nan")
  n, v = map(np.asarray, zip(*pts))
  return float(np.polyfit(np.log(n), np.log(v), 1)[0])


def plot(results: dict[str, list[dict]], path: str):
  import matplotlib
  import matplotlib.ticker
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from sotalign_jax.runtime.workdir import save_figure

  fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
  for name, rows in results.items():
    n = np.array([r["n"] for r in rows], float)
    t = np.array([r["time_s"] for r in rows], float)
    ax_t.loglog(n, t, "o-", label=f"{name} (slope {slope(rows, 'time_s'):.2f})")
    if "temp_MiB" in rows[0]:
      m = np.array([r["temp_MiB"] for r in rows], float)
      ax_m.loglog(n, np.maximum(m, 1e-3), "o-", label=f"{name} (slope {slope(rows, 'temp_MiB'):.2f})")
  ax_t.set(xlabel="n (points; nodes for faq)", ylabel="wall time (s, best of runs)", title="time")
  ax_m.set(xlabel="n (points)", ylabel="XLA temp memory (MiB)", title="compiled working memory")
  for ax in (ax_t, ax_m):
    ax.grid(True, which="both", alpha=0.3)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  save_figure(fig, path)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--min-n", type=int, default=1024)
  p.add_argument("--max-n", type=int, default=16384, help="largest n for the n×n primitives (RBF CKA, OT)")
  p.add_argument("--cka-max-n", type=int, default=65536, help="largest n for linear CKA (no n×n)")
  p.add_argument("--qap-min", type=int, default=100)
  p.add_argument("--qap-max", type=int, default=2000, help="largest FAQ size; sizes double from --qap-min")
  p.add_argument("--restarts", type=int, default=2, help="FAQ restarts")
  p.add_argument("--dim", type=int, default=128, help="features per side")
  p.add_argument("--iters", type=int, default=20, help="Sinkhorn iterations (the slope in n does not depend on it)")
  p.add_argument("--repeat", type=int, default=3)
  p.add_argument("--mem-budget-gb", type=float, default=6.0,
                 help="skip sizes whose compiled XLA temp memory exceeds this")
  p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(EXPECTED))
  p.add_argument("--out", default="workdirs/bench_scale.png")
  args = p.parse_args(argv)

  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, BLAS: {blas_info()}")
  only = set(filter(None, args.only.split(","))) or set(EXPECTED)
  if only - set(EXPECTED):
    p.error(f"--only: unknown {sorted(only - set(EXPECTED))}, choose from {','.join(EXPECTED)}")
  budget_mb = args.mem_budget_gb * 1024
  fns = jitted_primitives(args.iters)
  ranges = {"linear_cka": sizes(args.min_n, args.cka_max_n), "rbf_cka": sizes(args.min_n, args.max_n),
            "rbf_cka_fixed_bw": sizes(args.min_n, args.max_n),
            "sinkhorn": sizes(args.min_n, args.max_n), "klot_vg": sizes(args.min_n, args.max_n)}
  results: dict[str, list[dict]] = {}
  for name, fn in fns.items():
    if name in only:
      results[name] = bench_jitted(name, fn, ranges[name], d=args.dim, repeat=args.repeat, budget_mb=budget_mb)
  if "faq" in only:
    qap_ns = sizes(args.qap_min, args.qap_max)
    if qap_ns[-1] != args.qap_max:
      qap_ns.append(args.qap_max)
    results["faq"] = bench_faq(qap_ns, d=args.dim, restarts=args.restarts, repeat=max(1, args.repeat - 1))

  print()
  print_table([r for rows in results.values() for r in rows],
              ["primitive", "n", "time_s", "temp_MiB", "iters", "time_per_iter_s", "peak_rss_MiB"])
  print()
  summary = []
  for name, rows in results.items():
    s = {"primitive": name, "sizes": f"{rows[0]['n']}–{rows[-1]['n']}", "time_exponent": slope(rows, "time_s"),
         "expected": EXPECTED[name]}
    if "temp_MiB" in rows[0]:
      s["temp_mem_exponent"] = slope(rows, "temp_MiB")
    if name == "faq":
      s["per_iter_exponent"] = slope(rows, "time_per_iter_s")
    summary.append(s)
  print_table(summary, ["primitive", "sizes", "time_exponent", "per_iter_exponent", "temp_mem_exponent",
                        "expected"])
  if args.out:
    plot(results, args.out)
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
  main()
