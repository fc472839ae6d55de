"""What the lab shows, read from the shipped runs (chapter 07): which selections win on the lab
world and why, and where EADP wins and loses against one rival, with the measured reason.

Everything here reads ``bench accuracy`` reports (the long runs); nothing runs a model.
"""

from __future__ import annotations

from .evaluation.results import _result_rows, pooled
from .evaluation.scores import Z95, paired_difference
from .field import where
from .methods.settings import ABLATIONS
from .studies import rank_correlation

__all__ = ["method_frame", "selection_correlations", "rival_gap", "rival_sentence", "run_budgets", "correlation_table",
           "spread_panels", "long_runs"]

MEASURES = ("named_reached", "named_recall", "kept_nearest")


def method_frame(*reports, budget: int):
    """One row per method at ``budget`` over the runs given (the same methods on different questions):
    ``where`` (:func:`eadp_lab.field.where`), ``accuracy`` (pooled over the runs' questions,
    :func:`pool_runs`), and the means over the runs of ``named_reached`` (share of questions whose
    named objects keep a token), ``named_recall`` (mean share of their tokens kept) and
    ``kept_nearest`` (mean distance from a kept token to its nearest kept neighbour, in patches:
    1 for a solid block, larger when spread). EADP's ablations are left out."""
    import pandas as pd

    accuracy = {r["method"]: r["accuracy"] for r in pooled(*reports)["results"] if int(r["budget"]) == budget}
    if not accuracy:
        raise ValueError(f"no configuration at budget {budget}")
    rows = []
    for method, acc in accuracy.items():
        if method == "none" or method in ABLATIONS:
            continue
        rows.append({"method": method, "where": where(method), "accuracy": acc, **_measures(reports, method, budget)})
    return pd.DataFrame(rows).set_index("method").sort_values("accuracy", ascending=False)


def _measures(reports, method: str, budget: int) -> dict:
    """:data:`MEASURES` of ``method`` at ``budget``, each the mean over the runs (``None`` where a run lacks it)."""
    same = [r for rep in reports for r in _result_rows(rep) if r["method"] == method and int(r["budget"]) == budget]
    return {k: sum(float(r[k]) for r in same) / len(same) if same and all(r.get(k) is not None for r in same) else None
            for k in MEASURES}


def selection_correlations(frame, families=("projector output", "vision encoder")) -> dict:
    """Across the methods of ``families`` in ``frame`` (:func:`method_frame`), the rank correlation of
    accuracy with each of :data:`MEASURES` (``{measure: {"rho", "p", "n"}}``, permutation p). The
    methods inside the language model are left out by default: what they keep is decided after
    their first layers read every token, so their kept set is not all the model saw."""
    rows = frame[frame["where"].isin(families)].dropna(subset=list(MEASURES))
    return {k: rank_correlation(rows["accuracy"], rows[k]) for k in MEASURES}


def rival_gap(reports, a: str, b: str, budget: int) -> dict:
    """``a`` against ``b`` at ``budget``, question by question over the pooled runs: ``difference``
    (accuracy a - b), ``low``, ``high`` (its 95% interval), ``n``, and each method's
    :data:`MEASURES` averaged over the runs (``a_named_reached``, ``b_kept_nearest``, ...)."""
    hits = {r["method"]: r["hits"] for r in pooled(*reports)["results"] if int(r["budget"]) == budget}
    for m in (a, b):
        if m not in hits:
            raise ValueError(f"no {m} at budget {budget} in the runs")
    difference, se, n = paired_difference(hits[a], hits[b])
    out = {"difference": difference, "low": difference - Z95 * se, "high": difference + Z95 * se, "n": n}
    for m, key in ((a, "a"), (b, "b")):
        out.update({f"{key}_{k}": v for k, v in _measures(reports, m, budget).items()})
    return out


def rival_sentence(gap: dict, a: str, b: str, budget: int) -> str:
    """:func:`rival_gap` as a sentence: the paired difference with its interval and verdict, and what
    each kept (named-object reach and recall, spacing)."""
    side = ("ahead" if gap["low"] > 0 else "behind" if gap["high"] < 0 else "level (the interval covers 0)")
    return (f"at {budget} tokens {a} is {side}: {100 * gap['difference']:+.1f} points "
            f"[{100 * gap['low']:+.1f}, {100 * gap['high']:+.1f}] on {gap['n']} questions; it reaches the named "
            f"objects on {100 * gap['a_named_reached']:.1f}% of them against {100 * gap['b_named_reached']:.1f}% "
            f"for {b}, keeps {100 * gap['a_named_recall']:.1f}% of their tokens against "
            f"{100 * gap['b_named_recall']:.1f}%, and its kept tokens lie {gap['a_kept_nearest']:.2f} patches from "
            f"their nearest kept neighbour against {gap['b_kept_nearest']:.2f}")


def run_budgets(report) -> list[int]:
    """The budgets of a report's pruning methods, largest first (``none``'s full count left out)."""
    return sorted({int(r["budget"]) for r in _result_rows(report) if r["method"] != "none"}, reverse=True)


def correlation_table(frames: dict):
    """:func:`selection_correlations` of ``{budget: method_frame}`` as one table: rows the measures,
    columns ``(rho | p, budget)``."""
    import pandas as pd

    rows = [{"budget": b, "accuracy against": measure, "rho": c["rho"], "p": c["p"]}
            for b, frame in frames.items() for measure, c in selection_correlations(frame).items()]
    return pd.DataFrame(rows).pivot(index="accuracy against", columns="budget", values=["rho", "p"])


def spread_panels(frames: dict):
    """Accuracy against the nearest kept neighbour, one panel per budget of ``{budget: method_frame}``,
    the methods that select before the language model labelled. Returns the figure."""
    import matplotlib.pyplot as plt

    from .field import WHERE
    from .plots import method_colours

    budgets = list(frames)
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.6), squeeze=False)
    colours = method_colours(list(frames[budgets[-1]].index))
    for ax, b in zip(axes[0], budgets):
        shown = frames[b][frames[b]["where"] != WHERE["llm"]]
        for m, r in shown.iterrows():
            ax.scatter(r["kept_nearest"], 100 * r["accuracy"], color=colours[m])
            ax.annotate(m, (r["kept_nearest"], 100 * r["accuracy"]), fontsize=7, xytext=(3, 2),
                        textcoords="offset points")
        ax.set_xlabel("nearest kept neighbour (patches)")
        ax.set_title(f"{b} tokens")
    axes[0][0].set_ylabel("accuracy (%)")
    fig.tight_layout()
    return fig


def long_runs(model, pattern: str = "accuracy-*.json") -> list:
    """``(path, report)`` of the shipped long runs of ``model`` (:func:`eadp_lab.evaluation.results.results_for`)
    that renumber the kept tokens (``attach``'s default) and hold ``eadp``: the runs chapters 04 and 07 read."""
    from .evaluation.results import results_for

    matching, _ = results_for(model, pattern)
    return [(p, rep) for p, rep in matching if (rep.get("positions") or "renumber") == "renumber"
            and "eadp" in {r["method"] for r in _result_rows(rep)}]
