"""The notebooks' facade: one loaded VLM (the lab LLaVA by default) and the few questions a
chapter asks of it.

    from eadp_lab.lab import Lab
    lab = Lab.load()                                       # the lab LLaVA + lab CLIP, CPU, float32
    answer = lab.ask(image, "is there a red circle ?", method="eadp", budget=32)
    answer.text, answer.keep.sum()                         # the model's answer, the tokens it saw
    result = lab.keep(image, question, "eadp", 32)         # the selection alone (no language model)
    words = lab.word_scores(image, question)               # per-word dense maps and spatial entropy

Nothing here re-implements a method: :meth:`Lab.ask` generates through
:func:`eadp_lab.attach` exactly as ``python -m eadp_lab bench accuracy`` does (same prompt
template, method names and default settings, from :mod:`eadp_lab.bench.accuracy`);
:meth:`Lab.prune_inputs` builds the :class:`~eadp_lab.PruneInputs` that ``attach`` builds for
one image (the model's own ``get_image_features``, the scorers of :mod:`eadp_lab.models`), so
:meth:`Lab.keep` selects what ``attach`` keeps; :meth:`Lab.word_scores` calls
:mod:`eadp_lab.scoring`. Everything runs on the model's device; scores are float32.

Shapes: ``N`` visual tokens of the image (256 on the lab models: a 16x16 grid), ``L`` text
positions of the scored instruction (start and end tokens included, see ``content``).
Used by every notebook; :class:`eadp_lab.explorer.Explorer` drives one.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import scoring
from ._checks import check_budget, check_choice
from ._quiet import quiet_transformers
from .evaluation import LAB_CLIP, LAB_LLAVA, as_dtype, load, prompt_for, to_model
from ._checks import checked_replace
from .paths import lab_model
from .methods import METHODS, PruneInputs, PruneResult, prune
from .methods.settings import ABLATIONS, clip_similarity_sign, method_names, method_settings

__all__ = ["Lab", "Answer", "WordScores", "LAB", "method_names", "prompt_for"]  # the last two re-exported

LAB = "lab"  # the name of the shipped lab models (data/models/lab-llava + data/models/lab-clip)


@dataclass
class Answer:
    """The model's answer to one question about one image.

    Attributes:
        text: the generated text (special tokens removed, stripped).
        keep: ``(N,)`` bool (on the CPU), True on the visual tokens the language model saw
            (every token for ``method="none"``); ``None`` if the hook saw no image.
        record: the :class:`eadp_lab.models.CallRecord` of the prefill (``record.items[0].result``
            holds the method's :class:`~eadp_lab.PruneResult` and trace).
    """

    text: str
    keep: torch.Tensor | None
    record: object

    @property
    def num_kept(self) -> int | None:
        """Visual tokens the language model saw."""
        return None if self.keep is None else int(self.keep.sum())


@dataclass
class WordScores:
    """Per text position: its dense similarity map over the visual tokens and its spatial entropy.

    Attributes:
        tokens: the ``L`` text tokens (CLIP's or the language model's sub-words).
        similarity: ``(L, N)`` float32, ``sign * cos(V_n, S_l)`` (:func:`eadp_lab.scoring.dense_similarity`).
        entropy: ``(L,)`` float32 spatial entropy in nats of ``softmax_n(temperature * similarity)``
            (:func:`eadp_lab.scoring.spatial_entropy`), finite for every position (at most ``log N``).
        content: ``(L,)`` bool, True on the positions EADP scores (``text_positions="content"``:
            the instruction's own words, not the start, end or padding tokens).
        temperature, sign: the values used.
    """

    tokens: list[str]
    similarity: torch.Tensor
    entropy: torch.Tensor
    content: torch.Tensor
    temperature: float
    sign: float

    def __len__(self) -> int:
        return len(self.tokens)

    def order(self) -> torch.Tensor:
        """Indices of the content positions, lowest entropy first (the entropy filter's order)."""
        idx = torch.nonzero(self.content).flatten()
        return idx[torch.argsort(self.entropy[idx], stable=True)]


def _quietly(fn, *args, **kwargs):
    """Call ``fn`` without transformers' progress bars and warnings (they would become widgets in a notebook)."""
    with quiet_transformers(hide_progress_bars=True):
        return fn(*args, **kwargs)


def _as_image(image) -> np.ndarray | object:
    """An ``(H, W, 3)`` uint8 array or a PIL image, checked."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be an (H, W, 3) uint8 array or a PIL image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got shape {image.shape} {image.dtype}")
    return image


def _as_question(question) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    return question.strip()


class Lab:
    """A VLM with everything a chapter needs to prune it, ask it and look inside.

    Build with :meth:`load`. Attributes: ``model`` (a transformers VLM, eval mode),
    ``processor``, ``clip`` and ``clip_tokenizer`` (``None`` unless ``scoring == "clip"``),
    ``device``, ``family`` (:func:`eadp_lab.models.family_of`), ``scoring`` (``"clip"`` or
    ``"llm"``), ``name`` (what was loaded).
    """

    def __init__(self, model, processor, clip=None, clip_tokenizer=None, scoring: str | None = None,
                 name: str | None = None):
        from .models import family_of

        self.model = model.eval()
        self.processor = processor
        self.clip = clip
        self.clip_tokenizer = clip_tokenizer
        self.scoring = scoring or ("clip" if clip is not None else "llm")
        check_choice("scoring", self.scoring, ("clip", "llm"))
        if self.scoring == "clip" and (clip is None or clip_tokenizer is None):
            raise ValueError("scoring='clip' needs clip= and clip_tokenizer= (the CLIP of the model's vision tower)")
        self.family = family_of(model)
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self._scorer = None
        # the similarity sign the CLIP declares (the lab CLIP: measured, in its config); None: the presets' -1
        self.sign = clip_similarity_sign(clip) if self.scoring == "clip" else None
        if self.scoring == "clip":  # fail now, not at the first question, if the CLIP is not the model's tower
            self._scorer_for().check_matches(model.model.vision_tower)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model: str = LAB, device: str | torch.device | None = "cpu", dtype=None, clip="auto") -> "Lab":
        """Load a VLM (and the CLIP it is scored with).

        Args:
            model: ``"lab"`` (the shipped lab LLaVA, ``data/models/lab-llava``), or a hub id or
                local path of a supported VLM (e.g. ``"llava-hf/llava-1.5-7b-hf"``).
            device: where the models run (``None``: CUDA when available, else CPU).
            dtype: ``None`` is float32 on CPU and bfloat16 elsewhere; a torch dtype or its name.
            clip: ``"auto"`` (the lab CLIP for ``"lab"``, none otherwise), ``None`` (no CLIP:
                ``scoring="llm"``), or a CLIP hub id or path (``scoring="clip"``; its vision tower
                must be the model's, e.g. ``"openai/clip-vit-large-patch14-336"`` for LLaVA-1.5).
        """
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        dtype = as_dtype(dtype, device)
        is_lab = model == LAB or (isinstance(model, (str, Path)) and Path(model).resolve() == LAB_LLAVA.resolve())
        path = lab_model("lab-llava") if is_lab else model  # DataError naming the folder if it is missing
        if clip == "auto":
            clip = LAB_CLIP if is_lab else None
        vlm, processor, clip_model, clip_tokenizer = _quietly(load, path, clip, dtype=dtype, device=device)
        if clip is None:  # load() pairs the lab LLaVA with the lab CLIP unless told otherwise
            clip_model, clip_tokenizer = None, None
        return cls(vlm, processor, clip_model, clip_tokenizer, name="lab" if is_lab else str(model))

    # ------------------------------------------------------------------ facts
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def grid(self) -> tuple[int, int]:
        """``(H, W)`` visual-token grid of one image (of the base view for AnyRes models; of a
        96 px lab-world image for Qwen2.5-VL, whose grid follows the image's size)."""
        from .models.processors import image_grid

        return image_grid(self.model, self.processor, (96, 96))

    @property
    def num_visual_tokens(self) -> int:
        """``N = H * W`` visual tokens of one image (of the base view for AnyRes models)."""
        H, W = self.grid
        return H * W

    def __repr__(self) -> str:
        return (f"Lab({self.name!r}, family={self.family!r}, scoring={self.scoring!r}, device={str(self.device)!r}, "
                f"grid={self.grid})")

    def ran_on(self) -> str:
        """One sentence naming what this notebook ran: the lab models (trained here on the
        synthetic world) or the checkpoint it was given, with device, dtype and scoring space.
        The chapters glue it into their limits box (``{glue:text}`ran_on```)."""
        dtype = str(self.dtype).replace("torch.", "")
        space = "scored in CLIP space" if self.scoring == "clip" else "scored in the language model's space"
        if self.name == "lab":
            what = (f"the lab models (a {self.model.config.text_config.num_hidden_layers}-layer lab LLaVA and the "
                    "lab CLIP, trained in this project on the synthetic lab world), not a real checkpoint")
        else:
            what = f"the checkpoint {self.name} ({type(self.model).__name__})"
        return f"{what}, on {self.device.type} in {dtype}, {space}"

    # ------------------------------------------------------------------ settings
    def settings(self, method: str = "eadp", settings=None):
        """``(registry method, settings)`` of a method or ablation name, as the accuracy bench makes them.

        ``settings``: ``None`` (the bench's defaults for this model family: EADP's paper-faithful
        preset with the ablation's overrides and the sign the CLIP declares, :attr:`sign`,
        ``random`` seeded 0), an instance of the method's
        settings dataclass (used as is), or a dict of fields to change on the defaults.
        """
        if not isinstance(method, str) or method not in METHODS and method not in ABLATIONS:
            raise ValueError(f"method must be one of {method_names()}, got {method!r}")
        registry, defaults = method_settings(method, self.family, sign=self.sign)
        if settings is None:
            return registry, defaults
        if isinstance(settings, dict):
            if not settings:
                return registry, defaults
            if defaults is None or not dataclasses.is_dataclass(defaults):
                raise ValueError(f"method {method!r} takes no settings, got {sorted(settings)}")
            return registry, checked_replace(defaults, method, settings)
        expected = METHODS[registry].settings
        if not isinstance(settings, expected):
            raise ValueError(f"settings for {method!r} must be a {expected.__name__} or a dict, "
                             f"got {type(settings).__name__}")
        return registry, settings

    def _budget(self, budget, inputs=None) -> int:
        """``budget`` checked; ``None``: every visual token of the image in ``inputs`` (its
        ``image_grid_thw`` for Qwen2.5-VL), else :attr:`num_visual_tokens`."""
        if budget is not None:
            return check_budget(budget)
        grid = None if inputs is None else inputs.get("image_grid_thw")
        if grid is not None:
            from .models.layouts import merged_grid

            t, h, w = merged_grid(self.model.config.vision_config, grid[0])
            return t * h * w
        return self.num_visual_tokens

    # ------------------------------------------------------------------ the model
    def _attach(self, method: str, budget: int, settings):
        from .models import attach

        return attach(self.model, method, budget=budget, scoring=self.scoring, settings=settings, clip=self.clip,
                      clip_tokenizer=self.clip_tokenizer, tokenizer=self.processor.tokenizer)

    def applicable(self, names, budget: int) -> tuple[list[str], dict[str, str]]:
        """``(runs, refused)``: the methods of ``names`` (registry names or ablations; ``"none"`` always
        runs) that attach to this model at ``budget``, in order, and ``{name: the one-line reason}`` of
        those :func:`eadp_lab.attach` refuses (VisionZip on a tower without [CLS], PyramidDrop's stages
        on a model too shallow to keep them apart, ...). Nothing runs: each is attached and removed
        (:func:`eadp_lab.bench.accuracy.applicable_methods`, as ``bench accuracy`` chooses its defaults)."""
        from .bench.accuracy import applicable_methods

        return applicable_methods(names, self.model, self.processor, self.clip, self.clip_tokenizer, self.scoring,
                                  check_budget(budget))

    def _encode(self, image, question: str):
        return to_model(self.processor(images=[image], text=[prompt_for(self.processor, question)],
                                       return_tensors="pt", padding=True), self.model)

    @torch.no_grad()
    def ask(self, image, question: str, method: str = "none", budget: int | None = None, settings=None,
            max_new_tokens: int = 3) -> Answer:
        """The model's answer to ``question`` about ``image`` with ``method`` attached at ``budget``.

        Greedy generation through :func:`eadp_lab.attach`, as the accuracy bench answers (its
        prompt, settings and suppressed image token).

        Args:
            image: ``(H, W, 3)`` uint8 array (a lab-world ``record.image``) or a PIL image.
            method: a registry method or an ablation (:func:`method_names`); ``"none"`` keeps all.
            budget: visual tokens kept (``None``: all ``N``).
            settings: see :meth:`settings`.
        Returns:
            :class:`Answer` with ``keep`` ``(N,)`` bool (on the CPU).
        """
        image, question = _as_image(image), _as_question(question)
        registry, settings = self.settings(method, settings)
        if budget is not None:
            check_budget(budget)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        inputs = self._encode(image, question)
        budget = self._budget(budget, inputs)
        suppress = [t for t in (getattr(self.model.config, "image_token_id", None),) if t is not None]
        with self._attach(registry, budget, settings) as pruner:
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                      suppress_tokens=suppress or None)
            record = pruner.last
        text = self.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        keep = None
        if record is not None and record.items:
            item = record.items[0]
            keep = torch.zeros(item.tokens_before, dtype=torch.bool)
            keep[item.kept.cpu()] = True
        return Answer(text.strip(), keep, record)

    # ------------------------------------------------------------------ selection only
    def _scorer_for(self):
        from .models import CLIPScorer, LLMScorer
        from .models.attach import special_token_ids

        if self._scorer is None:
            if self.scoring == "clip":
                self._scorer = CLIPScorer(self.clip, self.clip_tokenizer, "content")
            else:
                self._scorer = LLMScorer(self.model.get_input_embeddings(), self.processor.tokenizer, "content",
                                         special_token_ids(self.model))
        return self._scorer

    @torch.no_grad()
    def _inputs_and_text(self, image, question: str):
        """``(PruneInputs, TextEmbeddings)`` of one image, as :func:`eadp_lab.attach` builds them."""
        from .models.attach import item_inputs
        from .models.layouts import item_layouts

        image, question = _as_image(image), _as_question(question)
        inputs = self._encode(image, question)
        inner = self.model.model
        # The pruner's capturing wrapper records what the layouts need (vision states, sizes).
        with self._attach("none", self._budget(None, inputs), None) as pruner:
            fn = inner.get_image_features
            names = [k for k in inspect.signature(fn).parameters if k != "kwargs"]
            out = fn(**{k: inputs[k] for k in names if k in inputs and inputs[k] is not None}, return_dict=True)
            captured = pruner._captured.get("image")
        items = pruner._items(out.pooler_output)  # one (n_i, D) tensor per image
        feats = items[0]
        layout = item_layouts(self.family, inner, "image", [len(t) for t in items], [0], captured)[0]
        scorer = self._scorer_for()
        text = scorer.text(question)
        return item_inputs(feats.detach(), layout, text, scorer), text

    def prune_inputs(self, image, question: str) -> PruneInputs:
        """The :class:`~eadp_lab.PruneInputs` of one image and question, as :func:`eadp_lab.attach` builds them.

        ``features`` ``(R, N, D)`` are the projector's output (what the language model reads;
        ``R = 1`` row for LLaVA-1.5-style models); with ``scoring="clip"``, ``image_embeds``
        ``(R, N, C)`` are the vision tower's states in CLIP space, ``text_embeds`` ``(1, 1, C)``
        the pooled CLIP text embedding, ``text_embeds_seq`` ``(1, 1, L, C)`` its per-token
        embeddings and ``text_mask`` ``(1, 1, L)`` the content positions; with ``scoring="llm"``,
        the instruction's rows of the input-embedding table and no ``image_embeds``.
        """
        return self._inputs_and_text(image, question)[0]

    def keep(self, image, question: str, method: str = "eadp", budget: int | None = 64, settings=None) -> PruneResult:
        """What ``method`` keeps of ``image`` at ``budget`` (selection only, no language model, for the
        methods that prune the visual tokens the language model receives; the vision-encoder and in-LLM
        methods run the model once, through :meth:`ask`, and return its record).

        The same :class:`~eadp_lab.PruneResult` that :meth:`ask` (through :func:`eadp_lab.attach`)
        computes for the same input: ``keep_mask`` ``(1, N)``, ``importance`` ``(1, N)`` float32
        (text-guided methods), ``picks``, ``trace``.
        """
        registry, settings = self.settings(method, settings)
        if METHODS[registry].stage != "projector":  # it needs the model (its vision encoder or decoder layers)
            answer = self.ask(image, question, method, budget, settings, max_new_tokens=1)
            return answer.record.items[0].result
        inputs = self.prune_inputs(image, question)
        return prune(registry, inputs, inputs.features.shape[1] if budget is None else check_budget(budget), settings)

    def word_scores(self, image, question: str, temperature: float | None = None,
                    sign: float | None = None) -> WordScores:
        """Every text position's dense similarity map and spatial entropy (EADP steps 2 and 3).

        Args:
            temperature: ``tau`` of the spatial softmax; ``sign``: ``sigma``. ``None``: the
                model family's EADP defaults (:meth:`settings`).
        Returns:
            :class:`WordScores` with ``similarity`` ``(L, N)`` and ``entropy`` ``(L,)`` (on the CPU).
        """
        _, defaults = self.settings("eadp")
        temperature = defaults.entropy_temperature if temperature is None else float(temperature)
        sign = defaults.similarity_sign if sign is None else float(sign)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        inputs, text = self._inputs_and_text(image, question)
        if inputs.num_rows != 1:
            raise ValueError(f"word_scores needs a single-view image (this one has {inputs.num_rows} crops)")
        dense = scoring.dense_similarity(inputs.scoring_embeds, inputs.text_embeds_seq, sign)  # (1, N, 1, L)
        entropy = scoring.spatial_entropy(dense, temperature)  # (1, 1, L), every position
        mask = inputs.text_mask if inputs.text_mask is not None else torch.ones(entropy.shape, dtype=torch.bool)
        return WordScores(list(text.tokens), dense[0, :, 0].T.contiguous().cpu(), entropy[0, 0].cpu(),
                          mask[0, 0].bool().cpu(), temperature, sign)
