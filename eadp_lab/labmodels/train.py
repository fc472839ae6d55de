"""Train the lab models: ``python -m eadp_lab.labmodels.train clip|clip-global|llava [--seed S] [--steps N] [--out DIR]``.

- ``clip``: the tiny CLIP (:mod:`eadp_lab.labmodels.clip_training`), saved with its tokenizer and
  image processor to ``data/models/lab-clip``, with a model card of measured figures
  (grounding per word kind at both similarity signs, retrieval) and the sign it localises at
  written into its ``config.json``.
- ``clip-global``: the control CLIP (global contrastive loss alone, same data), to
  ``data/models/lab-clip-global``.
- ``llava``: the tiny LLaVA on top of the saved CLIP (:mod:`eadp_lab.labmodels.llava_training`),
  saved with its ``LlavaProcessor`` to ``data/models/lab-llava``, with a model card (held-out
  accuracy per question type).

All are reproducible from ``--seed`` (on the same thread count, ``--threads``), show
progress bars, checkpoint to ``.cache/checkpoints/<model>`` (a rerun resumes there), and write
``training.json`` (settings, history, figures) next to the weights.
CI loads the shipped folders; it does not retrain. Taught in ``notebooks/00_tour``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from .._io import write_json
from ..paths import CHECKOUT, MODELS, RESULTS

__all__ = ["main", "save_clip", "measure_clip", "save_llava", "measure_llava", "DEFAULT_CLIP", "DEFAULT_LLAVA"]

DEFAULT_CLIP = MODELS / "lab-clip"
DEFAULT_LLAVA = MODELS / "lab-llava"
DEFAULT_CLIP_GLOBAL = MODELS / "lab-clip-global"
CHECKPOINTS = (CHECKOUT or Path.cwd()) / ".cache" / "checkpoints"  # git-ignored in a clone
PROBE_RESULTS = RESULTS / "probe-lab.json"  # python -m eadp_lab probe --json ...
# python -m eadp_lab bench accuracy --json ... (renumbered, then --positions original)
ACCURACY_RESULTS = (RESULTS / "accuracy-lab.json",
                    RESULTS / "accuracy-lab-original-positions.json")
# the same two runs on a second sample of questions (another seed): does the renumbering gap hold?
REPLICATE_RESULTS = (RESULTS / "accuracy-lab-second-sample.json",
                     RESULTS / "accuracy-lab-second-sample-original-positions.json")
MEASURE_SEED = 0  # held-out seed of the model cards' figures (the accuracy bench uses fresh ones)


def save_clip(model, tokenizer, out: Path, dtype=torch.float16) -> None:
    """``save_pretrained`` the CLIP (in ``dtype``), its tokenizer and its image processor."""
    from .build import image_processor

    out.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    model.float()
    tokenizer.save_pretrained(out)
    image_processor(model.config.vision_config.image_size).save_pretrained(out)


def measure_clip(model, tokenizer, n: int = 600, progress: bool = True) -> dict:
    """Grounding (questions and captions) and retrieval on ``n`` held-out records."""
    from .measure import by_sign, retrieval, summarise_grounding, token_grounding
    from ..world.sample import sample

    records = sample("heldout", n, seed=MEASURE_SEED, workers=2)
    figures = {"records": n, "split": "heldout", "seed": MEASURE_SEED}
    for text in ("question", "caption"):
        rows = token_grounding(model, tokenizer, records, text=text, progress=progress)
        figures[f"{text}s"] = summarise_grounding(rows)
    figures["summary"] = by_sign(figures["questions"])
    figures["retrieval"] = retrieval(model, tokenizer, records, seed=MEASURE_SEED)
    return figures


def compare_weights(folder: Path, other: Path) -> dict:
    """Whether two saved models hold the same weights: ``{"folder", "bitwise_equal",
    "max_abs_difference"}`` (``bitwise_equal`` needs the same tensor names, shapes, dtypes and
    bits; the difference is over the tensors both hold with one shape, None when there are none)."""
    from safetensors.torch import load_file

    a, b = load_file(Path(folder) / "model.safetensors"), load_file(Path(other) / "model.safetensors")
    shared = [k for k in a if k in b and a[k].shape == b[k].shape]
    diff = max(((a[k].float() - b[k].float()).abs().max().item() for k in shared), default=None)
    same = set(a) == set(b) == set(shared) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in shared)
    return {"folder": str(other), "bitwise_equal": same, "max_abs_difference": diff}


def _compare(args, out: Path, history: dict) -> None:
    if args.compare_with:
        history["compared_with"] = compare_weights(out, Path(args.compare_with))
        print(json.dumps({"compared_with": history["compared_with"]}))


def _checkpoints(args, name: str):
    from .checkpoint import Checkpoints

    folder = None if args.checkpoints == "none" else Path(args.checkpoints or CHECKPOINTS / name)
    return Checkpoints(folder, every=args.checkpoint_every)


def _clip(args, control: bool = False) -> int:
    from .clip_training import ClipTraining, control_settings, train_clip
    from ..models.scorers import load_clip

    settings = ClipTraining()
    if control:
        settings = control_settings(settings)
    changes = {k: v for k, v in (("seed", args.seed), ("threads", args.threads)) if v is not None}
    if args.steps is not None:
        changes["align_steps"] = args.steps
    if args.dense_steps is not None and not control:
        changes["dense_steps"] = args.dense_steps
    if args.images is not None:
        changes["images"] = args.images
        changes["align_images"] = min(settings.align_images, args.images)
    settings = replace(settings, **changes)
    out = Path(args.out or (DEFAULT_CLIP_GLOBAL if control else DEFAULT_CLIP))
    start = time.perf_counter()
    if not args.measure_only:
        model, tokenizer, history = train_clip(settings, _checkpoints(args, "lab-clip-global" if control else "lab-clip"))
        save_clip(model, tokenizer, out)
        history["total_train_seconds"] = round(time.perf_counter() - start, 1)
        _compare(args, out, history)
        write_json(out / "training.json", {"settings": settings.to_dict(), "history": history,
                                            "command": _command("clip-global" if control else "clip")})
    report = json.loads((out / "training.json").read_text())
    model, tokenizer = load_clip(out, dtype=torch.float32)  # measure what ships (float16 weights, as float32)
    report["figures"] = measure_clip(model, tokenizer)
    report["figures"]["sign"] = declare_sign(out, report["figures"]["questions"]["grounded"])
    report["control"] = control
    write_json(out / "training.json", report)
    write_clip_card(out)
    print(json.dumps({"figures": report["figures"]["summary"], "train_seconds": report["history"].get("total_train_seconds")},
                     indent=1))
    return 0


def declare_sign(folder: Path, grounded: dict) -> dict:
    """Write into ``folder/config.json`` the similarity sign at which the CLIP's grounded words
    (colour, shape, size words naming objects) point at their objects more often; returns the
    decision and the two hit rates."""
    from ..methods.settings import SIGN_KEY

    pointing = {"+1": grounded["pointing"], "-1": grounded["pointing_neg"]}
    chosen = 1.0 if pointing["+1"] >= pointing["-1"] else -1.0
    config = json.loads((folder / "config.json").read_text())
    config[SIGN_KEY] = chosen
    write_json(folder / "config.json", config, indent=2, sort_keys=True)  # as save_pretrained writes it
    return {"chosen": chosen, "pointing": pointing, "words": grounded["tokens"]}


def clip_card_text(folder: Path, probe_path: Path | None = None) -> str:
    """A lab CLIP's card, from its ``training.json`` (with the probe report and, for the main CLIP,
    the control's figures when they exist)."""
    from .cards import clip_card

    report = json.loads((folder / "training.json").read_text())
    probe_path = probe_path or PROBE_RESULTS
    probe = json.loads(probe_path.read_text()) if probe_path.exists() and not report.get("control") else None
    control_json = DEFAULT_CLIP_GLOBAL / "training.json"
    control = None
    if not report.get("control") and control_json.exists():  # the main CLIP's card shows the control's figures
        control = json.loads(control_json.read_text())
        control = control if "figures" in control else None  # trained but not yet measured
    return clip_card(report, probe, control)


