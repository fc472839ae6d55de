"""PyramidDrop: drop image tokens in stages through the language model, a fixed share at each stage.

Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction", CVPR 2025. Published code: Cooperx521/PyramidDrop,
``llava/model/modeling_llama_pdrop.py``, ``LlamaModel.pdrop_rank_drop``, inference branch (commit
``6444f304aee4b7edcb022839fb9e8cd07859704a``).

The rule, as the published code runs it at inference (prefill):

- **Stages.** ``layer_list`` (1-based, default ``[8, 16, 24]``) splits the decoder into stages.
  After decoder layer ``layer_list[s]`` (that is, before the layer of 0-based index
  ``layer_list[s]``) stage ``s`` drops image tokens.
- **Score.** The *next* layer's ``input_layernorm``, ``q_proj``, ``k_proj`` and RoPE give post-RoPE
  queries and keys of the current sequence. The score is
  ``softmax(q_last k^T / sqrt(head_dim) + causal mask)`` for the last instruction token (row
  ``prompt_len + image_tokens_s - 1``, the last row of an unpadded sequence), the softmax in float32
  and cast back to the input dtype, averaged over heads, on the image keys. It is not the attention
  the finished layer computed.
- **Keep.** The top ``keep_s`` image tokens, then **sorted** into position order: the next sequence
  is ``[prefix | kept image tokens in position order | text]``, and its position ids are
  renumbered ``0 .. L' - 1``.
- **Counts.** ``image_token_ratio_list`` (one ratio per stage; the code puts 1.0 in front) gives
  ``image_tokens_s = int(N * ratio[s])`` and ``keep_s = int(N * ratio[s + 1])``: truncations, always
  of the **original** ``N``.
- **Batch.** Rows are independent.

Budgets. PyramidDrop's paper reports "192 / 128 / 64 tokens" as the layer-averaged visual token
count, and the authors published no ratio lists for those rows (their evaluation scripts use the
default ``[8, 16, 24]`` with ``lambda = 0.5``). Here a budget ``T`` counts the visual tokens **after
the last stage** (at most ``T``; exactly ``T`` by :func:`pyramiddrop_schedule`), and the schedule
keeps the paper's pyramid: the stages at the (depth-scaled) published layers, each keeping the same
share ``lambda = (T / N) ** (1 / S)`` of the previous one, ``S`` the number of stages. Ratio ``s`` is
``lambda ** s``; the last is the smallest float with ``int(N * ratio) == T``. Without a budget, the
settings' ``ratio`` is ``lambda`` (the published ``0.5``: 288 / 144 / 72 of 576). For ``N = 576``:

=======  ===========  =====================  ==========================
budget   lambda       kept after each stage  the paper's own setting
=======  ===========  =====================  ==========================
192      0.6934       399 / 276 / 192
128      0.6057       348 / 211 / 128
96       0.5503       316 / 174 / 96
72       0.5          288 / 144 / 72         ``lambda = 0.5`` (default)
64       0.4807       276 / 133 / 64
=======  ===========  =====================  ==========================

Other token counts use the same rule with their own ``N`` (the fraction ``T / N`` sets ``lambda``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .._checks import check_int, check_real
from ._layers import check_layers, check_span, check_tensor, scaled_layers

__all__ = [
    "PyramidDropSchedule",
    "PyramidDropSettings",
    "pyramiddrop_counts",
    "pyramiddrop_keep",
    "pyramiddrop_schedule",
    "pyramiddrop_scores",
]


@dataclass(frozen=True)
class PyramidDropSettings:
    """PyramidDrop's settings. Defaults: the published ``layer_list [8, 16, 24]`` and ``lambda = 0.5`` of a
    32-layer LLaVA-1.5 language model."""

    layers: tuple[int, ...] = (8, 16, 24)  # 1-based: stage s drops after decoder layer layers[s] (strictly increasing)
    ratio: float = 0.5  # lambda: the share each stage keeps of the previous one, when no budget is given
    published_depth: int = 32  # the depth of the model ``layers`` were published for

    def __post_init__(self):
        check_int("published_depth", self.published_depth, minimum=2)
        object.__setattr__(self, "layers", check_layers(self.layers, self.published_depth))
        check_real("ratio", self.ratio, above=0.0, maximum=1.0)

    def stage_layers(self, depth: int) -> tuple[int, ...]:
        """The (1-based) stage layers in a model of ``depth`` decoder layers: each published one through
        :func:`eadp_lab.methods._layers.scaled_layer`; a ``ValueError`` if two of them coincide."""
        return scaled_layers(self.layers, depth, self.published_depth)


class PyramidDropSchedule(NamedTuple):
    """A schedule for ``N`` image tokens: per stage ``s``."""

    ratios: tuple[float, ...]  # the published image_token_ratio_list (without the leading 1.0), one per stage
    image_tokens: tuple[int, ...]  # image tokens entering stage s: int(N * ratio[s - 1]) (N at s = 0)
    keep: tuple[int, ...]  # image tokens stage s keeps: int(N * ratio[s])


def pyramiddrop_counts(num_tokens: int, ratios) -> PyramidDropSchedule:
    """The published counts of ``ratios`` (``image_token_ratio_list``, one ratio per stage) for ``N`` tokens:
    ``int()`` truncations of ``N * ratio``, always of the original ``N``."""
    N = check_int("num_tokens", num_tokens, minimum=1)
    ratios = tuple(check_real("ratio", r, minimum=0.0, maximum=1.0) for r in ratios)
    internal = (1.0, *ratios)
    image_tokens = tuple(int(N * r) for r in internal[:-1])
    keep = tuple(int(N * r) for r in internal[1:])
    return PyramidDropSchedule(ratios, image_tokens, keep)


def _ratio_for(count: int, num_tokens: int) -> float:
    """The smallest float ``r >= count / N`` with ``int(N * r) == count`` (``count / N`` alone can fall
    one short: ``int(22 * (15 / 22)) == 14``)."""
    r = count / num_tokens
    while int(num_tokens * r) < count:
        r = math.nextafter(r, math.inf)
    return r


def pyramiddrop_schedule(num_tokens: int, budget: int | None = None,
                         settings: PyramidDropSettings | None = None) -> PyramidDropSchedule:
    """The stage ratios and counts for ``N`` image tokens (see the module's budget rule).

    ``budget=None``: ``ratio[s] = lambda ** (s + 1)`` with the settings' ``lambda``. A budget ``T``
    (``1 <= T <= N``): ``lambda = (T / N) ** (1 / S)`` and exactly ``T`` tokens after the last stage.
    """
    settings = settings or PyramidDropSettings()
    N = check_int("num_tokens", num_tokens, minimum=1)
    S = len(settings.layers)
    if budget is None:
        lam = settings.ratio
        return pyramiddrop_counts(N, [lam ** (s + 1) for s in range(S)])
    T = check_int("budget", budget, minimum=1, maximum=N)
    lam = (T / N) ** (1.0 / S)
    ratios = [lam ** (s + 1) for s in range(S - 1)] + [_ratio_for(T, N)]
    return pyramiddrop_counts(N, ratios)


def pyramiddrop_scores(query_states: torch.Tensor, key_states: torch.Tensor, image_start: int, image_len: int,
                       query_index: int | torch.Tensor | None = None) -> torch.Tensor:
    """PyramidDrop's image-token scores at one stage.

    Args:
        query_states: ``(B, H, L, head_dim)`` post-RoPE queries of the layer after the drop point,
            computed on the current (stage-``s``) sequence.
        key_states: ``(B, H_kv, L, head_dim)`` its post-RoPE keys (``H_kv`` divides ``H``; the published
            code has ``H_kv == H``, grouped keys are repeated per query head as the decoder does).
        image_start, image_len: the current image span ``[image_start, image_start + n)``.
        query_index: the query row: ``None`` (the last row, ``L - 1``: the last instruction token of an
            unpadded sequence), an int, or ``(B,)`` long per row (padded batches:
            ``prompt_len + image_tokens_s - 1``). Keys after it are masked (causal).
    Returns:
        ``(B, n)`` in the input dtype: ``softmax(q k^T / sqrt(head_dim) + mask)`` (logits in the input
        dtype, softmax in float32, cast back) averaged over heads, on the image keys.
    """
    check_tensor("query_states", query_states, 4, "(B, H, L, head_dim)")
    check_tensor("key_states", key_states, 4, "(B, H_kv, L, head_dim)")
    B, H, L, d = query_states.shape
    Hk = key_states.shape[1]
    if key_states.shape[0] != B or key_states.shape[2:] != (L, d) or Hk == 0 or H % Hk:
        raise ValueError(f"key_states {tuple(key_states.shape)} do not match query_states {tuple(query_states.shape)}")
    start, n = check_span(image_start, image_len, L)
    device = query_states.device
    rows = torch.arange(B, device=device)
    if query_index is None:
        index = torch.full((B,), L - 1, dtype=torch.long, device=device)
    elif isinstance(query_index, torch.Tensor):
        index = query_index.to(device=device, dtype=torch.long).reshape(-1).expand(B)
    else:
        index = torch.full((B,), check_int("query_index", query_index, minimum=0), dtype=torch.long, device=device)
    if bool((index < 0).any()) or bool((index >= L).any()):
        raise ValueError(f"query_index must lie in [0, {L - 1}], got {index.tolist()}")
    if Hk != H:
        key_states = key_states.repeat_interleave(H // Hk, dim=1)
    q = query_states[rows, :, index].unsqueeze(2)  # (B, H, 1, d)
    logits = torch.matmul(q, key_states.transpose(2, 3)) / math.sqrt(d)  # (B, H, 1, L)
    future = torch.arange(L, device=device)[None, :] > index[:, None]  # (B, L) keys after the query
    mask = torch.zeros(B, L, dtype=query_states.dtype, device=device)
    mask.masked_fill_(future, torch.finfo(query_states.dtype).min)
    logits = logits + mask[:, None, None, :]
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query_states.dtype)
    return probs.mean(dim=1)[:, :, start:start + n].mean(dim=1)


def pyramiddrop_keep(query_states: torch.Tensor, key_states: torch.Tensor, image_start: int, image_len: int,
                     keep: int, query_index: int | torch.Tensor | None = None) -> torch.Tensor:
    """PyramidDrop's selection at one stage.

    Args: as :func:`pyramiddrop_scores`; ``keep``: the image tokens kept, ``0 <= keep <= n``.
    Returns:
        ``(B, keep)`` long: the top-``keep`` image tokens by :func:`pyramiddrop_scores`, **ascending**
        absolute positions in the current sequence. The next sequence gathers
        ``sequence_keep_index(kept, image_start, n, L)`` (:mod:`eadp_lab.methods._layers`) and
        renumbers its position ids ``0 .. L' - 1``.
    """
    scores = pyramiddrop_scores(query_states, key_states, image_start, image_len, query_index)
    k = check_int("keep", keep, minimum=0, maximum=scores.shape[1])
    return (scores.topk(k, dim=1).indices + int(image_start)).sort(dim=1).values
