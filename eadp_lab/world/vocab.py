"""The closed vocabulary of the lab world: every token it can write, and what kind each is.

Collected from the word lists and from every template of questions, captions and clips,
so it is complete by construction (the tests check every generated token against it).
Kinds: ``colour``, ``shape``, ``size``, ``count``, ``relation``, ``motion`` (the content
words), ``attribute`` (``colour``, ``shape``, ``size``, ``big``, ... when asked about),
``noun`` (``object``, ``image``, ...), ``answer`` (``yes``, ``no``), ``function`` and
``punctuation``. Text is tokenised by whitespace. Taught in ``notebooks/00_tour``.
"""

from __future__ import annotations

from functools import lru_cache
from types import MappingProxyType

from .captions import CAPTION_TEMPLATES
from .clips import CLIP_TEMPLATES, MOTION_PHRASES, PLURAL_MOTION
from .questions import HEADS, TEMPLATES
from .words import KIND_WORDS, KINDS, RELATION_PHRASES

__all__ = ["vocabulary", "token_kind", "is_content", "is_grounded", "CONTENT_KINDS", "GROUNDED_KINDS", "KINDS"]

CONTENT_KINDS = frozenset({"colour", "shape", "size", "count", "relation", "motion"})
GROUNDED_KINDS = frozenset({"colour", "shape", "size"})  # words that name objects of the scene
_GLUE = ("the", "a", "an", "and", ",", "that") + HEADS


def _template_words():
    for group in (TEMPLATES, CAPTION_TEMPLATES, CLIP_TEMPLATES, RELATION_PHRASES, MOTION_PHRASES, PLURAL_MOTION):
        for phrases in group.values():
            for phrase in phrases:
                yield from (w for w in phrase.split() if not w.startswith("{"))
    yield from _GLUE


@lru_cache(maxsize=1)
def _table() -> MappingProxyType:
    kind_of = {}
    for kind in KINDS:
        for word in KIND_WORDS.get(kind, ()):
            kind_of.setdefault(word, kind)
    for word in _template_words():
        kind_of.setdefault(word, "function")
    order = sorted(kind_of, key=lambda w: (KINDS.index(kind_of[w]), w))
    return MappingProxyType({w: kind_of[w] for w in order})


def vocabulary() -> MappingProxyType:
    """Every token the world can write, mapped to its kind, in a fixed order (kind, then word).

    >>> v = vocabulary(); v["red"], v["the"], v["?"]
    ('colour', 'function', 'punctuation')
    """
    return _table()


def token_kind(token: str) -> str:
    """The kind of ``token``; ``ValueError`` if the world never writes it."""
    try:
        return _table()[token]
    except KeyError:
        raise ValueError(f"token {token!r} is not in the lab world's vocabulary") from None


def is_content(token: str) -> bool:
    """True for colour, shape, size, count, relation and motion words."""
    return token_kind(token) in CONTENT_KINDS


def is_grounded(token: str) -> bool:
    """True for the words that can name objects of a scene (colour, shape, size)."""
    return token_kind(token) in GROUNDED_KINDS
