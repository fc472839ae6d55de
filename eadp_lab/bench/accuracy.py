"""Accuracy against budget: a VLM answers questions with each pruning method attached, side by side.

    python -m eadp_lab bench accuracy [--seed S] [--questions Q] [--budgets 256,64,28,14]
        [--methods none,eadp,...] [--json OUT] [--batch 32] [--sign 1] [--positions original]
        [--question-file F --image-folder D] [--model PATH_OR_ID] [--clip PATH_OR_ID]

By default it generates ``Q`` questions of the lab world's ``heldout`` split from seed ``S``
and answers them with the lab LLaVA (``data/models/lab-llava``, scored in the lab CLIP's
space, ``data/models/lab-clip``), through :func:`eadp_lab.attach` exactly as a real
checkpoint would be pruned: the processor builds each batch (left padding), the pruner
prunes inside ``model.generate`` (greedy, ``--max-new-tokens``), and accuracy is the exact
match of the first generated word. Every method and budget sees the same questions. On lab
questions it also measures what each method *keeps* against the scene's ground truth,
whatever the model answers: ``named_reached``, the share of questions whose named objects
each keep at least one visual token, and ``named_recall``, the mean share of their tokens
kept. A
question file in the LLaVA evaluation format (jsonl: ``question_id``, ``image`` relative to
``--image-folder``, ``text``, optional ``answer`` and ``category``) runs a real benchmark
with a real model (``--model``, ``--clip``); ``--answers-file`` writes the answers in that
format.

Methods: ``none`` (every visual token, one row at the full token count), every method of
the registry (``eadp``, ``topk``, ``topk_dense``, ``random``, ``pool``, ``divprune``,
``cdpruner``) with its default settings (EADP: the model family's paper-faithful preset;
``random``: a new seed per batch, so the figure averages over draws), and EADP's ablations
(:data:`ABLATIONS`): ``eadp-global`` (global score only, alpha=1), ``eadp-noentropy``
(dense score without the entropy filter: every word, plain mean) and ``eadp-topk``
(Top-K instead of facility location). The JSON (written to ``OUT.tmp``, then renamed) holds
``{"results": [{"method", "budget", "accuracy", "questions", "per_type", "settings", ...}],
...}``. Taught in ``notebooks/04_full_model_benchmarks``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import torch

__all__ = ["ABLATIONS", "DEFAULT_METHODS", "Question", "lab_questions", "file_questions", "method_settings",
           "first_word", "named_kept", "load", "evaluate", "run", "main", "load_results", "results_frame",
           "per_type_frame", "markdown_table"]

ROOT = Path(__file__).resolve().parents[2]
LAB_LLAVA = ROOT / "data" / "models" / "lab-llava"
LAB_CLIP = ROOT / "data" / "models" / "lab-clip"

# EADP's ablations: registry-independent names -> (registry method, EADPConfig overrides).
ABLATIONS = {
    "eadp-global": ("eadp", {"alpha": 1.0}),
    "eadp-noentropy": ("eadp", {"entropy_keep_ratio": 1.0, "aggregation": "mean"}),
    "eadp-topk": ("eadp", {"selection": "topk"}),
}
DEFAULT_METHODS = ("none", "eadp", "eadp-global", "eadp-noentropy", "eadp-topk", "topk", "topk_dense", "random",
                   "pool", "divprune", "cdpruner")
DEFAULT_BUDGETS = (256, 64, 28, 14)


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
    from ..guidance import named_objects, object_masks
    from ..world import sample

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
    from ..guidance import named_recall

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


def method_settings(name: str, family: str = "llava", batch_index: int = 0, seed: int = 0,
                    sign: float | None = None):
    """``(registry method, settings or None)`` of a bench method name (see :data:`ABLATIONS`).

    ``random`` gets a seed per batch; ``sign`` (if given) replaces every text-guided method's
    similarity sign.
    """
    from .. import METHODS
    from ..config import EADPConfig, preset
    from ..methods.random import RandomSettings
    from ..models.attach import DEFAULT_PRESETS

    method, overrides = ABLATIONS.get(name, (name, {}))
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(set(METHODS) | set(ABLATIONS))}, got {name!r}")
    entry = METHODS[method]
    if entry.settings is EADPConfig:
        settings = preset(DEFAULT_PRESETS[(family, "image")], faithful=True).replace(**overrides)
    elif method == "random":
        settings = RandomSettings(seed=seed * 1_000_003 + batch_index)
    else:
        settings = entry.settings()
    if sign is not None and hasattr(settings, "similarity_sign"):
        settings = type(settings)(**{**asdict(settings), "similarity_sign": float(sign)})
    return method, settings


def first_word(text: str) -> str:
    """The first word of a generated answer, lower-cased, without punctuation."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""


