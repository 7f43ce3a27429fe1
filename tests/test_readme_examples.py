"""The README's examples, run as written.

**Python blocks.** Every ```python block of README.md runs, each in a fresh interpreter with a timeout, unless the
line before it is an HTML comment ``<!-- not-run: reason -->`` (blocks that need downloaded data caches or model
weights); those are reported as skipped with their reason (``pytest -rs``), never dropped silently. Fragments that
stand for the reader's own data (``x``, ``y``, ``image_layers``, ``f(x_unpaired)``, ...) get the small synthetic
values of :data:`PLACEHOLDERS`, together with ``import jax, jax.numpy as jnp, numpy as np``; a block that uses a
name defined neither by itself nor there fails with a ``NameError``.

**Config overrides.** Every command ``python experiments/NAME.py --config configs/NAME.py[:ARG] ...`` in the README
(code blocks and inline code) must name keys that exist in ``configs/NAME.py``'s ``get_config(ARG)``; a key the
README shows being rejected (``unknown config key --config.KEY``) must not exist, and the key it suggests must.
An override outside such a command must exist in the config of its section (the nearest ``###`` heading, or a
``####`` below it, that names ``configs/NAME.py``), or, in a section that names none, in at least one experiment's
config.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TIMEOUT_S = 180

PLACEHOLDERS = textwrap.dedent("""\
    import jax, jax.numpy as jnp, numpy as np
    _r = np.random.default_rng(0)
    _f32 = lambda *shape: _r.normal(size=shape).astype(np.float32)
    x, y = _f32(48, 12), _f32(48, 10)                              # paired features of the same samples
    image_layers, text_layers = [x, 2 * x[:, :6]], [y, _f32(48, 5)]  # per-layer features of the same samples
    x_unpaired, y_unpaired = _f32(32, 12), _f32(32, 10)            # unpaired batches
    _wf, _wg = _f32(12, 8), _f32(10, 8)
    f = lambda v: v @ _wf                                          # the heads being trained
    g = lambda v: v @ _wg
    teacher_x, teacher_y = _f32(32, 6), _f32(32, 6)                # a teacher's embeddings of the same batches
    img, txt = _f32(16, 8), _f32(16, 8)                            # a paired batch's embeddings
    params = {"t_log": jnp.log(10.0), "bias": jnp.asarray(-10.0)}
    alpha = 10.0
    xb, yb, xq, yq = _f32(40, 12), _f32(40, 10), _f32(20, 12), _f32(20, 10)   # base pairs, queries
    """)


class Block(NamedTuple):
  line: int           # line of the opening fence
  code: str
  not_run: str | None  # the reason given in <!-- not-run: reason -->, or None


_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->\s*$")


def readme_text() -> str:
  return README.read_text(encoding="utf-8")


def python_blocks(text: str) -> list[Block]:
  """The ```python blocks of ``text``, each with the reason of a ``<!-- not-run: ... -->`` line just above it."""
  blocks = []
  for m in _FENCE.finditer(text):
    if m.group(1) != "python":
      continue
    before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
    skip = _NOT_RUN.match(before.strip())
    blocks.append(Block(text.count("\n", 0, m.start()) + 1, m.group(2), skip.group(1) if skip else None))
  return blocks


def run_block(code: str, *, prelude: str = PLACEHOLDERS, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  return subprocess.run([sys.executable, "-c", prelude + "\n" + code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


_BLOCKS = python_blocks(readme_text())


def test_the_readme_has_python_blocks_and_every_not_run_gives_a_reason():
  assert len(_BLOCKS) >= 1  # the front page's example; the guides' blocks (docs/) are run by the docs' own test
  for b in _BLOCKS:
    assert b.not_run is None or len(b.not_run) >= 10, f"README.md:{b.line}: say why the block is not run"


@pytest.mark.parametrize("block", _BLOCKS, ids=[f"README.md:{b.line}" for b in _BLOCKS])
def test_python_block_runs_as_written(block):
  if block.not_run is not None:
    pytest.skip(f"README.md:{block.line} is marked not-run: {block.not_run}")
  out = run_block(block.code)
  assert out.returncode == 0, f"README.md:{block.line} failed:\n{block.code}\n--- stderr ---\n{out.stderr[-3000:]}"


# ----------------------------------------------------------------------------------------------------------------
# --config overrides named in the README.
# ----------------------------------------------------------------------------------------------------------------
_CODE = re.compile(r"```[^\n]*\n(.*?)^```|`([^`]+)`", re.S | re.M)
_COMMAND = re.compile(r"python\s+experiments/(\w+)\.py\b(.*)")
_CONFIG_ARG = re.compile(r"--config\s+configs/(?:proj/)?(\w+)(?:/config)?\.py(?::(\S+))?")  # or an engine preset
_OVERRIDE = re.compile(r"--config\.([A-Za-z_][\w.]*)")
_REJECTED = re.compile(r"unknown config key --config\.([\w.]+); did you mean --config\.([\w.]+)\?")


_HEADING = re.compile(r"^(#{2,6}) (.*)$", re.M)


def _code_lines(text: str):
  """``(position, line)`` of every shell line (continuations joined) of a code block or inline code span."""
  for m in _CODE.finditer(text):
    code = (m.group(1) if m.group(1) is not None else m.group(2).replace("\n", " ")).replace("\\\n", " ")
    for line in code.splitlines():
      yield m.start(), line


def _section_config(text: str, pos: int) -> str | None:
  """The experiment config named by the section around ``pos`` (see the module docstring), or ``None``."""
  for h in reversed([h for h in _HEADING.finditer(text) if h.start() < pos]):
    named = re.search(r"configs/(?:proj/)?(\w+)(?:/config)?\.py", h.group(2))
    if named:
      return named.group(1)
    if len(h.group(1)) <= 3:
      return None
  return None


def _config_file(name: str):
  """``configs/proj/<name>/config.py`` (an engine preset) if there is one, else ``configs/<name>.py``."""
  proj = ROOT / "configs" / "proj" / name / "config.py"
  return proj if proj.exists() else ROOT / "configs" / f"{name}.py"


@functools.lru_cache(maxsize=None)
def _config(name: str, arg: str | None):
  spec = importlib.util.spec_from_file_location(f"_readme_cfg_{name}", _config_file(name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _has_key(cfg, key: str) -> bool:
  for part in key.split("."):
    if not hasattr(cfg, "keys") or part not in cfg.keys():
      return False
    cfg = cfg[part]
  return True


def _placeholder(key: str) -> bool:
  return key.endswith(".") or key.upper() == key or key in ("key",)


def config_override_problems(text: str) -> list[str]:
  """Every README override that does not resolve as described in the module docstring."""
  problems, loose = [], {}
  rejected = dict(_REJECTED.findall(text))
  for name_cfg in rejected.values():
    if not any(_has_key(_config(n, None), name_cfg) for n in _experiment_names()):
      problems.append(f"suggested key --config.{name_cfg} exists in no config")
  for pos, line in _code_lines(text):
    m = _COMMAND.search(line)
    keys = [k for k in _OVERRIDE.findall(line) if not _placeholder(k)]
    ca = _CONFIG_ARG.search(line)
    if m is None or not ca or ca.group(1) != m.group(1) or "[" in (ca.group(2) or "") or ca.group(1).isupper():
      loose.update((k, _section_config(text, pos)) for k in keys)  # (isupper: the generic experiments/NAME.py)
      continue
    name, arg = ca.group(1), ca.group(2)
    if not _config_file(name).exists():
      problems.append(f"{line.strip()}: there is no configs/{name}.py")
      continue
    cfg = _config(name, arg)
    for key in keys:
      if key in rejected:
        if _has_key(cfg, key):
          problems.append(f"{line.strip()}: the README shows --config.{key} rejected, but configs/{name}.py has it")
      elif not _has_key(cfg, key):
        problems.append(f"{line.strip()}: configs/{name}.py:{arg or ''} has no key {key}")
  for key, section in sorted(loose.items(), key=str):
    if key in rejected:
      continue
    if section is not None and not _has_key(_config(section, None), key):
      problems.append(f"--config.{key} is in the section of configs/{section}.py, which has no such key")
    elif section is None and not any(_has_key(_config(n, None), key) for n in _experiment_names()):
      problems.append(f"--config.{key} is a key of no experiment config")
  return problems


def _experiment_names() -> list[str]:
  names = {p.stem for p in (ROOT / "configs").glob("*.py")} | {p.parent.name for p in
                                                                 (ROOT / "configs" / "proj").glob("*/config.py")}
  return sorted(n for n in names if (ROOT / "experiments" / f"{n}.py").exists())


def test_config_overrides_in_the_readme_exist_in_the_configs_they_name():
  problems = config_override_problems(readme_text())
  assert not problems, "\n".join(problems)


def test_the_override_check_catches_a_key_of_the_wrong_experiment():
  """The check itself: ``shard_klot`` is a key of ``hparams.sotalign`` (in the benchmark's and the SOTAlign
  presets), not of a top-level ``sotalign`` section (the SOTAlign experiment's before it became an engine preset)."""
  bad = ("`python experiments/sotalign.py --config configs/proj/sotalign/config.py --workdir w "
         "--config.sotalign.shard_klot=true`")
  good = ("`python experiments/benchmark.py --config configs/proj/benchmark/config.py --workdir w "
          "--config.hparams.sotalign.shard_klot=true`")
  assert config_override_problems(good) == []
  assert any("has no key sotalign.shard_klot" in p for p in config_override_problems(bad))
  assert any("no experiment config" in p for p in config_override_problems("`--config.sotalign.shard_klot=1`"))
  section = "### SOTAlign (`configs/proj/sotalign/config.py`)\n\nKLOT row-sharded: `--config.sotalign.shard_klot=true`."
  assert any("section of configs/sotalign.py" in p for p in config_override_problems(section))


# ----------------------------------------------------------------------------------------------------------------
# The README's list of what runs inside jax.jit and what is a host-side driver (ot, cka, teachers, metrics and qap
# are checked in their own test files).
# ----------------------------------------------------------------------------------------------------------------
def _inputs():
  import jax.numpy as jnp
  import numpy as np

  r = np.random.default_rng(0)
  f32 = lambda *shape: jnp.asarray(r.normal(size=shape), jnp.float32)  # noqa: E731
  return dict(x=f32(12, 5), y=f32(12, 4), z=f32(12, 5), k=f32(12, 12), xb=f32(6, 5), yb=f32(6, 4), xq=f32(6, 5),
              yq=f32(6, 4), v=f32(12))


def _traceable():
  import jax
  from sotalign_jax import cmcr, losses, matching, metrics, objectives, scores

  key = jax.random.key(0)

  def batch(i):
    return objectives.UnpairedBatch(i["x"], i["y"], i["z"], i["z"], i["z"], i["z"], 10.0, -10.0, i["xb"], i["yb"],
                                    i["xq"], i["xq"])

  term_options = {"klot": dict(eps_student=0.05, eps_teacher=0.01, sinkhorn_iters=10),
                  "sinkhorn_divergence": dict(eps_student=0.5), "structure": dict(temperature=0.1),
                  "pseudo_label": dict(eps=0.05)}
  cases = {
      "losses.siglip_loss": lambda i: losses.siglip_loss(i["x"], i["z"], t_log=2.3, bias=-10.0),
      "losses.info_nce": lambda i: losses.info_nce(i["x"], i["z"], temperature=0.1),
      "losses.structure_regularizer": lambda i: losses.structure_regularizer(i["x"], i["y"], temperature=0.1),
      "objectives.klot_term": lambda i: objectives.klot_term(
          batch(i), **term_options["klot"]),
      "matching.kernel_matrix": lambda i: matching.kernel_matrix(i["x"]),
      "matching.centered_kernel": lambda i: matching.centered_kernel(i["x"]),
      "matching.stretch": lambda i: matching.stretch(i["x"]),
      "matching.kmeans_base_selection": lambda i: matching.kmeans_base_selection(i["x"], 3, key=key),
      "matching.local_cka_scores": lambda i: matching.local_cka_scores(i["xb"], i["yb"], i["xq"], i["yq"]),
      "matching.local_cka_retrieve": lambda i: matching.local_cka_retrieve(i["xb"], i["yb"], i["xq"], i["yq"], k=2),
      "matching.linreg_scores": lambda i: matching.linreg_scores(i["xb"], i["yb"], i["xq"], i["yq"]),
      "matching.relative_retrieve": lambda i: matching.relative_retrieve(i["xb"], i["yb"], i["xq"], i["yq"], k=2),
      "matching.relative_scores": lambda i: matching.relative_scores(i["xb"], i["yb"], i["xq"], i["yq"]),
      "matching.linreg_retrieve": lambda i: matching.linreg_retrieve(i["xb"], i["yb"], i["xq"], i["yq"], k=2),
      "matching.retrieve_scores": lambda i: matching.retrieve_scores(i["k"], 2),
      "cmcr.soft_retrieve": lambda i: cmcr.soft_retrieve(i["x"], i["z"], temperature=0.1),
      "cmcr.cmcr_objective": lambda i: cmcr.cmcr_objective(i["x"], i["z"], i["x"], i["z"], temperature=0.1),
      "cmcr.semantic_noise": lambda i: cmcr.semantic_noise(key, i["x"], variance=0.01),
      "cmcr.intra_alignment": lambda i: cmcr.intra_alignment(i["x"], i["z"]),
      "cmcr.normalize": lambda i: cmcr.normalize(i["x"]),
      "metrics.normalize": lambda i: metrics.normalize(i["x"]),
      "scores.score_grid": lambda i: scores.score_grid([i["x"]], [i["y"]], n_perm=4, key=key).z,
      "scores.calibrated": lambda i: scores.calibrated("linear_cka", i["x"], i["y"], n_perm=4, n_boot=4, key=key).z,
  }
  for name, fn in objectives.UNPAIRED_TERMS.items():
    if name == "sinkhorn_divergence":  # ot.sinkhorn_divergence under jit is tested in test_ot.py (4 s of ott here)
      continue
    cases[f"objectives.UNPAIRED_TERMS[{name!r}]"] = (
        lambda i, fn=fn, o=term_options.get(name, {}): fn(batch(i), **o))
  return cases


def _host_side():
  import jax
  from sotalign_jax import cmcr, matching, stats

  return {
      "matching.qap_match": lambda i: matching.qap_match(i["xb"], i["yb"], i["xq"], i["yq"], n_init=2,
                                                         key=jax.random.key(0)),
      "matching.local_cka_match": lambda i: matching.local_cka_match(i["xb"], i["yb"], i["xq"], i["yq"]),
      "matching.linreg_match": lambda i: matching.linreg_match(i["xb"], i["yb"], i["xq"], i["yq"]),
      "matching.relative_match": lambda i: matching.relative_match(i["xb"], i["yb"], i["xq"], i["yq"]),
      "matching.match_scores": lambda i: matching.match_scores(i["k"]),
      "stats.seed_interval": lambda i: stats.seed_interval(i["v"]),
      "stats.t_cdf": lambda i: stats.t_cdf(i["v"][0], 5.0),
      "stats.paired_difference": lambda i: stats.paired_difference(i["v"], i["v"] + 1.0, n_boot=10),
      "cmcr.check_spaces": lambda i: cmcr.check_spaces(a_memory=i["x"], b=i["z"], b_prime=i["y"], c_memory=i["y"]),
  }


def test_what_the_readme_lists_as_jit_able_equals_its_eager_call_under_jit():
  import jax
  import numpy as np

  inputs, failures = _inputs(), []
  for name, fn in _traceable().items():
    try:
      jax.tree.map(lambda e, j: np.testing.assert_allclose(np.asarray(j, np.float64), np.asarray(e, np.float64),
                                                           rtol=1e-4, atol=1e-5), fn(inputs), jax.jit(fn)(inputs))
    except Exception as e:  # noqa: BLE001 - collect every failure, then report them together
      failures.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
  assert not failures, "\n".join(failures)


def test_what_the_readme_lists_as_host_side_works_eagerly_and_not_under_jit():
  """If one of these becomes traceable, move it to the README's jit-able list (and into the test above)."""
  import jax

  inputs = _inputs()
  for name, fn in _host_side().items():
    fn(inputs)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - any tracer error: they convert to NumPy
      jax.jit(fn)(inputs)
    assert "Tracer" in type(caught.value).__name__ or "traced" in str(caught.value).lower(), (name, caught.value)
