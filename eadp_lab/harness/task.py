"""A local lmms-eval task over a LLaVA-format question file and its images on disk (no hub).

    python -m eadp_lab lmms-task --question-file Q.jsonl --image-folder IMAGES --out TASKS [--name eadp_lab_qa]
        [--max-new-tokens 128]
    python -m lmms_eval --model eadp_lab --model_args pretrained=...,method=eadp,budget=64 \\
        --tasks eadp_lab_qa --include_path TASKS --batch_size 1 --output_path OUT

:func:`write_task` checks the question file as ``bench accuracy`` does (every line, every
``question_id`` unique, every image present: an error names the file, the line and the
path) and writes into ``TASKS``: ``NAME.jsonl`` (each question with its image's absolute
path), ``NAME.yaml`` (a ``generate_until`` task reading that file with the ``json`` loader of
``datasets``) and ``utils.py``, the task's functions (this module's :func:`doc_to_visual`,
:func:`doc_to_text`, :func:`process_results`). A question is scored as ``bench accuracy``
scores it: the first word of the answer against the first word of the reference
(:func:`~eadp_lab.evaluation.scores.first_word`); the metric ``exact_match`` is their mean.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluation.questions import _question_lines
from ..evaluation.scores import first_word

__all__ = ["write_task", "doc_to_visual", "doc_to_text", "process_results", "main"]

UTILS = ('"""The functions of the tasks in this folder (written by eadp_lab.harness.task.write_task)."""\n'
         "from eadp_lab.harness.task import doc_to_text, doc_to_visual, process_results  # noqa: F401\n")

TASK = """\
# Written by eadp_lab.harness.task.write_task from {source}
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
  num_beams: 1
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
"""


def write_task(question_file, image_folder, out, name: str = "eadp_lab_qa", max_new_tokens: int = 128) -> Path:
    """Write task ``name`` over ``question_file`` into the folder ``out`` (give it to ``--include_path``);
    returns the task's YAML. The question file is checked first (a
    :class:`~eadp_lab.evaluation.questions.QuestionFileError` names the line); nothing is written then."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"task name must be letters, digits and underscores, got {name!r}")
    lines = _question_lines(question_file, image_folder)
    ids = {type(d["question_id"]) for d in lines}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.jsonl"
    with data.open("w") as fh:
        for d in lines:
            # one type per column for datasets' json loader: ids stay ints only when all are ints
            qid = d["question_id"] if ids == {int} else str(d["question_id"])
            fh.write(json.dumps({"question_id": qid, "image": str(Path(d["_image"]).resolve()), "text": d["text"],
                                 "answer": "" if d.get("answer") is None else str(d["answer"]),
                                 "category": "" if d.get("category") is None else str(d["category"])}) + "\n")
    (out / "utils.py").write_text(UTILS)
    task = out / f"{name}.yaml"
    task.write_text(TASK.format(source=Path(question_file).resolve(), name=name, data=data.resolve(),
                                max_new_tokens=int(max_new_tokens)))
    return task


def doc_to_visual(doc: dict) -> list:
    """The question's image, RGB (one PIL image in a list, as lmms-eval expects)."""
    from PIL import Image

    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question's text as the file gives it (the model wraps it in its own prompt)."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['text']}{kwargs.get('post_prompt', '')}"


def process_results(doc: dict, results: list[str]) -> dict:
    """``{"exact_match": 1.0 or 0.0}``: the answer's first word against the reference's."""
    return {"exact_match": float(first_word(results[0]) == first_word(doc["answer"]))}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m eadp_lab lmms-task", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--question-file", required=True)
    parser.add_argument("--image-folder", required=True)
    parser.add_argument("--out", required=True, help="folder to write the task into (lmms-eval's --include_path)")
    parser.add_argument("--name", default="eadp_lab_qa")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    try:
        task = write_task(args.question_file, args.image_folder, args.out, args.name, args.max_new_tokens)
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"task {args.name}: {task} (--tasks {args.name} --include_path {Path(args.out)})")
    return 0
