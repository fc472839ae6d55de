"""The benchmark commands run and print their side-by-side figures."""

import subprocess
import sys

import torch

from eadp_lab.bench.select import clustered_case, run


def test_select_bench_rows():
    rows = run([(2, 64, 8)], repeats=1)
    (row,) = rows
    assert row["identical_picks"] is True
    assert row["objective_naive"] == row["objective_fast"]
    assert row["naive_ms"] > 0 and row["fast_ms"] > 0


def test_clustered_case_is_seeded():
    a, b = clustered_case(2, 48, seed=3), clustered_case(2, 48, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (2, 48) and a[1].shape == (2, 48, 64)


def test_select_bench_cli(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "eadp_lab", "bench", "select", "--cases", "1x49x5", "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "published loop" in proc.stdout and "True" in proc.stdout
    assert out.exists()
    bad = subprocess.run([sys.executable, "-m", "eadp_lab.bench", "select", "--cases", "576x64"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--cases" in bad.stderr + bad.stdout
