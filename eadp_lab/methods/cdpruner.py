"""CDPruner: token pruning as MAP inference of a conditional determinantal point process.

Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token
Pruning in MLLMs", 2025 (arXiv:2506.10967). The kernel is the cosine similarity of the
selection features weighted by each token's relevance to the instruction,
``L = diag(q) S diag(q)``, with ``q`` the *negated* text similarity averaged over the
queries (the sign convention EADP inherits), min-max normalised as published,
``(s - min + 1e-6) / (max - min)``. The subset is found by the fast greedy MAP inference
of Chen, Zhang and Zhou (NeurIPS 2018), which updates a Cholesky factor incrementally
(compiled on the CPU, :mod:`eadp_lab._dpp_cpu`). Taught in ``notebooks/03_submodular_selection``.

As the authors run it on multi-crop (AnyRes) images, the default takes the min and max of
the relevance jointly over **all rows of an image** (``normalisation="per_image"``); each
row still keeps ``T`` tokens. ``normalisation="per_row"`` normalises each row on its own.
On one-row images both are the same.

Precision: the normalisations, cosines, kernel and greedy are computed in **float32**
whatever the input dtype (the default, ``precision="float32"``), the greedy rounded as the
published loop rounds it: in float16 the kernel's small conditional variances lose their
digits and the greedy's order with them. ``precision="input"`` computes the features' and
embeddings' normalisation and cosines in the input dtype, as the published code does (the
min-max, the kernel product and the greedy stay in float32; the same picks on float32
inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import scoring
from .._checks import check_choice, check_real, check_sign
from ..select import cosine_similarity
from .base import PRECISIONS, PruneInputs, PruneResult, precision_dtype, register, selection_result

__all__ = ["CDPrunerSettings", "conditional_relevance", "conditional_kernel", "dpp_greedy_map", "run_cdpruner"]


@dataclass(frozen=True)
class CDPrunerSettings:
    """CDPruner's settings. Defaults: the published behaviour (joint min-max per image, float32 cosines)."""

    similarity_sign: float = -1.0  # CDPruner negates the CLIP relevance on LLaVA
    epsilon: float = 1e-10  # a pick whose conditional variance falls below this ends the DPP phase
    normalisation: str = "per_image"  # relevance min-max: per_image (jointly over an image's rows, published) | per_row
    precision: str = "float32"  # float32 | input (the published code's: cosines in the input dtype)

    def __post_init__(self):
        check_sign("similarity_sign", self.similarity_sign)
        check_real("epsilon", self.epsilon, above=0.0)  # 0 would divide by a vanishing variance
        check_choice("normalisation", self.normalisation, ("per_image", "per_row"))
        check_choice("precision", self.precision, PRECISIONS)


def conditional_relevance(inputs: PruneInputs, settings: CDPrunerSettings) -> torch.Tensor:
    """``(R, N)`` float32 relevance ``q``: ``sign * cos(V_n, g_m)`` averaged over the queries,
    min-max normalised per image or per row (``settings.normalisation``); padding is 0."""
    g = inputs.per_row(inputs.global_text())
    score = scoring.global_similarity(inputs.scoring_embeds, g, settings.similarity_sign,
                                      precision_dtype(settings.precision)).mean(-1)
    rows = inputs.rows_per_image if settings.normalisation == "per_image" else None
    return scoring.minmax_normalise(score, rows, inputs.token_mask, range_eps=0.0)


