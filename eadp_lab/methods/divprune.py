"""DivPrune: diversity-based visual token pruning as a max-min diversity problem.

Alvar, Singh, Akbari and Zhang, "DivPrune: Diversity-based Visual Token Pruning for
Large Multimodal Models", CVPR 2025. Greedy for the max-min diversity problem (MMDP) on
the cosine distance ``1 - cos`` of the selection features: the first pick is the token
farthest from its nearest neighbour, then each pick maximises its distance to the nearest
token already kept. Text-agnostic. Taught in ``notebooks/03_submodular_selection``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import NoSettings, PruneInputs, PruneResult, register, selection_result

__all__ = ["max_min_diversity", "run_divprune"]


def max_min_diversity(features: torch.Tensor, budget: int, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy max-min diversity picks.

    Args:
        features: ``(R, N, D)``.
        budget: ``T`` (at most ``N``).
        token_mask: optional ``(R, N)`` bool of real tokens (the others are never picked nor
            counted as neighbours).
    Returns:
        ``(R, T)`` long, in pick order; ties to the lowest index; ``-1`` once a row runs out.
    """
    R, N, _ = features.shape
    device = features.device
    real = torch.ones(R, N, dtype=torch.bool, device=device) if token_mask is None else token_mask
    f = F.normalize(features.float(), dim=-1, eps=1e-8)
    dist = 1.0 - f @ f.transpose(1, 2)  # (R, N, N)
    rows = torch.arange(R, device=device)
    apart = dist.masked_fill(torch.eye(N, dtype=torch.bool, device=device) | ~real[:, None, :], math.inf)
    nearest = apart.min(-1).values.masked_fill(~real, -math.inf)  # (R, N) distance to the nearest neighbour
    first = nearest.argmax(-1)
    picks = torch.full((R, budget), -1, dtype=torch.long, device=device)
    picks[:, 0] = first
    mind = dist[rows, first]  # (R, N) distance to the nearest kept token
    selected = ~real
    selected[rows, first] = True
    for t in range(1, budget):
        best = mind.masked_fill(selected, -math.inf).argmax(-1)
        picks[:, t] = torch.where(selected.all(-1), -1, best)
        selected[rows, best] = True
        mind = torch.minimum(mind, dist[rows, best])
    return picks


@register("divprune", NoSettings, text_guided=False,
          reference="Alvar et al., DivPrune: Diversity-based Visual Token Pruning for LMMs, CVPR 2025")
def run_divprune(inputs: PruneInputs, budget: int, settings: NoSettings) -> PruneResult:
    """Keep the ``budget`` most mutually distant tokens (max-min diversity)."""
    picks = max_min_diversity(inputs.features, min(budget, inputs.num_tokens), inputs.token_mask)
    return selection_result("divprune", settings, budget, picks, inputs.num_tokens)
