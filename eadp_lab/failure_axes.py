"""Chapter 01's three failure modes as claims about conditions, each swept along the world setting
that should switch it on: one command.

    python -m eadp_lab study failure-axes --seed S --questions Q --json OUT [--budgets 28,14]
        [--threads N] [--batch 32] [--answers-dir DIR] [--modes global_guidance,...]
        [--model lab] [--clip auto] [--device cpu] [--dtype float32]

In the lab's default world the three failure modes that motivate EADP barely show: most objects
are tiny or small, questions are short, scenes hold a handful of objects. Each mode is a claim
about conditions, so each is measured along the world setting that should bring it out
(:data:`MODES`), at every value on ``Q`` fresh ``heldout`` questions of that world:

- ``global_guidance``: ``eadp`` against ``eadp-global`` (the pooled text alone, alpha = 1) as
  scenes hold more objects (``n_objects``);
- ``textual_noise``: ``eadp`` against ``eadp-noentropy`` (every word, plain mean) as instructions
  grow longer with filler that names nothing (``verbosity``, :func:`eadp_lab.world.questions.verbose`);
- ``topk_redundancy``: ``eadp`` against ``eadp-topk`` (Top-K instead of facility location) as
  objects span more patches (``size_weights`` toward large, then ``object_scale``).

At each value: the **mechanism**, measured on the selection without the language model
(:func:`mechanism_rows`: the share of a score map's top-16 tokens on the objects the question
names for the two guidance modes, after chapter 01's maps; for Top-K the share of the named
objects that keep at least one token, at the smallest budget), the **accuracy** of both rules at
every budget through :func:`eadp_lab.evaluation.evaluate` (what ``python -m eadp_lab bench
accuracy`` runs: :func:`eadp_lab.attach` inside ``generate``), their paired difference
(``rules[0] - rules[1]`` on the same questions, :func:`~eadp_lab.evaluation.paired_difference`)
with its 95% interval, and the unpruned (``none``) accuracy, so that a lab model answering
outside its training distribution is not read as a failure mode. A verdict sentence per mode
is computed from the intervals (:func:`trend`, :func:`verdict`); nothing is tuned.

The JSON: ``{"seed", "questions", "modes": {name: {"axis", "rules", "points": [{"value",
"mechanism", "full_accuracy", "accuracy": {method: {budget: acc}}, "difference": {budget: d},
"interval": {budget: [low, high]}}], "verdict", "mechanism_name", "seconds", "command"}}}``
(fractions, not percentages; budgets as strings; ``seconds`` is a mode's own wall time, a world an
earlier mode already answered costing nothing again). Its path is checked before any work and it
is written atomically. ``--answers-dir`` keeps every run's answers (one file per world,
method and budget): a rerun after an interruption asks only the questions not answered yet.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._checks import cli_int
from ._io import OutputPathError, check_output, save_report
from .evaluation.scores import Z95  # a 95% interval is the estimate -/+ Z95 standard errors

__all__ = [
    "DEFAULT_BUDGETS",
    "MODES",
    "TOP_K",
    "Z95",
    "Mode",
    "axis_config",
    "axis_questions",
    "failure_axes",
    "interval",
    "main",
    "mechanism_figure",
    "mechanism_rows",
    "paired_mean",
    "point",
    "slope",
    "trend",
    "verdict",
    "SHIPPED",
    "LONG_RUN",
    "load_study",
    "study_frame",
    "study_glue",
    "headline",
    "plot_mode",
    "long_run_gaps",
    "default_point",
    "mechanism_table",
    "points_text",
    "SECOND",
    "shipped",
    "seed_table",
    "same_verdicts",
]

DEFAULT_BUDGETS = (28, 14)
TOP_K = 16  # the top tokens of a score map inspected (chapter 01's figure)


@dataclass(frozen=True)
class Mode:
    """One failure mode: the world setting that should switch it on and the two rules compared.

    ``values``: :class:`~eadp_lab.world.WorldConfig` changes, one per axis value, in the order
    the mode should grow; ``pair``: the two per-question mechanism figures of
    :func:`mechanism_rows` compared (``rules[0]``'s first), ``"reached"`` meaning each rule's
    reach of the named objects at the smallest budget.
    """

    axis: str
    rules: tuple[str, str]
    values: tuple[dict, ...]
    pair: tuple[str, str] | str
    mechanism_name: str


DEFAULT_SIZES = {"size_weights": (0.35, 0.35, 0.30), "object_scale": 1.0}
MODES = {
    "global_guidance": Mode(
        "n_objects", ("eadp", "eadp-global"),
        ({"n_objects": (2, 3)}, {"n_objects": (3, 7)}, {"n_objects": (6, 8)}, {"n_objects": (9, 10)}),
        ("filtered", "global"),
        f"share of the score map's top-{TOP_K} tokens on the named objects: the entropy-filtered dense map "
        "(eadp's local score) against the global map (eadp-global's)"),
    "textual_noise": Mode(
        "verbosity", ("eadp", "eadp-noentropy"),
        ({"verbosity": 0}, {"verbosity": 2}, {"verbosity": 4}, {"verbosity": 6}),
        ("filtered", "every_word"),
        f"share of the dense map's top-{TOP_K} tokens on the named objects: entropy-filtered (eadp) against "
        "every word averaged (eadp-noentropy)"),
    "topk_redundancy": Mode(
        "size_weights, object_scale", ("eadp", "eadp-topk"),
        (DEFAULT_SIZES, {"size_weights": (0.15, 0.35, 0.5), "object_scale": 1.0},
         {"size_weights": (0.0, 0.0, 1.0), "object_scale": 1.0}, {"size_weights": (0.0, 0.0, 1.0), "object_scale": 1.25}),
        "reached",
        "share of the named objects that keep at least one visual token at the smallest budget: facility "
        "location (eadp) against Top-K (eadp-topk)"),
}


# ---------------------------------------------------------------- worlds and questions

def axis_config(value: dict):
    """The :class:`~eadp_lab.world.WorldConfig` of one axis value (the default world with ``value``'s changes)."""
    from .world import WorldConfig

    return WorldConfig().replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


def axis_questions(n: int, seed: int, config, workers: int = 1, grid="default") -> list:
    """``n`` ``heldout`` questions of the world ``config`` for ``seed``, as
    :func:`eadp_lab.evaluation.lab_questions` makes them for the default world (with ``named``
    and ``masks``, the object masks on ``grid``: a model's token grid, ``lab.grid``)."""
    from .evaluation import Question
    from .guidance import named_objects, object_masks
    from .world import sample

    return [Question(f"heldout/{seed}/{r.index}", r.image, r.question.text, r.answer, r.qtype,
                     named_objects(r.question), object_masks(r.coverage))
            for r in sample("heldout", n, seed=seed, config=config, workers=workers, grid=grid)]


def _json_value(value: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}


def _label(value: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in _json_value(value).items())


# ---------------------------------------------------------------- the mechanism

def mechanism_rows(lab, questions: Sequence, budgets: Sequence[int], top_k: int = TOP_K, bar=None) -> list[dict]:
    """Per question, what the selection does without the language model.

    Every row: ``words`` (of the instruction), ``objects`` (in the scene), ``named`` (objects
    the question names). Rows of questions that name an object (with ``masks``) also hold
    ``patches`` (mean tokens per named object), ``chance`` (the named objects' share of the
    image) and the share of the top ``top_k`` tokens on them of three score maps of EADP
    (:func:`eadp_lab.guidance.guidance_maps`): ``global`` (pooled text), ``filtered`` (dense,
    entropy-filtered: the preset's) and ``every_word`` (dense, every word, plain mean: the
    ``eadp-noentropy`` ablation's); and ``reached/{rule}/{budget}``, the share of the named
    objects with a kept token for ``eadp`` and ``eadp-topk`` (:func:`eadp_lab.guidance.compare_kept`).
    """
    from . import guidance as gd

    rules = {name: lab.settings(name) for name in ("eadp", "eadp-topk")}
    noentropy = lab.settings("eadp-noentropy")[1]
    rows = []
    for q in questions:
        row = {"words": len(q.text.split()), "objects": 0 if q.masks is None else int(q.masks.shape[0]),
               "named": len(q.named)}
        if q.named and q.masks is not None:
            inputs = lab.prune_inputs(q.image, q.text)
            target = gd.union_mask(q.masks, q.named)
            maps = gd.guidance_maps(inputs, rules["eadp"][1])
            every = gd.guidance_maps(inputs, noentropy)["dense"]
            row.update({"patches": float(q.masks[list(q.named)].sum(1).float().mean()),
                        "chance": float(target.float().mean()),
                        "global": gd.top_share(maps["global"], target, top_k),
                        "filtered": gd.top_share(maps["dense"], target, top_k),
                        "every_word": gd.top_share(every, target, top_k)})
            for budget in budgets:
                for kept in gd.compare_kept(inputs, q.masks, q.named, rules, budget):
                    row[f"reached/{kept['method']}/{budget}"] = kept["reached"]
        rows.append(row)
        if bar is not None:
            bar.update(1)
    return rows


def paired_mean(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float, float, int]:
    """``(mean a, mean b, mean of a - b, its standard error, n)`` over paired values (NaN pairs dropped)."""
    import pandas as pd

    from .studies import paired_gap

    if not any(not (math.isnan(x) or math.isnan(y)) for x, y in zip(a, b)):
        return math.nan, math.nan, math.nan, math.nan, 0
    frame = pd.DataFrame([{"record": i, "rule": rule, "value": v} for i, pair in enumerate(zip(a, b))
                          for rule, v in zip(("a", "b"), pair)])
    gap = paired_gap(frame, "rule", "value", "a", "b")
    return gap["a"], gap["b"], gap["gap"], gap["se"], gap["n"]


def interval(difference: float, se: float) -> list[float]:
    """The 95% interval ``difference -/+ Z95 * se`` as ``[low, high]`` (rounded to 4 places)."""
    return [round(difference - Z95 * se, 4), round(difference + Z95 * se, 4)]


def _mean(rows, key):
    values = [r[key] for r in rows if key in r and not math.isnan(r[key])]
    return round(sum(values) / len(values), 4) if values else None


def mechanism_figure(rows: list[dict], mode: Mode, budgets: Sequence[int]) -> dict:
    """The mechanism of ``mode`` over one axis value's :func:`mechanism_rows`.

    Returns ``{rules[0]: mean, rules[1]: mean, "difference": paired mean of the two,
    "interval": 95% [low, high], "n": questions, "budget": the budget of a kept-set figure (else
    None), "chance": the named objects' mean share of the image, "context": the world as it came
    out (mean ``objects`` per scene, ``words`` per question, ``patches`` per named object)}``.
    """
    budget = min(budgets) if mode.pair == "reached" else None
    keys = ((f"reached/eadp/{budget}", f"reached/eadp-topk/{budget}") if mode.pair == "reached" else mode.pair)
    named = [r for r in rows if keys[0] in r]
    a, b, diff, se, n = paired_mean([r[keys[0]] for r in named], [r[keys[1]] for r in named])
    nan = math.isnan(diff)
    return {mode.rules[0]: None if nan else round(a, 4), mode.rules[1]: None if nan else round(b, 4),
            "difference": None if nan else round(diff, 4),
            "interval": None if nan or math.isnan(se) else interval(diff, se), "n": n, "budget": budget,
            "chance": _mean(named, "chance"),
            "context": {"objects": _mean(rows, "objects"), "words": _mean(rows, "words"),
                        "patches": _mean(named, "patches")}}


# ---------------------------------------------------------------- one axis value

def point(value: dict, mode: Mode, mechanism: dict, full: dict, runs: dict, budgets: Sequence[int]) -> dict:
    """One axis value of ``mode``: the mechanism, the unpruned accuracy and both rules' accuracy.

    Args:
        full: the ``none`` run (``accuracy``); runs: ``{(method, budget): run}`` with ``accuracy`` and
            ``hits`` (:func:`eadp_lab.evaluation.evaluate`'s) for both rules at every budget.
    Returns:
        ``{"value", "mechanism", "full_accuracy", "accuracy": {method: {budget: acc}}, "difference":
        {budget: rules[0] - rules[1]}, "interval": {budget: [low, high]}}``, budgets as strings.
    """
    from .evaluation import paired_difference

    a, b = mode.rules
    difference, intervals = {}, {}
    for budget in budgets:
        diff, se, _ = paired_difference(runs[a, budget]["hits"], runs[b, budget]["hits"])
        difference[str(budget)] = round(diff, 4)
        intervals[str(budget)] = interval(diff, se)
    return {"value": _json_value(value), "mechanism": mechanism, "full_accuracy": full["accuracy"],
            "accuracy": {m: {str(bd): runs[m, bd]["accuracy"] for bd in budgets} for m in mode.rules},
            "difference": difference, "interval": intervals}


# ---------------------------------------------------------------- verdicts

STATUS = {
    "appears": "the mode appears",
    "far end only": "a gap at the far end, but its growth along the axis is not clear",
    "all along": "a gap all along the axis that does not grow with it: not switched on by this setting",
    "reversed": "reversed: the ablation does better at the far end",
    "absent": "the mode does not appear",
}


def _se(bounds) -> float:
    return (bounds[1] - bounds[0]) / (2 * Z95)


def slope(differences: Sequence[float], ses: Sequence[float]) -> tuple[float, float]:
    """``(slope, standard error)``: the inverse-variance weighted least-squares line of ``differences``
    on the axis position (0, 1, 2, ...), the points taken as independent (each world is sampled apart;
    a standard error is floored at 1e-4 so that a point without spread does not take all the weight)."""
    w = [1 / max(se, 1e-4) ** 2 for se in ses]
    x = range(len(differences))
    mx = sum(wi * xi for wi, xi in zip(w, x)) / sum(w)
    my = sum(wi * yi for wi, yi in zip(w, differences)) / sum(w)
    sxx = sum(wi * (xi - mx) ** 2 for wi, xi in zip(w, x))
    return sum(wi * (xi - mx) * (yi - my) for wi, xi, yi in zip(w, x, differences)) / sxx, 1 / math.sqrt(sxx)


def trend(points: Sequence[dict], budget) -> dict:
    """How ``rules[0] - rules[1]`` moves along the axis at ``budget``, from the points' intervals.

    ``slope``: change per axis step of the weighted line through every point (:func:`slope`), with
    its standard error ``slope_se``; ``grows``: its 95% interval lies above 0; ``near``, ``far``: the
    first and last values' intervals. ``status``: ``"appears"`` (the far end's interval lies above 0
    and the gap grows), ``"far end only"`` (above 0 at the far end, not at the first value, growth
    unclear), ``"all along"`` (above 0 at both ends, growth unclear), ``"reversed"`` (below 0 at the
    far end) or ``"absent"`` (the far end's interval holds 0).
    """
    key = str(budget)
    first, last = points[0], points[-1]
    rate, rate_se = slope([p["difference"][key] for p in points], [_se(p["interval"][key]) for p in points])
    grows = rate - Z95 * rate_se > 0
    far, near = last["interval"][key], first["interval"][key]
    if far[0] > 0:
        status = "appears" if grows else "all along" if near[0] > 0 else "far end only"
    elif far[1] < 0:
        status = "reversed"
    else:
        status = "absent"
    return {"budget": int(budget), "first": first["difference"][key], "last": last["difference"][key],
            "slope": round(rate, 4), "slope_se": round(rate_se, 4), "grows": grows, "far": far, "near": near,
            "status": status}


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def verdict(name: str, mode: Mode, points: Sequence[dict], budgets: Sequence[int], ood_drop: float = 0.05) -> str:
    """One paragraph: per budget, whether ``name`` appears along ``mode.axis`` (:func:`trend`), the
    mechanism's move, and the unpruned accuracy along the axis (a fall of more than ``ood_drop``
    is said to be the lab model leaving its training distribution)."""
    a, b = mode.rules
    trends = [trend(points, bd) for bd in budgets]
    shown = [t["budget"] for t in trends if t["status"] == "appears"]
    first, last = _label(mode.values[0]), _label(mode.values[-1])
    along = [t["budget"] for t in trends if t["status"] == "all along"]
    budgets_ = lambda bs: f"budget{'s' if len(bs) > 1 else ''} {', '.join(map(str, bs))}"
    if shown:
        head = f"{name}: the mode appears along {mode.axis} at {budgets_(shown)}"
        others = [t["budget"] for t in trends if t["status"] != "appears"]
        head += f", not at {', '.join(map(str, others))}." if others else "."
    elif along:
        head = (f"{name}: the mode does not appear along {mode.axis}: at {budgets_(along)} {a} beats {b} all "
                "along the axis, and the axis does not make the gap grow.")
    else:
        head = f"{name}: the mode does not appear along {mode.axis} at any budget measured."
    parts = [head]
    for t in trends:
        parts.append(
            f"At budget {t['budget']}, {a} - {b} goes from {_pts(t['first'])} points [{_pts(t['near'][0])}, "
            f"{_pts(t['near'][1])}] at {first} to {_pts(t['last'])} [{_pts(t['far'][0])}, {_pts(t['far'][1])}] at "
            f"{last} (trend {_pts(t['slope'])} +/- {100 * Z95 * t['slope_se']:.1f} points per step): "
            f"{STATUS[t['status']]}.")
    m0, m1 = points[0]["mechanism"], points[-1]["mechanism"]
    if m0.get("difference") is not None and m1.get("difference") is not None:
        moved = m1["difference"] - m0["difference"]
        parts.append(f"Mechanism ({a} - {b}): {m0['difference']:+.3f} -> {m1['difference']:+.3f} "
                     f"({'toward' if moved > 0 else 'away from'} the failure the mode describes"
                     f"{', its far-end interval above 0' if m1['interval'] and m1['interval'][0] > 0 else ''}).")
    full = [p["full_accuracy"] for p in points]
    if all(f is not None for f in full):
        sentence = f"Unpruned accuracy: {' -> '.join(f'{100 * f:.1f}%' for f in full)}"
        drop = full[0] - min(full)
        if drop > ood_drop:
            sentence += (f"; the unpruned lab model itself loses {100 * drop:.1f} points along the axis (it leaves "
                         "its training distribution), so a gap there mixes pruning with that")
        parts.append(sentence + ".")
    return " ".join(parts)


# ---------------------------------------------------------------- the study

def _config_key(config) -> str:
    return hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def failure_axes(lab, seed: int, questions: int, budgets: Sequence[int] = DEFAULT_BUDGETS,
                 modes: dict | None = None, batch: int = 32, top_k: int = TOP_K, answers_dir=None,
                 progress: bool = True, command: str | None = None) -> dict:
    """Every mode of ``modes`` (default :data:`MODES`) at every axis value, on ``questions`` questions each.

    A world shared by several modes (the default world) is sampled, measured and answered once.
    ``answers_dir``: keep each run's answers there (``{world}-{method}-{budget}.jsonl``; a rerun
    resumes them). Returns the study's JSON (see the module's docstring).
    """
    from tqdm.auto import tqdm

    from .evaluation import evaluate

    modes = MODES if modes is None else modes
    budgets = [int(b) for b in budgets]
    full_budget = lab.num_visual_tokens
    plan = {}  # config -> the (method, budget) runs it needs
    for mode in modes.values():
        for value in mode.values:
            runs = plan.setdefault(axis_config(value), {("none", full_budget)})
            runs.update((m, bd) for m in mode.rules for bd in budgets)
    total = sum(questions * (1 + len(runs)) for runs in plan.values())  # one mechanism pass + the runs
    asked, measured, answered = {}, {}, {}
    with tqdm(total=total, desc="failure axes", unit="q", disable=not progress) as bar:
        def run(config, method, budget):
            if (config, method, budget) not in answered:
                bar.set_postfix(method=method, budget=budget)
                path = None if answers_dir is None else Path(answers_dir) / f"{_config_key(config)}-{method}-{budget}.jsonl"
                result = evaluate(lab.model, lab.processor, asked[config], method, budget, clip=lab.clip,
                                  clip_tokenizer=lab.clip_tokenizer, scoring=lab.scoring, batch=batch, seed=seed,
                                  bar=bar, answers_file=path, model_id=str(lab.name))
                answered[config, method, budget] = {"accuracy": result["accuracy"], "hits": result["hits"]}
            return answered[config, method, budget]

        out = {}
        for name, mode in modes.items():
            start = time.perf_counter()
            points = []
            for value in mode.values:
                config = axis_config(value)
                if config not in asked:
                    asked[config] = axis_questions(questions, seed, config, grid=lab.grid)
                    bar.set_postfix(mechanism=_label(value))
                    measured[config] = mechanism_rows(lab, asked[config], budgets, top_k, bar=bar)
                full = run(config, "none", full_budget)
                runs = {(m, bd): run(config, m, bd) for m in mode.rules for bd in budgets}
                points.append(point(value, mode, mechanism_figure(measured[config], mode, budgets), full, runs,
                                    budgets))
            out[name] = {"axis": mode.axis, "rules": list(mode.rules), "points": points,
                         "verdict": verdict(name, mode, points, budgets), "mechanism_name": mode.mechanism_name,
                         "seconds": round(time.perf_counter() - start, 1)}
            if command is not None:
                out[name]["command"] = command
    return {"seed": int(seed), "questions": int(questions), "modes": out}


# ---------------------------------------------------------------- reading a study (chapter 01)

SHIPPED = "failure-axes-4242.json"  # the shipped run, in eadp_lab.paths.RESULTS
LONG_RUN = "accuracy-lab.json"  # chapter 04's long accuracy run of the lab models, in RESULTS
SHORT = {"global_guidance": "global", "textual_noise": "noise", "topk_redundancy": "topk"}  # glue prefixes
AXIS_TITLES = {"n_objects": "objects per scene: setting (mean drawn)",
               "verbosity": "verbosity: filler clauses (mean words per question)",
               "size_weights, object_scale": "size mix, % tiny/small/large (tokens per named object)"}
MECHANISM_LABELS = {  # what each rule's mechanism figure measures, for the legends
    "global_guidance": ("eadp: entropy-filtered dense map", "eadp-global: global map"),
    "textual_noise": ("eadp: entropy-filtered dense map", "eadp-noentropy: every word averaged"),
    "topk_redundancy": ("eadp: facility location", "eadp-topk: Top-K"),
}
_POINT_KEYS = {"value", "mechanism", "full_accuracy", "accuracy", "difference", "interval"}


def load_study(path=None) -> dict:
    """The JSON ``python -m eadp_lab study failure-axes`` wrote, checked (default: the shipped run,
    :data:`SHIPPED` in :data:`eadp_lab.paths.RESULTS`). Read by ``notebooks/01_motivation_failures``.

    ``ValueError`` naming ``path`` when a mode lacks its axis, rules, points or verdict, or a point
    lacks one of its fields or a budget the others have.
    """
    from .paths import RESULTS

    path = Path(RESULTS / SHIPPED if path is None else path)
    report = json.loads(path.read_text())
    if not isinstance(report, dict) or not isinstance(report.get("modes"), dict) or not report["modes"]:
        raise ValueError(f"{path}: not a failure-axes study (no modes)")
    for name, mode in report["modes"].items():
        missing = {"axis", "rules", "points", "verdict"} - set(mode)
        if missing or len(mode["rules"]) != 2 or not mode["points"]:
            raise ValueError(f"{path}: mode {name!r} lacks {sorted(missing) or 'two rules and its points'}")
        budgets = set(mode["points"][0]["difference"])
        for p in mode["points"]:
            if _POINT_KEYS - set(p) or set(p["difference"]) != budgets or set(p["interval"]) != budgets:
                raise ValueError(f"{path}: a point of {name!r} lacks {sorted(_POINT_KEYS - set(p)) or 'a budget'}")
    return report


def _setting(axis: str, value: dict) -> str:
    """A short label of one axis value: ``2-3``, ``4``, ``35/35/30`` (``x1.25`` when scaled)."""
    if "n_objects" in value:
        low, high = value["n_objects"]
        return str(low) if low == high else f"{low}-{high}"
    if "verbosity" in value:
        return str(value["verbosity"])
    if "size_weights" in value:
        mix = "/".join(f"{100 * w:.0f}" for w in value["size_weights"])
        scale = value.get("object_scale", 1.0)
        return mix if scale == 1 else f"{mix} x{scale:g}"
    return _label(value)


def _context(axis: str, context: dict) -> str:
    """What the world came out as at one axis value, in the unit the axis moves."""
    key, unit = {"n_objects": ("objects", " objects"), "verbosity": ("words", " words")}.get(axis, ("patches", " tokens"))
    value = context.get(key)
    return "" if value is None else f"{value:.1f}{unit}"


def study_frame(report: dict):
    """The study as one tidy frame: a row per mode, axis value and budget (read by chapter 01).

    Columns: ``mode``, ``axis``, ``step`` (0, 1, ... along the axis), ``setting`` (short label),
    ``tick`` (the label with the world's measured context under it), ``rule``, ``ablation``,
    ``budget``; the accuracy figures ``full_accuracy`` (unpruned), ``rule_accuracy``,
    ``ablation_accuracy``, ``difference``, ``low``, ``high`` (rule - ablation and its 95%
    interval); the mechanism figures ``mechanism_rule``, ``mechanism_ablation``,
    ``mechanism_difference``, ``mechanism_low``, ``mechanism_high``, ``mechanism_budget`` (the
    budget of a kept-set figure, else NaN), ``chance`` and ``n`` (questions naming an object);
    ``objects``, ``words``, ``patches`` (the world as drawn). Fractions, not percentages.
    """
    import pandas as pd

    rows = []
    for name, mode in report["modes"].items():
        rule, ablation = mode["rules"]
        for step, p in enumerate(mode["points"]):
            m = p["mechanism"]
            context = m.get("context") or {}
            interval_ = m.get("interval") or [math.nan, math.nan]
            setting = _setting(mode["axis"], p["value"])
            shown = _context(mode["axis"], context)
            for budget in sorted(p["difference"], key=int, reverse=True):
                rows.append({
                    "mode": name, "axis": mode["axis"], "step": step, "setting": setting,
                    "tick": f"{setting}\n({shown})" if shown else setting, "rule": rule, "ablation": ablation,
                    "budget": int(budget), "full_accuracy": p["full_accuracy"],
                    "rule_accuracy": p["accuracy"][rule][budget], "ablation_accuracy": p["accuracy"][ablation][budget],
                    "difference": p["difference"][budget], "low": p["interval"][budget][0],
                    "high": p["interval"][budget][1],
                    **{f"mechanism_{k}": (math.nan if m.get(key) is None else m[key])
                       for k, key in (("rule", rule), ("ablation", ablation), ("difference", "difference"))},
                    "mechanism_low": interval_[0], "mechanism_high": interval_[1],
                    "mechanism_budget": math.nan if m.get("budget") is None else m["budget"],
                    "chance": math.nan if m.get("chance") is None else m["chance"], "n": m.get("n"),
                    **{k: context.get(k, math.nan) for k in ("objects", "words", "patches")}})
    return pd.DataFrame(rows)


def headline(verdict_text: str) -> str:
    """The first sentence of a mode's verdict (whether it appears), without the figures after it."""
    head = verdict_text.split(" At budget ", 1)[0]
    return head.split(": ", 1)[1] if ": " in head else head


def points_text(difference: float, low: float, high: float) -> str:
    """A difference of two fractions in percentage points with its 95% interval:
    ``points_text(0.041, 0.022, 0.06)`` is ``"+4.1 points [+2.2, +6.0]"``."""
    return f"{100 * difference:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]"


def _effect(row) -> str:
    return points_text(row["difference"], row["low"], row["high"])


def study_glue(report: dict) -> dict:
    """The values chapter 01's prose quotes from a study, by name (``{prefix}_...``, prefix from
    :data:`SHORT`): ``verdict`` (the computed paragraph) and ``headline``; per end of the axis
    (``first``, ``last``): ``setting``, ``context`` (objects, words or tokens per named object),
    ``full`` (unpruned accuracy), ``mech_rule``, ``mech_ablation`` (the mechanism figure of each
    rule) and per budget ``effect_{budget}`` (rule - ablation in points with its 95% interval);
    ``drop`` (the unpruned accuracy's largest fall along the axis), ``n`` (questions per value),
    ``default_mech_rule``, ``default_mech_ablation`` (the mechanism on the default world, when the
    axis holds it); and ``study_seed``, ``study_questions``."""
    frame = study_frame(report)
    out = {"study_seed": report.get("seed"), "study_questions": report.get("questions")}
    for name, mode in report["modes"].items():
        key = SHORT.get(name, name)
        rows = frame[frame["mode"] == name]
        out[f"{key}_verdict"] = mode["verdict"]
        out[f"{key}_headline"] = headline(mode["verdict"])
        full = rows.drop_duplicates("step")["full_accuracy"]
        out[f"{key}_drop"] = float(full.iloc[0] - full.min())
        out[f"{key}_n"] = int(rows["n"].min())
        for end, step in (("first", rows["step"].min()), ("last", rows["step"].max())):
            at = rows[rows["step"] == step]
            row = at.iloc[0]
            out[f"{key}_{end}_setting"] = row["setting"]
            out[f"{key}_{end}_context"] = _context(mode["axis"], {k: row[k] for k in ("objects", "words", "patches")})
            out[f"{key}_{end}_full"] = float(row["full_accuracy"])
            out[f"{key}_{end}_mech_rule"] = float(row["mechanism_rule"])
            out[f"{key}_{end}_mech_ablation"] = float(row["mechanism_ablation"])
            for _, r in at.iterrows():
                out[f"{key}_{end}_effect_{r['budget']}"] = _effect(r)
        default = default_point(mode)
        if default is not None:
            rule, ablation = mode["rules"]
            out[f"{key}_default_mech_rule"] = default["mechanism"][rule]
            out[f"{key}_default_mech_ablation"] = default["mechanism"][ablation]
    return out


def plot_mode(frame, name: str, top_k: int = TOP_K):
    """Chapter 01's figure of one mode along its axis, from :func:`study_frame`: the mechanism
    (left), the accuracy effect ``rule - ablation`` in points with its 95% interval per budget
    (middle), and the accuracy of both rules and of the unpruned model (right). Legends sit under
    the panels, clear of the curves. Returns the figure."""
    import matplotlib.pyplot as plt

    from .plots import method_colours

    rows = frame[frame["mode"] == name].sort_values(["step", "budget"])
    if rows.empty:
        raise ValueError(f"the frame has no mode {name!r}; it has {sorted(set(frame['mode']))}")
    first = rows.iloc[0]
    rule, ablation, axis = first["rule"], first["ablation"], first["axis"]
    points = rows.drop_duplicates("step")
    steps, ticks = points["step"].to_numpy(), points["tick"].tolist()
    budgets = sorted(set(rows["budget"]), reverse=True)
    colours = method_colours([rule, ablation])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), layout="constrained")

    ax = axes[0]
    labels = MECHANISM_LABELS.get(name, (rule, ablation))
    for method, column, marker, label in ((rule, "mechanism_rule", "o", labels[0]),
                                          (ablation, "mechanism_ablation", "s", labels[1])):
        ax.plot(steps, 100 * points[column], marker=marker, color=colours[method], label=label)
    kept_budget = first["mechanism_budget"]
    if math.isnan(kept_budget):
        ax.plot(steps, 100 * points["chance"], ls="--", color="0.4", label="chance (named objects' share)")
        ax.set_ylabel(f"top-{top_k} tokens on named objects (%)")
        ax.set_title("mechanism: where the score map points")
    else:
        ax.set_ylabel(f"named objects reached at {int(kept_budget)} tokens (%)")
        ax.set_title("mechanism: what the kept set reaches")

    ax = axes[1]
    offsets = {b: (i - (len(budgets) - 1) / 2) * 0.12 for i, b in enumerate(budgets)}
    shades = dict(zip(budgets, ("0.15", "0.55", "0.75")))
    for b in budgets:
        at = rows[rows["budget"] == b]
        ax.errorbar(at["step"] + offsets[b], 100 * at["difference"],
                    yerr=[100 * (at["difference"] - at["low"]), 100 * (at["high"] - at["difference"])],
                    marker="o", capsize=3, color=shades[b], label=f"{b} tokens (95% interval)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel(f"{rule} minus {ablation} (points)")
    ax.set_title("accuracy effect of the ablated step")

    ax = axes[2]
    ax.plot(steps, 100 * points["full_accuracy"], marker="D", color="k", label="unpruned (every token)")
    for b, style in zip(budgets, ("-", ":", "-.")):
        at = rows[rows["budget"] == b]
        for method, column in ((rule, "rule_accuracy"), (ablation, "ablation_accuracy")):
            ax.plot(at["step"], 100 * at[column], ls=style, marker="o", color=colours[method], label=f"{method} @ {b}")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy, unpruned and pruned")

    for ax in axes:
        ax.set_xticks(steps, ticks)
        ax.set_xlabel(AXIS_TITLES.get(axis, axis))
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2 if ax is not axes[0] else 1,
                  frameon=False, fontsize="small")
    fig.suptitle(f"{name}: {rule} against {ablation} along {axis}")
    return fig


