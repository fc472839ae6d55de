"""Answering questions with a VLM and a pruning method attached: the loop the accuracy bench, the lab models' cards and ``Lab`` share.

- :func:`load`: a VLM, its processor and (for CLIP scoring) its CLIP; the shipped lab models by default;
- :func:`lab_questions` / :func:`file_questions`: the lab world's held-out questions (with
  the ground truth of what they name) or a LLaVA-evaluation jsonl file, validated up front
  (:class:`QuestionFileError` names the file, the line and the missing image);
- :func:`evaluate`: one method at one budget through :func:`eadp_lab.attach` and
  ``model.generate``: accuracy (exact match of the first word), per question type, and what was
  kept of the named objects (:func:`named_kept`) and how spread out the kept tokens lie
  (:func:`eadp_lab.analysis.kept_spacing`); with ``answers_file`` each batch's answers
  are appended (flushed) in LLaVA's answer format (:func:`answer_record`), and a rerun
  resumes after the questions the file already answers (:func:`read_answers`).

Used by :mod:`eadp_lab.bench.accuracy` (every method side by side), :mod:`eadp_lab.labmodels.train`
(the lab LLaVA's card) and :class:`eadp_lab.lab.Lab`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import torch

from .analysis import kept_spacing
from .methods.settings import clip_similarity_sign, method_settings

__all__ = ["LAB_LLAVA", "LAB_CLIP", "DTYPES", "Question", "QuestionFileError", "MissingImageError", "AnswersFileError",
           "LAB_SOURCE", "lab_questions", "report_questions", "file_questions", "named_kept", "first_word", "load", "as_dtype", "to_model", "prompt_for",
           "evaluate", "answers_path", "answer_id", "answer_record", "read_answers", "check_answers", "model_id_of",
           "score_answers", "answer_hits", "paired_difference", "score_hits", "load_results", "results_for", "results_frame", "markdown_table", "per_type_frame", "positions_gap", "positions_intervals",
           "against_best", "long_run_figures", "positions_figures", "pool_runs", "replication_figures",
           "records_spacing", "spacing_frame", "spacing_correlations", "spacing_figures", "positions_type_gap", "answer_split", "type_gap_figures",
           "max_standard_error", "blind_baseline", "against_chance", "answer_kind", "run_summary"]

ROOT = Path(__file__).resolve().parents[1]
Z95 = 1.96  # a 95% interval is the estimate -/+ Z95 standard errors (normal approximation)
LAB_LLAVA = ROOT / "data" / "models" / "lab-llava"
LAB_CLIP = ROOT / "data" / "models" / "lab-clip"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class QuestionFileError(ValueError):
    """A question file that cannot be read: the message names the file and the line."""


class MissingImageError(QuestionFileError, FileNotFoundError):
    """A question file that is not there, or one of its images: the message names the file, the line and the path."""


class AnswersFileError(ValueError):
    """An answers file a run cannot resume from (not answers, or another model's): the message names it."""


@dataclass
class Question:
    """One question: its image (``(H, W, 3)`` uint8 array or a PIL image), text and answer.

    Lab-world questions also carry the ground truth of what they name: ``named``, the objects
    the question's words refer to, and ``masks``, ``(K, N)`` bool, the visual tokens each of
    the scene's ``K`` objects covers on the model's ``N``-token grid (from the scene
    description, not from pixels).
    """

    qid: str | int  # a question file's own question_id (int stays int); lab questions: "heldout/SEED/INDEX"
    image: object
    text: str
    answer: str | None
    qtype: str | None
    named: tuple[int, ...] = ()
    masks: torch.Tensor | None = None


LAB_SOURCE = "lab world heldout split"  # a report's questions.source for lab-world questions


def lab_questions(n: int, seed: int) -> list[Question]:
    """``n`` questions of the lab world's ``heldout`` split for ``seed``."""
    from .guidance import named_objects, object_masks
    from .world import sample

    return [Question(f"heldout/{seed}/{r.index}", r.image, r.question.text, r.answer, r.qtype,
                     named_objects(r.question), object_masks(r.coverage))
            for r in sample("heldout", n, seed=seed, workers=2 if n >= 64 else 1)]


def report_questions(report: dict, count: int | None = None) -> list[Question] | None:
    """The lab-world questions a run ``report`` answered, in its order (made again from its seed;
    the first ``count`` of them if given), or ``None`` for a run of a question file."""
    if report["questions"].get("source") != LAB_SOURCE:
        return None
    return lab_questions(report["questions"]["count"] if count is None else count, report["seed"])


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


def _question_line(path, line_no: int, line: str) -> dict:
    """One line of a question file as a dict with ``question_id``, ``image`` and ``text``; ``QuestionFileError`` naming
    ``path:line_no`` otherwise."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as exc:
        raise QuestionFileError(f"{path}:{line_no}: not a JSON object ({exc.msg} at column {exc.colno})") from None
    if not isinstance(d, dict):
        raise QuestionFileError(f"{path}:{line_no}: not a JSON object (got {type(d).__name__})")
    missing = [k for k in ("question_id", "image", "text") if k not in d]
    if missing:
        raise QuestionFileError(f"{path}:{line_no}: missing {', '.join(map(repr, missing))} (need question_id, image, "
                                "text)")
    if isinstance(d["question_id"], (dict, list, bool)) or d["question_id"] is None:
        raise QuestionFileError(f"{path}:{line_no}: question_id must be a string or a number, got {d['question_id']!r}")
    return d


def _question_lines(path, image_folder) -> list[dict]:
    """Every question of ``path``, each checked (:func:`_question_line`), its ``question_id`` unique and its image in
    ``image_folder``; the first problem raises :class:`QuestionFileError` (:class:`MissingImageError` for an image)."""
    path = Path(path)
    if not path.is_file():
        raise MissingImageError(f"question file {path} not found")
    lines, seen = [], {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = _question_line(path, line_no, line)
            if d["question_id"] in seen:
                raise QuestionFileError(f"{path}:{line_no}: question_id {d['question_id']!r} repeats line "
                                        f"{seen[d['question_id']]}")
            seen[d["question_id"]] = line_no
            image = Path(image_folder) / d["image"]
            if not image.is_file():
                raise MissingImageError(f"{path}:{line_no}: image {str(d['image'])!r} not found: {image}")
            lines.append({**d, "_line": line_no, "_image": image})
    if not lines:
        raise QuestionFileError(f"question file {path} holds no questions")
    return lines


def file_questions(path, image_folder, limit: int | None = None) -> list[Question]:
    """Questions of a LLaVA-evaluation jsonl file (``question_id``, ``image``, ``text``, ``answer``?, ``category``?).

    The whole file is checked before any image is decoded: every line parsed, every
    ``question_id`` unique, every image present in ``image_folder``
    (:class:`QuestionFileError`, :class:`MissingImageError` name the file, the line and the
    path). Each :class:`Question` keeps the file's own ``question_id`` (an int stays an int).
    ``limit``: the first ``limit`` questions.
    """
    from PIL import Image, UnidentifiedImageError

    out = []
    for d in _question_lines(path, image_folder)[:limit]:
        try:
            image = Image.open(d["_image"]).convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise QuestionFileError(f"{path}:{d['_line']}: image {d['_image']} cannot be read ({exc})") from None
        out.append(Question(d["question_id"], image, d["text"], d.get("answer"), d.get("category")))
    return out


def first_word(text: str) -> str:
    """The first word of a generated answer, lower-cased, without punctuation."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""


def as_dtype(dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """A torch dtype from a dtype or its name (:data:`DTYPES`); ``None``: float32 on the CPU, bfloat16 elsewhere."""
    if dtype is None:
        return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be a torch dtype or one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    return dtype


def load(model_path=None, clip_path=None, dtype=torch.float32, device=None, device_map=None):
    """``(model, processor, clip, clip_tokenizer)``; defaults: the lab LLaVA and the lab CLIP, float32, CPU.

    ``dtype`` and ``device`` apply to the VLM and the CLIP alike; ``device_map`` (e.g.
    ``"auto"``) goes to the VLM's ``from_pretrained`` instead of ``device`` (a model that does
    not fit one device), and the CLIP then sits with the VLM's vision tower.
    """
    from transformers import AutoModelForImageTextToText

    from .models.processors import left_padded, load_processor
    from .models.scorers import load_clip

    model_path = LAB_LLAVA if model_path is None else model_path
    if clip_path is None and Path(model_path).resolve() == LAB_LLAVA.resolve():
        clip_path = LAB_CLIP
    placement = {} if device_map is None else {"device_map": device_map}
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype, **placement).eval()
    if device_map is None and device is not None:
        model = model.to(device)
    processor = left_padded(load_processor(model_path, model.config.model_type))
    tower = getattr(model.model, "vision_tower", None)  # with a device_map, the CLIP sits with the vision tower
    clip_device = model.device if tower is None else next(tower.parameters()).device
    clip, clip_tokenizer = (None, None) if clip_path is None else load_clip(clip_path, device=clip_device, dtype=dtype)
    return model, processor, clip, clip_tokenizer


def to_model(inputs, model):
    """The processor's batch on ``model``'s device, its pixel values in the model's dtype (ids stay integers)."""
    inputs = inputs.to(model.device)
    for key in ("pixel_values", "pixel_values_videos"):
        if key in inputs and inputs[key].is_floating_point():
            inputs[key] = inputs[key].to(model.dtype)
    return inputs


def prompt_for(processor, question: str) -> str:
    """The prompt for one image and ``question``: the processor's chat template, or LLaVA-1.5's format."""
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return f"USER: {getattr(processor, 'image_token', '<image>')}\n{question} ASSISTANT:"


_SHORTUUID = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # shortuuid's alphabet (57 symbols)


def answer_id() -> str:
    """A unique 22-character id in shortuuid's alphabet, as LLaVA's ``shortuuid.uuid()`` makes (a random UUID)."""
    n, out = uuid.uuid4().int, []
    for _ in range(22):  # 57 ** 22 > 2 ** 128
        n, r = divmod(n, len(_SHORTUUID))
        out.append(_SHORTUUID[r])
    return "".join(out)


def answers_path(path, method: str, budget: int) -> Path:
    """The answers file of one method and budget: ``PATH`` with ``-{method}-{budget}`` before its suffix
    (``answers.jsonl`` -> ``answers-eadp-64.jsonl``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}-{method}-{int(budget)}{path.suffix}")


def model_id_of(model) -> str:
    """The ``model_id`` answers of ``model`` carry by default: its ``name_or_path``, else its class name."""
    return str(getattr(model.config, "_name_or_path", None) or type(model).__name__)


def answer_record(question: Question, text: str, model_id: str) -> dict:
    """One line of an answers file in LLaVA's format (``model_vqa``): ``question_id`` (the question file's own),
    ``prompt`` (the question's text), ``text`` (the whole generated answer), ``answer_id``, ``model_id``,
    ``metadata``."""
    return {"question_id": question.qid, "prompt": question.text, "text": text, "answer_id": answer_id(),
            "model_id": model_id, "metadata": {}}


def read_answers(path) -> dict:
    """The answers of a LLaVA-format answers file by ``question_id`` (``{}`` if there is no file).

    A last line without its newline (a write the run was interrupted in) is left out;
    :class:`AnswersFileError` naming ``path:line`` for any other line that is not an answer.
    """
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    out = {}
    for line_no, line in enumerate(data[: data.rfind(b"\n") + 1].decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            d = None
        if not isinstance(d, dict) or "question_id" not in d or "text" not in d:
            raise AnswersFileError(f"{path}:{line_no}: not an answer (a JSON object with question_id and text); "
                                   "remove the file or choose another --answers-file")
        out[d["question_id"]] = d
    return out


def _drop_partial_line(path: Path) -> None:
    """Cut an unfinished last line (no newline: the run stopped while writing it) off ``path``."""
    size = path.stat().st_size
    with open(path, "rb+") as f:
        f.seek(max(0, size - 1))
        if size and f.read(1) != b"\n":
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)


def check_answers(path, model_id: str) -> dict:
    """The answers already in ``path`` (:func:`read_answers`); :class:`AnswersFileError` if another model wrote them."""
    done = read_answers(path)
    others = sorted({str(a.get("model_id")) for a in done.values()} - {model_id})
    if others:
        raise AnswersFileError(f"{path} holds answers of {others}, not of {model_id!r}: remove it or choose another "
                               "--answers-file")
    return done


def _open_answers(path, model_id: str) -> tuple[dict, object]:
    """``(answers already in path, path opened for appending)``, an unfinished last line cut off
    (:func:`check_answers`)."""
    path = Path(path)
    done = check_answers(path, model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _drop_partial_line(path)
    return done, open(path, "a")


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

    from .studies import paired_gap

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


def _mean_of(rows: list[dict], key: str) -> float | None:
    """Mean of ``key`` over the rows where it is a number (NaN skipped), rounded; ``None`` if none."""
    values = [r[key] for r in rows if not math.isnan(r[key])]
    return round(sum(values) / len(values), 4) if values else None


@torch.no_grad()
def evaluate(model, processor, questions: list[Question], name: str, budget: int, *, clip=None, clip_tokenizer=None,
             scoring: str = "clip", batch: int = 32, seed: int = 0, max_new_tokens: int = 3, sign=None,
             positions: str = "renumber", bar=None, answers_file=None, model_id: str | None = None) -> dict:
    """Answer ``questions`` with method ``name`` at ``budget`` attached; accuracy and answers.

    ``positions`` goes to :func:`eadp_lab.attach`: ``"renumber"`` the kept tokens
    contiguously (its default) or keep their ``"original"`` 1-D positions. Inputs go to the
    model's device (pixel values in its dtype). ``answers_file``: append each batch's answers
    there as they are produced (:func:`answer_record`, flushed), after the questions it
    already answers, which are not asked again (``resumed`` counts them; accuracy covers
    them, the kept-token figures only the questions asked in this call; batches, and
    ``random``'s per-batch seeds, start over at the first question not answered yet).
    ``model_id``: the answers' ``model_id`` (default: the model's ``name_or_path``).
    """
    from contextlib import nullcontext

    from .models import attach, family_of
    from .models.processors import left_padded

    family = family_of(model)
    model_id = model_id or model_id_of(model)
    if sign is None and scoring == "clip":
        sign = clip_similarity_sign(clip)  # the sign the CLIP declares (the lab CLIP); None: the presets' -1
    tokenizer = left_padded(processor).tokenizer
    asked = {q.qid for q in questions}
    if len(asked) != len(questions):
        raise ValueError("every question needs its own question_id (answers are kept by it)")
    done, sink = ({}, None) if answers_file is None else _open_answers(answers_file, model_id)
    answers = {qid: a for qid, a in done.items() if qid in asked}
    todo = [q for q in questions if q.qid not in answers]
    kept, named, spacing, seconds = [], [], [], 0.0
    start = time.perf_counter()
    suppress = [t for t in (getattr(model.config, "image_token_id", None),) if t is not None]
    if bar is not None and len(answers):
        bar.update(len(answers))
    with sink if sink is not None else nullcontext():
        for b, i in enumerate(range(0, len(todo), batch)):
            chunk = todo[i : i + batch]
            inputs = to_model(processor(images=[q.image for q in chunk], text=[prompt_for(processor, q.text)
                                        for q in chunk], return_tensors="pt", padding=True), model)
            method, settings = method_settings(name, family, b, seed, sign)
            with attach(model, method, budget=budget, scoring=scoring, settings=settings, clip=clip,
                        clip_tokenizer=clip_tokenizer, tokenizer=tokenizer, positions=positions) as pruner:
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                     suppress_tokens=suppress or None)
                record = pruner.last
            seconds += record.seconds
            kept += [it.tokens_after for it in record.items]
            spacing += [kept_spacing(it.kept, it.layout.rows, it.layout.grids) for it in record.items]
            texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            items = {it.sample: it for it in record.items}
            for j, (q, text) in enumerate(zip(chunk, texts)):
                seen = named_kept(q, items[j]) if j in items else None
                if seen is not None:
                    named.append(seen)
                answers[q.qid] = answer_record(q, text.strip(), model_id)
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


def _model_key(model) -> str:
    """One spelling of a model: the resolved folder of a local path (``"lab"``: the lab LLaVA), else the hub id."""
    if model is None or str(model) == "lab":
        return str(LAB_LLAVA.resolve())
    for base in (Path.cwd(), ROOT):
        path = Path(model) if Path(model).is_absolute() else base / model
        if path.is_dir():
            return str(path.resolve())
    return str(model)


def results_for(model, pattern: str = "data/results/accuracy-*.json",
                root: Path = ROOT) -> tuple[list[tuple[Path, dict]], list[Path]]:
    """``(matching, other)``: the reports of ``pattern`` (a glob under ``root``) written
    for ``model`` (``"lab"``, a folder or a hub id), as ``(path, report)``, the defaults first; and
    the paths of the reports of other models (a report without ``model`` is the lab LLaVA's)."""
    matching, other = [], []
    key = _model_key(model)
    for path in sorted(Path(root).glob(pattern), key=lambda p: (len(p.name), p.name)):
        report = load_results(path)
        (matching.append((path, report)) if _model_key(report.get("model")) == key else other.append(path))
    return matching, other


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


def run_summary(path, report: dict) -> str:
    """Two lines saying which run a report is: its file (relative to the repository when inside
    it), the command that wrote it, and its sign, positions, questions and seconds."""
    path = Path(path)
    try:
        name = path.resolve().relative_to(ROOT)
    except ValueError:
        name = path
    return (f"{name}\n  written by: {report.get('command')}\n  sign: {report.get('sign') or 'the presets (-1)'}, "
            f"positions: {report.get('positions') or 'renumber (the default)'}, questions: {report.get('questions')}, "
            f"seconds: {report.get('seconds')}")


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


def max_standard_error(n: int) -> float:
    """The largest binomial standard error of an accuracy on ``n`` questions (at accuracy 1/2),
    as a fraction: ``0.5 / sqrt(n)``. A difference of two independent accuracies has √2 times it;
    paired on the same questions, less."""
    if n < 1:
        raise ValueError(f"need at least one question, got {n}")
    return 0.5 / math.sqrt(n)


def positions_gap(renumbered, original):
    """Accuracy with the kept tokens renumbered minus accuracy at their original positions, per
    method (rows) and budget (columns), as a ``pandas.DataFrame`` (fractions; ``none`` dropped).

    Args:
        renumbered, original: reports (or rows) of the same questions, methods and budgets run with
            ``--positions renumber`` and ``--positions original``.
    """
    gap = _run_difference(results_frame(renumbered), results_frame(original))
    return gap.drop(index="none", errors="ignore").dropna(axis=1, how="all")


def _run_difference(a, b):
    """``a - b`` for two runs' frames of the same rows and columns; ``ValueError`` otherwise."""
    if list(a.index) != list(b.index) or list(a.columns) != list(b.columns):
        raise ValueError("the two runs must cover the same methods and budgets (and question types)")
    return a - b


def _pruned_pairs(renumbered, original) -> dict:
    """``{(method, budget): (row of renumbered, row of original)}`` for every pruned configuration
    (``none`` left out); ``ValueError`` unless both runs cover the same ones."""
    def rows(report):
        return {(r["method"], int(r["budget"])): r for r in _result_rows(report) if r["method"] != "none"}

    a, b = rows(renumbered), rows(original)
    if set(a) != set(b):
        raise ValueError("the two runs must cover the same methods and budgets")
    return {key: (a[key], b[key]) for key in a}


def positions_intervals(renumbered, original, z: float = Z95):
    """Renumbered minus original positions per pruned method and budget, paired question by question
    (:func:`paired_difference` of the rows' ``hits``), as a ``pandas.DataFrame`` indexed by
    ``(method, budget)``: ``gap``, ``se``, ``low``, ``high`` (``gap -/+ z * se``; fractions) and
    ``n``. Rows without ``hits`` (reports written before runs recorded them) get NaN intervals and
    the gap of their accuracies."""
    import pandas as pd

    records = []
    for key, (ra, rb) in _pruned_pairs(renumbered, original).items():
        ha, hb = ra.get("hits"), rb.get("hits")
        if ha and hb:
            gap, se, n = paired_difference(ha, hb)
        else:
            gap, se, n = ra["accuracy"] - rb["accuracy"], float("nan"), 0
        records.append({"method": key[0], "budget": key[1], "gap": gap, "se": se,
                        "low": gap - z * se, "high": gap + z * se, "n": n})
    return pd.DataFrame.from_records(records, columns=["method", "budget", "gap", "se", "low", "high", "n"]
                                     ).set_index(["method", "budget"])


def _pruned_frames(results):
    """``(accuracy, named_reached)`` per method (rows, ``none`` dropped) and budget (columns, those
    of no pruned method dropped), as :func:`results_frame` gives them; ``named_reached`` aligned to
    the accuracy frame (NaN where not measured)."""
    acc = results_frame(results).drop(index="none", errors="ignore").dropna(axis=1, how="all")
    return acc, results_frame(results, "named_reached").reindex_like(acc)


def against_best(results, method: str = "eadp"):
    """``method`` against the best other method of each budget (its own ablations ``method-*``
    and ``none`` aside), as a ``pandas.DataFrame`` with one row per budget (largest first):
    ``accuracy``, ``best`` (the rival's name), ``best_accuracy``, ``difference`` (fractions),
    ``named_reached`` and ``best_named_reached`` (NaN where not measured), ``verdict``:
    ``"leads"`` / ``"trails"`` beyond one standard error of a difference of two independent
    accuracies on the run's questions (``sqrt(2) *`` :func:`max_standard_error`, in
    ``.attrs["margin"]``; the question count in ``.attrs["questions"]``), ``"level"`` within it;
    and ``paired_low``, ``paired_high``: the 95% interval of the difference compared question by
    question (:func:`paired_difference` of the rows' ``hits``; NaN for rows without them).

    Args:
        results: the rows of :func:`eadp_lab.bench.accuracy.run`, or the command's report.
    """
    import pandas as pd

    rows = _result_rows(results)
    acc, reached = _pruned_frames(rows)
    rivals = acc.drop(index=[m for m in acc.index if m == method or m.startswith(method + "-")])
    if method not in acc.index or rivals.empty:
        raise ValueError(f"the results need {method!r} and at least one other method, got {list(acc.index)}")
    n = min(int(r.get("questions") or 0) for r in rows if r["method"] == method)
    margin = math.sqrt(2) * max_standard_error(n)
    best = rivals.idxmax()
    out = pd.DataFrame({"accuracy": acc.loc[method], "best": best, "best_accuracy": rivals.max()})
    out["difference"] = out["accuracy"] - out["best_accuracy"]
    out["named_reached"] = reached.loc[method]
    out["best_named_reached"] = [reached.loc[best[b], b] for b in out.index]
    out["verdict"] = ["leads" if d > margin else "trails" if d < -margin else "level" for d in out["difference"]]
    hits = {(r["method"], int(r["budget"])): r.get("hits") for r in rows}
    paired = [paired_difference(hits[method, b], hits[best[b], b]) if hits.get((method, b)) and hits.get((best[b], b))
              else (float("nan"), float("nan"), 0) for b in out.index]
    out["paired_low"] = [d - Z95 * se for d, se, _ in paired]
    out["paired_high"] = [d + Z95 * se for d, se, _ in paired]
    out.attrs["margin"] = margin
    out.attrs["questions"] = n
    return out


def long_run_figures(report, method: str = "eadp") -> dict:
    """The figures a chapter quotes of one long run (a report with ``method`` and other methods):
    ``long_verdict`` (``method`` against the best other method per budget, :func:`against_best`,
    as a sentence), ``long_n`` (questions), ``long_se`` (:func:`max_standard_error`),
    ``long_margin`` (the verdicts' margin), ``long_paired_intervals`` (the 95% paired interval of
    ``method`` minus the best other method per budget, as text), ``long_budget`` (the smallest budget),
    ``long_ablations`` (``method``'s ablations against it there, in points),
    ``long_type_worst``/``long_type_best`` and their ``..._change`` (per question type,
    ``method`` at the smallest budget against every token), and ``reach_*``: the method and
    budget whose answers fall furthest below its reach of the named objects (``reach_named``,
    ``reach_acc``), ``method``'s own there (``reach_eadp_named``, ``reach_eadp_acc``), and
    ``reach_verdict``. ``report`` ``None``: the same keys, NaN, 0 or a "no long run" text."""
    if report is None:
        return {**dict.fromkeys(("long_n", "long_budget", "reach_budget"), 0),
                **dict.fromkeys(("long_se", "long_margin", "long_type_worst_change", "long_type_best_change",
                                 "reach_named", "reach_acc", "reach_eadp_named", "reach_eadp_acc"), float("nan")),
                **dict.fromkeys(("long_verdict", "long_paired_intervals", "long_ablations", "long_type_worst", "long_type_best",
                                 "reach_verdict", "reach_method"), "(no long run for this model)")}
    lead = against_best(report, method)
    acc, reached = _pruned_frames(report)
    n, margin = lead.attrs["questions"], lead.attrs["margin"]
    clauses = [f"{'is level' if r.verdict == 'level' else r.verdict} at {b} tokens ({r.accuracy:.1%} against "
               f"{r.best}'s {r.best_accuracy:.1%}, {100 * r.difference:+.1f} points"
               + ("" if math.isnan(r.named_reached) else
                  f"; named objects reached on {r.named_reached:.1%} against {r.best_named_reached:.1%}") + ")"
               for b, r in lead.iterrows()]
    low = min(acc.columns)
    types = per_type_frame(report)
    change = (types.loc[(method, low)] - types.xs("none", level="method").iloc[0]).drop("all").round(9)
    missed = (reached - acc).stack()
    worst_m, worst_b = missed.idxmax() if len(missed) else (method, low)
    return {
        "long_verdict": method.upper() + " " + ", ".join(clauses[:-1]) + (" and " if len(clauses) > 1 else "")
        + clauses[-1],
        "long_n": n, "long_se": max_standard_error(n), "long_margin": margin, "long_budget": int(low),
        "long_paired_intervals": "the runs record no per-question hits" if lead["paired_low"].isna().all() else
        ", ".join(f"{b} tokens {100 * r.difference:+.1f} [{100 * r.paired_low:+.1f}, {100 * r.paired_high:+.1f}] "
                  f"against {r.best}" for b, r in lead.iterrows() if not math.isnan(r.paired_low)),
        "long_ablations": ", ".join(f"{m} {100 * (acc.loc[m, low] - acc.loc[method, low]):+.1f}"
                                    for m in acc.index if m.startswith(method + "-")) or "none run",
        "long_type_worst": " and ".join(change.index[change == change.min()]),
        "long_type_best": " and ".join(change.index[change == change.max()]),
        "long_type_worst_change": float(change.min()), "long_type_best_change": float(change.max()),
        "reach_verdict": "these questions carry no ground truth of the objects they name" if not len(missed) else
        "reaching the named objects is not enough for the answer" if missed.max() > margin else
        "what a method reaches of the named objects and what the model answers go together here",
        "reach_method": worst_m, "reach_budget": int(worst_b),
        "reach_named": float(reached.loc[worst_m, worst_b]), "reach_acc": float(acc.loc[worst_m, worst_b]),
        "reach_eadp_named": float(reached.loc[method, worst_b]), "reach_eadp_acc": float(acc.loc[method, worst_b]),
    }


def _beyond(cells, tolerance: float):
    """Which gaps (a ``pandas`` Series or frame, fractions) are more than ``tolerance`` in size; a gap of
    exactly ``tolerance`` is within it (rounded to 9 places, so float noise cannot push it over)."""
    return cells.abs().round(9) > tolerance


def positions_figures(renumbered, original, tolerance: float = 0.02) -> dict:
    """The figures a chapter quotes of two runs that differ only in ``--positions``
    (:func:`positions_gap`): ``positions_gap_mean``, ``positions_gap_max`` (largest size),
    ``positions_cells``, ``positions_beyond`` (cells differing by more than ``tolerance``),
    ``positions_verdict`` (a sentence naming those cells), ``positions_best`` (whether both
    runs pick the same best method per budget), ``positions_clear`` (cells whose 95% paired interval,
    :func:`positions_intervals`, lies wholly beyond ``tolerance``) and ``positions_intervals`` (a
    sentence with the intervals of the cells beyond ``tolerance``). ``None`` for either run: NaN, 0 and "not measured"."""
    if renumbered is None or original is None:
        return {"positions_gap_max": float("nan"), "positions_gap_mean": float("nan"), "positions_beyond": 0,
                "positions_cells": 0, "positions_verdict": "not measured", "positions_best": "",
                "positions_clear": 0, "positions_intervals": "not measured"}
    gap = positions_gap(renumbered, original)
    cells = gap.stack()
    beyond = cells[_beyond(cells, tolerance)]
    sign = ("all negative (renumbered below original)" if (beyond < 0).all() else
            "all positive (renumbered above original)" if (beyond > 0).all() else "of both signs")
    points = f"{100 * tolerance:g} points"
    verdict = (f"so the target of within {points} everywhere is met: renumbering the kept tokens does not change "
               f"what the comparison of methods measures" if beyond.empty else
               f"so the target of within {points} everywhere is missed in those cells, {sign}: "
               + ", ".join(f"{m} at {b} tokens {100 * v:+.1f} points" for (m, b), v in beyond.items()))
    best = _best_sentence(renumbered, original, ("renumbered", "original"))
    paired = positions_intervals(renumbered, original)
    measured = paired.dropna(subset=["se"])
    clear = paired[(paired["low"].round(9) > tolerance) | (paired["high"].round(9) < -tolerance)]
    if measured.empty:
        intervals = "the runs record no per-question hits, so no paired intervals"
    else:
        shown = paired.loc[[k for k in beyond.index if k in paired.index]]
        away = int(((measured["low"].round(9) > 0) | (measured["high"].round(9) < 0)).sum())
        intervals = (f"with 95% intervals of the paired difference ({int(measured['n'].min()):,} questions, "
                     f"half-width {100 * Z95 * measured['se'].median():.1f} points in the median cell), "
                     f"{len(clear)} of the {len(paired)} cells lie wholly beyond {points} and {away} wholly away "
                     f"from zero"
                     + ("" if shown.empty else ": " + ", ".join(
                         f"{m} at {b} tokens {100 * r.gap:+.1f} [{100 * r.low:+.1f}, {100 * r.high:+.1f}]"
                         for (m, b), r in shown.iterrows())))
    return {"positions_gap_max": float(cells.abs().max()), "positions_gap_mean": float(cells.mean()),
            "positions_beyond": len(beyond), "positions_cells": int(cells.size), "positions_verdict": verdict,
            "positions_best": best, "positions_clear": len(clear), "positions_intervals": intervals}


def _best_sentence(a, b, names: tuple[str, str], runs: str = "runs") -> str:
    """Whether two runs of the same methods and budgets pick the same best pruned method per budget,
    as a sentence (``names``: how to call each run where they differ; ``runs``: what they are)."""
    winners = [_pruned_frames(run)[0].idxmax() for run in (a, b)]
    differ = [k for k in winners[0].index if winners[0][k] != winners[1][k]]
    return (f"Both {runs} pick the same best method at every budget: "
            + ", ".join(f"{winners[0][k]} at {k} tokens" for k in winners[0].index) if not differ else
            f"The two {runs} pick different best methods at "
            + ", ".join(f"{k} tokens ({winners[0][k]} {names[0]}, {winners[1][k]} {names[1]})" for k in differ))


def pool_runs(*reports) -> dict:
    """Several runs of the same methods and budgets on different questions (two seeds, say) as one
    report: per configuration, the runs' per-question ``hits`` joined in the order given and the
    ``accuracy`` recomputed from them (``questions``: their total). Pooled runs pair up question by
    question as the runs did, so :func:`positions_figures` of two pooled runs gives the intervals of
    all their questions. Rows keep ``method``, ``budget``, ``accuracy``, ``questions`` and ``hits``;
    the report keeps ``positions`` and ``sign`` where every run agrees.

    ``ValueError`` for fewer than two runs, runs of different configurations, or a row without
    ``hits`` (reports written before runs recorded them)."""
    if len(reports) < 2:
        raise ValueError(f"pooling needs at least two runs, got {len(reports)}")
    keyed = [{(r["method"], int(r["budget"])): r for r in _result_rows(report)} for report in reports]
    if any(set(rows) != set(keyed[0]) for rows in keyed[1:]):
        raise ValueError("the runs to pool must cover the same methods and budgets")
    pooled = []
    for key in keyed[0]:
        if not all(rows[key].get("hits") for rows in keyed):
            raise ValueError(f"{key[0]} at {key[1]} tokens: every run must record per-question hits to be pooled")
        hits = "".join(rows[key]["hits"] for rows in keyed)
        scored = [h == "1" for h in hits if h != "-"]  # no question types here: score_hits counts them as "all"
        pooled.append({"method": key[0], "budget": key[1], "questions": len(hits), "hits": hits,
                       "accuracy": score_hits([None] * len(scored), scored)["accuracy"]})
    report = {"results": pooled}
    for field in ("positions", "sign"):
        values = {r.get(field) if isinstance(r, dict) else None for r in reports}
        if len(values) == 1 and None not in values:
            report[field] = values.pop()
    return report


def replication_figures(first, second, tolerance: float = 0.02, permutations: int = 20_000) -> dict:
    """How the renumbering gap of one sample of questions holds on another: ``first`` and ``second``
    are ``(renumbered, original)`` pairs of runs (:func:`positions_gap`) of the same methods and
    budgets on different questions. Returns ``replication_cells``, ``replication_rho`` and
    ``replication_p`` (rank correlation of the cells' gaps across the samples, permutation p:
    :func:`eadp_lab.studies.rank_correlation`), ``replication_beyond`` (cells beyond ``tolerance``
    in the second sample), ``replication_both`` (a sentence naming the cells beyond it in both, with
    each sample's gap), ``replication_reading`` (what the correlation says), ``replication_best``
    (whether the samples' renumbered runs pick the same best method per budget) and, with ``pooled_``
    in place of ``positions_``, :func:`positions_figures` of the two samples pooled
    (:func:`pool_runs`). Either pair ``None``: NaN, 0 and "not measured"."""
    from .studies import rank_correlation

    keys = ("gap_max", "gap_mean", "beyond", "cells", "verdict", "best", "clear", "intervals")
    if first is None or second is None:
        pooled = positions_figures(None, None, tolerance)
        return {"replication_cells": 0, "replication_rho": float("nan"), "replication_p": float("nan"),
                "replication_beyond": 0, "replication_both": "not measured", "replication_reading": "not measured",
                "replication_best": "not measured", **{f"pooled_{k}": pooled[f"positions_{k}"] for k in keys}}
    gaps = [positions_gap(*pair).stack() for pair in (first, second)]
    if list(gaps[0].index) != list(gaps[1].index):
        raise ValueError("the two samples must cover the same methods and budgets")
    corr = rank_correlation(gaps[0], gaps[1], permutations)
    beyond = [_beyond(g, tolerance) for g in gaps]
    both = gaps[0].index[beyond[0] & beyond[1]]
    points = f"{100 * tolerance:g} points"
    both_text = (f"no cell is beyond {points} in both samples" if both.empty else
                 f"{len(both)} {'cell is' if len(both) == 1 else 'cells are'} beyond {points} in both samples: "
                 + ", ".join(
                     f"{m} at {b} tokens ({100 * gaps[0][(m, b)]:+.1f} and {100 * gaps[1][(m, b)]:+.1f})"
                     for m, b in both))
    agree = corr["rho"] > 0 and corr["p"] < 0.05
    p = "p < 0.001" if corr["p"] < 0.001 else f"p {corr['p']:.3f}"
    reading = (f"the cells' gaps agree across the two samples (rank correlation {corr['rho']:+.2f}, permutation "
               f"{p}): how far a cell moves is a property of the model and the method, not of the questions drawn"
               if agree else
               f"the cells' gaps do not clearly agree across the two samples (rank correlation {corr['rho']:+.2f}, "
               f"permutation {p}): at this size they are mostly the noise of the questions drawn")
    pooled = positions_figures(pool_runs(first[0], second[0]), pool_runs(first[1], second[1]), tolerance)
    return {"replication_cells": int(gaps[0].size), "replication_rho": corr["rho"], "replication_p": corr["p"],
            "replication_beyond": int(beyond[1].sum()), "replication_both": both_text,
            "replication_reading": reading,
            "replication_best": _best_sentence(first[0], second[0], ("first", "second"), runs="samples"),
            **{f"pooled_{k}": pooled[f"positions_{k}"] for k in keys}}


SPACING = {"nearest": "kept_nearest", "gap_cv": "kept_gap_cv"}  # kept_spacing's figures, as the rows name them


def records_spacing(results) -> bool:
    """Whether every pruned row of a run (rows or report) carries the kept tokens' spacing
    (runs written before the bench recorded it do not)."""
    return all(r.get(SPACING["nearest"]) is not None for r in _result_rows(results) if r["method"] != "none")


def spacing_frame(spacing, renumbered, original):
    """How spread out each method's kept tokens lie beside what renumbering them changes, per
    method and budget: a ``pandas.DataFrame`` indexed by ``(method, budget)`` with
    :func:`positions_intervals`' ``gap``, ``se``, ``low``, ``high``, ``n`` and the kept tokens'
    ``nearest`` and ``gap_cv`` (:func:`eadp_lab.analysis.kept_spacing`, means over questions).

    Args:
        spacing: rows (or a report) that carry ``kept_nearest`` and ``kept_gap_cv`` for every
            method and budget of the two runs: the renumbered run itself when it recorded them, or
            a run of the same methods and budgets on some of its questions (the kept tokens do not
            depend on ``--positions``: both runs select before any position changes).
        renumbered, original: the two runs that differ only in ``--positions``.
    """
    rows = {(r["method"], int(r["budget"])): r for r in _result_rows(spacing)}
    frame = positions_intervals(renumbered, original)
    missing = [f"{m} at {b}" for m, b in frame.index if rows.get((m, b), {}).get(SPACING["nearest"]) is None]
    if missing:
        raise ValueError("no kept-token spacing (kept_nearest) for " + ", ".join(missing)
                         + ": run those methods and budgets with this version of the bench")
    for column, key in SPACING.items():
        frame[column] = [float(rows[k][key]) for k in frame.index]
    return frame


def spacing_correlations(frame, permutations: int = 20_000):
    """Rank correlation of the renumbering gap with each spacing figure of :func:`spacing_frame`,
    per budget and over every cell (``"all"``): a ``pandas.DataFrame`` indexed by budget with
    ``n`` and, per figure, ``<figure>_rho`` and ``<figure>_p``
    (:func:`eadp_lab.studies.rank_correlation`, permutation p-values)."""
    import pandas as pd

    from .studies import rank_correlation

    groups = [(b, g) for b, g in frame.groupby(level="budget", sort=False)] + [("all", frame)]
    records = []
    for budget, g in groups:
        record = {"budget": budget, "n": len(g)}
        for column in SPACING:
            c = rank_correlation(g[column], g["gap"], permutations)
            record.update({f"{column}_rho": c["rho"], f"{column}_p": c["p"]})
        records.append(record)
    return pd.DataFrame.from_records(records).set_index("budget")


def spacing_figures(frame, correlations, examples: int = 3) -> dict:
    """The figures a chapter quotes of :func:`spacing_frame` and :func:`spacing_correlations`:
    ``spacing_rho``, ``spacing_p``, ``spacing_cells`` (the gap against ``nearest`` over every
    cell), ``spacing_budget`` (the budget of the largest gap in size) with its
    ``spacing_budget_rho``, ``spacing_budget_p``, ``spacing_budget_cv_rho`` (against ``gap_cv``),
    ``spacing_contrast``: a sentence giving, at that budget, the gaps of the ``examples`` most
    clustered and the ``examples`` most spread-out selections (by ``nearest``), and
    ``spacing_verdict``: what that budget's correlation says (permutation p below 0.05 or not).
    ``None`` for the frame: NaN, 0 and "not measured"."""
    if frame is None or correlations is None:
        nan = float("nan")
        return {"spacing_rho": nan, "spacing_p": nan, "spacing_cells": 0, "spacing_budget": 0,
                "spacing_budget_rho": nan, "spacing_budget_p": nan, "spacing_budget_cv_rho": nan,
                "spacing_contrast": "not measured", "spacing_verdict": "not measured"}
    budget = int(frame["gap"].abs().groupby(level="budget").max().idxmax())
    at = frame.xs(budget, level="budget").sort_values("nearest")

    def describe(part):
        return (", ".join(f"{m} {100 * r.gap:+.1f}" for m, r in part.iterrows())
                + f"; nearest kept neighbour {part['nearest'].min():.2f} to {part['nearest'].max():.2f} patches")

    k = min(examples, len(at) // 2)
    contrast = (f"At {budget} tokens the {k} most clustered selections change by (points) "
                f"{describe(at.head(k))}, the {k} most spread out by {describe(at.tail(k).iloc[::-1])}")
    rho, p = correlations.loc[budget, "nearest_rho"], correlations.loc[budget, "nearest_p"]
    verdict = (f"at {budget} tokens the relation is not distinguishable from chance (p {p:.2f})" if not p < 0.05 else
               f"the more spread out a selection, the {'better' if rho > 0 else 'worse'} it does renumbered "
               f"against its original positions")
    return {"spacing_rho": float(correlations.loc["all", "nearest_rho"]),
            "spacing_p": float(correlations.loc["all", "nearest_p"]),
            "spacing_cells": int(correlations.loc["all", "n"]), "spacing_budget": budget,
            "spacing_budget_rho": float(rho), "spacing_budget_p": float(p),
            "spacing_budget_cv_rho": float(correlations.loc[budget, "gap_cv_rho"]),
            "spacing_contrast": contrast, "spacing_verdict": verdict}


def positions_type_gap(renumbered, original):
    """Renumbered minus original positions per question type: a ``pandas.DataFrame`` indexed by
    ``(method, budget)``, one column per question type and ``all`` last (fractions; ``none``
    dropped). Which questions :func:`positions_gap` comes from.

    Args:
        renumbered, original: reports (or rows) of the same questions, methods and budgets run with
            ``--positions renumber`` and ``--positions original``.
    """
    gap = _run_difference(per_type_frame(renumbered), per_type_frame(original))
    return gap[gap.index.get_level_values("method") != "none"]


def answer_split(renumbered, original, questions, qtype: str = "exist"):
    """Accuracy on the ``qtype`` questions split by their reference answer, renumbered and at the
    original positions: a ``pandas.DataFrame`` indexed by ``(method, budget, answer)`` with
    ``renumbered`` and ``original`` (fractions), their ``gap`` and ``n`` (questions of that answer
    scored in both runs). Read from the rows' ``hits`` (one character per question,
    :func:`answer_hits`), so ``questions`` must be the runs' questions in their order.

    Args:
        renumbered, original: reports (or rows) as for :func:`positions_type_gap`, with ``hits``.
        questions: the ``Q`` questions both runs answered (objects with ``qtype`` and ``answer``).
    """
    import pandas as pd

    records = []
    for key, (ra, rb) in _pruned_pairs(renumbered, original).items():
        ha, hb = ra.get("hits"), rb.get("hits")
        if not ha or not hb or len(ha) != len(questions) or len(hb) != len(questions):
            raise ValueError(f"{key[0]} at {key[1]}: both runs need hits for each of the {len(questions)} questions")
        answers = {}
        for q, x, y in zip(questions, ha, hb):
            if q.qtype == qtype and x != "-" and y != "-":
                answers.setdefault(first_word(str(q.answer)), []).append((x == "1", y == "1"))
        for answer, pairs in sorted(answers.items()):
            ren, orig = (sum(p[k] for p in pairs) / len(pairs) for k in (0, 1))
            records.append({"method": key[0], "budget": key[1], "answer": answer, "renumbered": ren,
                            "original": orig, "gap": ren - orig, "n": len(pairs)})
    if not records:
        raise ValueError(f"no {qtype!r} question was scored in both runs")
    return pd.DataFrame.from_records(records).set_index(["method", "budget", "answer"])


def type_gap_figures(type_gap, split=None, examples: int = 3, apart: float = 0.02) -> dict:
    """The figures a chapter quotes of :func:`positions_type_gap` (and of :func:`answer_split`):
    ``type_gap_cells``; ``type_gap_rise``: the question type whose gap is largest on average over
    the cells, with that mean and its largest cell; ``type_gap_fall``: the type lowest on average,
    and the ``examples`` most negative cells of any type; ``type_gap_split``: per answer, the mean
    gap over the cells on the split type's questions and the cell where the split differs most
    (``"not measured"`` without a split); ``type_gap_reading``: what the split says, whether one
    answer gains more than ``apart`` (2 points) over the other on average.
    ``None`` for ``type_gap``: 0 and "not measured"."""
    unsplit = {"type_gap_split": "not measured", "type_gap_reading": "not measured"}
    if type_gap is None:
        return {"type_gap_cells": 0, "type_gap_rise": "not measured", "type_gap_fall": "not measured", **unsplit}
    types = type_gap.drop(columns="all", errors="ignore")
    means = types.mean()

    def cell(method, budget, qtype, value):
        return f"{method} at {budget} tokens ({qtype} {100 * value:+.1f})"

    top = means.idxmax()
    best = types[top].idxmax()
    rise = (f"`{top}` questions gain {100 * means[top]:+.1f} points on average over the {len(types)} cells, "
            f"at most {cell(*best, top, types[top].max())}")
    bottom = means.idxmin()
    flat = types.stack().sort_values()
    falls = flat[flat < 0].head(examples)
    worst = ("the largest falls are " + ", ".join(cell(m, b, t, v) for (m, b, t), v in falls.items())
             if len(falls) else "no cell falls")
    fall = f"`{bottom}` questions do worst, {100 * means[bottom]:+.1f} points on average; {worst}"
    figures = {"type_gap_cells": len(types), "type_gap_rise": rise, "type_gap_fall": fall, **unsplit}
    if split is not None:
        by_answer = split["gap"].groupby(level="answer").mean()
        spread = split["gap"].unstack("answer")
        widest = (spread.max(axis=1) - spread.min(axis=1)).idxmax()
        at = split.xs(widest, level=("method", "budget"))
        figures["type_gap_split"] = (
            "on average " + ", ".join(f"{100 * g:+.1f} points on questions answered `{a}`" for a, g in by_answer.items())
            + f"; for {widest[0]} at {widest[1]} tokens, the cell where the answers differ most, "
            + ", ".join(f"`{a}` {round(r.renumbered * r.n)} of {int(r.n)} right renumbered against "
                        f"{round(r.original * r.n)} at the original positions" for a, r in at.iterrows()))
        up, down = by_answer.idxmax(), by_answer.idxmin()
        difference = by_answer[up] - by_answer[down]
        figures["type_gap_reading"] = (
            f"the two answers move alike (within {100 * apart:.0f} points of each other on average, "
            f"{100 * difference:.1f} apart): renumbering does not tilt the model toward one answer"
            if difference <= apart else
            f"questions answered `{up}` gain {100 * difference:.1f} points more than those answered `{down}` on "
            f"average: at the original positions the model leans toward `{down}`, compared with renumbered")
    return figures


def answer_kind(text: str) -> str:
    """The lab world's kind of an answer's first word (``colour``, ``count``, ``answer`` for
    yes/no, ...; :func:`eadp_lab.world.token_kind`), or ``"not a word of the world"``."""
    from .world.vocab import token_kind

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


def against_chance(results, questions):
    """Full-token accuracy (``none``) per question type beside the blind baseline
    (:func:`blind_baseline`), as a ``pandas.DataFrame`` indexed by type with ``all`` last:
    ``questions``, ``blind answer``, ``blind accuracy``, ``accuracy (all tokens)`` and
    ``above blind`` (their difference, fractions).

    Args:
        results: rows of :func:`eadp_lab.bench.accuracy.run` (or its report) that include ``none``,
            or one score with every token (``{"accuracy", "per_type"}``, as :func:`score_hits` returns).
        questions: the questions those rows were scored on.
    """
    import pandas as pd

    if isinstance(results, dict) and "per_type" in results and "method" not in results:
        full = results
    else:
        full = next((r for r in _result_rows(results) if r["method"] == "none"), None)
    if full is None:
        raise ValueError("the results hold no 'none' run (every visual token), the accuracy to compare")
    blind = blind_baseline(questions)
    per_type = full.get("per_type") or {}
    rows = {t: {"questions": b["questions"], "blind answer": b["answer"], "blind accuracy": b["accuracy"],
                "accuracy (all tokens)": per_type.get(t, {}).get("accuracy", float("nan"))} for t, b in blind.items()}
    n = sum(b["questions"] for b in blind.values())
    rows["all"] = {"questions": n, "blind answer": "(per type)",
                   "blind accuracy": sum(b["accuracy"] * b["questions"] for b in blind.values()) / max(n, 1),
                   "accuracy (all tokens)": full["accuracy"]}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame["above blind"] = frame["accuracy (all tokens)"] - frame["blind accuracy"]
    frame.index.name = "question type"
    return frame
