"""What the lab models' visual tokens hold, and where the lab CLIP's words point: one command.

    python -m eadp_lab probe [--seed S] [--scenes N] [--json OUT] [--llava DIR] [--clip DIR]

- **Linear probes** (Alain and Bengio, 2016): the colour, shape and size of the object on
  each patch, read linearly from the lab LLaVA's visual tokens (its vision tower's layer -2
  states, CLS dropped: what the language model's projector and every pruner receive).
  Multinomial logistic regression on standardised features, fitted on 80% of the given
  scenes and scored on the other 20% (split by scene). ``per_patch``: one example per patch
  an object covers (at least 25%, :func:`eadp_lab.world.patch_masks`); ``object``: the mean
  of each object's patch states.
- **Dense alignment** of the lab CLIP at both similarity signs (+1 and the published -1): per
  word kind of the scenes' questions, the mean spatial entropy (EADP's, temperature 100) and
  the pointing hit rate (a word's best patch lies on an object it names), with
  :func:`eadp_lab.labmodels.measure.token_grounding`.

Scenes come from the world's ``heldout`` split at ``--seed`` (the lab models trained on
``train``). The JSON (``{"probe": {"per_patch": {...}, "object": {...}}, "alignment": {"+1":
{...}, "-1": {...}}, ...}``) is written atomically (a uniquely named temporary file beside
``OUT``, then renamed); ``OUT``'s folder is made and checked before any model loads, and if the
final write still fails the figures go to a file in the temporary folder that the error names.
Taught in ``notebooks/00_tour``.

Shapes: ``M`` examples, ``C`` feature width, ``K`` classes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .._checks import cli_int
from .._io import OutputPathError, check_output, save_report

__all__ = ["ATTRIBUTES", "probe_examples", "fit_probe", "linear_probes", "alignment", "alignment_frame", "run", "main"]

ATTRIBUTES = ("colour", "shape", "size")


@torch.no_grad()
def probe_examples(vision_tower, records, batch: int = 100) -> dict:
    """Probe examples of ``records`` from a CLIP vision tower's layer -2 patch states.

    Returns ``{"per_patch": (X (M, C) float32, y (M, 3) int64, scene (M,) int64), "object": (...)}``:
    labels are 0-based colour, shape and size classes; ``scene`` is the record each example
    comes from (for the split).
    """
    from ..world.grounding import patch_masks
    from .build import pixel_values, tower_states
    from .clip_training import attribute_classes, patch_targets

    layers = len(vision_tower.encoder.layers) - 1
    out = {"per_patch": ([], [], []), "object": ([], [], [])}
    for i in range(0, len(records), batch):
        chunk = records[i : i + batch]
        states = tower_states(vision_tower, pixel_values(np.stack([r.image for r in chunk])), layers)[:, 1:].float()
        for j, r in enumerate(chunk):
            labels, _ = patch_targets(r.scene, r.coverage)  # (N, 5), 1-based classes, 0 background
            on = labels[:, 0] > 0
            X, y, s = out["per_patch"]
            X.append(states[j][torch.as_tensor(on)].numpy())
            y.append(labels[on, :3] - 1)
            s.append(np.full(int(on.sum()), i + j))
            masks = patch_masks(r.coverage).reshape(len(r.scene.objects), -1)
            X, y, s = out["object"]
            for k, obj in enumerate(r.scene.objects):
                if masks[k].any():
                    X.append(states[j][torch.as_tensor(masks[k])].mean(0, keepdim=True).numpy())
                    y.append(np.array([attribute_classes(obj)]) - 1)
                    s.append(np.array([i + j]))
    return {k: (np.concatenate(X).astype(np.float32), np.concatenate(y).astype(np.int64), np.concatenate(s))
            for k, (X, y, s) in out.items()}


def fit_probe(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
              classes: int, weight_decay: float = 1e-4, iterations: int = 200) -> float:
    """Test accuracy of a multinomial logistic regression (L-BFGS, L2) on standardised features.

    ``X_*``: ``(M, C)``; ``y_*``: ``(M,)`` in ``[0, classes)``. Deterministic (float64, zero init).
    """
    if len(X_train) == 0 or len(X_test) == 0:
        raise ValueError("the probe needs training and test examples: give more scenes")
    Xtr, Xte = torch.as_tensor(X_train, dtype=torch.float64), torch.as_tensor(X_test, dtype=torch.float64)
    mean, std = Xtr.mean(0), Xtr.std(0).clamp(min=1e-6)
    Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std
    ytr = torch.as_tensor(y_train)
    W = torch.zeros(Xtr.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Xtr @ W + b, ytr) + weight_decay * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((Xte @ W + b).argmax(1) == torch.as_tensor(y_test)).double().mean())


def linear_probes(examples: dict, test_share: float = 0.2, seed: int = 0) -> dict:
    """``{"per_patch": {"colour", "shape", "size"}, "object": {...}}`` test accuracies (and counts),
    split by scene: a seeded ``test_share`` of the scenes is held out."""
    from ..world.words import COLOURS, SHAPES, SIZES

    sizes = (len(COLOURS), len(SHAPES), len(SIZES))
    scenes = np.unique(np.concatenate([s for _, _, s in examples.values()]))
    rng = np.random.default_rng(seed)
    test = set(rng.choice(scenes, size=max(1, round(test_share * len(scenes))), replace=False).tolist())
    out = {}
    for level, (X, y, s) in examples.items():
        is_test = np.isin(s, list(test))
        out[level] = {name: round(fit_probe(X[~is_test], y[~is_test, k], X[is_test], y[is_test, k], sizes[k]), 4)
                      for k, name in enumerate(ATTRIBUTES)}
        out[level]["train_examples"], out[level]["test_examples"] = int((~is_test).sum()), int(is_test.sum())
        out[level]["chance"] = {name: round(float(np.bincount(y[is_test, k], minlength=sizes[k]).max() / is_test.sum()), 4)
                                for k, name in enumerate(ATTRIBUTES)}
    return out


def alignment(clip, tokenizer, records, progress: bool = False) -> dict:
    """Dense alignment at both signs, per word kind of the records' questions (:func:`~.measure.by_sign`)."""
    from .measure import by_sign, summarise_grounding, token_grounding

    return by_sign(summarise_grounding(token_grounding(clip, tokenizer, records, "question", progress=progress)))


