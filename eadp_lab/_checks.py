"""Input checks shared by every stage: one clear ``ValueError`` naming the argument."""

from __future__ import annotations

import operator

import torch

__all__ = ["check_budget", "check_finite", "check_ndim", "check_same", "check_choice"]


def check_budget(budget, name: str = "budget") -> int:
    """Return ``budget`` as an int, or raise if it is not an integer of at least 1."""
    try:
        value = operator.index(budget)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, got {budget!r}") from None
    if isinstance(budget, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {budget!r}")
    return value


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise if ``tensor`` holds NaN or infinite values (checked in float32)."""
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.float().sum())):
        return  # one cheap pass: NaN and inf propagate into the sum (an overflow is re-checked below)
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise ValueError(f"{name} holds {bad} NaN or infinite value(s)")


def check_ndim(name: str, tensor: torch.Tensor, ndim: int, shape_doc: str) -> None:
    """Raise unless ``tensor`` is a tensor with ``ndim`` dimensions."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(tensor).__name__}")
    if tensor.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got {tuple(tensor.shape)}")


def check_same(what: str, **sizes: int) -> None:
    """Raise unless every keyword has the same value, e.g. ``check_same("N", importance=576, features=575)``."""
    values = set(sizes.values())
    if len(values) > 1:
        detail = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ValueError(f"mismatched {what}: {detail}")


def check_choice(name: str, value, choices) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
