r"""The accelerator check: every hot path of the project at the paper's sizes, one process, one JSON document.

Run on whatever backend jax has (an H200 is what the sizes are for); ``--small`` shrinks every size so that the
same sections run on a CPU in about a minute (``tests/test_device_check.py`` does, in a subprocess) and the
JSON has the same keys. Each section's figures stand beside a **reference** (a baseline measured in the same run,
the docstring's formula, or the issue's goal) and a **bound** (what the hardware allows: the memory-bandwidth or
fp32-matmul-peak time, the device's memory, or the agreement tolerance), each named in ``reference_is`` /
``bound_is``; ``ok`` checks the goal (performance goals only at the full size, agreement checks always).

Sections (``--only`` picks some, in this order):

1. ``klot``: ``ot.klot`` value and gradient (100 Sinkhorn iterations for the student and for the teacher, ε = 0.05
   and ε* = 0.005, ``ot.klot``'s defaults, the harder case than the paper's 0.01) at n = m = 4k, 8k, 16k, 22k: time
   against the bandwidth bound (bytes ≥ (100 + 100) · 2 · 4·n·m: every iteration reads the ``[n, m]`` kernel twice;
   4.8e12 B/s on an H200, else a copy bandwidth measured in the same run), peak device memory
   (``memory_stats()["peak_bytes_in_use"]``, the process' high-water mark, which is why this section runs first and
   its sizes grow; where a backend has no such statistic (the CPU): XLA's compiled ``args + temp + out − alias``)
   against the docstring's ≈ ``6 · 4·n·m`` bytes (:func:`sotalign_jax.ot.klot_sharded`, ``p = 1``). Goal: 22k²
   in ≤ 0.4 s.
2. ``step``: the ``sotalign_paper`` training step (10k pairs + 22k unpaired rows per step, features of 1024 and
   4096 dimensions → heads of 1024, pools of 1M rows per side resident on the device, Lion), built by
   ``fit_heads`` itself (``bench_sotalign_scale.measure``), beside the SigLIP-only step; time per step, XLA's
   peak memory, and 2,000 steps (the paper's run) extrapolated from the step time. On one device the step runs
   the dense ``ot.klot`` (``shard_klot=False``; ``ot.klot_sharded`` splits the ``[n, m]`` matrices over a mesh of
   several devices).
3. ``zero_pair``: ``fit_wasserstein_procrustes`` at 10k × 10k (C = S = 30, b = 10k, R = 100) with
   ``lap="auction"`` on the device (``bench_zero_pair.ours``: the public fit, then the steady state by
   stage) against the same fit with scipy's assignments on the host: that fit runs only its read-out and
   ``scipy_iterations`` refinement steps, and its time is *estimated*, conservatively, as the auction run's
   preprocessing + initialization (the same computations) + the measured host assignments of the read-out + R ×
   the mean measured step assignment (device work between them left out). Agreement: both fits with the same key
   at ``scipy_iterations`` steps, ``‖W_a − W_s‖/‖W_s‖``; FOSCTTM of the auction fit against the planted rotation's.
   Goal ≥ 10×.
4. ``faq``: ``qap.faq`` (n = 820: 320 seeds + 500 queries, 500 restarts, ``lap="auction"``) against a loop of
   ``scipy.optimize.quadratic_assignment`` timed on 50 restarts and scaled linearly (``bench_qap.compare``); the
   best objective must equal or beat scipy's. Goal ≥ 20×.
5. ``scores``: linear CKA at n = 100k, d = 1024 (feature space, no n × n) and a 12 × 12 linear-CKA layer grid
   (n = 5k, d = 768) with 200 permutations (``scores.score_grid``), against the fp32 (``Precision.HIGHEST``, what
   the library uses) matmul peak measured in the same run.
6. ``encoders``: MiniLM and MPNet sentences/s at batch 512 (``bench_text_encoders.bench_text``, reference: batch
   128, the loaders' default) and EfficientNet-Lite0 images/s at batch 256, forward pass only
   (``bench_encoders.bench_image``, reference: the grouped-convolution depthwise), with the fraction of the
   default-precision matmul peak (the precision they run at). Their weights come from pip packages that this
   script never installs: a missing one gives a row "skipped: weights not installed".

``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is set here before jax is imported (so that the memory figures are the
arrays', not a preallocated pool); the JSON records it, with the backend, device kind, jax version, git commit,
date and sizes. Progress goes to stderr; stdout gets the markdown table, then the JSON document (also written to
``--out``).

Usage::

  make device-check                                       # the full size, JSON in workdirs/device_check.json
  .venv/bin/python benchmarks/device_check.py [--small] [--only klot,step,zero_pair,faq,scores,encoders]
      [--out PATH]

Time of the full size on an H200, estimated (not run: no accelerator was lent to this task) from the bounds and
from ``--small`` and earlier CPU runs on 2 cores: klot ≈ 20 s (the four sizes' bandwidth bounds sum to 0.3 s per
call; 5 calls each + compiles); step ≈ 1.5 min (20 GB of pools generated on the device, two compiles of ≈ 20 s,
5 calls of ≈ 0.3–0.6 s each); zero_pair ≈ 2.5 min (two auction fits of 101 assignments of 10k × 10k each plus the
compiles; on the host one scipy read-out, 26 s on the 2 CPU cores of the README's run, and 2 steps of ≈ 2 s); faq
≈ 40 s (50 scipy restarts of ≈ 0.3 s, 2 × 500 restarts on the device); scores ≈ 20 s (≈ 0.17 PFLOP of grid at
tens of TFLOP/s); encoders ≈ 1 min when their weights are installed; with jax start-up and the peaks about
6–7 minutes, under the 8 allowed. The slowest uncertain part is the auction's price wars on the coarse read-out
scores (thousands of rounds at q = 10k; README, Benchmarks); ``--only`` runs a section alone. ``--small`` took
79 s here (62 s of CPU time; 2 cores shared with other jobs, load ≈ 4), most of it compiling; on a CPU its
performance figures mean little (the KLOT matrices sit in cache, so the "bandwidth fraction" exceeds 1) and are
not judged, while its agreement checks are.
"""

