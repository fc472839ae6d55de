"""Answers files: LLaVA's answer format (``model_vqa``), one line per question, written batch by
batch and resumed after an interruption.

An answers file knows what produced it. Beside ``A.jsonl`` a run keeps ``A.jsonl.run.json``,
the settings of the run (:func:`run_record`: model, CLIP, method, budget, the method's
settings, scoring, sign, positions, max new tokens, seed, dtype), and every answer line's
``metadata`` carries a hash of those settings (``run``) and of its question (``question``:
:func:`eadp_lab.evaluation.questions.question_hash`). A resume with other settings, or with a
``question_id`` whose question changed, is an :class:`AnswersFileError` naming the difference
(``--overwrite`` starts afresh). While a run writes a file it holds an exclusive lock on it
(:func:`open_answers`): a second run on the same file stops at once, naming the file and the
process holding it. A ``question_id`` answered twice is an error on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

from .._io import write_json

from .questions import Question, question_hash


class AnswersFileError(ValueError):
    """An answers file a run cannot write or resume from: the message names it and the difference."""


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
    (``answers.jsonl`` -> ``answers-eadp-64.jsonl``). ``PATH`` must name a file: a folder (or a path
    ending in a separator) is an :class:`AnswersFileError`."""
    text = os.fspath(path)
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise AnswersFileError(f"--answers-file {text} is a folder: give a file path such as "
                               f"{path / 'answers.jsonl'}")
    return path.with_name(f"{path.stem}-{method}-{int(budget)}{path.suffix}")


def run_record(*, model: str, clip: str | None, method: str, budget: int, settings: dict | None, scoring: str,
               sign, positions: str, max_new_tokens: int, seed: int, dtype: str) -> dict:
    """What produced an answers file: the settings a resumed run must share, as JSON would read them back."""
    record = {"model": model, "clip": clip, "method": method, "budget": int(budget), "settings": settings,
              "scoring": scoring, "sign": sign, "positions": positions, "max_new_tokens": int(max_new_tokens),
              "seed": int(seed), "dtype": dtype}
    return json.loads(json.dumps(record))


def run_hash(record: dict) -> str:
    """The first 16 hex digits of the SHA-1 of a :func:`run_record` (keys sorted)."""
    return hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def record_path(path) -> Path:
    """The settings record beside an answers file: ``A.jsonl`` -> ``A.jsonl.run.json``."""
    return Path(f"{os.fspath(path)}.run.json")


def answer_record(question: Question, text: str, model_id: str, run: str | None = None) -> dict:
    """One line of an answers file in LLaVA's format (``model_vqa``): ``question_id`` (the question file's own),
    ``prompt`` (the question's text), ``text`` (the whole generated answer), ``answer_id``, ``model_id``,
    ``metadata`` (``run``: the :func:`run_hash` of the settings, when given; ``question``: the question's
    :func:`~eadp_lab.evaluation.questions.question_hash`)."""
    metadata = {} if run is None else {"run": run, "question": question_hash(question)}
    return {"question_id": question.qid, "prompt": question.text, "text": text, "answer_id": answer_id(),
            "model_id": model_id, "metadata": metadata}


def read_answers(path) -> dict:
    """The answers of a LLaVA-format answers file by ``question_id`` (``{}`` if there is no file).

    A last line without its newline (a write the run was interrupted in) is left out;
    :class:`AnswersFileError` naming ``path:line`` for any other line that is not an answer, and for a
    ``question_id`` answered twice (two runs that wrote one file).
    """
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    out, lines = {}, {}
    for line_no, line in enumerate(data[: data.rfind(b"\n") + 1].decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            d = None
        if not isinstance(d, dict) or "question_id" not in d or "text" not in d:
            raise AnswersFileError(f"{path}:{line_no}: not an answer (a JSON object with question_id and text); "
                                   "remove the file or choose another --answers-file")
        qid = d["question_id"]
        if qid in lines:
            raise AnswersFileError(f"{path}:{line_no}: question_id {qid!r} is answered twice (first on line "
                                   f"{lines[qid]}): two runs wrote this file; remove it or rerun with --overwrite")
        out[qid], lines[qid] = d, line_no
    return out


def _drop_partial_line(path: Path) -> None:
    """Cut an unfinished last line (no newline: the run stopped while writing it) off ``path``."""
    size = path.stat().st_size
    with open(path, "rb+") as f:
        f.seek(max(0, size - 1))
        if size and f.read(1) != b"\n":
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)


