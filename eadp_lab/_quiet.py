"""One way to silence transformers for a call: its warnings (and, if asked, its progress bars),
restored afterwards whatever happens."""

from __future__ import annotations

import logging
from contextlib import contextmanager

__all__ = ["quiet_transformers"]


@contextmanager
def quiet_transformers(hide_progress_bars: bool = False):
    """transformers logs errors only inside the block (e.g. its "falls back to the PIL backend"
    note where torchvision is missing); with ``hide_progress_bars`` its progress bars are off too
    (in a notebook they would become widgets). The previous settings come back on exit."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(logging.ERROR)
    if hide_progress_bars:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if hide_progress_bars and bars:
            hf_logging.enable_progress_bar()
