r"""How SOTAlign's training step scales: the paper step vs the SigLIP-only step, in unpaired batch and in pool size.

Both steps are the ones :func:`sotalign_jax.aligners.trained.fit_heads` trains, built by ``fit_heads`` itself: the
benchmark passes a ``loop`` that keeps the ``(state, step_fn, pools)`` the recipe hands it, trains nothing, and
jits ``step_with_rng(step_fn, ...)`` with the state donated, exactly as :func:`sotalign_jax.nn.optim.plain_loop`
does. So the step is byte for byte the trained one: the paired batch and the unpaired rows are drawn inside the
jitted step (``trained._draw``: the pairs without replacement, the unpaired rows with ``randint``, O(batch)),
preprocessed, passed through linear heads initialised at the CCA teacher, and updated by Lion.

* **paper step**: ``sotalign_paper`` (:func:`~sotalign_jax.aligners.trained.fit_sotalign_paper`, one α of its grid):
  Lion (lr 1e-4, wd 1e-5, cosine), SigLIP (scale 20, bias −10, learned) on the paired batch + α · KLOT
  (ε = 0.05, ε* = 0.01, 100 Sinkhorn iterations per plan, :func:`sotalign_jax.ot.klot`) on the unpaired batch.
* **SigLIP step**: the same recipe with the unpaired term ``"none"`` (what ``sail`` / ``upper_bound`` train),
  so the ratio isolates the cost of the unpaired term; it draws no unpaired rows.

Synthetic rows (``jax.random``, generated on the default device): a shared low-rank latent plus noise for the
pairs, independent draws for the two unpaired pools (no row has a partner). Measured, per point: the steady-state
wall time of one step (best of ``--repeats`` after one warm-up, :func:`common.timeit`; each call advances the
state, as training does) and XLA's memory of the compiled step (``memory_analysis()`` of the one compile that is
also timed: ``temp`` is :func:`common.compiled_temp_mb`'s number, the working memory beyond the inputs; ``args``
the inputs, pools included). Two sweeps:

1. unpaired batch ``B`` in ``--batches`` (default 1k → 8k) at a fixed pool (``--pool``, 100k rows per side) and a
   fixed paired batch (``--batch-paired``, 1024): both steps, their time, temp and peak ratios, and the log-log
   least-squares exponents in ``B`` of the time (paper step, SigLIP step, and their difference: the unpaired term
   alone) and of the temp (paper step over all points and over ``B`` > the paired batch; SigLIP step).
2. pool ``P`` in ``--pools`` (default 10k → 1M rows per side) at a fixed ``B`` (``--pool-batch``, 1024): both steps'
   times and the exponent in ``P``. The claim (the recipe's O(batch) draw): **a step's time does not grow with the
   pool**, exponent ≈ 0. On the CPU the features are small (``--dim-x 64 --dim-y 64 --dim 64``: 1M rows are
   256 MB per side) so that the 1M-row pools fit comfortably; only ``args`` grows with ``P``.

**Memory of one KLOT step.** :func:`sotalign_jax.ot.klot` (and :func:`~sotalign_jax.ot.klot_sharded` per device)
keeps about six ``[B, B]`` float32 arrays alive at its peak — the student and teacher similarity matrices, the
exponents / log plans of the two Sinkhorn solves, and the closed-form gradient ``(P − P*) / ε`` kept as the one
residual — i.e. ``≈ 6 · B² · 4`` bytes (11.6 GB at B = 22k). The table prints the paper step's temp divided by
``4 · B²`` bytes ("[B,B] buffers"): how many such arrays the compiled step really holds once KLOT dominates (the
term's inputs are computed inside the step, so they count as temp here). XLA's temp is the peak of the step's
live buffers, not a sum of its parts: the SigLIP ``[p, p]`` temporaries and KLOT's ``[B, B]`` ones are not alive
together and share memory, so for ``B`` ≤ the paired batch ``p`` the paper step's temp equals the SigLIP step's,
and the memory exponent is also fitted on the points with ``B > p`` alone. "peak" is the device memory of one
call: every input (state and pools, whether the step reads them or not: the SigLIP step does not read the pools,
but ``fit_heads`` places them for the mean) + temp + outputs − the outputs written into the donated state.

``--gpu-point`` adds the paper's full point: a 32k batch of 10k pairs + 22k unpaired rows, pools of 1M rows per
side, 1024-dimensional features on both sides (the size of DINOv3-L and NV-Embed-v2 features) and 1024-dimensional
heads; both steps once compiled, then timed (not run here: no GPU was lent to this task; by the sizes, ≈ 12 GB of
KLOT temp and 8 GB of pools, and seconds per step on an H200, the point should take well under the 5 minutes the
issue allows). It refuses to run on a CPU backend (the 22k × 22k KLOT alone is
~12 GB and minutes per step there) unless ``--force``.

Usage (``--small``: batches 256/512/1024, pools 10k/100k, a quick check)::

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_sotalign_scale.py [--small]
      [--batches 1024,2048,4096,8192] [--pools 10000,100000,1000000] [--dim-x 64 --dim-y 64 --dim 64]
      [--repeats 3] [--json PATH] [--plot workdirs/bench_sotalign_scale.png]
  # on a GPU: both sweeps + the paper's 32k-batch / 1M-pool point, one command
  .venv/bin/python benchmarks/bench_sotalign_scale.py --gpu-point --json workdirs/bench_sotalign_scale_gpu.json
  # the point alone
  .venv/bin/python benchmarks/bench_sotalign_scale.py --gpu-point --batches '' --pools ''

An empty list (``--batches ''`` or ``--pools ''``) skips that sweep.

Measured here (CPU, 2 cores shared with two training jobs, jax 0.10.2, dims 64 → 64, paired batch 1024, best of 3),
``--small`` in 61 s (peak RSS 0.7 GB): the paper step took 0.035 / 0.070 / 0.17 s at B = 256 / 512 / 1024 against
0.024–0.027 s for the SigLIP step (ratio 1.3x / 3.0x / 6.9x); the unpaired term's time (paper − SigLIP) grows
with exponent 2.1 in B. XLA temp: 14.1 MiB for both steps up to B = 512 (KLOT's matrices reuse the SigLIP
step's [1024, 1024] buffers), 22.1 vs 14.1 MiB at B = 1024, i.e. 5.5 [B, B] buffers (the formula says ≈ 6). At
B = 1024 the paper step took 0.177 / 0.163 s with pools of 10k / 100k rows per side: exponent −0.03 in P (SigLIP
step 0.03), only the inputs grow (exponent 0.96). The default run (B up to 8192, pools up to 1M) was not run here;
from these numbers it needs ≈ 3–4 minutes on these cores (≈ 11 s per step at B = 8192 by B², five calls per
step, ≈ 7 s of compiling per point, both steps) and ≈ 2 GB (≈ 1.5 GB of KLOT temp at B = 8192, 0.5 GB of 1M-row
pools).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import blas_info, peak_rss_mb, print_table, timeit, write_json  # noqa: E402

from sotalign_jax.aligners import trained  # noqa: E402
from sotalign_jax.aligners.base import AlignData  # noqa: E402
from sotalign_jax.nn.optim import step_with_rng  # noqa: E402

SMALL = dict(batches="256,512,1024", pools="10000,100000")
FULL = dict(batches="1024,2048,4096,8192", pools="10000,100000,1000000")
GPU_POINT = dict(batch_paired=10_000, batch_unpaired=22_000, pool=1_000_000, dim_x=1024, dim_y=1024, dim=1024)
MiB = 2**20


# ----------------------------------------------------------------------------------------------------------------
# Data and the two steps.
# ----------------------------------------------------------------------------------------------------------------
def synthetic(key, *, n_pairs: int, n_pool: int, dim_x: int, dim_y: int, latent: int = 16) -> AlignData:
  """Pairs from a shared ``latent``-dimensional factor plus noise; two independent unpaired pools of ``n_pool`` rows."""
  ka, kb, kz, knx, kny, kux, kuy, kvx, kvy = jax.random.split(key, 9)
  ax = jax.random.normal(ka, (latent, dim_x)) / np.sqrt(latent)
  ay = jax.random.normal(kb, (latent, dim_y)) / np.sqrt(latent)

  def side(kl, kn, n, a):
    return jax.random.normal(kl, (n, latent)) @ a + 0.5 * jax.random.normal(kn, (n, a.shape[1]))

  zp = jax.random.normal(kz, (n_pairs, latent))
  px = zp @ ax + 0.5 * jax.random.normal(knx, (n_pairs, dim_x))
  py = zp @ ay + 0.5 * jax.random.normal(kny, (n_pairs, dim_y))
  ux, uy = side(kux, kvx, n_pool, ax), side(kuy, kvy, n_pool, ay)
  return AlignData.create(pairs_x=px, pairs_y=py, x=jax.block_until_ready(ux), y=jax.block_until_ready(uy))


def _paper_defaults() -> dict:
  """``fit_sotalign_paper``'s own defaults (ε, ε*, Sinkhorn iterations, the first α of its grid)."""
  import inspect
  return {k: p.default for k, p in inspect.signature(trained.fit_sotalign_paper).parameters.items()
          if p.default is not inspect.Parameter.empty}


