"""Pruning methods behind one registry: ``prune(name, inputs, budget)``.

Names: ``none``, ``eadp``, ``topk``, ``topk_dense``, ``random``, ``pool``, ``divprune``,
``cdpruner`` (on the visual tokens the language model receives) and ``fastv``, ``pyramiddrop``,
``dart`` (inside the language model, through :func:`eadp_lab.attach`; :mod:`.in_llm`), ``visionzip``,
``hiprune`` (from the vision encoder's attention; :mod:`.in_vision`). :mod:`eadp_lab.methods.controls` holds
content-blind control rules for experiments, not registered (``register`` adds them, or any rule of your own,
under a name).
"""

from . import cdpruner, divprune, eadp, pool, random  # noqa: F401  (registers the methods)
from . import in_llm, in_vision  # noqa: F401,I001  (the in-LLM and vision-encoder methods, registered last)
from .base import METHODS, Method, PruneInputs, PruneResult, prune, register
from .eadp import EADPTrace, score

__all__ = ["METHODS", "Method", "PruneInputs", "PruneResult", "prune", "register", "EADPTrace", "score"]
