"""``make gpu-check`` (``python -m eadp_lab.gpu_check``): every chapter and both benches on a real checkpoint.

On a machine with a GPU and the real checkpoints (hub ids or local folders)::

    python -m eadp_lab.gpu_check --out runs/gpu-check --device cuda --dtype float16 \\
        --model llava-hf/llava-1.5-7b-hf --clip openai/clip-vit-large-patch14-336 \\
        --question-file llava_pope_test.jsonl --image-folder coco/val2014 --questions 500

executes every chapter with papermill on that model (``OUT/notebooks/``), runs
``bench accuracy`` on the question file (``OUT/accuracy.json``, LLaVA-format answers under
``OUT/answers/``) and ``bench efficiency`` (``OUT/efficiency.json``), and writes
``OUT/summary.json`` (each step's status, seconds and error). A step that fails is recorded
and the others still run; the exit status is 1 if any failed.

Without ``--model`` on a machine without CUDA, it runs the same steps on CPU on the tiny
checkpoints in the real llava-1.5 on-disk format (:mod:`eadp_lab.bench.tiny_checkpoints`,
built under ``OUT/tiny``) with their LLaVA-format question file: a check that every path
works, not a measurement (the weights are random).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from ._io import write_json
from .paths import NOTEBOOKS

__all__ = ["main", "CHAPTERS", "plan"]

# The chapters are in a clone's notebooks/ (a wheel does not carry them: pass --notebooks).
CHAPTERS = () if NOTEBOOKS is None else tuple(sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")))
REAL = {"model": "llava-hf/llava-1.5-7b-hf", "clip": "openai/clip-vit-large-patch14-336"}


def _local(path):
    """A path that exists here, made absolute (the chapters run in ``notebooks/``); a hub id unchanged."""
    return str(Path(path).resolve()) if path is not None and Path(path).exists() else path


def plan(args) -> dict:
    """The model, CLIP, device, dtype and question file the run uses (building the tiny checkpoints if needed).

    Local paths come back absolute, since the chapters execute in ``notebooks/``."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out).resolve()
    if args.model is None and device == "cpu":
        from .bench.tiny_checkpoints import build_all

        tiny = build_all(out / "tiny", questions=max(args.questions, 4))
        return {"model": str(tiny["llava-1.5"]), "clip": str(tiny["clip"]), "device": "cpu", "dtype": "float32",
                "question_file": str(tiny["questions"]), "image_folder": str(tiny["images"]), "tiny": True}
    model = args.model or REAL["model"]
    clip = args.clip if args.clip is not None else (REAL["clip"] if args.model is None else None)
    if args.question_file is None:
        raise SystemExit("error: --question-file is needed with a real model (a LLaVA-format jsonl)")
    return {"model": _local(model), "clip": _local(clip), "device": device, "dtype": args.dtype or "float16",
            "question_file": _local(args.question_file), "image_folder": _local(args.image_folder), "tiny": False}


def _step(summary: dict, name: str, fn) -> None:
    start = time.perf_counter()
    try:
        fn()
        summary[name] = {"status": "ok"}
    except (Exception, SystemExit) as exc:  # noqa: BLE001 (recorded; the other steps still run)
        summary[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc(limit=6)}
    summary[name]["seconds"] = round(time.perf_counter() - start, 1)
    print(f"{name}: {summary[name]['status']} ({summary[name]['seconds']} s)", file=sys.stderr)


def _chapter(name: str, setup: dict, out: Path, questions: int, notebooks: Path) -> None:
    import papermill

    params = {"model": setup["model"], "clip": setup["clip"], "device": setup["device"], "dtype": setup["dtype"]}
    if name.startswith("04"):
        params.update(question_file=setup["question_file"], image_folder=setup["image_folder"], questions=questions)
    papermill.execute_notebook(str(notebooks / f"{name}.ipynb"), str(out / "notebooks" / f"{name}.ipynb"),
                               parameters=params, cwd=str(notebooks), progress_bar=False,
                               kernel_name="python3")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eadp_lab.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu-check", help="folder of every output (default: %(default)s)")
    parser.add_argument("--model", default=None, help=f"VLM hub id or folder (default: {REAL['model']} with CUDA, "
                                                      "else the tiny llava-1.5-format checkpoint)")
    parser.add_argument("--clip", default=None, help=f"its CLIP (default with the default model: {REAL['clip']})")
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float16 | bfloat16 | float32 (default: float16; CPU float32)")
    parser.add_argument("--question-file", default=None, help="LLaVA-format jsonl for the accuracy bench")
    parser.add_argument("--image-folder", default=None)
    parser.add_argument("--questions", type=int, default=8, help="questions of the file the benches use")
    parser.add_argument("--budgets", default="64,128,192", help="budgets of the accuracy bench")
    parser.add_argument("--chapters", default=",".join(CHAPTERS), help="comma-separated (default: every chapter)")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS,
                        help="folder of the chapters (default: the clone's notebooks/)")
    args = parser.parse_args(argv)
    if args.notebooks is None:
        parser.error("the chapters are not in an installed package: pass --notebooks DIR (a clone's notebooks/)")
    chapters = ([c for c in args.chapters.split(",") if c] if args.chapters else
                sorted(p.stem for p in args.notebooks.glob("[0-9][0-9]_*.ipynb")))
    out = Path(args.out)
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    setup = plan(args)
    summary = {"setup": setup, "steps": {}}
    steps = summary["steps"]
    for name in chapters:
        _step(steps, f"chapter {name}", lambda name=name: _chapter(name, setup, out, args.questions, args.notebooks))
    from .bench import accuracy, efficiency

    common = ["--model", setup["model"], "--device", setup["device"], "--dtype", setup["dtype"]]
    scoring = ["--clip", setup["clip"]] if setup["clip"] else ["--scoring", "llm"]
    budgets = "8,16" if setup["tiny"] else args.budgets

    def run_accuracy():
        code = accuracy.main(common + scoring + [
            "--question-file", setup["question_file"], "--image-folder", setup["image_folder"] or ".",
            "--questions", str(args.questions), "--budgets", budgets, "--answers-file", str(out / "answers" / "A.jsonl"),
            "--json", str(out / "accuracy.json")])
        if code:
            raise RuntimeError(f"bench accuracy exited {code}")

    def run_efficiency():
        code = efficiency.main(common + ["--methods", "none,eadp", "--budgets", budgets, "--json",
                                         str(out / "efficiency.json"), "--no-progress"])
        if code:
            raise RuntimeError(f"bench efficiency exited {code}")

    _step(steps, "bench accuracy", run_accuracy)
    _step(steps, "bench efficiency", run_efficiency)
    write_json(out / "summary.json", summary)
    failed = [k for k, v in steps.items() if v["status"] != "ok"]
    print(json.dumps({k: v["status"] for k, v in steps.items()}, indent=1))
    print(f"summary: {out / 'summary.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
