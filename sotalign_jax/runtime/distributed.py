"""Multi-host launch: start ``jax.distributed`` when there are several processes, and split row ranges by host.

Call :func:`maybe_initialize` first thing in a program's ``main`` (before any JAX computation). It starts the JAX
distributed system only when the environment describes several processes, and does nothing on one host, so the
same command runs on a laptop and on every host of a cluster:

* ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``: any
  cluster, set by hand or by a launcher;
* Slurm (``srun`` sets ``SLURM_NTASKS``, ``SLURM_PROCID``, ...) and Open MPI (``mpirun`` sets
  ``OMPI_COMM_WORLD_SIZE``, ...) with more than one task: ``jax.distributed.initialize()`` detects the rest;
* Cloud TPU on GKE (``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES`` listing several hosts);
* ``SOTALIGN_DISTRIBUTED=1`` forces ``jax.distributed.initialize()`` with JAX's own detection: use it on a
  Cloud TPU pod slice (GCE), whose hosts are found through the metadata server; ``SOTALIGN_DISTRIBUTED=0``
  turns initialisation off whatever the environment says.

Data: :func:`shard_rows` builds one global ``jax.Array`` of a large row set (an embedding pool) sharded by rows over
a mesh axis, each process reading only the block its devices hold: the experiments' unpaired pools never exist in
full on any host. :func:`host_shard` / :func:`host_rows` give a contiguous block of rows per process, independent of
devices (e.g. to split a scan of a file over hosts).
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

FORCE_VAR = "SOTALIGN_DISTRIBUTED"
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def _int_var(environ: Mapping[str, str], name: str) -> int:
  value = environ.get(name)
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def detect_cluster(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """Which multi-process launcher the environment describes, or ``None`` for a single process.

  Args:
    environ: the environment to read (default ``os.environ``).

  Returns:
    ``"env"`` (``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES > 1``), ``"slurm"``, ``"ompi"``, ``"gke_tpu"``,
    ``"forced"`` (``SOTALIGN_DISTRIBUTED=1``), or ``None``.

  Raises:
    ValueError: if ``SOTALIGN_DISTRIBUTED`` is not ``0``/``1``, or a process count is not an integer.
  """
  env = os.environ if environ is None else environ
  force = env.get(FORCE_VAR, "").strip()
  if force not in ("", "0", "1"):
    raise ValueError(f"environment variable {FORCE_VAR} must be 0 or 1, got {force!r}")
  if force == "0":
    return None
  if env.get("JAX_COORDINATOR_ADDRESS") and "JAX_NUM_PROCESSES" in env:
    if _int_var(env, "JAX_NUM_PROCESSES") > 1:
      return "env"
  elif all(v in env for v in _SLURM_VARS) and _int_var(env, "SLURM_NTASKS") > 1:
    return "slurm"
  elif "OMPI_MCA_orte_hnp_uri" in env and _int_var(env, "OMPI_COMM_WORLD_SIZE") > 1:
    return "ompi"
  else:
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
      return "gke_tpu"
  return "forced" if force == "1" else None


def maybe_initialize(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Calls ``jax.distributed.initialize()`` when launched as several processes; a no-op on a single host.

  Call it before any JAX computation. With ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
  ``JAX_PROCESS_ID`` the three values are passed explicitly; for Slurm, Open MPI and Cloud TPU JAX detects them
  (see the module docstring). Calling it again after a successful initialisation does nothing.

  Args:
    environ: the environment to read (default ``os.environ``).

  Returns:
    ``True`` if this call initialised the distributed system, ``False`` if there was nothing to do.

  Raises:
    ValueError: if ``JAX_PROCESS_ID`` is missing or not in ``[0, JAX_NUM_PROCESSES)`` when the explicit variables
      are used, or a variable is not an integer.
  """
  env = os.environ if environ is None else environ
  kind = detect_cluster(env)
  if kind is None or jax.distributed.is_initialized():
    return False
  if kind == "env":
    count = _int_var(env, "JAX_NUM_PROCESSES")
    if "JAX_PROCESS_ID" not in env:
      raise ValueError("JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES are set but JAX_PROCESS_ID is not: set it "
                       "to this host's rank (0 on the coordinator host)")
    index = _int_var(env, "JAX_PROCESS_ID")
    if not 0 <= index < count:
      raise ValueError(f"JAX_PROCESS_ID must be in [0, {count}) (JAX_NUM_PROCESSES={count}), got {index}")
    jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=count,
                               process_id=index)
  else:
    jax.distributed.initialize()
  return True


