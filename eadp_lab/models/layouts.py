"""Where each visual token of a transformers VLM sits: rows (images, crops, frames) and grids.

A model hands its language model one flat sequence of visual features per image or video
("item"). The pruning methods want rows with grids. This module maps one to the other for
each supported class, using the model's own packing code where it has one (transformers
5.x):

- LLaVA-1.5: one row per image, the ``h x w`` patch grid.
- LLaVA-NeXT, LLaVA-NeXT-Video and LLaVA-OneVision images (AnyRes): one row per crop, the
  base view first, then each tile; unpadding can cut a tile, whose row is then the
  rectangle that is left (ragged rows). ``image_newline`` tokens are structure, not rows.
  When OneVision interpolates a large tile grid, the tile grid is one row.
- Videos: one row per frame (LLaVA-NeXT-Video pools 2x2, OneVision resizes and ends each
  video with one newline token); Qwen2.5-VL and Qwen3-VL: one row per temporal group of its grid
  (Qwen3-VL writes each group's timestamp, ``<t seconds>``, between the groups' tokens: a video's
  tokens are then several runs in the prompt, still one item here).
- Qwen2.5-VL and Qwen3-VL images: one row per temporal group (one for an image), the merged
  ``h/2 x w/2`` grid.

Taught in ``notebooks/05_video_and_multicrop``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch

__all__ = ["ItemLayout", "family_of", "FAMILIES", "QWEN_FAMILIES", "is_qwen", "item_layouts", "merged_grid"]

FAMILIES = {
    "LlavaForConditionalGeneration": "llava",
    "LlavaNextForConditionalGeneration": "llava_next",
    "LlavaNextVideoForConditionalGeneration": "llava_next_video",
    "LlavaOnevisionForConditionalGeneration": "llava_onevision",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "Qwen3VLForConditionalGeneration": "qwen3_vl",
}
# The families with Qwen's dynamic-resolution ViT, 2x2 merged tokens and 3-D (t, h, w) M-RoPE positions.
QWEN_FAMILIES = ("qwen2_5_vl", "qwen3_vl")


def is_qwen(family: str) -> bool:
    """Whether ``family`` (:func:`family_of`) is one of :data:`QWEN_FAMILIES`."""
    return family in QWEN_FAMILIES


def family_of(model) -> str:
    """The family name of a supported model instance; ``ValueError`` otherwise."""
    for cls in type(model).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise ValueError(
        f"model class {type(model).__name__} is not supported; supported: {', '.join(sorted(FAMILIES))}"
    )


@dataclass
class ItemLayout:
    """One image or video of a batch, as rows of tokens.

    Attributes:
        modality: ``"image"`` or ``"video"``; sample: its batch row.
        size: number of visual tokens the model feeds the language model for it.
        rows: per row, ``(N_r,)`` long indices into the item's flat tokens, raster order.
        grids: per row, its ``(H_r, W_r)`` with ``H_r * W_r == N_r``.
        vision: per row, ``(N_r, C_v)`` vision-tower states of those tokens (for CLIP
            scoring), or ``None``.
        newlines: ``(newline index, indices of the tokens on its line)`` pairs.
        always: indices kept whatever the method does (e.g. OneVision's video newline).
    """

    modality: str
    sample: int
    size: int
    rows: list[torch.Tensor]
    grids: list[tuple[int, int]]
    vision: list[torch.Tensor] | None = None
    newlines: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    always: list[int] = field(default_factory=list)


def merged_grid(vision_config, thw) -> tuple[int, int, int]:
    """``(t, H, W)`` visual tokens of one Qwen2.5-VL or Qwen3-VL item from its ``image_grid_thw`` (or
    ``video_grid_thw``) row ``(t, h, w)`` of patches: ``h`` and ``w`` divided by the
    ``spatial_merge_size`` (2x2 patches make one token)."""
    t, h, w = (int(v) for v in thw)
    merge = vision_config.spatial_merge_size
    return t, h // merge, w // merge


def _patch_side(config) -> int:
    return config.vision_config.image_size // config.vision_config.patch_size


def _selected_states(output, config, n_expected: int | None = None) -> torch.Tensor | None:
    """The vision tower's selected layer from a ``get_*_features`` output, CLS dropped as the
    model drops it: ``(n_views, h * w, C_v)``, or ``None`` if it was not recorded."""
    states = getattr(output, "hidden_states", None)
    layer = config.vision_feature_layer
    if states is None or not isinstance(layer, int):
        return None
    chosen = states[layer]
    if chosen is None:
        return None
    if config.vision_feature_select_strategy == "default":
        chosen = chosen[:, 1:]
    return chosen


def _crops_per_image(inner, config, image_sizes, batch_num_images=None) -> list[int]:
    """Views (base + tiles) the model cut each image into, by its own rule."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    patching = [True] * len(image_sizes)
    if batch_num_images is not None:  # OneVision: images of multi-image samples are not tiled
        patching = [n == 1 for n in batch_num_images for _ in range(int(n))]
    return [
        image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size) if tile else 1
        for size, tile in zip(image_sizes, patching)
    ]


