"""Tests of sotalign_jax.distributed: launcher detection, initialisation, and per-host row blocks."""

import json
import sys
import textwrap

import jax
import numpy as np
import pytest

from sotalign_jax.runtime import distributed

from conftest import run_processes, run_with_fake_devices

SLURM_2 = {"SLURM_JOB_ID": "17", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
           "SLURM_LOCALID": "0"}


@pytest.fixture
def init_calls(monkeypatch):
  """Replaces ``jax.distributed.initialize`` by a recorder (and reports 'not initialised')."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  return calls


# ---------------------------------------------------------------------------------------------------------------
# Detection and initialisation.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("environ", [
    {},
    {"HOME": "/root", "PATH": "/usr/bin"},
    {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"},
    dict(SLURM_2, SLURM_NTASKS="1", SLURM_PROCID="0"),
    {"OMPI_MCA_orte_hnp_uri": "123;tcp://10.0.0.1:5000", "OMPI_COMM_WORLD_SIZE": "1"},
    {"TPU_WORKER_HOSTNAMES": "localhost"},
    dict(SLURM_2, SOTALIGN_DISTRIBUTED="0"),
])
def test_single_process_environments_do_not_initialize(environ, init_calls):
  assert distributed.detect_cluster(environ) is None
  assert distributed.maybe_initialize(environ) is False
  assert init_calls == []


def test_maybe_initialize_is_noop_in_this_process():
  if distributed.detect_cluster() is not None:
    pytest.skip("the test runner itself was launched as several processes")
  assert distributed.maybe_initialize() is False
  assert not jax.distributed.is_initialized()
  assert jax.process_count() == 1


def test_explicit_env_passes_the_three_values(init_calls):
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert distributed.detect_cluster(env) == "env"
  assert distributed.maybe_initialize(env) is True
  assert init_calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}]


@pytest.mark.parametrize("environ, kind", [
    (SLURM_2, "slurm"),
    ({"OMPI_MCA_orte_hnp_uri": "123;tcp://10.0.0.1:5000", "OMPI_COMM_WORLD_SIZE": "8"}, "ompi"),
    ({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1"}, "gke_tpu"),
    ({"TPU_PROCESS_ADDRESSES": "10.0.0.1:8476,10.0.0.2:8476"}, "gke_tpu"),
    ({"SOTALIGN_DISTRIBUTED": "1"}, "forced"),
])
def test_managed_clusters_leave_detection_to_jax(environ, kind, init_calls):
  assert distributed.detect_cluster(environ) == kind
  assert distributed.maybe_initialize(environ) is True
  assert init_calls == [{}]  # jax.distributed.initialize() with no arguments: JAX's own auto-detection


def test_already_initialized_is_noop(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  assert distributed.maybe_initialize(SLURM_2) is False
  assert calls == []


@pytest.mark.parametrize("environ, match", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "JAX_PROCESS_ID"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "JAX_PROCESS_ID"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES"),
    ({"SOTALIGN_DISTRIBUTED": "yes"}, "SOTALIGN_DISTRIBUTED"),
])
def test_bad_environment_raises(environ, match, init_calls):
  with pytest.raises(ValueError, match=match):
    distributed.maybe_initialize(environ)
  assert init_calls == []


# ---------------------------------------------------------------------------------------------------------------
# Row blocks.
# ---------------------------------------------------------------------------------------------------------------
def test_single_host_gets_all_rows():
  assert distributed.host_shard(10) == slice(0, 10)
  np.testing.assert_array_equal(distributed.host_rows(7), np.arange(7))
  assert distributed.host_shard(0) == slice(0, 0)


def _oracle_blocks(n, p):
  """Plain numpy: array_split gives p contiguous blocks whose sizes differ by at most one."""
  return [b for b in np.array_split(np.arange(n), p)]


@pytest.mark.parametrize("n, p", [(10, 3), (7, 7), (3, 5), (1000, 8), (0, 4), (1, 1), (64, 2)])
def test_blocks_partition_rows(n, p):
  blocks = [distributed.host_rows(n, process_index=i, process_count=p) for i in range(p)]
  np.testing.assert_array_equal(np.concatenate(blocks), np.arange(n))  # disjoint, in order, complete
  sizes = [len(b) for b in blocks]
  assert max(sizes) - min(sizes) <= 1
  assert sorted(sizes) == sorted(len(b) for b in _oracle_blocks(n, p))
  for i, b in enumerate(blocks):
    s = distributed.host_shard(n, process_index=i, process_count=p)
    np.testing.assert_array_equal(np.arange(n)[s], b)


def test_blocks_explicit_values():
  got = [distributed.host_shard(10, process_index=i, process_count=3) for i in range(3)]
  assert got == [slice(0, 3), slice(3, 6), slice(6, 10)]


@pytest.mark.parametrize("n, p", [(10, 3), (8, 4), (2, 3)])
def test_even_blocks_drop_the_remainder(n, p):
  blocks = [distributed.host_rows(n, process_index=i, process_count=p, even=True) for i in range(p)]
  assert {len(b) for b in blocks} == {n // p}
  np.testing.assert_array_equal(np.concatenate(blocks), np.arange(n // p * p))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_rows=-1), "n_rows"),
    (dict(n_rows=2.5), "n_rows"),
    (dict(n_rows=10, process_index=3, process_count=3), "process_index"),
    (dict(n_rows=10, process_index=-1, process_count=3), "process_index"),
    (dict(n_rows=10, process_index=0, process_count=0), "process_count"),
])
def test_host_shard_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    distributed.host_shard(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Two real processes on localhost.
# ---------------------------------------------------------------------------------------------------------------
_WORKER = textwrap.dedent("""
    import numpy as np
    from sotalign_jax.runtime import distributed
    assert distributed.maybe_initialize()
    import jax
    from jax.sharding import Mesh
    mesh = Mesh(np.array(jax.devices()), ("data",))
    g = distributed.shard_rows(np.arange(20, dtype=np.float32).reshape(10, 2), 10, mesh=mesh)
    start, stop = distributed.local_row_range(10, mesh=mesh)
    mine = np.concatenate([np.asarray(sh.data) for sh in g.addressable_shards])
    print(jax.process_index(), jax.process_count(), start, stop, g.shape[0], mine.ravel().tolist())
