"""How the project times one function against another: interleaved repeats after a warm-up, and a ratio
read with its spread.

:func:`timed_pair` (on :func:`interleaved_times` and :func:`ratio_spread`) is what ``python -m
eadp_lab.bench select`` and the chapters use; :func:`ratio_spread` is the rule for any pair of
interleaved timings: the median of the per-repeat ratios with their range (smallest to largest),
and a range that covers 1 is "no measurable difference".
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time

import torch

from .._checks import check_int

__all__ = ["format_ratio", "interleaved_times", "ratio_spread", "timed_pair", "torch_threads"]


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``torch.set_num_threads(threads)`` (``None``: as it is), restoring the count after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(check_int("threads", threads, minimum=1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def interleaved_times(fns: dict, repeats: int = 7, warmup: int = 1, min_seconds: float = 0.05) -> dict[str, list[float]]:
    """Seconds per call of each function of ``fns`` (name -> zero-argument callable), one value per repeat.

    The functions are timed in turns: every repeat times each of them once, in the given order on
    even repeats and reversed on odd ones, so that a drift of the machine (another process, the
    CPU clock) falls on all of them alike. Before the repeats, ``warmup`` untimed calls of each
    (compilation, allocator, caches) and one more that sets how many calls a measurement makes
    (``ceil(min_seconds / one call)``, at least 1), so that sub-millisecond calls are not lost in
    the timer's resolution; a repeat's value is that measurement divided by its calls.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = list(fns)
    number = {}
    for name in names:
        for _ in range(warmup):
            fns[name]()
        start = time.perf_counter()
        fns[name]()
        number[name] = max(1, math.ceil(min_seconds / max(time.perf_counter() - start, 1e-9)))
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, n = fns[name], number[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n)
    return times


def ratio_spread(numerator: list[float], denominator: list[float]) -> dict:
    """The per-repeat ratios ``numerator[i] / denominator[i]`` of two interleaved timings and their spread.

    Returns ``{"median", "low", "high" (the smallest and largest per-repeat ratio: the spread), "q1",
    "q3" (the interquartile range, for reference), "ratios", "measurable": the spread excludes 1,
    "verdict"}``; ``verdict`` is ``"no measurable difference"`` when ``low <= 1 <= high``, else
    ``"faster"`` (every ratio above 1: the denominator's function takes less time) or ``"slower"``.
    The project's one rule for a timing (as :func:`eadp_lab.bench.efficiency.add_ratios` reads its
    paired calls): a ratio is quoted with the range of its repeats, and a range that covers 1 is no
    measurable difference.
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("the two timings must have the same, non-zero number of repeats")
    ratios = [a / b for a, b in zip(numerator, denominator)]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    low, high = min(ratios), max(ratios)
    measurable = not low <= 1.0 <= high
    median = statistics.median(ratios)
    return {"median": median, "low": low, "high": high, "q1": q1, "q3": q3, "ratios": ratios,
            "measurable": measurable,
            "verdict": ("faster" if median > 1 else "slower") if measurable else "no measurable difference"}


def format_ratio(spread: dict, digits: int = 2) -> str:
    """``"12.30x (range 11.90-12.80)"``, with ``"; no measurable difference"`` when the range covers 1."""
    text = f"{spread['median']:.{digits}f}x (range {spread['low']:.{digits}f}-{spread['high']:.{digits}f})"
    return text if spread["measurable"] else f"{text}; no measurable difference"


def timed_pair(published, lab, repeats: int = 7, warmup: int = 1, extra: dict | None = None) -> dict:
    """Interleaved timing of a published function against the lab's (and any ``extra`` ones, name ->
    callable): ``{"published_ms", "lab_ms", <name>_ms: medians, "speedup": ratio_spread(published, lab),
    <name>_speedup: ratio_spread(published, that one), "times_ms": every repeat}``."""
    fns = {"published": published, "lab": lab, **(extra or {})}
    times = interleaved_times(fns, repeats, warmup)
    out = {f"{name}_ms": 1e3 * statistics.median(values) for name, values in times.items()}
    out["speedup"] = ratio_spread(times["published"], times["lab"])
    for name in extra or {}:
        out[f"{name}_speedup"] = ratio_spread(times["published"], times[name])
    out["times_ms"] = {name: [1e3 * v for v in values] for name, values in times.items()}
    return out
