"""Splits and seeds: every record is a pure function of ``(split, seed, index, config)``.

Each record draws from its own stream, ``numpy.random.SeedSequence(seed, spawn_key=(split,
stream, 0, index))``; streams of different splits, seeds, kinds (images, AnyRes scenes,
clips) or indices are independent by construction, so the ``heldout`` split shares no
scene with ``train`` and a record does not depend on how many others are drawn with it.
Question types come from a block of slots shuffled per block (``spawn_key=(split, stream,
1, block)``), so every full block holds the configured mix and exactly as many "yes" as
"no". Taught in ``notebooks/00_tour``.
"""

from __future__ import annotations

import gc
import multiprocessing
import operator
from functools import lru_cache
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from .config import WorldConfig

__all__ = ["SPLITS", "STREAMS", "check_split", "check_count", "check_seed", "check_config", "resolve_grid",
           "record_rng", "slot", "run"]

SPLITS = ("train", "val", "heldout")
STREAMS = {"image": 0, "multicrop": 1, "clip": 2}


def _int(name, value, low):
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}") from None
    if isinstance(value, bool) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return v


def check_split(split) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def check_count(n, name: str = "n") -> int:
    return _int(name, n, 1)


def check_seed(seed, name: str = "seed") -> int:
    return _int(name, seed, 0)


def check_config(config):
    """``config`` itself, or ``WorldConfig()`` for ``None``; ``ValueError`` for anything else."""
    if config is None:
        return WorldConfig()
    if not isinstance(config, WorldConfig):
        raise ValueError(f"config must be a WorldConfig or None, got {type(config).__name__}")
    return config


def resolve_grid(grid, config) -> tuple[int, int] | None:
    """``config.grid`` for ``"default"``, ``None`` for ``None``, else a checked ``(gh, gw)``."""
    if isinstance(grid, str) and grid == "default":
        return config.grid
    if grid is None:
        return None
    try:
        gh, gw = (operator.index(g) for g in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (H, W) positive integers, 'default' or None, got {grid!r}") from None
    if gh < 1 or gw < 1:
        raise ValueError(f"grid must be (H, W) positive integers, 'default' or None, got {grid!r}")
    return gh, gw


def record_rng(split: str, seed: int, index: int, stream: str = "image") -> np.random.Generator:
    """The generator of one record: independent across splits, seeds, streams and indices."""
    key = (SPLITS.index(check_split(split)), STREAMS[stream], 0, check_seed(index, "index"))
    return np.random.default_rng(np.random.SeedSequence(check_seed(seed), spawn_key=key))


def slot(split: str, seed: int, index: int, mix, stream: str = "image") -> tuple[str, str | None]:
    """``(qtype, answer)`` of record ``index``: its place in a shuffled block of ``mix`` slots.

    ``mix`` is ``((qtype, count), ...)``; a yes/no type's ``count`` slots alternate "yes" and
    "no" (the count is even), other types get ``answer=None``.
    """
    slots = []
    for qtype, count in mix:
        yes_no = qtype in ("relation", "exist", "clip_exist")
        slots += [(qtype, ("yes", "no")[i % 2] if yes_no else None) for i in range(count)]
    block, place = divmod(index, len(slots))
    return slots[_block_order(SPLITS.index(split), STREAMS[stream], seed, block, len(slots))[place]]


@lru_cache(maxsize=1024)
def _block_order(split_key: int, stream_key: int, seed: int, block: int, size: int) -> tuple[int, ...]:
    key = (split_key, stream_key, 1, block)
    return tuple(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key)).permutation(size).tolist())


def run(fn, n: int, start: int, workers: int, **kwargs) -> list:
    """``fn(start=a, n=b, **kwargs)`` over ``workers`` processes on contiguous index chunks, joined in order.

    Uses the ``fork`` start method where there is one (Linux); records are the same whatever
    ``workers`` is.
    """
    workers = _int("workers", workers, 1)
    if workers == 1 or n < 2 * workers:
        return fn(start=start, n=n, **kwargs)
    chunks = min(n, 8 * workers)  # small chunks: the parent unpickles while workers still draw
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    enabled = gc.isenabled()
    gc.disable()  # unpickling many small objects would trigger ever longer collections
    try:
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(fn, start=start + int(a), n=int(b - a), **kwargs)
                       for a, b in zip(bounds[:-1], bounds[1:])]
            return [r for f in futures for r in f.result()]
    finally:
        if enabled:
            gc.enable()
