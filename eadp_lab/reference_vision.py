"""Reference tracks of VisionZip and HiPrune (the vision encoder's attention): each runs the
lab's implementation on a case's synthetic tensors, for ``python -m eadp_lab.reference`` (registered with
:func:`eadp_lab.reference.register_track`).

- ``visionzip`` (:mod:`eadp_lab.methods.visionzip`): inputs ``attn_weights`` ``(B, H, 1+N, 1+N)``,
  ``hidden_states`` ``(B, 1+N, D)``, ``metric`` ``(B, 1+N, Dk)``; outputs ``all_indices``
  ``(B, dominant)`` (``[0, topk + 1]``, topk order), ``hidden_states_save`` ``(B, dominant + C, D)``,
  ``contextual_target_idx`` ``(C,)`` and ``contextual_assign`` ``(B, M - C)``. Settings: ``dominant``
  (CLS counted), ``contextual_num``.
- ``hiprune`` (LLaVA, :func:`eadp_lab.methods.hiprune.hiprune_select`): inputs ``attn_shallow`` and
  ``attn_deep`` ``(B, H, 1+N, 1+N)``; outputs ``index_masks`` ``(B, N)``, ``token_indices`` ``(B, T)``
  (ascending), ``shallow_mask`` ``(B, N)``. Settings: ``visual_token_num``, ``alpha``, ``grid_side``.
- ``hiprune_qwen`` (Qwen2.5-VL, :func:`eadp_lab.methods.hiprune.hiprune_qwen`): inputs ``attn_shallow`` and
  ``attn_deep`` ``(H, S, S)`` (one ViT block's attention over all patches, window order) and
  ``image_grid_thw`` ``(I, 3)``; outputs ``shallow_scores`` and ``deep_scores`` ``(S / 4,)``,
  ``window_index`` ``(S / 4,)``, ``token_indices`` ``(sum kept,)`` (per image, ascending, within the
  image) and ``split_sizes`` ``(I,)``. Settings: ``visual_token_num``, ``alpha``, ``spatial_merge_size``,
  ``window_size``, ``patch_size``.

Tolerances (``compare_case``): integer and bool outputs identical, floats within 1e-5 absolute.
Unknown settings are an error, and so are settings that disagree with the tensors.
"""

from __future__ import annotations


import torch

from .methods.hiprune import (HiPruneQwenSettings, HiPruneSettings, anchor_count, hiprune_qwen, hiprune_select,
                              qwen_anchor_count, qwen_merged_scores, qwen_window_index)
from .methods.visionzip import VisionZipSettings, visionzip
from .reference import agree, case_value, register_track

__all__ = ["run_visionzip", "run_hiprune", "run_hiprune_qwen"]

# What describes a case without changing what it computes (checked against the tensors where it can be).
_KEYS = {
    "visionzip": ("batch", "grid", "num_patches", "heads", "dominant", "dominant_num", "contextual_num",
                  "tokens_out"),
    "hiprune": ("batch", "grid", "num_patches", "heads", "visual_token_num", "alpha", "shallow_token_num",
                "object_layer", "mm_vision_select_layer", "vision_layers", "grid_side"),
    "hiprune_qwen": ("grid_thw", "heads", "visual_token_num", "alpha", "shallow_token_num", "object_layer",
                     "vision_layers", "spatial_merge_size", "window_size", "patch_size", "merged_tokens"),
}


def _attention_map(tensors: dict, name: str) -> torch.Tensor:
    attn = tensors[name]
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2] or attn.shape[-1] < 2:
        raise ValueError(f"{name} must have shape (B, H, 1+N, 1+N), got {tuple(attn.shape)}")
    return attn


def _check_layout(settings: dict, attn: torch.Tensor) -> None:
    B, H, S, _ = attn.shape
    agree(settings, "batch", B)
    agree(settings, "heads", H)
    agree(settings, "num_patches", S - 1)
    grid = settings.get("grid")
    if grid is not None and (len(grid) != 2 or int(grid[0]) * int(grid[1]) != S - 1):
        raise ValueError(f"grid {grid} does not hold the N = {S - 1} patches of a row")