def record_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``"key: file X, this run Y"`` for every setting two :func:`run_record` dicts disagree on (nested keys
    dotted)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += record_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: file {a!r}, this run {b!r}")
    return out


def check_answers(path, run: dict, questions=()) -> dict:
    """The answers already in ``path`` (:func:`read_answers`), once they are known to come from ``run``
    (a :func:`run_record`) and to answer these ``questions`` (by ``question_id``, their text and image).

    :class:`AnswersFileError` naming the file and the first differences: answers without a settings
    record beside them (:func:`record_path`; written before answers files recorded them), other settings,
    a line written under other settings, or a ``question_id`` whose question changed.
    """
    done = read_answers(path)
    if not done:
        return done
    fix = "rerun with --overwrite to start afresh, or choose another --answers-file"
    others = sorted({str(a.get("model_id")) for a in done.values()} - {run["model"]})
    if others:
        raise AnswersFileError(f"{path} holds answers of {others}, not of {run['model']!r}: {fix}")
    try:
        old = json.loads(record_path(path).read_text())
    except FileNotFoundError:
        raise AnswersFileError(f"{path} holds {len(done)} answers but no record of the settings that produced them "
                               f"({record_path(path).name} is missing): {fix}") from None
    except (ValueError, UnicodeDecodeError):
        raise AnswersFileError(f"{record_path(path)} is not a settings record (not JSON): {fix}") from None
    differences = record_differences(old.get("run", {}), run)
    if differences:
        raise AnswersFileError(f"{path} was written with other settings ({'; '.join(differences[:4])}): {fix}")
    expected = run_hash(run)
    stray = next((qid for qid, a in done.items() if (a.get("metadata") or {}).get("run") != expected), None)
    if stray is not None:
        raise AnswersFileError(f"{path}: the answer to question_id {stray!r} was written with other settings "
                               f"than {record_path(path).name} records: {fix}")
    for q in questions:
        if q.qid in done and (done[q.qid].get("metadata") or {}).get("question") != question_hash(q):
            raise AnswersFileError(f"{path}: question_id {q.qid!r} was answered for another question "
                                   f"({done[q.qid].get('prompt')!r}, now {q.text!r}, or another image): {fix}")
    return done


def _holder(lock_path: Path) -> str:
    """Who holds a lock: the process id its holder wrote, and that process's command line when it can be read."""
    try:
        pid = int(lock_path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return "another process"
    try:
        import psutil

        return f"process {pid} ({' '.join(psutil.Process(pid).cmdline())[:120]})"
    except Exception:  # noqa: BLE001 (gone, or not ours to read)
        return f"process {pid}"


def _try_lock(fh) -> bool:
    """An exclusive, non-blocking lock on the open file ``fh``; ``False`` if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


@contextmanager
def answers_lock(path):
    """Hold an exclusive lock on the answers file ``path`` (through ``PATH.lock``, which keeps the holder's
    process id; the file stays after the run) for the ``with`` block. :class:`AnswersFileError` at once, naming
    the file and the process holding it, if another run writes it."""
    lock_path = Path(f"{os.fspath(path)}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock_path, "a+")
    try:
        if not _try_lock(fh):
            raise AnswersFileError(f"{path} is being written by {_holder(lock_path)}: wait for that run to finish "
                                   "or choose another --answers-file")
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


@contextmanager
def open_answers(path, run: dict, questions=(), overwrite: bool = False):
    """``with open_answers(...) as (done, sink)``: the answers already in ``path`` (:func:`check_answers`:
    same settings, same questions) and ``path`` opened for appending, an unfinished last line cut off, the
    file locked (:func:`answers_lock`) and its settings record (:func:`record_path`) written. ``overwrite``:
    start afresh (the old answers and record are removed once the lock is held)."""
    path = Path(path)
    with answers_lock(path):
        if overwrite:
            path.unlink(missing_ok=True)
            record_path(path).unlink(missing_ok=True)
        done = check_answers(path, run, questions)
        if path.exists():
            _drop_partial_line(path)
        write_json(record_path(path), {"run": run, "run_hash": run_hash(run)})
        with open(path, "a") as sink:
            yield done, sink
