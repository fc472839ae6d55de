"""HiPrune: hierarchical attention in the vision encoder picks anchors, their neighbours, then the rest.

Liu et al., "HiPrune: Training-Free Visual Token Pruning via Hierarchical Attention in Vision
Encoders", 2025 (arXiv:2508.00553; code github.com/Danielement321/HiPrune). Text-agnostic.
The LLaVA semantics here follow the copy the EADP authors evaluated,
github.com/SJTU-DeepVisionLab/EADP at commit ``e1a08801461c181871b9ff1cb0803b8e9966f083``
(``LLaVA/llava/model/llava_arch_HiPrune.py``, ``LlavaMetaForCausalLM.encode_images``):

1. **Scores.** For a CLIP attention map ``(B, H, 1+N, 1+N)``: the mean over the heads, then the
   mean over **all** query rows (CLS included), then the CLS column dropped: the attention each
   patch *receives*, not CLS attention (:func:`attention_received`). The shallow ("object")
   map is layer ``object_layer`` = 9, 1-based (``attentions[8]``); the deep map is LLaVA's
   feature layer, ``attentions[-2]``.
2. **Anchors.** The ``max(1, round(T * alpha / 5))`` patches of highest shallow score, ``alpha``
   = 0.1 (fixed in that code) and ``T`` the budget of a row.
3. **Buffers.** Each anchor brings ``n - 1``, ``n + 1``, ``n - grid_side`` and ``n + grid_side``,
   clamped to ``[0, N - 1]``, de-duplicated. There is **no row check**, as published: ``n +- 1``
   wraps to the previous or next grid row, and a neighbour off the grid becomes patch 0 or
   ``N - 1`` (an anchor on the bottom-left corner buffers ``N - 1``). Kept deliberately.
4. **Deep tokens.** The remaining ``T - #(anchors and buffers)`` patches of highest deep score,
   with the already-chosen ones pushed down by 1 (scores are probabilities, so they come last).
5. Every row keeps exactly ``T`` patches (CLS is not kept) unless the anchors and buffers alone
   exceed ``T``; then all of them are kept (more than ``T``). Every row (crop) gets the full ``T``.

The authors' standalone repository (Danielement321/HiPrune, LLaVA) differs in three ways: it
splits the budget over an image's crops, it has no ``max(1, ...)`` (no anchors for ``T <= 25``
at ``alpha`` = 0.1), and it hard-codes the 24 x 24 grid.

**Qwen2.5-VL** (the EADP copy, ``Qwen_vl/model/vision_hiprune.py`` and ``Qwen_vl/model/hipruner.py``,
same commit; run with ``object_layer=4, alpha=0.5`` in its evaluation config). Its ViT has no CLS
token, windowed attention in most blocks (windows of 4 x 4 merged tokens = 8 x 8 patches; full
attention only in blocks 7, 15, 23, 31 of 32) and a 2 x 2 patch merger after the last block:

- Scores (:func:`qwen_merged_scores`): each block's eager attention ``(H, S, S)`` over all the
  patches of all images (masked to the window, or in the full-attention blocks to the
  frame), mean over the heads, mean over all
  ``S`` query rows, then the mean over each group of 4 consecutive patches (one merged token).
  The blocks run on the patches in *window order*, and the EADP copy does **not** put the scores
  back into raster order (the standalone repository does, with ``reverse_indices``), so its
  score ``j`` belongs to merged token ``window_index[j]`` but is used as merged token ``j``'s:
  the two orders agree only when an image fits in one window (at most 4 x 4 merged tokens).
  :func:`qwen_window_index` gives the order; ``window_index=`` of :func:`qwen_merged_scores`
  undoes it (the standalone repository's behaviour).
- Layers: shallow = block ``object_layer - 1`` = 3 (a windowed block), deep = the **last** block
  (31, full attention), not the second to last.
- Selection (:func:`hiprune_qwen_select`), per image of ``n = t * (h/2) * (w/2)`` merged tokens:
  ``T = min(T, n)``, all kept if ``T >= n``; ``round(T * alpha / 5)`` anchors with **no**
  ``max(1, ...)``; buffers ``+-1`` and ``+-width`` (``width = w/2``, merged grid width) clamped to
  ``[0, n - 1]``, again with no row (or frame) check; the deep fill masks chosen tokens with
  ``-inf`` (not ``-1``); if anchors and buffers exceed ``T`` only the ``T`` lowest indices are
  kept (anchors can be cut); every image gets the full ``T``.
- **Qwen3-VL** (the same authors' Qwen3 track: ``Qwen_vl/VLMEvalKit/vlmeval/vlm/qwen3_vl/model_fixed_res.py``,
  ``Qwen3VLChatHiPrune`` with ``qwen3_visual_forward_with_importance``, the same ``HiPruner``, run with
  ``object_layer=4, alpha=0.5`` on Qwen3-VL-8B's 27-block ViT): every block attends over the whole
  frame (no windows), so the patches are already in raster order of the merged tokens (window order
  is the identity and both ``score_order`` modes agree); each block's score is its attention
  averaged over the heads and over the queries of the frame's own chunk (``attn_weights[0].mean(0).mean(0)``
  per ``cu_seqlens`` chunk, not over the whole call), then over each merged token's 4 patches;
  shallow = block ``object_layer - 1`` = 3 of 27, deep = the last block. :func:`qwen_hiprune_settings`
  gives each family its published depth.

Layer numbers of a model of another depth (:func:`scaled_layer`): each published layer number
``i`` becomes ``round(i * depth / published_depth)`` (halves rounded up, in integers), clamped
to ``[1, depth - 1]``: the rule of the in-LLM methods' ``eadp_lab.methods._layers.scaled_layer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .._checks import check_choice, check_int, check_ndim, check_real
from ._layers import scaled_layer as _scaled_layer

__all__ = ["HiPruneSettings", "HiPruneQwenSettings", "HiPruneSelection", "QwenSelection", "scaled_layer",
           "attention_received", "anchor_count", "hiprune_select", "qwen_merged_scores", "qwen_window_index",
           "qwen_anchor_count", "hiprune_qwen_select", "hiprune_qwen", "PUBLISHED_DEEP_LAYER", "QWEN_SCORE_ORDERS",
           "QWEN_VIT_DEPTHS", "qwen_hiprune_settings"]

PUBLISHED_DEEP_LAYER = -2  # LLaVA's mm_vision_select_layer: the deep map is attentions[-2]


def scaled_layer(i: int, depth: int, published_depth: int = 24) -> int:
    """:func:`eadp_lab.methods._layers.scaled_layer` with HiPrune's published depth (24, CLIP ViT-L) as the
    default. The number keeps its convention (HiPrune's ``object_layer`` is 1-based; a 0-based index such
    as 22 for ``-2`` of 24 stays 0-based)."""
    return _scaled_layer(i, depth, published_depth)


@dataclass(frozen=True)
class HiPruneSettings:
    """HiPrune's settings on LLaVA (the EADP authors' copy): anchors ``max(1, round(T * alpha / 5))``,
    shallow map of layer ``object_layer`` (1-based) of a ``published_depth``-layer CLIP, deep map
    of layer -2 (:data:`PUBLISHED_DEEP_LAYER`)."""

    alpha: float = 0.1  # fixed at 0.1 in the published LLaVA code
    object_layer: int = 9  # 1-based: attentions[object_layer - 1]
    published_depth: int = 24  # CLIP ViT-L/14's layers, the depth the layer numbers refer to

    def __post_init__(self):
        check_real("alpha", self.alpha, minimum=0.0)
        check_int("published_depth", self.published_depth, minimum=2)
        check_int("object_layer", self.object_layer, minimum=1, maximum=self.published_depth)

    def anchors(self, budget: int) -> int:
        """Anchors of a row of budget ``budget``: ``max(1, round(budget * alpha / 5))``."""
        return anchor_count(budget, self.alpha)

    def layers(self, depth: int) -> tuple[int, int]:
        """``(shallow, deep)``: 0-based indices into ``attentions`` of a ``depth``-layer encoder.

        Shallow: ``scaled_layer(object_layer, depth) - 1``; deep: ``scaled_layer(published_depth - 2,
        depth)``. At the published depth: ``(object_layer - 1, published_depth - 2)`` = ``(8, 22)``; at
        depth 12: ``(4, 11)``.
        """
        shallow = scaled_layer(self.object_layer, depth, self.published_depth) - 1
        deep = scaled_layer(self.published_depth + PUBLISHED_DEEP_LAYER, depth, self.published_depth)
        return shallow, deep


QWEN_SCORE_ORDERS = ("raster", "window")  # corrected (the standalone HiPrune repository), published EADP copy


@dataclass(frozen=True)
class HiPruneQwenSettings(HiPruneSettings):
    """HiPrune's settings on Qwen2.5-VL (the EADP authors' evaluation config): anchors
    ``round(T * alpha / 5)`` (none when it rounds to 0), shallow map of block ``object_layer``
    (1-based), deep map of the last block of a ``published_depth``-block ViT.

    ``score_order`` is the order the merged tokens' scores are used in:

    - ``"raster"`` (default, the corrected mode): the scores are put back in raster order
      (``window_index`` undone) before anchors, buffers and the deep fill, so token ``j``'s score
      is token ``j``'s and the ``+-1`` / ``+-width`` buffers are its spatial neighbours. This is
      what the method describes and what the HiPrune authors' own repository does
      (``reverse_indices``); the default because the published order attaches the scores to the
      wrong tokens on every image larger than one window.
    - ``"window"`` (published-compatible): the scores stay in window order, as the EADP copy
      (``Qwen_vl/model/vision_hiprune.py``) leaves them, and index the raster tokens: the EADP
      paper's HiPrune numbers on Qwen2.5-VL were made this way (the reference vectors of
      ``tests/reference-methods/hiprune_qwen_*`` check it).

    A subclass of :class:`HiPruneSettings`, so the registry's ``hiprune`` takes it; only
    Qwen2.5-VL and Qwen3-VL run it (and they run only it). ``published_depth`` is the ViT the
    published ``object_layer`` was set for: 32 (Qwen2.5-VL), 27 (Qwen3-VL-8B; see
    :func:`qwen_hiprune_settings`).
    """

    alpha: float = 0.5
    object_layer: int = 4  # 1-based: block object_layer - 1
    published_depth: int = 32  # Qwen2.5-VL's ViT blocks
    score_order: str = "raster"

    def __post_init__(self):
        super().__post_init__()
        check_choice("score_order", self.score_order, QWEN_SCORE_ORDERS)

    def anchors(self, budget: int) -> int:
        """Anchors of an image of budget ``budget``: ``round(budget * alpha / 5)``, may be 0."""
        return qwen_anchor_count(budget, self.alpha)

    def layers(self, depth: int) -> tuple[int, int]:
        """``(shallow, deep)`` 0-based block indices of a ``depth``-block ViT: the scaled object layer
        minus 1, and the last block ``depth - 1`` (the published code reads ``attn_list[-1]``)."""
        return scaled_layer(self.object_layer, depth, self.published_depth) - 1, depth - 1


# The ViT blocks of the checkpoints the published Qwen variants ran on: Qwen2.5-VL-7B's 32, Qwen3-VL-8B's 27
# (its config.json: vision_config.depth 27; see data/configs/Qwen__Qwen3-VL-8B-Instruct).
QWEN_VIT_DEPTHS = {"qwen2_5_vl": 32, "qwen3_vl": 27}


def qwen_hiprune_settings(family: str, **changes) -> HiPruneQwenSettings:
    """HiPrune's published Qwen settings for ``family`` (``"qwen2_5_vl"`` or ``"qwen3_vl"``): object layer 4
    of that family's published ViT depth (:data:`QWEN_VIT_DEPTHS`), alpha 0.5; ``changes`` applied."""
    check_choice("family", family, tuple(QWEN_VIT_DEPTHS))
    return HiPruneQwenSettings(**{"published_depth": QWEN_VIT_DEPTHS[family], **changes})


