"""Run a method on a test-vector case made with its authors' code, and compare.

    python -m eadp_lab.reference run SETTINGS.json INPUTS.safetensors OUT.safetensors
    python -m eadp_lab.reference check SETTINGS.json CASE.safetensors

A case is a pair: ``NAME.json`` (settings) and ``NAME.safetensors`` (inputs, and the expected
outputs beside them). ``run`` reads only the inputs and the settings and writes the outputs
(atomically: a uniquely named temporary file beside ``OUT``, then ``os.replace``; ``OUT`` is
checked before the case runs); ``check`` runs a case and lists what differs beyond the
tolerances. A file the command cannot use (settings that are not a JSON object, inputs that
are not safetensors, a case it cannot run, an output it cannot write) is a one-line error
naming it (exit code 2). The JSON's ``track`` picks
the method (shapes: ``R`` rows, i.e. images or the crops of one image, ``N`` tokens per row,
``D`` feature width, ``C`` CLIP width, ``M`` text queries, ``L`` text positions, ``T`` picks):

- ``llava`` and ``qwen_llm_space`` (EADP; the default track): inputs ``image_embeds``
  ``(R, N, C)`` (LLaVA only), ``image_features`` ``(R, N, D)``, ``text_embeds`` ``(M, C)``,
  ``text_embeds_seq`` ``(M, L, C)``; outputs ``importance`` ``(R, N)``, ``select_idx``
  ``(R, T)`` (pick order; with per-crop quotas only the first ``token_quotas[r]`` of a row
  count), and ``token_quotas`` ``(R,)`` and ``keep_mask`` ``(R, N)`` (LLaVA) or
  ``pruned_features`` ``(sum kept, D)`` (Qwen). Settings: EADP's fields (see
  ``tests/reference/README.md``).
- ``divprune``: input ``image_features`` ``(R, N, D)``; output ``select_idx`` in pick order.
  ``scope`` ``"row"``: ``budget`` picks in each row, ``(R, T)``; ``"image"``: ``budget`` picks
  jointly over all ``R`` rows of one image (the authors' LLaVA-1.6 rule), ``(1, T)``, as
  indices into the rows flattened, ``row * N + n``.
- ``cdpruner``: inputs ``image_features`` ``(R, N, D)`` (the DPP's similarity),
  ``image_embeds`` ``(R, N, C)`` and ``text_embeds`` ``(M, C)`` (the relevance); outputs
  ``relevance`` ``(R, N)`` (the negated cosine averaged over the queries, min-max normalised
  jointly over all ``R`` rows as ``(s - min + 1e-6) / (max - min)``), ``select_idx``
  ``(R, T)`` (``budget_per_row`` greedy MAP picks per row, pick order) and ``keep_mask``
  ``(R, N)``. The kernel is ``q_i cos(f_i, f_j) q_j`` with no further reweighting.

The baselines run as their authors' code does: with the similarities in the inputs' dtype
(``precision="input"``; the same as the lab's float32 default on float32 vectors).
Tolerances: ``select_idx`` (its counted prefix), ``token_quotas`` and ``keep_mask`` identical;
``importance`` and ``relevance`` within 1e-5 absolute. Unknown settings are an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import importlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import EADPConfig
from .methods import PruneInputs, prune
from .methods.base import precision_dtype
from .methods.cdpruner import CDPrunerSettings
from .methods.divprune import DivPruneSettings, image_max_min_diversity

__all__ = ["config_from_settings", "run_case", "compare_case", "read_settings", "read_tensors", "save_tensors",
           "CaseFileError", "INPUT_NAMES", "TRACKS", "Track", "register_track", "tracks", "track_of", "DESCRIPTIVE",
           "case_value", "case_int", "agree"]

INPUT_NAMES = ("image_embeds", "image_features", "text_embeds", "text_embeds_seq")
TRACKS = ("llava", "qwen_llm_space", "divprune", "cdpruner")  # the tracks this module runs itself


@dataclass(frozen=True)
class Track:
    """A track another module runs: ``run(settings, inputs) -> outputs`` (dicts of tensors).

    Attributes:
        inputs: the input tensors every case has; ``input_prefixes``: inputs a case has a varying number
            of, ``PREFIX<n>`` (one per stage); every other tensor of a case is an expected output.
        keys: the settings a case may give besides :data:`DESCRIPTIVE` (any other is an error).
        as_sets: outputs compared row by row as sets (an order the published code leaves to CPython's set
            iteration).
    """

    run: Callable[[dict, dict], dict]
    inputs: tuple[str, ...]
    as_sets: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    input_prefixes: tuple[str, ...] = ()

    def is_input(self, name: str) -> bool:
        return name in self.inputs or any(name.startswith(p) and name[len(p):].isdigit()
                                          for p in self.input_prefixes)


DESCRIPTIVE = ("track", "inputs", "outputs", "source", "note")  # settings that describe a case, computing nothing


def case_value(settings: dict, key: str):
    """A setting the case must give; ``ValueError`` naming it otherwise."""
    if key not in settings:
        raise ValueError(f"the {settings.get('track')} case gives no {key!r}")
    return settings[key]


def case_int(settings: dict, key: str) -> int:
    """An integer setting the case must give."""
    value = case_value(settings, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


def agree(settings: dict, key: str, value) -> None:
    """A count a case states (derived from its other settings or its tensors) must be the lab's."""
    if key in settings and settings[key] != value:
        raise ValueError(f"the case states {key} = {settings[key]!r} but the lab computes {value!r}")


