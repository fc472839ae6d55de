"""Stage 2: facility location (hand cases, properties, the published loop), allocation, gathering."""

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eadp_lab.select import (
    allocate_budget,
    coverage,
    coverage_similarity,
    facility_location,
    facility_location_naive,
    gather_kept,
    keep_mask_from_picks,
)

BACKENDS = ["cpu", "torch"]


def random_instance(seed, B, N, D=6, clustered=True):
    g = torch.Generator().manual_seed(seed)
    if clustered:
        protos = torch.randn(B, 4, D, generator=g)
        assign = torch.randint(0, 4, (B, N), generator=g)
        feats = torch.gather(protos, 1, assign[..., None].expand(B, N, D)) + 0.5 * torch.randn(B, N, D, generator=g)
    else:
        feats = torch.randn(B, N, D, generator=g)
    return torch.rand(B, N, generator=g), feats


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_case(backend):
    K = torch.tensor([[[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    r = torch.ones(1, 3)
    # gains 1.9, 1.9, 1.0 -> 0 (lowest index on the tie); then 0.1 vs 1.0 -> 2; then 1
    assert facility_location(r, 3 - 1, similarity=K, backend=backend).tolist() == [[0, 2]]
    assert facility_location_naive(r, 2, similarity=K).tolist() == [[0, 2]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_asymmetric_similarity_uses_rows_as_candidates(backend):
    # K[c, j]: how well candidate c covers j. Candidate 1 covers everything; 0 covers only itself.
    K = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]])
    r = torch.tensor([[1.0, 0.1, 1.0]])
    assert facility_location(r, 1, similarity=K, backend=backend).tolist() == [[1]]
    assert facility_location_naive(r, 1, similarity=K).tolist() == [[1]]


def test_similarity_formula():
    f = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]])
    K = coverage_similarity(f)
    assert torch.allclose(K[0], torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 1.0]]))
    assert K.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(6))
def test_equals_published_loop(seed, backend):
    B, N = 3, 60 + 10 * seed
    r, f = random_instance(seed, B, N, clustered=seed % 2 == 0)
    T = 25
    fast = facility_location(r, T, features=f, backend=backend)
    naive = facility_location_naive(r, T, features=f)
    assert torch.equal(fast, naive)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), N=st.integers(2, 40), T=st.integers(1, 40), clustered=st.booleans())
def test_properties(seed, N, T, clustered):
    T = min(T, N - 1) if N > 1 else 1
    r, f = random_instance(seed, 2, N, clustered=clustered)
    picks = facility_location(r, T, features=f)
    assert picks.shape == (2, T)
    for row in picks.tolist():
        assert len(set(row)) == T and min(row) >= 0 and max(row) < N  # unique, in range
    # greedy is incremental: the picks for T are a prefix of the picks for T + 1
    more = facility_location(r, min(T + 1, N), features=f)
    if T + 1 < N:
        assert torch.equal(more[:, :T], picks)
    # equal to the published loop
    assert torch.equal(picks, facility_location_naive(r, T, features=f))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), N=st.integers(3, 9), T=st.integers(1, 4))
def test_within_1_minus_1_over_e_of_brute_force(seed, N, T):
    T = min(T, N - 1)
    r, f = random_instance(seed, 1, N, clustered=False)
    K = coverage_similarity(f)
    greedy = float(coverage(r, K, facility_location(r, T, similarity=K))[0])
    best = max(
        float(coverage(r, K, torch.tensor([subset]))[0]) for subset in itertools.combinations(range(N), T)
    )
    assert greedy >= (1 - 1 / math.e) * best - 1e-9
    assert greedy <= best + 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_invariance(backend):
    r, f = random_instance(7, 5, 80)
    together = facility_location(r, 20, features=f, backend=backend)
    for b in range(5):
        alone = facility_location(r[b : b + 1], 20, features=f[b : b + 1], backend=backend)
        assert torch.equal(alone[0], together[b])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_give_float32_picks(dtype):
    r, f = random_instance(3, 2, 100)
    r, f = r.to(dtype), f.to(dtype)
    assert torch.equal(
        facility_location(r, 30, features=f), facility_location(r.float(), 30, features=f.float())
    )


