"""Short clips of the lab world: objects in linear motion, some entering or leaving the view.

A clip is its first frame (a :class:`Scene` whose objects may lie outside the canvas) plus
one velocity per object; frame ``t`` moves every object by ``t`` velocities. Objects
never collide (rejection sampling over all frames), still objects do not move, moving
ones go mainly along one axis (the other component at most 0.3 of it), and an object that
enters (leaves) is wholly outside the canvas in the first (last) frame and wholly inside
in the last (first). Questions about the whole clip ("what colour is the object that moves
to the right ?") are answered from this description: the setting of per-frame token
pruning in video models (LLaVA-Video: Zhang et al., "Video Instruction Tuning with Synthetic
Data", 2024). Taught in
``notebooks/05_video_and_multicrop``.

Shapes: ``T`` frames of ``H x W``, ``K`` objects, ``(gh, gw)`` token grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .captions import Caption, caption
from .config import WorldConfig
from .questions import FLAVOURS, HEADS, Question, absent_attrs, unique_subsets
from .grounding import coverage_from_labels
from .render import draw_objects, render_background, to_image
from .scenes import SIZE_DIAMETERS, Obj, Scene, sample_background
from .seeds import check_config, check_count, check_seed, check_split, record_rng, resolve_grid, run, slot
from .words import COUNT_WORDS, PALETTE, SIZES, fill, noun_phrase, text_and_refs

__all__ = ["Clip", "ClipRecord", "MOTION_PHRASES", "CLIP_TEMPLATES", "sample_clip", "render_clip", "ask_clip",
           "make_clip_record", "sample_clips", "direction", "event"]

DIRECTIONS = ("left", "right", "up", "down")
MOTION_PHRASES = {  # "the object that <phrase>"
    "left": ("moves to the left", "moves left", "is moving to the left"),
    "right": ("moves to the right", "moves right", "is moving to the right"),
    "up": ("moves up", "is moving up", "moves upwards"),
    "down": ("moves down", "is moving down", "moves downwards"),
    "still": ("does not move", "stays still", "is not moving"),
    "enters": ("enters the scene", "comes into view"),
    "leaves": ("leaves the scene", "goes out of view"),
}
PLURAL_MOTION = {  # "how many objects <phrase>"
    "left": ("move to the left", "are moving to the left", "move left"),
    "right": ("move to the right", "are moving to the right", "move right"),
    "up": ("move up", "are moving up", "move upwards"),
    "down": ("move down", "are moving down", "move downwards"),
    "still": ("do not move", "stay still", "are not moving"),
    "moving": ("move", "are moving"),
}
CLIP_TEMPLATES = {
    "clip_colour": ("what colour is {np} ?", "what is the colour of {np} ?", "which colour does {np} have ?"),
    "clip_shape": ("what shape is {np} ?", "what is the shape of {np} ?", "which shape does {np} have ?"),
    "clip_direction": ("which way does {np} move ?", "in which direction does {np} move ?",
                       "{np} moves in which direction ?", "where does {np} move ?"),
    "clip_count": ("how many objects {motion} ?", "how many objects {motion} in the clip ?",
                   "how many objects {motion} in the video ?"),
    "clip_exist": ("is there {npi} in the clip ?", "does {npi} appear in the video ?",
                   "do you see {npi} at any point in the clip ?", "is there {npi} in any frame ?"),
}
_MODES = (("still", 0.3), ("move", 0.45), ("enters", 0.125), ("leaves", 0.125))


@dataclass(frozen=True)
class Clip:
    """``n_frames`` frames: ``start`` (frame 0) and one ``(vx, vy)`` in px per frame per object."""

    start: Scene
    velocities: tuple[tuple[float, float], ...]
    n_frames: int

    def frame(self, t: int) -> Scene:
        """Frame ``t`` as a scene (objects keep their index, even outside the canvas)."""
        if not 0 <= t < self.n_frames:
            raise ValueError(f"t must be in [0, {self.n_frames}), got {t!r}")
        objects = tuple(o.moved(vx * t, vy * t) for o, (vx, vy) in zip(self.start.objects, self.velocities))
        s = self.start
        return Scene(s.height, s.width, s.unit, objects, s.background, s.uid)

    def to_dict(self) -> dict:
        return {"start": self.start.to_dict(), "velocities": [list(v) for v in self.velocities],
                "n_frames": self.n_frames}

    @classmethod
    def from_dict(cls, d: dict) -> "Clip":
        return cls(Scene.from_dict(d["start"]), tuple(tuple(v) for v in d["velocities"]), d["n_frames"])


def direction(clip: Clip, k: int) -> str:
    """``still``, or the main direction of object ``k``'s motion (``left``/``right``/``up``/``down``)."""
    vx, vy = clip.velocities[k]
    if vx == 0 and vy == 0:
        return "still"
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


