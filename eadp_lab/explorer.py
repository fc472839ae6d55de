"""An interactive explorer: move EADP's knobs and watch the importance map, the kept tokens
and the model's answer change.

    from eadp_lab.explorer import Explorer
    explorer = Explorer(lab, records)      # lab: eadp_lab.lab.Lab; records: lab-world records
    explorer                               # in Jupyter: the widgets (a live kernel redraws them)
    explorer.set(alpha=0.2, budget=16)     # drive it from code (one redraw)
    explorer.figure                        # the current matplotlib figure (static books show this)

Sliders: ``alpha`` (global against dense score), ``beta`` (polarisation), ``keep ratio``
(``entropy_keep_ratio``: the entropy filter's share of text tokens), ``temperature``
(``entropy_temperature`` of the spatial softmax) and ``budget`` (visual tokens kept); a method
dropdown (the registry and EADP's ablations of :data:`eadp_lab.methods.settings.ABLATIONS`) and a
question picker. The knobs apply to the methods with EADP settings (``eadp``, ``topk_dense`` and
the ablations, whose own overrides win: ``eadp-global`` always has ``alpha = 1``); the other
methods disable them. Every redraw answers through :meth:`eadp_lab.lab.Lab.ask` (the model with
the method attached, as the accuracy bench runs it) and plots with :mod:`eadp_lab.plots`.
Taught in ``notebooks/06_explorer``.
"""

from __future__ import annotations

import contextlib
import math

import ipywidgets as widgets

from . import plots
from .methods.settings import ABLATIONS
from .config import EADPConfig
from .lab import Lab, method_names
from .methods import METHODS

__all__ = ["Explorer", "KNOBS"]

# slider name -> EADPConfig field it sets
KNOBS = {"alpha": "alpha", "beta": "beta", "keep_ratio": "entropy_keep_ratio", "temperature": "entropy_temperature"}


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


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
            ``keep_ratio``, ``temperature``); set ``.value`` to drive it.
        figure: the current matplotlib figure (image, importance, kept tokens).
        answer: the current :class:`~eadp_lab.lab.Answer`; ``full_answer`` the answer with every token.
        result: the method's :class:`~eadp_lab.PruneResult` for the current state.
        keep: ``(N,)`` bool, the tokens the language model saw.
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
        slider = dict(continuous_update=False, style=style, layout=layout)
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
        self.status = widgets.HTML()
        self.image = widgets.Image(format="png")  # the figure as PNG bytes: no output capture needed
        left = widgets.VBox([self.controls[k] for k in ("method", "budget")])
        right = widgets.VBox([self.controls[k] for k in KNOBS])
        self.widget = widgets.VBox([self.controls["question"], widgets.HBox([left, right]), self.status, self.image])
        self.figure = None
        self.answer = None
        self.full_answer = None
        self.result = None
        self.redraws = 0
        self._full_answers: dict[int, str] = {}
        self._held = False
        for control in self.controls.values():
            control.observe(self._changed, names="value")
        self.update()

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
    def keep(self):
        return None if self.answer is None else self.answer.keep

    def uses_knobs(self, method: str | None = None) -> bool:
        """True when ``method`` has EADP settings (the sliders other than budget apply)."""
        method = self.method if method is None else method
        registry = ABLATIONS.get(method, (method, {}))[0]
        return METHODS[registry].settings is EADPConfig

    def settings(self) -> dict | None:
        """The overrides the sliders give the current method (``None`` for methods without EADP settings);
        an ablation's own overrides win over the sliders."""
        if not self.uses_knobs():
            return None
        values = {field: float(self.controls[name].value) for name, field in KNOBS.items()}
        values.update(ABLATIONS.get(self.method, (None, {}))[1])
        return values

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

    def set(self, **values) -> "Explorer":
        """Set controls by name (``question`` takes a record index), then redraw once."""
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise ValueError(f"unknown controls {unknown}; known: {sorted(self.controls)}")
        with self.hold():
            for name, value in values.items():
                self.controls[name].value = value
        return self

    def _changed(self, change) -> None:
        if not self._held:
            self.update()

    def update(self) -> None:
        """Recompute the answer and the selection for the current state, and redraw."""
        for name in KNOBS:
            self.controls[name].disabled = not self.uses_knobs()
        record = self.record
        question = record.question.text
        index = self.controls["question"].value
        if index not in self._full_answers:
            self._full_answers[index] = self.lab.ask(record.image, question, "none",
                                                     max_new_tokens=self.max_new_tokens).text
        self.full_answer = self._full_answers[index]
        self.answer = self.lab.ask(record.image, question, self.method, self.budget, self.settings(),
                                   max_new_tokens=self.max_new_tokens)
        self.result = self.answer.record.items[0].result
        self.redraws += 1
        self.status.value = (
            f"<b>Q:</b> {question} &nbsp; <b>truth:</b> {record.answer} &nbsp; "
            f"<b>{self.method} answer ({self.answer.num_kept} of {self.lab.num_visual_tokens} tokens):</b> "
            f"{self.answer.text!r} "
            f"&nbsp; <b>with every token:</b> {self.full_answer!r}")
        self._draw()

    def render(self):
        """A new matplotlib figure of the current state: the image, the method's importance map
        and the kept tokens, the answers in the title. Returns the figure."""
        import matplotlib.pyplot as plt

        record, grid = self.record, self.lab.grid
        fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.6))
        plots.image_panel(record.image, ax=axes[0], title="image")
        importance = None if self.result is None else self.result.importance
        if importance is not None:
            plots.grid_heatmap(importance[0], grid, image=record.image, ax=axes[1], colorbar=True,
                               title=f"{self.method} importance")
        else:
            plots.image_panel(record.image, ax=axes[1], title=f"{self.method}: no importance score")
        plots.kept_overlay(record.image, self.answer.keep, grid, ax=axes[2],
                           title=f"{self.answer.num_kept} of {self.lab.num_visual_tokens} tokens kept")
        fig.suptitle(f"{_short(record.question.text, 70)}\ntruth: {record.answer}   answer: {self.answer.text!r}   "
                     f"every token: {self.full_answer!r}", fontsize="medium")
        fig.tight_layout()
        return fig

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
        return (f"Explorer({len(self.records)} records, question={s['question']}, method={s['method']!r}, "
                f"budget={s['budget']}, alpha={s['alpha']}, beta={s['beta']}, keep_ratio={s['keep_ratio']}, "
                f"temperature={s['temperature']:g})")
