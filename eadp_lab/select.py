"""Stage 2 of EADP: structured selection by facility location, budget allocation, gathering.

Implements steps 10 to 13 of EADP (ECCV 2026) as stated in ``book/algorithm.md``; the greedy
is the classic one for monotone submodular maximisation (Nemhauser, Wolsey and Fisher,
1978), made fast by lazy evaluation (Minoux, 1978) with the published tie-break. Taught
in ``notebooks/03_submodular_selection``.

Shapes: ``B`` rows, ``N`` tokens, ``D`` feature width, ``T`` budget.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_budget, check_choice, check_finite, check_ndim, check_same
from .scoring import l2_normalise

__all__ = [
    "ALLOCATIONS",
    "cosine_similarity",
    "coverage_similarity",
    "facility_location",
    "facility_location_naive",
    "coverage",
    "allocate_budget",
    "keep_mask_from_picks",
    "gather_kept",
]

ALLOCATIONS = ("none", "floor", "largest_remainder")


def cosine_similarity(features: torch.Tensor, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """``S[i, j] = cos(F_i, F_j)`` of every pair of tokens of a row.

    Args:
        features: ``(B, N, D)``.
        dtype: where the normalisation and the product are computed (``None``: the input's own
            dtype, as the published baselines do with half-precision inputs).
    Returns:
        ``(B, N, N)`` in ``dtype``, on the features' device (a zero row has cosine 0 with all).
    """
    check_ndim("features", features, 3, "(B, N, D)")
    check_finite("features", features)
    f = l2_normalise(features, dtype=dtype)
    return f @ f.transpose(1, 2)


def coverage_similarity(features: torch.Tensor) -> torch.Tensor:
    """``K[i, j] = (clamp(cos(F_i, F_j), -1, 1) + 1) / 2`` in float32 (step 10).

    Args:
        features: ``(B, N, D)`` selection features ``F``.
    Returns:
        ``(B, N, N)`` float32 in ``[0, 1]``, on the features' device.
    """
    return (torch.clamp(cosine_similarity(features), -1.0, 1.0) + 1.0) / 2.0


def _prepare(importance, budget, features, similarity, candidates=None):
    """Validate the arguments of the greedy; return ``(r (B, N) float32, K (B, N, N), T, candidates)``."""
    check_ndim("importance", importance, 2, "(B, N)")
    check_finite("importance", importance)
    if bool((importance < 0).any()):
        raise ValueError("importance must be non-negative (facility location weights)")
    budget = check_budget(budget)
    if (features is None) == (similarity is None):
        raise ValueError("give exactly one of features (B, N, D) or similarity (B, N, N)")
    if similarity is None:
        check_ndim("features", features, 3, "(B, N, D)")
        check_same("N (tokens)", importance=importance.shape[1], features=features.shape[1])
        check_same("B (rows)", importance=importance.shape[0], features=features.shape[0])
        similarity = coverage_similarity(features)  # checks features; finite by construction
    else:
        check_ndim("similarity", similarity, 3, "(B, N, N)")
        check_same("N (tokens)", importance=importance.shape[1], similarity_rows=similarity.shape[1],
                   similarity_cols=similarity.shape[2])
        check_same("B (rows)", importance=importance.shape[0], similarity=similarity.shape[0])
        check_finite("similarity", similarity)
        similarity = similarity.float()
    if candidates is None:
        candidates = torch.ones(importance.shape, dtype=torch.bool, device=importance.device)
    else:
        check_same("candidates shape", importance=tuple(importance.shape), candidates=tuple(candidates.shape))
        candidates = candidates.to(device=importance.device, dtype=torch.bool)
    return importance.float(), similarity, budget, candidates


def facility_location_naive(
    importance: torch.Tensor,
    budget: int,
    *,
    features: torch.Tensor | None = None,
    similarity: torch.Tensor | None = None,
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """The published greedy loop, kept as the reference: every gain recomputed at every step.

    Each step materialises a ``(B, N, N)`` temporary. Used by the tests and by
    ``python -m eadp_lab.bench select``; use :func:`facility_location` otherwise.

    Returns:
        ``(B, min(budget, N))`` long, picks in pick order (``-1`` once no candidate is left).
    """
    r, K, budget, candidates = _prepare(importance, budget, features, similarity, candidates)
    B, N = r.shape
    T = min(budget, N)
    rows = torch.arange(B, device=r.device)
    cur = torch.zeros(B, N, device=r.device)
    unavailable = ~candidates
    picks = torch.empty(B, T, dtype=torch.long, device=r.device)
    for t in range(T):
        gains = (torch.clamp(K - cur[:, None, :], min=0) * r[:, None, :]).sum(-1)  # (B, N)
        gains = gains.masked_fill(unavailable, -math.inf)
        best = gains.argmax(-1)
        picks[:, t] = torch.where(unavailable.all(-1), -1, best)
        unavailable[rows, best] = True
        cur = torch.maximum(cur, K[rows, best])
    return picks


def _lazy_torch(r: torch.Tensor, K: torch.Tensor, T: int, candidates: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Batched lazy greedy in plain torch ops (any device). ``r`` (B, N), ``K`` (B, N, N)."""
    B, N = r.shape
    rows = torch.arange(B, device=r.device)
    cur = torch.zeros(B, N, device=r.device)
    selected = ~candidates
    bound = (torch.clamp(K, min=0) * r[:, None, :]).sum(-1).double()  # exact gains of the empty selection
    picks = torch.empty(B, T, dtype=torch.long, device=r.device)
    m = min(block, N)
    for t in range(T):
        fresh = torch.zeros(B, N, dtype=torch.bool, device=r.device)
        while True:
            live = bound.masked_fill(selected, -math.inf)
            best = live.argmax(-1)
            if bool((fresh[rows, best] | selected.all(-1)).all()):
                break
            stale = live.masked_fill(fresh, -math.inf)
            cand = torch.topk(stale, m, dim=-1).indices  # (B, m)
            rows_k = K[rows[:, None], cand]  # (B, m, N)
            exact = (torch.clamp(rows_k - cur[:, None, :], min=0) * r[:, None, :]).double().sum(-1)
            ok = torch.gather(stale, 1, cand) > -math.inf  # skip selected/fresh fillers
            bound.scatter_(1, cand, torch.where(ok, exact, torch.gather(bound, 1, cand)))
            fresh.scatter_(1, cand, ok | torch.gather(fresh, 1, cand))
        picks[:, t] = torch.where(selected.all(-1), -1, best)
        selected[rows, best] = True
        cur = torch.maximum(cur, K[rows, best])
    return picks


