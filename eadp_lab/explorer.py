"""An interactive explorer: pick a pruning method, move its knobs and watch what the model still
sees and what it answers.

    from eadp_lab.explorer import Explorer
    explorer = Explorer(lab, records)      # lab: eadp_lab.lab.Lab; records: lab-world records
    explorer                               # in Jupyter: the widgets (a live kernel redraws them)
    explorer.set(alpha=0.2, budget=16)     # drive it from code (one redraw)
    explorer.set(method="fastv", fastv_k=4)
    explorer.figure                        # the current matplotlib figure (static books show this)

Controls: a question picker, a method dropdown (every registry method and EADP's ablations of
:data:`eadp_lab.methods.settings.ABLATIONS`) and ``budget`` (visual tokens kept). EADP's sliders
``alpha`` (global against dense score), ``beta`` (polarisation), ``keep ratio``
(``entropy_keep_ratio``: the entropy filter's share of text tokens) and ``temperature``
(``entropy_temperature`` of the spatial softmax) apply to the methods with EADP settings (``eadp``,
``topk_dense`` and the ablations, whose own overrides win: ``eadp-global`` always has ``alpha = 1``);
the other methods disable them. The field's methods (:data:`eadp_lab.methods.settings.FIELD_METHODS`)
get their own settings as widgets (:data:`FIELD_KNOBS`, named ``<method>_<field>``, e.g.
``fastv_k``), built from the fields of their settings dataclasses and shown while the method is
picked; the fields left out are in :data:`NOT_OFFERED`, with the reason.

What the panels show depends on where the method prunes (:attr:`eadp_lab.methods.Method.stage`):

- on the projector's output (EADP, the baselines): the image, the method's importance map (if it
  has one) and the kept tokens;
- in the vision encoder: HiPrune's kept tokens (its record holds no score, so the middle panel
  says so); VisionZip's dominant tokens (kept as they are, with [CLS]) and, in the middle panel,
  which contextual token each other patch was merged into (``PruneResult.extra["absorbed_by"]``),
  the merge targets marked;
- inside the language model (FastV, PyramidDrop, DART, SparseVLM): the visual tokens left after
  the method's **last** pruning step, and in the middle panel how many visual tokens each decoder
  layer saw (``CallRecord.visual_per_layer``), so the stages of PyramidDrop and SparseVLM show as
  steps. The record keeps the final set only, not the set of each stage. SparseVLM's recycled
  tokens are merged hidden states with no place on the grid: they are counted, not drawn.

Every redraw answers through :meth:`eadp_lab.lab.Lab.ask` (the model with the method attached, as
the accuracy bench runs it) and plots with :mod:`eadp_lab.plots`. A setting the method refuses
(e.g. PyramidDrop layers that collapse on a shallow model) leaves the last figure and says why in
the status line (:attr:`Explorer.error`). Taught in ``notebooks/06_explorer``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html

import ipywidgets as widgets
import numpy as np

from . import plots
from .config import EADPConfig
from .lab import Lab, method_names
from .methods import METHODS
from .methods.settings import ABLATIONS

__all__ = ["FIELD_KNOBS", "KNOBS", "NOT_OFFERED", "Explorer"]

# slider name -> EADPConfig field it sets
KNOBS = {"alpha": "alpha", "beta": "beta", "keep_ratio": "entropy_keep_ratio", "temperature": "entropy_temperature"}

# The field's methods' settings offered as widgets: method -> field -> (min, max, step) of a slider, or
# None for a field whose widget follows its default's type (a layer list is typed as "2, 6, 15"; a bool is
# a checkbox). Each widget starts at the default of the method's settings dataclass.
FIELD_KNOBS: dict[str, dict[str, tuple | None]] = {
    "visionzip": {},
    "hiprune": {"alpha": (0.0, 1.0, 0.05), "object_layer": (1, 23, 1)},
    "fastv": {"k": (1, 31, 1)},
    "pyramiddrop": {"layers": None},
    "dart": {"k": (1, 31, 1), "pivot_image": (1, 16, 1), "pivot_text": (0, 16, 1)},
    "sparsevlm": {"layers": None, "recycle_ratio": (0.0, 1.0, 0.05), "merge": None},
}

# Settings fields of the field's methods that have no widget, and why.
NOT_OFFERED = {
    "published_depth": "the depth of the model the published layer numbers refer to (32 decoder layers of "
                       "LLaVA-1.5's language model, 24 encoder layers of its CLIP), not a knob",
    "visionzip.dominant": "set by the budget: dominant + contextual = budget, split 27 : 5 as published "
                          "(64 = 54 + 10, [CLS] counted among the dominant)",
    "visionzip.contextual": "set by the budget (see dominant)",
    "pyramiddrop.ratio": "applies only without a budget; with one, each stage keeps the same share "
                         "(budget / N) ** (1 / stages) of the previous one",
}


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _layers_text(layers) -> str:
    return ", ".join(str(int(v)) for v in layers)


def _parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in str(text).replace(";", ",").split(",") if v.strip())
    except ValueError:
        raise ValueError(f"layers must be integers separated by commas, e.g. '2, 6, 15'; got {text!r}") from None


def _registry(method: str) -> str:
    return ABLATIONS.get(method, (method, {}))[0]


class Explorer:
    """Widgets over a :class:`~eadp_lab.lab.Lab` and some lab-world records.

    Args:
        lab: the loaded model (:meth:`eadp_lab.lab.Lab.load`).
        records: lab-world records (``.image``, ``.question.text``, ``.answer``), at least one.
        method: the method shown first; budget: tokens kept first (default ``N // 4``).
        max_new_tokens: generated per answer.

    Attributes:
        widget: the ``ipywidgets.VBox`` (displaying the explorer displays it).
        controls: name -> widget (``question``, ``method``, ``budget``, ``alpha``, ``beta``,
            ``keep_ratio``, ``temperature``, and one ``<method>_<field>`` per entry of
            :data:`FIELD_KNOBS`); set ``.value`` to drive it.
        caption: an ``ipywidgets.HTML`` that says what the panels show for the current method.
        figure: the current matplotlib figure (image, a middle panel, the kept tokens).
        answer: the current :class:`~eadp_lab.lab.Answer`; ``full_answer`` the answer with every token.
        result: the method's :class:`~eadp_lab.PruneResult` for the current state.
        keep: ``(N,)`` bool, the grid tokens the language model saw (in-LLM methods: after their last
            pruning step; VisionZip: the patches its outputs come from, dominant and merge targets).
        error: the message of the last update that failed (a setting the method refuses), else ``None``.
        redraws: how many times the view was recomputed.
    """

    def __init__(self, lab: Lab, records, method: str = "eadp", budget: int | None = None,
                 max_new_tokens: int = 3):
        records = list(records)
        if not records:
            raise ValueError("Explorer needs at least one record")
        if method not in method_names():
            raise ValueError(f"method must be one of {method_names()}, got {method!r}")
        self.lab = lab
        self.records = records
        self.max_new_tokens = max_new_tokens
        N = lab.num_visual_tokens
        budget = max(1, N // 4) if budget is None else int(budget)
        if not 1 <= budget <= N:
            raise ValueError(f"budget must be in [1, {N}], got {budget}")
        _, base = lab.settings("eadp")
        style = {"description_width": "90px"}
        layout = widgets.Layout(width="340px")
        slider = {"continuous_update": False, "style": style, "layout": layout}
        self.controls = {
            "question": widgets.Dropdown(
                options=[(f"{i}: {_short(r.question.text)}", i) for i, r in enumerate(records)], value=0,
                description="question", style=style, layout=widgets.Layout(width="560px")),
            "method": widgets.Dropdown(options=method_names(), value=method, description="method", style=style,
                                       layout=layout),
            "budget": widgets.IntSlider(value=budget, min=1, max=N, step=1, description="budget", **slider),
            "alpha": widgets.FloatSlider(value=base.alpha, min=0.0, max=1.0, step=0.05, description="alpha",
                                         **slider),
            "beta": widgets.FloatSlider(value=base.beta, min=0.25, max=4.0, step=0.25, description="beta", **slider),
            "keep_ratio": widgets.FloatSlider(value=base.entropy_keep_ratio, min=0.05, max=1.0, step=0.05,
                                              description="keep ratio", **slider),
            "temperature": widgets.FloatLogSlider(value=base.entropy_temperature, base=10, min=0, max=3, step=0.25,
                                                  description="temperature", **slider),
        }
        self.field_controls: dict[str, dict[str, str]] = {}  # method -> field -> control name
        boxes = {}
        for name in FIELD_KNOBS:
            if name not in METHODS:
                continue
            fields = {}
            for field, control in self._field_widgets(name, slider).items():
                self.controls[f"{name}_{field}"] = control
                fields[field] = f"{name}_{field}"
            self.field_controls[name] = fields
            boxes[name] = widgets.VBox([self.controls[c] for c in fields.values()])
        self._boxes = boxes
        self.status = widgets.HTML()
        self.caption = widgets.HTML()
        self.image = widgets.Image(format="png")  # the figure as PNG bytes: no output capture needed
        left = widgets.VBox([self.controls[k] for k in ("method", "budget")] + list(boxes.values()))
        right = widgets.VBox([self.controls[k] for k in KNOBS])
        self.widget = widgets.VBox([self.controls["question"], widgets.HBox([left, right]), self.status,
                                    self.image, self.caption])
        self.figure = None
        self.answer = None
        self.full_answer = None
        self.result = None
        self.error = None
        self.redraws = 0
        self._full_answers: dict[int, str] = {}
        self._held = False
        for control in self.controls.values():
            control.observe(self._changed, names="value")
        self.update()

    @staticmethod
    def _field_widgets(method: str, slider: dict) -> dict:
        """One widget per offered field of ``method``'s settings dataclass, at the field's default."""
        defaults = METHODS[method].settings()
        out = {}
        for f in dataclasses.fields(defaults):
            if f.name not in FIELD_KNOBS[method]:
                continue
            value, spec = getattr(defaults, f.name), FIELD_KNOBS[method][f.name]
            label = f.name.replace("_", " ")
            if isinstance(value, bool):
                out[f.name] = widgets.Checkbox(value=value, description=label, style=slider["style"],
                                               layout=slider["layout"])
            elif isinstance(value, tuple):
                out[f.name] = widgets.Text(value=_layers_text(value), description=label, continuous_update=False,
                                           style=slider["style"], layout=slider["layout"])
            elif isinstance(value, int):
                lo, hi, step = spec
                out[f.name] = widgets.IntSlider(value=value, min=lo, max=hi, step=step, description=label, **slider)
            else:
                lo, hi, step = spec
                out[f.name] = widgets.FloatSlider(value=float(value), min=lo, max=hi, step=step, description=label,
                                                  **slider)
        return out

    # ------------------------------------------------------------------ state
    @property
    def record(self):
        """The record the question picker points at."""
        return self.records[self.controls["question"].value]

    @property
    def method(self) -> str:
        return self.controls["method"].value

    @property
    def budget(self) -> int:
        return int(self.controls["budget"].value)

    @property
    def stage(self) -> str:
        """Where the current method prunes: ``"projector"``, ``"vision"`` or ``"llm"``."""
        return METHODS[_registry(self.method)].stage

    @property
    def keep(self):
        return None if self.answer is None else self.answer.keep

    @property
    def visual_per_layer(self) -> list[int] | None:
        """In-LLM methods: the visual tokens each decoder layer saw (merged ones included), else ``None``."""
        per_layer = None if self.answer is None else getattr(self.answer.record, "visual_per_layer", None)
        return None if not per_layer else list(per_layer[0])

    @property
    def tokens_seen(self) -> int | None:
        """Visual tokens the language model's last layers saw (VisionZip's [CLS] and merged tokens, SparseVLM's
        recycled ones included)."""
        if self.answer is None or not self.answer.record.items:
            return None
        return int(self.answer.record.items[0].tokens_after)

    def uses_knobs(self, method: str | None = None) -> bool:
        """True when ``method`` has EADP settings (the sliders other than budget apply)."""
        method = self.method if method is None else method
        return METHODS[_registry(method)].settings is EADPConfig

    def settings(self) -> dict | None:
        """The overrides the controls give the current method: EADP's sliders for the methods with EADP
        settings (an ablation's own overrides win over them); for the field's methods, the widgets moved
        away from their defaults (``None`` while none is, so the model family's own defaults apply, e.g.
        HiPrune's Qwen variant on Qwen2.5-VL); ``None`` for the other methods."""
        if self.uses_knobs():
            values = {field: float(self.controls[name].value) for name, field in KNOBS.items()}
            values.update(ABLATIONS.get(self.method, (None, {}))[1])
            return values
        fields = self.field_controls.get(self.method)
        if not fields:
            return None
        defaults = METHODS[self.method].settings()
        values = {}
        for field, name in fields.items():
            value = self.controls[name].value
            value = _parse_layers(value) if isinstance(value, str) else value
            if value != getattr(defaults, field):  # only what was moved: untouched, the family's defaults apply
                values[field] = value
        return values or None

    def state(self) -> dict:
        """Every control's value, by name."""
        return {name: control.value for name, control in self.controls.items()}

    # ------------------------------------------------------------------ driving
    @contextlib.contextmanager
    def hold(self):
        """Change several controls with one redraw at the end."""
        self._held = True
        try:
            yield self
        finally:
            self._held = False
        self.update()

    def set(self, **values) -> Explorer:
        """Set controls by name (``question`` takes a record index; a layer list takes a tuple or
        ``"2, 6, 15"``), then redraw once."""
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise ValueError(f"unknown controls {unknown}; known: {sorted(self.controls)}")
        with self.hold():
            for name, value in values.items():
                control = self.controls[name]
                control.value = _layers_text(value) if isinstance(control, widgets.Text) and not isinstance(
                    value, str) else value
        return self

    def _changed(self, change) -> None:
        if not self._held:
            self.update()

    def _show_controls(self) -> None:
        for name in KNOBS:
            self.controls[name].disabled = not self.uses_knobs()
        for name, box in self._boxes.items():
            box.layout.display = None if name == self.method else "none"

    def update(self) -> None:
        """Recompute the answer and the selection for the current state, and redraw. A setting the method
        refuses (a ``ValueError``) keeps the last figure and shows the message (:attr:`error`)."""
        self._show_controls()
        record = self.record
        question = record.question.text
        index = self.controls["question"].value
        if index not in self._full_answers:
            self._full_answers[index] = self.lab.ask(record.image, question, "none",
                                                     max_new_tokens=self.max_new_tokens).text
        self.full_answer = self._full_answers[index]
        try:
            answer = self.lab.ask(record.image, question, self.method, self.budget, self.settings(),
                                  max_new_tokens=self.max_new_tokens)
        except ValueError as exc:
            self.error = str(exc)
            self.status.value = (f"<b>Q:</b> {html.escape(question)} &nbsp; <b style='color:#b00'>{self.method} "
                                 f"cannot run with these settings:</b> {html.escape(self.error)}")
            return
        self.error = None
        self.answer = answer
        self.result = answer.record.items[0].result
        self.redraws += 1
        self.status.value = (
            f"<b>Q:</b> {html.escape(question)} &nbsp; <b>truth:</b> {html.escape(str(record.answer))} &nbsp; "
            f"<b>{self.method} answer ({self._seen_phrase()}):</b> {html.escape(repr(answer.text))} "
            f"&nbsp; <b>with every token:</b> {html.escape(repr(self.full_answer))}")
        self.caption.value = f"<small>{self.describe()}</small>"
        self._draw()

    # ------------------------------------------------------------------ words
    def _depth(self) -> int:
        config = self.lab.model.config
        return int(getattr(config, "text_config", config).num_hidden_layers)

    def _vision_depth(self) -> int:
        return int(self.lab.model.config.vision_config.num_hidden_layers)

    def _seen_phrase(self) -> str:
        N, kept, seen = self.lab.num_visual_tokens, self.answer.num_kept, self.tokens_seen
        if self.stage == "llm":
            extra = f" + {seen - kept} merged" if seen is not None and seen > kept else ""
            return f"{kept}{extra} of {N} visual tokens after the last pruning step"
        if self.method == "visionzip" and self.result.merged is not None:
            dominant, contextual = self._visionzip_split()
            return f"[CLS] + {dominant} dominant + {contextual} merged = {seen} tokens from {N} patches"
        return f"{kept} of {N} tokens"

    def _visionzip_split(self) -> tuple[int, int]:
        """``(dominant patches, contextual tokens)`` of the current VisionZip result."""
        dominant = self.result.extra["dominant"][0]
        absorbed = self.result.extra["absorbed_by"][0]
        return int(dominant.shape[-1]), int(absorbed.max()) + 1

    def describe(self) -> str:
        """A sentence or two (HTML) on what the panels show for the current method: where it prunes, what
        "kept" means, and where its published layer numbers fall in this model."""
        method, registry = self.method, _registry(self.method)
        settings = self.lab.settings(method, self.settings())[1]
        depth = self._depth()
        if registry in ("fastv", "dart"):
            K = settings.layer(depth)
            text = (f"{method} prunes inside the language model, once, before decoder layer {K} of {depth} "
                    f"(the published K = {settings.k} of {settings.published_depth}, scaled as "
                    f"round(K x {depth} / {settings.published_depth}), clamped to [1, {depth - 1}]). ")
        elif registry == "pyramiddrop":
            from .methods.pyramiddrop import pyramiddrop_schedule

            layers = settings.stage_layers(depth)
            schedule = pyramiddrop_schedule(self.lab.num_visual_tokens, self.budget, settings)
            text = (f"pyramiddrop prunes in {len(layers)} stages, after decoder layers "
                    f"{_layers_text(layers)} of {depth} (published {_layers_text(settings.layers)} of "
                    f"{settings.published_depth}); its schedule keeps {' / '.join(map(str, schedule.keep))} "
                    "visual tokens. ")
        elif registry == "sparsevlm":
            from .methods.in_llm import sparse_stages
            from .methods.sparsevlm import sparsevlm_token_list

            layers, stages = sparse_stages(settings, depth)
            counts = sparsevlm_token_list(self.lab.num_visual_tokens, self.budget)
            text = (f"sparsevlm prunes after decoder layers {_layers_text(layers)} of {depth} (published sparse "
                    f"layers {_layers_text(settings.layers)} of {settings.published_depth}; stages that land on one "
                    f"layer run as one), keeping at most {' / '.join(str(counts[s]) for s in stages)} visual "
                    "tokens there (its budget table scaled to this image), plus the tokens it recycles by merging. ")
        elif registry == "hiprune":
            from .methods.base import read_layer
            from .methods.hiprune import HiPruneQwenSettings

            vdepth = self._vision_depth()
            shallow, deep = settings.layers(vdepth)
            qwen = isinstance(settings, HiPruneQwenSettings)  # Qwen's ViT has no vision_feature_layer: its last block
            if not qwen:
                deep = read_layer(vdepth, self.lab.model.config.vision_feature_layer)
            text = (f"hiprune selects in the vision encoder: anchors by the attention patches receive in encoder "
                    f"layer {shallow + 1} of {vdepth} (1-based; published object layer {settings.object_layer} of "
                    f"{settings.published_depth}), their grid neighbours, then the rest by layer {deep + 1}, "
                    + ("the last block, as the published Qwen variant reads it" if qwen else "the layer the model reads")
                    + ". Its record holds no score and no anchor/buffer split, so the middle panel has nothing to show. ")
        elif registry == "visionzip":
            from .methods.visionzip import split_budget

            dominant, contextual = split_budget(self.budget) if self.budget >= 2 else (1, 0)
            text = (f"visionzip works in the vision encoder: [CLS] and the {dominant - 1} patches [CLS] attends to "
                    f"most are kept as they are (right), the other patches are merged into {contextual} contextual "
                    "tokens by key similarity (middle: one colour per contextual token, its target marked). The "
                    "budget counts [CLS] and the merged tokens, as VisionZip's published LLaVA code does. ")
        elif self.uses_knobs():
            text = (f"{method} selects on the projector's output: the middle panel is its importance, the right "
                    "panel the tokens it keeps. ")
        elif registry == "none":
            text = "none keeps every visual token: the unpruned model. "
        elif registry == "pool":
            text = ("pool averages the token grid down to the budget (the language model receives the pooled "
                    "tokens); the right panel marks the centre of each pooled cell. ")
        else:
            text = f"{method} selects on the projector's output; the right panel is what it keeps. "
        if self.stage == "llm":
            text += ("The right panel shows the visual tokens left after the method's last pruning step (what the "
                     "last decoder layers see); the middle one how many visual tokens each decoder layer saw. ")
            if registry == "sparsevlm":
                text += "Recycled (merged) tokens have no place on the grid: they are counted, not drawn. "
        return html.escape(text.strip(), quote=False)

    # ------------------------------------------------------------------ drawing
    def render(self):
        """A new matplotlib figure of the current state: the image, a middle panel (the importance map,
        VisionZip's merges, or an in-LLM method's visual tokens per decoder layer) and the kept tokens,
        the answers in the title. Returns the figure."""
        import matplotlib.pyplot as plt

        record, grid, N = self.record, self.lab.grid, self.lab.num_visual_tokens
        fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.6))
        plots.image_panel(record.image, ax=axes[0], title="image")
        keep, title = self.answer.keep, f"{self.answer.num_kept} of {N} tokens kept"
        importance = None if self.result is None else self.result.importance
        if self.stage == "llm":
            self._layer_counts(axes[1])
            seen = self.tokens_seen
            merged = f" + {seen - self.answer.num_kept} merged" if seen is not None and seen > self.answer.num_kept \
                else ""
            title = f"{self.answer.num_kept}{merged} of {N} left\nafter the last pruning step"
        elif self.method == "visionzip" and self.result.merged is not None:
            dominant = self.result.extra["dominant"][0][0]
            d, c = self._visionzip_split()
            targets = self.result.picks[0, d:d + c]
            self._merge_panel(axes[1], record.image, self.result.extra["absorbed_by"][0][0], grid, targets)
            keep = np.zeros(N, dtype=bool)
            keep[dominant.cpu().numpy()] = True
            title = f"[CLS] + {d} dominant kept\n(+ {c} merged tokens, middle)"
        elif importance is not None:
            plots.grid_heatmap(importance[0], grid, image=record.image, ax=axes[1], colorbar=True,
                               title=f"{self.method} importance")
        else:
            plots.image_panel(record.image, ax=axes[1], title=f"{self.method}: no importance score")
        plots.kept_overlay(record.image, keep, grid, ax=axes[2], title=title)
        fig.suptitle(f"{_short(record.question.text, 70)}\ntruth: {record.answer}   answer: {self.answer.text!r}   "
                     f"every token: {self.full_answer!r}", fontsize="medium")
        fig.tight_layout(rect=(0, 0, 1, 0.9))  # room for the two-line suptitle above two-line panel titles
        return fig

    def _layer_counts(self, ax) -> None:
        """Bars: the visual tokens each decoder layer saw, the budget dashed."""
        counts = self.visual_per_layer or []
        layers = np.arange(len(counts))
        ax.bar(layers, counts, color="#4c72b0")
        for x, c in zip(layers, counts):
            ax.annotate(str(c), (x, c), ha="center", va="bottom", fontsize="small")
        ax.axhline(self.budget, color="#c44e52", ls="--", lw=1, label=f"budget {self.budget}")
        ax.set_xticks(layers)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("visual tokens it sees")
        ax.set_ylim(0, max(counts or [1]) * 1.15)
        ax.legend(loc="upper right", fontsize="small", frameon=False)
        ax.set_title(f"{self.method}: visual tokens per layer")

    @staticmethod
    def _merge_panel(ax, image, absorbed, grid, targets=None) -> None:
        """VisionZip's merges: dominant patches as they are, every other patch tinted with the colour of the
        contextual token it went into (``absorbed`` ``(N,)``: that token, ``-1`` for a dominant patch), each
        merge target (``targets``: patch indices) marked with a white dot."""
        import matplotlib

        img = np.asarray(image).astype(np.float32)
        H, W = grid
        group = np.asarray(absorbed.cpu())[: H * W].reshape(H, W)
        palette = np.array(matplotlib.colormaps["tab10"].colors) * 255.0
        ys = np.minimum((np.arange(img.shape[0]) * H / img.shape[0]).astype(int), H - 1)
        xs = np.minimum((np.arange(img.shape[1]) * W / img.shape[1]).astype(int), W - 1)
        cells = group[ys][:, xs]
        tint = palette[np.maximum(cells, 0) % len(palette)]
        shown = np.where((cells >= 0)[..., None], 0.35 * img + 0.65 * tint, img)
        ax.imshow(shown.astype(np.uint8))
        if targets is not None and len(targets):
            t = np.asarray(targets.cpu())
            ph, pw = img.shape[0] / H, img.shape[1] / W
            ax.scatter((t % W + 0.5) * pw - 0.5, (t // W + 0.5) * ph - 0.5, s=14, c="white", edgecolors="black",
                       linewidths=0.6)
        ax.set_axis_off()
        ax.set_title(f"{int(group.max()) + 1} merged tokens (one colour each);\ndominant patches untinted")

    def _draw(self) -> None:
        import io

        import matplotlib.pyplot as plt

        if self.figure is not None:
            plt.close(self.figure)
        self.figure = self.render()
        plt.close(self.figure)  # shown through the image widget only, not again by the inline backend
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        self.image.value = buffer.getvalue()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        s = self.state()
        own = self.field_controls.get(s["method"], {})
        extra = "".join(f", {name}={s[name]!r}" for name in own.values())
        return (f"Explorer({len(self.records)} records, question={s['question']}, method={s['method']!r}, "
                f"budget={s['budget']}, alpha={s['alpha']}, beta={s['beta']}, keep_ratio={s['keep_ratio']}, "
                f"temperature={s['temperature']:g}{extra})")

