"""The chapters' measurement passes (eadp_lab.studies) on a few lab questions: each row equals
the measurement made directly, and bad arguments fail before any work."""

import math

import numpy as np
import pytest
import torch

from eadp_lab import guidance as gd
from eadp_lab import studies
from eadp_lab.world import sample


@pytest.fixture(scope="module")
def records(lab):
    return sample("heldout", 8, seed=5, grid=lab.grid)


def _methods(lab):
    return {name: lab.settings(name, {"similarity_sign": 1.0}) for name in ("eadp", "eadp-noentropy", "eadp-topk", "topk")}


def test_failure_study_rows_are_the_direct_measurements(lab, records):
    methods = _methods(lab)
    study = studies.failure_study(lab, records, methods, budget=16, budgets=[8, 16], top_k=8,
                                  curve_methods=("topk", "eadp"), progress=False)
    named = [i for i, r in enumerate(records) if gd.named_objects(r.question)]
    assert sorted(study.maps.record.unique()) == named
    assert (study.maps.groupby("record").guidance.apply(tuple) == studies.GUIDANCE_LABELS).all()
    i = named[0]
    r = records[i]
    inputs = lab.prune_inputs(r.image, r.question.text)
    masks = gd.object_masks(r.coverage)
    target = gd.union_mask(masks, gd.named_objects(r.question))
    row = study.maps[(study.maps.record == i) & (study.maps.guidance == "global (pooled text)")].iloc[0]
    assert row.top_share == gd.top_share(gd.guidance_maps(inputs, methods["eadp"][1])["global"], target, 8)
    assert row.chance == pytest.approx(float(target.float().mean()))
    direct = {d["method"]: d for d in gd.compare_kept(inputs, masks, gd.named_objects(r.question), methods, 16)}
    for _, k in study.kept[(study.kept.record == i) & (study.kept.budget == 16)].iterrows():
        assert k.recall == pytest.approx(direct[k.method]["recall"]) and k.kept == 16
    # the budget curve: two-object questions only, the curve methods only
    extra = study.kept[study.kept.budget == 8]
    assert extra.two_objects.all() and set(extra.method) <= {"topk", "eadp"}
    assert set(extra.record) == set(study.kept[study.kept.two_objects].record)
    assert study.words.group.isin(gd.GROUPS).all() and study.words.kept_by_filter.any()
    assert (study.words.entropy <= math.log(lab.num_visual_tokens) + 1e-4).all()


def test_failure_study_needs_its_methods(lab, records):
    methods = _methods(lab)
    with pytest.raises(ValueError, match="eadp-noentropy"):
        studies.failure_study(lab, records, {"eadp": methods["eadp"]}, 16, progress=False)
    with pytest.raises(ValueError, match="pool"):
        studies.failure_study(lab, records, methods, 16, progress=False)  # "pool" is a default curve method


def test_entropy_study_covers_every_sign_temperature_and_ratio(lab, records):
    config = lab.settings("eadp")[1]
    tau, rho = config.entropy_temperature, config.entropy_keep_ratio
    taus, rhos = sorted({1.0, tau}), sorted({0.5, rho})
    study = studies.entropy_study(lab, records[:4], config, taus, rhos, budget=16, progress=False)
    assert set(study.entropy.sign) == {1.0, -1.0} and set(study.entropy.tau) == set(taus)
    assert (study.entropy[study.entropy.tau != tau].group != "padding").all()  # padding only at the preset's tau
    assert study.filter["content share"].between(0, 1).all()
    assert set(study.filter[study.filter.tau == tau].rho) == set(rhos)
    assert study.pointing.hit.isin([0.0, 1.0]).all() and len(study.pointing)
    assert set(study.kept.positions) == {"content (paper)", "all (published)"}
    assert len(study.top_weight) == 4 and all(0 < w <= 1 for w in study.top_weight)
    with pytest.raises(ValueError, match="must be among"):
        studies.entropy_study(lab, records[:1], config, [1.0], rhos, 16, progress=False)


