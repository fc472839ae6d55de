"""Pruning attached to transformers VLMs: :func:`attach`, the scorers and the token layouts."""

from .attach import DEFAULT_PRESETS, CallRecord, ItemRecord, Pruner, attach, attached
from .layouts import FAMILIES, family_of
from .scorers import CLIPScorer, LLMScorer, load_clip

__all__ = ["attach", "attached", "Pruner", "CallRecord", "ItemRecord", "DEFAULT_PRESETS", "FAMILIES", "family_of",
           "CLIPScorer", "LLMScorer", "load_clip"]