def long_run_gaps(path=None, budget: int = 14, modes: dict | None = None):
    """Each mode's accuracy effect in chapter 04's long run (default :data:`LONG_RUN` in
    :data:`eadp_lab.paths.RESULTS`) at ``budget``, on the default world: a frame indexed by mode
    with ``rule``, ``ablation``, ``difference`` (rule - ablation, paired over the questions),
    ``low``, ``high`` (95%), ``n``, and ``reached_rule``, ``reached_ablation`` (the bench's
    ``named_reached``: the share of questions whose named objects all keep a token). Read by chapter 01."""
    import pandas as pd

    from .evaluation import load_results, paired_difference
    from .paths import RESULTS

    path = RESULTS / LONG_RUN if path is None else path
    rows = {(r["method"], int(r["budget"])): r for r in load_results(path)["results"]}
    out = {}
    for name, mode in (MODES if modes is None else modes).items():
        a, b = mode.rules
        if (a, budget) not in rows or (b, budget) not in rows:
            raise ValueError(f"{path}: no {a} and {b} runs at budget {budget}")
        diff, se, n = paired_difference(rows[a, budget]["hits"], rows[b, budget]["hits"])
        low, high = interval(diff, se)
        out[name] = {"rule": a, "ablation": b, "difference": diff, "low": low, "high": high, "n": n,
                     "reached_rule": rows[a, budget].get("named_reached"),
                     "reached_ablation": rows[b, budget].get("named_reached")}
    return pd.DataFrame.from_dict(out, orient="index")


