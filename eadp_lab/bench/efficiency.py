"""Efficiency of visual-token pruning in a real forward pass: time, memory, KV cache and FLOPs.

    python -m eadp_lab bench efficiency --model ID_OR_PATH --methods none,eadp,pool --budgets 192,128,64
        [--questions N] [--repeats R] [--warmup W] [--max-new-tokens T] [--json OUT]
        [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--scoring llm|clip --clip PATH]
    python -m eadp_lab bench efficiency --model tiny-llava          # offline, a built-in tiny random LLaVA-1.5

Implements the efficiency comparison of the visual-token-pruning literature (FastV, Chen et
al., ECCV 2024; EADP, Wang, Yang and Shen, ECCV 2026): for no pruning and every method and
budget, in one process and one configuration after the other (nothing runs in parallel, so
timings never compete for cores), with :func:`eadp_lab.attach` doing the pruning inside the
model's own ``forward`` / ``generate``:

* **prefill**: the median wall time of ``model(**inputs, use_cache=True)`` (vision tower,
  scoring and selection, language model over the prompt), and **generate**: the median wall
  time of ``model.generate(**inputs, max_new_tokens=T, min_new_tokens=T)`` (greedy; the
  minimum makes every configuration decode the same ``T`` tokens), over ``questions x
  repeats`` calls after ``warmup`` untimed calls per question;
* **overhead**: the method's own time (``pruner.last.seconds``: scoring, selection and the
  sequence surgery), reported apart from the model's time ``prefill - overhead``. It is read
  from ``generate``'s prefill, where the images are encoded before the hook runs; the plain
  forward's ``pruner.last.seconds`` also contains the vision tower (kept in the JSON as
  ``hook_forward_ms``);
* **peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` after a reset per
  configuration; on CPU the process's resident-set high-water mark (Linux ``VmHWM``, reset per
  configuration through ``/proc/self/clear_refs``; elsewhere ``resource``'s lifetime
  ``ru_maxrss``, which cannot be reset). The output says which. ``peak_memory_delta_mib`` is the
  rise above the level at the configuration's start (weights excluded);
* **KV cache**: the bytes of the ``past_key_values`` the prefill returned (sum of every layer's
  key and value tensors) next to :func:`eadp_lab.flops.kv_cache_bytes`
  ``= L * 2 * H_kv * h * n * bytes`` for the ``n`` tokens the language model received;
* **prefill FLOPs**: :func:`eadp_lab.flops.prefill_flops` of the model's own config with
  ``n = v + t``, ``v`` the visual tokens actually fed to the language model (from
  ``pruner.last``; all placeholders for ``none``) and ``t`` the prompt's text tokens::

      FLOPs = 2 * L * (n*d*H*h + 2*n*d*H_kv*h + n*H*h*d + 2*H*h*n^2 + 3*n*d*m)

  (``d`` hidden, ``m`` MLP width, ``L`` layers, ``H``/``H_kv`` query/key-value heads, ``h``
  head dim; 2 FLOPs per multiply-add, full ``n^2`` attention, no LM head, no vision tower:
  the literature's convention, see :mod:`eadp_lab.flops`).

``none`` is the model as shipped, without the hook; every ratio is taken against it
(speed-ups ``t_none / t``, FLOPs ratio ``FLOPs / FLOPs_none``).

``--model`` is a hub id or a local folder (loaded with ``AutoModelForImageTextToText``; its
processor, when it has one, builds a chat prompt around a seeded synthetic image of the
processor's size; otherwise the inputs are made by hand: seeded pixels, the placeholders the
model expects and seeded question token ids), or ``tiny-llava``: a random LLaVA-1.5-shaped
model (CLIP tower at 336 px / patch 14, so 576 visual tokens, with tiny widths) that runs
offline on a CPU in seconds. Taught in ``notebooks/04_full_model_benchmarks``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from .._checks import check_budget, check_choice, cli_int
from .._io import check_output, save_report
from .._io import write_json as _write_json
from ..evaluation import DTYPES, prompt_for
from ..evaluation.loading import ModelLoadError, load_checked, load_error
from ..flops import kv_cache_bytes, language_model_shape, prefill_flops

__all__ = [
    "TINY_LLAVA",
    "DTYPES",
    "QUESTIONS",
    "tiny_llava",
    "load_model",
    "ModelLoadError",
    "synthetic_image",
    "handmade_sample",
    "processor_samples",
    "make_samples",
    "cache_bytes",
    "placeholder_count",
    "sample_counts",
    "PeakMemory",
    "measure_configuration",
    "add_ratios",
    "measure_all",
    "check_arguments",
    "run",
    "format_table",
    "write_json",
    "plot_efficiency",
    "main",
]

TINY_LLAVA = "tiny-llava"
DEVICES = ("cpu", "cuda")
QUESTIONS = [
    "What is the colour of the largest shape in the image?",
    "How many objects are there in the picture?",
    "What is to the left of the small circle?",
    "Describe the scene in one sentence.",
    "Is there a red square in the image?",
    "Which object is closest to the top edge?",
]
# Hand-made prompts: [BOS] + one "USER:" token + placeholders + question + one "ASSISTANT:" token.
HANDMADE_QUESTION_TOKENS = 20
# Synthetic image for Qwen-VL processors (sizes in pixels, not edges): 48 x 48 patches merged 2 x 2 = 576
# visual tokens, as many as LLaVA-1.5's 24 x 24 grid: 672 px with Qwen2.5-VL's 14 px patches, 768 px with
# Qwen3-VL's 16 px ones (QWEN_IMAGE_PATCHES x the processor's patch_size).
QWEN_IMAGE_PATCHES = 48
QWEN_IMAGE_SIDE = QWEN_IMAGE_PATCHES * 14

# The built-in tiny LLaVA-1.5: CLIP ViT geometry of llava-1.5 (336 px, patch 14, 24 x 24 = 576
# tokens, layer -2, CLS dropped) and a LLaMA-shaped language model, both with tiny widths.
TINY_VOCAB = 1024
TINY_IMAGE_TOKEN = TINY_VOCAB - 1
TINY_USER, TINY_ASSISTANT = 3, 4
TINY_VISION = dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=4, image_size=336, patch_size=14, projection_dim=64)
TINY_TEXT = dict(model_type="llama", vocab_size=TINY_VOCAB, hidden_size=256, intermediate_size=688,
                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2)


# ---------------------------------------------------------------------------------------- models
def tiny_llava(seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random ``LlavaForConditionalGeneration`` shaped like LLaVA-1.5 (576 visual tokens per
    336 x 336 image), with a 2-layer, 64-wide CLIP tower and a 4-layer, 256-wide LLaMA
    (about 4 M parameters). Seeded: the same ``seed`` gives the same weights."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(vision_config=TINY_VISION, text_config=TINY_TEXT, image_token_index=TINY_IMAGE_TOKEN,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    return model.to(dtype).eval()


def _has_processor(path: Path) -> bool:
    return any((path / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))


def load_model(model: str, device: str = "cpu", dtype: str = "float32"):
    """Load ``model`` for the bench: ``(model, processor or None, description)``.

    Args:
        model: ``"tiny-llava"``, a local folder (``config.json`` and weights; a processor is
            used when the folder has ``processor_config.json`` or ``preprocessor_config.json``)
            or a hub id (cached; this lab runs with ``HF_HUB_OFFLINE=1``).
        device: ``"cpu"`` | ``"cuda"``; dtype: a key of :data:`DTYPES`.
    Raises:
        ModelLoadError (a ValueError) naming ``model`` if it is not one of the supported VLMs.
    """
    torch_dtype = DTYPES[dtype]
    if model == TINY_LLAVA:
        return tiny_llava(dtype=torch_dtype).to(device), None, "built-in tiny random LLaVA-1.5 (576 visual tokens)"
    from transformers import AutoConfig, AutoModelForImageTextToText

    from ..models.layouts import FAMILIES
    from ..models.processors import load_processor

    path = Path(model)
    local = path.is_dir()
    try:
        config = AutoConfig.from_pretrained(model, local_files_only=local)
    except Exception as exc:  # noqa: BLE001 (a bad id, a folder without config.json, no network)
        error = load_error("model", model, exc)
        raise ModelLoadError(f"{error} (--model takes {TINY_LLAVA!r}, a folder with config.json or a cached hub "
                             "id)") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        loader = AutoModelForImageTextToText.from_pretrained
    else:  # not in the auto mapping: pick the class from the model type
        import transformers

        by_type = {family: name for name, family in FAMILIES.items()}
        if config.model_type not in by_type:
            raise ModelLoadError(f"model {model!r} has model_type {config.model_type!r}; supported: "
                                 f"{sorted(by_type)}")
        loader = getattr(transformers, by_type[config.model_type]).from_pretrained
    vlm = load_checked("model", model, loader, dtype=torch_dtype, local_files_only=local)
    processor = None
    if not local or _has_processor(path):
        try:
            processor = load_processor(model, config.model_type, local_files_only=local)
        except Exception as exc:  # noqa: BLE001 (e.g. video processors need torchvision)
            print(f"note: no usable processor for {model!r} ({type(exc).__name__}: {exc}); inputs are made by hand",
                  file=sys.stderr)
    return vlm.to(device).eval(), processor, f"{type(vlm).__name__} from {model}"


# ---------------------------------------------------------------------------------------- inputs
def synthetic_image(height: int, width: int, seed: int = 0):
    """A seeded RGB ``PIL.Image`` of ``height x width`` pixels: colour gradients plus noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), (xx + yy) / max(height + width - 2, 1)], -1)
    pixels = 200 * base[..., rng.permutation(3)] + rng.integers(0, 56, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _processor_image_size(processor) -> tuple[int, int]:
    """``(height, width)`` of the image a processor expects (its crop or resize size)."""
    ip = processor.image_processor
    if hasattr(ip, "merge_size"):  # Qwen-VL families: size is in pixels (min/max), any side works
        side = QWEN_IMAGE_PATCHES * int(getattr(ip, "patch_size", 14) or 14)
        return side, side
    for size in (getattr(ip, "crop_size", None), getattr(ip, "size", None)):
        size = dict(size or {})
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    return 336, 336


def processor_samples(processor, n: int, seed: int = 0) -> list[dict]:
    """``n`` single-sample inputs from ``processor``: a synthetic image of the processor's size
    (seed ``seed + i``) and question ``i`` of :data:`QUESTIONS` in the model's prompt format."""
    height, width = _processor_image_size(processor)
    samples = []
    for i in range(n):
        image = synthetic_image(height, width, seed + i)
        batch = processor(images=image, text=prompt_for(processor, QUESTIONS[i % len(QUESTIONS)]), return_tensors="pt")
        samples.append(dict(batch))
    return samples


def _text_ids(config, count: int, generator: torch.Generator) -> list[int]:
    """``count`` seeded token ids of ordinary words (no special or visual token)."""
    text = config.get_text_config()
    specials = {getattr(config, k, None) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                   "vision_end_token_id")}
    specials |= {getattr(text, k, None) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    high = min(text.vocab_size, 32000)
    ids = []
    while len(ids) < count:
        i = int(torch.randint(5, high, (1,), generator=generator))
        if i not in specials:
            ids.append(i)
    return ids


def handmade_sample(model, seed: int = 0, question_tokens: int = HANDMADE_QUESTION_TOKENS) -> dict:
    """One single-sample input made by hand, as ``tests/tiny_vlms.py`` makes them (no processor).

    An image of the vision tower's own size (seeded pixels), as many placeholders as the model
    produces features for it, ``question_tokens`` seeded ordinary token ids, and one fixed
    token before and after (a stand-in for ``USER:`` / ``ASSISTANT:``). Works for every
    supported family; Qwen2.5-VL and Qwen3-VL get a 48 x 48-patch grid (576 tokens after merging).

    Returns:
        ``input_ids`` and ``attention_mask`` ``(1, L)``, the pixels, and what the family
        needs besides (``image_sizes``, ``image_grid_thw``, ``mm_token_type_ids``).
    """
    from ..models.layouts import family_of, is_qwen

    family = family_of(model)
    config = model.config
    vision = config.vision_config
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    text = config.get_text_config()
    prefix = [text.bos_token_id] if isinstance(text.bos_token_id, int) else []
    question = _text_ids(config, question_tokens + 2, g)
    user, question, assistant = question[:1], question[1:-1], question[-1:]
    if is_qwen(family):
        p, tp, merge = vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size
        grid = torch.tensor([[1, 48, 48]])
        pixels = torch.randn(48 * 48, vision.in_channels * tp * p * p, generator=g).to(dtype)
        n = 48 * 48 // merge**2
        visual = [config.vision_start_token_id] + [config.image_token_id] * n + [config.vision_end_token_id]
        ids = torch.tensor([prefix + user + visual + question + assistant])
        return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, image_grid_thw=grid,
                    mm_token_type_ids=(ids == config.image_token_id).int())
    size = vision.image_size
    extra = {}
    if family == "llava":
        pixels = torch.randn(1, 3, size, size, generator=g).to(dtype)
    else:  # AnyRes families: a square image of the tower's size, base view + its tiles
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        crops = image_size_to_num_patches([size, size], config.image_grid_pinpoints, size)
        pixels = torch.randn(1, crops, 3, size, size, generator=g).to(dtype)
        extra["image_sizes"] = torch.tensor([[size, size]])
    device = next(model.parameters()).device
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixels.to(device),
                                                  **{k: v.to(device) for k, v in extra.items()})
    n = sum(len(t.reshape(-1, t.shape[-1])) for t in features.pooler_output)
    ids = torch.tensor([prefix + user + [config.image_token_id] * n + question + assistant])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, **extra)


