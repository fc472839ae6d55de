"""``python -m eadp_lab bench merge BASE EXTRA [EXTRA ...] --json OUT``: one report from runs of
``bench accuracy`` that answered the same questions under the same settings with different methods.

A long run is extended with new methods without re-answering the old ones: run only the new
methods with the base run's arguments (``--methods visionzip,fastv ...``), then merge. The
reports must agree on everything that decides an answer (:data:`SAME`: model, CLIP, scoring,
seed, questions, positions, sign, dtype, max new tokens); a method and budget present in two of
them is refused (which row to keep would be a choice). The merged report is the base report with
the extra rows appended, ``seconds`` summed, and ``merged``: one entry per extra run with its
command, methods, seconds and answers file, so the file still says how every row was made.
"""

from __future__ import annotations

import argparse
import sys

from .._io import OutputPathError, check_output, save_report
from ..evaluation.results import load_results

__all__ = ["SAME", "merge_reports", "main"]

SAME = ("model", "clip", "scoring", "seed", "questions", "positions", "sign", "dtype", "max_new_tokens")


def merge_reports(base: dict, *extras: dict) -> dict:
    """``base`` with the rows of every report of ``extras`` appended (``bench accuracy`` reports).

    ``ValueError`` naming the field and both values when a report differs from ``base`` in a field of
    :data:`SAME`, or naming the method and budget when two reports hold the same configuration."""
    if not extras:
        raise ValueError("give at least one report to merge into the base")
    merged = dict(base, results=list(base["results"]), merged=list(base.get("merged", [])))
    seen = {(r["method"], r["budget"]) for r in merged["results"]}
    for i, extra in enumerate(extras, 1):
        for key in SAME:
            if extra.get(key) != base.get(key):
                raise ValueError(f"report {i} differs from the base in {key}: base {base.get(key)!r}, "
                                 f"report {i} {extra.get(key)!r}; only runs on the same questions and settings merge")
        rows = extra["results"]
        twice = sorted({(r["method"], r["budget"]) for r in rows} & seen)
        if twice:
            raise ValueError(f"report {i} repeats {', '.join(f'{m} at {b}' for m, b in twice)}, already in an earlier "
                             "report: merge runs of different methods or budgets")
        seen |= {(r["method"], r["budget"]) for r in rows}
        merged["results"] += rows
        merged["seconds"] = round(float(merged.get("seconds") or 0) + float(extra.get("seconds") or 0), 1)
        merged["merged"].append({"command": extra.get("command"), "seconds": extra.get("seconds"),
                                 "answers_file": extra.get("answers_file"),
                                 "methods": sorted({r["method"] for r in rows})})
    return merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eadp_lab bench merge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the report to extend (bench accuracy --json)")
    parser.add_argument("extras", nargs="+", help="reports of other methods on the same questions and settings")
    parser.add_argument("--json", required=True, help="write the merged report here (atomically; may be BASE)")
    args = parser.parse_args(argv)
    try:
        out = check_output(args.json, "--json")
        reports = [load_results(p) for p in (args.base, *args.extras)]
        merged = merge_reports(reports[0], *reports[1:])
    except (OSError, ValueError, OutputPathError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    added = sum(len(r["results"]) for r in reports[1:])
    print(f"{args.base} + {added} rows of {len(reports) - 1} report(s): {len(merged['results'])} configurations -> {out}")
    return save_report(out, merged)


if __name__ == "__main__":
    sys.exit(main())
