"""The content-blind control selections (eadp_lab.methods.controls): by hand, and through the registry."""

import pytest
import torch

from eadp_lab import METHODS, PruneInputs, prune
from eadp_lab.methods import register
from eadp_lab.methods.base import NoSettings
from eadp_lab.methods.controls import ClusterRule, cluster_picks


def test_cluster_picks_by_hand():
    assert cluster_picks((4, 4), 3, (0.0, 0.0)).tolist() == [0, 1, 4]  # 1 and 4 tie at distance 1
    assert cluster_picks((4, 4), 4, (1.5, 1.5)).tolist() == [5, 6, 9, 10]
    assert cluster_picks((2, 3), 99, (0.0, 0.0)).tolist() == list(range(6))
    with pytest.raises(ValueError, match="integer >= 1"):
        cluster_picks((4, 4), 0, (0.0, 0.0))


def test_cluster_rule_through_the_registry_is_compact_and_replays_after_reset():
    rule = ClusterRule()
    register("cluster-test", NoSettings, text_guided=False, reference="test")(rule)
    try:
        inputs = PruneInputs(features=torch.randn(3, 64, 8, generator=torch.Generator().manual_seed(0)))
        rule.reset(5)
        first = prune("cluster-test", inputs, 6)
        rule.reset(5)
        again = prune("cluster-test", inputs, 6)
        assert torch.equal(first.keep_mask, again.keep_mask) and first.keep_mask.sum(-1).tolist() == [6, 6, 6]
        assert len({tuple(first.kept_indices(r).tolist()) for r in range(3)}) > 1  # a new point per image
        for r in range(3):  # six tokens nearest one point of an 8x8 grid lie within a 3x3 patch
            kept = first.kept_indices(r)
            assert (kept // 8).max() - (kept // 8).min() <= 2 and (kept % 8).max() - (kept % 8).min() <= 2
        assert not torch.equal(prune("cluster-test", inputs, 6).keep_mask, first.keep_mask)  # the stream moved on
    finally:
        METHODS.pop("cluster-test")
