"""The shared vocabulary of every pruning method: inputs, result, registry and :func:`prune`.

A method takes the visual tokens of a batch of *rows* (images, crops or frames; the crops
or frames of one image are consecutive rows) and returns which tokens the language model
keeps. Methods are plain functions registered by name, so any of them can be compared in
one process; settings are frozen dataclasses serialised with every result. Taught in
``notebooks/00_tour``.

Shapes: ``R`` rows, ``N`` tokens per row, ``D`` selection width, ``C`` scoring width,
``I`` images (``I == R`` unless images have several crops or frames), ``M`` text queries
per image, ``L`` text positions, ``T`` picks per row.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .._checks import (as_int, check_budget, check_choice, check_finite, check_ndim, check_same,
                       checked_replace)
from ..select import gather_kept, keep_mask_from_picks

__all__ = ["PruneInputs", "PruneResult", "Method", "METHODS", "register", "prune", "resolve_settings", "stable_topk",
           "PRECISIONS", "precision_dtype"]


@dataclass
class WindowedStates:
    """One Qwen2.5-VL image as its windowed ViT saw it (for HiPrune's Qwen variant).

    The ViT's blocks run on the patches of a whole call laid end to end in *window order* (each
    window's patches together; every ``merge_unit`` consecutive patches make one merged token);
    these are the image's own ``S_i`` patches, a contiguous stretch of that order.

    Attributes:
        cu_seqlens: ``{block: (w + 1,) long}`` the block's attention chunks (windows, or frames in a
            full-attention block) in the image's patches, ``[0, ..., S_i]``.
        position_embeddings: ``(cos, sin)``, each ``(S_i, Dh)``, the blocks' rotary embeddings.
        window_index: ``(S_i / merge_unit,)`` long, the merged token (raster index within the image) at
            each position of the window order.
        grid_thw: ``(t, h, w)`` the image's patches; merged grid ``(h / m, w / m)``.
        merge_unit: patches per merged token (``spatial_merge_size ** 2``).
        total_patches: ``S`` of the whole ViT call (the published score averages over all its query rows).
    """

    cu_seqlens: dict
    position_embeddings: tuple
    window_index: torch.Tensor
    grid_thw: tuple[int, int, int]
    merge_unit: int = 4
    total_patches: int = 0


@dataclass
class VisionStates:
    """A row batch's vision encoder, for the methods that read its attention (``stage="vision"``).

    Attributes:
        inputs: ``{layer: (R, S, C)}`` the input of each encoder layer a method needs (0-based), as the
            model computed them; ``S = 1 + P`` with a [CLS] token at 0 when ``cls``, ``P`` the patches of
            one view (crop). Qwen2.5-VL (``windows``): ``{block: (S_i, C)}``, the image's patches in window
            order.
        output: ``(R, S, C)`` the states the model reads (its ``vision_feature_layer``, before [CLS] is cut);
            ``None`` on Qwen2.5-VL.
        layers: the encoder's layer modules (their count is the encoder's depth).
        project: maps vision states ``(R, T, C)`` to what the language model receives ``(R, T, D)``.
        feature_layer: the ``hidden_states`` index the model reads (LLaVA's ``vision_feature_layer``, -2).
        cls: whether position 0 of every state is a [CLS] token.
        patches: per row, ``(N_r,)`` long: the view's patch (``0..P-1``, [CLS] excluded) behind each of the
            row's tokens, in the row's order; ``None``: row ``r``'s tokens are its view's ``P`` patches in
            order (LLaVA-1.5). AnyRes tiles cut by unpadding keep only some of their view's patches.
        windows: :class:`WindowedStates` of a Qwen2.5-VL image, else ``None``.
    """

    inputs: dict
    output: torch.Tensor | None
    layers: Any
    project: Callable | None
    feature_layer: int = -2
    cls: bool = True
    patches: list | None = None
    windows: WindowedStates | None = None

    def rows(self, rows: slice) -> "VisionStates":
        """The states of some rows (a Qwen2.5-VL image is one unit: itself)."""
        if self.windows is not None:
            return self
        return dataclasses.replace(self, inputs={k: v[rows] for k, v in self.inputs.items()},
                                   output=None if self.output is None else self.output[rows],
                                   patches=None if self.patches is None else self.patches[rows])

    @property
    def depth(self) -> int:
        return len(self.layers)

    def read_layer(self) -> int:
        """The index of the encoder layer whose output the model reads (``vision_feature_layer``)."""
        return read_layer(self.depth, self.feature_layer)

    def input_of(self, layer: int, method: str) -> torch.Tensor:
        """``(R, S, C)`` the input of encoder layer ``layer``; ``ValueError`` naming ``method`` if it was not kept."""
        if layer not in self.inputs:
            raise ValueError(f"{method} needs the input of vision layer {layer}, which was not recorded")
        return self.inputs[layer]

    def row_patches(self, num_tokens: int) -> list[torch.Tensor]:
        """Per row, ``(N_r,)`` long: the view patch behind each row token (``patches``, or ``0..num_tokens-1``)."""
        if self.patches is not None:
            return list(self.patches)
        return [torch.arange(num_tokens)] * self.output.shape[0]


def read_layer(depth: int, feature_layer: int) -> int:
    """The 0-based encoder layer whose output is ``hidden_states[feature_layer]`` of a ``depth``-layer encoder
    (``hidden_states`` holds the embeddings, then every layer's output: ``-2`` is layer ``depth - 2``)."""
    layer = feature_layer % (depth + 1) - 1
    if not 0 <= layer < depth:
        raise ValueError(f"vision_feature_layer {feature_layer} is not the output of one of {depth} encoder layers")
    return layer


@dataclass
class PruneInputs:
    """What a pruning method may look at, for a batch of rows.

    Attributes:
        features: ``(R, N, D)`` selection features ``F`` (what the language model receives).
        image_embeds: ``(R, N, C)`` scoring embeddings ``V``; ``None`` scores in ``features``'
            space (the Qwen2.5-VL setting).
        text_embeds: ``(I, M, C)`` global text embeddings ``g``; ``None``: the masked mean of
            ``text_embeds_seq`` (the published Qwen2.5-VL rule).
        text_embeds_seq: ``(I, M, L, C)`` dense text embeddings ``S``.
        text_mask: ``(I, M, L)`` bool, True on the positions that are scored.
        grid: ``(H, W)`` token grid of each row; ``None``: square, from ``N``. A list of one
            ``(H_r, W_r)`` per row makes the rows *ragged*: row ``r`` holds ``H_r * W_r <= N``
            real tokens first, in raster order, and padding after them (AnyRes tiles cut by
            unpadding, crops of different sizes). Padding is never kept and carries no importance.
        rows_per_image: rows of each image, consecutive; ``None``: one row per image.
        vision: the rows' vision encoder (:class:`VisionStates`), for the methods that read its
            attention (VisionZip, HiPrune); ``None`` otherwise.
    """

    features: torch.Tensor
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    text_embeds_seq: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    grid: tuple[int, int] | list[tuple[int, int]] | None = None
    rows_per_image: tuple[int, ...] | None = None
    vision: VisionStates | None = None

    def __post_init__(self):
        check_ndim("features", self.features, 3, "(R, N, D)")
        check_finite("features", self.features)
        R, N, _ = self.features.shape
        if N == 0:
            raise ValueError("features has no visual tokens (N = 0)")
        if self.image_embeds is not None:
            check_ndim("image_embeds", self.image_embeds, 3, "(R, N, C)")
            check_same("(R, N)", features=tuple(self.features.shape[:2]), image_embeds=tuple(self.image_embeds.shape[:2]))
            check_finite("image_embeds", self.image_embeds)
        if self.rows_per_image is None:
            self.rows_per_image = (1,) * R
        self.rows_per_image = tuple(int(k) for k in self.rows_per_image)
        if sum(self.rows_per_image) != R or min(self.rows_per_image) < 1:
            raise ValueError(f"rows_per_image {self.rows_per_image} must be positive and add up to the {R} rows of features")
        if self.text_embeds_seq is not None:
            check_ndim("text_embeds_seq", self.text_embeds_seq, 4, "(I, M, L, C)")
            check_finite("text_embeds_seq", self.text_embeds_seq)
            check_same("I (images)", rows_per_image=self.num_images, text_embeds_seq=self.text_embeds_seq.shape[0])
            if self.text_mask is not None:
                check_same("text mask shape", text_embeds_seq=tuple(self.text_embeds_seq.shape[:3]),
                           text_mask=tuple(self.text_mask.shape))
                self.text_mask = self.text_mask.bool()
        elif self.text_mask is not None:
            raise ValueError("text_mask given without text_embeds_seq")
        if self.text_embeds is not None:
            check_ndim("text_embeds", self.text_embeds, 3, "(I, M, C)")
            check_finite("text_embeds", self.text_embeds)
            check_same("I (images)", rows_per_image=self.num_images, text_embeds=self.text_embeds.shape[0])
        if isinstance(self.grid, list):
            self.grid = [_grid_pair(g, self.grid, "one (H, W) pair of integers >= 1 per row") for g in self.grid]
            if len(self.grid) != R:
                raise ValueError(f"grid lists {len(self.grid)} row grids for {R} rows")
            if any(h * w > N for h, w in self.grid):
                raise ValueError(f"every row grid must hold between 1 and N = {N} tokens, got {self.grid}")
        elif self.grid is not None:
            self.grid = _grid_pair(self.grid, self.grid, "a pair (H, W) of integers >= 1")

    @property
    def num_rows(self) -> int:
        return self.features.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.features.shape[1]

    @property
    def num_images(self) -> int:
        return len(self.rows_per_image)

    @property
    def scoring_embeds(self) -> torch.Tensor:
        """``(R, N, C)``: ``image_embeds``, or ``features`` when scoring in LLM space."""
        return self.features if self.image_embeds is None else self.image_embeds

    def require_vision(self, method: str, cls: bool = True) -> VisionStates:
        """The vision encoder's states; ``ValueError`` naming ``method`` if they are missing, or have no [CLS]
        when ``cls``."""
        if self.vision is None:
            raise ValueError(f"{method} reads the vision encoder's attention: attach it to a model "
                             "(eadp_lab.attach), or give PruneInputs.vision")
        if cls and not self.vision.cls:
            raise ValueError(f"{method} needs a [CLS] token, which this vision encoder does not have")
        return self.vision

    def require_text(self, method: str) -> None:
        """Raise unless the inputs carry an instruction with at least one text token."""
        if self.text_embeds_seq is None and self.text_embeds is None:
            raise ValueError(f"method {method!r} is text-guided: give text_embeds_seq (and/or text_embeds)")
        if self.text_embeds_seq is not None:
            if self.text_embeds_seq.shape[2] == 0 or (
                self.text_mask is not None and bool((self.text_mask.sum(-1) == 0).any())
            ):
                raise ValueError("text_embeds_seq has no text tokens for some image (empty instruction)")

    def per_row(self, tensor: torch.Tensor) -> torch.Tensor:
        """Repeat a per-image tensor ``(I, ...)`` to one entry per row ``(R, ...)``."""
        counts = torch.tensor(self.rows_per_image, device=tensor.device)
        return torch.repeat_interleave(tensor, counts, dim=0)

    def global_text(self) -> torch.Tensor:
        """``(I, M, C)``: ``text_embeds``, or the masked mean of ``text_embeds_seq``."""
        if self.text_embeds is not None:
            return self.text_embeds
        seq = self.text_embeds_seq.float()
        if self.text_mask is None:
            return seq.mean(2)
        mask = self.text_mask[..., None].float()
        return (seq * mask).sum(2) / mask.sum(2).clamp(min=1)

    @property
    def ragged(self) -> bool:
        """True when rows have their own grids (see ``grid``)."""
        return isinstance(self.grid, list)

    @property
    def token_counts(self) -> torch.Tensor:
        """``(R,)`` long: real tokens per row (``N`` unless the rows are ragged)."""
        if self.ragged:
            return torch.tensor([h * w for h, w in self.grid], device=self.features.device)
        return torch.full((self.num_rows,), self.num_tokens, device=self.features.device)

    @property
    def token_mask(self) -> torch.Tensor | None:
        """``(R, N)`` bool, True on real tokens; ``None`` when every row is full."""
        if not self.ragged:
            return None
        return torch.arange(self.num_tokens, device=self.features.device) < self.token_counts[:, None]

    def row_grids(self, strict: bool = True) -> list[tuple[int, int]] | None:
        """One ``(H, W)`` per row (see :meth:`resolved_grid` for the uniform case)."""
        if self.ragged:
            return list(self.grid)
        grid = self.resolved_grid(strict)
        return None if grid is None else [grid] * self.num_rows

    def resolved_grid(self, strict: bool = True) -> tuple[int, int] | None:
        """The rows' ``(H, W)`` grid: ``grid``, or square from ``N``.

        Raises if it does not match ``N`` and ``strict``; returns ``None`` then otherwise.
        """
        if self.ragged:
            raise ValueError("the rows are ragged: use row_grids()")
        N = self.num_tokens
        grid = self.grid
        if grid is None:
            side = math.isqrt(N)
            grid = (side, side) if side * side == N else None
        if grid is None or grid[0] * grid[1] != N:
            if strict:
                raise ValueError(
                    f"grid {self.grid} does not match N = {N} tokens per row; give grid=(H, W) "
                    "or set on_grid_mismatch='skip' to skip smoothing explicitly"
                )
            return None
        return grid

    def images(self, index: list[int] | None = None) -> list["PruneInputs"]:
        """The inputs of single images (their rows and text), one :class:`PruneInputs` each.

        Text positions masked out for every query of an image are dropped, so an image's
        inputs are the same whatever padding its batch needed. ``index``: which images
        (default all).
        """
        starts = [0]
        for k in self.rows_per_image:
            starts.append(starts[-1] + k)
        out = []
        for i in range(self.num_images) if index is None else index:
            rows = slice(starts[i], starts[i + 1])
            seq, mask = self.text_embeds_seq, self.text_mask
            if seq is not None:
                seq, mask = seq[i : i + 1], None if mask is None else mask[i : i + 1]
                if mask is not None:
                    used = mask[0].any(0)  # (L,)
                    seq, mask = seq[:, :, used], mask[:, :, used]
                    if bool(mask.all()):
                        mask = None
            out.append(PruneInputs(
                features=self.features[rows],
                image_embeds=None if self.image_embeds is None else self.image_embeds[rows],
                text_embeds=None if self.text_embeds is None else self.text_embeds[i : i + 1],
                text_embeds_seq=seq,
                text_mask=mask,
                grid=self.grid[rows] if self.ragged else self.grid,
                rows_per_image=(self.rows_per_image[i],),
                vision=None if self.vision is None else self.vision.rows(rows),
            ))
        return out

    def text_positions(self, image: int) -> torch.Tensor:
        """``(L_i,)`` original indices of the text positions kept by :meth:`images` for one image."""
        L = self.text_embeds_seq.shape[2]
        if self.text_mask is None:
            return torch.arange(L)
        return torch.nonzero(self.text_mask[image].any(0).cpu()).flatten()


def _grid_pair(pair, grid, allowed: str) -> tuple[int, int]:
    """``pair`` as ``(H, W)`` ints, or raise naming the whole ``grid`` given."""
    if isinstance(pair, (tuple, list, torch.Size)) and len(pair) == 2:
        hw = tuple(as_int(v) for v in pair)
        if all(v is not None and v >= 1 for v in hw):
            return hw
    raise ValueError(f"grid must be {allowed}, got {grid!r}")


@dataclass
class PruneResult:
    """What a method decided for a batch of rows, with everything a notebook wants to plot.

    Attributes:
        method: registry name; settings: the method's settings as a dict.
        budget: tokens per row asked for (per crop or frame before allocation).
        picks: ``(R, T)`` long, token indices in pick order; only the first ``quotas[r]``
            of row ``r`` count. For merging methods (``pool``), the token at the centre of
            each merged cell, in output order (for position ids).
        quotas: ``(R,)`` long, tokens kept per row.
        keep_mask: ``(R, N)`` bool, True on kept tokens.
        importance: ``(R, N)`` float32 score the method ranked by, or ``None``.
        merged: ``(R, T, D)`` output tokens of a merging method, ``None`` for selection.
        trace: method-specific intermediates, one per image (a list; see
            :class:`eadp_lab.methods.eadp.EADPTrace`), or ``None``.
    """

    method: str
    settings: dict
    budget: int
    picks: torch.Tensor
    quotas: torch.Tensor
    keep_mask: torch.Tensor
    importance: torch.Tensor | None = None
    merged: torch.Tensor | None = None
    trace: Any = None
    extra: dict = field(default_factory=dict)

    @staticmethod
    def concat(results: list["PruneResult"]) -> "PruneResult":
        """Stack per-image results into one batch result (picks padded with -1)."""
        first = results[0]
        T = max(r.picks.shape[1] for r in results)
        picks = torch.cat([torch.nn.functional.pad(r.picks, (0, T - r.picks.shape[1]), value=-1) for r in results])

        def cat(name):
            parts = [getattr(r, name) for r in results]
            return None if parts[0] is None else torch.cat(parts)

        traces = [t for r in results for t in (r.trace or [])]
        extra = {k: sum((r.extra[k] for r in results), []) if isinstance(v, list) else v
                 for k, v in first.extra.items()}
        return PruneResult(
            method=first.method, settings=first.settings, budget=first.budget, picks=picks,
            quotas=cat("quotas"), keep_mask=cat("keep_mask"), importance=cat("importance"),
            merged=cat("merged"), trace=traces or None, extra=extra,
        )

    @property
    def num_kept(self) -> int:
        return int(self.quotas.sum())

    def kept_indices(self, row: int) -> torch.Tensor:
        """Kept token indices of one row, ascending (``(quotas[row],)`` long)."""
        if self.merged is not None:
            return self.picks[row, : int(self.quotas[row])]
        return torch.nonzero(self.keep_mask[row]).flatten()

    def gather(self, features: torch.Tensor) -> torch.Tensor:
        """``(sum of quotas, D)``: the tokens the language model receives, row after row.

        Selection keeps ``features``' rows in their original order; merging methods return
        their merged tokens (``features`` must then be the ones they merged).
        """
        if self.merged is not None:
            return torch.cat([self.merged[r, : int(q)] for r, q in enumerate(self.quotas.tolist())])
        return gather_kept(features, self.keep_mask)


STAGES = ("projector", "vision", "llm")  # where a method prunes (see Method.stage)


@dataclass(frozen=True)
class Method:
    """A registered pruning method.

    ``stage`` says where it prunes: ``"projector"``, on the visual tokens the language model is
    about to receive (``run(inputs, budget, settings) -> PruneResult``, through :func:`prune`);
    ``"vision"``, the same but reading the vision encoder's attention (``inputs.vision``); ``"llm"``,
    inside the language model between decoder layers (``run(settings, budget, depth)`` returns an
    :class:`eadp_lab.models.decoder.DecoderPlan` that :func:`eadp_lab.attach` runs; :func:`prune`
    cannot run it on features alone).

    ``keeps_original_positions`` says whether every token the method feeds the language model stands
    at one original position of the image (a selection, or ``pool``'s cells at their centre token);
    ``False`` for a method whose merged tokens stand for no single position (VisionZip's, placed
    first): :func:`eadp_lab.attach` then refuses ``positions="original"``.
    """

    name: str
    run: Callable[..., Any]
    settings: type
    text_guided: bool
    reference: str
    stage: str = "projector"
    keeps_original_positions: bool = True


METHODS: dict[str, Method] = {}


def register(name: str, settings: type, text_guided: bool, reference: str, stage: str = "projector",
             keeps_original_positions: bool = True):
    """Decorator: register ``run`` under ``name`` (see :class:`Method` for what ``run`` is at each ``stage``
    and what ``keeps_original_positions`` means).

    A ``"projector"`` or ``"vision"`` ``run`` sees one image at a time (its crops or frames as rows);
    :func:`prune` batches.
    """
    check_choice("stage", stage, STAGES)

    def wrap(run):
        METHODS[name] = Method(name, run, settings, text_guided, reference, stage, keeps_original_positions)
        return run

    return wrap


def stable_topk(importance: torch.Tensor, k: int, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(R, k)`` indices of the ``k`` largest entries per row, descending, lowest index on ties;
    ``-1`` where a row has fewer than ``k`` real tokens (``token_mask``)."""
    score = importance.float()
    if token_mask is not None:
        score = score.masked_fill(~token_mask, -math.inf)
    picks = torch.argsort(score, dim=-1, descending=True, stable=True)[:, :k]
    if token_mask is not None:
        picks = picks.masked_fill(torch.arange(k, device=picks.device) >= token_mask.sum(-1, keepdim=True), -1)
    return picks


def selection_result(
    method: str, settings, budget: int, picks: torch.Tensor, num_tokens: int, quotas: torch.Tensor | None = None,
    **fields,
) -> PruneResult:
    """A :class:`PruneResult` from picks in pick order (quotas default to every valid pick)."""
    if quotas is None:
        quotas = (picks >= 0).sum(-1)
    return PruneResult(
        method=method,
        settings=dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings or {}),
        budget=budget,
        picks=picks,
        quotas=quotas,
        keep_mask=keep_mask_from_picks(picks, quotas, num_tokens),
        **fields,
    )


def resolve_settings(method: str, settings=None, overrides: dict | None = None):
    """The settings a registered method runs with: ``settings`` (its defaults if ``None``) checked to be
    of the method's settings class, with ``overrides`` applied (names and values checked)."""
    check_choice("method", method, METHODS)
    expected = METHODS[method].settings
    if settings is None:
        settings = expected()
    elif not isinstance(settings, expected):
        raise ValueError(f"settings for {method!r} must be a {expected.__name__}, got {type(settings).__name__}")
    return checked_replace(settings, method, dict(overrides or {}))


def prune(method: str, inputs: PruneInputs, budget: int, settings=None, **overrides) -> PruneResult:
    """Run a registered method on one batch.

    Args:
        method: a name of :data:`METHODS` (``none``, ``eadp``, ``topk``, ``topk_dense``,
            ``random``, ``pool``, ``divprune``, ``cdpruner``).
        inputs: the batch, as :class:`PruneInputs`.
        budget: tokens kept per row (per crop or frame; EADP may re-allocate them across
            an image's rows). A budget of ``N`` or more keeps every token, in order.
        settings: an instance of the method's settings dataclass (e.g. an
            :class:`~eadp_lab.config.EADPConfig` preset); ``None``: its defaults.
        **overrides: fields of the settings to change (an unknown name or a bad value is a
            ``ValueError`` naming it).
    Returns:
        A :class:`PruneResult`.
    """
    check_choice("method", method, METHODS)
    entry = METHODS[method]
    if entry.stage == "llm":
        raise ValueError(f"{method} prunes inside the language model, between decoder layers: attach it to a "
                         f"model (eadp_lab.attach(model, {method!r}, budget=...)); prune() works on features alone")
    budget = check_budget(budget)
    settings = resolve_settings(method, settings, overrides)
    if entry.text_guided:
        inputs.require_text(method)
    # One image at a time: an image's result never depends on the rest of its batch
    # (batched matmuls and convolutions round differently for different batch sizes).
    return PruneResult.concat([entry.run(image, budget, settings) for image in inputs.images()])


@dataclass(frozen=True)
class NoSettings:
    """A method without settings."""


PRECISIONS = ("float32", "input")  # the baselines' ``precision`` setting


def precision_dtype(precision: str) -> torch.dtype | None:
    """The dtype a baseline computes its cosines in: float32 for ``"float32"``, ``None`` (the
    inputs' own dtype, as the authors' code computes them) for ``"input"``."""
    check_choice("precision", precision, PRECISIONS)
    return torch.float32 if precision == "float32" else None


@register("none", NoSettings, text_guided=False, reference="no pruning: every visual token is kept")
def keep_all(inputs: PruneInputs, budget: int, settings: NoSettings, method: str = "none") -> PruneResult:
    """Keep every (real) token, in order (the unpruned model; also any ``method`` whose budget covers every
    token)."""
    R, N = inputs.num_rows, inputs.num_tokens
    picks = torch.arange(N, device=inputs.features.device).expand(R, N).clone()
    if inputs.ragged:
        picks = picks.masked_fill(~inputs.token_mask, -1)
    return selection_result(method, settings, budget, picks, N)
