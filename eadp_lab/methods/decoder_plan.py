"""What a method that prunes inside the language model sees and returns (the seam's side is
:mod:`eadp_lab.models.decoder`): a :class:`LayerView` of one decoder layer's input during a prefill,
and the :class:`Drop` a :class:`DecoderPlan` makes at a pruning point."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["DecoderPlan", "Drop", "LayerView"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class LayerView:
    """One decoder layer's input during a prefill, as a plan sees it.

    Attributes:
        index: the layer's index (0-based); layer: the decoder layer module.
        hidden: ``(B, L, D)`` the hidden states entering the layer.
        cos, sin: ``(B, L, d)`` its rotary embeddings.
        valid: ``(B, L)`` bool, the rows that are not padding.
        visual: ``(B, L)`` bool, the rows that are visual tokens (or merged from them).
        origin: ``(B, L)`` long, each row's column in the unpruned prompt (``-1``: merged or padding).
        prompt_visual: ``(B, L0)`` bool, the visual placeholders of the unpruned prompt.
    """

    index: int
    layer: torch.nn.Module
    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    valid: torch.Tensor
    visual: torch.Tensor
    origin: torch.Tensor
    prompt_visual: torch.Tensor
    final_norm: torch.nn.Module | None = None

    def _rotary(self, states: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``states`` ``(B, H, Q, d)`` of the rows ``rows`` (``(B, Q)``; ``None``: every row) rotated by their
        positions' rotary embedding, in float32."""
        cos, sin = self.cos.float(), self.sin.float()
        if rows is not None:
            index = rows[..., None].expand(-1, -1, cos.shape[-1])
            cos, sin = cos.gather(1, index), sin.gather(1, index)
        return states * cos[:, None] + _rotate_half(states) * sin[:, None]

    def queries_keys(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-rotary queries of ``rows`` and keys of every row, as this layer computes them, in float32.

        Args:
            rows: ``(B, Q)`` long row indices (``None``: every row).
        Returns:
            ``q`` ``(B, H, Q, d)`` and ``k`` ``(B, H, L, d)`` (key heads repeated to the query heads).
        """
        attn = self.layer.self_attn
        x = self.layer.input_layernorm(self.hidden)
        xq = x if rows is None else x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))
        q = attn.q_proj(xq).view(x.shape[0], xq.shape[1], -1, attn.head_dim).transpose(1, 2).float()
        if getattr(attn, "q_norm", None) is not None:  # Qwen3-style per-head norms
            q = attn.q_norm(q.to(x.dtype)).float()
        q, k = self._rotary(q, rows), self.keys(x)
        return q, k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)

    def attention(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """This layer's attention probabilities for the query ``rows`` over every key, in float32.

        Causal (a row sees itself and the rows before it) and blind to padding, as the model's
        own attention; computed here in eager form whatever implementation the model runs.

        Args:
            rows: ``(B, Q)`` long query rows (``None``: every row).
        Returns:
            ``(B, H, Q, L)`` probabilities (each query's row sums to 1).
        """
        B, L = self.valid.shape
        q, k = self.queries_keys(rows)
        scores = (q @ k.transpose(-1, -2)) * self.layer.self_attn.scaling
        query_rows = torch.arange(L, device=q.device).expand(B, -1) if rows is None else rows
        allowed = torch.arange(L, device=q.device)[None, None, :] <= query_rows[:, :, None]
        allowed = allowed & self.valid[:, None, :]
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        return scores.softmax(dim=-1)

    def keys(self, normed: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H_kv, L, d)`` this layer's post-rotary keys (what its cache stores), in float32; ``normed``: its
        input after ``input_layernorm``, when the caller has it."""
        attn = self.layer.self_attn
        x = self.layer.input_layernorm(self.hidden) if normed is None else normed
        B, L, _ = x.shape
        k = attn.k_proj(x).view(B, L, -1, attn.head_dim).transpose(1, 2).float()
        if getattr(attn, "k_norm", None) is not None:
            k = attn.k_norm(k.to(x.dtype)).float()
        return self._rotary(k)

    def sample(self, b: int) -> "LayerView":
        """The view of sample ``b`` alone (a batch of one)."""
        one = slice(b, b + 1)
        return LayerView(self.index, self.layer, self.hidden[one], self.cos[one], self.sin[one], self.valid[one],
                         self.visual[one], self.origin[one], self.prompt_visual[one], self.final_norm)

    def last_rows(self) -> torch.Tensor:
        """``(B, 1)`` the last row of each sample (left padding puts every sample's last token last)."""
        B, L = self.valid.shape
        return torch.full((B, 1), L - 1, dtype=torch.long, device=self.hidden.device)


@dataclass
class Drop:
    """What a plan keeps at a drop point.

    Attributes:
        rows: per sample, ``(L'_b,)`` long indices into the current rows, in the new order; a value
            ``-1 - m`` stands for merged row ``m`` of that sample.
        merged: per sample ``(M_b, D)`` merged hidden states, or ``None``.
        renumber: give the shortened sequence positions ``0 .. L'-1`` (ignored for 3-D M-RoPE).
        note: what the plan measured (for the record), e.g. the scores it ranked by.
    """

    rows: list[torch.Tensor]
    merged: list[torch.Tensor] | None = None
    renumber: bool = False
    note: dict = field(default_factory=dict)


class DecoderPlan:
    """A method that prunes inside the decoder. Subclasses set the layers and implement :meth:`drop`.

    Attributes:
        capture_layers: layers whose :class:`LayerView` :meth:`capture` reads (before they run; at a layer
            that is also a drop point, after the drop: what the layer itself will see).
        drop_layers: layers before which :meth:`drop` shortens the sequence (ascending).
    """

    capture_layers: tuple[int, ...] = ()
    drop_layers: tuple[int, ...] = ()
    keep: list[int] = []  # per sample: visual tokens to keep after the last drop (set by begin)

    def begin(self, keep: list[int]) -> None:
        """A new prefill: ``keep[b]`` visual tokens of sample ``b`` survive the last drop (its budget)."""
        self.keep = list(keep)

    def capture(self, view: LayerView, store: dict) -> None:
        """Read what a later drop needs from ``view`` into ``store`` (one dict per prefill)."""

    def drop(self, view: LayerView, store: dict, stage: int) -> Drop:
        raise NotImplementedError