_REGISTERED: dict[str, Track] = {}
# Modules that register tracks of the methods beyond EADP and its selection baselines (imported on first use).
_TRACK_MODULES = ("eadp_lab.reference_vision", "eadp_lab.reference_llm")


def register_track(name: str, inputs: tuple[str, ...], as_sets: tuple[str, ...] = (), keys: tuple[str, ...] = (),
                   input_prefixes: tuple[str, ...] = ()):
    """Decorator: ``run(settings, inputs)`` becomes the runner of track ``name`` (see :class:`Track`)."""
    def decorator(run):
        if name in TRACKS or name in _REGISTERED:
            raise ValueError(f"track {name!r} is already registered")
        _REGISTERED[name] = Track(run, tuple(inputs), tuple(as_sets), tuple(keys), tuple(input_prefixes))
        return run
    return decorator


def tracks() -> dict[str, Track | None]:
    """Every known track: this module's own (``None``) and the registered ones (their :class:`Track`)."""
    for module in _TRACK_MODULES:
        importlib.import_module(module)
    return {**dict.fromkeys(TRACKS), **_REGISTERED}


def track_of(settings: dict) -> Track | None:
    """The registered :class:`Track` of a case's settings (``None`` for this module's own tracks);
    ``ValueError`` for an unknown track."""
    known = tracks()
    name = settings.get("track", "llava")
    if name not in known:
        raise ValueError(f"unknown track {name!r}; known: {list(known)}")
    return known[name]

# The baseline tracks' settings: what they set, and what only describes the case.
_BASELINE_KEYS = {
    "divprune": ("track", "rows", "grid", "scope", "budget", "budget_meaning", "select_idx", "note"),
    "cdpruner": ("track", "rows", "grid", "budget_per_row", "text_queries", "relevance", "kernel", "note"),
}
_SCOPES = {"row": "per_row", "image": "per_image"}

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


def _require(tensors: dict, names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"the case's inputs lack {missing}")


def _baseline_features(settings: dict, tensors: dict) -> torch.Tensor:
    """``image_features`` ``(R, N, D)`` of a baseline case, checked against its settings."""
    track = settings["track"]
    unknown = set(settings) - set(_BASELINE_KEYS[track])
    if unknown:
        raise ValueError(f"unknown settings in the {track} case: {sorted(unknown)}")
    features = tensors["image_features"]
    if features.ndim != 3:
        raise ValueError(f"image_features must have shape (R, N, D), got {tuple(features.shape)}")
    R, N, _ = features.shape
    if "rows" in settings and int(settings["rows"]) != R:
        raise ValueError(f"the settings give {settings['rows']} rows but image_features has {R}")
    if "grid" in settings and int(settings["grid"][0]) * int(settings["grid"][1]) != N:
        raise ValueError(f"grid {settings['grid']} does not hold the N = {N} tokens of a row")
    return features


def _setting(settings: dict, key: str) -> int:
    if key not in settings:
        raise ValueError(f"the {settings['track']} case gives no {key!r}")
    return int(settings[key])


def _run_divprune(settings: dict, tensors: dict) -> dict[str, torch.Tensor]:
    _require(tensors, ("image_features",))
    features = _baseline_features(settings, tensors)
    scope = settings.get("scope", "row")
    if scope not in _SCOPES:
        raise ValueError(f"unknown scope {scope!r}; known: {sorted(_SCOPES)}")
    budget = _setting(settings, "budget")
    if scope == "image":
        picks = image_max_min_diversity(features, budget, dtype=precision_dtype("input"))[None]
    else:
        inputs = PruneInputs(features=features, rows_per_image=(1,) * features.shape[0])
        picks = prune("divprune", inputs, budget, DivPruneSettings(scope="per_row", precision="input")).picks
    return {"select_idx": picks.long().contiguous()}


def _run_cdpruner(settings: dict, tensors: dict) -> dict[str, torch.Tensor]:
    _require(tensors, ("image_features", "image_embeds", "text_embeds"))
    features = _baseline_features(settings, tensors)
    text = tensors["text_embeds"]
    if text.ndim != 2:
        raise ValueError(f"text_embeds must have shape (M, C), got {tuple(text.shape)}")
    if "text_queries" in settings and int(settings["text_queries"]) != text.shape[0]:
        raise ValueError(f"the settings give {settings['text_queries']} text queries "
                         f"but text_embeds has {text.shape[0]}")
    inputs = PruneInputs(features=features, image_embeds=tensors["image_embeds"], text_embeds=text[None],
                         rows_per_image=(features.shape[0],))
    result = prune("cdpruner", inputs, _setting(settings, "budget_per_row"),
                   CDPrunerSettings(normalisation="per_image", precision="input"))
    return {"relevance": result.importance.float().contiguous(), "select_idx": result.picks.long().contiguous(),
            "keep_mask": result.keep_mask.contiguous()}


