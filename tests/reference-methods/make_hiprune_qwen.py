"""Make the ``hiprune_qwen`` reference cases by running the EADP authors' Qwen2.5-VL HiPrune code.

    python tests/reference-methods/make_hiprune_qwen.py GIT_DIR [--out DIR]

``GIT_DIR`` is a (bare) clone of github.com/SJTU-DeepVisionLab/EADP. The published code is read
from it at run time (``git show HEAD:...``) and executed as it is; nothing of it is stored here:

- ``Qwen_vl/model/hipruner.py`` whole: ``HiPruner.forward`` makes the selection;
- from ``Qwen_vl/model/vision_hiprune.py``, the method ``get_window_index`` (the order in which the
  blocks see the merged tokens) and the two lines of ``Qwen2_5_VisionTransformerReturnAttn.forward``
  that turn a block's attention into one score per merged token (found by their first and last lines).

Plumbing (the only bindings): ``get_window_index`` gets an object with the published config's
``window_size`` 112, ``patch_size`` 14, ``spatial_merge_size`` 2 (and its ``spatial_merge_unit`` 4); the
score lines get a synthetic attention map as ``attn_weights``; ``HiPruner.forward`` gets ``attn_list``
with the shallow scores at block ``object_layer - 1`` and the deep scores last (32 entries), and
``image_embeds`` whose single feature is the merged token's index, so the kept indices can be read from
what it returns.

Synthetic attention ``(H, S, S)`` over all patches, in window order: a softmax of random per-head
query/key projections of smooth patch features plus a per-key saliency bias with a few spikes,
masked (the published ``finfo.min`` mask, softmax in float32) to the windows for the shallow block
and to each frame for the deep block, as the encoder's windowed and full-attention blocks are.

A case is kept only if the published code gives the same integers on float64 copies of the maps and
on three copies perturbed by 3e-6 (relative), and scores within 1e-6 of the float64 run; otherwise
the next seed is tried. Rerunning the script rewrites the same files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import textwrap
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

REPO = "SJTU-DeepVisionLab/EADP"
PRUNER = "Qwen_vl/model/hipruner.py"
VISION = "Qwen_vl/model/vision_hiprune.py"
# Qwen2.5-VL's vision config, as get_window_index reads it
CONFIG = types.SimpleNamespace(window_size=112, patch_size=14, spatial_merge_size=2, spatial_merge_unit=4)
DEPTH = 32
OBJECT_LAYER = 4

# name: (grid_thw, heads, visual_token_num, alpha, what it exercises)
CASES = {
    "hiprune_qwen_i2_t16": ([[1, 8, 16], [1, 12, 8]], 2, 16, 0.5,
                            "two images; the first spans two windows, so window order is not raster order"),
    "hiprune_qwen_v2_t6_a2": ([[2, 8, 12]], 1, 6, 2.0,
                              ("a two-frame video; alpha 2.0 makes the anchors and buffers exceed the budget, "
                               "so the published code keeps only the lowest indices")),
    "hiprune_qwen_i1_t4": ([[1, 4, 8]], 1, 4, 0.5, "round(4 * 0.5 / 5) = 0 anchors: deep scores only"),
}


def git(git_dir: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True,
                          text=True).stdout


def block(source: str, first: str, last: str) -> str:
    """The lines of ``source`` from the one starting with ``first`` to the next one starting with
    ``last`` (both stripped), dedented."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(first))
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith(last))
    return textwrap.dedent("\n".join(lines[start:end + 1])) + "\n"