def attention_received(attn: torch.Tensor) -> torch.Tensor:
    """HiPrune's score on CLIP: ``(B, H, 1+N, 1+N)`` attention -> ``(B, N)``, the mean over heads, then
    over all query rows (CLS included), with the CLS column dropped."""
    check_ndim("attn", attn, 4, "(B, H, 1+N, 1+N)")
    if attn.shape[-1] != attn.shape[-2] or attn.shape[-1] < 2:
        raise ValueError(f"attn must have shape (B, H, 1+N, 1+N) with N >= 1, got {tuple(attn.shape)}")
    return attn.mean(dim=1).mean(dim=1)[:, 1:]


def anchor_count(budget: int, alpha: float = 0.1) -> int:
    """LLaVA anchors: ``max(1, round(budget * alpha / 5))`` (Python's ``round`` on the float, as published)."""
    return max(1, round(budget * float(alpha) / 5))


def qwen_anchor_count(budget: int, alpha: float = 0.5) -> int:
    """Qwen anchors: ``max(0, round((budget * alpha) / 5))``, may be 0 (as published)."""
    return max(0, round((budget * alpha) / 5))


def _buffered(anchors: torch.Tensor, side: int, size: int) -> torch.Tensor:
    """``(..., 5k)``: anchors and their +-1, +-side neighbours, clamped to ``[0, size - 1]`` (no row check)."""
    return torch.cat([anchors, anchors - 1, anchors + 1, anchors - side, anchors + side], dim=-1).clamp(0, size - 1)


