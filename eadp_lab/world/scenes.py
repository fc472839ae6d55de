"""Scenes of the lab world: objects on a cluttered background, sampled without overlap.

A scene is a *description* (shapes, colours, sizes, positions, background settings); every
image, answer and mask is computed from it, so answers are right by construction. Spatial
relations follow CLEVR (Johnson et al., CVPR 2017): "A left of B" compares the centres,
with a margin so that no answer hangs on a pixel. Coordinates are pixels, ``x`` to the
right and ``y`` down, on a continuous canvas whose pixel ``(i, j)`` covers
``[j, j + 1) x [i, i + 1)``. Taught in ``notebooks/00_tour``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .config import WorldConfig
from .words import PALETTE, RELATIONS, SIZES

__all__ = ["Obj", "Background", "Scene", "SIZE_DIAMETERS", "sample_scene", "sample_objects",
           "sample_background", "offset", "relation_holds", "matches"]

# Diameter of each size class as a fraction of the unit: 8-12, 16-22 and 28-36 px at 96 px,
# i.e. tiny objects are 1 to 2 patches of 6 px wide.
SIZE_DIAMETERS = {"tiny": (1 / 12, 1 / 8), "small": (1 / 6, 0.23), "large": (0.29, 0.375)}


@dataclass(frozen=True)
class Obj:
    """One object. ``radius`` bounds the shape (every shape fits in its circle)."""

    shape: str
    colour: str
    size: str
    x: float  # centre, px
    y: float
    radius: float
    angle: float = 0.0  # rotation, degrees
    rgb: tuple[int, int, int] = (0, 0, 0)  # the drawn colour (the palette colour, jittered)

    def attrs(self) -> dict:
        return {"size": self.size, "colour": self.colour, "shape": self.shape}

    def moved(self, dx: float, dy: float) -> "Obj":
        return Obj(self.shape, self.colour, self.size, self.x + dx, self.y + dy, self.radius, self.angle, self.rgb)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Obj":
        return cls(**{**d, "rgb": tuple(d["rgb"])})


@dataclass(frozen=True)
class Background:
    """A textured background: tinted grey, pixel noise, a low-frequency field, stripes, faint blobs."""

    base: tuple[float, float, float]
    noise: float  # std of the per-pixel luminance noise
    field: float  # amplitude of a smooth luminance field
    seed: int  # of the noise and the field
    stripes: tuple[float, float, float, float] | None = None  # amplitude, period px, angle deg, phase
    blobs: tuple[tuple[float, ...], ...] = ()  # (x, y, sigma, alpha, r, g, b): faint, not objects

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Background":
        return cls(base=tuple(d["base"]), noise=d["noise"], field=d["field"], seed=d["seed"],
                   stripes=None if d["stripes"] is None else tuple(d["stripes"]),
                   blobs=tuple(tuple(b) for b in d["blobs"]))


@dataclass(frozen=True)
class Scene:
    """A canvas of ``height x width`` px with objects; ``unit`` px is what sizes are measured in."""

    height: int
    width: int
    unit: float
    objects: tuple[Obj, ...]
    background: Background
    uid: str = ""  # provenance, e.g. "train/0/17" (split/seed/index)

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "unit": self.unit, "uid": self.uid,
                "objects": [o.to_dict() for o in self.objects], "background": self.background.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(d["height"], d["width"], d["unit"], tuple(Obj.from_dict(o) for o in d["objects"]),
                   Background.from_dict(d["background"]), d.get("uid", ""))


def matches(obj: Obj, attrs: dict) -> bool:
    """True if ``obj`` has every attribute value in ``attrs`` (``{}`` matches everything)."""
    return all(getattr(obj, a) == v for a, v in attrs.items())


def offset(a: Obj, b: Obj, relation: str) -> float:
    """How far (px) the centre of ``a`` lies on the ``relation`` side of the centre of ``b``."""
    if relation == "left":
        return b.x - a.x
    if relation == "right":
        return a.x - b.x
    if relation == "above":
        return b.y - a.y  # y grows downwards
    if relation == "below":
        return a.y - b.y
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def relation_holds(a: Obj, b: Obj, relation: str, margin: float) -> bool | None:
    """``True`` if ``a`` is clearly ``relation`` of ``b`` (offset >= margin), ``False`` if clearly
    not (offset <= 0), ``None`` in between (too close to say: never asked)."""
    d = offset(a, b, relation)
    if d >= margin:
        return True
    if d <= 0:
        return False
    return None


def sample_objects(rng: np.random.Generator, n: int, height: int, width: int, unit: float,
                   config: WorldConfig) -> tuple[Obj, ...]:
    """``n`` objects wholly inside the canvas, at least ``unit / 48`` px apart (rejection sampling).

    Objects are placed largest first, each at the first of 64 random positions that fits; one
    that finds no room shrinks by one size class, and a tiny one that still finds none is
    dropped (so a crowded canvas may hold fewer than ``n``). The returned order is shuffled,
    so an index says nothing about size.
    """
    weights = np.cumsum(config.size_weights) / sum(config.size_weights)
    size_ids = sorted(np.searchsorted(weights, rng.random(n), side="right").clip(0, 2).tolist(), reverse=True)
    colours = rng.integers(len(config.colours), size=n).tolist()
    shapes = rng.integers(len(config.shapes), size=n).tolist()
    angles = rng.uniform(-15, 15, n).tolist()
    jitter = rng.integers(-12, 13, (n, 3)).tolist()
    within = rng.random(n).tolist()  # where each diameter falls in its size class
    candidates = rng.random((n, 64, 2))  # 64 positions to try per object, in [0, 1)
    placed = np.zeros((n, 3))  # (x, y, radius) of the objects placed so far
    objects, gap = [], unit / 48
    for i, size_id in enumerate(size_ids):
        while size_id >= 0:
            lo, hi = SIZE_DIAMETERS[SIZES[size_id]]
            r = (lo + (hi - lo) * within[i]) * unit / 2
            cand = candidates[i] * (width - 2 * r - 2, height - 2 * r - 2) + (r + 1)  # (64, 2)
            m = len(objects)
            if m:
                p = placed[:m]
                d2 = (cand[:, :1] - p[:, 0]) ** 2 + (cand[:, 1:] - p[:, 1]) ** 2  # (64, m)
                ok = (d2 >= (r + gap + p[:, 2]) ** 2).all(1)
                at = int(ok.argmax()) if ok.any() else -1
            else:
                at = 0
            if at >= 0:
                x, y = float(cand[at, 0]), float(cand[at, 1])
                colour, shape = config.colours[colours[i]], config.shapes[shapes[i]]
                rgb = tuple(min(255, max(0, c + j)) for c, j in zip(PALETTE[colour], jitter[i]))
                objects.append(Obj(shape, colour, SIZES[size_id], x, y, r, angles[i], rgb))
                placed[m] = (x, y, r)
                break
            size_id -= 1
    order = rng.permutation(len(objects))
    return tuple(objects[i] for i in order)


def sample_background(rng: np.random.Generator, height: int, width: int, unit: float,
                      config: WorldConfig) -> Background:
    """A random tinted grey with noise, maybe a smooth field and stripes, and faint blobs."""
    grey = rng.uniform(45, 115)
    base = tuple(float(grey + t) for t in rng.uniform(-10, 10, 3))
    stripes = None
    if rng.random() < 0.5:
        stripes = (float(rng.uniform(4, 14)), float(rng.uniform(5, 20) * unit / 96),
                   float(rng.uniform(0, 180)), float(rng.uniform(0, 2 * math.pi)))
    blobs = []
    n_blobs = int(rng.integers(config.distractors[0], config.distractors[1] + 1))
    n_blobs = int(round(n_blobs * height * width / unit**2))  # as many per unit area on any canvas
    for _ in range(n_blobs):
        if rng.random() < 0.6:
            rgb = PALETTE[config.colours[int(rng.integers(len(config.colours)))]]
        else:
            rgb = tuple(float(c) for c in rng.uniform(0, 255, 3))
        blobs.append((float(rng.uniform(0, width)), float(rng.uniform(0, height)),
                      float(rng.uniform(3, 10) * unit / 96), float(rng.uniform(0.12, 0.3)), *map(float, rgb)))
    field = float(rng.uniform(5, 20)) if rng.random() < 0.6 else 0.0
    return Background(base, float(rng.uniform(3, 10)), field, int(rng.integers(2**31)), stripes, tuple(blobs))


def sample_scene(rng: np.random.Generator, config: WorldConfig, *, height: int | None = None,
                 width: int | None = None, n_objects: tuple[int, int] | None = None, uid: str = "") -> Scene:
    """A random scene on a ``height x width`` canvas (default ``config.image_size``).

    ``n_objects`` (inclusive range) defaults to ``config.n_objects``; sizes are measured in
    ``config.unit`` px whatever the canvas, so a larger canvas holds more room, not larger objects.
    """
    h, w = config.image_size
    height, width = height or h, width or w
    lo, hi = n_objects or config.n_objects
    unit = float(config.unit)
    n = int(rng.integers(lo, hi + 1))
    objects = sample_objects(rng, n, height, width, unit, config)
    return Scene(height, width, unit, objects, sample_background(rng, height, width, unit, config), uid)
