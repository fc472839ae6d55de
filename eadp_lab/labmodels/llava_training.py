"""Training the lab LLaVA: visual instruction tuning on the world's questions, on top of the frozen lab CLIP.

As LLaVA-1.5 (Liu et al., CVPR 2024) was trained on top of CLIP: the vision tower is the lab
CLIP's, frozen (its layer -2 states, CLS dropped, are computed once per training image and
kept in float16; a step costs only the projector and the language model), the projector
and a small Llama are trained with next-token cross-entropy on the answers only. A training
sequence is one image and one question in exactly the single-turn prompt the model is
evaluated with (``USER: {q} <image> ASSISTANT: {a}</s>``, LLaVA's conversation format with the
question before the image, so that the visual tokens of a causal language model can read it);
``turns`` > 1 adds further questions after the first answer. Questions follow a curriculum
of question types (:func:`phase_config`), ending on the world's whole mix with yes/no answers
balanced. ``python -m eadp_lab.labmodels.train llava``. Taught in ``notebooks/00_tour``.

Shapes: ``B`` sequences per step, ``N`` visual tokens (256), ``C_v`` vision width, ``S``
sequence length, ``D`` language-model width.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..world.captions import caption
from ..world.config import WorldConfig, YES_NO_QTYPES
from .build import LlavaSize, build_llava, pixel_values, tower_states
from .checkpoint import Checkpoints, step_rng
from .losses import answer_loss, cosine_schedule, word_alignment_loss
from .referents import ReferentHeads, referent_loss, referents, scene_owners, stack_referents
from ..world.questions import ask
from ..world.render import render
from ..world.sample import sample
from ..world.scenes import sample_scene
from ..world.seeds import record_rng, run
from .tokenizer import BOS, EOS, IMAGE, PAD, vocab_table

__all__ = ["LlavaTraining", "CAPTION_PROMPTS", "cache_features", "conversation", "Batch", "make_batch", "answer_logits",
           "fast_accuracy", "phase_config", "attribute_labels", "attribute_word_ids", "standardisation", "fold_standardisation", "train_llava"]


@dataclass(frozen=True)
class LlavaTraining:
    """How the lab LLaVA is trained (serialised into its folder and model card)."""

    seed: int = 0
    steps: int = 6000
    batch: int = 48  # conversations (images) per step
    turns: int = 1  # questions per conversation: one, the single-turn prompt the model is evaluated with
    caption_rate: float = 0.0  # conversations that also ask for a caption (dense grounded targets)
    # Curriculum: (fewest objects, most objects, share of steps and images[, question types]); a phase
    # without types asks the world's whole mix, and the last phase should be the full world. A small
    # language model trained from scratch on the whole mix stays at the answer priors: it does not
    # learn to bind a question's noun phrase to one of several objects. One type at a time, in order
    # of how little binding it needs, it does. The last phase asks every type, count twice its share
    # of the world's mix (6 of 23 questions instead of 3 of 20): with the world's own mix, count, the
    # latest type to be learnt, was still climbing when training ended (the card quotes the figures).
    # A mix of question types; it names no visual token, so it favours no method.
    phases: tuple = ((3, 7, 0.15, ("colour",)), (3, 7, 0.13, ("colour", "shape")),
                     (3, 7, 0.12, ("colour", "shape", "size")), (3, 7, 0.1, ("colour", "shape", "size", "exist")),
                     (3, 7, 0.1, ("colour", "shape", "size", "exist", "count")),
                     (3, 7, 0.4, (("colour", 4), ("shape", 3), ("size", 2), ("relation", 4), ("count", 6), ("exist", 4))))
    images: int = 30_000  # distinct training scenes (``train`` split; a seed stream apart from the CLIP's)
    # Position interpolation of the image span (method-neutral: every visual token is kept): in this
    # share of the conversations the 256 visual tokens' RoPE positions are squeezed evenly into a span
    # of m positions (m uniform in [span_min, 256], fractional positions) and the text after the image
    # moves up by 256 - m, so the model cannot tie what it reads to where the image ends.
    span_rate: float = 0.5
    span_min: int = 8
    span_start: float = 0.5  # share of the steps before the squeezing starts (it slows the first learning)
    lr: float = 1e-3
    warmup: int = 60
    weight_decay: float = 0.05
    threads: int = 2
    bf16: bool = True  # autocast matmuls to bfloat16 (1.8x faster steps on a CPU with AMX)
    # Weight of the word-alignment loss (losses.word_alignment_loss): every object patch's projected
    # token is pulled toward the language model's embeddings of its own colour, shape and size words.
    # It uses the world's label maps for every patch alike, never any pruning method's choice.
    align: float = 1.0
    # Weight of the referent losses (referents.referent_loss): deep supervision of what the question
    # names, from the scene description. Each visual token's hidden state at layer ``role_layer``
    # predicts its role (subject, a subject's centre patch, anchor, or none); the answer position's
    # state at ``answer_layer`` predicts the number of subjects and the centres of the subject and
    # the anchor. Linear heads, training only; every visual token is labelled alike, none dropped.
    # 0: off (at equal steps they took validation from 59.5% to 87.5% at step 4,400).
    referents: float = 1.0
    role_layer: int = 2
    answer_layer: int = 3
    word_layer: int | None = 1  # the question's words predict their role here (None: not at all)
    val_questions: int = 600  # single-turn ``val`` questions, checked every ``val_every`` steps
    val_every: int = 200
    size: LlavaSize = field(default_factory=LlavaSize)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LlavaTraining":
        d = dict(d)
        d["size"] = LlavaSize(**d["size"])
        d["phases"] = tuple(tuple(_tuples(x) for x in p) for p in d["phases"])
        return cls(**d)


def _tuples(x):
    """JSON lists back to the nested tuples they were written from."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def phase_config(phase) -> WorldConfig:
    """The world of one curriculum phase ``(low, high, share[, question types])``: scenes of
    ``low`` to ``high`` objects, questions of the given types. The types are either names, asked in
    the world's proportions (``("colour", "shape")``), or ``(name, weight)`` pairs that set the
    proportions (``(("colour", 4), ("count", 6))``)."""
    low, high, _, *qtypes = phase
    config = WorldConfig(n_objects=(low, high))
    if not qtypes:
        return config
    world = dict(config.question_mix)
    if len({isinstance(q, str) for q in qtypes[0]}) > 1:
        raise ValueError(f"phase {phase!r}: give question types all as names or all as (name, weight) pairs")
    asked = [(q, world.get(q)) if isinstance(q, str) else tuple(q) for q in qtypes[0]]
    unknown = {q for q, _ in asked} - set(world)
    if len({q for q, _ in asked}) < len(asked):
        raise ValueError(f"phase {phase!r}: each question type may be named once")
    if unknown or not asked:
        raise ValueError(f"phase {phase!r}: question types must be a non-empty subset of "
                         f"{list(world)}, got unknown {sorted(unknown)}")
    if any(not isinstance(w, int) or w < 1 for _, w in asked):
        raise ValueError(f"phase {phase!r}: question weights must be positive integers")
    if isinstance(qtypes[0][0], str):  # names: the world's order and proportions
        return config.replace(question_mix=tuple((q, c) for q, c in config.question_mix if q in qtypes[0]))
    return config.replace(question_mix=tuple(asked))


