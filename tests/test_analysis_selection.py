"""The selection measurements of notebooks 03 and 05 (eadp_lab.analysis), on small cases."""

import math

import numpy as np
import pytest
import torch

from eadp_lab import PruneInputs, preset, prune
from eadp_lab.analysis import (
    allocation_study, approximation_ratios, asked_objects, brute_force_optima, brute_force_optimum,
    coverage_curves, coverage_fraction, greedy_guarantee, importance_share, kept_clusters, kept_spacing,
    moving_objects,
    online_bound, prefix_objective, random_facility_instances, row_object_masks, row_object_recall,
    row_objects_reached, stack_rows,
)
from eadp_lab.select import coverage, coverage_similarity, facility_location


def test_greedy_guarantee():
    assert greedy_guarantee(1) == 1.0
    assert math.isclose(greedy_guarantee(2), 0.75)
    assert greedy_guarantee(1000) > 1 - 1 / math.e > greedy_guarantee(10**6) - 1e-6
    with pytest.raises(ValueError):
        greedy_guarantee(0)


@pytest.mark.parametrize("kind", ["features", "uniform", "sparse"])
def test_instances_are_valid_facility_location(kind):
    r, K = random_facility_instances(5, 9, kind, seed=1)
    assert r.shape == (5, 9) and K.shape == (5, 9, 9)
    assert bool((r >= 0).all()) and bool((K >= 0).all()) and bool((K <= 1 + 1e-6).all())
    assert torch.allclose(torch.diagonal(K, dim1=1, dim2=2), torch.ones(5, 9))
    r2, K2 = random_facility_instances(5, 9, kind, seed=1)
    assert torch.equal(r, r2) and torch.equal(K, K2)
    with pytest.raises(ValueError, match="kind"):
        random_facility_instances(2, 4, "other")


def test_brute_force_optima_match_the_loop():
    r, K = random_facility_instances(6, 9, "sparse", seed=3)
    values, subsets = brute_force_optima(r, K, 3, chunk=7)  # several chunks
    for b in range(6):
        value, subset = brute_force_optimum(r[b], K[b], 3)
        assert math.isclose(float(values[b]), value, rel_tol=1e-12)
        assert tuple(subsets[b].tolist()) == subset


def test_approximation_ratios_respect_the_guarantee():
    r, K = random_facility_instances(40, 10, "uniform", seed=0)
    out = approximation_ratios(r, K, 3)
    assert out["ratio"].shape == (40,)
    assert bool((out["greedy"] <= out["optimum"] + 1e-9).all())
    assert bool((out["ratio"] >= out["bound"] - 1e-9).all())
    assert out["bound"] == greedy_guarantee(3)


def test_online_bound_bounds_the_optimum():
    r, K = random_facility_instances(20, 10, "sparse", seed=2)
    picks = facility_location(r, 3, similarity=K)
    bound = online_bound(r, K, picks)
    optimum, _ = brute_force_optima(r, K, 3)
    assert bool((bound >= optimum - 1e-9).all())
    assert bool((coverage(r, K, picks) <= optimum + 1e-9).all())
    # from an empty-ish selection too (unused slots)
    empty = torch.full((20, 3), -1)
    assert bool((online_bound(r, K, empty) >= optimum - 1e-9).all())


def test_coverage_fraction_reaches_one_with_every_token():
    g = torch.Generator().manual_seed(0)
    r, f = torch.rand(2, 12, generator=g), torch.randn(2, 12, 4, generator=g)
    K = coverage_similarity(f)
    picks = torch.arange(12).expand(2, 12)
    frac = coverage_fraction(r, K, picks)
    assert torch.allclose(frac[:, -1], torch.ones(2, dtype=torch.float64))
    assert torch.allclose(frac, prefix_objective(r, K, picks) / r.double().sum(-1, keepdim=True))


def _inputs(R=2, N=16, seed=0, grid=(4, 4)):
    g = torch.Generator().manual_seed(seed)
    return PruneInputs(
        features=torch.randn(R, N, 6, generator=g), image_embeds=torch.randn(R, N, 5, generator=g),
        text_embeds_seq=torch.randn(R, 1, 4, 5, generator=g), grid=grid,
    )