def make_samples(model, processor, n: int, seed: int = 0) -> list[dict]:
    """``n`` single-sample inputs on the model's device and dtype: from ``processor`` when
    there is one, else :func:`handmade_sample` with seeds ``seed .. seed + n - 1``."""
    if processor is not None:
        samples = processor_samples(processor, n, seed)
    else:
        samples = [handmade_sample(model, seed + i) for i in range(n)]
    param = next(model.parameters())
    return [{k: (v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device))
             if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in samples]


# ---------------------------------------------------------------------------------------- measures
def _cache_tensors(past_key_values) -> list[torch.Tensor]:
    """Every key and value tensor of a transformers ``Cache`` (``.layers``) or a legacy ``((k, v), ...)``."""
    layers = getattr(past_key_values, "layers", None)
    if layers is not None:
        pairs = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers]
    else:
        pairs = list(past_key_values)
    return [t for pair in pairs for t in pair if isinstance(t, torch.Tensor)]


def cache_bytes(past_key_values) -> int:
    """Bytes held by a KV cache: the sum over layers of ``keys.numel() * element_size()`` and the
    same for ``values`` (a transformers ``Cache`` with ``.layers``, or legacy ``((k, v), ...)``)."""
    return sum(t.numel() * t.element_size() for t in _cache_tensors(past_key_values))