def _process(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  for name, v in (("process_index", index), ("process_count", count)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
      raise ValueError(f"{name} must be an integer, got {v!r}")
  if count < 1:
    raise ValueError(f"process_count must be >= 1, got {count}")
  if not 0 <= index < count:
    raise ValueError(f"process_index must be in [0, {count}), got {index}")
  return int(index), int(count)


def host_shard(n_rows: int, *, process_index: Optional[int] = None, process_count: Optional[int] = None,
               even: bool = False) -> slice:
  r"""The contiguous block of ``n_rows`` rows that this process reads.

  Process :math:`i` of :math:`p` gets rows :math:`[\lfloor i n / p \rfloor, \lfloor (i + 1) n / p \rfloor)`:
  the blocks are disjoint, cover all rows in order, and their sizes differ by at most one. With ``even=True``
  the last ``n_rows % p`` rows are dropped so that every block has ``n_rows // p`` rows.
  On one host the slice is ``slice(0, n_rows)``.

  Args:
    n_rows: number of rows of the array (e.g. an embedding cache), ``>= 0``.
    process_index: this process' index (default ``jax.process_index()``).
    process_count: number of processes (default ``jax.process_count()``).
    even: make all blocks the same size by dropping the remainder.

  Returns:
    A ``slice`` with explicit ``start`` and ``stop`` (step ``None``).

  Raises:
    ValueError: if ``n_rows`` is not a non-negative integer or the process index is not in ``[0, count)``.
  """
  if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 0:
    raise ValueError(f"n_rows must be a non-negative integer, got {n_rows!r}")
  index, count = _process(process_index, process_count)
  if even:
    size = int(n_rows) // count
    return slice(index * size, (index + 1) * size)
  return slice(index * int(n_rows) // count, (index + 1) * int(n_rows) // count)


def host_rows(n: int, *, process_index: Optional[int] = None, process_count: Optional[int] = None,
              even: bool = False) -> np.ndarray:
  """Indices ``[k]`` (int64) of the rows of :func:`host_shard` (same arguments), e.g. for ``cache[host_rows(n)]``."""
  s = host_shard(n, process_index=process_index, process_count=process_count, even=even)
  return np.arange(s.start, s.stop, dtype=np.int64)


def shard_rows(source: Union[np.ndarray, Callable[[int, int], np.ndarray]], n_rows: int, *, mesh: Mesh,
               axis_name: str = "data") -> jax.Array:
  r"""Rows ``[0, n_rows)`` of ``source`` as one global array sharded by rows, each process reading only its block.

  The global array has :math:`\lceil n / s \rceil s` rows, :math:`s` the size of axis ``axis_name``: the
  ``n_rows`` rows of ``source`` followed by zero rows, so every device holds the same number. Each process calls
  ``source`` only for the rows its own devices hold (one contiguous block), so a memory-mapped cache, or a pool
  computed row by row, is read or computed once across all hosts. Sample rows among the first ``n_rows`` only
  (e.g. ``jax.random.choice(key, n_rows, ...)``): a gather from the sharded array inside ``jax.jit`` gives exactly
  what it gives from the unsharded one.

  Args:
    source: an array-like with ``source[start:stop]`` (a ``np.memmap`` reads only those rows), or a function
      ``read(start, stop) -> [stop - start, ...]``.
    n_rows: number of real rows, ``>= 1``.
    mesh: the device mesh; every process must hold a contiguous run of the axis (true of a 1-D mesh over
      ``jax.devices()``).
    axis_name: the mesh axis the rows are split over; other axes replicate.

  Returns:
    ``[padded_rows(n_rows, mesh, axis_name), ...]`` ``jax.Array`` with ``NamedSharding(mesh, P(axis_name))``.

  Raises:
    ValueError: if ``n_rows < 1``, ``axis_name`` is not a mesh axis, ``read`` returns the wrong number of rows,
      or this process' devices do not hold one contiguous block of rows.
  """
  if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
    raise ValueError(f"n_rows must be a positive integer, got {n_rows!r} (an empty pool cannot be sharded)")
  if axis_name not in mesh.axis_names:
    raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {mesh.axis_names}")
  read = source if callable(source) else (lambda a, b: np.asarray(source[a:b]))
  n_pad = padded_rows(n_rows, mesh, axis_name)
  start, stop = _local_block(n_pad, mesh, axis_name)
  real = max(0, min(stop, n_rows) - start)
  rows = np.asarray(read(start, start + real) if real else read(0, 1)[:0])  # a block of padding only: no rows
  if rows.ndim < 1 or rows.shape[0] != real:
    raise ValueError(f"read({start}, {start + real}) returned shape {rows.shape}, expected {real} rows")
  global_shape = (n_pad,) + rows.shape[1:]
  local = np.concatenate([rows, np.zeros((stop - start - real,) + rows.shape[1:], rows.dtype)])
  return jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec(axis_name)), local, global_shape)


def _local_block(n_pad: int, mesh: Mesh, axis_name: str) -> tuple[int, int]:
  sharding = NamedSharding(mesh, PartitionSpec(axis_name))
  blocks = sorted({(s[0].start or 0, n_pad if s[0].stop is None else s[0].stop)
                   for s in sharding.addressable_devices_indices_map((n_pad,)).values()})
  if any(b[0] != a[1] for a, b in zip(blocks, blocks[1:])):
    raise ValueError(f"process {jax.process_index()} holds non-contiguous row blocks {blocks} of mesh axis "
                     f"{axis_name!r}: order the mesh's devices by process (e.g. Mesh(np.array(jax.devices()), ...))")
  return blocks[0][0], blocks[-1][1]


def local_row_range(n_rows: int, *, mesh: Mesh, axis_name: str = "data") -> tuple[int, int]:
  """``(start, stop)``: the real rows (of ``n_rows``) that this process reads in :func:`shard_rows`."""
  start, stop = _local_block(padded_rows(n_rows, mesh, axis_name), mesh, axis_name)
  return min(start, n_rows), min(stop, n_rows)


def padded_rows(n_rows: int, mesh: Mesh, axis_name: str = "data") -> int:
  """``n_rows`` rounded up to a multiple of the size of ``mesh``'s axis ``axis_name`` (rows of :func:`shard_rows`)."""
  size = mesh.shape[axis_name]
  return -(-int(n_rows) // size) * size
