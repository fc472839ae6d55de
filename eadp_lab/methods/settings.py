"""Each method's default settings per model family, EADP's ablations, and the similarity sign a CLIP declares.

One place below :func:`eadp_lab.attach`, the benches, :class:`eadp_lab.lab.Lab` and the
explorer, which all import from here:

- :data:`DEFAULT_PRESETS`: EADP's paper-faithful preset per ``(family, modality)``;
- :data:`ABLATIONS`: EADP's ablations as ``name -> (registry method, EADPConfig overrides)``;
- :func:`clip_similarity_sign`: the sign σ a CLIP checkpoint declares in its ``config.json``
  (``eadp_similarity_sign``, written by the lab CLIP's training after measuring at which sign
  its words point at their objects), ``None`` for a checkpoint that declares none (every real
  CLIP: the published σ = -1 of the presets applies);
- :data:`BASELINE_VIDEO`: the baselines' settings for videos (their defaults are the authors'
  multi-crop rule for an image's crops: one DivPrune selection and one CDPruner min-max per
  image; a video's frames keep one of each per frame, as before);
- :func:`default_settings` and :func:`method_settings`: the settings a method runs with when
  the caller gives none.
"""

from __future__ import annotations

from dataclasses import asdict

__all__ = ["DEFAULT_PRESETS", "ABLATIONS", "BASELINE_VIDEO", "DEFAULT_METHODS", "FIELD_METHODS", "SIGN_KEY",
           "clip_similarity_sign", "with_sign", "default_settings", "method_settings", "method_names"]

# Paper-faithful defaults (content tokens only) per family and modality.
DEFAULT_PRESETS = {
    ("llava", "image"): "llava-1.5",
    ("llava_next", "image"): "llava-1.6-anyres",
    ("llava_next_video", "image"): "llava-1.6-anyres",
    ("llava_onevision", "image"): "llava-1.6-anyres",
    ("llava_next_video", "video"): "llava-video",
    ("llava_onevision", "video"): "llava-video",
    ("qwen2_5_vl", "image"): "qwen2.5-vl-llm",
    ("qwen2_5_vl", "video"): "llava-video",
    # Qwen3-VL: the EADP authors' Qwen_vl track runs the same LLM-space pruner on Qwen3-VL-8B, with the same
    # alpha 0.5 and beta 2.0 (Qwen_vl/scripts/run_eadp.sh; config.py's Qwen3-VL-8B-EADP-* entries).
    ("qwen3_vl", "image"): "qwen2.5-vl-llm",
    ("qwen3_vl", "video"): "llava-video",
}

# EADP's ablations: registry-independent names -> (registry method, EADPConfig overrides).
ABLATIONS = {
    "eadp-global": ("eadp", {"alpha": 1.0}),
    "eadp-noentropy": ("eadp", {"entropy_keep_ratio": 1.0, "aggregation": "mean"}),
    "eadp-topk": ("eadp", {"selection": "topk"}),
}
# The field's other methods, beside EADP's baselines: in the vision encoder and inside the language model.
FIELD_METHODS = ("visionzip", "hiprune", "fastv", "pyramiddrop", "dart", "sparsevlm")
DEFAULT_METHODS = ("none", "eadp", "eadp-global", "eadp-noentropy", "eadp-topk", "topk", "topk_dense", "random",
                   "pool", "divprune", "cdpruner") + FIELD_METHODS

# The baselines on videos: one selection (DivPrune) and one min-max (CDPruner) per frame. On images
# their settings' own defaults apply: the published rule over an image's (AnyRes) crops.
BASELINE_VIDEO = {"divprune": {"scope": "per_row"}, "cdpruner": {"normalisation": "per_row"}}

SIGN_KEY = "eadp_similarity_sign"  # in a CLIP checkpoint's config.json


def method_names() -> list[str]:
    """Every registry method and every ablation name."""
    from .base import METHODS

    return list(METHODS) + [a for a in ABLATIONS if a not in METHODS]


def clip_similarity_sign(clip) -> float | None:
    """The similarity sign a CLIP checkpoint declares (``config.eadp_similarity_sign``), or ``None``.

    ``clip``: a ``CLIPModel`` (or anything with a ``config``), or ``None``.
    """
    value = getattr(getattr(clip, "config", None), SIGN_KEY, None)
    if value is None:
        return None
    value = float(value)
    if value not in (-1.0, 1.0):
        raise ValueError(f"{SIGN_KEY} in the CLIP's config must be 1 or -1, got {value!r}")
    return value


def with_sign(settings, sign: float | None):
    """``settings`` with ``similarity_sign`` replaced (unchanged when ``sign`` is ``None`` or the
    method has no sign)."""
    if sign is None or not hasattr(settings, "similarity_sign"):
        return settings
    return type(settings)(**{**asdict(settings), "similarity_sign": float(sign)})


def default_settings(method: str, family: str = "llava", modality: str = "image", sign: float | None = None):
    """A registry method's settings when the caller gives none: EADP's paper-faithful preset of the
    family, HiPrune's published Qwen variant on Qwen2.5-VL and Qwen3-VL (:func:`~eadp_lab.methods.hiprune.qwen_hiprune_settings`),
    every other method's own defaults (for videos, :data:`BASELINE_VIDEO`); ``sign`` replaces the similarity sign."""
    from ..config import EADPConfig, preset
    from .base import METHODS
    from ..models.layouts import is_qwen
    from .hiprune import qwen_hiprune_settings

    entry = METHODS[method]
    if method == "hiprune" and is_qwen(family):
        settings = qwen_hiprune_settings(family)
    elif entry.settings is EADPConfig:
        settings = preset(DEFAULT_PRESETS[(family, modality)], faithful=True)
    else:
        settings = entry.settings(**(BASELINE_VIDEO.get(method, {}) if modality == "video" else {}))
    return with_sign(settings, sign)


def method_settings(name: str, family: str = "llava", batch_index: int = 0, seed: int = 0,
                    sign: float | None = None):
    """``(registry method, settings)`` of a method or ablation name (see :data:`ABLATIONS`).

    ``random`` gets a seed per batch (``seed`` and ``batch_index``); ``sign`` (if given)
    replaces every text-guided method's similarity sign.
    """
    from .base import METHODS
    from .random import RandomSettings

    method, overrides = ABLATIONS.get(name, (name, {}))
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(set(METHODS) | set(ABLATIONS))}, got {name!r}")
    if method == "random":
        settings = RandomSettings(seed=seed * 1_000_003 + batch_index)
    else:
        settings = default_settings(method, family)
        if overrides:
            settings = settings.replace(**overrides)
    return method, with_sign(settings, sign)
