"""One method at one budget attached to a VLM, answering questions: :func:`evaluate`, the loop
the accuracy bench, the lab models' cards and :class:`eadp_lab.lab.Lab` share."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, is_dataclass

import torch

from ..analysis import kept_spacing
from ..methods.settings import clip_similarity_sign, method_settings
from .answers import answer_record, open_answers, run_hash, run_record
from .loading import model_id_of, prompt_for, to_model
from .questions import Question, named_kept
from .scores import _score_hits_of, answer_hits


def _mean_of(rows: list[dict], key: str) -> float | None:
    """Mean of ``key`` over the rows where it is a number (NaN skipped), rounded; ``None`` if none."""
    values = [r[key] for r in rows if not math.isnan(r[key])]
    return round(sum(values) / len(values), 4) if values else None


@torch.no_grad()
def evaluate(model, processor, questions: list[Question], name: str, budget: int, *, clip=None, clip_tokenizer=None,
             scoring: str = "clip", batch: int = 32, seed: int = 0, max_new_tokens: int = 3, sign=None,
             positions: str = "renumber", bar=None, answers_file=None, model_id: str | None = None,
             overwrite: bool = False) -> dict:
    """Answer ``questions`` with method ``name`` at ``budget`` attached; accuracy and answers.

    ``positions`` goes to :func:`eadp_lab.attach`: ``"renumber"`` the kept tokens
    contiguously (its default) or keep their ``"original"`` 1-D positions. Inputs go to the
    model's device (pixel values in its dtype). ``answers_file``: append each batch's answers
    there as they are produced (:func:`answer_record`, flushed), after the questions it
    already answers, which are not asked again (``resumed`` counts them; accuracy covers
    them, the kept-token figures only the questions asked in this call; batches, and
    ``random``'s per-batch seeds, start over at the first question not answered yet).
    ``model_id``: the answers' ``model_id`` (default: the model's ``name_or_path``). The answers
    file records what produced it (:func:`answers_run`); a resume under other settings or for
    changed questions is an :class:`~eadp_lab.evaluation.answers.AnswersFileError` naming the
    difference, and ``overwrite`` starts it afresh. The file is locked while the run writes it.
    """
    from contextlib import nullcontext

    from ..models import family_of

    family = family_of(model)
    model_id = model_id or model_id_of(model)
    sign = run_sign(sign, scoring, clip)
    asked = {q.qid for q in questions}
    if len(asked) != len(questions):
        raise ValueError("every question needs its own question_id (answers are kept by it)")
    run = answers_run(model, name, budget, clip=clip, scoring=scoring, sign=sign, positions=positions,
                      max_new_tokens=max_new_tokens, seed=seed, model_id=model_id)
    sink_context = (nullcontext(({}, None)) if answers_file is None else
                    open_answers(answers_file, run, questions, overwrite=overwrite))
    kept, named, spacing, seconds = [], [], [], 0.0
    start = time.perf_counter()
    with sink_context as (done, sink):
        answers = {qid: a for qid, a in done.items() if qid in asked}
        todo = [q for q in questions if q.qid not in answers]
        if bar is not None and len(answers):
            bar.update(len(answers))
        for b, i in enumerate(range(0, len(todo), batch)):
            chunk = todo[i : i + batch]
            method, settings = method_settings(name, family, b, seed, sign)
            texts, record = answer_batch(model, processor, [q.image for q in chunk], [q.text for q in chunk],
                                         method, budget, settings=settings, scoring=scoring, clip=clip,
                                         clip_tokenizer=clip_tokenizer, positions=positions,
                                         max_new_tokens=max_new_tokens)
            seconds += record.seconds
            kept += [it.tokens_after for it in record.items]
            spacing += [kept_spacing(it.kept, it.layout.rows, it.layout.grids) for it in record.items]
            items = {it.sample: it for it in record.items}
            for j, (q, text) in enumerate(zip(chunk, texts)):
                seen = named_kept(q, items[j]) if j in items else None
                if seen is not None:
                    named.append(seen)
                answers[q.qid] = answer_record(q, text.strip(), model_id, run_hash(run))
                if sink is not None:
                    sink.write(json.dumps(answers[q.qid]) + "\n")
            if sink is not None:
                sink.flush()
                os.fsync(sink.fileno())
            if bar is not None:
                bar.update(len(chunk))
    hits = answer_hits(questions, {qid: a["text"] for qid, a in answers.items()})
    scores = _score_hits_of(questions, hits)
    _, settings = method_settings(name, family, 0, seed, sign)
    return {
        "method": name, "budget": int(budget),
        "accuracy": scores["accuracy"],
        "questions": len(questions), "resumed": len(questions) - len(todo),
        "per_type": scores["per_type"],
        "kept_tokens_mean": round(sum(kept) / len(kept), 2) if kept else None,
        # Selection-level ground truth (lab questions): share of the questions whose named
        # objects each keep at least one token, and the mean share of their tokens kept.
        "named_reached": round(sum(n["all_reached"] for n in named) / len(named), 4) if named else None,
        "named_recall": round(sum(n["recall"] for n in named) / len(named), 4) if named else None,
        "named_questions": len(named),
        # How spread out the kept tokens lie (analysis.kept_spacing), mean over the images asked.
        "kept_nearest": _mean_of(spacing, "nearest"), "kept_gap_cv": _mean_of(spacing, "gap_cv"),
        "pruning_seconds": round(seconds, 3), "seconds": round(time.perf_counter() - start, 2),
        "settings": asdict(settings) if is_dataclass(settings) else None, "positions": positions,
        "sign": getattr(settings, "similarity_sign", None),
        "hits": hits,  # per question, for paired comparisons of runs
        "answers": [answers[q.qid] for q in questions],
    }


@torch.no_grad()
def answer_batch(model, processor, images: list, questions: list[str], method: str, budget: int | float, *,
                 settings=None, scoring: str = "clip", clip=None, clip_tokenizer=None, positions: str = "renumber",
                 max_new_tokens: int = 3, **generate) -> tuple[list[str], object]:
    """One batch answered with registry ``method`` at ``budget`` attached: ``(answers, record)``.

    ``images[i]`` (an ``(H, W, 3)`` array or a PIL image) goes with ``questions[i]`` into the
    prompt :func:`~eadp_lab.evaluation.loading.prompt_for` writes; the processor pads the batch
    on the left and it goes to the model's device. ``model.generate`` runs greedy unless
    ``generate`` says otherwise (its other keywords, e.g. ``do_sample``, ``temperature``), never
    emitting the image placeholder. ``answers``: the generated text of each question (special
    tokens dropped); ``record``: the pruner's :class:`~eadp_lab.models.attach.CallRecord` of the
    prefill (kept tokens per item, ``seconds`` spent selecting). The loop of :func:`evaluate` and
    of the lmms-eval model (:mod:`eadp_lab.harness`).
    """
    from ..models import attach
    from ..models.processors import left_padded

    tokenizer = left_padded(processor).tokenizer
    inputs = to_model(processor(images=list(images), text=[prompt_for(processor, q) for q in questions],
                                return_tensors="pt", padding=True), model)
    suppress = [t for t in (getattr(model.config, "image_token_id", None),) if t is not None]
    generate = {"do_sample": False, "suppress_tokens": suppress or None, **generate}
    with attach(model, method, budget=budget, scoring=scoring, settings=settings, clip=clip,
                clip_tokenizer=clip_tokenizer, tokenizer=tokenizer, positions=positions) as pruner:
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, **generate)
        record = pruner.last
    return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True), record


def run_sign(sign, scoring: str, clip):
    """The similarity sign a run uses: ``sign`` if given, else (CLIP scoring) the sign the CLIP declares (the lab
    CLIP's), else ``None``: the presets' -1."""
    return clip_similarity_sign(clip) if sign is None and scoring == "clip" else sign


def answers_run(model, name: str, budget: int, *, clip=None, scoring: str = "clip", sign=None,
                positions: str = "renumber", max_new_tokens: int = 3, seed: int = 0,
                model_id: str | None = None) -> dict:
    """The :func:`~eadp_lab.evaluation.answers.run_record` of :func:`evaluate`'s arguments: what an answers
    file of that call records (the method's settings as its first batch uses them; the CLIP by its path or
    hub id; the sign :func:`run_sign` gives)."""
    from ..models import family_of

    sign = run_sign(sign, scoring, clip)
    _, settings = method_settings(name, family_of(model), 0, seed, sign)
    return run_record(model=model_id or model_id_of(model), clip=None if clip is None else model_id_of(clip),
                      method=name, budget=budget, settings=asdict(settings) if is_dataclass(settings) else None,
                      scoring=scoring, sign=sign, positions=positions, max_new_tokens=max_new_tokens, seed=seed,
                      dtype=str(model.dtype).removeprefix("torch."))
