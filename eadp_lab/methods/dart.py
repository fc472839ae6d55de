"""DART: keep the image tokens least like a few pivot tokens (duplication-aware), inside the language model.

Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters
More" (DART), 2025. The authors' repository is ZichenWen1/DART; the code followed here is its port in
ModelTC/LightCompress, ``llmc/compression/token_reduction/dart.py``, ``get_retained_image_token`` and
the ``keep_indexs`` lines of ``pruning_hook`` (commit ``9701d035b0aac5df97a2ebaadb30bcf0707616f5``),
which has the same selection as the authors' LLaVA code except for how ``token_topk`` is derived (see
:func:`dart_token_topk_published`).

The rule, as the published code runs it at decoder layer ``K`` (a pre-hook of layer ``K``):

- **Pivots.** The key cache of layer ``K - 1``, ``(B, H_kv, L, head_dim)``, flattened per token to
  ``H_kv * head_dim``. The ``pivot_image`` image tokens and the ``pivot_text`` tokens after the image
  with the largest **L1 norm** of their keys are the pivots (each list in top-k order).
- **Visiting order.** The loop visits the pivots in the iteration order of the Python set
  ``set(image_pivots + text_pivots)`` (both lists in top-k order): neither sorted nor top-k order.
  The order matters, since each pivot removes what it takes, so :func:`dart_pivot_order` builds that
  very set.
- **Picks.** Each pivot in turn takes the ``token_topk`` remaining image tokens (image pivots and
  earlier picks excluded) with the **lowest** cosine similarity to itself, in the hidden states
  entering layer ``K`` after the model's final RMSNorm.
- **Kept.** The image pivots and all picks; the text pivots only steer. That is
  ``pivot_image + token_topk * (pivot_image + pivot_text)`` image tokens. The published function
  returns them as ``list(set)`` (CPython set order); the new sequence is the sorted
  ``[prefix | kept | text]``, and the kept tokens keep their original position ids.
- **Batch.** The published code uses row 0 for the whole batch; here each row runs on its own.

Budget rule (:func:`dart_token_topk`): with the settings' pivot counts, ``token_topk =
(T - pivot_image) // (pivot_image + pivot_text)``, the largest per-pivot count whose kept total
``pivot_image + token_topk * (pivot_image + pivot_text)`` does not exceed the budget ``T``: exactly
``T`` when ``T - pivot_image`` divides evenly, otherwise the nearest count below it. With the
published 4 + 4 pivots on 576 tokens: 192 -> 188 (topk 23), 128 -> 124 (topk 15; the LightCompress
ratio 0.778 also gives 124, the authors' own ``128 // 8`` gives 132), 64 -> 60 (topk 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._checks import check_int, check_real
from ._layers import check_span, check_tensor, scaled_layer, sequence_keep_index

__all__ = [
    "DARTSelection",
    "DARTSettings",
    "dart_keep",
    "dart_kept_count",
    "dart_pivot_order",
    "dart_pivots",
    "dart_token_topk",
    "dart_token_topk_published",
]


@dataclass(frozen=True)
class DARTSettings:
    """DART's settings. Defaults: the paper's LLaVA-1.5 setting, layer ``K = 2`` of 32 and 4 + 4 pivots."""

    k: int = 2  # the decoder layer (0-based) before which tokens drop; keys of layer k-1
    pivot_image: int = 4  # image pivots (kept)
    pivot_text: int = 4  # text pivots, after the image (steer only)
    published_depth: int = 32  # the depth of the model ``k`` was published for

    def __post_init__(self):
        check_int("published_depth", self.published_depth, minimum=2)
        check_int("k", self.k, minimum=1, maximum=self.published_depth - 1)
        check_int("pivot_image", self.pivot_image, minimum=1)
        check_int("pivot_text", self.pivot_text, minimum=0)

    def layer(self, depth: int) -> int:
        """``K`` in a model of ``depth`` decoder layers (:func:`eadp_lab.methods._layers.scaled_layer`)."""
        return scaled_layer(self.k, depth, self.published_depth)


class DARTSelection(NamedTuple):
    """What :func:`dart_keep` returns (``P = pivot_image + pivot_text``)."""

    image_index: torch.Tensor  # (B, R) long: kept image tokens, absolute positions, in CPython set order
    keep_index: torch.Tensor  # (B, L - N + R) long: sorted positions of the new sequence (and its position ids)
    image_pivots: torch.Tensor  # (B, pivot_image) long: absolute positions, top-k order of the key L1 norm
    text_pivots: torch.Tensor  # (B, pivot_text) long: absolute positions (after the image), top-k order
    pivot_order: torch.Tensor  # (B, P) long: the order the pivots were visited


def dart_kept_count(token_topk: int, pivot_image: int, pivot_text: int) -> int:
    """Image tokens DART keeps: ``pivot_image + token_topk * (pivot_image + pivot_text)``."""
    return pivot_image + token_topk * (pivot_image + pivot_text)


def dart_token_topk(budget: int, settings: DARTSettings | None = None, num_tokens: int | None = None) -> int:
    """Per-pivot picks for a budget ``T`` of kept image tokens (the module's budget rule):
    ``(T - pivot_image) // (pivot_image + pivot_text)``, so that at most ``T`` tokens are kept.

    ``T`` must be at least ``pivot_image`` (and at most ``num_tokens`` when given).
    """
    settings = settings or DARTSettings()
    T = check_int("budget", budget, minimum=settings.pivot_image,
                  maximum=None if num_tokens is None else check_int("num_tokens", num_tokens, minimum=1))
    return (T - settings.pivot_image) // (settings.pivot_image + settings.pivot_text)


def dart_token_topk_published(image_len: int, reduction_ratio: float, pivot_image: int, pivot_text: int) -> int:
    """LightCompress's ``TOKEN_TOPK = int(N * (1 - reduction_ratio) / (pivot_image + pivot_text))``.

    (The authors' LLaVA code instead uses ``max_num_trunction // (pivot_image + pivot_text)`` with
    ``max_num_trunction`` the nominal kept count: 128 // 8 = 16, so 132 tokens for "128".)
    """
    N = check_int("image_len", image_len, minimum=1)
    ratio = check_real("reduction_ratio", reduction_ratio, minimum=0.0, maximum=1.0)
    return int(N * (1 - ratio) / (check_int("pivot_image", pivot_image, minimum=1)
                                  + check_int("pivot_text", pivot_text, minimum=0)))


def dart_pivots(key_states: torch.Tensor, image_start: int, image_len: int, pivot_image: int,
                pivot_text: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DART's pivots: the tokens with the largest L1 norm of their keys.

    Args:
        key_states: ``(B, H_kv, L, head_dim)`` key cache of layer ``K - 1``.
        image_start, image_len: the image span ``[image_start, image_start + N)``.
    Returns:
        ``(B, pivot_image)`` image pivots and ``(B, pivot_text)`` text pivots (tokens after the image),
        long absolute positions, each in top-k order (largest norm first).
    """
    check_tensor("key_states", key_states, 4, "(B, H_kv, L, head_dim)")
    B, _, L, _ = key_states.shape
    start, n = check_span(image_start, image_len, L)
    p_img = check_int("pivot_image", pivot_image, minimum=1, maximum=n)
    p_txt = check_int("pivot_text", pivot_text, minimum=0, maximum=L - start - n)
    flat = key_states.permute(0, 2, 1, 3).reshape(B, L, -1)  # (B, L, H_kv * head_dim)
    norm = torch.norm(flat, p=1, dim=-1)  # (B, L)
    image = norm[:, start:start + n].topk(p_img, dim=1).indices + start
    text = norm[:, start + n:].topk(p_txt, dim=1).indices + start + n
    return image, text


def dart_pivot_order(image_pivots: list[int], text_pivots: list[int]) -> list[int]:
    """The order the published loop visits the pivots of one row: ``list(set(image_pivots + text_pivots))``
    (CPython's iteration order of a set of ints, which depends on the values and the insertion order)."""
    return list(set(list(image_pivots) + list(text_pivots)))


def _dart_row(hidden: torch.Tensor, image: list[int], text: list[int], start: int, n: int,
              token_topk: int) -> tuple[list[int], list[int]]:
    """One row: ``(kept image tokens in set order, pivot visiting order)``. ``hidden``: ``(L, D)``."""
    kept = set(image + text)  # grows with the picks; its iteration order is the published output order
    order = list(kept)
    candidate = torch.ones(n, dtype=torch.bool, device=hidden.device)
    candidate[torch.tensor(image, device=hidden.device) - start] = False
    image_states = hidden[start:start + n]
    for pivot in order:
        positions = candidate.nonzero().squeeze(1)  # ascending; the choice does not depend on their order
        cos = F.cosine_similarity(hidden[pivot], image_states[positions], dim=-1)
        take = positions[(-cos).topk(token_topk).indices]  # lowest cosine first
        kept.update((take + start).tolist())
        candidate[take] = False
    kept.difference_update(text)
    return list(kept), order


def dart_keep(hidden_states: torch.Tensor, key_states: torch.Tensor, image_start: int, image_len: int,
              token_topk: int, pivot_image: int = 4, pivot_text: int = 4) -> DARTSelection:
    """DART's selection at layer ``K``.

    Args:
        hidden_states: ``(B, L, D)``: the hidden states entering layer ``K`` after the model's final
            norm (``model.norm``), as the published hook computes them.
        key_states: ``(B, H_kv, L, head_dim)``: the key cache of layer ``K - 1``.
        image_start, image_len: the image span ``[image_start, image_start + N)``.
        token_topk: picks per pivot (:func:`dart_token_topk` for a budget);
            ``token_topk * (pivot_image + pivot_text) <= N - pivot_image``.
        pivot_image, pivot_text: the pivot counts.
    Returns:
        :class:`DARTSelection` with ``R = pivot_image + token_topk * (pivot_image + pivot_text)``.
    """
    check_tensor("hidden_states", hidden_states, 3, "(B, L, D)")
    B, L, _ = hidden_states.shape
    if key_states.ndim == 4 and (key_states.shape[0], key_states.shape[2]) != (B, L):
        raise ValueError(f"key_states {tuple(key_states.shape)} do not match hidden_states "
                         f"{tuple(hidden_states.shape)}")
    image, text = dart_pivots(key_states, image_start, image_len, pivot_image, pivot_text)
    start, n = int(image_start), int(image_len)
    p = int(pivot_image) + int(pivot_text)
    k = check_int("token_topk", token_topk, minimum=0, maximum=(n - int(pivot_image)) // p)
    kept_rows, order_rows = [], []
    for b in range(B):
        kept, order = _dart_row(hidden_states[b], image[b].tolist(), text[b].tolist(), start, n, k)
        kept_rows.append(kept)
        order_rows.append(order)
    device = hidden_states.device
    kept = torch.tensor(kept_rows, dtype=torch.long, device=device).reshape(B, -1)
    order = torch.tensor(order_rows, dtype=torch.long, device=device).reshape(B, p)
    return DARTSelection(kept, sequence_keep_index(kept, start, n, L), image, text, order)
