"""``bench merge``: extending a long run with other methods on the same questions, nothing else."""

import json

import pytest

from eadp_lab.bench import main as bench_main
from eadp_lab.bench.merge import SAME, merge_reports


def _report(methods, budgets=(64, 28), **changes):
    base = {"model": "data/models/lab-llava", "clip": "data/models/lab-clip", "scoring": "clip", "seed": 8103,
            "questions": {"source": "lab world heldout split", "count": 20}, "positions": "renumber", "sign": 1.0,
            "dtype": "float32", "max_new_tokens": 3, "seconds": 10.0, "command": f"bench accuracy --methods {methods}",
            "results": [{"method": m, "budget": b, "accuracy": 0.5, "hits": "01" * 10}
                        for m in methods.split(",") for b in budgets]}
    return base | changes


def test_merge_appends_rows_and_records_how_each_was_made():
    merged = merge_reports(_report("none,eadp"), _report("fastv,visionzip", seconds=4.5, answers_file="runs/a.jsonl"))
    assert [(r["method"], r["budget"]) for r in merged["results"]] == [
        ("none", 64), ("none", 28), ("eadp", 64), ("eadp", 28),
        ("fastv", 64), ("fastv", 28), ("visionzip", 64), ("visionzip", 28)]
    assert merged["seconds"] == 14.5 and merged["command"] == "bench accuracy --methods none,eadp"
    assert merged["merged"] == [{"command": "bench accuracy --methods fastv,visionzip", "seconds": 4.5,
                                 "answers_file": "runs/a.jsonl", "methods": ["fastv", "visionzip"]}]


@pytest.mark.parametrize("field", SAME)
def test_merge_refuses_runs_that_differ_in_what_decides_an_answer(field):
    with pytest.raises(ValueError, match=f"differs from the base in {field}"):
        merge_reports(_report("eadp"), _report("fastv", **{field: "something else"}))


def test_merge_refuses_a_configuration_twice():
    with pytest.raises(ValueError, match="repeats eadp at 28"):
        merge_reports(_report("none,eadp"), _report("eadp,fastv", budgets=(28,)))
    with pytest.raises(ValueError, match="at least one"):
        merge_reports(_report("eadp"))


def test_merge_command_writes_and_refuses_in_one_line(tmp_path, capsys):
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "sub" / "out.json"
    a.write_text(json.dumps(_report("none,eadp")))
    b.write_text(json.dumps(_report("dart")))
    assert bench_main(["merge", str(a), str(b), "--json", str(out)]) == 0
    assert [r["method"] for r in json.loads(out.read_text())["results"]][-2:] == ["dart", "dart"]
    b.write_text(json.dumps(_report("dart", seed=1)))
    assert bench_main(["merge", str(a), str(b), "--json", str(out)]) == 2
    assert "differs from the base in seed: base 8103, report 1 1" in capsys.readouterr().err
    assert bench_main(["merge", str(a), str(tmp_path / "missing.json"), "--json", str(out)]) == 2
    assert bench_main(["merge", str(a), str(b), "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
