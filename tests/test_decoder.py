"""The in-LLM seam (eadp_lab.models.decoder) through attach: FastV, PyramidDrop, DART and SparseVLM on tiny
random models of every supported class (4 decoder layers, so every method's depth-scaled layers exist)."""

import pytest
import torch

import eadp_lab
import tiny_vlms as T
from eadp_lab.methods.decoder_plan import DecoderPlan, Drop
from eadp_lab.models.decoder import DecoderPruner, language_model

IN_LLM = ("fastv", "pyramiddrop", "dart", "sparsevlm")
FAMILIES = tuple(T.BUILDERS)


@pytest.fixture(scope="module")
def models():
    return {family: T.BUILDERS[family](text_layers=4) for family in FAMILIES}


def _inputs(family, model):
    return T.inputs(family, model, samples=(0, 1))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", IN_LLM)
def test_a_budget_of_every_token_leaves_the_logits_unchanged(models, family, method):
    model = models[family]
    inputs = _inputs(family, model)
    with torch.no_grad():
        want = model(**inputs).logits
        with eadp_lab.attach(model, method, budget=10**6, tokenizer=T.tokenizer()):
            got = model(**inputs).logits
    assert torch.equal(got, want)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", IN_LLM)
def test_the_layers_after_the_last_drop_see_the_text_and_the_kept_visual_tokens(models, family, method):
    model = models[family]
    inputs = _inputs(family, model)
    lengths = {}
    last = language_model(model).layers[-1]
    hook = last.register_forward_hook(lambda m, a, out: lengths.update(last=(out[0] if isinstance(out, tuple)
                                                                                else out).shape))
    try:
        with torch.no_grad(), eadp_lab.attach(model, method, budget=4, tokenizer=T.tokenizer()) as pruner:
            model(**inputs)
            record = pruner.last
    finally:
        hook.remove()
    visual = torch.isin(inputs["input_ids"], torch.tensor([T.IMG, T.VID]))
    text = (inputs["attention_mask"].bool() & ~visual).sum(1)
    kept = {}
    for item in record.items:
        kept[item.sample] = kept.get(item.sample, 0) + item.tokens_after
    assert all(0 < kept[b] <= 4 * 3 for b in kept)  # at most the budget per row (3 rows on AnyRes)
    if method in ("fastv", "pyramiddrop"):  # exactly the budget (per row)
        assert all(kept[b] == 4 * max(len(i.layout.rows) for i in record.items if i.sample == b) for b in kept)
    assert lengths["last"][1] == max(int(text[b]) + kept[b] for b in kept)
    assert record.length_after == lengths["last"][1]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_fraction_budget_keeps_what_every_method_keeps_per_row(models, family):
    """A fraction budget is one rule for every method (Pruner._budget): round(fraction x the largest row)
    tokens per row, at most the item's tokens; FastV keeps exactly that."""
    model = models[family]
    inputs = _inputs(family, model)
    with torch.no_grad(), eadp_lab.attach(model, "fastv", budget=0.3, tokenizer=T.tokenizer()) as pruner:
        model(**inputs)
        record = pruner.last
    for b in {item.sample for item in record.items}:
        items = [i for i in record.items if i.sample == b]
        want = sum(min(i.tokens_before, max(1, round(0.3 * max(int(r.numel()) for r in i.layout.rows)))
                       * len(i.layout.rows)) for i in items)
        assert sum(i.tokens_after for i in items) == want


@pytest.mark.parametrize("method", IN_LLM)
def test_a_padded_batch_generates_what_each_sample_generates_alone(method):
    model = T.llava(text_layers=4)
    inputs = T.inputs("llava", model, samples=(0, 1))
    ids, mask = inputs["input_ids"].clone(), inputs["attention_mask"].clone()
    row = ids[1].tolist()
    row = row[:-3] + row[-1:]  # two words shorter: left padding
    ids[1] = torch.tensor([T.PAD] * 2 + row)
    mask[1] = torch.tensor([0] * 2 + [1] * len(row))
    batch = dict(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"])
    with torch.no_grad(), eadp_lab.attach(model, method, budget=5, tokenizer=T.tokenizer()):
        together = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, -5:]
        alone = []
        for b in range(2):
            real = mask[b].bool()
            one = dict(input_ids=ids[b:b + 1, real], attention_mask=mask[b:b + 1, real],
                       pixel_values=inputs["pixel_values"][b:b + 1])
            alone.append(model.generate(**one, max_new_tokens=5, do_sample=False)[0, -5:])
    assert torch.equal(together, torch.stack(alone))