def write_clip_card(folder: Path, probe_path: Path | None = None) -> None:
    """(Re)write a lab CLIP's ``README.md``: :func:`clip_card_text`."""
    (folder / "README.md").write_text(clip_card_text(folder, probe_path))


def llava_card_text(folder: Path) -> str:
    """The lab LLaVA's card, from its ``training.json`` and, for the shipped model, the accuracy
    bench's reports in ``data/results/`` (renumbered and original positions, on two samples of questions)."""
    from .cards import llava_card, pruning_section

    report = json.loads((folder / "training.json").read_text())
    shipped = folder.resolve() == DEFAULT_LLAVA.resolve()
    runs, replicate = ([json.loads(p.read_text()) if shipped and p.exists() else None for p in paths]
                       for paths in (ACCURACY_RESULTS, REPLICATE_RESULTS))
    report["pruning"] = pruning_section(*runs, replicate=tuple(replicate))
    return llava_card(report)


def write_llava_card(folder: Path) -> None:
    """(Re)write the lab LLaVA's ``README.md`` (:func:`llava_card_text`)."""
    (folder / "README.md").write_text(llava_card_text(folder))


# Options that say where a run writes, never what it learns: left out of the recorded command.
_PLACE_OPTIONS = ("--out", "--checkpoints", "--checkpoint-every", "--compare-with")


