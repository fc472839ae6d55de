"""EADP among the field's methods: the comparison table beside the EADP paper's, accuracy for the
compute each method spends, and one figure per family (chapter 04).

The field prunes in three places (the registry's ``Method.stage``): on the visual tokens the
language model is about to receive (``projector``: EADP, DivPrune, CDPruner and the simple rules),
inside the vision encoder from its attention (``vision``: VisionZip, HiPrune) and inside the
language model between decoder layers (``llm``: FastV, PyramidDrop, DART, SparseVLM). A method of
the last family lets the first decoder layers see every visual token, so at the same budget it
spends more compute than the others: :func:`compute_frame` reads accuracy against the prefill
FLOPs each configuration really spent.

:data:`PAPER_TABLE1` holds the EADP paper's Table 1 (LLaVA-1.5-7B, average of nine benchmarks), a
cited reference printed beside the lab's figures, never a target.
"""

from __future__ import annotations

import math

import torch

from .evaluation.results import _result_rows, pooled, results_frame
from .methods.base import METHODS
from .methods.settings import ABLATIONS

__all__ = ["PAPER_TABLE1", "PAPER_UNPRUNED", "PAPER_TOKENS", "PAPER_SOURCE", "WHERE", "where", "paper_budget",
           "comparison_table", "comparison_figures", "compute_frame", "compute_sentence", "compute_panel", "visionzip_panel",
           "layer_counts_panel"]

PAPER_SOURCE = ("Wang, Yang and Shen, \"Combating Textual Noise and Redundancy: Entropy-Aware Dense Visual Token "
                "Pruning\", ECCV 2026, Table 1: LLaVA-1.5-7B, average of nine benchmarks")
PAPER_UNPRUNED = 64.9  # the unpruned LLaVA-1.5-7B's average in that table
PAPER_TOKENS = 576  # LLaVA-1.5's visual tokens per image
# method -> {tokens kept: average score}; "-" in the paper (not reported) is left out
PAPER_TABLE1 = {
    "fastv": {128: 59.1, 64: 47.3},
    "pyramiddrop": {128: 61.0, 64: 47.0},
    "sparsevlm": {128: 62.1, 64: 55.8},
    "visionzip": {128: 62.5, 64: 60.3, 32: 56.0},
    "dart": {128: 62.0, 64: 59.2, 32: 56.7},
    "divprune": {128: 62.5, 64: 60.9, 32: 58.4},
    "cdpruner": {128: 63.2, 64: 61.9, 32: 60.4},
    "hiprune": {128: 61.9, 64: 57.9},
    "eadp": {128: 63.5, 64: 62.2, 32: 60.9},
}

WHERE = {"projector": "projector output", "vision": "vision encoder", "llm": "decoder layers"}


def where(method: str) -> str:
    """Where ``method`` (a registry name or an ablation ``eadp-*``) prunes: :data:`WHERE` of its stage."""
    base = ABLATIONS.get(method, (method, {}))[0]
    return WHERE[METHODS[base].stage] if base in METHODS else "-"


def paper_budget(budget: int, tokens: int) -> int:
    """The Table 1 budget (of :data:`PAPER_TOKENS`) whose share of the tokens is nearest ``budget / tokens``:
    on the lab's 256 tokens, 64 -> 128, 28 -> 64, 14 -> 32 (shares 25% / 22%, 10.9% / 11.1%, 5.5% / 5.6%)."""
    if budget < 1 or tokens < budget:
        raise ValueError(f"budget must be in [1, tokens={tokens}], got {budget}")
    return min((128, 64, 32), key=lambda b: abs(b / PAPER_TOKENS - budget / tokens))


def comparison_table(*reports, methods=None):
    """The lab's accuracy as a share of the unpruned model's beside the EADP paper's Table 1.

    Args:
        reports: ``bench accuracy`` reports (or result rows) of the same methods and budgets on
            different questions (pooled question by question, :func:`pool_runs`), or one report.
            Each must hold a ``none`` row (every token).
        methods: rows to show, in order (default: every pruning method of the reports, EADP's
            ablations aside, best first at the smallest budget).
    Returns:
        ``pandas.DataFrame`` indexed by method: ``where`` (:func:`where`), then per lab budget
        (largest first) ``lab <b>/<N>`` (accuracy / unpruned accuracy, a fraction) and
        ``paper <b'>/576`` (:func:`paper_budget`; Table 1 score / 64.9, NaN where the paper has
        none); ``.attrs``: ``questions``, ``unpruned`` (the lab's accuracy with every token),
        ``tokens`` (N).
    """
    import pandas as pd

    report = pooled(*reports)
    frame = results_frame(report)
    if "none" not in frame.index:
        raise ValueError("the reports need a 'none' row (the model with every token) to give shares of it")
    tokens = int(frame.loc["none"].dropna().index[0])
    unpruned = float(frame.loc["none", tokens])
    budgets = [b for b in frame.columns if b != tokens and frame[b].notna().any()]
    if methods is None:
        methods = [m for m in frame.index if m != "none" and m not in ABLATIONS]
        methods = sorted(methods, key=lambda m: -frame.loc[m, min(budgets)])
    table = pd.DataFrame(index=pd.Index(list(methods), name="method"))
    table["where"] = [where(m) for m in methods]
    for b in sorted(budgets, reverse=True):
        pb = paper_budget(b, tokens)
        table[f"lab {b}/{tokens}"] = [frame.loc[m, b] / unpruned if m in frame.index else math.nan for m in methods]
        table[f"paper {pb}/{PAPER_TOKENS}"] = [PAPER_TABLE1.get(m, {}).get(pb, math.nan) / PAPER_UNPRUNED
                                              for m in methods]
    rows = _result_rows(report)
    table.attrs.update(questions=max(int(r.get("questions") or 0) for r in rows), unpruned=unpruned, tokens=tokens)
    return table


