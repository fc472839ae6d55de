"""Pruning inside the language model: visual tokens dropped (or merged) between decoder layers.

The seam of FastV, PyramidDrop, DART and SparseVLM. :class:`DecoderPruner` puts a forward
pre-hook on every decoder layer of the VLM's language model (no fork, no copied modeling code,
the model's attention implementation left as it is). A method is a :class:`DecoderPlan`: the
layers whose input it reads (:meth:`DecoderPlan.capture`) and the layers before which it
shortens the sequence (:meth:`DecoderPlan.drop`). At a drop point the hook gathers the rows
the plan keeps (and appends the rows it merged), and from there on hands every later layer the
matching attention mask and rotary position embeddings:

- **Positions.** Kept tokens keep their original rotary positions (their rows of the model's
  own ``cos``/``sin``), as FastV and DART publish; a plan with ``renumber=True`` gives the
  shortened sequence positions ``0 .. L'-1`` (PyramidDrop, SparseVLM as published). Qwen's 3-D
  M-RoPE positions are always kept (no published method renumbers them).
- **Mask.** The shortened rows keep causal order; samples of a batch that keep different counts
  are left-padded again, the padding masked.
- **Cache.** Layers before a drop point cache the whole prompt, later ones the shortened one; the
  cache's own length (layer 0) keeps counting the whole prompt, so ``generate`` runs unchanged. On
  every decode step the hook gives the later layers the mask of their shorter cache (and, when
  renumbered, the shifted positions).
- **DeepStack (Qwen3-VL).** The language model adds the vision encoder's intermediate features to the
  outputs of its first layers at the visual positions (``_deepstack_process``). After a drop, the
  hook hands that step the shortened rows' mask and the features of the visual tokens still there,
  the same indices in every injected layer (:func:`deepstack_rows`); a merged row (SparseVLM) stands
  for no single token and gets none.
- **Attention weights.** A plan that scores by attention gets it from :meth:`LayerView.attention`:
  that one layer's probabilities computed in eager form from its input (its norm, projections and
  rotary embedding), in float32, whatever implementation the model runs.

Supported attention implementations: ``eager`` and ``sdpa`` (the defaults); others are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods.decoder_plan import DecoderPlan, Drop, LayerView

__all__ = ["DecoderPlan", "Drop", "LayerView", "DecoderPruner", "language_model", "SUPPORTED_ATTENTION", "deepstack_rows"]

SUPPORTED_ATTENTION = ("eager", "sdpa")
_CLASS_METHOD = object()  # marks a wrapped method the instance did not own: remove() deletes the wrapper


def language_model(model):
    """The decoder stack of a VLM: its ``language_model`` (``layers``, ``rotary_emb``, ``norm``)."""
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    if lm is None or not hasattr(lm, "layers") or not hasattr(lm, "rotary_emb"):
        raise ValueError(f"{type(model).__name__} has no decoder stack this seam knows (model.model.language_model "
                         "with layers and rotary_emb)")
    return lm


@dataclass
class _Stage:
    """The sequence the layers from ``layer`` on see during one prefill (and their caches after it)."""

    layer: int
    valid: torch.Tensor  # (B, L') bool
    visual: torch.Tensor  # (B, L') bool
    origin: torch.Tensor  # (B, L') long, -1 for merged rows and padding
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None  # the 4-D prefill mask in the model's format, or None
    shift: torch.Tensor | None  # (B,) long: renumbered positions lag the prompt's by this much; None: kept
    decode: tuple | None = None  # (step key, mask, position embeddings) of the latest decode step


def _mask_like(template, valid: torch.Tensor, queries: int, dtype: torch.dtype, tail=None):
    """A 4-D attention mask ``(B, 1, queries, K)`` over the keys ``valid`` (then ``tail``'s columns), causal
    for a prefill (``queries == K``), in ``template``'s format: ``None`` when nothing is masked and the
    template was ``None``, bool (True attends) or additive float."""
    B, K = valid.shape
    keys = valid if tail is None else torch.cat([valid, tail], dim=1)
    total = keys.shape[1]
    allowed = keys[:, None, None, :].expand(B, 1, queries, total)
    if queries > 1:
        causal = torch.ones(queries, total, dtype=torch.bool, device=valid.device).tril(total - queries)
        allowed = allowed & causal
    if template is None and bool(keys.all()):
        return None
    if template is None or template.dtype == torch.bool:
        return allowed.clone()
    zero = torch.zeros((), dtype=template.dtype, device=valid.device)
    return torch.where(allowed, zero, torch.finfo(template.dtype).min)


def deepstack_rows(visual_pos_masks: torch.Tensor, visual_embeds: torch.Tensor, origin: torch.Tensor,
                   valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The DeepStack features of a shortened sequence's rows.

    Args:
        visual_pos_masks: ``(B, L0)`` bool, the unpruned prompt's visual positions.
        visual_embeds: ``(V, D)`` their features, row-major (sample by sample, column by column).
        origin: ``(B, L')`` long, each current row's column in the unpruned prompt (``-1``: merged or padding).
        valid: ``(B, L')`` bool, the rows that are not padding.
    Returns:
        ``(B, L')`` bool, the rows that are an original visual token, and ``(V', D)`` their features in the
        same row-major order (what ``_deepstack_process`` adds).
    """
    source = origin.clamp(min=0)
    is_visual = valid & (origin >= 0) & visual_pos_masks.to(origin.device).gather(1, source)
    index = (visual_pos_masks.flatten().long().cumsum(0) - 1).view_as(visual_pos_masks).to(origin.device)
    return is_visual, visual_embeds[index.gather(1, source)[is_visual].to(visual_embeds.device)]


def _tail_of(mask, start: int):
    """The 2-D validity of the keys after the prompt (decode steps), from the model's 4-D mask."""
    if mask is None:
        return None
    last = mask[:, 0, -1, start:]
    return last if last.dtype == torch.bool else last == 0


class DecoderPruner:
    """Pre-hooks on every decoder layer of ``model`` running ``plan`` on each prefill.

    ``prompt_visual(ids)`` is set by the caller before each prefill (``(B, L)`` bool, the visual
    placeholders); :attr:`records` keeps what each drop kept, per prefill.
    """

    def __init__(self, model, plan: DecoderPlan):
        self.check(model, plan)
        self.model = model
        self.plan = plan
        self.lm = language_model(model)
        self.layers = list(self.lm.layers)
        self.mrope = getattr(getattr(self.model, "config", None), "model_type", "").startswith("qwen")
        self.prompt_visual: torch.Tensor | None = None
        self.records: list[dict] = []
        self._stages: list[_Stage] = []
        self._store: dict = {}
        self._length = 0
        self._current: dict | None = None
        self._handles = [layer.register_forward_pre_hook(self._hook(i), with_kwargs=True)
                         for i, layer in enumerate(self.layers)]
        self._deepstack = None  # the language model's own _deepstack_process entry, when wrapped
        if hasattr(self.lm, "_deepstack_process"):  # Qwen3-VL: DeepStack features follow the kept rows
            self._deepstack = vars(self.lm).get("_deepstack_process", _CLASS_METHOD)
            self.lm._deepstack_process = self._deepstack_hook(self.lm._deepstack_process)

    @staticmethod
    def check(model, plan: DecoderPlan) -> None:
        """``ValueError`` naming the problem if ``plan`` cannot run on ``model``: an attention implementation
        other than eager or sdpa, or layers the language model does not have."""
        lm = language_model(model)
        implementation = getattr(lm.config, "_attn_implementation", "eager") or "eager"
        if implementation not in SUPPORTED_ATTENTION:
            raise ValueError(f"{type(plan).__name__} prunes inside the language model and needs attn_implementation "
                             f"in {SUPPORTED_ATTENTION} (this model runs {implementation!r}): load the model with "
                             "attn_implementation='sdpa'")
        depth = len(lm.layers)
        bad = [i for i in (*plan.capture_layers, *plan.drop_layers) if not 0 <= i < depth]
        if bad or any(i < 1 for i in plan.drop_layers):
            raise ValueError(f"{type(plan).__name__} needs layers {bad or list(plan.drop_layers)} but the language "
                             f"model has layers 0..{depth - 1} (a drop needs at least one layer before it)")

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        previous, self._deepstack = self._deepstack, None
        if previous is _CLASS_METHOD:
            del self.lm._deepstack_process  # the class's own method shows through again
        elif previous is not None:
            self.lm._deepstack_process = previous
        self._stages, self._store, self._current = [], {}, None

    # ------------------------------------------------------------------ hooks
    def _deepstack_hook(self, original):
        """``_deepstack_process`` with the shortened rows' mask and features once a drop has run (prefill only:
        the language model adds DeepStack features only when it has them, i.e. on a prefill)."""
        def wrapper(hidden_states, visual_pos_masks, visual_embeds):
            stage = self._stages[-1] if self._stages and self._current is not None else None
            if stage is not None:
                if hidden_states.shape[:2] != stage.valid.shape:
                    raise RuntimeError(f"DeepStack step on {tuple(hidden_states.shape[:2])} rows, the pruned stage has "
                                       f"{tuple(stage.valid.shape)}")
                visual_pos_masks, visual_embeds = deepstack_rows(visual_pos_masks, visual_embeds, stage.origin,
                                                                 stage.valid)
            return original(hidden_states, visual_pos_masks, visual_embeds)

        return wrapper

    def _hook(self, index: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            cache = kwargs.get("past_key_values")
            prefill = cache is None or cache.get_seq_length(index) == 0
            if prefill:
                hidden, kwargs = self._prefill(index, module, hidden, dict(kwargs))
            elif self._stages:
                kwargs = self._decode(index, hidden, dict(kwargs), cache)
            if args:
                return (hidden, *args[1:]), kwargs
            kwargs["hidden_states"] = hidden
            return args, kwargs

        return hook

    def _stage_at(self, index: int) -> _Stage | None:
        stage = None
        for s in self._stages:
            if s.layer <= index:
                stage = s
        return stage

    def _prefill(self, index, module, hidden, kwargs):
        if index == 0:
            self._start(hidden, kwargs)
        cur = self._current
        if cur is None:
            return hidden, kwargs
        stage = self._stage_at(index)
        if stage is not None and stage.layer < index:  # a later layer of a shortened stage
            kwargs.update(attention_mask=stage.mask, position_embeddings=(stage.cos, stage.sin))
        view = LayerView(index, module, hidden, *cur["cos_sin"], cur["valid"], cur["visual"], cur["origin"],
                         cur["prompt_visual"], getattr(self.lm, "norm", None))
        if index in self.plan.drop_layers:  # first the drop, then what this layer's input shows the plan
            with torch.no_grad():
                drop = self.plan.drop(view, self._store, self.plan.drop_layers.index(index))
            hidden, stage = self._apply(index, view, drop, kwargs.get("attention_mask"))
            self._stages.append(stage)
            cur.update(cos_sin=(stage.cos, stage.sin), valid=stage.valid, visual=stage.visual, origin=stage.origin)
            kwargs.update(attention_mask=stage.mask, position_embeddings=(stage.cos, stage.sin))
            self.records[-1]["stages"].append({"layer": index, "kept_origin": [o[v & vis] for o, v, vis in zip(
                stage.origin, stage.valid, stage.visual)], "visual_after": stage.visual.sum(1).tolist(),
                "length_after": int(stage.valid.shape[1]), "note": drop.note})
            view = LayerView(index, module, hidden, stage.cos, stage.sin, stage.valid, stage.visual, stage.origin,
                             cur["prompt_visual"], getattr(self.lm, "norm", None))
        if index in self.plan.capture_layers:
            with torch.no_grad():
                self.plan.capture(view, self._store)
        return hidden, kwargs

    def _start(self, hidden, kwargs) -> None:
        """A new prefill: the unpruned rows, their positions and visual placeholders."""
        B, L, _ = hidden.shape
        visual = self.prompt_visual
        self.prompt_visual = None
        self._stages, self._store, self._length = [], {}, L
        if visual is None or visual.shape != (B, L) or not bool(visual.any()):
            self._current = None
            return
        mask = kwargs.get("attention_mask")  # a prefill mask's last query row sees every valid key
        valid = torch.ones(B, L, dtype=torch.bool, device=hidden.device) if mask is None else _tail_of(mask, 0)
        cos, sin = (x.expand(B, -1, -1) for x in kwargs["position_embeddings"])  # (1, L, d) when shared
        origin = torch.arange(L, device=hidden.device).expand(B, -1).masked_fill(~valid, -1)
        given = kwargs.get("position_ids")
        positions = (torch.arange(L, device=hidden.device).expand(B, -1) if given is None or given.ndim != 2
                     else given.expand(B, -1))
        first = positions.masked_fill(~valid, torch.iinfo(positions.dtype).max).min(dim=1).values
        self._current = {"cos_sin": (cos, sin), "valid": valid, "visual": visual.to(hidden.device) & valid,
                         "origin": origin, "prompt_visual": visual.to(hidden.device), "prompt_valid": valid.sum(1),
                         "first_position": first}
        self.records.append({"length_before": L, "visual_before": visual.sum(1).tolist(), "stages": []})
        self.records = self.records[-8:]

    def _apply(self, index, view: LayerView, drop: Drop, template):
        """The shortened rows of a drop, left-padded to one length, with their mask and positions."""
        B, L, D = view.hidden.shape
        if len(drop.rows) != B:
            raise RuntimeError(f"the plan kept rows for {len(drop.rows)} samples, the batch has {B}")
        Lp = max(len(r) for r in drop.rows)
        device = view.hidden.device
        hidden = view.hidden.new_zeros(B, Lp, D)
        valid = torch.zeros(B, Lp, dtype=torch.bool, device=device)
        visual = torch.zeros_like(valid)
        origin = torch.full((B, Lp), -1, dtype=torch.long, device=device)
        cos = view.cos.new_zeros(B, Lp, view.cos.shape[-1])
        sin = torch.zeros_like(cos)
        for b, rows in enumerate(drop.rows):
            rows = rows.to(device).long()
            n = len(rows)
            at = slice(Lp - n, Lp)
            real = rows >= 0
            src = rows.clamp(min=0)
            picked = view.hidden[b, src]
            if not bool(real.all()):
                if drop.merged is None:
                    raise RuntimeError("the plan points at merged rows but gave none")
                picked[~real] = drop.merged[b].to(picked.dtype)[(-1 - rows[~real])]
            hidden[b, at] = picked
            valid[b, at] = True
            visual[b, at] = torch.where(real, view.visual[b, src], torch.ones_like(real))
            origin[b, at] = torch.where(real, view.origin[b, src], torch.full_like(src, -1))
            # a merged row's position is that of the real row before it (used on 3-D M-RoPE, which keeps positions)
            before = torch.cummax(torch.where(real, torch.arange(n, device=device), torch.zeros_like(src)), 0).values
            place = src[before]
            cos[b, at], sin[b, at] = view.cos[b, place], view.sin[b, place]
        shift = None
        if drop.renumber and not self.mrope:
            # 0 .. L'-1 from the sample's first real row's own position (0 under generate's count)
            positions = self._current["first_position"][:, None] + (valid.long().cumsum(1) - 1).clamp(min=0)
            cos, sin = self.lm.rotary_emb(hidden, positions)
            shift = self._current["prompt_valid"] - valid.sum(1)
        mask = _mask_like(template, valid, Lp, view.hidden.dtype)
        return hidden, _Stage(index, valid, visual, origin, cos.to(view.cos.dtype), sin.to(view.sin.dtype),
                              mask, shift)

    def _decode(self, index, hidden, kwargs, cache):
        stage = self._stage_at(index)
        if stage is None:
            return kwargs
        past = cache.get_seq_length(index)
        template, position_ids = kwargs.get("attention_mask"), kwargs.get("position_ids")
        # every layer of a stage gets the same mask and positions on one step: computed at its first layer
        key = (past, id(template), id(position_ids))
        if stage.decode is None or stage.decode[0] != key:
            queries = hidden.shape[1]
            tail = _tail_of(template, self._length)
            if tail is None:
                tail = stage.valid.new_ones(stage.valid.shape[0], past + queries - stage.valid.shape[1])
            mask = _mask_like(template, stage.valid, queries, hidden.dtype, tail)
            embeddings = None
            if stage.shift is not None:
                if position_ids is None:
                    raise ValueError("a renumbering plan needs position_ids on every decode step")
                embeddings = self.lm.rotary_emb(hidden, position_ids - stage.shift[:, None])
            stage.decode = (key, mask, embeddings)
        _, kwargs["attention_mask"], embeddings = stage.decode
        if embeddings is not None:
            kwargs["position_embeddings"] = embeddings
        return kwargs
