"""The vision-encoder methods as registry methods: VisionZip and HiPrune, run by :func:`eadp_lab.attach`.

Each reads the rows' vision encoder (:class:`~eadp_lab.methods.base.VisionStates`: the inputs of the
layers it needs, the states the model reads, the encoder's layers and the projector) and calls its
method's core (:mod:`~eadp_lab.methods.visionzip`, :mod:`~eadp_lab.methods.hiprune`, exact to the
published code on its reference vectors), with the attention of the layers it needs recomputed in
eager form from their inputs (the tower keeps its own attention implementation). Scores are computed
in float32 whatever the model's dtype.

Where they run (:func:`eadp_lab.attach` refuses the rest, naming the method and the model class):

- **LLaVA-1.5** images: one CLIP view per image, one row.
- **LLaVA-NeXT and LLaVA-NeXT-Video images** (AnyRes): every view (the base view and each tile) is a
  separate pass through the CLIP tower with its own [CLS], and each is pruned on its own, as
  VisionZip's published LLaVA-NeXT code (``prepare_inputs_labels_for_multimodal_visionzip``) and the
  EADP authors' HiPrune copy (``llava_arch_HiPrune.py``) do: **the budget is per view, the base view
  included** (the project's per-row budget of :meth:`eadp_lab.models.attach.Pruner._budget`: an
  integer ``T`` for every row, a fraction of the largest row's tokens), so an image of ``1 + k``
  views receives ``(1 + k) T`` visual tokens (VisionZip's paper: 5 x 128 = 640 of LLaVA-NeXT's 2880),
  plus the ``image_newline`` tokens the ``newlines`` rule keeps. The kept tokens go through the
  model's own packing, as every other method's in this project: the base view first, the tiles in
  the unpadded big grid's raster order, ``image_newline`` after every line that keeps a token
  (``newlines="rows"``). The published codes pack differently: neither unpads, HiPrune's copy drops
  the newlines (it strips ``_unpad`` from ``mm_patch_merge_type``), and VisionZip's lists every tile's
  dominant tokens on the full grid, then every tile's [CLS], then every tile's contextual tokens,
  with no newline. A tile cut by unpadding keeps only its unpadded patches as tokens: HiPrune
  selects among those only (anchors and deep fill from them; a buffer on a cut patch is dropped),
  exactly ``T`` when the tile has more; VisionZip still ranks and merges over the whole view (the
  tower saw all of it), and a tile with ``T`` unpadded tokens or fewer keeps them unchanged (its
  ``T`` outputs would not fit in its places).
- **Qwen2.5-VL images**: HiPrune's published Qwen variant
  (:class:`~eadp_lab.methods.hiprune.HiPruneQwenSettings`, ``score_order`` chooses the corrected
  raster order or the EADP copy's window order): scores from the eager attention of a shallow
  windowed block and the last block over the image's own windows (or frame), ``T`` merged tokens per
  row (``T`` per image). VisionZip needs a [CLS] token, which Qwen's ViT does not have.
- **Qwen3-VL images**: the same variant as the EADP authors' Qwen3 track runs it (object layer 4 of
  Qwen3-VL-8B's 27 blocks, the last block): every block attends over the whole frame, so the
  scores are in raster order (both ``score_order`` modes agree) and averaged over the frame's own
  queries. The kept tokens' DeepStack features follow them (:mod:`eadp_lab.models.attach`).

- **VisionZip** keeps ``d`` dominant tokens by the [CLS] attention of the layer the model reads
  (``vision_feature_layer``, -2 on LLaVA) and merges the rest into ``c`` contextual tokens; its
  published LLaVA code feeds the [CLS] token to the projector and counts it among the dominant ones,
  so a budget ``T`` gives ``T`` tokens per view: ``d + c = T``, split by
  :func:`~eadp_lab.methods.visionzip.split_budget` (64 = 54 + 10 as published) unless the
  settings give their own split (:meth:`~eadp_lab.methods.visionzip.VisionZipSettings.split`). The output tokens
  (CLS, the dominant ones in position order, the contextual ones) take the first ``T`` places of
  the view's row and are projected by the model's own projector; they have no original positions
  (the registry marks it ``keeps_original_positions=False``), so :func:`eadp_lab.attach` refuses
  ``positions="original"`` with it.
- **HiPrune** keeps anchors from a shallow layer's attention (HiPrune's ``object_layer``, 9 of 24,
  moved to the encoder's depth by :func:`~eadp_lab.methods._layers.scaled_layer`), their buffers, and
  fills the budget from the layer the model reads; a selection, exactly the budget per row.
"""

