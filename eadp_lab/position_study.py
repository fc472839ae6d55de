"""Chapter 04's study of what the language model makes of the kept tokens' positions: accuracy with
the kept visual tokens renumbered contiguously against at their original positions, per method,
budget and question type, with paired intervals, replicated on a second sample of questions,
and set beside how spread out each method's kept tokens lie.

Read from two reports of ``python -m eadp_lab bench accuracy`` that differ only in
``--positions`` (:func:`positions_gap`, :func:`positions_intervals`, :func:`positions_figures`),
two such pairs on different questions (:func:`pool_runs`, :func:`replication_figures`), the
spacing of the kept tokens (:func:`spacing_frame`, :func:`spacing_correlations`,
:func:`spacing_figures`) and per question type (:func:`positions_type_gap`,
:func:`answer_split`, :func:`type_gap_figures`).
"""

from __future__ import annotations


from .evaluation.results import _pruned_frames, _result_rows, per_type_frame, pool_runs, results_frame
from .evaluation.scores import Z95, first_word, paired_difference, score_hits


def matched(renumbered, original) -> tuple[dict, dict]:
    """Two runs that differ only in ``--positions``, each cut to the configurations (method, budget) both
    hold, as reports (the other fields kept): a renumbered run extended later with methods that cannot
    run at original positions (VisionZip's merged tokens have none) or were not run there still
    compares with its original-positions twin on what both ran."""
    def keyed(report):
        return {(r["method"], int(r["budget"])) for r in _result_rows(report)}

    both = keyed(renumbered) & keyed(original)

    def cut(report):
        base = report if isinstance(report, dict) else {}
        return dict(base, results=[r for r in _result_rows(report) if (r["method"], int(r["budget"])) in both])

    return cut(renumbered), cut(original)


def positions_gap(renumbered, original):
    """Accuracy with the kept tokens renumbered minus accuracy at their original positions, per
    method (rows) and budget (columns), as a ``pandas.DataFrame`` (fractions; ``none`` dropped).

    Args:
        renumbered, original: reports (or rows) of the same questions, methods and budgets run with
            ``--positions renumber`` and ``--positions original``.
    """
    gap = _run_difference(results_frame(renumbered), results_frame(original))
    return gap.drop(index="none", errors="ignore").dropna(axis=1, how="all")


def _run_difference(a, b):
    """``a - b`` for two runs' frames of the same rows and columns; ``ValueError`` otherwise."""
    if list(a.index) != list(b.index) or list(a.columns) != list(b.columns):
        raise ValueError("the two runs must cover the same methods and budgets (and question types)")
    return a - b


def _pruned_pairs(renumbered, original) -> dict:
    """``{(method, budget): (row of renumbered, row of original)}`` for every pruned configuration
    (``none`` left out); ``ValueError`` unless both runs cover the same ones."""
    def rows(report):
        return {(r["method"], int(r["budget"])): r for r in _result_rows(report) if r["method"] != "none"}

    a, b = rows(renumbered), rows(original)
    if set(a) != set(b):
        raise ValueError("the two runs must cover the same methods and budgets")
    return {key: (a[key], b[key]) for key in a}


def positions_intervals(renumbered, original, z: float = Z95):
    """Renumbered minus original positions per pruned method and budget, paired question by question
    (:func:`paired_difference` of the rows' ``hits``), as a ``pandas.DataFrame`` indexed by
    ``(method, budget)``: ``gap``, ``se``, ``low``, ``high`` (``gap -/+ z * se``; fractions) and
    ``n``. Rows without ``hits`` (reports written before runs recorded them) get NaN intervals and
    the gap of their accuracies."""
    import pandas as pd

    records = []
    for key, (ra, rb) in _pruned_pairs(renumbered, original).items():
        ha, hb = ra.get("hits"), rb.get("hits")
        if ha and hb:
            gap, se, n = paired_difference(ha, hb)
        else:
            gap, se, n = ra["accuracy"] - rb["accuracy"], float("nan"), 0
        records.append({"method": key[0], "budget": key[1], "gap": gap, "se": se,
                        "low": gap - z * se, "high": gap + z * se, "n": n})
    return pd.DataFrame.from_records(records, columns=["method", "budget", "gap", "se", "low", "high", "n"]
                                     ).set_index(["method", "budget"])


def _beyond(cells, tolerance: float):
    """Which gaps (a ``pandas`` Series or frame, fractions) are more than ``tolerance`` in size; a gap of
    exactly ``tolerance`` is within it (rounded to 9 places, so float noise cannot push it over)."""
    return cells.abs().round(9) > tolerance


