"""Tiny random-initialised VLMs of every supported class, and inputs made by hand (no download)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPConfig,
    CLIPModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

V = 96
PAD, BOS, EOS = 0, 1, 2
QV_START, QV_END, IMG, VID = 92, 93, 94, 95
WORDS = ["<pad>", "<s>", "</s>", "<unk>", "USER:", "ASSISTANT:", "what", "colour", "is", "the", "small", "red",
         "blue", "circle", "square", "left", "of", "?", "how", "many", "are", "there", "a", "triangle", "in",
         "image", "video", "moves", "right", "green", ",", ".", "squares",
         "<0.5", "<1.5", "seconds>"]  # Qwen3-VL's frame timestamps, "<0.5 seconds>"
SIZE, PATCH = 24, 4  # 6x6 patch grid
CLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   image_size=SIZE, patch_size=PATCH, projection_dim=24)
CLIP = dict(CLIP_VISION, model_type="clip_vision_model")
SIGLIP = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, image_size=SIZE, patch_size=PATCH)
LLAMA = dict(model_type="llama", vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
             pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
QWEN2 = dict(LLAMA, model_type="qwen2")
PINPOINTS = [[SIZE, 2 * SIZE], [2 * SIZE, SIZE], [2 * SIZE, 2 * SIZE]]


def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(WORDS)}
    for i in range(len(WORDS), V):
        vocab[f"w{i}"] = i
    inverse = {i: w for w, i in vocab.items()}
    for tid, tok in [(IMG, "<image>"), (VID, "<video>"), (QV_START, "<|vision_start|>"), (QV_END, "<|vision_end|>")]:
        del vocab[inverse[tid]]
        vocab[tok] = tid
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", padding_side="left")
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<video>", "<|vision_start|>", "<|vision_end|>"]})
    return tok


def _seed(seed):
    torch.manual_seed(seed)


def llava(seed=0, text_layers=2):
    _seed(seed)
    text = dict(LLAMA, num_hidden_layers=text_layers)
    cfg = LlavaConfig(vision_config=CLIP, text_config=text, image_token_index=IMG, vision_feature_layer=-2,
                      vision_feature_select_strategy="default")
    return LlavaForConditionalGeneration(cfg).eval()


def llava_next(seed=0, text_layers=2):
    _seed(seed)
    text = dict(LLAMA, num_hidden_layers=text_layers)
    cfg = LlavaNextConfig(vision_config=CLIP, text_config=text, image_token_index=IMG, image_grid_pinpoints=PINPOINTS,
                          vision_feature_layer=-2, vision_feature_select_strategy="default")
    return LlavaNextForConditionalGeneration(cfg).eval()


def llava_next_video(seed=0, text_layers=2):
    _seed(seed)
    text = dict(LLAMA, num_hidden_layers=text_layers)
    cfg = LlavaNextVideoConfig(vision_config=CLIP, text_config=text, image_token_index=IMG, video_token_index=VID,
                               image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
                               vision_feature_select_strategy="default", spatial_pool_mode="average",
                               spatial_pool_stride=2)
    return LlavaNextVideoForConditionalGeneration(cfg).eval()


def llava_onevision(seed=0, text_layers=2):
    _seed(seed)
    text = dict(QWEN2, num_hidden_layers=text_layers)
    cfg = LlavaOnevisionConfig(vision_config=SIGLIP, text_config=text, image_token_index=IMG, video_token_index=VID,
                               image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1,
                               vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    return LlavaOnevisionForConditionalGeneration(cfg).eval()


def qwen2_5_vl(seed=0, text_layers=2):
    _seed(seed)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, in_channels=3, patch_size=2,
                  spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=8,
                  out_hidden_size=32, fullatt_block_indexes=[1])
    text = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, pad_token_id=PAD,
                bos_token_id=BOS, eos_token_id=EOS, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "mrope_section": [2, 3, 3]})
    cfg = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=IMG, video_token_id=VID,
                           vision_start_token_id=QV_START, vision_end_token_id=QV_END)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def qwen3_vl(seed=0, text_layers=2, deepstack=2):
    """A tiny ``Qwen3VLForConditionalGeneration``: patch 2, 2x2 merge, a 4x4 learned position grid, a ViT of
    ``deepstack`` blocks each giving DeepStack features (added after decoder layers ``0 .. deepstack - 1``),
    interleaved M-RoPE."""
    _seed(seed)
    vision = dict(depth=deepstack, hidden_size=32, intermediate_size=64, num_heads=4, in_channels=3, patch_size=2,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32, num_position_embeddings=16,
                  deepstack_visual_indexes=list(range(deepstack)))
    text = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                 "mrope_interleaved": True})
    cfg = Qwen3VLConfig(vision_config=vision, text_config=text, image_token_id=IMG, video_token_id=VID,
                        vision_start_token_id=QV_START, vision_end_token_id=QV_END)
    return Qwen3VLForConditionalGeneration(cfg).eval()


BUILDERS = dict(llava=llava, llava_next=llava_next, llava_next_video=llava_next_video,
                llava_onevision=llava_onevision, qwen2_5_vl=qwen2_5_vl, qwen3_vl=qwen3_vl)
QWEN = ("qwen2_5_vl", "qwen3_vl")

QUESTIONS = ["what colour is the small circle ?", "how many red squares are there ?"]


def _left_pad(seqs):
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), PAD)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, L - len(s):] = torch.tensor(s)
        mask[b, L - len(s):] = 1
    return ids, mask


def _words(question):
    tok = tokenizer()
    return tok(question, add_special_tokens=False)["input_ids"]


def inputs(family, model, samples=(0, 1), video=False, seed=0):
    """Inputs for some of the two samples: images (and/or videos), each with its own question."""
    g = torch.Generator().manual_seed(seed)
    questions = [QUESTIONS[i] for i in samples]
    if family in QWEN:
        return _qwen_inputs(model, samples, questions, video, g, timestamps=family == "qwen3_vl")
    if family == "llava":
        pixel = torch.randn(2, 3, SIZE, SIZE, generator=g)[list(samples)]
        n = (SIZE // PATCH) ** 2
        seqs = [[BOS, 4] + [IMG] * n + _words(q) + [5] for q in questions]
        ids, mask = _left_pad(seqs)
        return dict(input_ids=ids, attention_mask=mask, pixel_values=pixel)
    out = {}
    visual = []
    if not video or family == "llava_onevision":
        sizes = torch.tensor([[SIZE, 2 * SIZE - 8], [2 * SIZE - 4, SIZE]])[list(samples)]  # (H, W): unpadding cuts
        crops = [image_size_to_num_patches(s.tolist(), PINPOINTS, SIZE) for s in sizes]
        pixel = torch.randn(2, max(crops), 3, SIZE, SIZE, generator=g)[list(samples)]
        counts = [len(f) for f in model.model.get_image_features(pixel_values=pixel, image_sizes=sizes).pooler_output]
        out.update(pixel_values=pixel, image_sizes=sizes)
        visual.append([[IMG] * n for n in counts])
    if video:
        frames = torch.randn(2, 3, 3, SIZE, SIZE, generator=g)[list(samples)]
        per = len(model.model.get_video_features(pixel_values_videos=frames[:1]).pooler_output[0].reshape(-1, 32))
        out.update(pixel_values_videos=frames)
        visual.append([[VID] * per for _ in samples])
    seqs = []
    for i, q in enumerate(questions):
        seq = [BOS, 4]
        for part in visual:
            seq += part[i]
        seqs.append(seq + _words(q) + [5])
    ids, mask = _left_pad(seqs)
    out.update(input_ids=ids, attention_mask=mask)
    return out


TIMESTAMPS = ["<0.5 seconds>", "<1.5 seconds>"]  # Qwen3-VL: each temporal group's time, before its tokens


def qwen3_frames(n_per_frame: int, frames: int) -> list[int]:
    """Qwen3-VL's video placeholders as its processor writes them: per temporal group ``"<t seconds>"``
    (:data:`TIMESTAMPS`), then ``<|vision_start|>``, the group's ``<|video_pad|>`` tokens, ``<|vision_end|>``."""
    out = []
    for f in range(frames):
        out += _words(TIMESTAMPS[f]) + [QV_START] + [VID] * n_per_frame + [QV_END]
    return out


