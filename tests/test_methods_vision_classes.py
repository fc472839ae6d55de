"""VisionZip and HiPrune through attach() on the tiny random models of every class: where they run (LLaVA-1.5,
LLaVA-NeXT and NeXT-Video images per AnyRes view, HiPrune's Qwen2.5-VL variant), what the language model
receives, the model restored exactly, and the clear refusals where they do not apply."""

import pytest

from eadp_lab.methods.settings import method_settings
import torch

import tiny_vlms as T
from eadp_lab import METHODS, attach
from eadp_lab.methods.hiprune import (HiPruneQwenSettings, HiPruneSettings, hiprune_qwen_select, hiprune_select,
                                      qwen_merged_scores, qwen_window_index)
from eadp_lab.methods.in_vision import qwen_block_scores, qwen_received, view_to_row, view_validity
from eadp_lab.methods.visionzip import layer_attention, split_budget, visionzip

GEN = dict(max_new_tokens=3, do_sample=False, suppress_tokens=[T.IMG, T.VID])
RUNS = [("llava", "visionzip"), ("llava", "hiprune"), ("llava_next", "visionzip"), ("llava_next", "hiprune"),
        ("llava_next_video", "visionzip"), ("llava_next_video", "hiprune"), ("qwen2_5_vl", "hiprune"),
        ("qwen3_vl", "hiprune")]
IDS = [f"{f}-{m}" for f, m in RUNS]


def left_padded(inputs, extra=2):
    """The batch with ``extra`` more text tokens at the start of sample 1's prompt, so sample 0 is left-padded."""
    words = torch.tensor([T.WORDS.index("a"), T.WORDS.index("the")][:extra])
    out = dict(inputs)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if key in inputs:
            value = inputs[key]
            pad = torch.zeros(value.shape[0], extra, dtype=value.dtype)
            if key == "input_ids":
                pad[0] = T.PAD
                pad[1] = words
            elif key == "attention_mask":
                pad[1] = 1
            out[key] = torch.cat([pad, value], 1)
    return out


def build(family, dtype=torch.float32):
    model = T.BUILDERS[family]().to(dtype)
    inputs = left_padded(T.inputs(family, model))
    return model, {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


def hooks_of(model):
    """Every module's hooks and the inner model's instance attributes: what attach must leave as it found."""
    hooks = {name: (len(m._forward_pre_hooks), len(m._forward_hooks)) for name, m in model.named_modules()}
    return hooks, sorted(vars(model.model))


def row_counts(item):
    return item.result.quotas.tolist()


# ------------------------------------------------------------------ every class where they apply


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("family, method", RUNS, ids=IDS)
@torch.no_grad()
def test_runs_on_the_class_and_restores_the_model(family, method, dtype):
    model, inputs = build(family, dtype)
    assert inputs["attention_mask"][0].sum() < inputs["attention_mask"].shape[1]  # the batch is left-padded
    twin, _ = build(family, dtype)  # never attached, the same calls
    twin.generate(**inputs, **GEN)
    before = model(**inputs).logits
    budget = 6  # HiPrune: 1 anchor and at most 4 buffers fit, then the deep fill
    seen = T.LMInputs(model)
    with attach(model, method, budget=budget, tokenizer=T.tokenizer()) as pruner:
        out = model.generate(**inputs, **GEN)
        record = pruner.last
    seen.remove()
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])  # the caller's own prompt
    for item in record.items:
        counts = [len(r) for r in item.layout.rows]
        want = [min(budget, n) for n in counts]  # exactly the budget per row (view), or a short row whole
        assert row_counts(item) == want and item.tokens_after >= sum(want)
        assert item.result.method == method
    # the decoder's prefill sees each sample's text and its kept visual tokens, no more
    prefill = seen.calls[0]
    placeholders = torch.isin(inputs["input_ids"], torch.tensor([T.IMG, T.VID]))
    text = ((inputs["attention_mask"] == 1) & ~placeholders).sum(1)
    for b in range(2):
        visual = sum(it.tokens_after for it in record.items if it.sample == b)
        length = prefill["attention_mask"][b].sum() if prefill.get("attention_mask") is not None else \
            prefill["inputs_embeds"].shape[1]
        assert int(length) == int(text[b]) + visual
    after = model(**inputs).logits
    assert hooks_of(model) == hooks_of(twin)  # restored exactly: no hook, no wrapper left
    assert torch.equal(after, before) and torch.equal(after, twin(**inputs).logits)


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_next_video", "qwen2_5_vl", "qwen3_vl"])
@torch.no_grad()
def test_hiprune_with_a_budget_of_every_token_leaves_the_logits_unchanged(family):
    model, inputs = build(family)
    before = model(**inputs).logits
    with attach(model, "hiprune", budget=10_000, tokenizer=T.tokenizer()) as pruner:
        during = model(**inputs).logits
        assert all(it.tokens_after == it.tokens_before for it in pruner.last.items)
    assert torch.allclose(during, before, atol=1e-5)


