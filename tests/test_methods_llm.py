"""FastV, PyramidDrop, DART and SparseVLM (inside the language model): the reference cases made with the
authors' code (tests/reference-methods/README-llm.md), hand-checkable examples of each selection core,
the settings' checks, and the budget / schedule rules."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eadp_lab.methods._layers import scaled_layer, scaled_layers, sequence_keep_index
from eadp_lab.methods.dart import (DARTSettings, dart_keep, dart_kept_count, dart_pivot_order, dart_pivots,
                                   dart_token_topk, dart_token_topk_published)
from eadp_lab.methods.fastv import FastVSettings, fastv_keep, fastv_scores
from eadp_lab.methods.pyramiddrop import (PyramidDropSettings, pyramiddrop_counts, pyramiddrop_keep,
                                          pyramiddrop_schedule, pyramiddrop_scores)
from eadp_lab.methods.sparsevlm import (SPARSEVLM_RETAIN_TOKN, SparseVLMSettings, dpc_knn_merge,
                                        sparsevlm_layer, sparsevlm_raters, sparsevlm_relevance,
                                        sparsevlm_stage_counts, sparsevlm_token_list)
from eadp_lab.reference import compare_case, read_settings, read_tensors, run_case, track_of

CASES_DIR = Path(__file__).parent / "reference-methods"
CASES = ["fastv_b1_n64_k2_r16", "pdrop_b1_n64_l2-6_lam06", "pdrop_b2_n144_l8-16-24_lam05",
         "dart_b1_n576_p4x4_r0778", "dart_b2_n144_p2x2_r075", "dart_b1_n64_p4x2_r05", "sparsevlm_n64_32-16-8"]


def _case(name):
    settings = read_settings(CASES_DIR / f"{name}.json")
    tensors = read_tensors(CASES_DIR / f"{name}.safetensors")
    return settings, tensors


# ---------------------------------------------------------------- reference cases (the authors' code)

@pytest.mark.parametrize("name", CASES)
def test_reference_case_reproduced(name):
    settings, tensors = _case(name)
    track = track_of(settings)
    out = run_case(settings, {k: v for k, v in tensors.items() if track.is_input(k)})
    assert compare_case(tensors, out, track=track) == []
    assert set(out) == set(settings["outputs"])


def test_dart_case_in_the_published_set_order():
    """Beyond the set comparison: the lab builds the same CPython set, so even the order matches."""
    settings, tensors = _case("dart_b1_n576_p4x4_r0778")
    out = run_case(settings, {k: tensors[k] for k in ("last_layer_state", "any_states")})
    assert torch.equal(out["retained_image_tokens_index"], tensors["retained_image_tokens_index"])
    assert torch.equal(out["pivot_order"], tensors["pivot_order"])


def test_reference_command_line_on_a_case():
    """``python -m eadp_lab.reference`` runs as ``__main__``; the tracks must be known there too."""
    case = CASES_DIR / "dart_b1_n64_p4x2_r05"
    proc = subprocess.run([sys.executable, "-m", "eadp_lab.reference", "check", f"{case}.json",
                           f"{case}.safetensors"], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "reproduced"


def test_tracks_refuse_unknown_settings_and_disagreeing_counts():
    settings, tensors = _case("fastv_b1_n64_k2_r16")
    with pytest.raises(ValueError, match=r"unknown settings in the fastv case: \['agg_layers'\]"):
        run_case({**settings, "agg_layers": 2}, {"attention": tensors["attention"]})
    settings, tensors = _case("dart_b1_n64_p4x2_r05")
    inputs = {k: tensors[k] for k in ("last_layer_state", "any_states")}
    with pytest.raises(ValueError, match="the case states token_topk = 6 but the lab computes 5"):
        run_case({**settings, "token_topk": 6}, inputs)
    settings, tensors = _case("pdrop_b1_n64_l2-6_lam06")
    with pytest.raises(ValueError, match="stage_keep_length"):
        run_case({**settings, "stage_keep_length": [38, 22]}, dict(tensors))


def test_staged_tracks_accept_any_number_of_stages():
    settings, _ = _case("pdrop_b1_n64_l2-6_lam06")
    track = track_of(settings)
    assert track.inputs == ("query_states_0", "key_states_0")  # what every case has
    assert track.is_input("query_states_2") and track.is_input("key_states_11")
    assert not track.is_input("top_rank_index_0") and not track.is_input("query_states_")


# ---------------------------------------------------------------- layers

def test_scaled_layer():
    assert scaled_layer(2, 32) == 2
    assert scaled_layer(2, 24) == 2  # 1.5 rounds up
    assert scaled_layer(2, 40) == 3  # 2.5 rounds up
    assert scaled_layer(15, 28) == 13
    assert [scaled_layer(i, 24) for i in (8, 16, 24)] == [6, 12, 18]
    assert scaled_layer(0, 12) == 1 and scaled_layer(31, 4) == 3  # clamped to [1, depth - 1]
    assert scaled_layers((2, 6, 15), 16) == (1, 3, 8)
    with pytest.raises(ValueError, match="must stay strictly increasing"):
        scaled_layers((2, 6, 15), 2)
    with pytest.raises(ValueError, match="depth must be an integer >= 2, got 1"):
        scaled_layer(2, 1)


def test_sequence_keep_index_is_sorted():
    kept = torch.tensor([[4, 2], [3, 1]])
    assert sequence_keep_index(kept, 1, 4, 7).tolist() == [[0, 2, 4, 5, 6], [0, 1, 3, 5, 6]]


# ---------------------------------------------------------------- FastV

def _fastv_attention():
    """B 1, H 2, L 6; image [1, 4); only the last row matters."""
    attention = torch.zeros(1, 2, 6, 6)
    attention[0, 0, -1] = torch.tensor([0.1, 0.1, 0.5, 0.2, 0.05, 0.05])
    attention[0, 1, -1] = torch.tensor([0.1, 0.1, 0.2, 0.6, 0.0, 0.0])
    return attention  # head means on the image: 0.1, 0.35, 0.4


def test_fastv_keep_by_hand():
    attention = _fastv_attention()
    assert torch.allclose(fastv_scores(attention, 1, 3), torch.tensor([[0.1, 0.35, 0.4]]))
    picked = fastv_keep(attention, 1, 3, 2)
    assert picked.image_index.tolist() == [[3, 2]]  # top-k order, absolute positions
    assert picked.keep_index.tolist() == [[0, 2, 3, 4, 5]]  # sorted
    assert fastv_keep(attention, 1, 3, 3).keep_index.tolist() == [[0, 1, 2, 3, 4, 5]]


def test_fastv_rows_are_scored_on_their_own():
    other = _fastv_attention()
    other[..., 1:4] = other[..., 1:4].flip(-1)  # row 1: image scores 0.4, 0.35, 0.1
    attention = torch.cat([_fastv_attention(), other])
    assert fastv_keep(attention, 1, 3, 1).image_index.tolist() == [[3], [1]]


def test_fastv_checks():
    with pytest.raises(ValueError, match=r"keep must be an integer in \[1, 3\], got 4"):
        fastv_keep(_fastv_attention(), 1, 3, 4)
    with pytest.raises(ValueError, match="does not fit a sequence of 6"):
        fastv_keep(_fastv_attention(), 4, 3, 1)
    with pytest.raises(ValueError, match=r"attention must have shape \(B, H, L, L\)"):
        fastv_scores(torch.zeros(2, 6, 6), 1, 3)
    assert FastVSettings().layer(32) == 2 and FastVSettings(k=3).layer(24) == 2
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 31\], got 0"):
        FastVSettings(k=0)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 31\], got 2.0"):
        FastVSettings(k=2.0)
    with pytest.raises(ValueError, match="published_depth must be an integer >= 2, got 1"):
        FastVSettings(published_depth=1)


# ---------------------------------------------------------------- PyramidDrop

def _pdrop_qk():
    """B 1, H 1, head_dim 1, L 5, image [1, 4): every query is 1, so the logits are the keys."""
    q = torch.ones(1, 1, 5, 1)
    k = torch.tensor([0.0, 1.0, 2.0, 0.5, 0.0]).reshape(1, 1, 5, 1)
    return q, k


def test_pyramiddrop_scores_by_hand():
    q, k = _pdrop_qk()
    want = torch.softmax(torch.tensor([0.0, 1.0, 2.0, 0.5, 0.0]), 0)[1:4]
    assert torch.allclose(pyramiddrop_scores(q, k, 1, 3)[0], want)
    assert pyramiddrop_keep(q, k, 1, 3, 2).tolist() == [[1, 2]]  # top 2 are positions 2 and 1: sorted
    # the query at row 2: keys 3 and 4 are in its future (causal mask)
    masked = pyramiddrop_scores(q, k, 1, 3, query_index=2)[0]
    assert torch.allclose(masked, torch.cat([torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)[1:], torch.zeros(1)]))
    assert torch.equal(pyramiddrop_scores(q, k, 1, 3, query_index=torch.tensor([2]))[0], masked)


def test_pyramiddrop_grouped_keys_repeat_per_head():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 9, 8, generator=gen)
    k = torch.randn(2, 2, 9, 8, generator=gen)
    assert torch.equal(pyramiddrop_scores(q, k, 2, 5), pyramiddrop_scores(q, k.repeat_interleave(2, 1), 2, 5))
    with pytest.raises(ValueError, match="do not match"):
        pyramiddrop_scores(q, k[:, :, :8], 2, 5)


def test_pyramiddrop_counts_and_schedule():
    # the published counts: int() of the original N times each ratio
    assert pyramiddrop_counts(64, [0.6, 0.36]) == ((0.6, 0.36), (64, 38), (38, 23))
    assert pyramiddrop_schedule(576) == ((0.5, 0.25, 0.125), (576, 288, 144), (288, 144, 72))
    table = {192: (399, 276, 192), 128: (348, 211, 128), 96: (316, 174, 96), 72: (288, 144, 72),
             64: (276, 133, 64)}
    for budget, keep in table.items():
        schedule = pyramiddrop_schedule(576, budget)
        assert schedule.keep == keep
        assert schedule.image_tokens == (576,) + keep[:-1]
    assert pyramiddrop_schedule(576, 72).ratios == pytest.approx((0.5, 0.25, 0.125))
    # exactly T after the last stage even where int(N * (T / N)) falls one short
    assert int(22 * (15 / 22)) == 14 and pyramiddrop_schedule(22, 15).keep[-1] == 15
    for N, T in [(144, 48), (64, 16), (64, 1), (64, 64), (39, 31)]:
        assert pyramiddrop_schedule(N, T).keep[-1] == T
    assert pyramiddrop_schedule(64, 16, PyramidDropSettings(layers=(2, 6))).keep == (32, 16)
    with pytest.raises(ValueError, match=r"budget must be an integer in \[1, 64\], got 65"):
        pyramiddrop_schedule(64, 65)


def test_pyramiddrop_settings():
    settings = PyramidDropSettings(layers=[2, 6])
    assert settings.layers == (2, 6)
    assert PyramidDropSettings().stage_layers(24) == (6, 12, 18)
    with pytest.raises(ValueError, match="must stay strictly increasing"):
        PyramidDropSettings().stage_layers(2)
    with pytest.raises(ValueError, match="layers must be a non-empty, strictly increasing sequence"):
        PyramidDropSettings(layers=(8, 8))
    with pytest.raises(ValueError, match="layers must be a non-empty, strictly increasing sequence"):
        PyramidDropSettings(layers=())
    with pytest.raises(ValueError, match=r"layers must be an integer in \[1, 31\], got 32"):
        PyramidDropSettings(layers=(8, 32))
    with pytest.raises(ValueError, match=r"ratio must be a real number in \(0, 1\], got 0"):
        PyramidDropSettings(ratio=0)


# ---------------------------------------------------------------- DART

def _dart_inputs():
    """L 6: prefix 0, image [1, 5), text 5. Keys' L1 norms: image pivot 1, text pivot 5."""
    hidden = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7], [1.0, 0.1]])[None]
    norms = torch.tensor([10.0, 5.0, 1.0, 1.0, 1.0, 3.0])
    keys = torch.stack([norms / 2, norms / 2], dim=-1).reshape(1, 1, 6, 2)
    return hidden, keys


