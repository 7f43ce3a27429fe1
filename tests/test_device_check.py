"""``benchmarks/device_check.py --small`` on the CPU, in a subprocess: the JSON's keys, every figure's fields, and
the agreement checks (the auction's and scipy's maps on the planted zero-pair problem, FAQ's auction objective
against scipy's, finite KLOT values and training losses, no n × n matrix in linear CKA)."""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = os.path.join(REPO, "benchmarks", "device_check.py")
SECTIONS = ("klot", "step", "zero_pair", "faq", "scores", "encoders")
FIGURES = (
    [f"klot.n{i}.{k}" for i in range(1, 5) for k in ("time_s", "memory_bytes", "bandwidth_fraction")]
    + ["step.paper_time_s", "step.siglip_time_s", "step.paper_memory_bytes", "step.train_2000_steps_s"]
    + [f"zero_pair.{k}" for k in ("init_s", "refine_s", "total_s", "speedup", "w_rel_diff", "foscttm")]
    + ["faq.time_s", "faq.speedup", "faq.best_objective"]
    + [f"scores.{k}" for k in ("linear_cka_time_s", "linear_cka_peak_fraction", "linear_cka_temp_bytes",
                               "grid_time_s", "grid_peak_fraction")]
    + [f"encoders.{m}_{k}" for m, k in (("minilm", "sentences_per_s"), ("minilm", "peak_fraction"),
                                         ("mpnet", "sentences_per_s"), ("mpnet", "peak_fraction"),
                                         ("lite0", "images_per_s"), ("lite0", "peak_fraction"))])
FIELDS = {"value", "unit", "reference", "reference_is", "bound", "bound_is", "goal", "ok", "size", "skipped"}


def _run(tmp_path, *args) -> tuple[dict, str, str]:
  out = tmp_path / "device_check.json"
  proc = subprocess.run([sys.executable, SCRIPT, "--small", "--out", str(out), *args], cwd=REPO, capture_output=True,
                        text=True, timeout=900, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(out.read_text()), proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  return _run(tmp_path_factory.mktemp("device_check"))


def test_meta_records_the_run(small):
  doc, _, err = small
  meta = doc["meta"]
  for key in ("backend", "device_kind", "devices", "jax_version", "git_commit", "date", "sizes", "peaks"):
    assert meta[key], key
  assert meta["backend"] == "cpu" and meta["small"] is True
  assert meta["xla_python_client_preallocate"]["set_to"] == "false"
  assert "XLA_PYTHON_CLIENT_PREALLOCATE=false" in err  # said in the progress lines (stderr)
  assert set(SECTIONS) <= set(meta["sizes"]) and list(doc["sections"]) == list(SECTIONS)
  assert all(doc["sections"][s]["run"] for s in SECTIONS)
  assert meta["peaks"]["bandwidth_Bps"] > 0 and meta["peaks"]["matmul_fp32_highest_gflops"] > 0


def test_every_figure_has_value_reference_and_bound(small):
  doc, _, _ = small
  assert sorted(doc["figures"]) == sorted(FIGURES)
  for name, fig in doc["figures"].items():
    assert set(fig) == FIELDS, name
    if fig["skipped"] is not None:  # only an encoder whose weights (or packages) are not installed
      assert name.startswith("encoders.") and fig["skipped"].startswith("skipped:"), (name, fig)
      assert fig["value"] is None
      continue
    for key in ("value", "reference", "bound"):
      assert isinstance(fig[key], float) and math.isfinite(fig[key]), (name, key, fig[key])
    assert fig["reference_is"] and fig["bound_is"], name
    if name.endswith(("_s", "_bytes", "fraction", "speedup", "_per_s")):
      assert fig["value"] > 0, (name, fig)


def test_agreement_numbers_are_sane(small):
  doc, _, _ = small
  figs, sections = doc["figures"], doc["sections"]
  # The auction and scipy assignments give the same map on the planted zero-pair problem, and it is the answer.
  w = figs["zero_pair.w_rel_diff"]
  assert w["ok"] and w["value"] <= w["bound"] <= 1e-2
  assert figs["zero_pair.foscttm"]["ok"] and figs["zero_pair.foscttm"]["value"] <= 0.01
  assert sections["zero_pair"]["quality"]["auction"]["w_rel_err"] < 0.05
  assert sections["zero_pair"]["auction"]["assignment"] == "auction"
  assert sections["zero_pair"]["scipy"]["n_lsa"] > 0  # the scipy fit's assignments did run on the host
  # FAQ with lap="auction": the best objective equals or beats scipy's (up to the tolerance).
  faq = figs["faq.best_objective"]
  assert faq["ok"] and faq["value"] >= faq["bound"]
  assert sections["faq"]["lap"] == "auction"
  # KLOT and both training steps are finite; memory within the machine; linear CKA forms no n x n matrix.
  assert all(r["finite"] for r in sections["klot"]["rows"])
  assert figs["step.paper_time_s"]["ok"] and figs["step.siglip_time_s"]["ok"]
  assert "dense" in sections["step"]["klot"]
  assert all(figs[f"klot.n{i}.memory_bytes"]["ok"] for i in range(1, 5))
  assert figs["scores.linear_cka_temp_bytes"]["ok"]
  # Performance goals are the full size's: not judged at --small.
  assert figs["zero_pair.speedup"]["ok"] is None and figs["faq.speedup"]["ok"] is None


def test_stdout_is_the_table_then_the_json(small):
  doc, out, _ = small
  table, _, rest = out.partition("\n\n{")
  assert table.startswith("| figure |")
  assert all(f"| {name} |" in table for name in FIGURES)
  assert json.loads("{" + rest)["figures"] == doc["figures"]


def test_only_selects_sections(tmp_path):
  doc, _, _ = _run(tmp_path, "--only", "klot")
  assert doc["meta"]["sections"] == ["klot"]
  assert all(name.startswith("klot.") for name in doc["figures"]) and len(doc["figures"]) == 12
  assert doc["sections"]["klot"]["run"] and not any(doc["sections"][s]["run"] for s in SECTIONS[1:])