def placeholder_count(config, input_ids: torch.Tensor) -> int:
    """Visual placeholder tokens (image and video) in ``input_ids`` ``(B, L)``: what an unpruned
    model feeds its language model."""
    ids = [getattr(config, k, None) for k in ("image_token_id", "video_token_id")]
    return sum(int((input_ids == i).sum()) for i in ids if isinstance(i, int))


def sample_counts(config, input_ids: torch.Tensor, past_key_values, record=None) -> dict:
    """Tokens, FLOPs and KV bytes of one prefill of a single sample.

    Args:
        config: the model's config; input_ids: ``(1, L)`` the caller's prompt.
        past_key_values: the cache the prefill returned.
        record: ``pruner.last`` (a :class:`eadp_lab.models.CallRecord`), ``None`` without pruning.
    Returns:
        ``visual_tokens_before`` / ``visual_tokens`` (fed to the LM), ``text_tokens``,
        ``sequence_before`` / ``sequence``, ``prefill_flops`` (:func:`eadp_lab.flops.prefill_flops`),
        ``kv_cache_bytes`` (measured) and ``kv_cache_bytes_analytic`` (:func:`eadp_lab.flops.kv_cache_bytes`
        at the cache's element size).
    """
    if input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must hold one sample, got shape {tuple(input_ids.shape)}")
    before, L = placeholder_count(config, input_ids), int(input_ids.shape[1])
    per_layer = None
    if record is None:
        visual, length = before, L
    else:
        visual, length = sum(item.tokens_after for item in record.items), record.length_after
        if record.visual_per_layer is not None:  # a method inside the LM: its first layers see every token
            per_layer = record.visual_per_layer[0]
    element = _cache_tensors(past_key_values)[0].element_size()
    text = length - visual
    layers = [visual] * language_model_shape(config).num_layers if per_layer is None else per_layer
    return dict(visual_tokens_before=before, visual_tokens=visual, text_tokens=text, sequence_before=L,
                sequence=length, prefill_flops=prefill_flops(config, visual, text, visual_per_layer=per_layer),
                full_layers=sum(v == before for v in layers),  # layers that still see every visual token
                kv_cache_bytes=cache_bytes(past_key_values),
                # the cache holds, per layer, what that layer saw
                kv_cache_bytes_analytic=sum(kv_cache_bytes(config, v + text, dtype_bytes=element)
                                            for v in layers) // len(layers))


class PeakMemory:
    """Peak memory of one configuration: :meth:`reset`, then :meth:`peak` and :meth:`delta` in bytes.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the resident-set high-water mark ``VmHWM``
    (Linux, reset through ``/proc/self/clear_refs``), else ``ru_maxrss`` (lifetime, no reset).
    :attr:`source` says which.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._start = 0
        if self.device.type == "cuda":
            self.source = "cuda: torch.cuda.max_memory_allocated, reset per configuration"
            self._mode = "cuda"
        elif self._clear_refs():
            self.source = "cpu: process RSS high-water mark (VmHWM), reset per configuration via /proc/self/clear_refs"
            self._mode = "hwm"
        else:
            self.source = "cpu: process lifetime RSS high-water mark (resource ru_maxrss; cannot be reset)"
            self._mode = "maxrss"

    @staticmethod
    def _clear_refs() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return PeakMemory._status("VmHWM") is not None
        except OSError:
            return False

    @staticmethod
    def _status(key: str) -> int | None:
        """A ``kB`` line of ``/proc/self/status`` in bytes, or ``None``."""
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    @staticmethod
    def _rss() -> int:
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except ImportError:
            return PeakMemory._status("VmRSS") or 0

    def reset(self) -> None:
        if self._mode == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            if self._mode == "hwm":
                self._clear_refs()
            self._start = self._rss()

    def peak(self) -> int:
        if self._mode == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        if self._mode == "hwm":
            return int(self._status("VmHWM") or 0)
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB on Linux
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)

    def delta(self) -> int:
        return max(0, self.peak() - self._start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    """``(fn(), seconds)`` with the device synchronised on both sides."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _mean(values):
    """The mean, as an int when every value is the same int."""
    values = list(values)
    if all(v == values[0] for v in values) and isinstance(values[0], int):
        return values[0]
    return sum(values) / len(values)


def measure_configuration(model, samples: list[dict], method: str, budget: int | None, *, repeats: int = 5,
                          warmup: int = 1, max_new_tokens: int = 16, attach_kwargs: dict | None = None,
                          memory: PeakMemory | None = None) -> dict:
    """Time, memory, KV cache and FLOPs of one configuration (``method="none"``: no hook).

    Args:
        model: a supported VLM, eval mode; samples: single-sample inputs on its device.
        method, budget: as for :func:`eadp_lab.attach` (``budget`` unused for ``"none"``).
        repeats: timed calls per sample; warmup: untimed calls per sample before them.
        max_new_tokens: tokens each ``generate`` call decodes (also its minimum).
        attach_kwargs: ``scoring``, ``tokenizer``, ``clip``, ``clip_tokenizer`` for the hook.
    Returns:
        One row (see :func:`run`); times in ms, sizes in bytes and MiB, FLOPs as an int.
    """
    from ..models import attach

    device = next(model.parameters()).device
    memory = memory or PeakMemory(device)
    text_config = model.config.get_text_config()
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else (text_config.pad_token_id if text_config.pad_token_id is not None
                                       else text_config.eos_token_id)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                      pad_token_id=pad)
    hook = (contextlib.nullcontext(None) if method == "none"
            else attach(model, method=method, budget=budget, **(attach_kwargs or {})))
    prefill, generate, overhead, hook_forward, per_sample, new_tokens = [], [], [], [], [], []
    with torch.no_grad(), hook as pruner:
        for _ in range(warmup):
            for sample in samples:
                model(**sample, use_cache=True)
                model.generate(**sample, **gen_kwargs)
        memory.reset()
        for r in range(repeats):
            for sample in samples:
                out, seconds = _timed(lambda: model(**sample, use_cache=True), device)
                prefill.append(seconds)
                record = pruner.last if pruner is not None else None
                if r == 0:
                    per_sample.append(sample_counts(model.config, sample["input_ids"], out.past_key_values, record))
                if record is not None:
                    hook_forward.append(record.seconds)
                del out
                tokens, seconds = _timed(lambda: model.generate(**sample, **gen_kwargs), device)
                generate.append(seconds)
                new_tokens.append(int(tokens.shape[1] - sample["input_ids"].shape[1]))
                overhead.append(pruner.last.seconds if pruner is not None else 0.0)
        peak, delta = memory.peak(), memory.delta()
    ms = lambda values: 1e3 * statistics.median(values)  # noqa: E731
    row = dict(
        method=method, budget=None if method == "none" else budget,
        visual_tokens_before=_mean(s["visual_tokens_before"] for s in per_sample),
        visual_tokens=_mean(s["visual_tokens"] for s in per_sample),
        text_tokens=_mean(s["text_tokens"] for s in per_sample),
        sequence_before=_mean(s["sequence_before"] for s in per_sample),
        sequence=_mean(s["sequence"] for s in per_sample),
        prefill_ms=ms(prefill), overhead_ms=ms(overhead),
        prefill_model_ms=ms(prefill) - ms(overhead),
        hook_forward_ms=ms(hook_forward) if hook_forward else 0.0,
        generate_ms=ms(generate), new_tokens=_mean(new_tokens),
        prefill_flops=round(_mean(s["prefill_flops"] for s in per_sample)),
        kv_cache_bytes=round(_mean(s["kv_cache_bytes"] for s in per_sample)),
        kv_cache_bytes_analytic=round(_mean(s["kv_cache_bytes_analytic"] for s in per_sample)),
        full_layers=_mean(s["full_layers"] for s in per_sample),
        peak_memory_mib=peak / 2**20, peak_memory_delta_mib=delta / 2**20, memory_source=memory.source,
        samples=per_sample,
        prefill_ms_all=[1e3 * t for t in prefill], generate_ms_all=[1e3 * t for t in generate],
        overhead_ms_all=[1e3 * t for t in overhead],
    )
    row["prefill_gflops"] = row["prefill_flops"] / 1e9
    row["kv_cache_mib"] = row["kv_cache_bytes"] / 2**20
    row["kv_cache_analytic_mib"] = row["kv_cache_bytes_analytic"] / 2**20
    row["kv_cache_match"] = all(s["kv_cache_bytes"] == s["kv_cache_bytes_analytic"] for s in per_sample)
    return row


