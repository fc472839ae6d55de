"""Rendering a scene description to pixels and to a label map.

Shapes are drawn with numpy masks on each object's bounding box, 2x2 supersampled (so tiny
objects keep their outline), over a background built from whole-array operations (tinted
grey, uniform pixel noise, a smooth field, stripes, faint Gaussian blobs that are not
objects). The label map says which object is on top at each pixel (``-1``: background);
``grounding`` turns it into patch masks. Taught in ``notebooks/00_tour``.

Shapes: ``H x W`` pixels, ``K`` objects.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .scenes import Background, Obj, Scene

__all__ = ["render", "render_with_labels", "render_background", "draw_objects", "to_image", "label_map",
           "object_alpha"]

_STAR_INNER = 0.42  # inner radius of the five-pointed star


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` at normalised coordinates (radius 1, ``v`` down)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.7
    if shape == "diamond":  # a tall rhombus, never mistaken for a slightly turned square
        return np.abs(u) / 0.68 + np.abs(v) <= 1.0
    if shape == "triangle":  # equilateral, pointing up, inscribed in the unit circle
        return (v <= 0.5) & (np.abs(u) <= 0.57735 * (v + 1.0))
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "star":
        sector = 2 * math.pi / 5
        theta = np.arctan2(u, -v)  # 0 points up
        psi = sector / 2 - np.abs(np.mod(theta, sector) - sector / 2)  # 0 at an outer vertex, pi/5 inner
        rho = np.sqrt(u * u + v * v)
        px, py = rho * np.cos(psi), rho * np.sin(psi)
        bx, by = _STAR_INNER * math.cos(sector / 2), _STAR_INNER * math.sin(sector / 2)
        return (bx - 1.0) * py - by * (px - 1.0) >= 0.0
    raise ValueError(f"unknown shape {shape!r}")


def object_alpha(obj: Obj, height: int, width: int):
    """Coverage in ``[0, 1]`` of each pixel of the object's box, clipped to the canvas.

    Each pixel is sampled at 2x2 points; ``alpha`` takes the values 0, 1/4, ..., 1.

    Returns:
        ``(y0, y1, x0, x1, alpha)`` with ``alpha`` ``(y1 - y0, x1 - x0)`` float32, or ``None``
        if the object lies wholly outside the canvas.
    """
    r = obj.radius
    x0, x1 = max(int(math.floor(obj.x - r)), 0), min(int(math.ceil(obj.x + r)), width)
    y0, y1 = max(int(math.floor(obj.y - r)), 0), min(int(math.ceil(obj.y + r)), height)
    if x0 >= x1 or y0 >= y1:
        return None
    # sample points at pixel + 1/4 and pixel + 3/4, in units of the radius
    xs = (np.arange(2 * x0, 2 * x1, dtype=np.float32) * np.float32(0.5) + np.float32(0.25 - obj.x)) / np.float32(r)
    ys = (np.arange(2 * y0, 2 * y1, dtype=np.float32) * np.float32(0.5) + np.float32(0.25 - obj.y)) / np.float32(r)
    if obj.shape == "circle" or obj.angle == 0:
        u, v = xs[None, :], ys[:, None]
    else:
        c, s = np.float32(math.cos(math.radians(obj.angle))), np.float32(math.sin(math.radians(obj.angle)))
        u = c * xs[None, :] + s * ys[:, None]
        v = c * ys[:, None] - s * xs[None, :]
    inside = _inside(obj.shape, u, v).view(np.uint8)  # (2h, 2w)
    rows = inside[0::2] + inside[1::2]
    hits = rows[:, 0::2] + rows[:, 1::2]  # (h, w) in 0..4
    return y0, y1, x0, x1, hits.astype(np.float32) * np.float32(0.25)


@lru_cache(maxsize=64)
def _interp(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` linear interpolation matrix (pixel centres, edges clamped)."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] += (1 - (pos - lo)).astype(np.float32)
    m[np.arange(n_out), hi] += (pos - lo).astype(np.float32)
    return m


def render_background(bg: Background, height: int, width: int) -> np.ndarray:
    """The background as ``(3, H, W)`` float32 (channel first) in about ``[0, 255]``."""
    rng = np.random.default_rng(bg.seed)
    noise = np.frombuffer(rng.bytes(height * width), np.uint8).reshape(height, width)
    # uniform noise of standard deviation bg.noise (a uniform byte has std 73.9)
    lum = (noise.astype(np.float32) - np.float32(127.5)) * np.float32(bg.noise / 73.9)
    if bg.field:
        field = rng.random((4, 4), dtype=np.float32) * 2 - 1
        lum += np.float32(bg.field) * (_interp(height, 4) @ field @ _interp(width, 4).T)
    if bg.stripes is not None:
        amp, period, angle, phase = bg.stripes
        a = math.radians(angle)
        xs = np.arange(width, dtype=np.float32) * np.float32(math.cos(a) * 2 * math.pi / period)
        ys = np.arange(height, dtype=np.float32) * np.float32(math.sin(a) * 2 * math.pi / period)
        lum += np.float32(amp) * np.sin(ys[:, None] + xs[None, :] + np.float32(phase))
    canvas = lum[None] + np.asarray(bg.base, np.float32)[:, None, None]
    for x, y, sigma, alpha, *rgb in bg.blobs:
        x0, x1 = max(int(x - 3 * sigma), 0), min(int(x + 3 * sigma) + 1, width)
        y0, y1 = max(int(y - 3 * sigma), 0), min(int(y + 3 * sigma) + 1, height)
        if x0 >= x1 or y0 >= y1:
            continue
        scale = np.float32(-0.5 / (sigma * sigma))
        gx = np.exp((np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - x)) ** 2 * scale)
        gy = np.exp((np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - y)) ** 2 * scale)
        w = np.float32(alpha) * gy[:, None] * gx[None, :]  # a Gaussian is separable
        region = canvas[:, y0:y1, x0:x1]
        region += w[None] * (np.asarray(rgb, np.float32)[:, None, None] - region)
    return canvas


def to_image(canvas: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` float canvas to an ``(H, W, 3)`` uint8 image."""
    chw = np.clip(canvas + np.float32(0.5), 0, 255).astype(np.uint8)
    image = np.empty(chw.shape[1:] + (3,), np.uint8)
    for c in range(3):
        image[..., c] = chw[c]
    return image


