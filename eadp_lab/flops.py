"""Analytic prefill FLOPs and KV-cache size of a VLM's language model, from its ``config.json``.

Implements the per-layer count behind the efficiency tables of the visual-token-pruning
literature (FastV, Chen et al., ECCV 2024, writes ``4nd^2 + 2n^2d + 2ndm`` multiply-adds per
layer; with LLaMA's and Qwen2's gated MLP the last term is ``3ndm``), generalised to
grouped-query attention and an explicit ``head_dim``. No weights, no forward pass: everything
comes from the config (``data/configs/<org>__<name>/config.json``, the real checkpoints').

Conventions (defaults reproduce the literature's LLaVA-NeXT-7B figure, 41.7 TFLOPs at
2880 visual tokens, to 0.1%; see :func:`prefill_flops`):

* ``flops_per_mac=2``: a multiply-add counts as 2 FLOPs. The "3.8 TFLOPs" quoted for
  LLaVA-1.5-7B at 576 tokens is the same count with ``flops_per_mac=1`` (multiply-adds).
* ``attention="full"``: the score and value matmuls cost ``n^2`` per head each, as if
  nothing were masked (what the tables count, and what a non-fused kernel computes);
  ``"causal"`` counts only the ``n(n+1)/2`` unmasked pairs (a causal FlashAttention kernel).
* No LM head by default; ``include_lm_head=True`` adds it at the last position (what
  generation's prefill computes) or, with ``lm_head_positions="all"``, at every position.
* Norms, RoPE, softmax, residual adds, biases and the embedding lookup are not counted.

Units: FLOPs as Python ints (exact), KV cache in bytes; the table reports TFLOPs
(``1e12``) and MiB (``2**20`` bytes).
"""

from __future__ import annotations

import argparse
import operator
from dataclasses import dataclass
from pathlib import Path

from ._checks import check_budget, check_choice
from .paths import CONFIGS

__all__ = [
    "CONFIGS_DIR",
    "FULL_VISUAL_TOKENS",
    "LanguageModelShape",
    "language_model_config",
    "language_model_shape",
    "load_config",
    "prefill_flops",
    "kv_cache_bytes",
    "vision_tower_flops",
    "reduced_token_counts",
    "analytic_table",
    "main",
]

CONFIGS_DIR = CONFIGS  # data/configs in a clone, the package data when installed (eadp_lab.paths)

# Visual tokens of one "full" input per shipped config (folder name -> tokens), the column
# the table starts from. LLaVA-1.5: one 24x24 grid. LLaVA-NeXT: 5 AnyRes crops x 576, the
# literature's figure (the real count with unpadding and newline tokens is at most 2928).
# Qwen2.5-VL: an image at the model card's max_pixels = 1280*28*28 (one token per 28x28).
# LLaVA-OneVision: anyres_max_9, base + 9 crops x 27x27 = 7290 (newline tokens not counted).
# LLaVA-NeXT-Video: 8 frames x 12x12 pooled tokens (the model card's 8-frame example).
# Qwen3-VL-8B: the EADP authors' Qwen3 setting, a fixed 1024 x 1024 image (patch 16, 2x2 merge: 32 x 32 tokens;
# Qwen_vl/README.md and model_fixed_res.py of their repository).
FULL_VISUAL_TOKENS = {
    "llava-hf__llava-1.5-7b-hf": 576,
    "llava-hf__llava-v1.6-vicuna-7b-hf": 2880,
    "Qwen__Qwen2.5-VL-7B-Instruct": 1280,
    "llava-hf__llava-onevision-qwen2-7b-ov-hf": 7290,
    "llava-hf__LLaVA-NeXT-Video-7B-hf": 1152,
    "Qwen__Qwen3-VL-8B-Instruct": 1024,
}

_LM_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class LanguageModelShape:
    """The sizes of a decoder-only language model that its FLOPs and KV cache depend on."""

    hidden_size: int  # d
    intermediate_size: int  # m, the gated MLP's width
    num_layers: int  # L
    num_heads: int  # H (query heads)
    num_kv_heads: int  # H_kv (H for multi-head attention, fewer with GQA)
    head_dim: int  # h (hidden_size // num_heads unless the config says otherwise)
    vocab_size: int  # V

    def __post_init__(self):
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "vocab_size"):
            check_budget(getattr(self, name), name)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")


