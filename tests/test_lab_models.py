"""The lab models: tokenizers, losses, the shipped folders (offline loading, identical vision towers,
the training path equal to the generate path), and tiny training runs."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from eadp_lab.world import sample, vocabulary
from eadp_lab.labmodels.build import (ClipSize, LlavaSize, build_clip, build_llava, dense_text, image_processor,
                                       llava_processor, pixel_values, prompt, scoring_patches, vision_states,
                                       word_mask)
from eadp_lab.labmodels.losses import contrastive_loss, filip_logits, filip_loss
from eadp_lab.labmodels.tokenizer import BOS, EOS, IMAGE, PAD, clip_tokenizer, llava_tokenizer, vocab_table

ROOT = Path(__file__).resolve().parents[1]
CLIP_DIR = ROOT / "data" / "models" / "lab-clip"
LLAVA_DIR = ROOT / "data" / "models" / "lab-llava"
TINY_CLIP = ClipSize(vision_width=32, vision_layers=2, vision_heads=2, text_width=32, text_layers=1, text_heads=2,
                     projection_dim=16)


# ---------------------------------------------------------------- tokenizers


def test_vocabulary_covers_the_world_and_specials_come_first():
    table = vocab_table()
    assert [table[t] for t in ("<pad>", "<unk>", "<image>", "<s>", "</s>")] == [PAD, 1, IMAGE, BOS, EOS]
    assert EOS != 2  # transformers' CLIP text tower pools by argmax(ids) when eos_token_id == 2
    assert set(vocabulary()) <= set(table) and len(set(table.values())) == len(table)


def test_tokenizers_split_words_and_pad_as_their_models_need():
    clip, llava = clip_tokenizer(), llava_tokenizer()
    text = "what colour is the tiny star ?"
    ids = clip(text)["input_ids"]
    assert ids[0] == BOS and ids[-1] == EOS and len(ids) == len(text.split()) + 2
    assert llava(prompt(text))["input_ids"][:3] == [BOS, vocab_table()["USER:"], vocab_table()[text.split()[0]]]  # question first
    assert clip.padding_side == "right" and llava.padding_side == "left"
    batch = llava(["a", "a red star"], padding=True)["input_ids"]
    assert batch[0][0] == PAD and batch[1][0] == BOS
    assert llava.decode(llava(text)["input_ids"], skip_special_tokens=True) == text


def test_processor_matches_the_numpy_pixels_and_counts_256_image_tokens():
    records = sample("val", 2, seed=0, grid=None)
    images = np.stack([r.image for r in records])
    ours = pixel_values(images)
    theirs = image_processor()(list(images), return_tensors="pt")["pixel_values"]
    assert torch.allclose(ours, theirs, atol=1e-6)
    enc = llava_processor()(images=list(images), text=[prompt(r.question.text) for r in records], padding=True,
                            return_tensors="pt")
    assert ((enc["input_ids"] == IMAGE).sum(1) == 256).all()


# ---------------------------------------------------------------- losses


def test_filip_logits_equal_the_definition():
    g = torch.Generator().manual_seed(0)
    V, T = torch.randn(3, 5, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    mask = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0]]).bool()
    t2i, i2t = filip_logits(V, T, mask)
    v, t = torch.nn.functional.normalize(V, dim=-1), torch.nn.functional.normalize(T, dim=-1)
    for i in range(2):
        for j in range(3):
            sim = t[i][mask[i]] @ v[j].T  # (words, patches)
            assert torch.isclose(t2i[i, j], sim.amax(1).mean(), atol=1e-6)
            assert torch.isclose(i2t[j, i], sim.amax(0).mean(), atol=1e-6)
    with pytest.raises(ValueError, match="at least one word"):
        filip_logits(V, T, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="pairs text i with image i"):
        filip_loss(V, T, mask, torch.tensor(10.0))


def test_contrastive_loss_prefers_matching_pairs():
    x = torch.eye(4)
    assert contrastive_loss(x, x, torch.tensor(20.0)) < contrastive_loss(x, x.roll(1, 0), torch.tensor(20.0))
    with pytest.raises(ValueError, match="must both be"):
        contrastive_loss(x, x[:3], torch.tensor(1.0))


# ---------------------------------------------------------------- models built here


def test_lab_llava_takes_the_clip_vision_tower_and_the_scoring_pathway_is_clip_scorers():
    from eadp_lab.models.scorers import CLIPScorer

    clip = build_clip(TINY_CLIP, seed=1).eval()
    llava = build_llava(clip, LlavaSize(lm_width=32, lm_layers=1, lm_heads=2, lm_kv_heads=2, lm_mlp=64)).eval()
    cfg = llava.config
    assert cfg.vision_feature_layer == -2 and cfg.vision_feature_select_strategy == "default"
    assert cfg.image_token_id == IMAGE and cfg.text_config.eos_token_id == EOS
    assert not any(p.requires_grad for p in llava.model.vision_tower.parameters())
    for (name, a), (_, b) in zip(clip.vision_model.state_dict().items(), llava.model.vision_tower.state_dict().items()):
        assert torch.equal(a, b), name
    images = np.stack([r.image for r in sample("val", 2, seed=1, grid=None)])
    with torch.no_grad():
        patches, _ = vision_states(clip.vision_model, pixel_values(images))
        scorer = CLIPScorer(clip, clip_tokenizer())
        assert torch.allclose(scoring_patches(clip, patches), scorer.image_embeds(patches), atol=1e-6)
        text = "what colour is the star ?"
        enc = clip_tokenizer()([text], return_tensors="pt")
        dense, pooled = dense_text(clip, enc["input_ids"], enc["attention_mask"])
        emb = scorer.text(text)
        words = word_mask(enc["input_ids"], enc["attention_mask"])
        assert torch.equal(words, emb.mask[:, 0]) and int(words.sum()) == len(text.split())
        assert torch.allclose(dense, emb.dense[:, 0], atol=1e-6) and torch.allclose(pooled, emb.global_[:, 0], atol=1e-6)


TINY_LLAVA = LlavaSize(lm_width=32, lm_layers=1, lm_heads=2, lm_kv_heads=2, lm_mlp=64)


def _tiny_clip_settings(**changes):
    from dataclasses import replace

    from eadp_lab.labmodels.clip_training import ClipTraining

    return replace(ClipTraining(images=24, dense_steps=3, dense_batch=4, align_steps=3, align_batch=4, align_images=24,
                                check_every=10**6, threads=1, locked_layers=1, size=TINY_CLIP), **changes)


def _tiny_llava_settings():
    from eadp_lab.labmodels.llava_training import LlavaTraining

    # two phases (colour questions, then the whole mix): the stop after step 2 falls past the boundary
    # with the referent losses on: their heads' state must come back too
    return LlavaTraining(steps=3, batch=4, turns=2, images=8, val_questions=8, val_every=10**6, threads=1,
                         phases=((3, 7, 0.34, ("colour",)), (3, 7, 0.66)), size=TINY_LLAVA,
                         referents=1.0, role_layer=1, answer_layer=1, word_layer=1)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_a_stopped_clip_run_resumes_to_the_same_weights(tmp_path):
    from eadp_lab.labmodels.checkpoint import Checkpoints
    from eadp_lab.labmodels.clip_training import control_settings, train_clip

    settings = _tiny_clip_settings()
    unbroken, _, history = train_clip(settings, progress=False)
    assert [e["step"] for e in history["dense"]["log"]] == [0, 2] and history["align"]["log"][-1]["step"] == 2
    for stop_after in (1, 2):  # killed in stage 1, then in stage 2 (a checkpoint after every step)
        folder = tmp_path / f"stop{stop_after}"
        with pytest.raises(KeyboardInterrupt):
            train_clip(settings, Checkpoints(folder, every=0, stop_after=stop_after), progress=False)
        resumed, _, again = train_clip(settings, Checkpoints(folder, every=0), progress=False)
        assert _same_weights(unbroken, resumed)
        assert again["dense"]["log"] == history["dense"]["log"]
    fresh, _, _ = train_clip(_tiny_clip_settings(seed=1), progress=False)
    assert not _same_weights(unbroken, fresh)  # the check can fail: another seed, other weights
    control, _, h = train_clip(control_settings(settings, steps=2), progress=False)
    assert h["dense"]["log"] == [] and h["align"]["log"][-1]["filip"] == 0.0


@pytest.mark.slow
def test_a_stopped_llava_run_resumes_to_the_same_weights(tmp_path):
    from eadp_lab.world.config import WorldConfig
    from eadp_lab.labmodels.checkpoint import Checkpoints
    from eadp_lab.labmodels.clip_training import train_clip
    from eadp_lab.labmodels.llava_training import train_llava
    from eadp_lab.labmodels.train import save_clip

    clip, tok, _ = train_clip(_tiny_clip_settings(dense_steps=1, align_steps=1), progress=False)
    save_clip(clip, tok, tmp_path / "clip")
    settings = _tiny_llava_settings()
    unbroken, history = train_llava(settings, tmp_path / "clip", progress=False)
    assert history["val"][-1]["step"] == 3 and 0.0 <= history["val"][-1]["accuracy"] <= 1.0
    assert [(p["qtypes"], p["steps"]) for p in history["phases"]] == [
        (["colour"], 1), ([q for q, _ in WorldConfig().question_mix], 2)]
    with pytest.raises(KeyboardInterrupt):
        train_llava(settings, tmp_path / "clip", Checkpoints(tmp_path / "ck", every=0, stop_after=2), progress=False)
    assert torch.load(tmp_path / "ck" / "llava.pt", weights_only=False)["step"] == 2
    resumed, again = train_llava(settings, tmp_path / "clip", Checkpoints(tmp_path / "ck", every=0), progress=False)
    assert _same_weights(unbroken, resumed) and again["log"] == history["log"]
    assert {"role_loss", "count_loss", "xy_loss", "word_loss"} <= set(history["log"][0])


def test_tower_states_are_the_hidden_states_of_the_tower():
    from eadp_lab.labmodels.build import tower_states

    clip = build_clip(TINY_CLIP, seed=2).eval()
    pixels = pixel_values(np.stack([r.image for r in sample("val", 2, seed=1, grid=None)]))
    with torch.no_grad():
        out = clip.vision_model(pixel_values=pixels, output_hidden_states=True)
        assert torch.allclose(tower_states(clip.vision_model, pixels, 1), out.hidden_states[-2], atol=1e-6)
        every = tower_states(clip.vision_model, pixels, None, all_states=True)
        assert len(every) == len(out.hidden_states) and torch.allclose(every[-1], out.last_hidden_state, atol=1e-6)


def test_patch_targets_name_the_object_on_each_patch_and_flip_with_the_image():
    from eadp_lab.labmodels.clip_training import DenseHead, flip_batch, patch_targets
    from eadp_lab.world.grounding import patch_masks
    from eadp_lab.world.words import COLOURS, SHAPES, SIZES

    for r in sample("train", 6, seed=5):
        K = len(r.scene.objects)
        masks = patch_masks(r.coverage).reshape(K, -1)
        labels, log_area = patch_targets(r.scene, r.coverage)
        assert labels.shape == (masks.shape[1], 5) and log_area.shape == (masks.shape[1],)
        assert np.array_equal(labels[:, 0] > 0, masks.any(0))  # background exactly where no object is
        assert (labels[~masks.any(0), 3:] == -100).all()
        for n in np.flatnonzero(masks.any(0)):
            owners = [k for k in range(K) if masks[k, n]]
            k = max(owners, key=lambda k: r.coverage.reshape(K, -1)[k, n])
            o = r.scene.objects[k]
            assert tuple(labels[n, :3]) == (COLOURS.index(o.colour) + 1, SHAPES.index(o.shape) + 1, SIZES.index(o.size) + 1)
            assert tuple(labels[n, 3:]) == (int(o.y // 6), int(o.x // 6))
            assert np.isclose(log_area[n], np.log(masks[k].sum()))
    pixels = torch.arange(2 * 3 * 12 * 12, dtype=torch.float32).view(2, 3, 12, 12)
    lab = torch.as_tensor(labels[None, :4].repeat(2, 0) * 0 + np.array([1, 1, 1, 0, 1]))  # (2, 4, 5): a 2x2 grid
    area = torch.arange(8, dtype=torch.float32).view(2, 4)
    flips = np.array([[True, False], [False, True]])
    p2, l2, a2 = flip_batch(pixels, lab, area, flips)
    assert torch.equal(p2[0], pixels[0].flip(1)) and torch.equal(p2[1], pixels[1].flip(2))
    assert l2[0, :, 3].tolist() == [1, 1, 1, 1] and l2[1, :, 4].tolist() == [0, 0, 0, 0]  # centre cells mirrored
    assert a2[0].tolist() == [2, 3, 0, 1] and a2[1].tolist() == [5, 4, 7, 6]
    back = flip_batch(p2, l2, a2, flips)
    assert torch.equal(back[0], pixels) and torch.equal(back[1], lab) and torch.equal(back[2], area)
    head = DenseHead(8, 16)
    loss, acc = head.loss(torch.randn(1, 256, 8), torch.as_tensor(labels)[None], torch.as_tensor(log_area)[None])
    assert loss.ndim == 0 and torch.isfinite(loss) and acc.shape == (5,)


def test_span_positions_squeeze_the_image_and_shift_what_follows():
    from eadp_lab.labmodels.llava_training import span_positions

    ids = torch.tensor([[PAD, PAD, 7, 8, IMAGE, IMAGE, IMAGE, IMAGE, 9, 10], [7, 8, 9, IMAGE, IMAGE, IMAGE, IMAGE, 9, 10, 11]])
    mask = (ids != PAD).long()
    plain = (mask.cumsum(-1) - 1).clamp(min=0).float()
    assert torch.equal(span_positions(ids, mask), plain)
    assert torch.equal(span_positions(ids, mask, torch.tensor([4.0, 4.0])), plain)  # the full span changes nothing
    got = span_positions(ids, mask, torch.tensor([2.0, 1.0]))
    assert got[0].tolist() == [0, 0, 0, 1, 2, 2.5, 3, 3.5, 4, 5]
    assert got[1].tolist() == [0, 1, 2, 3, 3.25, 3.5, 3.75, 4, 5, 6]
    got = span_positions(ids, mask, torch.tensor([8.0, 4.0]))  # stretched: two positions a token, text moves up 4
    assert got[0].tolist() == [0, 0, 0, 1, 2, 4, 6, 8, 10, 11]
    assert torch.equal(got[1], plain[1])


def test_linear_probe_finds_what_is_there_and_not_what_is_not():
    from eadp_lab.labmodels.probe import fit_probe

    g = np.random.default_rng(0)
    y = g.integers(0, 4, 600)
    X = g.normal(size=(600, 16)).astype(np.float32)
    X[:, 3] += 8.0 * y  # the class is linearly in one feature (classes 8 noise s.d. apart)
    assert fit_probe(X[:480], y[:480], X[480:], y[480:], 4) > 0.95
    noise = g.integers(0, 4, 600)
    assert fit_probe(X[:480], noise[:480], X[480:], noise[480:], 4) < 0.4
    with pytest.raises(ValueError, match="more scenes"):
        fit_probe(X[:0], y[:0], X, y, 4)


# ---------------------------------------------------------------- the shipped models


def test_shipped_models_load_offline_with_from_pretrained_and_autoprocessor(monkeypatch):
    from transformers import AutoProcessor, AutoTokenizer, CLIPModel, LlavaForConditionalGeneration

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = CLIPModel.from_pretrained(CLIP_DIR, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(CLIP_DIR)
    llava = LlavaForConditionalGeneration.from_pretrained(LLAVA_DIR, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(LLAVA_DIR)
    assert type(processor).__name__ == "LlavaProcessor" and processor.tokenizer.padding_side == "left"
    assert tok("a red star")["input_ids"][-1] == EOS == clip.config.text_config.eos_token_id
    assert llava.config.vision_feature_layer == -2 and llava.config.vision_feature_select_strategy == "default"
    for (name, a), (_, b) in zip(clip.vision_model.state_dict().items(), llava.model.vision_tower.state_dict().items()):
        assert torch.equal(a, b), name  # the LLaVA's tower is the CLIP's, bit for bit
    for folder in (CLIP_DIR, LLAVA_DIR):
        card = (folder / "README.md").read_text()
        assert "## Training" in card
        report = json.loads((folder / "training.json").read_text())
        assert {"settings", "history", "figures"} <= set(report)
    assert "FILIP" in (CLIP_DIR / "README.md").read_text()
    from eadp_lab.methods.settings import clip_similarity_sign

    report = json.loads((CLIP_DIR / "training.json").read_text())
    declared = clip_similarity_sign(clip)  # the sign the CLIP's own measurement chose, in its config
    assert declared in (1.0, -1.0) and declared == report["figures"]["sign"]["chosen"]
    pointing = report["figures"]["sign"]["pointing"]
    assert pointing["+1" if declared > 0 else "-1"] >= pointing["-1" if declared > 0 else "+1"]


def test_the_shipped_models_were_trained_with_the_recipes_their_cards_command_runs():
    """``python -m eadp_lab.labmodels.train clip|clip-global|llava`` with no options must reproduce
    what ships: each folder's recorded settings are the defaults of that command."""
    from eadp_lab.labmodels.clip_training import ClipTraining, control_settings
    from eadp_lab.labmodels.llava_training import LlavaTraining

    expected = {"lab-clip": ClipTraining(), "lab-clip-global": control_settings(), "lab-llava": LlavaTraining()}
    for name, default in expected.items():
        report = json.loads((ROOT / "data" / "models" / name / "training.json").read_text())
        # the recorded dict itself (a key missing from an older folder would read back as today's default)
        assert report["settings"] == json.loads(json.dumps(default.to_dict())), name
        assert report["command"].split() == ["python", "-m", "eadp_lab.labmodels.train", name.removeprefix("lab-")]


