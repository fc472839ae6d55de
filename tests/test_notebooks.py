"""The notebooks stay diff-able and thin: no stored outputs, a papermill parameters cell, a
learning goal up front, exercises with solutions at the end, and no algorithm code (that lives in eadp_lab)."""

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
    heading = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Exercises")]
    assert len(heading) == 1, f"{path.name}: one '## Exercises' section"
    tail = "\n".join(c.source for c in nb.cells[heading[0]:] if c.cell_type == "markdown")
    assert not any(c.cell_type == "markdown" and c.source.startswith("#") for c in nb.cells[heading[0] + 1:]), \
        f"{path.name}: the exercises end the chapter"
    exercises = re.findall(r"```\{exercise\}[^\n]*\n:label: (\S+)", tail)
    solutions = re.findall(r"```\{solution-start\} (\S+)", tail)
    assert exercises, f"{path.name}: exercises as sphinx-exercise directives"
    unsolved = [e for e in exercises if e not in solutions]  # every exercise has a hidden solution
    assert not unsolved, f"{path.name}: exercises without solutions {unsolved}"
    assert tail.count("{solution-start}") == tail.count("{solution-end}"), f"{path.name}: unbalanced solution blocks"
    assert all(":class: dropdown" in m for m in re.findall(r"```\{solution-start\}[^`]*```", tail)), \
        f"{path.name}: solutions are hidden until asked"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_algorithm_code_in_notebooks(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"^\s*(def|class)\s", code, re.MULTILINE), f"{path.name}: define functions in eadp_lab"
    assert "eadp_lab" in code


def _figure_keys(code: str) -> list[str]:
    """Names glued from a package function's dict (``for key, value in accuracy.long_run_figures(run).items():
    glue(key, value)``): the function's keys, which it returns in full when given no run (``None``). The
    function is looked up in the module the code calls it from (``field.comparison_figures``: eadp_lab.field,
    ``accuracy.``: eadp_lab.bench.accuracy), else in eadp_lab.evaluation."""
    import importlib
    import inspect

    keys = []
    for module, name in sorted(set(re.findall(r"\b(?:(\w+)\.)?(\w+_figures)\(", code))):
        f = None
        for where in ([f"eadp_lab.{module}", f"eadp_lab.bench.{module}"] if module else []) + ["eadp_lab.evaluation"]:
            try:
                f = getattr(importlib.import_module(where), name, None)
            except ImportError:
                continue
            if f is not None:
                break
        assert f is not None, f"{name} is in no module the chapter can mean"
        required = sum(p.default is inspect.Parameter.empty for p in inspect.signature(f).parameters.values())
        keys += list(f(*[None] * required))
    return keys


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_glued_name_in_the_prose_is_glued_by_the_code(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    glued = [re.escape(k) for k in re.findall(r"""\bglue\(\s*["']([^"'{}]+)["']""", code)]
    glued += [re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(k)) for k in re.findall(r"""\bglue\(\s*f["']([^"']+)["']""", code)]
    glued += [re.escape(k) for k in _figure_keys(code)]
    used = set(re.findall(r"\{glue(?::text)?\}`([^`:]+)", prose))
    missing = sorted(u for u in used if not any(re.fullmatch(g, u) for g in glued))
    assert not missing, f"{path.name}: the prose quotes values no cell glues: {missing}"
