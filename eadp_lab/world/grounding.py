"""Grounding: which patches of a token grid each object covers, and which patches each word names.

From a label map (:func:`render.label_map`), every object's coverage of every patch of any
``(gh, gw)`` grid; boolean patch masks; per text token, the patches of the objects it names
(``Question.refs``); and the pointing game (Zhang et al., "Top-down Neural Attention by
Excitation Backprop", ECCV 2016): does a word's highest-scoring patch lie on an object it
names? The measurement of dense text-patch alignment (FILIP: Yao et al., ICLR 2022).
Taught in ``notebooks/02_entropy_analysis``.

Shapes: ``H x W`` pixels, ``(gh, gw)`` token grid, ``K`` objects, ``L`` text tokens.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .render import label_map
from .scenes import Scene

__all__ = ["coverage_from_labels", "patch_coverage", "patch_masks", "patch_owner", "centre_cell", "token_masks",
           "pointing_hits"]


@lru_cache(maxsize=64)
def _area(n_patches: int, n_pixels: int) -> np.ndarray:
    """``(n_patches, n_pixels)``: fraction of each patch that each pixel covers (rows sum to 1)."""
    edges = np.arange(n_patches + 1) * n_pixels / n_patches
    lo, hi = edges[:-1, None], edges[1:, None]
    px = np.arange(n_pixels)[None, :]
    overlap = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0, None)
    return (overlap / (n_pixels / n_patches)).astype(np.float32)


@lru_cache(maxsize=64)
def _patch_index(height: int, width: int, gh: int, gw: int) -> np.ndarray:
    """``(H * W,)`` int64: the patch (row-major on a ``gh x gw`` grid) of each pixel."""
    rows = np.arange(height) * gh // height
    cols = np.arange(width) * gw // width
    return (rows[:, None] * gw + cols[None, :]).ravel()


def coverage_from_labels(labels: np.ndarray, n_objects: int, grid: tuple[int, int]) -> np.ndarray:
    """Fraction of each patch of a ``grid`` covered by each object.

    Args:
        labels: ``(H, W)`` label map; the grid need not divide it (pixels split by area).
        n_objects: ``K``.
        grid: ``(gh, gw)`` token grid.
    Returns:
        ``(K, gh, gw)`` float32 in ``[0, 1]``.
    """
    gh, gw = grid
    if gh < 1 or gw < 1:
        raise ValueError(f"grid must be two positive integers, got {grid!r}")
    H, W = labels.shape
    if H % gh == 0 and W % gw == 0:  # one pass: count (object, patch) pairs
        flat = labels.ravel().astype(np.int64)
        keep = flat >= 0
        pairs = flat[keep] * (gh * gw) + _patch_index(H, W, gh, gw)[keep]
        counts = np.bincount(pairs, minlength=n_objects * gh * gw)[: n_objects * gh * gw]
        return (counts.astype(np.float32) * np.float32(gh * gw / (H * W))).reshape(n_objects, gh, gw)
    onehot = labels[None] == np.arange(n_objects, dtype=labels.dtype)[:, None, None]  # (K, H, W)
    return np.einsum("ih,khw,jw->kij", _area(gh, H), onehot.astype(np.float32), _area(gw, W))


def patch_coverage(scene: Scene, grid: tuple[int, int]) -> np.ndarray:
    """``(K, gh, gw)`` float32: fraction of each patch covered by each object (its visible pixels)."""
    return coverage_from_labels(label_map(scene), len(scene.objects), grid)


def patch_masks(coverage: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """``(K, gh, gw)`` bool: patches covered at least ``threshold`` by the object.

    An object that covers no patch that much (a tiny one straddling four patches) keeps its
    best-covered patch, so every visible object has a non-empty mask.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    masks = coverage >= threshold
    K = coverage.shape[0]
    flat = coverage.reshape(K, -1)
    lost = ~masks.reshape(K, -1).any(1) & (flat.max(1) > 0)
    for k in np.flatnonzero(lost):
        masks.reshape(K, -1)[k, flat[k].argmax()] = True
    return masks


def patch_owner(coverage: np.ndarray) -> np.ndarray:
    """``(gh * gw,)`` int64: the object each patch belongs to (row-major), -1 on background.

    A patch belongs to an object of :func:`patch_masks` (covering it at least 25%, or an
    object's best patch); one that two objects share goes to the one covering more.
    """
    K = coverage.shape[0]
    if K == 0:
        return np.full(int(np.prod(coverage.shape[1:])), -1, np.int64)
    flat = coverage.reshape(K, -1)
    mask = patch_masks(coverage).reshape(K, -1)
    owner = np.where(mask, flat, -1.0).argmax(0)
    return np.where(mask.any(0), owner, -1).astype(np.int64)


def centre_cell(obj, height: int, width: int, grid: tuple[int, int]) -> tuple[int, int]:
    """``(row, col)``: the cell of a ``(gh, gw)`` grid over an ``height x width`` image that holds
    the centre ``(obj.x, obj.y)`` of an object (px)."""
    gh, gw = grid
    return min(int(obj.y * gh // height), gh - 1), min(int(obj.x * gw // width), gw - 1)


def token_masks(refs, masks: np.ndarray) -> np.ndarray:
    """``(L, gh, gw)`` bool: for each text token, the patches of the objects it names.

    Args:
        refs: per token, the indices of the objects it names (``Question.refs``).
        masks: ``(K, gh, gw)`` bool from :func:`patch_masks`.
    """
    out = np.zeros((len(refs),) + masks.shape[1:], bool)
    for i, r in enumerate(refs):
        if r:
            out[i] = masks[list(r)].any(0)
    return out


def pointing_hits(scores, refs, masks: np.ndarray) -> np.ndarray:
    """Per token, 1.0 if its highest-scoring patch lies on an object it names, else 0.0.

    Args:
        scores: ``(L, gh, gw)`` or ``(L, gh * gw)`` text-to-patch scores (anything
            ``np.asarray`` takes, e.g. a CPU tensor); ties go to the first patch.
        refs: per token, the objects it names (``Question.refs`` or ``Caption.refs``).
        masks: ``(K, gh, gw)`` bool from :func:`patch_masks`.
    Returns:
        ``(L,)`` float64: 1.0 (hit), 0.0 (miss), NaN for tokens that name no object.
    """
    scores = np.asarray(scores, dtype=np.float64)
    L, patches = len(refs), int(np.prod(masks.shape[1:]))
    if scores.ndim not in (2, 3) or scores.shape[0] != L or scores[0].size != patches:
        raise ValueError(f"scores must be (L={L}, gh, gw) or (L, gh * gw) for masks {masks.shape}, got {scores.shape}")
    best = scores.reshape(L, -1).argmax(1)
    wanted = token_masks(refs, masks).reshape(L, -1)
    hits = wanted[np.arange(L), best].astype(np.float64)
    hits[[not r for r in refs]] = np.nan
    return hits
