"""Input checks shared by every stage: one clear ``ValueError`` naming the argument, the bad value
and what is allowed, on one line (``<name> must be <allowed>, got <value>``).

One rule per helper: :func:`check_int` (integers, never bools or floats; :func:`check_budget`,
:func:`check_budget_or_fraction`), :func:`check_real` (finite real numbers, never bools or strings),
:func:`check_sign`, :func:`check_choice`, :func:`check_known` (names of settings fields) and
:func:`checked_replace` (a settings dataclass with some fields changed, names checked).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator

import torch

__all__ = ["cli_int", "as_int", "check_budget", "check_budget_or_fraction", "check_int", "check_real", "check_sign",
           "check_finite", "check_ndim", "check_same", "check_choice", "check_known", "checked_replace"]


def cli_int(minimum: int):
    """An ``argparse`` ``type`` for an integer option ``>= minimum`` (``--seed``, ``--threads``): anything else
    is argparse's usage error, one line naming the option (``argument --seed: must be >= 0, got -1``)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def as_int(value) -> int | None:
    """``value`` as an int if it is an integer (``int``, NumPy or 0-d torch integer), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None, odd: bool = False) -> int:
    """Return ``value`` as an int, or raise unless it is an integer (not a bool, not a float such as
    ``3.0``) in ``[minimum, maximum]``, odd if ``odd``."""
    number = as_int(value)
    if number is None or (minimum is not None and number < minimum) or (maximum is not None and number > maximum) \
            or (odd and number % 2 == 0):
        kind = "an odd integer" if odd else "an integer"
        if minimum is not None and maximum is not None:
            allowed = f"{kind} in [{minimum}, {maximum}]"
        else:
            allowed = kind + (f" >= {minimum}" if minimum is not None else "") + (
                f" <= {maximum}" if maximum is not None else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return number


def check_budget(budget, name: str = "budget") -> int:
    """Return ``budget`` as an int, or raise if it is not an integer of at least 1."""
    return check_int(name, budget, minimum=1)


def check_budget_or_fraction(budget, name: str = "budget") -> int | float:
    """Return ``budget`` as an int (tokens, at least 1) or a float (a fraction in ``(0, 1]``), or raise.

    A float is always a fraction: ``64.0``, ``3.5``, NaN and infinities are refused, as are bools.
    """
    number = as_int(budget)
    if number is not None and number >= 1:
        return number
    if number is None and _is_real(budget) and 0 < budget <= 1:  # NaN fails both comparisons
        return float(budget)
    raise ValueError(f"{name} must be an integer >= 1 (tokens per row) or a fraction in (0, 1], got {budget!r}")


def _is_real(value) -> bool:
    """A real number: ``int``, ``float`` or NumPy scalar, but not a bool, a string or a tensor."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_real(name: str, value, above: float | None = None, minimum: float | None = None,
               maximum: float | None = None):
    """Return ``value`` unchanged, or raise unless it is a finite real number, ``> above``,
    ``>= minimum`` and ``<= maximum`` (each bound optional)."""
    ok = _is_real(value) and math.isfinite(value) and (above is None or value > above) and (
        minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        low = above if above is not None else minimum
        if low is not None and maximum is not None:
            allowed = f"a real number in {'(' if above is not None else '['}{low:g}, {maximum:g}]"
        else:
            bounds = [f"{sign} {bound:g}" for sign, bound in ((">", above), (">=", minimum), ("<=", maximum))
                      if bound is not None]
            allowed = " ".join(["a finite real number", *bounds])
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_sign(name: str, value):
    """Return ``value`` unchanged, or raise unless it is the real number -1 or 1 (a similarity sign)."""
    if not (_is_real(value) and value in (-1, 1)):
        raise ValueError(f"{name} must be -1 or 1, got {value!r}")
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
    try:
        known = value in choices
    except TypeError:  # an unhashable value looked up in a dict or set
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def check_known(kind: str, names, known) -> None:
    """Raise unless every name of ``names`` is in ``known``, e.g. the fields of a settings dataclass.

    ``kind`` says whose fields: ``check_known("eadp", ["alpah"], fields)`` raises
    ``unknown eadp setting 'alpah'; known: 'alpha', ...``.
    """
    unknown = [n for n in names if n not in known]
    if unknown:
        listing = ", ".join(repr(k) for k in known) or f"none ({kind} takes no settings)"
        plural = "s" if len(unknown) > 1 else ""
        raise ValueError(f"unknown {kind} setting{plural} {', '.join(repr(n) for n in unknown)}; known: {listing}")


def checked_replace(settings, kind: str, changes: dict):
    """``dataclasses.replace(settings, **changes)`` with the names of ``changes`` checked first
    (:func:`check_known`); the copy's own ``__post_init__`` checks the values."""
    if not changes:
        return settings
    check_known(kind, changes, [f.name for f in dataclasses.fields(settings)])
    return dataclasses.replace(settings, **changes)
