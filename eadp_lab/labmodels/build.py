"""The lab models as transformers classes: a tiny CLIP, a tiny LLaVA on top of it, their processors.

- :func:`build_clip`: a ``CLIPModel`` (CLIP: Radford et al., ICML 2021) sized for the lab
  world (96 px images, 6 px patches: a 16x16 grid of 256 visual tokens).
- :func:`build_llava`: a ``LlavaForConditionalGeneration`` (LLaVA-1.5: Liu et al., CVPR 2024)
  whose vision tower *is* the lab CLIP's (copied, frozen), read at layer -2 with the CLS
  token dropped (``vision_feature_layer=-2``, ``vision_feature_select_strategy="default"``),
  a two-layer MLP projector and a small Llama-style language model.
- :func:`scoring_patches` and :func:`dense_text`: exactly the pathway EADP scores with when
  ``attach(scoring="clip")`` (layer -2 states, CLS dropped, ``post_layernorm``,
  ``visual_projection``; per-token ``last_hidden_state @ text_projection``), so the
  token-wise training loss and the grounding figures measure what EADP sees.
- :func:`pixel_values`: the image processor's output computed in numpy (checked equal to
  :func:`image_processor`), for training without per-image PIL calls.

Shapes: ``B`` images, ``N`` visual tokens (256), ``C`` CLIP embedding width, ``L`` text
positions, ``D`` language-model width. Taught in ``notebooks/00_tour``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .tokenizer import BOS, EOS, IMAGE, PAD, UNK, llava_tokenizer, vocab_table

__all__ = ["ClipSize", "LlavaSize", "build_clip", "build_llava", "image_processor", "llava_processor",
           "pixel_values", "vision_states", "tower_states", "scoring_patches", "dense_text", "word_mask", "prompt",
           "CLIP_MEAN", "CLIP_STD", "FEATURE_LAYER", "CHAT_TEMPLATE"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIPImageProcessor's defaults (OpenAI CLIP)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FEATURE_LAYER = -2  # LLaVA-1.5's vision_feature_layer, and the layer EADP scores


@dataclass(frozen=True)
class ClipSize:
    """Sizes of the tiny CLIP (``vision_`` and ``text_`` prefixed, as nanoVLM's configs)."""

    image_size: int = 96
    patch_size: int = 6
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_context: int = 64  # longest caption of the world: 38 words + <s> + </s>
    projection_dim: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LlavaSize:
    """Sizes of the tiny LLaVA's language model (a Llama) and projector."""

    lm_width: int = 192
    lm_layers: int = 4
    lm_heads: int = 6
    lm_kv_heads: int = 6
    lm_mlp: int = 512  # ~ 8/3 of the width, as Llama
    lm_context: int = 512
    rope_theta: float = 10000.0
    lm_init: float = 0.02  # initializer_range of the language model and projector

    def to_dict(self) -> dict:
        return asdict(self)


def build_clip(size: ClipSize = ClipSize(), seed: int = 0):
    """A randomly initialised ``CLIPModel`` of ``size`` (seeded), with the lab vocabulary."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab_table()), hidden_size=size.text_width,
                         intermediate_size=4 * size.text_width, num_hidden_layers=size.text_layers,
                         num_attention_heads=size.text_heads, max_position_embeddings=size.text_context,
                         bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, projection_dim=size.projection_dim),
        vision_config=dict(hidden_size=size.vision_width, intermediate_size=4 * size.vision_width,
                           num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
                           image_size=size.image_size, patch_size=size.patch_size,
                           projection_dim=size.projection_dim),
        projection_dim=size.projection_dim,
    )
    torch.manual_seed(seed)
    return CLIPModel(config)


def build_llava(clip, size: LlavaSize = LlavaSize(), seed: int = 0):
    """A ``LlavaForConditionalGeneration`` on ``clip``'s vision tower (weights copied, frozen).

    The projector and the language model are randomly initialised from ``seed``.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    vocab = vocab_table()
    vision = clip.config.vision_config.to_dict()
    vision["model_type"] = "clip_vision_model"
    text = dict(model_type="llama", vocab_size=len(vocab), hidden_size=size.lm_width,
                intermediate_size=size.lm_mlp, num_hidden_layers=size.lm_layers,
                num_attention_heads=size.lm_heads, num_key_value_heads=size.lm_kv_heads,
                max_position_embeddings=size.lm_context, rope_theta=size.rope_theta,
                bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False,
                initializer_range=size.lm_init)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE,
                         vision_feature_layer=FEATURE_LAYER, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu",
                         image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    model.model.vision_tower.requires_grad_(False)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    model.generation_config.bos_token_id = BOS
    return model


def image_processor(image_size: int = 96):
    """A ``CLIPImageProcessor`` for ``image_size`` px images (resize and crop are no-ops on them)."""
    from transformers import CLIPImageProcessor

    from .._quiet import quiet_transformers

    with quiet_transformers():  # "falls back to the PIL backend" when torchvision is missing
        return CLIPImageProcessor(size={"shortest_edge": image_size},
                                  crop_size={"height": image_size, "width": image_size},
                                  image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


# The lab LLaVA asks its question before the image ("USER: {question} <image> ASSISTANT:"): the
# visual tokens of a causal language model can then read the question, which a model this small
# needs to find the object a question names. eadp_lab.attach reads the instruction before the
# image when nothing follows it but the template's tail.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] }} {% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}<image> {% endfor %}"
    "ASSISTANT:{% else %} {% for item in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ item['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
)


def llava_processor(image_size: int = 96, patch_size: int = 6):
    """The lab LLaVA's ``LlavaProcessor``: CLIP image processor, left-padding word tokenizer, question-first chat template."""
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=image_processor(image_size), tokenizer=llava_tokenizer(),
                          patch_size=patch_size, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token="<image>", chat_template=CHAT_TEMPLATE)


