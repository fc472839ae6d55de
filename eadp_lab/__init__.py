"""eadp_lab: EADP (Entropy-Aware Dense Pruning, ECCV 2026) and its baselines as clean torch stages.

>>> from eadp_lab import prune, PruneInputs, preset
"""

from .config import PRESETS, EADPConfig, preset
from .methods import METHODS, PruneInputs, PruneResult, prune

__version__ = "0.1.0"
__all__ = ["EADPConfig", "PRESETS", "preset", "METHODS", "PruneInputs", "PruneResult", "prune", "attach",
           "attached", "__version__"]


def __getattr__(name):
    # transformers is imported only when a model is attached
    if name in ("attach", "attached"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'eadp_lab' has no attribute {name!r}")
