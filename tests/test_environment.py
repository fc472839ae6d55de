"""The set-up paths agree: requirements-ci.txt (used by `make`), environment.yml (conda), pyproject."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def ci_pins(file: str = "requirements-ci.txt") -> dict[str, str]:
    pins = {}
    for line in (ROOT / file).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert "==" in line, f"{file} pins exact versions: {line!r}"
            pins[_name(line)] = line.split("==")[1]
    return pins


def conda_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {_name(p): p.split("==")[1] for p in pip if "==" in p}


def test_conda_environment_mirrors_the_ci_pins():
    assert conda_pins() == ci_pins()


def test_every_declared_dependency_is_pinned_for_ci():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    extras = dict(project.get("optional-dependencies", {}))
    harness = {_name(r) for r in extras.pop("lmms-eval")}  # its own environment, .venv-lmms
    declared = base | {_name(r) for extra in extras.values() for r in extra}
    missing = declared - set(ci_pins())
    assert not missing, f"declared in pyproject.toml but not pinned in requirements-ci.txt: {sorted(missing)}"
    missing = (base | harness) - set(ci_pins("requirements-lmms.txt"))
    assert not missing, f"needed in .venv-lmms but not pinned in requirements-lmms.txt: {sorted(missing)}"


def test_the_lmms_environment_differs_from_ci_only_in_torch():
    """.venv-lmms runs the lab's code with the same libraries as .venv, but torch (and torchvision beside it)."""
    ci, lmms = ci_pins(), ci_pins("requirements-lmms.txt")
    assert (lmms["torch"], lmms["torchvision"]) == ("2.14.1", "0.29.1")
    shared = (set(ci) & set(lmms)) - {"torch"}
    assert {"transformers", "tokenizers", "accelerate", "numpy", "numba"} <= shared
    assert {k: lmms[k] for k in shared} == {k: ci[k] for k in shared}


def test_torch_is_pinned_to_the_local_cpu_build_everywhere():
    assert ci_pins()["torch"] == "2.13.0"
    assert '"torch==2.13.0"' in (ROOT / "Makefile").read_text()


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("make test", "make book"):
        assert command in readme and command in ci
