"""``--model eadp_lab`` for lmms-eval: any class :func:`eadp_lab.attach` supports, pruned by any registry method.

    python -m lmms_eval --model eadp_lab \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=eadp,budget=64,clip=openai/clip-vit-large-patch14-336 \\
        --tasks pope,gqa --batch_size 1 --output_path runs/lmms

Installed with ``pip install -e .[lmms-eval]`` (lmms-eval finds it through the entry point
``lmms_eval.models``). ``--model_args`` are checked before the model loads
(:func:`~eadp_lab.harness.model_args.harness_args`). Each batch of requests is answered by
:func:`eadp_lab.evaluation.run.answer_batch`, the loop ``bench accuracy`` uses: the model's chat
template around one image and the task's text, the method attached inside ``generate``. Every
answered request adds a line to a JSON-lines file of records (``records=PATH``; by default
``eadp_lab_<method>_<budget>_<time>.jsonl`` in lmms-eval's ``--output_path``, named in the
log): the task, the document, the visual tokens the model produced and the language model
received, and the seconds spent selecting (the batch's, shared equally among its requests).
``PATH.run.json`` records the checked arguments and settings.

It answers ``generate_until`` tasks with one image per question, as the EADP paper's image
benchmarks (POPE, GQA, MME, TextVQA, MMBench, ScienceQA-IMG, VQAv2, VizWiz) are in lmms-eval.
A ``loglikelihood`` task (e.g. ``seedbench_ppl``), a question with no image, several images or a
video stops the run with a message saying so: pruning is measured on generation here.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from loguru import logger
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from .._io import check_output, write_json
from ..evaluation.answers import record_path
from .model_args import harness_args, signed
from .requests import batches, generate_kwargs, records_path, until_cut

__all__ = ["EADPLab"]


class EADPLab(lmms):
    """lmms-eval's model for the lab's pruners (``--model eadp_lab``); see the module's docstring."""

    is_simple = True

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.args = harness_args(**kwargs)  # every argument checked before the model loads
        self.records = records_path(self.args.records, self.args.method, self.args.budget, sys.argv)
        check_output(self.records, "records file")
        import torch

        from ..evaluation import load
        from ..evaluation.loading import as_dtype

        device = self.args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        placement = {"device_map": self.args.device_map} if self.args.device_map else {"device": device}
        self.model, self.processor, self.clip, self.clip_tokenizer = load(
            self.args.pretrained, self.args.clip, dtype=as_dtype(self.args.dtype, device), **placement)
        self.args = signed(self.args, self.clip)
        self.batch_size = self.args.batch_size
        self.records.write_text("")
        write_json(record_path(self.records), {**self.args.describe(), "model_class": type(self.model).__name__,
                                               "dtype": str(self.model.dtype).removeprefix("torch."),
                                               "device": str(self.model.device)})
        logger.info(f"eadp_lab: {self.args.method} at budget {self.args.budget} on {type(self.model).__name__}; "
                    f"per-request kept tokens and pruning time -> {self.records}")

    def loglikelihood(self, requests: list[Instance]):
        tasks = sorted({r.args[-2] for r in requests if len(r.args) >= 2})
        raise NotImplementedError(
            f"eadp_lab: task(s) {', '.join(map(str, tasks)) or '?'} ask for loglikelihoods (output_type "
            "loglikelihood or multiple_choice, e.g. seedbench_ppl); this model prunes during generation and "
            "answers generate_until tasks only (the generate_until version of a benchmark, e.g. seedbench)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("eadp_lab: multi-round generation is not supported; use single-round "
                                  "generate_until tasks")

    def _visual(self, request: Instance):
        """The one PIL image of a request; ``ValueError`` naming the task and document otherwise."""
        from PIL import Image

        context, gen, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        where = f"eadp_lab: task {task}, document {doc_id}:"
        if len(visuals) != 1 or not isinstance(visuals[0], Image.Image):
            kinds = ", ".join(type(v).__name__ for v in visuals) or "none"
            raise ValueError(f"{where} needs exactly one image per question (got {len(visuals)}: {kinds}); "
                             "questions with no image, several images or a video are not supported here")
        return visuals[0].convert("RGB")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm.auto import tqdm

        from ..evaluation.run import answer_batch
        from ..methods.settings import method_settings

        answers: list[str | None] = [None] * len(requests)
        with self.records.open("a") as sink, tqdm(total=len(requests), desc="eadp_lab", disable=self.rank != 0) as bar:
            for b, chunk in enumerate(batches([r.args[1] for r in requests], self.batch_size)):
                reqs = [requests[i] for i in chunk]
                images = [self._visual(r) for r in reqs]
                generate, until = generate_kwargs(reqs[0].args[1])
                settings = self.args.settings
                if self.args.registry_method == "random":  # a new draw per batch, as bench accuracy does
                    seed = method_settings("random", self.args.family, b, self.args.seed)[1].seed
                    settings = replace(settings, seed=seed)
                texts, record = answer_batch(self.model, self.processor, images, [r.args[0] for r in reqs],
                                             self.args.registry_method,
                                             self.args.budget, settings=settings, scoring=self.args.scoring,
                                             clip=self.clip, clip_tokenizer=self.clip_tokenizer,
                                             positions=self.args.positions, **generate)
                items = {it.sample: it for it in record.items}
                for j, (i, request, text) in enumerate(zip(chunk, reqs, texts)):
                    answers[i] = until_cut(text, until).strip()
                    item = items.get(j)
                    sink.write(json.dumps({
                        "task": request.args[4], "doc_id": request.args[3], "method": self.args.method,
                        "budget": self.args.budget,
                        "tokens_before": None if item is None else item.tokens_before,
                        "tokens_after": None if item is None else item.tokens_after,
                        "pruning_seconds": round(record.seconds / len(reqs), 6), "batch": len(reqs)}) + "\n")
                sink.flush()
                bar.update(len(reqs))
        return answers

