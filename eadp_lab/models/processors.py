"""Processors of the supported VLMs as the benches and :class:`eadp_lab.Lab` need them.

- :func:`load_processor`: ``AutoProcessor``, or for Qwen2.5-VL and Qwen3-VL without a loadable
  torchvision an image-only processor (:class:`Qwen2_5_VLImageProcessorOnly`,
  :class:`Qwen3VLImageProcessorOnly`: transformers' own ``Qwen2_5_VLProcessor`` /
  ``Qwen3VLProcessor`` without its video processor, which needs torchvision; images go through
  the PIL image processor, so token counts and pixel values are the same; videos need
  torchvision, or hand-built frame tensors and prompts).
- :func:`left_padded`: batched generation needs left padding; a tokenizer that pads on the
  right (Qwen2.5-VL's) is switched, and the switch said once.
- :func:`image_grid`: the visual-token grid of one image, from the vision config where the
  resolution is fixed (LLaVA) or from the processor's ``image_grid_thw`` (Qwen2.5-VL, Qwen3-VL).
"""

from __future__ import annotations

import functools
import sys

import numpy as np

__all__ = ["Qwen2_5_VLImageProcessorOnly", "Qwen3VLImageProcessorOnly", "load_processor", "left_padded",
           "image_grid", "IMAGE_ONLY"]

_SAID: set = set()


def _say_once(key, text: str) -> None:
    if key not in _SAID:
        _SAID.add(key)
        print(f"note: {text}", file=sys.stderr)


# model_type -> (transformers' processor class, the image-only class's name)
IMAGE_ONLY = {"qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2_5_VLImageProcessorOnly"),
              "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLImageProcessorOnly")}


@functools.lru_cache(maxsize=None)
def _image_only_class(model_type: str = "qwen2_5_vl"):
    """The image-only subclass of ``model_type``'s processor (:data:`IMAGE_ONLY`), built on first use."""
    import transformers
    from transformers.processing_utils import ProcessorMixin

    base_name, name = IMAGE_ONLY[model_type]
    base = getattr(transformers, base_name)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        for attr, default in (("image_token", "<|image_pad|>"), ("video_token", "<|video_pad|>"),
                              ("vision_start_token", "<|vision_start|>"), ("vision_end_token", "<|vision_end|>")):
            token = getattr(tokenizer, attr, None) or default
            setattr(self, attr, token)
            setattr(self, f"{attr}_id", tokenizer.convert_tokens_to_ids(token))
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    doc = f"``{base_name}`` for images only (no video processor, so no torchvision)."
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


def __getattr__(name):  # the classes are built on first use (transformers is imported lazily)
    for model_type, (_, class_name) in IMAGE_ONLY.items():
        if name == class_name:
            return _image_only_class(model_type)
    raise AttributeError(name)


def _torchvision_missing(exc: BaseException) -> bool:
    return isinstance(exc, ImportError) and "torchvision" in str(exc).lower()


def load_processor(path, model_type: str | None = None, **kwargs):
    """``AutoProcessor.from_pretrained(path, **kwargs)``; for ``model_type`` ``"qwen2_5_vl"`` or ``"qwen3_vl"``
    the image-only processor when the full one needs a torchvision that is not installed (said once).

    Other errors are raised as they come.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 (re-raised below unless it is the torchvision case)
        if model_type not in IMAGE_ONLY or not _torchvision_missing(exc):
            raise
    _say_once(("processor", str(path)), f"{path}: torchvision is not installed, so the {IMAGE_ONLY[model_type][0]} is "
                                        "used for images only (PIL image processor; videos need torchvision)")
    from .._quiet import quiet_transformers

    with quiet_transformers():  # "falling back to Qwen2VLImageProcessorPil" (what is wanted)
        return _image_only_class(model_type).from_pretrained(path, **kwargs)


def left_padded(processor):
    """``processor`` with its tokenizer padding on the left (batched generation needs it); a
    tokenizer set to the right is switched and the switch said once. Returns ``processor``."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.padding_side != "left":
        _say_once(("padding", id(tokenizer)), f"the tokenizer padded on the {tokenizer.padding_side}; set to left "
                                              "padding for batched generation")
        tokenizer.padding_side = "left"
    return processor


def image_grid(model, processor=None, size: tuple[int, int] = (96, 96)) -> tuple[int, int]:
    """``(H, W)`` visual tokens of one ``size = (height, width)`` image (the base view of AnyRes models).

    Fixed-resolution towers (CLIP, SigLIP): ``image_size // patch_size`` a side, whatever the
    image. Qwen2.5-VL and Qwen3-VL: the processor's ``image_grid_thw`` for a ``size`` image divided by the
    ``spatial_merge_size`` (``processor`` required).
    """
    from .layouts import merged_grid

    vision = model.config.vision_config
    if getattr(vision, "image_size", None) is not None:
        side = vision.image_size // vision.patch_size
        return (side, side)
    if getattr(vision, "spatial_merge_size", None) is None:
        raise ValueError(f"cannot tell the visual-token grid of a {type(model).__name__}")
    if processor is None:
        raise ValueError("the visual-token grid of a dynamic-resolution model (Qwen2.5-VL) needs its processor")
    image_processor = getattr(processor, "image_processor", processor)
    blank = np.zeros((size[0], size[1], 3), np.uint8)
    _, h, w = merged_grid(vision, image_processor(images=[blank], return_tensors="pt")["image_grid_thw"][0])
    return (h, w)