def recipe_command(name: str, argv: list[str]) -> str:
    """The training command as a card quotes it: ``argv`` (the options after the model name)
    without the options that only place the run's files (``_PLACE_OPTIONS``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _PLACE_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(o + "=" for o in _PLACE_OPTIONS)):
            kept.append(arg)
    return " ".join(["python", "-m", "eadp_lab.labmodels.train", name, *kept])


def _command(name: str) -> str:
    return recipe_command(name, sys.argv[2:])


def save_llava(model, out: Path, dtype=torch.float16) -> None:
    """``save_pretrained`` the LLaVA (in ``dtype``) and its ``LlavaProcessor``."""
    from .build import llava_processor

    out.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    model.float()
    vision = model.config.vision_config
    llava_processor(vision.image_size, vision.patch_size).save_pretrained(out)


def measure_llava(path: Path, n: int = 2000, progress: bool = True) -> dict:
    """Held-out accuracy with every visual token, through ``generate`` on the saved folder, per
    question type, beside each type's majority-answer rate on the same questions (its chance)."""
    from ..evaluation import blind_baseline, evaluate, lab_questions, load

    model, processor, _, _ = load(path)
    questions = lab_questions(n, MEASURE_SEED)
    result = evaluate(model, processor, questions, "none", 10**6, scoring="llm")  # "none" scores nothing
    per_type = result["per_type"]
    blind = blind_baseline(questions)
    for qtype, row in per_type.items():
        row["majority"] = round(blind[qtype]["accuracy"], 4)
    return {"questions": n, "split": "heldout", "seed": MEASURE_SEED, "accuracy": result["accuracy"],
            "per_type": per_type}


