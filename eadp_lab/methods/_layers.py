"""Helpers shared by the pruning methods that act inside the language model (FastV, PyramidDrop,
DART, SparseVLM): where a published layer index falls in a model of another depth, the checks of a
decoder's tensors at the pruning point, and the index of the shortened sequence.

Sequences are ``[prefix | N image tokens | text]``: ``image_start`` is the first image position,
``image_len`` is ``N`` and ``L`` the sequence length.
"""

from __future__ import annotations

import itertools

import torch

from .._checks import check_int

__all__ = ["check_span", "check_tensor", "scaled_layer", "scaled_layers", "sequence_keep_index"]


def scaled_layer(layer: int, depth: int, published_depth: int = 32) -> int:
    """A published layer index moved to a model of ``depth`` decoder layers.

    ``clamp(round(layer * depth / published_depth), 1, depth - 1)``, computed in integers; halves
    round **up** (``2 * 40 / 32 = 2.5`` gives 3). The clamp keeps at least one layer before the
    pruning point and one after it. At ``depth == published_depth`` the index is unchanged (within
    ``[1, depth - 1]``).
    """
    layer = check_int("layer", layer, minimum=0)
    depth = check_int("depth", depth, minimum=2)
    published_depth = check_int("published_depth", published_depth, minimum=1)
    rounded = (2 * layer * depth + published_depth) // (2 * published_depth)
    return min(max(rounded, 1), depth - 1)


def scaled_layers(layers, depth: int, published_depth: int = 32) -> tuple[int, ...]:
    """:func:`scaled_layer` of each of ``layers``; a ``ValueError`` unless they stay strictly
    increasing (a model too shallow for that many distinct pruning layers)."""
    out = tuple(scaled_layer(layer, depth, published_depth) for layer in layers)
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"layers {tuple(layers)} of a {published_depth}-layer model fall on {out} in a "
                         f"{depth}-layer model: they must stay strictly increasing")
    return out


def check_layers(layers, published_depth: int) -> tuple[int, ...]:
    """A settings' ``layers`` as a tuple: a non-empty, strictly increasing sequence of integers in
    ``[1, published_depth - 1]``; ``ValueError`` naming the value otherwise."""
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise ValueError(f"layers must be a non-empty sequence of integers, got {layers!r}")
    out = tuple(check_int("layers", v, minimum=1, maximum=published_depth - 1) for v in layers)
    if not out or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"layers must be a non-empty, strictly increasing sequence of integers, got {layers!r}")
    return out


def check_tensor(name: str, tensor, ndim: int, shape_doc: str) -> None:
    """Raise unless ``tensor`` is a floating tensor with ``ndim`` dimensions."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(tensor).__name__}")
    if tensor.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {tensor.dtype}")


def check_span(image_start, image_len, seq_len: int, after: int = 0) -> tuple[int, int]:
    """``(image_start, image_len)`` as ints, checked to lie inside a sequence of ``seq_len`` with at
    least ``after`` positions after the image."""
    start = check_int("image_start", image_start, minimum=0)
    n = check_int("image_len", image_len, minimum=1)
    if start + n + after > seq_len:
        more = f" and {after} position(s) after it" if after else ""
        raise ValueError(f"the image span [{start}, {start + n}){more} does not fit a sequence of {seq_len}")
    return start, n


def sequence_keep_index(kept: torch.Tensor, image_start: int, image_len: int, seq_len: int) -> torch.Tensor:
    """The sorted positions of the shortened sequence: the prefix, the kept image tokens, the text.

    Args:
        kept: ``(B, R)`` long, absolute positions of the kept image tokens (any order).
    Returns:
        ``(B, L - N + R)`` long, ascending: ``[0, image_start) + kept + [image_start + N, L)``
        (the hidden states to gather and, for FastV and DART, the new position ids).
    """
    B = kept.shape[0]
    device = kept.device
    prefix = torch.arange(image_start, device=device).expand(B, -1)
    text = torch.arange(image_start + image_len, seq_len, device=device).expand(B, -1)
    return torch.cat([prefix, kept.long(), text], dim=1).sort(dim=1).values
