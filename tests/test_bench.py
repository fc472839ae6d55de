"""The benchmark commands run and print their side-by-side figures."""

import subprocess
import sys

import torch

from eadp_lab.bench._published import cdpruner_loop, divprune_loop
from eadp_lab.bench.select import baseline_case, clustered_case, run, run_baselines


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
        [sys.executable, "-m", "eadp_lab", "bench", "select", "--cases", "1x49x5", "--baseline-cases", "2x49x5",
         "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "published loop" in proc.stdout and "True" in proc.stdout
    assert "divprune" in proc.stdout and "cdpruner" in proc.stdout and "False" not in proc.stdout
    assert out.exists()
    bad = subprocess.run([sys.executable, "-m", "eadp_lab.bench", "select", "--cases", "576x64"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--cases" in bad.stderr + bad.stdout


def test_baseline_bench_rows():
    rows = run_baselines([(1, 36, 6), (3, 36, 6)], repeats=1)
    assert [(r["method"], r["R"]) for r in rows] == [("divprune", 1), ("cdpruner", 1), ("divprune", 3), ("cdpruner", 3)]
    assert all(r["identical_picks"] and r["published_ms"] > 0 and r["lab_ms"] > 0 for r in rows)


def test_published_loops_are_what_the_lab_reproduces():
    """The bench's clean-room loops against the lab's methods on a multi-crop image (and a check
    that the comparison can fail: another budget or another normalisation picks differently)."""
    from eadp_lab import prune

    inputs = baseline_case(3, 64, D=32, C=16, seed=2)
    text = inputs.text_embeds[0]
    joint = divprune_loop(inputs.features.reshape(3 * 64, -1), 3 * 8)
    assert torch.equal(joint, prune("divprune", inputs, 8).extra["image_picks"][0])
    per_row = prune("divprune", inputs, 8, scope="per_row")
    assert not torch.equal(joint, (torch.arange(3)[:, None] * 64 + per_row.picks).flatten())
    picks, relevance = cdpruner_loop(inputs.features, inputs.image_embeds, text, 8)
    lab = prune("cdpruner", inputs, 8)
    assert torch.equal(picks, lab.picks)
    assert torch.allclose(relevance, lab.importance, atol=1e-6)
    assert not torch.allclose(relevance, prune("cdpruner", inputs, 8, normalisation="per_row").importance, atol=1e-3)