@torch.no_grad()
def cache_features(vision_tower, images: np.ndarray, batch: int = 128, progress: bool = True) -> torch.Tensor:
    """``(B, N, C_v)`` float16: layer -2 states without CLS of ``(B, H, W, 3)`` uint8 images (float32 maths)."""
    from tqdm.auto import tqdm

    out = []
    layers = len(vision_tower.encoder.layers) - 1  # layer -2
    for i in tqdm(range(0, len(images), batch), desc="vision features", disable=not progress):
        out.append(tower_states(vision_tower, pixel_values(images[i : i + batch]), layers)[:, 1:].to(torch.float16))
    return torch.cat(out)


def _scene_chunk(start: int, n: int, split: str, seed: int, config: WorldConfig) -> list:
    out = []
    for index in range(start, start + n):
        scene = sample_scene(record_rng(split, seed, index, "image"), config, uid=f"{split}/{seed}/{index}")
        out.append((scene, render(scene)))
    return out


def sample_scenes(split: str, n: int, seed: int, start: int = 0, config: WorldConfig | None = None,
                  workers: int = 1) -> tuple[list, np.ndarray]:
    """``(scenes, images (n, H, W, 3) uint8)``: scenes alone (no question slot to fill, so any
    object count works), each a pure function of ``(split, seed, index, config)``."""
    pairs = run(_scene_chunk, n, start, workers, split=split, seed=seed, config=config or WorldConfig())
    return [s for s, _ in pairs], np.stack([im for _, im in pairs])


