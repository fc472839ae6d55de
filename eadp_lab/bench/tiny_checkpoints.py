"""Tiny random checkpoints in the on-disk format of the real ones, and a LLaVA-format question file.

``python -m eadp_lab.bench.tiny_checkpoints OUT`` writes, under ``OUT``:

- ``llava-1.5/``: the format of ``llava-hf/llava-1.5-7b-hf``: ``LlavaForConditionalGeneration``
  with a CLIP tower at 336 px / patch 14 (576 visual tokens, layer -2, CLS dropped), a Llama
  with the 32064-entry vocabulary, ``<image>`` = 32000 and ``<pad>`` = 32001, a ``LlamaTokenizer``
  (SentencePiece-style BPE with byte fallback), ``CLIPImageProcessor``, ``LlavaProcessor`` and
  LLaVA-1.5's conversation template (``USER: <image>\\n... ASSISTANT:``); and ``clip/``, a
  ``CLIPModel`` whose vision tower is the model's (the format of
  ``openai/clip-vit-large-patch14-336``, with a ``CLIPTokenizer``), for ``scoring="clip"``.
- ``llava-v1.6/``: the format of ``llava-hf/llava-v1.6-vicuna-7b-hf``: ``LlavaNextForConditionalGeneration``
  with AnyRes grid pinpoints up to 672 px, ``LlavaNextImageProcessor``, ``LlavaNextProcessor``.
- ``qwen2.5-vl/``: the format of ``Qwen/Qwen2.5-VL-7B-Instruct``: ``Qwen2_5_VLForConditionalGeneration``
  (patch 14, 2x2 merge, temporal patch 2, window attention), the 152064-entry vocabulary with
  Qwen's special ids (``<|image_pad|>`` = 151655, ...), a ``Qwen2Tokenizer`` (byte-level BPE)
  padding on the right as the real one does, ``Qwen2VLImageProcessor`` and a ChatML template.
- ``qwen3-vl/``: the format of ``Qwen/Qwen3-VL-8B-Instruct``: ``Qwen3VLForConditionalGeneration``
  (``model_type`` ``qwen3_vl`` with ``text_config`` / ``vision_config``; patch 16, 2x2 merge,
  temporal patch 2, a learned 48 x 48 position grid (``num_position_embeddings`` 2304),
  ``deepstack_visual_indexes`` from the ViT's blocks, interleaved M-RoPE ``mrope_section``
  [24, 20, 20] scaled to the tiny head), the 151936-entry vocabulary with Qwen's special ids, a
  ``Qwen2Tokenizer``, ``preprocessor_config.json`` (``Qwen2VLImageProcessorFast``, mean and std
  0.5, 65536 to 16777216 pixels) and ``video_preprocessor_config.json`` (``Qwen3VLVideoProcessor``)
  as the real repository has them, and the chat template in ``chat_template.json`` (ChatML, no
  default system prompt, ``<|vision_start|><|image_pad|><|vision_end|>`` per image). Without
  torchvision the processor loads image-only (:mod:`eadp_lab.models.processors`).
- ``questions/``: ``questions.jsonl`` (``question_id`` int, ``image``, ``text``, ``answer``,
  ``category``) and its PNG images, from the lab world's held-out split.

Weights are float16 in sharded safetensors with an index (as the hub stores them). Widths
are tiny (32), so everything runs on a CPU in seconds; the vocabulary, ids, image sizes and
token counts are the real ones. The tokenizers are trained on the lab world's questions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

__all__ = ["FORMATS", "build", "build_all", "question_file", "main"]

FORMATS = ("llava-1.5", "llava-v1.6", "qwen2.5-vl", "qwen3-vl")

LLAMA_SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 32000, "<pad>": 32001}
QWEN_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                 "<|object_ref_start|>": 151646, "<|object_ref_end|>": 151647, "<|box_start|>": 151648,
                 "<|box_end|>": 151649, "<|quad_start|>": 151650, "<|quad_end|>": 151651,
                 "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
                 "<|image_pad|>": 151655, "<|video_pad|>": 151656}
CLIP_SPECIALS = {"<|startoftext|>": 0, "<|endoftext|>": 1}
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6's
SHARD = "200KB"  # small enough that every checkpoint is sharded

# LLaVA-1.5's conversation format and Qwen's ChatML, written as Jinja for apply_chat_template.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    " {% else %}ASSISTANT: {% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus(n: int = 400) -> list[str]:
    """Lab-world questions and answers, and the templates' words, to train the tokenizers on."""
    from ..world.sample import sample

    records = sample("train", n, seed=4242, grid=None)
    return ([r.question.text for r in records] + [r.answer for r in records]
            + ["USER: ASSISTANT: user assistant system You are a helpful assistant ."] * 20)


