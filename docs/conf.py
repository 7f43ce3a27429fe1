"""Sphinx configuration of the sotalign-jax documentation (``make docs``; warnings are errors).

The API pages are written at build time from the package itself (:func:`write_api_pages`, into ``api/generated/``,
which git ignores): one page per public module, every name of its ``__all__`` (or, without one, every public
function and class it defines), a summary table, then the full docstrings. A name a package re-exports from one of
its submodules is documented once, on the package's page. The tutorials are the notebooks of ``notebooks/``
(copied into ``tutorials/`` at build time, git ignores the copies), executed by myst-nb on the small synthetic cache
of ``notebooks/_data.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

# The notebooks import their helper module `_data` from their own folder; the kernel myst-nb starts inherits this.
# They run on the planted synthetic cache (never a download, the same output everywhere) unless the builder names a
# real cache in SOTALIGN_NOTEBOOK_CACHE.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "notebooks"), str(ROOT), os.environ.get("PYTHONPATH", "")])
os.environ.setdefault("SOTALIGN_NOTEBOOK_CACHE", "/no-cache-in-the-docs-build")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import sphinxcontrib.bibtex.plugin  # noqa: E402
from sphinxcontrib.bibtex.style.referencing import BracketStyle  # noqa: E402
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle  # noqa: E402

import sotalign_jax  # noqa: E402

project = "sotalign-jax"
author = "the sotalign-jax authors"
copyright = "2026, the sotalign-jax authors"  # noqa: A001 - the name Sphinx reads
release = version = sotalign_jax.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxcontrib.bibtex",
]

exclude_patterns = ["_build", "README.md", "**/.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"

# ---------------------------------------------------------------------------------------------------------------------
# Warnings are errors (`make docs` runs sphinx-build -W --keep-going -n). Nitpicky mode checks every cross-reference,
# including every type of every signature. There is no network at build time, hence no intersphinx inventory: the few
# types of other libraries that the signatures use link to their documentation through EXTERNAL below (resolved by
# _resolve_external); a new one fails the build until it is added there. Nothing is ignored.
# ---------------------------------------------------------------------------------------------------------------------
nitpicky = True
_JAX = "https://docs.jax.dev/en/latest/_autosummary/"
_PY = "https://docs.python.org/3/library/"
EXTERNAL = {
    "jax.Array": _JAX + "jax.Array.html",
    "jax.jaxlib._jax.Array": _JAX + "jax.Array.html",  # what jax.Array's annotations resolve to
    "jax.pure_callback": _JAX + "jax.pure_callback.html",
    "jax.lax.PrecisionLike": _JAX + "jax.lax.Precision.html",
    "jax.sharding.Mesh": "https://docs.jax.dev/en/latest/jax.sharding.html#jax.sharding.Mesh",
    "numpy.ndarray": "https://numpy.org/doc/stable/reference/generated/numpy.ndarray.html",
    "np.ndarray": "https://numpy.org/doc/stable/reference/generated/numpy.ndarray.html",
    "numpy.bool": "https://numpy.org/doc/stable/reference/arrays.scalars.html#numpy.bool",
    "numpy.number": "https://numpy.org/doc/stable/reference/arrays.scalars.html#numpy.number",
    "flax.linen.module.Module": "https://flax-linen.readthedocs.io/en/latest/api_reference/flax.linen/module.html",
    "ml_collections.config_dict.config_dict.ConfigDict": "https://ml-collections.readthedocs.io/en/latest/",
    "orbax.checkpoint.CheckpointManager":
        "https://orbax.readthedocs.io/en/latest/api_reference/checkpoint.checkpoint_manager.html",
    "ml_dtypes": "https://github.com/jax-ml/ml_dtypes",
    "Image.Image": "https://pillow.readthedocs.io/en/stable/reference/Image.html#PIL.Image.Image",
    "os.PathLike": _PY + "os.html#os.PathLike",
    "pathlib.Path": _PY + "pathlib.html#pathlib.Path",
    "pickle.Unpickler": _PY + "pickle.html#pickle.Unpickler",
    "pickle.UnpicklingError": _PY + "pickle.html#pickle.UnpicklingError",
    "types.ModuleType": _PY + "types.html#types.ModuleType",
}

# ---------------------------------------------------------------------------------------------------------------------
# Autodoc: Google-style docstrings (napoleon), types in the description, members in source order.
# ---------------------------------------------------------------------------------------------------------------------
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
# PrecisionLike, a union of seven jax types, is shown and linked by name. (ArrayLike is not: Sphinx cannot resolve an
# alias inside a union such as ``ArrayLike | None``, so it is spelt out as its types, see numpy.bool/numpy.number.)
autodoc_type_aliases = {"PrecisionLike": "jax.lax.PrecisionLike"}
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
autodoc_class_signature = "separated"
autodoc_default_options = {"exclude-members": "count, index, __init__, __new__"}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
python_use_unqualified_type_names = True
add_module_names = False
maximum_signature_line_length = 100

# ---------------------------------------------------------------------------------------------------------------------
# Citations: one references.bib; `:cite:p:` / `:cite:t:` in docstrings and pages, the list on bibliography.md.
# ---------------------------------------------------------------------------------------------------------------------
bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year_round"


def _round() -> BracketStyle:
  return BracketStyle(left="(", right=")")


@dataclasses.dataclass
class _AuthorYearRound(AuthorYearReferenceStyle):
  """Author–year citations in round brackets, "(Cuturi, 2013)", as the docstrings write them."""
  bracket_parenthetical: BracketStyle = dataclasses.field(default_factory=_round)
  bracket_textual: BracketStyle = dataclasses.field(default_factory=_round)
  bracket_author: BracketStyle = dataclasses.field(default_factory=_round)
  bracket_label: BracketStyle = dataclasses.field(default_factory=_round)
  bracket_year: BracketStyle = dataclasses.field(default_factory=_round)


sphinxcontrib.bibtex.plugin.register_plugin("sphinxcontrib.bibtex.style.referencing", "author_year_round",
                                            _AuthorYearRound)
bibtex_default_style = "plain"

# ---------------------------------------------------------------------------------------------------------------------
# MyST and the notebooks. Every notebook runs at each build (CI builds from a clean clone, where a cache would be
# empty anyway); `make docs NB_EXECUTION=cache` keeps a jupyter-cache in _build/.jupyter_cache for local rebuilds.
# ---------------------------------------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("NB_EXECUTION", "force")
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_merge_streams = True

# ---------------------------------------------------------------------------------------------------------------------
# HTML.
# ---------------------------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"sotalign-jax {version}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {"navigation_with_keys": True}
pygments_style = "friendly"
pygments_dark_style = "monokai"


# ---------------------------------------------------------------------------------------------------------------------
# The API pages, written from the package at build time.
# ---------------------------------------------------------------------------------------------------------------------
API_OUT = DOCS / "api" / "generated"


def public_modules() -> list[str]:
  """Every module of the package whose dotted path has no part starting with an underscore, in walk order."""
  names = ["sotalign_jax"]
  for info in pkgutil.walk_packages(sotalign_jax.__path__, prefix="sotalign_jax."):
    if not any(part.startswith("_") for part in info.name.split(".")):
      names.append(info.name)
  return sorted(names)


def _assigned_constants(module) -> list[str]:
  """UPPER_CASE names assigned at the top level of ``module``'s own source."""
  try:
    source = inspect.getsource(module)
  except (OSError, TypeError):
    return []
  return re.findall(r"^([A-Z][A-Z0-9_]*)\s*(?::[^=\n]+)?=", source, re.M)


