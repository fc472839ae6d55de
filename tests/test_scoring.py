"""Stage 1, step by step, on cases small enough to compute by hand."""

import math

import pytest
import torch

from eadp_lab import scoring as S


def test_similarities_by_hand():
    v = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]])  # (R=1, N=3, C=2), norms removed
    g = torch.tensor([[[1.0, 0.0]]])  # (1, M=1, C)
    seq = torch.tensor([[[[0.0, 5.0], [1.0, 1.0]]]])  # (1, M=1, L=2, C)
    G = S.global_similarity(v, g, sign=-1)
    assert G.shape == (1, 3, 1)
    assert torch.allclose(G[0, :, 0], torch.tensor([-1.0, 0.0, -1 / math.sqrt(2)]))
    D = S.dense_similarity(v, seq, sign=1)
    assert D.shape == (1, 3, 1, 2)
    assert torch.allclose(D[0, :, 0, 0], torch.tensor([0.0, 1.0, 1 / math.sqrt(2)]))
    assert torch.allclose(D[0, :, 0, 1], torch.tensor([1 / math.sqrt(2), 1 / math.sqrt(2), 1.0]))


def test_zero_vectors_do_not_divide_by_zero():
    v = torch.zeros(1, 2, 3)
    assert torch.equal(S.global_similarity(v, torch.ones(1, 1, 3)), torch.zeros(1, 2, 1))


def test_similarity_is_float32_for_half_inputs():
    v = torch.randn(1, 4, 8).to(torch.bfloat16)
    g = torch.randn(1, 1, 8).to(torch.float16)
    assert S.global_similarity(v, g).dtype == torch.float32


def test_entropy_uniform_and_peaked():
    N = 6
    dense = torch.zeros(1, N, 1, 2)
    dense[0, 2, 0, 1] = 1.0  # the second text token points at token 2; temperature 100 makes it one-hot
    H = S.spatial_entropy(dense, temperature=100.0)
    assert H.shape == (1, 1, 2)
    assert math.isclose(float(H[0, 0, 0]), math.log(N), rel_tol=1e-5)
    p = torch.softmax(torch.tensor([0, 0, 100.0, 0, 0, 0]), 0)
    assert math.isclose(float(H[0, 0, 1]), float(-(p * torch.log(p + 1e-12)).sum()), rel_tol=1e-5)
    assert float(H[0, 0, 1]) < 1e-3


def test_entropy_mask_gives_inf():
    H = S.spatial_entropy(torch.zeros(1, 4, 1, 3), text_mask=torch.tensor([[[True, False, True]]]))
    assert math.isinf(float(H[0, 0, 1])) and math.isfinite(float(H[0, 0, 0]))


@pytest.mark.parametrize("L, ratio, k", [(10, 0.2, 2), (3, 0.2, 1), (77, 0.2, 15), (12, 0.5, 6), (4, 1.0, 4)])
def test_entropy_filter_count(L, ratio, k):
    H = torch.arange(L, 0, -1).float().reshape(1, 1, L)  # lowest entropy at the end
    kept, valid = S.entropy_filter(H, ratio)
    assert kept.shape == (1, 1, k) and bool(valid.all())
    assert kept[0, 0].tolist() == list(range(L - 1, L - 1 - k, -1))


def test_entropy_filter_counts_only_real_positions():
    H = torch.tensor([[[0.5, 0.1, 0.3, 0.2, 0.4, 9.0, 9.0, 9.0, 9.0, 9.0]], [[0.3] * 10]])
    mask = torch.ones(2, 1, 10, dtype=torch.bool)
    mask[0, 0, 5:] = False
    Hm = H.masked_fill(~mask, math.inf)
    kept, valid = S.entropy_filter(Hm, 0.4, mask)  # k = floor(0.4 * 5) = 2 and floor(0.4 * 10) = 4
    assert kept.shape == (2, 1, 4)
    assert valid[0, 0].tolist() == [True, True, False, False] and bool(valid[1].all())
    assert kept[0, 0, :2].tolist() == [1, 3]


def test_empty_instruction_is_an_error():
    with pytest.raises(ValueError, match="empty instruction"):
        S.entropy_filter(torch.zeros(1, 1, 3), 0.2, torch.zeros(1, 1, 3, dtype=torch.bool))


def test_negative_entropy_weights_by_hand():
    dense = torch.tensor([[[[1.0, 3.0]], [[2.0, -1.0]]]])  # (R=1, N=2, M=1, L=2)
    H = torch.tensor([[[0.0, 0.01]]])
    kept = torch.tensor([[[0, 1]]])
    local = S.aggregate(dense, H, kept, rule="negative_entropy", temperature=0.01)
    w = torch.softmax(torch.tensor([0.0, -0.01 / 0.010001]), 0)
    assert torch.allclose(local[0, :, 0], torch.stack([w[0] * 1 + w[1] * 3, w[0] * 2 - w[1] * 1]))


