"""Measurements the chapters make on top of the methods: coverage curves, brute-force optima,
and how much of the objects a question names survives pruning.

Taught in ``notebooks/01_motivation_failures`` and ``notebooks/03_submodular_selection``.
Shapes: ``B`` rows, ``N`` tokens, ``T`` picks, ``K`` objects.
"""

from __future__ import annotations

import itertools

import torch

from ._checks import check_budget, check_ndim

__all__ = ["prefix_objective", "brute_force_optimum", "object_recall", "objects_reached"]


def prefix_objective(importance: torch.Tensor, similarity: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """Facility-location objective of every prefix of the picks: ``f(picks[:t])`` for ``t = 1..T``.

    Greedy facility location, Top-K, DPP MAP and max-min diversity all pick one token at a
    time, so one run gives the whole coverage curve.

    Args:
        importance: ``(B, N)``; similarity: ``(B, N, N)``; picks: ``(B, T)`` long (``-1``: none).
    Returns:
        ``(B, T)`` float64.
    """
    check_ndim("picks", picks, 2, "(B, T)")
    B, N = importance.shape
    r = importance.double()
    K = similarity.double()
    cur = torch.zeros(B, N, dtype=torch.float64, device=importance.device)
    out = torch.zeros(B, picks.shape[1], dtype=torch.float64, device=importance.device)
    rows = torch.arange(B, device=importance.device)
    for t in range(picks.shape[1]):
        valid = picks[:, t] >= 0
        row = K[rows, picks[:, t].clamp(min=0)]
        cur = torch.where(valid[:, None], torch.maximum(cur, row), cur)
        out[:, t] = (r * cur).sum(-1)
    return out


def brute_force_optimum(importance: torch.Tensor, similarity: torch.Tensor, budget: int) -> tuple[float, tuple]:
    """The best facility-location value over every subset of ``budget`` tokens (small ``N`` only).

    Args:
        importance: ``(N,)``; similarity: ``(N, N)``.
    Returns:
        ``(value, subset)``.
    """
    budget = check_budget(budget)
    N = importance.shape[0]
    if N > 24:
        raise ValueError(f"brute force over N = {N} tokens is too large (at most 24)")
    r, K = importance.double(), similarity.double()
    best = (-1.0, ())
    for subset in itertools.combinations(range(N), min(budget, N)):
        value = float((r * K[list(subset)].max(0).values).sum())
        if value > best[0]:
            best = (value, subset)
    return best


def object_recall(keep_mask: torch.Tensor, object_masks: torch.Tensor) -> torch.Tensor:
    """Share of each object's patches that were kept.

    Args:
        keep_mask: ``(N,)`` bool; object_masks: ``(K, N)`` bool (patches each object covers).
    Returns:
        ``(K,)`` float in ``[0, 1]`` (0 for an object with no patch).
    """
    masks = object_masks.bool()
    kept = (masks & keep_mask.bool()[None]).sum(-1).float()
    return kept / masks.sum(-1).clamp(min=1).float()


def objects_reached(keep_mask: torch.Tensor, object_masks: torch.Tensor) -> torch.Tensor:
    """``(K,)`` bool: whether at least one patch of each object was kept."""
    return (object_masks.bool() & keep_mask.bool()[None]).any(-1)
