"""Seeded random selection: the floor every text-guided method must clear.

Random token dropping is the standard sanity baseline of the token-pruning literature
(e.g. the random baselines of FastV, Chen et al., ECCV 2024, and of DivPrune, Alvar et
al., CVPR 2025). Taught in ``notebooks/04_full_model_benchmarks``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_int
from .base import PruneInputs, PruneResult, register, selection_result

__all__ = ["RandomSettings", "run_random"]


@dataclass(frozen=True)
class RandomSettings:
    """Every row draws the same permutation from ``seed``, so a row's picks never depend on
    its batch; vary ``seed`` per sample (e.g. by question index) to average over draws."""

    seed: int = 0

    def __post_init__(self):
        check_int("seed", self.seed, minimum=-(2**63), maximum=2**64 - 1)  # what torch.Generator.manual_seed takes


@register("random", RandomSettings, text_guided=False, reference="uniformly random tokens, fixed by a seed")
def run_random(inputs: PruneInputs, budget: int, settings: RandomSettings) -> PruneResult:
    """Keep ``budget`` tokens drawn uniformly without replacement (CPU generator, any device)."""
    R, N = inputs.num_rows, inputs.num_tokens
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(N, generator=generator).to(inputs.features.device)
    T = min(budget, N)
    picks = torch.full((R, T), -1, dtype=torch.long, device=order.device)
    for r, count in enumerate(inputs.token_counts.tolist()):  # ragged rows: real tokens come first
        mine = order[order < count][:T]
        picks[r, : len(mine)] = mine
    return selection_result("random", settings, budget, picks, N)