def build_step(variant: str, data: AlignData, *, batch_paired: int, batch_unpaired: int, dim: int, alpha: float):
  """``(jitted step, state, pools, key)`` of the step ``fit_heads`` would train for ``variant`` ("paper" | "siglip").

  A ``loop`` that keeps what ``fit_heads`` hands it (and returns the state untouched) captures the recipe's own
  ``step_fn`` (``functools.partial(trained._train_step, ...)``) and ``pools`` dict; the step is then jitted as
  :func:`sotalign_jax.nn.optim.plain_loop` jits it (state donated)."""
  got = {}

  def capture(state, step_fn, pools, *, key, steps, name=""):
    got.update(state=state, step_fn=step_fn, pools=pools, key=key)
    return state

  key = jax.random.PRNGKey(1)
  overrides = dict(batch_paired=batch_paired, batch_unpaired=batch_unpaired, teacher_dim=dim, loop=capture)
  if variant == "paper":
    trained.fit_sotalign_paper(key, data, alpha_grid=(alpha,), **overrides)
  elif variant == "siglip":  # the paper's recipe with the unpaired term "none"
    recipe = {k: v for k, v in _paper_defaults().items() if k in trained.PAPER_RECIPE}
    trained.fit_heads(key, data, term="none", alpha=0.0, **{**recipe, **overrides})
  else:
    raise ValueError(variant)
  step = jax.jit(functools.partial(step_with_rng, got["step_fn"]), donate_argnums=0)
  return step, got["state"], got["pools"], got["key"]


