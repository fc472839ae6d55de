"""Compiled CPU kernel for the exact greedy facility location (used by :mod:`eadp_lab.select`).

Incremental gains: ``gain[c] = sum_j r_j * max(0, K[c, j] - cur_j)`` changes only in the
columns ``j`` where the last pick raised ``cur_j``, so each step updates every gain over
those columns instead of recomputing ``N x N`` terms. Each term is rounded in float32
exactly as the published loop rounds it and accumulated in float64, so the gains are the
published ones without its summation noise; the argmax keeps ``torch.argmax``'s tie-break
(lowest index). Each changed column is read as a contiguous row of the transposed similarity.
"""

from __future__ import annotations

import numba
import numpy as np


_FAST = {"reassoc", "nnan", "nsz"}  # lets LLVM vectorise; each term is still rounded in float32


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _initial_gains(K, r, gain):  # pragma: no cover - compiled
    """Gains of the empty selection, ``sum_j max(K[c, j], 0) r_j``, summed in any order."""
    n = K.shape[0]
    for c in range(n):
        acc = 0.0
        for j in range(n):
            acc += np.float64(max(K[c, j], np.float32(0.0)) * r[j])
        gain[c] = acc


@numba.njit(cache=True, nogil=True)
def _is_symmetric(K):  # pragma: no cover - compiled
    """True when ``K == K.T`` exactly (the cosine similarity of one feature set is, in practice)."""
    n = K.shape[0]
    for i in range(n):
        bad = 0
        for j in range(i + 1, n):
            bad += K[i, j] != K[j, i]
        if bad:
            return False
    return True


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _update(gain, row, old, new, rj):  # pragma: no cover - compiled
    """``gain[c] -= r_j (max(K[c, j] - old, 0) - max(K[c, j] - new, 0))`` for every c; ``row = K[:, j]``."""
    zero = np.float32(0.0)
    for c in range(gain.shape[0]):
        k = row[c]
        gain[c] -= np.float64(max(k - old, zero) * rj) - np.float64(max(k - new, zero) * rj)


@numba.njit(cache=True, nogil=True)
def _greedy_one(K, r, candidates, budget, picks):  # pragma: no cover - compiled
    n = K.shape[0]
    KT = K if _is_symmetric(K) else np.ascontiguousarray(K.T)  # KT[j] is column j of K
    cur = np.zeros(n, dtype=np.float32)
    gain = np.empty(n, dtype=np.float64)
    _initial_gains(K, r, gain)
    for c in range(n):
        if not candidates[c]:
            gain[c] = -np.inf
    for t in range(budget):
        best = 0
        for c in range(1, n):  # first maximum, as torch.argmax; picked tokens hold -inf
            if gain[c] > gain[best]:
                best = c
        if gain[best] == -np.inf:  # no candidate left
            picks[t:] = -1
            return
        picks[t] = best
        gain[best] = -np.inf
        for j in range(n):  # columns whose coverage the pick raises
            if K[best, j] > cur[j]:
                _update(gain, KT[j], cur[j], K[best, j], r[j])
                cur[j] = K[best, j]


@numba.njit(cache=True, nogil=True)
def greedy_batch(K, r, candidates, budget, picks):  # pragma: no cover - compiled
    """Fill ``picks`` ``(B, budget)`` for ``K`` ``(B, N, N)``, ``r`` ``(B, N)`` and the bool
    ``candidates`` ``(B, N)``, in pick order; ``-1`` once a row has no candidate left.

    One thread: on a small CPU, torch's own worker threads still spin after the preceding
    ops, and a second pool here only fights them.
    """
    for b in range(K.shape[0]):
        _greedy_one(K[b], r[b], candidates[b], budget, picks[b])
