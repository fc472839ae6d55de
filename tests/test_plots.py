"""The shared figures draw what they are given (headless)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from eadp_lab import plots  # noqa: E402


def test_figures_draw():
    plots.set_style()
    image = np.zeros((12, 12, 3), dtype=np.uint8)
    ax = plots.grid_heatmap(torch.arange(16.0), (4, 4), image=image, title="t")
    assert len(ax.images) == 2
    bar = ax.figure.axes[-1]  # every overlay says which end of its scale is high
    assert bar is not ax and bar.get_ylabel() == "bright = high"
    assert ax.images[1].get_clim() == (0.0, 15.0)
    shared = plots.grid_heatmap(torch.arange(16.0), (4, 4), colorbar=False, vmin=-1.0, vmax=30.0)
    assert shared.images[0].get_clim() == (-1.0, 30.0) and len(shared.figure.axes) == 1
    ax = plots.kept_overlay(image + 200, torch.tensor([True] * 4 + [False] * 12), (4, 4))
    assert ax.get_title() == "4 of 16 tokens kept"
    shown = ax.images[0].get_array()
    assert shown[0, 0, 0] == 200 and shown[-1, -1, 0] == 50  # dropped patches are darkened
    ax = plots.token_bars(["a", "b", "c"], torch.tensor([1.0, float("inf"), 0.5]), kept=[2])
    assert len(ax.patches) == 2  # the masked (inf) position has no bar
    assert not ax.texts  # no bar needs a value label
    maps = torch.rand(3, 16)
    fig = plots.token_maps(maps, ["a", "b", "c"], (4, 4), columns=2)
    assert len(fig.axes) == 5  # 2 x 2 panels and one colour bar
    assert {fig.axes[i].images[0].get_clim() for i in range(3)} == {(float(maps.min()), float(maps.max()))}
    ax = plots.curves([1, 2, 3], {"eadp": [1, 2, 3], "topk": [1, 1, 1]})
    assert len(ax.lines) == 2
    rows = [{"method": "none", "budget": 256, "accuracy": 0.9}, {"method": "eadp", "budget": 64, "accuracy": 0.8},
            {"method": "eadp", "budget": 14, "accuracy": 0.5}]
    fig = plots.accuracy_panels(rows, full_tokens=256, title="t")
    assert len(fig.axes) == 1  # no selection measure: answers only
    fig = plots.accuracy_panels([{**r, "named_reached": 0.5} for r in rows], full_tokens=256)
    assert len(fig.axes) == 2 and fig.axes[1].get_legend() is None
    assert fig.axes[0].get_legend() is None and len(fig.legends) == 1  # one legend for both panels, under them
    ax = plots.accuracy_vs_budget(rows, full_tokens=256)
    assert len(ax.lines) == 2
    rows[1]["named_reached"], rows[2]["named_reached"] = 0.75, 0.5  # "none" lacks it: not drawn
    ax = plots.accuracy_vs_budget(rows, value="named_reached")
    assert len(ax.lines) == 1 and list(ax.lines[0].get_ydata()) == [0.5, 0.75]
    assert ax.get_ylabel() == plots.VALUE_LABELS["named_reached"]


def test_spacing_panels_draw_one_panel_per_budget_with_its_correlation():
    import pandas as pd

    frame = pd.DataFrame({"method": ["eadp", "topk", "eadp", "topk"], "budget": [64, 64, 14, 14],
                          "gap": [0.01, -0.02, 0.03, -0.01], "low": [0.0, -0.03, 0.01, -0.02],
                          "high": [0.02, -0.01, 0.05, 0.0], "nearest": [1.5, 1.1, 2.5, 1.2]}).set_index(["method", "budget"])
    correlations = pd.DataFrame({"nearest_rho": [1.0, 1.0], "nearest_p": [0.3, 0.3]}, index=pd.Index([64, 14], name="budget"))
    fig = plots.spacing_panels(frame, correlations)
    assert [ax.get_title() for ax in fig.axes] == ["64 tokens: rank correlation +1.00 (p 0.300)",
                                                   "14 tokens: rank correlation +1.00 (p 0.300)"]
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == ["eadp", "topk"]
    # each point at its spacing and gap in points, with its interval
    points = [line.get_xydata().tolist() for line in fig.axes[1].lines]
    assert [[2.5, 3.0]] in points and [[1.2, -1.0]] in points


def test_type_gap_panels_draw_one_heat_map_per_budget_on_one_scale():
    import pandas as pd

    gap = pd.DataFrame({"method": ["eadp", "topk", "eadp", "topk"], "budget": [64, 64, 14, 14],
                        "colour": [0.01, -0.02, 0.03, -0.1], "exist": [0.05, 0.0, 0.12, 0.02],
                        "all": [0.03, -0.01, 0.07, -0.04]}).set_index(["method", "budget"])
    fig = plots.type_gap_panels(gap)
    heat = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in heat] == ["64 tokens", "14 tokens"]
    assert [t.get_text() for t in heat[1].texts] == ["+3.0", "+12.0", "-10.0", "+2.0"]  # points, "all" left out
    assert [t.get_text() for t in heat[0].get_xticklabels()] == ["colour", "exist"]
    # one scale: both panels run from -12 to +12 points; within 2 points the number is greyed
    assert {tuple(ax.collections[0].get_clim()) for ax in heat} == {(-12.0, 12.0)}
    assert heat[0].texts[0].get_color() == "0.45" and heat[1].texts[1].get_color() != "0.45"


def test_replication_panel_puts_one_point_per_cell_at_its_two_gaps():
    import pandas as pd

    first = pd.DataFrame({64: [0.01, -0.03], 14: [0.025, 0.0]}, index=pd.Index(["eadp", "topk"], name="method"))
    second = pd.DataFrame({64: [0.02, -0.01], 14: [0.03, -0.005]}, index=first.index)
    fig = plots.replication_panel(first, second)
    ax = fig.axes[0]
    points = sorted(tuple(round(v, 6) for v in c.get_offsets()[0]) for c in ax.collections)
    assert points == sorted([(1.0, 2.0), (-3.0, -1.0), (2.5, 3.0), (0.0, -0.5)])  # in points
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["eadp", "topk", "64 tokens", "14 tokens"]
    assert ax.get_xlim() == (-3.5, 3.5) and ax.get_ylim() == (-3.5, 3.5)  # one square scale, largest gap + 0.5
    with pytest.raises(ValueError, match="same methods and budgets"):
        plots.replication_panel(first, second.drop(index="topk"))


def _bbox(artist):
    fig = artist.figure
    fig.canvas.draw()
    return artist.get_window_extent(fig.canvas.get_renderer())


def test_zero_entropy_bars_stay_visible_with_their_colour_and_value():
    plots.set_style()
    ax = plots.token_bars(["red", "star", "?", "the"], torch.tensor([0.5, 0.0, 0.0, 3.0]), kept=[1, 2])
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 4 and min(heights) > 0  # a zero is drawn as a short bar, not as nothing
    assert heights[0] == 0.5 and heights[3] == 3.0  # other values are drawn as they are
    kept_colour = ax.patches[1].get_facecolor()
    assert ax.patches[2].get_facecolor() == kept_colour != ax.patches[0].get_facecolor()
    assert [t.get_text() for t in ax.texts] == ["0.00", "0.00"]  # and labelled with its value


def test_legends_sit_outside_the_axes_and_log_budgets_read_as_plain_numbers():
    plots.set_style()
    rows = [{"method": "none", "budget": 256, "accuracy": 0.9}] + [
        {"method": m, "budget": b, "accuracy": a} for m in ("eadp", "topk", "random")
        for b, a in ((14, 0.5), (28, 0.6), (64, 0.8))]
    ax = plots.accuracy_vs_budget(rows, full_tokens=256)
    ax.figure.tight_layout()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["14", "28", "64"]  # not 2^4 .. 2^6
    assert _bbox(ax.get_legend()).y1 <= _bbox(ax).y0  # under the axes: it covers no curve
    assert _bbox(ax.get_legend()).y1 <= _bbox(ax.xaxis.label).y0  # and under the x label
    ax = plots.curves([1, 10, 100], {"eadp": [1, 2, 3], "topk": [1, 1, 1]}, logx=True)
    ax.figure.canvas.draw()
    assert {t.get_text() for t in ax.get_xticklabels()} >= {"1", "10", "100"}
    assert _bbox(ax.get_legend()).y1 <= _bbox(ax).y0
    fig = plots.accuracy_panels([{**r, "named_reached": 0.5} for r in rows], full_tokens=256)
    legend = _bbox(fig.legends[0])
    assert all(legend.y1 <= _bbox(a).y0 for a in fig.axes)
