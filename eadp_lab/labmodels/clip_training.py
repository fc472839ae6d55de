"""Training the lab CLIP in two stages: a vision tower that sees objects, then image-text alignment.

1. **Dense pre-training of the vision tower** (``dense_*`` settings). Every patch of the
   world's images is labelled from the scene's label map with the colour, shape and size of
   the object covering it (background is a class of its own), the grid cell of that
   object's centre and the log of its area in patches; a linear read-out (LayerNorm then
   Linear, training only) of the layer -2 states, the tokens LLaVA and every pruner see,
   is trained with cross-entropy (and a squared error for the area) together with the ViT.
   This is segmentation-style supervised pre-training of a backbone (the world knows every
   pixel's object); it puts each object's attributes into each of its patches, which is
   what a language model reading the visual tokens needs. Images are flipped at random
   (labels follow). A global contrastive loss alone does not do this: the first lab CLIP
   (320 contrastive steps) carried colour but not shape (27% over objects, chance 17%).
2. **Locked-image alignment** (LiT: Zhai et al., CVPR 2022), ``align_*`` settings. The
   tower's first ``locked_layers`` layers are frozen (so the layer -2 states stay what stage 1
   made them, and are computed once per image and cached); the last layer, the projections and
   the text tower learn CLIP's global symmetric InfoNCE (Radford et al., ICML 2021; captions
   with false captions as extra negatives, as NegCLIP, and questions), FILIP's token-wise loss
   (Yao et al., ICLR 2022) and a word-to-patch grounding loss (GLIP: Li et al., CVPR 2022)
   on exactly the pathway EADP scores with (layer -2 states, CLS dropped, ``post_layernorm``,
   ``visual_projection``; ``last_hidden_state @ text_projection`` of the words).

:func:`control_settings` gives the control of the model card: a CLIP trained the way CLIP
itself is, from scratch on the same images and texts with the global contrastive loss alone.

Both stages checkpoint every few minutes (:class:`~eadp_lab.labmodels.checkpoint.Checkpoints`)
and every random draw of a step comes from :func:`~eadp_lab.labmodels.checkpoint.step_rng`,
so a stopped run resumes where it stopped and ends with the same weights.
``python -m eadp_lab.labmodels.train clip`` (``clip-global`` for the control).

Shapes: ``B`` images per step, ``g x g`` patch grid (``N = g * g``), ``L`` text positions,
``C_v`` vision width, ``C`` CLIP width.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..world.captions import caption
from ..world.config import QTYPES
from ..world.grounding import centre_cell, patch_masks, patch_owner
from ..world.questions import ask
from ..world.sample import sample
from ..world.vocab import is_grounded
from ..world.words import COLOURS, SHAPES, SIZES
from .build import ClipSize, build_clip, dense_text, pixel_values, tower_states, word_mask
from .checkpoint import Checkpoints, step_rng
from .losses import contrastive_loss, cosine_schedule, filip_loss, grounding_loss

__all__ = ["ClipTraining", "control_settings", "attribute_classes", "clip_texts", "grounded_targets", "patch_targets", "flip_batch",
           "DenseHead", "train_clip", "TARGETS"]

TARGETS = ("colour", "shape", "size", "row", "col", "area")


@dataclass(frozen=True)
class ClipTraining:
    """How the lab CLIP is trained (serialised into its folder and model card)."""

    seed: int = 0
    images: int = 40_000  # distinct `train` scenes of stage 1; stage 2 uses the first `align_images`
    # stage 1: dense pre-training of the vision tower
    dense_steps: int = 7000
    dense_batch: int = 32
    dense_lr: float = 1e-3
    dense_warmup: int = 50
    dense_weight_decay: float = 0.05
    dense_weights: tuple = (1.0, 2.0, 1.0, 0.5, 0.5, 0.5)  # TARGETS; shape is the hard one
    flips: bool = True  # random horizontal and vertical flips in stage 1 (labels flipped with them)
    # stage 2: alignment with the text tower
    align_steps: int = 600
    align_batch: int = 64
    align_images: int = 19_200
    lr: float = 1e-3
    warmup: int = 30
    weight_decay: float = 0.1
    locked_layers: int = 3  # vision layers frozen in stage 2 (layer -2 of a 4-layer tower is the 3rd's output)
    global_weight: float = 1.0
    filip_weight: float = 1.0  # token-wise loss; 0: off
    grounding_weight: float = 1.0  # word-to-patch grounding on the world's refs; 0: off
    check_every: int = 200  # stage 2: grounding figures on a few `val` records every this many steps
    threads: int = 2
    bf16: bool = True  # autocast matmuls to bfloat16 on CPU (weights and optimiser stay float32)
    size: ClipSize = field(default_factory=ClipSize)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClipTraining":
        d = dict(d)
        d["size"] = ClipSize(**d["size"])
        d["dense_weights"] = tuple(d["dense_weights"])
        return cls(**d)


def control_settings(settings: ClipTraining = ClipTraining(), steps: int = 1000) -> ClipTraining:
    """The control CLIP: no stage 1, nothing locked, CLIP's global contrastive loss alone, same data."""
    return replace(settings, dense_steps=0, locked_layers=0, filip_weight=0.0, grounding_weight=0.0,
                   align_steps=steps)