def measure(variant: str, data: AlignData, *, repeats: int, **kw) -> dict:
  """One compile (timed, with XLA's memory analysis), then the steady-state step time (best of ``repeats``)."""
  step, state, pools, key = build_step(variant, data, **kw)
  t0 = time.perf_counter()
  compiled = step.lower(state, pools, key).compile()
  compile_s = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  inputs = sum(getattr(a, "nbytes", 8) for a in jax.tree.leaves((state, pools, key)))  # XLA's count omits unused
  holder = {"state": state}

  def one():
    holder["state"], metrics = compiled(holder["state"], pools, key)
    return metrics

  t = timeit(one, repeat=repeats, warmup=1)
  loss = float(one()["loss"])
  return {"time_s": t, "compile_s": compile_s, "temp_MiB": ma.temp_size_in_bytes / MiB,
          "args_MiB": inputs / MiB, "xla_args_MiB": ma.argument_size_in_bytes / MiB,
          "out_MiB": ma.output_size_in_bytes / MiB, "alias_MiB": ma.alias_size_in_bytes / MiB, "loss": loss,
          "finite": bool(np.isfinite(loss))}


# ----------------------------------------------------------------------------------------------------------------
# Sweeps.
# ----------------------------------------------------------------------------------------------------------------
def exponent(xs, ys) -> float:
  """Least-squares slope of ``log y`` on ``log x`` (NaN with fewer than two positive points)."""
  pts = [(x, y) for x, y in zip(xs, ys) if np.isfinite(y) and y > 0]
  if len(pts) < 2:
    return float("nan")
  x, y = map(np.asarray, zip(*pts))
  return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def _peak(m: dict) -> float:
  """XLA's peak for one call: inputs + temporaries + outputs, less the outputs written into donated inputs."""
  return m["args_MiB"] + m["temp_MiB"] + m["out_MiB"] - m["alias_MiB"]