def _inside(o: Obj, h, w):
    return o.x - o.radius >= 0 and o.y - o.radius >= 0 and o.x + o.radius <= w and o.y + o.radius <= h


def _outside(o: Obj, h, w):
    return o.x + o.radius <= 0 or o.y + o.radius <= 0 or o.x - o.radius >= w or o.y - o.radius >= h


def event(clip: Clip, k: int) -> str:
    """``stays`` (wholly in view throughout), ``enters``, ``leaves`` or ``partial`` (anything else)."""
    h, w = clip.start.height, clip.start.width
    first, last = clip.frame(0).objects[k], clip.frame(clip.n_frames - 1).objects[k]
    if all(_inside(clip.frame(t).objects[k], h, w) for t in range(clip.n_frames)):
        return "stays"
    if _outside(first, h, w) and _inside(last, h, w):
        return "enters"
    if _inside(first, h, w) and _outside(last, h, w):
        return "leaves"
    return "partial"


def _track(rng, mode, r, height, width, T, unit):
    """``(x0, y0, vx, vy)`` for one object, or ``None`` if this draw does not fit."""
    span = T - 1
    if mode == "still":
        return float(rng.uniform(r + 1, width - r - 1)), float(rng.uniform(r + 1, height - r - 1)), 0.0, 0.0
    d = DIRECTIONS[int(rng.integers(4))]
    horizontal = d in ("left", "right")
    along, across = (width, height) if horizontal else (height, width)
    sign = 1.0 if d in ("right", "down") else -1.0
    if mode == "move":
        speed = float(rng.uniform(2.0, 4.5)) * unit / 96
        lo, hi = r + 1, along - r - 1 - speed * span  # start on the near side, far enough from the far edge
        if lo > hi:
            return None
        a0 = float(rng.uniform(lo, hi))
        if sign < 0:
            a0 = along - a0
    else:  # enters: from wholly outside to wholly inside; leaves: the same, backwards in time
        a_out = -r - float(rng.uniform(0.5, 2.0))
        a_in = float(rng.uniform(r + 1, min(along - r - 1, r + 1 + unit / 4)))
        speed = (a_in - a_out) / span
        a0 = a_out if mode == "enters" else a_in
        if (mode == "enters") != (sign > 0):  # entering from the far side or leaving through the near one
            a0 = along - a0
    v_along = sign * speed
    v_across = float(rng.uniform(-0.3, 0.3)) * speed
    lo, hi = r + 1 - min(0.0, v_across * span), across - r - 1 - max(0.0, v_across * span)
    if lo > hi:
        return None
    c0 = float(rng.uniform(lo, hi))
    return (a0, c0, v_along, v_across) if horizontal else (c0, a0, v_across, v_along)


def sample_clip(rng: np.random.Generator, config: WorldConfig, uid: str = "") -> Clip:
    """A random clip of ``config.n_frames`` frames on ``config.image_size``."""
    height, width = config.image_size
    unit, T = float(config.unit), config.n_frames
    weights = np.cumsum(config.size_weights) / sum(config.size_weights)
    n = int(rng.integers(config.n_objects[0], config.n_objects[1] + 1))
    times = np.arange(T, dtype=float)[:, None]
    objects, velocities, tracks = [], [], []  # tracks: (T, 3) x, y, radius
    for _ in range(n):
        for _attempt in range(30):
            x = rng.random()
            mode = next((m for m, p in _MODES if (x := x - p) < 0), "still")
            size_id = min(int(np.searchsorted(weights, rng.random(), side="right")), 2)
            if mode in ("enters", "leaves"):
                size_id = min(size_id, 1)  # large objects would need to jump
            lo, hi = SIZE_DIAMETERS[SIZES[size_id]]
            r = float(rng.uniform(lo, hi)) * unit / 2
            track = _track(rng, mode, r, height, width, T, unit)
            if track is None:
                continue
            x0, y0, vx, vy = track
            path = np.hstack([x0 + vx * times, y0 + vy * times, np.full((T, 1), r)])
            if all((((path[:, :2] - p[:, :2]) ** 2).sum(1) >= (r + p[:, 2] + unit / 48) ** 2).all() for p in tracks):
                colour = config.colours[int(rng.integers(len(config.colours)))]
                shape = config.shapes[int(rng.integers(len(config.shapes)))]
                rgb = tuple(int(min(255, max(0, c + j))) for c, j in zip(PALETTE[colour], rng.integers(-12, 13, 3)))
                objects.append(Obj(shape, colour, SIZES[size_id], x0, y0, r, float(rng.uniform(-15, 15)), rgb))
                velocities.append((vx, vy))
                tracks.append(path)
                break
    order = rng.permutation(len(objects)).tolist()
    background = sample_background(rng, height, width, unit, config)
    start = Scene(height, width, unit, tuple(objects[i] for i in order), background, uid)
    return Clip(start, tuple(velocities[i] for i in order), T)


