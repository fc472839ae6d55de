"""Content-blind control selections: rules that decide *where* the kept tokens lie without looking
at what they show, to separate the layout of a selection from its content in an experiment.

They are not registered (the benches, ``Lab`` and the explorer list only real methods): register
one under a name of your choosing to run it through :func:`eadp_lab.attach` and the benches::

    from eadp_lab.methods import register
    from eadp_lab.methods.base import NoSettings
    from eadp_lab.methods.controls import ClusterRule

    blob = ClusterRule()
    register("blob", NoSettings, text_guided=False, reference="a compact cluster at a random point")(blob)
    blob.reset(seed)  # before each run: the same calls then keep the same tokens

Taught in ``notebooks/04_full_model_benchmarks`` (exercise: is clustering what renumbering punishes?).
"""

from __future__ import annotations

import torch

from .._checks import check_budget
from .base import PruneInputs, PruneResult, selection_result

__all__ = ["cluster_picks", "ClusterRule"]


def cluster_picks(grid: tuple[int, int], budget: int, centre: tuple[float, float]) -> torch.Tensor:
    """``(min(budget, H * W),)`` long, ascending: the raster indices of the ``budget`` tokens of an
    ``(H, W)`` grid nearest ``centre`` = ``(y, x)`` in patches (Euclidean; ties go to the lower index)."""
    H, W = grid
    check_budget(budget)
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    distance = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2).flatten()
    return torch.argsort(distance, stable=True)[: min(budget, H * W)].sort().values


class ClusterRule:
    """A method ``run(inputs, budget, settings)``: per row, the tokens nearest a random point of the
    row's grid (:func:`cluster_picks`), a compact cluster wherever the point falls.

    The points come from one seeded stream, one point per row in call order: :meth:`reset` before
    a run, and two runs that make the same calls (the same questions and batches, at different
    ``--positions``) keep the same tokens. ``settings`` is ignored (register it with ``NoSettings``).
    """

    def __init__(self, seed: int = 0):
        self.reset(seed)

    def reset(self, seed: int) -> None:
        """Restart the stream of points from ``seed``."""
        self.draws = torch.Generator().manual_seed(int(seed))

    def __call__(self, inputs: PruneInputs, budget: int, settings=None) -> PruneResult:
        T = min(budget, inputs.num_tokens)
        picks = torch.full((inputs.num_rows, T), -1, dtype=torch.long)
        for r, (H, W) in enumerate(inputs.row_grids()):
            centre = (torch.rand(2, generator=self.draws, dtype=torch.float64)
                      * torch.tensor([H - 1.0, W - 1.0], dtype=torch.float64)).tolist()
            mine = cluster_picks((H, W), T, centre)
            picks[r, : len(mine)] = mine
        return selection_result("cluster", settings, budget, picks.to(inputs.features.device), inputs.num_tokens)