def pair_row(paper: dict, siglip: dict, **head) -> dict:
  return {**head, "paper step (s)": paper["time_s"], "siglip step (s)": siglip["time_s"],
          "time ratio": paper["time_s"] / siglip["time_s"], "paper temp (MiB)": paper["temp_MiB"],
          "siglip temp (MiB)": siglip["temp_MiB"], "temp ratio": paper["temp_MiB"] / max(siglip["temp_MiB"], 1e-9),
          "paper peak (MiB)": _peak(paper), "siglip peak (MiB)": _peak(siglip),
          "peak ratio": _peak(paper) / _peak(siglip),
          "args (MiB)": paper["args_MiB"], "compile (s)": paper["compile_s"] + siglip["compile_s"],
          "finite": paper["finite"] and siglip["finite"], "paper": paper, "siglip": siglip}


def sweep_batches(args) -> list[dict]:
  data = synthetic(jax.random.PRNGKey(args.seed), n_pairs=args.batch_paired, n_pool=args.pool, dim_x=args.dim_x,
                   dim_y=args.dim_y)
  rows = []
  for b in args.batches:
    kw = dict(batch_paired=args.batch_paired, batch_unpaired=b, dim=args.dim, alpha=args.alpha,
              repeats=args.repeats)
    paper, siglip = measure("paper", data, **kw), measure("siglip", data, **kw)
    r = pair_row(paper, siglip, B=b)
    r["[B,B] buffers"] = paper["temp_MiB"] * MiB / (4.0 * b * b)
    rows.append(r)
    print(f"  B {b}: paper {paper['time_s']:.3g} s, siglip {siglip['time_s']:.3g} s", flush=True)
  return rows


def sweep_pools(args) -> list[dict]:
  rows = []
  for p in args.pools:
    data = synthetic(jax.random.PRNGKey(args.seed + 1), n_pairs=args.batch_paired, n_pool=p, dim_x=args.dim_x,
                     dim_y=args.dim_y)
    kw = dict(batch_paired=args.batch_paired, batch_unpaired=args.pool_batch, dim=args.dim, alpha=args.alpha,
              repeats=args.repeats)
    paper, siglip = measure("paper", data, **kw), measure("siglip", data, **kw)
    rows.append(pair_row(paper, siglip, P=p))
    del data
    print(f"  P {p}: paper {paper['time_s']:.3g} s, siglip {siglip['time_s']:.3g} s", flush=True)
  return rows