class HiPruneSelection(NamedTuple):
    """HiPrune's picks on a batch of ``B`` rows of ``N`` patches (:func:`hiprune_select`).

    Attributes:
        index_mask: ``(B, N)`` bool, the kept patches (CLS excluded).
        indices: ``(B, T')`` long, the kept patches in ascending order; ``T' = T`` unless the
            anchors and buffers of some row exceed ``T``, then the largest count, rows padded with -1.
        shallow_mask: ``(B, N)`` bool, the anchors and their buffers.
        anchors: ``(B, k)`` long, the anchors in topk order of the shallow score.
        shallow_score: ``(B, N)``, deep_score: ``(B, N)``: :func:`attention_received` of each map.
    """

    index_mask: torch.Tensor
    indices: torch.Tensor
    shallow_mask: torch.Tensor
    anchors: torch.Tensor
    shallow_score: torch.Tensor
    deep_score: torch.Tensor


def _ascending(mask: torch.Tensor) -> torch.Tensor:
    """``(B, max count)`` long: each row's True positions ascending, padded with -1."""
    B, N = mask.shape
    width = int(mask.sum(1).max()) if B else 0
    position = torch.arange(N, device=mask.device).expand(B, N)
    ordered = torch.where(mask, position, N).sort(dim=1).values[:, :width]
    return ordered.masked_fill_(ordered == N, -1)