def attribute_labels(scenes, owners: np.ndarray) -> torch.Tensor:
    """``(B, N, 3)`` uint8: per patch, the 1-based colour, shape and size class of the object it
    belongs to (0 on background), as the CLIP's dense targets.

    Args:
        scenes: ``B`` scenes.
        owners: ``(B, N)`` the object of each patch, -1 on background (:func:`scene_owners`).
    """
    from .clip_training import attribute_classes

    out = np.zeros(owners.shape + (3,), np.uint8)
    for b, scene in enumerate(scenes):
        on = owners[b] >= 0
        if on.any():
            table = np.array([attribute_classes(o) for o in scene.objects], np.uint8)
            out[b, on] = table[owners[b, on]]
    return torch.as_tensor(out)


def attribute_word_ids() -> list[torch.Tensor]:
    """The vocabulary ids of the colour, shape and size words, in the classes' order."""
    from ..world.words import COLOURS, SHAPES, SIZES

    vocab = vocab_table()
    return [torch.tensor([vocab[w] for w in words]) for words in (COLOURS, SHAPES, SIZES)]


def _mix(config: WorldConfig) -> tuple[list[str], np.ndarray]:
    qtypes = [q for q, _ in config.question_mix]
    weights = np.array([c for _, c in config.question_mix], dtype=float)
    return qtypes, weights / weights.sum()


CAPTION_PROMPTS = ("what is in the image ?", "what can you see in this picture ?", "tell me what is in the picture .")


def conversation(scene, rng, turns: int, config: WorldConfig | None = None,
                 caption_rate: float = 0.0) -> list[tuple[str, str, str]]:
    """``turns`` ``(question, answer, qtype, Question)`` about ``scene``, types drawn from the world's mix,
    yes/no answers by a fair coin (types the scene cannot carry are drawn again).

    With probability ``caption_rate`` one more turn asks for a description and the answer is a
    caption of the world (LLaVA's stage-1 task: dense, grounded next-word prediction), at a
    random place in the conversation; its ``qtype`` is ``"caption"`` (and no ``Question``).
    """
    config = config or WorldConfig()
    qtypes, weights = _mix(config)
    out = []
    for _ in range(turns * 20):
        if len(out) == turns:
            break
        qtype = qtypes[int(rng.choice(len(qtypes), p=weights))]
        answer = ("yes", "no")[int(rng.integers(2))] if qtype in YES_NO_QTYPES else None
        q = ask(scene, rng, qtype, answer, config)
        if q is not None:
            out.append((q.text, q.answer, qtype, q))
    if caption_rate > 0 and rng.random() < caption_rate:
        text = caption(scene, rng, config=config).text
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        out.insert(int(rng.integers(len(out) + 1)), (prompt, text, "caption", None))
    return out


@dataclass
class Batch:
    """Token ids ``(B, S)``, attention mask ``(B, S)``, the positions whose next token is scored
    (``(P,)`` sample and ``(P,)`` position), their targets ``(P,)``, and which image each sample shows."""

    ids: torch.Tensor
    mask: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    targets: torch.Tensor
    images: torch.Tensor
    first: torch.Tensor  # (P,) bool: the first answer token of a turn (its word)
    qtypes: list


def _ids(words, vocab):
    return [vocab[w] for w in words]