def _packed_coordinates(inner, config, image_size, n_crops: int) -> torch.Tensor:
    """``(n, 3)`` float ``(crop, y, x)`` of every packed token of one image, by running the
    model's ``pack_image_features`` on coordinates; newline tokens are ``(-1, -1, -1)``."""
    h = _patch_side(config)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
    coords = torch.stack(
        [torch.arange(n_crops).float()[:, None].expand(n_crops, h * h),
         yy.flatten().float()[None].expand(n_crops, -1), xx.flatten().float()[None].expand(n_crops, -1)], -1
    )
    kwargs = dict(image_newline=torch.full((3,), -1.0))
    params = inspect.signature(inner.pack_image_features).parameters
    if "vision_feature_select_strategy" in params:
        kwargs["vision_feature_select_strategy"] = config.vision_feature_select_strategy
    if "vision_aspect_ratio" in params:
        kwargs["vision_aspect_ratio"] = config.vision_aspect_ratio
    sizes = torch.as_tensor(image_size)[None]
    packed, _ = inner.pack_image_features([coords], sizes, **kwargs)
    return packed[0]


def _anyres_layout(sample, size, coords, states, h) -> ItemLayout:
    """Rows of one AnyRes image from its packed coordinates (see :func:`_packed_coordinates`)."""
    if coords.shape[0] != size:
        raise RuntimeError(f"packing map has {coords.shape[0]} tokens but the model gave {size}")
    is_newline = coords[:, 0] < 0
    crop = coords[:, 0]
    index = torch.arange(size)
    rows, grids, vision = [], [], []

    def add(idx, grid, vis):
        rows.append(idx)
        grids.append(grid)
        vision.append(vis)

    integral = bool((coords[~is_newline] == coords[~is_newline].round()).all())
    base = index[crop == 0]
    add(base, (h, h), None if states is None else states[0, : h * h])
    tiles = index[(crop > 0)]
    if integral:
        for k in sorted({int(c) for c in crop[tiles].tolist()}):
            idx = index[crop == k]
            y, x = coords[idx, 1].long(), coords[idx, 2].long()
            idx = idx[torch.argsort(y * h + x)]
            y, x = coords[idx, 1].long(), coords[idx, 2].long()
            grid = (len(torch.unique(y)), len(torch.unique(x)))
            if grid[0] * grid[1] != len(idx):
                raise RuntimeError(f"crop {k} is not a rectangle after unpadding: {len(idx)} tokens, grid {grid}")
            add(idx, grid, None if states is None else states[k, y * h + x])
    elif len(tiles):  # OneVision interpolated the tile grid: score it as one row
        lines = int(is_newline[base.numel():].sum())
        grid = (lines, len(tiles) // max(lines, 1))
        add(tiles, grid, None)
        vision = None
    newlines, start = [], 0
    for k in index[is_newline].tolist():
        line = index[start:k]
        newlines.append((k, line[~is_newline[start:k]]))
        start = k + 1
    if vision is not None and any(v is None for v in vision):
        vision = None
    return ItemLayout("image", sample, size, rows, grids, vision, newlines=newlines)


def _split_states(states, counts):
    return [None] * len(counts) if states is None else list(torch.split(states, counts))


def item_layouts(family, inner, modality, sizes, samples, captured) -> list[ItemLayout]:
    """Layouts of the items of one modality in one batch.

    Args:
        family: :func:`family_of`; inner: the model's inner ``*Model``.
        sizes: tokens of each item as the model produced them; samples: each item's batch row.
        captured: ``(kwargs, output)`` of the model's ``get_<modality>_features`` call.
    """
    config = inner.config
    kwargs, output = captured if captured is not None else ({}, None)
    if is_qwen(family):
        grid_thw = kwargs.get(f"{modality}_grid_thw")
        if grid_thw is None:
            raise RuntimeError(f"{family} {modality}_grid_thw was not seen; cannot lay out the tokens")
        out = []
        for (t, hh, ww), n, b in zip(grid_thw.tolist(), sizes, samples):
            _, gh, gw = merged_grid(config.vision_config, (t, hh, ww))
            if t * gh * gw != n:
                raise RuntimeError(f"grid {t}x{hh}x{ww} does not give the model's {n} tokens")
            rows = [torch.arange(g * gh * gw, (g + 1) * gh * gw) for g in range(t)]
            out.append(ItemLayout(modality, b, n, rows, [(gh, gw)] * t))
        return out

    h = _patch_side(config)
    states = _selected_states(output, config)
    if modality == "image" and family == "llava":
        per_image = _split_states(states, [1] * len(sizes))
        return [ItemLayout("image", b, n, [torch.arange(n)], [(h, h)], None if s is None else [s[0]])
                for n, b, s in zip(sizes, samples, per_image)]
    if modality == "image":  # AnyRes families
        image_sizes = kwargs.get("image_sizes")
        if image_sizes is None:
            raise RuntimeError("image_sizes was not seen; cannot map AnyRes crops")
        crops = _crops_per_image(inner, config, image_sizes.tolist(), kwargs.get("batch_num_images"))
        per_image = _split_states(states, crops)
        return [
            _anyres_layout(b, n, _packed_coordinates(inner, config, size, k), s, h)
            for n, b, size, k, s in zip(sizes, samples, image_sizes.tolist(), crops, per_image)
        ]
    # videos
    if family == "llava_next_video":
        stride = config.spatial_pool_stride
        side = h // stride
    else:  # OneVision: bilinear resize to ceil(h / 2), then one newline per video
        stride, side = 2, math.ceil(h / 2)
    per_frame = side * side
    out = []
    frame_states = None
    if states is not None and family == "llava_next_video":
        frame_states = states  # (sum frames, h * h, C_v), pooled per frame below
    offset = 0
    for n, b in zip(sizes, samples):
        frames = n // per_frame
        always = [n - 1] if family == "llava_onevision" else []
        if frames * per_frame + len(always) != n:
            raise RuntimeError(f"a video of {n} tokens is not whole frames of {per_frame}")
        rows = [torch.arange(f * per_frame, (f + 1) * per_frame) for f in range(frames)]
        vision = None
        if frame_states is not None:
            chunk = frame_states[offset : offset + frames]  # (F, h * h, C_v)
            pooled = torch.nn.functional.avg_pool2d(
                chunk.float().reshape(frames, h, h, -1).permute(0, 3, 1, 2), stride, stride
            ).flatten(2).transpose(1, 2)  # (F, side * side, C_v)
            vision = list(pooled.to(chunk.dtype))
        offset += frames
        out.append(ItemLayout("video", b, n, rows, [(side, side)] * frames, vision, always=always))
    return out