from __future__ import annotations

import os

_PREALLOCATE_WAS = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # before jax is imported: memory figures are the arrays'

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
import bench_qap  # noqa: E402
import bench_sotalign_scale  # noqa: E402
import bench_zero_pair  # noqa: E402
from common import matmul_peak_gflops, print_table, timeit, write_json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sotalign_jax import cka, ot, scores  # noqa: E402
from sotalign_jax.aligners import AlignData, unpaired  # noqa: E402

SECTIONS = ("klot", "step", "zero_pair", "faq", "scores", "encoders")
HBM_BANDWIDTH = {"H200": 4.8e12}  # bytes/s of a device kind's memory (datasheet); others: a copy measured here

FULL = dict(
    klot=dict(n=(4096, 8192, 16384, 22000), iters=100, repeats=3, goal_s=0.4, goal_n=22000),
    step=dict(n_pairs=10_000, pool=1_000_000, dim_x=1024, dim_y=4096, dim=1024, batch_paired=10_000,
              batch_unpaired=22_000, steps=2000, repeats=2),
    zero_pair=dict(n=10_000, dim=64, clusters=30, restarts=30, batch=10_000, iterations=100, scipy_iterations=2,
                   kmeans_iters=100, qap_inits=30, data_clusters=40, noise=0.05, n_test=2000, goal=10.0),
    faq=dict(base=320, queries=500, restarts=500, scipy_restarts=50, batch_size=500, goal=20.0),
    scores=dict(cka_n=100_000, cka_d=1024, grid_n=5000, layers=12, grid_d=768, n_perm=200, repeats=2),
    encoders=dict(text_n=2048, text_batch=512, text_ref_batch=128, image_batch=256, repeats=3),
    peaks=dict(copy_mib=1024, matmul_n=8192),
)
SMALL = dict(
    klot=dict(n=(256, 512, 768, 1024), iters=100, repeats=2, goal_s=0.4, goal_n=22000),
    step=dict(n_pairs=512, pool=20_000, dim_x=64, dim_y=256, dim=64, batch_paired=256, batch_unpaired=512,
              steps=2000, repeats=2),
    zero_pair=dict(n=500, dim=16, clusters=10, restarts=8, batch=500, iterations=5, scipy_iterations=5,
                   kmeans_iters=20, qap_inits=8, data_clusters=10, noise=0.05, n_test=500, goal=10.0),
    faq=dict(base=30, queries=60, restarts=16, scipy_restarts=4, batch_size=16, goal=20.0),
    scores=dict(cka_n=20_000, cka_d=128, grid_n=500, layers=12, grid_d=16, n_perm=200, repeats=1),
    encoders=dict(text_n=8, text_batch=8, text_ref_batch=4, image_batch=4, repeats=1),
    peaks=dict(copy_mib=128, matmul_n=1024),
)
W_AGREE_TOL = 1e-2  # ‖W_auction − W_scipy‖/‖W_scipy‖ on the planted problem (exact vs ε-optimal assignments)
FOSCTTM_TOL = 0.01  # FOSCTTM of the auction fit may exceed the planted rotation's by this much
FAQ_TOL = 1e-4      # relative: the batched FAQ's best objective may fall this far below scipy's


