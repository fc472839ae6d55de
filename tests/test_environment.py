"""The set-up paths agree: requirements-ci.txt (used by `make`), environment.yml (conda), pyproject."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def ci_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-ci.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert "==" in line, f"requirements-ci.txt pins exact versions: {line!r}"
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
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project.get("optional-dependencies", {}).values():
        declared |= {_name(r) for r in extra}
    missing = declared - set(ci_pins())
    assert not missing, f"declared in pyproject.toml but not pinned in requirements-ci.txt: {sorted(missing)}"


def test_torch_is_pinned_to_the_local_cpu_build_everywhere():
    assert ci_pins()["torch"] == "2.13.0"
    assert '"torch==2.13.0"' in (ROOT / "Makefile").read_text()


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("make test", "make book"):
        assert command in readme and command in ci