def test_video_and_crop_studies_keep_the_budget_of_every_rule(lab):
    from eadp_lab import preset
    from eadp_lab.world import sample_clips, sample_multicrop

    video = preset("llava-video", faithful=True, similarity_sign=1.0)
    rules = {"uniform": video, "dynamic": video.replace(normalisation="per_image", allocation="largest_remainder")}
    clips = sample_clips("val", 2, seed=0, grid=lab.grid)
    results, frames = studies.video_study(lab, clips, rules, [8], frame_budget=8, progress=False)
    assert len(results) == 2 * 2 and set(results.rule) == set(rules)
    n_frames = clips[0].frames.shape[0]
    assert (results.kept == 8 * n_frames).all()
    if len(frames):
        assert (frames.groupby(["clip", "rule"])["tokens given to frame"].sum() == 8 * n_frames).all()
        assert (frames[frames.rule == "uniform"]["tokens given to frame"] == 8).all()
    anyres = preset("llava-1.6-anyres", faithful=True, similarity_sign=1.0)
    images = sample_multicrop("val", 2, seed=0, grid=lab.grid, layout=(2, 2))
    crops = studies.crop_study(lab, images, {"floor": anyres}, [8], progress=False)
    assert crops["tokens to crops with asked objects"].between(0, 1).all()
    assert set(crops.image) <= {rec.index for rec in images}


def test_rank_correlation_by_hand():
    x = np.arange(10.0)
    up, down = studies.rank_correlation(x, x ** 3), studies.rank_correlation(x, -x)
    assert up["rho"] == pytest.approx(1.0) and down["rho"] == pytest.approx(-1.0) and up["n"] == 10
    assert up["p"] == pytest.approx(1 / 20_001)  # no re-pairing of 10 values in 20,000 matches it
    ties = studies.rank_correlation([1, 2, 3, 4], [5, 5, 7, 7])  # average ranks 1.5 1.5 3.5 3.5
    assert ties["rho"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1.5, 1.5, 3.5, 3.5])[0, 1])
    # three values: 2 of their 6 pairings reach |rho| = 1, so the permutation p-value is about 1/3
    assert studies.rank_correlation([1, 2, 3], [1, 2, 3])["p"] == pytest.approx(1 / 3, abs=0.02)
    assert math.isnan(studies.rank_correlation([1, 2, 3], [4, 4, 4])["rho"])
    assert math.isnan(studies.rank_correlation([1, 2], [1, 2])["p"])
    with pytest.raises(ValueError, match="pair up"):
        studies.rank_correlation([1, 2, 3], [1, 2])


def test_paired_gap_by_hand():
    import pandas as pd

    rows = [{"record": r, "method": m, "recall": v}
            for r, (x, y) in enumerate([(0.9, 0.5), (0.8, 0.4), (0.7, 0.5), (0.6, 0.6)]) for m, v in (("a", x), ("b", y))]
    rows.append({"record": 9, "method": "a", "recall": 0.0})  # unpaired: left out
    gap = studies.paired_gap(pd.DataFrame(rows), "method", "recall", "a", "b")
    assert gap["n"] == 4 and gap["a_better"] == 3 and gap["b_better"] == 0
    assert gap["gap"] == pytest.approx(0.25) and gap["a"] == pytest.approx(0.75)
    assert gap["se"] == pytest.approx(np.std([0.4, 0.4, 0.2, 0.0], ddof=1) / 2)
    assert gap["verdict"] == "higher"
    flipped = studies.paired_gap(pd.DataFrame(rows), "method", "recall", "b", "a")
    assert flipped["verdict"] == "lower" and flipped["gap"] == pytest.approx(-0.25)
    noisy = pd.DataFrame([{"record": r, "method": m, "recall": v} for r, (x, y) in enumerate([(1, 0), (0, 1), (1, 1)])
                          for m, v in (("a", x), ("b", y))])
    assert studies.paired_gap(noisy, "method", "recall", "a", "b")["verdict"] == "no clear difference"
    with pytest.raises(ValueError, match="'c'"):
        studies.paired_gap(noisy, "method", "recall", "a", "c")


def test_paired_gap_calls_clear_what_its_95_interval_separates_from_zero():
    """One definition of "clear" in the book: the 95% interval (gap -/+ 1.96 se) excludes 0.
    Three wins in ten pairs sit at 1.964 standard errors: clear, though within two."""
    import pandas as pd

    frame = pd.DataFrame([{"record": r, "method": m, "hit": v} for r in range(10)
                          for m, v in (("a", int(r < 3)), ("b", 0))])
    gap = studies.paired_gap(frame, "method", "hit", "a", "b")
    assert 1.96 < gap["gap"] / gap["se"] < 2
    assert gap["low"] == pytest.approx(gap["gap"] - 1.96 * gap["se"]) and gap["low"] > 0
    assert gap["high"] == pytest.approx(gap["gap"] + 1.96 * gap["se"])
    assert gap["verdict"] == "higher"
