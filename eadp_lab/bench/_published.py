"""The baselines' selection loops as their authors publish them, re-implemented from their description.

Used by ``python -m eadp_lab.bench select`` to time the lab's DivPrune and CDPruner against
the loops the papers' code runs, on the same tensors, and by the tests to check both pick the
same tokens. Written from the algorithms' descriptions (no code copied), in the published
style: plain torch ops in the inputs' dtype, one Python step per pick.

- :func:`divprune_loop`: DivPrune's greedy for the max-min diversity problem over one token
  sequence (on LLaVA-1.6, all crops of an image end to end): distances ``1 - cos``, the first
  pick the token whose nearest other token is farthest, then the token farthest from its
  nearest kept token, each step masking the kept tokens with ``-inf``.
- :func:`cdpruner_loop`: CDPruner's selection: relevance ``-cos(image_embeds, text)`` averaged
  over the queries and min-max normalised over all rows, ``(r - min + 1e-6) / (max - min)``;
  kernel ``L_ij = r_i cos(f_i, f_j) r_j``; then the fast greedy MAP inference of Chen, Zhang
  and Zhou (2018), batched over the rows: pick ``argmax d_i^2``, extend the Cholesky factor by
  ``e = (L[j] - c[:, j] . c) / sqrt(d_j^2)``, lower ``d^2`` by ``e^2``, mask the pick.
"""

from __future__ import annotations

import torch

__all__ = ["divprune_loop", "cdpruner_loop"]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def divprune_loop(features: torch.Tensor, budget: int) -> torch.Tensor:
    """``(T,)`` long picks, in pick order, for one token sequence ``features`` ``(n, D)``."""
    f = _unit(features)
    dist = 1.0 - f @ f.T  # (n, n)
    apart = dist.clone()
    apart.fill_diagonal_(float("inf"))
    first = apart.min(dim=1).values.argmax()
    picks = [first]
    nearest = dist[first].clone()  # distance of every token to its nearest kept token
    taken = torch.zeros(dist.shape[0], dtype=torch.bool, device=dist.device)
    taken[first] = True
    for _ in range(1, budget):
        best = nearest.masked_fill(taken, float("-inf")).argmax()
        picks.append(best)
        taken[best] = True
        nearest = torch.minimum(nearest, dist[best])
    return torch.stack(picks)


def cdpruner_loop(features: torch.Tensor, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                  budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row picks ``(R, T)`` long (pick order) and the relevance ``(R, N)``.

    Args:
        features: ``(R, N, D)`` (the similarity); image_embeds: ``(R, N, C)``; text_embeds: ``(M, C)``.
    """
    f = _unit(features)
    similarity = f @ f.transpose(1, 2)  # (R, N, N)
    relevance = (-(_unit(image_embeds) @ _unit(text_embeds).T)).mean(-1)  # (R, N)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    kernel = relevance[:, :, None] * similarity * relevance[:, None, :]
    R, N, _ = kernel.shape
    rows = torch.arange(R, device=kernel.device)
    cis = torch.zeros(budget, R, N, dtype=kernel.dtype, device=kernel.device)
    d2 = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    picks = torch.empty(budget, R, dtype=torch.long, device=kernel.device)
    for i in range(budget):
        j = torch.argmax(d2, dim=-1)
        picks[i] = j
        e = (kernel[rows, j] - torch.einsum("tr,trn->rn", cis[:i, rows, j], cis[:i])) / torch.sqrt(d2[rows, j])[:, None]
        cis[i] = e
        d2 -= torch.square(e)
        d2[rows, j] = float("-inf")
    return picks.T, relevance