def _signature_classes(module, names: list[str]) -> list[str]:
  """Public classes of ``module`` outside ``names`` that the annotations of the functions in ``names`` mention."""
  found = []
  for name in names:
    obj = getattr(module, name, None)
    annotations = getattr(obj, "__annotations__", {}) if inspect.isfunction(obj) else {}
    for annotation in annotations.values():
      text = annotation if isinstance(annotation, str) else repr(annotation)
      for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text):
        cls = getattr(module, word, None)
        if (not word.startswith("_") and word not in names and word not in found and inspect.isclass(cls)
            and cls.__module__ == module.__name__):
          found.append(word)
  return found


def _own_public_names(module) -> list[str]:
  """``__all__``, or the public functions, classes and UPPER_CASE constants defined in ``module`` itself; then the
  module's own classes that those functions' signatures name (a public function's types are documented too)."""
  if hasattr(module, "__all__"):
    names = list(module.__all__)
  else:
    names = []
    for name, obj in vars(module).items():
      if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
        continue
      if getattr(obj, "__module__", None) == module.__name__:
        names.append(name)
    names += [n for n in dict.fromkeys(_assigned_constants(module)) if n not in names and hasattr(module, n)]
  return names + _signature_classes(module, names)


def documented_members(modname: str) -> list[tuple[str, str]]:
  """``(name, kind)`` of what ``modname``'s page documents; kind is function, class, module or data.

  A name that the parent package lists in its ``__all__`` (the same object) is documented on the parent's page.
  """
  module = importlib.import_module(modname)
  parent = importlib.import_module(modname.rsplit(".", 1)[0]) if "." in modname else None
  parent_all = set(getattr(parent, "__all__", ())) if parent is not None else set()
  out = []
  for name in _own_public_names(module):
    obj = getattr(module, name)
    if name in parent_all and getattr(parent, name, None) is obj:
      continue
    if inspect.ismodule(obj):
      kind = "module"
    elif inspect.isclass(obj):
      kind = "class"
    elif callable(obj) and (inspect.isfunction(obj) or inspect.isbuiltin(obj) or hasattr(obj, "__wrapped__")):
      kind = "function"
    else:
      kind = "data"
    out.append((name, kind))
  return out


