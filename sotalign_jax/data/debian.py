"""Data that Debian packages ship: find it, install it when allowed, or say exactly how to get it."""

from __future__ import annotations

import os
import subprocess
import threading

__all__ = ["MissingDataError", "require_package", "install_command"]

_UPDATED = False
_LOCK = threading.Lock()


class MissingDataError(FileNotFoundError):
  """Raised when a dataset's files are absent; the message names the package and the command."""


def install_command(package: str) -> str:
  """Returns the shell command that installs Debian ``package``."""
  return f"sudo apt-get update && sudo apt-get install -y {package}"


def require_package(package: str, path: str, *, install: bool = True) -> str:
  """Returns ``path`` once Debian ``package`` (which provides it) is installed.

  If ``path`` is missing and ``install`` is true and this process runs as root, runs
  ``apt-get update`` (once per process) then ``apt-get install -y package``.

  Args:
    package: Debian package name, e.g. ``"openclipart-png"``.
    path: a file or directory that the package installs.
    install: whether to try installing (only ever done as root).

  Returns:
    ``path``.

  Raises:
    MissingDataError: ``path`` is still missing; the message holds the exact install command.
  """
  global _UPDATED
  if os.path.exists(path):
    return path
  is_root = hasattr(os, "geteuid") and os.geteuid() == 0
  if install and is_root:
    with _LOCK:
      try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if not _UPDATED:
          subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
          _UPDATED = True
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env, capture_output=True)
      except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        raise MissingDataError(
            f"{path} is missing and installing Debian package {package!r} failed "
            f"({e}; {detail.decode(errors='replace').strip()[-300:]}). Install it with: {install_command(package)}"
        ) from e
    if os.path.exists(path):
      return path
  raise MissingDataError(
      f"{path} is missing: it is provided by the Debian package {package!r}. Install it with: "
      f"{install_command(package)}")
