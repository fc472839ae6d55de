"""Reference tracks of FastV, PyramidDrop, DART and SparseVLM (inside the language model): each runs the
lab's implementation on a case's synthetic tensors, for ``python -m eadp_lab.reference`` (registered with
:func:`eadp_lab.reference.register_track`).

A case's JSON names every setting; a key a track does not know is an error, and the derived counts a
case states (FastV's sequence length, PyramidDrop's stage counts, DART's ``token_topk`` and kept count,
SparseVLM's stage counts) must agree with what the lab computes from the others. Tensors (``B`` rows,
``H`` heads, ``L`` positions, ``N`` image tokens; see ``tests/reference-methods/README-llm.md``):

- ``fastv``: input ``attention`` ``(B, H, L, L)``; outputs ``top_attention_rank_index`` ``(B, R)``
  (top-k order) and ``keep_indexs`` ``(B, L - N + R)`` (:func:`eadp_lab.methods.fastv.fastv_keep`).
- ``pyramiddrop``: inputs ``query_states_s`` and ``key_states_s`` ``(B, H, L_s, head_dim)`` per stage;
  outputs ``top_rank_index_s`` ``(B, keep_s)`` (ascending, stage-``s`` positions) and
  ``kept_image_positions_s`` (the same tokens' original positions)
  (:func:`eadp_lab.methods.pyramiddrop.pyramiddrop_keep`).
- ``dart``: inputs ``last_layer_state`` ``(B, L, D)`` and ``any_states`` ``(B, H_kv, L, head_dim)``;
  outputs ``retained_image_tokens_index`` ``(B, R)`` (CPython set order, compared as a set),
  ``keep_indexs``, ``image_pivots``, ``text_pivots`` and ``pivot_order``
  (:func:`eadp_lab.methods.dart.dart_keep`).
- ``sparsevlm`` (v1.0, batch 1): inputs ``inputs_embeds`` and, per sparse layer, ``attn_s``,
  ``layer_output_s`` and ``density_noise_s``; outputs ``rater_idx``, and per layer ``relation_vis_s``,
  ``keep_mask_s``, ``merge_idx_s``, ``merged_tokens_s`` and ``hidden_out_s``
  (:func:`eadp_lab.methods.sparsevlm.sparsevlm_layer`).
"""

from __future__ import annotations

import torch

from .methods.dart import dart_keep, dart_kept_count, dart_token_topk_published
from .methods.fastv import fastv_keep
from .methods.pyramiddrop import pyramiddrop_counts, pyramiddrop_keep
from .methods.sparsevlm import (SPARSEVLM_RETAIN_TOKN, SparseVLMSettings, sparsevlm_layer, sparsevlm_raters,
                                sparsevlm_stage_counts)
from .reference import agree, case_int, case_value, register_track

__all__ = ["run_dart", "run_fastv", "run_pyramiddrop", "run_sparsevlm"]

_DESCRIPTIVE = ("grid", "batch")  # beside eadp_lab.reference.DESCRIPTIVE
_KEYS = {
    "fastv": _DESCRIPTIVE + ("seq_length", "sys_length", "image_token_length", "text_length", "heads",
                             "attention_rank", "agg_layer"),
    "pyramiddrop": _DESCRIPTIVE + ("heads", "head_dim", "image_index", "image_tokens", "text_length", "prompt_len",
                                   "layer_list", "image_token_ratio_list", "image_token_ratio_list_internal",
                                   "stages", "stage_seq_lengths", "stage_image_tokens", "stage_keep_length"),
    "dart": _DESCRIPTIVE + ("seq_length", "image_token_start_index", "image_token_length", "text_length",
                            "pivot_image_token", "pivot_text_token", "reduction_ratio", "token_topk",
                            "retained_image_tokens", "K", "kv_heads", "head_dim"),
    "sparsevlm": _DESCRIPTIVE + ("version", "image_shape", "v_token_start", "text_length", "seq_length", "heads",
                                 "pruning_loc", "layer_dict", "sparse_token_list", "retain_tokn", "stage_counts"),
}