from __future__ import annotations

import math

import torch

from .base import PruneInputs, PruneResult, keep_all, read_layer, register, selection_result
from .hiprune import HiPruneQwenSettings, HiPruneSettings, hiprune_qwen_select, hiprune_select
from .visionzip import VisionZipSettings, layer_attention, visionzip

__all__ = ["run_visionzip", "run_hiprune", "vision_layers", "view_to_row", "view_validity", "qwen_received",
           "qwen_block_scores"]


def vision_layers(method: str, settings, depth: int, feature_layer: int | None = None) -> tuple[int, ...]:
    """The encoder layers whose inputs ``method`` reads (what :func:`eadp_lab.attach` records during the
    tower's pass): on CLIP the layer the model reads for both, and HiPrune's shallow layer; on Qwen2.5-VL
    (``feature_layer=None``, settings :class:`~eadp_lab.methods.hiprune.HiPruneQwenSettings`) HiPrune's
    shallow and last blocks."""
    if feature_layer is None:
        return tuple(sorted(set(settings.layers(depth))))
    read = read_layer(depth, feature_layer)
    if method == "hiprune":
        return tuple(sorted({settings.layers(depth)[0], read}))
    return (read,)


def view_validity(patches: list[torch.Tensor], num_patches: int, device=None) -> torch.Tensor:
    """``(R, P)`` bool: the view patches that are some row token (``patches``: per row ``(N_r,)`` long)."""
    valid = torch.zeros(len(patches), num_patches, dtype=torch.bool, device=device)
    for r, p in enumerate(patches):
        valid[r, p.to(valid.device)] = True
    return valid


def view_to_row(index: torch.Tensor, patches: list[torch.Tensor], num_patches: int) -> torch.Tensor:
    """``(R, K)`` long: the row token of each view patch in ``index`` ``(R, K)`` (``-1`` in ``index`` or
    for a patch that is no row token, e.g. cut by unpadding)."""
    token_of = torch.full((len(patches), num_patches + 1), -1, dtype=torch.long, device=index.device)
    for r, p in enumerate(patches):
        token_of[r, p.to(index.device)] = torch.arange(len(p), device=index.device)
    return token_of.gather(1, torch.where(index >= 0, index, num_patches))


def _vision_method(name: str, settings: type, reference: str, keeps_original_positions: bool = True):
    """Register ``core(inputs, vision, budget, settings)`` as the vision-encoder method ``name``: it gets the
    rows' :class:`~eadp_lab.methods.base.VisionStates`, and a budget of every token keeps every token."""
    def decorator(core):
        @register(name, settings, text_guided=False, stage="vision", reference=reference,
                  keeps_original_positions=keeps_original_positions)
        def run(inputs: PruneInputs, budget: int, chosen) -> PruneResult:
            vision = inputs.require_vision(name, cls=False)  # each core checks what it needs
            if budget >= inputs.num_tokens:
                return keep_all(inputs, budget, chosen, method=name)
            return core(inputs, vision, budget, chosen)
        run.__doc__ = core.__doc__
        return run
    return decorator


@_vision_method("visionzip", VisionZipSettings,
                "VisionZip (Yang et al., CVPR 2025): dominant tokens by [CLS] attention, the rest merged",
                keeps_original_positions=False)
