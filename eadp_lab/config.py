"""Settings of EADP as one frozen dataclass, and the published presets.

Every field is a named step of EADP (ECCV 2026) as the book's algorithm page states it
(``book/algorithm.md``). A config is serialised next to every result
(:meth:`EADPConfig.to_dict`), so a number always says how it was made.
Taught in ``notebooks/00_tour``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ._checks import check_choice, check_int, check_known, check_real, check_sign, checked_replace
from .scoring import AGGREGATIONS
from .select import ALLOCATIONS

__all__ = ["EADPConfig", "PRESETS", "preset"]


@dataclass(frozen=True)
class EADPConfig:
    """One EADP setting. Defaults: the LLaVA-1.5 preset, scored on content tokens only (the paper)."""

    # Stage 1: scoring
    alpha: float = 0.5  # weight of the global score against the dense one (step 6)
    similarity_sign: float = -1.0  # sigma: every published preset negates the similarity (CDPruner's convention)
    entropy_temperature: float = 100.0  # tau of the spatial softmax (step 3)
    entropy_keep_ratio: float = 0.2  # rho: fraction of lowest-entropy text tokens kept (step 4)
    aggregation: str = "negative_entropy"  # step 5: negative_entropy | entropy_tempered | top_k | mean
    aggregation_temperature: float = 0.01  # mu (step 5)
    aggregation_top_k: int = 5  # for aggregation="top_k"
    normalisation: str = "per_row"  # step 7: per_row | per_image (joint over the crops of one image)
    # Stage 2: selection
    smoothing_kernel: int = 3  # step 8: odd size of the Gaussian; 1 turns smoothing off
    smoothing_sigma: float = 1.0
    on_grid_mismatch: str = "error"  # error | skip (the published code skips silently)
    beta: float = 1.0  # polarisation r ** beta (step 9)
    selection: str = "facility_location"  # facility_location | topk (an ablation)
    allocation: str = "none"  # step 13 across crops/frames of one image: none | floor | largest_remainder
    # Text positions scored: "content" (the paper: no start, end or padding positions) or
    # "all" (the published code: CLIP's 77 zero-padded positions, start and end included).
    text_positions: str = "content"

    def __post_init__(self):
        """Check every field (type, range, choice): a bad value fails here, naming its field."""
        check_real("alpha", self.alpha, minimum=0.0, maximum=1.0)  # a weight: 1 is the global score alone
        check_sign("similarity_sign", self.similarity_sign)
        check_real("entropy_temperature", self.entropy_temperature, above=0.0)
        check_real("entropy_keep_ratio", self.entropy_keep_ratio, above=0.0, maximum=1.0)  # k >= 1 token anyway
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        check_real("aggregation_temperature", self.aggregation_temperature, above=0.0)
        check_int("aggregation_top_k", self.aggregation_top_k, minimum=1)
        check_choice("normalisation", self.normalisation, ("per_row", "per_image"))
        check_int("smoothing_kernel", self.smoothing_kernel, minimum=1, odd=True)  # 1: no smoothing
        check_real("smoothing_sigma", self.smoothing_sigma, above=0.0)
        check_choice("on_grid_mismatch", self.on_grid_mismatch, ("error", "skip"))
        check_real("beta", self.beta, above=0.0)  # inf would make every importance 0 (or 1)
        check_choice("selection", self.selection, ("facility_location", "topk"))
        check_choice("allocation", self.allocation, ALLOCATIONS)
        check_choice("text_positions", self.text_positions, ("content", "all"))

    def replace(self, **changes) -> "EADPConfig":
        """A copy with some fields changed (names and values validated again)."""
        return checked_replace(self, "eadp", changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EADPConfig":
        check_known("eadp", data, [f.name for f in dataclasses.fields(cls)])
        return cls(**data)


_PUBLISHED = EADPConfig(text_positions="all")

PRESETS: dict[str, EADPConfig] = {
    # LLaVA-1.5: one 24x24 grid, CLIP-space scoring.
    "llava-1.5": _PUBLISHED,
    # LLaVA-1.6 AnyRes: min-max over all crops of one image, published floor quotas.
    "llava-1.6-anyres": _PUBLISHED.replace(normalisation="per_image", allocation="floor"),
    # Qwen2.5-VL: scoring in the LLM's input-embedding space, polarisation 2.
    "qwen2.5-vl-llm": _PUBLISHED.replace(beta=2.0),
    # LLaVA-Video: per frame, keep half the text tokens, entropy-tempered aggregation.
    "llava-video": _PUBLISHED.replace(entropy_keep_ratio=0.5, aggregation="entropy_tempered", beta=2.0),
    # The paper's prose: content tokens only (the lab's default).
    "paper": EADPConfig(),
}


def preset(name: str, faithful: bool = False, **changes) -> EADPConfig:
    """A published preset by name, optionally paper-faithful (content tokens only) and changed.

    >>> preset("llava-1.6-anyres", faithful=True).text_positions
    'content'
    """
    check_choice("preset", name, PRESETS)
    config = PRESETS[name]
    if faithful:
        config = config.replace(text_positions="content")
    return config.replace(**changes) if changes else config
