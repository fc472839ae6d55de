"""Where text meets image for scoring: the CLIP space (LLaVA families) or the LLM's own space.

- :class:`CLIPScorer` (``scoring="clip"``): the published LLaVA setting. The visual tokens'
  scoring embeddings are the VLM's CLIP vision tower states at its feature layer (CLS
  dropped), passed through the CLIP checkpoint's ``post_layernorm`` and
  ``visual_projection``; the instruction goes through the CLIP text tower: per-token
  ``last_hidden_state @ text_projection`` (dense) and the pooled EOS output (global). The
  checkpoint's vision tower must be the VLM's (LLaVA freezes it), which is checked on every
  parameter the two towers share by name (:func:`check_same_tower`, :func:`weights_gap`: in
  float32, up to the rounding of the weights' dtypes; a matching pair is remembered until a
  weight changes).
- :class:`LLMScorer` (``scoring="llm"``): the published Qwen2.5-VL setting, usable with any
  model: the instruction's rows of the language model's input-embedding table against the
  visual features the language model receives; the global text embedding is their mean.

Text positions: ``"content"`` scores the instruction's own tokens (the paper); ``"all"``
scores what the published code scores (CLIP: all 77 positions of the zero-padded input,
start and end included; LLM space: the span's special tokens too).
Taught in ``notebooks/02_entropy_analysis``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

__all__ = ["TextEmbeddings", "CLIPScorer", "LLMScorer", "load_clip", "weights_gap", "tower_parameters",
           "tower_differences", "check_same_tower"]


@dataclass
class TextEmbeddings:
    """One instruction, ready for :class:`eadp_lab.PruneInputs` (``I = M = 1``).

    Attributes:
        dense: ``(1, 1, L, C)``; mask: ``(1, 1, L)`` bool; global_: ``(1, 1, C)`` or ``None``
        (the masked mean of ``dense``); tokens: the ``L`` token strings, for plots.
    """

    dense: torch.Tensor
    mask: torch.Tensor
    global_: torch.Tensor | None
    tokens: list[str]


def load_clip(name_or_path, device=None, dtype=None):
    """A ``CLIPModel`` and its tokenizer by hub id or local path (offline if it is a path)."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(name_or_path, dtype=dtype).eval()
    if device is not None:
        model = model.to(device)
    return model, AutoTokenizer.from_pretrained(name_or_path)


ROUNDING_ULPS = 2  # tolerated rounding between two copies of one checkpoint, in units of the coarser dtype's eps


