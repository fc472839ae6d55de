"""Selection speed: the lab's greedy loops against faithful re-implementations of the published ones.

    python -m eadp_lab.bench select [--cases 1x576x64,5x576x64,1x2304x256] [--baseline-cases 1x576x64,5x576x64]
                                    [--repeats 5] [--json OUT]

Facility location (``--cases``, ``B x N x T``): it builds spatially clustered features (as real
visual tokens are), their similarity ``(cos + 1) / 2`` and a smooth importance map, then times,
after a warm-up, :func:`eadp_lab.select.facility_location` (the compiled CPU kernel, and the
torch-ops path that CUDA uses) and :func:`eadp_lab.select.facility_location_naive` (a
faithful re-implementation of the published loop). Both get the same precomputed
similarity, so the ratio is the greedy's alone. It prints medians, the speed-up, whether
the picks are identical and both objective values.

Baselines (``--baseline-cases``, ``R x N x T``: one image of ``R`` crops): DivPrune and
CDPruner through :func:`eadp_lab.prune` with their default (published) settings against the
published loops (:mod:`eadp_lab.bench._published`), both from the same features, embeddings
and instruction (similarities included). DivPrune on ``R > 1`` crops makes one selection of
``R * T`` tokens over the whole image, as published; CDPruner keeps ``T`` per crop with the
relevance normalised over the image.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from .._io import write_json
from ..methods import PruneInputs, prune
from ..select import coverage, coverage_similarity, facility_location, facility_location_naive
from ._published import cdpruner_loop, divprune_loop

__all__ = ["clustered_case", "baseline_case", "run", "run_baselines", "main"]


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


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compilation, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(cases: list[tuple[int, int, int]], repeats: int = 5, naive_repeats: int | None = None) -> list[dict]:
    rows = []
    for B, N, T in cases:
        importance, features = clustered_case(B, N)
        K = coverage_similarity(features)
        fast = facility_location(importance, T, similarity=K)
        torch_path = facility_location(importance, T, similarity=K, backend="torch")
        naive = facility_location_naive(importance, T, similarity=K)
        nrep = naive_repeats or (repeats if B * N * N * T < 2e9 else 3)
        t_naive = _median_time(lambda: facility_location_naive(importance, T, similarity=K), nrep)
        t_fast = _median_time(lambda: facility_location(importance, T, similarity=K), repeats)
        t_torch = _median_time(lambda: facility_location(importance, T, similarity=K, backend="torch"), nrep)
        rows.append(dict(
            B=B, N=N, T=T,
            naive_ms=t_naive * 1e3, fast_ms=t_fast * 1e3, torch_path_ms=t_torch * 1e3,
            speedup=t_naive / t_fast, torch_path_speedup=t_naive / t_torch,
            identical_picks=bool(torch.equal(fast, naive)) and bool(torch.equal(torch_path, naive)),
            objective_naive=coverage(importance, K, naive).tolist(),
            objective_fast=coverage(importance, K, fast).tolist(),
        ))
    return rows


def run_baselines(cases: list[tuple[int, int, int]], repeats: int = 5) -> list[dict]:
    """One row per baseline and case ``R x N x T``: the published loop's and the lab's median ms,
    the speed-up, and whether both pick the same tokens in the same order."""
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
            t_published = _median_time(published, repeats)
            t_lab = _median_time(lab, repeats)
            rows.append(dict(method=method, R=R, N=N, T=T, picked=R * T, published_ms=t_published * 1e3,
                             lab_ms=t_lab * 1e3, speedup=t_published / t_lab,
                             identical_picks=bool(torch.equal(published(), lab()))))
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
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    cases = _parse_cases(args.cases)
    baseline_cases = _parse_cases(args.baseline_cases)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    rows = run(cases, args.repeats)
    header = f"{'B':>2} {'N':>5} {'T':>4} | {'published loop':>15} {'fast (cpu)':>11} {'speed-up':>9} | " \
             f"{'torch path':>11} {'speed-up':>9} | {'same picks':>10} {'objective (loop = fast)':>24}"
    lines = []
    for r in rows:
        same_obj = all(abs(a - b) <= 1e-9 * max(1.0, abs(a)) for a, b in zip(r["objective_naive"], r["objective_fast"]))
        lines.append(f"{r['B']:>2} {r['N']:>5} {r['T']:>4} | {r['naive_ms']:>12.2f} ms {r['fast_ms']:>8.2f} ms "
                     f"{r['speedup']:>8.1f}x | {r['torch_path_ms']:>8.2f} ms {r['torch_path_speedup']:>8.1f}x | "
                     f"{str(r['identical_picks']):>10} {r['objective_naive'][0]:>12.4f} {'=' if same_obj else '!='}")
    _print_table(header, lines)
    baselines = run_baselines(baseline_cases, args.repeats)
    print()
    header = f"{'baseline':>9} {'R':>2} {'N':>5} {'T':>4} {'kept':>5} | {'published loop':>15} {'lab':>11} " \
             f"{'speed-up':>9} | {'same picks':>10}"
    _print_table(header, [
        f"{r['method']:>9} {r['R']:>2} {r['N']:>5} {r['T']:>4} {r['picked']:>5} | {r['published_ms']:>12.2f} ms "
        f"{r['lab_ms']:>8.2f} ms {r['speedup']:>8.2f}x | {str(r['identical_picks']):>10}" for r in baselines])
    if args.json:
        write_json(args.json, {"rows": rows, "baselines": baselines}, indent=2)
    return 0
