"""The notebooks' facade (eadp_lab.lab) on the shipped lab models: shapes, budgets, and that
its selection is the one eadp_lab.attach makes inside the model."""

import numpy as np
import pytest
import torch

from eadp_lab.bench import accuracy as A

@pytest.fixture(scope="module")
def record():
    from eadp_lab.world import sample

    return sample("heldout", 1, seed=3, grid=None)[0]


def test_load_facts(lab):
    from eadp_lab.lab import LAB

    assert LAB == "lab"
    assert lab.family == "llava" and lab.scoring == "clip"
    assert lab.grid == (16, 16) and lab.num_visual_tokens == 256
    assert lab.device == torch.device("cpu") and lab.dtype == torch.float32
    assert lab.clip is not None and lab.clip_tokenizer is not None and lab.processor is not None
    assert "llava" in repr(lab)
    said = lab.ran_on()  # the chapters' limits box quotes it
    assert said.startswith("the lab models (a 4-layer lab LLaVA") and "not a real checkpoint" in said
    assert "on cpu in float32, scored in CLIP space" in said


def test_prune_inputs_shapes(lab, record):
    inputs = lab.prune_inputs(record.image, record.question.text)
    D = lab.model.config.text_config.hidden_size
    C = lab.clip.config.projection_dim
    L = inputs.text_embeds_seq.shape[2]
    assert inputs.features.shape == (1, 256, D)
    assert inputs.image_embeds.shape == (1, 256, C) and inputs.image_embeds.dtype == torch.float32
    assert inputs.text_embeds.shape == (1, 1, C)
    assert inputs.text_embeds_seq.shape == (1, 1, L, C) and inputs.text_mask.shape == (1, 1, L)
    assert int(inputs.text_mask.sum()) == len(record.question.tokens)  # the words, not <s> and </s>
    assert inputs.grid == (16, 16) and inputs.rows_per_image == (1,)


def test_none_keeps_every_token(lab, record):
    answer = lab.ask(record.image, record.question.text, method="none")
    assert isinstance(answer.text, str)
    assert answer.keep.shape == (256,) and answer.keep.dtype == torch.bool and bool(answer.keep.all())
    assert answer.num_kept == 256 and answer.record.items[0].tokens_after == 256


@pytest.mark.parametrize("method", ["eadp", "topk", "random", "pool", "eadp-topk"])
def test_budget_limits_kept_tokens(lab, record, method):
    answer = lab.ask(record.image, record.question.text, method=method, budget=24)
    assert answer.num_kept == 24
    assert answer.record.length_after == answer.record.length_before - (256 - 24)
    result = lab.keep(record.image, record.question.text, method, budget=24)
    assert result.num_kept == 24 and result.keep_mask.shape == (1, 256)


@pytest.mark.parametrize("method,settings", [("eadp", None), ("eadp-noentropy", None), ("topk_dense", None),
                                             ("divprune", None), ("eadp", {"alpha": 0.2, "beta": 2.0})])
def test_keep_equals_what_attach_kept(lab, record, method, settings):
    import eadp_lab

    registry, resolved = lab.settings(method, settings)
    inputs = lab.processor(images=[record.image], text=[A.prompt_for(lab.processor, record.question.text)],
                           return_tensors="pt", padding=True)
    with eadp_lab.attach(lab.model, registry, budget=40, scoring="clip", settings=resolved, clip=lab.clip,
                         clip_tokenizer=lab.clip_tokenizer, tokenizer=lab.processor.tokenizer) as pruner:
        with torch.no_grad():
            lab.model(**inputs)
        inside = pruner.last.items[0].result
    outside = lab.keep(record.image, record.question.text, method, budget=40, settings=settings)
    assert torch.equal(outside.keep_mask.cpu(), inside.keep_mask.cpu())
    if inside.importance is not None:
        torch.testing.assert_close(outside.importance, inside.importance)
    answer = lab.ask(record.image, record.question.text, method, budget=40, settings=settings)
    assert torch.equal(answer.keep, inside.keep_mask[0].cpu())


def test_settings_resolution(lab):
    from eadp_lab.config import EADPConfig

    _, base = lab.settings("eadp")
    assert isinstance(base, EADPConfig) and base.text_positions == "content"
    assert lab.settings("eadp-global")[1].alpha == 1.0
    assert lab.settings("eadp", {"alpha": 0.3})[1] == base.replace(alpha=0.3)
    assert lab.settings("eadp", base.replace(beta=2.0))[1].beta == 2.0
    assert lab.settings("eadp-topk")[0] == "eadp"


