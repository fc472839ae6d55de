"""FastV: drop the image tokens the last token attends to least, once, inside the language model.

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for
Large Vision-Language Models", ECCV 2024. Published code: pkunlp-icler/FastV,
``src/transformers/src/transformers/models/llama/modeling_llama.py``, ``LlamaModel.forward``, the
in-place token-drop branch (commit ``d1659729b5bf1be225e99ee15783deeea80f63b1``).

The rule, as the published code runs it:

- **Where.** When the decoder loop reaches layer ``K`` (0-based), it takes the attention
  probabilities that layer ``K - 1`` returned, ``(B, H, L, L)``, and drops image tokens *before*
  layer ``K`` runs. Layers ``K, K+1, ...`` see the shorter sequence.
- **Score.** The mean over heads of the **last** row (the last prompt token), on the image keys
  ``[image_start, image_start + N)``.
- **Keep.** The top ``R`` image tokens; ``R`` is the budget exactly (the published
  ``ATTENTION_RANK``). The new sequence is the sorted ``[prefix | kept image | text]``, and the kept
  tokens keep their **original** position ids (the sorted indices are the new ``position_ids``).
- **Batch.** The published code scores batch row 0 and applies it to every row; here each row is
  scored on its own (the same at batch size 1, as the authors evaluate).

:func:`fastv_keep` is the selection core, for a decoder-layer hook to call at layer ``K``
(:meth:`FastVSettings.layer` places the published ``K = 2`` of a 32-layer model in a model of
another depth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .._checks import check_int
from ._layers import check_span, check_tensor, scaled_layer, sequence_keep_index

__all__ = ["FastVSelection", "FastVSettings", "fastv_keep", "fastv_scores", "scaled_layer"]


@dataclass(frozen=True)
class FastVSettings:
    """FastV's settings. Defaults: the published ``K = 2`` on a 32-layer LLaVA-1.5 language model.

    The budget is the number of image tokens kept (``R``), exactly.
    """

    k: int = 2  # the decoder layer (0-based) before which tokens drop; the score is layer k-1's attention
    published_depth: int = 32  # the depth of the model ``k`` was published for

    def __post_init__(self):
        check_int("published_depth", self.published_depth, minimum=2)
        check_int("k", self.k, minimum=1, maximum=self.published_depth - 1)

    def layer(self, depth: int) -> int:
        """``K`` in a model of ``depth`` decoder layers (:func:`scaled_layer`)."""
        return scaled_layer(self.k, depth, self.published_depth)


class FastVSelection(NamedTuple):
    """What :func:`fastv_keep` returns."""

    image_index: torch.Tensor  # (B, R) long: kept image tokens, absolute positions, in top-k order (best first)
    keep_index: torch.Tensor  # (B, L - N + R) long: sorted positions of the new sequence (and its position ids)


def fastv_scores(attention: torch.Tensor, image_start: int, image_len: int) -> torch.Tensor:
    """FastV's image-token scores.

    Args:
        attention: ``(B, H, L, L)`` attention probabilities of decoder layer ``K - 1``.
        image_start, image_len: the image span ``[image_start, image_start + N)``.
    Returns:
        ``(B, N)``: the mean over heads of the last query row, on the image keys (input dtype).
    """
    check_tensor("attention", attention, 4, "(B, H, L, L)")
    L = attention.shape[-1]
    if attention.shape[-2] != L:
        raise ValueError(f"attention must have shape (B, H, L, L), got {tuple(attention.shape)}")
    start, n = check_span(image_start, image_len, L)
    return attention[:, :, -1, start:start + n].mean(dim=1)


def fastv_keep(attention: torch.Tensor, image_start: int, image_len: int, keep: int) -> FastVSelection:
    """FastV's selection at layer ``K``.

    Args:
        attention: ``(B, H, L, L)`` attention probabilities that decoder layer ``K - 1`` returned
            (causal softmax; row ``L - 1`` is the last prompt token).
        image_start: the first image position; ``image_len``: ``N``.
        keep: ``R``, the image tokens kept, ``1 <= R <= N``.
    Returns:
        :class:`FastVSelection`: ``image_index`` ``(B, R)`` (top-``R`` by :func:`fastv_scores`, best
        first, absolute positions) and ``keep_index`` ``(B, L - N + R)`` (sorted).
    """
    scores = fastv_scores(attention, image_start, image_len)
    R = check_int("keep", keep, minimum=1, maximum=scores.shape[1])
    top = scores.topk(R, dim=1).indices + int(image_start)
    return FastVSelection(top, sequence_keep_index(top, int(image_start), int(image_len), attention.shape[-1]))
