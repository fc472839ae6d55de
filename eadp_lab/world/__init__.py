"""The lab world: a seeded generator of scenes, dense instructions, captions, AnyRes crops and clips.

Small enough to train a tiny CLIP and LLaVA on a CPU, and made so that every answer and
every word's object is known: scenes of 3 to 7 shapes (some tiny, 1 to 2 patches wide) on a
cluttered background, questions about an attribute, a relation, a count or an existence
(POPE-style, balanced), captions, per-object patch masks on any token grid, a closed
vocabulary, and disjoint ``train`` / ``val`` / ``heldout`` splits. No model is trained here.
Taught in ``notebooks/00_tour``.

>>> from eadp_lab.world import sample, vocabulary
>>> r = sample("train", 1, seed=0)[0]
>>> r.image.shape, r.image.dtype.name, r.coverage.shape[1:]
((96, 96, 3), 'uint8', (16, 16))
>>> all(t in vocabulary() for t in r.question.tokens)
True
"""

from .captions import CAPTION_STYLES, Caption, caption, object_phrases
from .clips import (Clip, ClipRecord, ask_clip, direction, event, make_clip_record, render_clip, sample_clip,
                    sample_clips)
from .config import CLIP_QTYPES, QTYPES, WorldConfig
from .multicrop import MultiCropRecord, cut, make_multicrop_record, sample_multicrop
from .questions import Question, ask, describe
from .grounding import coverage_from_labels, patch_coverage, patch_masks, pointing_hits, token_masks
from .render import label_map, render, render_with_labels
from .sample import Record, coverage_on, dense_coverage, make_record, sample, sparse_coverage
from .scenes import Background, Obj, Scene, matches, relation_holds, sample_scene
from .seeds import SPLITS, record_rng
from .vocab import CONTENT_KINDS, GROUNDED_KINDS, KINDS, is_content, is_grounded, token_kind, vocabulary
from .words import COLOURS, COUNT_WORDS, RELATIONS, SHAPES, SIZES

__all__ = [
    # data classes and settings
    "WorldConfig", "Obj", "Background", "Scene", "Question", "Caption", "Record", "Clip", "ClipRecord",
    "MultiCropRecord", "QTYPES", "CLIP_QTYPES", "SPLITS", "CAPTION_STYLES",
    # batch generators
    "sample", "make_record", "sample_clips", "make_clip_record", "sample_multicrop", "make_multicrop_record",
    # single steps
    "record_rng", "sample_scene", "render", "render_with_labels", "ask", "describe", "caption", "object_phrases",
    "sample_clip", "render_clip", "ask_clip", "direction", "event", "cut", "matches", "relation_holds",
    # grounding
    "label_map", "patch_coverage", "coverage_from_labels", "patch_masks", "token_masks", "pointing_hits",
    "sparse_coverage",
    "dense_coverage",
    "coverage_on",
    # vocabulary
    "vocabulary", "token_kind", "is_content", "is_grounded", "KINDS", "CONTENT_KINDS", "GROUNDED_KINDS",
    "COLOURS", "SHAPES", "SIZES", "COUNT_WORDS", "RELATIONS",
]
