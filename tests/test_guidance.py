"""The guidance measurements of chapters 01 and 02, on cases computed by hand (no trained model)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eadp_lab import EADPConfig, PruneInputs, preset
from eadp_lab import guidance as gd
from eadp_lab import scoring


def test_named_objects_is_the_union_of_refs():
    q = SimpleNamespace(refs=((), (3,), (3,), (), (1,), ()))
    assert gd.named_objects(q) == (1, 3)
    assert gd.named_objects(SimpleNamespace(refs=((), ()))) == ()


def test_object_masks_flattens_patch_masks():
    coverage = np.zeros((2, 2, 3), np.float32)
    coverage[0, 0, 0] = 1.0
    coverage[1, 1, 2] = 0.1  # too little for the threshold, but its best patch stays
    masks = gd.object_masks(coverage)
    assert masks.dtype == torch.bool and masks.shape == (2, 6)
    assert masks[0].tolist() == [True, False, False, False, False, False]
    assert masks[1].tolist() == [False, False, False, False, False, True]


def test_union_mask():
    masks = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]]).bool()
    assert gd.union_mask(masks, (0, 1)).tolist() == [True, True, False]
    assert gd.union_mask(masks, ()).tolist() == [False, False, False]


def test_top_share_by_hand():
    scores = torch.tensor([0.9, 0.1, 0.8, 0.8, 0.0])
    target = torch.tensor([True, False, False, True, False])
    assert gd.top_share(scores, target, 1) == 1.0
    assert gd.top_share(scores, target, 2) == 0.5  # tie 0.8: index 2 (off target) first
    assert gd.top_share(scores, target, 3) == pytest.approx(2 / 3)
    assert gd.top_share(scores, target, 99) == pytest.approx(2 / 5)  # k clipped to N
    with pytest.raises(ValueError):
        gd.top_share(scores, target, 0)


def _inputs(seed=0, N=16, C=8, L=5):
    g = torch.Generator().manual_seed(seed)
    return PruneInputs(features=torch.randn(1, N, 6, generator=g), image_embeds=torch.randn(1, N, C, generator=g),
                       text_embeds=torch.randn(1, 1, C, generator=g), text_embeds_seq=torch.randn(1, 1, L, C, generator=g),
                       grid=(4, 4))


def test_guidance_maps_are_the_stages_of_eadp():
    inputs = _inputs()
    config = EADPConfig(similarity_sign=1.0)
    maps = gd.guidance_maps(inputs, config)
    assert set(maps) == {"global", "dense", "fused", "importance"}
    assert all(m.shape == (16,) for m in maps.values())
    G = scoring.global_similarity(inputs.image_embeds, inputs.text_embeds, 1.0)[0, :, 0]
    assert torch.allclose(maps["global"], G)
    assert torch.allclose(maps["fused"], 0.5 * maps["global"] + 0.5 * maps["dense"], atol=1e-6)
    # alpha = 1: the fused score is the global one
    assert torch.allclose(gd.guidance_maps(inputs, config.replace(alpha=1.0))["fused"], G)
    two_rows = PruneInputs(features=torch.randn(2, 16, 6), text_embeds_seq=torch.randn(1, 1, 3, 6), rows_per_image=(2,))
    with pytest.raises(ValueError, match="one row"):
        gd.guidance_maps(two_rows, config)


def test_named_recall_by_hand():
    keep = torch.tensor([True, False, True, False])
    masks = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]).bool()
    out = gd.named_recall(keep, masks, (0, 1))
    assert out == {"recall": 0.25, "reached": 0.5, "all_reached": False}
    assert gd.named_recall(keep, masks, (0, 2))["all_reached"]
    empty = gd.named_recall(keep, masks, ())
    assert math.isnan(empty["recall"]) and not empty["all_reached"]


def test_compare_kept_runs_each_method():
    inputs = _inputs(1)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, -2:] = True
    methods = {"eadp": ("eadp", EADPConfig()), "everything": ("none", None), "pool": ("pool", None)}
    rows = gd.compare_kept(inputs, masks, (0, 1), methods, 4)
    assert [r["method"] for r in rows] == ["eadp", "everything", "pool"]
    assert rows[0]["kept"] == 4 and rows[0]["budget"] == 4
    assert rows[1]["recall"] == 1.0 and rows[1]["all_reached"]


def test_token_groups():
    tokens = ["<s>", "what", "colour", "is", "the", "red", "star", "?", "</s>", "<pad>", "red</w>", "zebra", "!!"]
    assert gd.token_groups(tokens) == ["start", "function", "other", "function", "function", "content", "content",
                                       "punctuation", "end", "padding", "content", "other", "punctuation"]
    assert set(gd.token_groups(tokens)) <= set(gd.GROUPS)
    assert gd.token_group("X", {"X": "padding"}) == "padding"


def test_token_groups_of_real_tokenizers():
    """A real checkpoint's tokens carry its tokenizer's word marks: LLaMA's SentencePiece '▁', Qwen's
    byte-level 'Ġ'; without them, no word of a Qwen prompt was a function or content word."""
    assert [gd.token_word(t) for t in ("\u2581the", "\u0120red", "red</w>", "el", "\u0120", "?")] == \
        ["the", "red", "red", "el", "", "?"]
    qwen = ["can", "\u0120you", "\u0120the", "\u0120colour", "\u0120b", "el", "ow", "\u0120yellow", "\u0120star", "\u0120?"]
    assert gd.token_groups(qwen) == ["function", "function", "function", "other", "other", "other", "other",
                                     "content", "content", "punctuation"]
    llama = ["\u2581what", "\u2581colour", "\u2581is", "\u2581the", "\u2581red", "\u2581star", "\u2581?"]
    assert gd.token_groups(llama) == gd.token_groups(["what", "colour", "is", "the", "red", "star", "?"])


def test_entropy_at_matches_scoring_and_bounds():
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(3, 10, generator=g) * 2 - 1
    H = gd.entropy_at(sim, [1.0, 100.0])
    assert H.shape == (2, 3)
    ref = scoring.spatial_entropy(sim.T[None, :, None, :], 100.0)[0, 0]
    assert torch.allclose(H[1], ref)
    assert bool((H <= math.log(10) + 1e-5).all()) and bool((H[1] < H[0]).all())  # hotter is flatter
    flat = gd.entropy_at(torch.zeros(1, 10), [100.0])
    assert flat.item() == pytest.approx(math.log(10), abs=1e-5)


def test_filter_share_by_hand():
    entropy = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3])
    content = torch.tensor([True, False, True, False, False])
    share = gd.filter_share(entropy, content, [0.2, 0.4, 0.6, 1.0])
    # keeps 1: {0}; 2: {0, 2}; 3: {0, 2, 4}; 5: all
    assert share.tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.4])


def test_separation_is_the_auc():
    assert gd.separation([0, 1], [2, 3]) == 1.0
    assert gd.separation([2, 3], [0, 1]) == 0.0
    assert gd.separation([1, 1], [1, 1]) == 0.5
    assert gd.separation([0, 2], [1, 3]) == 0.75
    assert gd.separation([0, float("nan")], [1]) == 1.0
    assert math.isnan(gd.separation([], [1.0]))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=40), rng.normal(size=50) + 0.5
    brute = np.mean([(x < y) + 0.5 * (x == y) for x in a for y in b])
    assert gd.separation(a, b) == pytest.approx(brute)


@pytest.fixture(scope="module")
def tiny_clip():
    from eadp_lab.labmodels.build import ClipSize, build_clip
    from eadp_lab.labmodels.tokenizer import clip_tokenizer

    size = ClipSize(vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1, text_heads=2,
                    projection_dim=16)
    return build_clip(size, seed=0).eval(), clip_tokenizer()


def test_scorer_with_positions_and_with_text(tiny_clip):
    from eadp_lab.models.scorers import CLIPScorer

    clip, tok = tiny_clip
    lab = SimpleNamespace(_scorer_for=lambda: CLIPScorer(clip, tok, "content"))
    paper, published = gd.scorer_with_positions(lab, "content"), gd.scorer_with_positions(lab, "all")
    question = "what colour is the red star ?"
    t_paper, t_all = paper.text(question), published.text(question)
    L = clip.config.text_config.max_position_embeddings
    assert t_all.dense.shape[2] == L and bool(t_all.mask.all())
    assert t_paper.mask[0, 0].sum() == len(question.split())
    groups = gd.token_groups(t_all.tokens)
    assert groups[0] == "start" and groups.count("end") == 1 and groups.count("padding") == L - 2 - 7
    # the text tower is causal: the words' embeddings do not depend on the padding after them
    assert torch.allclose(t_all.dense[0, 0, : t_paper.dense.shape[2]], t_paper.dense[0, 0], atol=1e-5)
    with pytest.raises(ValueError):
        gd.scorer_with_positions(lab, "padding")
    inputs = PruneInputs(features=torch.randn(1, 16, 6), image_embeds=torch.randn(1, 16, 16),
                         text_embeds_seq=t_paper.dense, text_mask=t_paper.mask, grid=(4, 4))
    swapped = gd.with_text(inputs, t_all)
    assert swapped.text_embeds_seq.shape[2] == L and swapped.features is inputs.features
    assert inputs.text_embeds_seq.shape[2] == t_paper.dense.shape[2]  # the original is unchanged
    cfg = preset("llava-1.5")
    from eadp_lab import prune

    assert prune("eadp", swapped, 4, cfg).keep_mask.sum() == 4


def test_filtered_words_are_the_lowest_entropy_scored_positions():
    inputs = _inputs(2, L=10)
    mask = torch.ones(1, 1, 10, dtype=torch.bool)
    mask[..., 0] = mask[..., -1] = False
    inputs = PruneInputs(features=inputs.features, image_embeds=inputs.image_embeds, text_embeds=inputs.text_embeds,
                         text_embeds_seq=inputs.text_embeds_seq, text_mask=mask, grid=(4, 4))
    config = EADPConfig(similarity_sign=1.0, entropy_keep_ratio=0.25)
    words = gd.filtered_words(inputs, config)
    assert words["scored"].tolist() == mask[0, 0].tolist()
    assert int(words["kept"].sum()) == 2  # floor(0.25 * 8)
    assert not bool((words["kept"] & ~words["scored"]).any())
    scored = words["entropy"][words["scored"]]
    assert torch.equal(torch.sort(words["entropy"][words["kept"]]).values, torch.sort(scored).values[:2])
    assert float(words["weight"].sum()) == pytest.approx(1.0) and not bool((words["weight"][~words["kept"]] != 0).any())
    h = words["entropy"][words["kept"]]
    assert torch.allclose(words["weight"][words["kept"]], torch.softmax(-h / (0.01 + 1e-6), 0))
