"""Qwen3-VL through attach(): DeepStack features follow the kept tokens (before the language model and inside
it), every registry method that applies runs (the others refuse by name), HiPrune's published Qwen3 scores,
videos with Qwen3's per-frame timestamps, and the model restored exactly. The class-wide contract (full
budget, kept tokens, generate, batches, M-RoPE positions, precisions) runs in tests/test_attach.py."""

import pytest
import torch

import tiny_vlms as T
from eadp_lab import METHODS, attach
from eadp_lab.methods.hiprune import hiprune_qwen_select, qwen_hiprune_settings
from eadp_lab.methods.in_vision import qwen_block_scores, qwen_received

GEN = dict(max_new_tokens=3, do_sample=False, suppress_tokens=[T.IMG, T.VID])
IN_LLM = [m for m, entry in METHODS.items() if entry.stage == "llm"]


class DeepStack:
    """Records every ``_deepstack_process(hidden, visual_pos_masks, visual_embeds)`` call of the language model
    (installed before attach, so a pruner's wrapper hands it what is really added)."""

    def __init__(self, model):
        self.lm = model.model.language_model
        self.calls = []
        original = self.lm._deepstack_process

        def record(hidden, mask, embeds):
            self.calls.append((mask.clone(), embeds.clone()))
            return original(hidden, mask, embeds)

        self.lm._deepstack_process = record

    def remove(self):
        del self.lm._deepstack_process


def unpruned_deepstack(model, inputs):
    seen = DeepStack(model)
    with torch.no_grad():
        model(**inputs)
    seen.remove()
    return seen.calls


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool -> each True column's index among them, row-major (the order the features are in)."""
    return (mask.flatten().long().cumsum(0) - 1).view_as(mask)


@pytest.mark.parametrize("method", ["eadp", "divprune", "pool"])
@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
@torch.no_grad()
def test_deepstack_features_follow_the_kept_tokens(method, video):
    model = T.qwen3_vl()
    inputs = T.inputs("qwen3_vl", model, video=video)
    full = unpruned_deepstack(model, inputs)
    assert len(full) == 2  # both DeepStack layers were injected
    seen = DeepStack(model)
    with attach(model, method, budget=3, tokenizer=T.tokenizer()) as pruner:
        model(**inputs)
        record = pruner.last
    seen.remove()
    assert len(seen.calls) == len(full)
    placeholders = torch.isin(inputs["input_ids"], torch.tensor([T.IMG, T.VID]))
    kept = record.kept_columns & placeholders  # (B, L) the visual columns the language model got
    assert int(kept.sum()) == sum(it.tokens_after for it in record.items) < int(placeholders.sum())
    index = positions_of(placeholders)
    for (mask, embeds), (full_mask, full_embeds) in zip(seen.calls, full):
        assert int(mask.sum()) == len(embeds) == int(kept.sum())
        if method == "pool":  # merged cells: every layer pooled as the main features were
            assert not torch.equal(embeds, full_embeds[index[kept]])
            continue
        assert torch.equal(embeds, full_embeds[index[kept]])  # the same tokens in every injected layer
    if method == "pool":
        from eadp_lab import prune
        from eadp_lab.models.attach import item_inputs

        item = record.items[0]
        layer0 = full[0][1][index[0][placeholders[0]]]  # sample 0's first item, its unpruned DeepStack layer 0
        pooled = prune("pool", item_inputs(layer0, item.layout, None, None, False), 3).merged
        got = seen.calls[0][1][: item.tokens_after]
        want = torch.cat([pooled[r, : int(q)] for r, q in enumerate(item.result.quotas)])
        assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("method", IN_LLM)
@torch.no_grad()
def test_in_llm_methods_shrink_the_deepstack_features_with_the_hidden_states(method):
    model = T.qwen3_vl(text_layers=4, deepstack=3)  # injected after layers 0, 1, 2: after every method's first drop
    inputs = T.inputs("qwen3_vl", model)
    full = unpruned_deepstack(model, inputs)
    seen = DeepStack(model)
    with attach(model, method, budget=6, tokenizer=T.tokenizer()) as pruner:  # DART's pivots need 4 or more
        out = model.generate(**inputs, **GEN)
        stages = pruner.decoder.records[-1]["stages"]
        first_drop = stages[0]["layer"]
    seen.remove()
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    calls = seen.calls  # the prefill's three injections (decode steps have none)
    assert len(calls) == len(full) == 3
    placeholders = inputs["input_ids"] == T.IMG
    index = positions_of(placeholders)
    for layer, ((mask, embeds), (full_mask, full_embeds)) in enumerate(zip(calls, full)):
        if layer < first_drop:  # injected before the first drop: the whole prompt
            assert torch.equal(mask, full_mask) and torch.equal(embeds, full_embeds)
            continue
        # after a drop: exactly the visual tokens still there (a merged SparseVLM row has none), in row order
        done = [s for s in stages if s["layer"] <= layer][-1]
        origin = [o[o >= 0].cpu() for o in done["kept_origin"]]
        want = torch.cat([full_embeds[index[b, cols]] for b, cols in enumerate(origin)])
        assert int(mask.sum()) == len(embeds) == len(want) < int(placeholders.sum())
        assert torch.equal(embeds, want)
    assert first_drop <= 2, "the test needs a drop before the last DeepStack layer"


