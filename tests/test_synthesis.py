"""eadp_lab.synthesis and eadp_lab.field: the readings of the long runs chapters 04 and 07 quote."""

import math

import pytest

from eadp_lab import field, synthesis


def _run(hits: dict, measures: dict | None = None):
    rows = []
    for (method, budget), h in hits.items():
        acc = sum(c == "1" for c in h) / len(h)
        extra = (measures or {}).get(method, {"named_reached": 0.5, "named_recall": 0.2, "kept_nearest": 1.5})
        rows.append({"method": method, "budget": budget, "accuracy": acc, "questions": len(h), "hits": h, **extra})
    return {"results": rows}


HITS = {("none", 256): "11111111", ("eadp", 64): "11111110", ("eadp", 14): "11110000",
        ("cdpruner", 64): "11111100", ("cdpruner", 14): "11111000", ("eadp-topk", 14): "10000000",
        ("fastv", 64): "11110000", ("fastv", 14): "11000000"}


def test_where_each_method_prunes():
    assert field.where("eadp") == field.where("eadp-topk") == "projector output"
    assert field.where("visionzip") == "vision encoder" and field.where("fastv") == "decoder layers"


def test_paper_budget_pairs_shares_of_the_tokens():
    assert [field.paper_budget(b, 256) for b in (64, 28, 14)] == [128, 64, 32]
    assert field.paper_budget(64, 576) == 64
    with pytest.raises(ValueError):
        field.paper_budget(300, 256)


def test_comparison_table_gives_shares_of_the_unpruned_accuracy_beside_table_1():
    table = field.comparison_table(_run(HITS), _run(HITS))  # pooled: same hits twice
    assert list(table.index) == ["cdpruner", "eadp", "fastv"]  # best first at the smallest budget; no ablation
    assert table.loc["eadp", "lab 64/256"] == pytest.approx(7 / 8)
    assert table.loc["cdpruner", "lab 14/256"] == pytest.approx(5 / 8)
    assert table.loc["eadp", "paper 128/576"] == pytest.approx(63.5 / 64.9)
    assert math.isnan(table.loc["fastv", "paper 32/576"])  # Table 1 has no FastV at 32 tokens
    assert table.attrs == {"questions": 16, "unpruned": 1.0, "tokens": 256}
    figures = field.comparison_figures(table)
    assert figures["field_best_1"].startswith("cdpruner (62.5%") and figures["field_eadp_rank_0"] == "1 of 3"
    with pytest.raises(ValueError, match="'none'"):
        field.comparison_table(_run({("eadp", 64): "1"}))


def test_compute_frame_places_each_configuration_at_its_flops():
    eff = [{"method": "none", "budget": None, "prefill_flops": 100, "full_layers": 4},
           {"method": "eadp", "budget": 64, "prefill_flops": 25, "full_layers": 0},
           {"method": "fastv", "budget": 64, "prefill_flops": 40, "full_layers": 1}]
    frame = field.compute_frame(_run(HITS), eff).set_index("method")
    assert frame.loc["none", "flops_share"] == 1 and frame.loc["none", "budget"] == 256
    assert frame.loc["fastv", "flops_share"] == 0.4 and frame.loc["fastv", "where"] == "decoder layers"
    assert "eadp 87.5% at 25% of the FLOPs" in field.compute_sentence(frame.reset_index(), 64)
    assert "(1 layer with every token)" in field.compute_sentence(frame.reset_index(), 64)
    with pytest.raises(ValueError, match="'none'"):
        field.compute_frame(_run(HITS), eff[1:])


def test_rival_gap_is_paired_and_names_what_each_kept():
    measures = {"eadp": {"named_reached": 0.6, "named_recall": 0.1, "kept_nearest": 3.0},
                "cdpruner": {"named_reached": 0.8, "named_recall": 0.3, "kept_nearest": 2.5}}
    gap = synthesis.rival_gap([_run(HITS, measures)], "eadp", "cdpruner", 14)
    assert gap["difference"] == pytest.approx(-1 / 8) and gap["n"] == 8
    assert gap["low"] < gap["difference"] < gap["high"]
    assert gap["a_named_reached"] == 0.6 and gap["b_kept_nearest"] == 2.5
    text = synthesis.rival_sentence(gap, "eadp", "cdpruner", 14)
    assert text.startswith("at 14 tokens eadp is level (the interval covers 0): -12.5 points")
    assert "60.0% of them against 80.0% for cdpruner" in text
    assert synthesis.rival_gap([_run(HITS)], "eadp", "eadp-topk", 14)["difference"] == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="no dart"):
        synthesis.rival_gap([_run(HITS)], "eadp", "dart", 14)


def test_selection_correlations_leave_out_the_methods_inside_the_language_model():
    frame = synthesis.method_frame(_run(HITS), budget=14)
    assert list(frame.index) == ["cdpruner", "eadp", "fastv"] and "eadp-topk" not in frame.index
    assert synthesis.run_budgets(_run(HITS)) == [64, 14]
    corr = synthesis.selection_correlations(frame)
    assert corr["kept_nearest"]["n"] == 2  # eadp and cdpruner; fastv is in the decoder
    assert set(synthesis.correlation_table({14: frame}).columns.get_level_values(0)) == {"rho", "p"}


def test_matched_cuts_two_position_runs_to_what_both_ran():
    """A renumbered run extended with methods that have no original-positions twin (VisionZip cannot
    run there) still compares with its twin on the configurations both hold."""
    from eadp_lab.evaluation import matched, positions_gap

    renumbered = dict(_run(HITS), seed=1)
    original = _run({k: v for k, v in HITS.items() if k[0] != "fastv"})
    with pytest.raises(ValueError, match="same methods"):
        positions_gap(renumbered, original)
    a, b = matched(renumbered, original)
    assert a["seed"] == 1 and {r["method"] for r in a["results"]} == {"none", "eadp", "cdpruner", "eadp-topk"}
    assert len(a["results"]) == len(b["results"]) == 6
    assert positions_gap(a, b).fillna(0).eq(0).all().all()  # eadp-topk ran at 14 tokens only: NaN at 64