def llava_recipe(settings, history: dict) -> str:
    """The training recipe of the card, from the settings and the history."""
    def asks(p):
        if not p.get("qtypes"):
            return "the world's mix"
        if len(p["mix"]) == 1:
            return f"`{next(iter(p['mix']))}`"
        return ", ".join(f"`{q}` {w}" for q, w in p["mix"].items()) + " (relative weights)"

    from ..world.config import WorldConfig

    world = dict(WorldConfig().question_mix)
    last = history["phases"][-1].get("mix", {})
    reweighted = ({q: (w, world[q]) for q, w in last.items() if w != world[q]} if set(last) == set(world) else {})

    phases = "; ".join(f"{p['steps']} steps on {p['images']} scenes of {p['objects'][0]} to {p['objects'][1]} objects "
                       f"asking {asks(p)}" for p in history["phases"])
    val = history["val"][-1] if history.get("val") else None
    if settings.turns == 1:
        sequences = ("- Each sequence is one image and one question in exactly the single-turn prompt the model is "
                     "evaluated with (`USER: q <image> ASSISTANT: a</s>`, the question before the image), its type "
                     "drawn from the phase's mix (yes/no answers balanced)")
    else:
        sequences = (f"- Each sequence is one image and a conversation of {settings.turns} questions (yes/no answers "
                     f"balanced), the first asked before the image, the others after it")
    return (f"- Data: the world's `train` split (seed {settings.seed}, scenes apart from the CLIP's), a curriculum "
            f"of {len(history['phases'])} phases: {phases}. The vision features (layer -2, CLS dropped) are "
            f"computed once per scene and cached. **Why a curriculum of question types:** in development trials a "
            f"language model of this size trained from scratch on the whole mix stayed at the answer priors: it "
            f"did not learn to bind a question's noun phrase to one of several objects. Taught one type at a "
            f"time, in order of how little binding a type needs, it learns them (the validation curve below shows "
            f"how far). The curriculum orders question types, "
            f"never visual tokens, so it cannot favour a pruning method."
            + (" The last phase asks every type, reweighted against the world's mix ("
               + ", ".join(f"`{q}` {w} instead of {v}" for q, (w, v) in reweighted.items())
               + "): trained on the world's own mix (the recipe before this one), count, the last type taught, was "
                 "still climbing when training ended (75.7% on the 2,000 held-out questions, every other type at "
                 "least 90.8%). Question types again, "
                 "no visual token, so no method is favoured." if reweighted else "") + "\n"
            + sequences + f"; with probability {settings.caption_rate} one more turn asks for a caption (dense, "
            f"grounded next-word prediction). "
            f"Loss: next-token cross-entropy on the answer words and their `</s>` only"
            + (f", plus {settings.align} x a word-alignment loss: each object patch's projected visual token, "
               f"dotted with the language model's input embeddings of the colour, shape and size words, is "
               f"trained to pick its own object's three words (cross-entropy per attribute; background patches "
               f"are not scored). It is LLaVA's stage-1 idea (visual tokens put into the language model's word "
               f"space) with the world's label maps as the text; every patch of every object is scored alike, "
               f"so no pruning method's choice is ever seen." if getattr(settings, "align", 0) else ".") + "\n"
            + (f"- **Referent losses (deep supervision of what the question names).** Linear heads, used in "
               f"training only and not saved, read the language model's hidden states: at layer "
               f"{settings.role_layer} each visual token predicts its role in the question (a subject: the object "
               f"asked about, the first object of a relation, every object a count or existence phrase matches; "
               f"the centre patch of a subject; the anchor of a relation or relational description; or none), "
               f"and at layer {settings.answer_layer} the position that predicts the answer predicts the number "
               f"of subjects and the centres (x, y) of the subject and the anchor"
               + (f"; at layer {settings.word_layer} each word of the question predicts whether it names a subject, "
                  f"the anchor, a relation or nothing" if getattr(settings, "word_layer", None) is not None else "")
               + f"; weight {settings.referents}. "
               f"The targets come from the scene description and the label maps. **Why:** trained on the answer "
               f"word alone, a model this small must discover without any intermediate signal that it has to find "
               f"the named objects first, and a yes/no relation answer is an exclusive-or of the relation word "
               f"and the objects' offset, which gives no partial signal; these targets spell the steps out. "
               f"**Why this cannot favour a method:** every visual token of every image is labelled and none is "
               f"dropped; the targets describe the scene and the question, never a selection.\n"
               if getattr(settings, "referents", 0) else "")
            + f"- **Position interpolation of the image span.** From step {round(settings.span_start * settings.steps)} "
            f"on (it slows the first learning), in a share {settings.span_rate} of the conversations "
            f"the 256 visual tokens' RoPE positions are squeezed evenly into a span of m positions (m uniform in "
            f"[{settings.span_min}, 256], fractional positions: token j at start + j m / 256) and every token after "
            f"the image moves up by 256 - m; the others keep the plain positions. Pruned LLaVA-family models see "
            f"their kept tokens renumbered contiguously, so the text after the image comes earlier than the model "
            f"was trained to expect; a small model trained only at the full span learns to read the answer's "
            f"position as a cue (the previous lab LLaVA fell from 39% to about 22% at 64 renumbered tokens). "
            f"**Why this cannot favour a method:** every visual token is kept and moved alike, in the same raster "
            f"order, whatever it shows; no token is ever dropped in training, so no selection rule (random "
            f"subsets included) is ever seen.\n"
            f"- Trained: the projector and the language model (the vision tower is frozen); AdamW lr {settings.lr}, "
            f"{settings.warmup} warm-up steps then cosine decay, batch {settings.batch}, {settings.steps} steps, "
            f"bfloat16 autocast = {settings.bf16}. The projector is trained on standardised features and the "
            f"standardisation folded into its first layer afterwards, so the saved model takes the raw features.\n"
            + (f"- Validation (`val` split, {settings.val_questions} questions, argmax of the answer word) at step "
               f"{val['step']}: {val['accuracy']:.1%} (with the image squeezed into a quarter of its positions: "
               f"{val.get('accuracy_span_quarter', float('nan')):.1%})." if val else ""))