def run_case(settings: dict, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Outputs of one case from its settings and input tensors (other tensors are ignored)."""
    track = settings.get("track", "llava")
    registered = track_of(settings)
    if registered is not None:
        unknown = sorted(set(settings) - set(DESCRIPTIVE) - set(registered.keys))
        if unknown:
            raise ValueError(f"unknown settings in the {track} case: {unknown}")
        _require(tensors, registered.inputs)
        return registered.run(settings, {k: v for k, v in tensors.items() if registered.is_input(k)})
    if track == "divprune":
        return _run_divprune(settings, tensors)
    if track == "cdpruner":
        return _run_cdpruner(settings, tensors)
    _require(tensors, ("image_features", "text_embeds_seq"))
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


def compare_case(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], atol: float = 1e-5,
                 track: Track | None = None) -> list[str]:
    """Differences beyond the tolerances (an empty list when the case is reproduced). ``track``: a registered
    track's inputs are skipped and its ``as_sets`` outputs compared row by row as sets."""
    problems = []
    quotas = expected.get("token_quotas")
    for name, want in expected.items():
        if name in INPUT_NAMES if track is None else track.is_input(name):
            continue
        if track is not None and name in track.as_sets and name in got:
            have = got[name]
            if have.shape != want.shape or any(set(a.tolist()) != set(b.tolist())
                                               for a, b in zip(have.reshape(len(have), -1),
                                                               want.reshape(len(want), -1))):
                problems.append(f"{name}: differs as sets")
            continue
        if name not in got:
            problems.append(f"{name}: not produced")
            continue
        have = got[name]
        if name == "select_idx":
            if have.ndim != 2 or have.shape[0] != want.shape[0]:
                problems.append(f"select_idx: shape {tuple(have.shape)}, expected {want.shape[0]} rows")
                continue
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


class CaseFileError(ValueError):
    """A case's file the command cannot use: the message names it (one line)."""


def _reason(exc: OSError) -> str:
    """Why a file could not be read, without its path (the message names it once)."""
    return "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc)).split(":")[0]


def read_settings(path: Path) -> dict:
    """A case's JSON settings (an object); :class:`CaseFileError` naming ``path`` otherwise."""
    try:
        settings = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CaseFileError(f"cannot read the settings {path} ({_reason(exc)})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CaseFileError(f"the settings {path} are not JSON ({exc})") from None
    if not isinstance(settings, dict):
        raise CaseFileError(f"the settings {path} must be a JSON object, got a {type(settings).__name__}")
    return settings


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; :class:`CaseFileError` naming ``path`` otherwise."""
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except OSError as exc:
        raise CaseFileError(f"cannot read the tensors {path} ({_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 (safetensors' own error type for a file that is not one)
        raise CaseFileError(f"{path} is not a safetensors file ({exc})") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` to ``path`` atomically: a uniquely named temporary file beside it, then ``os.replace``."""
    from safetensors.torch import save_file

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run_file(settings: dict, tensors: dict[str, torch.Tensor], settings_path: Path) -> dict[str, torch.Tensor]:
    """:func:`run_case` on the case's inputs; a case it cannot run is a :class:`CaseFileError` naming its settings."""
    try:
        track = track_of(settings)
        return run_case(settings, {k: v for k, v in tensors.items()
                                   if (k in INPUT_NAMES if track is None else track.is_input(k))})
    except ValueError as exc:
        raise CaseFileError(f"{settings_path}: {exc}") from None


def main(argv=None) -> int:
    from ._io import OutputPathError, check_output

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
    try:
        if args.command == "run":
            check_output(args.out, "output")
        settings = read_settings(args.settings)
        tensors = read_tensors(args.inputs if args.command == "run" else args.case)
        out = _run_file(settings, tensors, args.settings)
        if args.command == "run":
            save_tensors(args.out, out)
    except (CaseFileError, OutputPathError) as exc:
        parser.error(str(exc))
    except OSError as exc:  # the checked output path failed at the end (the disk filled up, the folder went away)
        parser.error(f"could not write the outputs to {args.out} ({exc.strerror or exc})")
    if args.command == "run":
        print(f"wrote {', '.join(f'{k} {tuple(v.shape)}' for k, v in out.items())} to {args.out}")
        return 0
    problems = compare_case(tensors, out, track=track_of(settings))
    print("reproduced" if not problems else "\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":  # run as a module: use the imported copy, where the track modules register
    from eadp_lab.reference import main as _main

    sys.exit(_main())
