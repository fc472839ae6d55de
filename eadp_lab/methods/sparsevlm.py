"""SparseVLM (v1.0): text-guided visual token sparsification inside the language model, with recycling.

Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference",
ICML 2025. Published code: Gumpest/SparseVLMs, version 1.0 (``USE_VERSION`` unset; commit
``26a5f48813c46cd1c7364160354e7fdd3febaa67``): ``llava/model/language_model/modelling_sparse_llama.py``
(``LlamaDynamicvitModel.forward``), ``score.py`` (``attn_postprocess_topk`` and the ``RETAIN_TOKN``
table) and ``utils.py`` (``cluster_and_merge``).

The rule, as the published code runs it at inference (prefill, batch 1):

- **Raters.** Once, on the language model's **input embeddings**: ``m = softmax_text(V T^T)`` averaged
  over the visual tokens ``V``, where ``T`` are all tokens after the image; the raters are the text
  tokens with ``m > mean(m)`` (positions relative to the text start).
- **Sparse layers** (``pruning_loc``, default ``[2, 6, 15]``, 0-based). Each runs normally and then
  prunes its **own output** with its **own attention** ``(1, H, L, L)``: relevance = the attention
  averaged over heads, then over the rater rows, on the current visual span. The top
  ``min(sparse_token_list[s], v - 1)`` visual tokens stay (``v``: visual tokens entering the layer).
- **Recycling.** Of the dropped tokens (in position order), the ``int(0.3 * dropped) + 1`` with the
  highest relevance (top-k order) are clustered by DPC-kNN into ``int(n / 10) + 1`` tokens
  (:func:`dpc_knn_merge`), which go after the kept ones. The next sequence is
  ``[prefix | kept visual in position order | merged | text]`` with ``keep + clusters`` visual
  tokens, and its position ids are truncated to ``0 .. L' - 1``.
- **Noise.** ``cluster_and_merge`` adds ``1e-6 * torch.rand`` to the densities (so the published code
  is not deterministic); here the draw is an input (``density_noise``) or comes from a ``generator``.
- Version 2.0 (head selection, RoPE bias correction, no merging) is not implemented.

Budget (``sparse_token_list``). The published table covers 576 tokens only; its keys
(``RETAIN_TOKN`` 192 / 128 / 96 / 64) are layer-averaged visual token counts, and its rows the
per-layer counts at layers 2, 6, 15 (:data:`SPARSEVLM_RETAIN_TOKN`). :func:`sparsevlm_token_list`
returns the published row for ``N = 576`` and a published key. Otherwise (the scaling rule): the
budget is moved to 576 tokens, ``T' = T * 576 / N``; the row at ``T'`` is interpolated linearly
between the neighbouring published rows (below 64 or above 192: the end row times ``T' / 64`` or
``T' / 192``); each count is scaled back by ``N / 576``, rounded half up and clamped to
``[1, N]`` (the published ``min(count, v - 1)`` still applies at run time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .._checks import check_int, check_real
from ._layers import check_layers, check_span, check_tensor, scaled_layers

__all__ = [
    "SPARSEVLM_RETAIN_TOKN",
    "SparseVLMSettings",
    "SparseVLMStep",
    "dpc_knn_merge",
    "sparsevlm_layer",
    "sparsevlm_raters",
    "sparsevlm_relevance",
    "sparsevlm_stage_counts",
    "sparsevlm_token_list",
]

# score.py (v1.0): RETAIN_TOKN -> tokens kept at the sparse layers 2, 6, 15 of LLaVA-1.5 (576 image tokens).
SPARSEVLM_RETAIN_TOKN: dict[int, tuple[int, int, int]] = {
    192: (300, 200, 110),
    128: (303, 110, 36),
    96: (238, 48, 26),
    64: (66, 30, 17),
}
_PUBLISHED_N = 576


@dataclass(frozen=True)
class SparseVLMSettings:
    """SparseVLM v1.0's settings. Defaults: the published sparse layers of a 32-layer LLaVA-1.5 language
    model, 30 % of the dropped tokens recycled, merging on."""

    layers: tuple[int, ...] = (2, 6, 15)  # 0-based sparse layers (pruning_loc), strictly increasing
    published_depth: int = 32  # the depth of the model ``layers`` were published for
    recycle_ratio: float = 0.3  # share of the dropped tokens recycled: int(ratio * dropped) + 1
    merge: bool = True  # recycle and merge (published v1.0); False drops them outright

    def __post_init__(self):
        check_int("published_depth", self.published_depth, minimum=2)
        object.__setattr__(self, "layers", check_layers(self.layers, self.published_depth))
        check_real("recycle_ratio", self.recycle_ratio, minimum=0.0, maximum=1.0)
        if not isinstance(self.merge, bool):
            raise ValueError(f"merge must be True or False, got {self.merge!r}")

    def sparse_layers(self, depth: int) -> tuple[int, ...]:
        """The sparse layers in a model of ``depth`` decoder layers (each through
        :func:`eadp_lab.methods._layers.scaled_layer`); a ``ValueError`` if two of them coincide."""
        return scaled_layers(self.layers, depth, self.published_depth)


def sparsevlm_token_list(num_tokens: int, budget: int) -> tuple[int, ...]:
    """``sparse_token_list`` (tokens kept at each sparse layer) for a budget on ``N`` image tokens: the
    published row for ``N = 576`` and a published key, else the module's scaling rule."""
    N = check_int("num_tokens", num_tokens, minimum=1)
    T = check_int("budget", budget, minimum=1, maximum=N)
    if N == _PUBLISHED_N and T in SPARSEVLM_RETAIN_TOKN:
        return SPARSEVLM_RETAIN_TOKN[T]
    t = T * _PUBLISHED_N / N
    keys = sorted(SPARSEVLM_RETAIN_TOKN)
    if t <= keys[0]:
        row = [c * t / keys[0] for c in SPARSEVLM_RETAIN_TOKN[keys[0]]]
    elif t >= keys[-1]:
        row = [c * t / keys[-1] for c in SPARSEVLM_RETAIN_TOKN[keys[-1]]]
    else:
        hi = next(k for k in keys if k >= t)
        lo = max(k for k in keys if k < t)
        w = (t - lo) / (hi - lo)
        row = [a + w * (b - a) for a, b in zip(SPARSEVLM_RETAIN_TOKN[lo], SPARSEVLM_RETAIN_TOKN[hi])]
    return tuple(min(max(math.floor(c * N / _PUBLISHED_N + 0.5), 1), N) for c in row)