def add_ratios(rows: list[dict]) -> list[dict]:
    """Add ``prefill_speedup``, ``prefill_model_speedup``, ``generate_speedup`` (``t_none / t`` of the
    medians), ``prefill_speedup_low`` / ``_high`` (the smallest and largest speed-up of one timed call
    against the unpruned call of the same sample and round, :func:`eadp_lab.bench.timing.ratio_spread`:
    the project's one rule for a timing's spread) and
    ``flops_ratio`` (``FLOPs / FLOPs_none``) to every row, in place; ``ValueError`` naming ``rows``
    without a ``none`` row."""
    from .timing import ratio_spread

    base = next((r for r in rows if r["method"] == "none"), None)
    if base is None:
        raise ValueError("rows must hold a 'none' row (the unpruned baseline)")
    for r in rows:
        r["prefill_speedup"] = base["prefill_ms"] / r["prefill_ms"]
        r["prefill_model_speedup"] = base["prefill_model_ms"] / r["prefill_model_ms"]
        r["generate_speedup"] = base["generate_ms"] / r["generate_ms"]
        r["flops_ratio"] = r["prefill_flops"] / base["prefill_flops"]
        calls = (base.get("prefill_ms_all") or [], r.get("prefill_ms_all") or [])
        spread = ratio_spread(*calls) if calls[0] and len(calls[0]) == len(calls[1]) else None
        r["prefill_speedup_low"] = spread["low"] if spread else float("nan")
        r["prefill_speedup_high"] = spread["high"] if spread else float("nan")
    return rows


