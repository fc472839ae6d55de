"""What the lmms-eval model does with lmms-eval's requests, without lmms-eval: batches, generation
keywords, stop strings and where the per-request records go (importable and tested in the main
environment)."""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["batches", "generate_kwargs", "until_cut", "output_folder", "records_path"]


def batches(gen_kwargs: list, size: int) -> list[list[int]]:
    """Request indices in batches of at most ``size`` consecutive requests with equal generation kwargs
    (``gen_kwargs[i]``: request ``i``'s), in the requests' order."""
    out: list[list[int]] = []
    for i, gen in enumerate(gen_kwargs):
        if out and len(out[-1]) < size and gen == gen_kwargs[out[-1][0]]:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def generate_kwargs(gen: dict) -> tuple[dict, list[str]]:
    """``(keywords for model.generate, stop strings)`` from a task's generation kwargs: greedy unless
    ``do_sample`` with a temperature above 0; ``max_new_tokens`` 128 unless given (LLaVA's)."""
    gen = dict(gen)
    until = gen.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = float(gen.get("temperature", 0) or 0)
    sample = bool(gen.get("do_sample", False)) and temperature > 0
    out = {"max_new_tokens": int(gen.get("max_new_tokens", 128)), "do_sample": sample,
           "num_beams": int(gen.get("num_beams", 1) or 1)}
    if sample:
        out.update(temperature=temperature, top_p=float(gen.get("top_p", 1.0) or 1.0))
    return out, until


def until_cut(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any stop string of ``until``."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def output_folder(argv: list[str]) -> Path | None:
    """The folder of lmms-eval's ``--output_path`` on a command line (a ``.json``/``.jsonl`` file's folder)."""
    for i, arg in enumerate(argv):
        if arg == "--output_path" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--output_path="):
            value = arg.split("=", 1)[1]
        else:
            continue
        path = Path(value)
        return path.parent if path.suffix in (".json", ".jsonl") else path
    return None


def records_path(records: str | None, method: str, budget, argv: list[str]) -> Path:
    """Where the per-request records go: ``records`` if given, else a new file
    ``eadp_lab_<method>_<budget>_<time>.jsonl`` in lmms-eval's ``--output_path`` folder (the
    working folder without one)."""
    if records:
        return Path(records)
    folder = output_folder(argv) or Path.cwd()
    return folder / f"eadp_lab_{method}_{budget}_{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