@pytest.mark.parametrize("method", sorted(METHODS))
@torch.no_grad()
def test_every_registry_method_that_applies_runs_and_the_others_refuse_by_name(method):
    stage = METHODS[method].stage
    model = T.qwen3_vl(text_layers=4 if stage == "llm" else 2)
    clean = T.qwen3_vl(text_layers=4 if stage == "llm" else 2)  # never attached
    for video in (False, True):
        inputs = T.inputs("qwen3_vl", model, video=video)
        if method == "visionzip":
            with pytest.raises(ValueError, match=r"^visionzip cannot prune Qwen3VLForConditionalGeneration: .*no "
                                                 r"\[CLS\] token") as error:
                attach(model, method, budget=4, tokenizer=T.tokenizer())
            assert "\n" not in str(error.value)
            break
        refused = (stage == "vision" and video) or (stage == "llm" and video)
        with attach(model, method, budget=4, tokenizer=T.tokenizer()) as pruner:
            if refused:  # vision-encoder methods prune images; in-LLM methods one contiguous run per sample
                match = (f"{method} cannot prune this Qwen3VLForConditionalGeneration video" if stage == "vision"
                         else f"{method} prunes one contiguous run .*timestamps")
                with pytest.raises(ValueError, match=match) as error:
                    model.generate(**inputs, **GEN)
                assert "\n" not in str(error.value)
                continue
            out = model.generate(**inputs, **GEN)
            record = pruner.last
        assert out.shape == (2, inputs["input_ids"].shape[1] + 3)
        assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
        kept, total = sum(it.tokens_after for it in record.items), sum(it.tokens_before for it in record.items)
        assert (kept == total) if method == "none" else (kept < total)
    # removed exactly: no attribute, wrapper or hook left, the same logits as a never-attached twin
    assert "_deepstack_process" not in vars(model.model.language_model)
    assert "get_image_features" not in vars(model.model) and not model.model._forward_pre_hooks
    assert all(not layer._forward_pre_hooks for layer in model.model.language_model.layers)
    inputs = T.inputs("qwen3_vl", model)
    assert torch.equal(model(**inputs).logits, clean(**inputs).logits)


@torch.no_grad()
def test_video_instructions_come_after_the_timestamped_frames():
    model = T.qwen3_vl()
    inputs = T.inputs("qwen3_vl", model, video=True)
    tok = T.tokenizer()
    assert tok.decode(inputs["input_ids"][0]).count("seconds>") == 2  # one timestamp per temporal group
    with attach(model, "eadp", budget=3, tokenizer=tok) as pruner:
        model(**inputs)
    assert [it.instruction for it in pruner.last.items] == T.QUESTIONS
    assert all(len(it.layout.rows) == 2 and it.tokens_after == 6 for it in pruner.last.items)  # 3 per frame


def _frame_attention_received(block, hidden, position_embeddings, frame):
    """The published Qwen3 score of one block: per frame chunk, softmax(q k^T * scale) with transformers' own
    vision rotary, mean over heads, mean over the chunk's queries (``attn_weights[0].mean(0).mean(0)``)."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

    attn = block.attn
    S = hidden.shape[0]
    q, k, _ = attn.qkv(block.norm1(hidden)).reshape(S, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *position_embeddings)
    out = []
    for a in range(0, S, frame):
        qa, ka = q[a:a + frame].transpose(0, 1).float(), k[a:a + frame].transpose(0, 1).float()
        out.append(torch.softmax(qa @ ka.transpose(1, 2) * attn.scaling, dim=-1).mean(0).mean(0))
    return torch.cat(out)


@torch.no_grad()
def test_hiprune_follows_the_published_qwen3_scores_and_selection():
    model = T.qwen3_vl()
    inputs = T.inputs("qwen3_vl", model)
    recorded = {}

    def hook(i):
        def record(module, args, kwargs):
            recorded[i] = (args[0] if args else kwargs["hidden_states"], kwargs["position_embeddings"])
        return record

    handles = [b.register_forward_pre_hook(hook(i), with_kwargs=True) for i, b in enumerate(model.model.visual.blocks)]
    model.model.get_image_features(pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    for h in handles:
        h.remove()
    settings = qwen_hiprune_settings("qwen3_vl")
    shallow, deep = settings.layers(len(model.model.visual.blocks))
    with attach(model, "hiprune", budget=5, tokenizer=T.tokenizer()) as pruner:
        model(**inputs)
    offset = 0
    for item, (t, h, w) in zip(pruner.last.items, inputs["image_grid_thw"].tolist()):
        n = t * h * w
        scores = []
        for block in (shallow, deep):
            hidden, rotary = recorded[block]
            part = hidden[offset:offset + n]
            rot = tuple(r[offset:offset + n] for r in rotary)
            published = _frame_attention_received(model.model.visual.blocks[block], part, rot, h * w)
            published = published.view(-1, 4).mean(-1)  # the merged token's 4 patches
            ours = qwen_block_scores(qwen_received(model.model.visual.blocks[block], part,
                                                   torch.tensor([0, n]), rot, h * w), 4, None)
            assert torch.allclose(ours, published, atol=1e-6, rtol=1e-5)
            scores.append(published)
        want = hiprune_qwen_select(*scores, 5, w // 2, settings.alpha).indices.sort().values
        assert torch.equal(item.kept, want.cpu())
        offset += n


def test_accuracy_bench_defaults_to_the_methods_that_attach():
    """bench accuracy without --methods (what make gpu-check runs) leaves out, and names, the refused methods."""
    from eadp_lab.bench.accuracy import DEFAULT_METHODS, applicable_methods

    model = T.qwen3_vl()
    runs, refused = applicable_methods(DEFAULT_METHODS, model, None, None, None, "llm", 8)
    assert set(refused) == {"visionzip", "pyramiddrop", "sparsevlm"}  # no [CLS]; 2 decoder layers too shallow
    assert "Qwen3VLForConditionalGeneration" in refused["visionzip"]
    assert runs == [m for m in DEFAULT_METHODS if m not in refused] and "hiprune" in runs and "fastv" in runs
    assert not model.model._forward_pre_hooks  # each attached and removed
