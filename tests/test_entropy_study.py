"""Chapter 02's keep-ratio reading (eadp_lab.studies.EntropyStudy): the weights each keep ratio
gives the kept words, and what the ratio does to the kept tokens, equal the direct measurements."""

import pytest

from eadp_lab import guidance as gd
from eadp_lab import studies
from eadp_lab.world import sample


@pytest.fixture(scope="module")
def study(lab):
    config = lab.settings("eadp")[1]
    records = sample("heldout", 6, seed=5, grid=lab.grid)
    rhos = sorted({0.1, config.entropy_keep_ratio, 1.0})
    return lab, records, config, studies.entropy_study(lab, records, config, [config.entropy_temperature], rhos,
                                                       budget=16, progress=False)


def test_weights_are_the_filters_negative_entropy_weights_per_keep_ratio(study):
    lab, records, config, s = study
    assert len(s.weights) == len(records) * s.weights.rho.nunique()
    row = s.weights[(s.weights.record == 2) & (s.weights.rho == 1.0)].iloc[0]
    w = gd.filtered_words(lab.prune_inputs(records[2].image, records[2].question.text),
                          config.replace(entropy_keep_ratio=1.0))
    kept = w["weight"][w["kept"]]
    assert row["kept words"] == int(w["kept"].sum()) == len(records[2].question.tokens)  # rho 1 keeps every word
    assert row["top weight"] == pytest.approx(float(kept.max()))
    assert 1.0 <= row["effective words"] <= row["kept words"]
    assert (s.weights[s.weights.rho == 0.1]["effective words"] == 1.0).all()  # short questions: one word kept


def test_rho_effect_reads_the_kept_sets_of_one_aggregation(study):
    _, _, config, s = study
    effect = s.rho_effect(config.aggregation, config.similarity_sign)
    rows = s.kept[(s.kept.positions == "content (paper)") & (s.kept.aggregation == config.aggregation)
                  & (s.kept.sign == config.similarity_sign)]
    assert effect["recall"].to_dict() == pytest.approx(rows.groupby("rho").recall.mean().to_dict())
    assert effect["span"] == pytest.approx(effect["recall"].max() - effect["recall"].min())
    assert effect["n"] == rows.record.nunique() and 0 <= effect["changed"] <= effect["n"]
    assert effect["gap"]["low"] <= effect["gap"]["gap"] <= effect["gap"]["high"]
    with pytest.raises(ValueError, match="no kept sets"):
        s.rho_effect("top_k", config.similarity_sign)  # the study measures the preset's and the mean only


def test_rho_effect_with_the_same_recall_at_every_keep_ratio_compares_the_ends(study):
    """A sample too small to move the recall (the chapter's smoke size) still gives a paired gap: the
    two ends of the keep-ratio range, level."""
    import dataclasses

    _, _, config, s = study
    flat = s.kept.assign(recall=0.5)
    effect = dataclasses.replace(s, kept=flat).rho_effect(config.aggregation, config.similarity_sign)
    assert (effect["low_rho"], effect["high_rho"]) == (0.1, 1.0) and effect["span"] == 0
    assert effect["gap"]["gap"] == 0 and effect["gap"]["verdict"] == "no clear difference"


def test_paired_gap_refuses_one_label_twice():
    import pandas as pd

    with pytest.raises(ValueError, match="two different rho labels"):
        studies.paired_gap(pd.DataFrame({"record": [0], "rho": ["1"], "recall": [1.0]}), "rho", "recall", "1", "1")
