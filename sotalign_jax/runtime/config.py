r"""Experiment configs: the ``get_config(arg)`` mini-language, the checks ``validate(config)`` is made of, the launch.

Every experiment is launched the same way (a rerun with the same workdir resumes)::

  python experiments/NAME.py --config configs/NAME.py[:ARG] --workdir DIR [--config.KEY=VALUE ...]

* ``ARG`` is read by :func:`parse_arg` (big_vision's mini-language): ``demo,smoke,n_pairs=64`` applies the
  preset ``demo``, then the preset ``smoke``, then sets the typed field ``n_pairs``; an unknown name or key is
  rejected with the known ones listed.
* ``--config.KEY=VALUE`` overrides any leaf of the (locked) config, as ml_collections does. :func:`launch` first
  checks that every ``KEY`` exists: an unknown one is a usage error (exit code 2) naming the nearest known keys.
  A tuple field takes a Python tuple, ``--config.methods="('sail','sotalign')"``, or the flag repeated once per
  element (both ml_collections' own forms); a comma list, ``--config.methods=sail,sotalign``, is turned into
  that tuple here (:func:`check_overrides`), and ``--config.methods=`` into the empty tuple.
* ``check_ints`` … ``check_subset`` are the small checks of each config file's ``validate(config)``; each
  raises ``ValueError`` naming the dotted key.
* User errors are one line, ``error: …`` on stderr, and exit code 2, with nothing written: an experiment's ``run``
  validates the config and reads its data inside :func:`user_errors` before it creates the workdir, and
  :func:`launch` prints the :class:`UserError` that comes out (a failure after that point is a bug or a crash and
  keeps its traceback).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import functools
import importlib.util
import os
import re
import sys
import types
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import ml_collections

__all__ = ["parse_arg", "get", "check_ints", "check_positive", "check_nonnegative", "check_one_of", "check_subset",
           "config_module", "experiment_config", "get_path", "load_config", "check_overrides", "start_experiment",
           "launch", "UserError", "user_errors", "one_line"]


# ------------------------------------------------------------------------------------------------------------
# get_config(arg): presets and typed fields.
# ------------------------------------------------------------------------------------------------------------
def parse_arg(arg: str | None, *, presets: Mapping[str, Mapping[str, Any]] | None = None,
              **fields: Any) -> ml_collections.ConfigDict:
  """The fields of a ``get_config`` argument such as ``"demo,smoke,n_pairs=64"``, typed like their defaults.

  Tokens are comma-separated and applied left to right: the name of a preset sets the fields of that preset,
  ``key=value`` sets one field (parsed as the type of its default: ``int``, ``float``, ``bool``, ``str``), and
  the bare name of a ``bool`` field sets it to ``True``. Tuple fields are set by presets only (commas separate
  the tokens); on the command line they take ``--config.KEY=...``.

  Args:
    arg: the text after ``:`` in ``--config file.py:arg`` (``None`` or ``""``: the defaults).
    presets: name → ``{field: value}``.
    **fields: every field with its default.

  Raises:
    ValueError: an unknown name or key (listing the known ones), a value of the wrong type, or a preset that
      sets an undeclared field.
  """
  presets = dict(presets or {})
  out = dict(fields)
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    key, eq, text = token.partition("=")
    key = key.strip()
    if not eq and key in presets:
      unknown = sorted(set(presets[key]) - set(fields))
      if unknown:
        raise ValueError(f"preset {key!r} sets undeclared field(s) {unknown}")
      out.update(presets[key])
    elif key in fields and (eq or isinstance(fields[key], bool)):
      out[key] = _typed(key, text.strip() if eq else "true", fields[key])
    else:
      need = " (it needs a value: key=value)" if key in fields else ""
      raise ValueError(f"unknown {'key' if eq else 'name'} {key!r} in the config argument {arg!r}{need}; "
                       f"presets: {', '.join(presets) or '(none)'}; keys: "
                       + ", ".join(f"{k}={_show(v)}" for k, v in fields.items()))
  return ml_collections.ConfigDict(out)


def _show(default) -> str:
  return type(default).__name__ if isinstance(default, tuple) else repr(default)


def _typed(key: str, text: str, default):
  if isinstance(default, tuple):
    raise ValueError(f"{key} is a tuple: set it with a preset or with --config.{key}=... on the command line")
  try:
    if isinstance(default, bool):
      return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.lower()]
    return type(default)(text) if isinstance(default, (int, float)) else text
  except (KeyError, ValueError):
    kind = {bool: "a bool (true | false)", int: "an int", float: "a float"}[type(default)]
    raise ValueError(f"{key}={text}: expected {kind}, like its default {default!r}") from None


# ------------------------------------------------------------------------------------------------------------
# validate(config): checks that name the dotted key.
# ------------------------------------------------------------------------------------------------------------
def get(cfg: ml_collections.ConfigDict, key: str) -> Any:
  """``config.<key>`` for a dotted ``key``."""
  return functools.reduce(getattr, key.split("."), cfg)


def check_ints(cfg: ml_collections.ConfigDict, keys: Iterable[str], *, minimum: int = 1,
               sentinel: int | None = None) -> None:
  """Raises naming the first ``config.<key>`` that is not an integer ``>= minimum`` (or ``sentinel``, e.g. -1 for
  "no cap"); for a tuple, the first that has another entry."""
  need = {1: "a positive integer", 0: "an integer >= 0"}.get(minimum, f"an integer >= {minimum}")
  if sentinel is not None:
    need = f"{sentinel} or {need}"
  ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and (v >= minimum or v == sentinel)
  for key in keys:
    v = get(cfg, key)
    if isinstance(v, tuple):
      if not all(map(ok, v)):
        raise ValueError(f"config.{key} must be a tuple of which every entry is {need}, got {v!r}")
    elif not ok(v):
      raise ValueError(f"config.{key} must be {need}, got {v!r}")


def check_positive(cfg: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
  """Raises naming the first ``config.<key>`` that is not ``> 0``."""
  for key in keys:
    if not get(cfg, key) > 0:
      raise ValueError(f"config.{key} must be > 0, got {get(cfg, key)!r}")


def check_nonnegative(cfg: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
  """Raises naming the first ``config.<key>`` that is not ``>= 0``."""
  for key in keys:
    if not get(cfg, key) >= 0:
      raise ValueError(f"config.{key} must be >= 0, got {get(cfg, key)!r}")


def check_one_of(cfg: ml_collections.ConfigDict, keys: str | Iterable[str], choices: Sequence) -> None:
  """Raises naming the first ``config.<key>`` whose value is not one of ``choices``."""
  for key in [keys] if isinstance(keys, str) else keys:
    if get(cfg, key) not in choices:
      raise ValueError(f"config.{key} must be one of {tuple(choices)}, got {get(cfg, key)!r}")


def check_subset(cfg: ml_collections.ConfigDict, key: str, choices: Sequence[str], *, what: str = "method",
                 allow_empty: bool = False) -> tuple:
  """``config.<key>``, a tuple of names from ``choices``; raises naming the key on unknown names (or none)."""
  items = get(cfg, key)
  bad = [m for m in items if m not in choices] if isinstance(items, tuple) else [items]
  if bad or not (items or allow_empty):
    raise ValueError(f"config.{key}: unknown {what}(s) {bad}; choose from {list(choices)}")
  return items


# ------------------------------------------------------------------------------------------------------------
# The command line: --config FILE[:ARG] and its --config.KEY=VALUE overrides.
# ------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _load_module(path: str):
  spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def config_module(path: str) -> types.ModuleType:
  """The config file at ``path`` as a module (its ``get_config`` and ``validate``), loaded once."""
  return _load_module(os.path.abspath(path))


def experiment_config(experiment_file: str) -> types.ModuleType:
  """The config module of ``experiments/NAME.py`` (pass its ``__file__``): ``configs/proj/NAME/config.py`` (an
  engine preset) or ``configs/NAME.py`` beside it."""
  root, name = os.path.split(os.path.dirname(os.path.abspath(experiment_file)))[0], os.path.basename(experiment_file)
  proj = os.path.join(root, "configs", "proj", os.path.splitext(name)[0], "config.py")
  return config_module(proj if os.path.exists(proj) else os.path.join(root, "configs", name))


def get_path(cfg: ml_collections.ConfigDict, path: str) -> Any:
  """``cfg.a.b`` for ``path="a.b"``."""
  for part in path.split("."):
    cfg = cfg[part]
  return cfg


def load_config(spec: str) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of ``FILE[:ARG]``, the value of ``--config`` (as ml_collections splits it)."""
  path, *arg = spec.split(":", 1)
  return config_module(path).get_config(*arg)