def make_batch(conversations: list[list[tuple]], images, n_visual: int, pad_side: str = "right") -> Batch:
    """Sequences ``<s> USER: q1 <image>*N ASSISTANT: a1 </s> USER: q2 ASSISTANT: a2 </s> ...`` and their targets.

    Each turn is ``(question, answer, qtype, ...)`` (:func:`conversation`'s turns; what follows
    the type is not read here).

    The first question comes before the image (:func:`eadp_lab.labmodels.build.prompt`): the
    visual tokens of a causal language model can then read the question.

    Every answer word (a caption has many) and the ``</s>`` after it are targets; nothing else
    is. ``Batch.first`` marks the first word of each answer. ``pad_side="left"``
    aligns the last positions (single-turn evaluation).
    """
    vocab = vocab_table()
    user, assistant = vocab["USER:"], vocab["ASSISTANT:"]
    seqs, targets = [], []
    for turns in conversations:
        seq, tgt = [BOS, user], []
        for k, (question, answer, qtype, *_) in enumerate(turns):
            if k:  # later turns follow the image: USER: q ASSISTANT: a
                seq += [user] + _ids(question.split(), vocab) + [assistant]
            else:  # the first turn asks before the image: USER: q <image>*N ASSISTANT: a
                seq += _ids(question.split(), vocab) + [IMAGE] * n_visual + [assistant]
            for j, word in enumerate(answer.split()):  # each answer word is predicted by the token before it
                tgt.append((len(seq) - 1, vocab[word], j == 0, qtype))
                seq.append(vocab[word])
            tgt.append((len(seq) - 1, EOS, False, qtype))  # the last word predicts </s>
            seq.append(EOS)
        seqs.append(seq)
        targets.append(tgt)
    S = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), S), PAD)
    mask = torch.zeros(len(seqs), S, dtype=torch.long)
    rows, cols, tg, first, qtypes = [], [], [], [], []
    for b, (seq, tgt) in enumerate(zip(seqs, targets)):
        offset = S - len(seq) if pad_side == "left" else 0
        ids[b, offset : offset + len(seq)] = torch.tensor(seq)
        mask[b, offset : offset + len(seq)] = 1
        for pos, token, is_first, qtype in tgt:
            rows.append(b)
            cols.append(offset + pos)
            tg.append(token)
            first.append(is_first)
            qtypes.append(qtype)
    return Batch(ids, mask, torch.tensor(rows), torch.tensor(cols), torch.tensor(tg),
                 torch.as_tensor(np.asarray(images)), torch.tensor(first), qtypes)


def span_positions(ids: torch.Tensor, mask: torch.Tensor, spans: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, S)`` RoPE positions: the padding-aware ``cumsum`` positions, with each sample's image
    squeezed into ``spans[b]`` positions (float32; ``spans`` ``(B,)``, ``None`` or ``N`` leaves it).

    Visual token ``j`` of ``N`` sits at ``start + j * span / N`` and every token after the image
    moves by ``span - N``: position interpolation of the image span, the same for every visual
    token (nothing is dropped).
    """
    pos = (mask.cumsum(-1) - 1).clamp(min=0).to(torch.float32)
    if spans is None:
        return pos
    image = ids == IMAGE
    n = image.sum(-1, keepdim=True).clamp(min=1).to(torch.float32)  # (B, 1)
    ratio = spans.to(torch.float32)[:, None] / n
    j = (image.cumsum(-1) - 1).clamp(min=0).to(torch.float32)  # index within the image
    start = torch.where(image, pos, torch.full_like(pos, float("inf"))).amin(-1, keepdim=True)  # (B, 1)
    start = torch.where(torch.isinf(start), torch.zeros_like(start), start)
    after = (pos > start) & ~image & (image.cumsum(-1) == n.long())
    return torch.where(image, start + j * ratio, torch.where(after, pos + (spans[:, None] - n), pos))


def answer_logits(model, features: torch.Tensor, batch: Batch, spans: torch.Tensor | None = None,
                  return_visual: bool = False, hidden_layers: tuple[int, ...] = ()):
    """``(P, V)`` logits at the scored positions, from cached vision ``features`` ``(B, N, C_v)``
    (with ``return_visual`` also the projected visual tokens ``(B, N, D)``; with
    ``hidden_layers`` also the language model's hidden states ``(B, S, D)`` after each of those
    layers, 0 being the input embeddings, as ``output_hidden_states`` numbers them).

    The same computation as ``model(input_ids, pixel_values)`` (projector, placeholder
    scatter, language model), without the frozen vision tower; ``spans`` ``(B,)``: see
    :func:`span_positions`.
    """
    inner = model.model
    embeds = inner.get_input_embeddings()(batch.ids)  # (B, S, D)
    visual = inner.multi_modal_projector(features.to(embeds.dtype))  # (B, N, D)
    where = (batch.ids == IMAGE)[..., None].expand_as(embeds)
    embeds = embeds.masked_scatter(where, visual.to(embeds.dtype))
    out = inner.language_model(inputs_embeds=embeds, attention_mask=batch.mask,
                               position_ids=span_positions(batch.ids, batch.mask, spans),
                               output_hidden_states=bool(hidden_layers))
    logits = model.lm_head(out.last_hidden_state[batch.rows, batch.cols])  # (P, V)
    extra = ((visual,) if return_visual else ()) + ((tuple(out.hidden_states[k] for k in hidden_layers),)
                                                     if hidden_layers else ())
    return (logits, *extra) if extra else logits


@torch.no_grad()
def fast_accuracy(model, features: torch.Tensor, questions, batch: int = 64, span: float | None = None) -> dict:
    """Single-turn accuracy (argmax of the answer word) from cached features.

    ``questions``: ``(image index, question, answer, qtype)`` tuples; ``span``: the image
    squeezed into this many positions (:func:`span_positions`).
    """
    n_visual = features.shape[1]
    vocab = vocab_table()
    hits, per_type = [], {}
    for i in range(0, len(questions), batch):
        chunk = questions[i : i + batch]
        b = make_batch([[(q, a, t)] for _, q, a, t in chunk], [k for k, *_ in chunk], n_visual, pad_side="left")
        keep = b.first
        b = Batch(b.ids, b.mask, b.rows[keep], b.cols[keep], b.targets[keep], b.images, b.first[keep],
                  [t for t, k in zip(b.qtypes, keep.tolist()) if k])
        spans = None if span is None else torch.full((len(chunk),), float(span))
        logits = answer_logits(model, features[b.images].float(), b, spans)
        ok = (logits.argmax(-1) == b.targets).tolist()
        hits += ok
        for t, h in zip(b.qtypes, ok):
            per_type.setdefault(t, []).append(h)
    return {"accuracy": float(np.mean(hits)), "per_type": {t: float(np.mean(v)) for t, v in sorted(per_type.items())}}


def standardisation(features: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(mean, std)`` ``(C_v,)`` of cached vision ``features`` ``(B, N, C_v)`` (float64 sums).

    The raw layer -2 states share a large mean direction, so every projected visual token
    starts out alike; the projector is trained on standardised inputs and the
    standardisation is folded into its first layer afterwards (:func:`fold_standardisation`).
    """
    total = torch.zeros(features.shape[-1], dtype=torch.float64)
    square = torch.zeros_like(total)
    count = 0
    for i in range(0, len(features), chunk):
        x = features[i : i + chunk].double().reshape(-1, features.shape[-1])
        total += x.sum(0)
        square += (x * x).sum(0)
        count += len(x)
    mean = total / count
    std = (square / count - mean * mean).clamp(min=1e-12).sqrt()
    return mean.float(), std.float()


