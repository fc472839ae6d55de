"""Train the lab models: ``python -m eadp_lab.world.train clip|llava [--seed S] [--steps N] [--out DIR]``.

- ``clip``: the tiny CLIP (:mod:`eadp_lab.world.clip_training`), saved with its tokenizer and
  image processor to ``data/models/lab-clip``, with a model card of measured figures
  (grounding per word kind, retrieval).
- ``llava``: the tiny LLaVA on top of the saved CLIP (:mod:`eadp_lab.world.llava_training`),
  saved with its ``LlavaProcessor`` to ``data/models/lab-llava``, with a model card (held-out
  accuracy per question type).

Both are reproducible from ``--seed`` (on the same thread count, ``--threads``), show
progress bars, and write ``training.json`` (settings, history, figures) next to the weights.
CI loads the shipped folders; it does not retrain. Taught in ``notebooks/00_tour``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

__all__ = ["main", "save_clip", "measure_clip", "save_llava", "measure_llava", "DEFAULT_CLIP", "DEFAULT_LLAVA"]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CLIP = ROOT / "data" / "models" / "lab-clip"
DEFAULT_LLAVA = ROOT / "data" / "models" / "lab-llava"
MEASURE_SEED = 0  # held-out seed of the model cards' figures (the accuracy bench uses fresh ones)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def save_clip(model, tokenizer, out: Path, dtype=torch.float16) -> None:
    """``save_pretrained`` the CLIP (in ``dtype``), its tokenizer and its image processor."""
    from .lab_models import image_processor

    out.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    model.float()
    tokenizer.save_pretrained(out)
    image_processor(model.config.vision_config.image_size).save_pretrained(out)


def measure_clip(model, tokenizer, n: int = 600, progress: bool = True) -> dict:
    """Grounding (questions and captions) and retrieval on ``n`` held-out records."""
    from .measure import retrieval, summarise_grounding, token_grounding
    from .sample import sample

    records = sample("heldout", n, seed=MEASURE_SEED, workers=2)
    figures = {"records": n, "split": "heldout", "seed": MEASURE_SEED}
    for text in ("question", "caption"):
        rows = token_grounding(model, tokenizer, records, text=text, progress=progress)
        figures[f"{text}s"] = summarise_grounding(rows)
    figures["retrieval"] = retrieval(model, tokenizer, records, seed=MEASURE_SEED)
    return figures


def _clip(args) -> int:
    from .cards import clip_card
    from .clip_training import ClipTraining, train_clip
    from ..models.scorers import load_clip

    settings = ClipTraining()
    changes = {k: v for k, v in (("seed", args.seed), ("steps", args.steps), ("threads", args.threads)) if v is not None}
    if args.filip_weight is not None:
        changes["filip_weight"] = args.filip_weight
    settings = replace(settings, **changes)
    out = Path(args.out or DEFAULT_CLIP)
    start = time.perf_counter()
    model, tokenizer, history = train_clip(settings)
    save_clip(model, tokenizer, out)
    model, tokenizer = load_clip(out, dtype=torch.float32)  # measure what ships (float16 weights, as float32)
    figures = measure_clip(model, tokenizer)
    history["total_seconds"] = round(time.perf_counter() - start, 1)
    report = {"settings": settings.to_dict(), "history": history, "figures": figures,
              "command": "python -m eadp_lab.world.train clip " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])}
    _write_json(out / "training.json", report)
    (out / "README.md").write_text(clip_card(report))
    print(json.dumps({"figures": figures, "seconds": history["total_seconds"]}, indent=1))
    return 0


def save_llava(model, out: Path, dtype=torch.float16) -> None:
    """``save_pretrained`` the LLaVA (in ``dtype``) and its ``LlavaProcessor``."""
    from .lab_models import llava_processor

    out.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    model.float()
    vision = model.config.vision_config
    llava_processor(vision.image_size, vision.patch_size).save_pretrained(out)


def measure_llava(path: Path, n: int = 600, progress: bool = True) -> dict:
    """Held-out accuracy with every visual token, through ``generate`` on the saved folder."""
    from ..bench.accuracy import evaluate, lab_questions, load

    model, processor, _, _ = load(path)
    questions = lab_questions(n, MEASURE_SEED)
    result = evaluate(model, processor, questions, "none", 10**6, scoring="llm")  # "none" scores nothing
    per_type = result["per_type"]
    return {"questions": n, "split": "heldout", "seed": MEASURE_SEED, "accuracy": result["accuracy"],
            "per_type": per_type}


def llava_recipe(settings, history: dict) -> str:
    """The training recipe of the card, from the settings and the history."""
    phases = "; ".join(f"{p['steps']} steps on {p['images']} scenes of {p['objects'][0]} to {p['objects'][1]} objects"
                       for p in history["phases"])
    val = history["val"][-1] if history.get("val") else None
    return (f"- Data: the world's `train` split (seed {settings.seed}, scenes apart from the CLIP's), a curriculum "
            f"of three phases: {phases}. The vision features (layer -2, CLS dropped) are computed once per scene "
            f"and cached.\n"
            f"- Each sequence is one image and a conversation of {settings.turns} questions in the world's mix "
            f"(yes/no answers balanced), the first asked before the image, the others after it; with probability "
            f"{settings.caption_rate} one more turn asks for a caption (dense, grounded next-word prediction). "
            f"Loss: next-token cross-entropy on the answer words and their `</s>` only.\n"
            f"- Trained: the projector and the language model (the vision tower is frozen); AdamW lr {settings.lr}, "
            f"{settings.warmup} warm-up steps then cosine decay, batch {settings.batch}, {settings.steps} steps, "
            f"bfloat16 autocast = {settings.bf16}. The projector is trained on standardised features and the "
            f"standardisation folded into its first layer afterwards, so the saved model takes the raw features.\n"
            + (f"- Validation (`val` split, {settings.val_questions} questions, argmax of the answer word) at step "
               f"{val['step']}: {val['accuracy']:.1%}." if val else ""))


CHANCE = {"colour": 1 / 7, "shape": 1 / 6, "size": 1 / 3, "relation": 1 / 2, "exist": 1 / 2}


def llava_notes(history: dict, figures: dict) -> str:
    """The card's notes: the validation curve, and held-out accuracy against chance per type."""
    rows = ["| step | val accuracy |", "| ---: | ---: |"] + [
        f"| {v['step']} | {v['accuracy']:.1%} |" for v in history.get("val", [])]
    above = {t: r["accuracy"] - CHANCE[t] for t, r in figures["per_type"].items() if t in CHANCE}
    weakest = min(above, key=above.get) if above else None
    return ("### Validation during training\n\n" + "\n".join(rows) + "\n\n"
            "### Reading these figures\n\n"
            "Chance: colour 1/7, shape 1/6, size 1/3, relation and existence 1/2 (balanced), count depends "
            "on the scene. " + (f"The type closest to chance is `{weakest}` ({above[weakest]:+.1%} over chance). "
                                if weakest else "") +
            "The issue asks for at least 90% with all visual tokens; this model does not get there. Its "
            "validation accuracy stops rising long before the end of training: within the time budget of "
            "this CPU (about 1,000 steps of 32 images) the small language model learns the answer "
            "priors of each question type and reads colour from the visual tokens, but it does not learn to "
            "find the object a question names (existence and relation questions stay near chance). The lab "
            "CLIP's dense alignment, which the pruners use, is much stronger (see its card): selection-level "
            "measurements (which objects the kept tokens cover) are meaningful; answer accuracy under pruning "
            "is reported but says little about the methods while full-token accuracy is this low.\n")