def test_dart_keep_by_hand():
    hidden, keys = _dart_inputs()
    image, text = dart_pivots(keys, 1, 4, 1, 1)
    assert image.tolist() == [[1]] and text.tolist() == [[5]]  # the prefix (norm 10) is never a pivot
    picked = dart_keep(hidden, keys, 1, 4, token_topk=1, pivot_image=1, pivot_text=1)
    # pivot 1 (1, 0) takes its least similar candidate, 3 (cos -1); pivot 5 (1, 0.1) then takes 2 (cos 0.1 < 0.77)
    assert picked.pivot_order.tolist() == [[1, 5]]
    assert sorted(picked.image_index[0].tolist()) == [1, 2, 3]
    assert picked.keep_index.tolist() == [[0, 1, 2, 3, 5]]
    assert picked.image_index.shape[1] == dart_kept_count(1, 1, 1) == 3


def test_dart_visits_pivots_in_set_order():
    assert dart_pivot_order([17, 1], [33, 2]) == [17, 2, 1, 33]  # neither sorted nor top-k order
    assert dart_pivot_order([40, 8], [33]) == list({40, 8, 33})


def test_dart_budget_rule():
    # pivot_image + token_topk * (pivot_image + pivot_text) <= budget, the largest such count
    assert [dart_token_topk(b) for b in (192, 128, 64, 12, 4)] == [23, 15, 7, 1, 0]
    assert [dart_kept_count(dart_token_topk(b), 4, 4) for b in (192, 128, 64, 13)] == [188, 124, 60, 12]
    assert dart_token_topk(34, DARTSettings(pivot_image=4, pivot_text=2)) == 5  # 4 + 5 * 6 = 34 exactly
    assert dart_token_topk_published(576, 0.778, 4, 4) == 15 == dart_token_topk_published(576, 0.7778, 4, 4)
    with pytest.raises(ValueError, match="budget must be an integer >= 4, got 3"):
        dart_token_topk(3)
    with pytest.raises(ValueError, match=r"budget must be an integer in \[4, 64\], got 65"):
        dart_token_topk(65, num_tokens=64)