def alignment_frame(clips: dict, records, progress: bool = False):
    """:func:`alignment` of several CLIPs side by side, as a tidy ``pandas.DataFrame``.

    Args:
        clips: ``{label: CLIP folder or hub id}``; records: world records whose questions are scored.
    Returns:
        One row per CLIP, sign and word kind: ``clip``, ``declared sign`` (the folder's
        ``eadp_similarity_sign``, NaN if none), ``sign``, ``kind``, ``tokens``, ``entropy`` (nats),
        ``pointing`` (the word's best patch on an object it names; NaN for kinds that name none)
        and ``peak on an object`` (its best patch on any object).
    """
    import pandas as pd

    from ..methods.settings import clip_similarity_sign
    from ..models.scorers import load_clip

    rows = []
    for label, path in clips.items():
        clip, tokenizer = load_clip(path, dtype=torch.float32)
        declared = clip_similarity_sign(clip)
        for sign, kinds in alignment(clip, tokenizer, records, progress=progress).items():
            rows += [{"clip": label, "declared sign": float("nan") if declared is None else declared,
                      "sign": float(sign), "kind": kind, "tokens": v["tokens"], "entropy": v["entropy"],
                      "pointing": float("nan") if v["pointing"] is None else v["pointing"],
                      "peak on an object": v["peak_on_object"]} for kind, v in kinds.items()]
    return pd.DataFrame(rows)