class Published:
    """The published pieces, compiled from the clone."""

    def __init__(self, git_dir: Path):
        self.head = git(git_dir, "rev-parse", "HEAD").strip()
        self.touched = {p: git(git_dir, "log", "-1", "--format=%H", "HEAD", "--", p).strip() for p in (PRUNER, VISION)}
        pruner = {"__name__": "published_hipruner"}
        exec(compile(git(git_dir, "show", f"HEAD:{PRUNER}"), PRUNER, "exec"), pruner)
        self.HiPruner = pruner["HiPruner"]
        vision = git(git_dir, "show", f"HEAD:{VISION}")
        namespace = {"torch": torch, "F": F}
        exec(compile(block(vision, "def get_window_index(self, grid_thw):", "return window_index, cu_window_seqlens"),
                     VISION, "exec"), namespace)
        self.get_window_index = namespace["get_window_index"]
        self.score_lines = compile(block(vision, "attn_weights = attn_weights.mean(dim=0).mean(dim=0)",
                                         "attn_weights = attn_weights.view("), VISION, "exec")

    def scores(self, attn: torch.Tensor) -> torch.Tensor:
        scope = {"attn_weights": attn}
        exec(self.score_lines, {"torch": torch}, scope)
        return scope["attn_weights"]

    def select(self, shallow_attn, deep_attn, grid_thw, budget, alpha):
        """``(shallow scores, deep scores, token indices within each image, split sizes)``."""
        shallow, deep = self.scores(shallow_attn), self.scores(deep_attn)
        attn_list = [torch.zeros_like(shallow) for _ in range(DEPTH)]
        attn_list[OBJECT_LAYER - 1], attn_list[-1] = shallow, deep
        pruner = self.HiPruner(object_layer=OBJECT_LAYER, alpha=alpha, visual_token_num=budget,
                               spatial_merge_size=CONFIG.spatial_merge_size)
        ids = torch.arange(shallow.shape[0], dtype=torch.float64)[:, None]
        kept, sizes = pruner(ids, attn_list, grid_thw)
        starts = torch.tensor(merged_counts(grid_thw)).cumsum(0) - torch.tensor(merged_counts(grid_thw))
        local = kept[:, 0].round().long() - torch.repeat_interleave(starts, torch.tensor(sizes))
        return shallow, deep, local, torch.tensor(sizes, dtype=torch.long)


