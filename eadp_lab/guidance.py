"""How well text guides pruning: where a score map points, which objects a kept set reaches, and
which words the entropy filter keeps.

Small pure measurements on top of :mod:`eadp_lab.scoring` and :mod:`eadp_lab.methods`, for
the failure modes that motivate EADP (global guidance drifting off the asked object, dense
guidance polluted by function words, Top-K piling onto one region) and for the analysis of
the spatial entropy (temperature, keep ratio, similarity sign, scored text positions).
Taught in ``notebooks/01_motivation_failures`` and ``notebooks/02_entropy_analysis``.

Shapes: ``N`` visual tokens of one image, ``K`` objects of its scene, ``L`` text positions,
``T`` temperatures or keep ratios.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from . import scoring
from ._checks import check_budget, check_ndim
from .analysis import object_recall, objects_reached, row_object_masks

__all__ = [
    "GROUPS",
    "named_objects",
    "object_masks",
    "union_mask",
    "top_share",
    "guidance_maps",
    "filtered_words",
    "named_recall",
    "compare_kept",
    "scorer_with_positions",
    "with_text",
    "token_group",
    "token_groups",
    "token_word",
    "entropy_at",
    "filter_share",
    "separation",
]

# Groups of text positions, in plotting order. The paper scores the first four; the published
# code also scores "start", "end" and "padding" (every position of CLIP's zero-padded input).
GROUPS = ("content", "other", "function", "punctuation", "start", "end", "padding")
WORD_MARKS = ("\u2581", "\u0120")  # SentencePiece's ▁ and byte-level BPE's Ġ: a word starts here
SPECIAL_GROUPS = {"<s>": "start", "</s>": "end", "<pad>": "padding",
                  "<|startoftext|>": "start", "<|endoftext|>": "end"}


def named_objects(question) -> tuple[int, ...]:
    """The objects a question's words name (the union of ``question.refs``), ascending.

    An existence question about an absent object names none; a relation question names two.
    """
    return tuple(sorted({int(k) for ref in question.refs for k in ref}))


def object_masks(coverage, threshold: float = 0.25) -> torch.Tensor:
    """``(K, N)`` bool: the patches each object covers at least ``threshold`` (``N = gh * gw``).

    Args:
        coverage: ``(K, gh, gw)`` from :attr:`eadp_lab.world.Record.coverage`.
    """
    return row_object_masks(coverage, threshold)[0]  # one image is one row


def union_mask(masks: torch.Tensor, objects: Sequence[int]) -> torch.Tensor:
    """``(N,)`` bool: patches of any of ``objects`` (all False if there are none).

    Args:
        masks: ``(K, N)`` bool from :func:`object_masks`.
    """
    check_ndim("masks", masks, 2, "(K, N)")
    if len(objects) == 0:
        return torch.zeros(masks.shape[1], dtype=torch.bool)
    return masks[list(objects)].bool().any(0)


def top_share(scores: torch.Tensor, target: torch.Tensor, k: int) -> float:
    """Share of the ``k`` highest-scoring tokens that lie on ``target`` (ties: lowest index first).

    Args:
        scores: ``(N,)``; target: ``(N,)`` bool; k: at most ``N``.
    Returns:
        A float in ``[0, 1]``; ``target.float().mean()`` is what a random ranking scores on average.
    """
    check_ndim("scores", scores, 1, "(N,)")
    k = min(check_budget(k, "k"), scores.shape[0])
    order = torch.sort(scores.float(), descending=True, stable=True).indices[:k]
    return float(target.bool()[order].float().mean())


def guidance_maps(inputs, config) -> dict[str, torch.Tensor]:
    """EADP's score maps of one single-row image, stage by stage.

    Args:
        inputs: :class:`eadp_lab.PruneInputs` of one image with one row and ``M = 1`` query.
        config: :class:`eadp_lab.EADPConfig`.
    Returns:
        ``{"global": G, "dense": local, "fused": s, "importance": r}``, each ``(N,)`` float32:
        the global-text similarity (step 2), the entropy-filtered dense score (step 5), their
        fusion (step 6) and the final importance after min-max, smoothing and ``beta`` (step 9).
    """
    from .methods.eadp import score

    if inputs.num_rows != 1:
        raise ValueError(f"guidance_maps takes one image with one row, got {inputs.num_rows} rows")
    importance, trace = score(inputs, config)
    return {"global": trace.global_similarity[0, :, 0], "dense": trace.local[0, :, 0], "fused": trace.fused[0],
            "importance": importance[0]}


def filtered_words(inputs, config) -> dict[str, torch.Tensor]:
    """Which text positions EADP's entropy filter keeps for one image (steps 2 to 4), without selecting.

    Args:
        inputs: :class:`eadp_lab.PruneInputs` of one image with one row and ``M = 1`` query.
        config: :class:`eadp_lab.EADPConfig`.
    Returns:
        ``{"entropy": (L,) float32 (inf on unscored positions), "scored": (L,) bool (the text
        mask), "kept": (L,) bool (kept by the filter), "weight": (L,) float32}``, on the CPU.
        ``weight`` is each kept position's weight under the published ``negative_entropy``
        aggregation, ``softmax(-H / (mu + 1e-6))`` over the kept positions (0 elsewhere), whatever
        ``config.aggregation`` is: with ``mu = 0.01`` it is close to one-hot unless entropies tie.
    """
    from .methods.eadp import fused_score

    if inputs.num_rows != 1:
        raise ValueError(f"filtered_words takes one image with one row, got {inputs.num_rows} rows")
    _, parts = fused_score(inputs, config)
    entropy = parts["entropy"][0, 0].cpu()
    kept = torch.zeros_like(entropy, dtype=torch.bool)
    kept[parts["kept_text"][0, 0][parts["kept_text_valid"][0, 0]].cpu()] = True
    weight = torch.zeros_like(entropy)
    weight[kept] = torch.softmax(-entropy[kept] / (config.aggregation_temperature + 1e-6), dim=0)
    return {"entropy": entropy, "scored": torch.isfinite(entropy), "kept": kept, "weight": weight}


def named_recall(keep_mask: torch.Tensor, masks: torch.Tensor, objects: Sequence[int]) -> dict:
    """How much of the named objects a kept set still shows.

    Args:
        keep_mask: ``(N,)`` bool; masks: ``(K, N)`` bool; objects: the named objects.
    Returns:
        ``{"recall": mean share of each named object's patches kept, "reached": share of the
        named objects with at least one kept patch, "all_reached": every one of them reached}``;
        NaN recall and reach (and ``all_reached`` False) when no object is named.
    """
    if len(objects) == 0:
        return {"recall": math.nan, "reached": math.nan, "all_reached": False}
    sub = masks[list(objects)]
    reached = objects_reached(keep_mask, sub)
    return {"recall": float(object_recall(keep_mask, sub).mean()), "reached": float(reached.float().mean()),
            "all_reached": bool(reached.all())}


def compare_kept(inputs, masks: torch.Tensor, objects: Sequence[int], methods: dict, budget: int) -> list[dict]:
    """What each method keeps of one image, measured on the named objects.

    Args:
        inputs: :class:`eadp_lab.PruneInputs` of one image.
        masks: ``(K, N)`` bool from :func:`object_masks`; objects: the named objects.
        methods: ``{label: (registry method, settings)}``, e.g. ``{"eadp": lab.settings("eadp")}``.
        budget: visual tokens kept.
    Returns:
        One row per method: ``{"method": label, "budget", "kept", "recall", "reached", "all_reached"}``
        (see :func:`named_recall`).
    """
    from .methods import prune

    rows = []
    for label, (method, settings) in methods.items():
        result = prune(method, inputs, budget, settings)
        keep = result.keep_mask.any(0)  # (N,): a kept token of any row (one row here)
        rows.append({"method": label, "budget": int(budget), "kept": int(keep.sum()),
                     **named_recall(keep, masks, objects)})
    return rows


def scorer_with_positions(lab, positions: str):
    """The text scorer ``lab`` prunes with, scoring ``positions`` (``"content"`` or ``"all"``).

    ``"all"`` is the published code's rule: CLIP's zero-padded input, start, end and padding
    positions included (LLM space: the special tokens too). Returns a copy; ``lab`` is unchanged.
    """
    import copy

    from ._checks import check_choice

    check_choice("positions", positions, ("content", "all"))
    scorer = copy.copy(lab._scorer_for())
    scorer.text_positions = positions
    return scorer


def with_text(inputs, text):
    """A copy of ``inputs`` scored against other text embeddings (e.g. every padded position).

    Args:
        inputs: :class:`eadp_lab.PruneInputs` of one image.
        text: :class:`eadp_lab.models.scorers.TextEmbeddings` (``dense`` ``(1, 1, L, C)``, ``mask``
            ``(1, 1, L)``, ``global_`` ``(1, 1, C)`` or ``None``: the masked mean of ``dense``).
    """
    import dataclasses

    device = inputs.features.device
    return dataclasses.replace(
        inputs, text_embeds=None if text.global_ is None else text.global_.to(device),
        text_embeds_seq=text.dense.to(device), text_mask=text.mask.to(device),
    )


def token_group(token: str, specials: dict | None = None) -> str:
    """The group (one of :data:`GROUPS`) of one text position of the lab world's tokenizer.

    ``content``: colour, shape, size, count, relation and motion words; ``other``: nouns
    (``object``, ``image``), attribute names (``colour``, ``size``) and answers; ``function``
    and ``punctuation``; ``start``, ``end``, ``padding``: the special positions (``specials``
    maps a token string to its group; default the lab's and CLIP's). A word the world never
    writes is ``other`` (``punctuation`` if it has no letter or digit). The marks tokenizers put
    on a word are ignored: CLIP BPE's ``</w>`` suffix, SentencePiece's ``▁`` (LLaMA, Vicuna) and
    byte-level BPE's ``Ġ`` (Qwen) prefix, so a real checkpoint's ``'▁the'`` and ``'Ġthe'`` are
    ``function`` as the lab's ``'the'`` is. A word the tokenizer splits into pieces (``'Ġb'``,
    ``'el'``, ``'ow'``) is ``other``, piece by piece.
    """
    from .world import CONTENT_KINDS, vocabulary

    table = SPECIAL_GROUPS if specials is None else specials
    if token in table:
        return table[token]
    word = token_word(token)
    kind = vocabulary().get(word.lower())
    if kind is None:
        return "other" if any(c.isalnum() for c in word) else "punctuation"
    if kind in CONTENT_KINDS:
        return "content"
    return kind if kind in ("function", "punctuation") else "other"


def token_word(token: str) -> str:
    """``token`` without the word marks of CLIP BPE (``</w>`` suffix), SentencePiece (``▁`` prefix)
    and byte-level BPE (``Ġ`` prefix): ``'▁the'``, ``'Ġthe'`` and ``'the</w>'`` are ``'the'``."""
    word = token[:-4] if token.endswith("</w>") else token
    return word[1:] if word[:1] in WORD_MARKS else word


def token_groups(tokens: Sequence[str], specials: dict | None = None) -> list[str]:
    """:func:`token_group` of every position."""
    return [token_group(t, specials) for t in tokens]


def entropy_at(similarity: torch.Tensor, temperatures: Sequence[float]) -> torch.Tensor:
    """Spatial entropy of every text position at several temperatures (EADP's step 3).

    Args:
        similarity: ``(L, N)`` signed similarities ``D`` of each text position to each visual token.
        temperatures: ``T`` values of ``tau``.
    Returns:
        ``(T, L)`` float32, in nats, at most ``log N``.
    """
    check_ndim("similarity", similarity, 2, "(L, N)")
    dense = similarity.float().T[None, :, None, :]  # (1, N, 1, L)
    return torch.stack([scoring.spatial_entropy(dense, float(t))[0, 0] for t in temperatures])


def filter_share(entropy: torch.Tensor, flags: torch.Tensor, keep_ratios: Sequence[float]) -> torch.Tensor:
    """Share of the text positions kept by the entropy filter that are flagged, per keep ratio.

    The filter keeps the ``max(1, floor(rho * L))`` lowest-entropy positions (step 4).

    Args:
        entropy: ``(L,)``; flags: ``(L,)`` bool (e.g. content words); keep_ratios: ``T`` values of ``rho``.
    Returns:
        ``(T,)`` float32 in ``[0, 1]``.
    """
    check_ndim("entropy", entropy, 1, "(L,)")
    flags = flags.bool()
    out = []
    for rho in keep_ratios:
        kept, valid = scoring.entropy_filter(entropy.float()[None, None], float(rho))
        idx = kept[0, 0][valid[0, 0]]
        out.append(flags[idx].float().mean())
    return torch.stack(out)


def separation(low, high) -> float:
    """Probability that a random value of ``low`` lies below a random value of ``high`` (ties count 1/2).

    The area under the ROC curve of "value is below the threshold" as a detector of ``low``:
    1.0 when every ``low`` value (say, content-word entropies) is below every ``high`` value
    (function-word entropies), 0.5 when the two are mixed at random. NaN values are dropped;
    NaN if either side is empty.
    """
    a = np.asarray(low, dtype=np.float64).ravel()
    b = np.asarray(high, dtype=np.float64).ravel()
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if a.size == 0 or b.size == 0:
        return math.nan
    both = np.concatenate([a, b])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based ranks, ties averaged
    rank_b = ranks[a.size:].sum()
    u = rank_b - b.size * (b.size + 1) / 2  # pairs where b is above a
    return float(u / (a.size * b.size))
