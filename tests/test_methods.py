"""The registry: every method behind one entry point, batch invariance, results, bad input."""

import math

import pytest
import torch

from eadp_lab import METHODS, EADPConfig, PruneInputs, preset, prune
from eadp_lab import scoring
from eadp_lab.methods.cdpruner import CDPrunerSettings, conditional_relevance, dpp_greedy_map
from eadp_lab.methods.divprune import DivPruneSettings, image_max_min_diversity, max_min_diversity
from eadp_lab.methods.pool import pooled_grid

NAMES = ["none", "eadp", "topk", "topk_dense", "random", "pool", "divprune", "cdpruner"]


def sample(seed, N=64, L=5, C=12, D=16, crops=1):
    """One image's raw tensors: features (crops, N, D), embeds (crops, N, C), text (1, 1, L, C)."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        features=torch.randn(crops, N, D, generator=g),
        image_embeds=torch.randn(crops, N, C, generator=g),
        text_embeds_seq=torch.randn(1, 1, L, C, generator=g),
    )


def batch_of(samples):
    """A padded batch of samples with different instruction lengths, built from scratch."""
    L = max(s["text_embeds_seq"].shape[2] for s in samples)
    seq = torch.zeros(len(samples), 1, L, samples[0]["text_embeds_seq"].shape[-1])
    mask = torch.zeros(len(samples), 1, L, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = s["text_embeds_seq"].shape[2]
        seq[i, :, L - n :] = s["text_embeds_seq"][0]  # left padding, as generation batches are
        mask[i, :, L - n :] = True
    return PruneInputs(
        features=torch.cat([s["features"] for s in samples]),
        image_embeds=torch.cat([s["image_embeds"] for s in samples]),
        text_embeds_seq=seq,
        text_mask=mask,
        rows_per_image=tuple(s["features"].shape[0] for s in samples),
    )


def test_registry_names():
    from eadp_lab.methods.settings import FIELD_METHODS

    assert sorted(METHODS) == sorted(NAMES + list(FIELD_METHODS))  # NAMES: the ones prune() runs on features
    for m in METHODS.values():
        assert m.reference  # every method says where it comes from


@pytest.mark.parametrize("method", NAMES)
def test_every_method_runs_and_keeps_the_budget(method):
    inputs = batch_of([sample(0), sample(1, L=3)])
    res = prune(method, inputs, 16)
    kept = 64 if method == "none" else 16
    assert res.quotas.tolist() == [kept, kept]
    assert res.keep_mask.sum(1).tolist() == [kept, kept]
    assert res.gather(inputs.features).shape == (2 * kept, 16)
    assert res.method == method


@pytest.mark.parametrize("method", NAMES)
def test_batch_invariance(method):
    samples = [sample(0, L=7), sample(1, L=3), sample(2, L=5, crops=3)]
    batch = prune(method, batch_of(samples), 12, **({"allocation": "floor", "normalisation": "per_image"}
                                                       if method == "eadp" else {}))
    rows = 0
    for s in samples:
        alone_inputs = PruneInputs(**s, rows_per_image=(s["features"].shape[0],))
        alone = prune(method, alone_inputs, 12, **({"allocation": "floor", "normalisation": "per_image"}
                                                     if method == "eadp" else {}))
        k = s["features"].shape[0]
        T = alone.picks.shape[1]
        assert torch.equal(batch.picks[rows : rows + k, :T], alone.picks), method
        assert torch.equal(batch.quotas[rows : rows + k], alone.quotas)
        if alone.importance is not None:
            assert torch.equal(batch.importance[rows : rows + k], alone.importance)
        rows += k


@pytest.mark.parametrize("method", NAMES)
def test_budget_of_n_or_more_keeps_every_token_in_order(method):
    inputs = batch_of([sample(3)])
    for budget in (64, 100):
        res = prune(method, inputs, budget)
        assert bool(res.keep_mask.all())
        assert torch.equal(res.gather(inputs.features), inputs.features.reshape(-1, 16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["eadp", "topk", "topk_dense", "divprune", "cdpruner"])
def test_half_precision_inputs_give_the_float32_picks(method, dtype):
    s = {k: v.to(dtype) for k, v in sample(4).items()}
    half = prune(method, PruneInputs(**s), 20)
    full = prune(method, PruneInputs(**{k: v.float() for k, v in s.items()}), 20)
    assert torch.equal(half.picks, full.picks)
    if full.importance is not None:
        assert half.importance.dtype == torch.float32


def test_eadp_result_carries_every_intermediate():
    s = sample(5, L=10)
    res = prune("eadp", PruneInputs(**s), 16)
    (trace,) = res.trace
    assert trace.global_similarity.shape == (1, 64, 1)
    assert trace.dense_similarity.shape == (1, 64, 1, 10)
    assert trace.entropy.shape == (1, 1, 10)
    assert trace.kept_text.shape == (1, 1, 2)  # floor(0.2 * 10)
    assert torch.equal(trace.entropy[0, 0, trace.kept_text[0, 0]], trace.entropy[0, 0].sort().values[:2])
    assert res.importance.shape == (1, 64) and float(res.importance.max()) <= 1.0 + 1e-6
    assert not trace.smoothing_skipped


def test_eadp_importance_is_the_stages_composed():
    from eadp_lab import scoring as S

    s = sample(6, L=6)
    cfg = preset("llava-1.5", beta=2.0)
    res = prune("eadp", PruneInputs(**s), 8, cfg)
    v, seq = s["image_embeds"], s["text_embeds_seq"]
    G = S.global_similarity(v, seq.mean(2), -1)
    D = S.dense_similarity(v, seq, -1)
    H = S.spatial_entropy(D, 100.0)
    kept, valid = S.entropy_filter(H, 0.2)
    r = S.minmax_normalise(S.fuse(G, S.aggregate(D, H, kept, valid), 0.5))
    r = S.polarise(S.smooth_on_grid(r, (8, 8)), 2.0)
    assert torch.allclose(res.importance, r, atol=1e-6)


def test_ablations_change_the_picks():
    inputs = PruneInputs(**sample(8, L=12))
    base = prune("eadp", inputs, 10)
    for change in (dict(alpha=1.0), dict(entropy_keep_ratio=1.0, aggregation="mean"), dict(selection="topk"),
                   dict(similarity_sign=1.0)):
        assert not torch.equal(prune("eadp", inputs, 10, **change).keep_mask, base.keep_mask), change


def test_topk_selection_is_topk_of_importance():
    inputs = PruneInputs(**sample(9))
    res = prune("eadp", inputs, 10, selection="topk")
    assert set(res.picks[0].tolist()) == set(res.importance[0].topk(10).indices.tolist())


def test_anyres_allocation_uses_floor_quotas():
    inputs = PruneInputs(**sample(10, crops=4), rows_per_image=(4,))
    res = prune("eadp", inputs, 8, preset("llava-1.6-anyres"))
    share = res.importance.sum(1) / (res.importance.sum() + 1e-6) * 32
    assert res.quotas.tolist() == torch.clamp(share.floor().long(), min=1).tolist()
    exact = prune("eadp", inputs, 8, preset("llava-1.6-anyres", allocation="largest_remainder"))
    assert int(exact.quotas.sum()) == 32


def test_topk_by_hand():
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7]]])
    text = torch.tensor([[[[1.0, 0.0]]]])
    res = prune("topk", PruneInputs(features=v, image_embeds=v, text_embeds_seq=text, grid=(2, 2)), 2,
                similarity_sign=1.0)
    assert res.picks.tolist() == [[0, 3]]
    res = prune("topk", PruneInputs(features=v, image_embeds=v, text_embeds_seq=text, grid=(2, 2)), 2)
    assert res.picks.tolist() == [[2, 1]]  # the published sign ranks by dissimilarity


def test_random_is_seeded():
    inputs = PruneInputs(**sample(11))
    a, b = prune("random", inputs, 10, seed=1), prune("random", inputs, 10, seed=1)
    c = prune("random", inputs, 10, seed=2)
    assert torch.equal(a.picks, b.picks) and not torch.equal(a.picks, c.picks)


def test_pool_by_hand():
    f = torch.arange(16.0).reshape(1, 16, 1)  # 4x4 grid, value = index
    res = prune("pool", PruneInputs(features=f), 4)
    assert res.merged.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert res.gather(f).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert res.extra["pooled_grid"] == [(2, 2)]
    assert pooled_grid((24, 24), 64) == (8, 8) and pooled_grid((24, 24), 192) == (12, 16)
    assert pooled_grid((13, 13), 20) == (4, 5)


def test_divprune_by_hand():
    # directions at 0, 10, 90, 180 degrees: the farthest-from-neighbour first is 90 or 180
    ang = torch.tensor([0.0, 10.0, 90.0, 180.0]) * math.pi / 180
    f = torch.stack([ang.cos(), ang.sin()], -1)[None]
    picks = max_min_diversity(f, 3)
    assert picks[0, 0].item() == 3  # 180 deg: nearest neighbour at 90 deg, distance 1 (0 deg is at 2)
    assert set(picks[0].tolist()) == {3, 2, 0} or set(picks[0].tolist()) == {3, 2, 1}
    assert picks[0, 1].item() in (0, 1) and picks[0, 2].item() == 2


def test_dpp_greedy_matches_brute_force_log_det():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(8, 5, generator=g, dtype=torch.float64)
    Lk = X @ X.T
    picks = dpp_greedy_map(Lk[None], 4, torch.zeros(1, 8))[0].tolist()
    chosen = []
    for _ in range(4):
        best = max((i for i in range(8) if i not in chosen),
                   key=lambda i: torch.logdet(Lk[chosen + [i]][:, chosen + [i]]).item())
        chosen.append(best)
    assert picks == chosen


def test_dpp_fills_by_fallback_once_the_kernel_is_exhausted():
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    # d^2 = 1, 1, 2, 4 -> 3; then 0 (parallel to 3), 1 and 1 -> 1 (lowest index); then the rank (2)
    # is exhausted and the rest follow the fallback score: 2 (score 5), then 0
    picks = dpp_greedy_map((X @ X.T)[None], 4, torch.tensor([[0.0, 0.0, 5.0, 1.0]]))[0].tolist()
    assert picks == [3, 1, 2, 0]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("method", NAMES)
def test_budget_below_one(method):
    with pytest.raises(ValueError, match="budget"):
        prune(method, PruneInputs(**sample(0)), 0)


def test_nan_features():
    s = sample(0)
    s["features"][0, 3, 1] = math.nan
    with pytest.raises(ValueError, match="features"):
        PruneInputs(**s)
    s = sample(0)
    s["image_embeds"][0, 0, 0] = math.inf
    with pytest.raises(ValueError, match="image_embeds"):
        PruneInputs(**s)


def test_mismatched_n():
    s = sample(0)
    s["image_embeds"] = s["image_embeds"][:, :60]
    with pytest.raises(ValueError, match="image_embeds"):
        PruneInputs(**s)


def test_grid_mismatch_is_an_error_unless_skipping_is_chosen():
    inputs = PruneInputs(**sample(0), grid=(7, 9))
    with pytest.raises(ValueError, match="grid"):
        prune("eadp", inputs, 8)
    res = prune("eadp", inputs, 8, on_grid_mismatch="skip")
    assert res.trace[0].smoothing_skipped
    assert torch.equal(res.trace[0].smoothed, res.trace[0].normalised)
    with pytest.raises(ValueError, match="grid"):
        prune("eadp", PruneInputs(**sample(0, N=60)), 8)  # 60 is not square and no grid was given


@pytest.mark.parametrize("method", ["eadp", "topk", "topk_dense", "cdpruner"])
def test_empty_instruction(method):
    s = sample(0)
    s["text_embeds_seq"] = s["text_embeds_seq"][:, :, :0]
    with pytest.raises(ValueError, match="empty instruction"):
        prune(method, PruneInputs(**s), 8)
    s = sample(0)
    with pytest.raises(ValueError, match="empty instruction"):
        prune(method, PruneInputs(**s, text_mask=torch.zeros(1, 1, 5, dtype=torch.bool)), 8)
    with pytest.raises(ValueError, match="text"):
        prune(method, PruneInputs(features=s["features"]), 8)


def test_unknown_method_and_settings():
    inputs = PruneInputs(**sample(0))
    with pytest.raises(ValueError, match="method"):
        prune("nosuch", inputs, 8)
    with pytest.raises(ValueError, match=r"^unknown eadp setting 'alpah'; known: 'alpha', "):
        prune("eadp", inputs, 8, alpah=0.3)
    with pytest.raises(ValueError, match="settings"):
        prune("random", inputs, 8, EADPConfig())


@pytest.mark.parametrize(
    "change, match",
    [(dict(alpha=1.5), "alpha"), (dict(entropy_keep_ratio=0.0), "entropy_keep_ratio"),
     (dict(aggregation="max"), "aggregation"), (dict(smoothing_kernel=4), "smoothing_kernel"),
     (dict(allocation="proportional"), "allocation"), (dict(beta=0.0), "beta")],
)
def test_config_validation(change, match):
    with pytest.raises(ValueError, match=match):
        EADPConfig(**change)


def test_presets():
    assert preset("llava-1.5").text_positions == "all"
    assert preset("llava-1.5", faithful=True).text_positions == "content"
    assert preset("paper") == EADPConfig()
    anyres = preset("llava-1.6-anyres")
    assert (anyres.normalisation, anyres.allocation) == ("per_image", "floor")
    video = preset("llava-video")
    assert (video.entropy_keep_ratio, video.aggregation, video.beta) == (0.5, "entropy_tempered", 2.0)
    assert preset("qwen2.5-vl-llm").beta == 2.0
    assert EADPConfig.from_dict(anyres.to_dict()) == anyres
    with pytest.raises(ValueError, match="preset"):
        preset("llava-2")


# ---------------------------------------------------------------- ragged rows (AnyRes tiles cut by unpadding)


def ragged_inputs(seed=12, grids=((8, 8), (5, 8), (8, 3)), L=6):
    g = torch.Generator().manual_seed(seed)
    R, N = len(grids), 64
    return PruneInputs(
        features=torch.randn(R, N, 16, generator=g),
        image_embeds=torch.randn(R, N, 12, generator=g),
        text_embeds_seq=torch.randn(1, 1, L, 12, generator=g),
        grid=list(grids),
        rows_per_image=(R,),
    )


@pytest.mark.parametrize("method", NAMES)
def test_ragged_rows_never_keep_padding(method):
    inputs = ragged_inputs()
    counts = inputs.token_counts.tolist()
    assert counts == [64, 40, 24]
    for budget in (10, 30, 64):
        res = prune(method, inputs, budget)
        for r, count in enumerate(counts):
            assert not bool(res.keep_mask[r, count:].any()), (method, budget, r)
            assert int(res.quotas[r]) <= count
        if method != "none" and budget >= 64:
            assert res.quotas.tolist() == counts  # a budget of every token keeps every real token


PER_ROW = {"divprune": {"scope": "per_row"}, "cdpruner": {"normalisation": "per_row"}}


@pytest.mark.parametrize("method", ["eadp", "topk", "topk_dense", "divprune", "cdpruner", "pool"])
def test_a_ragged_row_is_scored_like_the_row_alone(method):
    inputs = ragged_inputs()
    together = prune(method, inputs, 12, **PER_ROW.get(method, {}))
    for r, (H, W) in enumerate(inputs.grid):
        n = H * W
        alone_inputs = PruneInputs(
            features=inputs.features[r : r + 1, :n], image_embeds=inputs.image_embeds[r : r + 1, :n],
            text_embeds_seq=inputs.text_embeds_seq, grid=(H, W),
        )
        alone = prune(method, alone_inputs, 12)
        assert torch.equal(together.picks[r, : alone.picks.shape[1]], alone.picks[0]), (method, r)
        if alone.importance is not None:
            assert torch.allclose(together.importance[r, :n], alone.importance[0], atol=1e-6)


def test_ragged_allocation_respects_each_rows_tokens():
    inputs = ragged_inputs(grids=((8, 8), (2, 2), (8, 3)))
    res = prune("eadp", inputs, 20, allocation="largest_remainder", normalisation="per_image")
    assert int(res.quotas.sum()) == 60 and int(res.quotas[1]) <= 4


def test_bad_row_grids():
    with pytest.raises(ValueError, match="row grids"):
        PruneInputs(features=torch.randn(2, 16, 4), grid=[(4, 4)])
    with pytest.raises(ValueError, match="between 1 and N"):
        PruneInputs(features=torch.randn(1, 16, 4), grid=[(5, 4)])


# ---------------------------------------------------------------- the baselines on the crops of one image


@pytest.mark.parametrize("ragged", [False, True])
def test_divprune_selects_once_over_an_image_s_crops(ragged):
    inputs = ragged_inputs() if ragged else PruneInputs(**sample(13, crops=3), rows_per_image=(3,))
    counts = inputs.token_counts
    res = prune("divprune", inputs, 12)
    R, N = inputs.num_rows, inputs.num_tokens
    flat = torch.cat([inputs.features[r, : int(c)] for r, c in enumerate(counts)])[None]  # real tokens end to end
    alone = max_min_diversity(flat, int(counts.clamp(max=12).sum()))[0]
    starts = torch.cumsum(counts, 0) - counts
    row = torch.searchsorted(starts, alone, right=True) - 1
    (joint,) = res.extra["image_picks"]
    assert torch.equal(joint, row * N + (alone - starts[row]))  # the same picks, in the same order
    assert int(res.quotas.sum()) == int(counts.clamp(max=12).sum())
    for r in range(R):  # each row's picks: its share of the joint picks, in pick order
        assert res.picks[r, : int(res.quotas[r])].tolist() == [int(p) % N for p in joint if int(p) // N == r]
        assert not bool(res.keep_mask[r, int(counts[r]):].any())
    per_row = prune("divprune", inputs, 12, scope="per_row")
    assert per_row.quotas.tolist() == counts.clamp(max=12).tolist()
    assert "image_picks" not in per_row.extra


def test_divprune_image_picks_index_the_rows_end_to_end():
    f = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(1))
    picks = image_max_min_diversity(f, 18)
    assert sorted(picks.tolist()) == list(range(18))
    assert torch.equal(picks, max_min_diversity(f.reshape(1, 18, 4), 18)[0])
    with pytest.raises(ValueError, match="budget 19"):
        image_max_min_diversity(f, 19)


def test_cdpruner_normalises_relevance_over_an_image_s_crops():
    inputs = PruneInputs(**sample(14, crops=3), rows_per_image=(3,))
    joint = prune("cdpruner", inputs, 10)
    score = scoring.global_similarity(inputs.image_embeds, inputs.per_row(inputs.global_text())).mean(-1)
    lo, hi = score.min(), score.max()
    assert torch.allclose(joint.importance, (score - lo + 1e-6) / (hi - lo), atol=1e-7)  # the published formula
    per_row = prune("cdpruner", inputs, 10, normalisation="per_row")
    for r in range(3):
        alone = prune("cdpruner", PruneInputs(**{k: v[r : r + 1] if k != "text_embeds_seq" else v
                                                for k, v in sample(14, crops=3).items()}), 10)
        assert torch.equal(per_row.picks[r], alone.picks[0])
        assert torch.allclose(per_row.importance[r], alone.importance[0], atol=1e-6)
    assert joint.quotas.tolist() == [10, 10, 10]  # the budgets stay per crop
    assert not torch.allclose(joint.importance, per_row.importance)
    assert torch.equal(joint.importance, conditional_relevance(inputs, CDPrunerSettings()))


def test_cdpruner_constant_relevance_is_one():
    s = sample(15)
    s["image_embeds"] = torch.ones_like(s["image_embeds"])
    res = prune("cdpruner", PruneInputs(**s), 8)
    assert torch.allclose(res.importance, torch.ones_like(res.importance))
    assert res.quotas.tolist() == [8]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_dpp_compiled_and_torch_greedy_agree(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    R, N, rank = 3, 40, 12 if seed % 2 else 40  # low rank: the fallback order fills the rest
    X = torch.randn(R, N, rank, generator=g, dtype=torch.float64)
    kernel = (X @ X.transpose(1, 2)).to(dtype)
    fallback = torch.rand(R, N, generator=g)
    mask = torch.rand(R, N, generator=g) > 0.2 if seed >= 2 else None
    cpu = dpp_greedy_map(kernel, 30, fallback, token_mask=mask, backend="cpu")
    ref = dpp_greedy_map(kernel, 30, fallback, token_mask=mask, backend="torch")
    real = torch.full((R,), N) if mask is None else mask.sum(1)
    assert (cpu >= 0).sum(1).tolist() == real.clamp(max=30).tolist()
    assert all(len(set(p for p in row if p >= 0)) == int(n) for row, n in zip(cpu.tolist(), real.clamp(max=30)))
    if mask is not None:
        assert all(bool(mask[r, p]) for r in range(R) for p in cpu[r].tolist() if p >= 0)
    if dtype == torch.float64 or rank == N:  # float32 rounding noise past the rank is picked on, not exhausted
        assert torch.equal(cpu, ref)
    if dtype == torch.float64 and rank < N:  # the rank is spent: the rest follow the fallback order
        rest = cpu[0, rank:]
        assert torch.equal(rest, rest[torch.argsort(-fallback[0, rest], stable=True)])


def test_precision_input_computes_the_cosines_in_the_input_dtype():
    f = torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(16)).half()
    res = prune("divprune", PruneInputs(features=f), 20, precision="input")
    assert torch.equal(res.picks, max_min_diversity(f, 20, dtype=None))
    full = PruneInputs(features=f.float())
    assert torch.equal(prune("divprune", full, 20, precision="input").picks, prune("divprune", full, 20).picks)
    s = {k: v.half() for k, v in sample(17).items()}
    half = prune("cdpruner", PruneInputs(**s), 20, precision="input")
    assert half.importance.dtype == torch.float32 and half.quotas.tolist() == [20]


def test_baseline_settings_are_checked():
    with pytest.raises(ValueError, match="scope"):
        DivPruneSettings(scope="per_crop")
    with pytest.raises(ValueError, match="precision"):
        DivPruneSettings(precision="float16")
    with pytest.raises(ValueError, match="normalisation"):
        CDPrunerSettings(normalisation="joint")
    with pytest.raises(ValueError, match="backend"):
        dpp_greedy_map(torch.eye(3)[None], 2, torch.zeros(1, 3), backend="cuda")
