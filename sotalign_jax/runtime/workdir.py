"""What every experiment does with its workdir: metrics, checkpoints, results (configs: :mod:`.config`).

Kept apart from the math modules, which never touch files; atomic writes come from :mod:`sotalign_jax.runtime.io`.

* :func:`itstime` gates logging, evaluation and checkpoints in one place.
* :class:`MetricWriter` appends ``metrics.jsonl`` and TensorBoard scalars (``train/…``, ``eval/…``).
* :func:`checkpoint_manager` / :func:`restore_latest` — Orbax, keep-last-k; a corrupted latest step is
  reported and the previous good step is used (never a silent restart from zero); a checkpoint of a different
  state (changed head, optimizer or sizes) raises :class:`CheckpointMismatchError` saying what differs.
* :func:`write_results` — atomic ``results.json`` (``{"methods": {method: {metric: value}}}`` plus
  :func:`provenance`: git commit, package versions, devices, host, seconds) and the same as a markdown table.
* :func:`check_finite` — a NaN/Inf loss or input raises with the step and the quantity's name.
* :func:`progress` — tqdm on a terminal, else a plain line every 10 % or 30 s (logs of batch jobs see progress).

Keyed runs (what makes a rerun with changed settings compute new numbers instead of reusing old ones):

* :func:`settings_key` — the sha256 of a settings dict (canonical JSON), the key of a cell or of a run directory.
* :func:`cache_fingerprint` / :func:`files_fingerprint` — what stands for the data in such a dict: an embedding
  cache's ``manifest.json`` and a content hash of its files, or the sizes and content hashes of embedding files
  (never their paths, so a moved cache keeps its cells).
* :func:`keyed_dir` — ``parent/<name>__<key12>``, the run (checkpoint) directory of one setting: a run with other
  settings never resumes it, and says so in one line when it starts fresh beside an older one.

On several hosts every process runs the same program; only process 0 writes files (:func:`is_primary`), Orbax
checkpoints are written by all processes together, and :func:`sync` is the barrier before others read what
process 0 wrote. The workdir must be on a filesystem all hosts share (as Orbax requires).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
import types
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from jax.typing import ArrayLike

from sotalign_jax import _extras
from sotalign_jax.runtime import io as sio

if TYPE_CHECKING:
  import orbax.checkpoint

__all__ = ["save_config", "is_primary", "sync", "itstime", "MetricWriter", "checkpoint_manager", "restore_latest",
           "CheckpointMismatchError", "write_results", "provenance", "git_state", "markdown_table",
           "check_finite", "NonFiniteError", "pyplot", "progress", "settings_key", "canonical", "file_fingerprint",
           "cache_fingerprint", "files_fingerprint", "keyed_dir"]

log = logging.getLogger(__name__)


def save_config(workdir: str, cfg: ml_collections.ConfigDict) -> None:
  """Writes the run's resolved config to ``workdir/config.json`` (process 0; atomic)."""
  if is_primary():
    os.makedirs(workdir, exist_ok=True)
    sio.write_text(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2))


