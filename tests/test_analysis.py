"""Measurements used by the chapters, on cases computed by hand."""

import math

import pytest
import torch

from eadp_lab.analysis import brute_force_optimum, object_recall, objects_reached, prefix_objective
from eadp_lab.select import coverage, coverage_similarity, facility_location


def test_prefix_objective_is_the_objective_of_each_prefix():
    g = torch.Generator().manual_seed(0)
    r, f = torch.rand(2, 30, generator=g), torch.randn(2, 30, 5, generator=g)
    K = coverage_similarity(f)
    picks = facility_location(r, 8, similarity=K)
    curve = prefix_objective(r, K, picks)
    for t in range(8):
        assert torch.allclose(curve[:, t], coverage(r, K, picks[:, : t + 1]))
    assert bool((curve.diff(dim=1) >= -1e-12).all())  # monotone


def test_prefix_objective_skips_unused_slots():
    K = torch.eye(3)[None]
    r = torch.tensor([[1.0, 2.0, 3.0]])
    assert prefix_objective(r, K, torch.tensor([[2, -1, 0]])).tolist() == [[3.0, 3.0, 4.0]]


def test_brute_force_by_hand():
    K = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    r = torch.tensor([1.0, 1.0, 1.5])
    value, subset = brute_force_optimum(r, K, 2)
    assert subset == (0, 2) and math.isclose(value, 1 + 0.9 + 1.5, rel_tol=1e-6)
    with pytest.raises(ValueError, match="too large"):
        brute_force_optimum(torch.rand(30), torch.rand(30, 30), 2)


def test_object_recall_by_hand():
    keep = torch.tensor([True, False, True, False])
    objects = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]).bool()
    assert object_recall(keep, objects).tolist() == [0.5, 0.0, 0.0]
    assert objects_reached(keep, objects).tolist() == [True, False, False]
