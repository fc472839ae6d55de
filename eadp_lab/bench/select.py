"""Selection speed: the lab's selection cores against faithful re-implementations of the published ones.

    python -m eadp_lab.bench select [--cases 1x576x64,5x576x64,1x2304x256] [--baseline-cases 1x576x64,5x576x64]
                                    [--field-tokens 576] [--field-budget 64] [--methods visionzip,...]
                                    [--repeats 7] [--threads 1] [--json OUT]

Every timing here is measured the same way (:func:`eadp_lab.bench.timing.timed_pair`): the published function and the
lab's run in turns on the same inputs, ``--repeats`` times after an untimed warm-up, each repeat
long enough for the timer; the speed-up is the median of the per-repeat ratios (published / lab)
with the range of the per-repeat ratios (smallest to largest), and a range that covers 1 is
printed as "no measurable difference".
``--threads`` sets torch's threads (1 by default: the comparison is of the algorithms, not of
how they parallelise).

Facility location (``--cases``, ``B x N x T``): it builds spatially clustered features (as real
visual tokens are), their similarity ``(cos + 1) / 2`` and a smooth importance map, then times
:func:`eadp_lab.select.facility_location` (the compiled CPU kernel, and the torch-ops path that
CUDA uses) against :func:`eadp_lab.select.facility_location_naive` (a faithful re-implementation
of the published loop). Both get the same precomputed similarity, so the ratio is the greedy's
alone. It prints medians, the speed-up, whether the picks are identical and both objective values.

Baselines (``--baseline-cases``, ``R x N x T``: one image of ``R`` crops): DivPrune and
CDPruner through :func:`eadp_lab.prune` with their default (published) settings against the
published loops (:mod:`eadp_lab.bench._published`), both from the same features, embeddings
and instruction (similarities included). DivPrune on ``R > 1`` crops makes one selection of
``R * T`` tokens over the whole image, as published; CDPruner keeps ``T`` per crop with the
relevance normalised over the image.

The field's methods (``--methods``, at ``--field-tokens`` tokens and ``--field-budget``): VisionZip,
HiPrune, FastV, PyramidDrop, DART and SparseVLM, each method's core in :mod:`eadp_lab.methods`
against its authors' selection block (:mod:`eadp_lab.bench._published_field`), on the tensors of
:func:`field_case` (LLaVA-1.5-7B shapes, batch 1), with a check that both select the same tokens.
"""

from __future__ import annotations

import argparse
import math
import os
import platform

import torch

from .._io import write_json
from ..methods import PruneInputs, prune
from ..methods.settings import FIELD_METHODS
from ..select import coverage, coverage_similarity, facility_location, facility_location_naive
from . import _published_field as _pub
from ._published import cdpruner_loop, divprune_loop
from .timing import format_ratio, interleaved_times, ratio_spread, timed_pair, torch_threads

__all__ = ["CLIP_SHAPES", "FIELD_METHODS", "LLM_SHAPES", "baseline_case", "clustered_case", "field_case",
           "field_contenders", "format_ratio", "interleaved_times", "main", "ratio_spread", "run", "run_baselines",
           "run_field", "timed_pair", "timing_frame", "torch_threads"]