@torch.no_grad()
def fold_standardisation(projector, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``projector(x)`` equal what it computed on ``(x - mean) / std``: ``W' = W / std``,
    ``b' = b - W' mean`` in its first linear layer (in place)."""
    layer = projector.linear_1
    weight = layer.weight.double() / std.double()[None, :]
    layer.bias.copy_((layer.bias.double() - weight @ mean.double()).to(layer.bias.dtype))
    layer.weight.copy_(weight.to(layer.weight.dtype))


def _referent_states(batch: Batch, hidden: tuple, n_visual: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(visual (B, N, D), answer (B, D))``: the visual tokens' states at the role layer and the
    state of the position that predicts each sequence's first answer word at the answer layer
    (zeros and the last position for a sequence without a question, whose targets are ignored)."""
    role_states, answer_states = hidden
    B = batch.ids.shape[0]
    image = batch.ids == IMAGE
    shown = image.sum(1) == n_visual  # a sequence that asks nothing shows no image either
    visual = role_states.new_zeros(B, n_visual, role_states.shape[-1])
    visual[shown] = role_states[shown][image[shown]].view(-1, n_visual, role_states.shape[-1])
    rows, cols = batch.rows[batch.first], batch.cols[batch.first]
    firsts = torch.full((B,), -1, dtype=torch.long)
    for r, c in zip(rows.tolist()[::-1], cols.tolist()[::-1]):  # the first turn's answer of each row
        firsts[r] = c
    return visual, answer_states[torch.arange(B), firsts]


def _word_states(states: torch.Tensor, words: int) -> torch.Tensor:
    """``(B, words, D)``: the states of the first question's words, which start at position 2
    (``<s> USER: q ...``, right padding as in training)."""
    return states[:, 2 : 2 + words]


def _referent_targets(turns, idx, scenes, owners) -> dict[str, torch.Tensor]:
    """:func:`referents.stack_referents` of each conversation's first question (the one before the image;
    none when the scene could not carry a question of its phase's types)."""
    return stack_referents([referents(scenes[i], conv[0][3] if conv else None, owners[i])
                            for conv, i in zip(turns, idx)])


def _param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_llava(settings: LlavaTraining, clip_path, checkpoints: Checkpoints | None = None, progress: bool = True,
                log=None) -> tuple:
    """Train the lab LLaVA on the CLIP saved at ``clip_path``; returns ``(model, history)``.

    Checkpoints (model, optimiser, step, history) go to ``checkpoints`` every few minutes; a run
    given the same folder resumes from the last one and ends with the same weights.
    """
    from tqdm.auto import tqdm

    from ..models.scorers import load_clip

    checkpoints = checkpoints or Checkpoints(None)
    # the hidden states the referent heads read: role, answer[, words]
    layers = ((settings.role_layer, settings.answer_layer) + (() if settings.word_layer is None else (settings.word_layer,))
              if settings.referents else ())
    if not all(0 <= k <= settings.size.lm_layers for k in layers):
        raise ValueError(f"referent layers {list(layers)} must lie in 0 .. {settings.size.lm_layers} "
                         f"(the language model's layers)")
    torch.set_num_threads(settings.threads)
    clip, _ = load_clip(clip_path, dtype=torch.float32)
    model = build_llava(clip, settings.size, seed=settings.seed)
    vision = model.model.vision_tower.eval()
    start = time.perf_counter()
    phases = []  # (WorldConfig, scenes, features, steps)
    steps_left = settings.steps
    for k, phase in enumerate(settings.phases):
        config, share = phase_config(phase), phase[2]
        steps = steps_left if k == len(settings.phases) - 1 else round(share * settings.steps)
        steps_left -= steps
        # train split; the CLIP drew indices 0 .. images-1 of seed `seed`: these start far beyond
        scenes, images = sample_scenes("train", max(settings.batch, round(share * settings.images)), settings.seed,
                                       start=1_000_000 * (k + 1), config=config, workers=settings.threads)
        phases.append((config, scenes, cache_features(vision, images, progress=progress), steps))
        del images
    mean, std = standardisation(phases[-1][2])  # of the full world's scenes
    phases = [(c, sc, ((f.float() - mean) / std).to(torch.float16), st) for c, sc, f, st in phases]
    owners = [scene_owners(sc, f.shape[1]).numpy() if settings.align or settings.referents else None
              for _, sc, f, _ in phases]  # rendered once, for both
    labels = [attribute_labels(sc, o) if settings.align else None for (_, sc, _, _), o in zip(phases, owners)]
    groups = attribute_word_ids()
    val = sample("val", settings.val_questions, seed=settings.seed, workers=settings.threads, grid=None)
    val_features = ((cache_features(vision, np.stack([r.image for r in val]), progress=False).float() - mean) / std)
    val_questions = [(i, r.question.text, r.answer, r.qtype) for i, r in enumerate(val)]
    history = {"data_seconds": round(time.perf_counter() - start, 1), "log": [], "val": [],
               "phases": [{"objects": list(c.n_objects), "qtypes": [q for q, _ in c.question_mix],
                           "mix": dict(c.question_mix), "steps": st,
                           "images": len(sc)} for c, sc, _, st in phases]}

    torch.manual_seed(settings.seed)
    heads = ReferentHeads(settings.size.lm_width) if settings.referents else None
    model.train()
    model.model.vision_tower.eval()
    param_groups = _param_groups(model, settings.weight_decay)
    if heads is not None:
        param_groups += _param_groups(heads, settings.weight_decay)
    opt = torch.optim.AdamW(param_groups, lr=settings.lr, betas=(0.9, 0.98), eps=1e-6)
    first = 0
    state = checkpoints.load("llava")
    if state is not None:
        model.load_state_dict(state["model"])
        if heads is not None:
            heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["optimizer"])
        first, history["log"], history["val"] = state["step"], state["log"], state["val"]
        history["train_seconds"] = state.get("train_seconds", 0.0)
    order_rng = np.random.default_rng(np.random.SeedSequence(settings.seed, spawn_key=(11,)))
    schedule = []  # per step: (phase, image indices)
    for p, (_, scenes, _, steps) in enumerate(phases):
        epochs = max(1, math.ceil(steps * settings.batch / len(scenes)))
        order = np.concatenate([order_rng.permutation(len(scenes)) for _ in range(epochs)])
        schedule += [(p, order[i * settings.batch : (i + 1) * settings.batch]) for i in range(steps)]
    n_visual = phases[0][2].shape[1]
    began = time.perf_counter()
    trainable = [p for g in opt.param_groups for p in g["params"]]

    def snapshot(step):
        return {"model": model.state_dict(), "heads": None if heads is None else heads.state_dict(),
                "optimizer": opt.state_dict(), "step": step, "log": history["log"],
                "val": history["val"], "train_seconds": history.get("train_seconds", 0.0) + time.perf_counter() - began}

    bar = tqdm(range(first, settings.steps), desc="lab LLaVA", initial=first, total=settings.steps,
               disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = settings.lr * cosine_schedule(step, settings.steps, settings.warmup)
        rng = step_rng(settings.seed, 3, step)
        p, idx = schedule[step]
        config, scenes, features, _ = phases[p]
        turns = [conversation(scenes[i], rng, settings.turns, config, caption_rate=settings.caption_rate)
                 for i in idx]
        batch = make_batch(turns, idx, n_visual)
        squeeze = (rng.random(len(idx)) < settings.span_rate) & (step >= settings.span_start * settings.steps)
        spans = torch.as_tensor(np.where(squeeze, rng.uniform(settings.span_min, n_visual, len(idx)), n_visual),
                                dtype=torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
            logits, visual, *hidden = answer_logits(model, features[batch.images].float(), batch, spans,
                                                    return_visual=True, hidden_layers=layers)
        loss = answer_loss(logits, batch.targets)
        if heads is not None:
            targets = _referent_targets(turns, idx, scenes, owners[p])
            words = None if settings.word_layer is None else _word_states(hidden[0][2], targets["words"].shape[1])
            aux, parts = referent_loss(heads, *_referent_states(batch, hidden[0][:2], n_visual), targets, words)
            loss = loss + settings.referents * aux
        if settings.align:
            align = word_alignment_loss(visual, model.model.get_input_embeddings().weight,
                                        labels[p][batch.images].long(), groups)
            loss = loss + settings.align * align
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        if step % 10 == 0:
            word = batch.first
            acc = (logits[word].argmax(-1) == batch.targets[word]).float().mean().item()
            entry = {"step": step, "phase": p, "loss": round(loss.item(), 4), "train_acc": round(acc, 4)}
            if settings.align:
                entry["align_loss"] = round(align.item(), 4)
            if heads is not None:
                entry.update({f"{k}_loss": round(v, 4) for k, v in parts.items()})
            history["log"].append(entry)
            bar.set_postfix(loss=entry["loss"], acc=entry["train_acc"])
            if log is not None:
                log(entry)
        if (step + 1) % settings.val_every == 0 or step == settings.steps - 1:
            model.eval()
            v = fast_accuracy(model, val_features, val_questions)
            squeezed = fast_accuracy(model, val_features, val_questions, span=n_visual // 4)
            model.train()
            model.model.vision_tower.eval()
            history["val"].append({"step": step + 1, "accuracy": round(v["accuracy"], 4),
                                   "per_type": {t: round(y, 4) for t, y in v["per_type"].items()},
                                   "accuracy_span_quarter": round(squeezed["accuracy"], 4)})
            bar.write(f"step {step + 1}: val accuracy {v['accuracy']:.3f} (image in a quarter of the positions: "
                      f"{squeezed['accuracy']:.3f}) " + " ".join(f"{t}={a:.2f}" for t, a in v["per_type"].items()))
            if log is not None:
                log(history["val"][-1])
        if checkpoints.due() and step + 1 < settings.steps:
            checkpoints.save("llava", snapshot(step + 1))
    history["train_seconds"] = round(history.get("train_seconds", 0.0) + time.perf_counter() - began, 1)
    checkpoints.save("llava", snapshot(settings.steps))
    fold_standardisation(model.model.multi_modal_projector, mean, std)  # the model now takes raw states
    history["feature_mean_norm"] = round(float(mean.norm()), 3)
    return model.eval(), history