def _manual_fastv(model, inputs, keep: int, k: int, steps: int) -> list[int]:
    """FastV's greedy answer of one unpadded sample recomputed from scratch at every step, without a cache:
    layers before ``k`` see the prompt and the answer so far, later ones the kept rows and the answer, at
    their original positions; the rows kept are fixed at the first step by the last prompt token."""
    lm = language_model(model)
    with torch.no_grad():
        embeds = model.model(**inputs, output_hidden_states=True).hidden_states[0]  # (1, L, D): layer 0's input
        prompt = embeds.shape[1]
        visual = (inputs["input_ids"][0] == T.IMG).nonzero().squeeze(1)
        answer, rows = [], None
        for _ in range(steps):
            new = model.get_input_embeddings()(torch.tensor([answer], dtype=torch.long)) if answer else embeds[:, :0]
            hidden = torch.cat([embeds, new], 1)
            positions = torch.arange(hidden.shape[1])[None]
            cos, sin = lm.rotary_emb(hidden, positions)
            for i, layer in enumerate(lm.layers):
                if i == k:
                    if rows is None:  # score by layer k-1's attention of the last prompt token
                        attn = layer_attention(lm.layers[k - 1], before, cos_before, sin_before)
                        score = attn[0, :, prompt - 1, visual].mean(0)
                        top = visual[score.topk(keep).indices]
                        rows = torch.cat([torch.arange(visual[0]), top.sort().values,
                                          torch.arange(visual[-1] + 1, prompt)])
                    index = torch.cat([rows, torch.arange(prompt, hidden.shape[1])])
                    hidden, cos, sin = hidden[:, index], cos[:, index], sin[:, index]
                if i == k - 1:
                    before, cos_before, sin_before = hidden, cos, sin
                hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), position_ids=None)
            logits = model.lm_head(lm.norm(hidden))[0, -1]
            answer.append(int(logits.argmax()))
    return answer