def compute_frame(accuracy_rows, efficiency_rows):
    """Accuracy against the language model's prefill FLOPs for every configuration measured in both.

    Args:
        accuracy_rows: rows (or a report) of ``bench accuracy`` (``method``, ``budget``, ``accuracy``).
        efficiency_rows: rows of :func:`eadp_lab.bench.efficiency.measure_all` (``method``, ``budget``,
            ``prefill_flops``, ``full_layers``), with a ``none`` row.
    Returns:
        ``pandas.DataFrame`` with ``method``, ``budget``, ``where``, ``accuracy``, ``flops_share``
        (the configuration's prefill FLOPs / the unpruned prefill's) and ``full_layers`` (decoder
        layers that saw every visual token), one row per configuration in both, ``none`` included
        at share 1.
    """
    import pandas as pd

    acc = pd.DataFrame(_result_rows(accuracy_rows))[["method", "budget", "accuracy"]]
    eff = pd.DataFrame(list(efficiency_rows))
    missing = {"method", "budget", "prefill_flops", "full_layers"} - set(eff.columns)
    if missing:
        raise ValueError(f"efficiency rows need {sorted(missing)}")
    eff = eff.groupby(["method", "budget"], as_index=False, dropna=False)[["prefill_flops", "full_layers"]].mean()
    full = eff.loc[eff["method"] == "none", "prefill_flops"]
    if full.empty:
        raise ValueError("efficiency rows need a 'none' row (the unpruned prefill)")
    eff["flops_share"] = eff["prefill_flops"] / float(full.iloc[0])
    none = eff["method"] == "none"
    eff.loc[none, "budget"] = acc.loc[acc["method"] == "none", "budget"].max() if (acc["method"] == "none").any() else None
    out = acc.merge(eff[["method", "budget", "flops_share", "full_layers"]], on=["method", "budget"])
    out.insert(2, "where", [where(m) for m in out["method"]])
    return out.reset_index(drop=True)