def test_entropy_tempered_and_top_k_and_mean_by_hand():
    dense = torch.tensor([[[[0.2, 0.4, 0.6]]]])  # (1, N=1, M=1, L=3)
    H = torch.tensor([[[1.0, 2.0, 4.0]]])
    kept = torch.tensor([[[0, 1, 2]]])
    mu = 0.5
    logits = torch.tensor([0.2 / (mu * (1 + 1e-6)), 0.4 / (mu * (2 + 1e-6)), 0.6 / (mu * (4 + 1e-6))])
    w = torch.softmax(logits, 0)
    tempered = S.aggregate(dense, H, kept, rule="entropy_tempered", temperature=mu)
    assert math.isclose(float(tempered), float((w * dense.flatten()).sum()), rel_tol=1e-6)
    assert math.isclose(float(S.aggregate(dense, H, kept, rule="top_k", top_k=2)), 0.5, rel_tol=1e-6)
    assert math.isclose(float(S.aggregate(dense, H, kept, rule="top_k", top_k=5)), 0.4, rel_tol=1e-6)
    assert math.isclose(float(S.aggregate(dense, H, kept, rule="mean")), 0.4, rel_tol=1e-6)


def test_aggregate_ignores_padding():
    dense = torch.tensor([[[[1.0, 7.0]]]])
    H = torch.tensor([[[0.3, 0.0]]])
    kept = torch.tensor([[[0, 1]]])
    valid = torch.tensor([[[True, False]]])
    for rule in ("negative_entropy", "entropy_tempered", "top_k", "mean"):
        assert math.isclose(float(S.aggregate(dense, H, kept, valid, rule=rule)), 1.0, rel_tol=1e-6), rule


def test_fuse_by_hand():
    G = torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])
    local = torch.tensor([[[2.0, 2.0], [4.0, -4.0]]])
    s = S.fuse(G, local, alpha=0.25)
    assert torch.allclose(s, torch.tensor([[(0.25 * 1 + 0.75 * 2 + 0.25 * 3 + 0.75 * 2) / 2, 0.0]]))


def test_minmax_per_row_and_joint():
    s = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 12.0]])
    r = S.minmax_normalise(s)
    assert torch.allclose(r[0], torch.tensor([1e-6 / (2 + 1e-6), (1 + 1e-6) / (2 + 1e-6), 1.0]))
    joint = S.minmax_normalise(s, rows_per_image=[2])
    assert math.isclose(float(joint[0, 0]), 1e-6 / (11 + 1e-6), rel_tol=1e-5)
    assert math.isclose(float(joint[1, 2]), 1.0, rel_tol=1e-6)
    assert torch.allclose(S.minmax_normalise(s, rows_per_image=[1, 1]), r)
    with pytest.raises(ValueError, match="rows_per_image"):
        S.minmax_normalise(s, rows_per_image=[3])


def test_gaussian_kernel_values():
    k = S.gaussian_kernel(3, 1.0)
    z = 1 + 4 * math.exp(-0.5) + 4 * math.exp(-1.0)
    assert math.isclose(float(k[1, 1]), 1 / z, rel_tol=1e-6)
    assert math.isclose(float(k[0, 1]), math.exp(-0.5) / z, rel_tol=1e-6)
    assert math.isclose(float(k[0, 0]), math.exp(-1.0) / z, rel_tol=1e-6)


def test_smoothing_constant_and_delta():
    const = torch.full((1, 20), 0.7)
    assert torch.allclose(S.smooth_on_grid(const, (4, 5)), const)
    delta = torch.zeros(1, 25)
    delta[0, 12] = 1.0  # centre of a 5x5 grid
    out = S.smooth_on_grid(delta, (5, 5)).reshape(5, 5)
    assert torch.allclose(out[1:4, 1:4], S.gaussian_kernel(3, 1.0))
    assert float(out[0].abs().sum()) == 0.0


def test_smoothing_reflect_padding_at_the_corner():
    x = torch.zeros(1, 9)
    x[0, 0] = 1.0  # top-left corner of 3x3; reflect padding mirrors row/col 1, not 0
    k = S.gaussian_kernel(3, 1.0)
    out = S.smooth_on_grid(x, (3, 3)).reshape(3, 3)
    assert math.isclose(float(out[0, 0]), float(k[1, 1]), rel_tol=1e-6)
    assert math.isclose(float(out[1, 1]), float(k[0, 0]), rel_tol=1e-6)


def test_grid_mismatch_is_an_error():
    with pytest.raises(ValueError, match="grid"):
        S.smooth_on_grid(torch.zeros(1, 10), (3, 3))


def test_polarise():
    assert torch.allclose(S.polarise(torch.tensor([[0.5, 1.0]]), 2.0), torch.tensor([[0.25, 1.0]]))
