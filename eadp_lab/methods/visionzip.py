"""VisionZip: keep the tokens CLIP's CLS attends to most, and merge the rest into a few.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
CVPR 2025 (arXiv:2412.04467). Text-agnostic: it works inside the vision encoder, on the
attention and hidden states of CLIP's second-to-last layer (the layer LLaVA takes its
features from), before the projector. The semantics here follow the authors' code,
github.com/dvlab-research/VisionZip at commit ``3151f6df4fca36a4cd1c985e5956e725b1f9ad02``
(``visionzip/clip_encoder.py``, ``CLIPVisionTower_VisionZip.forward``; the key ``metric`` from
the patched attention in ``visionzip/utils.py``; the budget from ``visionzip()`` in
``visionzip/main.py``):

1. **Dominant tokens.** The CLS row of the layer's attention, summed over the heads, ranks the
   patches; the top ``dominant - 1`` are kept. ``dominant`` counts the CLS token, which is
   always kept: ``visionzip(model, dominant=54, contextual=10)`` gives 54 + 10 = 64 tokens.
2. **Contextual tokens.** The ``M = N - (dominant - 1)`` remaining patches, in position order,
   are the *filtered* list. ``contextual`` targets are taken from it by a uniform stride
   (``step = max(1, M // contextual)``; every ``step``-th entry, the first ``contextual`` of them):
   a stride over the list, not a spatial grid. Every other filtered token joins the target
   whose L2-normalised key (``metric``, the layer's key states averaged over the heads) has the
   largest dot product with its own (first target on ties). A contextual token is the
   target's hidden state **plus** the mean hidden state of the tokens that joined it (the
   target is not part of the mean; a target nobody joined keeps its own state). Assignment
   uses the keys; merging uses the hidden states.
3. **Output.** ``[CLS, dominant patches in ascending position order, contextual tokens]``,
   ``(B, dominant + contextual, D)``, before the projector. The published code returns the
   dominant indices in topk order (``all_indices = [0, topk + 1]``) beside it.

Which tensors: with ``output_hidden_states`` and ``output_attentions``, the published code uses
``attentions[-2]`` (the attention of layer -2), ``hidden_states[-2]`` (that layer's **output**)
and layer -2's keys; :func:`layer_attention` recomputes the attention and keys from the
layer's input (``hidden_states[-3]``) without switching the model to eager attention.

Rows are independent: on LLaVA-1.6 (AnyRes) every crop keeps ``dominant + contextual`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .._checks import check_int, check_ndim

__all__ = ["VisionZipSettings", "VisionZipResult", "ContextualMerge", "LayerAttention", "PUBLISHED_SPLITS",
           "split_budget", "dominant_tokens", "contextual_tokens", "visionzip", "layer_attention"]

# The authors' (dominant, contextual) pairs for LLaVA-1.5's budgets, CLS counted in dominant.
PUBLISHED_SPLITS = {192: (162, 30), 128: (108, 20), 64: (54, 10)}


def split_budget(budget: int) -> tuple[int, int]:
    """``(dominant, contextual)`` of a VisionZip budget (tokens out per row, CLS included).

    Rule: ``dominant = round(budget * 54 / 64)``, rounded half up (``(27 * budget + 16) // 32``),
    then clamped to ``[1, budget - 1]`` so that CLS and at least one contextual token fit;
    ``contextual = budget - dominant``. It gives the authors' pairs exactly
    (:data:`PUBLISHED_SPLITS`: 192 = 162 + 30, 128 = 108 + 20, 64 = 54 + 10) and keeps their
    27 : 5 proportion elsewhere (e.g. 32 = 27 + 5, 16 = 14 + 2, 2 = 1 + 1).

    Raises:
        ValueError: ``budget`` is not an integer >= 2.
    """
    budget = check_int("budget", budget, minimum=2)
    dominant = min(max((27 * budget + 16) // 32, 1), budget - 1)
    return dominant, budget - dominant


@dataclass(frozen=True)
class VisionZipSettings:
    """VisionZip's settings, as ``visionzip(model, dominant, contextual)`` takes them.

    ``dominant`` counts the CLS token (``dominant - 1`` patches are kept by attention);
    ``contextual`` merged tokens follow; they add up to the budget. Both ``None`` (the default):
    the split of the budget the authors publish (:func:`split_budget`: 54 + 10 at 64 tokens).
    """

    dominant: int | None = None  # tokens kept by CLS attention, CLS included (>= 1); None: from the budget
    contextual: int | None = None  # merged tokens (>= 1; the published code divides by it); None: from the budget

    def __post_init__(self):
        if (self.dominant is None) != (self.contextual is None):
            raise ValueError("give VisionZip's dominant and contextual together, or neither (the published split "
                             f"of the budget), got dominant={self.dominant!r}, contextual={self.contextual!r}")
        if self.dominant is not None:
            check_int("dominant", self.dominant, minimum=1)
            check_int("contextual", self.contextual, minimum=1)

    @property
    def budget(self) -> int | None:
        """Tokens out per row: ``dominant + contextual`` (``None`` when they come from the budget)."""
        return None if self.dominant is None else self.dominant + self.contextual

    def split(self, budget: int) -> tuple[int, int]:
        """``(dominant, contextual)`` at ``budget``: the settings' own, which must add up to it, or
        :func:`split_budget`'s."""
        if self.dominant is None:
            return split_budget(budget)
        if self.budget != budget:
            raise ValueError(f"VisionZip's dominant + contextual ({self.dominant} + {self.contextual}) must equal the "
                             f"budget {budget}; leave both unset for the published split of the budget")
        return self.dominant, self.contextual

    @classmethod
    def from_budget(cls, budget: int) -> VisionZipSettings:
        """The settings of a budget by :func:`split_budget`."""
        return cls(*split_budget(budget))

    def check_tokens(self, num_patches: int) -> None:
        """Raise unless a row of ``num_patches`` patches holds the dominant and contextual tokens
        (``dominant - 1 + contextual <= N``)."""
        if self.dominant - 1 + self.contextual > num_patches:
            raise ValueError(f"dominant - 1 + contextual must be at most the {num_patches} patches of a row, "
                             f"got {self.dominant} - 1 + {self.contextual}")


class LayerAttention(NamedTuple):
    """One CLIP layer's attention, recomputed eagerly (:func:`layer_attention`).

    Attributes:
        attn: ``(B, H, S, S)`` attention probabilities (rows sum to 1), in the queries' dtype.
        keys: ``(B, H, S, Dh)`` key states (``k_proj`` of the layer-normed input, bias included).
    """

    attn: torch.Tensor
    keys: torch.Tensor

    @property
    def metric(self) -> torch.Tensor:
        """``(B, S, Dh)``: the keys averaged over the heads, VisionZip's ``metric``."""
        return self.keys.mean(1)


def layer_attention(layer: torch.nn.Module, hidden_states: torch.Tensor) -> LayerAttention:
    """A transformers CLIP encoder layer's attention probabilities and keys, computed eagerly.

    The same computation as transformers' eager CLIP attention (``layer_norm1``, then
    ``self_attn.q_proj`` / ``k_proj``, ``softmax(q k^T * scale)`` in float32, cast back to the
    queries' dtype), whatever attention implementation the model runs with; the model is not
    changed. No attention mask (CLIP's vision tower uses none).

    Args:
        layer: a ``transformers`` ``CLIPEncoderLayer`` (``encoder.layers[i]``).
        hidden_states: ``(B, S, W)``, the layer's **input**: ``hidden_states[i]`` of a forward
            run with ``output_hidden_states=True`` (for layer -2 of the tower, ``hidden_states[-3]``).
    Returns:
        :class:`LayerAttention`: ``attn`` ``(B, H, S, S)``, ``keys`` ``(B, H, S, Dh)``.
    """
    check_ndim("hidden_states", hidden_states, 3, "(B, S, W)")
    attn_module = layer.self_attn
    B, S, _ = hidden_states.shape
    heads, head_dim = attn_module.num_heads, attn_module.head_dim
    with torch.no_grad():
        x = layer.layer_norm1(hidden_states)
        q = attn_module.q_proj(x).view(B, S, heads, head_dim).transpose(1, 2)
        k = attn_module.k_proj(x).view(B, S, heads, head_dim).transpose(1, 2)
        logits = torch.matmul(q, k.transpose(-1, -2)) * attn_module.scale
        attn = torch.softmax(logits, dim=-1, dtype=torch.float32).to(q.dtype)
    return LayerAttention(attn, k)


def _check_attention(attn: torch.Tensor) -> tuple[int, int]:
    """``(B, N)`` of a ``(B, H, 1+N, 1+N)`` attention map."""
    check_ndim("attn", attn, 4, "(B, H, 1+N, 1+N)")
    B, _, S, S2 = attn.shape
    if S != S2 or S < 2:
        raise ValueError(f"attn must have shape (B, H, 1+N, 1+N) with N >= 1, got {tuple(attn.shape)}")
    return B, S - 1


def dominant_tokens(attn: torch.Tensor, dominant: int) -> torch.Tensor:
    """The patches CLS attends to most: VisionZip's dominant tokens.

    Args:
        attn: ``(B, H, 1+N, 1+N)`` attention probabilities of CLIP layer -2, CLS at position 0.
        dominant: tokens kept by attention **including CLS** (as the published
            ``visionzip(model, dominant, contextual)``), so ``dominant - 1`` patches are picked.
    Returns:
        ``(B, dominant - 1)`` long patch indices in ``[0, N)`` (CLS excluded; add 1 for positions
        in the ``1+N`` sequence), in topk order of ``sum over heads of attn[:, :, 0, 1:]``.
    """
    _, N = _check_attention(attn)
    dominant = check_int("dominant", dominant, minimum=1, maximum=N + 1)
    return attn[:, :, 0, 1:].sum(dim=1).topk(dominant - 1, dim=1).indices


class ContextualMerge(NamedTuple):
    """VisionZip's contextual tokens of a batch (:func:`contextual_tokens`); ``C`` merged tokens,
    ``M`` filtered (non-dominant) patches per row.

    Attributes:
        tokens: ``(B, C, D)`` merged hidden states.
        targets: ``(B, C)`` long patch indices (CLS excluded) of the targets.
        absorbed_by: ``(B, N)`` long: the merged token (``0..C-1``) each non-dominant patch went
            into (a target goes into its own), ``-1`` for the dominant patches.
        target_slots: ``(C,)`` long: the targets' positions in the filtered list (the published
            ``target_indices``).
        assign: ``(B, M - C)`` long: the merged token each non-target filtered patch joined, in
            filtered order (the argmax of the published similarity).
        filtered: ``(B, M)`` long patch indices of the filtered list (ascending).
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    absorbed_by: torch.Tensor
    target_slots: torch.Tensor
    assign: torch.Tensor
    filtered: torch.Tensor


def contextual_tokens(hidden: torch.Tensor, metric: torch.Tensor, keep: torch.Tensor,
                      contextual: int) -> ContextualMerge:
    """VisionZip's contextual merging of the patches the dominant selection left.

    Args:
        hidden: ``(B, 1+N, D)`` hidden states of CLIP layer -2 (its output), CLS at 0.
        metric: ``(B, 1+N, Dk)`` that layer's key states averaged over the heads.
        keep: ``(B, K)`` long patch indices already kept (the dominant ones; CLS excluded, any order,
            no repeats), or ``(B, N)`` bool, True on them.
        contextual: ``C`` merged tokens, ``1 <= C <= M = N - K``.
    Returns:
        :class:`ContextualMerge`. Targets: every ``max(1, M // C)``-th filtered patch, the first
        ``C``; each other filtered patch joins the target of largest dot product of the
        L2-normalised ``metric`` (first on ties); merged token ``c`` = ``hidden[target c]`` + mean of
        the hidden states that joined it (only its own state if none did).
    """
    check_ndim("hidden", hidden, 3, "(B, 1+N, D)")
    check_ndim("metric", metric, 3, "(B, 1+N, Dk)")
    B, S, D = hidden.shape
    N = S - 1
    if tuple(metric.shape[:2]) != (B, S):
        raise ValueError(f"metric must have shape (B, 1+N, Dk) = ({B}, {S}, Dk), got {tuple(metric.shape)}")
    device = hidden.device
    if keep.dtype == torch.bool:
        if tuple(keep.shape) != (B, N):
            raise ValueError(f"a bool keep must have shape (B, N) = ({B}, {N}), got {tuple(keep.shape)}")
        kept = keep
    else:
        check_ndim("keep", keep, 2, "(B, K)")
        kept = torch.zeros(B, N, dtype=torch.bool, device=device).scatter_(1, keep, True)
    counts = kept.sum(1)
    if B and bool((counts != counts[0]).any()):
        raise ValueError("keep must keep the same number of patches in every row")
    M = N - (int(counts[0]) if B else 0)
    contextual = check_int("contextual", contextual, minimum=1, maximum=M)
    C = contextual

    filtered = (~kept).nonzero()[:, 1].view(B, M)  # ascending patch indices per row
    rows = torch.arange(B, device=device)[:, None]
    keys = metric[:, 1:][rows, filtered]  # (B, M, Dk)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    states = hidden[:, 1:][rows, filtered]  # (B, M, D)

    step = max(1, M // C)
    target_slots = torch.arange(0, M, step, device=device)[:C]
    is_target = torch.zeros(M, dtype=torch.bool, device=device)
    is_target[target_slots] = True
    others = (~is_target).nonzero()[:, 0]  # (M - C,) filtered positions, ascending
    similarity = torch.bmm(keys[:, others], keys[:, target_slots].transpose(1, 2))  # (B, M - C, C)
    assign = similarity.argmax(dim=2)  # (B, M - C)

    sums = torch.zeros(B, C, D, dtype=hidden.dtype, device=device)
    sums.scatter_add_(1, assign[:, :, None].expand(-1, -1, D), states[:, others])
    joined = torch.zeros(B, C, dtype=hidden.dtype, device=device)
    joined.scatter_add_(1, assign, torch.ones_like(assign, dtype=hidden.dtype))
    tokens = states[:, target_slots] + sums / joined.clamp(min=1)[:, :, None]

    slot_of = torch.empty(B, M, dtype=torch.long, device=device)
    slot_of[:, target_slots] = torch.arange(C, device=device)
    slot_of[:, others] = assign
    absorbed_by = torch.full((B, N), -1, dtype=torch.long, device=device)
    absorbed_by.scatter_(1, filtered, slot_of)
    return ContextualMerge(tokens, filtered[:, target_slots], absorbed_by, target_slots, assign, filtered)


@dataclass(frozen=True)
class VisionZipResult:
    """VisionZip on a batch of ``B`` rows of ``N`` patches (:func:`visionzip`); ``d = dominant - 1``
    patches by attention, ``C`` contextual tokens. Patch indices exclude CLS (``0..N-1``).

    Attributes:
        dominant_topk: ``(B, d)`` long, in topk order (the published ``all_indices[:, 1:] - 1``).
        dominant_sorted: ``(B, d)`` long, ascending: the order of the output sequence.
        tokens: ``(B, 1 + d + C, D)``: CLS, the dominant patches in position order, then the
            contextual tokens (the published ``hidden_states_save``).
        merge: the :class:`ContextualMerge` (targets, what each merged token absorbed).
    """

    dominant_topk: torch.Tensor
    dominant_sorted: torch.Tensor
    tokens: torch.Tensor
    merge: ContextualMerge

    @property
    def all_indices(self) -> torch.Tensor:
        """``(B, 1 + d)`` long: the published ``all_indices``, ``[0, dominant_topk + 1]`` (positions in
        the ``1+N`` sequence, CLS first, then topk order)."""
        cls = torch.zeros_like(self.dominant_topk[:, :1])
        return torch.cat([cls, self.dominant_topk + 1], dim=1)

    @property
    def absorbed_by(self) -> torch.Tensor:
        """``(B, N)`` long: the contextual token (``0..C-1``) each patch went into, ``-1`` if kept as dominant."""
        return self.merge.absorbed_by


def visionzip(attn: torch.Tensor, hidden: torch.Tensor, metric: torch.Tensor, dominant: int = 54,
              contextual: int = 10) -> VisionZipResult:
    """VisionZip on CLIP layer -2, exactly as the published ``CLIPVisionTower_VisionZip.forward``.

    Args:
        attn: ``(B, H, 1+N, 1+N)`` attention probabilities of layer -2 (``attentions[-2]``), CLS at 0.
        hidden: ``(B, 1+N, D)`` that layer's output (``hidden_states[-2]``).
        metric: ``(B, 1+N, Dk)`` that layer's key states averaged over the heads
            (:attr:`LayerAttention.metric`).
        dominant: tokens kept by attention, CLS included (``dominant - 1`` patches).
        contextual: merged tokens; ``dominant - 1 + contextual <= N``.
    Returns:
        :class:`VisionZipResult`; ``tokens`` is ``(B, dominant + contextual, D)``.
    """
    B, N = _check_attention(attn)
    check_ndim("hidden", hidden, 3, "(B, 1+N, D)")
    if tuple(hidden.shape[:2]) != (B, N + 1):
        raise ValueError(f"hidden must have shape (B, 1+N, D) = ({B}, {N + 1}, D), got {tuple(hidden.shape)}")
    settings = VisionZipSettings(dominant, contextual)
    settings.check_tokens(N)
    top = dominant_tokens(attn, dominant)
    ordered = top.sort(dim=1).values
    merge = contextual_tokens(hidden, metric, top, contextual)
    rows = torch.arange(B, device=hidden.device)[:, None]
    tokens = torch.cat([hidden[:, :1], hidden[rows, ordered + 1], merge.tokens.to(hidden.dtype)], dim=1)
    return VisionZipResult(top, ordered, tokens, merge)