def sparsevlm_stage_counts(num_tokens: int, token_list, recycle_ratio: float = 0.3, merge: bool = True) -> list[dict]:
    """Per sparse layer: ``visual_in``, ``keep = min(token_list[s], visual_in - 1)``, ``dropped``,
    ``merge_candidates = int(recycle_ratio * dropped) + 1`` and ``clusters = int(candidates / 10) + 1``
    (0 and 0 without merging or with nothing dropped); the next layer gets ``keep + clusters``."""
    v = check_int("num_tokens", num_tokens, minimum=1)
    out = []
    for count in token_list:
        keep = min(check_int("token_list", count, minimum=0), v - 1)
        dropped = v - keep
        candidates = int(dropped * recycle_ratio) + 1 if merge and dropped > 0 else 0
        clusters = int(candidates / 10) + 1 if candidates else 0
        out.append({"visual_in": v, "keep": keep, "dropped": dropped, "merge_candidates": candidates,
                    "clusters": clusters})
        v = keep + clusters
    return out


def sparsevlm_raters(inputs_embeds: torch.Tensor, image_start: int, image_len: int) -> torch.Tensor:
    """SparseVLM's text raters.

    Args:
        inputs_embeds: ``(B, L0, D)`` the language model's input embeddings.
        image_start, image_len: the image span; the text is every token after it.
    Returns:
        ``(B, L0 - image_start - N)`` bool: the text tokens with ``m > mean(m)``,
        ``m = softmax over the text of (V T^T)``, averaged over the visual tokens.
    """
    check_tensor("inputs_embeds", inputs_embeds, 3, "(B, L, D)")
    start, n = check_span(image_start, image_len, inputs_embeds.shape[1], after=1)
    visual = inputs_embeds[:, start:start + n]
    text = inputs_embeds[:, start + n:]
    m = (visual @ text.transpose(1, 2)).softmax(2).mean(1)  # (B, T)
    return m > m.mean(dim=1, keepdim=True)


