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

Data: :func:`host_shard` / :func:`host_rows` give the contiguous block of rows this process reads from an
embedding cache, and :func:`global_batch_from_host_shards` assembles the per-host blocks into one global
``jax.Array`` sharded over all devices (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

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
  the last ``n_rows % p`` rows are dropped so that every block has ``n_rows // p`` rows (what
  :func:`global_batch_from_host_shards` needs). On one host the slice is ``slice(0, n_rows)``.

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


def global_batch_from_host_shards(local: np.ndarray, *, axis_name: str = "data") -> jax.Array:
  """One global ``jax.Array`` from each process' block of rows, sharded by rows over all devices.

  Every process passes its own ``[k, ...]`` block (the same ``k`` on all processes, e.g. from
  ``host_shard(n, even=True)``); the result has shape ``[k * process_count, ...]``, its rows in process order,
  split over a 1-D mesh of all ``jax.devices()`` with axis ``axis_name``.

  Args:
    local: ``[k, ...]`` rows of this process; ``k`` must be a multiple of ``jax.local_device_count()``.
    axis_name: name of the mesh axis.

  Raises:
    ValueError: if ``local`` has no leading axis or ``k`` is not a multiple of the local device count.
  """
  local = np.asarray(local)
  if local.ndim < 1:
    raise ValueError(f"local must have a leading row axis, got shape {local.shape}")
  n_local = jax.local_device_count()
  if local.shape[0] % n_local:
    raise ValueError(f"local has {local.shape[0]} rows, not a multiple of this host's {n_local} devices: "
                     f"pad or trim the block (e.g. host_shard(n, even=True) with n a multiple of "
                     f"{n_local * jax.process_count()})")
  sharding = NamedSharding(Mesh(np.asarray(jax.devices()), (axis_name,)), PartitionSpec(axis_name))
  global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
  return jax.make_array_from_process_local_data(sharding, local, global_shape)