def test_the_shipped_llava_card_says_what_its_files_say_now():
    """The card quotes the training record and the accuracy bench's reports in data/results/: written
    again from them, it must come out as shipped (a new or rerun report means rewriting the card)."""
    from eadp_lab.labmodels.train import DEFAULT_LLAVA, REPLICATE_RESULTS, llava_card_text

    card = (DEFAULT_LLAVA / "README.md").read_text()
    assert card == llava_card_text(DEFAULT_LLAVA), "stale card: rewrite it with labmodels.train.write_llava_card"
    assert f"--json data/results/{REPLICATE_RESULTS[0].name}" in card  # the second sample is quoted


def test_the_shipped_clip_cards_say_what_their_files_say_now():
    """Each lab CLIP's card is written from its training record (timing notes included) and the probe
    report: written again from them, it must come out as shipped."""
    from eadp_lab.labmodels.train import DEFAULT_CLIP, DEFAULT_CLIP_GLOBAL, clip_card_text

    for folder in (DEFAULT_CLIP, DEFAULT_CLIP_GLOBAL):
        card = (folder / "README.md").read_text()
        stale = f"stale card in {folder.name}: rewrite it with labmodels.train.write_clip_card"
        assert card == clip_card_text(folder), stale
        assert json.loads((folder / "training.json").read_text())["history"]["timing"] in card


