"""Reports of ``python -m eadp_lab bench accuracy``: loading them, finding a model's, and reading
them side by side (tables, EADP against the best other method, the figures a chapter quotes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..paths import RESULTS, ROOT
from .loading import LAB_LLAVA
from .scores import Z95, blind_baseline, max_standard_error, paired_difference, score_hits


def _result_rows(results) -> list[dict]:
    """The rows of :func:`eadp_lab.bench.accuracy.run`, or of a report the command wrote (its ``results``)."""
    if isinstance(results, dict):
        results = results.get("results")
    if not isinstance(results, (list, tuple)) or not results:
        raise ValueError("results must be the rows of run() or a report with a non-empty 'results' list")
    for r in results:
        if not isinstance(r, dict) or not {"method", "budget", "accuracy"} <= set(r):
            raise ValueError(f"every result needs 'method', 'budget' and 'accuracy', got {r!r}")
    return list(results)


def load_results(path) -> dict:
    """The report ``python -m eadp_lab bench accuracy --json PATH`` wrote, checked.

    Returns the JSON as a dict (``results``, and ``command``, ``model``, ``questions`` ...
    when the command recorded them); a bare list of result rows is wrapped as
    ``{"results": rows}``. ``ValueError`` naming ``path`` if it holds no usable results.
    """
    data = json.loads(Path(path).read_text())
    if isinstance(data, list):
        data = {"results": data}
    try:
        _result_rows(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return data


def _model_key(model) -> str:
    """One spelling of a model: the resolved folder of a local path (``"lab"``: the lab LLaVA), else the hub id."""
    if model is None or str(model) == "lab":
        return str(LAB_LLAVA.resolve())
    for base in (Path.cwd(), ROOT):
        path = Path(model) if Path(model).is_absolute() else base / model
        if path.is_dir():
            return str(path.resolve())
    return str(model)


def results_for(model, pattern: str = "accuracy-*.json",
                root: Path = RESULTS) -> tuple[list[tuple[Path, dict]], list[Path]]:
    """``(matching, other)``: the reports of ``pattern`` (a glob under ``root``, by default the shipped
    results, :data:`eadp_lab.paths.RESULTS`: ``data/results`` in a clone) written for ``model``
    (``"lab"``, a folder or a hub id), as ``(path, report)``, the defaults first; and the paths of the
    reports of other models (a report without ``model`` is the lab LLaVA's)."""
    matching, other = [], []
    key = _model_key(model)
    for path in sorted(Path(root).glob(pattern), key=lambda p: (len(p.name), p.name)):
        report = load_results(path)
        (matching.append((path, report)) if _model_key(report.get("model")) == key else other.append(path))
    return matching, other


def pool_runs(*reports) -> dict:
    """Several runs of the same methods and budgets on different questions (two seeds, say) as one
    report: per configuration, the runs' per-question ``hits`` joined in the order given and the
    ``accuracy`` recomputed from them (``questions``: their total). Pooled runs pair up question by
    question as the runs did, so :func:`positions_figures` of two pooled runs gives the intervals of
    all their questions. Rows keep ``method``, ``budget``, ``accuracy``, ``questions`` and ``hits``;
    the report keeps ``positions`` and ``sign`` where every run agrees.

    ``ValueError`` for fewer than two runs, runs of different configurations, or a row without
    ``hits`` (reports written before runs recorded them)."""
    if len(reports) < 2:
        raise ValueError(f"pooling needs at least two runs, got {len(reports)}")
    keyed = [{(r["method"], int(r["budget"])): r for r in _result_rows(report)} for report in reports]
    if any(set(rows) != set(keyed[0]) for rows in keyed[1:]):
        raise ValueError("the runs to pool must cover the same methods and budgets")
    pooled = []
    for key in keyed[0]:
        if not all(rows[key].get("hits") for rows in keyed):
            raise ValueError(f"{key[0]} at {key[1]} tokens: every run must record per-question hits to be pooled")
        hits = "".join(rows[key]["hits"] for rows in keyed)
        scored = [h == "1" for h in hits if h != "-"]  # no question types here: score_hits counts them as "all"
        pooled.append({"method": key[0], "budget": key[1], "questions": len(hits), "hits": hits,
                       "accuracy": score_hits([None] * len(scored), scored)["accuracy"]})
    report = {"results": pooled}
    for field in ("positions", "sign"):
        values = {r.get(field) if isinstance(r, dict) else None for r in reports}
        if len(values) == 1 and None not in values:
            report[field] = values.pop()
    return report


def pooled(*reports) -> dict:
    """:func:`pool_runs` of several runs of the same configurations, or one run's rows as a report."""
    return pool_runs(*reports) if len(reports) > 1 else {"results": _result_rows(reports[0])}


def results_frame(results, value: str = "accuracy"):
    """Results side by side as a ``pandas.DataFrame``: one row per method (in the order the
    results list them), one column per budget (largest first), ``value`` in the cells
    (``"accuracy"``, ``"kept_tokens_mean"``, ``"seconds"``, ...). ``none`` sits in the column of
    its full token count; configurations that were not run are NaN.

    Args:
        results: the rows of :func:`eadp_lab.bench.accuracy.run`, or the command's report (``{"results": [...]}``).
    """
    import pandas as pd

    rows = _result_rows(results)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    budgets = sorted({int(r["budget"]) for r in rows}, reverse=True)
    frame = pd.DataFrame(float("nan"), index=pd.Index(methods, name="method"),
                         columns=pd.Index(budgets, name="budget"))
    for r in rows:
        v = r.get(value)
        frame.loc[r["method"], int(r["budget"])] = float("nan") if v is None else float(v)
    return frame


def run_summary(path, report: dict) -> str:
    """Lines saying which run a report is: its file (relative to the repository when inside it), the
    command that wrote it, the commands of the runs ``bench merge`` joined to it (one line each), and
    its sign, positions, questions and seconds."""
    path = Path(path)
    try:
        name = path.resolve().relative_to(ROOT)
    except ValueError:
        name = path
    joined = "".join(f"\n  joined (bench merge): {m.get('command')}" for m in report.get("merged", []))
    return (f"{name}\n  written by: {report.get('command')}{joined}\n  sign: {report.get('sign') or 'the presets (-1)'}, "
            f"positions: {report.get('positions') or 'renumber (the default)'}, questions: {report.get('questions')}, "
            f"seconds: {report.get('seconds')}")


def markdown_table(results, values=("accuracy", "named_reached")) -> str:
    """A Markdown table of ``values`` (in %) per method (rows) and budget (columns), one block
    of budget columns per value; for model cards and notes. Values no row carries are left out.

    Args:
        results: the rows of :func:`eadp_lab.bench.accuracy.run`, or the command's report (``{"results": [...]}``).
    """
    import pandas as pd

    rows = _result_rows(results)
    values = [v for v in values if any(r.get(v) is not None for r in rows)]
    if not values:
        return "| method |\n| --- |"
    table = pd.concat({v: results_frame(rows, v) for v in values}, axis=1)  # columns: (value, budget)
    header = ["method"] + [f"{v} @ {b}" for v, b in table.columns]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for method, cells in table.iterrows():
        lines.append("| " + " | ".join([method, *("" if pd.isna(x) else f"{100 * x:.1f}" for x in cells)]) + " |")
    return "\n".join(lines)


def per_type_frame(results, value: str = "accuracy"):
    """Per-question-type results as a ``pandas.DataFrame`` indexed by ``(method, budget)``, one
    column per question type (sorted) and ``all`` last; ``value`` is ``"accuracy"`` or
    ``"questions"`` (how many questions of the type were scored). A type a configuration never
    saw is NaN.

    Args:
        results: the rows of :func:`eadp_lab.bench.accuracy.run`, or the command's report (``{"results": [...]}``).
    """
    import pandas as pd

    if value not in ("accuracy", "questions"):
        raise ValueError(f"value must be 'accuracy' or 'questions', got {value!r}")
    rows = _result_rows(results)
    types = sorted({t for r in rows for t in (r.get("per_type") or {})})
    records = []
    for r in rows:
        per_type = r.get("per_type") or {}
        record = {"method": r["method"], "budget": int(r["budget"])}
        record.update({t: per_type[t][value] if t in per_type else float("nan") for t in types})
        if value == "accuracy":
            record["all"] = float("nan") if r["accuracy"] is None else r["accuracy"]
        else:
            record["all"] = sum(v["questions"] for v in per_type.values())
        records.append(record)
    return pd.DataFrame.from_records(records, columns=["method", "budget", *types, "all"]).set_index(
        ["method", "budget"])


def _pruned_frames(results):
    """``(accuracy, named_reached)`` per method (rows, ``none`` dropped) and budget (columns, those
    of no pruned method dropped), as :func:`results_frame` gives them; ``named_reached`` aligned to
    the accuracy frame (NaN where not measured)."""
    acc = results_frame(results).drop(index="none", errors="ignore").dropna(axis=1, how="all")
    return acc, results_frame(results, "named_reached").reindex_like(acc)


def against_best(results, method: str = "eadp"):
    """``method`` against the best other method of each budget (its own ablations ``method-*``
    and ``none`` aside), as a ``pandas.DataFrame`` with one row per budget (largest first):
    ``accuracy``, ``best`` (the rival's name), ``best_accuracy``, ``difference`` (fractions),
    ``named_reached`` and ``best_named_reached`` (NaN where not measured), ``verdict``:
    ``"leads"`` / ``"trails"`` beyond one standard error of a difference of two independent
    accuracies on the run's questions (``sqrt(2) *`` :func:`max_standard_error`, in
    ``.attrs["margin"]``; the question count in ``.attrs["questions"]``), ``"level"`` within it;
    and ``paired_low``, ``paired_high``: the 95% interval of the difference compared question by
    question (:func:`paired_difference` of the rows' ``hits``; NaN for rows without them).

    Args:
        results: the rows of :func:`eadp_lab.bench.accuracy.run`, or the command's report.
    """
    import pandas as pd

    rows = _result_rows(results)
    acc, reached = _pruned_frames(rows)
    rivals = acc.drop(index=[m for m in acc.index if m == method or m.startswith(method + "-")])
    if method not in acc.index or rivals.empty:
        raise ValueError(f"the results need {method!r} and at least one other method, got {list(acc.index)}")
    n = min(int(r.get("questions") or 0) for r in rows if r["method"] == method)
    margin = math.sqrt(2) * max_standard_error(n)
    best = rivals.idxmax()
    out = pd.DataFrame({"accuracy": acc.loc[method], "best": best, "best_accuracy": rivals.max()})
    out["difference"] = out["accuracy"] - out["best_accuracy"]
    out["named_reached"] = reached.loc[method]
    out["best_named_reached"] = [reached.loc[best[b], b] for b in out.index]
    out["verdict"] = ["leads" if d > margin else "trails" if d < -margin else "level" for d in out["difference"]]
    hits = {(r["method"], int(r["budget"])): r.get("hits") for r in rows}
    paired = [paired_difference(hits[method, b], hits[best[b], b]) if hits.get((method, b)) and hits.get((best[b], b))
              else (float("nan"), float("nan"), 0) for b in out.index]
    out["paired_low"] = [d - Z95 * se for d, se, _ in paired]
    out["paired_high"] = [d + Z95 * se for d, se, _ in paired]
    out.attrs["margin"] = margin
    out.attrs["questions"] = n
    return out


def long_run_figures(report, method: str = "eadp") -> dict:
    """The figures a chapter quotes of one long run (a report with ``method`` and other methods):
    ``long_verdict`` (``method`` against the best other method per budget, :func:`against_best`,
    as a sentence), ``long_n`` (questions), ``long_se`` (:func:`max_standard_error`),
    ``long_margin`` (the verdicts' margin), ``long_paired_intervals`` (the 95% paired interval of
    ``method`` minus the best other method per budget, as text), ``long_budget`` (the smallest budget),
    ``long_ablations`` (``method``'s ablations against it there, in points),
    ``long_type_worst``/``long_type_best`` and their ``..._change`` (per question type,
    ``method`` at the smallest budget against every token), and ``reach_*``: the method and
    budget whose answers fall furthest below its reach of the named objects (``reach_named``,
    ``reach_acc``), ``method``'s own there (``reach_eadp_named``, ``reach_eadp_acc``), and
    ``reach_verdict``. ``report`` ``None``: the same keys, NaN, 0 or a "no long run" text."""
    if report is None:
        return {**dict.fromkeys(("long_n", "long_budget", "reach_budget"), 0),
                **dict.fromkeys(("long_se", "long_margin", "long_type_worst_change", "long_type_best_change",
                                 "reach_named", "reach_acc", "reach_eadp_named", "reach_eadp_acc"), float("nan")),
                **dict.fromkeys(("long_verdict", "long_paired_intervals", "long_ablations", "long_type_worst", "long_type_best",
                                 "reach_verdict", "reach_method"), "(no long run for this model)")}
    lead = against_best(report, method)
    acc, reached = _pruned_frames(report)
    n, margin = lead.attrs["questions"], lead.attrs["margin"]
    clauses = [f"{'is level' if r.verdict == 'level' else r.verdict} at {b} tokens ({r.accuracy:.1%} against "
               f"{r.best}'s {r.best_accuracy:.1%}, {100 * r.difference:+.1f} points"
               + ("" if math.isnan(r.named_reached) else
                  f"; named objects reached on {r.named_reached:.1%} against {r.best_named_reached:.1%}") + ")"
               for b, r in lead.iterrows()]
    low = min(acc.columns)
    types = per_type_frame(report)
    change = (types.loc[(method, low)] - types.xs("none", level="method").iloc[0]).drop("all").round(9)
    missed = (reached - acc).stack()
    worst_m, worst_b = missed.idxmax() if len(missed) else (method, low)
    return {
        "long_verdict": method.upper() + " " + ", ".join(clauses[:-1]) + (" and " if len(clauses) > 1 else "")
        + clauses[-1],
        "long_n": n, "long_se": max_standard_error(n), "long_margin": margin, "long_budget": int(low),
        "long_paired_intervals": "the runs record no per-question hits" if lead["paired_low"].isna().all() else
        ", ".join(f"{b} tokens {100 * r.difference:+.1f} [{100 * r.paired_low:+.1f}, {100 * r.paired_high:+.1f}] "
                  f"against {r.best}" for b, r in lead.iterrows() if not math.isnan(r.paired_low)),
        "long_ablations": ", ".join(f"{m} {100 * (acc.loc[m, low] - acc.loc[method, low]):+.1f}"
                                    for m in acc.index if m.startswith(method + "-")) or "none run",
        "long_type_worst": " and ".join(change.index[change == change.min()]),
        "long_type_best": " and ".join(change.index[change == change.max()]),
        "long_type_worst_change": float(change.min()), "long_type_best_change": float(change.max()),
        "reach_verdict": "these questions carry no ground truth of the objects they name" if not len(missed) else
        "reaching the named objects is not enough for the answer" if missed.max() > margin else
        "what a method reaches of the named objects and what the model answers go together here",
        "reach_method": worst_m, "reach_budget": int(worst_b),
        "reach_named": float(reached.loc[worst_m, worst_b]), "reach_acc": float(acc.loc[worst_m, worst_b]),
        "reach_eadp_named": float(reached.loc[method, worst_b]), "reach_eadp_acc": float(acc.loc[method, worst_b]),
    }


def against_chance(results, questions):
    """Full-token accuracy (``none``) per question type beside the blind baseline
    (:func:`blind_baseline`), as a ``pandas.DataFrame`` indexed by type with ``all`` last:
    ``questions``, ``blind answer``, ``blind accuracy``, ``accuracy (all tokens)`` and
    ``above blind`` (their difference, fractions).

    Args:
        results: rows of :func:`eadp_lab.bench.accuracy.run` (or its report) that include ``none``,
            or one score with every token (``{"accuracy", "per_type"}``, as :func:`score_hits` returns).
        questions: the questions those rows were scored on.
    """
    import pandas as pd

    if isinstance(results, dict) and "per_type" in results and "method" not in results:
        full = results
    else:
        full = next((r for r in _result_rows(results) if r["method"] == "none"), None)
    if full is None:
        raise ValueError("the results hold no 'none' run (every visual token), the accuracy to compare")
    blind = blind_baseline(questions)
    per_type = full.get("per_type") or {}
    rows = {t: {"questions": b["questions"], "blind answer": b["answer"], "blind accuracy": b["accuracy"],
                "accuracy (all tokens)": per_type.get(t, {}).get("accuracy", float("nan"))} for t, b in blind.items()}
    n = sum(b["questions"] for b in blind.values())
    rows["all"] = {"questions": n, "blind answer": "(per type)",
                   "blind accuracy": sum(b["accuracy"] * b["questions"] for b in blind.values()) / max(n, 1),
                   "accuracy (all tokens)": full["accuracy"]}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame["above blind"] = frame["accuracy (all tokens)"] - frame["blind accuracy"]
    frame.index.name = "question type"
    return frame
