r"""Optimizers and the in-memory training loop shared by every trained method.

:func:`make_optimizer` builds ``optax.<name>`` with a linear warm-up and cosine decay. :func:`step_with_rng` is the
one place where a step's randomness is derived: step ``i`` (1-based) gets ``fold_in(key, i)``, read from
``state.step`` inside the jitted step, so a resumed run draws what an uninterrupted one draws.
:func:`plain_loop` runs a step function for ``steps`` updates in memory (no files); the experiments' checkpointed
loop, :func:`sotalign_jax.runtime.train.train_loop`, has the same signature after its bookkeeping arguments are
bound, and uses :func:`step_with_rng` too, so a method fitted with either gives the same parameters.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import optax

__all__ = ["make_optimizer", "step_with_rng", "plain_loop", "StepFn", "Loop"]

StepFn = Callable[[Any, Any, jax.Array], tuple[Any, dict]]
Loop = Callable[..., Any]  # loop(state, step_fn, data, *, key, steps, name) -> state


def make_optimizer(name: str = "adamw", *, lr: float, weight_decay: float, warmup_steps: int,
                   steps: int) -> optax.GradientTransformation:
  """``optax.<name>`` (any optimizer taking ``learning_rate`` and ``weight_decay``) with a linear warm-up to ``lr``
  over ``warmup_steps`` (at most ``steps - 1``), then cosine decay to 0 at ``steps``."""
  if not hasattr(optax, name):
    raise ValueError(f"optax has no optimizer {name!r} (try adamw or lion)")
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup_steps, steps - 1) or 1, steps)
  return getattr(optax, name)(learning_rate=schedule, weight_decay=weight_decay)


def step_with_rng(step_fn: StepFn, state: Any, data: Any, key: jax.Array) -> tuple[Any, dict]:
  """``step_fn(state, data, fold_in(key, state.step + 1))``: the randomness of the step being taken (1-based)."""
  return step_fn(state, data, jax.random.fold_in(key, state.step + 1))


def plain_loop(state: Any, step_fn: StepFn, data: Any, *, key: jax.Array, steps: int, name: str = "") -> Any:
  """Runs ``steps`` jitted updates of ``step_fn`` from ``state`` (state donated); no logging, no checkpoints.

  ``name`` (which fit of several this is) is unused here; a checkpointed loop keeps one run directory per name.

  Raises:
    FloatingPointError: if the loss is not finite after the last step.
  """
  step = jax.jit(functools.partial(step_with_rng, step_fn), donate_argnums=0)
  metrics = None
  for _ in range(int(state.step), steps):
    state, metrics = step(state, data, key)
  if metrics is not None and not bool(jax.numpy.isfinite(metrics["loss"])):
    raise FloatingPointError(f"the training loss is {float(metrics['loss'])} after {steps} steps: lower the "
                             "learning rate or check the inputs")
  return state
