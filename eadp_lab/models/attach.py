"""Attach any pruning method of the registry to a transformers VLM, without forking it.

    with eadp_lab.attach(model, method="eadp", budget=64, scoring="llm", tokenizer=processor.tokenizer) as pruner:
        out = model.generate(**inputs, max_new_tokens=16)
    pruner.last  # what was kept, per image / video, with every intermediate

The seam is the narrowest one that sees the visual features, the prompt and the cache
together: a forward pre-hook on the model's inner ``*Model`` (``model.model``). On the
prefill it encodes the images (or takes what ``generate`` already encoded), scores and
selects per image, crop or frame, removes the dropped placeholder tokens from
``input_ids``, ``attention_mask`` and ``position_ids`` (re-left-padding the batch), and hands
the kept features back as ``mm_encoder_outputs``. On every decode step it rewrites the
attention mask and positions, because ``generate`` keeps counting the unpruned prompt. So
``generate``'s output still starts with the caller's own prompt. Qwen2.5-VL's and Qwen3-VL's kept
tokens keep their original 3-D (t, h, w) rotary positions, and Qwen3-VL's DeepStack features (the
vision encoder's intermediate layers, added to the first decoder layers' outputs at the visual
positions) are cut to the same kept tokens in every layer they are injected into. A ``get_*_features`` wrapper records
the metadata (``image_sizes``, grids, vision states) that ``generate`` drops before the
forward pass. transformers 5.x. Taught in ``notebooks/04_full_model_benchmarks``.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections import Counter
from dataclasses import dataclass, field

import torch

from .._checks import check_budget_or_fraction, check_choice, check_int
from ..config import EADPConfig
from ..methods import METHODS, PruneInputs, PruneResult, prune
from ..methods.base import resolve_settings, selection_result
from ..methods.settings import DEFAULT_PRESETS, clip_similarity_sign, default_settings
from .decoder import _CLASS_METHOD  # marks a wrapped method the instance did not own: remove() deletes the wrapper
from .layouts import ItemLayout, family_of, is_qwen, item_layouts
from .scorers import CLIPScorer, LLMScorer, load_clip

__all__ = ["attach", "attached", "Pruner", "ItemRecord", "CallRecord", "DEFAULT_PRESETS", "TEMPLATE_TAIL",
           "TEMPLATE_HEAD", "item_inputs", "special_token_ids"]


# Chat-template text after the instruction, stripped from the prompt before scoring.
TEMPLATE_TAIL = re.compile(r"\s*(ASSISTANT:|\[/INST\]|(<\|im_start\|>)?\s*assistant)\s*$", re.IGNORECASE)
# Chat-template text before the instruction, stripped when the question precedes the image.
TEMPLATE_HEAD = re.compile(r"^\s*(USER:|\[INST\]|(<\|im_start\|>)?\s*user\b)\s*", re.IGNORECASE)


@dataclass
class ItemRecord:
    """What happened to one image or video of a call."""

    modality: str
    sample: int
    instruction: str | None
    tokens_before: int  # visual tokens the model produced (newlines included)
    tokens_after: int  # visual tokens the language model received
    kept: torch.Tensor  # indices into the item's tokens, ascending (for VisionZip: the sources of its outputs)
    result: PruneResult
    layout: ItemLayout
    text_tokens: list[str]
    columns: torch.Tensor | None = None  # in-LLM methods: the prompt columns of the item's placeholders


@dataclass
class CallRecord:
    """One prefill: every item, and the sequence lengths before and after pruning."""

    items: list[ItemRecord] = field(default_factory=list)
    length_before: int = 0
    length_after: int = 0
    kept_columns: torch.Tensor | None = None  # (B, length_before) bool: prompt positions the LM saw
    visual_per_layer: list[list[int]] | None = None  # in-LLM methods: per sample, visual tokens each layer saw
    seconds: float = 0.0  # time spent scoring and selecting (the method's overhead)


MODALITIES = ("image", "video")


def _settings_by_modality(method, family, settings, overrides, sign=None) -> dict:
    """The settings each modality of the model family runs with, checked when attaching: ``settings``
    (one for all, or a dict ``{"image": ..., "video": ...}``), else the family's defaults with
    ``sign``; ``overrides`` applied. Raises ``ValueError`` naming a wrong class, field or value."""
    if isinstance(settings, dict):
        bad = [k for k in settings if k not in MODALITIES]
        if bad:
            raise ValueError(f"settings dict key(s) {', '.join(map(repr, bad))} are not modalities: use 'image' "
                             "and/or 'video' (settings fields go in as keywords, e.g. attach(..., alpha=0.3))")
    out = {}
    for modality in MODALITIES:
        if (family, modality) not in DEFAULT_PRESETS:
            continue  # a modality the family never feeds
        given = settings.get(modality) if isinstance(settings, dict) else settings
        chosen = default_settings(method, family, modality, sign) if given is None else given
        out[modality] = _checked_for_family(method, family, resolve_settings(method, chosen, overrides))
    return out


def _checked_for_family(method, family, settings):
    """``settings``, or ``ValueError`` when HiPrune's variant does not match the model's vision encoder."""
    if method == "hiprune":
        from ..methods.hiprune import HiPruneQwenSettings, qwen_hiprune_settings

        qwen = isinstance(settings, HiPruneQwenSettings)
        if qwen and not is_qwen(family):
            raise ValueError("hiprune: HiPruneQwenSettings are the Qwen variant's (Qwen2.5-VL, Qwen3-VL); a CLIP "
                             "vision encoder runs the LLaVA variant: give HiPruneSettings")
        if is_qwen(family) and not qwen:
            published = qwen_hiprune_settings(family)
            raise ValueError(f"hiprune on {_CLASS_OF[family]} runs its published Qwen variant: give "
                             f"HiPruneQwenSettings (alpha {published.alpha}, object_layer {published.object_layer} "
                             f"of {published.published_depth} blocks, score_order), not HiPruneSettings")
    return settings


_CLASS_OF = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen3_vl": "Qwen3VLForConditionalGeneration"}


# The vision-encoder methods' classes: (method, family) -> why it does not apply (the model class is named
# with it). VisionZip ranks by the [CLS] token's attention and feeds [CLS]; HiPrune's LLaVA variant drops
# the [CLS] column of the attention, and the EADP authors' SigLIP variant (LLaVA-Video) scores
# post-projector features, not the encoder's attention: neither is HiPrune on a [CLS]-free SigLIP.
VISION_REFUSALS = {
    ("visionzip", "qwen2_5_vl"): "its vision encoder (Qwen2.5-VL's windowed ViT) has no [CLS] token, whose "
                                 "attention VisionZip ranks by (the EADP paper also leaves it out on Qwen2.5-VL)",
    ("visionzip", "qwen3_vl"): "its vision encoder (Qwen3-VL's ViT) has no [CLS] token, whose attention VisionZip "
                               "ranks by (the EADP authors' Qwen3-VL track has no VisionZip either)",
    ("visionzip", "llava_onevision"): "its vision encoder (SigLIP) has no [CLS] token, whose attention VisionZip "
                                      "ranks by",
    ("hiprune", "llava_onevision"): "its vision encoder (SigLIP) has no [CLS] token; HiPrune's published LLaVA "
                                    "code drops the [CLS] column of the attention, and its published variants "
                                    "cover CLIP towers and Qwen's ViTs only",
}


def check_vision_method(method: str, model, family: str) -> None:
    """``ValueError`` naming ``method`` and the model's class when a vision-encoder method does not apply."""
    why = VISION_REFUSALS.get((method, family))
    if why is not None:
        raise ValueError(f"{method} cannot prune {type(model).__name__}: {why}")


