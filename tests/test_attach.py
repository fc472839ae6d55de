"""attach() on tiny random models of every supported class (no download)."""

import math

import pytest
import torch

import tiny_vlms as T
from eadp_lab import METHODS, attach, preset

CASES = [("llava", False), ("llava_next", False), ("llava_next_video", False), ("llava_next_video", True),
         ("llava_onevision", False), ("llava_onevision", True), ("qwen2_5_vl", False), ("qwen2_5_vl", True),
         ("qwen3_vl", False), ("qwen3_vl", True)]
IDS = [f"{f}-{'video' if v else 'image'}" for f, v in CASES]
GEN = dict(max_new_tokens=3, do_sample=False, suppress_tokens=[T.IMG, T.VID])


def build(family, video, samples=(0, 1)):
    model = T.BUILDERS[family]()
    return model, T.inputs(family, model, samples=samples, video=video)


@pytest.mark.parametrize("family, video", CASES, ids=IDS)
@torch.no_grad()
def test_full_budget_equals_the_unattached_model(family, video):
    model, inputs = build(family, video)
    before = model(**inputs).logits
    with attach(model, "eadp", budget=10_000, tokenizer=T.tokenizer()) as pruner:
        during = model(**inputs).logits
        assert all(item.tokens_after == item.tokens_before for item in pruner.last.items)
    assert torch.allclose(during, before, atol=1e-5)
    after = model(**inputs).logits
    assert torch.equal(after, before)
    assert "get_image_features" not in vars(model.model) and not model.model._forward_pre_hooks


@pytest.mark.parametrize("family, video", CASES, ids=IDS)
@torch.no_grad()
def test_the_language_model_receives_exactly_the_kept_tokens(family, video):
    model, inputs = build(family, video)
    seen = T.LMInputs(model)
    with attach(model, "eadp", budget=4, tokenizer=T.tokenizer()) as pruner:
        model(**inputs)
        record = pruner.last
    seen.remove()
    embeds = seen.calls[-1]["inputs_embeds"]  # (B, L', D)
    mask = seen.calls[-1].get("attention_mask")
    B = inputs["input_ids"].shape[0]
    mask = torch.ones(embeds.shape[:2], dtype=torch.long) if mask is None else mask
    # every sample: its text plus exactly the kept visual tokens of its items
    for b in range(B):
        items = [it for it in record.items if it.sample == b]
        visual_before = sum(it.tokens_before for it in items)
        text = int(inputs["attention_mask"][b].sum()) - visual_before
        assert int(mask[b].sum()) == text + sum(it.tokens_after for it in items)
    for it in record.items:
        per_row = [int(k) for k in it.result.keep_mask.sum(1)] if it.result.merged is None else it.result.quotas.tolist()
        assert sum(per_row) <= sum(len(r) for r in it.layout.rows)
        if family in ("llava", *T.QWEN) or it.modality == "video":
            # one budget per image, frame or temporal group: exactly 4 each (the video preset has no allocation)
            assert per_row == [min(4, len(r)) for r in it.layout.rows]
    kept_cols = record.kept_columns
    for b in range(B):
        cols = kept_cols[b].nonzero().squeeze(1)
        new_positions = torch.arange(embeds.shape[1] - len(cols), embeds.shape[1])
        token = inputs["input_ids"][b, cols]
        is_visual = (token == T.IMG) | (token == T.VID)
        lm_visual = embeds[b, new_positions[is_visual]]
        assert lm_visual.shape[0] == sum(it.tokens_after for it in record.items if it.sample == b)
    # the features themselves are compared in test_kept_features_reach_the_model


@torch.no_grad()
def test_kept_features_reach_the_model():
    model, inputs = build("llava", False)
    feats = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    seen = T.LMInputs(model)
    with attach(model, "eadp", budget=5, tokenizer=T.tokenizer()) as pruner:
        model(**inputs)
    seen.remove()
    embeds = seen.calls[-1]["inputs_embeds"]
    for it in pruner.last.items:
        b = it.sample
        cols = pruner.last.kept_columns[b].nonzero().squeeze(1)
        visual = inputs["input_ids"][b, cols] == T.IMG
        got = embeds[b, embeds.shape[1] - len(cols):][visual]
        assert torch.allclose(got, feats[b][it.kept], atol=1e-6)
        assert len(it.kept) == 5


