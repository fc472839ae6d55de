"""The notebooks stay diff-able and thin: no stored outputs, a papermill parameters cell, a
learning goal up front, exercises at the end, and no algorithm code (that lives in eadp_lab)."""

import json
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_outputs_in_git(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs before committing"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state belongs to executed copies only"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_structure(path):
    nb = nbformat.read(path, as_version=4)
    raw = json.loads(path.read_text())  # nbformat.read adds missing ids: check the file itself
    assert all("id" in c for c in raw["cells"]), f"{path.name}: every cell has an id (nbformat 4.5)"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: exactly one papermill `parameters` cell"
    assert nb.cells[0].cell_type == "markdown", f"{path.name}: open with what the reader will learn"
    assert "exercise" in nb.cells[-1].source.lower(), f"{path.name}: end with exercises"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_algorithm_code_in_notebooks(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"^\s*(def|class)\s", code, re.MULTILINE), f"{path.name}: define functions in eadp_lab"
    assert "eadp_lab" in code
