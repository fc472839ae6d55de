"""Compiled CPU kernel for the greedy MAP inference of a DPP (used by :mod:`eadp_lab.methods.cdpruner`).

The fast greedy of Chen, Zhang and Zhou (NeurIPS 2018): each step picks the token of largest
conditional variance ``d_i^2``, then extends the incremental Cholesky factor by one row,
``e = (L[j] - c[:, j] . c) / d_j``, and lowers every ``d_i^2`` by ``e_i^2``. Here a step is a
few tight loops over one preallocated ``(T, N)`` factor, with no temporary and no per-step
dispatch; the argmax keeps ``torch.argmax``'s tie-break (lowest index).

Arithmetic in the kernel's dtype, rounded as the published torch loop rounds it: the
projection ``c[:, j] . c`` is accumulated one pick after another with a fused multiply-add
(a float32 product-and-sum is computed exactly in float64, then rounded once), subtracted
from ``L[j]``, divided by ``sqrt(d_j^2)``, squared and subtracted, each in the kernel's dtype.
So float32 kernels give the published loop's picks even where two gains tie to within its
rounding; float64 kernels give the exact greedy. The torch version (any device) is
:func:`eadp_lab.methods.cdpruner.dpp_greedy_map` with ``backend="torch"``.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _first_max(score, free):  # pragma: no cover - compiled
    """Index of the first maximum of ``score`` over the ``free`` entries, ``-1`` if none is free."""
    best = -1
    for i in range(score.shape[0]):
        if free[i] and (best < 0 or score[i] > score[best]):
            best = i
    return best


@numba.njit(cache=True, nogil=True)
def _greedy_map_one(L, fallback, free, budget, epsilon, picks):  # pragma: no cover - compiled
    n = L.shape[0]
    cis = np.zeros((budget, n), dtype=L.dtype)
    d2 = np.empty(n, dtype=L.dtype)
    for i in range(n):
        d2[i] = L[i, i]
    proj = np.empty(n, dtype=L.dtype)
    exhausted = False
    for t in range(budget):
        best = -1
        if not exhausted:
            best = _first_max(d2, free)
            exhausted = best >= 0 and d2[best] < epsilon
        if exhausted:  # the kernel's rank is spent: the fallback order fills the rest
            best = _first_max(fallback, free)
        if best < 0:  # no token left
            picks[t:] = -1
            return
        picks[t] = best
        free[best] = False
        if exhausted:
            continue
        d = np.sqrt(d2[best])  # in the kernel's dtype; d2[best] >= epsilon here
        proj[:] = 0
        for s in range(t):
            c = np.float64(cis[s, best])
            for i in range(n):
                proj[i] = c * cis[s, i] + proj[i]  # exact in float64, one rounding: a fused multiply-add
        for i in range(n):
            v = (L[best, i] - proj[i]) / d
            cis[t, i] = v
            d2[i] = d2[i] - v * v


@numba.njit(cache=True, nogil=True)
def greedy_map_batch(L, fallback, free, budget, epsilon, picks):  # pragma: no cover - compiled
    """Fill ``picks`` ``(B, budget)`` for kernels ``L`` ``(B, N, N)`` (float32 or float64), the fallback scores
    ``(B, N)`` float64 and the bool ``free`` ``(B, N)`` (tokens that may be picked; changed in
    place), in pick order; ``-1`` once a row has no token left."""
    for b in range(L.shape[0]):
        _greedy_map_one(L[b], fallback[b], free[b], budget, epsilon, picks[b])