def log(msg: str) -> None:
  print(f"[device_check {time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


_T0 = time.perf_counter()


def figure(value, unit: str, *, reference, reference_is: str, bound, bound_is: str, goal: str | None = None,
           ok: bool | None = None, size=None) -> dict:
  """One figure of the report: its value beside a reference and a bound (each said what it is)."""
  num = lambda v: None if v is None else float(v)  # noqa: E731
  return dict(value=num(value), unit=unit, reference=num(reference), reference_is=reference_is, bound=num(bound),
              bound_is=bound_is, goal=goal, ok=None if ok is None else bool(ok), size=size, skipped=None)


def skipped(unit: str, why: str) -> dict:
  """A figure that could not be measured here: null numbers, and ``skipped`` says why."""
  return dict(figure(None, unit, reference=None, reference_is="", bound=None, bound_is=""), skipped=why)


def device_memory() -> dict:
  """The default device's ``memory_stats()`` (``{}`` where the backend has none, as the CPU)."""
  return getattr(jax.devices()[0], "memory_stats", lambda: None)() or {}


def memory_capacity() -> tuple[float, str]:
  stats = device_memory()
  if "bytes_limit" in stats:
    return float(stats["bytes_limit"]), "device memory (memory_stats bytes_limit)"
  return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "host RAM (no device memory statistics)"


def xla_peak_bytes(compiled) -> float:
  """XLA's bytes for one call of ``compiled``: inputs + temporaries + outputs − outputs aliased to inputs."""
  ma = compiled.memory_analysis()
  return float(ma.argument_size_in_bytes + ma.temp_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes)


# ----------------------------------------------------------------------------------------------------------------
# Machine peaks, measured in this run (lazily: after the KLOT memory figures, which read the high-water mark).
# ----------------------------------------------------------------------------------------------------------------
class Peaks:
  """Memory bandwidth and float32 matmul throughput of the default device."""

  def __init__(self, cfg: dict, small: bool):
    self.cfg, self.small = cfg, small

  @functools.cached_property
  def copy_bandwidth(self) -> float:
    """Bytes/s of a jitted ``a + 1`` over ``copy_mib`` MiB (one read and one write per element)."""
    a = jnp.ones((self.cfg["copy_mib"] * 2**20 // 4,), jnp.float32)
    add = jax.jit(lambda v: v + 1.0)
    return 2.0 * a.nbytes / timeit(lambda: add(a), repeat=5)

  @functools.cached_property
  def bandwidth(self) -> tuple[float, str]:
    kind = jax.devices()[0].device_kind
    for name, bw in HBM_BANDWIDTH.items():
      if name in kind:
        return bw, f"{name} datasheet {bw:.3g} B/s"
    return self.copy_bandwidth, f"copy bandwidth measured in this run ({self.cfg['copy_mib']} MiB a + 1)"

  @functools.cached_property
  def fp32_gflops(self) -> float:
    """True float32 (``Precision.HIGHEST``, the library's precision) GEMM GFLOP/s."""
    return matmul_peak_gflops(self.cfg["matmul_n"], precision=jax.lax.Precision.HIGHEST, with_numpy=False)["jax"]

  @functools.cached_property
  def default_gflops(self) -> float:
    """GEMM GFLOP/s at the backend's default precision (TF32 on recent GPUs), what the encoders run at."""
    return matmul_peak_gflops(self.cfg["matmul_n"], with_numpy=False)["jax"]

  def summary(self) -> dict:
    return dict(copy_bandwidth_Bps=self.copy_bandwidth, bandwidth_Bps=self.bandwidth[0],
                bandwidth_source=self.bandwidth[1], matmul_fp32_highest_gflops=self.fp32_gflops,
                matmul_default_precision_gflops=self.default_gflops, matmul_n=self.cfg["matmul_n"])


# ----------------------------------------------------------------------------------------------------------------
# 1. KLOT forward + backward.
# ----------------------------------------------------------------------------------------------------------------
def klot_bytes(n: int, m: int, iters: int) -> float:
  """Lower bound on the bytes one KLOT value-and-gradient moves: (student + teacher iterations) × 2 × 4·n·m."""
  return 2.0 * iters * 2 * 4.0 * n * m


def klot_point(n: int, iters: int, repeats: int) -> dict:
  kx, ky, kt = jax.random.split(jax.random.key(n), 3)
  x, y = jax.random.normal(kx, (n, 64)), jax.random.normal(ky, (n, 64))
  k_s = ot.cosine_similarity(x, y)
  k_t = ot.cosine_similarity(x + 0.5 * jax.random.normal(kt, x.shape), y)
  del x, y
  fn = jax.jit(jax.value_and_grad(lambda k, kt: ot.klot(k, kt, eps_student=0.05, eps_teacher=0.005,
                                                        num_iters=iters)))
  compiled = fn.lower(k_s, k_t).compile()
  t = timeit(lambda: compiled(k_s, k_t), repeat=repeats)
  value, grad = compiled(k_s, k_t)
  stats = device_memory()
  out = dict(n=n, m=n, time_s=t, xla_peak_bytes=xla_peak_bytes(compiled),
             xla_temp_bytes=float(compiled.memory_analysis().temp_size_in_bytes),
             device_peak_bytes=float(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None,
             finite=bool(np.isfinite(float(value)) and bool(jnp.isfinite(grad).all())))
  return out  # the [n, n] arrays go with this frame, before the next size's high-water mark


def section_klot(cfg: dict, peaks: Peaks, small: bool) -> tuple[dict, dict]:
  c = cfg["klot"]
  rows = []
  for n in c["n"]:
    rows.append(klot_point(n, c["iters"], c["repeats"]))
    log(f"klot n = {n}: {rows[-1]['time_s']:.3g} s")
  bw, bw_is = peaks.bandwidth
  cap, cap_is = memory_capacity()
  figs = {}
  for i, r in enumerate(rows, 1):
    n, m = r["n"], r["m"]
    t_bound = klot_bytes(n, m, c["iters"]) / bw
    goal_t = c["goal_s"] * n * m / c["goal_n"] ** 2
    last = n == c["goal_n"]
    mem, mem_is = ((r["device_peak_bytes"], "device high-water mark") if r["device_peak_bytes"] is not None
                   else (r["xla_peak_bytes"], "XLA args + temp + out - alias"))
    figs[f"klot.n{i}.time_s"] = figure(
        r["time_s"], "s", size=n, reference=goal_t,
        reference_is=f"goal {c['goal_s']} s at {c['goal_n']}², scaled by n·m", bound=t_bound,
        bound_is=f"{2 * c['iters']} iterations x 2 x 4nm bytes / bandwidth",
        goal=f"<= {c['goal_s']} s at n = {c['goal_n']}" if last else None,
        ok=None if small or not last else r["time_s"] <= c["goal_s"])
    figs[f"klot.n{i}.memory_bytes"] = figure(
        mem, "B", size=n, reference=6 * 4.0 * n * m, reference_is="docstring: ≈ 6 · 4nm bytes (klot_sharded, p = 1)",
        bound=cap, bound_is=cap_is, ok=mem <= cap)
    figs[f"klot.n{i}.bandwidth_fraction"] = figure(
        t_bound / r["time_s"], "", size=n, reference=t_bound / goal_t, reference_is="the fraction the goal implies",
        bound=1.0, bound_is="the bandwidth bound (on a CPU small matrices sit in cache: may exceed it)")
    r.update(bandwidth_bound_s=t_bound, memory_source=mem_is)
  return figs, dict(rows=rows, eps_student=0.05, eps_teacher=0.005, iterations=c["iters"], bandwidth_Bps=bw,
                    bandwidth_source=bw_is)


# ----------------------------------------------------------------------------------------------------------------
# 2. The paper's SOTAlign step.
# ----------------------------------------------------------------------------------------------------------------
def step_flops(*, bp: int, bu: int, dx: int, dy: int, d: int) -> float:
  """GEMM FLOPs of one step: student heads forward + weight gradients on ``bp + bu`` rows, teacher heads on ``bu``,
  SigLIP's ``[bp, bp]`` logits and the two ``[bu, bu]`` cosines (forward + both input gradients for the student)."""
  return (2 * 2.0 * (bp + bu) * (dx + dy) * d + 2.0 * bu * (dx + dy) * d + 3 * 2.0 * bp * bp * d
          + 3 * 2.0 * bu * bu * d + 2.0 * bu * bu * d)


def section_step(cfg: dict, peaks: Peaks, small: bool) -> tuple[dict, dict]:
  c = cfg["step"]
  paper_hp = bench_sotalign_scale._paper_defaults()  # pylint: disable=protected-access
  data = bench_sotalign_scale.synthetic(jax.random.PRNGKey(0), n_pairs=c["n_pairs"], n_pool=c["pool"],
                                        dim_x=c["dim_x"], dim_y=c["dim_y"])
  log(f"step: pools of {c['pool']} rows per side on the device")
  kw = dict(batch_paired=c["batch_paired"], batch_unpaired=c["batch_unpaired"], dim=c["dim"],
            alpha=paper_hp["alpha_grid"][0], repeats=c["repeats"])
  with contextlib.redirect_stdout(sys.stderr):
    paper = bench_sotalign_scale.measure("paper", data, **kw)
    log(f"step: paper step {paper['time_s']:.3g} s")
    siglip = bench_sotalign_scale.measure("siglip", data, **kw)
    log(f"step: SigLIP step {siglip['time_s']:.3g} s")
  row = bench_sotalign_scale.pair_row(paper, siglip, B=c["batch_unpaired"])
  log(f"step: KLOT is the dense ot.klot ({len(jax.devices())} device(s), no mesh)")
  del data
  bu, bp, iters = c["batch_unpaired"], c["batch_paired"], paper_hp["sinkhorn_iters"]
  d = min(c["dim"], c["dim_x"], c["dim_y"], bp)
  flops = step_flops(bp=bp, bu=bu, dx=c["dim_x"], dy=c["dim_y"], d=d)
  bw, _ = peaks.bandwidth
  t_gemm = flops / (peaks.fp32_gflops * 1e9)
  t_bound = klot_bytes(bu, bu, iters) / bw + t_gemm
  cap, cap_is = memory_capacity()
  mib = 2.0**20
  mem = row["paper peak (MiB)"] * mib
  mem_ref = paper["args_MiB"] * mib + 6 * 4.0 * bu * bu
  steps = c["steps"]
  figs = {
      "step.paper_time_s": figure(paper["time_s"], "s", reference=siglip["time_s"],
                                  reference_is="SigLIP-only step", bound=t_bound,
                                  bound_is="dense KLOT's bandwidth bound + GEMMs at the fp32 peak",
                                  goal="finite loss",
                                  ok=paper["finite"]),
      "step.siglip_time_s": figure(siglip["time_s"], "s", reference=paper["time_s"], reference_is="paper step",
                                   bound=t_gemm, bound_is="GEMMs at the fp32 peak", goal="finite loss",
                                   ok=siglip["finite"]),
      "step.paper_memory_bytes": figure(mem, "B", reference=mem_ref,
                                        reference_is="inputs (pools, state) + 6 · 4·B² (KLOT, dense)",
                                        bound=cap, bound_is=cap_is, ok=mem <= cap),
      f"step.train_{steps}_steps_s": figure(steps * paper["time_s"], "s", reference=steps * siglip["time_s"],
                                            reference_is=f"{steps} SigLIP-only steps", bound=steps * t_bound,
                                            bound_is=f"{steps} x the step bound"),
  }
  detail = dict(klot="dense ot.klot on one device (shard_klot=False, no mesh; ot.klot_sharded needs a mesh of "
                     f"several devices; {len(jax.devices())} device(s) here)",
                sizes=dict(c, teacher_dim=d), paper_recipe={k: paper_hp[k] for k in (
                    "optimizer", "lr", "weight_decay", "eps_student", "eps_teacher", "sinkhorn_iters")},
                gemm_flops=flops, train_steps_extrapolated=f"{steps} x the measured step time (not run)",
                device_high_water_bytes=device_memory().get("peak_bytes_in_use"),
                row={k: v for k, v in row.items() if k not in ("paper", "siglip")}, paper=paper, siglip=siglip)
  return figs, detail


# ----------------------------------------------------------------------------------------------------------------
# 3. Zero pairs: the auction on the device vs scipy on the host.
# ----------------------------------------------------------------------------------------------------------------
def zero_pair_flops(c: dict) -> tuple[float, float]:
  """(initialization, read-out + refinement) GEMM FLOPs: Lloyd's ``b × C`` distances and centre sums per
  iteration, side and restart; one ``b × d × d`` map and one ``b × b × d`` score product per assignment."""
  b, d = c["batch"], c["dim"]
  init = c["restarts"] * 2 * (c["kmeans_iters"] + 1) * 2 * (2.0 * b * c["clusters"] * d)
  steps = math.ceil(c["n"] / b) + c["iterations"]
  return init, steps * (2.0 * b * d * d + 2.0 * b * b * d)


def _wp_fit(x, y, key, c: dict, iterations: int, lap: str):
  return unpaired.fit_wasserstein_procrustes(
      key, AlignData.create(x=x, y=y), n_clusters=c["clusters"], n_restarts=c["restarts"], batch_size=c["batch"],
      n_iterations=iterations, refine_batch_size=c["batch"], kmeans_iters=c["kmeans_iters"],
      qap_inits=c["qap_inits"], lap=lap)


def section_zero_pair(cfg: dict, peaks: Peaks, small: bool) -> tuple[dict, dict]:
  c = cfg["zero_pair"]
  rng = np.random.default_rng(0)
  x, y, tx, ty, q = bench_zero_pair.synthetic(rng, n=c["n"], dim=c["dim"], clusters=c["data_clusters"],
                                              noise=c["noise"], n_test=c["n_test"], disjoint=False)
  key = jax.random.key(0)
  hp = dict(n_clusters=c["clusters"], n_restarts=c["restarts"], batch=c["batch"], n_iterations=c["iterations"],
            refine_batch=c["batch"], kmeans_iters=c["kmeans_iters"], qap_inits=c["qap_inits"])
  auc = bench_zero_pair.ours(x, y, key, hp, "auction")
  log(f"zero_pair: auction fit, steady total {auc['total_s']:.3g} s (first call {auc['first_s']:.3g} s)")

  # scipy on the host: the read-out and `scipy_iterations` steps, each host assignment timed by bench_zero_pair.
  r_s = c["scipy_iterations"]
  lap0 = dict(s=bench_zero_pair._LAP["s"], n=bench_zero_pair._LAP["n"])  # pylint: disable=protected-access
  t = time.perf_counter()
  fit_s = _wp_fit(x, y, key, c, r_s, "scipy")
  w_s = np.asarray(fit_s.wx)
  scipy_wall = time.perf_counter() - t
  calls = bench_zero_pair._LAP["calls"][lap0["n"]:]  # pylint: disable=protected-access
  n_read = math.ceil(c["n"] / c["batch"])  # read-out blocks
  readout_s, step_s = sum(calls[:n_read]), float(np.mean(calls[n_read:])) if calls[n_read:] else 0.0
  scipy_refine = readout_s + c["iterations"] * step_s
  scipy_total = auc["prep_s"] + auc["init_s"] + scipy_refine
  log(f"zero_pair: scipy read-out {readout_s:.3g} s, {len(calls) - n_read} steps of {step_s:.3g} s each")
  w_a = auc["w"] if r_s == c["iterations"] else np.asarray(_wp_fit(x, y, key, c, r_s, "auction").wx)
  w_rel = float(np.linalg.norm(w_a - w_s) / np.linalg.norm(w_s))
  qual_a = bench_zero_pair.quality(auc, q, tx, ty)
  qual_s = bench_zero_pair.quality(dict(auc, w=w_s), q, tx, ty)
  qual_q = bench_zero_pair.quality(dict(auc, w=q), q, tx, ty)
  f_init, f_refine = zero_pair_flops(c)
  peak = peaks.fp32_gflops * 1e9
  t_bound = (f_init + f_refine) / peak
  perf_ok = lambda v: None if small else v  # noqa: E731
  speedup = scipy_total / auc["total_s"]
  figs = {
      "zero_pair.init_s": figure(auc["init_s"], "s", reference=auc["init_s"],
                                 reference_is="scipy fit: the same computation (no assignment in it)",
                                 bound=f_init / peak, bound_is="Lloyd GEMMs at the fp32 peak"),
      "zero_pair.refine_s": figure(auc["refine_s"], "s", reference=scipy_refine,
                                   reference_is=f"scipy: read-out + R x mean of {r_s} measured steps (host LSA)",
                                   bound=f_refine / peak, bound_is="score GEMMs at the fp32 peak"),
      "zero_pair.total_s": figure(auc["total_s"], "s", reference=scipy_total,
                                  reference_is="scipy fit, estimated (prep + init as measured + host LSA)",
                                  bound=t_bound, bound_is="GEMMs at the fp32 peak (assignment work not counted)"),
      "zero_pair.speedup": figure(speedup, "x", reference=c["goal"], reference_is="goal", bound=scipy_total / t_bound,
                                  bound_is="the speed-up at the GEMM bound", goal=f">= {c['goal']:g}x",
                                  ok=perf_ok(speedup >= c["goal"])),
      "zero_pair.w_rel_diff": figure(w_rel, "", reference=qual_s["w_rel_err"],
                                     reference_is="‖W_s − Q‖/‖Q‖ (scipy fit vs the planted rotation)",
                                     bound=W_AGREE_TOL, bound_is=f"tolerance, both fits at R = {r_s}",
                                     ok=w_rel <= W_AGREE_TOL),
      "zero_pair.foscttm": figure(qual_a["foscttm"], "", reference=qual_s["foscttm"],
                                  reference_is=f"scipy fit at R = {r_s}", bound=qual_q["foscttm"],
                                  bound_is="the planted rotation Q",
                                  ok=qual_a["foscttm"] <= qual_q["foscttm"] + FOSCTTM_TOL),
  }
  drop = ("w", "m", "mx", "my", "lsa_calls")
  detail = dict(sizes=c, auction={k: v for k, v in auc.items() if k not in drop},
                scipy=dict(iterations=r_s, wall_s_incl_compile=scipy_wall, readout_lsa_s=readout_s,
                           step_lsa_s=step_s, n_lsa=len(calls), refine_estimated_s=scipy_refine,
                           total_estimated_s=scipy_total,
                           estimate="prep + init from the auction run (identical computations) + measured read-out "
                                    f"LSA + R x the mean of {len(calls) - n_read} measured step LSAs; device work "
                                    "between the assignments not counted (a lower bound)"),
                quality=dict(auction=qual_a, scipy=qual_s, planted=qual_q), w_rel_diff_at_iterations=r_s)
  return figs, detail


# ----------------------------------------------------------------------------------------------------------------
# 4. FAQ restarts.
# ----------------------------------------------------------------------------------------------------------------
def section_faq(cfg: dict, peaks: Peaks, small: bool) -> tuple[dict, dict]:
  c = cfg["faq"]
  a, b, seeds, truth = bench_qap.instance(c["base"], c["queries"], np.random.default_rng(0))
  out = bench_qap.compare(a, b, seeds, truth, restarts=c["restarts"], scipy_restarts=c["scipy_restarts"],
                          batch_size=c["batch_size"], seed=0, lap="auction", peak_gflops=peaks.fp32_gflops)
  log(f"faq: {out['jax_s']:.3g} s vs scipy {out['scipy_s_extrapolated']:.3g} s (scaled)")
  t_bound = out["gemm_gflop"] / peaks.fp32_gflops
  sp_fun, fun = out["scipy_best_fun"], out["jax_best_fun"]
  floor = sp_fun - FAQ_TOL * abs(sp_fun)
  figs = {
      "faq.time_s": figure(out["jax_s"], "s", reference=out["scipy_s_extrapolated"],
                           reference_is=f"scipy loop, {c['scipy_restarts']} restarts timed, scaled",
                           bound=t_bound, bound_is="FAQ GEMMs at the fp32 peak"),
      "faq.speedup": figure(out["speedup"], "x", reference=c["goal"], reference_is="goal",
                            bound=out["scipy_s_extrapolated"] / t_bound, bound_is="the speed-up at the GEMM bound",
                            goal=f">= {c['goal']:g}x", ok=None if small else out["speedup"] >= c["goal"]),
      "faq.best_objective": figure(fun, "", reference=sp_fun,
                                   reference_is=f"scipy's best of {c['scipy_restarts']} restarts", bound=floor,
                                   bound_is=f"scipy's best - {FAQ_TOL:g} relative", goal=">= scipy's",
                                   ok=fun >= floor),
  }
  return figs, dict(sizes=c, **out)


# ----------------------------------------------------------------------------------------------------------------
# 5. Scores: linear CKA and a permutation-calibrated layer grid.
# ----------------------------------------------------------------------------------------------------------------
def section_scores(cfg: dict, peaks: Peaks, small: bool) -> tuple[dict, dict]:
  c = cfg["scores"]
  peak = peaks.fp32_gflops * 1e9
  n, d = c["cka_n"], c["cka_d"]
  kx, ky, kz = jax.random.split(jax.random.key(5), 3)
  x = jax.random.normal(kx, (n, d))
  y = x @ jax.random.normal(ky, (d, d)) * 0.05 + jax.random.normal(kz, (n, d))
  t_cka = timeit(lambda: cka.linear_cka(x, y), repeat=c["repeats"])
  cka_flops = 2.0 * n * (d * d + d * d + d * d)
  temp = float(jax.jit(lambda a, b: cka._linear_cka(a, b, False)).lower(x, y).compile()  # pylint: disable=protected-access
               .memory_analysis().temp_size_in_bytes)
  log(f"scores: linear CKA n = {n}: {t_cka:.3g} s")

  gn, layers, gd, n_perm = c["grid_n"], c["layers"], c["grid_d"], c["n_perm"]
  z = jax.random.normal(jax.random.key(6), (gn, 32))
  keys = jax.random.split(jax.random.key(7), 4 * layers)
  xs = [z @ jax.random.normal(keys[i], (32, gd)) + jax.random.normal(keys[layers + i], (gn, gd))
        for i in range(layers)]
  ys = [z @ jax.random.normal(keys[2 * layers + i], (32, gd)) + (1 + i) * jax.random.normal(keys[3 * layers + i],
                                                                                             (gn, gd))
        for i in range(layers)]
  grid = lambda: scores.score_grid(xs, ys, n_perm=n_perm, key=jax.random.key(8)).null_mean  # noqa: E731
  t_grid = timeit(grid, repeat=c["repeats"])
  width = layers * gd
  grid_flops = (n_perm + 1) * 2.0 * gn * width * width + 2 * 2.0 * gn * layers * gd * gd
  log(f"scores: {layers} x {layers} grid, {n_perm} permutations: {t_grid:.3g} s")
  frac = lambda f, t: f / t / peak  # noqa: E731
  figs = {
      "scores.linear_cka_time_s": figure(t_cka, "s", size=n, reference=cka_flops / peak / 0.7,
                                         reference_is="70% of the fp32 peak (bench_cka's goal)",
                                         bound=cka_flops / peak, bound_is="GEMMs at the fp32 peak"),
      "scores.linear_cka_peak_fraction": figure(frac(cka_flops, t_cka), "", size=n, reference=0.7,
                                                reference_is="bench_cka's goal", bound=1.0, bound_is="fp32 peak"),
      "scores.linear_cka_temp_bytes": figure(temp, "B", size=n, reference=4.0 * (2 * n * d + 3 * d * d),
                                             reference_is="centred copies of x, y + three d x d products",
                                             bound=4.0 * n * n, bound_is="one n x n float32 Gram (must not form)",
                                             ok=temp < 0.1 * 4.0 * n * n),
      "scores.grid_time_s": figure(t_grid, "s", size=gn, reference=grid_flops / peak / 0.7,
                                   reference_is="70% of the fp32 peak", bound=grid_flops / peak,
                                   bound_is="cross GEMMs at the fp32 peak"),
      "scores.grid_peak_fraction": figure(frac(grid_flops, t_grid), "", size=gn, reference=0.7,
                                          reference_is="bench_cka's goal", bound=1.0, bound_is="fp32 peak"),
  }
  return figs, dict(sizes=c, linear_cka_flops=cka_flops, grid_flops=grid_flops)


# ----------------------------------------------------------------------------------------------------------------
# 6. Encoders (forward passes only; weights as installed, never installed here).
# ----------------------------------------------------------------------------------------------------------------
def _missing(e: Exception) -> str | None:
  """Why an encoder cannot run here (its weight package or a Python package is not installed), else ``None``."""
  if isinstance(e, ImportError):
    return f"skipped: {e.name or e} not installed"
  if isinstance(e, RuntimeError) and "not installed" in str(e):
    return "skipped: weights not installed"
  return None


def section_encoders(cfg: dict, peaks: Peaks, small: bool) -> tuple[dict, dict]:
  c = cfg["encoders"]
  peak = peaks.default_gflops
  figs, detail = {}, dict(sizes=c, peak_gflops=peak, peak_is="default-precision matmul peak measured in this run")
  for short, name in (("minilm", "all-MiniLM-L6-v2"), ("mpnet", "all-mpnet-base-v2")):
    try:
      import bench_text_encoders  # pylint: disable=import-outside-toplevel  (tokenizers: an extra)
      with contextlib.redirect_stdout(sys.stderr):
        r, ref = (bench_text_encoders.bench_text([name], n=c["text_n"], batch_size=b, reps=c["repeats"])[name]
                  for b in (c["text_batch"], c["text_ref_batch"]))
    except Exception as e:  # pylint: disable=broad-except
      if not (why := _missing(e)):
        raise
      log(f"encoders: {name} {why} ({e})")
      figs[f"encoders.{short}_sentences_per_s"] = skipped("1/s", why)
      figs[f"encoders.{short}_peak_fraction"] = skipped("", why)
      detail[short] = dict(skipped=str(e))
      continue
    per = r["gflop_per_sentence"] * 1e9
    figs[f"encoders.{short}_sentences_per_s"] = figure(
        r["sentences_per_s"], "1/s", size=c["text_batch"], reference=ref["sentences_per_s"],
        reference_is=f"batch {c['text_ref_batch']}", bound=peak * 1e9 / per, bound_is="padded FLOPs at the peak")
    figs[f"encoders.{short}_peak_fraction"] = figure(
        r["gflop_per_s"] / peak, "", size=c["text_batch"], reference=ref["gflop_per_s"] / peak,
        reference_is=f"batch {c['text_ref_batch']}", bound=1.0, bound_is="default-precision matmul peak")
    detail[short] = dict(batch=r, reference_batch=ref)
    log(f"encoders: {name} {r['sentences_per_s']:.0f} sentences/s")
  try:
    import bench_encoders  # pylint: disable=import-outside-toplevel  (PIL: an extra)
    with contextlib.redirect_stdout(sys.stderr):
      row = bench_encoders.bench_image(["efficientnet-lite0"], batch=c["image_batch"], repeats=c["repeats"],
                                       reference=True, peak_gflops=peak, end_to_end=False)[0]
  except Exception as e:  # pylint: disable=broad-except
    if not (why := _missing(e)):
      raise
    log(f"encoders: efficientnet-lite0 {why} ({e})")
    figs["encoders.lite0_images_per_s"] = skipped("1/s", why)
    figs["encoders.lite0_peak_fraction"] = skipped("", why)
    detail["lite0"] = dict(skipped=str(e))
    return figs, detail
  per = row["gflop_per_img"] * 1e9
  figs["encoders.lite0_images_per_s"] = figure(
      row["forward_img_s"], "1/s", size=c["image_batch"], reference=row["ref_img_s"],
      reference_is="grouped-conv depthwise", bound=peak * 1e9 / per, bound_is="XLA's FLOPs at the peak")
  figs["encoders.lite0_peak_fraction"] = figure(
      row["forward_peak_frac"], "", size=c["image_batch"], reference=row["ref_img_s"] * row["gflop_per_img"] / peak,
      reference_is="grouped-conv depthwise", bound=1.0, bound_is="default-precision matmul peak")
  detail["lite0"] = row
  log(f"encoders: efficientnet-lite0 {row['forward_img_s']:.0f} images/s")
  return figs, detail


SECTION_FNS = {"klot": section_klot, "step": section_step, "zero_pair": section_zero_pair, "faq": section_faq,
               "scores": section_scores, "encoders": section_encoders}


# ----------------------------------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------------------------------
def git_commit() -> str:
  try:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    return sha.strip() + ("+dirty" if dirty.strip() else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown (no git checkout)"


def _fmt(v) -> str:
  if v is None:
    return ""
  if isinstance(v, float):
    return f"{v:.3g}"
  return str(v)


def _plain(v):
  """JSON for what ``json`` does not know: numpy scalars and arrays as numbers and lists, anything else as text."""
  return v.tolist() if isinstance(v, (np.generic, np.ndarray)) else str(v)


def table(figs: dict) -> list[dict]:
  """The markdown table's rows: one per figure, a skipped one with its reason as the value."""
  return [{"figure": k, "size": _fmt(f["size"]), "value": f["skipped"] or _fmt(f["value"]), "unit": f["unit"],
           "reference": _fmt(f["reference"]), "reference is": f["reference_is"], "bound": _fmt(f["bound"]),
           "bound is": f["bound_is"], "goal": f["goal"] or "", "ok": {True: "yes", False: "NO", None: ""}[f["ok"]]}
          for k, f in figs.items()]


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--small", action="store_true", help="every size shrunk: a CPU check in under a minute")
  p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {list(SECTIONS)}")
  p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON document here")
  args = p.parse_args(argv)
  args.only = [s for s in args.only.split(",") if s]
  unknown = sorted(set(args.only) - set(SECTIONS))
  if unknown or not args.only:
    p.error(f"--only takes sections of {list(SECTIONS)}, got {unknown or 'none'}")
  return args


def main(argv=None) -> dict:
  args = parse(argv)
  cfg = SMALL if args.small else FULL
  t0 = time.perf_counter()
  dev = jax.devices()[0]
  log(f"jax {jax.__version__}, backend {jax.default_backend()}, {dev.device_kind}, "
      f"XLA_PYTHON_CLIENT_PREALLOCATE=false set by this script; sections {args.only}"
      f"{' (--small)' if args.small else ''}")
  peaks = Peaks(cfg["peaks"], args.small)
  figs, sections = {}, {}
  for name in SECTIONS:  # fixed order: klot first, while the device's memory high-water mark is its own
    if name not in args.only:
      sections[name] = dict(run=False)
      continue
    log(f"section {name} ...")
    ts = time.perf_counter()
    f, detail = SECTION_FNS[name](cfg, peaks, args.small)
    figs.update(f)
    sections[name] = dict(run=True, wall_s=time.perf_counter() - ts, figures=sorted(f), **detail)
  doc = dict(
      meta=dict(backend=jax.default_backend(), device_kind=dev.device_kind, devices=[str(d) for d in jax.devices()],
                jax_version=jax.__version__, git_commit=git_commit(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                small=args.small, sections=args.only, sizes={k: cfg[k] for k in SECTIONS + ("peaks",)},
                xla_python_client_preallocate=dict(set_to="false", by="benchmarks/device_check.py, before importing "
                                                   "jax", was=_PREALLOCATE_WAS),
                peaks=peaks.summary(), cpu_count=os.cpu_count(), wall_s=time.perf_counter() - t0),
      figures=figs, sections=sections)
  print_table(table(figs), ["figure", "size", "value", "unit", "reference", "reference is", "bound", "bound is",
                            "goal", "ok"])
  print()
  text = json.dumps(doc, indent=1, default=_plain)
  print(text)
  if args.out:
    with contextlib.redirect_stdout(sys.stderr):
      write_json(args.out, json.loads(text))
  log(f"done in {doc['meta']['wall_s']:.1f} s")
  return doc


if __name__ == "__main__":
  main()