def _bpe_tokenizer(scheme: str, specials: dict, vocab_size: int = 400):
    """A trained BPE ``tokenizers.Tokenizer`` (``"llama"``: Metaspace with byte fallback;
    ``"qwen"``: byte-level; ``"clip"``: lower-cased words with ``</w>``), specials at their ids."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    low = [t for t, i in specials.items() if i < vocab_size]
    if scheme == "llama":
        tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=low, show_progress=False)
    elif scheme == "qwen":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=low, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:  # clip
        tk = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
        tk.normalizer = normalizers.Lowercase()
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        tk.decoder = decoders.BPEDecoder(suffix="</w>")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=low, show_progress=False,
                                      end_of_word_suffix="</w>")
    tk.train_from_iterator(_corpus(), trainer)
    spec = json.loads(tk.to_str())
    for token, i in specials.items():
        spec["model"]["vocab"][token] = i
    spec["added_tokens"] = [dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                                 special=True) for t, i in specials.items()]
    return Tokenizer.from_str(json.dumps(spec))


def _save_tokenizer(tk, out: Path, cls: str, **config):
    """Save ``tk`` as ``cls`` (tokenizer.json + tokenizer_config.json) and load it back with AutoTokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tk).save_pretrained(out)
    _set_keys(out / "tokenizer_config.json", tokenizer_class=cls, **config)
    return AutoTokenizer.from_pretrained(out)


def _set_keys(path: Path, **keys) -> None:
    """Set ``keys`` in the JSON file ``path`` (what a ``save_pretrained`` wrote is patched, not rewritten)."""
    spec = json.loads(path.read_text())
    spec.update(keys)
    path.write_text(json.dumps(spec, indent=2))


def _save_weights(model, out: Path) -> None:
    model.half().save_pretrained(out, max_shard_size=SHARD)


def _clip_vision(seed: int):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=336, patch_size=14, projection_dim=32),
        projection_dim=32)
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


def _llama_text() -> dict:
    return dict(model_type="llama", vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                bos_token_id=1, eos_token_id=2, pad_token_id=32001)


def _llava(out: Path, next_: bool, seed: int) -> Path:
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig,
                              LlavaNextForConditionalGeneration, LlavaNextImageProcessor, LlavaNextProcessor,
                              LlavaProcessor)

    clip = _clip_vision(seed)
    vision = clip.config.vision_config.to_dict()
    vision["model_type"] = "clip_vision_model"
    common = dict(vision_config=vision, text_config=_llama_text(), image_token_index=32000,
                  vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(seed + 1)
    if next_:
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(**common, image_grid_pinpoints=PINPOINTS)).eval()
    else:
        model = LlavaForConditionalGeneration(LlavaConfig(**common, image_seq_length=576)).eval()
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    _save_weights(model, out)
    tokenizer = _save_tokenizer(_bpe_tokenizer("llama", LLAMA_SPECIALS), out, "LlamaTokenizer",
                                bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                image_token="<image>", padding_side="left", add_bos_token=True)
    size = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_mean=OPENAI_MEAN,
                image_std=OPENAI_STD, do_convert_rgb=True)
    if next_:
        processor = LlavaNextProcessor(image_processor=LlavaNextImageProcessor(image_grid_pinpoints=PINPOINTS, **size),
                                       tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                                       num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    else:
        processor = LlavaProcessor(image_processor=CLIPImageProcessor(**size), tokenizer=tokenizer, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_TEMPLATE)
    processor.save_pretrained(out)
    _set_keys(out / "tokenizer_config.json", tokenizer_class="LlamaTokenizer")  # the processor wrote its own
    if not next_:
        clip_out = out.parent / "clip"
        clip_out.mkdir(parents=True, exist_ok=True)
        _save_weights(clip, clip_out)
        _save_tokenizer(_bpe_tokenizer("clip", CLIP_SPECIALS), clip_out, "CLIPTokenizer",
                        bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                        unk_token="<|endoftext|>", model_max_length=77)
    return out


def _qwen(out: Path, seed: int) -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
                  out_hidden_size=32, fullatt_block_indexes=[1])
    text = dict(vocab_size=152064, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=4096, bos_token_id=151643, eos_token_id=151645,
                pad_token_id=151643, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                      "mrope_section": [2, 3, 3]})
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        vision_config=vision, text_config=text, image_token_id=151655, video_token_id=151656,
        vision_start_token_id=151652, vision_end_token_id=151653)).eval()
    out.mkdir(parents=True, exist_ok=True)
    _save_weights(model, out)
    _save_tokenizer(_bpe_tokenizer("qwen", QWEN_SPECIALS), out, "Qwen2Tokenizer", eos_token="<|im_end|>",
                    pad_token="<|endoftext|>", unk_token=None, padding_side="right")
    image = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2,
                                     temporal_patch_size=2, image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
    image.save_pretrained(out)
    _set_keys(out / "preprocessor_config.json", image_processor_type="Qwen2VLImageProcessor",
              processor_class="Qwen2_5_VLProcessor")
    (out / "chat_template.jinja").write_text(QWEN_TEMPLATE)
    return out