def positions_figures(renumbered, original, tolerance: float = 0.02) -> dict:
    """The figures a chapter quotes of two runs that differ only in ``--positions``
    (:func:`positions_gap`): ``positions_gap_mean``, ``positions_gap_max`` (largest size),
    ``positions_cells``, ``positions_beyond`` (cells differing by more than ``tolerance``),
    ``positions_verdict`` (a sentence naming those cells), ``positions_best`` (whether both
    runs pick the same best method per budget), ``positions_clear`` (cells whose 95% paired interval,
    :func:`positions_intervals`, lies wholly beyond ``tolerance``) and ``positions_intervals`` (a
    sentence with the intervals of the cells beyond ``tolerance``). ``None`` for either run: NaN, 0 and "not measured"."""
    if renumbered is None or original is None:
        return {"positions_gap_max": float("nan"), "positions_gap_mean": float("nan"), "positions_beyond": 0,
                "positions_cells": 0, "positions_verdict": "not measured", "positions_best": "",
                "positions_clear": 0, "positions_intervals": "not measured"}
    gap = positions_gap(renumbered, original)
    cells = gap.stack()
    beyond = cells[_beyond(cells, tolerance)]
    sign = ("all negative (renumbered below original)" if (beyond < 0).all() else
            "all positive (renumbered above original)" if (beyond > 0).all() else "of both signs")
    points = f"{100 * tolerance:g} points"
    verdict = (f"so the target of within {points} everywhere is met: renumbering the kept tokens does not change "
               f"what the comparison of methods measures" if beyond.empty else
               f"so the target of within {points} everywhere is missed in those cells, {sign}: "
               + ", ".join(f"{m} at {b} tokens {100 * v:+.1f} points" for (m, b), v in beyond.items()))
    best = _best_sentence(renumbered, original, ("renumbered", "original"))
    paired = positions_intervals(renumbered, original)
    measured = paired.dropna(subset=["se"])
    clear = paired[(paired["low"].round(9) > tolerance) | (paired["high"].round(9) < -tolerance)]
    if measured.empty:
        intervals = "the runs record no per-question hits, so no paired intervals"
    else:
        shown = paired.loc[[k for k in beyond.index if k in paired.index]]
        away = int(((measured["low"].round(9) > 0) | (measured["high"].round(9) < 0)).sum())
        intervals = (f"with 95% intervals of the paired difference ({int(measured['n'].min()):,} questions, "
                     f"half-width {100 * Z95 * measured['se'].median():.1f} points in the median cell), "
                     f"{len(clear)} of the {len(paired)} cells lie wholly beyond {points} and {away} wholly away "
                     f"from zero"
                     + ("" if shown.empty else ": " + ", ".join(
                         f"{m} at {b} tokens {100 * r.gap:+.1f} [{100 * r.low:+.1f}, {100 * r.high:+.1f}]"
                         for (m, b), r in shown.iterrows())))
    return {"positions_gap_max": float(cells.abs().max()), "positions_gap_mean": float(cells.mean()),
            "positions_beyond": len(beyond), "positions_cells": int(cells.size), "positions_verdict": verdict,
            "positions_best": best, "positions_clear": len(clear), "positions_intervals": intervals}


def _best_sentence(a, b, names: tuple[str, str], runs: str = "runs") -> str:
    """Whether two runs of the same methods and budgets pick the same best pruned method per budget,
    as a sentence (``names``: how to call each run where they differ; ``runs``: what they are)."""
    winners = [_pruned_frames(run)[0].idxmax() for run in (a, b)]
    differ = [k for k in winners[0].index if winners[0][k] != winners[1][k]]
    return (f"Both {runs} pick the same best method at every budget: "
            + ", ".join(f"{winners[0][k]} at {k} tokens" for k in winners[0].index) if not differ else
            f"The two {runs} pick different best methods at "
            + ", ".join(f"{k} tokens ({winners[0][k]} {names[0]}, {winners[1][k]} {names[1]})" for k in differ))