def conditional_kernel(relevance: torch.Tensor, features: torch.Tensor,
                       dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """``L[r, i, j] = q_i cos(F_i, F_j) q_j``: ``(R, N, N)`` float32 from ``relevance`` ``(R, N)``
    and ``features`` ``(R, N, D)`` (cosines computed in ``dtype``, ``None``: the features')."""
    q = relevance.float()
    # (q_i * S_ij) * q_j, as published, in place: no N x N temporaries
    return cosine_similarity(features, dtype).float().mul_(q[:, :, None]).mul_(q[:, None, :])


def _greedy_map_torch(K, budget, fallback, epsilon, selected):
    """Batched greedy MAP in torch ops (any device), in ``K``'s dtype: ``K`` ``(R, N, N)``,
    ``selected`` ``(R, N)`` bool (True: never picked; changed in place)."""
    R, N, _ = K.shape
    rows = torch.arange(R, device=K.device)
    cis = torch.zeros(R, budget, N, dtype=K.dtype, device=K.device)
    d2 = torch.diagonal(K, dim1=1, dim2=2).clone()  # (R, N)
    rank = fallback - fallback.amax(-1, keepdim=True) - 1.0  # below any d2 >= eps
    picks = torch.empty(R, budget, dtype=torch.long, device=K.device)
    for t in range(budget):
        live = d2.masked_fill(selected, -math.inf)
        exhausted = live.amax(-1) < epsilon
        score = torch.where(exhausted[:, None], rank.masked_fill(selected, -math.inf), live)
        best = score.argmax(-1)
        picks[:, t] = torch.where(selected.all(-1), -1, best)
        selected[rows, best] = True
        d_best = torch.sqrt(torch.clamp(d2[rows, best], min=epsilon))  # (R,)
        proj = torch.einsum("rt,rtn->rn", cis[rows, :t, best], cis[:, :t]) if t else 0.0
        e = (K[rows, best] - proj) / d_best[:, None]  # (R, N)
        e = torch.where(exhausted[:, None], torch.zeros_like(e), e)
        cis[:, t] = e
        d2 = d2 - e * e
    return picks


def _greedy_map_cpu(K, budget, fallback, epsilon, selected):
    """The same greedy in the compiled CPU kernel (:mod:`eadp_lab._dpp_cpu`)."""
    from .._dpp_cpu import greedy_map_batch

    picks = torch.empty(K.shape[0], budget, dtype=torch.long)
    free = (~selected).contiguous()
    greedy_map_batch(K.detach().contiguous().numpy(), fallback.detach().contiguous().numpy(), free.numpy(),
                     budget, float(epsilon), picks.numpy())
    return picks


def dpp_greedy_map(
    kernel: torch.Tensor, budget: int, fallback: torch.Tensor, epsilon: float = 1e-10,
    token_mask: torch.Tensor | None = None, backend: str = "auto",
) -> torch.Tensor:
    """Greedy MAP of a DPP with kernel ``L`` by incremental Cholesky (Chen et al., 2018).

    Each step picks ``argmax_i d_i^2``, the variance of token ``i`` conditioned on the picks
    so far (the log-determinant gain), lowest index on ties. Once every remaining ``d_i^2`` is
    below ``epsilon`` (the kernel's rank is exhausted), the rest are filled by ``fallback`` order.
    Computed in the kernel's dtype, rounded as the published loop rounds it (see
    :mod:`eadp_lab._dpp_cpu`): a float32 kernel gives the published picks even in near-ties,
    a float64 one the exact greedy; other dtypes are computed in float32.

    Args:
        kernel: ``(R, N, N)`` positive semi-definite, float32 or float64.
        budget: ``T <= N``.
        fallback: ``(R, N)`` score ranking the tokens left once the kernel is exhausted.
        token_mask: optional ``(R, N)`` bool of real tokens; the others are never picked.
        backend: ``"auto"`` (compiled kernel on CPU, torch ops elsewhere), ``"cpu"`` or ``"torch"``.
    Returns:
        ``(R, T)`` long in pick order, on the kernel's device; ``-1`` once a row runs out of tokens.
    """
    check_choice("backend", backend, ("auto", "cpu", "torch"))
    R, N, _ = kernel.shape
    if kernel.dtype not in (torch.float32, torch.float64):
        kernel = kernel.float()
    selected = torch.zeros(R, N, dtype=torch.bool, device=kernel.device) if token_mask is None else ~token_mask
    fallback = fallback.double()
    if backend == "auto":
        backend = "cpu" if kernel.device.type == "cpu" else "torch"
    if backend == "cpu":
        return _greedy_map_cpu(kernel.cpu(), budget, fallback.cpu(), epsilon, selected.cpu()).to(kernel.device)
    return _greedy_map_torch(kernel, budget, fallback, epsilon, selected.clone())


@register("cdpruner", CDPrunerSettings, text_guided=True,
          reference="Zhang et al., Beyond Attention or Similarity: Maximizing Conditional Diversity "
                    "for Token Pruning in MLLMs, 2025")
def run_cdpruner(inputs: PruneInputs, budget: int, settings: CDPrunerSettings) -> PruneResult:
    """Keep the ``budget`` tokens of each row's conditional-DPP greedy MAP subset."""
    relevance = conditional_relevance(inputs, settings)
    kernel = conditional_kernel(relevance, inputs.features, precision_dtype(settings.precision))
    picks = dpp_greedy_map(kernel, min(budget, inputs.num_tokens), relevance, settings.epsilon, inputs.token_mask)
    return selection_result("cdpruner", settings, budget, picks, inputs.num_tokens, importance=relevance)
