"""Model cards (``README.md``) of the lab models, written from their ``training.json``.

A card says what the model is, how it was trained and on what, and its measured figures,
so a number in a notebook can always be traced to the run that made it (the model-card
practice of Mitchell et al., FAT* 2019, sized for a lab model). Taught in
``notebooks/00_tour``.
"""

from __future__ import annotations

__all__ = ["clip_card", "llava_card", "grounding_table", "sign_table"]

_KINDS = ("colour", "shape", "size", "count", "relation", "attribute", "noun", "function", "punctuation",
          "content", "function+punctuation", "grounded")


def _rerun_text(history: dict) -> str:
    """The card's sentences on how the timing was taken and whether a rerun matched, from the
    history's ``timing`` note and ``compared_with`` record (``--compare-with``)."""
    text = f" {history['timing']}" if history.get("timing") else ""
    c = history.get("compared_with")
    if c:
        text += (f" This run's weights were compared with `{c['folder']}`'s: "
                 + ("bitwise equal." if c["bitwise_equal"] else
                    f"**not** equal (largest difference {c['max_abs_difference']})."))
    return text


def _fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def _pct(x):
    return "–" if x is None else f"{100 * x:.1f}%"


def grounding_table(summary: dict) -> str:
    """A markdown table of :func:`eadp_lab.labmodels.measure.summarise_grounding` output."""
    lines = ["| word kind | tokens | entropy (σ=+1) | entropy (σ=−1) | pointing (σ=+1) | pointing (σ=−1) | pointing chance | peak on an object | object chance |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind in _KINDS:
        row = summary.get(kind)
        if not row:
            continue
        lines.append(f"| {kind} | {row['tokens']} | {_fmt(row['entropy'])} | {_fmt(row['entropy_neg'])} | "
                     f"{_pct(row['pointing'])} | {_pct(row.get('pointing_neg'))} | {_pct(row['pointing_chance'])} | {_pct(row['peak_on_object'])} | "
                     f"{_pct(row['object_chance'])} |")
    return "\n".join(lines)


def _settings_table(settings: dict, skip=()) -> str:
    lines = ["| setting | value |", "| --- | --- |"]
    for key, value in settings.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        lines.append(f"| `{key}` | {value} |")
    return "\n".join(lines)


def sign_table(summary: dict) -> str:
    """Per word kind, entropy and pointing at both signs (:func:`eadp_lab.labmodels.measure.by_sign` output)."""
    lines = ["| word kind | tokens | entropy σ=+1 | entropy σ=−1 | pointing σ=+1 | pointing σ=−1 | peak on an object σ=+1 | σ=−1 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind, pos in summary["+1"].items():
        neg = summary["-1"][kind]
        lines.append(f"| {kind} | {pos['tokens']} | {_fmt(pos['entropy'])} | {_fmt(neg['entropy'])} | "
                     f"{_pct(pos['pointing'])} | {_pct(neg['pointing'])} | {_pct(pos['peak_on_object'])} | "
                     f"{_pct(neg['peak_on_object'])} |")
    return "\n".join(lines)


def _dense_curve(log: list) -> str:
    rows = [e for e in log if "val_acc" in e]
    if not rows:
        return ""
    lines = ["| step | colour | shape | size | centre row | centre column |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {e['step'] + 1} | " + " | ".join(_pct(a) for a in e["val_acc"]) + " |" for e in rows]
    return "\n".join(lines)


def _check_curve(log: list) -> str:
    rows = [e for e in log if "check" in e]
    if not rows:
        return ""
    lines = ["| step | colour pointing σ=+1 / −1 | shape pointing σ=+1 / −1 | entropy colour σ=+1 / −1 | entropy function σ=+1 / −1 |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for e in rows:
        c = e["check"]
        lines.append(f"| {e['step'] + 1} | {_pct(c['+1']['colour']['pointing'])} / {_pct(c['-1']['colour']['pointing'])} | "
                     f"{_pct(c['+1']['shape']['pointing'])} / {_pct(c['-1']['shape']['pointing'])} | "
                     f"{_fmt(c['+1']['colour']['entropy'], 2)} / {_fmt(c['-1']['colour']['entropy'], 2)} | "
                     f"{_fmt(c['+1']['function']['entropy'], 2)} / {_fmt(c['-1']['function']['entropy'], 2)} |")
    return "\n".join(lines)


def clip_card(report: dict, probe: dict | None = None, control: dict | None = None) -> str:
    """A lab CLIP's card (the main one or, with ``report["control"]``, the global-only control).

    ``probe``: a ``python -m eadp_lab probe`` report to quote; ``control``: the control CLIP's
    ``training.json`` (its figures go beside the main model's).
    """
    s, h, f = report["settings"], report["history"], report["figures"]
    size, r = s["size"], f["retrieval"]
    is_control = bool(report.get("control"))
    name = "lab-clip-global" if is_control else "lab-clip"
    sign = f.get("sign", {})
    if is_control:
        training = f"""A CLIP trained the way CLIP itself is (Radford et al., ICML 2021): from scratch, every
layer trained, on the same {s['align_images']} scenes and the same texts as `lab-clip` (a caption, a
question and a false caption per visit), with **only** the global symmetric InfoNCE loss on the
pooled embeddings (false captions as extra negatives), {s['align_steps']} steps of {s['align_batch']}
images, AdamW lr {s['lr']}, {s['warmup']} warm-up steps then cosine decay. It is the control of
`lab-clip`: does global-only training reproduce what real CLIP ViT-L does to dense similarity (the
sign flip the published EADP code corrects with σ = −1, and noisy function words)?"""
    else:
        dense = h.get("dense", {})
        training = f"""Two stages, one command.

1. **Dense pre-training of the vision tower** ({s['dense_steps']} steps of {s['dense_batch']} images,
   {s['images']} `train` scenes of seed {s['seed']}, random horizontal and vertical flips = {s['flips']}).
   Each patch is labelled from the scene's label map with the colour, shape and size of the object
   covering it (background is a class), the grid cell of that object's centre and the log of its
   area in patches; a training-only read-out (LayerNorm, Linear) of the layer −2 states learns them
   with the ViT (cross-entropy; squared error for the area; weights {list(s['dense_weights'])} for colour,
   shape, size, row, column, area). AdamW lr {s['dense_lr']}, {s['dense_warmup']} warm-up steps, cosine.
   **Why:** the layer −2 states are what the lab LLaVA reads and every pruner scores; the first lab
   CLIP, trained with contrastive losses alone for 320 steps, carried colour but not shape (a linear
   probe found shape in 27% of objects, chance 17%), so no language model could answer about shapes.
   Read-out accuracy on object patches of 500 `val` images during training:

{_dense_curve(dense.get('log', []))}

2. **Locked-image alignment** (LiT: Zhai et al., CVPR 2022; {s['align_steps']} steps of {s['align_batch']}
   images, the first {s['align_images']} scenes). The embeddings and the first {s['locked_layers']} vision
   layers are frozen, so the layer −2 states stay those of stage 1; the last vision layer, both
   projections and the text tower learn CLIP's global InfoNCE (captions with false captions as extra
   negatives, and questions), FILIP's token-wise loss (Yao et al., ICLR 2022) and a GLIP-style
   word-to-patch grounding loss (each colour, shape or size word's softmax over its image's patches
   should fall on the objects it names), all on exactly the pathway EADP scores with (layer −2 states,
   CLS dropped, `post_layernorm`, `visual_projection`; `last_hidden_state @ text_projection`). AdamW lr
   {s['lr']}, {s['warmup']} warm-up steps, cosine, gradient clipping 1.0. Grounding on 100 `val`
   questions during this stage:

{_check_curve(h.get('align', {}).get('log', []))}"""
    times = (f"data {h.get('data_seconds', 0):.0f} s, stage 1 {h.get('dense', {}).get('seconds', 0):.0f} s, "
             f"stage 2 {h.get('align', {}).get('seconds', 0):.0f} s")
    chosen = sign.get("chosen")
    sign_text = "" if chosen is None else f"""
## The similarity sign

At σ = +1 this CLIP's colour, shape and size words point at the objects they name
{_pct(sign['pointing']['+1'])} of the time, at σ = −1 {_pct(sign['pointing']['-1'])} (mean over those
words of the questions below). Its `config.json` therefore declares
`"eadp_similarity_sign": {chosen:+g}`: `eadp_lab.attach(..., scoring="clip")`, `Lab`, the benches and the
chapters use that sign with this CLIP unless told otherwise. Real CLIP checkpoints declare none and
keep the published σ = −1.
"""
    role = "" if is_control else ('It is the vision tower of `lab-llava` and the CLIP that '
                                  '`eadp_lab.attach(..., scoring="clip")` scores with. ')
    probe_text = ""
    if probe:
        pp, ob = probe["probe"]["per_patch"], probe["probe"]["object"]
        probe_text = f"""
## What the visual tokens hold

`{probe['command'].strip()}` (heldout scenes of a seed no model trained on): linear probes on the
layer −2 patch states (the lab LLaVA's visual tokens), fitted on 80% of the scenes, tested on 20%:

| probe | colour | shape | size | test examples |
| --- | ---: | ---: | ---: | ---: |
| per patch | {_pct(pp['colour'])} | {_pct(pp['shape'])} | {_pct(pp['size'])} | {pp['test_examples']} |
| averaged over each object's patches | {_pct(ob['colour'])} | {_pct(ob['shape'])} | {_pct(ob['size'])} | {ob['test_examples']} |
"""
    control_text = ""
    if control:
        cf = control["figures"]
        cs = cf.get("sign", {})
        control_text = f"""
## Control: the same data, the global loss alone (`lab-clip-global`)

{sign_table(cf['summary'])}

Its content words point at their objects {_pct(cs.get('pointing', {}).get('+1'))} of the time at σ = +1 and
{_pct(cs.get('pointing', {}).get('-1'))} at σ = −1; true caption against a false one
{_pct(cf['retrieval']['true_vs_swapped'])}. See its own card (`data/models/lab-clip-global/README.md`).
"""
    return f"""---
library_name: transformers
pipeline_tag: zero-shot-image-classification
tags: [clip, eadp-lab, lab-world, tiny]
---

# {name}: a tiny CLIP trained on the eadp-lab world

A `CLIPModel` ({size['vision_layers']}-layer ViT of width {size['vision_width']} on {size['image_size']} px images with
{size['patch_size']} px patches, a 16x16 grid of 256 visual tokens; a {size['text_layers']}-layer causal text tower of
width {size['text_width']}; projection {size['projection_dim']}), with a word-level
`PreTrainedTokenizerFast` over the world's closed vocabulary (`<s> words </s>`) and a
`CLIPImageProcessor`. {role}Weights are
stored in float16; load with `CLIPModel.from_pretrained(path, dtype=torch.float32)`.

## Training

`{report['command'].strip()}` ({h.get('total_train_seconds', 0):.0f} s of training on a 2-core CPU: {times}).
Reproducible from the seed at the same thread count ({s['threads']}); checkpointed every few minutes, a stopped
run resumes where it stopped and ends with the same weights.{_rerun_text(h)}

{training}

{_settings_table(s)}
{sign_text}
## Dense alignment at both signs

On the questions of {f['records']} records of the `{f['split']}` split (seed {f['seed']}), the instructions
EADP scores. Entropy: EADP's spatial entropy (`eadp_lab.scoring.dense_similarity` then
`spatial_entropy`, temperature 100, over the 256 patches, at most ln 256 = 5.55). Pointing: the word's
highest-scoring patch lies on an object it names (patch masks at coverage 0.25); peak on an object: on
any object.

{sign_table(f['summary'])}

Every word kind, questions (σ = +1 unless marked):

{grounding_table(f['questions'])}

Captions:

{grounding_table(f['captions'])}

## Global retrieval

- True caption against a false one of the same style (a colour or shape no object has, or a reversed
  relation): **{_pct(r['true_vs_swapped'])}** of {r['swapped_pairs']} images.
- Image-to-caption top-1 among {r['pool']} captions: **{_pct(r['image_to_text_top1'])}** (chance {_pct(1 / r['pool'])}).
{probe_text}{control_text}"""


def _noise(report: dict) -> str:
    """How far apart two methods' accuracies must be on the report's questions to be a ranking."""
    from ..evaluation import max_standard_error

    n = report["questions"]["count"]
    se = 100 * max_standard_error(n)
    return (f"On {n} questions one accuracy's standard error is at most {se:.1f} points, so a gap under "
            f"{2 * 2 ** 0.5 * se:.1f} points between two methods (two standard errors of a difference of "
            f"independent estimates; the same questions make it smaller) is not a ranking.")


def _gap_table(gap) -> str:
    """A renumbered-minus-original frame (:func:`eadp_lab.evaluation.positions_gap`) as a markdown table in points."""
    lines = ["| method | " + " | ".join(f"@ {b}" for b in gap.columns) + " |",
             "| --- |" + " ---: |" * len(gap.columns)]
    return "\n".join(lines + [f"| {m} | " + " | ".join(f"{100 * v:+.1f}" for v in row) + " |"
                              for m, row in gap.iterrows()])


def replication_part(first: tuple, second: tuple) -> list[str]:
    """The card's lines on a second sample of questions: ``first`` and ``second`` are the
    ``(renumbered, original)`` reports of two seeds (:func:`eadp_lab.evaluation.replication_figures`)."""
    from ..position_study import matched, positions_gap, replication_figures

    first, second = matched(*first), matched(*second)  # what both positions ran (VisionZip has no original ones)
    f = replication_figures(first, second)
    commands = "; ".join(f"`{r.get('command', '').strip()}`" for r in second)
    return ["", "### The same two runs on a second sample of questions", "",
            f"{commands} ({second[0]['questions']['count']} questions, seed {second[0].get('seed')}). Renumbered "
            f"minus original positions (points):", "", _gap_table(positions_gap(*second)), "",
            f"{f['replication_beyond']} of {f['replication_cells']} cells differ by more than 2 points here; "
            f"{f['replication_both']}. Cell by cell, {f['replication_reading']}. Pooled over both samples, "
            f"{f['pooled_beyond']} of the {f['pooled_cells']} cells differ by more than 2 points, "
            f"{f['pooled_verdict']}; compared question by question, {f['pooled_intervals']}. In the renumbered runs, {f['replication_best'][0].lower()}"
            f"{f['replication_best'][1:]}."]


def pruning_section(renumbered: dict | None, original: dict | None, replicate: tuple | None = None) -> str:
    """The card's "under pruning" section from the accuracy bench's two reports (either may be missing);
    ``replicate``: the same two runs on other questions, ``(renumbered, original)``, or ``None``."""
    from ..evaluation import markdown_table, report_questions, results_frame
    from ..position_study import (answer_split, matched, positions_figures, positions_gap, positions_type_gap,
                                  records_spacing,
                                  spacing_correlations, spacing_figures, spacing_frame, type_gap_figures)

    if renumbered is None and original is None:
        return ""
    parts = ["## Under pruning (the accuracy bench)", "",
             "Every method of the registry and EADP's ablations, on the same held-out questions, through "
             "`eadp_lab.attach` inside `model.generate` (greedy; exact match of the first generated word). "
             "`named_reached`: the share of questions whose named objects each keep at least one visual token; "
             "`named_recall`: the mean share of their tokens kept (both from the scene description; existence "
             "questions about an absent object are left out). Figures in %."]
    for title, report in (("Kept tokens renumbered (what dropping tokens from a LLaVA sequence does; `attach`'s "
                           "default)", renumbered), ("Kept tokens at their original positions (`--positions original`)",
                                                     original)):
        if report is None:
            continue
        frame = results_frame(report)
        best = {b: frame[b].drop(index="none", errors="ignore").idxmax() for b in frame.columns if b != max(frame.columns)}
        parts += ["", f"### {title}", "", f"`{report.get('command', '').strip()}` (sign {report.get('sign')}, "
                  f"{report['questions']['count']} questions, seed {report.get('seed')})", "",
                  markdown_table(report, ("accuracy", "named_reached", "named_recall")), "",
                  "Best accuracy per budget: " + ", ".join(f"{b} tokens: `{m}` ({100 * frame.loc[m, b]:.1f})"
                                                           for b, m in best.items()) + ". " + _noise(report)]
    if renumbered is not None and original is not None:
        renumbered, original = matched(renumbered, original)  # the methods both runs hold
        gap = positions_gap(renumbered, original)
        worst = gap.abs().stack().idxmax()
        figures = positions_figures(renumbered, original)  # the chapters' figures of the same two runs
        verdict = "met" if figures["positions_beyond"] == 0 else "missed"
        parts += ["", "### Renumbered minus original positions (points)", "", _gap_table(gap), "",
                  f"The largest gap is {100 * gap.loc[worst]:+.1f} points (`{worst[0]}` at {worst[1]} tokens): the "
                  f"target of at most 2 points for every method and budget is {verdict}. Compared question by "
                  f"question, {figures['positions_intervals']}."]
        if records_spacing(renumbered):
            frame = spacing_frame(renumbered, renumbered, original)
            spread = spacing_figures(frame, spacing_correlations(frame))
            parts += ["", f"**What the gap follows.** Ranked against how spread out each method's kept tokens lie "
                      f"(the mean distance from a kept token to its nearest kept neighbour, in patches), the gap's "
                      f"rank correlation is {spread['spacing_rho']:+.2f} over the {spread['spacing_cells']} cells "
                      f"(permutation p {spread['spacing_p']:.3f}) and {spread['spacing_budget_rho']:+.2f} at "
                      f"{spread['spacing_budget']} tokens (p {spread['spacing_budget_p']:.3f}): "
                      f"{spread['spacing_verdict']}. {spread['spacing_contrast']}. The reading this supports, without "
                      f"proving it (ten methods, and spread goes with other properties of a method): renumbering maps "
                      f"an evenly spread selection onto something like the squeezed image this model was trained on, "
                      f"and a clustered one onto a layout it never saw. The appendix on position ids plots it."]
        questions = report_questions(renumbered) if all(
            r.get("hits") for report in (renumbered, original) for r in report["results"] if r["method"] != "none") else None
        split = (answer_split(renumbered, original, questions)
                 if questions is not None and any(q.qtype == "exist" for q in questions) else None)
        kinds = type_gap_figures(positions_type_gap(renumbered, original), split)
        parts += ["", f"**Which questions.** Split by question type, {kinds['type_gap_rise']}; "
                  f"{kinds['type_gap_fall']}."
                  + (f" Split by answer (the same kept tokens in both runs), the `exist` questions change by "
                     f"{kinds['type_gap_split']}." if split is not None else "")
                  + " The appendix on position ids draws it per method and budget and discusses what it says about how this model "
                    "reads positions."]
        if replicate is not None and all(r is not None for r in replicate):
            parts += replication_part((renumbered, original), replicate)
    return "\n".join(parts) + "\n"


def llava_card(report: dict) -> str:
    """The lab LLaVA's card."""
    s, h, f = report["settings"], report["history"], report["figures"]
    size = s["size"]
    rows = ["| question type | questions | accuracy | majority answer (chance) |", "| --- | ---: | ---: | ---: |"]
    for qtype, row in f["per_type"].items():
        rows.append(f"| {qtype} | {row['questions']} | {_pct(row['accuracy'])} | {_pct(row.get('majority'))} |")
    rows.append(f"| **all** | {f['questions']} | **{_pct(f['accuracy'])}** | |")
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [llava, eadp-lab, lab-world, tiny]
---

# lab-llava: a tiny LLaVA trained on the eadp-lab world

A `LlavaForConditionalGeneration` in the LLaVA-1.5 layout: the `lab-clip` vision tower (frozen,
weights identical to `data/models/lab-clip`), read at `vision_feature_layer=-2` with
`vision_feature_select_strategy="default"` (CLS dropped: 256 visual tokens), a two-layer GELU MLP
projector, and a Llama language model ({size['lm_layers']} layers, width {size['lm_width']},
{size['lm_heads']} heads, MLP {size['lm_mlp']}). `LlavaProcessor`: the CLIP image processor and a
word-level tokenizer (`<s> words`, left padding) and a chat template that asks the question
before the image. Prompt: `USER: {{question}} <image> ASSISTANT:`; the answer is one word then
`</s>`. The question comes first so that the visual tokens of this small causal language model can
read it (`eadp_lab.attach` reads the instruction before the image in that case). Weights are stored in float16; load with
`LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)`.

## Training

`{report['command'].strip()}` ({h.get('total_train_seconds', 0):.0f} s on a 2-core CPU: data and vision
features {h['data_seconds']:.0f} s, training {h['train_seconds']:.0f} s{'; ' + h['resumed'] if h.get('resumed') else ''}).
Reproducible from the seed at the same thread count ({s['threads']}); checkpointed every few minutes, a stopped
run resumes where it stopped and ends with the same weights.{_rerun_text(h)}

{report.get('recipe', '')}

{_settings_table(s)}

## Measured figures

Held-out accuracy with all 256 visual tokens, through `model.generate` (greedy, exact match of the
first generated word) on {f['questions']} questions of the `{f['split']}` split (seed {f['seed']}), in the
world's question mix:

{chr(10).join(rows)}

{report.get('notes', '')}
{report.get('pruning', '')}"""