def merge_rounds(rows: list[dict]) -> dict:
    """One configuration's rows of several interleaved rounds (:func:`measure_configuration`, one
    timed call per sample each) as one row: the calls pooled in round order, every median recomputed
    from them, the peak memory the largest of the rounds, the counts those of the first round."""
    if not rows:
        raise ValueError("no rounds to merge")
    pooled = {k: [t for r in rows for t in r[k]] for k in ("prefill_ms_all", "generate_ms_all", "overhead_ms_all")}
    med = statistics.median
    out = dict(rows[0], **pooled)
    out.update(prefill_ms=med(pooled["prefill_ms_all"]), overhead_ms=med(pooled["overhead_ms_all"]),
               generate_ms=med(pooled["generate_ms_all"]),
               hook_forward_ms=med([r["hook_forward_ms"] for r in rows]),
               peak_memory_mib=max(r["peak_memory_mib"] for r in rows),
               peak_memory_delta_mib=max(r["peak_memory_delta_mib"] for r in rows))
    out["prefill_model_ms"] = out["prefill_ms"] - out["overhead_ms"]
    return out


# ---------------------------------------------------------------------------------------- command
def _split(value, name: str) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    value = list(value)
    if not value:
        raise ValueError(f"{name} must list at least one value")
    return value


def measure_all(model, samples: list[dict], methods, budgets, *, repeats: int = 5, warmup: int = 1,
                max_new_tokens: int = 16, attach_kwargs: dict | None = None, memory=None, settings_for=None,
                progress: bool = True) -> list[dict]:
    """``none`` once, then every method of ``methods`` at every budget: the rows of
    :func:`measure_configuration` (each with its ``method`` label), with :func:`add_ratios`.

    The timed calls are interleaved: ``repeats`` rounds, each timing every configuration once per
    sample (:func:`merge_rounds` pools them), so a slow spell of a shared machine falls on every
    configuration alike and each speed-up has a spread (``prefill_speedup_low`` / ``_high``). The
    ``warmup`` calls run in the first round only, untimed.

    ``settings_for(label) -> (registry method, settings)`` maps a label to what is attached
    (e.g. :meth:`eadp_lab.lab.Lab.settings`, for ablations such as ``eadp-topk``); without it a
    label is the registry name and the method's defaults are used.
    """
    from tqdm.auto import tqdm

    configs = [("none", None)] + [(m, b) for m in methods if m != "none" for b in budgets]
    rounds = {config: [] for config in configs}
    bar = tqdm(total=len(configs) * repeats, desc="efficiency", unit="config", disable=not progress, file=sys.stderr)
    for r in range(repeats):  # interleaved: every configuration once per round, so drift hits them alike
        for label, budget in configs:
            bar.set_postfix_str(f"round {r + 1}: " + (label if budget is None else f"{label} @ {budget}"))
            method, kwargs = label, dict(attach_kwargs or {})
            if settings_for is not None:
                method, kwargs["settings"] = settings_for(label)
            rounds[(label, budget)].append(measure_configuration(
                model, samples, method, budget, repeats=1, warmup=warmup if r == 0 else 0,
                max_new_tokens=max_new_tokens, attach_kwargs=kwargs, memory=memory))
            bar.update()
    bar.close()
    return add_ratios([{**merge_rounds(rounds[config]), "method": config[0]} for config in configs])


