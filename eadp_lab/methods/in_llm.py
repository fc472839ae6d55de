"""The in-LLM methods as decoder plans: FastV, PyramidDrop and DART run by :func:`eadp_lab.attach`.

Each plan calls its method's selection core (:mod:`~eadp_lab.methods.fastv`,
:mod:`~eadp_lab.methods.pyramiddrop`, :mod:`~eadp_lab.methods.dart`, exact to the published code
on its reference vectors) on what the decoder seam (:mod:`eadp_lab.models.decoder`) hands it at the
pruning point, one sample at a time on its unpadded rows (the published code runs batch size 1).
Every layer index scales with the model's depth (:func:`eadp_lab.methods._layers.scaled_layer`:
``round(i x depth / published depth)``, clamped to ``[1, depth - 1]``), so the 4-layer lab LLaVA
runs every method at the layers the rule gives (FastV's ``K = 2`` of 32 falls on layer 1 of 4).

The budget counts the visual tokens after the method's last pruning step, per sample (the sum of
its images' budgets): exactly for FastV; for PyramidDrop through its schedule
(:func:`~eadp_lab.methods.pyramiddrop.pyramiddrop_schedule`, exactly the budget after the last
stage); for DART the largest count ``pivots + top-k x pivots`` not above the budget
(:func:`~eadp_lab.methods.dart.dart_token_topk`). Each sample's visual tokens must form one
contiguous run (one image or video per sample, as the published code assumes); a sample with
several (or a Qwen3-VL video, whose frames are separated by their timestamps) is refused with a
clear error. On Qwen3-VL the DeepStack features follow the rows a drop keeps (:mod:`eadp_lab.models.decoder`).
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from .decoder_plan import DecoderPlan, Drop, LayerView
from .base import register
from .dart import DARTSettings, dart_keep, dart_token_topk
from .fastv import FastVSettings, fastv_keep
from .pyramiddrop import PyramidDropSettings, pyramiddrop_keep, pyramiddrop_schedule
from .sparsevlm import SparseVLMSettings, sparsevlm_layer, sparsevlm_raters, sparsevlm_token_list

__all__ = ["FastVPlan", "PyramidDropPlan", "DARTPlan", "SparseVLMPlan", "sample_span", "sparse_stages"]


def sample_span(view: LayerView, b: int, method: str) -> tuple[int, int, int]:
    """``(first, start, n)`` of sample ``b``: its first real row, and its visual run ``[start, start + n)``
    counted from that row. ``ValueError`` naming ``method`` unless the visual rows form one run."""
    first = int(view.valid[b].nonzero()[0])
    vis = view.visual[b].nonzero().squeeze(1)
    if len(vis) == 0:
        raise ValueError(f"{method}: sample {b} has no visual tokens left to prune")
    if int(vis[-1] - vis[0]) + 1 != len(vis):
        runs = int((vis[1:] - vis[:-1] > 1).sum()) + 1
        raise ValueError(f"{method} prunes one contiguous run of visual tokens per sample, as published; sample {b} "
                         f"has {runs} runs (several images, an image and a video, or a video whose frames are "
                         "separated by text, as Qwen3-VL's timestamps separate them)")
    return first, int(vis[0]) - first, len(vis)


def _every_row(view: LayerView, b: int) -> torch.Tensor:
    """All real rows of sample ``b``: a budget of every visual token keeps everything."""
    return view.valid[b].nonzero().squeeze(1)


def _around(first: int, start: int, n: int, length: int, kept: torch.Tensor) -> torch.Tensor:
    """A sample's new rows in the batch's current rows: its prefix, ``kept`` (rows counted from its first real
    row, in the order given; ``-1 - m`` for merged row ``m``) and its text; ``first`` its first real row,
    ``[start, start + n)`` its visual run."""
    kept = kept.reshape(-1).cpu()
    kept = torch.where(kept >= 0, kept + first, kept)
    return torch.cat([first + torch.arange(start), kept, first + torch.arange(start + n, length - first)])


class _PerSample(DecoderPlan):
    """A plan that selects one sample at a time on its unpadded rows (the published code's batch of one).

    :meth:`select` returns a sample's new rows (counted from its first real row) and its merged states
    (``None`` when it merges nothing); :meth:`shared` computes what every sample's selection reads. A
    budget of at least every visual token of the prompt keeps every row.
    """

    name = ""
    renumber = False
    min_budget = 1  # the fewest tokens a sample's budget may keep (checked by attach, before the first call)

    def shared(self, view: LayerView, store: dict, stage: int):
        return None

    def select(self, view: LayerView, store: dict, stage: int, shared, b: int, first: int, start: int, n: int):
        raise NotImplementedError

    def full(self, store: dict, b: int, n: int) -> bool:
        """Whether sample ``b`` keeps every visual token (its budget covers the ``n`` it had at the first drop)."""
        return self.keep[b] >= store.setdefault("visual", {}).setdefault(b, n)

    def drop(self, view: LayerView, store: dict, stage: int) -> Drop:
        start_time = time.perf_counter()
        common = self.shared(view, store, stage)
        rows, merged = [], []
        for b in range(view.hidden.shape[0]):
            first, start, n = sample_span(view, b, self.name)
            if self.full(store, b, n):
                rows.append(_every_row(view, b))
                merged.append(None)
                continue
            kept, extra = self.select(view, store, stage, common, b, first, start, n)
            rows.append(_around(first, start, n, view.hidden.shape[1], kept))
            merged.append(extra)
        if all(m is None for m in merged):
            merged = None
        else:
            merged = [view.hidden.new_zeros(0, view.hidden.shape[-1]) if m is None else m for m in merged]
        return Drop(rows, merged, self.renumber, note={"seconds": time.perf_counter() - start_time})


class _AtLayerK(_PerSample):
    """A plan that reads layer ``K - 1`` and drops once, before layer ``K`` (``settings.layer(depth)``)."""

    def __init__(self, settings, depth: int):
        self.settings = settings
        k = settings.layer(depth)
        self.capture_layers, self.drop_layers = (k - 1,), (k,)


class FastVPlan(_AtLayerK):
    """FastV: before layer ``K`` keep the image tokens the last token attended to most at layer ``K - 1``."""

    name = "fastv"

    def capture(self, view: LayerView, store: dict) -> None:
        store["last_row"] = view.attention(view.last_rows())  # (B, H, 1, L): the last token's attention

    def select(self, view, store, stage, shared, b, first, start, n):
        last = store["last_row"][b:b + 1, :, :, first:]
        L = last.shape[-1]
        # fastv_keep reads the last query row only: that row, broadcast as the square map it expects
        selection = fastv_keep(last.expand(1, last.shape[1], L, L), start, n, min(self.keep[b], n))
        return selection.image_index.sort().values, None


class PyramidDropPlan(_PerSample):
    """PyramidDrop: at each stage layer keep the share of image tokens the last token ranks highest there."""

    name = "pyramiddrop"
    renumber = True

    def __init__(self, settings: PyramidDropSettings, depth: int):
        self.settings = settings
        self.drop_layers = settings.stage_layers(depth)  # 1-based "after layer l" = the 0-based layer l

    def shared(self, view, store, stage):
        return view.queries_keys()  # this layer's own queries and keys, before the drop

    def select(self, view, store, stage, shared, b, first, start, n):
        q, k = shared
        if stage == 0:
            store.setdefault("schedule", {})[b] = pyramiddrop_schedule(n, min(self.keep[b], n), self.settings)
        keep = min(store["schedule"][b].keep[stage], n)
        return pyramiddrop_keep(q[b:b + 1, :, first:], k[b:b + 1, :, first:], start, n, keep), None


class DARTPlan(_AtLayerK):
    """DART: before layer ``K`` keep pivot tokens and, per pivot, the image tokens least like it."""

    name = "dart"

    @property
    def min_budget(self) -> int:
        return self.settings.pivot_image  # its image pivots are always kept (dart_token_topk)

    def capture(self, view: LayerView, store: dict) -> None:
        store["keys"] = view.keys()  # (B, H_kv, L, d): what layer K-1 caches

    def shared(self, view, store, stage):
        return view.final_norm(view.hidden) if view.final_norm is not None else view.hidden

    def select(self, view, store, stage, normed, b, first, start, n):
        # text pivots come from the tokens after the image: a prompt with fewer (a question asked before
        # the image, as the lab LLaVA's) gives as many as it has
        after = view.hidden.shape[1] - first - start - n
        s = replace(self.settings, pivot_text=min(self.settings.pivot_text, after))
        topk = dart_token_topk(min(self.keep[b], n), s, n)
        selection = dart_keep(normed[b:b + 1, first:].float(), store["keys"][b:b + 1, :, first:], start, n, topk,
                              s.pivot_image, s.pivot_text)
        return torch.as_tensor(sorted(selection.image_index[0].tolist())), None


def sparse_stages(settings: SparseVLMSettings, depth: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(sparse layers, which published stage each applies)`` in a model of ``depth`` layers.

    Each published sparse layer (0-based; it prunes its own output, so the next layer is the pruning
    point) moves by :func:`~eadp_lab.methods._layers.scaled_layer`, clamped to ``[1, depth - 2]`` so that a
    layer follows it; stages that land on one layer become one, with the last of their counts (the
    smallest): the 4-layer lab LLaVA runs SparseVLM's three stages (2, 6, 15 of 32) as two, at layers 1
    and 2."""
    from ._layers import scaled_layer

    if depth < 3:
        raise ValueError(f"sparsevlm needs a language model of at least 3 layers, got {depth}")
    layers, stages = [], []
    for s, published in enumerate(settings.layers):
        layer = min(scaled_layer(published, depth, settings.published_depth), depth - 2)
        if layers and layers[-1] == layer:
            stages[-1] = s
        else:
            layers.append(layer)
            stages.append(s)
    return tuple(layers), tuple(stages)


class SparseVLMPlan(_PerSample):
    """SparseVLM v1.0: after each sparse layer keep the visual tokens the text raters attend to most there,
    and merge some of the dropped ones into a few recycled tokens."""

    name = "sparsevlm"
    renumber = True

    def __init__(self, settings: SparseVLMSettings, depth: int, seed: int = 0):
        self.settings = settings
        self.sparse, self.stages = sparse_stages(settings, depth)
        self.capture_layers = (0, *self.sparse)
        self.drop_layers = tuple(layer + 1 for layer in self.sparse)
        self.seed = seed  # the densities' noise (published: torch.rand) comes from a seeded generator

    def capture(self, view: LayerView, store: dict) -> None:
        for b in range(view.hidden.shape[0]):
            first, start, n = sample_span(view, b, "sparsevlm")
            if view.index == 0:  # raters, once, on the input embeddings; the stages' counts
                raters = sparsevlm_raters(view.hidden[b:b + 1, first:].float(), start, n)
                # no text token above the mean (one token after the image, as when the question comes before
                # it, as the lab LLaVA's does): every token after the image rates
                store.setdefault("raters", {})[b] = raters if bool(raters.any()) else torch.ones_like(raters)
                store.setdefault("token_list", {})[b] = sparsevlm_token_list(n, min(self.keep[b], n))
            if view.index in self.sparse:  # the rater rows' attention in this layer, over the sample's keys
                raters = store["raters"][b][0].nonzero().squeeze(1) + start + n  # rows counted from `first`
                probs = view.sample(b).attention((raters + first)[None])[:, :, :, first:]  # (1, H, R, L_b)
                L = probs.shape[-1]
                square = probs.new_zeros(1, probs.shape[1], L, L)  # the core reads the rater rows only
                square[:, :, raters] = probs
                store.setdefault("attention", {})[b] = square

    def shared(self, view, store, stage):
        return torch.Generator(device=view.hidden.device).manual_seed(self.seed + stage)

    def select(self, view, store, stage, generator, b, first, start, v):
        keep = store["token_list"][b][self.stages[stage]]
        step = sparsevlm_layer(view.hidden[b:b + 1, first:].float(), store["attention"][b], start, v,
                               store["raters"][b], keep, self.settings, generator=generator)
        kept = step.keep_mask[0].nonzero().squeeze(1).cpu() + start
        merged = -1 - torch.arange(step.merged.shape[1])  # the merged rows follow the kept ones
        return torch.cat([kept, merged]), step.merged[0]


_REFERENCE = {
    "fastv": "FastV (Chen et al., ECCV 2024): image tokens the last token attends to least dropped before layer K",
    "pyramiddrop": "PyramidDrop (Xing et al., CVPR 2025): image tokens dropped in stages by the last instruction "
                   "token's attention",
    "dart": "DART (Wen et al., 2025): pivot tokens and the image tokens least like them, by key norms and cosine",
    "sparsevlm": "SparseVLM v1.0 (Zhang et al., ICML 2025): visual tokens ranked by text raters' attention at "
                 "sparse layers, the dropped ones partly recycled into merged tokens",
}


# Each plan class is its registry entry's run: ``Plan(settings, depth)`` is the plan attach installs.
for _name, _settings, _plan in (("fastv", FastVSettings, FastVPlan),
                                ("pyramiddrop", PyramidDropSettings, PyramidDropPlan),
                                ("dart", DARTSettings, DARTPlan), ("sparsevlm", SparseVLMSettings, SparseVLMPlan)):
    register(_name, _settings, text_guided=False, reference=_REFERENCE[_name], stage="llm")(_plan)