@torch.no_grad()
def test_hiprune_budget_of_exactly_the_largest_row_keeps_everything():
    model, inputs = build("llava_next")
    before = model(**inputs).logits
    side = T.SIZE // T.PATCH
    with attach(model, "hiprune", budget=side * side, tokenizer=T.tokenizer()) as pruner:  # the base view's tokens
        during = model(**inputs).logits
        assert all(it.tokens_after == it.tokens_before for it in pruner.last.items)
    assert torch.allclose(during, before, atol=1e-5)


# ------------------------------------------------------------------ AnyRes: per view, through the model's packing


def views(model, inputs, image):
    """The CLIP views (base, tiles) of one image of the batch and the tower's states on them."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    size = inputs["image_sizes"][image].tolist()
    k = image_size_to_num_patches(size, T.PINPOINTS, T.SIZE)
    out = model.model.vision_tower(inputs["pixel_values"][image, :k], output_hidden_states=True)
    return out.hidden_states


@pytest.mark.parametrize("family", ["llava_next", "llava_next_video"])
@torch.no_grad()
def test_visionzip_prunes_each_anyres_view_as_published(family):
    model, inputs = build(family)
    budget = 6
    dominant, contextual = split_budget(budget)
    seen = T.LMInputs(model)
    with attach(model, "visionzip", budget=budget, tokenizer=T.tokenizer()) as pruner:
        model(**inputs)
        record = pruner.last
    seen.remove()
    embeds = seen.calls[0]["inputs_embeds"]
    for image, item in enumerate(record.items):
        states = views(model, inputs, image)  # embeddings, layer 0's output, layer 1's output
        layer = model.model.vision_tower.encoder.layers[0]  # read layer of -2 in a 2-layer tower
        attention = layer_attention(layer, states[0])
        result = visionzip(attention.attn.float(), states[-2], attention.metric.float(), dominant, contextual)
        expected = model.model.multi_modal_projector(result.tokens)  # (views, T, D), CLS counted
        short = [len(r) <= budget for r in item.layout.rows]
        for r, rows in enumerate(item.layout.rows):
            if not short[r]:
                assert torch.allclose(item.result.merged[r, :budget], expected[r], atol=1e-6)
        assert not short[0]  # the base view first, [CLS, dominant, contextual] as published, then the tiles
        start = int((inputs["input_ids"][image] == T.IMG).nonzero()[0])  # left padding shifts the prompt
        keep = record.kept_columns[image]  # (L,) the prompt columns the LM saw, re-left-padded
        first = embeds.shape[1] - int(keep.sum()) + int(keep[:start].sum())
        assert torch.allclose(embeds[image, first:first + budget], expected[0], atol=1e-6)


@pytest.mark.parametrize("family", ["llava_next", "llava_next_video"])
@torch.no_grad()
def test_hiprune_selects_per_anyres_view_among_its_unpadded_patches(family):
    model, inputs = build(family)
    budget = 5
    settings = HiPruneSettings()
    with attach(model, "hiprune", budget=budget, tokenizer=T.tokenizer()) as pruner:
        model(**inputs)
        record = pruner.last
    side = T.SIZE // T.PATCH
    encoder = model.model.vision_tower.encoder.layers
    cut = 0
    for image, item in enumerate(record.items):
        states = views(model, inputs, image)
        shallow, deep = settings.layers(len(encoder))[0], 0
        maps = [layer_attention(encoder[i], states[i]).attn.float() for i in (shallow, deep)]
        full = hiprune_select(*maps, budget, settings.alpha, side)  # the published selection on every view
        for r, rows in enumerate(item.layout.rows):
            kept = item.result.kept_indices(r)
            assert len(kept) == min(budget, len(rows))
            if len(rows) == side * side:  # a whole view: exactly the published picks
                assert torch.equal(kept, full.indices[r])
            else:  # a tile cut by unpadding: its own patches only
                cut += 1
    assert cut > 0  # the tiny inputs' unpadding cuts some tiles


def test_view_to_row_maps_view_patches_to_row_tokens():
    patches = [torch.arange(4), torch.tensor([1, 2])]  # row 1 keeps view patches 1 and 2 only
    index = torch.tensor([[0, 3], [2, 3]])
    assert view_to_row(index, patches, 4).tolist() == [[0, 3], [1, -1]]
    assert view_validity(patches, 4).tolist() == [[True] * 4, [False, True, True, False]]


def test_hiprune_valid_mask_keeps_the_budget_among_valid_patches():
    torch.manual_seed(0)
    attn = torch.softmax(torch.randn(2, 2, 17, 17), -1)
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, :8] = False  # row 1: the top half cut
    every = hiprune_select(attn, attn, 6, 0.9, 4, valid=torch.ones(2, 16, dtype=torch.bool))
    assert torch.equal(every.indices, hiprune_select(attn, attn, 6, 0.9, 4).indices)  # all valid: published
    some = hiprune_select(attn, attn, 6, 0.9, 4, valid=valid)
    assert some.index_mask.sum(1).tolist() == [6, 6] and not some.index_mask[1, :8].any()
    few = hiprune_select(attn, attn, 12, 0.9, 4, valid=valid)
    assert few.index_mask[1].sum() == 8  # fewer valid patches than the budget: all of them


# ------------------------------------------------------------------ Qwen2.5-VL: the published variant


def recorded_qwen_blocks(model, inputs):
    """Every ViT block's input, chunks and rotary embeddings on the batch's images (window order)."""
    got = {}

    def hook(i):
        def record(module, args, kwargs):
            got[i] = (args[0], kwargs["cu_seqlens"], kwargs["position_embeddings"])
        return record

    handles = [b.register_forward_pre_hook(hook(i), with_kwargs=True) for i, b in enumerate(model.model.visual.blocks)]
    model.model.get_image_features(pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    for h in handles:
        h.remove()
    return got


def full_masked_attention(block, hidden, cu_seqlens, position_embeddings):
    """``(H, S, S)``: the published eager attention over every patch of the call, masked to the chunks."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    S = hidden.shape[0]
    q, k, _ = block.attn.qkv(block.norm1(hidden)).reshape(S, 3, block.attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *position_embeddings)
    mask = torch.full((1, S, S), torch.finfo(q.dtype).min)
    for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        mask[..., a:b, a:b] = 0
    logits = q.transpose(0, 1) @ k.transpose(0, 1).transpose(1, 2) / block.attn.head_dim ** 0.5
    return torch.softmax(logits + mask, dim=-1, dtype=torch.float32)


