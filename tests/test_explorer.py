"""The explorer's widgets, driven from Python on the shipped lab models: every control redraws
the figure, and the kept set and the answer follow the controls; every registry method builds
and updates, the field's methods with their own settings widgets."""

import pytest
import torch


@pytest.fixture(scope="module")
def records():
    from eadp_lab.world import sample

    return sample("heldout", 3, seed=5, grid=None)


@pytest.fixture
def explorer(lab, records):
    import matplotlib

    matplotlib.use("Agg")
    from eadp_lab.explorer import Explorer

    return Explorer(lab, records, method="eadp", budget=32)


def _heatmap(figure):
    return figure.axes[1].images[-1].get_array().copy()


def test_controls_and_first_draw(explorer, lab, records):
    from eadp_lab import METHODS
    from eadp_lab.explorer import FIELD_KNOBS
    from eadp_lab.methods.settings import ABLATIONS

    own = {f"{m}_{f}" for m, fields in FIELD_KNOBS.items() for f in fields}
    assert set(explorer.controls) == {"question", "method", "budget", "alpha", "beta", "keep_ratio",
                                      "temperature"} | own
    assert set(explorer.controls["method"].options) == set(METHODS) | set(ABLATIONS)
    assert len(explorer.controls["question"].options) == len(records)
    assert explorer.redraws == 1 and explorer.figure is not None
    assert explorer.keep.shape == (lab.num_visual_tokens,) and int(explorer.keep.sum()) == 32
    assert explorer.result.importance is not None
    assert isinstance(explorer.answer.text, str) and isinstance(explorer.full_answer, str)
    assert "eadp" in repr(explorer)


def test_budget_slider_changes_the_kept_set(explorer):
    before = explorer.keep.clone()
    title = explorer.figure.axes[2].get_title()
    png = explorer.image.value
    assert png[:4] == b"\x89PNG"
    explorer.controls["budget"].value = 8
    assert explorer.image.value != png
    assert explorer.redraws == 2
    assert int(explorer.keep.sum()) == 8 and not torch.equal(before, explorer.keep)
    assert explorer.figure.axes[2].get_title() != title
    assert explorer.answer.record.items[0].tokens_after == 8


@pytest.mark.parametrize("name,value,field", [("alpha", 0.0, "alpha"), ("beta", 3.0, "beta"),
                                              ("keep_ratio", 1.0, "entropy_keep_ratio"),
                                              ("temperature", 1.0, "entropy_temperature")])
def test_knobs_reach_the_method(explorer, name, value, field):
    heat = _heatmap(explorer.figure)
    explorer.controls[name].value = value
    assert explorer.result.settings[field] == pytest.approx(value)
    assert explorer.redraws == 2
    if name in ("alpha", "beta"):  # the importance map itself changes
        assert not (abs(_heatmap(explorer.figure) - heat) < 1e-6).all()


def test_method_dropdown_and_ablations(explorer):
    explorer.controls["alpha"].value = 0.2
    explorer.controls["method"].value = "eadp-global"
    assert explorer.result.settings["alpha"] == 1.0  # the ablation's own override wins
    explorer.controls["method"].value = "pool"
    assert explorer.controls["alpha"].disabled and explorer.settings() is None
    assert explorer.result.method == "pool" and explorer.result.importance is None
    assert "no importance" in explorer.figure.axes[1].get_title()
    explorer.controls["method"].value = "random"
    assert explorer.result.method == "random" and int(explorer.keep.sum()) == 32
    explorer.controls["method"].value = "eadp"
    assert not explorer.controls["alpha"].disabled and explorer.result.settings["alpha"] == pytest.approx(0.2)


def test_question_picker(explorer, records):
    explorer.controls["question"].value = 2
    assert explorer.record is records[2]
    assert records[2].question.text in explorer.status.value
    assert records[2].question.text.split()[0] in explorer.figure.texts[0].get_text()


def test_set_redraws_once_and_matches_lab(explorer, lab, records):
    explorer.set(question=1, method="topk_dense", budget=12, alpha=0.7)
    assert explorer.redraws == 2
    expected = lab.keep(records[1].image, records[1].question.text, "topk_dense", 12, settings=explorer.settings())
    assert torch.equal(expected.keep_mask[0].cpu(), explorer.keep)
    with pytest.raises(ValueError, match="unknown controls"):
        explorer.set(gamma=1)


def test_bad_arguments(lab, records):
    from eadp_lab.explorer import Explorer

    with pytest.raises(ValueError, match="record"):
        Explorer(lab, [])
    with pytest.raises(ValueError, match="method"):
        Explorer(lab, records, method="nosuch")
    with pytest.raises(ValueError, match="budget"):
        Explorer(lab, records, budget=0)


# ---------------------------------------------------------------- the field's methods

