"""Larger scenes cut into crops, as LLaVA-NeXT's AnyRes feeds them to the vision tower.

A ``rows x cols`` layout of ``crop`` px crops (192x192 for 2x2 at 96 px, 192x288 for 2x3)
is rendered as one scene with objects of the usual sizes; the image is cut into a
row-major grid of crops, and the whole image resized to one ``crop x crop`` base image
(LLaVA-NeXT's ``process_anyres_image`` resizes without keeping the aspect ratio; here with
an area filter). Bookkeeping says which crops hold which object and how much of it, with
patch coverage for every crop and for the base image, so a per-image budget split across
crops (EADP's allocation step) can be checked object by object. After Liu et al.,
"LLaVA-NeXT: Improved reasoning, OCR, and world knowledge" (2024). Taught in
``notebooks/05_video_and_multicrop``.

Shapes: ``C = rows * cols`` crops of ``crop x crop``, ``K`` objects, ``(gh, gw)`` grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .captions import Caption, caption
from .config import WorldConfig
from .questions import Question, ask
from .grounding import coverage_from_labels
from .render import render_with_labels
from .scenes import Scene, sample_scene
from .seeds import check_config, check_count, check_seed, check_split, record_rng, resolve_grid, run, slot

__all__ = ["MultiCropRecord", "cut", "make_multicrop_record", "sample_multicrop"]


@dataclass
class MultiCropRecord:
    """One AnyRes example.

    Attributes:
        image: ``(rows * crop, cols * crop, 3)`` uint8, the full scene.
        crops: ``(C, crop, crop, 3)`` uint8, row-major.
        base: ``(crop, crop, 3)`` uint8, the whole image resized.
        boxes: per crop ``(y0, x0, y1, x1)`` in full-image px.
        object_crops: per object, ``((crop index, share of the object's visible px), ...)``.
        crop_coverage: ``(C, K, gh, gw)`` float32; ``base_coverage``: ``(K, gh, gw)`` float32.
    """

    split: str
    seed: int
    index: int
    scene: Scene
    layout: tuple[int, int]
    image: np.ndarray
    crops: np.ndarray
    base: np.ndarray
    boxes: tuple[tuple[int, int, int, int], ...]
    object_crops: tuple[tuple[tuple[int, float], ...], ...]
    question: Question
    caption: Caption
    grid: tuple[int, int] | None
    crop_coverage: np.ndarray | None
    base_coverage: np.ndarray | None

    @property
    def answer(self) -> str:
        return self.question.answer

    @property
    def qtype(self) -> str:
        return self.question.qtype

    def crop_objects(self, c: int) -> tuple[int, ...]:
        """Objects with at least one pixel in crop ``c``."""
        return tuple(k for k, where in enumerate(self.object_crops) if any(i == c for i, _ in where))

    def to_dict(self) -> dict:
        """JSON-ready; pixels and coverage left out (re-rendered from the scene)."""
        return {"split": self.split, "seed": self.seed, "index": self.index, "scene": self.scene.to_dict(),
                "layout": list(self.layout), "boxes": [list(b) for b in self.boxes],
                "object_crops": [[[c, s] for c, s in where] for where in self.object_crops],
                "question": self.question.to_dict(), "caption": self.caption.to_dict(),
                "grid": None if self.grid is None else list(self.grid)}


def _check_layout(layout):
    try:
        rows, cols = (int(v) for v in layout)
    except (TypeError, ValueError):
        raise ValueError(f"layout must be (rows, cols), got {layout!r}") from None
    if not (1 <= rows <= 4 and 1 <= cols <= 4) or rows * cols < 2:
        raise ValueError(f"layout must be (rows, cols) in 1..4 with at least two crops, got {layout!r}")
    return rows, cols


def cut(image: np.ndarray, labels: np.ndarray, layout: tuple[int, int], crop: int, n_objects: int):
    """Crops, base image, boxes and object-to-crop bookkeeping of a rendered full scene.

    Args:
        image: ``(rows * crop, cols * crop, 3)`` uint8; labels: its ``(H, W)`` int8 label map.
        n_objects: ``K``, the scene's objects (a hidden one gets no crop).
    Returns:
        ``(crops (C, crop, crop, 3), base (crop, crop, 3), boxes, object_crops)``.
    """
    rows, cols = layout
    if image.shape[:2] != (rows * crop, cols * crop) or labels.shape != image.shape[:2]:
        raise ValueError(f"image must be {(rows * crop, cols * crop)} px for layout {layout} of {crop} px crops, "
                         f"got {image.shape[:2]} (labels {labels.shape})")
    crops = image.reshape(rows, crop, cols, crop, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, crop, crop, 3)
    base = np.asarray(Image.fromarray(image).resize((crop, crop), Image.Resampling.BOX))
    boxes = tuple((r * crop, c * crop, (r + 1) * crop, (c + 1) * crop) for r in range(rows) for c in range(cols))
    K = n_objects
    per_crop = labels.reshape(rows, crop, cols, crop).transpose(0, 2, 1, 3).reshape(rows * cols, -1)
    counts = np.stack([(per_crop == k).sum(1) for k in range(K)]) if K else np.zeros((0, rows * cols))  # (K, C)
    object_crops = []
    for k in range(K):
        total = counts[k].sum()
        object_crops.append(tuple((int(c), round(float(counts[k, c] / total), 4))
                                  for c in np.flatnonzero(counts[k])) if total else ())
    return np.ascontiguousarray(crops), base, boxes, tuple(object_crops)


def make_multicrop_record(split: str, seed: int, index: int, layout=(2, 2), config: WorldConfig | None = None,
                          grid="default", n_objects: tuple[int, int] | None = None) -> MultiCropRecord:
    """AnyRes record ``index`` of ``split``: a ``layout`` of ``config.image_size`` crops.

    ``n_objects`` defaults to ``(4, 10)``: more room, more objects, capped by the count words.
    """
    config = check_config(config)
    rows, cols = _check_layout(layout)
    if config.image_size[0] != config.image_size[1]:
        raise ValueError(f"config.image_size must be square for AnyRes crops, got {config.image_size}")
    crop = config.image_size[0]
    grid = resolve_grid(grid, config)
    rng = record_rng(split, seed, index, "multicrop")
    qtype, answer = slot(split, seed, index, config.question_mix, "multicrop")
    uid = f"multicrop:{split}/{seed}/{index}"
    for _ in range(100):
        scene = sample_scene(rng, config, height=rows * crop, width=cols * crop, n_objects=n_objects or (4, 10),
                             uid=uid)
        question = ask(scene, rng, qtype, answer, config)
        if question is not None:
            break
    else:  # pragma: no cover
        raise RuntimeError(f"no scene of {uid} carries a {qtype!r} question")
    text = caption(scene, rng, config=config)
    image, labels = render_with_labels(scene)
    crops, base, boxes, object_crops = cut(image, labels, (rows, cols), crop, len(scene.objects))
    crop_cov = base_cov = None
    if grid is not None:
        K = len(scene.objects)
        crop_cov = np.stack([coverage_from_labels(labels[y0:y1, x0:x1], K, grid) for y0, x0, y1, x1 in boxes])
        base_cov = coverage_from_labels(labels, K, grid)
    return MultiCropRecord(split, seed, index, scene, (rows, cols), image, crops, base, boxes, object_crops,
                           question, text, grid, crop_cov, base_cov)


def _chunk(split, seed, start, n, layout, config, grid, n_objects):
    return [make_multicrop_record(split, seed, i, layout, config, grid, n_objects) for i in range(start, start + n)]


def sample_multicrop(split: str, n: int, seed: int = 0, *, start: int = 0, layout=(2, 2),
                     config: WorldConfig | None = None, grid="default", n_objects=None,
                     workers: int = 1) -> list[MultiCropRecord]:
    """AnyRes records ``start .. start + n - 1`` of ``split`` (own seed stream, apart from images)."""
    check_split(split)
    n, seed, start = check_count(n), check_seed(seed), check_seed(start, "start")
    layout, config = _check_layout(layout), check_config(config)
    return run(_chunk, n, start, workers, split=split, seed=seed, layout=layout, config=config,
               grid=resolve_grid(grid, config), n_objects=n_objects)
