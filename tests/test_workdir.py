"""Workdir helpers: checkpoint fallback on corruption, non-finite checks, results tables."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from sotalign_jax.runtime import workdir as wd


def test_corrupted_latest_checkpoint_falls_back_to_previous_step(tmp_path, capsys):
  import orbax.checkpoint as ocp
  mgr = wd.checkpoint_manager(tmp_path / "ckpt", max_to_keep=3)
  for step in (10, 20):
    mgr.save(step, args=ocp.args.StandardSave({"w": jnp.full((4,), float(step))}))
  mgr.wait_until_finished()
  # truncate every file of the newest step
  for root, _, files in os.walk(tmp_path / "ckpt" / "20"):
    for f in files:
      open(os.path.join(root, f), "wb").close()
  mgr = wd.checkpoint_manager(tmp_path / "ckpt", max_to_keep=3)
  state, step = wd.restore_latest(mgr, {"w": jnp.zeros((4,))})
  assert step == 10
  np.testing.assert_array_equal(state["w"], np.full(4, 10.0))
  assert "step 20 is unreadable" in capsys.readouterr().out
  assert (tmp_path / "ckpt" / "corrupt-20").exists()


def test_no_checkpoint_returns_target_and_zero(tmp_path):
  state, step = wd.restore_latest(wd.checkpoint_manager(tmp_path / "c"), {"w": jnp.ones(2)})
  assert step == 0 and float(state["w"][0]) == 1.0


def test_check_finite_names_step_and_quantity():
  wd.check_finite(3, loss=jnp.float32(1.0))
  with pytest.raises(wd.NonFiniteError, match="step 7: grad_norm is not finite"):
    wd.check_finite(7, loss=jnp.float32(1.0), grad_norm=jnp.float32(np.nan))


def test_itstime():
  assert [s for s in range(1, 11) if wd.itstime(s, 4, 10)] == [4, 8, 10]
  assert [s for s in range(1, 11) if wd.itstime(s, 4, 10, first=True)] == [1, 4, 8, 10]


def test_write_results_json_and_markdown(tmp_path):
  table = wd.write_results(str(tmp_path), {"a": {"r1": 0.5, "r5": float("nan")}, "b": {"r1": 0.25}}, note="x")
  res = json.load(open(tmp_path / "results.json"))
  assert res == {"methods": {"a": {"r1": 0.5, "r5": None}, "b": {"r1": 0.25}}, "note": "x"}
  assert table.splitlines()[0] == "| method | r1 | r5 |"
  assert "| a | 0.5000 | – |" in table and "| b | 0.2500 | – |" in table
  assert open(tmp_path / "results.md").read().strip() == table


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  w = wd.MetricWriter(str(tmp_path))
  w.write(1, {"loss": jnp.float32(2.0), "skip": float("nan")}, prefix="train/")
  w.close()
  line = json.loads(open(tmp_path / "metrics.jsonl").read())
  assert line["step"] == 1 and line["train/loss"] == 2.0
  assert any(f.startswith("events") for f in os.listdir(tmp_path / "tb"))


def test_only_process_zero_writes_results_metrics_and_figures(tmp_path, monkeypatch):
  import jax
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  monkeypatch.setattr(jax, "process_index", lambda: 1)  # what every host but the first sees
  assert not wd.is_primary()
  table = wd.write_results(str(tmp_path), {"m": {"r1": 0.5}})
  assert "| m | 0.5000 |" in table  # still returned, for printing
  writer = wd.MetricWriter(str(tmp_path / "w"))
  assert writer.write(3, {"loss": jnp.float32(2.0)}, prefix="train/") == {"train/loss": 2.0}
  writer.close()
  wd.save_figure(plt.figure(), str(tmp_path / "fig.png"))
  wd.sync("noop")  # one process: returns at once
  assert os.listdir(tmp_path) == []
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  wd.write_results(str(tmp_path), {"m": {"r1": 0.5}})
  assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md"]


def test_config_checks_name_the_dotted_key():
  import ml_collections
  cfg = ml_collections.ConfigDict({"methods": "a, c,", "steps": 0, "opt": {"lr": -1.0, "wd": -0.1, "n": 1.5}})
  with pytest.raises(ValueError, match=r"config.methods: unknown method\(s\) \['c'\]; choose from \['a', 'b'\]"):
    wd.parse_list(cfg, "methods", ("a", "b"))
  assert wd.parse_list(ml_collections.ConfigDict({"m": " b,a "}), "m", ("a", "b")) == ["b", "a"]
  with pytest.raises(ValueError, match=r"config.m: unknown metric\(s\) \[\]"):  # empty
    wd.parse_list(ml_collections.ConfigDict({"m": " , "}), "m", ("a",), what="metric")
  with pytest.raises(ValueError, match="config.steps must be a positive integer, got 0"):
    wd.check_ints(cfg, ("steps",))
  wd.check_ints(cfg, ("steps",), minimum=0)
  with pytest.raises(ValueError, match="config.opt.n must be an integer >= 0, got 1.5"):
    wd.check_ints(cfg, ("steps", "opt.n"), minimum=0)
  with pytest.raises(ValueError, match="config.steps must be an integer >= 2"):
    wd.check_ints(cfg, ("steps",), minimum=2)
  with pytest.raises(ValueError, match="config.opt.lr must be > 0, got -1.0"):
    wd.check_positive(cfg, ("opt.lr",))
  with pytest.raises(ValueError, match="config.opt.wd must be >= 0, got -0.1"):
    wd.check_nonnegative(cfg, ("opt.wd",))
  wd.check_nonnegative(cfg, ("steps",))