MECHANISM_SHORT = {"global_guidance": "top-16 share, filtered / global map",
                   "textual_noise": "top-16 share, filtered / every word",
                   "topk_redundancy": "named reached, facility location / Top-K"}


def default_point(mode: dict) -> dict | None:
    """The point of a study's mode (:func:`load_study`) whose world is the default one, or ``None``."""
    from .world import WorldConfig

    return next((p for p in mode["points"] if axis_config(p["value"]) == WorldConfig()), None)


def mechanism_table(report: dict, gaps, budget: int = 14):
    """Chapter 01's table setting mechanism beside accuracy on the default world, one row per mode:
    the study's mechanism figure for both rules (``rule / ablation``), the study's accuracy effect at
    ``budget`` (rule - ablation, points, 95% interval) and the long run's (:func:`long_run_gaps`),
    with the long run's share of questions whose named objects each rule all reaches (the bench's
    ``named_reached``). Strings, ready to show."""
    import pandas as pd

    rows = {}
    for name, mode in report["modes"].items():
        p = default_point(mode)
        if p is None or name not in gaps.index:
            continue
        rule, ablation = mode["rules"]
        m, g, key = p["mechanism"], gaps.loc[name], str(budget)
        low, high = p["interval"][key]
        rows[name] = {
            "ablation": ablation,
            "mechanism (eadp / ablation)": f"{MECHANISM_SHORT.get(name, 'mechanism')}: "
                                           f"{100 * m[rule]:.1f}% / {100 * m[ablation]:.1f}%",
            f"study: effect at {budget} (points)": f"{100 * p['difference'][key]:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]",
            f"long run: effect at {budget} (points)": f"{100 * g['difference']:+.1f} [{100 * g['low']:+.1f}, {100 * g['high']:+.1f}]",
            "long run: all named reached (eadp / ablation)": f"{100 * g['reached_rule']:.1f}% / "
                                                                f"{100 * g['reached_ablation']:.1f}%"}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("mode")