def _get(config, key, default=None):
    """``config[key]`` for a dict, ``getattr(config, key)`` otherwise."""
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def load_config(path):
    """A transformers config from a folder holding ``config.json`` (or the file itself), offline.

    ``AutoConfig`` fills the defaults the hub files leave out (LLaVA's ``text_config`` only
    lists what differs from ``LlamaConfig``), so load through it rather than ``json.load``.
    """
    from transformers import AutoConfig

    path = Path(path)
    if path.is_file():
        path = path.parent
    if not (path / "config.json").is_file():
        raise ValueError(f"path must be a folder holding config.json (or that file), got {str(path)!r}")
    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def language_model_config(config):
    """The language-model part of a VLM config.

    LLaVA, LLaVA-NeXT, LLaVA-OneVision, LLaVA-NeXT-Video and Qwen3-VL keep it in ``text_config``;
    Qwen2.5-VL's hub file keeps the text fields at the top level, which transformers (>= 4.5x)
    moves into ``text_config`` on load, so both spellings are accepted. A plain LLM config is
    its own language model. Works on a transformers config or its ``to_dict()``.

    Raises:
        ValueError naming ``config`` if there is no language model (e.g. a vision-only config).
    """
    if config is None:
        raise ValueError("config must be a transformers config or a dict, got None")
    text = _get(config, "text_config")
    if text is not None:
        return text
    model_type = str(_get(config, "model_type", "") or "")
    missing = [k for k in _LM_FIELDS if _get(config, k) is None]
    if missing:
        raise ValueError(f"config has no language model (no text_config, and no {missing})")
    if model_type.endswith("vision_model"):
        raise ValueError(f"config has no language model (model_type {model_type!r} is a vision tower)")
    return config


def language_model_shape(config) -> LanguageModelShape:
    """:class:`LanguageModelShape` of ``config`` (a VLM or LLM config, a dict, or a shape already)."""
    if isinstance(config, LanguageModelShape):
        return config
    lm = language_model_config(config)
    missing = [k for k in _LM_FIELDS if _get(lm, k) is None]
    if missing:
        raise ValueError(f"config's language model lacks {missing} (load it with load_config to get the defaults)")
    heads = _get(lm, "num_attention_heads")
    kv_heads = _get(lm, "num_key_value_heads") or heads
    head_dim = _get(lm, "head_dim") or _get(lm, "hidden_size") // heads
    return LanguageModelShape(
        hidden_size=_get(lm, "hidden_size"),
        intermediate_size=_get(lm, "intermediate_size"),
        num_layers=_get(lm, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=_get(lm, "vocab_size"),
    )


def _check_count(name: str, value) -> int:
    """Return ``value`` as an int, or raise unless it is an integer >= 0."""
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}") from None
    if isinstance(value, bool) or count < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return count


