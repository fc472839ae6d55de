"""Training the lab CLIP: contrastive on the world's captions and questions, plus FILIP's token-wise loss.

CLIP's global InfoNCE (Radford et al., ICML 2021) between the image embedding and the
pooled text embedding, with swapped-attribute captions as extra negatives (NegCLIP), plus
FILIP's token-wise late interaction (Yao et al., ICLR 2022) computed on exactly the pathway
EADP scores with: the vision tower's layer -2 states, CLS dropped, through ``post_layernorm``
and ``visual_projection``, against ``last_hidden_state @ text_projection`` of the words (no
start, end or padding). Every image is seen with a caption and with a question (the
instructions EADP scores are questions, and a causal text tower must learn them too);
questions about absent objects are not used as positives. ``python -m eadp_lab.world.train
clip``. Taught in ``notebooks/02_entropy_analysis``.

Shapes: ``B`` images per step, ``N`` patches, ``L`` text positions, ``C`` CLIP width.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .captions import caption
from .config import QTYPES
from .lab_models import ClipSize, build_clip, dense_text, pixel_values, scoring_patches, vision_states, word_mask
from .grounding import patch_masks
from .losses import contrastive_loss, cosine_schedule, filip_loss, grounding_loss
from .questions import ask
from .sample import sample
from .vocab import is_grounded
from .words import COLOURS, SHAPES, SIZES

__all__ = ["ClipTraining", "clip_texts", "grounded_targets", "patch_attributes", "AttributeHead", "train_clip"]


def patch_attributes(scene, mask: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """``(N, 3)`` int64: colour, shape and size class of the object on each patch (0: background).

    Args:
        scene: the scene whose objects the masks index.
        mask: ``(K, N)`` bool patch masks (:func:`eadp_lab.world.grounding.patch_masks`).
        coverage: ``(K, N)`` float coverage; a patch two objects share goes to the one covering more.
    Classes are 1-based indices into ``COLOURS``, ``SHAPES`` and ``SIZES``.
    """
    out = np.zeros((mask.shape[1], 3), np.int64)
    if mask.shape[0] == 0:
        return out
    owner = np.where(mask, coverage, -1.0).argmax(0)  # (N,)
    on = mask.any(0)
    table = np.array([[COLOURS.index(o.colour) + 1, SHAPES.index(o.shape) + 1, SIZES.index(o.size) + 1]
                      for o in scene.objects])
    out[on] = table[owner[on]]
    return out


class AttributeHead(torch.nn.Module):
    """Linear read-out of colour, shape and size from the scoring embeddings ``(B, N, C)``.

    A training-only auxiliary (dense labels from the world's label map, as segmentation-style
    supervision): it makes an object's attributes linearly present in every patch it covers,
    which the language model of the lab LLaVA must read. It is not saved with the CLIP.
    """

    def __init__(self, width: int):
        super().__init__()
        self.sizes = (len(COLOURS) + 1, len(SHAPES) + 1, len(SIZES) + 1)
        self.linear = torch.nn.Linear(width, sum(self.sizes))

    def loss(self, patches: torch.Tensor, targets: torch.Tensor,
             mix: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the three attributes weighted by ``mix`` (normalised), and ``(3,)``
        accuracy on object patches. ``patches`` ``(B, N, C)``, ``targets`` ``(B, N, 3)``."""
        logits = self.linear(patches.float()).split(self.sizes, dim=-1)  # 3 x (B, N, classes)
        losses, accs = [], []
        on = targets[..., 0] > 0
        for k, lg in enumerate(logits):
            losses.append(torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), targets[..., k].reshape(-1)))
            accs.append((lg.argmax(-1) == targets[..., k])[on].float().mean())
        return sum(w * l for w, l in zip(mix, losses)) / sum(mix), torch.stack(accs).detach()