# --------------------------------------------------------------------------------------------- targets

def attribute_classes(obj) -> tuple[int, int, int]:
    """An object's colour, shape and size classes, 1-based into ``COLOURS``, ``SHAPES``, ``SIZES`` (0 is background)."""
    return COLOURS.index(obj.colour) + 1, SHAPES.index(obj.shape) + 1, SIZES.index(obj.size) + 1


def patch_targets(scene, coverage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense labels of one image from its objects' patch coverage.

    Args:
        scene: the scene whose objects ``coverage`` indexes.
        coverage: ``(K, g, g)`` float coverage of each patch by each object.
    Returns:
        ``labels`` ``(N, 5)`` int64: colour, shape and size class of the object covering each
        patch (1-based into ``COLOURS``, ``SHAPES``, ``SIZES``; 0 on background), the row and the
        column of that object's centre cell (-100 on background); ``log_area`` ``(N,)`` float32:
        log of the object's patch count (0 on background). A patch belongs to an object covering it
        at least 25% (:func:`eadp_lab.world.patch_masks`); one that two objects share goes to the one
        covering more.
    """
    K, g = coverage.shape[0], coverage.shape[1]
    N = coverage[0].size if K else g * g
    labels = np.zeros((N, 5), np.int64)
    labels[:, 3:] = -100
    log_area = np.zeros(N, np.float32)
    if K == 0:
        return labels, log_area
    owner = patch_owner(coverage)  # (N,), -1 on background
    on = owner >= 0
    mask = patch_masks(coverage).reshape(K, -1)
    table = np.array([[*attribute_classes(o), *centre_cell(o, scene.height, scene.width, coverage.shape[1:])]
                      for o in scene.objects])
    labels[on] = table[owner[on]]
    log_area[on] = np.log(mask.sum(1))[owner[on]]
    return labels, log_area


def flip_batch(pixels: torch.Tensor, labels: torch.Tensor, log_area: torch.Tensor, flips: np.ndarray):
    """Flip images and their dense labels.

    Args:
        pixels: ``(B, 3, H, W)``; labels: ``(B, N, 5)`` (:func:`patch_targets`); log_area: ``(B, N)``.
        flips: ``(B, 2)`` bool: flip vertically, flip horizontally.
    Returns the three, flipped where asked (the centre row / column labels mirrored too).
    """
    B, N = labels.shape[:2]
    g = math.isqrt(N)
    pixels, labels, log_area = pixels.clone(), labels.clone().view(B, g, g, 5), log_area.clone().view(B, g, g)
    for axis, (pix_dim, grid_dim, column) in enumerate(((2, 1, 3), (3, 2, 4))):
        rows = torch.as_tensor(np.flatnonzero(flips[:, axis]), dtype=torch.long)
        if len(rows) == 0:
            continue
        pixels[rows] = pixels[rows].flip(pix_dim)
        lab = labels[rows].flip(grid_dim)
        centre = lab[..., column]
        lab[..., column] = torch.where(centre >= 0, g - 1 - centre, centre)
        labels[rows] = lab
        log_area[rows] = log_area[rows].flip(grid_dim)
    return pixels, labels.view(B, N, 5), log_area.view(B, N)


class DenseHead(torch.nn.Module):
    """Linear read-out of the dense labels from layer -2 states ``(B, N, C_v)`` (training only).

    Not saved with the CLIP: it exists to make an object's attributes linearly present in the
    states of every patch it covers.
    """

    def __init__(self, width: int, grid: int):
        super().__init__()
        self.sizes = (len(COLOURS) + 1, len(SHAPES) + 1, len(SIZES) + 1, grid, grid, 1)
        self.norm = torch.nn.LayerNorm(width)
        self.linear = torch.nn.Linear(width, sum(self.sizes))

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(self.norm(states.float())).split(self.sizes, dim=-1)

    def loss(self, states: torch.Tensor, labels: torch.Tensor, log_area: torch.Tensor,
             weights=(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted mean of the six losses and ``(5,)`` accuracies on object patches
        (colour, shape, size, centre row, centre column)."""
        out = self(states)
        on = labels[..., 0] > 0
        losses, accs = [], []
        for k in range(5):
            lg, tg = out[k].reshape(-1, out[k].shape[-1]), labels[..., k].reshape(-1)
            losses.append(F.cross_entropy(lg, tg, ignore_index=-100))
            accs.append((out[k].argmax(-1) == labels[..., k])[on].float().mean())
        area = out[5][..., 0]
        losses.append(((area - log_area) ** 2)[on].mean() if bool(on.any()) else area.sum() * 0)
        loss = sum(w * l for w, l in zip(weights, losses)) / sum(weights)
        return loss, torch.stack(accs).detach()


# --------------------------------------------------------------------------------------------- texts

def _positive_question(scene, rng, config=None):
    """A question whose every colour, shape or size word names an object of the scene, or ``None``."""
    for _ in range(8):
        qtype = QTYPES[int(rng.integers(len(QTYPES)))]
        q = ask(scene, rng, qtype, "yes", config)
        if q is None:
            continue
        if all(refs or not is_grounded(w) for w, refs in zip(q.tokens, q.refs)):
            return q
    return None


def clip_texts(scene, rng) -> tuple:
    """``(caption, question, false caption)`` for one visit of a training image.

    The first two are :class:`~eadp_lab.world.Caption` / :class:`~eadp_lab.world.Question`
    objects (text and per-word refs); the question falls back to a second caption when no
    positive question is found; the false caption (text only) names a colour or shape no
    object has (or reverses a relation).
    """
    positive = caption(scene, rng)
    question = _positive_question(scene, rng) or caption(scene, rng)
    for _ in range(4):
        negative = caption(scene, rng, negative=True)
        if negative.negative:
            break
    return positive, question, negative.text


def grounded_targets(texts, masks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which text positions name which patches, for :func:`eadp_lab.labmodels.losses.grounding_loss`.

    Args:
        texts: per image, the texts with refs (captions, questions) in the order they were encoded;
            text ``t`` of image ``b`` is row ``b * per + t`` of the encoded batch (``per`` texts per image,
            the first ``len(texts[b])`` of them with refs).
        masks: per image, ``(K, N)`` bool patch masks of its objects.
    Returns:
        ``rows`` ``(G,)`` and ``positions`` ``(G,)`` of the grounded words in the encoded batch (after
        ``<s>``), ``images`` ``(G,)``, and ``targets`` ``(G, N)`` bool: the patches they name.
    """
    rows, positions, images, targets = [], [], [], []
    per = max(len(t) for t in texts) + 1  # + the false caption
    for b, (group, mask) in enumerate(zip(texts, masks)):
        for t, text in enumerate(group):
            for l, (word, refs) in enumerate(zip(text.tokens, text.refs)):
                if refs and is_grounded(word):
                    rows.append(b * per + t)
                    positions.append(l + 1)
                    images.append(b)
                    targets.append(mask[list(refs)].any(0))
    N = masks[0].shape[1]
    return (torch.tensor(rows, dtype=torch.long), torch.tensor(positions, dtype=torch.long),
            torch.tensor(images, dtype=torch.long),
            torch.as_tensor(np.stack(targets)) if targets else torch.zeros(0, N, dtype=torch.bool))


def _encode(tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
    return enc["input_ids"], enc["attention_mask"]


# --------------------------------------------------------------------------------------------- data

@dataclass
class _Data:
    images: np.ndarray  # (n, H, W, 3) uint8
    scenes: list
    masks: list  # (K, N) bool per image
    labels: torch.Tensor  # (n, N, 5)
    log_area: torch.Tensor  # (n, N)


def _data(settings: ClipTraining, split: str = "train", n: int | None = None, seed: int | None = None) -> _Data:
    records = sample(split, n or settings.images, seed=settings.seed if seed is None else seed,
                     workers=settings.threads)
    targets = [patch_targets(r.scene, r.coverage) for r in records]
    return _Data(np.stack([r.image for r in records]), [r.scene for r in records],
                 [patch_masks(r.coverage).reshape(len(r.scene.objects), -1) for r in records],
                 torch.as_tensor(np.stack([t[0] for t in targets])), torch.as_tensor(np.stack([t[1] for t in targets])))


def _order(seed: int, stage: int, n: int, steps: int, batch: int) -> np.ndarray:
    """``(steps, batch)`` image indices: epochs of seeded permutations."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stage, 10**9)))
    epochs = math.ceil(steps * batch / n)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])[: steps * batch].reshape(steps, batch)


