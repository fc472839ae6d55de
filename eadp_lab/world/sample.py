"""Records of the lab world: a scene, its image, one question, one caption, patch coverage.

:func:`sample` is the batch generator the lab models train and are evaluated on. Each
record is a pure function of ``(split, seed, index, config)`` (see ``seeds``); a scene that
cannot carry the record's question slot (say, no two objects clearly placed for a
relation question) is drawn again from the same stream. The filler of a verbose world
(``WorldConfig.verbosity``) comes from a stream of its own, so a record's scene, image,
caption and question words are those of the same record at verbosity 0. Taught in
``notebooks/00_tour``.

Shapes: ``H x W`` image, ``K`` objects, ``(gh, gw)`` token grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .captions import Caption, caption
from .config import WorldConfig
from .questions import Question, ask
from .grounding import coverage_from_labels, patch_coverage
from .render import render_with_labels
from .scenes import Scene, sample_scene
from .seeds import (SPLITS, STREAMS, check_config, check_count, check_seed, check_split, record_rng, resolve_grid,
                    run, slot)

__all__ = ["Record", "make_record", "sample", "sparse_coverage", "dense_coverage", "filler_rng", "coverage_on"]

_MAX_REDRAWS = 100


@dataclass
class Record:
    """One training or evaluation example of the lab world.

    Attributes:
        image: ``(H, W, 3)`` uint8, rendered from ``scene``.
        coverage: ``(K, gh, gw)`` float32, fraction of each patch covered by each object on
            ``grid``, or ``None`` if the record was made with ``grid=None``.
    """

    split: str
    seed: int
    index: int
    scene: Scene
    image: np.ndarray
    question: Question
    caption: Caption
    grid: tuple[int, int] | None
    coverage: np.ndarray | None

    @property
    def answer(self) -> str:
        return self.question.answer

    @property
    def qtype(self) -> str:
        return self.question.qtype

    def to_dict(self) -> dict:
        """JSON-ready; the image is left out (``render(Scene.from_dict(d["scene"]))`` remakes it)."""
        return {"split": self.split, "seed": self.seed, "index": self.index, "scene": self.scene.to_dict(),
                "question": self.question.to_dict(), "caption": self.caption.to_dict(),
                "grid": None if self.grid is None else list(self.grid),
                "coverage": None if self.coverage is None else sparse_coverage(self.coverage)}


def sparse_coverage(coverage: np.ndarray, decimals: int = 4) -> list:
    """Per object, ``[[patch index (row-major), fraction], ...]`` over the covered patches."""
    K = coverage.shape[0]
    flat = coverage.reshape(K, -1)
    return [[[int(i), round(float(flat[k, i]), decimals)] for i in np.flatnonzero(flat[k])] for k in range(K)]


def dense_coverage(sparse: list, grid: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`sparse_coverage`: ``(K, gh, gw)`` float32."""
    out = np.zeros((len(sparse), grid[0] * grid[1]), np.float32)
    for k, pairs in enumerate(sparse):
        for i, v in pairs:
            out[k, i] = v
    return out.reshape(len(sparse), *grid)


def coverage_on(record: Record, grid: tuple[int, int]) -> np.ndarray:
    """``(K, gh, gw)`` float32: ``record``'s patch coverage on the token grid ``grid``.

    The record's own ``coverage`` when it was drawn on ``grid``, else the scene's coverage drawn
    on ``grid`` (:func:`~eadp_lab.world.grounding.patch_coverage`): the object masks of a model
    whose grid is not the one the records were sampled for (a lab CLIP's 16 x 16 against a
    Qwen checkpoint's own grid).
    """
    grid = (int(grid[0]), int(grid[1]))
    if record.coverage is not None and tuple(record.coverage.shape[1:]) == grid:
        return record.coverage
    return patch_coverage(record.scene, grid)


def filler_rng(split: str, seed: int, index: int) -> np.random.Generator:
    """The stream a verbose record's filler is drawn from, apart from the record's own (``record_rng``)."""
    key = (SPLITS.index(check_split(split)), STREAMS["image"], 2, check_seed(index, "index"))
    return np.random.default_rng(np.random.SeedSequence(check_seed(seed), spawn_key=key))


def make_record(split: str, seed: int, index: int, config: WorldConfig | None = None,
                grid: tuple[int, int] | None | str = "default") -> Record:
    """Record ``index`` of ``split`` for ``seed``; ``grid="default"`` is ``config.grid``."""
    config = check_config(config)
    grid = resolve_grid(grid, config)
    rng = record_rng(split, seed, index, "image")
    qtype, answer = slot(split, seed, index, config.question_mix, "image")
    uid = f"{split}/{seed}/{index}"
    filler = filler_rng(split, seed, index) if config.verbosity else None
    for _ in range(_MAX_REDRAWS):
        scene = sample_scene(rng, config, uid=uid)
        question = ask(scene, rng, qtype, answer, config, filler_rng=filler)
        if question is not None:
            break
    else:  # pragma: no cover - would take a world with almost no room
        raise RuntimeError(f"no scene of {uid} carries a {qtype!r} question after {_MAX_REDRAWS} draws")
    text = caption(scene, rng, config=config)
    image, labels = render_with_labels(scene)
    coverage = None if grid is None else coverage_from_labels(labels, len(scene.objects), grid)
    return Record(split, seed, index, scene, image, question, text, grid, coverage)


def _chunk(split, seed, start, n, config, grid):
    return [make_record(split, seed, i, config, grid) for i in range(start, start + n)]


def sample(split: str, n: int, seed: int = 0, *, start: int = 0, config: WorldConfig | None = None,
           grid: tuple[int, int] | None | str = "default", workers: int = 1) -> list[Record]:
    """Records ``start .. start + n - 1`` of ``split`` (``train``, ``val`` or ``heldout``).

    Args:
        n: number of records (>= 1).
        seed: non-negative; one seed and split name one reproducible, endless stream.
        config: the world (default ``WorldConfig()``: 96 px, patch 6).
        grid: token grid of ``Record.coverage``; ``"default"`` is ``config.grid``, ``None`` skips it.
        workers: processes; the records do not depend on it.

    >>> [r.qtype for r in sample("train", 3, seed=0)] == [r.qtype for r in sample("train", 3, seed=0)]
    True
    """
    check_split(split)
    n, seed, start = check_count(n), check_seed(seed), check_seed(start, "start")
    config = check_config(config)
    grid = resolve_grid(grid, config)
    return run(_chunk, n, start, workers, split=split, seed=seed, config=config, grid=grid)
