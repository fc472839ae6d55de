"""The vision-encoder methods as registry methods: VisionZip and HiPrune, run by :func:`eadp_lab.attach`.

Each reads the rows' vision encoder (:class:`~eadp_lab.methods.base.VisionStates`: every layer's
states with their [CLS] token, the encoder's layers and the projector) and calls its method's core
(:mod:`~eadp_lab.methods.visionzip`, :mod:`~eadp_lab.methods.hiprune`, exact to the published code
on its reference vectors), with the attention of the layers it needs recomputed in eager form from
their inputs (the tower keeps its own attention implementation).

- **VisionZip** keeps ``d`` dominant tokens by the [CLS] attention of the layer the model reads
  (``vision_feature_layer``, -2 on LLaVA) and merges the rest into ``c`` contextual tokens; its
  published LLaVA code feeds the [CLS] token to the projector and counts it among the dominant ones,
  so a budget ``T`` gives ``T`` tokens: ``d + c = T``, split by
  :func:`~eadp_lab.methods.visionzip.split_budget` (64 = 54 + 10 as published). The output tokens
  (CLS, the dominant ones in position order, the contextual ones) take the first ``T`` places of
  the image and are projected by the model's own projector; they have no original positions, so
  :func:`eadp_lab.attach` refuses ``positions="original"`` with it.
- **HiPrune** keeps anchors from a shallow layer's attention (HiPrune's ``object_layer``, 9 of 24,
  moved to the encoder's depth by :func:`~eadp_lab.methods._layers.scaled_layer`), their buffers, and
  fills the budget from the layer the model reads; a selection, exactly the budget per row.
"""

from __future__ import annotations

import torch

from .base import PruneInputs, PruneResult, keep_all, read_layer, register, selection_result
from .hiprune import HiPruneSettings, hiprune_select
from .visionzip import VisionZipSettings, layer_attention, split_budget, visionzip

__all__ = ["run_visionzip", "run_hiprune", "vision_layers"]


def vision_layers(method: str, settings, depth: int, feature_layer: int) -> tuple[int, ...]:
    """The encoder layers whose inputs ``method`` reads (what :func:`eadp_lab.attach` records during the
    tower's pass): the layer the model reads for both, and HiPrune's shallow layer."""
    read = read_layer(depth, feature_layer)
    if method == "hiprune":
        return tuple(sorted({settings.layers(depth)[0], read}))
    return (read,)


def _vision_method(name: str, settings: type, reference: str):
    """Register ``core(inputs, vision, budget, settings)`` as the vision-encoder method ``name``: it gets the
    rows' :class:`~eadp_lab.methods.base.VisionStates`, and a budget of every token keeps every token."""
    def decorator(core):
        @register(name, settings, text_guided=False, stage="vision", reference=reference)
        def run(inputs: PruneInputs, budget: int, chosen) -> PruneResult:
            vision = inputs.require_vision(name)
            if budget >= inputs.num_tokens:
                return keep_all(inputs, budget, chosen, method=name)
            return core(inputs, vision, budget, chosen)
        run.__doc__ = core.__doc__
        return run
    return decorator


@_vision_method("visionzip", VisionZipSettings,
                "VisionZip (Yang et al., CVPR 2025): dominant tokens by [CLS] attention, the rest merged")
def run_visionzip(inputs: PruneInputs, vision, budget: int, settings: VisionZipSettings) -> PruneResult:
    """VisionZip on one image's rows; ``budget`` output tokens per row (CLS counted)."""
    N = inputs.num_tokens
    dominant, contextual = split_budget(budget)
    layer = vision.read_layer()
    attention = layer_attention(vision.layers[layer], vision.input_of(layer, "visionzip"))
    result = visionzip(attention.attn, vision.output, attention.metric, dominant, contextual)
    merged = vision.project(result.tokens).to(inputs.features.dtype)  # (R, T, D): what the LM receives
    # picks: the patches the outputs come from (dominant, then the contextual targets; CLS has none);
    # quotas: every output token, CLS included, which take the row's first places
    picks = torch.cat([result.dominant_sorted, result.merge.targets], dim=1)
    out = selection_result("visionzip", settings, budget, picks, N, merged=merged)
    out.quotas = torch.full_like(out.quotas, merged.shape[1])
    out.extra.update(placement="leading", absorbed_by=[result.absorbed_by], dominant=[result.dominant_sorted])
    return out


@_vision_method("hiprune", HiPruneSettings,
                "HiPrune (2025): anchor, buffer and register tokens from the vision encoder's attention")
def run_hiprune(inputs: PruneInputs, vision, budget: int, settings: HiPruneSettings) -> PruneResult:
    """HiPrune on one image's rows (the EADP authors' LLaVA copy): ``budget`` tokens per row."""
    shallow = settings.layers(vision.depth)[0]
    deep = vision.read_layer()  # the map of the layer the model reads (mm_vision_select_layer)
    grid = inputs.resolved_grid()
    maps = [layer_attention(vision.layers[i], vision.input_of(i, "hiprune")).attn for i in (shallow, deep)]
    selection = hiprune_select(*maps, budget, settings.alpha, grid[1])
    return selection_result("hiprune", settings, budget, selection.indices, inputs.num_tokens)
