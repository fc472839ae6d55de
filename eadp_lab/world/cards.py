"""Model cards (``README.md``) of the lab models, written from their ``training.json``.

A card says what the model is, how it was trained and on what, and its measured figures,
so a number in a notebook can always be traced to the run that made it (the model-card
practice of Mitchell et al., FAT* 2019, sized for a lab model). Taught in
``notebooks/00_tour``.
"""

from __future__ import annotations

__all__ = ["clip_card", "llava_card", "grounding_table"]

_KINDS = ("colour", "shape", "size", "count", "relation", "attribute", "noun", "function", "punctuation",
          "content", "function+punctuation", "grounded")


def _fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def _pct(x):
    return "–" if x is None else f"{100 * x:.1f}%"


def grounding_table(summary: dict) -> str:
    """A markdown table of :func:`eadp_lab.world.measure.summarise_grounding` output."""
    lines = ["| word kind | tokens | entropy (σ=+1) | entropy (σ=−1) | pointing | pointing chance | peak on an object | object chance |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind in _KINDS:
        row = summary.get(kind)
        if not row:
            continue
        lines.append(f"| {kind} | {row['tokens']} | {_fmt(row['entropy'])} | {_fmt(row['entropy_neg'])} | "
                     f"{_pct(row['pointing'])} | {_pct(row['pointing_chance'])} | {_pct(row['peak_on_object'])} | "
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


def clip_card(report: dict) -> str:
    """The lab CLIP's card."""
    s, h, f = report["settings"], report["history"], report["figures"]
    size = s["size"]
    q, c, r = f["questions"], f["captions"], f["retrieval"]
    filip = s["filip_weight"] > 0
    last = h["log"][-1]
    return f"""---
library_name: transformers
pipeline_tag: zero-shot-image-classification
tags: [clip, eadp-lab, lab-world, tiny]
---

# lab-clip: a tiny CLIP trained on the eadp-lab world

A `CLIPModel` ({size['vision_layers']}-layer ViT of width {size['vision_width']} on 96 px images with
6 px patches, a 16x16 grid of 256 visual tokens; a {size['text_layers']}-layer causal text tower of
width {size['text_width']}; projection {size['projection_dim']}), with a word-level
`PreTrainedTokenizerFast` over the world's closed vocabulary (`<s> words </s>`) and a
`CLIPImageProcessor`. It is the vision tower of `lab-llava` and the CLIP that
`eadp_lab.attach(..., scoring="clip")` scores with. Weights are stored in float16; load with
`CLIPModel.from_pretrained(path, dtype=torch.float32)`.

## Training

`{report['command'].strip()}` ({h['total_seconds']:.0f} s on a 2-core CPU: data {h['data_seconds']:.0f} s,
training {h['train_seconds']:.0f} s, the rest measuring). Reproducible from the seed on the same
thread count.

- Data: {s['images']} scenes of the world's `train` split (seed {s['seed']}), {s['steps']} steps of
  {s['batch']} images. Each image is seen with a fresh caption (list, relation, count or object
  style), a question of the world whose every colour, shape and size word names an object of the
  scene (the instructions EADP scores are questions), and a false caption (one colour or shape
  swapped for one no object has, or a relation reversed) as an extra negative.
- Losses: CLIP's global symmetric InfoNCE on the pooled embeddings (captions with the false
  captions as extra negatives, and questions){' plus a **FILIP-style token-wise loss**' if filip else ' only (a control run: no token-wise loss)'}
  (Yao et al., ICLR 2022: text-to-image = mean over words of the best patch, image-to-text = mean over
  patches of the best word; symmetric InfoNCE with its own learnable scale, final {h.get('filip_scale', '–')}), computed on
  exactly the pathway EADP scores with: the vision tower's layer −2 states, CLS dropped, through
  `post_layernorm` and `visual_projection`, against `last_hidden_state @ text_projection` of the
  words (start, end and padding masked).
  {'**Why the token-wise loss:** the global loss alone does not make per-token text features meet the patches they name (see "Control" below); dense scoring (EADP) needs it.' if filip else ''}
- Dense supervision (weights {s.get('grounding_weight', 0)} and {s.get('attribute_weight', 0)}): a GLIP-style
  word-to-patch grounding loss (each colour, shape or size word's softmax over its image's patches
  should fall on the objects it names, known from the world's label map), and a training-only
  linear read-out of the colour, shape and size of the object on each patch from the same scoring
  embeddings (cross-entropy against the label map; background is a class). The read-out is not
  part of the saved model. **Why:** with the contrastive losses alone a 4-layer ViT this small did
  not make an object's shape decodable from the patches it covers (a per-patch probe found colour
  but shape at chance), and a language model cannot answer about what its visual tokens do not
  hold. Final read-out accuracy on object patches of a training batch (colour, shape, size):
  {last.get('attribute_acc', '–')}.
- Optimiser: AdamW (β 0.9/0.98, weight decay {s['weight_decay']} on matrices), lr {s['lr']}, {s['warmup']} warm-up
  steps then cosine decay, gradient clipping 1.0, bfloat16 autocast = {s['bf16']}.
- Final losses (step {last['step']}): total {last['loss']}, global {last['global']}, token-wise {last['filip']}.

{_settings_table(s)}

## Measured figures

On {f['records']} records of the `{f['split']}` split (seed {f['seed']}). Entropy: EADP's spatial entropy
(`eadp_lab.scoring.dense_similarity` then `spatial_entropy`, temperature 100, over the 256 patches,
maximum ln 256 = 5.55) of each word, with the similarity sign σ = +1 (the natural one) and σ = −1
(every published EADP preset). Pointing: the word's highest-scoring patch (σ = +1) lies on an object
the word names (patch masks at coverage 0.25); its chance is the fraction of patches on those objects.
Peak on an object: the highest-scoring patch lies on any object.

### Instructions (the world's questions, as EADP scores them)

{grounding_table(q)}

### Captions

{grounding_table(c)}

### Global retrieval

- True caption against a false one of the same style (a colour or shape no object has, or a reversed
  relation): **{_pct(r['true_vs_swapped'])}** of {r['swapped_pairs']} images.
- Image-to-caption top-1 among {r['pool']} captions: **{_pct(r['image_to_text_top1'])}** (chance {_pct(1 / r['pool'])}).

{report.get('control', '')}
"""


def llava_card(report: dict) -> str:
    """The lab LLaVA's card."""
    s, h, f = report["settings"], report["history"], report["figures"]
    size = s["size"]
    rows = ["| question type | questions | accuracy |", "| --- | ---: | ---: |"]
    for qtype, row in f["per_type"].items():
        rows.append(f"| {qtype} | {row['questions']} | {_pct(row['accuracy'])} |")
    rows.append(f"| **all** | {f['questions']} | **{_pct(f['accuracy'])}** |")
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
read it (with the image first, earlier lab models never learned which object a question names;
`eadp_lab.attach` reads the instruction before the image in that case). Weights are stored in float16; load with
`LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)`.

## Training

`{report['command'].strip()}` ({h['total_seconds']:.0f} s on a 2-core CPU: data and vision
features {h['data_seconds']:.0f} s, training {h['train_seconds']:.0f} s, the rest measuring).
Reproducible from the seed on the same thread count.

{report.get('recipe', '')}

{_settings_table(s)}

## Measured figures

Held-out accuracy with all 256 visual tokens, through `model.generate` (greedy, exact match of the
first generated word) on {f['questions']} questions of the `{f['split']}` split (seed {f['seed']}), in the
world's question mix:

{chr(10).join(rows)}

{report.get('notes', '')}
"""
