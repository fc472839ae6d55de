"""Checkpoints of the lab models' training: save every few minutes, resume where a run stopped.

A training loop asks :meth:`Checkpoints.due` after each step and, when it is, hands
:meth:`Checkpoints.save` everything its next step depends on (model, optimiser, step,
history); everything random in a step is drawn from a generator seeded by ``(seed, stage,
step)`` (:func:`step_rng`), so nothing else needs saving and a resumed run ends with the same
weights as an unbroken one (``tests/test_lab_models.py`` checks this on a few steps). Files
are written atomically (a temporary file, then ``os.replace``): a run killed while saving
keeps its previous checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["Checkpoints", "step_rng"]


def step_rng(seed: int, stage: int, step: int) -> np.random.Generator:
    """The generator of one training step: a pure function of ``(seed, stage, step)``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stage, step)))


class Checkpoints:
    """Named checkpoints in ``folder`` (``None``: never save, never resume).

    Args:
        folder: where ``<name>.pt`` files go (created on the first save).
        every: seconds between two saves of a running stage.
        stop_after: testing aid: after this many saves, raise :class:`KeyboardInterrupt`
            (as a killed run would stop), so a test can resume.
    """

    def __init__(self, folder: str | Path | None, every: float = 180.0, stop_after: int | None = None):
        self.folder = None if folder is None else Path(folder)
        self.every = float(every)
        self.stop_after = stop_after
        self.saves = 0
        self._last = time.monotonic()

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.pt"

    def load(self, name: str) -> dict | None:
        """The checkpoint ``name``, or ``None`` if there is none (or no folder)."""
        if self.folder is None or not self.path(name).exists():
            return None
        return torch.load(self.path(name), map_location="cpu", weights_only=False)

    def due(self) -> bool:
        return self.folder is not None and time.monotonic() - self._last >= self.every

    def save(self, name: str, state: dict) -> None:
        """Write ``state`` as ``name`` atomically (no-op without a folder)."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path(name).with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path(name))
        self._last = time.monotonic()
        self.saves += 1
        if self.stop_after is not None and self.saves >= self.stop_after:
            raise KeyboardInterrupt(f"stopped after {self.saves} checkpoint(s) (Checkpoints.stop_after)")
