r"""The training loop every trained method of the experiments runs: resume, step, log, checkpoint.

:func:`train_loop` is big_vision's loop in one function: the state is replicated over a 1-D ``("data",)`` mesh
(:func:`data_mesh`), the step is jitted with the state donated, step ``i`` draws its randomness from
``fold_in(key, i)`` (inside the jitted step, from ``state.step``), one :func:`~sotalign_jax.runtime.workdir.itstime`
check gates logging (with :func:`~sotalign_jax.runtime.workdir.check_finite`) and another the Orbax checkpoints;
progress is a tqdm bar on a terminal and a line every 10 % or 30 s otherwise
(:func:`~sotalign_jax.runtime.workdir.progress`).
Resume order: the run directory's latest readable checkpoint > scratch; the step is read back from the state, so a
resumed run takes the same steps with the same randomness as an uninterrupted one. The experiments key the run
directory by their settings (:func:`~sotalign_jax.runtime.workdir.keyed_dir`), so only a run with the same settings
ever resumes it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from sotalign_jax.nn.optim import Loop, StepFn, make_optimizer, step_with_rng
from sotalign_jax.runtime import workdir as wd

__all__ = ["data_mesh", "make_optimizer", "train_loop", "checkpointed_loop"]


def data_mesh() -> Mesh:
  """A 1-D ``("data",)`` mesh over every device (of every host)."""
  return Mesh(np.array(jax.devices()), ("data",))


def train_loop(state: Any, step_fn: StepFn, data: Any, *, key: jax.Array, steps: int, run_dir: str,
               writer: wd.MetricWriter, name: str, log_every: int, ckpt_every: int, mesh: Mesh) -> Any:
  """Trains ``state`` to ``steps`` updates, resuming from ``run_dir/ckpt``; returns the final (replicated) state.

  Args:
    state: a ``flax.training.train_state.TrainState`` (or subclass) at step 0, the restore target.
    step_fn: ``step_fn(state, data, rng) -> (state, metrics)``, not jitted (it is jitted here, the state
      donated); ``metrics`` holds at least ``loss`` and ``grad_norm`` (checked finite at every logged step).
    data: the arrays ``step_fn`` samples from (e.g. pools row-sharded by ``distributed.shard_rows``).
    key: the run's key; step ``i`` (1-based) gets ``fold_in(key, i)``.
    steps: total number of updates.
    run_dir: the method's run directory; checkpoints go to ``run_dir/ckpt`` (last 3 kept).
    writer: where logged metrics go, as ``train/<name>/<metric>``.
    name: the method, for the progress bar, the resume message and the metric prefix.
    log_every: log every this many steps (and the first and last); ``ckpt_every``: checkpoint likewise.
    mesh: the state is replicated over it.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager = wd.checkpoint_manager(os.path.join(run_dir, "ckpt"), max_to_keep=3)
  state, start = wd.restore_latest(manager, state)
  if start:
    print(f"[{name}] resuming from step {start}")
  step = jax.jit(functools.partial(step_with_rng, step_fn), donate_argnums=0)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  for i in wd.progress(range(start + 1, steps + 1), desc=name, initial=start, total=steps):
    state, m = step(state, data, key)
    if wd.itstime(i, log_every, steps, first=True):
      wd.check_finite(i, loss=m["loss"], grad_norm=m["grad_norm"])
      writer.write(i, m, prefix=f"train/{name}/")
    if wd.itstime(i, ckpt_every, steps):
      manager.save(i, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  return state


def checkpointed_loop(run_dir: str, *, writer: wd.MetricWriter, name: str, log_every: int, ckpt_every: int,
                      mesh: Mesh) -> Loop:
  """:func:`train_loop` with its bookkeeping bound, as the ``loop=`` of a trained aligner
  (:func:`sotalign_jax.nn.optim.plain_loop`'s signature): ``loop(state, step_fn, data, *, key, steps, name="")``.
  A fit of several (``name``, e.g. one α of a grid) gets ``run_dir/name`` and the metric prefix ``name/...``."""
  def loop(state, step_fn, data, *, key, steps, name: str = ""):
    return train_loop(state, step_fn, data, key=key, steps=steps, run_dir=os.path.join(run_dir, name) if name
                      else run_dir, writer=writer, name=f"{prefix}/{name}" if name else prefix,
                      log_every=log_every, ckpt_every=ckpt_every, mesh=mesh)
  prefix = name
  return loop
