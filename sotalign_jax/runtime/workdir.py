"""What every experiment does with its workdir: metrics, checkpoints, results, and start-up checks.

Kept apart from the math modules, which never touch files; atomic writes come from :mod:`sotalign_jax.runtime.io`.

* :func:`itstime` gates logging, evaluation and checkpoints in one place.
* :class:`MetricWriter` appends ``metrics.jsonl`` and TensorBoard scalars (``train/…``, ``eval/…``).
* :func:`checkpoint_manager` / :func:`restore_latest` — Orbax, keep-last-k; a corrupted latest step is
  reported and the previous good step is used (never a silent restart from zero).
* :func:`write_results` — atomic ``results.json`` (``{"methods": {method: {metric: value}}}``) plus the same
  as a markdown table.
* :func:`check_finite` — a NaN/Inf loss or input raises with the step and the quantity's name.

On several hosts every process runs the same program; only process 0 writes files (:func:`is_primary`), Orbax
checkpoints are written by all processes together, and :func:`sync` is the barrier before others read what
process 0 wrote. The workdir must be on a filesystem all hosts share (as Orbax requires).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np

from sotalign_jax.runtime import io as sio

__all__ = ["start_experiment", "save_config", "parse_list", "check_ints", "check_positive", "check_nonnegative", "is_primary", "sync", "itstime", "MetricWriter", "checkpoint_manager", "restore_latest", "write_results", "markdown_table",
           "check_finite", "atomic_write_text", "NonFiniteError"]

log = logging.getLogger(__name__)


def start_experiment(argv, config, workdir, *, config_file: str):
  """The launch checks every experiment's ``main`` does first; starts ``jax.distributed`` on several hosts.

  Raises ``absl.app.UsageError`` on stray arguments or a missing ``--config`` / ``--workdir``.
  """
  from absl import app
  from sotalign_jax.runtime import distributed
  distributed.maybe_initialize()  # a no-op on one host; see README, Multi-host
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if config is None or workdir is None:
    raise app.UsageError(f"both --config {config_file}[:variant] and --workdir DIR are required")


def save_config(workdir: str, cfg):
  """Writes the run's resolved config to ``workdir/config.json`` (process 0; atomic)."""
  if is_primary():
    os.makedirs(workdir, exist_ok=True)
    sio.write_text(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2))


def _get(cfg, key: str):
  return functools.reduce(getattr, key.split("."), cfg)


def parse_list(cfg, key: str, choices: Sequence[str], *, what: str = "method") -> list[str]:
  """The comma-separated ``config.<key>`` as a list; raises naming the key if it is empty or has unknown entries."""
  items = [m.strip() for m in _get(cfg, key).split(",") if m.strip()]
  bad = [m for m in items if m not in choices]
  if bad or not items:
    raise ValueError(f"config.{key}: unknown {what}(s) {bad}; choose from {list(choices)}")
  return items


def check_ints(cfg, keys: Iterable[str], *, minimum: int = 1):
  """Raises naming the first ``config.<key>`` (dotted) that is not an integer ``>= minimum``."""
  for key in keys:
    v = _get(cfg, key)
    if not isinstance(v, int) or v < minimum:
      need = {1: "a positive integer", 0: "an integer >= 0"}.get(minimum, f"an integer >= {minimum}")
      raise ValueError(f"config.{key} must be {need}, got {v!r}")


def check_positive(cfg, keys: Iterable[str]):
  """Raises naming the first ``config.<key>`` (dotted) that is not ``> 0``."""
  for key in keys:
    if not _get(cfg, key) > 0:
      raise ValueError(f"config.{key} must be > 0, got {_get(cfg, key)!r}")


def check_nonnegative(cfg, keys: Iterable[str]):
  """Raises naming the first ``config.<key>`` (dotted) that is not ``>= 0``."""
  for key in keys:
    if not _get(cfg, key) >= 0:
      raise ValueError(f"config.{key} must be >= 0, got {_get(cfg, key)!r}")


def is_primary() -> bool:
  """True in the process that writes results, metrics and plots (process 0; the only one on a single host)."""
  return jax.process_index() == 0


