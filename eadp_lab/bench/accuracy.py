"""Accuracy against budget: a VLM answers questions with each pruning method attached, side by side.

    python -m eadp_lab bench accuracy [--seed S] [--questions Q] [--budgets 256,64,28,14]
        [--methods none,eadp,...] [--json OUT] [--batch 32] [--sign 1] [--positions original]
        [--question-file F --image-folder D [--answers-file A.jsonl]] [--max-new-tokens T]
        [--model PATH_OR_ID] [--clip PATH_OR_ID] [--device cpu|cuda] [--dtype float32|bfloat16|float16]
        [--device-map auto]

By default it generates ``Q`` questions of the lab world's ``heldout`` split from seed ``S``
and answers them with the lab LLaVA (``data/models/lab-llava``, scored in the lab CLIP's
space, ``data/models/lab-clip``), through :func:`eadp_lab.attach` exactly as a real
checkpoint would be pruned: the processor builds each batch (left padding), the pruner
prunes inside ``model.generate`` (greedy, ``--max-new-tokens``), and accuracy is the exact
match of the first generated word. Every method and budget sees the same questions. On lab
questions it also measures what each method *keeps* against the scene's ground truth,
whatever the model answers: ``named_reached``, the share of questions whose named objects
each keep at least one visual token, and ``named_recall``, the mean share of their tokens
kept. Every run also records how spread out the kept tokens lie (``kept_nearest``,
``kept_gap_cv``: :func:`eadp_lab.analysis.kept_spacing`, means over the images). A
question file in the LLaVA evaluation format (jsonl: ``question_id``, ``image`` relative to
``--image-folder``, ``text``, optional ``answer`` and ``category``) runs a real benchmark
with a real model (``--model``, ``--clip``, on ``--device`` in ``--dtype``, or spread by
``--device-map`` over several devices; default: CPU, float32). The file is checked before
the model loads: a malformed line or a missing image stops the run with an error naming the
file, the line and the path. ``--answers-file A.jsonl`` writes LLaVA's answer format
(``question_id`` of the question file's own type, ``prompt``, ``text``: the whole answer,
``answer_id``, ``model_id``, ``metadata``), one file per method and budget
(``A-eadp-64.jsonl``, ``A-none-256.jsonl``), appended batch by batch: a rerun with the same
arguments skips the questions already answered and resumes where an interrupted one stopped.
Each answers file records what produced it (``A-eadp-64.jsonl.run.json``: model, CLIP, method,
budget, settings, positions, max new tokens, seed, dtype; each line's ``metadata`` a hash of
those and of its question): a rerun with other settings or changed questions stops before the
first question with an error naming the difference (``--overwrite`` starts afresh), and a
second run on a file another run is writing stops at once, naming that process.
Answers are generated up to ``--max-new-tokens`` (default: 3 on lab questions, whose first
word is scored; 128 on a question file, as LLaVA's evaluation does); accuracy is always the
exact match of the first word.

Methods: ``none`` (every visual token, one row at the full token count), every method of
the registry (``eadp``, ``topk``, ``topk_dense``, ``random``, ``pool``, ``divprune``,
``cdpruner``) with its default settings (EADP: the model family's paper-faithful preset;
``random``: a new seed per batch, so the figure averages over draws), and EADP's ablations
(:data:`ABLATIONS`): ``eadp-global`` (global score only, alpha=1), ``eadp-noentropy``
(dense score without the entropy filter: every word, plain mean) and ``eadp-topk``
(Top-K instead of facility location). The JSON (written atomically; its path is checked before any
work) holds
``{"results": [{"method", "budget", "accuracy", "questions", "per_type", "settings", ...}],
...}``. Taught in ``notebooks/04_full_model_benchmarks``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from .._checks import cli_int
from .._io import OutputPathError, check_output, save_report
from ..evaluation import (DTYPES, LAB_CLIP, LAB_LLAVA, LAB_SOURCE, ROOT, AnswersFileError,  # noqa: F401
                          ModelLoadError, Question, QuestionFileError, against_best, against_chance, answer_kind,
                          answers_path, blind_baseline, check_answers, evaluate, file_questions, first_word,
                          lab_questions, load, load_results, long_run_figures, markdown_table, max_standard_error,
                          model_id_of, named_kept, per_type_frame, prompt_for, read_answers, report_questions,
                          results_for, results_frame, run_summary, score_hits)
from ..position_study import (answer_split, matched, pool_runs, positions_figures, positions_gap,  # noqa: F401
                              positions_type_gap, records_spacing, replication_figures, spacing_correlations,
                              spacing_figures, spacing_frame, type_gap_figures)
from ..methods.settings import ABLATIONS, DEFAULT_METHODS, clip_similarity_sign, method_settings  # noqa: F401

__all__ = ["ABLATIONS", "DEFAULT_METHODS", "MAX_NEW_TOKENS", "Question", "QuestionFileError", "AnswersFileError",
           "lab_questions", "file_questions", "method_settings", "first_word", "named_kept", "load", "evaluate",
           "answers_path", "read_answers", "run", "main", "load_results", "results_frame", "per_type_frame",
           "markdown_table", "scoring_notice", "blind_baseline", "against_best", "long_run_figures", "positions_figures", "against_chance", "answer_kind", "run_summary", "score_hits",
           "max_standard_error", "report_questions", "spacing_rows", "records_spacing", "spacing_frame", "spacing_correlations", "spacing_figures",
           "positions_type_gap", "answer_split", "type_gap_figures", "pool_runs", "replication_figures", "matched"]

DEFAULT_BUDGETS = (256, 64, 28, 14)
# Generated tokens per answer: lab questions score the first word; benchmark files get whole answers (LLaVA's 128).
MAX_NEW_TOKENS = {"lab": 3, "file": 128}


def _visual_tokens(model, processor, questions) -> int:
    """Visual tokens of one image (of the first question's image size where the resolution is dynamic)."""
    from ..models.processors import image_grid

    # a question's image is an (H, W, 3) array or a PIL image (both read as arrays); else a lab-world image
    first = questions[0].image if questions else None
    size = (96, 96) if first is None else np.asarray(first).shape[:2]
    H, W = image_grid(model, processor, size)
    return H * W


def run(questions: list[Question], methods, budgets, model, processor, clip=None, clip_tokenizer=None,
        scoring: str = "clip", batch: int = 32, seed: int = 0, max_new_tokens: int = 3, sign=None,
        progress: bool = True, positions: str = "renumber", answers_file=None,
        model_id: str | None = None, overwrite: bool = False) -> list[dict]:
    """Every method at every budget on the same questions; ``none`` once, at the full token count.

    ``answers_file``: each configuration appends to (and resumes from) its own
    :func:`~eadp_lab.evaluation.answers_path` of it; every one is checked before the first
    question (writable, not being written by another run, and, unless ``overwrite``, written
    under these settings for these questions: :func:`~eadp_lab.evaluation.answers.check_answers`).
    """
    from tqdm.auto import tqdm

    from ..evaluation.answers import answers_lock
    from ..evaluation.run import answers_run

    configs = []
    for name in methods:
        if name == "none":
            configs.append((name, _visual_tokens(model, processor, questions)))
        else:
            configs += [(name, int(b)) for b in budgets]
    paths = {c: None if answers_file is None else answers_path(answers_file, *c) for c in configs}
    for (name, budget), path in paths.items():  # every answers file usable before the first question
        if path is not None:
            check_output(path, "answers file")
            with answers_lock(path):
                if not overwrite:
                    check_answers(path, answers_run(model, name, budget, clip=clip, scoring=scoring, sign=sign,
                                                    positions=positions, max_new_tokens=max_new_tokens, seed=seed,
                                                    model_id=model_id), questions)
    results = []
    with tqdm(total=len(configs) * len(questions), desc="accuracy", unit="q", disable=not progress) as bar:
        for name, budget in configs:
            bar.set_postfix(method=name, budget=budget)
            results.append(evaluate(model, processor, questions, name, budget, clip=clip, clip_tokenizer=clip_tokenizer,
                                    scoring=scoring, batch=batch, seed=seed, max_new_tokens=max_new_tokens,
                                    sign=sign, positions=positions, bar=bar, model_id=model_id,
                                    answers_file=paths[name, budget], overwrite=overwrite))
    return results


def spacing_rows(report: dict, questions: int, model, processor, clip=None, clip_tokenizer=None,
                 scoring: str = "clip", batch: int = 32, progress: bool = False) -> tuple[list[dict] | None, str]:
    """How spread out each method's kept tokens lie (``kept_nearest``, ``kept_gap_cv``) for every
    method and budget of a long run ``report``, and where the figures come from.

    The report's own rows when it recorded them; else, for a run of lab-world questions, the same
    methods and budgets selected again on its first ``questions`` questions, at its seed, batch
    size (``random`` draws per batch) and similarity sign; the answers are cut to one token, only
    the selection is measured. A run of a question file that did not record them gives
    ``(None, reason)``.
    """
    if records_spacing(report):
        return report["results"], f"the run's own {report['questions']['count']:,} questions"
    again_questions = report_questions(report, questions)
    if again_questions is None:
        return None, "the run predates the spacing figures and its questions come from a file: rerun it to record them"
    seed = report["seed"]
    rows = [r for r in report["results"] if r["method"] != "none"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    budgets = sorted({int(r["budget"]) for r in rows}, reverse=True)
    again = run(again_questions, methods, budgets, model, processor, clip, clip_tokenizer, scoring,
                batch=report.get("batch") or batch, seed=seed, max_new_tokens=1, sign=report.get("sign"),
                progress=progress)
    return again, (f"the first {questions:,} of the run's questions (seed {seed}) selected again, "
                   f"the run having been written before the bench recorded spacing")


def _table(results: list[dict], value: str = "accuracy") -> str:
    budgets = sorted({r["budget"] for r in results if r["method"] != "none"}, reverse=True)
    lines = [f"{value:<16}" + "".join(f"{b:>9}" for b in budgets)]
    full = {r["method"]: r for r in results if r["method"] == "none"}
    for r in full.values():
        lines.append(f"{'none (' + str(r['budget']) + ')':<16}" + f"{100 * r[value]:>8.1f}%" if r.get(value)
                     is not None else f"none: no {value}")
    for name in dict.fromkeys(r["method"] for r in results if r["method"] != "none"):
        row = {r["budget"]: r.get(value) for r in results if r["method"] == name}
        lines.append(f"{name:<16}" + "".join(f"{100 * row[b]:>8.1f}%" if row.get(b) is not None else f"{'-':>9}"
                                             for b in budgets))
    return "\n".join(lines)


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"budgets must be positive integers, got {text!r}")
    return values


def _csv_methods(text: str) -> list[str]:
    from .. import METHODS

    names = [x.strip() for x in text.split(",") if x.strip()]
    known = set(METHODS) | set(ABLATIONS)
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown methods {bad}; known: {sorted(known)}")
    return names


def scoring_notice(scoring: str, clip_name: str | None, sign: float | None, sign_source: str) -> str:
    """The line a run prints before it starts: where text meets image and at which similarity sign
    (a model given without ``--clip`` is scored in its language model's space, not the lab CLIP's)."""
    where = (f"in the CLIP's space ({clip_name})" if scoring == "clip" else
             "in the language model's own embedding space" + ("" if clip_name else " (no --clip given)"))
    signed = f"{sign:+g}" if sign is not None else "each method's preset"
    return f"scoring {where}; similarity sign {signed} ({sign_source})"


def applicable_methods(names, model, processor, clip, clip_tokenizer, scoring: str, budget: int
                       ) -> tuple[list[str], dict[str, str]]:
    """``(runs, refused)``: the methods of ``names`` (registry names or ablations; ``"none"`` always runs) that
    :func:`eadp_lab.attach` accepts on ``model`` at ``budget``, in order, and ``{name: its one-line reason}`` for
    the others. Nothing runs: each is attached and removed."""
    from ..models import attach
    from ..models.layouts import family_of

    runs, refused = [], {}
    for name in names:
        if name == "none":
            runs.append(name)
            continue
        registry, settings = method_settings(name, family_of(model))
        try:
            attach(model, registry, budget=budget, scoring=scoring, settings=settings, clip=clip,
                   clip_tokenizer=clip_tokenizer, tokenizer=getattr(processor, "tokenizer", None)).remove()
        except ValueError as exc:
            refused[name] = str(exc)
            continue
        runs.append(name)
    return runs, refused


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eadp_lab bench accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=cli_int(0), default=0, help="held-out seed of the lab questions (and random's draws)")
    parser.add_argument("--questions", type=int, default=500, help="lab questions (or the first Q of --question-file)")
    parser.add_argument("--budgets", type=_csv_ints, default=list(DEFAULT_BUDGETS), help="tokens kept per image")
    parser.add_argument("--methods", type=_csv_methods, default=None,
                        help="default: every method of DEFAULT_METHODS that attaches to the model (the refused ones, "
                             "e.g. VisionZip on a tower without [CLS], are said and left out)")
    parser.add_argument("--json", default=None, help="write the results here (atomically)")
    parser.add_argument("--question-file", default=None, help="LLaVA-eval jsonl (question_id, image, text, answer?)")
    parser.add_argument("--image-folder", default=None, help="folder the question file's images are relative to")
    parser.add_argument("--answers-file", default=None,
                        help="LLaVA-format answers (jsonl), one file per method and budget: PATH with "
                             "-METHOD-BUDGET before its suffix; a rerun resumes after the answers already there")
    parser.add_argument("--overwrite", action="store_true",
                        help="start the answers files afresh instead of resuming them (a resume needs the same "
                             "model, CLIP, settings, positions, max new tokens, seed, dtype and questions)")
    parser.add_argument("--model", default=None, help="VLM path or hub id (default data/models/lab-llava)")
    parser.add_argument("--clip", default=None, help="CLIP for scoring='clip' (default data/models/lab-clip "
                                                     "with the lab LLaVA)")
    parser.add_argument("--scoring", choices=("clip", "llm"), default=None,
                        help="where text meets image (default: clip when a CLIP is known, else llm)")
    parser.add_argument("--sign", type=float, choices=(-1.0, 1.0), default=None,
                        help="override every text-guided method's similarity sign (default: the sign the CLIP "
                             "declares in its config, as the lab CLIP does; else the published -1)")
    parser.add_argument("--positions", choices=("renumber", "original"), default="renumber",
                        help="positions of the kept visual tokens: renumbered contiguously (attach's "
                             "default) or the original ones")
    parser.add_argument("--device", default="cpu", help="where the model and the CLIP run (default: %(default)s)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="weights of the model and the CLIP (default: %(default)s; scores stay float32)")
    parser.add_argument("--device-map", default=None,
                        help="from_pretrained's device_map (e.g. auto) for a model that does not fit one device; "
                             "replaces --device for the model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"tokens per answer (default: {MAX_NEW_TOKENS['lab']} on lab questions, "
                             f"{MAX_NEW_TOKENS['file']} on a question file)")
    parser.add_argument("--threads", type=cli_int(1), default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.questions < 1 or args.batch < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        parser.error("--questions, --batch and --max-new-tokens must be >= 1")
    if args.question_file and not args.image_folder:
        parser.error("--question-file needs --image-folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:  # bad input stops the run before the model loads: question file, output paths
        if args.json:
            check_output(args.json, "--json")
        if args.answers_file:
            answers_path(args.answers_file, "none", 0)  # a folder is refused here
        questions = (file_questions(args.question_file, args.image_folder, args.questions) if args.question_file
                     else lab_questions(args.questions, args.seed))
    except (QuestionFileError, OutputPathError, AnswersFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    max_new_tokens = args.max_new_tokens or MAX_NEW_TOKENS["file" if args.question_file else "lab"]
    try:
        model, processor, clip, clip_tokenizer = load(args.model, args.clip, dtype=DTYPES[args.dtype],
                                                      device=args.device, device_map=args.device_map)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scoring = args.scoring or ("clip" if clip is not None else "llm")
    if scoring == "clip" and clip is None:
        parser.error("--scoring clip needs --clip (the CLIP checkpoint of the model's vision tower)")
    declared = clip_similarity_sign(clip) if scoring == "clip" else None
    sign = args.sign if args.sign is not None else declared
    sign_source = "--sign" if args.sign is not None else "the CLIP's config" if declared is not None else "the presets"
    clip_name = None if clip is None else str(args.clip or "data/models/lab-clip")
    print(scoring_notice(scoring, clip_name, sign, sign_source), file=sys.stderr)
    model_id = str(args.model or "lab-llava")
    methods = args.methods
    if methods is None:
        methods, refused = applicable_methods(DEFAULT_METHODS, model, processor, clip, clip_tokenizer, scoring,
                                              min(args.budgets))
        for name, why in refused.items():
            print(f"note: {name} left out: {why}", file=sys.stderr)
    try:
        results = run(questions, methods, args.budgets, model, processor, clip, clip_tokenizer, scoring,
                      args.batch, args.seed, max_new_tokens, args.sign, positions=args.positions,
                      answers_file=args.answers_file, model_id=model_id, overwrite=args.overwrite)
    except (AnswersFileError, OutputPathError) as exc:  # an answers file of other settings, locked, or unwritable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_table(results))
    if any(r.get("named_reached") is not None for r in results):
        print("\nquestions whose named objects all keep a token (selection, from the scene description):")
        print(_table(results, "named_reached"))
    if args.answers_file:
        print("\nanswers: " + ", ".join(str(answers_path(args.answers_file, r["method"], r["budget"]))
                                        for r in results))
    if args.json:
        report = {
            "results": [{k: v for k, v in r.items() if k != "answers"} for r in results],
            "model": str(args.model or "data/models/lab-llava"), "clip": clip_name,
            "scoring": scoring, "seed": args.seed, "positions": args.positions,
            "sign": sign, "sign_source": sign_source,
            "questions": {"source": args.question_file or LAB_SOURCE, "count": len(questions)},
            "batch": args.batch, "max_new_tokens": max_new_tokens, "threads": torch.get_num_threads(),
            "device": str(model.device), "dtype": args.dtype, "device_map": args.device_map,
            "answers_file": args.answers_file,
            "seconds": round(time.perf_counter() - start, 1),
            "command": "python -m eadp_lab bench accuracy " + " ".join(sys.argv[1:] if argv is None else argv),
        }
        return save_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