def hiprune_select(attn_shallow: torch.Tensor, attn_deep: torch.Tensor, budget: int, alpha: float = 0.1,
                   grid_side: int | None = None, valid: torch.Tensor | None = None) -> HiPruneSelection:
    """HiPrune's selection on LLaVA, exactly as the EADP authors' ``encode_images`` (vectorised over rows).

    Args:
        attn_shallow: ``(B, H, 1+N, 1+N)`` CLIP attention of the object layer (``attentions[8]``).
        attn_deep: ``(B, H', 1+N, 1+N)`` CLIP attention of the feature layer (``attentions[-2]``).
        budget: ``T`` patches per row (every row, e.g. every AnyRes crop, gets all ``T``).
        alpha: anchors are ``max(1, round(T * alpha / 5))``.
        grid_side: the buffers' vertical step (patches per grid row); ``None``: ``sqrt(N)`` of a square grid.
        valid: ``(B, N)`` bool, the patches that can be kept (an AnyRes tile cut by unpadding keeps only
            some of its view's patches); ``None``: all (the published code). Anchors are the top valid
            shallow scores, buffers on invalid patches are dropped, the deep fill takes valid patches
            only; a row keeps ``min(T, valid)`` patches (more only when its anchors and buffers exceed
            ``T``). With every patch valid it is the published selection.
    Returns:
        :class:`HiPruneSelection`.
    """
    shallow = attention_received(attn_shallow)
    deep = attention_received(attn_deep)
    if shallow.shape != deep.shape:
        raise ValueError(f"attn_shallow and attn_deep must cover the same rows and patches, "
                         f"got {tuple(attn_shallow.shape)} and {tuple(attn_deep.shape)}")
    B, N = shallow.shape
    budget = check_int("budget", budget, minimum=1)
    check_real("alpha", alpha, minimum=0.0)
    if grid_side is None:
        grid_side = math.isqrt(N)
        if grid_side * grid_side != N:
            raise ValueError(f"grid_side is needed: N = {N} patches are not a square grid")
    grid_side = check_int("grid_side", grid_side, minimum=1)
    device = shallow.device

    if valid is not None:
        if tuple(valid.shape) != (B, N):
            raise ValueError(f"valid must have shape (B, N) = ({B}, {N}), got {tuple(valid.shape)}")
        valid = valid.to(device=device, dtype=torch.bool)
    ranked_shallow = shallow if valid is None else shallow.float().masked_fill(~valid, -math.inf)
    anchors = ranked_shallow.topk(min(anchor_count(budget, alpha), N), dim=1).indices  # (B, k), topk order
    shallow_mask = torch.zeros(B, N, dtype=torch.bool, device=device)
    shallow_mask.scatter_(1, _buffered(anchors, grid_side, N), True)
    if valid is not None:
        shallow_mask &= valid  # a buffer with no token (cut by unpadding) is not kept

    deep_needed = (budget - shallow_mask.sum(1)).clamp(min=0)  # (B,) per row
    deep_score = deep - shallow_mask.int()
    if valid is not None:
        deep_needed = torch.minimum(deep_needed, (valid & ~shallow_mask).sum(1))
        deep_score = deep_score.float().masked_fill(~valid, -math.inf)
    index_mask = shallow_mask.clone()
    k = min(int(deep_needed.max()), N) if B else 0
    if k > 0:
        ranked = deep_score.topk(k, dim=1).indices  # (B, k)
        take = torch.arange(k, device=device) < deep_needed[:, None]
        index_mask.scatter_(1, ranked, take | index_mask.gather(1, ranked))
    return HiPruneSelection(index_mask, _ascending(index_mask), shallow_mask, anchors, shallow, deep)


