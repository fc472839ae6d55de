"""Pruning methods behind one registry: ``prune(name, inputs, budget)``.

Names: ``none``, ``eadp``, ``topk``, ``topk_dense``, ``random``, ``pool``, ``divprune``,
``cdpruner``. :mod:`eadp_lab.methods.controls` holds content-blind control rules for
experiments, not registered (``register`` adds them, or any rule of your own, under a name).
"""

from . import cdpruner, divprune, eadp, pool, random  # noqa: F401  (registers the methods)
from .base import METHODS, Method, PruneInputs, PruneResult, prune, register
from .eadp import EADPTrace, score

__all__ = ["METHODS", "Method", "PruneInputs", "PruneResult", "prune", "register", "EADPTrace", "score"]
