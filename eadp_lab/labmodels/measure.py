"""Measurements of the lab CLIP: is dense scoring meaningful in it, and does global retrieval work?

- :func:`token_grounding`: for every word of an instruction (or caption), its spatial
  entropy over the 256 patches (EADP's step 3, temperature 100, computed with
  :mod:`eadp_lab.scoring` on exactly what ``attach(scoring="clip")`` feeds EADP, through
  :class:`eadp_lab.models.scorers.CLIPScorer`), whether its highest-scoring patch lies on the
  object it names (the pointing game: Zhang et al., ECCV 2016, as FILIP measures token
  alignment), and whether it peaks on any object at all.
- :func:`summarise_grounding`: the same, averaged per word kind (:func:`eadp_lab.world.token_kind`).
- :func:`retrieval`: global image-text retrieval: a true caption against the same caption with
  one colour or shape swapped (ARO-style, Yuksekgonul et al., ICLR 2023), and image-to-text
  top-1 among a set of captions.

Shapes: ``B`` images, ``N`` patches, ``L`` words. Taught in ``notebooks/02_entropy_analysis``.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from .. import scoring
from ..world.captions import caption
from ..world.grounding import patch_masks
from ..world.sample import coverage_on
from .build import pixel_values, scoring_patches, vision_states
from ..world.seeds import record_rng
from ..world.vocab import token_kind

__all__ = ["scoring_embeddings", "token_grounding", "summarise_grounding", "by_sign", "grounding_check", "retrieval",
           "CHECK_KINDS"]


@torch.no_grad()
def scoring_embeddings(clip, images: np.ndarray, batch: int = 128) -> torch.Tensor:
    """``(B, N, C)`` EADP's scoring embeddings ``V`` of ``(B, H, W, 3)`` uint8 images."""
    out = []
    for i in range(0, len(images), batch):
        patches, _ = vision_states(clip.vision_model, pixel_values(images[i : i + batch]))
        out.append(scoring_patches(clip, patches).float())
    return torch.cat(out)