def _incremental_cpu(r: torch.Tensor, K: torch.Tensor, T: int, candidates: torch.Tensor) -> torch.Tensor:
    """Greedy in the compiled CPU kernel (:mod:`eadp_lab._greedy_cpu`). ``r`` (B, N), ``K`` (B, N, N)."""
    import numpy as np

    from ._greedy_cpu import greedy_batch

    picks = np.empty((r.shape[0], T), dtype=np.int64)
    greedy_batch(K.detach().contiguous().numpy(), r.detach().contiguous().numpy(), candidates.contiguous().numpy(),
                 T, picks)
    return torch.from_numpy(picks)


def facility_location(
    importance: torch.Tensor,
    budget: int,
    *,
    features: torch.Tensor | None = None,
    similarity: torch.Tensor | None = None,
    candidates: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Greedy facility location: ``T`` picks maximising ``f(A) = sum_j r_j max_{a in A} K[a, j]``.

    Exact: the same picks as :func:`facility_location_naive` (the published loop) wherever
    gains are not tied to rounding, with its tie-break (lowest index). Lazy evaluation makes
    it one to two orders of magnitude faster (``python -m eadp_lab.bench select``).

    Args:
        importance: ``(B, N)`` non-negative weights ``r``.
        budget: ``T >= 1``. A budget of ``N`` or more keeps every token, in index order.
        features: ``(B, N, D)`` selection features; the similarity is
            :func:`coverage_similarity` (``(cos + 1) / 2``, as published).
        similarity: ``(B, N, N)`` precomputed similarity in ``[0, 1]`` instead of ``features``.
        candidates: ``(B, N)`` bool, the tokens that may be picked (default all); the others
            still count in the objective with their importance (zero for absent tokens).
        backend: ``"auto"`` (compiled kernel on CPU, torch ops elsewhere), ``"cpu"`` or ``"torch"``.
    Returns:
        ``(B, min(T, N))`` long on the inputs' device, picks in pick order; ``-1`` once a row
        has no candidate left.
    """
    check_choice("backend", backend, ("auto", "cpu", "torch"))
    r, K, budget, candidates = _prepare(importance, budget, features, similarity, candidates)
    B, N = r.shape
    if budget >= N and bool(candidates.all()):
        return torch.arange(N, device=r.device).expand(B, N).clone()
    budget = min(budget, N)
    if backend == "auto":
        backend = "cpu" if r.device.type == "cpu" else "torch"
    if backend == "cpu":
        return _incremental_cpu(r.cpu(), K.cpu(), budget, candidates.cpu()).to(r.device)
    return _lazy_torch(r, K, budget, candidates)


def coverage(importance: torch.Tensor, similarity: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """Facility-location objective ``f(A) = sum_j r_j max_{a in A} K[a, j]`` of each row's picks.

    Args:
        importance: ``(B, N)``; similarity: ``(B, N, N)``; picks: ``(B, T)`` long (``-1`` = unused).
    Returns:
        ``(B,)`` float64.
    """
    B, N = importance.shape
    valid = picks >= 0
    rows_k = torch.gather(similarity.double(), 1, picks.clamp(min=0)[..., None].expand(B, picks.shape[1], N))
    best = rows_k.masked_fill(~valid[..., None], 0.0).max(1).values  # (B, N)
    return (importance.double() * best).sum(-1)


def allocate_budget(
    importance: torch.Tensor,
    rows_per_image: list[int],
    budget_per_row: int,
    rule: str = "floor",
    capacity: torch.Tensor | None = None,
) -> torch.Tensor:
    """Split an image's budget ``K * T0`` across its ``K`` crops or frames (step 13).

    Crop share ``p_k = sum_n r[k, n] / (sum over the image's crops + 1e-6)``.

    - ``floor`` (published): ``q_k = max(1, floor(p_k * K * T0))``; the total can fall short by
      up to ``K - 1`` tokens.
    - ``largest_remainder`` (Hamilton's method): floors plus one token each to the largest
      remainders (lowest index on ties), so the total is exactly ``K * T0`` (or every token,
      if fewer); a crop never gets more than it has.
    - ``none``: ``T0`` per row.

    Args:
        importance: ``(R, N)`` final importance (after smoothing and power).
        rows_per_image: crops of each image, consecutive rows; sums to ``R``.
        capacity: ``(R,)`` tokens each row has (default ``N``; fewer for ragged rows).
    Returns:
        ``(R,)`` long quotas, each in ``[0, capacity]``. A budget of at least every row's
        capacity keeps everything.
    """
    check_choice("allocation", rule, ALLOCATIONS)
    T0 = check_budget(budget_per_row, "budget_per_row")
    R, N = importance.shape
    if sum(rows_per_image) != R:
        raise ValueError(f"rows_per_image {rows_per_image} does not add up to the {R} rows of importance")
    cap = torch.full((R,), N, device=importance.device) if capacity is None else capacity.long().to(importance.device)
    if rule == "none" or T0 >= int(cap.max()):
        return torch.clamp(cap, max=T0).long()
    quotas = []
    for rows, row_cap in zip(torch.split(importance.float().sum(-1), list(rows_per_image)),
                             torch.split(cap, list(rows_per_image))):
        K = rows.shape[0]
        share = rows / (rows.sum() + 1e-6) * (K * T0)  # (K,)
        if rule == "floor":
            q = torch.clamp(torch.floor(share).long(), min=1)
        else:
            q = _largest_remainder(share, min(K * T0, int(row_cap.sum())), row_cap)
        quotas.append(torch.minimum(q, row_cap))
    return torch.cat(quotas)


def _largest_remainder(share: torch.Tensor, total: int, cap: torch.Tensor) -> torch.Tensor:
    """Integers summing to ``total``, each in ``[0, cap]``, closest to ``share`` (Hamilton)."""
    q = torch.minimum(torch.floor(share).long(), cap)
    while int(q.sum()) < total:
        remainder = (share - q.to(share.dtype)).masked_fill(q >= cap, -math.inf)
        left = total - int(q.sum())
        order = torch.argsort(-remainder, stable=True)[:left]
        order = order[remainder[order] > -math.inf]
        q[order] += 1
    return q


def keep_mask_from_picks(picks: torch.Tensor, quotas: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``(R, N)`` bool: True for the first ``quotas[r]`` picks of each row.

    Args:
        picks: ``(R, T)`` long in pick order (``T >= max(quotas)``); quotas: ``(R,)`` long.
    """
    R, T = picks.shape
    counted = torch.arange(T, device=picks.device) < quotas[:, None]  # (R, T)
    target = torch.where(counted & (picks >= 0), picks, num_tokens)  # uncounted -> a spare column
    mask = torch.zeros(R, num_tokens + 1, dtype=torch.bool, device=picks.device)
    return mask.scatter_(1, target, True)[:, :num_tokens]


def gather_kept(features: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """Kept tokens in their original order, row after row (step 12).

    Args:
        features: ``(R, N, D)``; keep_mask: ``(R, N)`` bool.
    Returns:
        ``(sum of kept, D)``: row 0's kept tokens in ascending index order, then row 1's, ...
        For equal quotas ``q`` it reshapes to ``(R, q, D)``.
    """
    check_same("(R, N)", features=tuple(features.shape[:2]), keep_mask=tuple(keep_mask.shape))
    return features[keep_mask]
