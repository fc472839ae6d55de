"""Training the lab LLaVA: visual instruction tuning on the world's questions, on top of the frozen lab CLIP.

As LLaVA-1.5 (Liu et al., CVPR 2024) was trained on top of CLIP: the vision tower is the lab
CLIP's, frozen (its layer -2 states, CLS dropped, are computed once per training image and
kept in float16; a step costs only the projector and the language model), the projector
and a small Llama are trained with next-token cross-entropy on the answers only. Each
training sequence is one image with a multi-turn conversation of the world's questions
(``USER: {q1} <image> ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>...``, LLaVA's
conversation format with the first question before the image, so that the visual tokens of a
causal language model can read it), so the 256 visual tokens are paid for once per several answers; the
first turn is exactly the single-turn prompt the model is evaluated with. Questions follow
the world's mix with yes/no answers balanced. ``python -m eadp_lab.world.train llava``.
Taught in ``notebooks/00_tour``.

Shapes: ``B`` sequences per step, ``N`` visual tokens (256), ``C_v`` vision width, ``S``
sequence length, ``D`` language-model width.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .captions import caption
from .config import WorldConfig, YES_NO_QTYPES
from .lab_models import LlavaSize, build_llava, pixel_values, vision_states
from .losses import answer_loss, cosine_schedule
from .questions import ask
from .render import render
from .sample import sample
from .scenes import sample_scene
from .seeds import record_rng, run
from .tokenizer import BOS, EOS, IMAGE, PAD, vocab_table

__all__ = ["LlavaTraining", "CAPTION_PROMPTS", "cache_features", "conversation", "Batch", "make_batch", "answer_logits",
           "fast_accuracy", "standardisation", "fold_standardisation", "train_llava"]


@dataclass(frozen=True)
class LlavaTraining:
    """How the lab LLaVA is trained (serialised into its folder and model card)."""

    seed: int = 0
    steps: int = 900
    batch: int = 32  # conversations (images) per step
    turns: int = 4  # questions per conversation
    caption_rate: float = 0.3  # conversations that also ask for a caption (dense grounded targets)
    # Curriculum: (fewest objects, most objects, share of steps and images); the last is the full world.
    phases: tuple = ((1, 1, 0.15), (1, 3, 0.25), (3, 7, 0.6))
    images: int = 12_000  # distinct training scenes (``train`` split; a seed stream apart from the CLIP's)
    lr: float = 1e-3
    warmup: int = 60
    weight_decay: float = 0.05
    threads: int = 2
    bf16: bool = True  # autocast matmuls to bfloat16 (weights, optimiser and cached features: float32/16)
    val_questions: int = 600  # single-turn ``val`` questions, checked every ``val_every`` steps
    val_every: int = 100
    size: LlavaSize = field(default_factory=LlavaSize)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def cache_features(vision_tower, images: np.ndarray, batch: int = 128, progress: bool = True) -> torch.Tensor:
    """``(B, N, C_v)`` float16: layer -2 states without CLS of ``(B, H, W, 3)`` uint8 images (float32 maths)."""
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, len(images), batch), desc="vision features", disable=not progress):
        patches, _ = vision_states(vision_tower, pixel_values(images[i : i + batch]))
        out.append(patches.to(torch.float16))
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


def _mix(config: WorldConfig) -> tuple[list[str], np.ndarray]:
    qtypes = [q for q, _ in config.question_mix]
    weights = np.array([c for _, c in config.question_mix], dtype=float)
    return qtypes, weights / weights.sum()


CAPTION_PROMPTS = ("what is in the image ?", "what can you see in this picture ?", "tell me what is in the picture .")


def conversation(scene, rng, turns: int, config: WorldConfig | None = None,
                 caption_rate: float = 0.0) -> list[tuple[str, str, str]]:
    """``turns`` ``(question, answer, qtype)`` about ``scene``, types drawn from the world's mix,
    yes/no answers by a fair coin (types the scene cannot carry are drawn again).

    With probability ``caption_rate`` one more turn asks for a description and the answer is a
    caption of the world (LLaVA's stage-1 task: dense, grounded next-word prediction), at a
    random place in the conversation; its ``qtype`` is ``"caption"``.
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
            out.append((q.text, q.answer, qtype))
    if caption_rate > 0 and rng.random() < caption_rate:
        text = caption(scene, rng, config=config).text
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        out.insert(int(rng.integers(len(out) + 1)), (prompt, text, "caption"))
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


def make_batch(conversations: list[list[tuple[str, str, str]]], images, n_visual: int, pad_side: str = "right") -> Batch:
    """Sequences ``<s> USER: q1 <image>*N ASSISTANT: a1 </s> USER: q2 ASSISTANT: a2 </s> ...`` and their targets.

    The first question comes before the image (:func:`eadp_lab.world.lab_models.prompt`): the
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
        for k, (question, answer, qtype) in enumerate(turns):
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


def answer_logits(model, features: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``(P, V)`` logits at the scored positions, from cached vision ``features`` ``(B, N, C_v)``.

    The same computation as ``model(input_ids, pixel_values)`` (projector, placeholder
    scatter, language model), without the frozen vision tower.
    """
    inner = model.model
    embeds = inner.get_input_embeddings()(batch.ids)  # (B, S, D)
    visual = inner.multi_modal_projector(features.to(embeds.dtype))  # (B, N, D)
    where = (batch.ids == IMAGE)[..., None].expand_as(embeds)
    embeds = embeds.masked_scatter(where, visual.to(embeds.dtype))
    position_ids = (batch.mask.cumsum(-1) - 1).clamp(min=0)
    hidden = inner.language_model(inputs_embeds=embeds, attention_mask=batch.mask,
                                  position_ids=position_ids).last_hidden_state  # (B, S, D)
    return model.lm_head(hidden[batch.rows, batch.cols])  # (P, V)


@torch.no_grad()
def fast_accuracy(model, features: torch.Tensor, questions, batch: int = 64) -> dict:
    """Single-turn accuracy (argmax of the answer word) from cached features.

    ``questions``: ``(image index, question, answer, qtype)`` tuples.
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
        logits = answer_logits(model, features[b.images].float(), b)
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


def _param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_llava(settings: LlavaTraining, clip_path, out=None, progress: bool = True, log=None) -> tuple:
    """Train the lab LLaVA on the CLIP saved at ``clip_path``; returns ``(model, history)``."""
    from tqdm.auto import tqdm

    from ..models.scorers import load_clip

    torch.set_num_threads(settings.threads)
    clip, _ = load_clip(clip_path, dtype=torch.float32)
    model = build_llava(clip, settings.size, seed=settings.seed)
    vision = model.model.vision_tower.eval()
    start = time.perf_counter()
    phases = []  # (WorldConfig, scenes, features, steps)
    steps_left = settings.steps
    for k, (low, high, share) in enumerate(settings.phases):
        config = WorldConfig(n_objects=(low, high))
        steps = steps_left if k == len(settings.phases) - 1 else round(share * settings.steps)
        steps_left -= steps
        # train split; the CLIP drew indices 0 .. images-1 of seed `seed`: these start far beyond
        scenes, images = sample_scenes("train", max(settings.batch, round(share * settings.images)), settings.seed,
                                       start=1_000_000 * (k + 1), config=config, workers=settings.threads)
        phases.append((config, scenes, cache_features(vision, images, progress=progress), steps))
        del images
    mean, std = standardisation(phases[-1][2])  # of the full world's scenes
    phases = [(c, sc, ((f.float() - mean) / std).to(torch.float16), st) for c, sc, f, st in phases]
    val = sample("val", settings.val_questions, seed=settings.seed, workers=settings.threads, grid=None)
    val_features = ((cache_features(vision, np.stack([r.image for r in val]), progress=False).float() - mean) / std)
    val_questions = [(i, r.question.text, r.answer, r.qtype) for i, r in enumerate(val)]
    history = {"data_seconds": round(time.perf_counter() - start, 1), "log": [], "val": [],
               "phases": [{"objects": list(c.n_objects), "steps": st, "images": len(sc)} for c, sc, _, st in phases]}

    torch.manual_seed(settings.seed)
    model.train()
    model.model.vision_tower.eval()
    opt = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng(np.random.SeedSequence(settings.seed, spawn_key=(11,)))
    schedule = []  # per step: (phase, image index)
    for p, (_, scenes, _, steps) in enumerate(phases):
        epochs = max(1, math.ceil(steps * settings.batch / len(scenes)))
        order = np.concatenate([rng.permutation(len(scenes)) for _ in range(epochs)])
        schedule += [(p, order[i * settings.batch : (i + 1) * settings.batch]) for i in range(steps)]
    n_visual = phases[0][2].shape[1]
    start = time.perf_counter()
    bar = tqdm(range(settings.steps), desc="lab LLaVA", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = settings.lr * cosine_schedule(step, settings.steps, settings.warmup)
        p, idx = schedule[step]
        _, scenes, features, _ = phases[p]
        batch = make_batch([conversation(scenes[i], rng, settings.turns, caption_rate=settings.caption_rate)
                            for i in idx], idx, n_visual)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
            logits = answer_logits(model, features[batch.images].float(), batch)
        loss = answer_loss(logits, batch.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        if step % 10 == 0:
            word = batch.first
            acc = (logits[word].argmax(-1) == batch.targets[word]).float().mean().item()
            entry = {"step": step, "phase": p, "loss": round(loss.item(), 4), "train_acc": round(acc, 4)}
            history["log"].append(entry)
            bar.set_postfix(loss=entry["loss"], acc=entry["train_acc"])
            if log is not None:
                log(entry)
        if (step + 1) % settings.val_every == 0 or step == settings.steps - 1:
            model.eval()
            v = fast_accuracy(model, val_features, val_questions)
            model.train()
            model.model.vision_tower.eval()
            history["val"].append({"step": step + 1, **{k: (round(x, 4) if isinstance(x, float) else
                                                            {t: round(y, 4) for t, y in x.items()})
                                                        for k, x in v.items()}})
            bar.write(f"step {step + 1}: val accuracy {v['accuracy']:.3f} " +
                      " ".join(f"{t}={a:.2f}" for t, a in v["per_type"].items()))
            if log is not None:
                log(history["val"][-1])
    history["train_seconds"] = round(time.perf_counter() - start, 1)
    fold_standardisation(model.model.multi_modal_projector, mean, std)  # the model now takes raw states
    history["feature_mean_norm"] = round(float(mean.norm()), 3)
    return model.eval(), history