def llava_notes(history: dict, figures: dict) -> str:
    """The card's notes: the validation curve, and held-out accuracy against chance per type (computed)."""
    rows = ["| step | val accuracy | image in a quarter of its positions |", "| ---: | ---: | ---: |"] + [
        f"| {v['step']} | {v['accuracy']:.1%} | {v.get('accuracy_span_quarter', float('nan')):.1%} |"
        for v in history.get("val", [])]
    per_type = figures["per_type"]
    worst = min(per_type, key=lambda t: per_type[t]["accuracy"])
    overall = figures["accuracy"]
    verdict = (f"Overall {overall:.1%} with every visual token (target: at least 90%, "
               f"{'met' if overall >= 0.9 else 'missed'}); the weakest type is `{worst}` at "
               f"{per_type[worst]['accuracy']:.1%} (target: at least 80% on every type, "
               f"{'met' if per_type[worst]['accuracy'] >= 0.8 else 'missed'}). Chance is each type's "
               f"majority-answer rate on these questions (the table's last column).")
    return "### Validation during training\n\n" + "\n".join(rows) + "\n\n### Reading these figures\n\n" + verdict + "\n"


def _llava(args) -> int:
    from .llava_training import LlavaTraining, train_llava

    settings = LlavaTraining()
    changes = {k: v for k, v in (("seed", args.seed), ("steps", args.steps), ("threads", args.threads)) if v is not None}
    if args.images is not None:
        changes["images"] = args.images
    settings = replace(settings, **changes)
    out = Path(args.out or DEFAULT_LLAVA)
    clip_path = Path(args.clip or DEFAULT_CLIP)
    start = time.perf_counter()
    if not args.measure_only:
        model, history = train_llava(settings, clip_path, _checkpoints(args, "lab-llava"))
        save_llava(model, out)
        history["total_train_seconds"] = round(time.perf_counter() - start, 1)
        _compare(args, out, history)
        write_json(out / "training.json", {"settings": settings.to_dict(), "history": history,
                                            "command": _command("llava"), "clip": str(clip_path)})
    report = json.loads((out / "training.json").read_text())
    report["figures"] = measure_llava(out)
    settings = LlavaTraining.from_dict(report["settings"])
    report["recipe"] = llava_recipe(settings, report["history"])
    report["notes"] = llava_notes(report["history"], report["figures"])
    write_json(out / "training.json", report)
    write_llava_card(out)
    print(json.dumps({"figures": report["figures"], "train_seconds": report["history"].get("total_train_seconds")},
                     indent=1))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eadp_lab.labmodels.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=("clip", "clip-global", "llava"))
    parser.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (clip: of stage 2; default: the recipe's)")
    parser.add_argument("--out", default=None, help="output folder (default data/models/lab-clip or lab-llava)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2; results depend on it)")
    parser.add_argument("--clip", default=None, help="llava: the lab CLIP folder (default data/models/lab-clip)")
    parser.add_argument("--dense-steps", type=int, default=None, help="clip: steps of stage 1 (dense pre-training)")
    parser.add_argument("--images", type=int, default=None, help="training scenes (default: the recipe's)")
    parser.add_argument("--checkpoints", default=None,
                        help="checkpoint folder (default .cache/checkpoints/<model>; 'none' to keep none); "
                             "a run resumes from it")
    parser.add_argument("--checkpoint-every", type=float, default=180.0, help="seconds between checkpoints")
    parser.add_argument("--measure-only", action="store_true",
                        help="measure the saved folder and rewrite its card (no training)")
    parser.add_argument("--compare-with", default=None, metavar="FOLDER",
                        help="after training, compare the saved weights with FOLDER's bit for bit (a reproducibility "
                             "check: train into a scratch --out, compare with the shipped folder); recorded in "
                             "training.json")
    args = parser.parse_args(argv)
    if args.compare_with and not (Path(args.compare_with) / "model.safetensors").is_file():
        parser.error(f"--compare-with {args.compare_with}: no model.safetensors there")
    if args.compare_with and args.measure_only:
        parser.error("--compare-with needs a training run (not --measure-only)")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.seed is not None and args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.model == "llava":
        return _llava(args)
    return _clip(args, control=args.model == "clip-global")


if __name__ == "__main__":
    sys.exit(main())