def render_clip(clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(T, H, W, 3)`` uint8 and label maps ``(T, H, W)`` int8 (one background for all)."""
    s = clip.start
    background = render_background(s.background, s.height, s.width)
    frames = np.empty((clip.n_frames, s.height, s.width, 3), np.uint8)
    labels = np.empty((clip.n_frames, s.height, s.width), np.int8)
    for t in range(clip.n_frames):
        canvas = background.copy()
        labels[t] = draw_objects(canvas, clip.frame(t).objects)
        frames[t] = to_image(canvas)
    return frames, labels


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _phrase(rng, phrases, key):
    return [(w, ()) for w in _pick(rng, phrases[key]).split()]


def _ask_attribute(clip, rng, attribute):
    """Colour or shape of an object named by how it moves (or by attributes alone)."""
    objects = clip.start.objects
    motion = [direction(clip, k) for k in range(len(objects))]
    events = [event(clip, k) for k in range(len(objects))]
    for k in rng.permutation(len(objects)).tolist():
        clauses = [("direction", motion[k])] + ([("event", events[k])] if events[k] in ("enters", "leaves") else [])
        clause = _pick(rng, clauses) if rng.random() < 0.75 else None
        if clause is None:
            group = list(range(len(objects)))
        else:
            kind, value = clause
            group = [i for i in range(len(objects)) if (motion if kind == "direction" else events)[i] == value]
        sub = [objects[i] for i in group]
        subsets = unique_subsets(sub, group.index(k), exclude=(attribute,))
        if not subsets:
            continue
        attrs = {a: getattr(objects[k], a) for a in _pick(rng, subsets)}
        np_tokens = noun_phrase(attrs, (k,), "the", head=_pick(rng, HEADS))
        if clause is not None:
            np_tokens += [("that", ())] + _phrase(rng, MOTION_PHRASES, clause[1])
        tokens = fill(_pick(rng, CLIP_TEMPLATES["clip_" + attribute]), np=np_tokens)
        return tokens, getattr(objects[k], attribute), {"target": k, "clause": clause}
    return None


def _ask_direction(clip, rng):
    objects = clip.start.objects
    for k in rng.permutation(len(objects)).tolist():
        d = direction(clip, k)
        subsets = unique_subsets(objects, k, nonempty=True)
        if d == "still" or not subsets:
            continue
        attrs = {a: getattr(objects[k], a) for a in _pick(rng, subsets)}
        tokens = fill(_pick(rng, CLIP_TEMPLATES["clip_direction"]),
                      np=noun_phrase(attrs, (k,), "the", head=_pick(rng, HEADS)))
        return tokens, d, {"target": k}
    return None


def _ask_count(clip, rng):
    """Counts drawn evenly over the counts the clip offers, then a motion with that count."""
    moving = [direction(clip, k) for k in range(len(clip.start.objects))]
    options = {}
    for key in PLURAL_MOTION:
        n = sum(m != "still" for m in moving) if key == "moving" else sum(m == key for m in moving)
        options.setdefault(n, []).append(key)
    n = _pick(rng, sorted(options))
    key = _pick(rng, options[n])
    tokens = fill(_pick(rng, CLIP_TEMPLATES["clip_count"]), motion=_phrase(rng, PLURAL_MOTION, key))
    return tokens, COUNT_WORDS[n], {"motion": key}


def _ask_exist(clip, rng, answer, config):
    scene = clip.start  # every object is in view in at least one frame
    subset = _pick(rng, (("shape",), ("colour", "shape"), ("colour", "shape"), ("size", "colour", "shape")))
    flavour = _pick(rng, FLAVOURS)
    if flavour == "popular" and len(subset) == 1:
        flavour = "random"
    if answer == "yes":
        obj = _pick(rng, scene.objects)
        attrs = {a: getattr(obj, a) for a in subset}
    else:
        attrs, flavour = absent_attrs(scene, rng, subset, flavour, config)
        if attrs is None:
            return None
    found = tuple(i for i, o in enumerate(scene.objects) if all(getattr(o, a) == v for a, v in attrs.items()))
    tokens = fill(_pick(rng, CLIP_TEMPLATES["clip_exist"]), npi=noun_phrase(attrs, found, "a", head=_pick(rng, HEADS)))
    return tokens, "yes" if found else "no", {"attrs": attrs, "flavour": flavour}


def ask_clip(clip: Clip, rng: np.random.Generator, qtype: str, answer: str | None = None,
             config: WorldConfig | None = None) -> Question | None:
    """One question about the whole clip, or ``None`` if the clip cannot support it.

    Args:
        qtype: ``clip_colour``, ``clip_shape``, ``clip_direction``, ``clip_count`` or ``clip_exist``.
        answer: for ``clip_exist``, ``"yes"`` or ``"no"`` (``None``: a fair coin).
    """
    if qtype not in CLIP_TEMPLATES:
        raise ValueError(f"qtype must be one of {tuple(CLIP_TEMPLATES)}, got {qtype!r}")
    if answer not in (None, "yes", "no"):
        raise ValueError(f"answer must be None, 'yes' or 'no', got {answer!r}")
    config = config or WorldConfig()
    if not clip.start.objects:
        return None
    if qtype in ("clip_colour", "clip_shape"):
        built = _ask_attribute(clip, rng, qtype[5:])
    elif qtype == "clip_direction":
        built = _ask_direction(clip, rng)
    elif qtype == "clip_count":
        built = _ask_count(clip, rng)
    else:
        built = _ask_exist(clip, rng, answer or ("yes" if rng.random() < 0.5 else "no"), config)
    if built is None:
        return None
    tokens, reply, meta = built
    text, refs = text_and_refs(tokens)
    return Question(text, reply, qtype, refs, meta)


@dataclass
class ClipRecord:
    """One clip example. ``frames`` ``(T, H, W, 3)`` uint8; ``coverage`` ``(T, K, gh, gw)`` float32."""

    split: str
    seed: int
    index: int
    clip: Clip
    frames: np.ndarray
    question: Question
    caption: Caption  # of the objects in view in the first frame (see meta["frame"])
    grid: tuple[int, int] | None
    coverage: np.ndarray | None

    @property
    def answer(self) -> str:
        return self.question.answer

    @property
    def qtype(self) -> str:
        return self.question.qtype

    def to_dict(self) -> dict:
        """JSON-ready, frames and coverage left out (``render_clip(Clip.from_dict(...))`` remakes them)."""
        return {"split": self.split, "seed": self.seed, "index": self.index, "clip": self.clip.to_dict(),
                "question": self.question.to_dict(), "caption": self.caption.to_dict(),
                "grid": None if self.grid is None else list(self.grid)}


def make_clip_record(split: str, seed: int, index: int, config: WorldConfig | None = None,
                     grid="default") -> ClipRecord:
    """Clip record ``index`` of ``split`` for ``seed`` (its own seed stream, apart from images)."""
    config = check_config(config)
    grid = resolve_grid(grid, config)
    rng = record_rng(split, seed, index, "clip")
    qtype, answer = slot(split, seed, index, config.clip_mix, "clip")
    for _ in range(100):
        clip = sample_clip(rng, config, uid=f"clip:{split}/{seed}/{index}")
        question = ask_clip(clip, rng, qtype, answer, config)
        if question is not None:
            break
    else:  # pragma: no cover
        raise RuntimeError(f"no clip carries a {qtype!r} question")
    frames, labels = render_clip(clip)
    coverage = None
    if grid is not None:
        K = len(clip.start.objects)
        coverage = np.stack([coverage_from_labels(labels[t], K, grid) for t in range(clip.n_frames)])
    return ClipRecord(split, seed, index, clip, frames, question, _frame_caption(clip, rng, config), grid, coverage)


def _frame_caption(clip, rng, config):
    """A list caption of the objects wholly in view in the first frame (the last if there are none).

    ``refs`` index the clip's objects; ``meta["frame"]`` says which frame it describes.
    """
    for t in (0, clip.n_frames - 1):
        scene = clip.frame(t)
        shown = [k for k, o in enumerate(scene.objects) if _inside(o, scene.height, scene.width)]
        if shown:
            break
    sub = Scene(scene.height, scene.width, scene.unit, tuple(scene.objects[k] for k in shown), scene.background)
    c = caption(sub, rng, style="list", config=config)
    refs = tuple(tuple(shown[i] for i in r) for r in c.refs)
    return Caption(c.text, c.style, refs, False, {"frame": t, "objects": shown})


def _chunk(split, seed, start, n, config, grid):
    return [make_clip_record(split, seed, i, config, grid) for i in range(start, start + n)]


def sample_clips(split: str, n: int, seed: int = 0, *, start: int = 0, config: WorldConfig | None = None,
                 grid="default", workers: int = 1) -> list[ClipRecord]:
    """Clip records ``start .. start + n - 1`` of ``split``; ``config.n_frames`` frames each."""
    check_split(split)
    n, seed, start = check_count(n), check_seed(seed), check_seed(start, "start")
    config = check_config(config)
    return run(_chunk, n, start, workers, split=split, seed=seed, config=config, grid=resolve_grid(grid, config))
