"""Processors of the supported VLMs as the benches and :class:`eadp_lab.Lab` need them.

- :func:`load_processor`: ``AutoProcessor``, or for Qwen2.5-VL without a loadable torchvision
  an image-only processor (:class:`Qwen2_5_VLImageProcessorOnly`: transformers' own
  ``Qwen2_5_VLProcessor`` without its video processor, which needs torchvision; images go
  through the PIL image processor, so token counts and pixel values are the same).
- :func:`left_padded`: batched generation needs left padding; a tokenizer that pads on the
  right (Qwen2.5-VL's) is switched, and the switch said once.
- :func:`image_grid`: the visual-token grid of one image, from the vision config where the
  resolution is fixed (LLaVA) or from the processor's ``image_grid_thw`` (Qwen2.5-VL).
"""

from __future__ import annotations

import functools
import sys

import numpy as np

__all__ = ["Qwen2_5_VLImageProcessorOnly", "load_processor", "left_padded", "image_grid"]

_SAID: set = set()


def _say_once(key, text: str) -> None:
    if key not in _SAID:
        _SAID.add(key)
        print(f"note: {text}", file=sys.stderr)


@functools.lru_cache(maxsize=None)
def _image_only_class():
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class Qwen2_5_VLImageProcessorOnly(Qwen2_5_VLProcessor):
        """``Qwen2_5_VLProcessor`` for images only (no video processor, so no torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return Qwen2_5_VLImageProcessorOnly


def __getattr__(name):  # the class is built on first use (transformers is imported lazily)
    if name == "Qwen2_5_VLImageProcessorOnly":
        return _image_only_class()
    raise AttributeError(name)


def _torchvision_missing(exc: BaseException) -> bool:
    return isinstance(exc, ImportError) and "torchvision" in str(exc).lower()


def load_processor(path, model_type: str | None = None, **kwargs):
    """``AutoProcessor.from_pretrained(path, **kwargs)``; for ``model_type == "qwen2_5_vl"`` the
    image-only processor when the full one needs a torchvision that is not installed (said once).

    Other errors are raised as they come.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 (re-raised below unless it is the torchvision case)
        if model_type != "qwen2_5_vl" or not _torchvision_missing(exc):
            raise
    _say_once(("processor", str(path)), f"{path}: torchvision is not installed, so the Qwen2.5-VL processor is "
                                        "used for images only (PIL image processor; videos need torchvision)")
    from .._quiet import quiet_transformers

    with quiet_transformers():  # "falling back to Qwen2VLImageProcessorPil" (what is wanted)
        return _image_only_class().from_pretrained(path, **kwargs)


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
    image. Qwen2.5-VL: the processor's ``image_grid_thw`` for a ``size`` image divided by the
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