def run(seed: int, scenes: int, llava=None, clip=None, progress: bool = True, tower: str = "llava") -> dict:
    """Probes and alignment on ``scenes`` heldout scenes of ``seed`` (the shipped models by default).

    ``tower="llava"`` probes the lab LLaVA's visual tokens (its copy of a CLIP tower);
    ``tower="clip"`` probes the CLIP's own tower, the states a LLaVA built on it would read
    (for a CLIP that no LLaVA has been trained on yet).
    """
    from transformers import LlavaForConditionalGeneration

    from ..evaluation.loading import load_checked
    from ..models.scorers import load_clip
    from ..world import sample
    from .train import DEFAULT_CLIP, DEFAULT_LLAVA

    if tower not in ("llava", "clip"):
        raise ValueError(f"tower must be 'llava' or 'clip', got {tower!r}")
    llava, clip = Path(llava or DEFAULT_LLAVA), Path(clip or DEFAULT_CLIP)
    start = time.perf_counter()  # a checkpoint that cannot be loaded is a ModelLoadError naming it, before any scene
    clip_model, tokenizer = load_checked("CLIP", clip, load_clip, dtype=torch.float32)
    if tower == "llava":
        vision = load_checked("LLaVA", llava, LlavaForConditionalGeneration.from_pretrained,
                              dtype=torch.float32).eval().model.vision_tower
    else:
        vision = clip_model.vision_model
    records = sample("heldout", scenes, seed=seed, workers=2 if scenes >= 64 else 1)
    probe = linear_probes(probe_examples(vision, records), seed=seed)
    return {"probe": probe, "alignment": alignment(clip_model, tokenizer, records, progress),
            "seed": seed, "scenes": scenes, "split": "heldout", "tower": tower,
            "llava": str(llava) if tower == "llava" else None, "clip": str(clip),
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eadp_lab probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=cli_int(0), default=1, help="heldout seed of the scenes")
    parser.add_argument("--scenes", type=int, default=1000, help="scenes (80%% fit the probes, 20%% test them)")
    parser.add_argument("--json", default=None, help="write the figures here (atomically)")
    parser.add_argument("--llava", default=None, help="lab LLaVA folder (default data/models/lab-llava)")
    parser.add_argument("--clip", default=None, help="lab CLIP folder (default data/models/lab-clip)")
    parser.add_argument("--tower", choices=("llava", "clip"), default="llava",
                        help="probe the LLaVA's visual tokens (default) or the CLIP's own tower")
    parser.add_argument("--threads", type=cli_int(1), default=None, help="torch threads, >= 1 (default: torch's)")
    args = parser.parse_args(argv)
    if args.scenes < 10:
        parser.error("--scenes must be >= 10 (the probes hold out a fifth of them)")
    if args.json:
        try:
            check_output(args.json, "--json")
        except OutputPathError as exc:
            parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..evaluation.loading import ModelLoadError

    try:
        report = run(args.seed, args.scenes, args.llava, args.clip, tower=args.tower)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["command"] = "python -m eadp_lab probe " + " ".join(sys.argv[2:] if argv is None else argv)
    print(_summary(report))
    if args.json:
        return save_report(args.json, report, what="figures")
    return 0


def _summary(report: dict) -> str:
    lines = ["linear probes (test accuracy):", f"{'':<12}" + "".join(f"{a:>9}" for a in ATTRIBUTES)]
    for level in ("per_patch", "object"):
        lines.append(f"{level:<12}" + "".join(f"{100 * report['probe'][level][a]:>8.1f}%" for a in ATTRIBUTES))
    lines.append("\ndense alignment (questions): entropy / pointing")
    for sign, kinds in report["alignment"].items():
        lines.append(f"sign {sign}: " + ", ".join(
            f"{k} {v['entropy']:.2f}" + (f"/{100 * v['pointing']:.0f}%" if v["pointing"] is not None else "")
            for k, v in kinds.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
