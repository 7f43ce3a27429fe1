"""experiments/cmcr.py end to end on synthetic .npy spaces: recovery, keyed cells, resume after kill -9, bad input."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import (REPO, assert_resume_is_bit_identical, devices_used, keyed_run_dir, run_on_devices,
                      run_processes)
from test_cmcr import make_spaces, two_modalities

SCRIPT = os.path.join(REPO, "experiments", "cmcr.py")
N_EVAL = 200


def _experiment_module():
  """experiments/cmcr.py as a module (nothing runs; registered in sys.modules for its dataclasses)."""
  spec = importlib.util.spec_from_file_location("_cmcr_experiment", SCRIPT)
  module = sys.modules["_cmcr_experiment"] = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


EXP = _experiment_module()
CONFIG = EXP.CONFIG


def launch(workdir, files, *overrides):
  return [sys.executable, SCRIPT, "--config", os.path.join(REPO, "configs", "cmcr.py") + ":smoke",
          "--workdir", str(workdir), *(f"--config.data.{k}={v}" for k, v in files.items()), *overrides]


def save(directory, spaces):
  os.makedirs(directory, exist_ok=True)
  files = {}
  for k, v in spaces.items():
    files[k] = os.path.join(directory, f"{k}.npy")
    np.save(files[k], v)
  return files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  return save(str(tmp_path_factory.mktemp("spaces")), make_spaces(n_eval=N_EVAL))


@pytest.fixture(scope="module")
def main_run(files, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("main")
  out = subprocess.run(launch(workdir, files, "--config.methods=('cmcr','supervised','no_connection')"),
                       capture_output=True, text=True, timeout=600, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out


def test_cmcr_recovers_the_hidden_relation_without_pairs(main_run):
  workdir, out = main_run
  res = json.load(open(workdir / "results.json"))["methods"]
  assert list(res) == ["cmcr", "supervised", "no_connection"]
  chance = 1 / N_EVAL
  for m in ("cmcr", "supervised"):
    assert set(res[m]) == {"a2c_r1", "a2c_r5", "c2a_r1", "c2a_r5", "gap_1", "gap_2"}  # gaps: trained methods
    assert min(res[m]["a2c_r1"], res[m]["c2a_r1"]) > 30 * chance, (m, res[m])
  assert set(res["no_connection"]) == {"a2c_r1", "a2c_r5", "c2a_r1", "c2a_r5"}  # chance: the dimensions differ
  assert "| cmcr |" in out.stdout
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert any("train/cmcr/s0/intra_loss" in l for l in lines)
  assert any("eval/supervised/s0/a2c_r1" in l for l in lines)
  assert os.path.isdir(workdir / "tb")
  assert open(workdir / "training_curves.png", "rb").read(4) == b"\x89PNG"


def np_recalls(queries, gallery, ks=(1, 5)):
  """Recall@k of row i retrieving row i by cosine, written out with numpy (the oracle for no_connection)."""
  unit_rows = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sims = unit_rows(queries.astype(np.float64)) @ unit_rows(gallery.astype(np.float64)).T
  ranks = np.array([np.sum(sims[i] > sims[i, i]) for i in range(len(sims))])  # rows that beat the positive
  return {k: float(np.mean(ranks < k)) for k in ks}


def test_no_connection_with_equal_dimensions_is_raw_cosine_retrieval(tmp_path):
  # Both spaces 20-d; C rows are noisy, arbitrarily rescaled copies of the A rows, so raw cosine retrieval is
  # well above chance but not perfect, and a dot product (no normalisation) would rank differently.
  rng = np.random.default_rng(3)
  spaces = make_spaces(n_eval=N_EVAL, d1=20, d2=20)
  a = spaces["a_eval"]
  spaces["c_eval"] = (rng.uniform(0.3, 3.0, (N_EVAL, 1)) * (a + 0.25 * rng.normal(size=a.shape))).astype(np.float32)
  out = subprocess.run(launch(tmp_path / "w", save(str(tmp_path / "in"), spaces), "--config.methods=no_connection"),
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.load(open(tmp_path / "w" / "results.json"))["methods"]["no_connection"]
  a2c, c2a = np_recalls(a, spaces["c_eval"]), np_recalls(spaces["c_eval"], a)
  want = {"a2c_r1": a2c[1], "a2c_r5": a2c[5], "c2a_r1": c2a[1], "c2a_r5": c2a[5]}
  assert got == pytest.approx(want, abs=1e-12), (got, want)
  assert 10 / N_EVAL < want["a2c_r1"] < 0.9 and want["a2c_r5"] > want["a2c_r1"]  # a non-trivial case


@pytest.mark.slow
def test_every_method_and_ablation_writes_results(files, tmp_path):
  out = subprocess.run(launch(tmp_path, files, "--config.steps=20"), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.load(open(tmp_path / "results.json"))["methods"]
  assert list(res) == list(CONFIG.MAIN)
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  # the ablated terms are still logged, but do not enter the loss
  last = {k: v for l in lines for k, v in l.items()}
  assert last["train/cmcr_ttc_avc/s0/loss"] == pytest.approx(
      last["train/cmcr_ttc_avc/s0/text_loss"] + last["train/cmcr_ttc_avc/s0/pseudo_loss"], rel=1e-5)
  assert last["train/cmcr_ttc_intra/s0/loss"] == pytest.approx(
      last["train/cmcr_ttc_intra/s0/text_loss"] + 0.1 * last["train/cmcr_ttc_intra/s0/intra_loss"], rel=1e-5)
  # L_ttc alone forms no pseudo embedding at all
  assert "train/cmcr_ttc/s0/text_loss" in last and "train/cmcr_ttc/s0/pseudo_loss" not in last


def test_kill_and_resume_reaches_the_uninterrupted_metrics(files, main_run, tmp_path):
  proc = subprocess.Popen(launch(tmp_path, files, "--config.methods=cmcr"), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  ckpts = lambda: [p for p in (tmp_path / "runs" / "cmcr").glob("s0__*/ckpt/*") if p.name.isdigit()]  # noqa: E731
  while time.time() < deadline and not any(int(p.name) >= 20 for p in ckpts()):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "results.json").exists(), "the run finished before it could be killed"
  again = subprocess.run(launch(tmp_path, files, "--config.methods=cmcr"), capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  resumed_from = int(again.stdout.split("[cmcr/s0] resuming from step ")[1].split()[0])
  assert resumed_from >= 20
  # the same settings give the same run directory as the uninterrupted run's; the loss curve after the resume point
  # and the final state are those of the uninterrupted run, bit for bit
  run_dir = os.path.relpath(keyed_run_dir(tmp_path, "cmcr/s0"), tmp_path)
  assert run_dir == os.path.relpath(keyed_run_dir(main_run[0], "cmcr/s0"), main_run[0])
  assert_resume_is_bit_identical(main_run[0], tmp_path, "cmcr/s0", resumed_from, os.path.join(run_dir, "ckpt"))
  ref = json.load(open(main_run[0] / "results.json"))["methods"]["cmcr"]
  got = json.load(open(tmp_path / "results.json"))["methods"]["cmcr"]
  assert got == ref


def copy_of(workdir, tmp_path):
  shutil.copytree(workdir, tmp_path / "w")
  return tmp_path / "w"


def rerun(workdir, files, *overrides):
  out = subprocess.run(launch(workdir, files, *overrides), capture_output=True, text=True, timeout=600, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout, json.load(open(workdir / "results.json"))


MAIN_METHODS = "--config.methods=('cmcr','supervised','no_connection')"


def test_rerun_reuses_unchanged_cells_and_recomputes_changed_ones(files, main_run, tmp_path):
  w = copy_of(main_run[0], tmp_path)
  ref = json.load(open(w / "results.json"))
  out, res = rerun(w, files, MAIN_METHODS)
  assert "3 of 3 cells done before with these settings, 0 to run" in out, out
  assert res["cells_run_now"] == 0 and res["methods"] == ref["methods"]
  # the pseudo-pair weight is an option of cmcr only: its cell is computed anew (a new run directory, not the old
  # checkpoint), supervised and no_connection are reused; the old cmcr cell stays on disk
  out, res = rerun(w, files, MAIN_METHODS, "--config.pseudo_weight=0.5")
  assert "2 of 3 cells done before with these settings, 1 to run (1 of them stored under other settings" in out, out
  assert res["cells_run_now"] == 1 and "resuming" not in out and "settings changed since the checkpoint" in out
  assert [c["settings"]["fit"]["options"]["pseudo_weight"] for c in res["cells"] if c["method"] == "cmcr"] == [0.5]
  assert len(list((w / "done" / "cmcr").glob("p0_s0__*.json"))) == 2
  assert len(list((w / "runs" / "cmcr").glob("s0__*"))) == 2
  assert res["methods"]["cmcr"] != ref["methods"]["cmcr"]
  assert {m: res["methods"][m] for m in ("supervised", "no_connection")} == {
      m: ref["methods"][m] for m in ("supervised", "no_connection")}


def test_changed_evaluation_data_reevaluates_without_retraining(files, main_run, tmp_path):
  w = copy_of(main_run[0], tmp_path)
  ref = json.load(open(w / "results.json"))["methods"]
  # the same path with other content (the evaluation pairs reversed): every cell is evaluated anew; the trained
  # ones read their finished checkpoint (same fit settings) instead of training again
  changed = dict(files)
  for k in ("a_eval", "c_eval"):
    changed[k] = str(tmp_path / f"{k}.npy")
    np.save(changed[k], np.load(files[k])[::-1])
  out, res = rerun(w, changed, MAIN_METHODS)
  assert "0 of 3 cells done before with these settings, 3 to run" in out, out
  assert "[cmcr/s0] resuming from step 60" in out and "[supervised/s0] resuming from step 60" in out, out
  assert "settings changed" not in out
  assert res["methods"] == ref  # the same pairs in another order: the same recalls
  assert len(list((w / "done" / "cmcr").glob("*.json"))) == 2 and len(list((w / "runs" / "cmcr").glob("*"))) == 1


def test_a_subset_rerun_keeps_the_full_table(files, main_run, tmp_path):
  w = copy_of(main_run[0], tmp_path)
  ref = json.load(open(w / "results.json"))["methods"]
  out, res = rerun(w, files, "--config.methods=no_connection")
  assert "1 of 1 cells done before" in out and "also in the table: cmcr, supervised" in out, out
  assert list(res["methods"]) == ["no_connection", "cmcr", "supervised"] and res["methods"] == ref
  assert res["methods_run"] == ["no_connection"] and res["methods_from_store"] == ["cmcr", "supervised"]
  assert "| supervised |" in open(w / "results.md").read()
  # a cell stored under other settings is not shown: with another temperature only no_connection (which does not
  # depend on it) is in the table
  out, res = rerun(w, files, "--config.methods=no_connection", "--config.temperature=0.3")
  assert list(res["methods"]) == ["no_connection"], out


@pytest.mark.parametrize("change, override, message", [
    (lambda s: s.update(b_prime=s["b_prime"][:-1]), "", "b has 1500 rows but b_prime 1499"),
    (lambda s: s["c_memory"].__setitem__((7, 0), np.nan), "", "c_memory contains NaN or Inf in 1 row"),
    (lambda s: s.update(a_eval=s["a_eval"][:, :3]), "", "a_eval has dimension 3 but space 1"),
    (lambda s: [s.pop("a_train"), s.pop("c_train")], "--config.methods=('cmcr','supervised')", "config.data.a_train"),
    (lambda s: None, "--config.no_such_key=1", "no_such_key"),
    (lambda s: None, "--config.methods=('cmcr','magic')", "config.methods"),
    (lambda s: None, "--config.seeds=0", "config.seeds must be a positive integer"),
    (lambda s: None, "--config.batch_size=5000", "config.batch_size=5000 exceeds the 1500 shared texts"),
    (lambda s: None, "--config.data.b=/nonexistent/b.npy", "config.data.b: /nonexistent/b.npy not found"),
])
def test_bad_input_is_rejected_at_start_up_naming_it(tmp_path, change, override, message):
  spaces = make_spaces(n_eval=N_EVAL)
  change(spaces)
  files = save(str(tmp_path / "in"), spaces)
  if override.startswith("--config.data.b="):
    files.pop("b")
  out = subprocess.run(launch(tmp_path / "w", files, *filter(None, [override])), capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr[-3000:]
  assert not (tmp_path / "w").exists()  # nothing written: no workdir, no config.json


def test_demo_path_joins_two_caches_and_connects_them(tmp_path):
  # Two fake caches of the same pictures and captions (same seed → same latents) with different "encoders".
  from sotalign_jax.data.fake import make_fake_cache
  splits = np.random.default_rng(1).choice(["paired", "unpaired", "val", "test"], size=500, p=[.3, .5, .1, .1])
  c1 = make_fake_cache(str(tmp_path / "c1"), n_images=500, dx=40, dy=24, noise=0.3, splits=splits)
  c2 = make_fake_cache(str(tmp_path / "c2"), n_images=500, dx=36, dy=28, noise=0.3, splits=splits)
  out = subprocess.run(launch(tmp_path / "w", {}, "--config.data.source=demo", f"--config.demo.cache_1={c1}",
                              f"--config.demo.cache_2={c2}", "--config.teacher.cca_dim=10",
                              "--config.methods=('cmcr','no_connection')"), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.load(open(tmp_path / "w" / "results.json"))
  n_test = int((splits == "test").sum())
  assert r["n_eval"] == n_test and r["n_texts"] == 2 * int(np.isin(splits, ["paired", "unpaired"]).sum())
  assert r["space_1_i2t_r1"] > 5 / n_test and r["space_2_i2t_r1"] > 5 / n_test
  # the demo plants a modality gap in both spaces (CCA alone centres every modality: no gap), which makes these
  # 10-dimensional fake spaces harder to connect
  assert min(r["gap_space_1"], r["gap_space_2"]) > 0.5, r
  assert r["methods"]["cmcr"]["a2c_r5"] > 4 * 5 / n_test, r["methods"]


def test_demo_without_caches_says_how_to_build_them(tmp_path):
  out = subprocess.run(launch(tmp_path / "w", {}, "--config.data.source=demo",
                              f"--config.demo.cache_1={tmp_path}/openclipart__efficientnet-lite0__all-MiniLM-L6-v2"),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert "python -m sotalign_jax.cli.embed --dataset openclipart --image-encoder efficientnet-lite0" in out.stderr
  assert not (tmp_path / "w").exists()


SHARDED_ARGS = ["--config.methods=cmcr", "--config.steps=20"]


@pytest.fixture(scope="module")
def one_device_run(files, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_device")
  run_on_devices(launch(workdir, files, *SHARDED_ARGS), 1)
  return workdir


def assert_same_run(a_dir, b_dir):
  a = json.load(open(a_dir / "results.json"))["methods"]["cmcr"]
  b = json.load(open(b_dir / "results.json"))["methods"]["cmcr"]
  assert a.keys() == b.keys()
  # the losses agree to float precision (each step logged once); a recall can move by near-ties flipping (here
  # up to 3 queries of 200 = 0.015: BatchNorm's statistics over [b; â] are reduced across the devices)
  steps = lambda w: [json.loads(l)["step"] for l in open(w / "metrics.jsonl") if "train/cmcr/s0/loss" in l]
  loss = lambda w: [json.loads(l)["train/cmcr/s0/loss"] for l in open(w / "metrics.jsonl")
                    if "train/cmcr/s0/loss" in l]
  assert steps(a_dir) == steps(b_dir) and len(set(steps(b_dir))) == len(steps(b_dir))
  np.testing.assert_allclose(loss(a_dir), loss(b_dir), rtol=1e-5)
  np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(a)], atol=0.0151)


def test_more_seeds_reuse_the_first_and_give_intervals(files, one_device_run, tmp_path):
  w = copy_of(one_device_run, tmp_path)
  out, res = rerun(w, files, *SHARDED_ARGS, "--config.seeds=2")
  assert "1 of 2 cells done before with these settings, 1 to run" in out, out
  cells = {c["seed"]: c["metrics"] for c in res["cells"]}
  assert res["seeds"] == [0, 1] and cells[0] == json.load(open(one_device_run / "results.json"))["methods"]["cmcr"]
  assert cells[0] != cells[1]  # seed 1 is another initialisation and other batches
  summary = res["summary"]["cmcr"]
  for k, s in summary.items():
    assert s["n"] == 2 and s["low"] <= s["mean"] <= s["high"], k
    assert s["mean"] == pytest.approx((cells[0][k] + cells[1][k]) / 2) == res["methods"]["cmcr"][k], k
  assert any(s["low"] < s["high"] for s in summary.values())
  assert "± " in out and "95% interval over 2 seeds" in out


def test_eight_fake_devices_give_the_single_device_metrics(files, one_device_run, tmp_path):
  run_on_devices(launch(tmp_path / "eight", files, *SHARDED_ARGS), 8)
  assert_same_run(one_device_run, tmp_path / "eight")
  assert devices_used(one_device_run) == (1, 1) and devices_used(tmp_path / "eight") == (8, 1)  # as launched


def test_two_hosts_split_the_texts_and_give_the_single_device_metrics(files, one_device_run, tmp_path):
  outs = run_processes(launch(tmp_path / "two", files, *SHARDED_ARGS), 2, devices_per_process=2)
  assert_same_run(one_device_run, tmp_path / "two")
  assert devices_used(tmp_path / "two") == (4, 2)  # 2 processes × 2 fake devices
  held = [[l for l in out.splitlines() if l.startswith("process ")] for out in outs]
  n = int(held[0][0].split(" of ")[1])
  half = -(-n // 4) * 2  # n padded to a multiple of the 4 devices, half of it on each host
  assert held == [[f"process 0/2 holds texts [0, {half}) of {n}"], [f"process 1/2 holds texts [{half}, {n}) of {n}"]]
  assert "C-MCR results" in outs[0] and "C-MCR results" not in outs[1]


# ------------------------------------------------------------------------------------------------------------
# BatchNorm statistics, ablations, the planted modality gap, the zero-pair baselines.
# ------------------------------------------------------------------------------------------------------------
def test_train_step_leaves_the_running_statistics_of_both_modalities_together():
  # With the parameters frozen (lr 0), no noise and a batch of every row, the train step's running averages settle
  # on the statistics of [b; â] (and [b'; ĉ]): evaluation then gives every text and pseudo embedding exactly what
  # training computed for it. One projector call per modality (the old step) leaves averages between the two.
  import jax
  import optax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from sotalign_jax.nn import projectors
  from sotalign_jax.runtime import distributed, train as train_lib
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # the step re-normalises its inputs (σ² = 0)
  (b, pa), (bp, pc) = ((unit(x), unit(y)) for x, y in (two_modalities(rng, n=48, d=6), two_modalities(rng, n=48, d=5)))
  arrays = {"b": b, "b_prime": bp, "pseudo_a": pa, "pseudo_c": pc}
  f1, v1 = projectors.init_projector(jax.random.key(1), 6, hidden=8, out=4)
  f2, v2 = projectors.init_projector(jax.random.key(2), 5, hidden=8, out=4)
  state = EXP.TrainState.create(apply_fn=None, params={"f1": v1["params"], "f2": v2["params"]},
                                batch_stats={"f1": v1["batch_stats"], "f2": v2["batch_stats"]}, tx=optax.sgd(0.0))
  mesh = train_lib.data_mesh()
  names = ("b", "b_prime", "pseudo_a", "pseudo_c")
  data = {k: distributed.shard_rows(arrays[k], 48, mesh=mesh) for k in names}
  step = jax.jit(lambda st, key: EXP.train_step(st, data, key, f1=f1, f2=f2, names=names, n=48,
                                                cfg_static=(48, 0.0, 0.1, 0.1, 1.0),
                                                sharding=NamedSharding(mesh, P("data"))))
  for i in range(200):
    state, _ = step(state, jax.random.key(i))
  for f, name, x, y in ((f1, "f1", b, pa), (f2, "f2", bp, pc)):
    v = {"params": state.params[name], "batch_stats": state.batch_stats[name]}
    z_train, _ = f.apply(v, np.concatenate([x, y]), train=True, mutable=["batch_stats"])
    z_eval = np.concatenate([f.apply(v, x, train=False), f.apply(v, y, train=False)])
    np.testing.assert_allclose(z_eval, z_train, atol=1e-4, err_msg=name)


def test_ablations_switch_off_exactly_their_terms():
  cfg = CONFIG.get_config("smoke")
  opts = {m: EXP.method_options(m, cfg) for m in EXP.VARIANTS}
  terms = lambda o: (o["pseudo_weight"] > 0, o["intra_weight"] > 0, o["noise_variance"] > 0, o["consistency"])
  assert terms(opts["cmcr"]) == (True, True, True, True)
  assert terms(opts["cmcr_ttc"]) == (False, False, True, True)
  assert terms(opts["cmcr_ttc_avc"]) == (True, False, True, True)
  assert terms(opts["cmcr_ttc_intra"]) == (False, True, True, True)
  assert terms(opts["cmcr_no_consistency"]) == (True, True, True, False)
  assert terms(opts["cmcr_no_noise"]) == (True, True, False, True)
  # L_ttc alone reads no pseudo embedding anywhere (no retrieval in its key either); without semantic consistency
  # the pseudo embeddings are the nearest memory rows
  assert EXP.train_names("cmcr_ttc", opts["cmcr_ttc"]) == ("b", "b_prime") and "retrieval" not in opts["cmcr_ttc"]
  assert EXP.train_names("cmcr_ttc_intra", opts["cmcr_ttc_intra"])[2:] == ("pseudo_a", "pseudo_c")
  assert EXP.train_names("cmcr_no_consistency", opts["cmcr_no_consistency"])[2:] == ("nearest_a", "nearest_c")
  assert opts["cmcr_no_consistency"]["retrieval"] == "nearest"
  assert opts["cmcr_noise_high"]["noise_variance"] == pytest.approx(4 * cfg.noise_variance)
  assert opts["cmcr_lambda_low"]["intra_weight"] == pytest.approx(0.1 * cfg.intra_weight)


def test_intra_term_closes_the_planted_modality_gap(tmp_path):
  # Planted spaces whose texts and images sit in different cones (measured gap ≈ 0.9 in each space). Only L_intra
  # pulls a text and its pseudo image together in the shared space: the gap left there shrinks with λ.
  files = save(str(tmp_path / "in"), make_spaces(n_eval=N_EVAL, gap=3.0))
  out = subprocess.run(launch(tmp_path / "w", files, "--config.steps=200",
                              "--config.methods=('cmcr_ttc_avc','cmcr','cmcr_lambda_high')"),
                       capture_output=True, text=True, timeout=600, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.load(open(tmp_path / "w" / "results.json"))
  assert min(r["gap_space_1"], r["gap_space_2"]) > 0.8, r
  g = {m: (r["methods"][m]["gap_1"], r["methods"][m]["gap_2"]) for m in r["methods"]}
  for k in (0, 1):
    assert g["cmcr"][k] < g["cmcr_ttc_avc"][k], g
    assert g["cmcr_lambda_high"][k] < 0.85 * g["cmcr_ttc_avc"][k], g


def test_zero_pair_baselines_and_paired_comparisons(files, tmp_path):
  # The spaces are linear images of one latent, so a least-squares map fitted on the shared texts is near-perfect
  # by construction; the pivot through the texts is far above chance. Every method gets a paired difference to
  # cmcr, and the goal test (cmcr − 0.85 × supervised) is the same bootstrap on scaled hits.
  methods = ("('cmcr','supervised','text_pivot','text_lstsq','wasserstein_procrustes','mini_vec2vec','text_anchored',"
             "'no_connection')")
  out = subprocess.run(launch(tmp_path, files, f"--config.methods={methods}"), capture_output=True, text=True,
                       timeout=600, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.load(open(tmp_path / "results.json"))
  res, comp = r["methods"], r["comparisons"]
  assert res["text_lstsq"]["a2c_r1"] > 0.8 and res["text_pivot"]["a2c_r1"] > 30 / N_EVAL, res
  assert res["text_anchored"]["a2c_r1"] > 30 / N_EVAL, res
  assert set(comp["a2c_r1"]) == {"supervised", "text_pivot", "text_lstsq", "wasserstein_procrustes", "mini_vec2vec",
                                 "text_anchored"}  # no per-query
  for m, d in comp["a2c_r1"].items():  # for no_connection at chance
    assert d["diff"] == pytest.approx(res["cmcr"]["a2c_r1"] - res[m]["a2c_r1"], abs=1e-9), m
    assert d["low"] <= d["diff"] <= d["high"]
  goal = comp["goal"]["a2c_r1"]  # every method but the ceiling against 0.85 × the ceiling, cmcr first
  assert list(goal)[0] == "cmcr" and set(goal) == set(comp["a2c_r1"]) - {"supervised"} | {"cmcr"}
  for m, d in goal.items():
    assert d["diff"] == pytest.approx(res[m]["a2c_r1"] - 0.85 * res["supervised"]["a2c_r1"], abs=1e-6), m
  h2h = comp["head_to_head"]["c2a_r1"]["text_anchored − mini_vec2vec"]
  assert h2h["diff"] == pytest.approx(res["text_anchored"]["c2a_r1"] - res["mini_vec2vec"]["c2a_r1"], abs=1e-9)
  assert "cmcr − 0.85 × supervised" in out.stdout and "| text_lstsq |" in out.stdout
  assert "| text_anchored − mini_vec2vec (seeds resampled too) |" in out.stdout
  # without cmcr (a rerun of stored cells), the goal and head-to-head rows remain
  out = subprocess.run(launch(tmp_path, files, "--config.methods=('mini_vec2vec','text_anchored','supervised')"),
                       capture_output=True, text=True, timeout=600, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.load(open(tmp_path / "results.json"))
  assert r["cells_run_now"] == 0 and r["comparisons"]["head_to_head"]["a2c_r1"]
  assert set(r["comparisons"]["goal"]["a2c_r1"]) >= {"mini_vec2vec", "text_anchored"}
  assert "| mini_vec2vec − 0.85 × supervised (> 0: reached) |" in out.stdout


def test_the_zero_pair_aligner_baseline_is_the_registry_fit_between_the_memories():
  # the baseline's R@1 is the registry's mini_vec2vec fitted on (A memory, C memory) with the seed's key and the
  # config's options, scored on the evaluation pairs (numpy argmax here)
  from sotalign_jax import aligners  # pylint: disable=g-import-not-at-top
  cfg = CONFIG.get_config("smoke")
  spaces = make_spaces(n_eval=N_EVAL)
  out, _ = EXP.baseline("mini_vec2vec", spaces, cfg, seed=1)
  fit = aligners.fit("mini_vec2vec", jax.random.fold_in(jax.random.key(cfg.seed), 1),
                     aligners.AlignData(x=spaces["a_memory"], y=spaces["c_memory"]), **EXP.method_options(
                         "mini_vec2vec", cfg))
  sim = np.asarray(fit.similarity(spaces["a_eval"], spaces["c_eval"]))
  assert out["a2c_r1"] == pytest.approx((sim.argmax(1) == np.arange(N_EVAL)).mean(), abs=1e-9)
  assert out["c2a_r1"] == pytest.approx((sim.argmax(0) == np.arange(N_EVAL)).mean(), abs=1e-9)


def test_the_zero_pair_aligner_baselines_are_keyed_by_every_option_they_run_with(monkeypatch):
  # the config's options over the registry's defaults: a changed library default is a new cell, not a stale one
  from sotalign_jax import aligners  # pylint: disable=g-import-not-at-top
  from sotalign_jax.aligners import unpaired  # pylint: disable=g-import-not-at-top
  cfg = CONFIG.get_config("smoke")
  opts = EXP.method_options("wasserstein_procrustes", cfg)
  assert opts["batch_size"] == cfg.baselines.wp.batch_size and opts["qap_inits"] == cfg.baselines.wp.qap_inits
  assert opts["kmeans_iters"] == aligners.get("wasserstein_procrustes").defaults["kmeans_iters"]
  assert opts["lap"] in ("scipy", "auction")  # "auto" keyed as the solver it stands for here (backend, cores)
  assert EXP.method_options("wasserstein_procrustes", CONFIG.get_config("demo"))["qap_inits"] == unpaired.WP_QAP_INITS
  spec = aligners.get("wasserstein_procrustes")
  monkeypatch.setitem(aligners.ALIGNERS, "wasserstein_procrustes",
                      spec._replace(defaults={**spec.defaults, "kmeans_iters": 7}))
  assert EXP.method_options("wasserstein_procrustes", cfg)["kmeans_iters"] == 7
  mv = EXP.method_options("mini_vec2vec", cfg)  # the same for the other zero-pair aligner, and text_anchored
  assert mv["num_runs"] == cfg.baselines.mv2v.num_runs and mv["smoothing"] == aligners.get("mini_vec2vec").defaults[
      "smoothing"]
  spec = aligners.get("mini_vec2vec")
  monkeypatch.setitem(aligners.ALIGNERS, "mini_vec2vec", spec._replace(defaults={**spec.defaults, "smoothing": 0.25}))
  assert EXP.method_options("mini_vec2vec", cfg)["smoothing"] == EXP.method_options("text_anchored", cfg)[
      "smoothing"] == 0.25
  # text_anchored reads the texts (npy: their files are in its key) and is keyed by its anchors and τ1;
  # mini_vec2vec reads the memories only
  cfg.data.update({k: f"/nonexistent/{k}.npy" for k in ("a_memory", "b", "b_prime", "c_memory")})
  cfg.data.source = "npy"
  seen = []
  monkeypatch.setattr(EXP.wd, "files_fingerprint", lambda files: seen.append(sorted(files)) or "fp")
  EXP.data_settings("text_anchored", cfg), EXP.data_settings("mini_vec2vec", cfg)
  assert seen == [["a_memory", "b", "b_prime", "c_memory"], ["a_memory", "c_memory"]]
  key = lambda m, c: EXP.method_options(m, c)  # noqa: E731
  before = {m: key(m, cfg) for m in ("text_anchored", "mini_vec2vec")}
  cfg.retrieval_temperature *= 2
  assert key("text_anchored", cfg) != before["text_anchored"] and key("mini_vec2vec", cfg) == before["mini_vec2vec"]
  cfg.retrieval_temperature /= 2
  cfg.baselines.anchors += 1
  assert key("text_anchored", cfg) != before["text_anchored"]


def _rotated_spaces(seed=0, *, n=1500, d=16, k=20, shuffle_texts=False):
  """Two spaces that are one rotation ``Q`` of each other (unit rows of a 20-cluster mixture in d = 16, sampled
  independently for each memory), texts whose second-space rows are the first's rotated (or, with
  ``shuffle_texts``, the rotated rows of *other* texts) and held-out pairs ``(e, e Q)``."""
  rng = np.random.default_rng(seed)
  means = 3.0 * rng.standard_normal((k, d))

  def draw(m):
    z = means[rng.integers(k, size=m)] + 0.6 * rng.standard_normal((m, d))
    return z / np.linalg.norm(z, axis=1, keepdims=True)

  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  texts, ev = draw(600), draw(300)
  f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
  return f32(q), {"a_memory": f32(draw(n)), "c_memory": f32(draw(n) @ q), "b": f32(texts),
                  "b_prime": f32((rng.permutation(texts) if shuffle_texts else texts) @ q),
                  "a_eval": f32(ev), "c_eval": f32(ev @ q)}


def test_text_anchored_recovers_a_rotation_from_the_texts_pseudo_pairs(monkeypatch):
  # The anchors are the soft-retrieved memory rows of the drawn texts (numpy softmax written here), and with them
  # the refinement recovers the planted rotation; with the texts' second-space rows shuffled the anchors pair
  # unrelated points and it does not.
  from sotalign_jax.aligners import unpaired  # pylint: disable=g-import-not-at-top
  cfg = CONFIG.get_config("smoke")
  o = EXP.method_options("text_anchored", cfg)
  assert o["anchors"] == cfg.baselines.anchors and o["refine1_iterations"] == cfg.baselines.mv2v.refine1_iterations
  q, spaces = _rotated_spaces()
  seen = {}
  real = unpaired._mv2v_refine
  monkeypatch.setattr(unpaired, "_mv2v_refine", lambda *a, **kw: seen.update(args=a) or real(*a, **kw))
  al = EXP.text_anchored(jax.random.key(0), spaces, o)
  _, px, py, ax, ay = seen["args"]
  for prepared, mem, mean in ((px, spaces["a_memory"], al.mx), (py, spaces["c_memory"], al.my)):
    np.testing.assert_allclose(np.asarray(mean), mem.mean(0), atol=1e-6)  # centred with the memory's own mean
    centred = mem - mem.mean(0)
    np.testing.assert_allclose(np.asarray(prepared), centred / np.linalg.norm(centred, axis=1, keepdims=True),
                               atol=1e-5)
  retrieved = []
  for texts, mem in ((spaces["b"], spaces["a_memory"]), (spaces["b_prime"], spaces["c_memory"])):
    logits = texts.astype(np.float64) @ mem.T / o["retrieval_temperature"]
    w = np.exp(logits - logits.max(1, keepdims=True))
    pooled = (w / w.sum(1, keepdims=True)) @ mem
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    centred = pooled - mem.mean(0)
    retrieved.append(centred / np.linalg.norm(centred, axis=1, keepdims=True))
  rows = [int(np.argmin(np.abs(retrieved[0] - np.asarray(r)).sum(1))) for r in np.asarray(ax)]
  assert len(set(rows)) == len(rows) == min(o["anchors"], len(spaces["b"]))  # distinct texts, each one's pair
  np.testing.assert_allclose(np.asarray(ax), retrieved[0][rows], atol=2e-4)
  np.testing.assert_allclose(np.asarray(ay), retrieved[1][rows], atol=2e-4)
  assert np.linalg.norm(np.asarray(al.wx) - q) / np.linalg.norm(q) < 0.1
  r1 = lambda a: (np.asarray(a.similarity(spaces["a_eval"], spaces["c_eval"])).argmax(1)  # noqa: E731
                  == np.arange(len(spaces["a_eval"]))).mean()
  assert r1(al) > 0.9
  _, shuffled = _rotated_spaces(shuffle_texts=True)
  assert r1(EXP.text_anchored(jax.random.key(0), shuffled, o)) < 0.5