@pytest.mark.parametrize("family, video", CASES, ids=IDS)
@torch.no_grad()
def test_generate_runs_and_cache_agrees(family, video):
    model, inputs = build(family, video)
    with attach(model, "eadp", budget=4, tokenizer=T.tokenizer()) as pruner:
        cached = model.generate(**inputs, **GEN)
        assert pruner.last.length_after < pruner.last.length_before
        uncached = model.generate(**inputs, use_cache=False, **GEN)
    L = inputs["input_ids"].shape[1]
    assert cached.shape == (inputs["input_ids"].shape[0], L + 3)
    assert torch.equal(cached[:, :L], inputs["input_ids"])  # the caller's own prompt comes back
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family, video", CASES, ids=IDS)
@torch.no_grad()
def test_a_batch_gives_each_sample_what_it_gets_alone(family, video):
    model, inputs = build(family, video)
    with attach(model, "eadp", budget=4, tokenizer=T.tokenizer()) as pruner:
        batch_logits = model(**inputs).logits[:, -1]
        batch_items = pruner.last.items
        batch_gen = model.generate(**inputs, **GEN)[:, inputs["input_ids"].shape[1]:]
        for b in (0, 1):
            alone = T.inputs(family, model, samples=(b,), video=video)
            logits = model(**alone).logits[:, -1]
            assert torch.allclose(logits[0], batch_logits[b], atol=1e-5)
            mine = [it for it in batch_items if it.sample == b]
            for a, c in zip(pruner.last.items, mine):
                assert torch.equal(a.kept, c.kept)
                assert torch.equal(a.result.picks, c.result.picks)
            gen = model.generate(**alone, **GEN)[:, alone["input_ids"].shape[1]:]
            assert torch.equal(gen[0], batch_gen[b])


@pytest.mark.parametrize("family", T.QWEN)
@pytest.mark.parametrize("video", [False, True])
@torch.no_grad()
def test_qwen_kept_tokens_keep_their_3d_positions(family, video):
    model, inputs = build(family, video)
    original, _ = model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], attention_mask=inputs["attention_mask"],
        **{k: v for k, v in inputs.items() if k.endswith("grid_thw") or k == "second_per_grid_ts"})
    seen = T.LMInputs(model)
    with attach(model, "eadp", budget=3, tokenizer=T.tokenizer()) as pruner:
        model.generate(**inputs, **GEN)
        record = pruner.last
    seen.remove()
    prefill, first_step = seen.calls[0]["position_ids"], seen.calls[1]["position_ids"]
    assert prefill.shape[0] == 4  # [text; t; h; w]
    for b in range(inputs["input_ids"].shape[0]):
        cols = record.kept_columns[b].nonzero().squeeze(1)
        got = prefill[1:, b, prefill.shape[2] - len(cols):]
        assert torch.equal(got, original[:, b, cols])  # kept visual tokens and the text after them
        # text after the image continues from the unpruned position, and so does decoding
        assert torch.equal(first_step[1:, b, 0], original[:, b, -1] + 1)
    assert any(it.tokens_after < it.tokens_before for it in record.items)


@pytest.mark.parametrize("family", T.QWEN)
@torch.no_grad()
def test_qwen_decoding_matches_the_unpruned_positions(family):
    model, inputs = build(family, False)
    seen = T.LMInputs(model)
    model.generate(**inputs, **GEN)
    unpruned = [c["position_ids"] for c in seen.calls]
    seen.calls.clear()
    with attach(model, "eadp", budget=2, tokenizer=T.tokenizer()):
        model.generate(**inputs, **GEN)
    seen.remove()
    for a, b in zip(unpruned[1:], seen.calls[1:]):  # decode steps: the same (t, h, w) as without pruning
        assert torch.equal(a[1:], b["position_ids"][1:])