def test_dart_checks_and_settings():
    hidden, keys = _dart_inputs()
    with pytest.raises(ValueError, match=r"token_topk must be an integer in \[0, 1\], got 2"):
        dart_keep(hidden, keys, 1, 4, token_topk=2, pivot_image=1, pivot_text=1)
    assert DARTSettings().layer(32) == 2
    with pytest.raises(ValueError, match="pivot_image must be an integer >= 1, got 0"):
        DARTSettings(pivot_image=0)
    with pytest.raises(ValueError, match="pivot_text must be an integer >= 0, got -1"):
        DARTSettings(pivot_text=-1)


# ---------------------------------------------------------------- SparseVLM

def test_sparsevlm_raters_by_hand():
    # image [1, 3), text [3, 5): both visual tokens point at text token 0
    embeds = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 0.0], [0.0, 0.0]])[None]
    assert sparsevlm_raters(embeds, 1, 2).tolist() == [[True, False]]


def _sparse_inputs():
    """L 7: prefix 0, visual [1, 5), text 5 and 6; text token 0 (position 5) is the only rater."""
    attention = torch.zeros(1, 2, 7, 7)
    attention[0, 0, 5, 1:5] = torch.tensor([0.1, 0.5, 0.2, 0.2])
    attention[0, 1, 5, 1:5] = torch.tensor([0.1, 0.3, 0.2, 0.4])
    attention[0, :, 6, 1:5] = 1.0  # not a rater: ignored
    hidden = torch.arange(7.0)[None, :, None].expand(1, 7, 3).clone()
    return hidden, attention, torch.tensor([[True, False]])


