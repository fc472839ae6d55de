"""CDPruner: token pruning as MAP inference of a conditional determinantal point process.

Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token
Pruning in MLLMs", 2025 (arXiv:2506.10967). The kernel is the cosine similarity of the
selection features weighted by each token's relevance to the instruction,
``L = diag(q) S diag(q)``, with ``q`` the min-max-normalised *negated* text similarity
(the sign convention EADP inherits). The subset is found by the fast greedy MAP inference
of Chen, Zhang and Zhou (NeurIPS 2018), which updates a Cholesky factor incrementally.
Taught in ``notebooks/03_submodular_selection``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import scoring
from .base import PruneInputs, PruneResult, register, selection_result
from .eadp import global_score

__all__ = ["CDPrunerSettings", "dpp_greedy_map", "run_cdpruner"]


@dataclass(frozen=True)
class CDPrunerSettings:
    similarity_sign: float = -1.0  # CDPruner negates the CLIP relevance on LLaVA
    epsilon: float = 1e-10  # a pick whose conditional variance falls below this ends the DPP phase


def dpp_greedy_map(
    kernel: torch.Tensor, budget: int, fallback: torch.Tensor, epsilon: float = 1e-10,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy MAP of a DPP with kernel ``L`` by incremental Cholesky (Chen et al., 2018).

    Each step picks ``argmax_i d_i^2``, the variance of token ``i`` conditioned on the picks
    so far (the log-determinant gain). Once every remaining ``d_i^2`` is below ``epsilon``
    (the kernel's rank is exhausted), the rest are filled by ``fallback`` order.

    Args:
        kernel: ``(R, N, N)`` positive semi-definite.
        budget: ``T <= N``.
        fallback: ``(R, N)`` score ranking the tokens left once the kernel is exhausted.
        token_mask: optional ``(R, N)`` bool of real tokens; the others are never picked.
    Returns:
        ``(R, T)`` long in pick order; ``-1`` once a row runs out of tokens.
    """
    R, N, _ = kernel.shape
    K = kernel.double()
    rows = torch.arange(R, device=kernel.device)
    cis = torch.zeros(R, budget, N, dtype=torch.float64, device=kernel.device)
    d2 = torch.diagonal(K, dim1=1, dim2=2).clone()  # (R, N)
    selected = torch.zeros(R, N, dtype=torch.bool, device=kernel.device) if token_mask is None else ~token_mask
    rank = fallback.double() - fallback.double().amax(-1, keepdim=True) - 1.0  # below any d2 >= eps
    picks = torch.empty(R, budget, dtype=torch.long, device=kernel.device)
    for t in range(budget):
        live = d2.masked_fill(selected, -math.inf)
        exhausted = live.amax(-1) < epsilon
        score = torch.where(exhausted[:, None], rank.masked_fill(selected, -math.inf), live)
        best = score.argmax(-1)
        picks[:, t] = torch.where(selected.all(-1), -1, best)
        selected[rows, best] = True
        d_best = torch.sqrt(torch.clamp(d2[rows, best], min=epsilon))  # (R,)
        proj = torch.einsum("rt,rtn->rn", cis[rows, :t, best], cis[:, :t]) if t else 0.0
        e = (K[rows, best] - proj) / d_best[:, None]  # (R, N)
        e = torch.where(exhausted[:, None], torch.zeros_like(e), e)
        cis[:, t] = e
        d2 = d2 - e * e
    return picks


@register("cdpruner", CDPrunerSettings, text_guided=True,
          reference="Zhang et al., Beyond Attention or Similarity: Maximizing Conditional Diversity "
                    "for Token Pruning in MLLMs, 2025")
def run_cdpruner(inputs: PruneInputs, budget: int, settings: CDPrunerSettings) -> PruneResult:
    """Keep the ``budget`` tokens of the conditional DPP's greedy MAP subset."""
    relevance = scoring.minmax_normalise(global_score(inputs, settings.similarity_sign), None, inputs.token_mask)
    f = F.normalize(inputs.features.float(), dim=-1, eps=1e-8)
    kernel = relevance[:, :, None] * (f @ f.transpose(1, 2)) * relevance[:, None, :]
    picks = dpp_greedy_map(kernel, min(budget, inputs.num_tokens), relevance, settings.epsilon, inputs.token_mask)
    return selection_result("cdpruner", settings, budget, picks, inputs.num_tokens, importance=relevance)