SECOND = "failure-axes-9001.json"  # a second seed of the shipped study, in RESULTS


def shipped(name: str = SHIPPED) -> Path:
    """The path of a shipped result file (:data:`eadp_lab.paths.RESULTS` / ``name``)."""
    from .paths import RESULTS

    return RESULTS / name


def seed_table(reports: Sequence[dict]):
    """Runs of the study on different seeds side by side (chapter 01): one row per mode and seed
    with the verdict's headline (:func:`headline`) and, per budget, the accuracy effect at the two
    ends of the axis (``first -> last``, points with 95% intervals). Strings, ready to show.
    :func:`same_verdicts` says whether the runs agree."""
    import pandas as pd

    rows = []
    for report in reports:
        values = study_glue(report)
        for name, mode in report["modes"].items():
            key = SHORT.get(name, name)
            row = {"mode": name, "seed": report.get("seed"), "verdict": values[f"{key}_headline"]}
            for budget in sorted(mode["points"][0]["difference"], key=int, reverse=True):
                ends = (values[f"{key}_{end}_effect_{budget}"].replace(" points", "") for end in ("first", "last"))
                row[f"{budget} tokens, first -> last value (points)"] = " -> ".join(ends)
            rows.append(row)
    return pd.DataFrame(rows).set_index(["mode", "seed"]).sort_index(level=0, sort_remaining=False)



