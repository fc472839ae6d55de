"""Facility location: the exact fast greedy against the published loop, side by side.

    python -m eadp_lab.bench select [--cases 1x576x64,5x576x64,1x2304x256] [--repeats 5] [--json OUT]

For each case ``B x N x T`` it builds spatially clustered features (as real visual tokens
are), their similarity ``(cos + 1) / 2`` and a smooth importance map, then times, after a
warm-up, :func:`eadp_lab.select.facility_location` (the compiled CPU kernel, and the
torch-ops path that CUDA uses) and :func:`eadp_lab.select.facility_location_naive` (a
faithful re-implementation of the published loop). Both get the same precomputed
similarity, so the ratio is the greedy's alone. It prints medians, the speed-up, whether
the picks are identical and both objective values.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from .._io import write_json
from ..select import coverage, coverage_similarity, facility_location, facility_location_naive

__all__ = ["clustered_case", "run", "main"]


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


def _parse_cases(text: str) -> list[tuple[int, int, int]]:
    try:
        cases = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"--cases must look like 1x576x64,5x576x64; got {text!r}") from None
    if any(len(c) != 3 or min(c) < 1 for c in cases):
        raise SystemExit(f"--cases must look like 1x576x64,5x576x64; got {text!r}")
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eadp_lab.bench select", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="1x576x64,5x576x64,1x2304x256,5x2304x256",
                        help="comma-separated BxNxT (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    cases = _parse_cases(args.cases)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    rows = run(cases, args.repeats)
    header = f"{'B':>2} {'N':>5} {'T':>4} | {'published loop':>15} {'fast (cpu)':>11} {'speed-up':>9} | " \
             f"{'torch path':>11} {'speed-up':>9} | {'same picks':>10} {'objective (loop = fast)':>24}"
    print(header)
    print("-" * len(header))
    for r in rows:
        same_obj = all(abs(a - b) <= 1e-9 * max(1.0, abs(a)) for a, b in zip(r["objective_naive"], r["objective_fast"]))
        print(f"{r['B']:>2} {r['N']:>5} {r['T']:>4} | {r['naive_ms']:>12.2f} ms {r['fast_ms']:>8.2f} ms "
              f"{r['speedup']:>8.1f}x | {r['torch_path_ms']:>8.2f} ms {r['torch_path_speedup']:>8.1f}x | "
              f"{str(r['identical_picks']):>10} {r['objective_naive'][0]:>12.4f} {'=' if same_obj else '!='}")
    if args.json:
        write_json(args.json, {"rows": rows}, indent=2)
    return 0