def prefill_flops(
    config,
    num_visual_tokens: int,
    num_text_tokens: int = 0,
    *,
    include_lm_head: bool = False,
    lm_head_positions: str = "last",
    attention: str = "full",
    flops_per_mac: int = 2,
    visual_per_layer=None,
) -> int:
    """FLOPs of the language model's prefill over ``n = num_visual_tokens + num_text_tokens`` tokens.

    With ``d`` hidden size, ``m`` MLP width, ``L`` layers, ``H`` query heads, ``H_kv`` key/value
    heads, ``h`` head dim and ``V`` vocabulary, the multiply-adds (MACs) are::

        per layer = n*d*H*h          (q_proj)
                  + 2 * n*d*H_kv*h   (k_proj, v_proj; GQA shrinks these)
                  + n*H*h*d          (o_proj)
                  + 2 * H*h*A(n)     (scores Q K^T and weights @ V)
                  + 3 * n*d*m        (gate_proj, up_proj, down_proj of the gated MLP)
        total     = L * per layer + P*d*V   (LM head on P positions)

    with ``A(n) = n^2`` for ``attention="full"`` or ``n(n+1)/2`` for ``"causal"``, and
    ``P = 0`` unless ``include_lm_head`` (then ``1`` for ``lm_head_positions="last"``, ``n`` for
    ``"all"``). FLOPs ``= flops_per_mac * MACs``. For multi-head attention (``H_kv = H``,
    ``H*h = d``) a layer is the literature's ``4nd^2 + 2n^2d + 3ndm``.

    The defaults (2 FLOPs per MAC, full attention, no LM head) reproduce the figure quoted for
    LLaVA-NeXT-7B: 41.65 TFLOPs at ``num_visual_tokens=2880, num_text_tokens=0`` (41.7 in the
    tables); ``flops_per_mac=1`` gives the 3.82 TFLOPs quoted for LLaVA-1.5-7B at 576 tokens.

    Args:
        config: a VLM or LLM config (transformers object or dict), or a :class:`LanguageModelShape`.
        num_visual_tokens, num_text_tokens: integers >= 0, not both 0.
        include_lm_head: add the LM head's ``d x V`` matmul.
        lm_head_positions: ``"last"`` | ``"all"`` (only used with ``include_lm_head``).
        attention: ``"full"`` | ``"causal"``.
        flops_per_mac: 2 (FLOPs) or 1 (multiply-adds).
        visual_per_layer: the visual tokens each layer sees, one count per layer, for a method that
            prunes inside the language model (the layers before its pruning point see every token);
            ``None``: every layer sees ``num_visual_tokens``.
    Returns:
        FLOPs as an exact int.
    """
    shape = language_model_shape(config)
    n_vis = _check_count("num_visual_tokens", num_visual_tokens)
    n_txt = _check_count("num_text_tokens", num_text_tokens)
    n = n_vis + n_txt
    if n < 1:
        raise ValueError("num_visual_tokens + num_text_tokens must be >= 1, got 0")
    check_choice("attention", attention, ("full", "causal"))
    check_choice("lm_head_positions", lm_head_positions, ("last", "all"))
    check_choice("flops_per_mac", flops_per_mac, (1, 2))

    d, m, h = shape.hidden_size, shape.intermediate_size, shape.head_dim
    q_width, kv_width = shape.num_heads * h, shape.num_kv_heads * h

    def layer_macs(n: int) -> int:
        pairs = n * n if attention == "full" else n * (n + 1) // 2
        return n * d * q_width + 2 * n * d * kv_width + n * q_width * d + 2 * q_width * pairs + 3 * n * d * m

    if visual_per_layer is None:
        layers = shape.num_layers * layer_macs(n)
    else:
        counts = [_check_count("visual_per_layer", v) for v in visual_per_layer]
        if len(counts) != shape.num_layers:
            raise ValueError(f"visual_per_layer must give one count per layer ({shape.num_layers}), got {len(counts)}")
        layers = sum(layer_macs(v + n_txt) for v in counts)
        n = counts[-1] + n_txt  # what the LM head sees
    head_positions = 0 if not include_lm_head else (1 if lm_head_positions == "last" else n)
    macs = layers + head_positions * d * shape.vocab_size
    return flops_per_mac * macs


def kv_cache_bytes(config, seq_len: int, dtype_bytes: float = 2, batch: int = 1) -> int:
    """Bytes of the key/value cache after ``seq_len`` tokens: ``batch * L * 2 * H_kv * h * seq_len * dtype_bytes``.

    Args:
        config: as for :func:`prefill_flops`.
        seq_len: cached tokens (visual + text), integer >= 0.
        dtype_bytes: bytes per element, > 0 (2 for fp16/bf16, 1 for fp8).
        batch: sequences, integer >= 1.
    Returns:
        Bytes, rounded to an int.
    """
    shape = language_model_shape(config)
    seq_len = _check_count("seq_len", seq_len)
    batch = check_budget(batch, "batch")
    if isinstance(dtype_bytes, bool) or not isinstance(dtype_bytes, (int, float)) or not dtype_bytes > 0:
        raise ValueError(f"dtype_bytes must be a number > 0, got {dtype_bytes!r}")
    elements = batch * shape.num_layers * 2 * shape.num_kv_heads * shape.head_dim * seq_len
    return round(elements * dtype_bytes)


