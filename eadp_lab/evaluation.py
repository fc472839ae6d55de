"""Answering questions with a VLM and a pruning method attached: the loop the accuracy bench, the lab models' cards and ``Lab`` share.

- :func:`load`: a VLM, its processor and (for CLIP scoring) its CLIP; the shipped lab models by default;
- :func:`lab_questions` / :func:`file_questions`: the lab world's held-out questions (with
  the ground truth of what they name) or a LLaVA-evaluation jsonl file;
- :func:`evaluate`: one method at one budget through :func:`eadp_lab.attach` and
  ``model.generate``: accuracy (exact match of the first word), per question type, and what was
  kept of the named objects (:func:`named_kept`).

Used by :mod:`eadp_lab.bench.accuracy` (every method side by side), :mod:`eadp_lab.labmodels.train`
(the lab LLaVA's card) and :class:`eadp_lab.lab.Lab`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import torch

from .methods.settings import clip_similarity_sign, method_settings

__all__ = ["LAB_LLAVA", "LAB_CLIP", "Question", "lab_questions", "file_questions", "named_kept", "first_word", "load",
           "prompt_for", "evaluate", "load_results", "results_frame", "markdown_table", "per_type_frame", "positions_gap"]

ROOT = Path(__file__).resolve().parents[1]
LAB_LLAVA = ROOT / "data" / "models" / "lab-llava"
LAB_CLIP = ROOT / "data" / "models" / "lab-clip"



@dataclass
class Question:
    """One question: its image (``(H, W, 3)`` uint8 array or a PIL image), text and answer.

    Lab-world questions also carry the ground truth of what they name: ``named``, the objects
    the question's words refer to, and ``masks``, ``(K, N)`` bool, the visual tokens each of
    the scene's ``K`` objects covers on the model's ``N``-token grid (from the scene
    description, not from pixels).
    """

    qid: str
    image: object
    text: str
    answer: str | None
    qtype: str | None
    named: tuple[int, ...] = ()
    masks: torch.Tensor | None = None


def lab_questions(n: int, seed: int) -> list[Question]:
    """``n`` questions of the lab world's ``heldout`` split for ``seed``."""
    from .guidance import named_objects, object_masks
    from .world import sample

    return [Question(f"heldout/{seed}/{r.index}", r.image, r.question.text, r.answer, r.qtype,
                     named_objects(r.question), object_masks(r.coverage))
            for r in sample("heldout", n, seed=seed, workers=2 if n >= 64 else 1)]


def named_kept(question: Question, item) -> dict | None:
    """What the tokens kept for ``question``'s image show of the objects it names.

    Args:
        question: a :class:`Question` with ``named`` and ``masks`` (lab-world questions).
        item: the pruner's record of that image (``pruner.last.items[i]``: ``kept``, ``(T,)``
            indices into its ``tokens_before`` tokens).
    Returns:
        :func:`eadp_lab.guidance.named_recall` of the kept tokens (``recall``, ``reached``,
        ``all_reached``), or ``None`` when there is nothing to measure: no ground truth, no
        named object (an existence question about an absent one), or a token grid that is not
        the model's.
    """
    from .guidance import named_recall

    if question.masks is None or not question.named or question.masks.shape[1] != item.tokens_before:
        return None
    keep = torch.zeros(item.tokens_before, dtype=torch.bool)
    keep[item.kept.cpu()] = True
    return named_recall(keep, question.masks, question.named)


def file_questions(path, image_folder, limit: int | None = None) -> list[Question]:
    """Questions of a LLaVA-evaluation jsonl file (``question_id``, ``image``, ``text``, ``answer``?)."""
    from PIL import Image

    out = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = json.loads(line)
            for key in ("question_id", "image", "text"):
                if key not in d:
                    raise ValueError(f"{path}:{line_no}: missing {key!r} (need question_id, image, text)")
            image = Image.open(Path(image_folder) / d["image"]).convert("RGB")
            out.append(Question(str(d["question_id"]), image, d["text"], d.get("answer"), d.get("category")))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"question file {path} holds no questions")
    return out


def first_word(text: str) -> str:
    """The first word of a generated answer, lower-cased, without punctuation."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""


def load(model_path=None, clip_path=None, dtype=torch.float32):
    """``(model, processor, clip, clip_tokenizer)``; defaults: the lab LLaVA and the lab CLIP."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .models.scorers import load_clip

    model_path = LAB_LLAVA if model_path is None else model_path
    if clip_path is None and Path(model_path).resolve() == LAB_LLAVA.resolve():
        clip_path = LAB_CLIP
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    clip, clip_tokenizer = (None, None) if clip_path is None else load_clip(clip_path, dtype=dtype)
    return model, processor, clip, clip_tokenizer