def run_visionzip(inputs: PruneInputs, vision, budget: int, settings: VisionZipSettings) -> PruneResult:
    """VisionZip on one image's rows (views); ``budget`` output tokens per view (CLS counted). A row with
    ``budget`` real tokens or fewer (an AnyRes tile cut by unpadding) keeps its own tokens."""
    vision = inputs.require_vision("visionzip")  # a [CLS] token
    R, N = inputs.num_rows, inputs.num_tokens
    P = vision.output.shape[1] - 1
    dominant, contextual = settings.split(budget)
    layer = vision.read_layer()
    attention = layer_attention(vision.layers[layer], vision.input_of(layer, "visionzip"))
    result = visionzip(attention.attn.float(), vision.output, attention.metric.float(), dominant, contextual)
    merged = vision.project(result.tokens).to(inputs.features.dtype)  # (R, T, D): what the LM receives
    patches = vision.row_patches(N)
    # picks: the row tokens the outputs come from (dominant, then the contextual targets; CLS has none,
    # nor has a patch cut by unpadding); quotas: every output token, CLS included (the row's first places)
    picks = view_to_row(torch.cat([result.dominant_sorted, result.merge.targets], dim=1), patches, P)
    quotas = torch.full((R,), merged.shape[1], dtype=torch.long, device=picks.device)
    absorbed = result.absorbed_by.gather(1, torch.stack([
        torch.nn.functional.pad(p.to(picks.device), (0, N - len(p))) for p in patches]))  # (R, N) per row token
    counts = inputs.token_counts.to(picks.device)
    whole = counts <= merged.shape[1]  # rows too short for the outputs keep their own tokens
    if bool(whole.any()):
        width = max(picks.shape[1], int(counts[whole].max()))
        picks = torch.nn.functional.pad(picks, (0, width - picks.shape[1]), value=-1)
        merged = torch.nn.functional.pad(merged, (0, 0, 0, max(0, width - merged.shape[1])))
        for r in whole.nonzero().flatten().tolist():
            n = int(counts[r])
            picks[r] = torch.where(torch.arange(width, device=picks.device) < n,
                                   torch.arange(width, device=picks.device), -1)
            merged[r].zero_()
            merged[r, :n] = inputs.features[r, :n]
            quotas[r] = n
            absorbed[r] = -1
    if inputs.ragged:
        absorbed = absorbed.masked_fill(~inputs.token_mask.to(absorbed.device), -1)
    out = selection_result("visionzip", settings, budget, picks, N, quotas=quotas, merged=merged)
    dominant_rows = view_to_row(result.dominant_sorted, patches, P)
    out.extra.update(placement="leading", absorbed_by=[absorbed], dominant=[dominant_rows], whole_rows=[whole])
    return out


@_vision_method("hiprune", HiPruneSettings,
                "HiPrune (2025): anchor, buffer and register tokens from the vision encoder's attention")
def run_hiprune(inputs: PruneInputs, vision, budget: int, settings: HiPruneSettings) -> PruneResult:
    """HiPrune on one image's rows: the EADP authors' LLaVA copy on CLIP views (``budget`` tokens per view),
    their Qwen2.5-VL copy on a Qwen image (``budget`` merged tokens per row)."""
    if vision.windows is not None:
        if not isinstance(settings, HiPruneQwenSettings):
            raise ValueError("hiprune on a Qwen ViT runs its published Qwen variant: give HiPruneQwenSettings "
                             "(alpha 0.5, object_layer 4, score_order), not HiPruneSettings")
        return _hiprune_qwen(inputs, vision, budget, settings)
    if isinstance(settings, HiPruneQwenSettings):
        raise ValueError("hiprune: HiPruneQwenSettings are the Qwen variant's; this CLIP vision encoder "
                         "runs the LLaVA variant: give HiPruneSettings")
    vision = inputs.require_vision("hiprune")  # the LLaVA variant drops the [CLS] column of the attention
    N = inputs.num_tokens
    shallow = settings.layers(vision.depth)[0]
    deep = vision.read_layer()  # the map of the layer the model reads (mm_vision_select_layer)
    maps = [layer_attention(vision.layers[i], vision.input_of(i, "hiprune")).attn.float() for i in (shallow, deep)]
    P = maps[0].shape[-1] - 1
    side = math.isqrt(P)
    if side * side != P:
        raise ValueError(f"hiprune: a CLIP view of {P} patches is not a square grid")
    patches = vision.row_patches(N)
    valid = view_validity(patches, P, maps[0].device)
    selection = hiprune_select(*maps, budget, settings.alpha, side, valid=None if bool(valid.all()) else valid)
    picks = view_to_row(selection.indices, patches, P)  # ascending: row tokens follow their view's raster order
    return selection_result("hiprune", settings, budget, picks, N)


