"""The chapters' measurement passes over many lab questions, each returning tidy DataFrames.

Each study is one loop over held-out records of the lab world, built from the small
measurements of :mod:`eadp_lab.guidance` and :mod:`eadp_lab.analysis`; a chapter calls one
and plots or summarises its frames. Taught in ``notebooks/01_motivation_failures``
(:func:`failure_study`), ``notebooks/02_entropy_analysis`` (:func:`entropy_study`) and
``notebooks/05_video_and_multicrop`` (:func:`video_study`, :func:`crop_study`).

Metrics (one row per question, method and budget unless said otherwise):

- ``top_share``: the share of a score map's ``top_k`` best tokens that lie on the objects the
  question names; ``chance`` is the named objects' share of the image, what a random ranking
  scores on average.
- ``recall``: the share of each named object's patches a kept set keeps, averaged over the
  named objects; ``reached``: the share of the named objects with at least one kept patch;
  ``all_reached``: every named object reached.
- word ``group``: ``content`` (colour, shape, size, count, relation and motion words),
  ``function`` (articles, prepositions, question words), ``punctuation``, ``other`` (nouns such
  as "object" and "image", attribute names such as "colour", answers, and any word the world
  never writes), and the special positions ``start``, ``end``, ``padding``
  (:func:`eadp_lab.guidance.token_group`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from . import guidance as gd
from .evaluation.scores import Z95

__all__ = ["paired_gap", "rank_correlation", "FailureStudy", "failure_study", "GUIDANCE_LABELS", "EntropyStudy", "entropy_study", "video_study", "crop_study"]

# The three score maps of chapter 01's (a), in plotting order.
GUIDANCE_LABELS = ("global (pooled text)", "dense, every word", "dense, entropy-filtered")


def paired_gap(frame: pd.DataFrame, column: str, value: str, a: str, b: str, index: str = "record") -> dict:
    """The mean paired difference ``a - b`` of ``value`` over the units ``index`` that have both.

    ``frame`` is tidy (one row per unit and ``column`` label, e.g. per record and method).
    Returns ``{"a", "b": the two means on the paired units, "gap": mean of a - b, "se": its
    standard error, "low", "high": its 95% interval (``gap -/+ Z95 * se``), "n": paired units,
    "a_better", "b_better": units where one is strictly larger, "verdict": "higher" / "lower"
    (a against b) when the 95% interval excludes 0, else "no clear difference"}``. This is the
    book's one definition of a *clear* difference. Booleans count as 0/1.
    """
    if a == b:
        raise ValueError(f"a and b must be two different {column} labels, got {a!r} twice")
    wide = frame[frame[column].isin([a, b])].pivot_table(index=index, columns=column, values=value, aggfunc="mean")
    if a not in wide or b not in wide:
        raise ValueError(f"{column} has no rows for {a!r} and {b!r}")
    wide = wide[[a, b]].dropna().astype(float)
    diff = wide[a] - wide[b]
    n = len(diff)
    se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    gap = float(diff.mean()) if n else math.nan
    clear = n > 1 and abs(gap) > Z95 * se
    return {"a": float(wide[a].mean()) if n else math.nan, "b": float(wide[b].mean()) if n else math.nan,
            "gap": gap, "se": se, "low": gap - Z95 * se, "high": gap + Z95 * se, "n": n, "a_better": int((diff > 0).sum()), "b_better": int((diff < 0).sum()),
            "verdict": ("higher" if gap > 0 else "lower") if clear else "no clear difference"}


def rank_correlation(x, y, permutations: int = 20_000, seed: int = 0) -> dict:
    """Spearman's rank correlation of paired values and its two-sided permutation p-value.

    ``x``, ``y``: sequences of equal length ``n`` (ties get their average rank). The p-value is
    the share of ``permutations`` random re-pairings (of ``y``'s ranks, seeded) whose correlation
    is at least as large in size, counting the observed pairing once: ``(hits + 1) /
    (permutations + 1)``, never 0. Returns ``{"rho", "p", "n"}`` (NaN below three pairs or when
    either side is constant).
    """
    import numpy as np

    rx, ry = pd.Series(x, dtype=float).rank().to_numpy(), pd.Series(y, dtype=float).rank().to_numpy()
    if len(rx) != len(ry):
        raise ValueError(f"x and y must pair up, got {len(rx)} and {len(ry)} values")
    n = len(rx)
    if n < 3 or rx.std() == 0 or ry.std() == 0:
        return {"rho": math.nan, "p": math.nan, "n": n}
    rx, ry = rx - rx.mean(), ry - ry.mean()
    scale = math.sqrt(float((rx ** 2).sum() * (ry ** 2).sum()))
    rho = float(rx @ ry) / scale
    rng = np.random.default_rng(seed)
    null = np.stack([rng.permutation(ry) for _ in range(permutations)]) @ rx / scale
    hits = int((np.abs(null) >= abs(rho) - 1e-12).sum())
    return {"rho": rho, "p": (hits + 1) / (permutations + 1), "n": n}


def _progress(items, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not progress, leave=False)


@dataclass
class FailureStudy:
    """Chapter 01's measurements.

    ``maps``: per question and guidance map, ``top_share`` and ``chance``; ``kept``: per
    question, method and budget, ``kept``, ``recall``, ``reached``, ``all_reached``; ``words``:
    per scored word, its ``token``, ``group``, spatial ``entropy`` and ``kept_by_filter``. Every
    row carries ``record`` (index into the records), ``qtype``, ``named`` (objects named) and
    ``two_objects`` (a relation, or an object named through a relation).
    """

    maps: pd.DataFrame
    kept: pd.DataFrame
    words: pd.DataFrame

    def filter_coverage(self) -> pd.DataFrame:
        """Per question, what the entropy filter kept against the words there are, beside the dense
        maps' top shares (chapter 01's reading of why the filtered map can lose to averaging every
        word): ``words``, ``content`` (content words), ``kept`` (words the filter keeps),
        ``content_kept``, ``keeps_all_content`` (every content word kept), ``filtered`` and
        ``every_word`` (the two dense maps' ``top_share``), indexed by ``record``."""
        words = self.words.assign(content=self.words.group == "content")
        per = words.groupby("record").agg(words=("token", "size"), content=("content", "sum"),
                                          kept=("kept_by_filter", "sum"))
        per["content_kept"] = words[words.kept_by_filter].groupby("record").content.sum()
        per["content_kept"] = per["content_kept"].fillna(0).astype(int)
        per["keeps_all_content"] = per.content_kept >= per.content
        shares = self.maps.pivot_table(index="record", columns="guidance", values="top_share")
        per["filtered"] = shares[GUIDANCE_LABELS[2]]
        per["every_word"] = shares[GUIDANCE_LABELS[1]]
        return per


def failure_study(lab, records: Sequence, methods: dict, budget: int, budgets: Sequence[int] = (), top_k: int = 16,
                  curve_methods: Sequence[str] = ("topk", "eadp-topk", "eadp", "pool"), progress: bool = True) -> FailureStudy:
    """Chapter 01's pass: for every record that names an object, the three guidance maps'
    ``top_share``, what each method keeps at ``budget``, for two-object questions what
    ``curve_methods`` keep at every budget of ``budgets``, and the words EADP scores.

    Args:
        lab: a :class:`eadp_lab.lab.Lab`; records: world records (``sample(...)``) on ``lab.grid``.
        methods: ``{label: (registry method, settings)}``; must hold ``"eadp"`` and
            ``"eadp-noentropy"`` (their configs give the maps and the filtered words).
        budget, budgets: visual tokens kept; top_k: the top tokens of a map inspected.
    """
    for needed in ("eadp", "eadp-noentropy"):
        if needed not in methods:
            raise ValueError(f"methods must include {needed!r}; got {list(methods)}")
    unknown = [m for m in curve_methods if m not in methods]
    if unknown:
        raise ValueError(f"curve_methods {unknown} are not in methods {list(methods)}")
    config, noentropy = methods["eadp"][1], methods["eadp-noentropy"][1]
    curve = {name: methods[name] for name in curve_methods}
    scorer = gd.scorer_with_positions(lab, "content")  # the text positions EADP scores (the paper's)
    map_rows, kept_rows, word_rows = [], [], []
    for i, r in enumerate(_progress(records, "questions", progress)):
        named = gd.named_objects(r.question)
        if not named:
            continue
        inputs = lab.prune_inputs(r.image, r.question.text)
        masks = gd.object_masks(r.coverage)
        target = gd.union_mask(masks, named)
        maps = gd.guidance_maps(inputs, config)
        info = {"record": i, "qtype": r.qtype, "named": len(named),
                "two_objects": r.qtype == "relation" or r.question.meta.get("anchor") is not None}
        scores = (maps["global"], gd.guidance_maps(inputs, noentropy)["dense"], maps["dense"])
        chance = float(target.float().mean())
        map_rows += [{**info, "guidance": label, "top_share": gd.top_share(s, target, top_k), "chance": chance}
                     for label, s in zip(GUIDANCE_LABELS, scores)]
        kept_rows += [{**info, **row} for row in gd.compare_kept(inputs, masks, named, methods, budget)]
        for b in budgets if info["two_objects"] else ():
            if b != budget:
                kept_rows += [{**info, **row} for row in gd.compare_kept(inputs, masks, named, curve, b)]
        words = gd.filtered_words(inputs, config)
        tokens = scorer.text(r.question.text).tokens
        groups = gd.token_groups(tokens)
        word_rows += [{**info, "token": tokens[l], "group": groups[l], "entropy": float(words["entropy"][l]),
                       "kept_by_filter": bool(words["kept"][l])}
                      for l in torch.nonzero(words["scored"]).flatten().tolist()]
    return FailureStudy(pd.DataFrame(map_rows), pd.DataFrame(kept_rows), pd.DataFrame(word_rows))


@dataclass
class EntropyStudy:
    """Chapter 02's measurements, every position of the published (zero-padded) input scored.

    ``entropy``: per record, text ``position`` (its ``token`` and ``group``), ``sign`` and
    temperature ``tau``, the spatial ``entropy`` (padding positions only at the preset's tau);
    ``pointing``: per word of a question and ``sign``, ``hit`` (the word's best patch lies on an
    object it names; words that name none are left out); ``filter``: per record, sign, tau and
    keep ratio ``rho``, the ``content share`` of the words the filter keeps (every rho at the
    preset's tau, every tau at its rho); ``kept``: what EADP keeps of the named objects
    (``recall``, ``reached``, ...) per ``sign``, ``rho``, ``aggregation`` and text ``positions``
    (``"content (paper)"`` or ``"all (published)"``); ``mask``: per record and sign, the
    ``group`` of each position the published mask's filter keeps; ``top_weight``: per record,
    the largest weight the entropy filter gives one word (the preset's input); ``weights``: per
    record and keep ratio ``rho`` (the preset's sign and input), the ``kept words``, the ``top
    weight`` of ``negative_entropy``'s ``softmax(-H / mu)`` and the ``effective words``
    ``1 / sum(w^2)`` (1: one word carries the score; k: k words share it equally).
    """

    entropy: pd.DataFrame
    pointing: pd.DataFrame
    filter: pd.DataFrame
    kept: pd.DataFrame
    mask: pd.DataFrame
    top_weight: list
    weights: pd.DataFrame | None = None

    def rho_effect(self, aggregation: str, sign: float) -> dict:
        """What the keep ratio does to EADP's kept tokens under one ``aggregation`` (paper mask).

        Returns ``{"recall": Series (mean object recall per rho), "span": largest minus smallest
        mean recall, "low_rho", "high_rho": the keep ratios of the smallest and largest mean recall
        (the smallest and largest keep ratio when every ratio gives the same recall),
        "gap": paired_gap of the recall at ``high_rho`` against ``low_rho`` (its 95% interval),
        "changed": questions whose recall differs between any two keep ratios, "n": questions}``.
        """
        rows = self.kept[(self.kept.positions == "content (paper)") & (self.kept.sign == sign)
                         & (self.kept.aggregation == aggregation)]
        if rows.empty:
            raise ValueError(f"no kept sets for aggregation {aggregation!r} at sign {sign:+g}")
        wide = rows.pivot_table(index="record", columns="rho", values="recall")
        recall = wide.mean()
        low, high = float(recall.idxmin()), float(recall.idxmax())
        if low == high:  # the same recall at every keep ratio: compare the two ends of the range
            low, high = float(recall.index.min()), float(recall.index.max())
        labelled = rows.assign(rho=rows.rho.map("{:g}".format))
        gap = paired_gap(labelled, "rho", "recall", f"{high:g}", f"{low:g}")
        return {"recall": recall, "span": float(recall.max() - recall.min()), "low_rho": low, "high_rho": high,
                "gap": gap, "changed": int((wide.max(axis=1) > wide.min(axis=1)).sum()), "n": len(wide)}


def entropy_study(lab, records: Sequence, config, temperatures: Sequence[float], keep_ratios: Sequence[float],
                  budget: int, signs: Sequence[float] = (1.0, -1.0), progress: bool = True) -> EntropyStudy:
    """Chapter 02's pass over ``records``: entropies at every temperature and sign, the pointing
    game, the filter's content share per keep ratio, and EADP's kept sets per sign, keep ratio,
    aggregation (the preset's sign only: also the plain mean) and token mask.

    Args:
        lab: a :class:`eadp_lab.lab.Lab`; records: world records on ``lab.grid``.
        config: EADP's :class:`eadp_lab.EADPConfig` (the preset); its ``entropy_temperature``
            and ``entropy_keep_ratio`` must be among ``temperatures`` and ``keep_ratios``.
        budget: visual tokens kept.
    """
    from . import scoring
    from .world import patch_masks, pointing_hits

    tau, rho, sigma = config.entropy_temperature, config.entropy_keep_ratio, config.similarity_sign
    if tau not in temperatures or rho not in keep_ratios:
        raise ValueError(f"the preset's tau {tau:g} and rho {rho:g} must be among temperatures {list(temperatures)} "
                         f"and keep_ratios {list(keep_ratios)}")
    published = gd.scorer_with_positions(lab, "all")
    entropy_rows, point_rows, filter_rows, kept_rows, mask_rows, top_weight, weight_rows = [], [], [], [], [], [], []
    for i, r in enumerate(_progress(records, "questions", progress)):
        inputs = lab.prune_inputs(r.image, r.question.text)
        text_all = published.text(r.question.text)
        padded = gd.with_text(inputs, text_all)
        groups = gd.token_groups(text_all.tokens)
        words = torch.tensor([g not in ("start", "end", "padding") for g in groups])
        is_content = torch.tensor([g == "content" for g in groups])
        cos = scoring.dense_similarity(padded.scoring_embeds, padded.text_embeds_seq, 1.0)[0, :, 0].T  # (L, N)
        unpadded = [l for l, g in enumerate(groups) if g != "padding"]
        for s in signs:
            H = gd.entropy_at(s * cos, temperatures)  # (T, L)
            for t, temperature in enumerate(temperatures):
                entropy_rows += [{"record": i, "position": l, "token": text_all.tokens[l], "group": groups[l],
                                  "sign": s, "tau": temperature, "entropy": float(H[t, l])}
                                 for l in (range(len(groups)) if temperature == tau else unpadded)]
                ratios = keep_ratios if temperature == tau else [rho]
                share = gd.filter_share(H[t][words], is_content[words], ratios)
                filter_rows += [{"record": i, "sign": s, "tau": temperature, "rho": q, "content share": float(v)}
                                for q, v in zip(ratios, share)]
            if len(r.question.tokens) == int(words.sum()):  # one position per word (the lab's word-level tokenizer)
                hits = pointing_hits((s * cos[words]).numpy(), r.question.refs, patch_masks(r.coverage))
                point_rows += [{"record": i, "sign": s, "group": g, "hit": h}
                               for g, h in zip([g for g, w in zip(groups, words) if w], hits) if not math.isnan(h)]
            kept = gd.filtered_words(padded, config.replace(similarity_sign=s, text_positions="all"))["kept"]
            mask_rows += [{"record": i, "sign": s, "group": groups[l]} for l in torch.nonzero(kept).flatten().tolist()]
        top_weight.append(float(gd.filtered_words(inputs, config)["weight"].max()))
        for q in keep_ratios:
            w = gd.filtered_words(inputs, config.replace(entropy_keep_ratio=q))
            weight = w["weight"][w["kept"]]
            weight_rows.append({"record": i, "rho": q, "kept words": int(w["kept"].sum()),
                                "top weight": float(weight.max()), "effective words": float(1 / (weight ** 2).sum())})
        named = gd.named_objects(r.question)
        if not named:
            continue
        masks = gd.object_masks(r.coverage)
        info = {"record": i, "qtype": r.qtype}
        for s in signs:
            for q in keep_ratios:
                for aggregation in (config.aggregation, "mean") if s == sigma else (config.aggregation,):
                    variant = {"eadp": ("eadp", config.replace(similarity_sign=s, entropy_keep_ratio=q,
                                                               aggregation=aggregation))}
                    kept_rows += [{**info, **row, "sign": s, "rho": q, "aggregation": aggregation,
                                   "positions": "content (paper)"}
                                  for row in gd.compare_kept(inputs, masks, named, variant, budget)]
            variant = {"eadp": ("eadp", config.replace(similarity_sign=s, text_positions="all"))}
            kept_rows += [{**info, **row, "sign": s, "rho": rho, "aggregation": config.aggregation,
                           "positions": "all (published)"}
                          for row in gd.compare_kept(padded, masks, named, variant, budget)]
    return EntropyStudy(pd.DataFrame(entropy_rows), pd.DataFrame(point_rows), pd.DataFrame(filter_rows),
                        pd.DataFrame(kept_rows), pd.DataFrame(mask_rows), top_weight, pd.DataFrame(weight_rows))


def video_study(lab, clips: Sequence, rules: dict, budgets: Sequence[int], frame_budget: int | None = None,
                progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chapter 05's clip pass: every clip's frames pruned as rows under each allocation rule.

    Args:
        lab: a :class:`eadp_lab.lab.Lab`; clips: world clip records (``sample_clips``).
        rules: ``{label: EADPConfig}``; budgets: tokens per frame before allocation.
        frame_budget: the budget at which the per-frame quotas are recorded (``None``: none).
    Returns:
        ``(results, frames)``: per clip, budget and rule, ``kept``, ``asked recall``, ``asked
        reached`` and ``moving recall`` (the moving objects' recall; NaN if none moves); and at
        ``frame_budget``, per frame of a clip whose question names an object, the ``asked
        patches in frame`` and the ``tokens given to frame``.
    """
    from . import analysis

    rows, frame_rows = [], []
    for rec in _progress(clips, "clips", progress):
        inputs = analysis.stack_rows([lab.prune_inputs(frame, rec.question.text) for frame in rec.frames])
        masks = analysis.row_object_masks(rec.coverage)
        asked, moving = analysis.asked_objects(rec), analysis.moving_objects(rec.clip)
        for budget in budgets:
            for row in analysis.allocation_study(inputs, masks, asked, budget, rules):
                keep = row["result"].keep_mask
                rows.append({"clip": rec.index, "budget": budget, "rule": row["label"], "kept": row["kept"],
                             "asked recall": row["recall"], "asked reached": row["reached"],
                             "moving recall": float(analysis.row_object_recall(keep, masks)[list(moving)].mean())
                             if moving else math.nan})
                if budget == frame_budget and asked:
                    share = masks[:, list(asked)].any(1).sum(-1).float()
                    frame_rows += [{"clip": rec.index, "frame": t, "rule": row["label"],
                                    "asked patches in frame": float(share[t]), "tokens given to frame": q}
                                   for t, q in enumerate(row["quotas"])]
    return pd.DataFrame(rows), pd.DataFrame(frame_rows)


def crop_study(lab, images: Sequence, rules: dict, budgets: Sequence[int], progress: bool = True) -> pd.DataFrame:
    """Chapter 05's AnyRes pass: each image's base view and crops pruned as rows under each rule.

    Args:
        lab: a :class:`eadp_lab.lab.Lab`; images: world multicrop records (``sample_multicrop``).
        rules: ``{label: EADPConfig}``; budgets: tokens per row before allocation.
    Returns:
        Per image whose question names an object, budget and rule: ``kept``, ``asked recall``,
        ``asked reached`` and ``tokens to crops with asked objects`` (their share of the kept tokens).
    """
    import numpy as np

    from . import analysis

    rows = []
    for rec in _progress(images, "images", progress):
        asked = analysis.asked_objects(rec)
        if not asked:
            continue
        inputs = analysis.stack_rows([lab.prune_inputs(v, rec.question.text) for v in [rec.base] + list(rec.crops)])
        masks = analysis.row_object_masks(np.concatenate([rec.base_coverage[None], rec.crop_coverage]))
        holding = sorted({c + 1 for k in asked for c, _ in rec.object_crops[k]})  # rows of the crops (row 0: base)
        for budget in budgets:
            for row in analysis.allocation_study(inputs, masks, asked, budget, rules):
                rows.append({"image": rec.index, "budget": budget, "rule": row["label"], "kept": row["kept"],
                             "asked recall": row["recall"], "asked reached": row["reached"],
                             "tokens to crops with asked objects": sum(row["quotas"][r] for r in holding) / row["kept"]})
    return pd.DataFrame(rows)
