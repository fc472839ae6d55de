"""VisionZip and HiPrune (the vision-encoder methods): the reference cases of tests/reference-methods/
(made with the authors' code, see its README) reproduced within the tolerances, and each function on
examples small enough to check by hand."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eadp_lab.methods.hiprune import (HiPruneQwenSettings, HiPruneSettings, anchor_count, attention_received,
                                      hiprune_qwen, hiprune_qwen_select, hiprune_select, qwen_anchor_count,
                                      qwen_merged_scores, qwen_window_index, scaled_layer)
from eadp_lab.methods.visionzip import (PUBLISHED_SPLITS, VisionZipSettings, contextual_tokens, dominant_tokens,
                                        layer_attention, split_budget, visionzip)
from eadp_lab.reference import compare_case, main, run_case, track_of

HERE = Path(__file__).parent / "reference-methods"
TRACKS = ("visionzip", "hiprune", "hiprune_qwen")  # this folder also holds the in-LLM methods' cases
CASES = sorted(p for p in HERE.glob("*.json") if json.loads(p.read_text())["track"] in TRACKS)


def load(path: Path):
    settings = json.loads(path.read_text())
    tensors = load_file(path.with_suffix(".safetensors"))
    track = track_of(settings)
    return settings, tensors, track, {k: v for k, v in tensors.items() if track.is_input(k)}


# ------------------------------------------------------------------ reference cases


def test_cases_present():
    tracks = [json.loads(p.read_text())["track"] for p in CASES]
    assert tracks.count("visionzip") >= 2 and tracks.count("hiprune") >= 1 and tracks.count("hiprune_qwen") >= 2


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_case_reproduced(path):
    settings, expected, track, inputs = load(path)
    got = run_case(settings, inputs)
    assert set(got) == set(settings["outputs"])  # every output the case lists, and no more
    assert compare_case(expected, got, track=track) == []
    for name, value in got.items():  # exactly: ints and bools identical, floats within 1e-5
        want = expected[name]
        assert value.dtype == want.dtype and value.shape == want.shape
        if want.is_floating_point():
            assert float((value - want).abs().max()) <= 1e-5
        else:
            assert torch.equal(value, want)


def test_check_command_reproduces_a_case(capsys):
    case = HERE / "hiprune_b5_n64_t16"
    assert main(["check", f"{case}.json", f"{case}.safetensors"]) == 0
    assert capsys.readouterr().out.strip() == "reproduced"


def test_compare_case_detects_a_wrong_pick():
    settings, expected, track, inputs = load(HERE / "visionzip_b5_n64_d16_c4.json")
    got = run_case(settings, inputs)
    got["all_indices"] = got["all_indices"].flip(1)
    assert compare_case(expected, got, track=track) == ["all_indices: differs"]


@pytest.mark.parametrize("change, message", [({"dominant_nm": 3}, "unknown settings"),
                                             ({"dominant_num": 3}, "dominant_num"),
                                             ({"heads": 7}, "heads")])
def test_bad_settings_are_errors(change, message):
    settings, _, _, inputs = load(HERE / "visionzip_b5_n64_d16_c4.json")
    with pytest.raises(ValueError, match=message):
        run_case({**settings, **change}, inputs)


# ------------------------------------------------------------------ VisionZip by hand


def uniform_rows(received: torch.Tensor, heads: int = 2) -> torch.Tensor:
    """``(B, heads, S, S)`` attention whose every query row is ``received`` ``(B, S)`` (rows sum to 1)."""
    p = received / received.sum(-1, keepdim=True)
    B, S = p.shape
    return p[:, None, None, :].expand(B, heads, S, S).clone()


def test_split_budget_gives_the_published_pairs():
    assert {b: split_budget(b) for b in PUBLISHED_SPLITS} == PUBLISHED_SPLITS
    assert split_budget(2) == (1, 1) and split_budget(32) == (27, 5) and split_budget(16) == (14, 2)
    for budget in range(2, 600):
        dominant, contextual = split_budget(budget)
        assert dominant + contextual == budget and dominant >= 1 and contextual >= 1
    with pytest.raises(ValueError, match="budget must be an integer >= 2, got 1"):
        split_budget(1)


def test_visionzip_settings():
    assert VisionZipSettings().budget is None and VisionZipSettings.from_budget(192) == VisionZipSettings(162, 30)
    assert VisionZipSettings().split(64) == (54, 10) and VisionZipSettings(50, 14).split(64) == (50, 14)
    with pytest.raises(ValueError, match=r"dominant \+ contextual \(50 \+ 14\) must equal the budget 28"):
        VisionZipSettings(50, 14).split(28)
    with pytest.raises(ValueError, match="together, or neither"):
        VisionZipSettings(dominant=54)
    with pytest.raises(ValueError, match="dominant must be an integer >= 1, got 0"):
        VisionZipSettings(dominant=0, contextual=10)
    with pytest.raises(ValueError, match="contextual must be an integer >= 1, got 2.0"):
        VisionZipSettings(dominant=54, contextual=2.0)
    with pytest.raises(ValueError, match="at most the 4 patches"):
        VisionZipSettings(3, 3).check_tokens(4)


def test_dominant_tokens_sum_the_cls_row_over_heads():
    attn = torch.zeros(1, 2, 5, 5)
    attn[0, 0, 0] = torch.tensor([0.1, 0.5, 0.1, 0.2, 0.1])  # CLS row of head 0
    attn[0, 1, 0] = torch.tensor([0.1, 0.0, 0.1, 0.4, 0.35])  # head 1: sums 0.5, 0.2, 0.6, 0.45 on patches 0..3
    assert dominant_tokens(attn, 3).tolist() == [[2, 0]]  # CLS counted: 2 patches, topk order
    assert dominant_tokens(attn, 1).shape == (1, 0)


def test_visionzip_on_a_2x2_grid():
    # Patches 0..3 of a 2 x 2 grid; patch 2 gets CLS's attention. dominant 2 = CLS + patch 2.
    attn = uniform_rows(torch.tensor([[1.0, 1.0, 1.0, 5.0, 1.0]]))
    hidden = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, 0.0]]])  # CLS, patches 0..3
    metric = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [0.1, 3.0]]])
    # filtered patches [0, 1, 3], M = 3; C = 2: step 1, targets = patches 0 and 1; patch 3's key is closest to 1's.
    result = visionzip(attn, hidden, metric, dominant=2, contextual=2)
    assert result.dominant_topk.tolist() == [[2]] and result.all_indices.tolist() == [[0, 3]]
    assert result.merge.targets.tolist() == [[0, 1]] and result.merge.target_slots.tolist() == [0, 1]
    assert result.merge.assign.tolist() == [[1]]
    assert result.absorbed_by.tolist() == [[0, 1, -1, 1]]
    expected = [[9.0, 9.0], [2.0, 2.0], [1.0, 0.0], [0.0 + 4.0, 1.0 + 0.0]]  # CLS, patch 2, h0 alone, h1 + mean(h3)
    assert result.tokens.tolist() == [expected]


def test_a_contextual_token_is_its_target_plus_the_mean_of_the_others():
    hidden = torch.tensor([[[0.0], [10.0], [2.0], [4.0]]])  # CLS, patches 0..2
    metric = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.1], [1.0, -0.1]]])
    merge = contextual_tokens(hidden, metric, torch.zeros(1, 0, dtype=torch.long), 1)
    assert merge.targets.tolist() == [[0]] and merge.tokens.tolist() == [[[10.0 + (2.0 + 4.0) / 2]]]
    assert merge.absorbed_by.tolist() == [[0, 0, 0]]


def test_contextual_targets_stride_over_the_filtered_list():
    hidden, metric = torch.randn(1, 11, 3), torch.randn(1, 11, 4)
    keep = torch.tensor([[1, 4, 7]])  # filtered: [0, 2, 3, 5, 6, 8, 9], M = 7, C = 3: step 2, slots 0, 2, 4
    merge = contextual_tokens(hidden, metric, keep, 3)
    assert merge.target_slots.tolist() == [0, 2, 4] and merge.targets.tolist() == [[0, 3, 6]]
    assert merge.filtered.tolist() == [[0, 2, 3, 5, 6, 8, 9]]
    assert (merge.absorbed_by[0, [1, 4, 7]] == -1).all() and (merge.absorbed_by[0, [0, 3, 6]] == torch.arange(3)).all()


def tiny_clip(attn_implementation: str):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=28, patch_size=7)
    return CLIPVisionModel._from_config(config, attn_implementation=attn_implementation).eval()


def test_layer_attention_matches_transformers_eager_attention():
    eager = tiny_clip("eager")
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = eager(pixels, output_attentions=True, output_hidden_states=True)
    layers = eager.encoder.layers
    for i, layer in enumerate(layers):
        got = layer_attention(layer, out.hidden_states[i])
        assert got.attn.shape == (2, 4, 17, 17)
        torch.testing.assert_close(got.attn, out.attentions[i], rtol=0, atol=1e-6)
    keys = layers[-2].self_attn.k_proj(layers[-2].layer_norm1(out.hidden_states[-3])).view(2, 17, 4, 8)
    torch.testing.assert_close(layer_attention(layers[-2], out.hidden_states[-3]).metric, keys.mean(2))

    sdpa = tiny_clip("sdpa")  # same seed, same weights; the helper leaves its attention implementation alone
    with torch.no_grad():
        hidden = sdpa(pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(layer_attention(sdpa.encoder.layers[-2], hidden[-3]).attn,
                               out.attentions[-2], rtol=0, atol=1e-5)
    assert sdpa.config._attn_implementation == "sdpa"


# ------------------------------------------------------------------ HiPrune (LLaVA) by hand


def test_scaled_layer():
    assert scaled_layer(9, 24) == 9 and scaled_layer(22, 24) == 22
    assert scaled_layer(9, 12) == 5  # 4.5: halves round up
    assert scaled_layer(9, 4) == 2 and scaled_layer(22, 4) == 3  # 3.67 -> 4, clamped to depth - 1
    assert scaled_layer(1, 2) == 1 and scaled_layer(4, 16, 32) == 2
    with pytest.raises(ValueError, match="depth must be an integer >= 2, got 1"):
        scaled_layer(9, 1)
    assert all(scaled_layer(i, 24) == i for i in range(1, 24))


def test_hiprune_settings():
    assert HiPruneSettings().layers(24) == (8, 22) and HiPruneSettings().layers(12) == (4, 11)
    assert HiPruneQwenSettings().layers(32) == (3, 31)
    assert [anchor_count(t) for t in (16, 25, 64, 128, 192)] == [1, 1, 1, 3, 4]
    assert [qwen_anchor_count(t) for t in (4, 128, 256, 512)] == [0, 13, 26, 51]
    with pytest.raises(ValueError, match=r"object_layer must be an integer in \[1, 24\], got 0"):
        HiPruneSettings(object_layer=0)
    with pytest.raises(ValueError, match="alpha must be a finite real number >= 0, got -0.1"):
        HiPruneSettings(alpha=-0.1)


def test_attention_received_averages_all_query_rows_and_drops_cls():
    attn = torch.zeros(1, 2, 3, 3)
    attn[0, 0] = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    attn[0, 1] = torch.tensor([[0, 1.0, 0], [0, 1, 0], [0, 1, 0]])
    assert torch.allclose(attention_received(attn), torch.tensor([[(1 + 3) / 6, 1 / 6]]))


def test_hiprune_buffers_wrap_rows_and_clamp_at_the_corners():
    # 3 x 3 grid; the shallow map points at the bottom-left patch 6: buffers 5 (end of the row above: wrapped),
    # 7, 3 and 9 -> clamped to 8.
    shallow = uniform_rows(torch.tensor([[1.0, 1, 1, 1, 1, 1, 1, 9, 1, 1]]))
    deep = uniform_rows(torch.tensor([[1.0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]))  # deep favours high indices
    picks = hiprune_select(shallow, deep, budget=6, grid_side=3)
    assert picks.anchors.tolist() == [[6]]
    assert picks.shallow_mask[0].nonzero().flatten().tolist() == [3, 5, 6, 7, 8]
    assert picks.indices.tolist() == [[3, 4, 5, 6, 7, 8]]  # one deep pick: the best patch not yet chosen, 4
    top_left = hiprune_select(uniform_rows(torch.tensor([[1.0, 9, 1, 1, 1, 1, 1, 1, 1, 1]])), deep, 3, grid_side=3)
    assert top_left.shallow_mask[0].nonzero().flatten().tolist() == [0, 1, 3]  # -1 and -3 clamp to 0


def test_hiprune_keeps_all_buffers_when_they_exceed_the_budget():
    shallow = uniform_rows(torch.tensor([[1.0, 1, 1, 1, 1, 9, 1, 1, 1, 1], [1.0, 9, 1, 1, 1, 1, 1, 1, 1, 1]]))
    deep = uniform_rows(torch.rand(2, 10, generator=torch.Generator().manual_seed(0)))
    picks = hiprune_select(shallow, deep, budget=2, grid_side=3)  # anchors 4 (centre) and 0 (corner)
    assert picks.indices.tolist() == [[1, 3, 4, 5, 7], [0, 1, 3, -1, -1]]  # more than T, ragged: -1 padding
    assert picks.index_mask.sum(1).tolist() == [5, 3]


def test_hiprune_deep_fill_is_vectorised_per_row():
    gen = torch.Generator().manual_seed(3)
    shallow, deep = uniform_rows(torch.rand(4, 17, generator=gen)), uniform_rows(torch.rand(4, 17, generator=gen))
    picks = hiprune_select(shallow, deep, budget=9, grid_side=4)
    for row in range(4):  # the published per-row loop, on each row
        chosen = picks.shallow_mask[row]
        scores = picks.deep_score[row] - chosen.int()
        rest = scores.topk(9 - int(chosen.sum())).indices
        expected = torch.unique(torch.cat([chosen.nonzero().flatten(), rest]))
        assert picks.indices[row].tolist() == expected.tolist()


# ------------------------------------------------------------------ HiPrune (Qwen2.5-VL) by hand


def test_qwen_window_index():
    index, bounds = qwen_window_index(torch.tensor([[1, 8, 16]]))  # merged 4 x 8: two 4 x 4 windows side by side
    assert index.tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27,
                              4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31]
    assert bounds.tolist() == [0, 64, 128]
    index, bounds = qwen_window_index(torch.tensor([[1, 4, 4], [2, 2, 10]]))  # 2 x 2; two frames of 1 x 5
    assert index.tolist() == [0, 1, 2, 3, 4 + 0, 4 + 1, 4 + 2, 4 + 3, 4 + 4, 4 + 5, 4 + 6, 4 + 7, 4 + 8, 4 + 9]
    assert bounds.tolist() == [0, 16, 32, 36, 52, 56]


def test_qwen_merged_scores():
    attn = torch.zeros(2, 8, 8)
    attn[:, :, 5] = 1.0  # every query of both heads looks at patch 5 (merged token 1)
    assert qwen_merged_scores(attn).tolist() == [0.0, 0.25]
    assert qwen_merged_scores(attn, window_index=torch.tensor([1, 0])).tolist() == [0.25, 0.0]


def test_hiprune_qwen_select_by_hand():
    deep = torch.arange(16.0)  # deep favours high indices
    shallow = torch.zeros(16)
    shallow[5] = 1.0
    picks = hiprune_qwen_select(shallow, deep, budget=8, width=4, alpha=0.5)  # round(0.8) = 1 anchor
    assert picks.anchors.tolist() == [5] and picks.shallow_mask.nonzero().flatten().tolist() == [1, 4, 5, 6, 9]
    assert picks.indices.tolist() == [1, 4, 5, 6, 9, 13, 14, 15]
    assert hiprune_qwen_select(shallow, deep, 4, 4, 0.5).indices.tolist() == [12, 13, 14, 15]  # 0 anchors
    assert hiprune_qwen_select(shallow, deep, 3, 4, 2.0).indices.tolist() == [1, 4, 5]  # cut to the lowest 3
    assert hiprune_qwen_select(shallow, deep, 20, 4).indices.tolist() == list(range(16))  # T >= n: all


def test_hiprune_qwen_over_images():
    grid = torch.tensor([[1, 4, 4], [1, 4, 8]])  # 4 merged tokens (all kept: T >= n), then 2 x 4
    shallow = torch.zeros(12)
    shallow[4 + 1] = 1.0  # the second image's anchor: its token 1, buffers 0, 2, 5 (and 1 - 4 -> 0)
    indices, sizes = hiprune_qwen(shallow, torch.arange(12.0), grid, budget=6, alpha=0.5)
    assert sizes.tolist() == [4, 6] and indices.tolist() == [0, 1, 2, 3, 0, 1, 2, 5, 6, 7]
    with pytest.raises(ValueError, match="grid_thw covers 12 merged tokens"):
        hiprune_qwen(torch.zeros(10), torch.zeros(10), grid, 6)