def is_primary() -> bool:
  """True in the process that writes results, metrics and plots (process 0; the only one on a single host)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches this point (a no-op on one host); ``name`` must be the same on all."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def itstime(step: int, every: int, total: int, *, first: bool = False) -> bool:
  """True on every ``every``-th step and on the last one (and on step 1 if ``first``)."""
  if every <= 0:
    return step == total
  return step % every == 0 or step == total or (first and step == 1)


def progress(iterable: Iterable, *, desc: str, total: int, initial: int = 0, every_fraction: float = 0.1,
             every_seconds: float = 30.0, min_seconds: float = 1.0) -> Iterator:
  """``iterable`` with progress: a tqdm bar when stdout and stderr are terminals, else a line on stdout such as
  ``[sotalign] step 120/600 (20%), 35.1/s, ~14 s left`` whenever another ``every_fraction`` of ``total`` is done or
  ``every_seconds`` have passed — lines closer than ``min_seconds`` to the previous one are skipped, except the
  last — so a batch job's log shows that a long fit is alive. Only process 0 reports.

  Args:
    iterable: yields the remaining ``total - initial`` items.
    desc: the name in the bar or at the start of each line.
    total: the number of items when complete; ``initial``: those already done (a resumed run).
  """
  if not is_primary():
    yield from iterable
    return
  if sys.stdout.isatty() and sys.stderr.isatty():
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    yield from tqdm(iterable, desc=desc, total=total, initial=initial, leave=False, dynamic_ncols=True)
    return
  start = last = time.monotonic()
  step = mark = initial
  every = max(1, math.ceil(every_fraction * total))
  for item in iterable:
    yield item
    step += 1
    now = time.monotonic()
    if (step == total or step >= mark + every or now - last >= every_seconds) and (
        step == total or now - last >= min_seconds):
      rate = (step - initial) / max(now - start, 1e-9)
      left = f", ~{(total - step) / rate:.0f} s left" if step < total and rate > 0 else ""
      print(f"[{desc}] {step}/{total} ({100 * step / max(total, 1):.0f}%), {rate:.3g}/s{left}", flush=True)
      last, mark = now, step


class NonFiniteError(FloatingPointError):
  """A loss, gradient or input became NaN/Inf."""


def check_finite(step: int, **quantities: ArrayLike) -> None:
  """Raises :class:`NonFiniteError` naming the step and the first non-finite quantity."""
  for name, value in quantities.items():
    arr = np.asarray(jax.device_get(value))
    if not np.isfinite(arr).all():
      raise NonFiniteError(
          f"step {step}: {name} is not finite ({arr if arr.size == 1 else 'contains NaN/Inf'}); the last "
          f"checkpoint was left intact — lower the learning rate or check the inputs, then rerun to resume")


class MetricWriter:
  """Appends scalar metrics to ``workdir/metrics.jsonl`` and TensorBoard (``workdir/tb``)."""

  def __init__(self, workdir: str, *, tensorboard: bool | None = None):
    """``tensorboard``: write TensorBoard events too (``None``: when the ``tb`` extra is installed)."""
    self._jsonl = self._tb = None
    if not is_primary():
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if tensorboard is None:
      tensorboard = _extras.available("tensorboardX")
      if not tensorboard:
        log.info("TensorBoard events off (metrics.jsonl only): %s", _extras.install_hint("tensorboardX"))
    if tensorboard:
      summary = _extras.require("tensorboardX", what="MetricWriter(tensorboard=True)").SummaryWriter
      self._tb = summary(os.path.join(workdir, "tb"))

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
def checkpoint_manager(directory: str, *, max_to_keep: int = 3) -> orbax.checkpoint.CheckpointManager:
  """An Orbax ``CheckpointManager`` keeping the last ``max_to_keep`` steps under ``directory``."""
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class CheckpointMismatchError(ValueError):
  """A checkpoint holds a different state (other head, optimizer or sizes) than the run resuming from it."""


def _saved_leaves(manager, step: int) -> dict[str, tuple]:
  """``{dotted path: (shape, dtype)}`` of the arrays saved at ``step``, from its metadata (raises if unreadable)."""
  import orbax.checkpoint as ocp
  from etils import epath  # pylint: disable=g-import-not-at-top  (Orbax's path type)
  step_dir = os.path.join(str(manager.directory), str(step))
  item_dir = os.path.join(step_dir, "default")
  # The handler reads the item's tree metadata only; a Checkpointer would also look for a step-level
  # _CHECKPOINT_METADATA inside the item directory and log "Metadata file does not exist" for an intact checkpoint.
  meta = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir if os.path.isdir(item_dir) else step_dir))
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, Mapping) or not tree:
    raise ValueError(f"no tree metadata in {step_dir}")
  return {k: (tuple(getattr(v, "shape", ()) or ()), _dtype_name(v)) for k, v in ocp.tree.to_flat_dict(
      tree, sep=".").items() if v is not None}


def _target_leaves(target) -> dict[str, tuple]:
  """The same ``{dotted path: (shape, dtype)}`` for the state a run wants to restore into."""
  import orbax.checkpoint as ocp
  flat = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(target, keep_empty_nodes=True), sep=".")
  return {k: (tuple(np.shape(v)), _dtype_name(v)) for k, v in flat.items() if v is not None}


def _dtype_name(v) -> str | None:
  """The dtype of an array leaf (or its metadata); None for Python scalars, whose dtype the saver picks."""
  if isinstance(v, (bool, int, float, complex)) or getattr(v, "dtype", None) is None or not hasattr(v, "shape"):
    return None
  return np.dtype(v.dtype).name


def _tree_differences(saved: Mapping[str, tuple], want: Mapping[str, tuple], *, limit: int = 8) -> list[str]:
  """Human-readable differences between a checkpoint's leaves and the target's (empty if they agree)."""
  fmt = lambda sd: f"shape {sd[0]}" + (f" {sd[1]}" if sd[1] else "")
  out = [f"{k}: only in the checkpoint" for k in saved if k not in want]
  out += [f"{k}: only in this run" for k in want if k not in saved]
  for k in saved:
    if k in want:
      (s_shape, s_dtype), (w_shape, w_dtype) = saved[k], want[k]
      if s_shape != w_shape or (s_dtype and w_dtype and s_dtype != w_dtype):
        out.append(f"{k}: checkpoint {fmt(saved[k])}, this run {fmt(want[k])}")
  return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


def _mismatch_error(manager, step: int, differences: Sequence[str]) -> CheckpointMismatchError:
  directory = str(manager.directory)
  return CheckpointMismatchError(
      f"checkpoint step {step} in {directory} does not fit this run's state (the head, optimizer or sizes changed "
      "since it was written):\n  " + "\n  ".join(differences) + "\nResuming would mix two different runs, and "
      f"restarting would silently discard it: use a new --workdir for the changed config, or delete {directory} "
      "to start this one from scratch.")


def restore_latest(manager: orbax.checkpoint.CheckpointManager, target: Any) -> tuple[Any, int]:
  """Restores the newest readable step into the structure of ``target``; returns ``(state, step)``.

  Steps are tried newest first. A step that fails to restore (truncated or corrupted files) is reported with
  a warning, moved aside to ``<dir>/corrupt-<step>`` and the previous one is tried. Returns ``(target, 0)``
  when there is no checkpoint at all.

  Raises:
    CheckpointMismatchError: a readable step holds a different tree than ``target`` (other paths, shapes or
      dtypes: the head, optimizer or sizes of the config changed). The message lists the differences and says
      what to do (a new ``--workdir``, or deleting the checkpoint directory); nothing is moved or deleted.
  """
  import orbax.checkpoint as ocp
  want = _target_leaves(target)
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      saved = _saved_leaves(manager, step)
    except Exception as e:  # noqa: BLE001 — metadata that cannot be read means the step is unusable
      error = e
    else:
      differences = _tree_differences(saved, want)
      if differences:
        raise _mismatch_error(manager, step, differences)
      try:
        state = manager.restore(step, args=ocp.args.StandardRestore(target))
        return state, int(step)
      except Exception as e:  # noqa: BLE001 — the metadata agrees, so a failure to read means damaged files
        if "do not match" in str(e) or "not compatible with the stored shape" in str(e):  # Orbax's own check
          raise _mismatch_error(manager, step, [str(e).strip().splitlines()[0][:300]]) from e
        error = e
    bad = os.path.join(str(manager.directory), str(step))
    aside = os.path.join(str(manager.directory), f"corrupt-{step}")
    log.warning("checkpoint step %d is unreadable (%s: %s); moving it to %s and trying an older one",
                step, type(error).__name__, (str(error).splitlines() or [""])[0][:200], aside)
    print(f"warning: checkpoint step {step} is unreadable ({type(error).__name__}); falling back to an older step")
    if os.path.exists(bad):
      shutil.rmtree(aside, ignore_errors=True)
      os.replace(bad, aside)
    manager.reload()
  if steps:
    print("warning: no readable checkpoint left; starting from scratch")
  return target, 0


# ------------------------------------------------------------------------------------------------------------
# Keys: what determines a run's numbers, hashed.
# ------------------------------------------------------------------------------------------------------------
def canonical(v: Any, *, nonfinite: Callable[[float], Any] = repr, other: Callable[[Any], Any] = repr) -> Any:
  """``v`` as plain JSON values (tuples as lists, NumPy scalars and arrays as numbers and lists, mappings with str
  keys), the form that :func:`settings_key` hashes and that ``results.json`` records; a NaN/Inf float as
  ``nonfinite(v)`` and anything else as ``other(v)`` (both ``repr`` here; :func:`~sotalign_jax.runtime.sweep.to_json`
  passes ``None`` for NaN and leaves other objects to the JSON writer)."""
  if isinstance(v, Mapping):
    return {str(k): canonical(x, nonfinite=nonfinite, other=other) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [canonical(x, nonfinite=nonfinite, other=other) for x in v]
  if isinstance(v, np.ndarray):
    return canonical(v.tolist(), nonfinite=nonfinite, other=other)
  if isinstance(v, np.generic):
    v = v.item()
  if v is None or isinstance(v, (bool, int, str)):
    return v
  if isinstance(v, float):
    return v if math.isfinite(v) else nonfinite(v)
  return other(v)


def settings_key(settings: Mapping[str, Any]) -> str:
  """The sha256 (hex) of ``settings`` as canonical JSON (sorted keys): equal settings, equal key; any changed value,
  another key. Paths use its first 12 characters."""
  text = json.dumps(canonical(settings), sort_keys=True, separators=(",", ":"), allow_nan=False)
  return hashlib.sha256(text.encode()).hexdigest()


FULL_HASH_BYTES = 1 << 30  # files up to 1 GiB are hashed whole; larger ones by a sample (see file_fingerprint)
_BLOCK = 1 << 20


@functools.lru_cache(maxsize=256)
def _file_fingerprint(path: str, size: int, mtime_ns: int) -> dict:
  del mtime_ns  # part of the memo key only: a rewritten file is read again
  h = hashlib.sha256()
  with open(path, "rb") as fh:
    if size <= FULL_HASH_BYTES:
      for block in iter(lambda: fh.read(_BLOCK), b""):
        h.update(block)
      return {"bytes": size, "sha256": h.hexdigest()}
    spans = [(0, 64 * _BLOCK), (size - 64 * _BLOCK, 64 * _BLOCK)] + [(i * size // 64, _BLOCK) for i in range(1, 64)]
    for offset, length in spans:
      fh.seek(offset)
      h.update(fh.read(length))
  return {"bytes": size, "sha256_sampled": h.hexdigest()}


def file_fingerprint(path: str) -> dict:
  """``{"bytes", "sha256"}`` of a file: its size and a hash of its content (whole up to ``FULL_HASH_BYTES``;
  above, ``sha256_sampled`` of its first and last 64 MiB and 63 evenly spaced 1 MiB blocks). Memoised per process
  by path, size and modification time."""
  st = os.stat(path)
  return _file_fingerprint(os.path.abspath(path), st.st_size, st.st_mtime_ns)


def cache_fingerprint(path: str) -> dict:
  """What identifies an embedding cache's content: its ``manifest.json`` and :func:`file_fingerprint` of every
  other file in it (embeddings, index), not its path."""
  with open(os.path.join(path, "manifest.json"), encoding="utf-8") as fh:
    manifest = json.load(fh)
  names = sorted(n for n in os.listdir(path) if n != "manifest.json" and os.path.isfile(os.path.join(path, n)))
  return {"manifest": manifest, "files": {n: file_fingerprint(os.path.join(path, n)) for n in names}}


def files_fingerprint(paths: Mapping[str, str]) -> dict:
  """``{key: file_fingerprint(path)}`` of embedding files (keys whose path is empty are left out)."""
  return {k: file_fingerprint(p) for k, p in sorted(paths.items()) if p}


def _has_checkpoint(directory: str) -> bool:
  return bool(glob.glob(os.path.join(glob.escape(directory), "**", "ckpt", "[0-9]*"), recursive=True))


def keyed_dir(parent: str, name: str, key: str) -> str:
  """``parent/<name>__<key[:12]>``: the run directory of ``name`` (e.g. one cell) under the settings of ``key``.

  A rerun with the same settings resumes its checkpoints; one with other settings gets another directory, so it
  never resumes a checkpoint of a different run. When this one has no checkpoint yet but the same ``name`` has one
  under other settings (or in the unkeyed layout ``parent/<name>``), one line says so; nothing is deleted.
  """
  path = os.path.join(parent, f"{name}__{key[:12]}")
  if is_primary() and not _has_checkpoint(path):
    pattern = os.path.join(glob.escape(parent), glob.escape(name))
    for other in sorted(glob.glob(pattern) + glob.glob(pattern + "__*")):
      if other != path and _has_checkpoint(other):
        print(f"settings changed since the checkpoint in {other}: starting fresh under {path}; delete {other} to "
              "reclaim space")
  return path


# ------------------------------------------------------------------------------------------------------------
# Results.
# ------------------------------------------------------------------------------------------------------------
def pyplot() -> types.ModuleType:
  """``matplotlib.pyplot`` on the non-interactive Agg backend (the ``plots`` extra)."""
  matplotlib = _extras.require("matplotlib", what="a result plot")
  matplotlib.use("Agg")
  return _extras.require("matplotlib.pyplot", what="a result plot")


def save_figure(fig, path: str, *, dpi: int = 120):
  """Saves a matplotlib figure as PNG atomically (never a half-written image; process 0 only) and closes it."""
  plt = pyplot()
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


PROVENANCE_PACKAGES = ("jax", "jaxlib", "flax", "optax", "ott-jax", "orbax-checkpoint", "numpy", "ml-collections",
                       "transformers", "tokenizers", "sotalign-jax")
_IMPORT_TIME = time.time()
_SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # sotalign_jax/, inside the checkout


def _git(*args: str) -> str | None:
  """``git args`` run in this package's source tree; None when git or the repository is absent."""
  try:
    out = subprocess.run(["git", "-C", _SOURCE_DIR, *args], capture_output=True, text=True, timeout=20,
                         check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout if out.returncode == 0 else None


def git_state() -> dict[str, Any]:
  """``{"commit": sha or None, "dirty": bool or None}`` of the checkout this package runs from.

  ``dirty`` is true when tracked files differ from the commit (untracked files are not counted); both are None
  when git is not installed or the package does not run from a git checkout.
  """
  commit = _git("rev-parse", "HEAD")
  if commit is None:
    return {"commit": None, "dirty": None}
  status = _git("status", "--porcelain", "--untracked-files=no")
  return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def process_seconds() -> float:
  """Wall-clock seconds since this process started (Linux ``/proc``; elsewhere since this module's import)."""
  try:
    with open("/proc/self/stat") as fh:
      start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
    with open("/proc/stat") as fh:
      boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
    return max(time.time() - (boot + start_ticks / os.sysconf("SC_CLK_TCK")), 0.0)
  except (OSError, ValueError, IndexError, StopIteration):
    return time.time() - _IMPORT_TIME


def provenance(*, seconds: float | None = None) -> dict[str, Any]:
  """What produced a result: code (git commit, dirty tree), package versions, devices, host, time.

  ``seconds`` is the experiment's own timing if it has one; ``process_seconds`` is always the wall time since the
  process started.
  """
  import importlib.metadata
  import platform
  import socket
  versions = {"python": platform.python_version()}
  for name in PROVENANCE_PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  devices = jax.devices()
  elapsed = round(process_seconds(), 1)
  return {
      **git_state(), "versions": versions, "platform": jax.default_backend(), "device_kind": devices[0].device_kind,
      "n_devices": len(devices), "n_local_devices": jax.local_device_count(), "process_count": jax.process_count(),
      "host": socket.gethostname(), "argv": list(sys.argv),
      "seconds": elapsed if seconds is None else seconds, "process_seconds": elapsed,
      "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }


def write_results(workdir: str, methods: Mapping[str, Mapping[str, float]], **extra: Any) -> str:
  """Atomically writes ``workdir/results.json`` and ``results.md`` (process 0 only); returns the markdown table.

  ``results.json`` holds ``{"methods": ..., **extra, "n_devices": ..., "provenance": ...}``: :func:`provenance`
  (git commit and dirty flag, package versions, platform / device kind / device and process counts, host,
  seconds — ``extra["seconds"]`` when the experiment passes it, else the process's wall time).
  """
  def clean(v):  # NaN ("not evaluated") becomes null, so the file is strict JSON
    if isinstance(v, Mapping):
      return {k: clean(x) for k, x in v.items()}
    return None if isinstance(v, float) and math.isnan(v) else v
  table = markdown_table(methods)
  if is_primary():
    prov = provenance(seconds=extra.get("seconds"))
    record = {"methods": methods, **extra}
    record.setdefault("n_devices", prov["n_devices"])
    record["provenance"] = prov
    sio.write_text(os.path.join(workdir, "results.json"), json.dumps(clean(record), indent=2))
    sio.write_text(os.path.join(workdir, "results.md"), table + "\n")
  return table
