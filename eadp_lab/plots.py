"""The notebooks' shared figures: one style, and the plots a reader would rather look at than read.

Every function draws on a matplotlib ``Axes`` it is given (or a new one) and returns it; no
function computes a method (that is the package's job). matplotlib and seaborn are imported
when a function runs, not at ``import eadp_lab``. Used by every notebook.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "set_style",
    "PALETTE",
    "METHOD_ORDER",
    "image_panel",
    "grid_heatmap",
    "kept_overlay",
    "token_bars",
    "token_maps",
    "curves",
    "legend_below",
    "plain_log_axis",
    "accuracy_vs_budget",
    "spacing_panels",
    "type_gap_panels",
    "replication_panel",
]

METHOD_ORDER = ["none", "eadp", "eadp-global", "eadp-noentropy", "eadp-topk", "topk", "topk_dense", "random",
                "pool", "divprune", "cdpruner", "greedy", "dpp", "max-min", "fastv", "pyramiddrop", "sparsevlm",
                "visionzip", "dart", "hiprune"]
PALETTE = "colorblind"


def _plt():
    import matplotlib.pyplot as plt

    return plt


def set_style(context: str = "notebook") -> None:
    """seaborn's whitegrid theme, the colour-blind palette and compact figures for every chapter."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context=context, palette=PALETTE,
                  rc={"figure.figsize": (6.4, 3.6), "figure.dpi": 100, "axes.titlesize": "medium",
                      "image.cmap": "magma", "axes.grid": True})


def method_colours(names) -> dict:
    """A stable colour per method name across every figure of the book (grey for a name not in
    :data:`METHOD_ORDER`)."""
    import seaborn as sns

    colours = sns.color_palette(PALETTE) + sns.color_palette("dark")  # 20 distinct colours: past the first
    return {n: colours[METHOD_ORDER.index(n) % len(colours)] if n in METHOD_ORDER else "0.3" for n in names}


def _ax(ax, figsize=(3.2, 3.2)):
    if ax is None:
        _, ax = _plt().subplots(figsize=figsize)
    return ax


