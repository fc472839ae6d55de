"""The package's layering, read from the source (every import, at any depth of a module):

- ``eadp_lab.world`` is a pure generator: it imports nothing of ``eadp_lab`` outside itself;
- the methods' default settings (``eadp_lab.methods``) sit below the benches, ``Lab`` and the
  explorer: nothing under ``methods`` imports them.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eadp_lab"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the ``eadp_lab`` modules ``path`` imports (relative imports resolved)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (for __init__.py too)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "eadp_lab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.split(".")[0] == "eadp_lab":
                    names.add(node.module)
                continue
            base = package[: len(package) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
            names |= {module} if node.module else {f"{module}.{a.name}" for a in node.names}
    return names


def test_imported_modules_resolves_relative_imports():
    assert all(name.startswith("eadp_lab.") for name in imported_modules(PACKAGE / "world" / "render.py"))
    assert "eadp_lab.config" in imported_modules(PACKAGE / "methods" / "settings.py")  # from ..config import
    assert "eadp_lab.methods.settings" in imported_modules(PACKAGE / "lab.py")  # from .methods.settings import


@pytest.mark.parametrize("path", sorted((PACKAGE / "world").glob("*.py")), ids=lambda p: p.name)
def test_the_world_imports_nothing_above_it(path):
    outside = {m for m in imported_modules(path) if not m.startswith("eadp_lab.world")}
    assert not outside, f"{path.name} imports {sorted(outside)}: the world must stay a pure generator"


@pytest.mark.parametrize("path", sorted((PACKAGE / "methods").glob("*.py")), ids=lambda p: p.name)
def test_the_methods_do_not_import_the_layers_that_use_them(path):
    above = ("eadp_lab.bench", "eadp_lab.lab", "eadp_lab.explorer", "eadp_lab.studies", "eadp_lab.labmodels")
    bad = {m for m in imported_modules(path) if any(m == a or m.startswith(a + ".") for a in above)}
    assert not bad, f"{path.name} imports {sorted(bad)}, which sit above the methods"
