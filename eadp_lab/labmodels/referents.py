"""What a question refers to, as intermediate training targets of the lab LLaVA (deep supervision).

A question names objects: its *subjects* (the object whose colour, shape or size is asked, the
first object of a relation, every object a count or existence question's phrase matches) and
at most one *anchor* (the second object of a relation, or the object a relational
description is anchored on: "the thing left of the blue circle"). A small language model
trained from scratch only on the answer word has to discover, without any intermediate
signal, that it must find those objects among the visual tokens before it can answer; and
a yes/no relation answer is an exclusive-or of the relation word and the sign of the
objects' offset, which gives gradient descent no partial signal at all.

The targets here spell the steps out, from the scene description alone:

- per visual token, its **role** (:data:`ROLES`): background or an object the question does
  not name, a subject, a subject's centre patch (one per subject: counting them counts the
  objects), the anchor;
- at the position that predicts the answer, the **number of subjects** and the centre
  ``(x, y)`` of the subject (when there is one) and of the anchor (when there is one).

They are read by linear heads (:class:`ReferentHeads`, training only: the saved model has no
trace of them) from intermediate layers of the language model. Every visual token of every
image is labelled alike and none is ever dropped, so no pruning method's choice is seen.

Shapes: ``B`` sequences, ``N`` visual tokens, ``D`` language-model width.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..world.grounding import centre_cell, patch_coverage, patch_owner
from ..world.questions import Question
from ..world.scenes import Scene, matches
from ..world.words import COUNT_WORDS, RELATIONS

__all__ = ["ROLES", "WORD_ROLES", "IGNORE", "word_roles", "referred_objects", "referents", "scene_owners", "stack_referents", "ReferentHeads", "referent_loss"]

ROLES = ("none", "subject", "subject_centre", "anchor")
WORD_ROLES = ("other", "subject", "anchor", "relation")  # of the question's words
IGNORE = -100  # the target of a sequence that asks nothing (a scene its question type cannot carry)


def referred_objects(scene: Scene, question: Question) -> tuple[list[int], list[int]]:
    """``(subjects, anchors)``: indices of the objects ``question`` asks about and is anchored on."""
    meta, qtype = question.meta, question.qtype
    if qtype in ("colour", "shape", "size"):
        anchor = meta.get("anchor")
        return [meta["target"]], [] if anchor is None else [anchor]
    if qtype == "relation":
        return [meta["a"]], [meta["b"]]
    if qtype in ("count", "exist"):
        return [k for k, o in enumerate(scene.objects) if matches(o, meta["attrs"])], []
    raise ValueError(f"no referents for question type {qtype!r}")


def word_roles(question: Question, subjects, anchors) -> np.ndarray:
    """``(L,)`` int64 indices into :data:`WORD_ROLES`, one per word of ``question.text``: a word that
    names a subject or the anchor (``Question.refs``), a relation word, or another word."""
    out = np.zeros(len(question.refs), np.int64)
    for i, (word, refs) in enumerate(zip(question.tokens, question.refs)):
        if set(refs) & set(subjects):
            out[i] = WORD_ROLES.index("subject")
        elif set(refs) & set(anchors):
            out[i] = WORD_ROLES.index("anchor")
        elif word in RELATIONS:
            out[i] = WORD_ROLES.index("relation")
    return out


def scene_owners(scenes, n_visual: int) -> torch.Tensor:
    """``(B, N)`` int8: the object each patch of the ``sqrt(N) x sqrt(N)`` grid belongs to, -1 on background."""
    g = int(round(n_visual ** 0.5))
    if g * g != n_visual:
        raise ValueError(f"n_visual must be a square grid, got {n_visual}")
    return torch.as_tensor(np.stack([patch_owner(patch_coverage(s, (g, g))) for s in scenes]).astype(np.int8))


def referents(scene: Scene, question: Question | None, owner: np.ndarray) -> tuple:
    """The intermediate targets of one question about ``scene``.

    Args:
        question: ``None`` for a sequence without one (every target then :data:`IGNORE`).
        owner: ``(N,)`` the object of each patch (:func:`scene_owners` row), -1 on background.
    Returns:
        ``roles`` ``(N,)`` int64 indices into :data:`ROLES`; ``count`` int (subjects);
        ``xy`` ``(4,)`` float32: subject x, y, anchor x, y in ``[-1, 1]`` (image centre 0);
        ``valid`` ``(4,)`` bool (subject: exactly one; anchor: one); ``words`` ``(L,)`` the
        question's :func:`word_roles`.
    """
    owner = np.asarray(owner, dtype=np.int64)
    if question is None:
        return (np.full(len(owner), IGNORE, np.int64), IGNORE, np.zeros(4, np.float32), np.zeros(4, bool),
                np.zeros(0, np.int64))
    subjects, anchors = referred_objects(scene, question)
    g = int(round(len(owner) ** 0.5))
    roles = np.zeros(len(owner), np.int64)
    roles[np.isin(owner, subjects)] = ROLES.index("subject")
    roles[np.isin(owner, anchors)] = ROLES.index("anchor")
    for k in subjects:  # one patch per subject: the cell of its centre
        row, col = centre_cell(scene.objects[k], scene.height, scene.width, (g, g))
        roles[row * g + col] = ROLES.index("subject_centre")
    xy = np.zeros(4, np.float32)
    valid = np.zeros(4, bool)
    for slot, group in ((0, subjects), (2, anchors)):
        if len(group) == 1:
            o = scene.objects[group[0]]
            xy[slot : slot + 2] = (2 * o.x / scene.width - 1, 2 * o.y / scene.height - 1)
            valid[slot : slot + 2] = True
    return roles, min(len(subjects), len(COUNT_WORDS) - 1), xy, valid, word_roles(question, subjects, anchors)


def stack_referents(items) -> dict[str, torch.Tensor]:
    """Batch :func:`referents` outputs: ``roles`` ``(B, N)``, ``count`` ``(B,)``, ``xy`` ``(B, 4)``,
    ``valid`` ``(B, 4)``, ``words`` ``(B, L_max)`` (padded with :data:`IGNORE`)."""
    roles, count, xy, valid, words = zip(*items)
    longest = max(len(w) for w in words)
    padded = np.full((len(words), longest), IGNORE, np.int64)
    for b, w in enumerate(words):
        padded[b, : len(w)] = w
    return {"roles": torch.as_tensor(np.stack(roles)), "count": torch.as_tensor(count, dtype=torch.long),
            "xy": torch.as_tensor(np.stack(xy)), "valid": torch.as_tensor(np.stack(valid)),
            "words": torch.as_tensor(padded)}


class ReferentHeads(torch.nn.Module):
    """Linear read-outs of the referent targets (training only): ``role`` on visual tokens,
    ``answer`` (count logits, then four coordinates) at the answer position, ``word`` on the question's words."""

    def __init__(self, width: int):
        super().__init__()
        self.role = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, len(ROLES)))
        self.answer = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, len(COUNT_WORDS) + 4))
        self.word = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, len(WORD_ROLES)))