def weights_gap(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """How far two copies of the same weights are apart, and how far rounding alone could take them.

    Both are compared in float32 on the CPU. The tolerance follows the dtypes:
    ``ROUNDING_ULPS * eps * max|w|``, with ``eps`` the machine epsilon of the coarser of the two
    dtypes, and at least float16's (checkpoints such as llava-hf's are stored in float16, so
    a float32 copy may carry that rounding).

    Args:
        a, b: tensors of one shape (e.g. ``(C, 3, P, P)`` patch-embedding weights), any float dtypes and devices.
    Returns:
        ``(max |a - b|, tolerance)`` as floats.
    """
    x, y = a.detach().float().cpu(), b.detach().float().cpu()
    eps = max(torch.finfo(a.dtype).eps, torch.finfo(b.dtype).eps, torch.finfo(torch.float16).eps)
    scale = float(torch.maximum(x.abs().max(), y.abs().max())) if x.numel() else 0.0
    return float((x - y).abs().max()) if x.numel() else 0.0, ROUNDING_ULPS * eps * scale


def tower_parameters(tower) -> dict[str, torch.Tensor]:
    """A CLIP vision tower's floating-point parameters by name, named alike whatever holds them
    (a ``CLIPModel``'s ``vision_model``, a VLM's ``CLIPVisionModel``, with or without the
    ``vision_model.`` prefix some transformers versions put in front)."""
    return {name.removeprefix("vision_model."): p for name, p in tower.named_parameters() if p.is_floating_point()}


def tower_differences(ours, theirs) -> list[tuple[str, str]]:
    """Every parameter two CLIP vision towers share by name that differs beyond rounding (:func:`weights_gap`),
    in ``ours``' order: ``[(name, why)]``, empty when the towers match. No shared name is a difference too."""
    mine, other = tower_parameters(ours), tower_parameters(theirs)
    shared = [name for name in mine if name in other]
    if not shared:
        why = (f"no parameter name in common (ours: {', '.join(list(mine)[:3])}, ...; theirs: "
               f"{', '.join(list(other)[:3])}, ...)")
        return [("", why)]
    out = []
    for name in shared:
        a, b = mine[name], other[name]
        if a.is_meta or b.is_meta:  # offloaded (device_map): no values here to compare
            continue
        if a.shape != b.shape:
            out.append((name, f"shape {tuple(a.shape)} != {tuple(b.shape)}"))
            continue
        gap, tolerance = weights_gap(a, b)
        if gap > tolerance:
            out.append((name, f"max |difference| {gap:.3g} > {tolerance:.3g}, the rounding of {a.dtype} / {b.dtype}"))
    return out


_MATCHED = weakref.WeakKeyDictionary()  # VLM tower -> [(weakref to a CLIP tower, _weights_key of the pair)]


def _weights_key(*towers) -> tuple:
    """What identifies the towers' weights now: each parameter's storage, version counter, dtype and device
    (an in-place change bumps the version, a ``.to()`` gives new storage)."""
    return tuple((n, p.data_ptr(), p._version, p.dtype, p.device) for t in towers for n, p in t.named_parameters())


def check_same_tower(clip_tower, vision_tower) -> None:
    """Raise ``ValueError`` (one line: the first tensor that differs, by how much) unless the CLIP's
    vision tower has the VLM's weights, every parameter the two share by name, up to rounding.

    A pair found matching is remembered (weakly, per pair) until one of its weights changes, so
    attaching the same model and CLIP again costs no second comparison.
    """
    key = _weights_key(clip_tower, vision_tower)
    if any(ref() is clip_tower and seen == key for ref, seen in _MATCHED.get(vision_tower, ())):
        return
    differences = tower_differences(clip_tower, vision_tower)
    if differences:
        name, why = differences[0]
        more = f"; {len(differences) - 1} more tensors differ" if len(differences) > 1 else ""
        raise ValueError(f"the CLIP scorer's vision tower does not match the model's: different weights"
                         f"{' in ' + name if name else ''} ({why}{more}; load the CLIP checkpoint the VLM's "
                         "vision tower was taken from)")
    others = [(ref, seen) for ref, seen in _MATCHED.get(vision_tower, ())
              if ref() is not None and ref() is not clip_tower]
    _MATCHED[vision_tower] = others + [(weakref.ref(clip_tower), key)]


class CLIPScorer:
    """Scoring in CLIP space with a CLIP checkpoint that matches the VLM's vision tower.

    Args:
        clip: a ``CLIPModel``.
        tokenizer: the CLIP checkpoint's tokenizer.
        text_positions: ``"content"`` or ``"all"`` (see the module docstring).
        max_length: CLIP's text context (77).
    """

    name = "clip"

    def __init__(self, clip, tokenizer, text_positions: str = "content", max_length: int | None = None):
        self.clip = clip.eval()
        self.tokenizer = tokenizer
        self.text_positions = text_positions
        self.max_length = max_length or clip.config.text_config.max_position_embeddings

    def check_matches(self, vision_tower) -> None:
        """Raise ``ValueError`` unless ``vision_tower`` (the VLM's) is this CLIP's vision tower."""
        ours = self.clip.config.vision_config
        theirs = getattr(vision_tower, "config", None)
        if theirs is None or getattr(theirs, "model_type", None) not in ("clip_vision_model", "clip"):
            kind = getattr(theirs, "model_type", type(vision_tower).__name__)
            raise ValueError(f"scoring='clip' needs a CLIP vision tower; this model's is {kind!r} (use scoring='llm')")
        for name in ("hidden_size", "patch_size", "image_size", "num_hidden_layers"):
            if getattr(ours, name) != getattr(theirs, name):
                raise ValueError(
                    f"the CLIP scorer's vision tower does not match the model's: {name} "
                    f"{getattr(ours, name)} != {getattr(theirs, name)}"
                )
        check_same_tower(self.clip.vision_model, vision_tower)

    @torch.no_grad()
    def image_embeds(self, states: torch.Tensor) -> torch.Tensor:
        """``(..., C_v)`` vision-tower states -> ``(..., C)`` CLIP image-space embeddings."""
        p = next(self.clip.parameters())
        x = self.clip.vision_model.post_layernorm(states.to(p.device, p.dtype))
        return self.clip.visual_projection(x)

    @torch.no_grad()
    def text(self, instruction: str, **_) -> TextEmbeddings:
        """Dense and global CLIP text embeddings of one instruction."""
        everything = self.text_positions == "all"
        enc = self.tokenizer(
            [instruction], return_tensors="pt", truncation=True, max_length=self.max_length,
            padding="max_length" if everything else False,
        )
        p = next(self.clip.parameters())
        ids = enc["input_ids"].to(p.device)
        attention = enc["attention_mask"].to(p.device)
        # The published code feeds the zero-padded sequence without a mask and scores it all.
        out = self.clip.text_model(input_ids=ids, attention_mask=None if everything else attention)
        dense = self.clip.text_projection(out.last_hidden_state)  # (1, L, C)
        pooled = self.clip.text_projection(out.pooler_output)  # (1, C)
        if everything:
            mask = torch.ones_like(ids, dtype=torch.bool)
        else:
            special = torch.tensor(sorted(set(self.tokenizer.all_special_ids)), device=ids.device)
            mask = attention.bool() & ~torch.isin(ids, special)
        tokens = self.tokenizer.convert_ids_to_tokens(ids[0].tolist())
        return TextEmbeddings(dense[:, None], mask[:, None], pooled[:, None], tokens)


class LLMScorer:
    """Scoring in the language model's input-embedding space (any model)."""

    name = "llm"

    def __init__(self, embeddings: torch.nn.Embedding, tokenizer=None, text_positions: str = "content",
                 special_ids: set[int] | None = None):
        self.embeddings = embeddings
        self.tokenizer = tokenizer
        self.text_positions = text_positions
        self.special_ids = set(special_ids or ())
        if tokenizer is not None:
            self.special_ids |= set(tokenizer.all_special_ids)

    def check_matches(self, vision_tower) -> None:  # noqa: D401 - any model
        """Any model works in its own embedding space."""

    def image_embeds(self, states):  # the visual features themselves are the scoring space
        return None

    @torch.no_grad()
    def text(self, instruction: str | None = None, ids: torch.Tensor | None = None) -> TextEmbeddings:
        """The instruction's embedding rows: from ``instruction`` (re-tokenised) or its ``ids``."""
        if instruction is not None:
            if self.tokenizer is None:
                raise ValueError("scoring='llm' with instruction text needs the model's tokenizer (tokenizer=...)")
            ids = torch.tensor(self.tokenizer(instruction, add_special_tokens=False)["input_ids"])
        ids = ids.to(self.embeddings.weight.device)
        if self.text_positions == "content":
            ids = ids[~torch.isin(ids, torch.tensor(sorted(self.special_ids), device=ids.device, dtype=ids.dtype))]
        dense = self.embeddings(ids)[None, None]  # (1, 1, L, D)
        tokens = (self.tokenizer.convert_ids_to_tokens(ids.tolist()) if self.tokenizer is not None
                  else [str(i) for i in ids.tolist()])
        return TextEmbeddings(dense, torch.ones(1, 1, len(ids), dtype=torch.bool, device=ids.device), None, tokens)