def sparsevlm_relevance(attention: torch.Tensor, image_start: int, visual_len: int,
                        raters: torch.Tensor) -> torch.Tensor:
    """Relevance of the visual tokens at a sparse layer.

    Args:
        attention: ``(B, H, L, L)`` the layer's attention probabilities on the current sequence.
        image_start, visual_len: the current visual span ``[image_start, image_start + v)``; the text
            starts right after it.
        raters: ``(B, T)`` bool from :func:`sparsevlm_raters` (``T`` text tokens).
    Returns:
        ``(B, v)``: the attention averaged over heads, then over the rater rows, on the visual keys.
    """
    check_tensor("attention", attention, 4, "(B, H, L, L)")
    B, _, L, _ = attention.shape
    start, v = check_span(image_start, visual_len, L)
    text_start = start + v
    if raters.shape != (B, L - text_start):
        raise ValueError(f"raters must have shape (B, T) = ({B}, {L - text_start}), got {tuple(raters.shape)}")
    rows = []
    for b in range(B):
        rater_rows = raters[b].nonzero().squeeze(1) + text_start
        rows.append(attention[b, :, rater_rows, start:text_start].mean(0).mean(0))
    return torch.stack(rows)


def dpc_knn_merge(tokens: torch.Tensor, clusters: int, density_noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """DPC-kNN clustering and merging (SparseVLM's ``cluster_and_merge``).

    Args:
        tokens: ``(B, n, D)``.
        clusters: ``c``, ``1 <= c <= n``; also the ``k`` of the k-nearest-neighbour density.
        density_noise: ``(B, n)`` uniform [0, 1) draw, added as ``1e-6 * noise`` to the densities (the
            published code draws it with ``torch.rand``); ``None``: drawn from ``generator``.
    Returns:
        ``(B, c, D)``: per cluster the sum of its tokens divided by ``count + 1e-6``, clusters in order
        of centre score (``distance to a denser token * density``, highest first).

    Distances are Euclidean divided by ``sqrt(D)``; density is ``exp(-mean of the squared distances to
    the c nearest tokens, itself included)``; each token joins the nearest centre (ties: the first),
    and each centre its own cluster.
    """
    check_tensor("tokens", tokens, 3, "(B, n, D)")
    B, n, D = tokens.shape
    c = check_int("clusters", clusters, minimum=1, maximum=n)
    dist = torch.cdist(tokens, tokens, compute_mode="donot_use_mm_for_euclid_dist") / (D ** 0.5)  # (B, n, n)
    nearest = torch.topk(dist, k=c, dim=-1, largest=False).values
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    if density_noise is None:
        density_noise = torch.rand(density.shape, generator=generator, dtype=density.dtype,
                                   device="cpu" if generator is None else generator.device).to(density.device)
    elif density_noise.shape != density.shape:
        raise ValueError(f"density_noise must have shape (B, n) = {tuple(density.shape)}, "
                         f"got {tuple(density_noise.shape)}")
    density = density + density_noise.to(density) * 1e-6
    denser = density[:, None, :] > density[:, :, None]  # [b, i, j]: token j is denser than token i
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    parent_dist = torch.where(denser, dist, dist_max).min(dim=-1).values  # (B, n)
    centres = torch.topk(parent_dist * density, k=c, dim=-1).indices  # (B, c), by score
    rows = torch.arange(B, device=tokens.device)[:, None]
    assign = dist[rows, centres].argmin(dim=1)  # (B, n): nearest centre
    assign[rows.expand(B, c), centres] = torch.arange(c, device=tokens.device).expand(B, c)
    flat = (assign + rows * c).reshape(-1)
    counts = tokens.new_zeros(B * c, 1).index_add_(0, flat, tokens.new_ones(B * n, 1)) + 1e-6
    weight = 1.0 / counts[flat]  # (B * n, 1)
    merged = tokens.new_zeros(B * c, D).index_add_(0, flat, tokens.reshape(B * n, D) * weight)
    return merged.reshape(B, c, D)


class SparseVLMStep(NamedTuple):
    """What one sparse layer does (:func:`sparsevlm_layer`)."""

    relevance: torch.Tensor  # (B, v) visual relevance
    keep_mask: torch.Tensor  # (B, v) bool: the kept visual tokens
    merge_index: torch.Tensor  # (B, n) long: recycled tokens (top-k order), indices into the dropped ones (by position)
    merged: torch.Tensor  # (B, c, D): the merged tokens
    hidden_states: torch.Tensor  # (B, L', D): [prefix | kept visual in position order | merged | text]
    visual_len: int  # v' = keep + c, the visual tokens of the next sequence


def sparsevlm_layer(hidden_states: torch.Tensor, attention: torch.Tensor, image_start: int, visual_len: int,
                    raters: torch.Tensor, keep: int, settings: SparseVLMSettings | None = None,
                    density_noise: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> SparseVLMStep:
    """One sparse layer of SparseVLM v1.0, after the layer ran.

    Args:
        hidden_states: ``(B, L, D)`` the layer's output hidden states.
        attention: ``(B, H, L, L)`` the layer's attention probabilities (same sequence).
        image_start, visual_len: the current visual span ``[image_start, image_start + v)``.
        raters: ``(B, T)`` bool text raters (:func:`sparsevlm_raters`, chosen once on the input embeddings).
        keep: ``sparse_token_list[s]``; ``min(keep, v - 1)`` tokens stay.
        settings: the recycling share and ``merge``.
        density_noise, generator: the density noise of :func:`dpc_knn_merge`, ``(B, n)``.
    Returns:
        :class:`SparseVLMStep`. Every row keeps and merges the same numbers of tokens, so the new
        sequences have one length ``L' = L - v + v'``; the caller truncates the position ids to
        ``0 .. L' - 1`` (as published).
    """
    settings = settings or SparseVLMSettings()
    check_tensor("hidden_states", hidden_states, 3, "(B, L, D)")
    B, L, D = hidden_states.shape
    if attention.ndim != 4 or attention.shape[0] != B or attention.shape[2:] != (L, L):
        raise ValueError(f"attention {tuple(attention.shape)} does not match hidden_states "
                         f"{tuple(hidden_states.shape)}")
    relevance = sparsevlm_relevance(attention, image_start, visual_len, raters)
    start, v = int(image_start), int(visual_len)
    k = min(check_int("keep", keep, minimum=0), v - 1)
    device = hidden_states.device
    keep_mask = torch.zeros(B, v, dtype=torch.bool, device=device)
    keep_mask.scatter_(1, relevance.topk(k, dim=1).indices, True)
    kept = keep_mask.nonzero()[:, 1].reshape(B, k)  # ascending positions in the visual span
    dropped = (~keep_mask).nonzero()[:, 1].reshape(B, v - k)
    rows = torch.arange(B, device=device)[:, None]
    if settings.merge and v - k > 0:
        n = int((v - k) * settings.recycle_ratio) + 1
        merge_index = relevance[rows, dropped].topk(n, dim=1).indices  # into the dropped list
        candidates = hidden_states[rows, start + dropped[rows, merge_index]]  # (B, n, D)
        merged = dpc_knn_merge(candidates, int(n / 10) + 1, density_noise, generator)
    else:
        merge_index = torch.zeros(B, 0, dtype=torch.long, device=device)
        merged = hidden_states.new_zeros(B, 0, D)
    new_hidden = torch.cat([hidden_states[:, :start], hidden_states[rows, start + kept], merged,
                            hidden_states[:, start + v:]], dim=1)
    return SparseVLMStep(relevance, keep_mask, merge_index, merged, new_hidden, k + merged.shape[1])