# ---------------------------------------------------------------- Qwen2.5-VL


def qwen_merged_scores(attn: torch.Tensor, merge_unit: int = 4, window_index: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """One Qwen2.5-VL ViT block's HiPrune score per merged token.

    Args:
        attn: ``(H, S, S)`` the block's attention probabilities over all ``S`` patches of all images,
            in the order the blocks see them (window order).
        merge_unit: patches per merged token (``spatial_merge_size ** 2`` = 4).
        window_index: ``None``: the scores stay in window order, as the EADP copy leaves them;
            ``(S / merge_unit,)`` from :func:`qwen_window_index`: put back in raster order (the
            standalone HiPrune repository).
    Returns:
        ``(S / merge_unit,)``: mean over heads, mean over all ``S`` query rows, mean over each group
        of ``merge_unit`` consecutive patches.
    """
    check_ndim("attn", attn, 3, "(H, S, S)")
    merge_unit = check_int("merge_unit", merge_unit, minimum=1)
    S = attn.shape[-1]
    if attn.shape[1] != S or S % merge_unit:
        raise ValueError(f"attn must have shape (H, S, S) with S a multiple of {merge_unit}, got {tuple(attn.shape)}")
    scores = attn.mean(dim=0).mean(dim=0).view(S // merge_unit, merge_unit).mean(dim=-1)
    if window_index is not None:
        scores = scores[torch.argsort(window_index)]
    return scores


def qwen_window_index(grid_thw: torch.Tensor, window_size: int = 112, patch_size: int = 14,
                      spatial_merge_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The order in which Qwen2.5-VL's ViT blocks see the merged tokens, and its windows.

    The merged grid of each frame (``h / m`` x ``w / m``) is cut into windows of
    ``window_size // m // patch_size`` (= 4) merged tokens a side, from the top-left (the last
    row and column of windows may be partial); windows are listed row by row, frame by frame,
    image by image, and each window's tokens row by row.

    Args:
        grid_thw: ``(I, 3)`` ``(t, h, w)`` patches of each image (``h`` and ``w`` multiples of ``m``).
    Returns:
        ``window_index`` ``(sum t h w / m^2,)`` long: the merged token (raster index, all images
        laid end to end) at each position of the window order; and ``cu_window_seqlens``
        ``(windows + 1,)`` long: the windows' boundaries in patches (``[0, ..., S]``).
    """
    check_ndim("grid_thw", grid_thw, 2, "(I, 3)")
    m = check_int("spatial_merge_size", spatial_merge_size, minimum=1)
    side = check_int("window_size // spatial_merge_size // patch_size", window_size // m // patch_size, minimum=1)
    order, sizes, offset = [], [], 0
    for t, h, w in grid_thw.tolist():
        gh, gw = h // m, w // m
        frame, row, col = torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw), indexing="ij")
        windows_w = -(-gw // side)
        window = (frame * (-(-gh // side)) + row // side) * windows_w + col // side  # window id, raster
        perm = torch.argsort(window.reshape(-1), stable=True)
        order.append(perm + offset)
        sizes.append(torch.bincount(window.reshape(-1)))
        offset += t * gh * gw
    window_index = torch.cat(order) if order else torch.zeros(0, dtype=torch.long)
    counts = torch.cat(sizes) if sizes else torch.zeros(0, dtype=torch.long)
    bounds = torch.cat([torch.zeros(1, dtype=torch.long), (counts * m * m).cumsum(0)])
    return window_index.to(grid_thw.device), bounds.to(grid_thw.device)


class QwenSelection(NamedTuple):
    """HiPrune's picks on one Qwen image (:func:`hiprune_qwen_select`).

    Attributes:
        indices: ``(T,)`` long kept merged tokens, ascending (``T = min(budget, n)``).
        shallow_mask: ``(n,)`` bool, anchors and buffers (before any cut to ``T``).
        anchors: ``(k,)`` long, in topk order.
    """

    indices: torch.Tensor
    shallow_mask: torch.Tensor
    anchors: torch.Tensor


def hiprune_qwen_select(shallow: torch.Tensor, deep: torch.Tensor, budget: int, width: int,
                        alpha: float = 0.5) -> QwenSelection:
    """HiPrune's selection on one Qwen2.5-VL image, as the EADP copy's ``HiPruner._select_one_image``.

    Args:
        shallow, deep: ``(n,)`` scores of the image's merged tokens (:func:`qwen_merged_scores`, in
            the order the caller feeds them: the EADP copy feeds window order).
        budget: ``T`` merged tokens to keep (``min(T, n)``; all when ``T >= n``).
        width: the buffers' vertical step, the merged grid's width ``w / 2``.
        alpha: anchors ``round(T * alpha / 5)`` (0 allowed).
    Returns:
        :class:`QwenSelection`.
    """
    check_ndim("shallow", shallow, 1, "(n,)")
    check_ndim("deep", deep, 1, "(n,)")
    n = shallow.shape[0]
    if deep.shape[0] != n:
        raise ValueError(f"shallow and deep must score the same {n} tokens, got {deep.shape[0]}")
    budget = min(check_int("budget", budget, minimum=1), n)
    width = check_int("width", width, minimum=1)
    device = shallow.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if budget >= n:
        return QwenSelection(torch.arange(n, device=device), torch.zeros(n, dtype=torch.bool, device=device), empty)
    k = qwen_anchor_count(budget, alpha)
    select = torch.zeros(n, dtype=torch.bool, device=device)
    anchors = shallow.topk(k).indices if k > 0 else empty
    if k > 0:
        select[_buffered(anchors, width, n)] = True
    shallow_mask = select.clone()
    deep_needed = budget - int(select.sum())
    if deep_needed > 0:
        select[deep.masked_fill(shallow_mask, -math.inf).topk(deep_needed).indices] = True
    kept = select.nonzero()[:, 0]
    if kept.shape[0] > budget:
        kept = kept[:budget]  # the lowest indices: anchors may be cut
    elif kept.shape[0] < budget:  # unreachable with finite scores; the published fallback
        rest = (~select).nonzero()[:, 0]
        add = deep[rest].topk(min(budget - kept.shape[0], rest.shape[0])).indices
        kept = torch.cat([kept, rest[add]]).sort().values
    return QwenSelection(kept, shallow_mask, anchors)


def hiprune_qwen(shallow: torch.Tensor, deep: torch.Tensor, grid_thw: torch.Tensor, budget: int,
                 alpha: float = 0.5, spatial_merge_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPrune on every image of a Qwen2.5-VL batch, as the EADP copy's ``HiPruner.forward``.

    Args:
        shallow, deep: ``(n_total,)`` scores of all merged tokens, images laid end to end.
        grid_thw: ``(I, 3)`` ``(t, h, w)`` patches of each image; image ``i`` has
            ``t * (h / m) * (w / m)`` merged tokens and buffer step ``max(1, w // m)``.
        budget: ``T`` merged tokens per image.
    Returns:
        ``indices`` ``(sum kept,)`` long, each image's kept merged tokens ascending, indexed within the
        image; and ``split_sizes`` ``(I,)`` long, the kept count of each image.
    """
    check_ndim("grid_thw", grid_thw, 2, "(I, 3)")
    m = check_int("spatial_merge_size", spatial_merge_size, minimum=1)
    total = sum(t * (h // m) * (w // m) for t, h, w in grid_thw.tolist())
    if not shallow.shape[0] == deep.shape[0] == total:
        raise ValueError(f"grid_thw covers {total} merged tokens, the scores {shallow.shape[0]} and {deep.shape[0]}")
    picks, sizes, offset = [], [], 0
    for t, h, w in grid_thw.tolist():
        n = t * (h // m) * (w // m)
        chosen = hiprune_qwen_select(shallow[offset:offset + n], deep[offset:offset + n], budget,
                                     max(1, w // m), alpha).indices
        offset += n
        picks.append(chosen)
        sizes.append(chosen.shape[0])
    indices = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)
    return indices, torch.tensor(sizes, dtype=torch.long)