@dataclass(frozen=True)
class ClipTraining:
    """How the lab CLIP is trained (serialised into its folder and model card)."""

    seed: int = 0
    steps: int = 320
    batch: int = 64
    images: int = 19_200  # distinct training scenes (the ``train`` split); steps * batch / images epochs
    lr: float = 1e-3
    warmup: int = 30
    weight_decay: float = 0.1
    filip_weight: float = 1.0  # 0 turns the token-wise loss off (the global loss alone)
    grounding_weight: float = 1.0  # word-to-patch grounding on the world's refs (GLIP-style); 0: off
    attribute_weight: float = 1.0  # per-patch colour/shape/size of the covering object (dense labels); 0: off
    attribute_mix: tuple[float, float, float] = (1.0, 3.0, 1.0)  # colour, shape, size (shape is the hard one)
    threads: int = 2
    bf16: bool = True  # autocast matmuls to bfloat16 on CPU (weights and optimiser stay float32)
    size: ClipSize = field(default_factory=ClipSize)

    def to_dict(self) -> dict:
        return asdict(self)


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
    """Which text positions name which patches, for :func:`eadp_lab.world.losses.grounding_loss`.

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
    return (torch.tensor(rows, dtype=torch.long), torch.tensor(positions, dtype=torch.long),
            torch.tensor(images, dtype=torch.long), torch.as_tensor(np.stack(targets)))


def _param_groups(model, extra, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay + extra, "weight_decay": 0.0}]


def _encode(tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
    return enc["input_ids"], enc["attention_mask"]


def train_clip(settings: ClipTraining = ClipTraining(), progress: bool = True, log=None):
    """Train the lab CLIP; returns ``(model, tokenizer, history)`` (the model in eval mode).

    ``history``: per logged step, the losses and scales; also the wall time of data
    generation and training.
    """
    from tqdm.auto import tqdm

    from .tokenizer import clip_tokenizer

    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    tokenizer = clip_tokenizer(settings.size.text_context)
    model = build_clip(settings.size, seed=settings.seed).train()
    filip_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    ground_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    head = AttributeHead(settings.size.projection_dim)
    opt = torch.optim.AdamW(_param_groups(model, [filip_scale, ground_scale], settings.weight_decay)
                            + [{"params": list(head.parameters()), "weight_decay": 0.0}], lr=settings.lr,
                            betas=(0.9, 0.98), eps=1e-6)
    start = time.perf_counter()
    records = sample("train", settings.images, seed=settings.seed, workers=settings.threads)
    images = np.stack([r.image for r in records])
    scenes = [r.scene for r in records]
    masks = [patch_masks(r.coverage).reshape(len(r.scene.objects), -1) for r in records]  # (K, N) bool each
    attributes = torch.as_tensor(np.stack([  # (images, N, 3)
        patch_attributes(r.scene, m, r.coverage.reshape(len(m), -1)) for r, m in zip(records, masks)]))
    del records
    history = {"data_seconds": round(time.perf_counter() - start, 1), "log": []}
    rng = np.random.default_rng(np.random.SeedSequence(settings.seed, spawn_key=(7,)))
    order = np.concatenate([rng.permutation(len(scenes))
                            for _ in range(math.ceil(settings.steps * settings.batch / len(scenes)))])
    start = time.perf_counter()
    bar = tqdm(range(settings.steps), desc="lab CLIP", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = settings.lr * cosine_schedule(step, settings.steps, settings.warmup)
        idx = order[step * settings.batch : (step + 1) * settings.batch]
        texts = [clip_texts(scenes[i], rng) for i in idx]
        ids, mask = _encode(tokenizer, [t if isinstance(t, str) else t.text for trio in texts for t in trio])
        g_rows, g_pos, g_img, g_target = grounded_targets([trio[:2] for trio in texts], [masks[i] for i in idx])
        pixels = pixel_values(images[idx])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
            patches, pooled = vision_states(model.vision_model, pixels)
            V = scoring_patches(model, patches)  # (B, N, C)
            image = model.visual_projection(pooled)  # (B, C)
            dense, text = dense_text(model, ids, mask)  # (3B, L, C), (3B, C)
        words = word_mask(ids, mask)
        cap, que, neg = (slice(k, None, 3) for k in range(3))
        scale = model.logit_scale.exp().clamp(max=100)
        fscale = filip_scale.exp().clamp(max=100)
        gscale = ground_scale.exp().clamp(max=100)
        global_loss = 0.5 * (contrastive_loss(image, text[cap], scale, negatives=text[neg])
                             + contrastive_loss(image, text[que], scale))
        loss = global_loss
        token_loss = torch.zeros(())
        if settings.filip_weight > 0:
            token_loss = 0.5 * (filip_loss(V, dense[cap], words[cap], fscale) + filip_loss(V, dense[que], words[que], fscale))
            loss = loss + settings.filip_weight * token_loss
        ground_loss = torch.zeros(())
        if settings.grounding_weight > 0 and len(g_rows):
            ground_loss = grounding_loss(dense[g_rows, g_pos], V[g_img], g_target, gscale)
            loss = loss + settings.grounding_weight * ground_loss
        attr_loss, attr_acc = torch.zeros(()), torch.zeros(3)
        if settings.attribute_weight > 0:
            attr_loss, attr_acc = head.loss(V, attributes[idx], settings.attribute_mix)
            loss = loss + settings.attribute_weight * attr_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0 or step == settings.steps - 1:
            entry = {"step": step, "loss": round(loss.item(), 4), "global": round(global_loss.item(), 4),
                     "filip": round(token_loss.item(), 4), "grounding": round(ground_loss.item(), 4),
                     "attributes": round(attr_loss.item(), 4),
                     "attribute_acc": [round(a, 3) for a in attr_acc.tolist()],
                     "scale": round(scale.item(), 2),
                     "filip_scale": round(fscale.item(), 2)}
            history["log"].append(entry)
            bar.set_postfix(loss=entry["loss"], glob=entry["global"], filip=entry["filip"], ground=entry["grounding"],
                            attr=entry["attribute_acc"])
            if log is not None:
                log(entry)
    history["train_seconds"] = round(time.perf_counter() - start, 1)
    history["filip_scale"] = round(filip_scale.exp().item(), 3)
    history["grounding_scale"] = round(ground_scale.exp().item(), 3)
    return model.eval(), tokenizer, history