def test_coverage_curves_greedy_is_best_under_its_objective():
    inputs = _inputs()
    config = preset("paper")
    curves = coverage_curves(inputs, ["eadp", "topk", "divprune", "cdpruner", "random"], 6, config)
    assert curves["importance"].shape == (2, 16)
    for name in ("eadp", "topk", "divprune", "cdpruner", "random"):
        assert curves[name].shape == (2, 6)
        assert bool((curves[name] <= 1 + 1e-9).all())
    # greedy's first pick is the single best token under the objective
    assert bool((curves["eadp"][:, 0] >= curves["topk"][:, 0] - 1e-9).all())
    with pytest.raises(ValueError, match="merges"):
        coverage_curves(inputs, ["pool"], 4, config)


def test_importance_share_and_clusters():
    r = torch.tensor([[1.0, 1.0, 2.0, 0.0]])
    keep = torch.tensor([[True, False, True, False]])
    assert importance_share(r, keep).tolist() == [0.75]
    mask = torch.tensor([1, 1, 0, 0,
                         0, 0, 0, 1,
                         1, 0, 0, 1,
                         0, 0, 0, 0]).bool()
    assert kept_clusters(mask, (4, 4)) == 3
    assert kept_clusters(torch.zeros(16, dtype=torch.bool), (4, 4)) == 0
    assert kept_clusters(torch.ones(16, dtype=torch.bool), (4, 4)) == 1


def test_kept_spacing_by_hand():
    grid = [torch.arange(16)], [(4, 4)]
    block = kept_spacing(torch.tensor([5, 0, 4, 1]), *grid)  # a 2x2 block, given out of order
    gaps = np.array([1.0, 3.0, 1.0])  # 0 1 | 4 5 in sequence order
    assert block["nearest"] == pytest.approx(1.0) and block["gap_cv"] == pytest.approx(gaps.std() / gaps.mean())
    diagonal = kept_spacing(torch.tensor([0, 5, 10, 15]), *grid)  # evenly spaced along the sequence
    assert diagonal["nearest"] == pytest.approx(math.sqrt(2)) and diagonal["gap_cv"] == 0.0
    lone = kept_spacing(torch.tensor([3]), *grid)
    assert math.isnan(lone["nearest"]) and math.isnan(lone["gap_cv"])
    # two 2x2 rows (a base image and a crop) and a newline token (8) on no row: distances stay within a row
    two = kept_spacing(torch.tensor([0, 3, 4, 5, 8]), [torch.arange(4), torch.arange(4, 8)], [(2, 2), (2, 2)])
    assert two["nearest"] == pytest.approx((2 * math.sqrt(2) + 2) / 4)
    assert two["gap_cv"] == pytest.approx(0.5)  # gaps 3 1 1 3: mean 2, standard deviation 1


def test_stack_rows_matches_a_multirow_input():
    parts = [_inputs(1, 16, seed=s) for s in range(3)]
    stacked = stack_rows(parts)
    assert stacked.num_rows == 3 and stacked.rows_per_image == (3,) and stacked.grid == (4, 4)
    assert torch.equal(stacked.features[1], parts[1].features[0])
    assert torch.equal(stacked.text_embeds_seq, parts[0].text_embeds_seq)
    config = preset("llava-1.6-anyres", faithful=True)
    result = prune("eadp", stacked, 4, config)
    assert result.num_kept <= 12 and result.quotas.shape == (3,)
    two = stack_rows(parts, rows_per_image=(1, 2))
    assert two.num_images == 2 and two.text_embeds_seq.shape[0] == 2
    with pytest.raises(ValueError):
        stack_rows(parts, rows_per_image=(1, 1))
    with pytest.raises(ValueError):
        stack_rows([])


def test_stack_rows_ragged():
    a = _inputs(1, 16, seed=0)
    b = PruneInputs(features=torch.randn(1, 12, 6), image_embeds=torch.randn(1, 12, 5),
                    text_embeds_seq=torch.randn(1, 1, 4, 5), grid=(3, 4))
    stacked = stack_rows([a, b])
    assert stacked.ragged and stacked.grid == [(4, 4), (3, 4)] and stacked.num_tokens == 16
    result = prune("eadp", stacked, 4, preset("paper"))
    assert not bool(result.keep_mask[1, 12:].any())