def prompt_for(processor, question: str) -> str:
    """The prompt for one image and ``question``: the processor's chat template, or LLaVA-1.5's format."""
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return f"USER: {getattr(processor, 'image_token', '<image>')}\n{question} ASSISTANT:"


@torch.no_grad()
def evaluate(model, processor, questions: list[Question], name: str, budget: int, *, clip=None, clip_tokenizer=None,
             scoring: str = "clip", batch: int = 32, seed: int = 0, max_new_tokens: int = 3, sign=None,
             positions: str = "renumber", bar=None) -> dict:
    """Answer ``questions`` with method ``name`` at ``budget`` attached; accuracy and answers.

    ``positions`` goes to :func:`eadp_lab.attach`: ``"renumber"`` the kept tokens
    contiguously (its default) or keep their ``"original"`` 1-D positions.
    """
    from .models import attach, family_of

    family = family_of(model)
    if sign is None and scoring == "clip":
        sign = clip_similarity_sign(clip)  # the sign the CLIP declares (the lab CLIP); None: the presets' -1
    tokenizer = processor.tokenizer
    if tokenizer.padding_side != "left":
        raise ValueError("the processor's tokenizer must pad on the left for batched generation")
    answers, hits, per_type, kept, named, seconds = [], [], {}, [], [], 0.0
    start = time.perf_counter()
    suppress = [t for t in (getattr(model.config, "image_token_id", None),) if t is not None]
    for b, i in enumerate(range(0, len(questions), batch)):
        chunk = questions[i : i + batch]
        inputs = processor(images=[q.image for q in chunk], text=[prompt_for(processor, q.text) for q in chunk],
                           return_tensors="pt", padding=True)
        method, settings = method_settings(name, family, b, seed, sign)
        with attach(model, method, budget=budget, scoring=scoring, settings=settings, clip=clip,
                    clip_tokenizer=clip_tokenizer, tokenizer=tokenizer, positions=positions) as pruner:
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 suppress_tokens=suppress or None)
            record = pruner.last
        seconds += record.seconds
        kept += [it.tokens_after for it in record.items]
        texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        items = {it.sample: it for it in record.items}
        for j, (q, text) in enumerate(zip(chunk, texts)):
            seen = named_kept(q, items[j]) if j in items else None
            if seen is not None:
                named.append(seen)
            answers.append({"question_id": q.qid, "prompt": q.text, "text": text.strip()})
            if q.answer is not None:
                hit = float(first_word(text) == first_word(str(q.answer)))
                hits.append(hit)
                per_type.setdefault(q.qtype or "all", []).append(hit)
        if bar is not None:
            bar.update(len(chunk))
    _, settings = method_settings(name, family, 0, seed, sign)
    return {
        "method": name, "budget": int(budget),
        "accuracy": round(sum(hits) / len(hits), 4) if hits else None,
        "questions": len(questions),
        "per_type": {t: {"accuracy": round(sum(v) / len(v), 4), "questions": len(v)} for t, v in sorted(per_type.items())},
        "kept_tokens_mean": round(sum(kept) / max(1, len(kept)), 2),
        # Selection-level ground truth (lab questions): share of the questions whose named
        # objects each keep at least one token, and the mean share of their tokens kept.
        "named_reached": round(sum(n["all_reached"] for n in named) / len(named), 4) if named else None,
        "named_recall": round(sum(n["recall"] for n in named) / len(named), 4) if named else None,
        "named_questions": len(named),
        "pruning_seconds": round(seconds, 3), "seconds": round(time.perf_counter() - start, 2),
        "settings": asdict(settings) if is_dataclass(settings) else None, "positions": positions,
        "sign": getattr(settings, "similarity_sign", None),
        "answers": answers,
    }


def _result_rows(results) -> list[dict]:
    """The rows of :func:`eadp_lab.bench.accuracy.run`, or of a report the command wrote (its ``results``)."""
    if isinstance(results, dict):
        results = results.get("results")
    if not isinstance(results, (list, tuple)) or not results:
        raise ValueError("results must be the rows of run() or a report with a non-empty 'results' list")
    for r in results:
        if not isinstance(r, dict) or not {"method", "budget", "accuracy"} <= set(r):
            raise ValueError(f"every result needs 'method', 'budget' and 'accuracy', got {r!r}")
    return list(results)


