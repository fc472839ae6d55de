"""The explorer's widgets, driven from Python on the shipped lab models: every control redraws
the figure, and the kept set and the answer follow the controls."""

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
    from eadp_lab.methods.settings import ABLATIONS

    assert set(explorer.controls) == {"question", "method", "budget", "alpha", "beta", "keep_ratio", "temperature"}
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