def vision_tower_flops(config, num_images: int = 1, *, flops_per_mac: int = 2) -> int:
    """FLOPs of a plain ViT vision tower (CLIP or SigLIP, as in the LLaVA family), kept apart.

    Per image ``n = (image_size / patch_size)^2`` patches (+1 class token for CLIP), every
    layer of ``vision_config`` run, MACs per layer ``4nd^2 + 2n^2d + 2ndm`` (a two-matrix GELU
    MLP); the patch embedding and the projector are not counted. LLaVA-NeXT runs the tower
    once per crop, so pass the number of crops (5 for a 2x2 AnyRes grid) as ``num_images``.

    Raises:
        ValueError naming ``config`` for towers this count does not describe (Qwen2.5-VL's
        windowed, gated ViT; Qwen3-VL's ViT with its DeepStack mergers) or configs without a vision tower.
    """
    vision = _get(config, "vision_config")
    if vision is None:
        raise ValueError("config has no vision_config")
    model_type = str(_get(vision, "model_type", "") or "")
    if model_type not in ("clip_vision_model", "siglip_vision_model"):
        raise ValueError(f"config's vision tower {model_type!r} is not a plain CLIP/SigLIP ViT")
    images = check_budget(num_images, "num_images")
    check_choice("flops_per_mac", flops_per_mac, (1, 2))
    d, m = _get(vision, "hidden_size"), _get(vision, "intermediate_size")
    n = (_get(vision, "image_size") // _get(vision, "patch_size")) ** 2 + (model_type == "clip_vision_model")
    per_layer = 4 * n * d * d + 2 * n * n * d + 2 * n * d * m
    return flops_per_mac * images * _get(vision, "num_hidden_layers") * per_layer


def reduced_token_counts(full: int, ratios=(1, 1 / 4, 1 / 9)) -> list[int]:
    """``round(full * r)`` for each ratio, e.g. ``576 -> [576, 144, 64]``, ``2880 -> [2880, 720, 320]``."""
    full = check_budget(full, "full")
    counts = []
    for r in ratios:
        if not 0 < r <= 1:
            raise ValueError(f"ratios must lie in (0, 1], got {r!r}")
        counts.append(max(1, round(full * r)))
    return counts


def analytic_table(
    config_paths,
    visual_token_counts,
    text_tokens: int = 0,
    *,
    attention: str = "full",
    flops_per_mac: int = 2,
    dtype_bytes: float = 2,
) -> list[dict]:
    """Prefill TFLOPs and KV-cache MiB of each config at each visual-token count.

    Args:
        config_paths: folders holding ``config.json`` (e.g. ``CONFIGS_DIR / name``).
        visual_token_counts: one sequence of counts per config, in the same order.
        text_tokens: text tokens added to every row (0: the literature's visual-only count).
        attention, flops_per_mac: as for :func:`prefill_flops` (no LM head in the table).
        dtype_bytes: KV-cache element size (2: fp16/bf16).
    Returns:
        Rows ``{"model", "visual_tokens", "text_tokens", "prefill_tflops", "kv_cache_mib"}``
        (``prefill_tflops`` is in tera multiply-adds when ``flops_per_mac=1``).
    """
    config_paths, visual_token_counts = list(config_paths), list(visual_token_counts)
    if len(config_paths) != len(visual_token_counts):
        raise ValueError(f"visual_token_counts needs one sequence per config: {len(config_paths)} configs, "
                         f"{len(visual_token_counts)} sequences")
    text_tokens = _check_count("text_tokens", text_tokens)
    rows = []
    for path, counts in zip(config_paths, visual_token_counts):
        shape = language_model_shape(load_config(path))
        for n_vis in counts:
            flops = prefill_flops(shape, n_vis, text_tokens, attention=attention, flops_per_mac=flops_per_mac)
            kv = kv_cache_bytes(shape, n_vis + text_tokens, dtype_bytes=dtype_bytes)
            rows.append(dict(model=Path(path).name, visual_tokens=n_vis, text_tokens=text_tokens,
                             prefill_tflops=flops / 1e12, kv_cache_mib=kv / 2**20))
    return rows


def main(argv=None) -> int:
    """Print :func:`analytic_table` for the shipped configs at full, 1/4 and 1/9 of their visual tokens."""
    parser = argparse.ArgumentParser(prog="python -m eadp_lab.flops", description=main.__doc__)
    parser.add_argument("--text-tokens", type=int, default=0, help="text tokens per prompt (default: %(default)s)")
    parser.add_argument("--attention", choices=("full", "causal"), default="full")
    parser.add_argument("--flops-per-mac", type=int, choices=(1, 2), default=2)
    parser.add_argument("--configs-dir", default=str(CONFIGS_DIR))
    args = parser.parse_args(argv)
    names = list(FULL_VISUAL_TOKENS)
    rows = analytic_table([Path(args.configs_dir) / name for name in names],
                          [reduced_token_counts(FULL_VISUAL_TOKENS[name]) for name in names],
                          text_tokens=args.text_tokens, attention=args.attention, flops_per_mac=args.flops_per_mac)
    unit = "TFLOPs" if args.flops_per_mac == 2 else "T MACs"
    print(f"LLM prefill, {args.text_tokens} text tokens, {args.attention} attention, no LM head; KV cache fp16")
    header = f"{'model':<42} {'visual tokens':>13} {'prefill ' + unit:>15} {'KV cache MiB':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<42} {r['visual_tokens']:>13} {r['prefill_tflops']:>15.2f} {r['kv_cache_mib']:>13.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