@pytest.mark.parametrize("method", sorted(METHODS))
@torch.no_grad()
def test_every_registry_method_can_be_attached(method):
    stage = METHODS[method].stage  # vision-encoder methods run on LLaVA-1.5; in-LLM ones need 4 decoder layers
    family = "llava" if stage == "vision" else "llava_next"
    model = T.BUILDERS[family](text_layers=4 if stage == "llm" else 2)
    inputs = T.inputs(family, model)
    with attach(model, method, budget=4, tokenizer=T.tokenizer()) as pruner:
        out = model.generate(**inputs, **GEN)
        record = pruner.last
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    kept = sum(it.tokens_after for it in record.items)
    total = sum(it.tokens_before for it in record.items)
    assert (kept == total) if method == "none" else (kept < total)


def test_instruction_comes_from_each_prompt():
    model, inputs = build("llava", False)
    with attach(model, "eadp", budget=4, tokenizer=T.tokenizer()) as pruner:
        model(**inputs)
        assert [it.instruction for it in pruner.last.items] == T.QUESTIONS
        assert pruner.last.items[0].text_tokens == T.QUESTIONS[0].split()
        pruner.instructions = ["how many blue circles are there ?", "what colour is the square ?"]
        model(**inputs)
        assert pruner.last.items[1].instruction == "what colour is the square ?"
        model(**inputs)  # explicit instructions are used once
        assert pruner.last.items[1].instruction == T.QUESTIONS[1]


@torch.no_grad()
def test_instruction_before_the_image():
    model = T.llava()
    tok = T.tokenizer()
    n = (T.SIZE // T.PATCH) ** 2
    ids = torch.tensor([[T.BOS, 4] + tok(T.QUESTIONS[0], add_special_tokens=False)["input_ids"] + [T.IMG] * n + [5]])
    with attach(model, "eadp", budget=4, tokenizer=tok) as pruner:
        model(input_ids=ids, pixel_values=torch.randn(1, 3, T.SIZE, T.SIZE))
    assert pruner.last.items[0].instruction == T.QUESTIONS[0]


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_next_video"])
@torch.no_grad()
def test_clip_scoring(family):
    model, inputs = build(family, family == "llava_next_video")
    clip = T.matching_clip(model)
    with attach(model, "eadp", budget=4, scoring="clip", clip=clip, clip_tokenizer=T.tokenizer(),
                tokenizer=T.tokenizer()) as pruner:
        model.generate(**inputs, **GEN)
        clip_items = pruner.last.items
    with attach(model, "eadp", budget=4, tokenizer=T.tokenizer()) as pruner:
        model(**inputs)
        llm_items = pruner.last.items
    trace = clip_items[0].result.trace[0]
    assert trace.global_similarity.shape[-1] == 1 and trace.dense_similarity.shape[-1] == len(T.QUESTIONS[0].split())
    assert any(not torch.equal(a.kept, b.kept) for a, b in zip(clip_items, llm_items))


def test_published_text_positions_score_the_padded_clip_input():
    model, inputs = build("llava", False)
    clip = T.matching_clip(model)
    with attach(model, "eadp", budget=4, scoring="clip", clip=clip, clip_tokenizer=T.tokenizer(),
                tokenizer=T.tokenizer(), settings=preset("llava-1.5")) as pruner:
        model(**inputs)
    trace = pruner.last.items[0].result.trace[0]
    assert trace.entropy.shape[-1] == clip.config.text_config.max_position_embeddings  # every padded position
    assert trace.kept_text.shape[-1] == int(0.2 * clip.config.text_config.max_position_embeddings)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["llava", *T.QWEN])
@torch.no_grad()
def test_half_precision_models(family, dtype):
    model, inputs = build(family, False)
    model = model.to(dtype)
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    with attach(model, "eadp", budget=4, tokenizer=T.tokenizer()) as pruner:
        out = model.generate(**inputs, **GEN)
        assert all(it.tokens_after <= 4 for it in pruner.last.items if family == "llava")
        assert pruner.last.items[0].result.importance.dtype == torch.float32
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@torch.no_grad()
def test_original_positions_option():
    model, inputs = build("llava", False)
    seen = T.LMInputs(model)
    with attach(model, "eadp", budget=4, positions="original"):
        model(**inputs)
    seen.remove()
    pos = seen.calls[-1]["position_ids"][0]
    assert bool((pos.diff() > 1).any())  # gaps where tokens were dropped


# ---------------------------------------------------------------- bad input