_SECTIONS = (("class", "Classes", "autoclass", "   :members:\n   :show-inheritance:"),
             ("function", "Functions", "autofunction", ""),
             ("data", "Constants and registries", "autodata", ""))
_SHORT_VALUE = 160  # a constant's value is shown when its repr is at most this long (names, defaults, sizes)


def _data_options(module, name: str) -> str:
  value = getattr(module, name)
  simple = isinstance(value, (str, int, float, tuple, frozenset)) and len(repr(value)) <= _SHORT_VALUE
  return "" if simple else "   :no-value:"


def module_page(modname: str) -> str:
  """The reStructuredText of one module's API page."""
  members = documented_members(modname)
  title = f"``{modname}``"
  lines = [title, "=" * len(title), "", f".. automodule:: {modname}", "   :no-members:", "",
           f".. currentmodule:: {modname}", ""]
  listed = [name for name, kind in members if kind != "module"]
  if listed:
    lines += [".. autosummary::", "   :nosignatures:", ""] + [f"   {n}" for n in listed] + [""]
  submodules = [name for name, kind in members if kind == "module"]
  if submodules:
    lines += ["Submodules: " + ", ".join(f":mod:`~{modname}.{n}`" for n in submodules) + ".", ""]
  module = importlib.import_module(modname)
  for kind, heading, directive, options in _SECTIONS:
    names = [n for n, k in members if k == kind]
    if not names:
      continue
    lines += [heading, "-" * len(heading), ""]
    for n in names:
      opts = _data_options(module, n) if kind == "data" else options
      lines += [f".. {directive}:: {n}"] + ([opts] if opts else []) + [""]
  return "\n".join(lines) + "\n"


# Where each public object is documented: (module, name) -> documented dotted name, for every public name of every
# module (a re-exported name maps to its package's page), and id(function or class) -> documented dotted name.
DOCUMENTED: dict[tuple[str, str], str] = {}
DOCUMENTED_OBJECTS: dict[int, str] = {}


def _record_locations(modname: str) -> None:
  module = importlib.import_module(modname)
  documented = dict(documented_members(modname))
  parent = modname.rsplit(".", 1)[0] if "." in modname else None
  for name in _own_public_names(module):
    where = f"{modname}.{name}" if name in documented else f"{parent}.{name}"
    DOCUMENTED[(modname, name)] = where
    obj = getattr(module, name)
    if (inspect.isfunction(obj) or inspect.isclass(obj)) and name in documented:
      DOCUMENTED_OBJECTS[id(obj)] = where
      DOCUMENTED[(obj.__module__, obj.__qualname__)] = where


def write_api_pages(app=None) -> None:  # noqa: ARG001 - Sphinx passes the app
  """Writes ``api/generated/<module>.rst`` for every public module, rewriting only the pages that changed."""
  API_OUT.mkdir(parents=True, exist_ok=True)
  wanted = {}
  for modname in public_modules():
    wanted[f"{modname}.rst"] = module_page(modname)
    _record_locations(modname)
  for path in API_OUT.glob("*.rst"):
    if path.name not in wanted:
      path.unlink()
  for name, text in wanted.items():
    path = API_OUT / name
    if not path.exists() or path.read_text(encoding="utf-8") != text:
      path.write_text(text, encoding="utf-8")


def _skip_namedtuple_fields(app, what, name, obj, skip, options):  # noqa: ARG001 - Sphinx's signature
  """Leaves out the ``Alias for field number N`` properties of NamedTuples (their class docstring lists them)."""
  doc = getattr(obj, "__doc__", None) or ""
  if isinstance(obj, property) and doc.startswith("Alias for field number"):
    return True
  if type(obj).__name__ == "_tuplegetter":
    return True
  return skip