def check_arguments(methods, budgets, *, questions: int = 2, repeats: int = 5, warmup: int = 1,
                    max_new_tokens: int = 16, device: str = "cpu", dtype: str = "float32", scoring: str = "llm",
                    clip=None) -> tuple[list[str], list[int]]:
    """Validate the bench's arguments before anything is loaded.

    Returns:
        ``(methods, budgets)``: ``methods`` starting with ``"none"`` (added when missing),
        without duplicates; ``budgets`` as ints.
    Raises:
        ValueError naming the first bad argument.
    """
    from ..methods import METHODS

    methods = _split(methods, "methods")
    for m in methods:
        check_choice("methods", m, METHODS)
    methods = ["none"] + [m for i, m in enumerate(methods) if m != "none" and m not in methods[:i]]
    parsed = []
    for b in _split(budgets, "budgets"):
        try:
            b = int(b) if isinstance(b, str) else b
        except ValueError:
            raise ValueError(f"budgets must be integers >= 1 (visual tokens kept per image), got {b!r}") from None
        parsed.append(check_budget(b, "budgets"))
    check_budget(questions, "questions")
    check_budget(repeats, "repeats")
    check_budget(max_new_tokens, "max_new_tokens")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    check_choice("dtype", dtype, DTYPES)
    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False")
    check_choice("scoring", scoring, ("llm", "clip"))
    if scoring == "clip" and clip is None:
        raise ValueError("scoring='clip' needs clip=<path or hub id of the CLIP checkpoint of the vision tower>")
    return methods, list(dict.fromkeys(parsed))


