"""The benchmark commands run and print their side-by-side figures."""

import subprocess
import sys

import pytest
import torch

from eadp_lab.bench._published import cdpruner_loop, divprune_loop
from eadp_lab.bench.select import (FIELD_METHODS, baseline_case, clustered_case, field_case, field_contenders,
                                   format_ratio, interleaved_times, ratio_spread, run, run_baselines, run_field,
                                   torch_threads)


def test_select_bench_rows():
    rows = run([(2, 64, 8)], repeats=1)
    (row,) = rows
    assert row["identical_picks"] is True
    assert row["objective_naive"] == row["objective_fast"]
    assert row["naive_ms"] > 0 and row["fast_ms"] > 0
    assert row["speedup"]["median"] > 0 and row["torch_path_speedup"]["verdict"] in (
        "faster", "slower", "no measurable difference")


def test_clustered_case_is_seeded():
    a, b = clustered_case(2, 48, seed=3), clustered_case(2, 48, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (2, 48) and a[1].shape == (2, 48, 64)


def test_select_bench_cli(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "eadp_lab", "bench", "select", "--cases", "1x49x5", "--baseline-cases", "2x49x5",
         "--field-tokens", "64", "--field-budget", "16", "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "published loop" in proc.stdout and "True" in proc.stdout
    assert "divprune" in proc.stdout and "cdpruner" in proc.stdout and "False" not in proc.stdout
    assert all(method in proc.stdout for method in FIELD_METHODS) and "1 threads" in proc.stdout
    assert out.exists()
    bad = subprocess.run([sys.executable, "-m", "eadp_lab.bench", "select", "--cases", "576x64"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--cases" in bad.stderr + bad.stdout


def test_baseline_bench_rows():
    rows = run_baselines([(1, 36, 6), (3, 36, 6)], repeats=1)
    assert [(r["method"], r["R"]) for r in rows] == [("divprune", 1), ("cdpruner", 1), ("divprune", 3), ("cdpruner", 3)]
    assert all(r["identical_picks"] and r["published_ms"] > 0 and r["lab_ms"] > 0 for r in rows)
    assert all(len(r["speedup"]["ratios"]) == 1 for r in rows)


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


def test_interleaved_times_alternate_after_the_warmup():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = interleaved_times(fns, repeats=3, warmup=1, min_seconds=0.0)
    # warm-up and the calibrating call of each, then a b / b a / a b
    assert calls == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3} and all(t > 0 for v in times.values() for t in v)
    with pytest.raises(ValueError):
        interleaved_times(fns, repeats=0)


def test_ratio_spread_says_no_measurable_difference_when_the_spread_covers_one():
    faster = ratio_spread([2.0, 2.2, 1.8, 2.1], [1.0, 1.0, 1.0, 1.0])
    assert faster["measurable"] and faster["verdict"] == "faster" and faster["median"] == pytest.approx(2.05)
    assert faster["q1"] <= faster["median"] <= faster["q3"] and faster["low"] == 1.8 and faster["high"] == 2.2
    assert format_ratio(faster) == "2.05x (range 1.80-2.20)"
    even = ratio_spread([0.9, 1.1, 1.05, 0.95], [1.0] * 4)
    assert not even["measurable"] and even["verdict"] == "no measurable difference"
    assert format_ratio(even).endswith("no measurable difference")
    assert ratio_spread([1.0] * 3, [2.0] * 3)["verdict"] == "slower"
    # one repeat on the other side of 1 is enough to make it no measurable difference
    assert ratio_spread([2.0, 2.0, 2.0, 0.99], [1.0] * 4)["verdict"] == "no measurable difference"
    with pytest.raises(ValueError):
        ratio_spread([1.0], [1.0, 2.0])


def test_field_blocks_select_what_the_lab_selects_on_the_bench_inputs():
    """The bench's inputs (N = 576, LLaVA-1.5-7B shapes): each published block and the lab's core select
    the same tokens (and agree on merged features); another budget or layer makes the check fail."""
    with torch_threads(1):
        _check_field_blocks(field_case(576, 64))


def _check_field_blocks(case):
    assert case["llm_attention"].shape == (1, 32, 651, 651) and case["clip_deep"].shape == (1, 16, 577, 577)
    assert case["llm_hidden"].shape == (1, 651, 4096) and case["llm_keys"].shape == (1, 32, 651, 128)
    contenders = field_contenders(case)
    assert set(contenders) == set(FIELD_METHODS)
    outputs = {}
    for method, (_, published, lab, same) in contenders.items():
        outputs[method] = (published(), lab())
        assert same(*outputs[method]), method
    from eadp_lab.methods.fastv import fastv_keep
    from eadp_lab.methods.hiprune import hiprune_select

    _, _, _, same_fastv = contenders["fastv"]
    other = fastv_keep(case["llm_attention"], case["prefix"] + 1, case["N"], 64)
    assert not same_fastv(outputs["fastv"][0], other)
    _, _, _, same_hiprune = contenders["hiprune"]
    assert not same_hiprune(outputs["hiprune"][0], hiprune_select(case["clip_deep"], case["clip_deep"], 64))


def test_field_bench_rows():
    rows = run_field(N=64, budget=16, repeats=1)
    assert [r["method"] for r in rows] == list(FIELD_METHODS)
    assert all(r["identical_picks"] and r["published_ms"] > 0 and r["lab_ms"] > 0 for r in rows)
    assert all(r["speedup"]["verdict"] in ("faster", "slower", "no measurable difference") for r in rows)
