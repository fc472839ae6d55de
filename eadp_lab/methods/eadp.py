"""EADP: Entropy-Aware Dense Pruning (Wang, Yang and Shen, ECCV 2026).

The whole method on one batch, stage by stage, from the pure functions of
:mod:`eadp_lab.scoring` and :mod:`eadp_lab.select`. Also the Top-K baselines on its
scores (``topk`` on the global score, ``topk_dense`` on the fused dense score), which are
EADP with its structured selection removed. Taught in ``notebooks/00_tour``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import scoring
from .._checks import check_sign
from ..config import EADPConfig
from ..select import allocate_budget, facility_location
from .base import PruneInputs, PruneResult, register, selection_result, stable_topk

__all__ = ["EADPTrace", "score", "run_eadp", "global_score", "TopKSettings"]


@dataclass
class EADPTrace:
    """Every intermediate of EADP's stage 1 (shapes per batch of ``R`` rows).

    Attributes:
        global_similarity: ``(R, N, M)`` ``G``.
        dense_similarity: ``(R, N, M, L)`` ``D``.
        entropy: ``(R, M, L)`` spatial entropy of each text position (``inf`` where masked).
        kept_text: ``(R, M, k)`` indices of the text positions kept by the entropy filter.
        kept_text_valid: ``(R, M, k)`` bool, False on padding of shorter instructions.
        local: ``(R, N, M)`` aggregated dense score.
        fused: ``(R, N)`` ``s``.
        normalised: ``(R, N)`` after min-max.
        smoothed: ``(R, N)`` after smoothing (equal to ``normalised`` if skipped).
        smoothing_skipped: True when the grid did not match and ``on_grid_mismatch='skip'``.
    """

    global_similarity: torch.Tensor
    dense_similarity: torch.Tensor
    entropy: torch.Tensor
    kept_text: torch.Tensor
    kept_text_valid: torch.Tensor
    local: torch.Tensor
    fused: torch.Tensor
    normalised: torch.Tensor
    smoothed: torch.Tensor
    smoothing_skipped: bool


def _text_rows(inputs: PruneInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-row text: global ``(R, M, C)``, dense ``(R, M, L, C)``, mask ``(R, M, L)`` or None."""
    if inputs.text_embeds_seq is None:
        raise ValueError("EADP's dense scoring needs text_embeds_seq (I, M, L, C)")
    g = inputs.per_row(inputs.global_text())
    s = inputs.per_row(inputs.text_embeds_seq)
    mask = None if inputs.text_mask is None else inputs.per_row(inputs.text_mask)
    return g, s, mask


def fused_score(inputs: PruneInputs, config: EADPConfig) -> tuple[torch.Tensor, dict]:
    """Steps 1 to 6: ``s`` ``(R, N)`` and the intermediates that produced it."""
    v = inputs.scoring_embeds
    g, s, mask = _text_rows(inputs)
    G = scoring.global_similarity(v, g, config.similarity_sign)
    D = scoring.dense_similarity(v, s, config.similarity_sign)
    H = scoring.spatial_entropy(D, config.entropy_temperature, mask, inputs.token_mask)
    kept, valid = scoring.entropy_filter(H, config.entropy_keep_ratio, mask)
    local = scoring.aggregate(
        D, H, kept, valid, config.aggregation, config.aggregation_temperature, config.aggregation_top_k
    )
    fused = scoring.fuse(G, local, config.alpha)
    parts = dict(global_similarity=G, dense_similarity=D, entropy=H, kept_text=kept, kept_text_valid=valid,
                 local=local, fused=fused)
    return fused, parts


def score(inputs: PruneInputs, config: EADPConfig) -> tuple[torch.Tensor, EADPTrace]:
    """Stage 1 and steps 8 to 9: the final importance ``r`` ``(R, N)`` and its trace.

    Batched over all rows of ``inputs``; :func:`eadp_lab.prune` calls it one image at a time.
    """
    fused, parts = fused_score(inputs, config)
    rows = inputs.rows_per_image if config.normalisation == "per_image" else None
    normalised = scoring.minmax_normalise(fused, rows, inputs.token_mask)
    grids = inputs.row_grids(strict=config.on_grid_mismatch == "error")
    smoothed = normalised if grids is None else scoring.smooth_rows(
        normalised, grids, config.smoothing_kernel, config.smoothing_sigma
    )
    importance = scoring.polarise(smoothed, config.beta)
    trace = EADPTrace(normalised=normalised, smoothed=smoothed, smoothing_skipped=grids is None, **parts)
    return importance, trace


@register("eadp", EADPConfig, text_guided=True,
          reference="Wang, Yang and Shen, Entropy-Aware Dense Pruning, ECCV 2026")
def run_eadp(inputs: PruneInputs, budget: int, config: EADPConfig) -> PruneResult:
    """EADP on one batch: score, allocate the budget across each image's rows, select, keep."""
    importance, trace = score(inputs, config)
    N = inputs.num_tokens
    quotas = allocate_budget(importance, list(inputs.rows_per_image), budget, config.allocation,
                             inputs.token_counts)
    T = int(quotas.max())
    if T >= N:
        picks = torch.arange(N, device=importance.device).expand(inputs.num_rows, N).clone()
    elif config.selection == "facility_location":
        picks = facility_location(importance, T, features=inputs.features, candidates=inputs.token_mask)
    else:
        picks = stable_topk(importance, T, inputs.token_mask)
    return selection_result("eadp", config, budget, picks, N, quotas, importance=importance, trace=[trace])


@register("topk_dense", EADPConfig, text_guided=True,
          reference="Top-K on EADP's fused dense score (EADP without smoothing and facility location)")
def run_topk_dense(inputs: PruneInputs, budget: int, config: EADPConfig) -> PruneResult:
    """Keep the ``budget`` tokens of highest fused dense score ``s`` (steps 1 to 6 of EADP)."""
    fused, _ = fused_score(inputs, config)
    picks = stable_topk(fused, min(budget, inputs.num_tokens), inputs.token_mask)
    return selection_result("topk_dense", config, budget, picks, inputs.num_tokens, importance=fused)


@dataclass(frozen=True)
class TopKSettings:
    """Top-K on the global text-image similarity."""

    similarity_sign: float = -1.0  # as EADP's presets; +1 ranks by plain relevance

    def __post_init__(self):
        check_sign("similarity_sign", self.similarity_sign)


def global_score(inputs: PruneInputs, sign: float) -> torch.Tensor:
    """``(R, N)``: ``sign * <V_n, g_m>`` averaged over the ``M`` queries, in float32."""
    g = inputs.per_row(inputs.global_text())
    return scoring.global_similarity(inputs.scoring_embeds, g, sign).mean(-1)


@register("topk", TopKSettings, text_guided=True,
          reference="Top-K on the similarity of each visual token to the global text embedding")
def run_topk(inputs: PruneInputs, budget: int, settings: TopKSettings) -> PruneResult:
    """Keep the ``budget`` tokens of highest global score."""
    importance = global_score(inputs, settings.similarity_sign)
    picks = stable_topk(importance, min(budget, inputs.num_tokens), inputs.token_mask)
    return selection_result("topk", settings, budget, picks, inputs.num_tokens, importance=importance)
