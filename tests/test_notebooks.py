"""The committed notebooks carry no outputs and no execution counts (run them with `pytest --nbmake notebooks/`)."""

import glob
import os

import nbformat
import pytest

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          "notebooks", "*.ipynb")))


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 3, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stripped(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code, f"{path} has no code cells"
  dirty = [i for i, c in enumerate(nb.cells)
           if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
  assert not dirty, (f"{os.path.basename(path)}: cells {dirty} have outputs or execution counts; strip them "
                     "(e.g. `jupyter nbconvert --clear-output --inplace`) before committing")