@torch.no_grad()
def test_qwen_scores_match_the_published_masked_attention():
    model, inputs = build("qwen2_5_vl")
    blocks = recorded_qwen_blocks(model, inputs)
    for i, (hidden, cu_seqlens, rotary) in blocks.items():
        published = qwen_merged_scores(full_masked_attention(model.model.visual.blocks[i], hidden, cu_seqlens, rotary))
        received = qwen_received(model.model.visual.blocks[i], hidden, cu_seqlens, rotary, hidden.shape[0])
        assert torch.allclose(qwen_block_scores(received, 4, None), published, atol=1e-7, rtol=1e-5)
        window_index, _ = qwen_window_index(inputs["image_grid_thw"], 8, 2, 2)
        assert torch.allclose(qwen_block_scores(received, 4, window_index),
                              qwen_merged_scores(full_masked_attention(model.model.visual.blocks[i], hidden, cu_seqlens,
                                                                       rotary), window_index=window_index),
                              atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("order", ["window", "raster"])
@torch.no_grad()
def test_hiprune_qwen_modes_follow_the_published_variant(order):
    model, inputs = build("qwen2_5_vl")
    budget = 5
    blocks = recorded_qwen_blocks(model, inputs)
    settings = HiPruneQwenSettings(score_order=order, alpha=2.0)
    with attach(model, "hiprune", budget=budget, tokenizer=T.tokenizer(), score_order=order, alpha=2.0) as pruner:
        model(**inputs)
        record = pruner.last
    shallow, deep = settings.layers(len(model.model.visual.blocks))
    grid = inputs["image_grid_thw"]
    offset = 0
    differs = False
    for image, item in enumerate(record.items):
        t, h, w = grid[image].tolist()
        n = t * h * w
        window_index, _ = qwen_window_index(grid[image:image + 1], 8, 2, 2)
        scores = {}
        for name, block in (("shallow", shallow), ("deep", deep)):
            hidden, cu, rotary = blocks[block]
            full = full_masked_attention(model.model.visual.blocks[block], hidden, cu, rotary)
            merged = qwen_merged_scores(full)[offset // 4:(offset + n) // 4]  # this image's stretch, window order
            scores[name] = (merged, merged[torch.argsort(window_index)])
        pick = 0 if order == "window" else 1
        expected = hiprune_qwen_select(scores["shallow"][pick], scores["deep"][pick], budget, w // 2, 2.0).indices
        other = hiprune_qwen_select(scores["shallow"][1 - pick], scores["deep"][1 - pick], budget, w // 2, 2.0).indices
        assert torch.equal(item.result.kept_indices(0), expected)
        assert item.tokens_after == budget
        differs |= not torch.equal(expected, other)
        offset += n
    assert differs  # the window order attaches the scores to other tokens: the mode matters on these images


def test_hiprune_qwen_settings():
    s = HiPruneQwenSettings()
    assert (s.alpha, s.object_layer, s.published_depth, s.score_order) == (0.5, 4, 32, "raster")
    assert s.layers(32) == (3, 31) and s.anchors(10) == 1 and s.anchors(4) == 0
    assert isinstance(s, HiPruneSettings)  # the registry's hiprune takes it
    with pytest.raises(ValueError, match="score_order"):
        HiPruneQwenSettings(score_order="published")


# ------------------------------------------------------------------ refusals and the capability field


@pytest.mark.parametrize("family, method, message", [
    ("qwen2_5_vl", "visionzip", "visionzip cannot prune Qwen2_5_VLForConditionalGeneration: .*no \\[CLS\\] token"),
    ("qwen3_vl", "visionzip", "visionzip cannot prune Qwen3VLForConditionalGeneration: .*no \\[CLS\\] token"),
    ("llava_onevision", "visionzip", "visionzip cannot prune LlavaOnevisionForConditionalGeneration: .*SigLIP.*no "
                                     "\\[CLS\\]"),
    ("llava_onevision", "hiprune", "hiprune cannot prune LlavaOnevisionForConditionalGeneration: .*SigLIP.*no "
                                   "\\[CLS\\]"),
])
def test_methods_refuse_classes_they_do_not_apply_to(family, method, message):
    model = T.BUILDERS[family]()
    never = hooks_of(model)
    with pytest.raises(ValueError, match=message):
        attach(model, method, budget=4, tokenizer=T.tokenizer())
    assert hooks_of(model) == never  # refused when attaching: nothing hooked (no forward ran)


@pytest.mark.parametrize("method", ["visionzip", "hiprune"])
@torch.no_grad()
def test_videos_are_refused_naming_the_method_and_the_model(method):
    model = T.llava_next_video()
    inputs = T.inputs("llava_next_video", model, video=True)
    with attach(model, method, budget=4, tokenizer=T.tokenizer()):
        with pytest.raises(ValueError, match=f"{method} cannot prune this LlavaNextVideoForConditionalGeneration video"):
            model(**inputs)


def test_hiprune_variant_must_match_the_vision_encoder():
    with pytest.raises(ValueError, match="hiprune on Qwen2_5_VLForConditionalGeneration runs its published Qwen "
                                         "variant: give HiPruneQwenSettings"):
        attach(T.qwen2_5_vl(), "hiprune", budget=4, settings=HiPruneSettings(alpha=0.2), tokenizer=T.tokenizer())
    # without settings, and in what the benches hand the Qwen family, HiPrune is its published Qwen variant
    with attach(T.qwen2_5_vl(), "hiprune", budget=4, tokenizer=T.tokenizer()) as pruner:
        assert pruner._settings["image"] == HiPruneQwenSettings()
    assert method_settings("hiprune", "qwen2_5_vl") == ("hiprune", HiPruneQwenSettings())
    with attach(T.qwen2_5_vl(), "hiprune", budget=4, score_order="window", tokenizer=T.tokenizer()) as pruner:
        assert pruner._settings["image"] == HiPruneQwenSettings(score_order="window")
    with pytest.raises(ValueError, match="HiPruneQwenSettings are the Qwen variant's"):
        attach(T.llava(), "hiprune", budget=4, settings=HiPruneQwenSettings(), tokenizer=T.tokenizer())
    with pytest.raises(ValueError, match="score_order"):
        attach(T.qwen2_5_vl(), "hiprune", budget=4, score_order="windows", tokenizer=T.tokenizer())
    # Qwen3-VL: the published Qwen3 track's settings (object layer 4 of Qwen3-VL-8B's 27 blocks)
    with pytest.raises(ValueError, match="hiprune on Qwen3VLForConditionalGeneration runs its published Qwen variant: "
                                         "give HiPruneQwenSettings .*of 27 blocks"):
        attach(T.qwen3_vl(), "hiprune", budget=4, settings=HiPruneSettings(alpha=0.2), tokenizer=T.tokenizer())
    with attach(T.qwen3_vl(), "hiprune", budget=4, tokenizer=T.tokenizer()) as pruner:
        assert pruner._settings["image"] == HiPruneQwenSettings(published_depth=27)
    assert method_settings("hiprune", "qwen3_vl") == ("hiprune", HiPruneQwenSettings(published_depth=27))
    assert HiPruneQwenSettings(published_depth=27).layers(27) == (3, 26)  # the published attn_list[3], attn_list[-1]


def test_original_positions_are_refused_by_capability_not_by_name():
    assert [m for m, entry in METHODS.items() if not entry.keeps_original_positions] == ["visionzip"]
    with pytest.raises(ValueError, match="visionzip feeds merged tokens that have no original positions"):
        attach(T.llava_next(), "visionzip", budget=4, positions="original", tokenizer=T.tokenizer())
    with attach(T.llava_next(), "hiprune", budget=4, positions="original", tokenizer=T.tokenizer()) as pruner:
        assert pruner.positions == "original"  # a selection keeps its positions


@torch.no_grad()
def test_visionzip_keeps_a_tile_too_short_for_its_outputs_whole():
    model, inputs = build("llava_next")
    budget = 32  # above the tiny tiles' 30 unpadded tokens, below the base view's 36
    feats = model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                           image_sizes=inputs["image_sizes"]).pooler_output
    with attach(model, "visionzip", budget=budget, tokenizer=T.tokenizer()) as pruner:
        model(**inputs)
        record = pruner.last
    whole = 0
    for item, own in zip(record.items, feats):
        for r, rows in enumerate(item.layout.rows):
            if len(rows) <= budget:  # its own tokens, unchanged, every one
                whole += 1
                assert item.result.quotas[r] == len(rows)
                assert torch.equal(item.result.merged[r, :len(rows)], own[rows])
            else:
                assert item.result.quotas[r] == budget
        assert item.result.extra["whole_rows"][0].tolist() == [len(rows) <= budget for rows in item.layout.rows]
    assert whole > 0