def load_results(path) -> dict:
    """The report ``python -m eadp_lab bench accuracy --json PATH`` wrote, checked.

    Returns the JSON as a dict (``results``, and ``command``, ``model``, ``questions`` ...
    when the command recorded them); a bare list of result rows is wrapped as
    ``{"results": rows}``. ``ValueError`` naming ``path`` if it holds no usable results.
    """
    data = json.loads(Path(path).read_text())
    if isinstance(data, list):
        data = {"results": data}
    try:
        _result_rows(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return data


def results_frame(results, value: str = "accuracy"):
    """Results side by side as a ``pandas.DataFrame``: one row per method (in the order the
    results list them), one column per budget (largest first), ``value`` in the cells
    (``"accuracy"``, ``"kept_tokens_mean"``, ``"seconds"``, ...). ``none`` sits in the column of
    its full token count; configurations that were not run are NaN.

    Args:
        results: the rows of :func:`eadp_lab.bench.accuracy.run`, or the command's report (``{"results": [...]}``).
    """
    import pandas as pd

    rows = _result_rows(results)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    budgets = sorted({int(r["budget"]) for r in rows}, reverse=True)
    frame = pd.DataFrame(float("nan"), index=pd.Index(methods, name="method"),
                         columns=pd.Index(budgets, name="budget"))
    for r in rows:
        v = r.get(value)
        frame.loc[r["method"], int(r["budget"])] = float("nan") if v is None else float(v)
    return frame


def markdown_table(results, values=("accuracy", "named_reached")) -> str:
    """A Markdown table of ``values`` (in %) per method (rows) and budget (columns), one block
    of budget columns per value; for model cards and notes. Values no row carries are left out.

    Args:
        results: the rows of :func:`eadp_lab.bench.accuracy.run`, or the command's report (``{"results": [...]}``).
    """
    import pandas as pd

    rows = _result_rows(results)
    values = [v for v in values if any(r.get(v) is not None for r in rows)]
    if not values:
        return "| method |\n| --- |"
    table = pd.concat({v: results_frame(rows, v) for v in values}, axis=1)  # columns: (value, budget)
    header = ["method"] + [f"{v} @ {b}" for v, b in table.columns]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for method, cells in table.iterrows():
        lines.append("| " + " | ".join([method, *("" if pd.isna(x) else f"{100 * x:.1f}" for x in cells)]) + " |")
    return "\n".join(lines)


def per_type_frame(results, value: str = "accuracy"):
    """Per-question-type results as a ``pandas.DataFrame`` indexed by ``(method, budget)``, one
    column per question type (sorted) and ``all`` last; ``value`` is ``"accuracy"`` or
    ``"questions"`` (how many questions of the type were scored). A type a configuration never
    saw is NaN.

    Args:
        results: the rows of :func:`eadp_lab.bench.accuracy.run`, or the command's report (``{"results": [...]}``).
    """
    import pandas as pd

    if value not in ("accuracy", "questions"):
        raise ValueError(f"value must be 'accuracy' or 'questions', got {value!r}")
    rows = _result_rows(results)
    types = sorted({t for r in rows for t in (r.get("per_type") or {})})
    records = []
    for r in rows:
        per_type = r.get("per_type") or {}
        record = {"method": r["method"], "budget": int(r["budget"])}
        record.update({t: per_type[t][value] if t in per_type else float("nan") for t in types})
        if value == "accuracy":
            record["all"] = float("nan") if r["accuracy"] is None else r["accuracy"]
        else:
            record["all"] = sum(v["questions"] for v in per_type.values())
        records.append(record)
    return pd.DataFrame.from_records(records, columns=["method", "budget", *types, "all"]).set_index(
        ["method", "budget"])


def positions_gap(renumbered, original):
    """Accuracy with the kept tokens renumbered minus accuracy at their original positions, per
    method (rows) and budget (columns), as a ``pandas.DataFrame`` (fractions; ``none`` dropped).

    Args:
        renumbered, original: reports (or rows) of the same questions, methods and budgets run with
            ``--positions renumber`` and ``--positions original``.
    """
    a, b = results_frame(renumbered), results_frame(original)
    if list(a.index) != list(b.index) or list(a.columns) != list(b.columns):
        raise ValueError("the two runs must cover the same methods and budgets")
    gap = a - b
    return gap.drop(index="none", errors="ignore").dropna(axis=1, how="all")