# Qwen3-VL's chat template, reduced to what the lab uses (no tools, no reasoning): ChatML without a default
# system prompt, each image or video as <|vision_start|><|image_pad|>/<|video_pad|><|vision_end|>.
QWEN3_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif item['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN3_MEAN_STD = [0.5, 0.5, 0.5]


def _qwen3(out: Path, seed: int) -> Path:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32, num_position_embeddings=2304,
                  deepstack_visual_indexes=[0, 1], hidden_act="gelu_pytorch_tanh")
    text = dict(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, max_position_embeddings=262144, bos_token_id=151643,
                eos_token_id=151645, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                                      "mrope_section": [2, 3, 3], "mrope_interleaved": True})
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(
        vision_config=vision, text_config=text, image_token_id=151655, video_token_id=151656,
        vision_start_token_id=151652, vision_end_token_id=151653, tie_word_embeddings=False)).eval()
    out.mkdir(parents=True, exist_ok=True)
    _save_weights(model, out)
    specials = {k: v for k, v in QWEN_SPECIALS.items()}
    _save_tokenizer(_bpe_tokenizer("qwen", specials), out, "Qwen2Tokenizer", eos_token="<|im_end|>",
                    pad_token="<|endoftext|>", unk_token=None, padding_side="right")
    common = dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=QWEN3_MEAN_STD,
                  image_std=QWEN3_MEAN_STD, processor_class="Qwen3VLProcessor")
    (out / "preprocessor_config.json").write_text(json.dumps(
        dict(size={"longest_edge": 16777216, "shortest_edge": 65536}, **common,
             image_processor_type="Qwen2VLImageProcessorFast"), indent=2))
    (out / "video_preprocessor_config.json").write_text(json.dumps(
        dict(size={"longest_edge": 25165824, "shortest_edge": 4096}, **common,
             video_processor_type="Qwen3VLVideoProcessor"), indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": QWEN3_TEMPLATE}, indent=2))
    return out


def build(fmt: str, out, seed: int = 0) -> Path:
    """Write the tiny checkpoint of format ``fmt`` (one of :data:`FORMATS`) into ``out``; returns ``out``."""
    from .._quiet import quiet_transformers

    with quiet_transformers():  # "falls back to the PIL backend" without torchvision
        return _build(fmt, Path(out), seed)


def _build(fmt: str, out: Path, seed: int) -> Path:
    if fmt == "llava-1.5":
        return _llava(out, next_=False, seed=seed)
    if fmt == "llava-v1.6":
        return _llava(out, next_=True, seed=seed)
    if fmt == "qwen2.5-vl":
        return _qwen(out, seed)
    if fmt == "qwen3-vl":
        return _qwen3(out, seed)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def question_file(out, n: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """``(questions.jsonl, image folder)``: ``n`` lab-world held-out questions in LLaVA's evaluation format."""
    from PIL import Image

    from ..world.sample import sample

    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, r in enumerate(sample("heldout", n, seed=seed, grid=None)):
        Image.fromarray(np.asarray(r.image)).save(images / f"{i:04d}.png")
        lines.append(json.dumps({"question_id": i, "image": f"{i:04d}.png", "text": r.question.text,
                                 "answer": r.answer, "category": r.qtype}))
    path = out / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, images


def build_all(out, seed: int = 0, questions: int = 8) -> dict:
    """Every format and the question file under ``out``; returns their paths by name."""
    out = Path(out)
    paths = {fmt: build(fmt, out / fmt, seed) for fmt in FORMATS}
    paths["clip"] = out / "clip"
    paths["questions"], paths["images"] = question_file(out / "questions", questions, seed)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eadp_lab.bench.tiny_checkpoints", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder to write into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--questions", type=int, default=8)
    args = parser.parse_args(argv)
    for name, path in build_all(args.out, args.seed, args.questions).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