def _clear_type_docstring(app, what, name, obj, options, lines):  # noqa: ARG001 - Sphinx's signature
  """A constant without a doc comment would show the docstring of its type (``dict``, ``tuple``): show none."""
  if what in ("data", "attribute") and lines:
    type_doc = inspect.getdoc(type(obj)) or ""
    if type_doc and "\n".join(lines).strip() == type_doc.strip():
      lines.clear()


def _lookup(target: str, context: str | None):
  """The object that ``target`` names, read as an absolute dotted path or relative to the module ``context``."""
  parts = target.split(".")
  starts = []
  if context:
    starts.append((context, parts))
  for i in range(len(parts) - 1, 0, -1):
    starts.append((".".join(parts[:i]), parts[i:]))
  for modname, rest in starts:
    try:
      obj = importlib.import_module(modname)
    except ImportError:
      continue
    owner, ok = modname, True
    for j, part in enumerate(rest):
      if not hasattr(obj, part):
        ok = False
        break
      if j == len(rest) - 1 and inspect.ismodule(obj):
        owner = obj.__name__
      obj = getattr(obj, part)
    if ok:
      return obj, owner, rest[-1]
  return None


def _resolve_public_name(app, env, node, contnode):
  """Resolves a Python reference that names a public object by another path than the one it is documented under.

  A reference to a private name (``_helper``, ``sotalign_jax._arrays``) is shown as code, unlinked, if it exists.

  ``:func:`fit_heads``` in ``aligners/trained.py`` names ``sotalign_jax.aligners.trained.fit_heads``, which is
  documented on the package's page as ``sotalign_jax.aligners.fit_heads``; so do the types of signatures, which
  name an object's defining module. Private names and names that are nowhere public stay unresolved (a warning).
  """
  if node.get("refdomain") != "py":
    return None
  target = node["reftarget"].lstrip("~.")
  if any(part.startswith("_") for part in target.split(".")):  # a private helper: shown as code if it exists
    return contnode if _lookup(target, node.get("py:module")) is not None else None
  contexts = [node.get("py:module")]
  if "." not in target:  # a bare name: also the module the documented object comes from, e.g. unpaired.py's
    contexts += sorted({m for (m, n) in DOCUMENTED if n == target})
  for context in contexts:
    found = _lookup(target, context)
    if found is None:
      continue
    obj, owner, name = found
    where = DOCUMENTED_OBJECTS.get(id(obj)) if (inspect.isfunction(obj) or inspect.isclass(obj)) else None
    where = where or DOCUMENTED.get((owner, name))
    if where is None and inspect.ismodule(obj) and obj.__name__ in _PUBLIC_MODULES:
      where = obj.__name__
    if where is None or where == target:
      continue
    return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, "mod" if inspect.ismodule(obj)
                                             else "obj", where, node, contnode)
  return None


_PUBLIC_MODULES: set[str] = set()


def _resolve_external(app, env, node, contnode):  # noqa: ARG001 - Sphinx's signature
  """A reference to one of the EXTERNAL types or functions becomes a link to its documentation."""
  from docutils import nodes  # pylint: disable=g-import-not-at-top

  if node.get("refdomain") != "py" or node["reftarget"].lstrip("~") not in EXTERNAL:
    return None
  ref = nodes.reference("", "", internal=False, refuri=EXTERNAL[node["reftarget"].lstrip("~")])
  ref += contnode
  return ref


TUTORIALS = DOCS / "tutorials"


def copy_notebooks() -> None:
  """Copies ``notebooks/*.ipynb`` into ``tutorials/`` (git ignores the copies), rewriting only those that changed."""
  wanted = {p.name: p.read_bytes() for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
  for path in TUTORIALS.glob("*.ipynb"):
    if path.name not in wanted:
      path.unlink()
  for name, data in wanted.items():
    if not (TUTORIALS / name).exists() or (TUTORIALS / name).read_bytes() != data:
      (TUTORIALS / name).write_bytes(data)


def setup(app):
  write_api_pages()
  copy_notebooks()
  _PUBLIC_MODULES.update(public_modules())
  app.connect("autodoc-skip-member", _skip_namedtuple_fields)
  app.connect("autodoc-process-docstring", _clear_type_docstring)
  app.connect("missing-reference", _resolve_public_name)
  app.connect("missing-reference", _resolve_external)