def sync(name: str):
  """Waits until every process reaches this point (a no-op on one host); ``name`` must be the same on all."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def itstime(step: int, every: int, total: int, *, first: bool = False) -> bool:
  """True on every ``every``-th step and on the last one (and on step 1 if ``first``)."""
  if every <= 0:
    return step == total
  return step % every == 0 or step == total or (first and step == 1)


class NonFiniteError(FloatingPointError):
  """A loss, gradient or input became NaN/Inf."""


def check_finite(step: int, **quantities):
  """Raises :class:`NonFiniteError` naming the step and the first non-finite quantity."""
  for name, value in quantities.items():
    arr = np.asarray(jax.device_get(value))
    if not np.isfinite(arr).all():
      raise NonFiniteError(
          f"step {step}: {name} is not finite ({arr if arr.size == 1 else 'contains NaN/Inf'}); the last "
          f"checkpoint was left intact — lower the learning rate or check the inputs, then rerun to resume")


class MetricWriter:
  """Appends scalar metrics to ``workdir/metrics.jsonl`` and TensorBoard (``workdir/tb``)."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self._jsonl = self._tb = None
    if not is_primary():
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = ""):
    scalars = {f"{prefix}{k}": float(np.asarray(jax.device_get(v))) for k, v in metrics.items()}
    if self._jsonl is not None:
      self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
      self._jsonl.flush()
      if self._tb is not None:
        for k, v in scalars.items():
          if math.isfinite(v):  # NaN marks "not evaluated" (e.g. a missing optional eval set)
            self._tb.add_scalar(k, v, step)
    return scalars

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


# ------------------------------------------------------------------------------------------------------------
# Checkpoints.
# ------------------------------------------------------------------------------------------------------------
def checkpoint_manager(directory: str, *, max_to_keep: int = 3):
  """An Orbax ``CheckpointManager`` keeping the last ``max_to_keep`` steps under ``directory``."""
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def restore_latest(manager, target):
  """Restores the newest readable step into the structure of ``target``; returns ``(state, step)``.

  Steps are tried newest first. A step that fails to restore (truncated or corrupted files) is reported with
  a warning, moved aside to ``<dir>/corrupt-<step>`` and the previous one is tried. Returns ``(target, 0)``
  when there is no checkpoint at all.
  """
  import orbax.checkpoint as ocp
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(target))
      return state, int(step)
    except Exception as e:  # noqa: BLE001 — any failure to read a step means that step is unusable
      bad = os.path.join(str(manager.directory), str(step))
      aside = os.path.join(str(manager.directory), f"corrupt-{step}")
      log.warning("checkpoint step %d is unreadable (%s: %s); moving it to %s and trying an older one",
                  step, type(e).__name__, str(e).splitlines()[0][:200], aside)
      print(f"warning: checkpoint step {step} is unreadable ({type(e).__name__}); falling back to an older step")
      if os.path.exists(bad):
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(bad, aside)
      manager.reload()
  if steps:
    print("warning: no readable checkpoint left; starting from scratch")
  return target, 0


# ------------------------------------------------------------------------------------------------------------
# Results.
# ------------------------------------------------------------------------------------------------------------
def save_figure(fig, path: str, *, dpi: int = 120):
  """Saves a matplotlib figure as PNG atomically (never a half-written image; process 0 only) and closes it."""
  import matplotlib.pyplot as plt
  if is_primary():
    with sio.atomic_open(path, "wb") as fh:
      fig.savefig(fh, format="png", dpi=dpi)
  plt.close(fig)


def markdown_table(methods: Mapping[str, Mapping[str, float]]) -> str:
  """``{method: {metric: value}}`` as a markdown table (methods as rows, metrics in first-seen order)."""
  metrics: list[str] = []
  for m in methods.values():
    metrics += [k for k in m if k not in metrics]
  fmt = lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else (
      f"{v:.4f}" if isinstance(v, float) else str(v))
  lines = ["| method | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
  for name, m in methods.items():
    lines.append(f"| {name} | " + " | ".join(fmt(m.get(k)) for k in metrics) + " |")
  return "\n".join(lines)


def write_results(workdir: str, methods: Mapping[str, Mapping[str, float]], **extra) -> str:
  """Atomically writes ``workdir/results.json`` and ``results.md`` (process 0 only); returns the markdown table."""
  def clean(v):  # NaN ("not evaluated") becomes null, so the file is strict JSON
    if isinstance(v, Mapping):
      return {k: clean(x) for k, x in v.items()}
    return None if isinstance(v, float) and math.isnan(v) else v
  table = markdown_table(methods)
  if is_primary():
    sio.write_text(os.path.join(workdir, "results.json"), json.dumps(clean({"methods": methods, **extra}), indent=2))
    sio.write_text(os.path.join(workdir, "results.md"), table + "\n")
  return table