# ---------------------------------------------------------------- Qwen2.5-VL


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def qwen_received(block: torch.nn.Module, hidden: torch.Tensor, cu_seqlens: torch.Tensor,
                  position_embeddings: tuple[torch.Tensor, torch.Tensor], total_patches: int) -> torch.Tensor:
    """The attention each patch receives in one Qwen2.5-VL ViT block, as the EADP copy scores it.

    The block's eager attention, ``softmax(q k^T * scale)`` within each chunk of ``cu_seqlens``
    (windows, or the frame in a full-attention block; the published eager code masks the rest to 0),
    with the block's ``norm1``, ``qkv`` and rotary embedding, summed over the heads and the query rows
    and divided by ``H * total_patches``: the published ``attn.mean(0).mean(0)`` over a call of
    ``total_patches`` patches. Computed one chunk at a time (never the ``(H, S, S)`` matrix), in float32.

    Args:
        block: a transformers ``Qwen2_5_VLVisionBlock``.
        hidden: ``(S_i, C)`` the block's input on one image's patches (window order).
        cu_seqlens: ``(w + 1,)`` the chunks' boundaries within those patches, ``[0, ..., S_i]``.
        position_embeddings: ``(cos, sin)``, each ``(S_i, Dh)``.
        total_patches: ``S``, the patches of the whole ViT call.
    Returns:
        ``(S_i,)`` float32.
    """
    attn = block.attn
    S = hidden.shape[0]
    heads = attn.num_heads
    with torch.no_grad():
        q, k, _ = attn.qkv(block.norm1(hidden)).reshape(S, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)  # (S, H, Dh)
        cos, sin = (t.unsqueeze(-2).float() for t in position_embeddings)
        q = (q.float() * cos + _rotate_half(q.float()) * sin).to(q.dtype)  # transformers' rotary, then its dtype
        k = (k.float() * cos + _rotate_half(k.float()) * sin).to(k.dtype)
        received = torch.zeros(S, dtype=torch.float32, device=hidden.device)
        bounds = [int(b) for b in cu_seqlens.tolist()]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b <= a:
                continue
            qa, ka = q[a:b].transpose(0, 1).float(), k[a:b].transpose(0, 1).float()  # (H, s, Dh)
            probs = torch.softmax((qa @ ka.transpose(1, 2)) * attn.scaling, dim=-1)  # (H, s, s)
            received[a:b] = probs.sum(dim=(0, 1))
    return received / (heads * total_patches)


def qwen_block_scores(received: torch.Tensor, merge_unit: int, window_index: torch.Tensor | None) -> torch.Tensor:
    """``(S_i / merge_unit,)``: the mean of ``received`` ``(S_i,)`` over each merged token's patches, in window
    order (``window_index=None``, as the EADP copy) or put back in raster order (``window_index``
    ``(S_i / merge_unit,)`` from :func:`~eadp_lab.methods.hiprune.qwen_window_index`)."""
    scores = received.view(-1, merge_unit).mean(dim=-1)
    return scores if window_index is None else scores[torch.argsort(window_index.to(scores.device))]


def _hiprune_qwen(inputs: PruneInputs, vision, budget: int, settings: HiPruneQwenSettings) -> PruneResult:
    """HiPrune's Qwen variant on one image: ``budget`` merged tokens per row (its rows: temporal groups)."""
    w = vision.windows
    R, N = inputs.num_rows, inputs.num_tokens
    order = w.window_index if settings.score_order == "raster" else None
    scores = []
    for block in settings.layers(vision.depth):
        received = qwen_received(vision.layers[block], vision.input_of(block, "hiprune"), w.cu_seqlens[block],
                                 w.position_embeddings, w.total_patches)
        scores.append(qwen_block_scores(received, w.merge_unit, order))
    t, h, wd = w.grid_thw
    m = math.isqrt(w.merge_unit)
    n = t * (h // m) * (wd // m)
    if n != R * N:
        raise ValueError(f"hiprune: a Qwen image of {n} merged tokens laid out as {R} rows of {N}")
    chosen = hiprune_qwen_select(*scores, min(budget * R, n), max(1, wd // m), settings.alpha).indices
    rows = chosen // N  # ascending: row after row
    counts = torch.bincount(rows, minlength=R)
    picks = torch.full((R, int(counts.max())), -1, dtype=torch.long, device=chosen.device)
    starts = torch.cumsum(counts, 0) - counts
    picks[rows, torch.arange(len(chosen), device=chosen.device) - starts[rows]] = chosen % N
    return selection_result("hiprune", settings, budget, picks, N)
