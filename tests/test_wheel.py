"""The package as a user installs it: the wheel built from this tree, installed into a fresh virtual
environment outside the repository (pinned CPU torch), used from another working directory.

Marked slow (a few minutes: the environment is installed from the pip cache). Each command runs with
the working directory outside the checkout, so nothing can find the repository's data/ by accident.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MAX_WHEEL_MB = 20


def _run(args, cwd, timeout=900, check=True, env=None):
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, work)``: the wheel's venv and an empty working directory, both outside the checkout."""
    base = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", base / "dist", ROOT], cwd=base)
    (wheel,) = (base / "dist").glob("eadp_lab-*.whl")
    size_mb = wheel.stat().st_size / 2**20
    print(f"wheel {wheel.name}: {size_mb:.1f} MB")
    assert size_mb < MAX_WHEEL_MB
    _run([sys.executable, "-m", "venv", base / "venv"], cwd=base)
    python = base / "venv" / "bin" / "python"
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c", ROOT / "requirements-ci.txt"]
    _run(pip + ["torch==2.13.0"], cwd=base)
    _run(pip + [f"eadp-lab[notebooks] @ {wheel.as_uri()}"], cwd=base)
    work = base / "work"
    work.mkdir()
    return python, work


def test_the_installed_package_reads_its_own_data(installed):
    python, work = installed
    out = _run([python, "-c", "import json, eadp_lab, eadp_lab.paths as p; print(json.dumps([eadp_lab.__file__, "
                "str(p.CHECKOUT), str(p.MODELS)]))"], cwd=work).stdout
    module, checkout, models = json.loads(out)
    assert checkout == "None" and str(ROOT) not in module and str(ROOT) not in models
    assert (Path(models) / "lab-llava" / "model.safetensors").is_file()


def test_bench_flops_from_the_installed_package(installed):
    python, work = installed
    out = _run([python, "-m", "eadp_lab", "bench", "flops"], cwd=work).stdout
    assert "llava-hf__llava-1.5-7b-hf" in out and "Qwen__Qwen2.5-VL-7B-Instruct" in out and str(ROOT) not in out


def test_a_short_accuracy_bench_on_the_lab_models(installed):
    python, work = installed
    _run([python, "-m", "eadp_lab", "bench", "accuracy", "--questions", "4", "--budgets", "14", "--methods",
          "none,eadp", "--json", "out/acc.json"], cwd=work)
    report = json.loads((work / "out" / "acc.json").read_text())
    assert [r["method"] for r in report["results"]] == ["none", "eadp"]
    assert all(r["accuracy"] is not None and r["questions"] == 4 for r in report["results"])


def test_probe_from_the_installed_package(installed):
    python, work = installed
    _run([python, "-m", "eadp_lab", "probe", "--scenes", "10", "--json", "probe.json"], cwd=work)
    assert json.loads((work / "probe.json").read_text())


def test_lab_load_answers_a_question(installed):
    python, work = installed
    code = ("from eadp_lab.lab import Lab\nfrom eadp_lab.world import sample\n"
            "lab = Lab.load('lab')\nr = sample('heldout', 1, seed=3)[0]\n"
            "print(repr(lab.ask(r.image, r.question.text, method='eadp', budget=14).text))")
    out = _run([python, "-c", code], cwd=work).stdout.strip()
    assert out.startswith("'") and len(out) > 2


def test_a_copied_chapter_runs_on_the_installed_package(installed):
    """A GPU-kernel user who copies a chapter: papermill executes it outside the checkout."""
    python, work = installed
    _run([python, "-m", "ipykernel", "install", "--sys-prefix", "--name", "eadp-wheel"], cwd=work)
    shutil.copy(ROOT / "notebooks" / "00_tour.ipynb", work / "00_tour.ipynb")
    _run([python, "-m", "papermill", "00_tour.ipynb", "00_tour.out.ipynb", "-k", "eadp-wheel", "--no-progress-bar"],
         cwd=work, timeout=1200)
    executed = json.loads((work / "00_tour.out.ipynb").read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_damaged_data_in_the_installed_package_is_one_line_naming_it(installed):
    python, work = installed
    models = Path(_run([python, "-c", "import eadp_lab.paths as p; print(p.MODELS)"], cwd=work).stdout.strip())
    weights = models / "lab-llava" / "model.safetensors"
    data = weights.read_bytes()
    try:
        weights.write_bytes(data[: len(data) // 3])
        result = _run([python, "-m", "eadp_lab", "bench", "accuracy", "--questions", "2", "--methods", "none"],
                      cwd=work, check=False)
        assert result.returncode == 2
        err = result.stderr.strip().splitlines()[-1]
        assert str(models / "lab-llava") in err and "reinstall the package" in err and str(ROOT) not in err
    finally:
        weights.write_bytes(data)