def layer_attention(layer, hidden, cos, sin):
    """A decoder layer's causal attention probabilities ``(1, H, L, L)``, computed by hand."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    L = x.shape[1]
    q = attn.q_proj(x).view(1, L, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(1, L, -1, attn.head_dim).transpose(1, 2)

    def rope(t):
        half = t.shape[-1] // 2
        return t * cos[:, None] + torch.cat([-t[..., half:], t[..., :half]], -1) * sin[:, None]

    q, k = rope(q), rope(k).repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)) * attn.scaling
    scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


def test_generate_under_fastv_matches_a_manual_rerun_without_a_cache():
    model = T.llava(text_layers=4)
    inputs = T.inputs("llava", model, samples=(0,))
    with torch.no_grad(), eadp_lab.attach(model, "fastv", budget=6, tokenizer=T.tokenizer()) as pruner:
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, -6:].tolist()
    k = pruner._plan.drop_layers[0]
    assert _manual_fastv(model, inputs, keep=6, k=k, steps=6) == generated


@pytest.mark.parametrize("family", T.QWEN)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_prune_inside_the_decoder(dtype, family):
    model = T.BUILDERS[family](text_layers=4).to(dtype)
    inputs = T.inputs(family, model, samples=(0, 1))
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    for method in IN_LLM:
        with torch.no_grad(), eadp_lab.attach(model, method, budget=4, tokenizer=T.tokenizer()) as pruner:
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 3
        assert all(0 < item.tokens_after <= 4 for item in pruner.last.items)


def test_remove_restores_the_model_and_one_pruner_at_a_time():
    model = T.llava(text_layers=4)
    inputs = T.inputs("llava", model, samples=(0, 1))
    with torch.no_grad():
        want = model(**inputs).logits
    layers = language_model(model).layers
    pruner = eadp_lab.attach(model, "fastv", budget=3, tokenizer=T.tokenizer())
    with pytest.raises(RuntimeError, match="already attached"):
        eadp_lab.attach(model, "dart", budget=3, tokenizer=T.tokenizer())
    pruner.remove()
    pruner.remove()
    assert all(not layer._forward_pre_hooks for layer in layers) and not model.model._forward_hooks
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, want)


def test_prune_refuses_an_in_llm_method_and_attach_checks_the_depth_and_attention():
    with pytest.raises(ValueError, match="fastv prunes inside the language model"):
        eadp_lab.prune("fastv", eadp_lab.PruneInputs(features=torch.zeros(1, 4, 2)), 2)
    shallow = T.llava(text_layers=2)  # PyramidDrop's three stages cannot fit two layers
    with pytest.raises(ValueError, match="strictly increasing"):
        eadp_lab.attach(shallow, "pyramiddrop", budget=4, tokenizer=T.tokenizer())
    model = T.llava(text_layers=4)
    model.model.language_model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="fastv|FastVPlan.*attn_implementation"):
        eadp_lab.attach(model, "fastv", budget=4, tokenizer=T.tokenizer())
    assert eadp_lab.attached(model) is None


def test_attach_refuses_a_budget_below_darts_image_pivots():
    """DART always keeps its pivot_image pivots: a smaller budget is refused when attaching, not at the first call
    (chapter 04 and Lab.applicable then name it instead of failing mid-run)."""
    model = T.llava(text_layers=4)
    with pytest.raises(ValueError, match="dart keeps at least 4 visual tokens per sample: budget 2 is below that"):
        eadp_lab.attach(model, "dart", budget=2, tokenizer=T.tokenizer())
    with pytest.raises(ValueError, match="at least 2 visual tokens"):
        eadp_lab.attach(model, "dart", budget=1, tokenizer=T.tokenizer(), pivot_image=2)
    eadp_lab.attach(model, "dart", budget=4, tokenizer=T.tokenizer()).remove()  # the fewest it keeps is allowed
    assert eadp_lab.attached(model) is None


def test_a_sample_with_two_visual_runs_is_refused_by_name():
    class Everything(DecoderPlan):
        drop_layers = (1,)

        def drop(self, view, store, stage):
            return Drop([view.valid[b].nonzero().squeeze(1) for b in range(view.hidden.shape[0])])

    model = T.llava_onevision(text_layers=4)
    inputs = T.inputs("llava_onevision", model, samples=(0,), video=True)  # an image, then a video
    ids = inputs["input_ids"][0].tolist()
    between = ids.index(T.VID)
    inputs["input_ids"] = torch.tensor([ids[:between] + [9] + ids[between:]])  # a word between the two runs
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with pytest.raises(ValueError, match="one contiguous run of visual tokens per sample"):
        with torch.no_grad(), eadp_lab.attach(model, "fastv", budget=4, tokenizer=T.tokenizer()):
            model(**inputs)
    seam = DecoderPruner(model, Everything())  # the seam itself handles any rows a plan keeps
    seam.prompt_visual = torch.isin(inputs["input_ids"], torch.tensor([T.IMG, T.VID]))
    try:
        with torch.no_grad():
            assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]
    finally:
        seam.remove()


def test_the_efficiency_bench_counts_the_layers_that_see_every_token():
    """FLOPs and the KV cache of an in-LLM method: its first layers see every visual token, the later ones the
    kept ones; the measured cache matches that per-layer count exactly."""
    from eadp_lab.bench import efficiency
    from eadp_lab.flops import prefill_flops

    result = efficiency.run("tiny-llava", ["none", "fastv", "pyramiddrop"], [64], questions=1, repeats=1, warmup=0,
                            max_new_tokens=2, progress=False)
    rows = {r["method"]: r for r in result["rows"]}
    config = efficiency.load_model("tiny-llava")[0].config
    depth = config.text_config.num_hidden_layers
    assert rows["none"]["full_layers"] == depth
    for method in ("fastv", "pyramiddrop"):
        row = rows[method]
        assert 0 < row["full_layers"] < depth and row["kv_cache_match"]
        text = row["text_tokens"]
        uniform = prefill_flops(config, row["visual_tokens"], text)
        assert rows["none"]["prefill_flops"] > row["prefill_flops"] > uniform  # the full layers cost more