def referent_loss(heads: ReferentHeads, visual_states: torch.Tensor, answer_states: torch.Tensor,
                  targets: dict[str, torch.Tensor], word_states: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Role cross-entropy over visual tokens + count cross-entropy + coordinate MSE at the answer
    (+ the words' role cross-entropy).

    The role term is the mean of two means: over the patches the question names and over the
    others (about 96% of them), so that the named ones are not drowned out.

    Args:
        visual_states: ``(B, N, D)`` hidden states of the visual tokens at the role layer.
        answer_states: ``(B, D)`` hidden state of the position that predicts the answer, at the answer layer.
        targets: :func:`stack_referents`.
        word_states: ``(B, L_max, D)`` hidden states of the question's words at the word layer
            (``None``: no word term).
    Returns:
        the summed loss and its parts (floats) for the log.
    """
    role_logits = heads.role(visual_states.float()).reshape(-1, len(ROLES))  # (B * N, R)
    roles = targets["roles"].reshape(-1)
    scored = roles >= 0  # IGNORE: a sequence without a question
    each = F.cross_entropy(role_logits[scored], roles[scored], reduction="none")
    named = roles[scored] > 0  # about 4% of the patches: their mean counts as much as the others'
    zero = role_logits.new_zeros(())
    role = 0.5 * ((each[~named].mean() if bool((~named).any()) else zero) + (each[named].mean() if bool(named.any()) else zero))
    out = heads.answer(answer_states.float())  # (B, counts + 4)
    counted = targets["count"] >= 0
    count = F.cross_entropy(out[counted, : len(COUNT_WORDS)], targets["count"][counted]) if bool(counted.any()) else zero
    valid = targets["valid"]
    err = (out[:, len(COUNT_WORDS):] - targets["xy"]) ** 2
    xy = (err * valid).sum() / valid.sum().clamp(min=1)
    parts = {"role": role.item(), "count": count.item(), "xy": xy.item()}
    total = role + count + xy
    if word_states is not None:
        words = targets["words"]
        word = F.cross_entropy(heads.word(word_states.float()).reshape(-1, len(WORD_ROLES)), words.reshape(-1),
                               ignore_index=IGNORE) if bool((words >= 0).any()) else zero
        total = total + word
        parts["word"] = word.item()
    return total, parts
