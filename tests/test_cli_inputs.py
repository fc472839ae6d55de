"""``python -m eadp_lab probe``: bad --seed, --threads and --json are one-line errors before any model loads;
the --json folder is made before the run and a failed final write says where the results went."""

import json
import os
from pathlib import Path

import pytest

from eadp_lab.__main__ import main as eadp_main
from eadp_lab.labmodels import probe

REPORT = {"probe": {"per_patch": {}, "object": {}}, "alignment": {}, "seed": 1}


@pytest.fixture
def no_run(monkeypatch):
    """The probe's run (which loads the models) fails the test if it is reached."""
    monkeypatch.setattr(probe, "run", lambda *a, **k: pytest.fail("the probe ran"))


@pytest.fixture
def fake_run(monkeypatch):
    """The probe's run returns :data:`REPORT` at once (its printed summary is skipped)."""
    monkeypatch.setattr(probe, "run", lambda *a, **k: dict(REPORT))
    monkeypatch.setattr(probe, "_summary", lambda report: "summary")


def _error(capsys, argv) -> str:
    """The last line ``python -m eadp_lab probe ARGV`` writes to stderr as it exits with code 2."""
    with pytest.raises(SystemExit) as exc:
        eadp_main(["probe", *argv])
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["--threads", "-1"], "argument --threads: must be >= 1, got -1"),
    (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["--scenes", "2"], "--scenes must be >= 10"),
])
def test_bad_numbers_are_argparse_errors_before_any_model_loads(capsys, no_run, argv, message):
    err = _error(capsys, argv)
    assert err.startswith("python -m eadp_lab probe: error: ") and message in err


def test_an_unwritable_json_path_is_refused_before_any_model_loads(tmp_path, capsys, no_run):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out in (tmp_path, blocker / "out.json"):  # a folder; under a file
        err = _error(capsys, ["--json", str(out)])
        assert str(out) in err and "--json" in err


def test_the_json_folder_is_made_before_the_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "missing" / "dir" / "out.json"

    def run(*args, **kwargs):
        assert out.parent.is_dir()  # checked (made) before any work
        return dict(REPORT)

    monkeypatch.setattr(probe, "run", run)
    monkeypatch.setattr(probe, "_summary", lambda report: "summary")
    assert eadp_main(["probe", "--seed", "1", "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["seed"] == 1 and written["command"] == f"python -m eadp_lab probe --seed 1 --json {out}"
    assert os.listdir(out.parent) == ["out.json"]


def test_a_failed_final_write_says_where_the_results_are(tmp_path, monkeypatch, capsys, fake_run):
    import eadp_lab._io as io

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    out = tmp_path / "out.json"
    monkeypatch.setattr(io, "write_json", full_disk)  # the write at the end fails (the path was fine before)
    assert eadp_main(["probe", "--json", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "No space left" in err
    fallback = err.rsplit(" ", 1)[-1]
    try:
        assert json.loads(Path(fallback).read_text())["probe"] == REPORT["probe"] and not out.exists()
    finally:
        os.unlink(fallback)