def test_field_knobs_cover_the_field_methods():
    import dataclasses

    from eadp_lab import METHODS
    from eadp_lab.explorer import FIELD_KNOBS, NOT_OFFERED
    from eadp_lab.methods.settings import FIELD_METHODS

    assert set(FIELD_KNOBS) == set(FIELD_METHODS)
    for method, knobs in FIELD_KNOBS.items():
        fields = {f.name for f in dataclasses.fields(METHODS[method].settings)}
        assert set(knobs) <= fields
        # every field is either a widget or left out with a stated reason
        for field in fields - set(knobs):
            assert field in NOT_OFFERED or f"{method}.{field}" in NOT_OFFERED, (method, field)


@pytest.fixture(scope="module")
def field_explorers(lab, records):
    """One explorer per field method, built at budget 32 and updated once at budget 16."""
    import matplotlib

    matplotlib.use("Agg")
    from eadp_lab.explorer import Explorer
    from eadp_lab.methods.settings import FIELD_METHODS

    out = {}
    for method in FIELD_METHODS:
        explorer = Explorer(lab, records[:2], method=method, budget=32)
        first = (explorer.keep.clone(), explorer.visual_per_layer, explorer.tokens_seen)
        explorer.controls["budget"].value = 16
        out[method] = (explorer, first)
    return out


@pytest.mark.parametrize("method", ["visionzip", "hiprune", "fastv", "pyramiddrop", "dart", "sparsevlm"])
def test_field_method_builds_and_updates(field_explorers, lab, method):
    explorer, (first_keep, first_layers, first_seen) = field_explorers[method]
    N = lab.num_visual_tokens
    assert explorer.error is None and explorer.redraws == 2
    assert explorer.result.method == method and len(explorer.figure.axes) >= 3
    assert explorer.keep.shape == (N,)
    # only this method's settings widgets are shown
    for name, box in explorer._boxes.items():
        assert (box.layout.display != "none") == (name == method)
    assert explorer.caption.value and method in explorer.caption.value
    if explorer.stage == "llm":
        assert "last pruning step" in explorer.caption.value
        layers = explorer.visual_per_layer
        assert layers[0] == N and layers[-1] == explorer.tokens_seen and first_layers[-1] == first_seen
        assert int(explorer.keep.sum()) <= explorer.tokens_seen
        assert "per layer" in explorer.figure.axes[1].get_title()
    if method in ("fastv", "hiprune"):  # exact budgets
        assert int(first_keep.sum()) == 32 and int(explorer.keep.sum()) == 16
    if method == "pyramiddrop":  # the schedule's last stage keeps the budget
        assert first_layers[-1] == 32 and explorer.visual_per_layer[-1] == 16
        assert len(set(explorer.visual_per_layer)) == 4  # three stages on four layers
    if method == "dart":  # pivots + top-k per pivot, at most the budget
        assert int(first_keep.sum()) <= 32 and int(explorer.keep.sum()) <= 16
    if method == "sparsevlm":  # at most the budget table's counts, recycled tokens counted apart
        assert explorer.tokens_seen <= 16
    if method == "visionzip":  # [CLS] + dominant + contextual = the budget; the merges are drawn
        assert first_seen == 32 and explorer.tokens_seen == 16
        dominant, contextual = explorer._visionzip_split()
        assert 1 + dominant + contextual == 16
        assert "merged" in explorer.figure.axes[1].get_title()
        assert "[CLS]" in explorer.figure.axes[2].get_title() and "[CLS]" in explorer.status.value
    if method == "hiprune":
        assert "no score" in explorer.caption.value


def test_field_settings_reach_the_method(field_explorers):
    explorer, _ = field_explorers["fastv"]
    explorer.set(fastv_k=16)  # K = 16 of 32 falls on layer 2 of the lab LLaVA's 4
    assert explorer.result.settings["k"] == 16 and explorer.settings() == {"k": 16}
    assert explorer.visual_per_layer[:2] == [explorer.lab.num_visual_tokens] * 2
    assert "layer 2 of 4" in explorer.caption.value
    assert "fastv_k=16" in repr(explorer)
    explorer, _ = field_explorers["sparsevlm"]
    explorer.set(sparsevlm_merge=False)
    assert explorer.result.settings["merge"] is False
    assert explorer.tokens_seen == int(explorer.keep.sum())  # nothing recycled


def test_a_refused_setting_keeps_the_figure(field_explorers):
    explorer, _ = field_explorers["pyramiddrop"]
    figure, redraws = explorer.figure, explorer.redraws
    explorer.set(pyramiddrop_layers="8, 9")  # both fall on layer 1 of 4
    assert explorer.error and "strictly increasing" in explorer.error
    assert explorer.figure is figure and explorer.redraws == redraws and "cannot run" in explorer.status.value
    explorer.set(pyramiddrop_layers=(8, 16, 24))
    assert explorer.error is None and explorer.result.settings["layers"] == (8, 16, 24)
    assert explorer.settings() is None  # back at the defaults: nothing overridden