def test_row_object_masks_and_recall():
    cov = np.zeros((2, 2, 2, 2), np.float32)  # 2 rows, 2 objects, 2x2 grid
    cov[0, 0, 0, 0] = 1.0
    cov[1, 0, 1, 1] = 0.9
    cov[1, 1, 0, 1] = 0.1  # below the threshold: keeps its best patch anyway
    masks = row_object_masks(cov)
    assert masks.shape == (2, 2, 4) and masks.dtype == torch.bool
    assert masks[0, 1].sum() == 0 and masks[1, 1, 1]
    keep = torch.tensor([[True, False, False, False], [False, False, False, False]])
    assert row_object_recall(keep, masks).tolist() == [0.5, 0.0]
    assert row_objects_reached(keep, masks).tolist() == [True, False]
    single = row_object_masks(cov[0])
    assert single.shape == (1, 2, 4)


def test_asked_and_moving_objects_on_the_world():
    from eadp_lab.world import direction, sample, sample_clips, sample_multicrop

    for rec in sample("val", 6, seed=0):
        objs = asked_objects(rec)
        assert all(0 <= k < len(rec.scene.objects) for k in objs)
        if rec.qtype in ("colour", "shape", "size"):
            assert rec.question.meta["target"] in objs
    for rec in sample_clips("val", 6, seed=0):
        moving = moving_objects(rec.clip)
        assert all(direction(rec.clip, k) != "still" for k in moving)
        objs = asked_objects(rec)
        if rec.qtype == "clip_direction":
            assert rec.question.meta["target"] in objs
        if rec.qtype == "clip_count" and rec.question.meta["motion"] == "moving":
            assert objs == moving
    rec = sample_multicrop("val", 1, seed=0)[0]
    assert all(0 <= k < len(rec.scene.objects) for k in asked_objects(rec))


def test_allocation_study_rules():
    parts = [_inputs(1, 16, seed=s) for s in range(3)]
    inputs = stack_rows(parts)
    cov = np.zeros((3, 1, 4, 4), np.float32)
    cov[2, 0, :2, :2] = 1.0
    masks = row_object_masks(cov)
    base = preset("llava-1.6-anyres", faithful=True)
    rows = allocation_study(inputs, masks, [0], 4, {r: base.replace(allocation=r)
                                                     for r in ("none", "floor", "largest_remainder")})
    by = {row["label"]: row for row in rows}
    assert by["none"]["quotas"] == [4, 4, 4] and by["none"]["kept"] == 12
    assert by["largest_remainder"]["kept"] == 12
    assert 10 <= by["floor"]["kept"] <= 12
    for row in rows:
        assert 0.0 <= row["recall"] <= 1.0 and 0.0 <= row["reached"] <= 1.0
    empty = allocation_study(inputs, masks, [], 4, {"none": base})
    assert math.isnan(empty[0]["recall"])


def test_coverage_curves_with_labelled_settings():
    inputs = _inputs()
    config = preset("paper")
    curves = coverage_curves(inputs, {"greedy": ("eadp", config), "topk": ("eadp", config.replace(selection="topk"))},
                             16, config)
    # Top-K on the same importance: the full budget keeps every token, as greedy does
    assert torch.allclose(curves["greedy"][:, -1], curves["topk"][:, -1])
    assert bool((curves["greedy"][:, 0] >= curves["topk"][:, 0] - 1e-9).all())


def test_tight_instance_brings_greedy_down_to_its_guarantee():
    """Greedy's worst case: coverage over the brute-force optimum close to 1 - (1 - 1/T)^T."""
    from eadp_lab import analysis, select

    for T in (2, 3):
        r, K = analysis.tight_instance(T)
        assert r.shape == (1, 2 * T + T * (T + 1)) and K.shape == (1, r.shape[1], r.shape[1])
        picks = select.facility_location(r, T, similarity=K)[0]
        assert sorted(picks.tolist()) == list(range(T))  # greedy takes the G tokens
        ratio = select.coverage(r, K, picks[None]).item() / analysis.brute_force_optimum(r[0], K[0], T)[0]
        assert abs(ratio - analysis.greedy_guarantee(T)) < 1e-3


def test_direction_of_a_sequence():
    from eadp_lab.analysis import direction

    assert direction([1, 2, 5]) == "grows" and direction([3, 2, 1]) == "falls"
    assert direction([1, 3, 2]) == "goes up and down"
