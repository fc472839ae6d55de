"""Run EADP on a test-vector case in the published code's format (``shared/reference/``).

    python -m eadp_lab.reference run SETTINGS.json INPUTS.safetensors OUT.safetensors

reads only the inputs (``image_embeds`` if present, ``image_features``, ``text_embeds``,
``text_embeds_seq``) and the settings, and writes ``importance``, ``select_idx`` (pick
order), and ``token_quotas`` and ``keep_mask`` (LLaVA track) or ``pruned_features``
(Qwen track). ``python -m eadp_lab.reference check SETTINGS.json CASE.safetensors`` runs
a case and compares with the expected tensors stored beside its inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .config import EADPConfig
from .methods import PruneInputs, prune

__all__ = ["config_from_settings", "run_case", "compare_case", "INPUT_NAMES"]

INPUT_NAMES = ("image_embeds", "image_features", "text_embeds", "text_embeds_seq")

_NORMALISATION = {
    "min-max per image": "per_row",
    "min-max per crop": "per_row",
    "min-max over all crops of one image jointly": "per_image",
}
_ALLOCATION = {"none": "none", "importance_proportional": "floor", "floor": "floor",
               "largest_remainder": "largest_remainder"}
_DIRECT = ("alpha", "beta", "entropy_temperature", "entropy_keep_ratio", "aggregation",
           "aggregation_temperature", "smoothing_kernel", "smoothing_sigma", "similarity_sign")
_INFORMATIONAL = ("track", "crops_per_image", "images", "grid", "budget_per_crop", "budget",
                  "normalisation", "allocation", "note")


def config_from_settings(settings: dict) -> EADPConfig:
    """The :class:`EADPConfig` of a case's JSON settings (published semantics: every text
    position is scored, a grid mismatch is an error)."""
    unknown = set(settings) - set(_DIRECT) - set(_INFORMATIONAL)
    if unknown:
        raise ValueError(f"unknown settings in the case: {sorted(unknown)}")
    fields = {k: settings[k] for k in _DIRECT if k in settings}
    if "normalisation" in settings:
        if settings["normalisation"] not in _NORMALISATION:
            raise ValueError(f"unknown normalisation {settings['normalisation']!r}; known: {sorted(_NORMALISATION)}")
        fields["normalisation"] = _NORMALISATION[settings["normalisation"]]
    allocation = settings.get("allocation", "none")
    if allocation not in _ALLOCATION:
        raise ValueError(f"unknown allocation {allocation!r}; known: {sorted(_ALLOCATION)}")
    fields["allocation"] = _ALLOCATION[allocation]
    if fields["allocation"] != "none" and "normalisation" not in settings:
        fields["normalisation"] = "per_image"
    return EADPConfig(text_positions="all", **fields)


def _budget(settings: dict) -> int:
    for key in ("budget_per_crop", "budget"):
        if key in settings:
            return int(settings[key])
    raise ValueError("settings give neither budget_per_crop nor budget")


def run_case(settings: dict, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Outputs of one case from its settings and input tensors (other tensors are ignored)."""
    track = settings.get("track", "llava")
    if track not in ("llava", "qwen_llm_space"):
        raise ValueError(f"unknown track {track!r}")
    missing = [n for n in ("image_features", "text_embeds_seq") if n not in tensors]
    if missing:
        raise ValueError(f"the case's inputs lack {missing}")
    features = tensors["image_features"]
    R = features.shape[0]
    crops = int(settings.get("crops_per_image", 1))
    if R % crops:
        raise ValueError(f"{R} rows are not a whole number of images of {crops} crops")
    images = R // crops
    seq = tensors["text_embeds_seq"]  # (M, L, C): one instruction for every image of the case
    g = tensors.get("text_embeds")
    inputs = PruneInputs(
        features=features,
        image_embeds=tensors.get("image_embeds") if track == "llava" else None,
        text_embeds=None if g is None else g[None].expand(images, *g.shape),
        text_embeds_seq=seq[None].expand(images, *seq.shape),
        grid=tuple(settings["grid"]) if "grid" in settings else None,
        rows_per_image=(crops,) * images,
    )
    result = prune("eadp", inputs, _budget(settings), config_from_settings(settings))
    out = {"importance": result.importance.float().contiguous(), "select_idx": result.picks.long().contiguous()}
    if track == "llava":
        out["token_quotas"] = result.quotas.long().contiguous()
        out["keep_mask"] = result.keep_mask.contiguous()
    else:
        out["pruned_features"] = result.gather(features).contiguous()
    return out


def compare_case(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], atol: float = 1e-5) -> list[str]:
    """Differences beyond the README's tolerances (an empty list when the case is reproduced)."""
    problems = []
    quotas = expected.get("token_quotas")
    for name, want in expected.items():
        if name in INPUT_NAMES:
            continue
        if name not in got:
            problems.append(f"{name}: not produced")
            continue
        have = got[name]
        if name == "select_idx":
            T = want.shape[1]
            counted = quotas.tolist() if quotas is not None else [T] * want.shape[0]
            for row, q in enumerate(counted):
                if have.shape[1] < q or not torch.equal(have[row, :q], want[row, :q]):
                    problems.append(f"select_idx row {row}: first {q} picks differ")
        elif want.is_floating_point():
            if have.shape != want.shape:
                problems.append(f"{name}: shape {tuple(have.shape)} != {tuple(want.shape)}")
            elif (diff := float((have.float() - want.float()).abs().max())) > atol:
                problems.append(f"{name}: max abs diff {diff:.3g} > {atol}")
        elif have.shape != want.shape or not torch.equal(have, want):
            problems.append(f"{name}: differs")
    return problems


def main(argv=None) -> int:
    from safetensors.torch import load_file, save_file

    parser = argparse.ArgumentParser(prog="python -m eadp_lab.reference", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a case and write its outputs")
    run.add_argument("settings", type=Path)
    run.add_argument("inputs", type=Path)
    run.add_argument("out", type=Path)
    check = sub.add_parser("check", help="run a case and compare with its expected outputs")
    check.add_argument("settings", type=Path)
    check.add_argument("case", type=Path)
    args = parser.parse_args(argv)

    settings = json.loads(args.settings.read_text())
    if args.command == "run":
        tensors = {k: v for k, v in load_file(args.inputs).items() if k in INPUT_NAMES}
        out = run_case(settings, tensors)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        save_file(out, tmp)
        tmp.replace(args.out)
        print(f"wrote {', '.join(f'{k} {tuple(v.shape)}' for k, v in out.items())} to {args.out}")
        return 0
    expected = load_file(args.case)
    problems = compare_case(expected, run_case(settings, {k: v for k, v in expected.items() if k in INPUT_NAMES}))
    print("reproduced" if not problems else "\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