""")


def test_two_processes_on_localhost():
  outs = [out.strip().splitlines()[-1] for out in run_processes([sys.executable, "-c", _WORKER], 2)]
  expected = np.arange(20, dtype=np.float32)
  assert outs[0] == f"0 2 0 5 10 {expected[:10].tolist()}"
  assert outs[1] == f"1 2 5 10 10 {expected[10:].tolist()}"


_SHARD_ROWS_WORKER = textwrap.dedent("""
    import json
    import numpy as np
    from sotalign_jax.runtime import distributed
    distributed.maybe_initialize()
    import jax
    from jax.sharding import Mesh
    data = np.arange(21, dtype=np.float32).reshape(7, 3)
    reads = []
    def read(a, b):
      reads.append([a, b])
      return data[a:b]
    mesh = Mesh(np.array(jax.devices()), ("data",))
    g = distributed.shard_rows(read, 7, mesh=mesh)
    idx = np.array([6, 0, 3, 3, 5, 1])
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    picked = jax.jit(lambda g, i: g[i], out_shardings=replicated)(g, idx)
    print(json.dumps({"process": jax.process_index(), "reads": reads, "shape": list(g.shape),
                      "range": list(distributed.local_row_range(7, mesh=mesh)),
                      "picked": np.asarray(picked.addressable_data(0)).tolist()}))
""")


def test_shard_rows_two_processes_each_read_only_their_block():
  outs = [json.loads(o.strip().splitlines()[-1])
          for o in run_processes([sys.executable, "-c", _SHARD_ROWS_WORKER], 2, devices_per_process=2)]
  data = np.arange(21, dtype=np.float32).reshape(7, 3)
  # 7 rows padded to 8 over 4 devices: process 0's two devices hold rows 0-3, process 1's hold 4-7 (7 is padding)
  assert [o["reads"] for o in outs] == [[[0, 4]], [[4, 7]]]
  assert [o["range"] for o in outs] == [[0, 4], [4, 7]]
  for o in outs:
    assert o["shape"] == [8, 3]
    np.testing.assert_array_equal(o["picked"], data[[6, 0, 3, 3, 5, 1]])


def test_shard_rows_on_eight_devices_pads_and_gathers_like_numpy():
  out = run_with_fake_devices("""
      import numpy as np, jax
      from jax.sharding import Mesh
      from sotalign_jax.runtime import distributed
      x = np.random.default_rng(0).normal(size=(13, 5)).astype(np.float32)
      mesh = Mesh(np.array(jax.devices()), ("data",))
      g = distributed.shard_rows(x, 13, mesh=mesh)
      idx = np.random.default_rng(1).integers(0, 13, 40)
      picked = jax.jit(lambda g, i: g[i] * 2.0)(g, idx)
      assert g.shape == (16, 5) and len(g.addressable_shards) == 8, g.shape
      assert all(s.data.shape == (2, 5) for s in g.addressable_shards)
      full = np.asarray(g)
      assert np.array_equal(full[:13], x) and not full[13:].any()
      assert np.array_equal(np.asarray(picked), x[idx] * 2.0)
      print("ok", distributed.local_row_range(13, mesh=mesh))
  """)
  assert out.strip().splitlines()[-1] == "ok (0, 13)"


def test_shard_rows_single_process_reads_all_rows_once():
  from jax.sharding import Mesh
  mesh = Mesh(np.array(jax.devices()), ("data",))
  calls = []
  x = np.arange(10, dtype=np.float32).reshape(5, 2)
  g = distributed.shard_rows(lambda a, b: calls.append((a, b)) or x[a:b], 5, mesh=mesh)
  assert calls == [(0, 5)]
  np.testing.assert_array_equal(np.asarray(g), x)
  np.testing.assert_array_equal(np.asarray(distributed.shard_rows(x, 5, mesh=mesh)), x)  # an array source


@pytest.mark.parametrize("kwargs, match", [
    ({"n_rows": 0}, "n_rows"),
    ({"n_rows": 5, "axis_name": "model"}, "axis_name"),
    ({"n_rows": 5, "source": lambda a, b: np.zeros((b - a + 1, 2))}, "expected 5 rows"),
])
def test_shard_rows_bad_input(kwargs, match):
  from jax.sharding import Mesh
  mesh = Mesh(np.array(jax.devices()), ("data",))
  kwargs = {"source": np.zeros((5, 2)), **kwargs}
  with pytest.raises(ValueError, match=match):
    distributed.shard_rows(kwargs.pop("source"), mesh=mesh, **kwargs)