def draw_objects(canvas: np.ndarray, objects) -> np.ndarray:
    """Paint ``objects`` in order onto a ``(3, H, W)`` float32 canvas, in place.

    Returns:
        the label map ``(H, W)`` int8: the object on top at each pixel (``-1``: background); a
        pixel belongs to an object when the object covers at least half of it.
    """
    _, height, width = canvas.shape
    labels = np.full((height, width), -1, np.int8)
    for k, obj in enumerate(objects):
        box = object_alpha(obj, height, width)
        if box is None:
            continue
        y0, y1, x0, x1, alpha = box
        region = canvas[:, y0:y1, x0:x1]
        region += alpha[None] * (np.asarray(obj.rgb, np.float32)[:, None, None] - region)
        labels[y0:y1, x0:x1][alpha >= 0.5] = k
    return labels


def render_with_labels(scene: Scene, background: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(H, W, 3)`` uint8 and label map ``(H, W)`` int8 (object on top, ``-1`` background).

    ``background``: an already rendered :func:`render_background` ``(3, H, W)`` (not changed),
    e.g. shared by the frames of a clip.
    """
    if background is None:
        canvas = render_background(scene.background, scene.height, scene.width)
    else:
        canvas = background.copy()
    labels = draw_objects(canvas, scene.objects)
    return to_image(canvas), labels


def render(scene: Scene) -> np.ndarray:
    """The scene as an ``(H, W, 3)`` uint8 image; a pure function of the description."""
    return render_with_labels(scene)[0]


def label_map(scene: Scene) -> np.ndarray:
    """``(H, W)`` int8: index of the object on top at each pixel, ``-1`` for background."""
    labels = np.full((scene.height, scene.width), -1, np.int8)
    for k, obj in enumerate(scene.objects):
        box = object_alpha(obj, scene.height, scene.width)
        if box is not None:
            y0, y1, x0, x1, alpha = box
            labels[y0:y1, x0:x1][alpha >= 0.5] = k
    return labels