def _np(x):
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def image_panel(image, ax=None, title: str | None = None):
    """Show an ``(H, W, 3)`` uint8 image without axes."""
    ax = _ax(ax)
    ax.imshow(_np(image).astype(np.uint8) if _np(image).dtype != np.uint8 else _np(image))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def grid_heatmap(values, grid: tuple[int, int], image=None, ax=None, title: str | None = None, alpha: float = 0.65,
                 cmap: str = "magma", colorbar: bool = True, label: str = "bright = high", vmin=None, vmax=None):
    """A token score ``(N,)`` laid out on its ``(H, W)`` grid, over the image if given, with a
    colour bar (``label``) unless ``colorbar=False``; ``vmin``/``vmax`` fix the scale (e.g. shared
    across panels)."""
    ax = _ax(ax)
    H, W = grid
    v = _np(values)[: H * W].reshape(H, W)
    if image is not None:
        img = _np(image)
        ax.imshow(img.astype(np.uint8))
        extent = (0, img.shape[1], img.shape[0], 0)
        im = ax.imshow(v, cmap=cmap, alpha=alpha, extent=extent, interpolation="nearest", vmin=vmin, vmax=vmax)
    else:
        im = ax.imshow(v, cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    if colorbar:
        bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        bar.ax.tick_params(labelsize="x-small")
        if label:
            bar.set_label(label, fontsize="x-small")
    return ax


def kept_overlay(image, keep_mask, grid: tuple[int, int], ax=None, title: str | None = None, dim: float = 0.25):
    """The image with dropped tokens' patches darkened: what the language model still sees."""
    ax = _ax(ax)
    img = _np(image).astype(np.float32)
    H, W = grid
    keep = _np(keep_mask)[: H * W].reshape(H, W).astype(bool)
    ph, pw = img.shape[0] / H, img.shape[1] / W
    ys = np.minimum((np.arange(img.shape[0]) / ph).astype(int), H - 1)
    xs = np.minimum((np.arange(img.shape[1]) / pw).astype(int), W - 1)
    mask = keep[ys][:, xs]
    shown = np.where(mask[..., None], img, img * dim)
    ax.imshow(shown.astype(np.uint8))
    ax.set_axis_off()
    ax.set_title(title if title is not None else f"{int(keep.sum())} of {H * W} tokens kept")
    return ax


def token_bars(tokens: list[str], values, kept=None, ax=None, ylabel: str = "spatial entropy (nats)",
               title: str | None = None, floor: float = 0.03):
    """One bar per text token (e.g. its spatial entropy), the tokens the filter kept in colour.

    A value of (about) zero would draw no bar and hide its colour, yet a zero entropy is the most
    peaked word of all: every bar is drawn at least ``floor`` of the axis height tall, and each
    bar below that is labelled with its value ("0.00"), so a kept zero-entropy word shows both
    its colour and its value. Non-finite values (masked positions) get no bar.
    """
    import seaborn as sns

    ax = _ax(ax, figsize=(max(4.0, 0.45 * len(tokens)), 3.0))
    v = _np(values).astype(float)
    finite = np.isfinite(v)
    kept_set = set(int(k) for k in _np(kept).ravel()) if kept is not None else set()
    base, hi = sns.color_palette(PALETTE)[7], sns.color_palette(PALETTE)[0]
    colours = [hi if i in kept_set else base for i in range(len(tokens))]
    top = float(np.max(np.abs(v[finite]))) if finite.any() else 1.0
    least = floor * (top if top > 0 else 1.0)
    small = finite & (np.abs(v) < least)
    heights = np.where(small, least, v)
    x = np.arange(len(tokens))
    ax.bar(x[finite], heights[finite], color=[c for c, f in zip(colours, finite) if f])
    for i in np.flatnonzero(small):
        ax.annotate(f"{v[i]:.2f}", (x[i], least), xytext=(0, 2), textcoords="offset points", ha="center",
                    va="bottom", fontsize="x-small", color=colours[i])
    ax.set_xticks(x, tokens, rotation=60, ha="right")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax


def token_maps(maps, tokens: list[str], grid: tuple[int, int], image=None, columns: int = 6, size: float = 1.7,
               highlight=None, label: str = "bright = high (one scale for every panel)"):
    """Small multiples: one map over the grid per text token (e.g. its spatial distribution),
    all on one colour scale with one colour bar, so a diffuse map looks flat beside a peaked one."""
    plt = _plt()
    n = len(tokens)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns + 0.8, size * rows + 0.3), squeeze=False)
    marked = set(int(k) for k in _np(highlight).ravel()) if highlight is not None else set()
    values = _np(maps)
    vmin, vmax = float(np.nanmin(values[:n])), float(np.nanmax(values[:n]))
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        grid_heatmap(values[i], grid, image=image, ax=ax, colorbar=False, vmin=vmin, vmax=vmax)
        ax.set_title(("* " if i in marked else "") + tokens[i], fontsize=9)
    fig.tight_layout()
    if n:
        bar = fig.colorbar(axes.flat[0].images[-1], ax=axes.ravel().tolist(), fraction=0.02, pad=0.02)
        bar.ax.tick_params(labelsize="x-small")
        bar.set_label(label, fontsize="x-small")
    return fig


def legend_below(ax, ncol: int | None = None, handles=None, labels=None, **kwargs):
    """The axes' legend under its tick labels and x label, outside the plotting area, so that it
    covers no curve, bar or label (``tight_layout`` makes room for it); returns the legend
    (remove it with ``ax.get_legend().remove()`` when a neighbouring panel carries the same one)."""
    from matplotlib.transforms import ScaledTranslation

    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ncol = ncol or max(1, min(4, len(handles)))
    fig = ax.figure
    below = ax.xaxis.get_tightbbox(fig.canvas.get_renderer())  # tick labels and x label, in pixels
    drop = (ax.get_window_extent().y0 - below.y0) / fig.dpi + 0.05 if below is not None else 0.4  # inches
    options = {"frameon": False, "fontsize": "small", "loc": "upper center", "bbox_to_anchor": (0.5, 0.0),
               "bbox_transform": ax.transAxes + ScaledTranslation(0, -drop, fig.dpi_scale_trans)}
    options.update(kwargs)
    return ax.legend(handles, labels, ncol=ncol, **options)