def _adamw(named, extra: list, weight_decay: float, lr: float) -> torch.optim.AdamW:
    """AdamW over the trainable ``named`` parameters (weight decay on matrices only) and ``extra``
    (no decay), with CLIP's betas."""
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay + extra, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


@torch.no_grad()
def _dense_val(model, head, val: _Data, layers: int) -> list[float]:
    """Per-patch accuracy of the read-out (colour, shape, size, row, col) on object patches of ``val``."""
    hits, total = torch.zeros(5), 0
    for i in range(0, len(val.images), 100):
        states = tower_states(model.vision_model, pixel_values(val.images[i : i + 100]), layers)[:, 1:]
        out, lab = head(states), val.labels[i : i + 100]
        on = lab[..., 0] > 0
        hits += torch.stack([(out[k].argmax(-1) == lab[..., k])[on].float().sum() for k in range(5)])
        total += int(on.sum())
    return [round(float(h / total), 4) for h in hits]


# --------------------------------------------------------------------------------------------- stage 1

def _train_dense(settings: ClipTraining, model, data: _Data, checkpoints: Checkpoints, history: dict,
                 progress: bool, log) -> None:
    from tqdm.auto import tqdm

    layers = settings.size.vision_layers - 1  # layer -2
    torch.manual_seed(settings.seed + 1)
    head = DenseHead(settings.size.vision_width, settings.size.image_size // settings.size.patch_size)
    opt = _adamw(model.vision_model.named_parameters(), list(head.parameters()), settings.dense_weight_decay,
                 settings.dense_lr)
    state = checkpoints.load("dense")
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        history["dense"] = state["history"]
    if start >= settings.dense_steps:
        return
    order = _order(settings.seed, 1, len(data.images), settings.dense_steps, settings.dense_batch)
    val = _data(settings, "val", 500)
    model.train()
    began = time.perf_counter()
    bar = tqdm(range(start, settings.dense_steps), desc="lab CLIP, stage 1 (dense)", initial=start,
               total=settings.dense_steps, disable=not progress)

    def snapshot(step):
        done = {**history["dense"], "seconds": round(history["dense"].get("seconds", 0) + time.perf_counter() - began, 1)}
        return {"model": model.state_dict(), "head": head.state_dict(), "optimizer": opt.state_dict(),
                "step": step, "history": done}

    for step in bar:
        for group in opt.param_groups:
            group["lr"] = settings.dense_lr * cosine_schedule(step, settings.dense_steps, settings.dense_warmup)
        rng = step_rng(settings.seed, 1, step)
        idx = order[step]
        pixels, labels, log_area = pixel_values(data.images[idx]), data.labels[idx], data.log_area[idx]
        if settings.flips:
            pixels, labels, log_area = flip_batch(pixels, labels, log_area, rng.random((len(idx), 2)) < 0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
            states = tower_states(model.vision_model, pixels, layers)[:, 1:]
        loss, acc = head.loss(states, labels, log_area, settings.dense_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        if step % 25 == 0 or (step + 1) % 500 == 0 or step == settings.dense_steps - 1:
            entry = {"step": step, "loss": round(loss.item(), 4), "acc": [round(a, 3) for a in acc.tolist()]}
            if (step + 1) % 500 == 0 or step == settings.dense_steps - 1:
                model.eval()
                entry["val_acc"] = _dense_val(model, head, val, layers)
                model.train()
            history["dense"]["log"].append(entry)
            bar.set_postfix(loss=entry["loss"], shape=entry["acc"][1], size=entry["acc"][2])
            if log is not None:
                log(entry)
        if checkpoints.due() and step + 1 < settings.dense_steps:
            checkpoints.save("dense", snapshot(step + 1))
    final = snapshot(settings.dense_steps)
    history["dense"]["seconds"] = final["history"]["seconds"]
    checkpoints.save("dense", final)


# --------------------------------------------------------------------------------------------- stage 2

@torch.no_grad()
def _cache_states(model, images: np.ndarray, layers: int, progress: bool, batch: int = 128) -> torch.Tensor:
    """``(n, 1 + N, C_v)`` float16 states after the first ``layers`` vision layers (CLS included)."""
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, len(images), batch), desc="locked vision states", disable=not progress):
        out.append(tower_states(model.vision_model, pixel_values(images[i : i + batch]), layers).to(torch.float16))
    return torch.cat(out)


def _vision_tail(vision_model, states: torch.Tensor, locked: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From the states after ``locked`` layers ``(B, 1 + N, C_v)``: the layer -2 patch states
    ``(B, N, C_v)`` and the pooled CLS ``(B, C_v)``, running the remaining layers."""
    hidden = [states]
    for layer in vision_model.encoder.layers[locked:]:
        hidden.append(layer(hidden[-1], None))
    return hidden[-2][:, 1:], vision_model.post_layernorm(hidden[-1][:, 0])


def _train_align(settings: ClipTraining, model, tokenizer, data: _Data, checkpoints: Checkpoints, history: dict,
                 progress: bool, log) -> None:
    from tqdm.auto import tqdm

    from .measure import grounding_check

    locked = settings.locked_layers
    vision = model.vision_model
    if locked:
        vision.embeddings.requires_grad_(False)
        vision.pre_layrnorm.requires_grad_(False)
        for layer in vision.encoder.layers[:locked]:
            layer.requires_grad_(False)
    filip_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    ground_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    opt = _adamw(model.named_parameters(), [filip_scale, ground_scale], settings.weight_decay, settings.lr)
    state = checkpoints.load("align")
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        with torch.no_grad():
            filip_scale.copy_(state["filip_scale"])
            ground_scale.copy_(state["ground_scale"])
        start = state["step"]
        history["align"] = state["history"]
    n = min(settings.align_images, len(data.images))
    if start < settings.align_steps:
        cached = _cache_states(model, data.images[:n], locked, progress) if locked else None
        order = _order(settings.seed, 2, n, settings.align_steps, settings.align_batch)
        check = sample("val", 100, seed=settings.seed, workers=1)
        model.train()
        began = time.perf_counter()
        bar = tqdm(range(start, settings.align_steps), desc="lab CLIP, stage 2 (align)" if locked else "CLIP (global)",
                   initial=start, total=settings.align_steps, disable=not progress)

        def snapshot(step):
            done = {**history["align"],
                    "seconds": round(history["align"].get("seconds", 0) + time.perf_counter() - began, 1)}
            return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "filip_scale": filip_scale.detach().clone(), "ground_scale": ground_scale.detach().clone(),
                    "history": done}

        for step in bar:
            for group in opt.param_groups:
                group["lr"] = settings.lr * cosine_schedule(step, settings.align_steps, settings.warmup)
            rng = step_rng(settings.seed, 2, step)
            idx = order[step]
            texts = [clip_texts(data.scenes[i], rng) for i in idx]
            ids, mask = _encode(tokenizer, [t if isinstance(t, str) else t.text for trio in texts for t in trio])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
                if locked:
                    patches, pooled = _vision_tail(vision, cached[idx].float(), locked)
                else:
                    hidden = tower_states(vision, pixel_values(data.images[idx]), None, all_states=True)
                    patches, pooled = hidden[-2][:, 1:], vision.post_layernorm(hidden[-1][:, 0])
                V = model.visual_projection(vision.post_layernorm(patches))  # (B, N, C)
                image = model.visual_projection(pooled)  # (B, C)
                dense, text = dense_text(model, ids, mask)  # (3B, L, C), (3B, C)
            words = word_mask(ids, mask)
            cap, que, neg = (slice(k, None, 3) for k in range(3))
            scale = model.logit_scale.exp().clamp(max=100)
            fscale, gscale = filip_scale.exp().clamp(max=100), ground_scale.exp().clamp(max=100)
            global_loss = 0.5 * (contrastive_loss(image, text[cap], scale, negatives=text[neg])
                                 + contrastive_loss(image, text[que], scale))
            loss = settings.global_weight * global_loss
            token_loss = ground_loss = torch.zeros(())
            if settings.filip_weight > 0:
                token_loss = 0.5 * (filip_loss(V, dense[cap], words[cap], fscale)
                                    + filip_loss(V, dense[que], words[que], fscale))
                loss = loss + settings.filip_weight * token_loss
            if settings.grounding_weight > 0:
                g_rows, g_pos, g_img, g_target = grounded_targets([trio[:2] for trio in texts],
                                                                  [data.masks[i] for i in idx])
                if len(g_rows):
                    ground_loss = grounding_loss(dense[g_rows, g_pos], V[g_img], g_target, gscale)
                    loss = loss + settings.grounding_weight * ground_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            if step % 10 == 0 or (step + 1) % settings.check_every == 0 or step == settings.align_steps - 1:
                entry = {"step": step, "loss": round(loss.item(), 4), "global": round(global_loss.item(), 4),
                         "filip": round(token_loss.item(), 4), "grounding": round(ground_loss.item(), 4),
                         "scale": round(scale.item(), 2), "filip_scale": round(fscale.item(), 2)}
                if (step + 1) % settings.check_every == 0 or step == settings.align_steps - 1:
                    model.eval()
                    entry["check"] = grounding_check(model, tokenizer, check)
                    model.train()
                history["align"]["log"].append(entry)
                bar.set_postfix(loss=entry["loss"], glob=entry["global"], filip=entry["filip"],
                                ground=entry["grounding"])
                if log is not None:
                    log(entry)
            if checkpoints.due() and step + 1 < settings.align_steps:
                checkpoints.save("align", snapshot(step + 1))
        history["align"]["filip_scale"] = round(filip_scale.exp().item(), 3)
        history["align"]["grounding_scale"] = round(ground_scale.exp().item(), 3)
        final = snapshot(settings.align_steps)
        history["align"]["seconds"] = final["history"]["seconds"]
        checkpoints.save("align", final)
    model.requires_grad_(True)


def train_clip(settings: ClipTraining = ClipTraining(), checkpoints: Checkpoints | None = None,
               progress: bool = True, log=None):
    """Train the lab CLIP (both stages; stage 1 skipped when ``dense_steps == 0``).

    Returns ``(model, tokenizer, history)`` with the model in eval mode. ``history``: the
    logged steps of each stage, validation read-out accuracies (stage 1), grounding checks
    (stage 2), wall times.
    """
    from .tokenizer import clip_tokenizer

    if not 0 <= settings.locked_layers < settings.size.vision_layers:
        raise ValueError(f"locked_layers must leave at least the last of the {settings.size.vision_layers} vision "
                         f"layers to train, got {settings.locked_layers}")
    checkpoints = checkpoints or Checkpoints(None)
    torch.set_num_threads(settings.threads)
    tokenizer = clip_tokenizer(settings.size.text_context)
    model = build_clip(settings.size, seed=settings.seed)
    began = time.perf_counter()
    data = _data(settings)
    history = {"data_seconds": round(time.perf_counter() - began, 1), "dense": {"log": []}, "align": {"log": []}}
    if settings.dense_steps > 0:
        _train_dense(settings, model, data, checkpoints, history, progress, log)
    _train_align(settings, model, tokenizer, data, checkpoints, history, progress, log)
    return model.eval(), tokenizer, history
