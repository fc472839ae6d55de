"""Captions of a scene for contrastive training of a tiny CLIP, with per-word grounding.

Styles: ``list`` (every object), ``relation`` (two objects and where one is), ``count``
(how many of each shape or colour) and ``object`` (one object's phrase). A caption can be
made false on purpose (``negative=True``: one object's colour or shape swapped for one no
object of the scene has, or a relation reversed), the hard negatives of a retrieval check
(CLIP: Radford et al., ICML 2021; swapped-attribute negatives as in ARO, Yuksekgonul et
al., ICLR 2023). Words of a phrase name the object the phrase was written about. Taught
in ``notebooks/00_tour``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import WorldConfig
from .scenes import Scene, relation_holds
from .words import (COLOURS, COUNT_WORDS, OPPOSITE, PLURALS, RELATION_PHRASES, RELATIONS, SHAPES, fill, join_list,
                    noun_phrase, text_and_refs)

__all__ = ["Caption", "CAPTION_STYLES", "CAPTION_TEMPLATES", "caption", "object_phrases"]

CAPTION_STYLES = ("list", "relation", "count", "object")
CAPTION_TEMPLATES = {
    "list": ("{list} .", "an image of {list} .", "a picture with {list} .", "this picture shows {list} .",
             "in the image : {list} ."),
    "relation": ("{a} {rel} {b} .", "{a} is {rel} {b} .", "there is {a} {rel} {b} .", "a picture of {a} {rel} {b} ."),
    "count": ("{groups} .", "the image shows {groups} .", "in this picture : {groups} ."),
    "object": ("{a} .", "a picture of {a} .", "there is {a} ."),
}


@dataclass(frozen=True)
class Caption:
    """A caption, per token of ``text.split()`` the objects it names, and whether it is true."""

    text: str
    style: str
    refs: tuple[tuple[int, ...], ...]
    negative: bool = False  # True: made false on purpose (a hard negative)
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def tokens(self) -> list[str]:
        return self.text.split()

    def to_dict(self) -> dict:
        return {"text": self.text, "style": self.style, "refs": [list(r) for r in self.refs],
                "negative": self.negative, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "Caption":
        return cls(d["text"], d["style"], tuple(tuple(r) for r in d["refs"]), d["negative"], dict(d.get("meta", {})))


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _attrs(obj, full: bool) -> dict:
    attrs = {"colour": obj.colour, "shape": obj.shape}
    if full:
        attrs["size"] = obj.size
    return attrs


def _swap(scene: Scene, attrs: dict, rng, config: WorldConfig) -> dict | None:
    """``attrs`` with its colour or shape changed so that no object of the scene matches."""
    for attribute in (("colour", "shape") if rng.random() < 0.5 else ("shape", "colour")):
        pool = config.colours if attribute == "colour" else config.shapes
        options = [v for v in pool if v != attrs[attribute] and not any(
            all(getattr(o, a) == (v if a == attribute else attrs[a]) for a in attrs) for o in scene.objects)]
        if options:
            return {**attrs, attribute: _pick(rng, options)}
    return None


def _mention(scene, k, rng, full, swap, config):
    """``(tokens, swapped)`` of an indefinite phrase about object ``k`` (maybe made false)."""
    attrs = _attrs(scene.objects[k], full)
    if swap:
        wrong = _swap(scene, attrs, rng, config)
        if wrong is not None:
            return noun_phrase(wrong, (), "a"), True
    return noun_phrase(attrs, (k,), "a"), False


def _list(scene, rng, negative, config):
    order = rng.permutation(len(scene.objects)).tolist()
    wrong_at = int(rng.integers(len(order))) if negative else -1
    full = rng.random() < 0.7
    mentions, swapped = [], False
    for i, k in enumerate(order):
        tokens, s = _mention(scene, k, rng, full, i == wrong_at, config)
        mentions.append(tokens)
        swapped |= s
    return fill(_pick(rng, CAPTION_TEMPLATES["list"]), list=join_list(mentions)), swapped, {"order": order}


def _relation(scene, rng, negative, config):
    objects, margin = scene.objects, config.relation_margin * scene.unit
    pairs = [(a, b, r) for a in range(len(objects)) for b in range(len(objects)) if a != b
             for r in RELATIONS if relation_holds(objects[a], objects[b], r, margin) is True]
    if not pairs:
        return None
    a, b, r = _pick(rng, pairs)
    full = rng.random() < 0.7
    swapped, which = False, -1
    if negative:
        which = int(rng.integers(3))  # 0: reverse the relation, 1: change a, 2: change b
        if which == 0:
            r, swapped = OPPOSITE[r], True
    ta, sa = _mention(scene, a, rng, full, which == 1, config)
    tb, sb = _mention(scene, b, rng, full, which == 2, config)
    rel = [(w, ()) for w in _pick(rng, RELATION_PHRASES[r]).split()]
    tokens = fill(_pick(rng, CAPTION_TEMPLATES["relation"]), a=ta, rel=rel, b=tb)
    return tokens, swapped or sa or sb, {"a": a, "b": b, "relation": r}


def _count(scene, rng):
    """``two circles , one square and one star .`` (or by colour: ``one red object , ...``)."""
    by = "shape" if rng.random() < 0.6 else "colour"
    groups = []
    for value in (SHAPES if by == "shape" else COLOURS):
        members = tuple(i for i, o in enumerate(scene.objects) if getattr(o, by) == value)
        n = len(members)
        if by == "shape" and n:
            groups.append([(COUNT_WORDS[n], ()), (value if n == 1 else PLURALS[value], members)])
        elif n:
            groups.append([(COUNT_WORDS[n], ()), (value, members), ("object" if n == 1 else "objects", ())])
    order = rng.permutation(len(groups)).tolist()
    return fill(_pick(rng, CAPTION_TEMPLATES["count"]), groups=join_list([groups[i] for i in order])), False, {"by": by}


def _object(scene, rng, negative, config):
    k = int(rng.integers(len(scene.objects)))
    tokens, swapped = _mention(scene, k, rng, rng.random() < 0.8, negative, config)
    return fill(_pick(rng, CAPTION_TEMPLATES["object"]), a=tokens), swapped, {"object": k}


def caption(scene: Scene, rng: np.random.Generator, style: str | None = None, negative: bool = False,
            config: WorldConfig | None = None) -> Caption:
    """A caption of ``scene`` in ``style`` (``None``: drawn), true unless ``negative``.

    A ``relation`` caption falls back to ``list`` when no two objects are clearly placed; a
    negative ``count`` caption is not offered (``ValueError``). ``negative`` captions are false
    by construction: a phrase names no object of the scene (its words name nothing), or a
    relation is reversed. If no swap is possible (every colour is there), ``negative`` is
    ``False`` on the result.
    """
    if style is not None and style not in CAPTION_STYLES:
        raise ValueError(f"style must be one of {CAPTION_STYLES} or None, got {style!r}")
    if negative and style == "count":
        raise ValueError("style='count' has no negative captions")
    if not scene.objects:
        raise ValueError("scene has no objects to caption")
    config = config or WorldConfig()
    if style is None:
        styles = CAPTION_STYLES[:2] + CAPTION_STYLES[3:] if negative else CAPTION_STYLES
        style = _pick(rng, styles)
    built = None
    if style == "relation":
        built = _relation(scene, rng, negative, config)
        if built is None:
            style = "list"
    if style == "list":
        built = _list(scene, rng, negative, config)
    elif style == "count":
        built = _count(scene, rng)
    elif style == "object":
        built = _object(scene, rng, negative, config)
    tokens, swapped, meta = built
    text, refs = text_and_refs(tokens)
    return Caption(text, style, refs, swapped, meta)


def object_phrases(scene: Scene, full: bool = True) -> list[Caption]:
    """One ``object`` caption per object, in scene order: ``a tiny red triangle .``"""
    out = []
    for k, obj in enumerate(scene.objects):
        text, refs = text_and_refs(noun_phrase(_attrs(obj, full), (k,), "a") + [(".", ())])
        out.append(Caption(text, "object", refs, False, {"object": k}))
    return out
