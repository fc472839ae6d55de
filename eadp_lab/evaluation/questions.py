"""Questions a run asks: the lab world's held-out questions (with the ground truth of what they
name) and LLaVA-evaluation question files, validated up front.

- :func:`lab_questions` / :func:`report_questions`: the lab world's ``heldout`` questions for a seed;
- :func:`file_questions`: a jsonl question file, every line checked before any image is decoded
  (:class:`QuestionFileError` names the file and the line; :class:`MissingImageError` the image);
- :func:`named_kept`: what a pruner's kept tokens show of the objects a lab question names;
- :func:`question_hash`: what identifies a question's content in an answers file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch


class QuestionFileError(ValueError):
    """A question file that cannot be read: the message names the file and the line."""


class MissingImageError(QuestionFileError, FileNotFoundError):
    """A question file that is not there, or one of its images: the message names the file, the line and the path."""


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
    from ..guidance import named_objects, object_masks
    from ..world import sample

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
    from ..guidance import named_recall

    if question.masks is None or not question.named or question.masks.shape[1] != item.tokens_before:
        return None
    keep = torch.zeros(item.tokens_before, dtype=torch.bool)
    keep[item.kept.cpu()] = True
    return named_recall(keep, question.masks, question.named)


def _question_line(path, line_no: int, line: str) -> dict:
    """One line of a question file as a dict with ``question_id``, ``image`` and ``text`` of the right
    types (``text`` not blank; ``answer`` and ``category`` strings or numbers when present);
    :class:`QuestionFileError` naming ``path:line_no`` and the field otherwise."""
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
    where = f"{path}:{line_no} (question_id {d['question_id']!r})"
    if isinstance(d["question_id"], (dict, list, bool)) or d["question_id"] is None:
        raise QuestionFileError(f"{path}:{line_no}: question_id must be a string or a number, got {d['question_id']!r}")
    for key in ("image", "text"):
        if not isinstance(d[key], str):
            raise QuestionFileError(f"{where}: {key} must be a string, got {type(d[key]).__name__} {d[key]!r}")
        if not d[key].strip():
            raise QuestionFileError(f"{where}: {key} is blank")
    for key in ("answer", "category"):
        if d.get(key) is not None and (isinstance(d[key], (dict, list, bool))):
            raise QuestionFileError(f"{where}: {key} must be a string or a number, got {d[key]!r}")
    return d


def _decoded_lines(path: Path):
    """``(line number, text)`` of every line of ``path`` read as UTF-8; :class:`QuestionFileError` naming the
    line and column of the first byte that is not UTF-8."""
    for line_no, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            yield line_no, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise QuestionFileError(f"{path}:{line_no}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                    f"{exc.start + 1}); save the file as UTF-8") from None


def _question_lines(path, image_folder) -> list[dict]:
    """Every question of ``path``, each checked (:func:`_question_line`), its ``question_id`` unique and its image in
    ``image_folder``; the first problem raises :class:`QuestionFileError` (:class:`MissingImageError` for an image)."""
    path = Path(path)
    if not path.is_file():
        raise MissingImageError(f"question file {path} not found")
    if not Path(image_folder).is_dir():
        raise MissingImageError(f"image folder {image_folder} not found")
    lines, seen = [], {}
    for line_no, line in _decoded_lines(path):
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


def question_hash(question: Question) -> str:
    """What identifies a question's content in an answers file: the first 16 hex digits of the SHA-1
    of its text and its image's pixels (an ``(H, W, 3)`` array or a PIL image)."""
    import numpy as np

    pixels = np.ascontiguousarray(np.asarray(question.image))
    digest = hashlib.sha1(question.text.encode())
    digest.update(str(pixels.shape).encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()[:16]
