"""The documentation's examples, run as written: every page of ``docs/`` by the README's rules.

Every ```python block of ``docs/**/*.md`` runs in a fresh interpreter with a timeout, unless the line before it is
``<!-- not-run: reason -->``, with the README's placeholders for the reader's own data (``x``, ``y``, ...) — the
extractor, the runner and the placeholders are those of tests/test_readme_examples.py. Every ``--config.KEY``
override a page shows must exist in the config it names (the same check as the README's). The site itself is built
by ``make docs`` (warnings are errors), which CI runs after ``make test``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from test_readme_examples import config_override_problems, python_blocks, run_block

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_SKIP = ("_build", "generated")  # build output; API pages written from the docstrings


def doc_pages() -> list[Path]:
  """The Markdown pages of the site (not its build output)."""
  return sorted(p for p in DOCS.rglob("*.md") if not any(part in _SKIP for part in p.relative_to(DOCS).parts))


def _blocks():
  for page in doc_pages():
    for block in python_blocks(page.read_text(encoding="utf-8")):
      yield f"{page.relative_to(ROOT)}:{block.line}", block


_BLOCKS = list(_blocks())


def test_the_docs_have_pages_and_python_blocks():
  assert (DOCS / "index.md").exists() and (DOCS / "conf.py").exists()
  assert _BLOCKS, "docs/index.md's example at least"
  for where, block in _BLOCKS:
    assert block.not_run is None or len(block.not_run) >= 10, f"{where}: say why the block is not run"


@pytest.mark.parametrize("where,block", _BLOCKS, ids=[w for w, _ in _BLOCKS])
def test_python_block_runs_as_written(where, block):
  if block.not_run is not None:
    pytest.skip(f"{where} is marked not-run: {block.not_run}")
  out = run_block(block.code)
  assert out.returncode == 0, f"{where} failed:\n{block.code}\n--- stderr ---\n{out.stderr[-3000:]}"


@pytest.mark.parametrize("page", doc_pages(), ids=[str(p.relative_to(ROOT)) for p in doc_pages()])
def test_config_overrides_on_the_page_exist_in_the_configs_they_name(page):
  problems = config_override_problems(page.read_text(encoding="utf-8"))
  assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_every_page_is_in_a_toctree_or_is_the_index():
  """Sphinx warns about an orphan page (and ``make docs`` fails); this says which one without building the site."""
  import re

  listed = set()
  for page in doc_pages():
    for tree in re.findall(r"```\{toctree\}\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
      globbed = ":glob:" in tree
      for entry in tree.splitlines():
        entry = entry.strip()
        if not entry or entry.startswith(":"):
          continue
        base = page.parent
        matches = sorted(base.glob(entry + ".md")) + sorted(base.glob(entry + ".ipynb")) if globbed else [
            base / (entry + ".md"), base / (entry + ".ipynb")]
        listed.update(p.resolve() for p in matches if p.exists())
  orphans = [str(p.relative_to(ROOT)) for p in doc_pages() if p.resolve() not in listed and p != DOCS / "index.md"
             and p.name not in ("README.md",)]
  assert not orphans, f"pages in no toctree: {orphans}"