def test_shipped_models_fit_the_size_budget():
    total = sum(f.stat().st_size for f in (ROOT / "data" / "models").rglob("*") if f.is_file())
    assert total <= 25 * 2**20, f"data/models holds {total / 2**20:.1f} MB"


@torch.no_grad()
def test_training_path_equals_the_generate_path_and_answers_are_words():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from eadp_lab.labmodels.llava_training import answer_logits, cache_features, make_batch

    llava = LlavaForConditionalGeneration.from_pretrained(LLAVA_DIR, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(LLAVA_DIR)
    records = sample("heldout", 4, seed=3, grid=None)
    enc = processor(images=[r.image for r in records], text=[prompt(r.question.text) for r in records],
                    padding=True, return_tensors="pt")
    full = llava(**enc).logits[:, -1]  # (B, V) next token after ASSISTANT:
    feats = cache_features(llava.model.vision_tower, np.stack([r.image for r in records]), progress=False)
    batch = make_batch([[(r.question.text, r.answer, r.qtype)] for r in records], list(range(4)), 256, pad_side="left")
    keep = batch.first
    batch.rows, batch.cols = batch.rows[keep], batch.cols[keep]
    assert torch.equal(batch.ids[:, :-2], enc["input_ids"])  # the training sequence = the prompt + answer + </s>
    fast = answer_logits(llava, feats[batch.images].float(), batch)
    assert torch.allclose(fast, full, atol=2e-2), (fast - full).abs().max()
    assert torch.equal(fast.argmax(-1), full.argmax(-1))
    out = llava.generate(**enc, max_new_tokens=2, do_sample=False)
    words = processor.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(w.split() and w.split()[0] in vocabulary() for w in words)


@torch.no_grad()
def test_attach_clip_scoring_accepts_the_lab_pair():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from eadp_lab import attach
    from eadp_lab.models.scorers import load_clip

    llava = LlavaForConditionalGeneration.from_pretrained(LLAVA_DIR, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(LLAVA_DIR)
    clip, tok = load_clip(CLIP_DIR, dtype=torch.float32)
    r = sample("heldout", 1, seed=4, grid=None)[0]
    enc = processor(images=[r.image], text=[prompt(r.question.text)], return_tensors="pt")
    with attach(llava, "eadp", budget=28, scoring="clip", clip=clip, clip_tokenizer=tok,
                tokenizer=processor.tokenizer) as pruner:
        llava.generate(**enc, max_new_tokens=2, do_sample=False)
    item = pruner.last.items[0]
    assert item.instruction == r.question.text and item.tokens_after == 28
    assert item.text_tokens[1:-1] == r.question.text.split()


def test_probe_reads_the_clip_tower_or_the_llava_tower():
    from eadp_lab.labmodels.build import pixel_values, tower_states
    from eadp_lab.labmodels.probe import probe_examples, run
    from eadp_lab.models.scorers import load_clip

    with pytest.raises(ValueError, match="tower"):
        run(0, 10, tower="projector")
    report = run(3, 10, tower="clip", progress=False)
    assert report["tower"] == "clip" and report["llava"] is None
    assert set(report["probe"]) == {"per_patch", "object"} and set(report["alignment"]) == {"+1", "-1"}
    # the CLIP's tower gives the examples the probe fits (layer -2 of the CLIP's own vision model)
    clip, _ = load_clip(report["clip"], dtype=torch.float32)
    records = sample("heldout", 2, seed=3)
    X = probe_examples(clip.vision_model, records)["per_patch"][0]
    layers = len(clip.vision_model.encoder.layers) - 1
    states = tower_states(clip.vision_model, pixel_values(records[0].image[None]), layers)[0, 1:]
    assert any(torch.allclose(torch.as_tensor(X[0]), s, atol=1e-5) for s in states)


def test_word_alignment_loss_rewards_tokens_that_point_at_their_own_words():
    from eadp_lab.labmodels.losses import word_alignment_loss

    torch.manual_seed(0)
    embeddings = torch.randn(20, 8)
    groups = [torch.tensor([3, 4, 5]), torch.tensor([10, 11])]
    labels = torch.tensor([[[1, 2], [3, 1], [0, 0]]])  # (B=1, N=3, A=2); the last patch is background
    right = torch.stack([embeddings[3] + embeddings[11], embeddings[5] + embeddings[10], torch.randn(8)])[None] * 4
    wrong = torch.stack([embeddings[4] + embeddings[10], embeddings[3] + embeddings[11], torch.randn(8)])[None] * 4
    assert word_alignment_loss(right, embeddings, labels, groups) < word_alignment_loss(wrong, embeddings, labels, groups)
    # background is not scored: changing its token changes nothing
    moved = right.clone()
    moved[0, 2] = 100.0
    assert torch.equal(word_alignment_loss(moved, embeddings, labels, groups),
                       word_alignment_loss(right, embeddings, labels, groups))


def test_attribute_labels_follow_the_patch_targets():
    from eadp_lab.labmodels.clip_training import patch_targets
    from eadp_lab.labmodels.llava_training import attribute_labels, attribute_word_ids
    from eadp_lab.labmodels.referents import scene_owners
    from eadp_lab.world.grounding import patch_coverage
    from eadp_lab.world.words import COLOURS, SHAPES, SIZES
    from eadp_lab.world.scenes import sample_scene
    from eadp_lab.world.config import WorldConfig

    scenes = [sample_scene(np.random.default_rng(seed), WorldConfig()) for seed in (3, 4)]
    labels = attribute_labels(scenes, scene_owners(scenes, 256).numpy())
    assert labels.shape == (2, 256, 3) and labels.dtype == torch.uint8
    for scene, got in zip(scenes, labels):
        on = got[:, 0] > 0
        assert on.any() and (~on).any()
        assert {COLOURS[int(c) - 1] for c in got[on, 0]} <= {o.colour for o in scene.objects}
        assert np.array_equal(got.numpy(), patch_targets(scene, patch_coverage(scene, (16, 16)))[0][:, :3])
    assert [len(g) for g in attribute_word_ids()] == [len(COLOURS), len(SHAPES), len(SIZES)]


def test_a_curriculum_phase_asks_only_its_question_types_in_the_worlds_proportions():
    from eadp_lab.labmodels.llava_training import conversation, phase_config
    from eadp_lab.world.config import WorldConfig

    config = phase_config((3, 7, 0.5, ("shape", "colour")))
    assert config.n_objects == (3, 7)
    assert config.question_mix == tuple((q, c) for q, c in WorldConfig().question_mix if q in ("colour", "shape"))
    assert phase_config((1, 3, 0.2)).question_mix == WorldConfig().question_mix  # no types: the whole mix
    scene = sample("train", 1, seed=4, grid=None)[0].scene
    rng = np.random.default_rng(0)
    asked = {t for _ in range(20) for _, _, t, _ in conversation(scene, rng, 3, config)}
    assert asked <= {"colour", "shape"} and asked
    with pytest.raises(ValueError, match="count2"):
        phase_config((3, 7, 0.5, ("colour", "count2")))
    # (name, weight) pairs set the proportions, and conversations follow them
    weighted = phase_config((3, 7, 0.5, (("colour", 1), ("count", 3))))
    assert weighted.question_mix == (("colour", 1), ("count", 3))
    drawn = [t for _ in range(400) for _, _, t, _ in conversation(scene, rng, 1, weighted)]
    assert set(drawn) == {"colour", "count"} and 0.68 < drawn.count("count") / len(drawn) < 0.82
    for bad in ((("colour", 0),), (("colour", 1.5),)):
        with pytest.raises(ValueError, match="positive integers"):
            phase_config((3, 7, 0.5, bad))
    with pytest.raises(ValueError, match="all as names"):
        phase_config((3, 7, 0.5, ("colour", ("count", 3))))
    for twice in (("colour", "colour"), (("count", 1), ("count", 2))):
        with pytest.raises(ValueError, match="named once"):
            phase_config((3, 7, 0.5, twice))


def test_alignment_frame_sets_clips_side_by_side_with_their_declared_signs():
    from eadp_lab.evaluation import LAB_CLIP
    from eadp_lab.labmodels.probe import alignment, alignment_frame
    from eadp_lab.models.scorers import load_clip

    records = sample("heldout", 6, seed=2)
    frame = alignment_frame({"a": LAB_CLIP, "b": LAB_CLIP}, records)
    assert set(frame["clip"]) == {"a", "b"} and set(frame.sign) == {1.0, -1.0}
    assert (frame["declared sign"] == json.loads((LAB_CLIP / "config.json").read_text())["eadp_similarity_sign"]).all()
    direct = alignment(*load_clip(LAB_CLIP, dtype=torch.float32), records)
    row = frame[(frame["clip"] == "a") & (frame.sign == -1.0) & (frame.kind == "colour")].iloc[0]
    assert row.pointing == direct["-1"]["colour"]["pointing"] and row.entropy == direct["-1"]["colour"]["entropy"]
    assert frame[frame.kind == "function"].pointing.isna().all()  # function words name no object
    # records sampled for another model's grid (a Qwen checkpoint's 8 x 8): masks redrawn on the CLIP's 16 x 16
    assert alignment(*load_clip(LAB_CLIP, dtype=torch.float32), sample("heldout", 6, seed=2, grid=(8, 8))) == direct


def test_compare_weights_tells_a_bitwise_rerun_from_a_different_one(tmp_path):
    from safetensors.torch import save_file

    from eadp_lab.labmodels.train import compare_weights, main

    w = {"a": torch.arange(6, dtype=torch.float16).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)}
    for name, tensors in {"one": w, "same": {k: v.clone() for k, v in w.items()},
                          "off": {**w, "b": w["b"] + 0.5}, "fewer": {"a": w["a"]},
                          "dtype": {**w, "b": w["b"].float()}}.items():
        (tmp_path / name).mkdir()
        save_file(tensors, tmp_path / name / "model.safetensors")
    assert compare_weights(tmp_path / "one", tmp_path / "same") == {
        "folder": str(tmp_path / "same"), "bitwise_equal": True, "max_abs_difference": 0.0}
    off = compare_weights(tmp_path / "one", tmp_path / "off")
    assert not off["bitwise_equal"] and off["max_abs_difference"] == 0.5
    assert not compare_weights(tmp_path / "one", tmp_path / "fewer")["bitwise_equal"]
    dtype = compare_weights(tmp_path / "one", tmp_path / "dtype")
    assert not dtype["bitwise_equal"] and dtype["max_abs_difference"] == 0.0
    with pytest.raises(SystemExit):  # a folder without weights is refused before any training
        main(["clip", "--compare-with", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_the_recorded_command_keeps_what_changes_the_weights_and_drops_where_files_go():
    from eadp_lab.labmodels.train import recipe_command

    assert recipe_command("llava", ["--out", "/tmp/x", "--checkpoints=/tmp/c", "--seed", "3",
                                    "--compare-with", "data/models/lab-llava", "--checkpoint-every", "60"]) == \
        "python -m eadp_lab.labmodels.train llava --seed 3"
    assert recipe_command("clip", []) == "python -m eadp_lab.labmodels.train clip"


@torch.no_grad()
def test_clip_check_compares_the_whole_vision_tower_of_the_lab_pair():
    """The lab CLIP is the lab LLaVA's tower; one encoder layer's weight changed (the patch embedding
    untouched) is refused, naming that tensor; the verdict is kept until a weight changes."""
    import copy
    import time

    from transformers import LlavaForConditionalGeneration

    from eadp_lab.models.scorers import CLIPScorer, load_clip

    tower = LlavaForConditionalGeneration.from_pretrained(LLAVA_DIR, dtype=torch.float32).eval().model.vision_tower
    clip, tok = load_clip(CLIP_DIR, dtype=torch.float32)
    start = time.perf_counter()
    CLIPScorer(clip, tok).check_matches(tower)
    assert time.perf_counter() - start < 1.0  # the lab tower: every tensor compared in well under a second
    CLIPScorer(copy.deepcopy(clip).to(torch.bfloat16), tok).check_matches(tower)  # rounding alone is tolerated
    CLIPScorer(clip, tok).check_matches(copy.deepcopy(tower).half())
    weight = clip.vision_model.encoder.layers[2].mlp.fc1.weight
    weight[3, 5] += 0.05 * float(weight.abs().max())  # one weight of one layer, by 5% of the tensor's scale
    with pytest.raises(ValueError, match=r"different weights.*encoder\.layers\.2\.mlp\.fc1\.weight.*\d") as exc:
        CLIPScorer(clip, tok).check_matches(tower)
    assert "\n" not in str(exc.value)
    weight[3, 5] -= 0.05 * float(weight.abs().max())  # back within rounding: the verdict follows the weights
    clip.vision_model.encoder.layers[2].mlp.fc1.weight.copy_(tower.encoder.layers[2].mlp.fc1.weight)
    CLIPScorer(clip, tok).check_matches(tower)
    clip.vision_model.post_layernorm.bias.add_(0.5)  # the last tensor of the tower counts too
    with pytest.raises(ValueError, match=r"post_layernorm\.bias"):
        CLIPScorer(clip, tok).check_matches(tower)
