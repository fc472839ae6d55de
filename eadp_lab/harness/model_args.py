"""The lmms-eval model's ``--model_args``, checked before any model loads.

``--model_args pretrained=PATH_OR_ID,method=eadp,budget=64[,clip=...][,preset=...][,scoring=...]
[,positions=...][,dtype=...][,device=...][,records=PATH][,seed=S][,FIELD=VALUE ...]`` arrive here as the
keywords lmms-eval parsed (``"64"`` already an int, ``"true"`` a bool). :func:`harness_args` checks them
all, reads the checkpoint's ``config.json`` (not its weights) to find the model class, and resolves
the method's settings for that class, so an unknown method, a misspelt settings field, a bad
value or a model class :func:`eadp_lab.attach` does not support is a one-line ``ValueError``
before the model loads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

from .._checks import check_budget_or_fraction, check_choice
from ..evaluation.loading import DTYPES, ModelLoadError, load_checked, load_error
from ..methods.settings import method_names, method_settings
from ..models.layouts import FAMILIES

__all__ = ["HarnessArgs", "harness_args", "model_class", "signed", "KNOWN"]

# The keywords the harness reads itself; every other one is a field of the method's settings.
KNOWN = ("pretrained", "method", "budget", "clip", "preset", "scoring", "positions", "dtype", "device",
         "records", "seed", "batch_size", "max_batch_size", "device_map")


@dataclass(frozen=True)
class HarnessArgs:
    """Checked ``--model_args``: what to load, which method runs with which settings, where records go."""

    pretrained: str
    family: str  # eadp_lab.models.family_of of the checkpoint's class
    method: str  # a registry method or an ablation name (eadp-global, ...)
    budget: int | float
    registry_method: str  # the registry method the name runs (an ablation runs "eadp")
    settings: object  # the method's settings dataclass for this family, overrides applied
    scoring: str
    clip: str | None
    positions: str
    dtype: str | None
    device: str | None
    device_map: str | None
    records: str | None
    seed: int
    batch_size: int
    overrides: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """What ran, as JSON-ready values (the records' first line)."""
        settings = asdict(self.settings) if is_dataclass(self.settings) else None
        return {"pretrained": self.pretrained, "family": self.family, "method": self.method,
                "budget": self.budget, "settings": settings, "scoring": self.scoring, "clip": self.clip,
                "positions": self.positions, "dtype": self.dtype, "seed": self.seed}


def model_class(pretrained: str) -> str:
    """The model class a checkpoint declares (``architectures[0]`` of its ``config.json``), read without
    loading weights: from a local folder, else through ``AutoConfig`` (a hub id in the local cache).
    :class:`~eadp_lab.evaluation.loading.ModelLoadError` when there is none (:func:`load_error` says what is
    wrong with the folder or hub id, as loading the model would)."""
    path = Path(pretrained)
    if path.exists():
        try:
            architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
        except (OSError, ValueError) as exc:
            raise load_error("model", pretrained, exc) from None
    else:
        from transformers import AutoConfig

        architectures = load_checked("model", pretrained, AutoConfig.from_pretrained).architectures or []
    if not architectures:
        raise ModelLoadError(f"pretrained={pretrained}: its config.json names no architectures (model class)")
    return architectures[0]


def harness_args(**kwargs) -> HarnessArgs:
    """Every ``--model_args`` keyword checked, the method's settings resolved for the checkpoint's class.

    Checked in this order, each failure a ``ValueError`` naming the keyword (the method, a
    settings field, the model class), before any weights load: the method, the budget and the
    other keywords' values; then ``pretrained``'s ``config.json`` (a class :func:`eadp_lab.attach`
    supports); then the preset and the settings fields against the settings class the method
    has on that class (HiPrune's Qwen variant has other fields than its LLaVA one).
    """
    if "pretrained" not in kwargs:
        raise ValueError("--model_args needs pretrained=<checkpoint folder or hub id>")
    method = str(kwargs.get("method", "eadp"))
    names = ["none", *[n for n in method_names() if n != "none"]]
    if method not in names:
        raise ValueError(f"method={method!r} is not a pruning method here; choose one of {', '.join(names)}")
    budget = check_budget_or_fraction(kwargs.get("budget", 64))
    clip = kwargs.get("clip")
    scoring = str(kwargs.get("scoring", "clip" if clip else "llm"))
    check_choice("scoring", scoring, ("clip", "llm"))
    if scoring == "clip" and not clip:
        raise ValueError("scoring=clip needs clip=<the vision tower's CLIP checkpoint, e.g. "
                         "openai/clip-vit-large-patch14-336>")
    positions = str(kwargs.get("positions", "renumber"))
    check_choice("positions", positions, ("renumber", "original"))
    dtype = kwargs.get("dtype")
    if dtype is not None and dtype != "auto":
        check_choice("dtype", dtype, tuple(DTYPES))
    seed = kwargs.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    batch_size = kwargs.get("batch_size", 1)
    try:
        batch_size = int(batch_size)
    except (TypeError, ValueError):
        raise ValueError(f"batch_size must be a positive integer here (no 'auto'), got {batch_size!r}") from None
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    overrides = {k: v for k, v in kwargs.items() if k not in KNOWN}
    preset = kwargs.get("preset")

    architecture = model_class(str(kwargs["pretrained"]))
    if architecture not in FAMILIES:
        raise ValueError(f"model class {architecture} (pretrained={kwargs['pretrained']}) is not supported by "
                         f"eadp_lab.attach; supported: {', '.join(sorted(FAMILIES))}")
    family = FAMILIES[architecture]
    registry_method, settings = method_settings(method, family, 0, seed)
    if preset is not None:
        from ..config import EADPConfig, preset as eadp_preset

        if not isinstance(settings, EADPConfig):
            raise ValueError(f"preset={preset!r} names an EADP preset; method={method!r} has none")
        settings = eadp_preset(str(preset), faithful=True)
    if overrides:
        from ..methods.base import resolve_settings

        settings = resolve_settings(registry_method, settings, overrides)
    return HarnessArgs(pretrained=str(kwargs["pretrained"]), family=family, method=method, budget=budget,
                       registry_method=registry_method, settings=settings, scoring=scoring,
                       clip=None if clip is None else str(clip), positions=positions,
                       dtype=None if dtype in (None, "auto") else dtype, device=kwargs.get("device"),
                       device_map=kwargs.get("device_map"), records=kwargs.get("records"), seed=seed,
                       batch_size=batch_size, overrides=overrides)


def signed(args: HarnessArgs, clip) -> HarnessArgs:
    """``args`` with the similarity sign the loaded CLIP declares (as ``bench accuracy`` runs it), when
    scoring in CLIP space and ``similarity_sign`` was not given; otherwise ``args`` unchanged."""
    from dataclasses import replace

    from ..methods.settings import clip_similarity_sign, with_sign

    if args.scoring != "clip" or "similarity_sign" in args.overrides:
        return args
    return replace(args, settings=with_sign(args.settings, clip_similarity_sign(clip)))
