"""Scoring answers and comparing runs: exact match of the first word, per question type, paired
differences with their standard errors, and the blind baselines a score is read against.
"""

from __future__ import annotations

import math
import re

from .questions import Question


Z95 = 1.96  # a 95% interval is the estimate -/+ Z95 standard errors (normal approximation)


def first_word(text: str) -> str:
    """The first word of a generated answer, lower-cased, without punctuation."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""


def score_answers(questions: list[Question], texts: dict) -> dict:
    """Exact match of the first word (:func:`first_word`) of each answered question that has an answer.

    Args:
        questions: the questions; texts: generated answer text by ``question_id``.
    Returns:
        ``{"accuracy": fraction or None, "per_type": {type: {"accuracy", "questions"}}}``.
    """
    return _score_hits_of(questions, answer_hits(questions, texts))


def _score_hits_of(questions: list[Question], hits: str) -> dict:
    """:func:`score_hits` of the questions an :func:`answer_hits` string scored."""
    scored = [(q.qtype, hit == "1") for q, hit in zip(questions, hits) if hit != "-"]
    return score_hits([t for t, _ in scored], [h for _, h in scored])


def answer_hits(questions: list[Question], texts: dict) -> str:
    """One character per question, in their order: ``"1"`` the first word of its answer matches the
    reference (:func:`first_word`), ``"0"`` it does not, ``"-"`` not scored (not answered, or no
    reference). Two runs of the same questions compare question by question with :func:`paired_difference`."""
    return "".join("-" if q.answer is None or q.qid not in texts else
                   "1" if first_word(texts[q.qid]) == first_word(str(q.answer)) else "0" for q in questions)


def paired_difference(hits_a: str, hits_b: str) -> tuple[float, float, int]:
    """``(difference, standard_error, n)``: run a's accuracy minus run b's on the ``n`` questions both
    scored (:func:`answer_hits` strings of the same questions in the same order), and the standard
    error of that mean of per-question differences (each -1, 0 or 1; sample variance). Paired on the
    same questions it is far below the √2 × :func:`max_standard_error` of two independent runs."""
    import pandas as pd

    from ..studies import paired_gap

    if len(hits_a) != len(hits_b):
        raise ValueError(f"the two runs must score the same questions, got {len(hits_a)} and {len(hits_b)} hits")
    pairs = [(i, a, b) for i, (a, b) in enumerate(zip(hits_a, hits_b)) if a != "-" and b != "-"]
    if len(pairs) < 2:
        raise ValueError(f"need at least two questions scored in both runs, got {len(pairs)}")
    frame = pd.DataFrame([{"record": i, "run": run, "hit": int(h)} for i, a, b in pairs
                          for run, h in (("a", a), ("b", b))])
    gap = paired_gap(frame, "run", "hit", "a", "b")
    return gap["gap"], gap["se"], gap["n"]


def score_hits(qtypes, hits) -> dict:
    """Accuracy overall and per question type from one ``qtype`` and one hit (bool) per answered
    question: ``{"accuracy": fraction or None, "per_type": {type: {"accuracy", "questions"}}}``
    (fractions rounded to 4 places; a missing type counts as ``"all"``)."""
    per_type = {}
    for qtype, hit in zip(qtypes, hits):
        per_type.setdefault(qtype or "all", []).append(float(hit))
    flat = [h for v in per_type.values() for h in v]
    return {"accuracy": round(sum(flat) / len(flat), 4) if flat else None,
            "per_type": {t: {"accuracy": round(sum(v) / len(v), 4), "questions": len(v)}
                         for t, v in sorted(per_type.items())}}


def max_standard_error(n: int) -> float:
    """The largest binomial standard error of an accuracy on ``n`` questions (at accuracy 1/2),
    as a fraction: ``0.5 / sqrt(n)``. A difference of two independent accuracies has √2 times it;
    paired on the same questions, less."""
    if n < 1:
        raise ValueError(f"need at least one question, got {n}")
    return 0.5 / math.sqrt(n)


def answer_kind(text: str) -> str:
    """The lab world's kind of an answer's first word (``colour``, ``count``, ``answer`` for
    yes/no, ...; :func:`eadp_lab.world.token_kind`), or ``"not a word of the world"``."""
    from ..world.vocab import token_kind

    try:
        return token_kind(first_word(text))
    except ValueError:
        return "not a word of the world"


def blind_baseline(questions) -> dict:
    """Per question type, the best a model that ignores the image can do with one fixed answer:
    ``{qtype: {"answer": the type's most frequent answer, "accuracy": its share, "questions": n}}``,
    computed on these ``questions`` (objects with ``qtype`` and ``answer``; unanswered ones skipped).
    Yes/no types balanced by construction sit at 50%."""
    from collections import Counter

    answers: dict[str, Counter] = {}
    for q in questions:
        if q.answer is not None:
            answers.setdefault(q.qtype or "all", Counter())[first_word(q.answer)] += 1
    out = {}
    for qtype, counts in sorted(answers.items()):
        answer, hits = counts.most_common(1)[0]
        out[qtype] = {"answer": answer, "accuracy": hits / sum(counts.values()), "questions": sum(counts.values())}
    return out