def gpu_point(args) -> dict:
  g = GPU_POINT
  t0 = time.perf_counter()
  data = synthetic(jax.random.PRNGKey(args.seed + 2), n_pairs=g["batch_paired"], n_pool=g["pool"], dim_x=g["dim_x"],
                   dim_y=g["dim_y"])
  data_s = time.perf_counter() - t0
  kw = dict(batch_paired=g["batch_paired"], batch_unpaired=g["batch_unpaired"], dim=g["dim"], alpha=args.alpha,
            repeats=args.repeats)
  paper, siglip = measure("paper", data, **kw), measure("siglip", data, **kw)
  b = g["batch_unpaired"]
  r = pair_row(paper, siglip, B=b, P=g["pool"], **{"B paired": g["batch_paired"], "dims": g["dim_x"]})
  r["[B,B] buffers"] = paper["temp_MiB"] * MiB / (4.0 * b * b)
  r["data (s)"] = data_s
  r["total (s)"] = time.perf_counter() - t0
  return r


# ----------------------------------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------------------------------
def exponents_b(rows: list[dict], batch_paired: int) -> dict:
  bs = [r["B"] for r in rows]
  big = [r for r in rows if r["B"] > batch_paired]
  return {"paper time": exponent(bs, [r["paper step (s)"] for r in rows]),
          "siglip time": exponent(bs, [r["siglip step (s)"] for r in rows]),
          "unpaired term time (paper - siglip)": exponent(bs, [r["paper step (s)"] - r["siglip step (s)"]
                                                               for r in rows]),
          "paper temp": exponent(bs, [r["paper temp (MiB)"] for r in rows]),
          f"paper temp, B > {batch_paired}": exponent([r["B"] for r in big], [r["paper temp (MiB)"] for r in big]),
          "siglip temp": exponent(bs, [r["siglip temp (MiB)"] for r in rows]),
          "paper peak": exponent(bs, [r["paper peak (MiB)"] for r in rows])}


def exponents_p(rows: list[dict]) -> dict:
  ps = [r["P"] for r in rows]
  return {"paper time": exponent(ps, [r["paper step (s)"] for r in rows]),
          "siglip time": exponent(ps, [r["siglip step (s)"] for r in rows]),
          "paper temp": exponent(ps, [r["paper temp (MiB)"] for r in rows]),
          "args (pools)": exponent(ps, [r["args (MiB)"] for r in rows])}


