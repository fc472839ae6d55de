"""The lab's pruners in lmms-eval, the evaluation harness most pruning papers report through.

- :mod:`~eadp_lab.harness.model_args`: ``--model_args`` checked before any model loads
  (:func:`harness_args`), importable without lmms-eval;
- :mod:`~eadp_lab.harness.task`: a local lmms-eval task over a LLaVA-format question file
  (``python -m eadp_lab lmms-task``), importable without lmms-eval;
- :mod:`~eadp_lab.harness.lmms`: the model, ``--model eadp_lab`` (needs ``pip install -e .[lmms-eval]``).

lmms-eval finds the model through the entry point ``lmms_eval.models`` (:func:`manifests`).
The book's page "Benchmarks with lmms-eval" gives the commands.
"""

from .model_args import HarnessArgs, harness_args

__all__ = ["HarnessArgs", "harness_args", "manifests", "MODEL_NAME"]

MODEL_NAME = "eadp_lab"  # --model eadp_lab


def manifests():
    """lmms-eval's registration of ``--model eadp_lab`` (the entry point's payload; imports lmms-eval)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_NAME, simple_class_path="eadp_lab.harness.lmms.EADPLab")]