def _batch(settings: dict, tensor: torch.Tensor, name: str) -> None:
    if "batch" in settings and tensor.shape[0] != settings["batch"]:
        raise ValueError(f"the settings give batch {settings['batch']} but {name} has {tensor.shape[0]} rows")


@register_track("fastv", inputs=("attention",), keys=_KEYS["fastv"])
def run_fastv(settings: dict, tensors: dict) -> dict:
    """FastV's selection on ``attention`` (the attention layer ``agg_layer - 1`` returned)."""
    attention = tensors["attention"]
    if attention.ndim != 4:
        raise ValueError(f"attention must have shape (B, H, L, L), got {tuple(attention.shape)}")
    _batch(settings, attention, "attention")
    start, n = case_int(settings, "sys_length"), case_int(settings, "image_token_length")
    agree(settings, "seq_length", attention.shape[-1])
    agree(settings, "heads", attention.shape[1])
    agree(settings, "text_length", attention.shape[-1] - start - n)
    selection = fastv_keep(attention, start, n, case_int(settings, "attention_rank"))
    return {"top_attention_rank_index": selection.image_index, "keep_indexs": selection.keep_index}


@register_track("pyramiddrop", inputs=("query_states_0", "key_states_0"), keys=_KEYS["pyramiddrop"],
                input_prefixes=("query_states_", "key_states_"))
def run_pyramiddrop(settings: dict, tensors: dict) -> dict:
    """PyramidDrop's stages on the per-stage post-RoPE queries and keys."""
    start, N = case_int(settings, "image_index"), case_int(settings, "image_tokens")
    prompt_len = case_int(settings, "prompt_len")
    ratios = list(case_value(settings, "image_token_ratio_list"))
    layers = list(case_value(settings, "layer_list"))
    if len(layers) != len(ratios):
        raise ValueError(f"layer_list {layers} and image_token_ratio_list {ratios} differ in length")
    schedule = pyramiddrop_counts(N, ratios)
    agree(settings, "stages", len(ratios))
    agree(settings, "image_token_ratio_list_internal", [1.0, *schedule.ratios])
    agree(settings, "stage_image_tokens", list(schedule.image_tokens))
    agree(settings, "stage_keep_length", list(schedule.keep))
    agree(settings, "stage_seq_lengths", [prompt_len + n for n in schedule.image_tokens])
    out = {}
    positions = None  # (B, n_s): original positions of the current image tokens
    for s, (n_s, keep) in enumerate(zip(schedule.image_tokens, schedule.keep)):
        q, k = tensors.get(f"query_states_{s}"), tensors.get(f"key_states_{s}")
        if q is None or k is None:
            raise ValueError(f"the case's inputs lack query_states_{s} / key_states_{s}")
        if q.ndim != 4 or q.shape[2] != prompt_len + n_s:
            raise ValueError(f"query_states_{s} must have shape (B, H, {prompt_len + n_s}, head_dim), "
                             f"got {tuple(q.shape)}")
        _batch(settings, q, f"query_states_{s}")
        agree(settings, "heads", q.shape[1])
        agree(settings, "head_dim", q.shape[3])
        if positions is None:
            positions = torch.arange(start, start + N).expand(q.shape[0], -1)
        kept = pyramiddrop_keep(q, k, start, n_s, keep, query_index=prompt_len + n_s - 1)
        positions = positions.gather(1, kept - start)
        out[f"top_rank_index_{s}"] = kept
        out[f"kept_image_positions_{s}"] = positions
    return out


@register_track("dart", inputs=("last_layer_state", "any_states"), as_sets=("retained_image_tokens_index",),
                keys=_KEYS["dart"])