def clustered_case(B: int, N: int, D: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance ``(B, N)`` and features ``(B, N, D)`` with spatial clusters on a square-ish grid."""
    g = torch.Generator().manual_seed(seed)
    H = int(N**0.5)
    while N % H:
        H -= 1
    W = N // H
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pos = torch.stack([yy.flatten() / H, xx.flatten() / W], -1)  # (N, 2)
    centres = torch.rand(B, 12, 2, generator=g)
    assign = torch.cdist(pos[None].expand(B, -1, -1), centres).argmin(-1)  # (B, N) Voronoi regions
    protos = torch.randn(B, 12, D, generator=g)
    features = torch.gather(protos, 1, assign[..., None].expand(B, N, D)) + 0.6 * torch.randn(B, N, D, generator=g)
    bumps = torch.exp(-((pos[None] - centres[:, :3, None]) ** 2).sum(-1) / 0.02).sum(1)  # (B, N)
    importance = (bumps + 0.05 * torch.rand(B, N, generator=g)) / (bumps.amax(-1, keepdim=True) + 0.05)
    return importance, features


def baseline_case(R: int, N: int, D: int = 256, C: int = 128, seed: int = 0) -> PruneInputs:
    """One image of ``R`` crops: clustered features ``(R, N, D)``, CLIP-like embeddings ``(R, N, C)``
    (a projection of the features plus noise) and one instruction embedding ``(1, 1, C)``."""
    _, features = clustered_case(R, N, D, seed)
    g = torch.Generator().manual_seed(seed + 1)
    embeds = features @ torch.randn(D, C, generator=g) / D**0.5 + 0.3 * torch.randn(R, N, C, generator=g)
    return PruneInputs(features=features, image_embeds=embeds, text_embeds=torch.randn(1, 1, C, generator=g),
                       rows_per_image=(R,))


def timing_frame(rows: list[dict]):
    """The rows of :func:`run` as a table (pandas): the case, the median ms of the published loop and of
    the fast greedy, the speed-up's median and range over the repeats (published / fast), the verdict,
    the torch path's speed-up over the loop and whether the picks agree."""
    import pandas as pd

    def cell(spread: dict) -> str:
        return f"{spread['median']:.2f}x ({spread['low']:.2f}-{spread['high']:.2f})"

    return pd.DataFrame([{
        "B x N x T": f"{r['B']} x {r['N']} x {r['T']}", "repeats": r["repeats"],
        "loop (ms)": round(r["naive_ms"], 2), "fast (ms)": round(r["fast_ms"], 2),
        "speed-up (range)": cell(r["speedup"]), "verdict": r["speedup"]["verdict"],
        "torch path (range)": cell(r["torch_path_speedup"]), "same picks": r["identical_picks"],
    } for r in rows]).set_index("B x N x T")


# ---------------------------------------------------------------------------------------- greedy and baselines
def run(cases: list[tuple[int, int, int]], repeats: int = 5, naive_repeats: int | None = None,
        threads: int | None = 1) -> list[dict]:
    """One row per case ``B x N x T``: the published loop, the fast greedy and its torch path, timed
    interleaved (:func:`timed_pair`) on ``threads`` torch threads; ``speedup`` and ``torch_path_speedup``
    are :func:`ratio_spread` dicts (published / lab per repeat)."""
    with torch_threads(threads):
        return [_greedy_row(B, N, T, repeats, naive_repeats) for B, N, T in cases]


def _greedy_row(B: int, N: int, T: int, repeats: int, naive_repeats: int | None) -> dict:
    importance, features = clustered_case(B, N)
    K = coverage_similarity(features)
    fast = facility_location(importance, T, similarity=K)
    torch_path = facility_location(importance, T, similarity=K, backend="torch")
    naive = facility_location_naive(importance, T, similarity=K)
    nrep = naive_repeats or (repeats if B * N * N * T < 2e9 else 3)
    timing = timed_pair(lambda: facility_location_naive(importance, T, similarity=K),
                        lambda: facility_location(importance, T, similarity=K), nrep,
                        extra={"torch_path": lambda: facility_location(importance, T, similarity=K,
                                                                       backend="torch")})
    return dict(
        B=B, N=N, T=T, repeats=nrep,
        naive_ms=timing["published_ms"], fast_ms=timing["lab_ms"], torch_path_ms=timing["torch_path_ms"],
        speedup=timing["speedup"], torch_path_speedup=timing["torch_path_speedup"],
        identical_picks=bool(torch.equal(fast, naive)) and bool(torch.equal(torch_path, naive)),
        objective_naive=coverage(importance, K, naive).tolist(),
        objective_fast=coverage(importance, K, fast).tolist(),
    )


def run_baselines(cases: list[tuple[int, int, int]], repeats: int = 5, threads: int | None = 1) -> list[dict]:
    """One row per baseline and case ``R x N x T``: the published loop's and the lab's median ms, the
    speed-up with its spread (:func:`timed_pair`, on ``threads`` torch threads), and whether both pick
    the same tokens in the same order."""
    with torch_threads(threads):
        return _baseline_rows(cases, repeats)


def _baseline_rows(cases, repeats: int) -> list[dict]:
    rows = []
    for R, N, T in cases:
        inputs = baseline_case(R, N)
        flat = inputs.features.reshape(R * N, -1)
        text = inputs.text_embeds[0]

        def lab_divprune():
            result = prune("divprune", inputs, T)
            return result.extra["image_picks"][0]

        contenders = {
            "divprune": (lambda: divprune_loop(flat, R * T), lab_divprune),
            "cdpruner": (lambda: cdpruner_loop(inputs.features, inputs.image_embeds, text, T)[0],
                         lambda: prune("cdpruner", inputs, T).picks),
        }
        for method, (published, lab) in contenders.items():
            timing = timed_pair(published, lab, repeats)
            rows.append(dict(method=method, R=R, N=N, T=T, picked=R * T, repeats=repeats,
                             published_ms=timing["published_ms"], lab_ms=timing["lab_ms"],
                             speedup=timing["speedup"], identical_picks=bool(torch.equal(published(), lab()))))
    return rows


# ---------------------------------------------------------------------------------------- the field's methods
# LLaVA-1.5-7B-like shapes: CLIP ViT-L/14-336 (width 1024, 16 heads of 64) and Vicuna-7B (hidden 4096,
# 32 heads of 128), a 35-token prefix before the image and a 40-token instruction after it.
CLIP_SHAPES = {"width": 1024, "heads": 16, "head_dim": 64}
LLM_SHAPES = {"hidden": 4096, "heads": 32, "head_dim": 128, "prefix": 35, "text": 40}


def _saliency(N: int, g: torch.Generator) -> torch.Tensor:
    """``(N,)`` a smooth saliency map on the square-ish token grid with a few spikes (a per-key logit bias)."""
    importance, _ = clustered_case(1, N, 8, seed=int(torch.randint(1 << 30, (1,), generator=g)))
    bias = 2.0 * importance[0]
    bias[torch.randperm(N, generator=g)[:4]] += 3.0
    return bias


def _attention(B: int, H: int, L: int, bias: torch.Tensor, g: torch.Generator, causal: bool) -> torch.Tensor:
    """``(B, H, L, L)`` attention probabilities: a softmax of random logits plus the per-key ``bias`` ``(L,)``,
    causal (lower-triangular) if asked."""
    logits = torch.randn(B, H, L, L, generator=g) + bias
    if causal:
        logits = logits.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    return logits.softmax(-1)


def field_case(N: int = 576, budget: int = 64, seed: int = 0) -> dict:
    """The inputs of the six field methods' selections for one image of ``N`` tokens (batch 1), in the
    shapes of LLaVA-1.5-7B (:data:`CLIP_SHAPES`, :data:`LLM_SHAPES`), and each method's settings at ``budget``.

    Vision encoder: two CLIP attention maps ``(1, 16, 1+N, 1+N)`` (a shallow and a deep one), the deep
    layer's hidden states ``(1, 1+N, 1024)`` (spatially clustered) and key metric ``(1, 1+N, 64)``.
    Language model (``L = 35 + N + 40``): a causal attention map ``(1, 32, L, L)`` with a sink on token 0,
    hidden states ``(1, L, 4096)`` (clustered on the image), keys and queries ``(1, 32, L, 128)``, and
    SparseVLM's density noise.
    """
    from ..methods.dart import dart_token_topk
    from ..methods.pyramiddrop import pyramiddrop_schedule
    from ..methods.sparsevlm import sparsevlm_token_list
    from ..methods.visionzip import split_budget

    g = torch.Generator().manual_seed(seed)
    W, Hc, Dk = CLIP_SHAPES["width"], CLIP_SHAPES["heads"], CLIP_SHAPES["head_dim"]
    D, H, Dh, P, Tt = (LLM_SHAPES[k] for k in ("hidden", "heads", "head_dim", "prefix", "text"))
    clip_bias = torch.cat([torch.zeros(1), _saliency(N, g)])
    _, clip_hidden = clustered_case(1, 1 + N, W, seed=seed + 1)
    metric = clip_hidden @ torch.randn(W, Dk, generator=g) / W**0.5 + 0.3 * torch.randn(1, 1 + N, Dk, generator=g)
    L = P + N + Tt
    llm_bias = torch.cat([torch.full((1,), 4.0), torch.zeros(P - 1), _saliency(N, g), torch.zeros(Tt)])
    _, image_hidden = clustered_case(1, N, D, seed=seed + 2)
    hidden = torch.cat([torch.randn(1, P, D, generator=g), image_hidden, torch.randn(1, Tt, D, generator=g)], 1)
    scale = 1.0 + torch.rand(1, 1, L, 1, generator=g)  # per-token key norms, so that the L1 norms spread
    dominant, contextual = split_budget(budget)
    return {
        "N": N, "budget": budget, "prefix": P, "text": Tt, "L": L, "grid_side": math.isqrt(N),
        "clip_shallow": _attention(1, Hc, 1 + N, clip_bias, g, causal=False),
        "clip_deep": _attention(1, Hc, 1 + N, clip_bias, g, causal=False),
        "clip_hidden": clip_hidden, "clip_metric": metric,
        "llm_attention": _attention(1, H, L, llm_bias, g, causal=True),
        "llm_hidden": hidden, "llm_embeds": hidden + 0.5 * torch.randn(1, L, D, generator=g),
        "llm_keys": torch.randn(1, H, L, Dh, generator=g) * scale,
        "llm_queries": torch.randn(1, H, L, Dh, generator=g),
        "density_noise": torch.rand(1, int((N - sparsevlm_token_list(N, budget)[0]) * 0.3) + 1, generator=g),
        "visionzip": (dominant, contextual),
        "pyramiddrop_keep": pyramiddrop_schedule(N, budget).keep[0],
        "dart_topk": dart_token_topk(budget, num_tokens=N),
        "sparsevlm_keep": sparsevlm_token_list(N, budget)[0],
    }


def field_contenders(case: dict) -> dict:
    """Per method, ``(what it selects, published, lab, same)``: a description, two zero-argument callables
    (the published block and the lab's core, on the same tensors of :func:`field_case`) and a function
    of their outputs that says whether they select the same tokens (and agree on merged features)."""
    from ..methods.dart import dart_keep
    from ..methods.fastv import fastv_keep
    from ..methods.hiprune import hiprune_select
    from ..methods.pyramiddrop import pyramiddrop_keep
    from ..methods.sparsevlm import sparsevlm_layer, sparsevlm_raters
    from ..methods.visionzip import visionzip

    c = case
    N, P, L, budget = c["N"], c["prefix"], c["L"], c["budget"]
    dominant, contextual = c["visionzip"]
    hidden, attention, embeds = c["llm_hidden"], c["llm_attention"], c["llm_embeds"]

    def lab_sparsevlm():
        raters = sparsevlm_raters(embeds, P, N)
        return raters, sparsevlm_layer(hidden, attention, P, N, raters, c["sparsevlm_keep"],
                                       density_noise=c["density_noise"])

    close = lambda a, b: bool(torch.allclose(a, b, atol=1e-5, rtol=1e-5))
    return {
        "visionzip": (
            f"CLIP layer -2, {dominant} dominant (CLS included) + {contextual} merged",
            lambda: _pub.visionzip_block(c["clip_deep"], c["clip_hidden"], c["clip_metric"], dominant - 1, contextual),
            lambda: visionzip(c["clip_deep"], c["clip_hidden"], c["clip_metric"], dominant, contextual),
            lambda pub, lab: bool(torch.equal(pub[1], lab.all_indices)) and bool(torch.equal(pub[2], lab.merge.assign))
            and close(pub[0], lab.tokens)),
        "hiprune": (
            f"CLIP layers 9 and -2, {budget} patches",
            lambda: _pub.hiprune_block(c["clip_shallow"], c["clip_deep"], budget, c["grid_side"]),
            lambda: hiprune_select(c["clip_shallow"], c["clip_deep"], budget),
            lambda pub, lab: bool(torch.equal(pub, lab.index_mask))),
        "fastv": (
            f"LLM layer K, {budget} of {N} by the last token's attention",
            lambda: _pub.fastv_block(attention, P, N, budget),
            lambda: fastv_keep(attention, P, N, budget),
            lambda pub, lab: bool(torch.equal(pub[0], lab.image_index[0])) and bool(torch.equal(pub[1], lab.keep_index[0]))),
        "pyramiddrop": (
            f"LLM stage 1, {c['pyramiddrop_keep']} of {N} (budget {budget})",
            lambda: _pub.pyramiddrop_block(c["llm_queries"], c["llm_keys"], P, N, c["pyramiddrop_keep"], L - N),
            lambda: pyramiddrop_keep(c["llm_queries"], c["llm_keys"], P, N, c["pyramiddrop_keep"]),
            lambda pub, lab: bool(torch.equal(pub[0], lab[0]))),
        "dart": (
            f"LLM layer K, 4 + 4 pivots x {c['dart_topk']}",
            lambda: _pub.dart_block(hidden, c["llm_keys"], P, N, 4, 4, c["dart_topk"]),
            lambda: dart_keep(hidden, c["llm_keys"], P, N, c["dart_topk"], 4, 4),
            lambda pub, lab: set(pub[0].tolist()) == set(lab.image_index[0].tolist())
            and bool(torch.equal(pub[1], lab.keep_index[0]))),
        "sparsevlm": (
            f"raters + first sparse layer, {c['sparsevlm_keep']} of {N} kept, rest recycled",
            lambda: _pub.sparsevlm_block(embeds, hidden, attention, P, N, c["sparsevlm_keep"], c["density_noise"]),
            lab_sparsevlm,
            lambda pub, lab: bool(torch.equal(pub[0], lab[0][0].nonzero().squeeze(1)))
            and bool(torch.equal(pub[1], lab[1].keep_mask)) and bool(torch.equal(pub[2][None], lab[1].merge_index))
            and close(pub[3], lab[1].merged) and close(pub[4], lab[1].hidden_states)),
    }


def run_field(N: int = 576, budget: int = 64, repeats: int = 7, methods=FIELD_METHODS, seed: int = 0,
              threads: int | None = 1) -> list[dict]:
    """One row per field method: its selection on :func:`field_case` inputs, the published block against the
    lab's core, timed interleaved (:func:`timed_pair`) on ``threads`` torch threads, and whether both
    select the same tokens."""
    with torch_threads(threads):
        return _field_rows(N, budget, repeats, methods, seed)


def _field_rows(N: int, budget: int, repeats: int, methods, seed: int) -> list[dict]:
    case = field_case(N, budget, seed)
    contenders = field_contenders(case)
    rows = []
    for method in methods:
        what, published, lab, same = contenders[method]
        timing = timed_pair(published, lab, repeats)
        rows.append(dict(method=method, N=N, budget=budget, selects=what, repeats=repeats,
                         published_ms=timing["published_ms"], lab_ms=timing["lab_ms"], speedup=timing["speedup"],
                         identical_picks=same(published(), lab())))
    return rows


def _parse_cases(text: str) -> list[tuple[int, int, int]]:
    try:
        cases = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"--cases must look like 1x576x64,5x576x64; got {text!r}") from None
    if any(len(c) != 3 or min(c) < 1 for c in cases):
        raise SystemExit(f"--cases must look like 1x576x64,5x576x64; got {text!r}")
    return cases


