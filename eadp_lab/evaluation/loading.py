"""Loading a VLM, its processor and its CLIP, and preparing its inputs.

- :func:`load`: ``(model, processor, clip, clip_tokenizer)``, the shipped lab models by default; a
  folder that is missing, a corrupt ``config.json`` or unreadable weights are a
  :class:`ModelLoadError` naming the path and what is wrong;
- :func:`as_dtype`, :func:`to_model`, :func:`prompt_for`, :func:`model_id_of`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..paths import MODELS, is_shipped, repair_hint

LAB_LLAVA = MODELS / "lab-llava"
LAB_CLIP = MODELS / "lab-clip"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """A checkpoint that cannot be loaded: one line naming the path (or hub id) and what is wrong."""


def _looks_like_hub_id(name: str) -> bool:
    """``org/name`` or ``name``: no leading ``.``, ``/`` or ``~``, at most one ``/``, no backslash."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name))


def load_error(what: str, name, exc: BaseException) -> ModelLoadError:
    """The :class:`ModelLoadError` for ``exc``, raised while loading ``what`` (``"model"``, ``"CLIP"``) from
    ``name``: what is wrong with the folder (missing, a file, no or corrupt ``config.json``, unreadable
    weights) or, for a hub id, that it is neither a folder here nor in the local cache."""
    path = Path(name)
    cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    repair = repair_hint() if is_shipped(path) else "copy or download the checkpoint again"
    if path.is_file():
        return ModelLoadError(f"{what} {name} is a file: give the checkpoint's folder (config.json and weights)")
    if not path.exists():
        if is_shipped(path):
            return ModelLoadError(f"{what} {name} is missing from the package's data: {repair_hint()}")
        if _looks_like_hub_id(str(name)):
            return ModelLoadError(f"{what} {name!r} is not a folder here and could not be loaded as a hub id "
                                  f"({type(exc).__name__}: {cause}); offline, a hub id must be in the local cache")
        return ModelLoadError(f"{what} folder {name} not found")
    config = path / "config.json"
    if not config.is_file():
        return ModelLoadError(f"{what} folder {name} has no config.json: not a transformers checkpoint"
                              + (f"; {repair}" if is_shipped(path) else ""))
    try:
        json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as bad:
        return ModelLoadError(f"{what} {config} is not valid JSON ({bad}): {repair}")
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if weights and ("safetensor" in type(exc).__name__.lower() or "safetensor" in cause.lower()
                    or isinstance(exc, (OSError, EOFError))):
        return ModelLoadError(f"{what} weights in {name} cannot be read ({type(exc).__name__}: {cause}): the file "
                              f"may be truncated or corrupt; {repair}")
    return ModelLoadError(f"{what} {name} cannot be loaded ({type(exc).__name__}: {cause})")


def load_checked(what: str, name, loader, *args, **kwargs):
    """``loader(name, *args, **kwargs)`` (a ``from_pretrained``), its failure turned into a one-line
    :class:`ModelLoadError` (:func:`load_error`)."""
    try:
        return loader(name, *args, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 (transformers and safetensors raise many kinds)
        raise load_error(what, name, exc) from exc


def as_dtype(dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """A torch dtype from a dtype or its name (:data:`DTYPES`); ``None``: float32 on the CPU, bfloat16 elsewhere."""
    if dtype is None:
        return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be a torch dtype or one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    return dtype


def load(model_path=None, clip_path=None, dtype=torch.float32, device=None, device_map=None):
    """``(model, processor, clip, clip_tokenizer)``; defaults: the lab LLaVA and the lab CLIP, float32, CPU.

    ``dtype`` and ``device`` apply to the VLM and the CLIP alike; ``device_map`` (e.g.
    ``"auto"``) goes to the VLM's ``from_pretrained`` instead of ``device`` (a model that does
    not fit one device), and the CLIP then sits with the VLM's vision tower. A checkpoint that
    cannot be loaded is a :class:`ModelLoadError` naming it and what is wrong (:func:`load_error`).
    """
    from transformers import AutoModelForImageTextToText

    from ..models.processors import left_padded, load_processor
    from ..models.scorers import load_clip

    model_path = LAB_LLAVA if model_path is None else model_path
    if clip_path is None and Path(model_path).resolve() == LAB_LLAVA.resolve():
        clip_path = LAB_CLIP
    placement = {} if device_map is None else {"device_map": device_map}
    model = load_checked("model", model_path, AutoModelForImageTextToText.from_pretrained, dtype=dtype,
                         **placement).eval()
    if device_map is None and device is not None:
        model = model.to(device)
    processor = left_padded(load_checked("processor of model", model_path, load_processor, model.config.model_type))
    tower = getattr(model.model, "vision_tower", None)  # with a device_map, the CLIP sits with the vision tower
    clip_device = model.device if tower is None else next(tower.parameters()).device
    clip, clip_tokenizer = (None, None) if clip_path is None else load_checked("CLIP", clip_path, load_clip,
                                                                                device=clip_device, dtype=dtype)
    return model, processor, clip, clip_tokenizer


def to_model(inputs, model):
    """The processor's batch on ``model``'s device, its pixel values in the model's dtype (ids stay integers)."""
    inputs = inputs.to(model.device)
    for key in ("pixel_values", "pixel_values_videos"):
        if key in inputs and inputs[key].is_floating_point():
            inputs[key] = inputs[key].to(model.dtype)
    return inputs


def prompt_for(processor, question: str) -> str:
    """The prompt for one image and ``question``: the processor's chat template, or LLaVA-1.5's format."""
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return f"USER: {getattr(processor, 'image_token', '<image>')}\n{question} ASSISTANT:"


def model_id_of(model) -> str:
    """The ``model_id`` answers of ``model`` carry by default: its ``name_or_path``, else its class name."""
    return str(getattr(model.config, "_name_or_path", None) or type(model).__name__)