def plot(b_rows: list[dict], p_rows: list[dict], path: str, title: str, batch_paired: int):
  import matplotlib
  import matplotlib.ticker
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from sotalign_jax.runtime.workdir import save_figure

  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  ax_t, ax_m, ax_p = axes
  if b_rows:
    b = np.array([r["B"] for r in b_rows], float)
    e = exponents_b(b_rows, batch_paired)
    ax_t.loglog(b, [r["paper step (s)"] for r in b_rows], "o-", label=f"paper step (exp. {e['paper time']:.2f})")
    ax_t.loglog(b, [r["siglip step (s)"] for r in b_rows], "s-", label=f"SigLIP step (exp. {e['siglip time']:.2f})")
    ax_m.loglog(b, [r["paper temp (MiB)"] for r in b_rows], "o-", label=f"paper step (exp. {e['paper temp']:.2f})")
    ax_m.loglog(b, [max(r["siglip temp (MiB)"], 1e-3) for r in b_rows], "s-",
                label=f"SigLIP step (exp. {e['siglip temp']:.2f})")
    ax_m.loglog(b, 6 * 4 * b**2 / MiB, "k--", label="6 · 4 B² bytes")
    for ax in (ax_t, ax_m):
      ax.set_xticks(b, [f"{v:g}" for v in b])
  ax_t.set(xlabel="unpaired batch B", ylabel="step time (s, best of repeats)", title="time vs unpaired batch")
  ax_m.set(xlabel="unpaired batch B", ylabel="XLA temp (MiB)", title="compiled working memory vs unpaired batch")
  if p_rows:
    p = np.array([r["P"] for r in p_rows], float)
    e = exponents_p(p_rows)
    ax_p.loglog(p, [r["paper step (s)"] for r in p_rows], "o-", label=f"paper step (exp. {e['paper time']:.2f})")
    ax_p.loglog(p, [r["siglip step (s)"] for r in p_rows], "s-", label=f"SigLIP step (exp. {e['siglip time']:.2f})")
    ax_p.set_xticks(p, [f"{v:g}" for v in p])
  ax_p.set(xlabel="pool rows per side P", ylabel="step time (s)", title="time vs pool (fixed B)")
  for ax in axes:
    ax.grid(True, which="both", alpha=0.3)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if ax.lines:
      ax.legend(fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  save_figure(fig, path)


def _ints(s: str) -> list[int]:
  return [int(float(v)) for v in s.split(",") if v.strip()]


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--small", action="store_true", help=f"quick check: batches {SMALL['batches']}, pools "
                 f"{SMALL['pools']} (flags given override)")
  p.add_argument("--batches", default=None, help=f"unpaired batches of sweep 1 (default {FULL['batches']}; '' skips)")
  p.add_argument("--pools", default=None, help=f"pool rows per side of sweep 2 (default {FULL['pools']}; '' skips)")
  p.add_argument("--pool", type=int, default=100_000, help="pool rows per side in sweep 1")
  p.add_argument("--pool-batch", type=int, default=1024, help="unpaired batch in sweep 2")
  p.add_argument("--batch-paired", type=int, default=1024, help="paired batch (and number of pairs) in both sweeps")
  p.add_argument("--dim-x", type=int, default=64, help="image feature size of the synthetic rows")
  p.add_argument("--dim-y", type=int, default=64, help="text feature size")
  p.add_argument("--dim", type=int, default=64, help="head / teacher dimension (CCA, capped by the feature sizes)")
  p.add_argument("--alpha", type=float, default=_paper_defaults()["alpha_grid"][0],
                 help="the KLOT weight (default: the first of sotalign_paper's grid; it does not change the cost)")
  p.add_argument("--repeats", type=int, default=3, help="timed steps per point (best of), after one warm-up")
  p.add_argument("--gpu-point", action="store_true", help="also the paper's full point: 10k pairs + 22k unpaired, "
                 "pools of 1M rows, dims 1024 (needs an accelerator)")
  p.add_argument("--force", action="store_true", help="run --gpu-point on a CPU backend anyway")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None, metavar="PATH", help="write the numbers here")
  p.add_argument("--plot", default="workdirs/bench_sotalign_scale.png", metavar="PATH", help="figure ('' skips)")
  args = p.parse_args(argv)
  preset = SMALL if args.small else FULL
  args.batches = _ints(preset["batches"] if args.batches is None else args.batches)
  args.pools = _ints(preset["pools"] if args.pools is None else args.pools)
  for name in ("pool", "pool_batch", "batch_paired", "dim_x", "dim_y", "dim", "repeats"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if any(b < 2 for b in args.batches) or any(q < 2 for q in args.pools):
    p.error("batches and pools must be >= 2")
  if args.batches and max(args.batches) >= args.pool:
    p.error(f"every unpaired batch must be smaller than --pool {args.pool} (else the step takes the whole pool)")
  if args.pools and args.pool_batch >= min(args.pools):
    p.error(f"--pool-batch {args.pool_batch} must be smaller than every pool (smallest {min(args.pools)})")
  if args.batch_paired < 2:
    p.error(f"--batch-paired must be >= 2 (it is also the number of pairs), got {args.batch_paired}")
  if args.gpu_point and jax.default_backend() == "cpu" and not args.force:
    p.error("--gpu-point is the paper's 32k-batch / 1M-pool / 1024-dim point: about 12 GB for the 22k x 22k KLOT "
            "matrices alone, 8 GB of pools and minutes per step on a CPU. Run it on a GPU, or add --force.")
  return args


def main(argv=None):
  args = parse(argv)
  backend = jax.default_backend()
  header = (f"jax {jax.__version__}, backend {backend}, devices {jax.devices()}, {os.cpu_count()} CPUs, "
            f"BLAS (numpy): {blas_info()}")
  print(header)
  pd = _paper_defaults()
  print(f"paper step: Lion lr {pd['lr']}, SigLIP scale {pd['siglip_t']} bias {pd['siglip_b']}, KLOT eps "
        f"{pd['eps_student']} / {pd['eps_teacher']}, {pd['sinkhorn_iters']} Sinkhorn iterations, alpha {args.alpha}; "
        f"SigLIP step: the same with the term 'none'. Paired batch {args.batch_paired}, dims {args.dim_x} / "
        f"{args.dim_y} -> {args.dim}, best of {args.repeats}", flush=True)
  t_start = time.perf_counter()
  out = dict(args=vars(args), backend=backend, devices=[str(d) for d in jax.devices()], blas=blas_info())
  cols = ["time ratio", "paper temp (MiB)", "siglip temp (MiB)", "temp ratio"]
  b_rows, p_rows = [], []
  if args.batches:
    print(f"\n## 1. Unpaired batch B (pool {args.pool} rows per side)", flush=True)
    b_rows = sweep_batches(args)
    print_table(b_rows, ["B", "paper step (s)", "siglip step (s)"] + cols
                + ["[B,B] buffers", "paper peak (MiB)", "peak ratio", "compile (s)", "finite"])
    eb = exponents_b(b_rows, args.batch_paired)
    print("fitted exponents in B (log-log least squares; KLOT predicts 2 once it dominates): "
          + ", ".join(f"{k} {v:.2f}" for k, v in eb.items()))
    out.update(batch_sweep=b_rows, batch_exponents=eb)
  if args.pools:
    print(f"\n## 2. Pool P rows per side (unpaired batch {args.pool_batch})", flush=True)
    p_rows = sweep_pools(args)
    print_table(p_rows, ["P", "paper step (s)", "siglip step (s)"] + cols + ["args (MiB)", "finite"])
    ep = exponents_p(p_rows)
    print("fitted exponents in P (the claim: the step's time does not grow with the pool, ≈ 0): "
          + ", ".join(f"{k} {v:.2f}" for k, v in ep.items()))
    out.update(pool_sweep=p_rows, pool_exponents=ep)
  if args.gpu_point:
    g = GPU_POINT
    print(f"\n## 3. The paper's point: {g['batch_paired']} pairs + {g['batch_unpaired']} unpaired rows (a batch of "
          f"{g['batch_paired'] + g['batch_unpaired']}), "
          f"pools {g['pool']} rows per side, dims {g['dim_x']} / {g['dim_y']} -> {g['dim']}", flush=True)
    r = gpu_point(args)
    print_table([r], ["B paired", "B", "P", "paper step (s)", "siglip step (s)"] + cols
                + ["[B,B] buffers", "paper peak (MiB)", "peak ratio", "args (MiB)", "compile (s)", "data (s)",
                   "total (s)", "finite"])
    out["gpu_point"] = r
  stats = getattr(jax.devices()[0], "memory_stats", lambda: None)() or {}
  if "peak_bytes_in_use" in stats:
    print(f"device peak memory in use {stats['peak_bytes_in_use'] / MiB:.0f} MiB")
    out["device_peak_MiB"] = stats["peak_bytes_in_use"] / MiB
  out["peak_rss_MiB"] = peak_rss_mb()
  out["wall_s"] = time.perf_counter() - t_start
  print(f"peak RSS {out['peak_rss_MiB']:.0f} MiB, wall {out['wall_s']:.0f} s")
  if args.plot and (b_rows or p_rows):
    plot(b_rows, p_rows, args.plot, header, args.batch_paired)
    print(f"wrote {args.plot}")
  if args.json:
    write_json(args.json, out)


if __name__ == "__main__":
  main()
