"""Uniform spatial downsampling: average-pool the token grid down to the budget.

The text-agnostic baseline that a recent benchmark of token-compression methods found
to beat many published ones (Wen et al., "Token Pruning in Multimodal Large Language
Models: Are We Solving the Right Problem?", Findings of ACL 2025), and the compression
LLaVA-OneVision itself applies to video frames (bilinear/average 2x2 pooling). It merges
tokens instead of selecting them: the language model receives the pooled features.
Taught in ``notebooks/04_full_model_benchmarks``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import NoSettings, PruneInputs, PruneResult, register

__all__ = ["pooled_grid", "run_pool"]


def pooled_grid(grid: tuple[int, int], budget: int) -> tuple[int, int]:
    """The output grid ``(h, w)``: the most cells ``h * w <= budget``, ``h <= H``, ``w <= W``,
    then the aspect ratio closest to the input's (then the smaller ``h``).

    >>> pooled_grid((24, 24), 64), pooled_grid((24, 24), 192)
    ((8, 8), (12, 16))
    """
    H, W = grid
    best = None
    for h in range(1, H + 1):
        w = min(W, budget // h)
        if w < 1:
            break
        key = (h * w, -round(abs(math.log((h / w) / (H / W))), 9), -h)
        if best is None or key > best[0]:
            best = (key, (h, w))
    return best[1]


def _pool_row(features: torch.Tensor, grid: tuple[int, int], budget: int):
    """One row: ``features`` ``(H * W, D)`` -> pooled ``(h * w, D)``, centre tokens ``(h * w,)``, ``(h, w)``."""
    H, W = grid
    h, w = (H, W) if budget >= H * W else pooled_grid((H, W), budget)
    x = features.float().T.reshape(1, -1, H, W)
    merged = F.adaptive_avg_pool2d(x, (h, w)).reshape(-1, h * w).T.to(features.dtype)
    # centre token of each adaptive cell [floor(i H / h), ceil((i + 1) H / h))
    ys = torch.tensor([(math.floor(i * H / h) + math.ceil((i + 1) * H / h) - 1) // 2 for i in range(h)])
    xs = torch.tensor([(math.floor(j * W / w) + math.ceil((j + 1) * W / w) - 1) // 2 for j in range(w)])
    centre = (ys[:, None] * W + xs[None, :]).flatten().to(features.device)
    return merged, centre, (h, w)


@register("pool", NoSettings, text_guided=False,
          reference="uniform spatial average pooling of the grid (Wen et al., Findings of ACL 2025)")
def run_pool(inputs: PruneInputs, budget: int, settings: NoSettings) -> PruneResult:
    """Average-pool each row's ``(H, W)`` grid to :func:`pooled_grid` cells.

    ``picks`` holds, for each output cell in raster order, the input token at the cell's
    centre (for position ids); ``merged`` the pooled features ``(R, T, D)`` (rows with fewer
    cells are padded; ``quotas`` says how many count).
    """
    R, N, D = inputs.features.shape
    rows = [_pool_row(inputs.features[r, : H * W], (H, W), budget)
            for r, (H, W) in enumerate(inputs.row_grids(strict=True))]
    T = max(len(centre) for _, centre, _ in rows)
    merged = inputs.features.new_zeros(R, T, D)
    picks = torch.full((R, T), -1, dtype=torch.long, device=inputs.features.device)
    for r, (pooled, centre, _) in enumerate(rows):
        merged[r, : len(centre)] = pooled
        picks[r, : len(centre)] = centre
    quotas = (picks >= 0).sum(-1)
    target = torch.where(picks >= 0, picks, N)
    keep_mask = torch.zeros(R, N + 1, dtype=torch.bool, device=picks.device).scatter_(1, target, True)[:, :N]
    return PruneResult(method="pool", settings={}, budget=budget, picks=picks, quotas=quotas,
                       keep_mask=keep_mask, merged=merged, extra={"pooled_grid": [g for _, _, g in rows]})