def test_budget_of_n_or_more_keeps_all_in_order():
    r, f = random_instance(0, 2, 10)
    for T in (10, 11, 500):
        assert torch.equal(facility_location(r, T, features=f), torch.arange(10).expand(2, 10))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(budget=0), "budget"),
        (dict(budget=-3), "budget"),
        (dict(budget=2.5), "budget"),
        (dict(features=torch.full((1, 5, 3), math.nan)), "features"),
        (dict(features=torch.randn(1, 6, 3)), "N"),
        (dict(importance=torch.tensor([[1.0, math.inf, 0, 0, 0]])), "importance"),
        (dict(importance=-torch.ones(1, 5)), "importance"),
        (dict(features=None), "exactly one"),
    ],
)
def test_bad_input(kwargs, match):
    args = dict(importance=torch.rand(1, 5), budget=2, features=torch.randn(1, 5, 3))
    args.update(kwargs)
    importance, budget = args.pop("importance"), args.pop("budget")
    with pytest.raises(ValueError, match=match):
        facility_location(importance, budget, **args)


def test_bad_similarity():
    with pytest.raises(ValueError, match="similarity"):
        facility_location(torch.rand(1, 4), 2, similarity=torch.full((1, 4, 4), math.nan))
    with pytest.raises(ValueError, match="N"):
        facility_location(torch.rand(1, 4), 2, similarity=torch.rand(1, 4, 5))


def test_coverage_by_hand():
    K = torch.tensor([[[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    r = torch.tensor([[1.0, 2.0, 3.0]])
    assert math.isclose(float(coverage(r, K, torch.tensor([[0]]))), 1 + 1.8, rel_tol=1e-6)
    assert math.isclose(float(coverage(r, K, torch.tensor([[0, 2]]))), 1 + 1.8 + 3, rel_tol=1e-6)
    assert math.isclose(float(coverage(r, K, torch.tensor([[2, -1]]))), 3.0, rel_tol=1e-6)  # -1: unused slot


def test_allocation_by_hand():
    imp = torch.zeros(4, 20)
    imp[:, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # shares 4, 8, 12, 16 less a hair (the 1e-6 guard): the published floors lose a token each
    assert allocate_budget(imp, [4], 10, "floor").tolist() == [3, 7, 11, 15]
    assert allocate_budget(imp, [4], 10, "largest_remainder").tolist() == [4, 8, 12, 16]
    # with N = 12 the last crop is capped and its overflow goes to the others
    assert allocate_budget(imp[:, :12], [4], 10, "floor").tolist() == [3, 7, 11, 12]
    assert allocate_budget(imp[:, :12], [4], 10, "largest_remainder").tolist() == [6, 10, 12, 12]
    imp = torch.ones(3, 20) * torch.tensor([[1.0], [1.0], [2.0]])  # shares 7.5, 7.5, 15
    assert allocate_budget(imp, [3], 10, "floor").tolist() == [7, 7, 15]  # 29: one short
    assert allocate_budget(imp, [3], 10, "largest_remainder").tolist() == [8, 7, 15]  # tie: lowest index
    assert allocate_budget(imp, [3], 10, "none").tolist() == [10, 10, 10]


def test_floor_allocation_gives_every_crop_one_token():
    imp = torch.zeros(2, 8)
    imp[0] = 1.0
    assert allocate_budget(imp, [2], 4, "floor").tolist() == [7, 1]


def test_largest_remainder_is_exact_and_capped():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        K = int(torch.randint(1, 6, (1,), generator=g))
        N = int(torch.randint(4, 30, (1,), generator=g))
        T0 = int(torch.randint(1, N + 3, (1,), generator=g))
        imp = torch.rand(K, N, generator=g) ** 4
        q = allocate_budget(imp, [K], T0, "largest_remainder")
        assert int(q.sum()) == min(K * T0, K * N) and int(q.max()) <= N and int(q.min()) >= 0


def test_allocation_is_per_image():
    imp = torch.rand(5, 16)
    together = allocate_budget(imp, [2, 3], 4, "floor")
    assert torch.equal(together, torch.cat([allocate_budget(imp[:2], [2], 4), allocate_budget(imp[2:], [3], 4)]))
    with pytest.raises(ValueError, match="rows_per_image"):
        allocate_budget(imp, [2, 2], 4)


def test_keep_mask_and_gather_keep_original_order():
    picks = torch.tensor([[4, 1, 3], [0, 2, -1]])
    quotas = torch.tensor([2, 2])
    mask = keep_mask_from_picks(picks, quotas, 5)
    assert mask.tolist() == [[False, True, False, False, True], [True, False, True, False, False]]
    f = torch.arange(10.0).reshape(2, 5, 1)
    assert gather_kept(f, mask).flatten().tolist() == [1.0, 4.0, 5.0, 7.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_runs_unchanged_on_cuda():
    r, f = random_instance(5, 2, 300)
    on_gpu = facility_location(r.cuda(), 40, features=f.cuda())
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), facility_location(r, 40, features=f))