def test_unsupported_model_class():
    from transformers import LlamaConfig, LlamaForCausalLM

    with pytest.raises(ValueError, match="LlamaForCausalLM is not supported") as error:
        attach(LlamaForCausalLM(LlamaConfig(**{k: v for k, v in T.LLAMA.items() if k != "model_type"})))
    assert "Qwen3VLForConditionalGeneration" in str(error.value)  # the supported classes are listed


def test_qwen3_vl_moe_is_named_as_unsupported():
    """Qwen3-VL's MoE sibling is a class of its own (not a Qwen3VLForConditionalGeneration): refused by name."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    text = dict(vocab_size=T.V, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_experts=2,
                num_experts_per_tok=1, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                              "mrope_section": [2, 3, 3], "mrope_interleaved": True})
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=2, out_hidden_size=32,
                  num_position_embeddings=16, deepstack_visual_indexes=[0])
    model = Qwen3VLMoeForConditionalGeneration(Qwen3VLMoeConfig(text_config=text, vision_config=vision))
    with pytest.raises(ValueError, match=r"^model class Qwen3VLMoeForConditionalGeneration is not supported") as error:
        attach(model)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("budget", [0, -3, 1.5, 3.5, 64.0, "64", True, None, math.nan, math.inf, -math.inf, 0.0, -0.5])
def test_bad_budget(budget):
    with pytest.raises(ValueError, match=r"^budget must be an integer >= 1 .* or a fraction in \(0, 1\], got ") as e:
        attach(T.llava(), budget=budget)
    assert repr(budget) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("budget", [1, 64, 10**6, 0.25, 1.0])
def test_good_budget(budget):
    attach(T.llava(), budget=budget).remove()


BAD_ATTACH = {
    "settings of another method": (dict(method="random", settings=preset("llava-1.5")), r"settings for 'random'"),
    "settings of another method per modality": (dict(settings={"image": preset("paper"), "video": None},
                                                     method="topk"), r"settings for 'topk'"),
    "a settings dict that is not per modality": (dict(settings={"alpha": 0.3}), r"'alpha'.*'image'.*'video'"),
    "an unknown override": (dict(alpah=0.3), r"unknown eadp setting 'alpah'.*known: .*'alpha'"),
    "an override of a method without settings": (dict(method="pool", scope="per_row"), r"unknown pool setting 'scope'"),
    "a string alpha": (dict(alpha="0.5"), r"^alpha must be a real number in \[0, 1\], got '0.5'"),
    "an infinite beta": (dict(beta=math.inf), r"^beta must be a finite real number > 0, got inf"),
    "a zero sign": (dict(method="topk", similarity_sign=0), r"^similarity_sign must be -1 or 1, got 0"),
    "an unknown method": (dict(method="nosuch"), r"^method must be one of .*got 'nosuch'"),
    "no history": (dict(keep_history=0), r"^keep_history must be an integer >= 1, got 0"),
    "unknown text positions": (dict(text_positions="some"), r"^text_positions must be one of"),
}


@pytest.mark.parametrize("kwargs, match", BAD_ATTACH.values(), ids=BAD_ATTACH.keys())
def test_bad_arguments_are_refused_when_attaching(kwargs, match):
    model = T.llava()
    state = patched_state(model)
    with pytest.raises(ValueError, match=match) as error:
        attach(model, tokenizer=T.tokenizer(), **kwargs)
    assert "\n" not in str(error.value)
    assert patched_state(model) == state  # nothing left behind


def test_clip_scorer_must_match_the_vision_tower():
    model = T.llava()
    other = T.matching_clip(T.llava(seed=1))
    with pytest.raises(ValueError, match="does not match"):
        attach(model, scoring="clip", clip=other, clip_tokenizer=T.tokenizer(), tokenizer=T.tokenizer())
    with pytest.raises(ValueError, match="CLIP vision tower"):
        attach(T.llava_onevision(), scoring="clip", clip=T.matching_clip(model), clip_tokenizer=T.tokenizer(),
               tokenizer=T.tokenizer())
    with pytest.raises(ValueError, match="tokenizer"):
        attach(model, scoring="clip", clip=T.matching_clip(model), clip_tokenizer=T.tokenizer())
    with pytest.raises(ValueError, match="clip="):
        attach(model, scoring="clip")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_clip_check_tolerates_the_rounding_of_half_precision_weights(dtype):
    """A half-precision VLM with the float32 CLIP of its tower (weights of magnitude ~0.92, as in
    the issue) matches; a tower that differs by more than rounding does not, in either dtype."""
    from eadp_lab.models.scorers import CLIPScorer, weights_gap

    model = T.llava()
    weight = model.model.vision_tower.embeddings.patch_embedding.weight
    weight.mul_(0.92 / weight.abs().max())
    clip = T.matching_clip(model)  # float32 copies of the tower
    half_clip = T.matching_clip(model).to(dtype)
    other = T.matching_clip(model)  # a real mismatch: a slightly different tower (5% of the weights' magnitude)
    other.vision_model.embeddings.patch_embedding.weight.add_(0.05 * 0.92 * torch.randn_like(weight))
    half_other = T.matching_clip(model)
    half_other.vision_model.embeddings.patch_embedding.weight.copy_(other.vision_model.embeddings.patch_embedding.weight)
    half_other = half_other.to(dtype)
    tower = model.to(dtype).model.vision_tower
    ours, theirs = clip.vision_model.embeddings.patch_embedding.weight, tower.embeddings.patch_embedding.weight
    assert ours.dtype == torch.float32 and theirs.dtype == dtype
    gap, tolerance = weights_gap(ours, theirs)
    if dtype == torch.bfloat16:  # the old fixed atol=1e-3 rejected this matching tower
        assert not torch.allclose(ours, theirs.float(), atol=1e-3)
    assert 0 < gap <= tolerance
    CLIPScorer(clip, T.tokenizer()).check_matches(tower)
    CLIPScorer(half_clip, T.tokenizer()).check_matches(tower)
    attach(model, scoring="clip", clip=clip, clip_tokenizer=T.tokenizer(), tokenizer=T.tokenizer()).remove()
    for candidate in (other, half_other):
        with pytest.raises(ValueError, match="different weights"):
            CLIPScorer(candidate, T.tokenizer()).check_matches(tower)
    with pytest.raises(ValueError, match="does not match"):
        CLIPScorer(T.matching_clip(T.llava(seed=1)).to(dtype), T.tokenizer()).check_matches(tower)


def test_unknown_method_and_options():
    with pytest.raises(ValueError, match="method"):
        attach(T.llava(), method="nosuch")
    with pytest.raises(ValueError, match="positions"):
        attach(T.llava(), positions="shifted")


@pytest.mark.parametrize("video", [False, True])
@torch.no_grad()
def test_baselines_follow_their_authors_multicrop_rule_on_anyres_images(video):
    family = "llava_next_video" if video else "llava_next"
    model, inputs = build(family, video)
    with attach(model, "divprune", budget=4, tokenizer=T.tokenizer()) as pruner:
        model(**inputs)
        joint = pruner.last.items
    with attach(model, "divprune", budget=4, tokenizer=T.tokenizer(), scope="per_row") as pruner:
        model(**inputs)
        per_row = pruner.last.items
    with attach(model, "cdpruner", budget=4, tokenizer=T.tokenizer()) as pruner:
        model(**inputs)
        cdpruner = pruner.last.items
    for it, row_it, cd in zip(joint, per_row, cdpruner):
        caps = [min(4, len(r)) for r in it.layout.rows]
        assert row_it.result.quotas.tolist() == caps
        if it.modality == "video":  # frames: one selection and one min-max per frame
            assert it.result.settings["scope"] == "per_row" and cd.result.settings["normalisation"] == "per_row"
            assert it.result.quotas.tolist() == caps
            continue
        assert len(it.layout.rows) > 1 and it.result.settings["scope"] == "per_image"
        assert cd.result.settings["normalisation"] == "per_image" and cd.result.quotas.tolist() == caps
        assert int(it.result.quotas.sum()) == sum(caps)  # one selection: the crops' budgets spent jointly
        (image_picks,) = it.result.extra["image_picks"]
        assert len(image_picks) == sum(caps)
        # the language model gets the picked tokens and the newlines of the lines they are on
        kept = set(it.kept.tolist())
        picked = {int(idx[i]) for idx, mask in zip(it.layout.rows, it.result.keep_mask) for i in mask.nonzero()[:, 0]}
        lines = {k for k, line in it.layout.newlines if any(int(i) in picked for i in line)}
        assert kept == picked | lines


# ---------------------------------------------------------------- attaching twice, removing in any order


def patched_state(model):
    """What attach may patch, per module: its own attributes (a wrapped ``get_*_features`` is one)
    with any callable among them, and the keys of every hook dict."""
    state = {}
    for name, module in model.named_modules():
        own = {}
        for key, value in vars(module).items():
            if isinstance(value, dict) and "hook" in key:
                own[key] = list(value)
            else:
                own[key] = value if callable(value) and not isinstance(value, torch.nn.Module) else None
        state[name] = own
    return state


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def assert_untouched(model, inputs, state, clean):
    """The model holds no trace of a pruner: same attributes and hooks, bit-identical logits."""
    assert patched_state(model) == state
    assert torch.equal(logits(model, inputs), clean)


@pytest.mark.parametrize("family", ["llava", *T.QWEN])
def test_a_second_attach_is_refused_and_the_first_pruner_keeps_working(family):
    model, inputs = build(family, False)
    clean = logits(model, inputs)  # first: transformers installs its output-capturing hooks on a first call
    state = patched_state(model)
    pruner = attach(model, "eadp", budget=4, tokenizer=T.tokenizer())
    with torch.no_grad():
        alone = model.generate(**inputs, **GEN)
    with pytest.raises(RuntimeError, match=r"already attached.*\.remove\(\)") as error:
        attach(model, "eadp", budget=4, tokenizer=T.tokenizer())  # a notebook cell run twice
    assert "\n" not in str(error.value)
    with torch.no_grad():
        assert torch.equal(model.generate(**inputs, **GEN), alone)  # no second pruner stacked
    pruner.remove()
    assert_untouched(model, inputs, state, clean)


def test_remove_in_every_order_leaves_the_model_as_it_was():
    model, inputs = build("llava", False)
    clean = logits(model, inputs)  # first: transformers installs its output-capturing hooks on a first call
    state = patched_state(model)
    pruner = attach(model, "eadp", budget=4, tokenizer=T.tokenizer())
    pruner.remove()
    pruner.remove()  # twice: harmless
    assert_untouched(model, inputs, state, clean)
    with pytest.raises(ValueError):
        attach(model, "eadp", budget=4, alpha=2.0)  # a failed attach leaves nothing behind
    assert_untouched(model, inputs, state, clean)
    with attach(model, "eadp", budget=4, tokenizer=T.tokenizer()) as again:  # a new attach after remove works
        model(**inputs)
        assert again.last.length_after < again.last.length_before
    again.remove()  # after its with block: harmless
    pruner.remove()  # a stale pruner never touches a later one
    assert_untouched(model, inputs, state, clean)


def test_a_failed_attach_while_one_is_live_leaves_the_live_one_alone():
    model, inputs = build("llava", False)
    clean = logits(model, inputs)  # first: transformers installs its output-capturing hooks on a first call
    state = patched_state(model)
    with attach(model, "eadp", budget=4, tokenizer=T.tokenizer()) as pruner:
        live = patched_state(model)
        with pytest.raises(RuntimeError, match="already attached"):
            attach(model, "topk", budget=4)
        assert patched_state(model) == live
        model(**inputs)
        assert pruner.last.length_after < pruner.last.length_before
    assert_untouched(model, inputs, state, clean)


def test_errors_inside_with_attach_propagate_unchanged():
    model, inputs = build("llava", False)
    clean = logits(model, inputs)  # first: transformers installs its output-capturing hooks on a first call
    state = patched_state(model)
    with pytest.raises(KeyError, match="mine"):
        with attach(model, "eadp", budget=4, tokenizer=T.tokenizer()):
            raise KeyError("mine")
    assert_untouched(model, inputs, state, clean)
    with pytest.raises(RuntimeError, match="already attached") as error:  # nested: the inner attach's error
        with attach(model, "eadp", budget=4, tokenizer=T.tokenizer()):
            with attach(model, "eadp", budget=8, tokenizer=T.tokenizer()):
                pass
    assert not isinstance(error.value.__context__, AttributeError)
    assert_untouched(model, inputs, state, clean)