def replication_figures(first, second, tolerance: float = 0.02, permutations: int = 20_000) -> dict:
    """How the renumbering gap of one sample of questions holds on another: ``first`` and ``second``
    are ``(renumbered, original)`` pairs of runs (:func:`positions_gap`) of the same methods and
    budgets on different questions. Returns ``replication_cells``, ``replication_rho`` and
    ``replication_p`` (rank correlation of the cells' gaps across the samples, permutation p:
    :func:`eadp_lab.studies.rank_correlation`), ``replication_beyond`` (cells beyond ``tolerance``
    in the second sample), ``replication_both`` (a sentence naming the cells beyond it in both, with
    each sample's gap), ``replication_reading`` (what the correlation says), ``replication_best``
    (whether the samples' renumbered runs pick the same best method per budget) and, with ``pooled_``
    in place of ``positions_``, :func:`positions_figures` of the two samples pooled
    (:func:`pool_runs`). Either pair ``None``: NaN, 0 and "not measured"."""
    from .studies import rank_correlation

    keys = ("gap_max", "gap_mean", "beyond", "cells", "verdict", "best", "clear", "intervals")
    if first is None or second is None:
        pooled = positions_figures(None, None, tolerance)
        return {"replication_cells": 0, "replication_rho": float("nan"), "replication_p": float("nan"),
                "replication_beyond": 0, "replication_both": "not measured", "replication_reading": "not measured",
                "replication_best": "not measured", **{f"pooled_{k}": pooled[f"positions_{k}"] for k in keys}}
    gaps = [positions_gap(*pair).stack() for pair in (first, second)]
    if list(gaps[0].index) != list(gaps[1].index):
        raise ValueError("the two samples must cover the same methods and budgets")
    corr = rank_correlation(gaps[0], gaps[1], permutations)
    beyond = [_beyond(g, tolerance) for g in gaps]
    both = gaps[0].index[beyond[0] & beyond[1]]
    points = f"{100 * tolerance:g} points"
    both_text = (f"no cell is beyond {points} in both samples" if both.empty else
                 f"{len(both)} {'cell is' if len(both) == 1 else 'cells are'} beyond {points} in both samples: "
                 + ", ".join(
                     f"{m} at {b} tokens ({100 * gaps[0][(m, b)]:+.1f} and {100 * gaps[1][(m, b)]:+.1f})"
                     for m, b in both))
    agree = corr["rho"] > 0 and corr["p"] < 0.05
    p = "p < 0.001" if corr["p"] < 0.001 else f"p {corr['p']:.3f}"
    reading = (f"the cells' gaps agree across the two samples (rank correlation {corr['rho']:+.2f}, permutation "
               f"{p}): how far a cell moves is a property of the model and the method, not of the questions drawn"
               if agree else
               f"the cells' gaps do not clearly agree across the two samples (rank correlation {corr['rho']:+.2f}, "
               f"permutation {p}): at this size they are mostly the noise of the questions drawn")
    pooled = positions_figures(pool_runs(first[0], second[0]), pool_runs(first[1], second[1]), tolerance)
    return {"replication_cells": int(gaps[0].size), "replication_rho": corr["rho"], "replication_p": corr["p"],
            "replication_beyond": int(beyond[1].sum()), "replication_both": both_text,
            "replication_reading": reading,
            "replication_best": _best_sentence(first[0], second[0], ("first", "second"), runs="samples"),
            **{f"pooled_{k}": pooled[f"positions_{k}"] for k in keys}}


SPACING = {"nearest": "kept_nearest", "gap_cv": "kept_gap_cv"}  # kept_spacing's figures, as the rows name them


def records_spacing(results) -> bool:
    """Whether every pruned row of a run (rows or report) carries the kept tokens' spacing
    (runs written before the bench recorded it do not)."""
    return all(r.get(SPACING["nearest"]) is not None for r in _result_rows(results) if r["method"] != "none")


def spacing_frame(spacing, renumbered, original):
    """How spread out each method's kept tokens lie beside what renumbering them changes, per
    method and budget: a ``pandas.DataFrame`` indexed by ``(method, budget)`` with
    :func:`positions_intervals`' ``gap``, ``se``, ``low``, ``high``, ``n`` and the kept tokens'
    ``nearest`` and ``gap_cv`` (:func:`eadp_lab.analysis.kept_spacing`, means over questions).

    Args:
        spacing: rows (or a report) that carry ``kept_nearest`` and ``kept_gap_cv`` for every
            method and budget of the two runs: the renumbered run itself when it recorded them, or
            a run of the same methods and budgets on some of its questions (the kept tokens do not
            depend on ``--positions``: both runs select before any position changes).
        renumbered, original: the two runs that differ only in ``--positions``.
    """
    rows = {(r["method"], int(r["budget"])): r for r in _result_rows(spacing)}
    frame = positions_intervals(renumbered, original)
    missing = [f"{m} at {b}" for m, b in frame.index if rows.get((m, b), {}).get(SPACING["nearest"]) is None]
    if missing:
        raise ValueError("no kept-token spacing (kept_nearest) for " + ", ".join(missing)
                         + ": run those methods and budgets with this version of the bench")
    for column, key in SPACING.items():
        frame[column] = [float(rows[k][key]) for k in frame.index]
    return frame