def run_dart(settings: dict, tensors: dict) -> dict:
    """DART's selection on the normed hidden states and the previous layer's keys."""
    hidden, keys = tensors["last_layer_state"], tensors["any_states"]
    if hidden.ndim != 3 or keys.ndim != 4:
        raise ValueError(f"last_layer_state must be (B, L, D) and any_states (B, H_kv, L, head_dim), "
                         f"got {tuple(hidden.shape)} and {tuple(keys.shape)}")
    _batch(settings, hidden, "last_layer_state")
    start, n = case_int(settings, "image_token_start_index"), case_int(settings, "image_token_length")
    p_img, p_txt = case_int(settings, "pivot_image_token"), case_int(settings, "pivot_text_token")
    topk = dart_token_topk_published(n, case_value(settings, "reduction_ratio"), p_img, p_txt)
    agree(settings, "token_topk", topk)
    agree(settings, "retained_image_tokens", dart_kept_count(topk, p_img, p_txt))
    agree(settings, "seq_length", hidden.shape[1])
    agree(settings, "text_length", hidden.shape[1] - start - n)
    agree(settings, "kv_heads", keys.shape[1])
    agree(settings, "head_dim", keys.shape[3])
    selection = dart_keep(hidden, keys, start, n, topk, p_img, p_txt)
    return {"retained_image_tokens_index": selection.image_index, "keep_indexs": selection.keep_index,
            "image_pivots": selection.image_pivots, "text_pivots": selection.text_pivots,
            "pivot_order": selection.pivot_order}


@register_track("sparsevlm", inputs=("inputs_embeds", "layer_output_0", "attn_0", "density_noise_0"),
                keys=_KEYS["sparsevlm"], input_prefixes=("layer_output_", "attn_", "density_noise_"))
def run_sparsevlm(settings: dict, tensors: dict) -> dict:
    """SparseVLM v1.0's raters and sparse layers (batch 1)."""
    if settings.get("version", "1_0") != "1_0":
        raise ValueError(f"only SparseVLM version '1_0' is implemented, got {settings['version']!r}")
    embeds = tensors["inputs_embeds"]
    _batch(settings, embeds, "inputs_embeds")
    start, N = case_int(settings, "v_token_start"), case_int(settings, "image_shape")
    layers = list(case_value(settings, "pruning_loc"))
    token_list = list(case_value(settings, "sparse_token_list"))
    if len(layers) != len(token_list):
        raise ValueError(f"pruning_loc {layers} and sparse_token_list {token_list} must have the same length")
    settings_obj = SparseVLMSettings(layers=tuple(layers))
    agree(settings, "layer_dict", {str(layer): s for s, layer in enumerate(layers)})
    retain = settings.get("retain_tokn")
    if retain is not None:
        if retain not in SPARSEVLM_RETAIN_TOKN:
            raise ValueError(f"retain_tokn must be one of {sorted(SPARSEVLM_RETAIN_TOKN)} or null, got {retain!r}")
        agree(settings, "sparse_token_list", list(SPARSEVLM_RETAIN_TOKN[retain]))
    agree(settings, "stage_counts", sparsevlm_stage_counts(N, token_list, settings_obj.recycle_ratio))
    agree(settings, "seq_length", embeds.shape[1])
    agree(settings, "text_length", embeds.shape[1] - start - N)
    raters = sparsevlm_raters(embeds, start, N)
    out = {"rater_idx": raters[0].nonzero().squeeze(1)}
    v = N
    for s, count in enumerate(token_list):
        names = (f"layer_output_{s}", f"attn_{s}", f"density_noise_{s}")
        missing = [name for name in names if name not in tensors]
        if missing:
            raise ValueError(f"the case's inputs lack {missing}")
        hidden, attention, noise = (tensors[name] for name in names)
        text_len = hidden.shape[1] - start - v
        if text_len != raters.shape[1]:
            raise ValueError(f"layer_output_{s} has {hidden.shape[1]} positions; the sequence has "
                             f"{start + v + raters.shape[1]}")
        step = sparsevlm_layer(hidden, attention, start, v, raters, count, settings_obj, density_noise=noise)
        out.update({f"relation_vis_{s}": step.relevance, f"keep_mask_{s}": step.keep_mask,
                    f"merge_idx_{s}": step.merge_index, f"merged_tokens_{s}": step.merged,
                    f"hidden_out_{s}": step.hidden_states})
        v = step.visual_len
    return out