def run(model: str = TINY_LLAVA, methods="none,eadp,pool", budgets="192,128,64", *, questions: int = 2,
        repeats: int = 5, warmup: int = 1, max_new_tokens: int = 16, device: str = "cpu", dtype: str = "float32",
        scoring: str = "llm", clip=None, seed: int = 0, progress: bool = True) -> dict:
    """Measure every configuration; return ``{"settings": {...}, "rows": [...]}``.

    Args:
        model: ``"tiny-llava"``, a local folder or a hub id (see :func:`load_model`).
        methods, budgets: comma-separated strings or sequences; ``none`` is always measured
            once (first); every other method at every budget (visual tokens kept per image).
        questions: samples (image + question) per configuration; repeats, warmup: timed and
            untimed calls per sample; max_new_tokens: tokens each ``generate`` decodes.
        device, dtype, scoring, clip: where and how to run (``scoring="clip"`` loads ``clip``).
        seed: inputs' seed; progress: show a tqdm bar over configurations (stderr).
    Returns:
        ``rows``: per configuration ``method``, ``budget``, ``visual_tokens_before`` /
        ``visual_tokens`` (fed to the LM), ``text_tokens``, ``sequence_before`` / ``sequence``,
        ``prefill_ms``, ``overhead_ms``, ``prefill_model_ms``, ``hook_forward_ms``,
        ``generate_ms``, ``new_tokens``, ``prefill_flops`` / ``prefill_gflops``,
        ``kv_cache_bytes`` / ``kv_cache_bytes_analytic`` (and MiB, ``kv_cache_match``),
        ``peak_memory_mib``, ``peak_memory_delta_mib``, ``memory_source``, the ratios of
        :func:`add_ratios`, per-sample counts (``samples``) and every timing (``*_ms_all``).
        Counts are means over samples (ints when all samples agree).
    """
    methods, budgets = check_arguments(methods, budgets, questions=questions, repeats=repeats, warmup=warmup,
                                       max_new_tokens=max_new_tokens, device=device, dtype=dtype, scoring=scoring,
                                       clip=clip)
    vlm, processor, description = load_model(model, device, dtype)
    samples = make_samples(vlm, processor, questions, seed)
    attach_kwargs = dict(scoring=scoring, tokenizer=getattr(processor, "tokenizer", None))
    if scoring == "clip":
        from ..models import load_clip

        attach_kwargs["clip"], attach_kwargs["clip_tokenizer"] = load_clip(clip, device=device, dtype=DTYPES[dtype])
    memory = PeakMemory(torch.device(device))
    rows = measure_all(vlm, samples, methods[1:], budgets, repeats=repeats, warmup=warmup,
                       max_new_tokens=max_new_tokens, attach_kwargs=attach_kwargs, memory=memory, progress=progress)
    import transformers

    settings = dict(
        model=model, model_description=description, model_class=type(vlm).__name__,
        inputs="processor" if processor is not None else "hand-made", dtype=dtype, device=device,
        methods=methods, budgets=budgets, questions=questions, repeats=repeats, warmup=warmup,
        max_new_tokens=max_new_tokens, scoring=scoring, clip=None if clip is None else str(clip), seed=seed,
        memory_source=memory.source,
        flops_convention="eadp_lab.flops.prefill_flops: 2 FLOPs per multiply-add, full n^2 attention, "
                         "no LM head, no vision tower",
        torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
        torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
        cuda_device=torch.cuda.get_device_name(device) if device == "cuda" else None,
        platform=platform.platform(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return dict(settings=settings, rows=rows)


def _spread(row: dict) -> str:
    """``[low-high]`` of a row's prefill speed-up (:func:`add_ratios`)."""
    low, high = row.get("prefill_speedup_low", float("nan")), row.get("prefill_speedup_high", float("nan"))
    return f"[{low:.2f}-{high:.2f}]"


def format_table(result: dict) -> str:
    """The rows of :func:`run` side by side, with the ratios against ``none``."""
    s, rows = result["settings"], result["rows"]
    lines = [
        f"model {s['model']} ({s['model_class']}, {s['inputs']} inputs), {s['dtype']} on {s['device']}, "
        f"{s['torch_threads']} threads; samples {s['questions']} x repeats {s['repeats']} after "
        f"{s['warmup']} warm-up call(s) each, interleaved in rounds; generate decodes {s['max_new_tokens']} tokens; scoring={s['scoring']}",
        f"times: medians; overhead = pruner.last.seconds (scoring + selection), model = prefill - overhead; "
        f"speed-up and FLOPs ratio against none; [low-high]: the prefill speed-up of single calls against "
        f"the unpruned call of the same sample and round (a spread that covers 1 is no measurable difference)",
        f"memory: {s['memory_source']}; full: decoder layers that see every visual token (methods inside the LM)",
        f"FLOPs: {s['flops_convention']}",
    ]
    header = (f"{'method':<11} {'budget':>6} {'visual':>6} {'seq':>5} {'full':>4} | {'prefill ms':>10} {'speed-up':>8} "
              f"{'[low-high]':>12} "
              f"{'model ms':>9} {'overhead ms':>11} | {'generate ms':>11} {'speed-up':>8} | {'GFLOPs':>8} "
              f"{'ratio':>6} | {'KV MiB':>7} {'analytic':>8} | {'peak MiB':>8} {'+delta':>7}")
    lines += [header, "-" * len(header)]
    for r in rows:
        budget = "-" if r["budget"] is None else str(r["budget"])
        visual = r["visual_tokens"] if isinstance(r["visual_tokens"], int) else f"{r['visual_tokens']:.1f}"
        seq = r["sequence"] if isinstance(r["sequence"], int) else f"{r['sequence']:.1f}"
        lines.append(
            f"{r['method']:<11} {budget:>6} {visual:>6} {seq:>5} {r.get('full_layers', 0):>4g} | "
            f"{r['prefill_ms']:>10.2f} "
            f"{r['prefill_speedup']:>7.2f}x {_spread(r):>12} {r['prefill_model_ms']:>9.2f} {r['overhead_ms']:>11.2f} | "
            f"{r['generate_ms']:>11.2f} {r['generate_speedup']:>7.2f}x | {r['prefill_gflops']:>8.3f} "
            f"{r['flops_ratio']:>6.3f} | {r['kv_cache_mib']:>7.3f} {r['kv_cache_analytic_mib']:>8.3f} | "
            f"{r['peak_memory_mib']:>8.1f} {r['peak_memory_delta_mib']:>7.1f}")
    return "\n".join(lines)


def write_json(path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically, with :func:`eadp_lab._io.write_json` (a uniquely named
    temporary file beside ``path``, then ``os.replace``; indent 2)."""
    _write_json(path, payload, indent=2)


def _rows(rows_or_json_path) -> list[dict]:
    if isinstance(rows_or_json_path, (str, os.PathLike)):
        with open(rows_or_json_path) as fh:
            rows_or_json_path = json.load(fh)
    if isinstance(rows_or_json_path, dict):
        rows_or_json_path = rows_or_json_path.get("rows")
    if not isinstance(rows_or_json_path, (list, tuple)) or not rows_or_json_path:
        raise ValueError("rows_or_json_path must be the rows of run(), its result, or the path of its JSON")
    return list(rows_or_json_path)


def plot_efficiency(rows_or_json_path, ax=None):
    """Prefill time and prefill FLOPs against the visual tokens kept, one line per method.

    Args:
        rows_or_json_path: the ``rows`` of :func:`run`, its whole result, or the path of the
            JSON the command wrote.
        ax: ``None`` (a new figure with two panels), a pair of matplotlib ``Axes`` (time,
            FLOPs), or one ``Axes`` (time on it, FLOPs on a twin right axis, dashed).
    Returns:
        ``(ax_time, ax_flops)``. ``none`` is drawn as a black star on both.
    Needs matplotlib (seaborn's palette is used when installed); neither is imported before
    this function is called.
    """
    rows = _rows(rows_or_json_path)
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot_efficiency needs matplotlib (pip install matplotlib)") from None
    try:
        import seaborn as sns

        palette = sns.color_palette()
    except ImportError:
        palette = [f"C{i}" for i in range(10)]
    if ax is None:
        _, (ax_time, ax_flops) = plt.subplots(1, 2, figsize=(10, 4))
    elif isinstance(ax, (list, tuple)):
        ax_time, ax_flops = ax
    else:
        ax_time, ax_flops = ax, ax.twinx()
    same = ax is not None and not isinstance(ax, (list, tuple))  # FLOPs on a twin axis
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "none"))
    for i, method in enumerate(methods):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["visual_tokens"])
        x = [r["visual_tokens"] for r in mine]
        colour = palette[i % len(palette)]
        ax_time.plot(x, [r["prefill_ms"] for r in mine], "o-", color=colour, label=method)
        ax_flops.plot(x, [r["prefill_gflops"] for r in mine], "s--" if same else "s-", color=colour,
                      label=None if same else method)
    for r in rows:
        if r["method"] == "none":
            ax_time.plot([r["visual_tokens"]], [r["prefill_ms"]], "k*", markersize=10, label="none")
            ax_flops.plot([r["visual_tokens"]], [r["prefill_gflops"]], "k*", markersize=10,
                          label=None if same else "none")
    ax_time.set_xlabel("visual tokens fed to the language model")
    ax_time.set_ylabel("prefill time (ms, median)")
    ax_flops.set_ylabel("prefill GFLOPs (analytic)")
    if not same:
        ax_flops.set_xlabel("visual tokens fed to the language model")
        ax_flops.legend()
    ax_time.legend()
    return ax_time, ax_flops


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eadp_lab bench efficiency",
                                     description=__doc__.split("\n\n")[1].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=TINY_LLAVA, help="hub id, local folder or tiny-llava (default)")
    parser.add_argument("--methods", default="none,eadp,pool", help="comma-separated (default: %(default)s)")
    parser.add_argument("--budgets", default="192,128,64", help="visual tokens kept per image (default: %(default)s)")
    parser.add_argument("--questions", type=int, default=2, help="samples per configuration (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per sample (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per sample (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens generate decodes (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default: %(default)s)")
    parser.add_argument("--scoring", default="llm", help="llm (default) | clip (needs --clip)")
    parser.add_argument("--clip", help="CLIP checkpoint of the vision tower, for --scoring clip")
    parser.add_argument("--seed", type=cli_int(0), default=0, help="inputs' seed (default: %(default)s)")
    parser.add_argument("--json", help="also write settings and rows to this JSON file (atomically; its folder is "
                                       "made and checked before the run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    options = dict(questions=args.questions, repeats=args.repeats, warmup=args.warmup,
                   max_new_tokens=args.max_new_tokens, device=args.device, dtype=args.dtype, scoring=args.scoring,
                   clip=args.clip)
    try:
        check_arguments(args.methods, args.budgets, **options)
        if args.json:
            check_output(args.json, "--json")
    except ValueError as exc:  # OutputPathError included
        parser.error(str(exc))
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # generate's notes on the model's generation config
    try:
        result = run(args.model, args.methods, args.budgets, seed=args.seed, progress=not args.no_progress, **options)
    except ModelLoadError as exc:
        parser.error(str(exc))
    print(format_table(result))
    if args.json:
        if save_report(args.json, result, indent=2):
            return 1
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
