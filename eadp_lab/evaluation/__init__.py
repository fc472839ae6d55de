"""Answering questions with a VLM and a pruning method attached, and reading the answers.

One module per job, so a reader finds where an answer is written without reading the statistics:

- :mod:`~eadp_lab.evaluation.questions`: the questions (:func:`lab_questions`, :func:`file_questions`
  validated up front, :func:`named_kept`);
- :mod:`~eadp_lab.evaluation.loading`: the model, processor and CLIP (:func:`load`), inputs on the
  model (:func:`to_model`), prompts (:func:`prompt_for`);
- :mod:`~eadp_lab.evaluation.answers`: answers files in LLaVA's format that record what produced
  them, resumed safely and locked while written (:func:`open_answers`, :func:`read_answers`);
- :mod:`~eadp_lab.evaluation.run`: :func:`evaluate`, one method at one budget over the questions;
- :mod:`~eadp_lab.evaluation.scores`: first-word exact match, per type, paired differences, the blind baseline;
- :mod:`~eadp_lab.evaluation.results`: the bench's reports read side by side (tables, :func:`against_best`).

Chapter 04's position and spacing analyses live with the other studies, in
:mod:`eadp_lab.position_study`; their names are re-exported here as before. Used by
:mod:`eadp_lab.bench.accuracy`, :mod:`eadp_lab.labmodels.train` and :class:`eadp_lab.lab.Lab`.
"""

from ..position_study import (SPACING, answer_split, matched, pool_runs, positions_figures, positions_gap,
                              positions_intervals, positions_type_gap, records_spacing, replication_figures,
                              spacing_correlations, spacing_figures, spacing_frame, type_gap_figures)
from .answers import (AnswersFileError, answer_id, answer_record, answers_path, check_answers,
                      open_answers, read_answers, run_record)
from ..paths import ROOT
from .loading import (DTYPES, LAB_CLIP, LAB_LLAVA, ModelLoadError, as_dtype, load, model_id_of, prompt_for,
                      to_model)
from .questions import (LAB_SOURCE, MissingImageError, Question, QuestionFileError, file_questions, lab_questions,
                        named_kept, question_hash, report_questions)
from .results import (against_best, against_chance, load_results, long_run_figures, markdown_table, per_type_frame,
                      results_for, results_frame, run_summary)
from .run import evaluate
from .scores import (Z95, answer_hits, answer_kind, blind_baseline, first_word, max_standard_error,
                     paired_difference, score_answers, score_hits)

__all__ = ["LAB_LLAVA", "LAB_CLIP", "DTYPES", "ROOT", "Z95", "Question", "QuestionFileError", "MissingImageError",
           "AnswersFileError", "ModelLoadError", "LAB_SOURCE", "lab_questions", "report_questions", "file_questions",
           "named_kept", "question_hash", "first_word", "load", "as_dtype", "to_model", "prompt_for", "evaluate",
           "answers_path", "answer_id", "answer_record", "read_answers", "check_answers", "open_answers", "run_record",
           "model_id_of", "score_answers", "answer_hits", "paired_difference", "score_hits", "load_results",
           "results_for", "results_frame", "markdown_table", "per_type_frame", "positions_gap", "positions_intervals",
           "against_best", "long_run_figures", "positions_figures", "pool_runs", "matched", "replication_figures", "SPACING",
           "records_spacing", "spacing_frame", "spacing_correlations", "spacing_figures", "positions_type_gap",
           "answer_split", "type_gap_figures", "max_standard_error", "blind_baseline", "against_chance",
           "answer_kind", "run_summary"]
