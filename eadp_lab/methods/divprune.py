"""DivPrune: diversity-based visual token pruning as a max-min diversity problem.

Alvar, Singh, Akbari and Zhang, "DivPrune: Diversity-based Visual Token Pruning for
Large Multimodal Models", CVPR 2025. Greedy for the max-min diversity problem (MMDP) on
the cosine distance ``1 - cos`` of the selection features: the first pick is the token
farthest from its nearest neighbour, then each pick maximises its distance to the nearest
token already kept; ties go to the lowest index. Text-agnostic. Taught in
``notebooks/03_submodular_selection``.

As the authors run it on LLaVA-1.6 (AnyRes), the default makes **one** selection over an
image's whole token sequence, all its crops together (``scope="per_image"``): an image of
``R`` rows keeps ``sum_r min(T, N_r)`` tokens, however they fall across its crops (newline
tokens are not part of the rows; :func:`eadp_lab.attach` keeps them as the layout says).
``scope="per_row"`` selects ``T`` tokens in each row instead. On one-row images both are the
same.

Precision: the cosines and distances are computed in **float32** whatever the input dtype
(the default, ``precision="float32"``): in float16 the distances of near neighbours round to
a few levels, and the max-min greedy, which compares them, then breaks ties by index instead
of by geometry. ``precision="input"`` computes them in the input dtype, as the published
code does (the same picks on float32 inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_budget, check_choice
from ..select import cosine_similarity
from .base import PRECISIONS, PruneInputs, PruneResult, precision_dtype, register, selection_result

__all__ = ["DivPruneSettings", "SCOPES", "max_min_diversity", "image_max_min_diversity", "rows_of_image_picks",
           "run_divprune"]

SCOPES = ("per_image", "per_row")


@dataclass(frozen=True)
class DivPruneSettings:
    """DivPrune's settings. Defaults: the published behaviour (one selection per image, float32 cosines)."""

    scope: str = "per_image"  # per_image: one selection over all rows of an image (published, LLaVA-1.6) | per_row
    precision: str = "float32"  # float32 | input (the published code's: cosines in the input dtype)

    def __post_init__(self):
        check_choice("scope", self.scope, SCOPES)
        check_choice("precision", self.precision, PRECISIONS)


def max_min_diversity(
    features: torch.Tensor, budget: int, token_mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> torch.Tensor:
    """Greedy max-min diversity picks, one selection per row.

    Args:
        features: ``(R, N, D)``.
        budget: ``T``, at most ``N``.
        token_mask: optional ``(R, N)`` bool of real tokens (the others are never picked nor
            counted as neighbours).
        dtype: dtype of the cosines and distances (``None``: the features' own).
    Returns:
        ``(R, T)`` long, in pick order; ties to the lowest index; ``-1`` once a row runs out.
    """
    R, N = features.shape[:2]
    T = check_budget(budget)
    if T > N:
        raise ValueError(f"budget {T} is more than the {N} tokens of a row")
    dist = cosine_similarity(features, dtype).neg_().add_(1.0)  # (R, N, N) 1 - cos
    dist.diagonal(dim1=1, dim2=2).fill_(math.inf)  # a token is not its own neighbour
    if token_mask is not None:
        dist.masked_fill_(~token_mask[:, None, :], math.inf)  # padding is nobody's neighbour
    nearest = dist.amin(-1)  # (R, N) distance to the nearest other token
    if token_mask is not None:
        nearest.masked_fill_(~token_mask, -math.inf)
    rows = torch.arange(R, device=features.device)
    picks = torch.empty(R, T, dtype=torch.long, device=features.device)
    picks[:, 0] = first = nearest.argmax(-1)
    mind = dist[rows, first]  # (R, N) distance to the nearest kept token; -inf: kept or padding
    if token_mask is not None:
        mind.masked_fill_(~token_mask, -math.inf)
    mind[rows, first] = -math.inf
    for t in range(1, T):
        picks[:, t] = best = mind.argmax(-1)
        torch.minimum(mind, dist[rows, best], out=mind)
        mind[rows, best] = -math.inf
    if token_mask is not None:
        picks.masked_fill_(torch.arange(T, device=picks.device) >= token_mask.sum(-1, keepdim=True), -1)
    return picks


def image_max_min_diversity(
    features: torch.Tensor, budget: int, token_mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> torch.Tensor:
    """One max-min selection over all rows of one image (the published LLaVA-1.6 rule).

    Args:
        features: ``(R, N, D)``, the rows (crops) of one image.
        budget: ``T`` tokens for the whole image, at most ``R * N``.
        token_mask: optional ``(R, N)`` bool of real tokens.
    Returns:
        ``(T,)`` long, indices into the rows flattened (``row * N + n``), in pick order;
        ``-1`` once the image runs out of tokens.
    """
    R, N, D = features.shape
    flat_mask = None if token_mask is None else token_mask.reshape(1, R * N)
    return max_min_diversity(features.reshape(1, R * N, D), budget, flat_mask, dtype)[0]


def rows_of_image_picks(picks: torch.Tensor, num_rows: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split an image's flat picks (``row * N + n``) into per-row picks, each row in pick order.

    Args:
        picks: ``(T,)`` long, ``-1`` entries ignored.
    Returns:
        ``(R, max quota)`` long token indices (``-1`` after a row's quota) and ``(R,)`` long quotas.
    """
    valid = picks[picks >= 0]
    row, col = valid // num_tokens, valid % num_tokens
    quotas = torch.bincount(row, minlength=num_rows)
    order = torch.argsort(row, stable=True)  # by row, pick order kept within a row
    slot = torch.arange(len(valid), device=picks.device) - (torch.cumsum(quotas, 0) - quotas)[row[order]]
    out = torch.full((num_rows, max(int(quotas.max()), 1)), -1, dtype=torch.long, device=picks.device)
    out[row[order], slot] = col[order]
    return out, quotas


@register("divprune", DivPruneSettings, text_guided=False,
          reference="Alvar et al., DivPrune: Diversity-based Visual Token Pruning for LMMs, CVPR 2025")
def run_divprune(inputs: PruneInputs, budget: int, settings: DivPruneSettings) -> PruneResult:
    """Keep the most mutually distant tokens (max-min diversity): ``budget`` per row, or, with
    ``scope="per_image"``, ``sum_r min(budget, N_r)`` chosen jointly over the image's rows.

    With ``scope="per_image"``, ``extra["image_picks"]`` holds each image's joint picks
    (``(T_i,)`` long, ``row * N + n``, in pick order).
    """
    dtype = precision_dtype(settings.precision)
    N = inputs.num_tokens
    if settings.scope == "per_row":
        picks = max_min_diversity(inputs.features, min(budget, N), inputs.token_mask, dtype)
        return selection_result("divprune", settings, budget, picks, N)
    total = int(inputs.token_counts.clamp(max=budget).sum())
    joint = image_max_min_diversity(inputs.features, total, inputs.token_mask, dtype)
    picks, quotas = rows_of_image_picks(joint, inputs.num_rows, N)
    return selection_result("divprune", settings, budget, picks, N, quotas, extra={"image_picks": [joint]})