def merged_counts(grid_thw: torch.Tensor) -> list[int]:
    m = CONFIG.spatial_merge_size
    return [t * (h // m) * (w // m) for t, h, w in grid_thw.tolist()]


def masks(grid_thw: torch.Tensor, cu_windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(S, S)`` bool: same window (windowed blocks), same frame (full-attention blocks); and ``S``."""
    frames = torch.repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0])
    S = int(frames.sum())

    def same(bounds):
        label = torch.repeat_interleave(torch.arange(len(bounds) - 1), bounds[1:] - bounds[:-1])
        return label[:, None] == label[None, :]

    return same(cu_windows), same(F.pad(frames.cumsum(0), (1, 0))), S


def saliency(grid_thw: torch.Tensor, window_index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``(S,)`` per-patch key bias in window order: a smooth map over each frame's merged grid, a few spikes."""
    m = CONFIG.spatial_merge_size
    values = []
    for t, h, w in grid_thw.tolist():
        gh, gw = h // m, w // m
        y, x = torch.meshgrid(torch.linspace(0, 1, gh), torch.linspace(0, 1, gw), indexing="ij")
        for _ in range(t):
            cy, cx = torch.rand(2, generator=gen)
            smooth = 1.5 * torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 0.08)
            flat = smooth.reshape(-1)
            spikes = torch.randint(0, gh * gw, (2,), generator=gen)
            flat[spikes] += 2.0 + torch.rand(2, generator=gen)
            values.append(flat)
    merged = torch.cat(values)[window_index]  # window order
    return merged.repeat_interleave(m * m) + 0.3 * torch.randn(merged.shape[0] * m * m, generator=gen)


def attention(features: torch.Tensor, bias: torch.Tensor, allowed: torch.Tensor, heads: int,
              gen: torch.Generator) -> torch.Tensor:
    d = features.shape[1]
    q = torch.einsum("sd,hde->hse", features, torch.randn(heads, d, 16, generator=gen) / d ** 0.5)
    k = torch.einsum("sd,hde->hse", features, torch.randn(heads, d, 16, generator=gen) / d ** 0.5)
    logits = q @ k.transpose(1, 2) / 4.0 + bias
    logits = logits + torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
    return torch.softmax(logits, dim=-1, dtype=torch.float32)


def make_case(published: Published, grid_thw, heads, budget, alpha, seed):
    grid_thw = torch.tensor(grid_thw, dtype=torch.long)
    window_index, cu = published.get_window_index(CONFIG, grid_thw)
    cu = torch.unique_consecutive(torch.tensor(cu, dtype=torch.long))
    windowed, per_frame, S = masks(grid_thw, cu)
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(S, 24, generator=gen)
    features = features + features.roll(1, 0) + features.roll(-1, 0)  # neighbours alike
    shallow_attn = attention(features, saliency(grid_thw, window_index, gen), windowed, heads, gen)
    deep_attn = attention(features, saliency(grid_thw, window_index, gen), per_frame, heads, gen)
    out = published.select(shallow_attn, deep_attn, grid_thw, budget, alpha)
    ref = published.select(shallow_attn.double(), deep_attn.double(), grid_thw, budget, alpha)
    stable = all(torch.equal(a, b) for a, b in zip(out[2:], ref[2:])) and all(
        float((a.double() - b).abs().max()) <= 1e-6 for a, b in zip(out[:2], ref[:2]))
    for _ in range(3):
        shaken = [a * (1 + 3e-6 * torch.randn(a.shape, generator=gen)) for a in (shallow_attn, deep_attn)]
        probe = published.select(*shaken, grid_thw, budget, alpha)
        stable = stable and all(torch.equal(a, b) for a, b in zip(out[2:], probe[2:]))
    tensors = {"attn_shallow": shallow_attn.contiguous(), "attn_deep": deep_attn.contiguous(),
               "image_grid_thw": grid_thw, "shallow_scores": out[0].contiguous(), "deep_scores": out[1].contiguous(),
               "window_index": window_index.long().contiguous(), "token_indices": out[2].contiguous(),
               "split_sizes": out[3].contiguous()}
    return stable, tensors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("git_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    published = Published(args.git_dir)
    for name, (grid, heads, budget, alpha, purpose) in CASES.items():
        for seed in range(100):
            stable, tensors = make_case(published, grid, heads, budget, alpha, seed)
            if stable:
                break
        else:
            raise SystemExit(f"{name}: no stable seed")
        merged = merged_counts(tensors["image_grid_thw"])
        settings = {
            "track": "hiprune_qwen", "grid_thw": grid, "heads": heads, "visual_token_num": budget, "alpha": alpha,
            "shallow_token_num": [max(0, round((min(budget, n) * alpha) / 5)) if budget < n else 0 for n in merged],
            "object_layer": OBJECT_LAYER, "vision_layers": DEPTH, "spatial_merge_size": CONFIG.spatial_merge_size,
            "window_size": CONFIG.window_size, "patch_size": CONFIG.patch_size, "merged_tokens": merged,
            "inputs": ["attn_shallow", "attn_deep", "image_grid_thw"],
            "outputs": ["shallow_scores", "deep_scores", "window_index", "token_indices", "split_sizes"],
            "source": {"repo": REPO, "paths": [PRUNER, VISION],
                       "symbols": ["HiPruner.forward (whole file executed)",
                                   "Qwen2_5_VisionTransformerReturnAttn.get_window_index",
                                   ("Qwen2_5_VisionTransformerReturnAttn.forward: the two attn_weights lines "
                                    "under 'if return_attn'")],
                       "head": published.head, "last_commit_touching_path": published.touched, "seed": seed},
            "note": f"HiPrune as in the EADP authors' Qwen2.5-VL code: {purpose}. Scores stay in window order, as "
                    "that code leaves them, and are used as if in raster order.",
        }
        (args.out / f"{name}.json").write_text(json.dumps(settings, indent=2) + "\n")
        save_file(tensors, str(args.out / f"{name}.safetensors"))
        print(f"{name}: seed {seed}, kept {tensors['split_sizes'].tolist()} of {merged}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
