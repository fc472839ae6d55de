"""The referent targets of the lab LLaVA's training: roles of the visual tokens, counts and centres."""

import numpy as np
import torch

from eadp_lab.labmodels.referents import (ROLES, ReferentHeads, referent_loss, referents, referred_objects,
                                          scene_owners, stack_referents)
from eadp_lab.world import sample
from eadp_lab.world.grounding import patch_masks, patch_owner
from eadp_lab.world.scenes import matches


def test_patch_owner_is_the_best_covering_object_of_the_patch_masks():
    for r in sample("train", 4, seed=9):
        K = len(r.scene.objects)
        owner = patch_owner(r.coverage)
        masks = patch_masks(r.coverage).reshape(K, -1)
        assert np.array_equal(owner >= 0, masks.any(0))
        for n in np.flatnonzero(owner >= 0):
            assert masks[owner[n], n]
            assert r.coverage.reshape(K, -1)[owner[n], n] == r.coverage.reshape(K, -1)[masks[:, n], n].max()
    assert (patch_owner(np.zeros((0, 4, 4), np.float32)) == -1).all() and len(patch_owner(np.zeros((0, 4, 4)))) == 16


def test_roles_mark_the_named_objects_and_one_centre_per_subject():
    records = sample("train", 120, seed=3)
    owners = scene_owners([r.scene for r in records], 256).numpy()
    seen = set()
    for r, owner in zip(records, owners):
        q, scene = r.question, r.scene
        subjects, anchors = referred_objects(scene, q)
        seen.add(q.qtype)
        if q.qtype in ("count", "exist"):
            assert subjects == [k for k, o in enumerate(scene.objects) if matches(o, q.meta["attrs"])]
            assert (len(subjects) > 0) == (r.answer != "zero" and r.answer != "no")
        elif q.qtype == "relation":
            assert (subjects, anchors) == ([q.meta["a"]], [q.meta["b"]])
        else:  # the answer is the subject's own attribute
            assert getattr(scene.objects[subjects[0]], q.qtype) == r.answer
        roles, count, xy, valid, words = referents(scene, q, owner)
        assert roles.shape == (256,) and count == len(subjects)
        named = np.isin(owner, subjects)
        centre = roles == ROLES.index("subject_centre")
        assert centre.sum() <= len(subjects) and (centre.sum() == len(subjects) or len(subjects) > 1)
        assert np.array_equal(roles == ROLES.index("subject"), named & ~centre)
        assert np.array_equal(roles == ROLES.index("anchor"), np.isin(owner, anchors) & ~centre)
        for k in subjects:  # the centre cell holds the object's centre
            o = scene.objects[k]
            cells = np.flatnonzero(centre)
            assert any(c // 16 == int(o.y // 6) and c % 16 == int(o.x // 6) for c in cells)
        assert valid.tolist() == [len(subjects) == 1] * 2 + [len(anchors) == 1] * 2
        if len(subjects) == 1:
            o = scene.objects[subjects[0]]
            assert np.allclose(xy[:2], (o.x / 48 - 1, o.y / 48 - 1))
        assert (np.abs(xy) <= 1).all()
    assert seen == {"colour", "shape", "size", "relation", "count", "exist"}


def test_referent_loss_is_lower_for_the_right_read_out():
    records = sample("train", 8, seed=1)
    owners = scene_owners([r.scene for r in records], 256).numpy()
    targets = stack_referents([referents(r.scene, r.question, o) for r, o in zip(records, owners)])
    assert targets["roles"].shape == (8, 256) and targets["xy"].shape == (8, 4)
    torch.manual_seed(0)
    heads = ReferentHeads(16)
    # hidden states that carry the targets, read by heads set to read them, against shuffled targets
    with torch.no_grad():
        heads.role[1].weight.zero_()
        heads.role[1].weight[:, : len(ROLES)] = 20 * torch.eye(len(ROLES))
        heads.role[1].bias.zero_()
    visual = torch.nn.functional.one_hot(targets["roles"], 16).float()
    answer = torch.randn(8, 16)
    right, parts = referent_loss(heads, visual, answer, targets)
    wrong_targets = dict(targets, roles=targets["roles"].roll(1, dims=1))
    wrong, _ = referent_loss(heads, visual, answer, wrong_targets)
    assert right < wrong and parts["role"] < 0.01
    # coordinates count only where they exist
    none = dict(targets, valid=torch.zeros_like(targets["valid"]))
    assert referent_loss(heads, visual, answer, none)[1]["xy"] == 0.0


def test_referent_states_read_the_visual_tokens_and_the_first_answer_position():
    from eadp_lab.labmodels.llava_training import _referent_states, make_batch
    from eadp_lab.labmodels.tokenizer import IMAGE

    convs = [[("what colour is the red circle ?", "red", "colour"), ("how many things ?", "two", "count")],
             [("is there a star ?", "yes", "exist")]]
    batch = make_batch(convs, [0, 1], 4)
    S = batch.ids.shape[1]
    position = torch.arange(S, dtype=torch.float32)[None, :, None].expand(2, S, 3)  # each state holds its position
    visual, answer = _referent_states(batch, (position, position + 100), 4)
    for b in range(2):
        assert visual[b, :, 0].tolist() == torch.nonzero(batch.ids[b] == IMAGE).flatten().float().tolist()
        first = batch.cols[(batch.rows == b) & batch.first].min().item()  # the first turn's answer word
        assert answer[b, 0].item() == first + 100
        assert batch.ids[b, first + 1] == make_batch([convs[b][:1]], [0], 4).targets[0]


def test_a_sequence_without_a_question_is_ignored():
    from eadp_lab.labmodels.llava_training import _referent_states, make_batch
    from eadp_lab.labmodels.referents import IGNORE

    records = sample("train", 2, seed=2)
    owners = scene_owners([r.scene for r in records], 256).numpy()
    roles, count, xy, valid, words = referents(records[0].scene, None, owners[0])
    assert (roles == IGNORE).all() and count == IGNORE and not valid.any()
    targets = stack_referents([referents(records[0].scene, None, owners[0]),
                               referents(records[1].scene, records[1].question, owners[1])])
    batch = make_batch([[], [(records[1].question.text, records[1].answer, records[1].qtype)]], [0, 1], 256)
    states = torch.randn(2, batch.ids.shape[1], 8)
    visual, answer = _referent_states(batch, (states, states), 256)
    assert visual.shape == (2, 256, 8) and (visual[0] == 0).all()
    heads = ReferentHeads(8)
    loss, parts = referent_loss(heads, visual, answer, targets)
    only, _ = referent_loss(heads, visual[1:], answer[1:], {k: v[1:] for k, v in targets.items()})
    assert torch.isfinite(loss) and torch.allclose(loss, only)  # the empty sequence adds nothing


def test_the_card_recipe_describes_the_referent_losses_only_when_they_are_on():
    from dataclasses import replace

    from eadp_lab.labmodels.llava_training import LlavaTraining
    from eadp_lab.labmodels.train import llava_recipe

    history = {"phases": [{"steps": 10, "images": 20, "objects": [3, 7], "qtypes": []}], "val": []}
    off = llava_recipe(replace(LlavaTraining(), referents=0.0), history)
    on = llava_recipe(replace(LlavaTraining(), referents=0.5, role_layer=2, answer_layer=3, word_layer=1), history)
    assert "Referent losses" not in off and "Referent losses" in on
    assert "at layer 2 each visual token" in on and "at layer 3 the position" in on and "at layer 1 each word" in on
    assert "weight 0.5" in on


def test_referent_layers_beyond_the_language_model_are_refused_before_any_work(tmp_path):
    import pytest
    from dataclasses import replace

    from eadp_lab.labmodels.build import LlavaSize
    from eadp_lab.labmodels.llava_training import LlavaTraining, train_llava

    settings = replace(LlavaTraining(), referents=1.0, role_layer=2, answer_layer=5, word_layer=1,
                       size=LlavaSize(lm_layers=4))
    with pytest.raises(ValueError, match=r"referent layers \[2, 5, 1\] must lie in 0 .. 4"):
        train_llava(settings, tmp_path / "no-clip-needed", progress=False)
