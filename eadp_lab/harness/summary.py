"""lmms-eval runs of ``--model eadp_lab`` side by side, each score also as a share of the unpruned run's.

    python -m eadp_lab lmms-summary runs/lmms/none runs/lmms/eadp-128 runs/lmms/eadp-64 ... [--csv OUT.csv]

Each folder is one run's ``--output_path`` (one method at one budget, any number of tasks):
its newest ``*/<date>_results.json`` (lmms-eval's) gives every task's metrics, and the newest
records file of the same method and budget (``eadp_lab_*.jsonl`` beside it) the visual tokens
kept and the seconds spent selecting per request. :func:`summary_frame` puts one row per
(task, metric) and one column per run, and, when a ``none`` run is among them, the share of its
score each run keeps (``score / unpruned score``), the figure the EADP paper's Table 1 reports
as "relative" and the one to set beside it (absolute scores move with the prompt and answer
processing of the harness; the published code used LLaVA's own evaluation scripts).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_run", "summary_frame", "main"]


def _model_args(text: str) -> dict:
    """``key=value,...`` as lmms-eval passes ``--model_args`` (values kept as strings)."""
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def read_run(folder) -> dict:
    """One run's ``{"label", "method", "budget", "model", "metrics": {(task, metric): value}, "requests",
    "tokens_before", "tokens_after", "pruning_ms"}`` (the record figures are means over the requests, ``None``
    without a records file). ``ValueError`` naming the folder when it holds no lmms-eval results of eadp_lab."""
    folder = Path(folder)
    results = sorted(folder.glob("*/*_results.json"))
    if not results:
        raise ValueError(f"{folder}: no lmms-eval results (*/<date>_results.json); give a run's --output_path")
    report = json.loads(results[-1].read_text())
    config = report.get("config", {})
    if config.get("model") != "eadp_lab":
        raise ValueError(f"{results[-1]}: a run of --model {config.get('model')!r}, not eadp_lab")
    args = _model_args(config.get("model_args", ""))
    method, budget = args.get("method", "eadp"), args.get("budget", "64")
    metrics = {}
    for task, values in report["results"].items():
        for key, value in values.items():
            name, _, filt = key.partition(",")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in name:
                metrics[task, name if filt in ("", "none") else f"{name} ({filt})"] = float(value)
    out = {"label": "none" if method == "none" else f"{method} {budget}", "method": method, "budget": budget,
           "model": args.get("pretrained"), "metrics": metrics, "requests": 0, "tokens_before": None,
           "tokens_after": None, "pruning_ms": None}
    for path in sorted(folder.glob("eadp_lab_*.jsonl"), reverse=True):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines and lines[0]["method"] == method and str(lines[0]["budget"]) == str(budget):
            kept = [r for r in lines if r["tokens_after"] is not None]
            out.update(requests=len(lines),
                       tokens_before=sum(r["tokens_before"] for r in kept) / len(kept) if kept else None,
                       tokens_after=sum(r["tokens_after"] for r in kept) / len(kept) if kept else None,
                       pruning_ms=1000 * sum(r["pruning_seconds"] for r in lines) / len(lines))
            break
    return out


def summary_frame(runs: list[dict]):
    """``(scores, costs)`` DataFrames: ``scores`` one row per (task, metric), a column per run, and a
    ``... / none`` column per pruned run when a ``none`` run is given; ``costs`` one row per run
    (requests, mean visual tokens before and after, mean pruning time in ms)."""
    import pandas as pd

    labels = [r["label"] for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two runs of the same method and budget: {labels}")
    keys = sorted({k for r in runs for k in r["metrics"]})
    scores = pd.DataFrame({r["label"]: [r["metrics"].get(k) for k in keys] for r in runs},
                          index=pd.MultiIndex.from_tuples(keys, names=["task", "metric"]))
    if "none" in scores:
        for label in labels:
            if label != "none":
                scores[f"{label} / none"] = scores[label] / scores["none"]
    costs = pd.DataFrame([{k: r[k] for k in ("label", "model", "requests", "tokens_before", "tokens_after",
                                             "pruning_ms")} for r in runs]).set_index("label")
    return scores, costs


def main(argv=None) -> int:
    import argparse

    import pandas as pd

    parser = argparse.ArgumentParser(prog="python -m eadp_lab lmms-summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="each run's --output_path")
    parser.add_argument("--csv", help="also write the scores here")
    args = parser.parse_args(argv)
    try:
        scores, costs = summary_frame([read_run(f) for f in args.folders])
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(scores.round(4).to_string())
        print()
        print(costs.round(2).to_string())
    if args.csv:
        scores.to_csv(args.csv)
    return 0