def compute_panel(frame, ax=None, title: str | None = None):
    """Accuracy (points) against the share of the unpruned prefill FLOPs, one line per method, the
    families told apart by marker; ``frame`` from :func:`compute_frame`. The unpruned model is the
    star at share 1. Returns the axes."""
    import matplotlib.pyplot as plt

    from .plots import method_colours

    ax = ax or plt.subplots(figsize=(7.5, 4.2))[1]
    markers = {WHERE["projector"]: "o", WHERE["vision"]: "s", WHERE["llm"]: "^"}
    methods = [m for m in dict.fromkeys(frame["method"]) if m != "none"]
    colours = method_colours(methods)
    for m in methods:
        rows = frame[frame["method"] == m].sort_values("flops_share")
        ax.plot(rows["flops_share"], 100 * rows["accuracy"], marker=markers.get(rows["where"].iloc[0], "o"),
                color=colours[m], label=f"{m} ({rows['where'].iloc[0]})")
    full = frame[frame["method"] == "none"]
    if not full.empty:
        ax.plot(full["flops_share"], 100 * full["accuracy"], marker="*", markersize=14, color="black",
                linestyle="none", label="none (every token)")
    ax.set_xlabel("language-model prefill FLOPs, share of the unpruned prefill")
    ax.set_ylabel("accuracy (%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return ax


def visionzip_panel(image, result, grid: tuple[int, int], ax=None, title: str | None = None):
    """What VisionZip made of one image: its dominant patches (white outline) and, coloured, the
    patches each contextual token absorbed (one colour per merged token, its target patch marked
    with a dot). ``result``: the :class:`~eadp_lab.methods.base.PruneResult` of ``visionzip`` on a
    single-view image (``extra["dominant"]``, ``extra["absorbed_by"]``: ``(1, M)`` per patch left
    after the dominant ones, the contextual token it joined). Returns the axes."""
    import matplotlib.pyplot as plt
    import numpy as np

    from .plots import image_panel

    H, W = grid
    ax = image_panel(image, ax=ax, title=title)
    h, w = np.asarray(image).shape[:2]
    sy, sx = h / H, w / W
    dominant = result.extra["dominant"][0][0].cpu()  # (dominant - 1,) patch indices
    absorbed = result.extra["absorbed_by"][0][0].cpu()  # (M,) contextual token per remaining patch
    taken = torch.zeros(H * W, dtype=torch.bool)
    taken[dominant] = True
    remaining = torch.nonzero(~taken).flatten()  # the patches that were not dominant, in order
    targets = result.picks[0, len(dominant):].cpu()
    cmap = plt.get_cmap("tab10")
    overlay = np.zeros((H, W, 4))
    for patch, token in zip(remaining.tolist(), absorbed.tolist()):
        overlay[patch // W, patch % W] = (*cmap(token % 10)[:3], 0.55)
    ax.imshow(overlay, extent=(0, w, h, 0), interpolation="nearest")
    for patch in dominant.tolist():
        r, c = divmod(patch, W)
        ax.add_patch(plt.Rectangle((c * sx, r * sy), sx, sy, fill=False, edgecolor="white", linewidth=1.2))
    for patch in targets.tolist():
        if patch >= 0:
            r, c = divmod(patch, W)
            ax.plot((c + 0.5) * sx, (r + 0.5) * sy, "o", color="black", markersize=3)
    return ax


def layer_counts_panel(counts: dict, full: int, ax=None):
    """Visual tokens each decoder layer sees, one step line per method; ``counts``: ``{method:
    [tokens seen by layer 0, 1, ...]}`` (a vision or projector method sees its budget in every layer),
    ``full``: the image's tokens before pruning. Returns the axes."""
    import matplotlib.pyplot as plt

    from .plots import method_colours

    ax = ax or plt.subplots(figsize=(6, 3.4))[1]
    colours = method_colours(list(counts))
    for m, per_layer in counts.items():
        layers = list(range(len(per_layer)))
        ax.step(layers + [len(per_layer)], list(per_layer) + [per_layer[-1]], where="post", color=colours[m],
                label=m, linewidth=2)
    ax.axhline(full, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("visual tokens seen")
    ax.set_xticks(range(max(len(v) for v in counts.values())))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return ax


def comparison_figures(table) -> dict:
    """The values chapter 04's prose quotes from :func:`comparison_table`: per lab budget ``b``
    (``field_best_<i>``, ``field_eadp_rank_<i>`` for the i-th budget, largest first: the best method
    and EADP's rank among the methods shown), ``field_budgets`` (the lab budgets and the paper
    budgets they stand beside, a sentence), and the rank agreement of the lab with Table 1 at each
    paired budget over the methods both report (``field_rank_agreement``: Spearman's rho and its
    permutation p per budget, a sentence; :func:`eadp_lab.studies.rank_correlation`). ``table``
    ``None`` (no long run): every key, the lab budgets 64/28/14 assumed, "not measured"."""
    from .studies import rank_correlation

    if table is None:
        out = {f"field_{k}_{i}": "not measured" for k in ("best", "eadp_rank") for i in range(3)}
        return out | {"field_questions": 0, "field_unpruned": math.nan, "field_budgets": "not measured",
                      "field_rank_agreement": "not measured"}
    labs = [c for c in table.columns if c.startswith("lab ")]
    papers = [c for c in table.columns if c.startswith("paper ")]
    out = {"field_questions": int(table.attrs.get("questions", 0)), "field_unpruned": float(table.attrs["unpruned"]),
           "field_budgets": ", ".join(f"{lab.split()[1]} beside {paper.split()[1]}" for lab, paper in zip(labs, papers))}
    agreement = []
    for i, (lab, paper) in enumerate(zip(labs, papers)):
        column = table[lab].dropna().sort_values(ascending=False)
        out[f"field_best_{i}"] = f"{column.index[0]} ({100 * column.iloc[0]:.1f}% of the unpruned accuracy)"
        out[f"field_eadp_rank_{i}"] = (f"{list(column.index).index('eadp') + 1} of {len(column)}"
                                       if "eadp" in column.index else "not run")
        both = table[[lab, paper]].dropna()
        rho = rank_correlation(both[lab], both[paper]) if len(both) >= 3 else {"rho": math.nan, "p": math.nan, "n": 0}
        agreement.append(f"{lab.split()[1]} tokens: rho {rho['rho']:+.2f} over {len(both)} methods (p {rho['p']:.2f})"
                         if len(both) >= 3 else f"{lab.split()[1]} tokens: fewer than three methods in both")
    out["field_rank_agreement"] = "; ".join(agreement)
    return out


def compute_sentence(frame, budget: int) -> str:
    """At ``budget``, each method's accuracy and share of the unpruned prefill FLOPs (``frame`` from
    :func:`compute_frame`), most accurate first: ``"pyramiddrop 81.5% at 41% of the FLOPs, ..."``."""
    rows = frame[frame["budget"] == budget].sort_values("accuracy", ascending=False)
    if rows.empty:
        return f"no configuration at {budget} tokens was measured in both benches"
    return ", ".join(f"{r.method} {100 * r.accuracy:.1f}% at {100 * r.flops_share:.0f}% of the FLOPs"
                     + (f" ({r.full_layers:g} layer{'s' if r.full_layers != 1 else ''} with every token)"
                        if r.full_layers else "")
                     for r in rows.itertuples())
