"""Computed values in the chapters' prose: myst-nb's ``glue``, fed plain Python values.

A chapter computes a value and glues it; its markdown quotes it with the ``{glue:text}``
role (``{glue:text}`name:.1%``` formats a float), so the book's sentences follow what the
notebook measured. NumPy and torch scalars are turned into Python numbers first (myst-nb
formats the value's ``repr``, and ``np.float64(0.5)`` is not a float to it).
"""

from __future__ import annotations

import numbers

__all__ = ["glue", "plain"]


def plain(value):
    """``value`` as a plain Python object: NumPy/torch scalars and 0-d arrays become ``int``,
    ``float`` or ``bool``; anything else is returned unchanged."""
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", 1) == 0:
        value = item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def glue(name: str, value, display: bool = False) -> None:
    """Glue ``value`` (made :func:`plain`) under ``name`` for the book's prose; shown in the
    notebook only with ``display=True``."""
    from myst_nb import glue as myst_glue

    myst_glue(name, plain(value), display=display)