def _qwen_inputs(model, samples, questions, video, g, timestamps=False):
    grids = [(2, 8, 8)] * 2 if video else [(1, 8, 8), (1, 8, 12)]  # patches of 2 px: 16x16 and 16x24 images
    drawn = [torch.randn(t * h * w, 3 * 2 * 2 * 2, generator=g) for t, h, w in grids]  # both, whichever are used
    seqs, pixels, thw = [], [], []
    for i, q in zip(samples, questions):
        t, h, w = grids[i]
        pixels.append(drawn[i])
        thw.append(torch.tensor([t, h, w]))
        token = VID if video else IMG
        if video and timestamps:  # Qwen3-VL: one timestamped run per temporal group
            seqs.append([BOS] + qwen3_frames(h * w // 4, t) + _words(q) + [5])
            continue
        seqs.append([BOS, QV_START] + [token] * (t * h * w // 4) + [QV_END] + _words(q) + [5])
    ids, mask = _left_pad(seqs)
    kind = 2 if video else 1
    out = dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == (VID if video else IMG)).int() * kind)
    if video:
        out.update(pixel_values_videos=torch.cat(pixels), video_grid_thw=torch.stack(thw))
        if not timestamps:  # Qwen2.5-VL's temporal positions; Qwen3-VL's come from the timestamp text
            out["second_per_grid_ts"] = torch.ones(len(seqs))
    else:
        out.update(pixel_values=torch.cat(pixels), image_grid_thw=torch.stack(thw))
    return out


def matching_clip(vlm, seed=0):
    """A CLIPModel whose vision tower is ``vlm``'s (weights copied), with a tiny text tower."""
    _seed(seed)
    cfg = CLIPConfig(
        vision_config=CLIP_VISION,
        text_config=dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=32, bos_token_id=BOS, eos_token_id=EOS,
                         pad_token_id=PAD),
        projection_dim=24,
    )
    clip = CLIPModel(cfg).eval()
    clip.vision_model.load_state_dict(vlm.model.vision_tower.state_dict())
    return clip


class LMInputs:
    """Records what the language model receives (a forward pre-hook on it)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.model.language_model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    def remove(self):
        self.handle.remove()