def spacing_correlations(frame, permutations: int = 20_000):
    """Rank correlation of the renumbering gap with each spacing figure of :func:`spacing_frame`,
    per budget and over every cell (``"all"``): a ``pandas.DataFrame`` indexed by budget with
    ``n`` and, per figure, ``<figure>_rho`` and ``<figure>_p``
    (:func:`eadp_lab.studies.rank_correlation`, permutation p-values)."""
    import pandas as pd

    from .studies import rank_correlation

    groups = [(b, g) for b, g in frame.groupby(level="budget", sort=False)] + [("all", frame)]
    records = []
    for budget, g in groups:
        record = {"budget": budget, "n": len(g)}
        for column in SPACING:
            c = rank_correlation(g[column], g["gap"], permutations)
            record.update({f"{column}_rho": c["rho"], f"{column}_p": c["p"]})
        records.append(record)
    return pd.DataFrame.from_records(records).set_index("budget")


def spacing_figures(frame, correlations, examples: int = 3) -> dict:
    """The figures a chapter quotes of :func:`spacing_frame` and :func:`spacing_correlations`:
    ``spacing_rho``, ``spacing_p``, ``spacing_cells`` (the gap against ``nearest`` over every
    cell), ``spacing_budget`` (the budget of the largest gap in size) with its
    ``spacing_budget_rho``, ``spacing_budget_p``, ``spacing_budget_cv_rho`` (against ``gap_cv``),
    ``spacing_contrast``: a sentence giving, at that budget, the gaps of the ``examples`` most
    clustered and the ``examples`` most spread-out selections (by ``nearest``), and
    ``spacing_verdict``: what that budget's correlation says (permutation p below 0.05 or not).
    ``None`` for the frame: NaN, 0 and "not measured"."""
    if frame is None or correlations is None:
        nan = float("nan")
        return {"spacing_rho": nan, "spacing_p": nan, "spacing_cells": 0, "spacing_budget": 0,
                "spacing_budget_rho": nan, "spacing_budget_p": nan, "spacing_budget_cv_rho": nan,
                "spacing_contrast": "not measured", "spacing_verdict": "not measured"}
    budget = int(frame["gap"].abs().groupby(level="budget").max().idxmax())
    at = frame.xs(budget, level="budget").sort_values("nearest")

    def describe(part):
        return (", ".join(f"{m} {100 * r.gap:+.1f}" for m, r in part.iterrows())
                + f"; nearest kept neighbour {part['nearest'].min():.2f} to {part['nearest'].max():.2f} patches")

    k = min(examples, len(at) // 2)
    contrast = (f"At {budget} tokens the {k} most clustered selections change by (points) "
                f"{describe(at.head(k))}, the {k} most spread out by {describe(at.tail(k).iloc[::-1])}")
    rho, p = correlations.loc[budget, "nearest_rho"], correlations.loc[budget, "nearest_p"]
    verdict = (f"at {budget} tokens the relation is not distinguishable from chance (p {p:.2f})" if not p < 0.05 else
               f"the more spread out a selection, the {'better' if rho > 0 else 'worse'} it does renumbered "
               f"against its original positions")
    return {"spacing_rho": float(correlations.loc["all", "nearest_rho"]),
            "spacing_p": float(correlations.loc["all", "nearest_p"]),
            "spacing_cells": int(correlations.loc["all", "n"]), "spacing_budget": budget,
            "spacing_budget_rho": float(rho), "spacing_budget_p": float(p),
            "spacing_budget_cv_rho": float(correlations.loc[budget, "gap_cv_rho"]),
            "spacing_contrast": contrast, "spacing_verdict": verdict}


def positions_type_gap(renumbered, original):
    """Renumbered minus original positions per question type: a ``pandas.DataFrame`` indexed by
    ``(method, budget)``, one column per question type and ``all`` last (fractions; ``none``
    dropped). Which questions :func:`positions_gap` comes from.

    Args:
        renumbered, original: reports (or rows) of the same questions, methods and budgets run with
            ``--positions renumber`` and ``--positions original``.
    """
    gap = _run_difference(per_type_frame(renumbered), per_type_frame(original))
    return gap[gap.index.get_level_values("method") != "none"]


def answer_split(renumbered, original, questions, qtype: str = "exist"):
    """Accuracy on the ``qtype`` questions split by their reference answer, renumbered and at the
    original positions: a ``pandas.DataFrame`` indexed by ``(method, budget, answer)`` with
    ``renumbered`` and ``original`` (fractions), their ``gap`` and ``n`` (questions of that answer
    scored in both runs). Read from the rows' ``hits`` (one character per question,
    :func:`answer_hits`), so ``questions`` must be the runs' questions in their order.

    Args:
        renumbered, original: reports (or rows) as for :func:`positions_type_gap`, with ``hits``.
        questions: the ``Q`` questions both runs answered (objects with ``qtype`` and ``answer``).
    """
    import pandas as pd

    records = []
    for key, (ra, rb) in _pruned_pairs(renumbered, original).items():
        ha, hb = ra.get("hits"), rb.get("hits")
        if not ha or not hb or len(ha) != len(questions) or len(hb) != len(questions):
            raise ValueError(f"{key[0]} at {key[1]}: both runs need hits for each of the {len(questions)} questions")
        answers = {}
        for q, x, y in zip(questions, ha, hb):
            if q.qtype == qtype and x != "-" and y != "-":
                answers.setdefault(first_word(str(q.answer)), []).append((x == "1", y == "1"))
        for answer, pairs in sorted(answers.items()):
            ren, orig = (sum(p[k] for p in pairs) / len(pairs) for k in (0, 1))
            records.append({"method": key[0], "budget": key[1], "answer": answer, "renumbered": ren,
                            "original": orig, "gap": ren - orig, "n": len(pairs)})
    if not records:
        raise ValueError(f"no {qtype!r} question was scored in both runs")
    return pd.DataFrame.from_records(records).set_index(["method", "budget", "answer"])


def type_gap_figures(type_gap, split=None, examples: int = 3, apart: float = 0.02) -> dict:
    """The figures a chapter quotes of :func:`positions_type_gap` (and of :func:`answer_split`):
    ``type_gap_cells``; ``type_gap_rise``: the question type whose gap is largest on average over
    the cells, with that mean and its largest cell; ``type_gap_fall``: the type lowest on average,
    and the ``examples`` most negative cells of any type; ``type_gap_split``: per answer, the mean
    gap over the cells on the split type's questions and the cell where the split differs most
    (``"not measured"`` without a split); ``type_gap_reading``: what the split says, whether one
    answer gains more than ``apart`` (2 points) over the other on average.
    ``None`` for ``type_gap``: 0 and "not measured"."""
    unsplit = {"type_gap_split": "not measured", "type_gap_reading": "not measured"}
    if type_gap is None:
        return {"type_gap_cells": 0, "type_gap_rise": "not measured", "type_gap_fall": "not measured", **unsplit}
    types = type_gap.drop(columns="all", errors="ignore")
    means = types.mean()

    def cell(method, budget, qtype, value):
        return f"{method} at {budget} tokens ({qtype} {100 * value:+.1f})"

    top = means.idxmax()
    best = types[top].idxmax()
    rise = (f"`{top}` questions gain {100 * means[top]:+.1f} points on average over the {len(types)} cells, "
            f"at most {cell(*best, top, types[top].max())}")
    bottom = means.idxmin()
    flat = types.stack().sort_values()
    falls = flat[flat < 0].head(examples)
    worst = ("the largest falls are " + ", ".join(cell(m, b, t, v) for (m, b, t), v in falls.items())
             if len(falls) else "no cell falls")
    fall = f"`{bottom}` questions do worst, {100 * means[bottom]:+.1f} points on average; {worst}"
    figures = {"type_gap_cells": len(types), "type_gap_rise": rise, "type_gap_fall": fall, **unsplit}
    if split is not None:
        by_answer = split["gap"].groupby(level="answer").mean()
        spread = split["gap"].unstack("answer")
        widest = (spread.max(axis=1) - spread.min(axis=1)).idxmax()
        at = split.xs(widest, level=("method", "budget"))
        figures["type_gap_split"] = (
            "on average " + ", ".join(f"{100 * g:+.1f} points on questions answered `{a}`" for a, g in by_answer.items())
            + f"; for {widest[0]} at {widest[1]} tokens, the cell where the answers differ most, "
            + ", ".join(f"`{a}` {round(r.renumbered * r.n)} of {int(r.n)} right renumbered against "
                        f"{round(r.original * r.n)} at the original positions" for a, r in at.iterrows()))
        up, down = by_answer.idxmax(), by_answer.idxmin()
        difference = by_answer[up] - by_answer[down]
        figures["type_gap_reading"] = (
            f"the two answers move alike (within {100 * apart:.0f} points of each other on average, "
            f"{100 * difference:.1f} apart): renumbering does not tilt the model toward one answer"
            if difference <= apart else
            f"questions answered `{up}` gain {100 * difference:.1f} points more than those answered `{down}` on "
            f"average: at the original positions the model leans toward `{down}`, compared with renumbered")
    return figures