def load(model_path=None, clip_path=None, dtype=torch.float32):
    """``(model, processor, clip, clip_tokenizer)``; defaults: the lab LLaVA and the lab CLIP."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..models.scorers import load_clip

    model_path = LAB_LLAVA if model_path is None else model_path
    if clip_path is None and Path(model_path).resolve() == LAB_LLAVA.resolve():
        clip_path = LAB_CLIP
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    clip, clip_tokenizer = (None, None) if clip_path is None else load_clip(clip_path, dtype=dtype)
    return model, processor, clip, clip_tokenizer


def _prompt(processor, question: str) -> str:
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return f"USER: <image>\n{question} ASSISTANT:"


@torch.no_grad()
def evaluate(model, processor, questions: list[Question], name: str, budget: int, *, clip=None, clip_tokenizer=None,
             scoring: str = "clip", batch: int = 32, seed: int = 0, max_new_tokens: int = 3, sign=None,
             positions: str = "renumber", bar=None) -> dict:
    """Answer ``questions`` with method ``name`` at ``budget`` attached; accuracy and answers.

    ``positions`` goes to :func:`eadp_lab.attach`: ``"renumber"`` the kept tokens
    contiguously (its default) or keep their ``"original"`` 1-D positions.
    """
    from ..models import attach, family_of

    family = family_of(model)
    tokenizer = processor.tokenizer
    if tokenizer.padding_side != "left":
        raise ValueError("the processor's tokenizer must pad on the left for batched generation")
    answers, hits, per_type, kept, named, seconds = [], [], {}, [], [], 0.0
    start = time.perf_counter()
    suppress = [t for t in (getattr(model.config, "image_token_id", None),) if t is not None]
    for b, i in enumerate(range(0, len(questions), batch)):
        chunk = questions[i : i + batch]
        inputs = processor(images=[q.image for q in chunk], text=[_prompt(processor, q.text) for q in chunk],
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
        "answers": answers,
    }


def _visual_tokens(model) -> int:
    image_size = model.config.vision_config.image_size
    patch = model.config.vision_config.patch_size
    return (image_size // patch) ** 2


def run(questions: list[Question], methods, budgets, model, processor, clip=None, clip_tokenizer=None,
        scoring: str = "clip", batch: int = 32, seed: int = 0, max_new_tokens: int = 3, sign=None,
        progress: bool = True, positions: str = "renumber") -> list[dict]:
    """Every method at every budget on the same questions; ``none`` once, at the full token count."""
    from tqdm.auto import tqdm

    configs = []
    for name in methods:
        if name == "none":
            configs.append((name, _visual_tokens(model)))
        else:
            configs += [(name, int(b)) for b in budgets]
    results = []
    with tqdm(total=len(configs) * len(questions), desc="accuracy", unit="q", disable=not progress) as bar:
        for name, budget in configs:
            bar.set_postfix(method=name, budget=budget)
            results.append(evaluate(model, processor, questions, name, budget, clip=clip, clip_tokenizer=clip_tokenizer,
                                    scoring=scoring, batch=batch, seed=seed, max_new_tokens=max_new_tokens,
                                    sign=sign, positions=positions, bar=bar))
    return results


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


def _write_json(path: Path, data: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eadp_lab bench accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="held-out seed of the lab questions (and random's draws)")
    parser.add_argument("--questions", type=int, default=500, help="lab questions (or the first Q of --question-file)")
    parser.add_argument("--budgets", type=_csv_ints, default=list(DEFAULT_BUDGETS), help="tokens kept per image")
    parser.add_argument("--methods", type=_csv_methods, default=list(DEFAULT_METHODS))
    parser.add_argument("--json", default=None, help="write the results here (atomically)")
    parser.add_argument("--question-file", default=None, help="LLaVA-eval jsonl (question_id, image, text, answer?)")
    parser.add_argument("--image-folder", default=None, help="folder the question file's images are relative to")
    parser.add_argument("--answers-file", default=None, help="write every answer (jsonl) here")
    parser.add_argument("--model", default=None, help="VLM path or hub id (default data/models/lab-llava)")
    parser.add_argument("--clip", default=None, help="CLIP for scoring='clip' (default data/models/lab-clip "
                                                     "with the lab LLaVA)")
    parser.add_argument("--scoring", choices=("clip", "llm"), default=None,
                        help="where text meets image (default: clip when a CLIP is known, else llm)")
    parser.add_argument("--sign", type=float, choices=(-1.0, 1.0), default=None,
                        help="override every text-guided method's similarity sign (default: as published, -1)")
    parser.add_argument("--positions", choices=("renumber", "original"), default="renumber",
                        help="positions of the kept visual tokens: renumbered contiguously (attach's "
                             "default) or the original ones")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.questions < 1 or args.batch < 1:
        parser.error("--questions and --batch must be >= 1")
    if args.question_file and not args.image_folder:
        parser.error("--question-file needs --image-folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, processor, clip, clip_tokenizer = load(args.model, args.clip)
    scoring = args.scoring or ("clip" if clip is not None else "llm")
    if scoring == "clip" and clip is None:
        parser.error("--scoring clip needs --clip (the CLIP checkpoint of the model's vision tower)")
    if args.question_file:
        questions = file_questions(args.question_file, args.image_folder, args.questions)
    else:
        questions = lab_questions(args.questions, args.seed)
    results = run(questions, args.methods, args.budgets, model, processor, clip, clip_tokenizer, scoring,
                  args.batch, args.seed, args.max_new_tokens, args.sign, positions=args.positions)
    print(_table(results))
    if any(r.get("named_reached") is not None for r in results):
        print("\nquestions whose named objects all keep a token (selection, from the scene description):")
        print(_table(results, "named_reached"))
    if args.answers_file:
        with open(args.answers_file, "w") as f:
            for r in results:
                for a in r["answers"]:
                    f.write(json.dumps({**a, "model_id": str(args.model or "lab-llava"),
                                        "metadata": {"method": r["method"], "budget": r["budget"]}}) + "\n")
    if args.json:
        report = {
            "results": [{k: v for k, v in r.items() if k != "answers"} for r in results],
            "model": str(args.model or "data/models/lab-llava"), "clip": None if clip is None else str(
                args.clip or "data/models/lab-clip"),
            "scoring": scoring, "seed": args.seed, "sign": args.sign, "positions": args.positions,
            "questions": {"source": args.question_file or "lab world heldout split", "count": len(questions)},
            "batch": args.batch, "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - start, 1),
            "command": "python -m eadp_lab bench accuracy " + " ".join(sys.argv[1:] if argv is None else argv),
        }
        _write_json(Path(args.json), report)
    return 0


def _result_rows(results) -> list[dict]:
    """The rows of :func:`run`, or of a report the command wrote (its ``results``)."""
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
        results: the rows of :func:`run`, or the command's report (``{"results": [...]}``).
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
        results: the rows of :func:`run`, or the command's report (``{"results": [...]}``).
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
        results: the rows of :func:`run`, or the command's report (``{"results": [...]}``).
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


if __name__ == "__main__":
    sys.exit(main())
