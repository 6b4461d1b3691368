"""Pre-LN Transformer blocks with relative-position self-attention (the lyric encoder's "Conformer" layers).

With the official arguments (no convolution module, no macaron FFN) a layer is::

    x = x + dropout(RelPosSelfAttention(LN_mha(x), pos))
    x = x + dropout(FFN(LN_ff(x)))              FFN = w_2(dropout(SiLU(w_1(x))))

The attention is Transformer-XL style (Dai et al. 2019) with ESPnet's relative positional encoding: for
query i and key j, ``score = ((q_i + u) . k_j + (q_i + v) . p_{i-j}) / sqrt(d_k)`` with learned per-head
biases u, v (``pos_bias_u``, ``pos_bias_v``) and ``p = linear_pos(table)``
(:func:`songflow.nn.embeddings.relative_position_table`). Key names follow the official checkpoint
(``self_attn.linear_q`` …, ``feed_forward.w_1``, ``norm_mha``, ``norm_ff``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def relative_shift(scores: Tensor) -> Tensor:
    """Select, for every query i and key j, the column of relative offset ``i - j``.

    Args:
        scores: ``[..., L, 2L-1]``; column m holds offset ``(L-1) - m`` (the relative table's layout).
    Returns:
        ``[..., L, L]`` with ``out[..., i, j] = scores[..., i, (L-1) - i + j]`` (a strided view, no copy).
    """
    scores = scores.contiguous()
    length = scores.shape[-2]
    if scores.shape[-1] != 2 * length - 1:
        raise ValueError(f"relative_shift expects [..., L, 2L-1], got {tuple(scores.shape)}")
    # in each [L, 2L-1] slab, element (i, j) sits at i*(2L-1) + (L-1) - i + j = (L-1) + i*(2L-2) + j
    size = (*scores.shape[:-1], length)
    stride = (*scores.stride()[:-2], 2 * length - 2, 1)
    return scores.as_strided(size, stride, scores.storage_offset() + length - 1)


class RelPositionSelfAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (ESPnet/WeNet "rel_selfattn").

    Keys: ``linear_q``, ``linear_k``, ``linear_v``, ``linear_out`` (with bias; ``linear_k`` without bias when
    ``key_bias=False``), ``linear_pos`` (no bias), ``pos_bias_u``/``pos_bias_v`` ``[heads, d_k]``.
    """

    def __init__(self, dim: int, heads: int, *, dropout: float = 0.0, key_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.d_k = dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim, bias=key_bias)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_k))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, pos: Tensor, key_mask: Tensor | None = None, *, query_scale: float | None = None
    ) -> Tensor:
        """
        Args:
            x: ``[B, L, D]``.
            pos: ``[1, 2L-1, D]`` relative position table (offsets +(L-1) … −(L-1)).
            key_mask: ``[B, L]`` bool, True = real token. Masked keys get zero weight; a query whose keys are
                all masked gets zero attention output (not NaN).
            query_scale: multiplies the ``linear_q`` output before u/v are added (ERG-lyric).
        Returns:
            ``[B, L, D]``.
        """
        q = self.linear_q(x)
        if query_scale is not None:
            q = q * query_scale
        q = q.unflatten(-1, (self.heads, self.d_k))  # (B, L, H, d_k)
        k = self.linear_k(x).unflatten(-1, (self.heads, self.d_k)).transpose(1, 2)  # (B, H, L, d_k)
        v = self.linear_v(x).unflatten(-1, (self.heads, self.d_k)).transpose(1, 2)  # (B, H, L, d_k)
        p = self.linear_pos(pos).unflatten(-1, (self.heads, self.d_k)).transpose(1, 2)  # (1, H, 2L-1, d_k)

        q_u = (q + self.pos_bias_u).transpose(1, 2)  # (B, H, L, d_k)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        content = q_u @ k.transpose(-1, -2)  # (B, H, L, L)
        position = relative_shift(q_v @ p.transpose(-1, -2))  # (B, H, L, 2L-1) -> (B, H, L, L)
        scores = (content + position) / math.sqrt(self.d_k)

        if key_mask is not None:
            masked = ~key_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
            # a finite fill keeps gradients finite for fully masked rows; those rows are zeroed just below
            scores = scores.masked_fill(masked, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1).masked_fill(masked, 0.0)
        else:
            weights = torch.softmax(scores, dim=-1)
        out = self.dropout(weights) @ v  # (B, H, L, d_k)
        return self.linear_out(out.transpose(1, 2).flatten(2))


class PositionwiseFeedForward(nn.Module):
    """``w_2(dropout(act(w_1(x))))`` with ``w_1: D -> hidden``, ``w_2: hidden -> D`` (both with bias)."""

    def __init__(self, dim: int, hidden: int, *, dropout: float = 0.0, activation: nn.Module | None = None):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.activation = nn.SiLU() if activation is None else activation
        self.dropout = nn.Dropout(dropout)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(x))))


class RelPositionTransformerLayer(nn.Module):
    """Pre-LN layer: relative-position self-attention then FFN, each with a residual (no conv, no macaron).

    Keys: ``self_attn.*``, ``feed_forward.w_1``/``w_2``, ``norm_mha``, ``norm_ff`` (LayerNorm, eps 1e-5).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        hidden: int,
        *,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        key_bias: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.self_attn = RelPositionSelfAttention(dim, heads, dropout=attention_dropout, key_bias=key_bias)
        self.feed_forward = PositionwiseFeedForward(dim, hidden, dropout=dropout)
        self.norm_ff = nn.LayerNorm(dim, eps=norm_eps)
        self.norm_mha = nn.LayerNorm(dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, pos: Tensor, key_mask: Tensor | None = None, *, query_scale: float | None = None
    ) -> Tensor:
        """``[B, L, D] -> [B, L, D]``; see :meth:`RelPositionSelfAttention.forward` for the arguments."""
        x = x + self.dropout(self.self_attn(self.norm_mha(x), pos, key_mask, query_scale=query_scale))
        return x + self.dropout(self.feed_forward(self.norm_ff(x)))