def prompt(question: str) -> str:
    """The lab LLaVA's single-turn prompt, question first: ``USER: {question} <image> ASSISTANT:``."""
    return f"USER: {question} <image> ASSISTANT:"


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32, as :func:`image_processor` makes them."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (B, H, W, 3) uint8, got {images.shape} {images.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def vision_states(vision_tower, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(patches, pooled)``: layer -2 states without CLS ``(B, N, C_v)`` and the pooled CLS ``(B, C_v)``."""
    out = vision_tower(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states[FEATURE_LAYER][:, 1:], out.pooler_output


def tower_states(vision_model, pixels: torch.Tensor, layers: int | None = None, all_states: bool = False):
    """The CLIP vision tower run by hand up to ``layers`` encoder layers (``None``: all).

    Returns the states after those layers ``(B, 1 + N, C_v)`` (CLS first), or with
    ``all_states`` the list of the input and every layer's output (as ``hidden_states``).
    ``tower_states(v, x, len(v.encoder.layers) - 1)`` is ``v(x, output_hidden_states=True).hidden_states[-2]``
    without computing the last layer (checked in the tests).
    """
    hidden = [vision_model.pre_layrnorm(vision_model.embeddings(pixels))]
    for layer in vision_model.encoder.layers[: layers]:
        hidden.append(layer(hidden[-1], None))
    return hidden if all_states else hidden[-1]


def scoring_patches(clip, patch_states: torch.Tensor) -> torch.Tensor:
    """``(B, N, C_v)`` layer -2 states -> ``(B, N, C)`` EADP's scoring embeddings ``V`` (not normalised)."""
    return clip.visual_projection(clip.vision_model.post_layernorm(patch_states))


def word_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: real words (not ``<s>``, ``</s>``, padding or other specials)."""
    special = torch.tensor([PAD, UNK, IMAGE, BOS, EOS], device=input_ids.device)
    return attention_mask.bool() & ~torch.isin(input_ids, special)


def dense_text(clip, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dense, pooled)``: per-token ``last_hidden_state @ text_projection`` ``(B, L, C)`` and the
    pooled ``</s>`` embedding ``(B, C)``, as :class:`eadp_lab.models.scorers.CLIPScorer` computes them."""
    out = clip.text_model(input_ids=input_ids, attention_mask=attention_mask)
    return clip.text_projection(out.last_hidden_state), clip.text_projection(out.pooler_output)

