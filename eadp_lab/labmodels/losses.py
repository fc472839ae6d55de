"""Training losses of the lab models: CLIP's global contrastive loss, FILIP's token-wise one, answer-only CE.

- :func:`contrastive_loss`: the symmetric InfoNCE of CLIP (Radford et al., ICML 2021) on
  global embeddings, with optional extra negative texts (hard negatives with a swapped
  colour or shape, as in NegCLIP: Yuksekgonul et al., ICLR 2023).
- :func:`filip_logits` / :func:`filip_loss`: FILIP's late interaction (Yao et al., "FILIP:
  Fine-grained Interactive Language-Image Pre-Training", ICLR 2022): text-to-image
  similarity is the mean over a text's words of each word's best patch; image-to-text the
  mean over an image's patches of each patch's best word. The global loss alone does not
  make per-token text features meet the patches they name (measured in the lab CLIP's model
  card); dense scoring (EADP) needs this one.
- :func:`answer_loss`: next-token cross-entropy on the answer tokens only (LLaVA's
  instruction tuning masks the prompt).

Shapes: ``B`` images, ``T`` texts, ``N`` patches, ``L`` text positions, ``C`` width.
Taught in ``notebooks/02_entropy_analysis``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["contrastive_loss", "filip_logits", "filip_loss", "grounding_loss", "answer_loss", "cosine_schedule"]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                     negatives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE; image ``i`` and text ``i`` are the positives.

    Args:
        image: ``(B, C)``; text: ``(B, C)``; scale: the logit scale (not its log).
        negatives: optional ``(K, C)`` extra texts that match no image (image-to-text side only).
    """
    if image.shape != text.shape:
        raise ValueError(f"image {tuple(image.shape)} and text {tuple(text.shape)} must both be (B, C)")
    image, text = _normalise(image), _normalise(text)
    columns = text if negatives is None else torch.cat([text, _normalise(negatives)])
    logits = scale * image @ columns.T  # (B, B + K)
    target = torch.arange(len(image), device=image.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : len(text)].T, target))


def filip_logits(patches: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP's token-wise similarities (cosine, before any scale).

    Args:
        patches: ``(B, N, C)`` scoring embeddings of the patches.
        tokens: ``(T, L, C)`` per-token text embeddings.
        mask: ``(T, L)`` bool, True on the words that count (no start, end or padding).
    Returns:
        ``text_to_image`` ``(T, B)``: mean over words of the best patch; ``image_to_text``
        ``(B, T)``: mean over patches of the best word.
    """
    if mask.shape != tokens.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} must be (T, L) = {tuple(tokens.shape[:2])}")
    if bool((mask.sum(1) == 0).any()):
        raise ValueError("every text needs at least one word in mask")
    v, t = _normalise(patches), _normalise(tokens)
    T, (B, N, C) = t.shape[0], v.shape
    owner = torch.arange(T, device=t.device)[:, None].expand_as(mask)[mask]  # (W,) text of each word
    sim = t[mask] @ v.reshape(B * N, C).T  # (W, B * N): only real words, packed
    count = mask.sum(1).to(sim.dtype)  # (T,)
    best_patch = sim.view(-1, B, N).amax(-1)  # (W, B)
    t2i = sim.new_zeros(T, B).index_add(0, owner, best_patch) / count[:, None]  # (T, B)
    best_word = sim.new_full((T, B * N), -2.0).scatter_reduce(  # cosines are >= -1: -2 is never the max
        0, owner[:, None].expand_as(sim), sim, "amax", include_self=True)
    i2t = best_word.view(T, B, N).mean(-1).T  # (B, T)
    return t2i, i2t


def filip_loss(patches: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on :func:`filip_logits`; text ``i`` describes image ``i`` (``T == B``)."""
    t2i, i2t = filip_logits(patches, tokens, mask)
    if t2i.shape[0] != t2i.shape[1]:
        raise ValueError(f"filip_loss pairs text i with image i: got {t2i.shape[0]} texts for {t2i.shape[1]} images")
    target = torch.arange(t2i.shape[0], device=t2i.device)
    return 0.5 * (F.cross_entropy(scale * t2i, target) + F.cross_entropy(scale * i2t, target))


def grounding_loss(words: torch.Tensor, patches: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Word-to-region alignment on grounded words (GLIP: Li et al., CVPR 2022, with patches as regions).

    Each word's softmax over its own image's patches (``scale`` times the cosine) should put
    its mass on the patches of the objects it names: ``-log sum_{n in target} p_n``.

    Args:
        words: ``(G, C)`` per-token text embeddings of grounded words.
        patches: ``(G, N, C)`` the scoring embeddings of each word's image.
        targets: ``(G, N)`` bool, the patches each word names (at least one each).
    """
    if targets.shape != patches.shape[:2] or words.shape[0] != patches.shape[0]:
        raise ValueError(f"words {tuple(words.shape)}, patches {tuple(patches.shape)} and targets "
                         f"{tuple(targets.shape)} must be (G, C), (G, N, C) and (G, N)")
    if bool((targets.sum(1) == 0).any()):
        raise ValueError("every grounded word needs at least one target patch")
    logits = scale * torch.einsum("gc,gnc->gn", _normalise(words), _normalise(patches))
    return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~targets, -torch.inf), 1)).mean()


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits[:, i]`` predicting ``labels[:, i]`` where ``labels >= 0``.

    Args:
        logits: ``(B, L, V)``; labels: ``(B, L)`` long, the token each position must predict
            (already shifted), ``-100`` elsewhere.
    """
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def cosine_schedule(step: int, total: int, warmup: int, floor: float = 0.05) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())


def word_alignment_loss(visual: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor,
                        groups: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of each object patch's projected visual token against the word embeddings
    of its own colour, shape and size (LLaVA's stage-1 idea: visual tokens in the language
    model's word space), averaged over the attribute groups.

    Args:
        visual: ``(B, N, D)`` projected visual tokens; embeddings: ``(V, D)`` the language
            model's input word embeddings.
        labels: ``(B, N, A)`` long, per patch the 1-based class of its object in each of the
            ``A`` attribute groups (0 on background, which is not scored).
        groups: ``A`` id tensors, the vocabulary ids of each group's words in class order.
    Logits are ``visual @ embeddings[group].T`` in float32.
    """
    total = visual.new_zeros((), dtype=torch.float32)
    for g, ids in enumerate(groups):
        on = labels[..., g] > 0
        if not bool(on.any()):
            continue
        logits = visual[on].float() @ embeddings[ids.to(embeddings.device)].float().T  # (P, k)
        total = total + F.cross_entropy(logits, labels[..., g][on] - 1)
    return total / len(groups)