def test_word_scores(lab, record):
    words = lab.word_scores(record.image, record.question.text)
    L = len(words.tokens)
    assert words.similarity.shape == (L, 256) and words.similarity.dtype == torch.float32
    assert words.entropy.shape == (L,) and bool(torch.isfinite(words.entropy).all())
    assert float(words.entropy.max()) <= np.log(256) + 1e-4
    assert words.content.dtype == torch.bool and int(words.content.sum()) == len(record.question.tokens)
    assert [words.tokens[i] for i in torch.nonzero(words.content).flatten()] == record.question.tokens
    order = words.order()
    assert bool((words.entropy[order].diff() >= 0).all())
    # a higher temperature sharpens every distribution: entropy never goes up
    sharper = lab.word_scores(record.image, record.question.text, temperature=10 * words.temperature)
    assert bool((sharper.entropy <= words.entropy + 1e-4).all())
    flipped = lab.word_scores(record.image, record.question.text, sign=-words.sign)
    torch.testing.assert_close(flipped.similarity, -words.similarity)


def test_bad_input(lab, record):
    q = record.question.text
    with pytest.raises(ValueError, match="method"):
        lab.ask(record.image, q, method="nosuch")
    with pytest.raises(ValueError, match="budget"):
        lab.keep(record.image, q, "eadp", budget=0)
    with pytest.raises(ValueError, match="image"):
        lab.ask(record.image[..., 0], q)
    with pytest.raises(ValueError, match="image"):
        lab.keep(record.image.astype(np.float32), q)
    with pytest.raises(ValueError, match="question"):
        lab.keep(record.image, "  ")
    with pytest.raises(ValueError, match="unknown eadp setting"):
        lab.keep(record.image, q, "eadp", settings={"alpah": 0.3})
    with pytest.raises(ValueError, match="alpha"):
        lab.keep(record.image, q, "eadp", settings={"alpha": 2.0})
    with pytest.raises(ValueError, match="settings"):
        lab.keep(record.image, q, "topk", settings=lab.settings("eadp")[1])
    with pytest.raises(ValueError, match="temperature"):
        lab.word_scores(record.image, q, temperature=0)
    with pytest.raises(ValueError, match="dtype"):
        from eadp_lab.lab import Lab

        Lab.load("lab", dtype="float33")


def test_llm_scoring_without_clip(lab, record):
    from eadp_lab.lab import Lab

    llm = Lab(lab.model, lab.processor)  # no CLIP: score in the language model's embedding space
    assert llm.scoring == "llm"
    inputs = llm.prune_inputs(record.image, record.question.text)
    assert inputs.image_embeds is None and inputs.text_embeds is None
    assert inputs.text_embeds_seq.shape[-1] == lab.model.config.text_config.hidden_size
    answer = llm.ask(record.image, record.question.text, "eadp", budget=20)
    assert torch.equal(answer.keep, llm.keep(record.image, record.question.text, "eadp", 20).keep_mask[0].cpu())
    words = llm.word_scores(record.image, record.question.text)
    assert words.similarity.shape == (len(words.tokens), 256)


def test_a_clip_that_is_not_the_model_tower_is_refused(lab):
    from eadp_lab.lab import Lab
    from eadp_lab.labmodels.build import build_clip

    with pytest.raises(ValueError, match="does not match"):
        Lab(lab.model, lab.processor, build_clip(seed=123), lab.clip_tokenizer)
    with pytest.raises(ValueError, match="clip"):
        Lab(lab.model, lab.processor, scoring="clip")


def test_applicable_lists_the_methods_a_model_takes_and_why_the_others_are_refused(lab):
    import tiny_vlms as T
    from eadp_lab.lab import Lab

    runs, refused = lab.applicable(["none", "eadp", "visionzip", "pyramiddrop"], 28)
    assert runs == ["none", "eadp", "visionzip", "pyramiddrop"] and refused == {}
    shallow = Lab(T.llava(text_layers=2), lab.processor, None, None, scoring="llm")
    runs, refused = shallow.applicable(["none", "fastv", "pyramiddrop"], 4)
    assert runs == ["none", "fastv"] and "fall on (1, 1, 1) in a 2-layer model" in refused["pyramiddrop"]