@torch.no_grad()
def token_grounding(clip, tokenizer, records, text: str = "question", temperature: float = 100.0,
                    signs=(1.0, -1.0), progress: bool = False) -> list[dict]:
    """One row per word of each record's question (or caption): kind, entropy, pointing.

    Args:
        clip: the lab ``CLIPModel``; tokenizer: its tokenizer.
        records: :class:`eadp_lab.world.Record` objects; their object masks are drawn on the CLIP's
            grid (:func:`eadp_lab.world.coverage_on`), whatever grid they were sampled for.
        text: ``"question"`` (the instructions EADP scores) or ``"caption"``.
        signs: similarity signs to compute entropies for (``+1``: the natural one; ``-1``:
            every published EADP preset's ``sigma``).
    Returns:
        Rows ``{"word", "kind", "grounded", "chance", "object_chance"}`` and, at sign +1 (no
        suffix) and -1 (suffix ``_neg``): ``"entropy"``, ``"hit"`` (does the word's best patch lie on
        an object it names; NaN unless it names objects) and ``"on_object"`` (on any object).
    """
    from ..models.scorers import CLIPScorer
    from tqdm.auto import tqdm

    if text not in ("question", "caption"):
        raise ValueError(f"text must be 'question' or 'caption', got {text!r}")
    scorer = CLIPScorer(clip, tokenizer, "content")
    V = scoring_embeddings(clip, np.stack([r.image for r in records]))  # (B, N, C)
    vision = clip.config.vision_config
    grid = (vision.image_size // vision.patch_size,) * 2  # records drawn for another model's grid are redrawn
    if grid[0] * grid[1] != V.shape[1]:
        raise ValueError(f"the CLIP gives {V.shape[1]} patches, not its {grid[0]} x {grid[1]} grid")
    rows = []
    for b, record in enumerate(tqdm(records, desc=f"grounding ({text}s)", disable=not progress)):
        source = record.question if text == "question" else record.caption
        emb = scorer.text(source.text)
        words = source.tokens
        positions = torch.nonzero(emb.mask[0, 0]).flatten()
        if len(positions) != len(words):
            raise ValueError(f"the tokenizer split {source.text!r} into {len(positions)} words, not {len(words)}")
        S = emb.dense[:, :, positions]  # (1, 1, L, C)
        masks = patch_masks(coverage_on(record, grid))  # (K, gh, gw) on the CLIP's own grid
        objects = masks.reshape(len(masks), -1).any(0)  # (N,) patches on any object
        per_sign = {}
        for sign in signs:
            D = scoring.dense_similarity(V[b : b + 1], S, sign)  # (1, N, 1, L)
            per_sign[sign] = (scoring.spatial_entropy(D, temperature)[0, 0].numpy(),  # (L,)
                              D[0, :, 0].argmax(0).numpy())  # (L,) best patch of each word
        for l, word in enumerate(words):
            refs = source.refs[l]
            named = masks[list(refs)].reshape(len(refs), -1).any(0) if refs else None
            row = {"word": word, "kind": token_kind(word), "grounded": bool(refs),
                   "chance": float(named.mean()) if refs else math.nan, "object_chance": float(objects.mean())}
            for sign, suffix in ((1.0, ""), (-1.0, "_neg")):
                entropy, best = per_sign.get(sign, (None, None))
                row["entropy" + suffix] = float(entropy[l]) if entropy is not None else math.nan
                row["hit" + suffix] = float(named[best[l]]) if refs and best is not None else math.nan
                row["on_object" + suffix] = float(objects[best[l]]) if best is not None else math.nan
            rows.append(row)
    return rows


def summarise_grounding(rows: list[dict]) -> dict:
    """Per word kind (plus ``content``, ``function+punctuation`` and ``grounded``): counts and means."""
    groups = defaultdict(list)
    for row in rows:
        groups[row["kind"]].append(row)
        if row["kind"] in ("colour", "shape", "size", "count", "relation", "motion"):
            groups["content"].append(row)
        if row["kind"] in ("function", "punctuation"):
            groups["function+punctuation"].append(row)
        if row["grounded"]:
            groups["grounded"].append(row)

    def mean(values):
        values = [v for v in values if not math.isnan(v)]
        return round(float(np.mean(values)), 4) if values else None

    return {kind: {"tokens": len(rs), "entropy": mean([r["entropy"] for r in rs]),
                   "entropy_neg": mean([r["entropy_neg"] for r in rs]),
                   "pointing": mean([r["hit"] for r in rs]), "pointing_neg": mean([r["hit_neg"] for r in rs]),
                   "pointing_chance": mean([r["chance"] for r in rs]),
                   "peak_on_object": mean([r["on_object"] for r in rs]),
                   "peak_on_object_neg": mean([r["on_object_neg"] for r in rs]),
                   "object_chance": mean([r["object_chance"] for r in rs])}
            for kind, rs in sorted(groups.items())}


CHECK_KINDS = ("colour", "shape", "size", "function", "punctuation")


def by_sign(summary: dict, kinds=CHECK_KINDS) -> dict:
    """:func:`summarise_grounding` output regrouped per sign: ``{"+1": {kind: {"entropy", "pointing",
    "peak_on_object"}}, "-1": {...}}`` (pointing only for kinds that name objects)."""
    out = {}
    for sign, suffix in (("+1", ""), ("-1", "_neg")):
        out[sign] = {k: {"tokens": summary[k]["tokens"], "entropy": summary[k]["entropy" + suffix],
                         "pointing": summary[k]["pointing" + suffix],
                         "peak_on_object": summary[k]["peak_on_object" + suffix]}
                     for k in kinds if k in summary}
    return out


def grounding_check(clip, tokenizer, records) -> dict:
    """A quick :func:`by_sign` on the questions of ``records`` (logged during training)."""
    return by_sign(summarise_grounding(token_grounding(clip, tokenizer, records, "question")))


@torch.no_grad()
def retrieval(clip, tokenizer, records, seed: int = 0, pool: int = 100) -> dict:
    """Global retrieval on ``records``: a true caption against a false one, and image-to-caption top-1.

    Per image, a true caption and a false one of the same style (``list``, ``relation`` or
    ``object`` in turn; the false one names a colour or shape no object has, or reverses a
    relation), both drawn from the image's own stream (``seed``), so the figure is
    reproducible. Top-1: each image against the true captions of ``pool`` images.
    """
    images = pixel_values(np.stack([r.image for r in records]))
    true, swapped = [], []
    for i, r in enumerate(records):
        rng = record_rng("val", seed, i, "image")
        style = ("list", "relation", "object")[i % 3]
        true.append(caption(r.scene, rng, style=style).text)
        neg = caption(r.scene, rng, style=style, negative=True)
        swapped.append(neg.text if neg.negative else None)

    def embed_text(texts):
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        out = clip.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        out = getattr(out, "pooler_output", out)
        return torch.nn.functional.normalize(out.float(), dim=-1)

    img = []
    for i in range(0, len(images), 128):
        out = clip.get_image_features(pixel_values=images[i : i + 128])
        img.append(torch.nn.functional.normalize(getattr(out, "pooler_output", out).float(), dim=-1))
    img = torch.cat(img)
    t_true = embed_text(true)
    ok = [i for i, s in enumerate(swapped) if s is not None]
    t_neg = embed_text([swapped[i] for i in ok])
    wins = ((img[ok] * t_true[ok]).sum(-1) > (img[ok] * t_neg).sum(-1)).float().mean().item()
    hits, trials = 0, 0
    for start in range(0, len(records) - pool + 1, pool):
        sim = img[start : start + pool] @ t_true[start : start + pool].T
        hits += int((sim.argmax(1) == torch.arange(pool)).sum())
        trials += pool
    return {"true_vs_swapped": round(wins, 4), "swapped_pairs": len(ok),
            "image_to_text_top1": round(hits / max(1, trials), 4), "pool": pool}