def test_sparsevlm_layer_by_hand():
    hidden, attention, raters = _sparse_inputs()
    assert torch.allclose(sparsevlm_relevance(attention, 1, 4, raters), torch.tensor([[0.1, 0.4, 0.2, 0.3]]))
    step = sparsevlm_layer(hidden, attention, 1, 4, raters, keep=2)
    assert step.keep_mask.tolist() == [[False, True, False, True]]
    # dropped: visual 0 and 2 (relevance 0.1, 0.2); int(0.3 * 2) + 1 = 1 recycled: the second dropped one
    assert step.merge_index.tolist() == [[1]]
    assert torch.allclose(step.merged, torch.full((1, 1, 3), 3.0 / (1 + 1e-6)))
    assert step.hidden_states[0, :, 0].tolist() == pytest.approx([0, 2, 4, 3, 5, 6])
    assert step.visual_len == 3
    plain = sparsevlm_layer(hidden, attention, 1, 4, raters, keep=2, settings=SparseVLMSettings(merge=False))
    assert plain.hidden_states[0, :, 0].tolist() == [0, 2, 4, 5, 6] and plain.visual_len == 2
    # at most v - 1 tokens stay
    assert sparsevlm_layer(hidden, attention, 1, 4, raters, keep=9).keep_mask.sum() == 3


