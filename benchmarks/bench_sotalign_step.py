"""SOTAlign's cost on top of SigLIP, KLOT's custom gradient, and our Sinkhorn vs ott-jax and POT — one process.

Three parts, each printing ratios against a reference measured in the same run:

1. One jitted train step (linear heads ``[d_img -> 512]``, ``[d_txt -> 512]``, SigLIP on a paired batch + KLOT on an
   unpaired batch of the same size, optax update) vs the SigLIP-only step, at batch 256 / 1024 / 4096: wall time
   and XLA's compiled temporary memory. Goal: ratio <= 3x at batch 1024.
2. ``jax.grad`` of KLOT with the closed-form gradient (``ot.klot``, custom VJP) vs autodiff through an unrolled
   log-domain Sinkhorn (``lax.fori_loop``): time and compiled temp memory. Goal: >= 5x less memory.
3. ``ot.sinkhorn`` vs ott-jax (``linear.solve`` jitted, min = max iterations) vs POT
   (``ot.sinkhorn(method="sinkhorn_log")``) vs a plain ``lax.fori_loop`` log-domain loop, n x n, 100 iterations.
   POT runs fewer iterations and is scaled linearly (said in the output). Goals: >= 30x POT, no slower than ott.

Usage (the lead runs the full size alone on the machine; ``--small`` is a quick check, ~2 minutes)::

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_sotalign_step.py
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_sotalign_step.py --small
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import compiled_temp_mb, peak_rss_mb, print_table, timeit  # noqa: E402

from sotalign_jax import losses, ot  # noqa: E402

D_IMG, D_TXT, D_OUT = 1024, 768, 512


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def _cos(a, b):
  return _unit(a) @ _unit(b).T


# --------------------------------------------------------------------------------------------- 1. train step


def make_steps(opt_name: str):
  opt = optax.lion(1e-4) if opt_name == "lion" else optax.adamw(1e-3)

  def siglip_term(params, batch):
    zi, zt = batch["img"] @ params["w_img"], batch["txt"] @ params["w_txt"]
    return losses.siglip_loss(zi, zt, t_log=params["t_log"], bias=params["bias"])

  def sotalign_loss(params, batch):
    k_student = _cos(batch["img_u"] @ params["w_img"], batch["txt_u"] @ params["w_txt"])
    return siglip_term(params, batch) + ot.klot(k_student, batch["k_teacher"], eps_student=0.05,
                                                eps_teacher=0.005, num_iters=100)

  def make(loss_fn):
    @jax.jit
    def step(params, opt_state, batch):
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
      updates, opt_state = opt.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss
    return step

  return opt, make(siglip_term), make(sotalign_loss)


def bench_step(batches: list[int], opt_name: str) -> list[dict]:
  key = jax.random.PRNGKey(0)
  ks = jax.random.split(key, 8)
  params = {"w_img": jax.random.normal(ks[0], (D_IMG, D_OUT)) / np.sqrt(D_IMG),
            "w_txt": jax.random.normal(ks[1], (D_TXT, D_OUT)) / np.sqrt(D_TXT),
            "t_log": jnp.asarray(losses.SIGLIP_INIT_T_LOG), "bias": jnp.asarray(losses.SIGLIP_INIT_BIAS)}
  opt, siglip_step, sotalign_step = make_steps(opt_name)
  opt_state = opt.init(params)
  teacher_img = jax.random.normal(ks[2], (D_IMG, D_OUT)) / np.sqrt(D_IMG)
  teacher_txt = jax.random.normal(ks[3], (D_TXT, D_OUT)) / np.sqrt(D_TXT)
  rows = []
  for b in batches:
    latent = jax.random.normal(ks[4], (2 * b, 64))
    img = latent @ jax.random.normal(ks[5], (64, D_IMG)) + 0.5 * jax.random.normal(ks[6], (2 * b, D_IMG))
    txt = latent @ jax.random.normal(ks[7], (64, D_TXT)) + 0.5 * jax.random.normal(ks[6], (2 * b, D_TXT))
    batch = {"img": img[:b], "txt": txt[:b], "img_u": img[b:], "txt_u": txt[b:][::-1]}
    batch["k_teacher"] = _cos(batch["img_u"] @ teacher_img, batch["txt_u"] @ teacher_txt)
    t_sig = timeit(lambda: siglip_step(params, opt_state, batch))
    t_sot = timeit(lambda: sotalign_step(params, opt_state, batch))
    m_sig = compiled_temp_mb(siglip_step, params, opt_state, batch)
    m_sot = compiled_temp_mb(sotalign_step, params, opt_state, batch)
    rows.append({"batch": b, "siglip step (s)": t_sig, "sotalign step (s)": t_sot, "time ratio": t_sot / t_sig,
                 "siglip temp (MiB)": m_sig, "sotalign temp (MiB)": m_sot})
    print(f"  batch {b}: done", flush=True)
  return rows


# --------------------------------------------------------------------------------------------- 2. KLOT gradient


def plain_sinkhorn(k, *, epsilon, num_iters):
  """Log-plan after a plain log-domain Sinkhorn ``fori_loop`` (the ott-jax-like baseline; differentiable)."""
  n, m = k.shape
  ks = k / epsilon

  def body(_, fg):
    f, g = fg
    g = -jnp.log(m) - jax.nn.logsumexp(ks + f[:, None], axis=0)
    f = -jnp.log(n) - jax.nn.logsumexp(ks + g[None, :], axis=1)
    return f, g

  f, g = jax.lax.fori_loop(0, num_iters, body, (jnp.zeros(n), jnp.zeros(m)))
  return ks + f[:, None] + g[None, :]


def unrolled_klot(k_student, k_teacher, *, eps_student, eps_teacher, num_iters):
  """KLOT with plain autodiff through a log-domain Sinkhorn ``fori_loop`` (the baseline of Theorem 5.1)."""
  lp_t = jax.lax.stop_gradient(plain_sinkhorn(k_teacher, epsilon=eps_teacher, num_iters=num_iters))
  return jnp.sum(jnp.exp(lp_t) * (lp_t - plain_sinkhorn(k_student, epsilon=eps_student, num_iters=num_iters)))


def bench_klot_grad(n: int, iters: int) -> list[dict]:
  k = _cos(jax.random.normal(jax.random.PRNGKey(1), (n, 16)), jax.random.normal(jax.random.PRNGKey(2), (n, 16)))
  k_t = _cos(jax.random.normal(jax.random.PRNGKey(3), (n, 16)), jax.random.normal(jax.random.PRNGKey(2), (n, 16)))
  kw = dict(eps_student=0.05, eps_teacher=0.005, num_iters=iters)
  custom = jax.jit(jax.grad(lambda x: ot.klot(x, k_t, **kw)))
  unrolled = jax.jit(jax.grad(lambda x: unrolled_klot(x, k_t, **kw)))
  rows = []
  for name, fn in (("custom VJP (Thm 5.1)", custom), ("autodiff through Sinkhorn", unrolled)):
    rows.append({"gradient": name, "n": n, "iters": iters, "time (s)": timeit(lambda: fn(k), repeat=2),
                 "temp (MiB)": compiled_temp_mb(fn, k)})
  diff = float(jnp.abs(custom(k) - unrolled(k)).max() / jnp.abs(unrolled(k)).max())
  rows[0]["max rel diff"] = diff
  return rows


# --------------------------------------------------------------------------------------------- 3. Sinkhorn


def bench_sinkhorn(n: int, iters: int, pot_iters: int) -> list[dict]:
  import ot as pot
  from ott.geometry import geometry
  from ott.solvers import linear

  x = jax.random.normal(jax.random.PRNGKey(4), (n, 16))
  y = jax.random.normal(jax.random.PRNGKey(5), (n, 16))
  k = _cos(x, y)
  rows = []
  for eps in (0.05, 0.005):
    ours = jax.jit(lambda k: ot.sinkhorn(k, epsilon=eps, num_iters=iters).log_plan)
    ott_fn = jax.jit(lambda k: linear.solve(geometry.Geometry(cost_matrix=-k, epsilon=eps), min_iterations=iters,
                                            max_iterations=iters, inner_iterations=iters).matrix)
    plain = jax.jit(lambda k: plain_sinkhorn(k, epsilon=eps, num_iters=iters))
    t_ours, t_ott, t_plain = (timeit(lambda: fn(k), repeat=2) for fn in (ours, ott_fn, plain))
    err = float(jnp.abs(jnp.exp(ours(k)) - ott_fn(k)).max() / ott_fn(k).max())
    row = {"eps": eps, "n": n, "iters": iters, "ours (s)": t_ours, "ott-jax (s)": t_ott,
           "plain fori_loop (s)": t_plain, "ott / ours": t_ott / t_ours, "plain / ours": t_plain / t_ours,
           "max |P-P_ott| / max P": err}
    if eps == 0.05:
      kn = np.asarray(k, np.float64)
      a = np.full(n, 1.0 / n)
      t0 = time.perf_counter()
      pot.sinkhorn(a, a, -kn, eps, method="sinkhorn_log", numItermax=pot_iters, stopThr=0.0)
      t_pot = (time.perf_counter() - t0) * iters / pot_iters
      row["POT (s, scaled)"] = t_pot
      row["POT / ours"] = t_pot / t_ours
    rows.append(row)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--small", action="store_true", help="quick run: batches 256/1024, Sinkhorn at 1024")
  parser.add_argument("--opt", choices=["adamw", "lion"], default="adamw")
  args = parser.parse_args()
  batches = [256, 1024] if args.small else [256, 1024, 4096]
  n_sink, pot_iters = (1024, 20) if args.small else (4096, 10)
  n_grad = 512 if args.small else 1024
  print(f"jax {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPUs, optimizer {args.opt}", flush=True)

  print("\n## 1. Train step: SigLIP + KLOT vs SigLIP only (linear heads, jitted, optax update)", flush=True)
  rows = bench_step(batches, args.opt)
  print_table(rows, list(rows[0]))
  r1024 = [r for r in rows if r["batch"] == 1024][0]
  print(f"goal: step <= 3x SigLIP at batch 1024 -> {r1024['time ratio']:.2f}x "
        f"{'PASS' if r1024['time ratio'] <= 3 else 'FAIL'}", flush=True)

  print("\n## 2. KLOT gradient: closed form (custom VJP) vs autodiff through 100 Sinkhorn iterations", flush=True)
  rows = bench_klot_grad(n_grad, 100)
  print_table(rows, ["gradient", "n", "iters", "time (s)", "temp (MiB)", "max rel diff"])
  mem_ratio = rows[1]["temp (MiB)"] / rows[0]["temp (MiB)"]
  print(f"goal: >= 5x less memory -> {mem_ratio:.1f}x {'PASS' if mem_ratio >= 5 else 'FAIL'}; "
        f"time ratio {rows[1]['time (s)'] / rows[0]['time (s)']:.1f}x", flush=True)

  print(f"\n## 3. Sinkhorn {n_sink}x{n_sink}, 100 iterations (float32; POT in float64 on {pot_iters} iterations, "
        "time scaled linearly to 100)", flush=True)
  rows = bench_sinkhorn(n_sink, 100, pot_iters)
  print_table(rows, list(rows[0]))
  r = rows[0]
  print(f"goal: >= 30x POT -> {r['POT / ours']:.0f}x {'PASS' if r['POT / ours'] >= 30 else 'FAIL'}; "
        f"no slower than ott-jax -> {min(x['ott / ours'] for x in rows):.2f}x "
        f"{'PASS' if min(x['ott / ours'] for x in rows) >= 1 else 'FAIL'}", flush=True)
  print(f"\npeak RSS {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
  main()