def same_verdicts(reports: Sequence[dict]) -> dict:
    """``{mode: True/False}``: whether every run of ``reports`` reaches the same answer for the mode
    (it appears, at the same budgets, or it does not)."""
    import re

    def answer(text):
        head = headline(text)
        return re.match(r"the mode appears along .*? at (budgets? [\d, ]+)", head).group(1) \
            if head.startswith("the mode appears") else "no"

    names = set.intersection(*(set(r["modes"]) for r in reports))
    return {n: len({answer(r["modes"][n]["verdict"]) for r in reports}) == 1 for n in sorted(names, key=list(MODES).index)}

def _csv_modes(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in MODES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown modes {bad}; known: {list(MODES)}")
    return names


def main(argv=None) -> int:
    """``python -m eadp_lab study failure-axes ...`` (``argv`` without the two command words)."""
    from .bench.accuracy import _csv_ints

    parser = argparse.ArgumentParser(prog="python -m eadp_lab study failure-axes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=cli_int(0), default=0, help="held-out seed of every world's questions")
    parser.add_argument("--questions", type=cli_int(2), default=500, help="questions per axis value")
    parser.add_argument("--json", required=True, help="write the study here (atomically; checked before any work)")
    parser.add_argument("--budgets", type=_csv_ints, default=list(DEFAULT_BUDGETS), help="tokens kept per image")
    parser.add_argument("--modes", type=_csv_modes, default=list(MODES), help="which failure modes to sweep")
    parser.add_argument("--batch", type=cli_int(1), default=32)
    parser.add_argument("--threads", type=cli_int(1), default=None, help="torch threads (default: torch's)")
    parser.add_argument("--answers-dir", default=None,
                        help="keep every run's answers here; a rerun resumes after the questions already answered")
    parser.add_argument("--model", default="lab", help="VLM: lab (data/models/lab-llava), a hub id or a folder")
    parser.add_argument("--clip", default="auto",
                        help="CLIP to score with: auto (the lab CLIP for lab), a hub id or folder, or none (LLM space)")
    parser.add_argument("--device", default="cpu", help="where the models run (default: %(default)s)")
    parser.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: float32 on CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        check_output(args.json, "--json")
        if args.answers_dir:
            check_output(Path(args.answers_dir) / "probe.jsonl", "--answers-dir")
    except OutputPathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    from .lab import Lab

    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m eadp_lab study failure-axes " + " ".join(sys.argv[3:] if argv is None else argv)
    lab = Lab.load(args.model, device=args.device, dtype=args.dtype,
                   clip=None if str(args.clip).lower() == "none" else args.clip)
    report = failure_axes(lab, args.seed, args.questions, args.budgets, {n: MODES[n] for n in args.modes},
                          batch=args.batch, answers_dir=args.answers_dir, progress=not args.no_progress,
                          command=command)
    for mode in report["modes"].values():
        print(f"\n{mode['verdict']}")
    return save_report(args.json, report, what="figures")