def _print_table(header: str, lines: list[str]) -> None:
    print(header)
    print("-" * len(header))
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eadp_lab.bench select", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="1x576x64,5x576x64,1x2304x256,5x2304x256",
                        help="comma-separated BxNxT (default: %(default)s)")
    parser.add_argument("--baseline-cases", default="1x576x64,5x576x64",
                        help="comma-separated RxNxT of DivPrune and CDPruner, R crops of one image "
                             "(default: %(default)s)")
    parser.add_argument("--methods", default=",".join(FIELD_METHODS),
                        help="comma-separated field methods, or 'none' (default: %(default)s)")
    parser.add_argument("--field-tokens", type=int, default=576, help="N of the field methods (default: %(default)s)")
    parser.add_argument("--field-budget", type=int, default=64, help="their budget (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    cases = _parse_cases(args.cases)
    baseline_cases = _parse_cases(args.baseline_cases)
    methods = [] if args.methods.strip() == "none" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in FIELD_METHODS]
    if unknown or args.repeats < 1 or args.threads < 1:
        raise SystemExit(f"--methods must list some of {', '.join(FIELD_METHODS)} (or 'none'), --repeats and "
                         f"--threads must be at least 1; got {args.methods!r}, {args.repeats}, {args.threads}")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; speed-up = published / lab, median of {args.repeats} interleaved repeats "
          f"after a warm-up (range: smallest and largest per-repeat ratio; covering 1 = no measurable difference)")
    rows = run(cases, args.repeats, threads=args.threads)
    header = f"{'B':>2} {'N':>5} {'T':>4} | {'published loop':>15} {'fast (cpu)':>11} {'speed-up (range)':>28} | " \
             f"{'torch path':>11} {'speed-up (range)':>28} | {'same picks':>10} {'objective (loop = fast)':>24}"
    lines = []
    for r in rows:
        same_obj = all(abs(a - b) <= 1e-9 * max(1.0, abs(a)) for a, b in zip(r["objective_naive"], r["objective_fast"]))
        lines.append(f"{r['B']:>2} {r['N']:>5} {r['T']:>4} | {r['naive_ms']:>12.2f} ms {r['fast_ms']:>8.2f} ms "
                     f"{_ratio_cell(r['speedup'])} | {r['torch_path_ms']:>8.2f} ms "
                     f"{_ratio_cell(r['torch_path_speedup'])} | "
                     f"{str(r['identical_picks']):>10} {r['objective_naive'][0]:>12.4f} {'=' if same_obj else '!='}")
    _print_table(header, lines)
    baselines = run_baselines(baseline_cases, args.repeats, threads=args.threads)
    print()
    header = f"{'baseline':>9} {'R':>2} {'N':>5} {'T':>4} {'kept':>5} | {'published loop':>15} {'lab':>11} " \
             f"{'speed-up (range)':>28} | {'same picks':>10}"
    _print_table(header, [
        f"{r['method']:>9} {r['R']:>2} {r['N']:>5} {r['T']:>4} {r['picked']:>5} | {r['published_ms']:>12.2f} ms "
        f"{r['lab_ms']:>8.2f} ms {_ratio_cell(r['speedup'])} | {str(r['identical_picks']):>10}" for r in baselines])
    field = run_field(args.field_tokens, args.field_budget, args.repeats, methods,
                                                     threads=args.threads) if methods else []
    if field:
        print()
        header = f"{'method':>11} {'N':>5} {'T':>4} | {'published':>11} {'lab':>11} {'speed-up (range)':>28} | " \
                 f"{'verdict':>24} | {'same picks':>10} | selection timed"
        _print_table(header, [
            f"{r['method']:>11} {r['N']:>5} {r['budget']:>4} | {r['published_ms']:>8.2f} ms {r['lab_ms']:>8.2f} ms "
            f"{_ratio_cell(r['speedup'])} | {r['speedup']['verdict']:>24} | {str(r['identical_picks']):>10} | "
            f"{r['selects']}" for r in field])
    if args.json:
        write_json(args.json, {"threads": args.threads, "repeats": args.repeats, "rows": rows,
                               "baselines": baselines, "field": field}, indent=2)
    return 0


def _ratio_cell(spread: dict) -> str:
    """A table cell: ``"  12.31x (11.90-12.80)"`` (median, range), 28 characters wide."""
    return f"{spread['median']:>8.2f}x ({spread['low']:.2f}-{spread['high']:.2f})".rjust(28)