def plain_log_axis(ax, ticks=None, base: float = 10):
    """A logarithmic x axis labelled with plain numbers (16, 32, 64; not 2⁴, 2⁵, 2⁶): at ``ticks``
    when given (e.g. the budgets measured), else at the powers of ``base``."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    ax.set_xscale("log", base=base)
    if ticks is not None:
        ax.set_xticks(sorted({float(t) for t in ticks}))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    return ax


def curves(x, series: dict, ax=None, xlabel: str = "budget (tokens)", ylabel: str = "", title: str | None = None,
           logx: bool = False):
    """Lines ``series[name] = y`` against ``x``, one colour per method name, the legend under the
    axes (:func:`legend_below`); ``logx``: a log axis labelled with plain numbers."""
    ax = _ax(ax, figsize=(5.0, 3.4))
    colours = method_colours(series)
    for name, y in series.items():
        ax.plot(_np(x), _np(y), marker="o", ms=3.5, label=name, color=colours[name])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        plain_log_axis(ax)
    if title:
        ax.set_title(title)
    legend_below(ax)
    return ax


VALUE_LABELS = {"accuracy": "accuracy", "named_reached": "named objects all reached",
                "named_recall": "share of named objects' tokens kept"}


def accuracy_vs_budget(results: list[dict], ax=None, title: str | None = None, full_tokens: int | None = None,
                       value: str = "accuracy"):
    """``value`` against kept tokens per method, from ``bench accuracy`` rows
    (``{"method", "budget", value}``); ``none`` is drawn as a horizontal line. ``value`` is
    ``"accuracy"`` (answers) or a selection measure such as ``"named_reached"``; rows without
    it are skipped."""
    ax = _ax(ax, figsize=(5.6, 3.6))
    by_method: dict[str, list[tuple[int, float]]] = {}
    for row in results:
        if row.get(value) is not None:
            by_method.setdefault(row["method"], []).append((row["budget"], row[value]))
    colours = method_colours(by_method)
    for name in sorted(by_method, key=lambda n: METHOD_ORDER.index(n) if n in METHOD_ORDER else 99):
        pts = sorted(by_method[name])
        if name == "none":
            ax.axhline(pts[0][1], color=colours[name], ls="--", lw=1, label="none (all tokens)")
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, label=name, color=colours[name])
    plain_log_axis(ax, ticks=[b for name, pts in by_method.items() if name != "none" for b, _ in pts] or None, base=2)
    ax.set_xlabel("tokens kept per image" + (f" (of {full_tokens})" if full_tokens else ""))
    ax.set_ylabel(VALUE_LABELS.get(value, value))
    if title:
        ax.set_title(title)
    legend_below(ax)
    return ax


def accuracy_panels(results: list[dict], full_tokens: int | None = None, title: str | None = None):
    """Answers against budget and, when the rows carry it (lab questions), what was kept of the
    named objects (``named_reached``), side by side with one legend under both panels (outside
    the axes: it covers no curve); returns the figure."""
    plt = _plt()
    selection = any(r.get("named_reached") is not None for r in results)
    fig, axes = plt.subplots(1, 2 if selection else 1, figsize=(12 if selection else 7.5, 4.2), squeeze=False)
    accuracy_vs_budget([r for r in results if r.get("accuracy") is not None], ax=axes[0, 0],
                       full_tokens=full_tokens, title="answers")
    if selection:
        accuracy_vs_budget(results, ax=axes[0, 1], full_tokens=full_tokens, value="named_reached", title="what is kept")
        axes[0, 1].get_legend().remove()
    if selection:  # one legend, centred under both panels
        handles, labels = axes[0, 0].get_legend_handles_labels()
        axes[0, 0].get_legend().remove()
        fig.legend(handles, labels, loc="lower center", ncol=min(7, len(handles)), frameon=False, fontsize="small")
        rows = math.ceil(len(handles) / 7)
        if title:
            fig.suptitle(title)
        fig.tight_layout(rect=(0, (0.05 + 0.055 * rows) * 4.2 / fig.get_figheight(), 1, 1))
        return fig
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def spacing_panels(frame, correlations=None, tolerance: float = 0.02):
    """Renumbered minus original accuracy (points, with its 95% paired interval) against how
    spread out the kept tokens lie (mean distance to the nearest kept neighbour, patches), one
    panel per budget, one point per method (its colour and marker in the legend); the band is
    ``-/+ tolerance``. ``frame``: :func:`eadp_lab.evaluation.spacing_frame`; ``correlations``
    (optional, :func:`eadp_lab.evaluation.spacing_correlations`) puts each budget's rank
    correlation in its title. Returns the figure."""
    plt = _plt()
    budgets = list(dict.fromkeys(frame.index.get_level_values("budget")))
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.4 * len(budgets), 3.9), sharey=True, squeeze=False)
    methods = list(dict.fromkeys(frame.index.get_level_values("method")))
    colours, markers = method_colours(methods), {m: "osD^v<>ph*"[k % 10] for k, m in enumerate(methods)}
    for ax, budget in zip(axes[0], budgets):
        at = frame.xs(budget, level="budget")
        ax.axhspan(-100 * tolerance, 100 * tolerance, color="0.9", zorder=0)
        ax.axhline(0, color="0.5", lw=0.8)
        for method, r in at.iterrows():
            ax.errorbar(r.nearest, 100 * r.gap, yerr=[[100 * (r.gap - r.low)], [100 * (r.high - r.gap)]],
                        fmt=markers[method], ms=6, capsize=2, color=colours[method], label=method)
        title = f"{budget} tokens"
        if correlations is not None and budget in correlations.index:
            c = correlations.loc[budget]
            title += f": rank correlation {c.nearest_rho:+.2f} (p {c.nearest_p:.3f})"
        ax.set_title(title, fontsize="small")
        ax.set_xlabel("nearest kept neighbour (patches)")
    axes[0, 0].set_ylabel("renumbered minus original (points)")
    axes[0, -1].legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return fig


def type_gap_panels(type_gap, tolerance: float = 0.02):
    """Renumbered minus original accuracy per question type (points), one heat-map panel per
    budget: a row per method, a column per type, each cell annotated, one diverging colour scale
    centred on 0 for every panel; cells within ``-/+ tolerance`` are greyed in the annotation.
    ``type_gap``: :func:`eadp_lab.evaluation.positions_type_gap`. Returns the figure."""
    import seaborn as sns

    plt = _plt()
    values = 100 * type_gap.drop(columns="all", errors="ignore")
    budgets = list(dict.fromkeys(values.index.get_level_values("budget")))
    limit = max(float(values.abs().max().max()), 100 * tolerance)
    fig, axes = plt.subplots(1, len(budgets), figsize=(0.75 * values.shape[1] * len(budgets) + 2.5,
                                                       0.42 * len(values) / len(budgets) + 1.6),
                             sharey=True, squeeze=False)
    for k, (ax, budget) in enumerate(zip(axes[0], budgets)):
        at = values.xs(budget, level="budget")
        sns.heatmap(at, ax=ax, cmap="RdBu_r", vmin=-limit, vmax=limit, center=0, annot=True, fmt="+.1f",
                    annot_kws={"fontsize": "x-small"}, cbar=k == len(budgets) - 1,
                    cbar_kws={"label": "renumbered minus original (points)"})
        for text, v in zip(ax.texts, at.to_numpy().ravel()):
            if abs(v) <= 100 * tolerance:
                text.set_color("0.45")
        ax.set_title(f"{budget} tokens", fontsize="small")
        ax.set_xlabel("question type")
        ax.set_ylabel("method" if k == 0 else "")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def replication_panel(first, second, tolerance: float = 0.02, labels=("first sample", "second sample")):
    """The renumbering gap of each method and budget on two samples of questions, one point per
    cell (x: the first sample, y: the second; points), coloured by method, a marker per budget.
    On the diagonal a cell moved alike in both; outside the shaded ``-/+ tolerance`` band of an
    axis it is beyond the tolerance in that sample (the darker square: within it in both).
    ``first``, ``second``: :func:`eadp_lab.evaluation.positions_gap` of each sample (the same
    methods and budgets). Returns the figure."""
    plt = _plt()
    a, b = (100 * g.stack() for g in (first, second))
    if list(a.index) != list(b.index):
        raise ValueError("the two samples must cover the same methods and budgets")
    methods = list(dict.fromkeys(a.index.get_level_values(0)))
    budgets = list(dict.fromkeys(a.index.get_level_values(1)))
    colours, markers = method_colours(methods), {k: "os^Dv"[i % 5] for i, k in enumerate(budgets)}
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    limit = max(float(max(a.abs().max(), b.abs().max())), 100 * tolerance) + 0.5
    ax.plot([-limit, limit], [-limit, limit], color="0.6", lw=0.8, zorder=0)
    ax.axvspan(-100 * tolerance, 100 * tolerance, color="0.88", alpha=0.6, lw=0, zorder=0)
    ax.axhspan(-100 * tolerance, 100 * tolerance, color="0.88", alpha=0.6, lw=0, zorder=0)
    for (method, budget), x in a.items():
        ax.scatter(x, b[(method, budget)], color=colours[method], marker=markers[budget], s=36)
    handles = ([plt.Line2D([], [], color=colours[m], marker="o", ls="", label=m) for m in methods]
               + [plt.Line2D([], [], color="0.3", marker=markers[k], ls="", label=f"{k} tokens") for k in budgets])
    ax.legend(handles=handles, frameon=False, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1))
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal",
           xlabel=f"{labels[0]}: renumbered minus original (points)",
           ylabel=f"{labels[1]}: renumbered minus original (points)")
    fig.tight_layout()
    return fig
