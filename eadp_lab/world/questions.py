"""Questions about a scene, written the way people ask them, with answers by construction.

Types: an attribute of one (often tiny) object (``colour``, ``shape``, ``size``), a spatial
``relation`` between two objects (yes/no), ``count`` and ``exist`` (yes/no, in the style of
POPE: Li et al., "Evaluating Object Hallucination in Large Vision-Language Models", EMNLP
2023, with its random, popular and adversarial negatives). Referring expressions are
checked to be unique in the scene, and relations follow CLEVR (Johnson et al., CVPR 2017).
Every answer is one word computed from the scene description. A verbose world
(``WorldConfig.verbosity``) pads each question with filler that names nothing
(:func:`verbose`). Taught in ``notebooks/00_tour``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from .config import QTYPES, WorldConfig
from .scenes import Obj, Scene, relation_holds
from .words import ATTRIBUTES, COUNT_WORDS, OPPOSITE, RELATION_PHRASES, RELATIONS, fill, noun_phrase, text_and_refs

__all__ = ["Question", "ask", "TEMPLATES", "FLAVOURS", "unique_subsets", "describe", "definite_phrase",
           "relation_phrase", "absent_attrs", "verbose", "VERBOSE_OPENINGS", "VERBOSE_CLOSINGS"]

TEMPLATES = {
    "colour": ("what colour is {np} ?", "what is the colour of {np} ?", "which colour does {np} have ?",
               "what colour does {np} have ?", "can you tell me the colour of {np} ?", "{np} is what colour ?",
               "tell me the colour of {np} ."),
    "shape": ("what shape is {np} ?", "what is the shape of {np} ?", "which shape does {np} have ?",
              "what kind of shape is {np} ?", "can you tell me the shape of {np} ?", "{np} has what shape ?"),
    "size": ("what size is {np} ?", "what is the size of {np} ?", "how big is {np} ?",
             "is {np} tiny , small or large ?", "can you tell me the size of {np} ?"),
    # the object is named only by where it is: "what shape is left of the blue circle ?"
    "bare_colour": ("what colour is {rel} {anchor} ?",),
    "bare_shape": ("what shape is {rel} {anchor} ?",),
    "relation": ("is {a} {rel} {b} ?", "is {a} located {rel} {b} ?", "is {a} positioned {rel} {b} ?",
                 "does {a} appear {rel} {b} ?", "would you say {a} is {rel} {b} ?"),
    "count": ("how many {npl} are there ?", "how many {npl} are in the image ?", "how many {npl} can you see ?",
              "how many {npl} are there in the picture ?", "what is the number of {npl} ?", "count the {npl} .",
              "how many {npl} does the image contain ?"),
    "exist": ("is there {npi} in the image ?", "is there {npi} ?", "do you see {npi} ?",
              "can you see {npi} in this picture ?", "does the image contain {npi} ?",
              "is there {npi} anywhere in the image ?"),
    "exist_plural": ("are there any {npl} ?", "are there any {npl} in the image ?"),
}
HEADS = ("object", "thing")
SUBSETS = tuple(s for n in range(4) for s in itertools.combinations(ATTRIBUTES, n))  # () ... (size, colour, shape)
# Attribute sets named by existence questions, with weights (the same for yes and no), and by counts.
EXIST_SETS = ((("shape",), 3), (("colour", "shape"), 4), (("size", "colour", "shape"), 2), (("colour",), 1),
              (("size", "shape"), 1), (("size", "colour"), 1))
COUNT_SETS = ((), ("colour",), ("shape",), ("size",), ("colour", "shape"), ("size", "shape"), ("size", "colour"))
FLAVOURS = ("random", "popular", "adversarial")  # POPE's three ways to pick an absent object
# Filler of verbose instructions (:func:`verbose`): polite frames before the question and clauses
# about the image as a whole before its final mark, in wordings the templates already use ("can you
# tell me", "would you say", "in this picture"). Function words, the image's nouns and ":" only: no
# colour, shape, size, count, relation, attribute or answer word, no "object" or "thing", so filler
# names no object and asks nothing new; and no "," (in the lab world a comma marks the size question
# "is X tiny , small or large ?": the lab LLaVA answers a size to any question holding one). At most
# one phrase of each pool occurs in a template.
VERBOSE_OPENINGS = ("can you tell me :", "tell me :", "in this picture :", "with this image :", "would you say :")
VERBOSE_CLOSINGS = ("in the image", "in this view", "in the picture", "in this frame", "in the scene")


@dataclass(frozen=True)
class Question:
    """A question, its one-word answer, and per token of ``text.split()`` the objects it names."""

    text: str
    answer: str
    qtype: str
    refs: tuple[tuple[int, ...], ...]  # per token: the objects a colour, shape or size word names
    meta: dict = field(default_factory=dict, compare=False)  # how it was built (target, relation, ...)

    @property
    def tokens(self) -> list[str]:
        return self.text.split()

    def to_dict(self) -> dict:
        return {"text": self.text, "answer": self.answer, "qtype": self.qtype,
                "refs": [list(r) for r in self.refs], "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "Question":
        return cls(d["text"], d["answer"], d["qtype"], tuple(tuple(r) for r in d["refs"]), dict(d.get("meta", {})))


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _weighted(rng, pairs):
    total = sum(w for _, w in pairs)
    x = rng.random() * total
    for item, w in pairs:
        x -= w
        if x < 0:
            return item
    return pairs[-1][0]


def _values(obj: Obj, subset) -> dict:
    return {a: getattr(obj, a) for a in subset}


def _matching(objects, attrs: dict) -> tuple[int, ...]:
    return tuple(i for i, o in enumerate(objects) if all(getattr(o, a) == v for a, v in attrs.items()))


def unique_subsets(objects, k: int, exclude=(), nonempty: bool = False) -> list[tuple[str, ...]]:
    """Attribute subsets (of size, colour, shape; not in ``exclude``) that single out object ``k``."""
    target = objects[k]
    out = []
    for subset in SUBSETS:
        if (nonempty and not subset) or any(a in exclude for a in subset):
            continue
        if all(any(getattr(o, a) != getattr(target, a) for a in subset) for i, o in enumerate(objects) if i != k):
            out.append(subset)
    return out


def _relational(objects, k, rng, exclude, margin, plain):
    """``(subset, relation, anchor, anchor_subset)`` naming ``k`` through a relation, or ``None``.

    The anchor is unique by its attributes; the target clearly satisfies the relation and
    every other object with the target's named attributes clearly fails it
    (``relation_holds`` is ``False``). Subsets that need the relation (not unique alone)
    are preferred.
    """
    target = objects[k]
    allowed = [s for s in SUBSETS if not any(a in exclude for a in s)]
    for j in rng.permutation(len(objects)).tolist():
        if j == k:
            continue
        rels = [r for r in RELATIONS if relation_holds(target, objects[j], r, margin) is True]
        for r in (rels[i] for i in rng.permutation(len(rels))):
            blockers = [o for i, o in enumerate(objects)
                        if i != k and relation_holds(o, objects[j], r, margin) is not False]
            valid = [s for s in allowed
                     if all(any(getattr(o, a) != getattr(target, a) for a in s) for o in blockers)]
            if not valid:
                continue
            anchor_sets = unique_subsets(objects, j, nonempty=True)
            if not anchor_sets:
                break  # this anchor cannot be named
            needed = [s for s in valid if s not in plain]
            subset = _pick(rng, needed if needed and rng.random() < 0.7 else valid)
            return subset, r, j, _pick(rng, anchor_sets)
    return None


def describe(scene: Scene, k: int, rng, exclude=(), relational_rate: float = 0.35,
             margin: float | None = None) -> dict | None:
    """A unique definite description of object ``k`` that names none of ``exclude``.

    With probability ``relational_rate`` (and always when its attributes alone cannot single
    it out) ``k`` is named through a clear relation to a uniquely named anchor; ``margin``
    (px, default ``WorldConfig().relation_margin`` units) is how clear.

    Returns:
        ``{"attrs": {...}, "relation": str | None, "anchor": int | None, "anchor_attrs": {...}}``,
        or ``None`` if the scene allows none.
    """
    objects = scene.objects
    margin = WorldConfig().relation_margin * scene.unit if margin is None else margin
    plain = unique_subsets(objects, k, exclude)
    if plain and rng.random() >= relational_rate:
        return {"attrs": _values(objects[k], _pick(rng, plain)), "relation": None, "anchor": None, "anchor_attrs": {}}
    found = _relational(objects, k, rng, exclude, margin, plain)
    if found is not None:
        subset, r, j, anchor_subset = found
        return {"attrs": _values(objects[k], subset), "relation": r, "anchor": j,
                "anchor_attrs": _values(objects[j], anchor_subset)}
    if plain:
        return {"attrs": _values(objects[k], _pick(rng, plain)), "relation": None, "anchor": None, "anchor_attrs": {}}
    return None


def relation_phrase(rng, relation: str) -> list:
    return [(w, ()) for w in _pick(rng, RELATION_PHRASES[relation]).split()]


def definite_phrase(desc: dict, k: int, rng) -> list:
    """Tokens of ``the [size] [colour] (shape | object) [relation the anchor]``."""
    tokens = noun_phrase(desc["attrs"], (k,), "the", head=_pick(rng, HEADS))
    if desc["relation"] is not None:
        tokens += relation_phrase(rng, desc["relation"])
        tokens += noun_phrase(desc["anchor_attrs"], (desc["anchor"],), "the", head=_pick(rng, HEADS))
    return tokens


def _question(tokens, answer, qtype, **meta) -> Question:
    text, refs = text_and_refs(tokens)
    return Question(text, answer, qtype, refs, meta)


def _ask_attribute(scene, rng, attribute, config):
    objects = scene.objects
    order = rng.permutation(len(objects)).tolist()
    if attribute != "size" and rng.random() < config.tiny_target_rate:
        order.sort(key=lambda i: objects[i].size != "tiny")  # tiny ones first, in random order
    margin = config.relation_margin * scene.unit
    for k in order:
        desc = describe(scene, k, rng, (attribute,), config.relational_rate, margin)
        if desc is not None:
            break
    else:
        return None
    bare = "bare_" + attribute
    if desc["relation"] and not desc["attrs"] and bare in TEMPLATES and rng.random() < 0.5:
        j = desc["anchor"]
        tokens = fill(_pick(rng, TEMPLATES[bare]), rel=relation_phrase(rng, desc["relation"]),
                      anchor=noun_phrase(desc["anchor_attrs"], (j,), "the", head=_pick(rng, HEADS)))
    else:
        tokens = fill(_pick(rng, TEMPLATES[attribute]), np=definite_phrase(desc, k, rng))
    return _question(tokens, getattr(objects[k], attribute), attribute, target=k, relation=desc["relation"],
                     anchor=desc["anchor"], tiny=objects[k].size == "tiny")


def _ask_relation(scene, rng, answer, config):
    objects, margin = scene.objects, config.relation_margin * scene.unit
    sets = [unique_subsets(objects, k, nonempty=True) for k in range(len(objects))]
    named = [k for k in rng.permutation(len(objects)).tolist() if sets[k]]
    for a, b in itertools.permutations(named, 2):
        holding = [r for r in RELATIONS if relation_holds(objects[a], objects[b], r, margin) is True]
        if not holding:
            continue
        r = _pick(rng, holding)
        asked = r if answer == "yes" else OPPOSITE[r]  # "no": the opposite clearly holds
        tokens = fill(_pick(rng, TEMPLATES["relation"]),
                      a=noun_phrase(_values(objects[a], _pick(rng, sets[a])), (a,), "the", head=_pick(rng, HEADS)),
                      rel=relation_phrase(rng, asked),
                      b=noun_phrase(_values(objects[b], _pick(rng, sets[b])), (b,), "the", head=_pick(rng, HEADS)))
        return _question(tokens, answer, "relation", a=a, b=b, relation=asked)
    return None


def _ask_count(scene, rng, config):
    """Counts are drawn evenly over the counts the scene offers (zero included), not by filter."""
    objects = scene.objects
    options = {}  # count -> attribute filters with that count
    for subset in COUNT_SETS:
        for values in sorted({tuple(getattr(o, a) for a in subset) for o in objects}):
            attrs = dict(zip(subset, values))
            options.setdefault(len(_matching(objects, attrs)), []).append(attrs)
    absent, _ = absent_attrs(scene, rng, _pick(rng, COUNT_SETS[1:]), "random", config)
    if absent is not None:
        options[0] = [absent]
    attrs = _pick(rng, options[_pick(rng, sorted(options))])
    found = _matching(objects, attrs)
    tokens = fill(_pick(rng, TEMPLATES["count"]),
                  npl=noun_phrase(attrs, found, None, plural=True, head=_pick(rng, HEADS)))
    return _question(tokens, COUNT_WORDS[len(found)], "count", attrs=attrs)


def absent_attrs(scene, rng, subset, flavour, config):
    """Values for ``subset`` that no object has, picked in a POPE ``flavour``; ``(attrs, flavour)``."""
    objects = scene.objects
    pools = {"size": ("tiny", "small", "large"), "colour": config.colours, "shape": config.shapes}
    present = {tuple(getattr(o, a) for a in subset) for o in objects}
    if flavour == "popular" and len(subset) > 1:  # every value is in the scene, the combination is not
        seen = [sorted({getattr(o, a) for o in objects}) for a in subset]
        options = [c for c in itertools.product(*seen) if c not in present]
    elif flavour == "adversarial":  # a present object with one named attribute changed
        options = sorted({c[:i] + (v,) + c[i + 1:] for c in present for i, a in enumerate(subset)
                          for v in pools[a]} - present)
    else:
        flavour = "random"
        options = [c for c in itertools.product(*(pools[a] for a in subset)) if c not in present]
    if not options:
        return None, flavour
    return dict(zip(subset, _pick(rng, options))), flavour


def _ask_exist(scene, rng, answer, config):
    objects = scene.objects
    subset = _weighted(rng, EXIST_SETS)
    flavour = _pick(rng, FLAVOURS)
    if flavour == "popular" and len(subset) == 1:
        flavour = "random"  # one named value in the scene means "yes": as in absent_attrs, for yes and no alike
    if answer == "yes":
        attrs = _values(_pick(rng, objects), subset)
    else:
        attrs, flavour = absent_attrs(scene, rng, subset, flavour, config)
        if attrs is None:
            return None
    found = _matching(objects, attrs)
    head = _pick(rng, HEADS)
    if rng.random() < 0.2:
        tokens = fill(_pick(rng, TEMPLATES["exist_plural"]), npl=noun_phrase(attrs, found, None, True, head))
    else:
        tokens = fill(_pick(rng, TEMPLATES["exist"]), npi=noun_phrase(attrs, found, "a", head=head))
    return _question(tokens, "yes" if found else "no", "exist", attrs=attrs, flavour=flavour)


def _phrase(clause: str) -> str:
    return " ".join(w for w in clause.split() if w not in (",", ":"))


def verbose(question: Question, level: int, rng: np.random.Generator) -> Question:
    """``question`` padded with ``level`` filler clauses that name nothing (``level`` 0: itself).

    The first ``ceil(level / 2)`` clauses of a random order of :data:`VERBOSE_OPENINGS` go before
    it and the first ``floor(level / 2)`` of a random order of :data:`VERBOSE_CLOSINGS` before its
    final ``?`` or ``.``; a clause whose phrase the question already holds is left out. Both orders
    are drawn whatever ``level`` is, so with the same ``rng`` state each level extends the one
    below it. The answer, type and every word of the question with its referents are kept; filler
    tokens refer to nothing. ``meta`` gains ``verbosity`` and ``core``, the ``[start, stop)`` of
    the question's own tokens before its final mark.

    >>> q = Question("what colour is the star ?", "red", "colour", ((), (), (), (), (0,), ()))
    >>> verbose(q, 2, np.random.default_rng(0)).text
    'in this picture : what colour is the star in the scene ?'
    """
    order_open = rng.permutation(len(VERBOSE_OPENINGS)).tolist()
    order_close = rng.permutation(len(VERBOSE_CLOSINGS)).tolist()
    if level == 0:
        return question
    core = f" {question.text} "
    openings = [VERBOSE_OPENINGS[i] for i in order_open if f" {_phrase(VERBOSE_OPENINGS[i])} " not in core]
    closings = [VERBOSE_CLOSINGS[i] for i in order_close if f" {_phrase(VERBOSE_CLOSINGS[i])} " not in core]
    head = [(w, ()) for c in openings[:(level + 1) // 2] for w in c.split()]
    tail = [(w, ()) for c in closings[:level // 2] for w in c.split()]
    tokens = list(zip(question.tokens, question.refs))
    text, refs = text_and_refs(head + tokens[:-1] + tail + tokens[-1:])
    meta = {**question.meta, "verbosity": int(level), "core": [len(head), len(head) + len(tokens) - 1]}
    return Question(text, question.answer, question.qtype, refs, meta)


def ask(scene: Scene, rng: np.random.Generator, qtype: str, answer: str | None = None,
        config: WorldConfig | None = None, filler_rng: np.random.Generator | None = None) -> Question | None:
    """One question of type ``qtype`` about ``scene``, or ``None`` if the scene cannot support it.

    Args:
        qtype: one of ``colour``, ``shape``, ``size``, ``relation``, ``count``, ``exist``.
        answer: for the yes/no types, ``"yes"`` or ``"no"`` (``None``: a fair coin).
        config: the world (colours, shapes, rates, relation margin, verbosity); default ``WorldConfig()``.
        filler_rng: where :func:`verbose` draws its filler when ``config.verbosity > 0`` (default
            ``rng``, after the question; :func:`eadp_lab.world.make_record` gives a stream of its
            own, so that the question is the one of verbosity 0).
    """
    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {QTYPES}, got {qtype!r}")
    if answer not in (None, "yes", "no"):
        raise ValueError(f"answer must be None, 'yes' or 'no', got {answer!r}")
    config = config or WorldConfig()
    question = _ask(scene, rng, qtype, answer, config)
    if question is None or not config.verbosity:
        return question
    return verbose(question, config.verbosity, rng if filler_rng is None else filler_rng)


def _ask(scene, rng, qtype, answer, config):
    if not scene.objects:
        return None
    if qtype in ("colour", "shape", "size"):
        return _ask_attribute(scene, rng, qtype, config)
    if qtype == "count":
        return _ask_count(scene, rng, config)
    answer = answer or ("yes" if rng.random() < 0.5 else "no")
    if qtype == "relation":
        return _ask_relation(scene, rng, answer, config)
    return _ask_exist(scene, rng, answer, config)