def _leaves(cfg, prefix: str = "") -> list[str]:
  out = []
  for k, v in cfg.items():
    out += _leaves(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [f"{prefix}{k}"]
  return out


def _lookup(cfg, key: str):
  """The value at dotted ``key``; ``KeyError(deepest existing section)`` when there is none."""
  node, path = cfg, []
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise KeyError(".".join(path))
    node = node[part]
    path.append(part)
  return node


def _unknown_key(cfg, key: str, section: str, flag: str) -> str:
  near = difflib.get_close_matches(key, _leaves(cfg), n=3, cutoff=0.75)
  known = _lookup(cfg, section) if section else cfg
  msg = f"unknown config key --{flag}.{key}"
  if near:
    msg += "; did you mean " + " or ".join(f"--{flag}.{k}" for k in near) + "?"
  if isinstance(known, ml_collections.ConfigDict):
    msg += f" (keys of {flag}{'.' + section if section else ''}: {', '.join(known)})"
  return msg


def _as_tuple_literal(text: str) -> str:
  """``"sail,sotalign"`` → ``"('sail', 'sotalign')"``; ``"10,40"`` → ``"(10, 40)"``; ``""`` → ``"()"``."""
  def literal(s):
    try:
      return ast.literal_eval(s)
    except (ValueError, SyntaxError):
      return s
  return repr(tuple(literal(s.strip()) for s in text.split(",") if s.strip()))


class UserError(ValueError):
  """A mistake in the config or in the data it names, found before anything was written (exit code 2)."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
  """Inside, a ``ValueError`` or ``OSError`` (a bad value, a missing or unreadable file) becomes a
  :class:`UserError` with the same message: wrap the checks and data reads an experiment does before it writes."""
  try:
    yield
  except UserError:
    raise
  except (ValueError, OSError) as e:
    raise UserError(str(e) or type(e).__name__) from e


def one_line(message: str) -> str:
  """``message`` on one line (its lines joined by a space)."""
  return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _usage_error(message: str):
  print(f"error: {one_line(message)}", file=sys.stderr)
  sys.exit(2)


def check_overrides(argv: Sequence[str], *, flag: str = "config") -> list[str]:
  """``argv`` with every ``--config.KEY`` checked against the config and comma lists of tuple fields as tuples.

  An unknown ``KEY`` (or an invalid ``ARG`` in ``--config FILE:ARG``) prints a usage error naming the nearest
  known keys and exits with code 2 (no traceback). Without ``--config``, or when its file does not exist,
  ``argv`` is returned as is (absl and ml_collections then report the problem).
  """
  argv = list(argv)
  spec = None
  for i, a in enumerate(argv):
    if re.fullmatch(rf"--?{flag}", a) and i + 1 < len(argv):
      spec = argv[i + 1]
    elif a.startswith((f"--{flag}=", f"-{flag}=")):
      spec = a.split("=", 1)[1]
  if spec is None or not os.path.isfile(spec.split(":", 1)[0]):
    return argv
  try:
    cfg = load_config(spec)
  except ValueError as e:
    _usage_error(f"--{flag}={spec}: {e}")
  for i, a in enumerate(argv):
    m = re.fullmatch(rf"--?(?:no)?{flag}\.([^=]+)(=.*)?", a, re.S)
    if m is None:
      continue
    key = m.group(1)
    try:
      value = _lookup(cfg, key)
    except KeyError as e:
      _usage_error(_unknown_key(cfg, key, e.args[0], flag))
    if not isinstance(value, tuple):
      continue
    if m.group(2) is not None:
      text = m.group(2)[1:]
      if not text.lstrip().startswith(("(", "[")) and ("," in text or not text.strip()):
        argv[i] = f"{a.split('=', 1)[0]}={_as_tuple_literal(text)}"
    elif i + 1 < len(argv) and "," in argv[i + 1] and not argv[i + 1].lstrip().startswith(("(", "[")):
      argv[i + 1] = _as_tuple_literal(argv[i + 1])
  return argv


def start_experiment(argv: Sequence[str], config: ml_collections.ConfigDict | None, workdir: str | None, *,
                     config_file: str) -> None:
  """The launch checks every experiment's ``main`` does first; starts ``jax.distributed`` on several hosts.

  Raises ``absl.app.UsageError`` on stray arguments or a missing ``--config`` / ``--workdir``.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from sotalign_jax.runtime import distributed  # pylint: disable=g-import-not-at-top
  distributed.maybe_initialize()  # a no-op on one host; see README, Multi-host
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if config is None or workdir is None:
    raise app.UsageError(f"both --config {config_file}[:ARG] and --workdir DIR are required")


def launch(run: Callable[[ml_collections.ConfigDict, str], Any], config_file: str) -> None:
  """The ``__main__`` of every experiment: ``--config`` (locked) and ``--workdir``, then ``run(config, workdir)``.

  Overrides are checked by :func:`check_overrides` before absl parses them; a :class:`UserError` out of ``run``
  prints ``error: <message>`` (one line) on stderr and exits with code 2.
  """
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config = config_flags.DEFINE_config_file("config", None, f"{config_file}[:ARG]", lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "where metrics, checkpoints and results go (a rerun resumes)")

  def main(argv):
    start_experiment(argv, config.value, workdir.value, config_file=config_file)
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines out of the progress output
    try:
      run(config.value, workdir.value)
    except UserError as e:
      _usage_error(str(e))

  def parse(argv):
    return app.parse_flags_with_usage(check_overrides(flags.FLAGS.read_flags_from_files(argv, force_gnu=False)))

  app.run(main, flags_parser=parse)
