"""The accuracy bench's tables: results (of run() or the command's JSON) as pandas DataFrames."""

import json
import math

import pytest

from eadp_lab.bench import accuracy as A


def _row(method, budget, accuracy, per_type):
    return {"method": method, "budget": budget, "accuracy": accuracy, "questions": sum(n for _, n in per_type.values()),
            "per_type": {t: {"accuracy": a, "questions": n} for t, (a, n) in per_type.items()}}


ROWS = [
    _row("none", 256, 0.75, {"colour": (1.0, 2), "count": (0.5, 2)}),
    _row("eadp", 64, 0.5, {"colour": (0.5, 2), "count": (0.5, 2)}),
    _row("eadp", 14, 0.25, {"colour": (0.5, 2), "count": (0.0, 2)}),
    _row("pool", 64, 0.5, {"colour": (1.0, 2), "count": (0.0, 2)}),
    _row("pool", 14, None, {}),
    _row("random", 14, 0.5, {"colour": (0.5, 2), "shape": (0.5, 2)}),
]


def test_results_frame_methods_by_budget():
    frame = A.results_frame(ROWS)
    assert list(frame.index) == ["none", "eadp", "pool", "random"]
    assert list(frame.columns) == [256, 64, 14]
    assert frame.loc["none", 256] == 0.75 and math.isnan(frame.loc["none", 64])
    assert frame.loc["eadp", 64] == 0.5 and frame.loc["eadp", 14] == 0.25
    assert math.isnan(frame.loc["pool", 14])  # accuracy None: no answers
    assert math.isnan(frame.loc["random", 64])  # never run
    assert frame.loc["random", 14] == 0.5
    assert frame.index.name == "method" and frame.columns.name == "budget"


def test_results_frame_other_values_and_report_input():
    rows = [dict(r, seconds=float(i)) for i, r in enumerate(ROWS)]
    frame = A.results_frame({"results": rows, "command": "python -m eadp_lab bench accuracy"}, value="seconds")
    assert frame.loc["eadp", 14] == 2.0 and frame.loc["random", 14] == 5.0


def test_per_type_frame():
    frame = A.per_type_frame(ROWS)
    assert list(frame.columns) == ["colour", "count", "shape", "all"]
    assert list(frame.index) == [("none", 256), ("eadp", 64), ("eadp", 14), ("pool", 64), ("pool", 14), ("random", 14)]
    assert frame.loc[("none", 256), "colour"] == 1.0 and frame.loc[("none", 256), "all"] == 0.75
    assert math.isnan(frame.loc[("none", 256), "shape"])
    assert math.isnan(frame.loc[("pool", 14), "all"])
    counts = A.per_type_frame(ROWS, value="questions")
    assert counts.loc[("random", 14), "shape"] == 2 and counts.loc[("random", 14), "all"] == 4
    assert counts.loc[("pool", 14), "all"] == 0
    with pytest.raises(ValueError, match="value"):
        A.per_type_frame(ROWS, value="seconds")


def test_bad_results_are_refused():
    for bad in ([], {"results": []}, {"rows": ROWS}, [{"method": "eadp"}], None):
        with pytest.raises(ValueError, match="results|result"):
            A.results_frame(bad)


def test_load_results(tmp_path):
    report = {"results": ROWS, "command": "python -m eadp_lab bench accuracy --questions 4"}
    path = tmp_path / "acc.json"
    path.write_text(json.dumps(report))
    loaded = A.load_results(path)
    assert loaded["command"] == report["command"] and A.results_frame(loaded).shape == (4, 3)
    bare = tmp_path / "rows.json"
    bare.write_text(json.dumps(ROWS))
    assert A.load_results(bare) == {"results": ROWS}
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"results": []}))
    with pytest.raises(ValueError, match="empty.json"):
        A.load_results(empty)


def test_markdown_table():
    rows = [{"method": "none", "budget": 256, "accuracy": 0.5, "named_reached": 1.0},
            {"method": "eadp", "budget": 64, "accuracy": 0.25, "named_reached": 0.75},
            {"method": "eadp", "budget": 14, "accuracy": 0.125, "named_reached": None}]
    lines = A.markdown_table(rows).splitlines()
    assert lines[0] == ("| method | accuracy @ 256 | accuracy @ 64 | accuracy @ 14 | named_reached @ 256 "
                        "| named_reached @ 64 | named_reached @ 14 |")
    assert lines[2] == "| none | 50.0 |  |  | 100.0 |  |  |"
    assert lines[3] == "| eadp |  | 25.0 | 12.5 |  | 75.0 |  |"
    no_seconds = A.markdown_table(rows, values=("accuracy", "seconds")).splitlines()  # no row has seconds
    assert no_seconds[0] == "| method | accuracy @ 256 | accuracy @ 64 | accuracy @ 14 |" and len(no_seconds) == 4
