"""The closed word lists of the lab world, and phrases that remember which objects they name.

Every token the world writes comes from these lists or from the templates of
``questions``, ``captions`` and ``clips``; :func:`eadp_lab.world.vocabulary` collects them.
A phrase is a list of ``(token, refs)`` pairs: ``refs`` holds the indices of the scene
objects a colour, shape or size word names (empty for every other token). That is the
grounding a dense-alignment measurement needs ("does a word's best patch lie on the object
it names", after FILIP, Yao et al., ICLR 2022). Taught in ``notebooks/00_tour``.
"""

from __future__ import annotations

__all__ = [
    "SHAPES", "PLURALS", "COLOURS", "PALETTE", "SIZES", "ATTRIBUTES", "COUNT_WORDS", "RELATIONS",
    "OPPOSITE", "RELATION_PHRASES", "KINDS", "KIND_WORDS", "Token", "fill", "noun_phrase", "article",
    "join_list", "text_and_refs",
]

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "diamond": "diamonds", "cross": "crosses", "object": "objects", "thing": "things"}
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white")
PALETTE = {  # RGB of each colour name before a small per-object jitter
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 90, 235), "yellow": (240, 225, 40),
    "purple": (155, 60, 215), "orange": (250, 140, 25), "white": (238, 238, 238),
}
SIZES = ("tiny", "small", "large")
ATTRIBUTES = ("size", "colour", "shape")  # the order of the words in a noun phrase
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
RELATIONS = ("left", "right", "above", "below")
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
RELATION_PHRASES = {  # "A <phrase> B": A lies on this side of B
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above",),
    "below": ("below", "under", "beneath"),
}

# Kinds of token; the first six are content words, "colour", "shape" and "size" name objects.
KINDS = ("colour", "shape", "size", "count", "relation", "motion",
         "attribute", "noun", "answer", "function", "punctuation")
KIND_WORDS = {
    "colour": COLOURS,
    "shape": SHAPES + tuple(PLURALS[s] for s in SHAPES),
    "size": SIZES,
    "count": COUNT_WORDS,
    "relation": ("left", "right", "above", "below", "under", "beneath"),
    "motion": ("move", "moves", "moving", "enters", "leaves", "comes", "goes", "up", "down",
               "upwards", "downwards", "still", "stay", "stays"),
    "attribute": ("colour", "shape", "size", "big", "number", "direction", "way"),
    "noun": ("object", "objects", "thing", "things", "image", "picture", "scene", "clip", "video", "view",
             "frame"),
    "answer": ("yes", "no"),
    "punctuation": ("?", ".", ",", ":"),
}

Token = tuple  # (word: str, refs: tuple[int, ...])


def article(word: str) -> str:
    """``"an"`` before a vowel (``an orange star``, ``an object``), else ``"a"``."""
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(attrs: dict, refs: tuple = (), det: str | None = "the", plural: bool = False,
                head: str = "object") -> list:
    """``[det] [size] [colour] (shape | head)`` as ``(token, refs)`` pairs.

    Args:
        attrs: a subset of ``{"size", "colour", "shape"}`` with values.
        refs: the objects the phrase names; given to the size, colour and shape words only.
        det: ``"the"``, ``"a"`` (becomes ``"an"`` before a vowel) or ``None``.
        plural: use the plural noun (``circles``, ``objects``).
        head: the noun when no shape is named (``object`` or ``thing``).
    """
    refs = tuple(refs)
    words = [(attrs[a], refs) for a in ATTRIBUTES[:2] if a in attrs]
    noun = attrs.get("shape", head)
    words.append((PLURALS[noun] if plural else noun, refs if "shape" in attrs else ()))
    if det is not None:
        words.insert(0, (article(words[0][0]) if det == "a" else det, ()))
    return words


def fill(template: str, **slots) -> list:
    """Tokens of ``template`` (space separated) with each ``{name}`` replaced by ``slots[name]``.

    >>> fill("is there {np} ?", np=[("a", ()), ("star", (2,))])
    [('is', ()), ('there', ()), ('a', ()), ('star', (2,)), ('?', ())]
    """
    out = []
    for word in template.split():
        if word.startswith("{") and word.endswith("}"):
            out.extend(slots[word[1:-1]])
        else:
            out.append((word, ()))
    return out


def join_list(phrases: list) -> list:
    """``A``, ``A and B``, ``A , B and C`` from phrases given as token lists."""
    out = []
    for i, phrase in enumerate(phrases):
        if i == len(phrases) - 1 and i > 0:
            out.append(("and", ()))
        elif i > 0:
            out.append((",", ()))
        out.extend(phrase)
    return out


def text_and_refs(tokens: list) -> tuple[str, tuple]:
    """``("what colour is ...", ((), (), (3,), ...))`` from ``(token, refs)`` pairs."""
    return " ".join(t for t, _ in tokens), tuple(tuple(r) for _, r in tokens)