@register_track("visionzip", inputs=("attn_weights", "hidden_states", "metric"), keys=_KEYS["visionzip"])
def run_visionzip(settings: dict, tensors: dict) -> dict[str, torch.Tensor]:
    """The ``visionzip`` track: :func:`eadp_lab.methods.visionzip.visionzip` on layer -2's tensors."""
    attn = _attention_map(tensors, "attn_weights")
    _check_layout(settings, attn)
    vz = VisionZipSettings(int(case_value(settings, "dominant")), int(case_value(settings, "contextual_num")))
    agree(settings, "dominant_num", vz.dominant - 1)
    agree(settings, "tokens_out", vz.budget)
    result = visionzip(attn, tensors["hidden_states"], tensors["metric"], vz.dominant, vz.contextual)
    return {"all_indices": result.all_indices.contiguous(),
            "hidden_states_save": result.tokens.float().contiguous(),
            "contextual_target_idx": result.merge.target_slots.contiguous(),
            "contextual_assign": result.merge.assign.contiguous()}


@register_track("hiprune", inputs=("attn_shallow", "attn_deep"), keys=_KEYS["hiprune"])
def run_hiprune(settings: dict, tensors: dict) -> dict[str, torch.Tensor]:
    """The ``hiprune`` track: :func:`eadp_lab.methods.hiprune.hiprune_select` (LLaVA, the EADP copy)."""
    attn = _attention_map(tensors, "attn_shallow")
    _attention_map(tensors, "attn_deep")
    _check_layout(settings, attn)
    hp = HiPruneSettings(alpha=settings.get("alpha", 0.1), object_layer=int(settings.get("object_layer", 9)),
                         published_depth=int(settings.get("vision_layers", 24)))
    budget = int(case_value(settings, "visual_token_num"))
    agree(settings, "shallow_token_num", anchor_count(budget, hp.alpha))
    grid_side = settings.get("grid_side")
    picks = hiprune_select(attn, tensors["attn_deep"], budget, hp.alpha, None if grid_side is None else int(grid_side))
    return {"index_masks": picks.index_mask.contiguous(), "token_indices": picks.indices.contiguous(),
            "shallow_mask": picks.shallow_mask.contiguous()}


@register_track("hiprune_qwen", inputs=("attn_shallow", "attn_deep", "image_grid_thw"), keys=_KEYS["hiprune_qwen"])
def run_hiprune_qwen(settings: dict, tensors: dict) -> dict[str, torch.Tensor]:
    """The ``hiprune_qwen`` track: :func:`eadp_lab.methods.hiprune.hiprune_qwen` on the scores
    :func:`~eadp_lab.methods.hiprune.qwen_merged_scores` makes of two blocks' attention, in window order
    (as the EADP copy)."""
    grid_thw = tensors["image_grid_thw"].long()
    if grid_thw.ndim != 2 or grid_thw.shape[1] != 3:
        raise ValueError(f"image_grid_thw must have shape (I, 3), got {tuple(grid_thw.shape)}")
    agree(settings, "grid_thw", grid_thw.tolist())
    hp = HiPruneQwenSettings(alpha=settings.get("alpha", 0.5), object_layer=int(settings.get("object_layer", 4)),
                             published_depth=int(settings.get("vision_layers", 32)))
    m = int(settings.get("spatial_merge_size", 2))
    budget = int(case_value(settings, "visual_token_num"))
    merged = [t * (h // m) * (w // m) for t, h, w in grid_thw.tolist()]
    agree(settings, "merged_tokens", merged)
    agree(settings, "shallow_token_num", [qwen_anchor_count(min(budget, n), hp.alpha) if budget < n else 0
                                           for n in merged])
    shallow = qwen_merged_scores(tensors["attn_shallow"], m * m)
    deep = qwen_merged_scores(tensors["attn_deep"], m * m)
    agree(settings, "heads", tensors["attn_shallow"].shape[0])
    window_index, _ = qwen_window_index(grid_thw, int(settings.get("window_size", 112)),
                                        int(settings.get("patch_size", 14)), m)
    indices, sizes = hiprune_qwen(shallow, deep, grid_thw, budget, hp.alpha, m)
    return {"shallow_scores": shallow.float().contiguous(), "deep_scores": deep.float().contiguous(),
            "window_index": window_index.contiguous(), "token_indices": indices.contiguous(),
            "split_sizes": sizes.contiguous()}