def _llava(args) -> int:
    from .cards import llava_card
    from .llava_training import LlavaTraining, train_llava

    settings = LlavaTraining()
    changes = {k: v for k, v in (("seed", args.seed), ("steps", args.steps), ("threads", args.threads)) if v is not None}
    settings = replace(settings, **changes)
    out = Path(args.out or DEFAULT_LLAVA)
    clip_path = Path(args.clip or DEFAULT_CLIP)
    start = time.perf_counter()
    model, history = train_llava(settings, clip_path)
    save_llava(model, out)
    figures = measure_llava(out)
    history["total_seconds"] = round(time.perf_counter() - start, 1)
    report = {"settings": settings.to_dict(), "history": history, "figures": figures,
              "command": "python -m eadp_lab.world.train llava " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else []),
              "recipe": llava_recipe(settings, history), "notes": llava_notes(history, figures)}
    _write_json(out / "training.json", report)
    (out / "README.md").write_text(llava_card(report))
    print(json.dumps({"figures": figures, "seconds": history["total_seconds"]}, indent=1))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eadp_lab.world.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=("clip", "llava"))
    parser.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the shipped setting)")
    parser.add_argument("--out", default=None, help="output folder (default data/models/lab-clip or lab-llava)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2; results depend on it)")
    parser.add_argument("--clip", default=None, help="llava: the lab CLIP folder (default data/models/lab-clip)")
    parser.add_argument("--filip-weight", type=float, default=None,
                        help="clip: weight of the token-wise loss (0: the global loss alone, a control)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.seed is not None and args.seed < 0:
        parser.error("--seed must be >= 0")
    return _clip(args) if args.model == "clip" else _llava(args)


if __name__ == "__main__":
    sys.exit(main())
