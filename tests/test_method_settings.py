"""One place for each method's default settings: the per-family presets, EADP's ablations, and the
similarity sign a CLIP checkpoint declares (used by attach, the benches and Lab)."""

import pytest
import torch

import tiny_vlms as T
from eadp_lab import attach, preset
from eadp_lab.methods.settings import (ABLATIONS, DEFAULT_METHODS, FIELD_METHODS, SIGN_KEY, clip_similarity_sign,
                                       default_settings, method_names, method_settings)


def test_a_clip_declares_its_sign_in_its_config_and_bad_values_are_refused():
    clip = T.matching_clip(T.llava())
    assert clip_similarity_sign(clip) is None and clip_similarity_sign(None) is None
    setattr(clip.config, SIGN_KEY, 1)
    assert clip_similarity_sign(clip) == 1.0
    setattr(clip.config, SIGN_KEY, 0.5)
    with pytest.raises(ValueError, match="1 or -1"):
        clip_similarity_sign(clip)


def test_defaults_are_the_family_presets_and_the_sign_replaces_only_the_sign():
    assert default_settings("eadp", "llava") == preset("llava-1.5", faithful=True)
    assert default_settings("eadp", "qwen2_5_vl", "video") == preset("llava-video", faithful=True)
    assert default_settings("eadp", "llava", sign=1.0) == preset("llava-1.5", faithful=True).replace(similarity_sign=1.0)
    assert default_settings("pool", sign=1.0) == default_settings("pool")  # no sign to replace
    assert method_settings("eadp-topk", sign=1.0)[1] == default_settings("eadp", sign=1.0).replace(selection="topk")
    assert set(method_names()) == set(DEFAULT_METHODS) | set(FIELD_METHODS)
    assert set(ABLATIONS) < set(method_names())


@torch.no_grad()
def test_attach_scores_with_the_sign_the_clip_declares():
    model = T.llava()
    inputs = T.inputs("llava", model)

    def kept(clip, settings=None):
        with attach(model, "topk_dense", budget=4, scoring="clip", clip=clip, clip_tokenizer=T.tokenizer(),
                    tokenizer=T.tokenizer(), settings=settings) as pruner:
            model(**inputs)
        return [item.kept for item in pruner.last.items]

    plain = T.matching_clip(model)
    declaring = T.matching_clip(model)
    setattr(declaring.config, SIGN_KEY, 1.0)
    positive = default_settings("topk_dense", sign=1.0)
    negative = default_settings("topk_dense")
    assert negative.similarity_sign == -1.0
    assert all(torch.equal(a, b) for a, b in zip(kept(declaring), kept(plain, positive)))
    assert all(torch.equal(a, b) for a, b in zip(kept(plain), kept(plain, negative)))
    assert any(not torch.equal(a, b) for a, b in zip(kept(plain, positive), kept(plain, negative)))
    # explicit settings win over the declared sign
    assert all(torch.equal(a, b) for a, b in zip(kept(declaring, negative), kept(plain)))


def test_baselines_default_to_their_authors_rule_on_images_and_per_frame_on_videos():
    from eadp_lab.methods.cdpruner import CDPrunerSettings
    from eadp_lab.methods.divprune import DivPruneSettings

    assert default_settings("divprune", "llava_next") == DivPruneSettings(scope="per_image", precision="float32")
    assert default_settings("cdpruner", "llava_next").normalisation == "per_image"
    assert default_settings("divprune", "llava_next_video", "video").scope == "per_row"
    assert default_settings("cdpruner", "llava_onevision", "video") == CDPrunerSettings(normalisation="per_row")
    assert default_settings("cdpruner", "llava", sign=1.0).similarity_sign == 1.0
