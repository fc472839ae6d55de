"""Stage 1 of EADP: entropy-aware dense scoring, one small pure function per step.

Implements steps 1 to 9 of EADP (Entropy-Aware Dense Pruning, Wang, Yang and Shen,
ECCV 2026) as stated in ``book/algorithm.md``. Every function works on a batch of *rows*
(an image, a crop of an image, or a video frame), computes in float32 whatever the input
dtype, and stays on the inputs' device. Taught in ``notebooks/00_tour`` and
``notebooks/02_entropy_analysis``.

Shapes: ``R`` rows, ``N`` visual tokens per row, ``C`` scoring width, ``M`` text queries per
row (1 in every published setting), ``L`` text positions, ``k`` kept text positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_ndim, check_same

__all__ = [
    "AGGREGATIONS",
    "l2_normalise",
    "global_similarity",
    "dense_similarity",
    "spatial_entropy",
    "entropy_filter",
    "aggregate",
    "fuse",
    "minmax_normalise",
    "gaussian_kernel",
    "smooth_on_grid",
    "smooth_rows",
    "polarise",
]

AGGREGATIONS = ("negative_entropy", "entropy_tempered", "top_k", "mean")


def l2_normalise(x: torch.Tensor, eps: float = 1e-8, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """Rows of ``x`` divided by their L2 norm (clamped at ``eps``), in ``dtype`` (``None``: the
    input's own dtype). Shape kept."""
    return F.normalize(x if dtype is None else x.to(dtype), dim=-1, eps=eps)


def global_similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor, sign: float = -1.0,
                      dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """``G[r, n, m] = sign * <V_n, g_m>`` on L2-normalised rows (step 2).

    Args:
        image_embeds: ``(R, N, C)`` scoring embeddings ``V``.
        text_embeds: ``(R, M, C)`` global text embeddings ``g``.
        sign: ``sigma``; -1 in every published preset.
        dtype: where the normalisation and the products are computed; ``None``: the inputs'
            own dtype (what published baselines do with half-precision inputs).
    Returns:
        ``(R, N, M)`` in ``dtype`` (float32 by default).
    """
    check_ndim("image_embeds", image_embeds, 3, "(R, N, C)")
    check_ndim("text_embeds", text_embeds, 3, "(R, M, C)")
    check_same("C (embedding width)", image_embeds=image_embeds.shape[-1], text_embeds=text_embeds.shape[-1])
    dtype = image_embeds.dtype if dtype is None else dtype  # one dtype for both sides
    v, g = l2_normalise(image_embeds, dtype=dtype), l2_normalise(text_embeds, dtype=dtype)
    return sign * torch.einsum("rnc,rmc->rnm", v, g)


def dense_similarity(image_embeds: torch.Tensor, text_embeds_seq: torch.Tensor, sign: float = -1.0) -> torch.Tensor:
    """``D[r, n, m, l] = sign * <V_n, S_ml>`` on L2-normalised rows (step 2).

    Args:
        image_embeds: ``(R, N, C)``.
        text_embeds_seq: ``(R, M, L, C)`` dense text embeddings ``S``.
    Returns:
        ``(R, N, M, L)`` float32.
    """
    check_ndim("image_embeds", image_embeds, 3, "(R, N, C)")
    check_ndim("text_embeds_seq", text_embeds_seq, 4, "(R, M, L, C)")
    check_same("C (embedding width)", image_embeds=image_embeds.shape[-1], text_embeds_seq=text_embeds_seq.shape[-1])
    v, s = l2_normalise(image_embeds), l2_normalise(text_embeds_seq)
    return sign * torch.einsum("rnc,rmlc->rnml", v, s)


def spatial_entropy(
    dense: torch.Tensor,
    temperature: float = 100.0,
    text_mask: torch.Tensor | None = None,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Entropy of each text token's distribution over the row's visual tokens (step 3).

    ``P[n | m, l] = softmax_n(temperature * D[n, m, l])``, ``H[m, l] = -sum_n P log(P + 1e-12)``.

    Args:
        dense: ``(R, N, M, L)`` from :func:`dense_similarity`.
        text_mask: optional ``(R, M, L)`` bool, True where a position is a real text token;
            masked positions get ``+inf`` entropy so the filter never keeps them.
        token_mask: optional ``(R, N)`` bool, True on real visual tokens (ragged rows); the
            distribution runs over those only.
    Returns:
        ``(R, M, L)`` float32, in nats; at most ``log N``.
    """
    check_ndim("dense", dense, 4, "(R, N, M, L)")
    logits = temperature * dense.float()
    if token_mask is not None:
        logits = logits.masked_fill(~token_mask[:, :, None, None], -math.inf)
    p = torch.softmax(logits, dim=1)
    entropy = -(p * torch.log(p + 1e-12)).sum(dim=1)
    if text_mask is not None:
        entropy = entropy.masked_fill(~text_mask, math.inf)
    return entropy


def _kept_count(length: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """``k = max(1, floor(keep_ratio * L))`` elementwise on a tensor of lengths."""
    return torch.clamp(torch.floor(keep_ratio * length.double()).long(), min=1)


def entropy_filter(
    entropy: torch.Tensor, keep_ratio: float = 0.2, text_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``k = max(1, floor(keep_ratio * L))`` lowest-entropy text tokens (step 4).

    ``L`` counts the real positions of each row (``text_mask``), so rows of one batch may
    keep different numbers of tokens; the shorter ones are padded.

    Args:
        entropy: ``(R, M, L)`` from :func:`spatial_entropy`.
        text_mask: optional ``(R, M, L)`` bool.
    Returns:
        ``kept`` ``(R, M, k_max)`` long, indices into L in ``torch.topk(largest=False)``
        order, and ``valid`` ``(R, M, k_max)`` bool, False on padding.
    Raises:
        ValueError: a row has no text token at all (an empty instruction).
    """
    check_ndim("entropy", entropy, 3, "(R, M, L)")
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"entropy_keep_ratio must be in (0, 1], got {keep_ratio}")
    R, M, L = entropy.shape
    if text_mask is None:
        length = torch.full((R, M), L, device=entropy.device)
    else:
        length = text_mask.sum(-1)
    if L == 0 or bool((length == 0).any()):
        raise ValueError("text_embeds_seq has no text tokens for some row (empty instruction)")
    k = _kept_count(length, keep_ratio)  # (R, M)
    k_max = int(k.max())
    kept = torch.topk(entropy, k_max, dim=-1, largest=False).indices
    valid = torch.arange(k_max, device=entropy.device) < k[..., None]
    return kept, valid


def aggregate(
    dense: torch.Tensor,
    entropy: torch.Tensor,
    kept: torch.Tensor,
    valid: torch.Tensor | None = None,
    rule: str = "negative_entropy",
    temperature: float = 0.01,
    top_k: int = 5,
) -> torch.Tensor:
    """Aggregate the kept text tokens' similarities per visual token (step 5).

    Rules (``j`` runs over kept tokens):

    - ``negative_entropy`` (published default): ``w[m, j] = softmax_j(-H[m, j] / (mu + 1e-6))``,
      ``local[n, m] = sum_j w[m, j] D[n, m, j]``.
    - ``entropy_tempered`` (LLaVA-Video): ``w[n, m, j] = softmax_j(D[n, m, j] / (mu * (H[m, j] + 1e-6)))``.
    - ``top_k``: mean of the ``top_k`` largest ``D[n, m, j]``.
    - ``mean``: plain mean over the kept tokens (an ablation, not published).

    Args:
        dense: ``(R, N, M, L)``; entropy: ``(R, M, L)``; kept, valid: ``(R, M, k)`` from
        :func:`entropy_filter`; temperature: ``mu``.
    Returns:
        ``local`` ``(R, N, M)`` float32.
    """
    check_choice("aggregation", rule, AGGREGATIONS)
    R, N, M, L = dense.shape
    if valid is None:
        valid = torch.ones_like(kept, dtype=torch.bool)
    d = torch.gather(dense.float(), 3, kept[:, None].expand(R, N, M, kept.shape[-1]))  # (R, N, M, k)
    h = torch.gather(entropy.float(), 2, kept)  # (R, M, k)
    h = h.masked_fill(~valid, 0.0)
    v = valid[:, None]  # (R, 1, M, k)
    if rule == "negative_entropy":
        w = torch.softmax((-h / (temperature + 1e-6)).masked_fill(~valid, -math.inf), dim=-1)
        return (w[:, None] * d).sum(-1)
    if rule == "entropy_tempered":
        logits = d / (temperature * (h[:, None] + 1e-6))
        w = torch.softmax(logits.masked_fill(~v, -math.inf), dim=-1)
        return (w * d).sum(-1)
    if rule == "top_k":
        count = torch.clamp(valid.sum(-1), max=top_k)  # (R, M)
        top = torch.topk(d.masked_fill(~v, -math.inf), min(top_k, d.shape[-1]), dim=-1).values
        top = top.masked_fill(torch.arange(top.shape[-1], device=d.device) >= count[:, None, :, None], 0.0)
        return top.sum(-1) / count[:, None]
    # mean
    return d.masked_fill(~v, 0.0).sum(-1) / valid.sum(-1)[:, None]


def fuse(global_sim: torch.Tensor, local: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``s[n] = mean_m(alpha * G[n, m] + (1 - alpha) * local[n, m])`` (step 6).

    Args:
        global_sim, local: ``(R, N, M)``.
    Returns:
        ``(R, N)`` float32.
    """
    check_same("shape", global_sim=tuple(global_sim.shape), local=tuple(local.shape))
    return (alpha * global_sim.float() + (1.0 - alpha) * local.float()).mean(-1)


def minmax_normalise(
    scores: torch.Tensor, rows_per_image: list[int] | None = None, token_mask: torch.Tensor | None = None,
    range_eps: float = 1e-6,
) -> torch.Tensor:
    """``r = (s - min s + 1e-6) / (max s - min s + range_eps)`` (step 7).

    Args:
        scores: ``(R, N)``.
        rows_per_image: crops (rows) of each image, consecutive; the min and max are taken
            jointly over an image's rows (LLaVA-1.6). ``None``: per row.
        token_mask: optional ``(R, N)`` bool of real tokens; padding is ignored and set to 0.
        range_eps: added to the range (EADP: 1e-6; CDPruner's published relevance: 0). A
            range that is still 0 (constant scores) counts as 1e-6, so constant scores give 1.
    Returns:
        ``(R, N)`` float32 in ``[0, 1]`` (up to the 1e-6 offsets).
    """
    s = scores.float()
    s_lo, s_hi = s, s
    if token_mask is not None:
        s_lo, s_hi = s.masked_fill(~token_mask, math.inf), s.masked_fill(~token_mask, -math.inf)
    if rows_per_image is None:
        lo = s_lo.min(-1, keepdim=True).values
        hi = s_hi.max(-1, keepdim=True).values
    else:
        if sum(rows_per_image) != s.shape[0]:
            raise ValueError(f"rows_per_image {rows_per_image} does not add up to the {s.shape[0]} rows of scores")
        counts = torch.tensor(rows_per_image, device=s.device)
        row_lo = s_lo.min(-1).values
        row_hi = s_hi.max(-1).values
        image = torch.repeat_interleave(torch.arange(len(rows_per_image), device=s.device), counts)
        lo = torch.full((len(rows_per_image),), math.inf, device=s.device).scatter_reduce(0, image, row_lo, "amin")
        hi = torch.full((len(rows_per_image),), -math.inf, device=s.device).scatter_reduce(0, image, row_hi, "amax")
        lo, hi = lo[image, None], hi[image, None]
    span = hi - lo + range_eps
    r = (s - lo + 1e-6) / torch.where(span > 0, span, torch.full_like(span, 1e-6))
    return r if token_mask is None else r.masked_fill(~token_mask, 0.0)


def gaussian_kernel(size: int = 3, sigma: float = 1.0, device=None) -> torch.Tensor:
    """``(size, size)`` Gaussian ``exp(-(dx^2 + dy^2) / (2 sigma^2))`` normalised to sum 1."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"smoothing_kernel must be a positive odd integer, got {size}")
    ax = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    kernel = torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def smooth_on_grid(
    importance: torch.Tensor, grid: tuple[int, int], kernel_size: int = 3, sigma: float = 1.0
) -> torch.Tensor:
    """Gaussian smoothing of each row laid out on its ``(H, W)`` grid, reflect padding (step 8).

    Args:
        importance: ``(R, N)`` with ``N == H * W``.
    Returns:
        ``(R, N)`` float32.
    Raises:
        ValueError: ``grid`` does not match ``N`` (the published code silently skips
        smoothing then; :func:`eadp_lab.methods.eadp.score` makes skipping an explicit choice).
    """
    R, N = importance.shape
    H, W = grid
    if H * W != N:
        raise ValueError(f"grid {H}x{W} = {H * W} does not match N = {N} tokens of importance")
    if kernel_size == 1:
        return importance.float()
    pad = kernel_size // 2
    if H <= pad or W <= pad:
        raise ValueError(f"grid {H}x{W} is too small for a {kernel_size}x{kernel_size} reflect-padded kernel")
    x = importance.float().reshape(R, 1, H, W)
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    k = gaussian_kernel(kernel_size, sigma, device=x.device)[None, None]
    return F.conv2d(x, k).reshape(R, N)


def smooth_rows(
    importance: torch.Tensor, grids: list[tuple[int, int]], kernel_size: int = 3, sigma: float = 1.0
) -> torch.Tensor:
    """:func:`smooth_on_grid` with one ``(H_r, W_r)`` per row; row ``r`` holds ``H_r * W_r`` real
    tokens first and padding after them (left at 0).

    Args:
        importance: ``(R, N)``; grids: ``R`` grids with ``H_r * W_r <= N``.
    Returns:
        ``(R, N)`` float32.
    """
    if len(set(grids)) == 1 and grids[0][0] * grids[0][1] == importance.shape[1]:
        return smooth_on_grid(importance, grids[0], kernel_size, sigma)
    out = torch.zeros_like(importance, dtype=torch.float32)
    for r, (H, W) in enumerate(grids):
        out[r, : H * W] = smooth_on_grid(importance[r : r + 1, : H * W], (H, W), kernel_size, sigma)[0]
    return out


def polarise(importance: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """``r ** beta`` (step 9): beta > 1 sharpens the map. Shape kept."""
    return importance.float() ** beta