def attached(model) -> "Pruner | None":
    """The live :class:`Pruner` that :func:`attach` hooked into ``model``, or ``None``."""
    hooks = getattr(getattr(model, "model", None), "_forward_pre_hooks", None) or {}
    for hook in hooks.values():
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, Pruner) and owner._handle is not None:
            return owner
    return None


class Pruner:
    """A pruning method attached to a model (see :func:`attach`). Remove with :meth:`remove`.

    Attributes:
        last: the :class:`CallRecord` of the latest prefill; ``history`` the recent ones.
        instructions: per-sample instruction texts for the next call only (overrides the
            text taken from each prompt); reset after use.
    """

    def __init__(self, model, method="eadp", budget=64, scoring="llm", settings=None, clip=None, tokenizer=None,
                 clip_tokenizer=None, text_positions=None, positions="renumber", newlines="rows",
                 keep_history: int = 8, **overrides):
        # nothing hooked yet: remove() is harmless
        self._handle, self._wrapped, self.decoder, self._finish, self._vision_hooks = None, {}, None, None, []
        self._pending: CallRecord | None = None  # an in-LLM prefill's record, finished after the forward
        check_choice("method", method, METHODS)
        check_choice("scoring", scoring, ("clip", "llm"))
        check_choice("positions", positions, ("renumber", "original"))
        check_choice("newlines", newlines, ("rows", "all", "none"))
        self.budget = check_budget_or_fraction(budget)
        self.keep_history = check_int("keep_history", keep_history, minimum=1)
        if text_positions is None:
            first = settings if isinstance(settings, EADPConfig) else None
            text_positions = first.text_positions if first is not None else "content"
        check_choice("text_positions", text_positions, ("content", "all"))
        self.model = model
        self.family = family_of(model)
        self.inner = model.model
        live = attached(model)
        if live is not None:
            raise RuntimeError(f"a pruner ({live.method}, budget {live.budget}) is already attached to this "
                               f"{type(model).__name__}: call .remove() on it, or leave its with block, before "
                               "attaching another (eadp_lab.models.attach.attached(model) returns it)")
        self.method = method
        self.settings = settings
        self.overrides = overrides
        self.positions = positions
        self.newlines = newlines
        self.tokenizer = tokenizer
        self.is_qwen = is_qwen(self.family)
        self.text_positions = text_positions
        if scoring == "clip":
            if clip is None:
                raise ValueError("scoring='clip' needs clip=<CLIPModel, hub id or path> (the checkpoint of the "
                                 "model's vision tower, e.g. openai/clip-vit-large-patch14-336)")
            if isinstance(clip, (str, bytes)) or hasattr(clip, "__fspath__"):
                clip, loaded_tokenizer = load_clip(clip, device=next(model.parameters()).device)
                clip_tokenizer = clip_tokenizer or loaded_tokenizer
            if clip_tokenizer is None:
                raise ValueError("scoring='clip' with a CLIPModel instance needs clip_tokenizer=")
            if tokenizer is None:
                raise ValueError("scoring='clip' needs the VLM's tokenizer (tokenizer=processor.tokenizer) to read "
                                 "each prompt's instruction, or set pruner.instructions before each call")
            self.scorer = CLIPScorer(clip, clip_tokenizer, text_positions)
            self.scorer.check_matches(self.inner.vision_tower)
            self.sign = clip_similarity_sign(clip)  # a CLIP that declares its sign; None: the presets' -1
        else:
            self.scorer = LLMScorer(model.get_input_embeddings(), tokenizer, text_positions, special_token_ids(model))
            self.sign = None
        self._settings = _settings_by_modality(method, self.family, settings, overrides, self.sign)
        self.stage = METHODS[method].stage
        if positions == "original" and not METHODS[method].keeps_original_positions:
            raise ValueError(f"{method} feeds merged tokens that have no original positions: use "
                             "positions='renumber' (its published setting)")
        if self.stage == "vision":
            check_vision_method(method, model, self.family)
        if self.stage == "llm":  # the plan is checked against the model's depth here, not at the first call
            from .decoder import DecoderPruner, language_model

            depth = len(language_model(model).layers)
            self._plan = METHODS[method].run(next(iter(self._settings.values())), depth)
            DecoderPruner.check(model, self._plan)
            fewest = getattr(self._plan, "min_budget", 1)  # e.g. DART's image pivots
            if isinstance(self.budget, int) and self.budget < fewest:
                raise ValueError(f"{method} keeps at least {fewest} visual tokens per sample: budget {self.budget} "
                                 "is below that")
        self.instructions: list[str] | None = None
        self.history: list[CallRecord] = []
        self._previous_prompt = None
        self._captured: dict = {}
        self._vision_inputs: dict = {}  # the layer inputs of the tower call under way
        self._vision_recorded: dict = {}  # per modality: those of its last call
        self._state = None
        self._install()

    # ------------------------------------------------------------------ lifetime
    @property
    def last(self) -> CallRecord | None:
        return self.history[-1] if self.history else None

    def _install(self) -> None:
        """Wrap ``get_*_features`` and hook the inner model; all or nothing."""
        try:
            for modality in MODALITIES:
                name = f"get_{modality}_features"
                original = getattr(self.inner, name, None)
                if original is not None:
                    self._wrapped[name] = vars(self.inner).get(name, _CLASS_METHOD)  # what to put back
                    setattr(self.inner, name, self._capturing(modality, original))
            if self.stage == "llm":
                from .decoder import DecoderPruner

                self.decoder = DecoderPruner(self.model, self._plan)
                self._finish = self.inner.register_forward_hook(self._finish_llm)
            if self.stage == "vision":  # record the inputs of the layers it reads
                from ..methods.in_vision import vision_layers

                layers = self._encoder_layers()
                feature_layer = None if self.is_qwen else self.model.config.vision_feature_layer
                needed = vision_layers(self.method, self._settings["image"], len(layers), feature_layer)
                self._vision_hooks = [layers[i].register_forward_pre_hook(self._record_vision_inputs(i),
                                                                          with_kwargs=True) for i in needed]
            self._handle = self.inner.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Detach: the model behaves exactly as before. Calling it again is harmless."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.remove()
        decoder, self.decoder = self.decoder, None
        if decoder is not None:
            decoder.remove()
        finish, self._finish = self._finish, None
        if finish is not None:
            finish.remove()
        for hook in self._vision_hooks:
            hook.remove()
        self._vision_hooks, self._vision_inputs, self._vision_recorded = [], {}, {}
        for name, previous in self._wrapped.items():
            if previous is _CLASS_METHOD:
                delattr(self.inner, name)  # the class's own method shows through again
            else:
                setattr(self.inner, name, previous)
        self._wrapped = {}
        self._state = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False  # an exception raised inside the block propagates unchanged

    # ------------------------------------------------------------------ capture
    def _capturing(self, modality, original):
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            self._vision_inputs = {}
            out = original(*args, **kwargs)
            bound = inspect.signature(original).bind_partial(*args, **kwargs).arguments
            bound.pop("kwargs", None)
            self._captured[modality] = (bound, out)
            self._vision_recorded[modality], self._vision_inputs = self._vision_inputs, {}  # this call's layers
            return out

        return wrapper

    # ------------------------------------------------------------------ the hook
    def _pre_hook(self, module, args, kwargs):
        kwargs = dict(kwargs)
        if args:  # LLaVA-NeXT's outer forward passes input_ids positionally
            kwargs["input_ids"], args = args[0], args[1:]
        cache = kwargs.get("past_key_values")
        cached = 0 if cache is None else cache.get_seq_length()
        visual = any(kwargs.get(k) is not None for k in ("pixel_values", "pixel_values_videos")) or any(
            v is not None for v in (kwargs.get("mm_encoder_outputs") or {}).values()
        )
        if cached == 0:
            self._state = None
            if visual:
                if kwargs.get("input_ids") is None:
                    raise ValueError("pruning needs input_ids (a call with inputs_embeds only cannot be pruned)")
                kwargs = self._prefill(kwargs)
            return args, kwargs
        if visual:
            raise ValueError("visual inputs with a non-empty cache (chunked prefill) cannot be pruned")
        if self._state is not None:
            kwargs = self._decode(kwargs)
        return args, kwargs

    # ------------------------------------------------------------------ prefill
    def _encode(self, kwargs) -> dict:
        """``mm_encoder_outputs`` as ``generate`` makes them, computing what is missing."""
        mm = dict(kwargs.get("mm_encoder_outputs") or {})
        for modality, key in (("image", "pixel_values"), ("video", "pixel_values_videos")):
            if kwargs.get(key) is None or mm.get(modality) is not None:
                continue
            fn = getattr(self.inner, f"get_{modality}_features")
            names = [k for k in inspect.signature(fn).parameters if k != "kwargs"]
            mm[modality] = fn(**{k: kwargs[k] for k in names if kwargs.get(k) is not None}, return_dict=True)
        for key in ("pixel_values", "pixel_values_videos"):
            kwargs.pop(key, None)
        return mm

    @staticmethod
    def _items(pooler_output) -> list[torch.Tensor]:
        """``pooler_output`` -> one ``(n_i, D)`` tensor per image or video."""
        if isinstance(pooler_output, torch.Tensor):
            return list(pooler_output) if pooler_output.ndim == 3 else [pooler_output]
        return [t.reshape(-1, t.shape[-1]) for t in pooler_output]

    def _instruction(self, ids: torch.Tensor, mask: torch.Tensor, sample: int):
        """The instruction of one sample: ``(text or None, ids)``, from :attr:`instructions`, or
        from the prompt: the text after its last visual token (template tail removed), or,
        when nothing is left there (a question asked before the image), the text before its
        first visual token (role prefix removed)."""
        if self.instructions is not None:
            return self.instructions[sample], None
        config = self.model.config
        visual = [getattr(config, k, None) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                     "vision_end_token_id")]
        row = ids[mask.bool()]
        where = torch.isin(row, torch.tensor([v for v in visual if v is not None], device=row.device)).nonzero()
        if len(where) == 0:
            before, after = row[:0], row
        else:
            before, after = row[: int(where.min())], row[int(where.max()) + 1:]
        if self.tokenizer is None:
            return None, after if len(after) else before
        text = TEMPLATE_TAIL.sub("", self.tokenizer.decode(after.tolist(), skip_special_tokens=True)).strip()
        if text:
            return text, after
        text = self.tokenizer.decode(before.tolist(), skip_special_tokens=True)
        return TEMPLATE_HEAD.sub("", TEMPLATE_TAIL.sub("", text)).strip(), before

    def _budget(self, layout: ItemLayout) -> int:
        if isinstance(self.budget, float):
            full = max(int(r.numel()) for r in layout.rows)
            return max(1, round(self.budget * full))
        return int(self.budget)

    def _prune_item(self, feats, layout, text, settings, vision=None) -> PruneResult:
        inputs = item_inputs(feats, layout, text, self.scorer, METHODS[self.method].text_guided, vision)
        return prune(self.method, inputs, self._budget(layout), settings)  # overrides applied when attaching

    def _vision_states(self, modality, index, layout):
        """The vision encoder's states of one image, for the methods that read its attention: its CLIP
        views (LLaVA-1.5, and the AnyRes views of LLaVA-NeXT and NeXT-Video, one per row), or its
        ViT pass (Qwen2.5-VL's windowed one, Qwen3-VL's)."""
        name = self.method
        if modality != "image":
            raise ValueError(f"{name} cannot prune this {type(self.model).__name__} {modality}: it prunes images "
                             "(the published code covers images; video frames are not pruned in the vision encoder "
                             "here)")
        check_vision_method(name, self.model, self.family)
        recorded = self._vision_recorded.get(modality) or {}
        captured = self._captured.get(modality)
        if captured is None or not recorded:
            raise ValueError(f"{name}: the vision tower's states were not recorded")
        if self.is_qwen:
            return self._qwen_vision_states(index, captured[0], recorded)
        return self._clip_vision_states(index, layout, captured, recorded)

    def _clip_vision_states(self, index, layout, captured, recorded):
        """:class:`~eadp_lab.methods.base.VisionStates` of image ``index``'s CLIP views, one per row."""
        from ..methods.base import VisionStates
        from .layouts import _crops_per_image, _packed_coordinates

        config = self.model.config
        bound, output = captured
        states = getattr(output, "hidden_states", None)
        feature_layer = config.vision_feature_layer
        if states is None or not isinstance(feature_layer, int) or states[feature_layer] is None:
            raise ValueError(f"{self.method}: the vision tower's states were not recorded")
        if self.family == "llava":
            views, patches = [index], None
        else:  # AnyRes: each row is one view (base, tiles); a tile cut by unpadding keeps some of its patches
            sizes = bound["image_sizes"].tolist()
            crops = _crops_per_image(self.inner, config, sizes, bound.get("batch_num_images"))
            coords = _packed_coordinates(self.inner, config, sizes[index], crops[index])
            side = config.vision_config.image_size // config.vision_config.patch_size
            first = sum(crops[:index])
            views = [first + int(coords[idx[0], 0]) for idx in layout.rows]
            patches = [(coords[idx, 1] * side + coords[idx, 2]).long() for idx in layout.rows]
        pick = torch.tensor(views, device=states[feature_layer].device)
        return VisionStates({k: v[pick.to(v.device)] for k, v in recorded.items()}, states[feature_layer][pick],
                            self._encoder_layers(), self.inner.multi_modal_projector, feature_layer, cls=True,
                            patches=patches)

    def _qwen_vision_states(self, index, bound, recorded):
        """:class:`~eadp_lab.methods.base.VisionStates` of Qwen image ``index``: its patches' stretch of the ViT
        call, the blocks' chunks within it, the order the blocks see its merged tokens (Qwen2.5-VL: window
        order; Qwen3-VL: raster order, every block attending over the whole frame) and the query count its
        published score averages over (Qwen2.5-VL: the whole call's patches; Qwen3-VL: one frame's)."""
        from ..methods.base import VisionStates, WindowedStates
        from ..methods.hiprune import qwen_window_index

        vision_config = self.model.config.vision_config
        grid = bound["image_grid_thw"]
        sizes = [int(t * h * w) for t, h, w in grid.tolist()]
        p0, p1 = sum(sizes[:index]), sum(sizes[:index + 1])
        inputs, chunks, rotary, total = {}, {}, None, 0
        for block, (hidden, cu_seqlens, position_embeddings) in recorded.items():
            bounds = cu_seqlens.to(torch.long)
            inside = bounds[(bounds >= p0) & (bounds <= p1)] - p0
            inputs[block], chunks[block] = hidden[p0:p1], torch.unique_consecutive(inside)
            rotary = tuple(t[p0:p1] for t in position_embeddings)
            total = hidden.shape[0]
        m = vision_config.spatial_merge_size
        t, h, w = (int(v) for v in grid[index].tolist())
        if self.family == "qwen3_vl":  # no windows: raster order; scores averaged over the frame's own queries
            window_index, total = torch.arange(t * (h // m) * (w // m)), h * w
        else:
            window_index, _ = qwen_window_index(grid[index:index + 1].cpu(), vision_config.window_size,
                                                vision_config.patch_size, m)
        windows = WindowedStates(chunks, rotary, window_index, (t, h, w), m * m, total)
        return VisionStates(inputs, None, self._encoder_layers(), None, cls=False, windows=windows)

    def _encoder_layers(self) -> list:
        if self.is_qwen:
            return list(self.inner.visual.blocks)
        tower = self.inner.vision_tower
        encoder = getattr(tower, "encoder", None) or getattr(getattr(tower, "vision_model", None), "encoder", None)
        if encoder is None or not hasattr(encoder, "layers"):
            raise ValueError(f"{self.method}: the vision tower {type(tower).__name__} has no encoder layers to read")
        return list(encoder.layers)

    def _record_vision_inputs(self, index: int):
        """A pre-hook recording encoder layer ``index``'s input (Qwen: with its chunks and rotary)."""
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if self.is_qwen:
                cu_seqlens = kwargs["cu_seqlens"] if "cu_seqlens" in kwargs else args[1]
                self._vision_inputs[index] = (hidden, cu_seqlens, kwargs["position_embeddings"])
            else:
                self._vision_inputs[index] = hidden
        return hook

    def _kept(self, layout, result, feats) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept token indices of an item (ascending) and the features the LM receives for them."""
        feats_out = feats
        chosen = []
        for r, idx in enumerate(layout.rows):
            if result.merged is not None:
                q = int(result.quotas[r])
                # merged tokens that stand for no single token (VisionZip) take the row's first places
                cells = idx[:q] if result.extra.get("placement") == "leading" else idx[result.picks[r, :q].cpu()]
                feats_out = feats_out.clone() if feats_out is feats else feats_out
                feats_out[cells.to(feats.device)] = result.merged[r, :q].to(feats.dtype)
                chosen.append(cells)
            else:
                chosen.append(idx[result.keep_mask[r, : len(idx)].cpu()])
        kept = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
        lines = []
        if self.newlines == "all":
            lines = [k for k, _ in layout.newlines]
        elif self.newlines == "rows":
            kept_set = set(kept.tolist())
            lines = [k for k, line in layout.newlines if any(int(i) in kept_set for i in line)]
        extra = torch.tensor(lines + list(layout.always), dtype=torch.long)
        kept = torch.unique(torch.cat([kept, extra]))  # sorted
        return kept, feats_out[kept.to(feats.device)]

    def _deepstack_kept(self, layout: ItemLayout, result: PruneResult, layers: list[torch.Tensor],
                        settings) -> list[torch.Tensor]:
        """Qwen3-VL: per DeepStack layer, the ``(k, D)`` features of the item's kept tokens, row for row those the
        language model receives (``layers``: per layer ``(T, D)``, indexed as the item's main features).

        A selection keeps the kept tokens' own features in every layer (the same indices). A method that
        merges (``pool``) merges every layer's features as it merged the main ones; its merge must depend on
        the grid alone (the same cells from any features), which is checked: a merge that would differ is
        refused with a ``RuntimeError`` naming the method."""
        out = []
        for feats in layers:
            if result.merged is None:
                out.append(self._kept(layout, result, feats)[1])
                continue
            with torch.no_grad():
                again = self._prune_item(feats.detach(), layout, None, settings)
            if again.merged is None or not torch.equal(again.picks.cpu(), result.picks.cpu()):
                raise RuntimeError(f"{self.method} merges tokens by their features: its merge of Qwen3-VL's DeepStack "
                                   "features would not match the merged tokens the language model receives")
            out.append(self._kept(layout, again, feats)[1])
        return out

    def _container(self, modality, kept_items, kept_deepstack=None, output_class=None):
        """What ``mm_encoder_outputs[modality]`` holds for the kept tokens: ``pooler_output`` in the family's
        packing and, for Qwen3-VL, ``deepstack_features`` (per layer, per item ``(k, D)``) in ``output_class``."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        out = kept_items
        if modality == "video" and self.family == "llava_onevision":
            out = torch.cat(kept_items)[None]  # the model flattens (1, sum k, D)
        elif modality == "video" and self.family == "llava_next_video":
            out = [t[None] for t in kept_items]  # the model flattens each (1, k, D)
        if kept_deepstack is not None:
            layers = len(kept_deepstack[0]) if kept_deepstack else 0
            deepstack = [tuple(item[j] for item in kept_deepstack) for j in range(layers)]
            return output_class(pooler_output=tuple(out), deepstack_features=deepstack)
        return BaseModelOutputWithPooling(pooler_output=out)

    def _visual_items(self, ids, mm):
        """Per modality: the items' features, their layouts and their placeholders' ``(sample, column)``."""
        out = []
        for modality in ("image", "video"):
            found = mm.get(modality)
            if found is None:
                continue
            token_id = getattr(self.model.config, f"{modality}_token_id")
            items = self._items(found.pooler_output)
            where = (ids == token_id).nonzero()  # row-major: the order masked_scatter fills
            if len(where) != sum(len(t) for t in items):
                raise ValueError(f"{len(where)} {modality} placeholders for {sum(len(t) for t in items)} features "
                                 "(beam search and num_return_sequences > 1 are not supported with pruning)")
            starts, samples = [0], []
            for t in items:
                samples.append(int(where[starts[-1], 0]))
                starts.append(starts[-1] + len(t))
            layouts = item_layouts(self.family, self.inner, modality, [len(t) for t in items], samples,
                                   self._captured.get(modality))
            out.append((modality, items, layouts, [where[a:b] for a, b in zip(starts, starts[1:])]))
        return out

    def _prefill_llm(self, kwargs):
        """An in-LLM method's prefill: the prompt goes to the language model whole; the decoder hooks prune
        (each sample keeps its items' budgets: :meth:`_budget` tokens per row, the rule every method follows,
        at most the item's tokens)."""
        ids = kwargs["input_ids"]
        mm = self._encode(kwargs)
        keep = [0] * ids.shape[0]
        visual = torch.zeros_like(ids, dtype=torch.bool)
        record = CallRecord(length_before=int(ids.shape[1]))
        for modality, items, layouts, wheres in self._visual_items(ids, mm):
            for feats, layout, where in zip(items, layouts, wheres):
                visual[where[:, 0], where[:, 1]] = True
                n = len(feats)
                keep[layout.sample] += min(n, self._budget(layout) * len(layout.rows))  # the other methods' rule
                record.items.append(ItemRecord(modality, layout.sample, None, n, n, torch.arange(n), None, layout,
                                               [], columns=where[:, 1].cpu()))
        self.decoder.plan.begin(keep)
        self.decoder.prompt_visual = visual
        kwargs["mm_encoder_outputs"] = mm
        record.length_after = record.length_before
        self._pending = record
        self.history = (self.history + [record])[-self.keep_history:]
        return kwargs

    def _finish_llm(self, module, args, output):
        """After an in-LLM prefill: each item's kept tokens, from what the last drop kept."""
        record, self._pending = self._pending, None
        if record is None or not self.decoder.records:
            return None
        stages = self.decoder.records[-1]["stages"]
        if not stages:
            return None
        record.length_after = stages[-1]["length_after"]
        depth = len(self.decoder.layers)
        before = self.decoder.records[-1]["visual_before"]
        record.visual_per_layer = []
        for b, count in enumerate(before):
            per_layer = [count] * depth
            for stage in stages:
                per_layer[stage["layer"]:] = [stage["visual_after"][b]] * (depth - stage["layer"])
            record.visual_per_layer.append(per_layer)
        record.seconds = sum(s["note"].get("seconds", 0.0) for s in stages)
        settings = next(iter(self._settings.values()))
        items_of = Counter(item.sample for item in record.items)
        for item in record.items:
            kept_columns = stages[-1]["kept_origin"][item.sample].cpu()
            kept = torch.isin(item.columns, kept_columns).nonzero().squeeze(1)
            # what the last layers see: the kept tokens, and the merged ones of a one-item sample (SparseVLM)
            seen = stages[-1]["visual_after"][item.sample] if items_of[item.sample] == 1 else len(kept)
            item.kept, item.tokens_after = kept, int(seen)
            item.result = selection_result(self.method, settings, int(len(kept)), kept[None], item.tokens_before)
        return None

    def _prefill(self, kwargs):
        import time

        if self.stage == "llm":
            return self._prefill_llm(kwargs)
        ids = kwargs["input_ids"]
        B, L = ids.shape
        mask_in = kwargs.get("attention_mask")
        if mask_in is not None and mask_in.ndim != 2:
            raise ValueError("a 4-D attention mask (static or compiled cache) cannot be pruned")
        mask = torch.ones_like(ids) if mask_in is None else mask_in.to(ids.device).long()
        mm = self._encode(kwargs)
        start = time.perf_counter()  # the method's own cost: after the vision tower
        previous = self._previous_prompt
        if previous is not None and L > previous[0].shape[1] and torch.equal(ids[:, : previous[0].shape[1]], previous[0]):
            instructions = previous[1]  # generate without a cache re-sends prompt + new tokens: same instruction
        else:
            instructions = [self._instruction(ids[b], mask[b], b) for b in range(B)]
        self._previous_prompt = (ids, instructions)
        text_cache: dict[int, object] = {}
        keep = mask.bool().clone()
        new_mm, record = {}, CallRecord(length_before=L)
        for modality, items, layouts, wheres in self._visual_items(ids, mm):
            settings = self._settings[modality]
            deepstack = _deepstack_items(mm[modality], [len(t) for t in items])
            kept_items, kept_deepstack = [], []
            for i, (feats, layout) in enumerate(zip(items, layouts)):
                b = layout.sample
                text = None
                if METHODS[self.method].text_guided:
                    if b not in text_cache:
                        instruction, span = instructions[b]
                        if instruction is not None or isinstance(self.scorer, CLIPScorer):
                            if instruction is None:
                                raise ValueError("no instruction text for CLIP scoring")
                            text_cache[b] = self.scorer.text(instruction)
                        else:
                            text_cache[b] = self.scorer.text(ids=span)
                    text = text_cache[b]
                vision = self._vision_states(modality, i, layout) if self.stage == "vision" else None
                with torch.no_grad():
                    result = self._prune_item(feats.detach(), layout, text, settings, vision)
                kept, kept_feats = self._kept(layout, result, feats)
                kept_items.append(kept_feats)
                if deepstack is not None:
                    kept_deepstack.append(self._deepstack_kept(layout, result, deepstack[i], settings))
                positions = wheres[i]
                drop = torch.ones(len(feats), dtype=torch.bool)
                drop[kept] = False
                keep[positions[drop.to(positions.device), 0], positions[drop.to(positions.device), 1]] = False
                record.items.append(ItemRecord(
                    modality, b, instructions[b][0], len(feats), len(kept), _sources(layout, result, kept), result,
                    layout, [] if text is None else text.tokens,
                ))
            new_mm[modality] = self._container(modality, kept_items, kept_deepstack if deepstack is not None else None,
                                               type(mm[modality]))
        self.instructions = None
        record.kept_columns = keep
        kwargs = self._shorten(kwargs, ids, mask, mask_in, keep)
        kwargs["mm_encoder_outputs"] = new_mm
        record.length_after = int(kwargs["input_ids"].shape[1])
        record.seconds = time.perf_counter() - start
        self.history = (self.history + [record])[-self.keep_history:]
        return kwargs

    def _shorten(self, kwargs, ids, mask, mask_in, keep):
        """Gather the kept columns of every sample, left-padded again; fix positions."""
        B, L = ids.shape
        counts = keep.sum(1)
        Lp = int(counts.max())
        index = torch.zeros(B, Lp, dtype=torch.long, device=ids.device)
        new_mask = torch.zeros(B, Lp, dtype=torch.long, device=ids.device)
        for b in range(B):
            cols = keep[b].nonzero().squeeze(1)
            index[b, Lp - len(cols):] = cols
            new_mask[b, Lp - len(cols):] = 1
        pad = self.model.config.get_text_config().pad_token_id or 0
        kwargs["input_ids"] = torch.where(new_mask.bool(), ids.gather(1, index), torch.full_like(index, pad))
        dropped = mask.sum(1) - counts
        renumbered = (new_mask.cumsum(-1) - 1).masked_fill(new_mask == 0, 0)
        position_ids = kwargs.get("position_ids")
        if self.is_qwen:
            if position_ids is None:  # plain forward: the 3-D positions of the unpruned sequence
                if kwargs.get("mm_token_type_ids") is None:
                    raise ValueError(f"{type(self.model).__name__} pruning needs mm_token_type_ids (the processor "
                                     "returns them)")
                captured = {k: v for k, v in kwargs.items() if k.endswith("grid_thw") or k == "second_per_grid_ts"}
                thw, deltas = self.inner.get_rope_index(
                    ids, mm_token_type_ids=kwargs["mm_token_type_ids"], attention_mask=mask, **captured)
            else:  # generate computed [text; t; h; w] on the unpruned prompt
                thw = position_ids[1:] if position_ids.shape[0] == 4 else position_ids
                deltas = self.inner.rope_deltas
            kept_thw = thw.gather(2, index[None].expand(3, -1, -1)).masked_fill(new_mask[None] == 0, 1)
            kwargs["position_ids"] = torch.cat([renumbered[None], kept_thw], 0)
            if deltas is not None:  # for decoding without explicit positions
                self.inner.rope_deltas = deltas + dropped.view(-1, 1).to(deltas)
            if kwargs.get("mm_token_type_ids") is not None:
                kwargs["mm_token_type_ids"] = kwargs["mm_token_type_ids"].gather(1, index) * new_mask
        elif self.positions == "renumber":
            kwargs["position_ids"] = renumbered
        else:
            original = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0) if position_ids is None else position_ids
            kwargs["position_ids"] = original.gather(1, index).masked_fill(new_mask == 0, 1)
        all_ones = bool(new_mask.all())
        kwargs["attention_mask"] = None if (all_ones and mask_in is None) else new_mask
        self._state = dict(length=L, mask=new_mask, dropped=dropped, all_ones=all_ones)
        return kwargs

    # ------------------------------------------------------------------ decode
    def _decode(self, kwargs):
        state = self._state
        ids = kwargs.get("input_ids")
        q = ids.shape[1] if ids is not None else kwargs["inputs_embeds"].shape[1]
        cache = kwargs.get("past_key_values")
        total = cache.get_seq_length() + q
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.ndim == 2:  # generate's mask counts the unpruned prompt
            kwargs["attention_mask"] = torch.cat([state["mask"], mask[:, state["length"]:].to(state["mask"])], 1)[:, :total]
        elif mask is None and not state["all_ones"]:
            width = state["mask"].shape[1]
            kwargs["attention_mask"] = torch.cat(
                [state["mask"], state["mask"].new_ones(state["mask"].shape[0], total - width)], 1)
        position_ids = kwargs.get("position_ids")
        if position_ids is not None:
            shift = state["dropped"].to(position_ids.device).view(-1, 1)
            if self.is_qwen:
                if position_ids.shape[0] == 4:
                    position_ids = position_ids.clone()
                    position_ids[0] = position_ids[0] - shift
            elif self.positions == "renumber":
                position_ids = position_ids - shift
            kwargs["position_ids"] = position_ids
        return kwargs


def _deepstack_items(output, sizes: list[int]) -> list[list[torch.Tensor]] | None:
    """Qwen3-VL's DeepStack features of a ``get_*_features`` output, per item: ``[item][layer]`` ``(n_i, D)``
    (``sizes``: the items' ``n_i``); ``None`` for a model without them."""
    layers = getattr(output, "deepstack_features", None)
    if layers is None:
        return None
    split = [list(layer) if isinstance(layer, (list, tuple)) else list(torch.split(layer, sizes)) for layer in layers]
    for layer in split:
        if [len(t) for t in layer] != sizes:
            raise RuntimeError(f"DeepStack features of {[len(t) for t in layer]} tokens for items of {sizes}")
    return [[layer[i] for layer in split] for i in range(len(sizes))]


def _sources(layout: ItemLayout, result: PruneResult, kept: torch.Tensor) -> torch.Tensor:
    """The item's tokens its kept tokens come from: ``kept`` itself, except for merged tokens placed first
    (VisionZip), whose sources are the patches the method picked (ascending)."""
    if result.extra.get("placement") != "leading":
        return kept
    parts = [idx[result.picks[r][result.picks[r] >= 0].cpu()] for r, idx in enumerate(layout.rows)]
    return torch.unique(torch.cat(parts)) if parts else kept


def special_token_ids(model) -> set[int]:
    """Token ids an LLM-space scorer never scores: visual placeholders, start, end and padding."""
    config = model.config
    ids = {getattr(config, k, None) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                              "vision_end_token_id")}
    text_config = config.get_text_config()
    ids |= {getattr(text_config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return {i for i in ids if isinstance(i, int)}


def item_inputs(feats: torch.Tensor, layout: ItemLayout, text, scorer, require_vision: bool = True,
                vision=None) -> PruneInputs:
    """The :class:`PruneInputs` of one image or video: its rows (crops, frames) padded to ``N``.

    Args:
        feats: ``(T, D)`` the item's projected features, indexed by ``layout.rows``.
        layout: the item's :class:`ItemLayout` (rows, grids, CLIP vision states).
        text: the instruction's ``TextEmbeddings`` or ``None``.
        scorer: the pruner's scorer; a :class:`CLIPScorer` turns ``layout.vision`` into ``image_embeds``.
        require_vision: raise when a CLIP scorer has no vision states for the item.
        vision: the item's :class:`~eadp_lab.methods.base.VisionStates` (methods that read the vision
            encoder's attention), or ``None``.
    Returns:
        ``features`` ``(R, N, D)``, ``image_embeds`` ``(R, N, C)`` or ``None``, the text tensors on
        the features' device, and the rows' grids (a list when they differ).
    """
    N = max(len(r) for r in layout.rows)
    R = len(layout.rows)
    F = feats.new_zeros(R, N, feats.shape[-1])
    for r, idx in enumerate(layout.rows):
        F[r, : len(idx)] = feats[idx.to(feats.device)]
    V = None
    if layout.vision is not None and isinstance(scorer, CLIPScorer):
        V_rows = [scorer.image_embeds(v) for v in layout.vision]
        V = V_rows[0].new_zeros(R, N, V_rows[0].shape[-1])
        for r, v in enumerate(V_rows):
            V[r, : len(v)] = v
    elif isinstance(scorer, CLIPScorer) and require_vision:
        raise ValueError(f"scoring='clip' has no CLIP vision states for this {layout.modality} "
                         "(an interpolated OneVision grid or a non-CLIP tower): use scoring='llm'")
    ragged = any(g[0] * g[1] != N for g in layout.grids) or len(set(layout.grids)) > 1
    return PruneInputs(
        features=F, image_embeds=V.to(F.device) if V is not None else None,
        text_embeds=None if text is None or text.global_ is None else text.global_.to(F.device),
        text_embeds_seq=None if text is None else text.dense.to(F.device),
        text_mask=None if text is None else text.mask.to(F.device),
        grid=list(layout.grids) if ragged else layout.grids[0], rows_per_image=(R,), vision=vision,
    )


def attach(model, method: str = "eadp", budget: int | float = 64, scoring: str = "llm", settings=None, **kwargs) -> Pruner:
    """Make ``model(**inputs)`` and ``model.generate(**inputs)`` prune visual tokens before the
    language model. Use as a context manager, or call ``.remove()``: the model is then exactly as
    before (removing twice is harmless). Every argument, the settings and their overrides are
    checked here, not at the first call (``ValueError`` naming the bad one); a model that already
    has a live pruner raises ``RuntimeError`` (remove that one first: :func:`attached` returns it).

    Args:
        model: a ``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``,
            ``LlavaNextVideoForConditionalGeneration``, ``LlavaOnevisionForConditionalGeneration``,
            ``Qwen2_5_VLForConditionalGeneration`` or ``Qwen3VLForConditionalGeneration`` (transformers
            5.x; Qwen3-VL's DeepStack features follow the kept tokens; its MoE sibling is not supported).
            Any other class is refused with a ``ValueError`` naming it.
        method: a registry name (``eadp``, ``topk``, ``topk_dense``, ``random``, ``pool``,
            ``divprune``, ``cdpruner``, ``none``; in the vision encoder ``visionzip`` and ``hiprune``;
            inside the language model ``fastv``, ``pyramiddrop``, ``dart``, ``sparsevlm``). The
            vision-encoder methods prune images of LLaVA-1.5 and, per AnyRes view, of LLaVA-NeXT and
            NeXT-Video; HiPrune also Qwen2.5-VL and Qwen3-VL images (its published Qwen variants,
            :class:`~eadp_lab.methods.hiprune.HiPruneQwenSettings`); elsewhere (VisionZip on Qwen2.5-VL,
            Qwen3-VL or OneVision, HiPrune on OneVision: no [CLS] token; videos) they are refused with a
            ``ValueError`` naming the method and the model class (see :mod:`eadp_lab.methods.in_vision`).
            The in-LLM methods prune one contiguous run of visual tokens per sample, as published: a
            Qwen3-VL video (its frames separated by timestamp text) is refused when it is called.
        budget: tokens kept per row (image, AnyRes crop, video frame) before EADP's
            allocation across an image's crops; a float in (0, 1] keeps that fraction. On
            AnyRes images DivPrune spends the image's rows' budgets in one joint selection
            over all its crops, and CDPruner min-max normalises its relevance over all of
            them, as their authors' LLaVA-1.6 code does (``scope="per_row"`` and
            ``normalisation="per_row"`` select and normalise per crop); ``image_newline``
            tokens are never selected, ``newlines`` decides which are kept.
        scoring: ``"clip"`` (LLaVA families; give ``clip=`` a ``CLIPModel`` with
            ``clip_tokenizer=``, or a hub id or path) or ``"llm"`` (the language model's
            input embeddings; any model).
        settings: the method's settings (e.g. ``eadp_lab.preset("llava-1.5")``), or a dict
            ``{"image": ..., "video": ...}``; default: the paper-faithful preset of the
            model family (:data:`DEFAULT_PRESETS`), with the similarity sign the CLIP declares
            (``eadp_similarity_sign`` in its config, as the lab CLIP does; real CLIPs declare none
            and keep the published -1).
        **kwargs: ``tokenizer`` (the VLM's, to read each prompt's instruction),
            ``positions`` (``"renumber"`` kept tokens contiguously, or keep the ``"original"``
            1-D positions; Qwen2.5-VL and Qwen3-VL always keep their 3-D ones), ``newlines`` (AnyRes
            ``image_newline`` tokens: keep those of ``"rows"`` that keep a token, ``"all"``
            or ``"none"``), ``text_positions``, ``keep_history``, and overrides of the
            method's settings (e.g. ``alpha=0.3``).
    """
    return Pruner(model, method=method, budget=budget, scoring=scoring, settings=settings, **kwargs)