def test_dpc_knn_merge_two_clusters():
    tokens = torch.tensor([[0.0, 0.0], [0.0, 0.1], [10.0, 0.0], [10.0, 0.2]])[None]
    noise = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # breaks the density tie inside each pair
    merged = dpc_knn_merge(tokens, 2, density_noise=noise)
    # the tighter pair is denser, so its centre scores highest and comes first
    want = torch.tensor([[[0.0, 0.05], [10.0, 0.1]]]) * (2 / (2 + 1e-6))
    assert torch.allclose(merged, want, atol=1e-6)
    gen = torch.Generator().manual_seed(3)
    again = torch.Generator().manual_seed(3)
    assert torch.equal(dpc_knn_merge(tokens, 2, generator=gen), dpc_knn_merge(tokens, 2, generator=again))
    with pytest.raises(ValueError, match=r"density_noise must have shape \(B, n\) = \(1, 4\)"):
        dpc_knn_merge(tokens, 2, density_noise=torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"clusters must be an integer in \[1, 4\], got 5"):
        dpc_knn_merge(tokens, 5)


def test_sparsevlm_token_lists_and_counts():
    assert {k: sparsevlm_token_list(576, k) for k in SPARSEVLM_RETAIN_TOKN} == SPARSEVLM_RETAIN_TOKN
    assert SPARSEVLM_RETAIN_TOKN[64] == (66, 30, 17) and SPARSEVLM_RETAIN_TOKN[192] == (300, 200, 110)
    assert sparsevlm_token_list(576, 100) == (246, 56, 27)  # 1/8 of the way from the 96 row to the 128 row
    assert sparsevlm_token_list(144, 48) == (75, 50, 28)  # the 192 row times 144/576, halves up
    assert sparsevlm_token_list(64, 16) == (34, 15, 6)  # 144 on 576: between the 128 and 192 rows
    assert sparsevlm_token_list(576, 300) == (469, 313, 172)  # above 192: the 192 row times 300/192
    with pytest.raises(ValueError, match=r"budget must be an integer in \[1, 64\], got 0"):
        sparsevlm_token_list(64, 0)
    settings, _ = _case("sparsevlm_n64_32-16-8")
    assert sparsevlm_stage_counts(64, [32, 16, 8]) == settings["stage_counts"]
    counts = sparsevlm_stage_counts(576, SPARSEVLM_RETAIN_TOKN[64])
    assert [c["keep"] + c["clusters"] for c in counts] == [82, 32, 18]
    assert sparsevlm_stage_counts(4, [9], merge=False) == [
        {"visual_in": 4, "keep": 3, "dropped": 1, "merge_candidates": 0, "clusters": 0}]


def test_sparsevlm_settings():
    assert SparseVLMSettings().sparse_layers(32) == (2, 6, 15)
    assert SparseVLMSettings().sparse_layers(16) == (1, 3, 8)
    with pytest.raises(ValueError, match=r"recycle_ratio must be a real number in \[0, 1\], got 1.5"):
        SparseVLMSettings(recycle_ratio=1.5)
    with pytest.raises(ValueError, match="merge must be True or False, got 'yes'"):
        SparseVLMSettings(merge="yes")
    with pytest.raises(ValueError, match="layers must be a non-empty, strictly increasing sequence"):
        SparseVLMSettings(layers=(6, 2))
