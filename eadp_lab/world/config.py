"""Settings of the lab world as one frozen dataclass, serialised next to every data set.

The defaults make the world of the lab models: 96x96 images for a ViT with patch 6 (a 16x16
grid of 256 tokens), 3 to 7 objects. Object sizes and distances are measured in ``unit``
pixels (the shorter image side), so a larger canvas (the AnyRes scenes) holds more objects
of the same size rather than larger ones.

Two settings exist to move the world away from the lab models' own, for the failure-mode
study (:mod:`eadp_lab.failure_axes`), and leave it unchanged at their defaults:
``object_scale`` (the world seen closer: ``unit`` grows by it, so every object is that much
larger on the same canvas) and ``verbosity`` (instructions padded with filler that names
nothing, :func:`eadp_lab.world.questions.verbose`). Taught in ``notebooks/00_tour``.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass

from .words import COLOURS, COUNT_WORDS, SHAPES

__all__ = ["WorldConfig", "QTYPES", "CLIP_QTYPES", "YES_NO_QTYPES", "MAX_VERBOSITY", "OBJECT_SCALES"]

QTYPES = ("colour", "shape", "size", "relation", "count", "exist")
CLIP_QTYPES = ("clip_colour", "clip_shape", "clip_direction", "clip_count", "clip_exist")
YES_NO_QTYPES = ("relation", "exist", "clip_exist")
MAX_VERBOSITY = 6  # filler clauses of the most verbose instructions (questions.verbose)
OBJECT_SCALES = (0.5, 2.0)  # the range of object_scale


def _positive_int(name, value, low=1):
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}") from None
    if isinstance(value, bool) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return v


def _check_mix(name, mix, known):
    mix = tuple((str(q), int(c)) for q, c in mix)
    for qtype, count in mix:
        if qtype not in known:
            raise ValueError(f"{name}: unknown question type {qtype!r}; known: {list(known)}")
        if count < 0 or (qtype in YES_NO_QTYPES and count % 2):
            raise ValueError(f"{name}: the count of {qtype!r} must be >= 0 (and even for yes/no types), got {count}")
    if sum(c for _, c in mix) < 1:
        raise ValueError(f"{name} must ask at least one question")
    return mix


@dataclass(frozen=True)
class WorldConfig:
    """One lab world. ``image_size`` is an int (square) or ``(height, width)``; stored as a pair."""

    image_size: tuple[int, int] | int = 96
    patch_size: int = 6  # the grid of the default patch masks is image_size // patch_size
    n_objects: tuple[int, int] = (3, 7)  # inclusive range of objects per scene
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = COLOURS
    size_weights: tuple[float, float, float] = (0.35, 0.35, 0.30)  # tiny, small, large
    distractors: tuple[int, int] = (1, 4)  # faint background blobs (not objects), inclusive
    # Questions: a block of slots, shuffled per block of records; yes/no types are split evenly
    # between "yes" and "no", so every full block is exactly balanced.
    question_mix: tuple[tuple[str, int], ...] = (
        ("colour", 4), ("shape", 3), ("size", 2), ("relation", 4), ("count", 3), ("exist", 4))
    relational_rate: float = 0.35  # attribute questions that name their object through a relation
    tiny_target_rate: float = 0.5  # attribute questions about a tiny object when the scene has one
    relation_margin: float = 1 / 12  # "A left of B": centres at least this many units apart
    n_frames: int = 6  # frames per clip
    clip_mix: tuple[tuple[str, int], ...] = (
        ("clip_colour", 3), ("clip_shape", 3), ("clip_direction", 4), ("clip_count", 2), ("clip_exist", 4))
    # The world seen this many times closer: ``unit`` (and with it every object's size, the gaps,
    # the relation margin, the blobs' size and the stripes' period) grows by it on the same canvas,
    # and the blobs per image fall by its square (as many per unit area). 1.0: the lab's world
    # (large objects 28 to 36 px, 4.7 to 6 patches across at 96 px).
    object_scale: float = 1.0
    # Filler clauses around every question ``questions.ask`` writes (0 to MAX_VERBOSITY): polite
    # frames and clauses about the image made of function words, image nouns and ":" only
    # (``questions.verbose``). ``sample``/``make_record`` draw them from a stream of their own, so a
    # record's scene, image, caption, answer and question words (and the objects they name) are
    # those of verbosity 0. Clip questions have none.
    verbosity: int = 0

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, (tuple, list)):
            if len(size) != 2:
                raise ValueError(f"image_size must be an int or (height, width), got {size!r}")
            size = (_positive_int("image_size", size[0]), _positive_int("image_size", size[1]))
        else:
            size = (_positive_int("image_size", size),) * 2
        patch = _positive_int("patch_size", self.patch_size)
        if min(size) < 32 or size[0] % patch or size[1] % patch:
            raise ValueError(f"image_size must be at least 32 px and divisible by patch_size={patch}, got {size}")
        object.__setattr__(self, "image_size", size)
        lo, hi = (_positive_int("n_objects", v) for v in self.n_objects)
        if lo > hi or hi > len(COUNT_WORDS) - 1:
            raise ValueError(f"n_objects must be (low, high) with 1 <= low <= high <= 10, got {self.n_objects!r}")
        object.__setattr__(self, "n_objects", (lo, hi))
        for name, values, known in (("shapes", self.shapes, SHAPES), ("colours", self.colours, COLOURS)):
            if len(set(values)) < 2 or not set(values) <= set(known):
                raise ValueError(f"{name} must be at least two of {known}, got {values!r}")
            object.__setattr__(self, name, tuple(values))
        if len(self.size_weights) != 3 or min(self.size_weights) < 0 or sum(self.size_weights) <= 0:
            raise ValueError(f"size_weights must be three non-negative weights, got {self.size_weights!r}")
        d_lo, d_hi = self.distractors
        if not 0 <= d_lo <= d_hi:
            raise ValueError(f"distractors must be (low, high) with 0 <= low <= high, got {self.distractors!r}")
        object.__setattr__(self, "question_mix", _check_mix("question_mix", self.question_mix, QTYPES))
        object.__setattr__(self, "clip_mix", _check_mix("clip_mix", self.clip_mix, CLIP_QTYPES))
        for name in ("relational_rate", "tiny_target_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.relation_margin < 0.5:
            raise ValueError(f"relation_margin must be in (0, 0.5), got {self.relation_margin}")
        if not 2 <= _positive_int("n_frames", self.n_frames) <= 16:
            raise ValueError(f"n_frames must be in [2, 16], got {self.n_frames}")
        scale = self.object_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
                OBJECT_SCALES[0] <= scale <= OBJECT_SCALES[1]):
            raise ValueError(f"object_scale must be a number in [{OBJECT_SCALES[0]}, {OBJECT_SCALES[1]}], got {scale!r}")
        if not 0 <= _positive_int("verbosity", self.verbosity, low=0) <= MAX_VERBOSITY:
            raise ValueError(f"verbosity must be an integer in [0, {MAX_VERBOSITY}], got {self.verbosity!r}")

    @property
    def unit(self) -> int | float:
        """Pixels that object sizes and margins are measured in: the shorter image side (times ``object_scale``)."""
        side = min(self.image_size)
        return side if self.object_scale == 1 else side * float(self.object_scale)

    @property
    def grid(self) -> tuple[int, int]:
        """``(H, W)`` token grid of the default patch masks."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    def replace(self, **changes) -> "WorldConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WorldConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown world settings: {sorted(unknown)}")
        data = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                for k, v in data.items()}
        return cls(**data)
