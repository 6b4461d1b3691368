"""DiT attention: rotary position embedding (with the official pairing quirk), ReLU linear self-attention and
softmax cross-attention. Both attention modules take a ``query_scale`` (ERG, "energy-based guidance": the
official code scales the ``to_q`` output of some blocks through forward hooks; here it is an argument).

RoPE quirk (docs/reference_behaviour.md#r1; as the official ``Qwen2RotaryEmbedding`` copy and
``apply_rotary_emb``): the cos/sin tables use the *half-split* layout ``[f_0 .. f_{d/2-1}, f_0 .. f_{d/2-1}]``
while the rotation pairs *adjacent* features (2k, 2k+1), so the two members of a pair are rotated by
different frequencies::

    out[2k]   = x[2k]   * cos[2k]   - x[2k+1] * sin[2k]
    out[2k+1] = x[2k+1] * cos[2k+1] + x[2k]   * sin[2k+1]

It is not a rotation any more, but it is what the released weights were trained with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from songflow.nn.linear_attention import relu_linear_attention

_FP16_MAX = 65504.0


def rope_inv_freq(head_dim: int, theta: float, device: torch.device | None = None) -> Tensor:
    """``inv_freq_i = 1 / theta^(2i/head_dim)``, ``i = 0 .. head_dim/2-1``, float32."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta**exponents)


def rope_table(
    length: int,
    head_dim: int,
    theta: float,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """RoPE cos/sin tables for positions ``0 .. length-1`` in the half-split layout.

    ``table[p, j] = cos|sin(p * inv_freq[j mod head_dim/2])``, computed in float32 then cast to ``dtype``
    (the official code returns the tables in the activation dtype).

    Returns:
        ``(cos, sin)``, each ``[length, head_dim]``.
    """
    inv_freq = rope_inv_freq(head_dim, theta, device)
    pos = torch.arange(length, dtype=torch.int64, device=device).float()
    freqs = torch.outer(pos, inv_freq)  # (L, d/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (L, d)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply the official (quirky) rotary embedding to ``x`` (see the module docstring).

    Args:
        x: ``[..., d]`` queries or keys.
        cos, sin: tables broadcastable to ``x`` (e.g. ``[S, 1, d]`` for ``x`` of shape ``[B, S, H, d]``).
    Returns:
        Same shape and dtype as ``x``; computed in float32.
    """
    x32 = x.float()
    pairs = x32.unflatten(-1, (-1, 2))  # (..., d/2, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)  # (..., d): (-x[2k+1], x[2k])
    out = x32 * cos.float() + rotated * sin.float()
    return out.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """RoPE table provider with a small per-(length, device, dtype) cache.

    The cache is a plain dict, not a buffer: nothing lands in the state dict, the module is meta-device safe,
    and ``.to()`` needs no special handling (a new device simply misses the cache).
    """

    def __init__(self, head_dim: int, theta: float, max_cached: int = 8):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.max_cached = max_cached
        self._cache: dict[tuple[int, torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def forward(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` tables ``[length, head_dim]`` in ``dtype`` on ``device``."""
        key = (int(length), torch.device(device), dtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        tables = rope_table(length, self.head_dim, self.theta, device=device, dtype=dtype)
        if device != torch.device("meta"):
            if len(self._cache) >= self.max_cached:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = tables
        return tables

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}"


def check_query_scale(
    query_scale: dict[int, float | Tensor] | None, n_blocks: int, what: str = "block"
) -> dict[int, float | Tensor]:
    """Validate an ERG ``{block_index: tau}`` map (negative indices count from the end) -> ``{i: tau}``.

    ``tau`` is a float, or a per-row tensor ``[B, 1, 1]`` when conditional and unconditional passes share
    one batched call (only the unconditional rows are weakened).
    """
    if not query_scale:
        return {}
    out: dict[int, float | Tensor] = {}
    for index, tau in query_scale.items():
        i = int(index)
        if not -n_blocks <= i < n_blocks:
            raise ValueError(f"query_scale: {what} index {index} out of range (the model has {n_blocks})")
        out[i % n_blocks] = tau if isinstance(tau, Tensor) else float(tau)
    return out


def _heads(x: Tensor, heads: int) -> Tensor:
    """``[B, S, H*d] -> [B, S, H, d]`` (a view)."""
    return x.unflatten(-1, (heads, -1))


def _rope_heads(x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
    """Rotate ``[B, S, H, d]`` with ``[S, d]`` tables (or pass through)."""
    if rope is None:
        return x
    cos, sin = rope
    return apply_rope(x, cos[:, None, :], sin[:, None, :])


class LinearSelfAttention(nn.Module):
    """DiT self-attention: ReLU linear attention with RoPE (official ``attn``, ``CustomLiteLAProcessor2_0``).

    ``q, k, v = to_q/to_k/to_v(x)`` (with bias), optional ``query_scale`` on q (ERG), RoPE on q and k, the
    latent mask multiplies q, k and v, then :func:`relu_linear_attention` per head in float32 (eps 1e-15),
    merge heads, ``to_out.0``. Keys: ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (``to_out.1`` is a dropout).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, *, eps: float = 1e-15, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.eps = eps
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])

    def forward(
        self,
        x: Tensor,
        *,
        rope: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | None = None,
        query_scale: float | None = None,
    ) -> Tensor:
        """
        Args:
            x: ``[B, S, D]`` (already normalised and modulated).
            rope: ``(cos, sin)`` ``[S, head_dim]`` for positions ``0 .. S-1``.
            mask: ``[B, S]`` latent mask (1 = keep); ``None`` means all ones.
            query_scale: multiplies the ``to_q`` output (ERG). For ReLU linear attention it cancels up to eps.
        Returns:
            ``[B, S, D]``.
        """
        q = self.to_q(x)
        if query_scale is not None:
            q = q * query_scale
        q = _rope_heads(_heads(q, self.heads), rope)  # (B, S, H, d)
        k = _rope_heads(_heads(self.to_k(x), self.heads), rope)
        v = _heads(self.to_v(x), self.heads)
        if mask is not None:
            m = mask.to(q.dtype)[:, :, None, None]  # (B, S, 1, 1)
            q, k, v = q * m, k * m, v * m
        out = relu_linear_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), eps=self.eps)
        out = out.to(x.dtype).transpose(1, 2).flatten(2)  # (B, S, H*d)
        out = self.to_out[1](self.to_out[0](out))
        if out.dtype == torch.float16:
            out = out.clip(-_FP16_MAX, _FP16_MAX)
        return out


class CrossAttention(nn.Module):
    """DiT cross-attention: softmax attention from latent tokens to the condition sequence.

    Queries come from the (un-normalised) latent stream and are rotated with latent positions; keys and values
    come from the condition states, keys rotated with condition positions ``0 .. S_c-1``. Keys with
    ``context_mask == 0`` are excluded. Keys: ``to_q``, ``to_k``, ``to_v``, ``to_out.0``. The official
    module also owns ``add_q_proj``/``add_k_proj``/``add_v_proj``/``to_add_out``, which its forward never
    uses; they are not allocated here.
    """

    def __init__(
        self, dim: int, heads: int, head_dim: int, *, context_dim: int | None = None, dropout: float = 0.0
    ):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        context_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(context_dim, inner)
        self.to_v = nn.Linear(context_dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        *,
        rope: tuple[Tensor, Tensor] | None = None,
        context_rope: tuple[Tensor, Tensor] | None = None,
        context_mask: Tensor | None = None,
        mask: Tensor | None = None,
        query_scale: float | None = None,
    ) -> Tensor:
        """
        Args:
            x: ``[B, S, D]`` latent tokens.
            context: ``[B, S_c, D_c]`` condition states.
            rope / context_rope: ``(cos, sin)`` tables ``[S, d]`` / ``[S_c, d]``.
            context_mask: ``[B, S_c]`` (1 = attend; bool or float) or ``None`` (all attend).
            mask: ``[B, S]`` latent mask; a row with 0 attends to nothing (its attention output is zero, so
                the module returns the ``to_out`` bias, like the self-attention; the official code gives NaN).
            query_scale: multiplies the ``to_q`` output (ERG: softens the softmax).
        Returns:
            ``[B, S, D]``.
        """
        q = self.to_q(x)
        if query_scale is not None:
            q = q * query_scale
        q = _rope_heads(_heads(q, self.heads), rope).transpose(1, 2)  # (B, H, S, d)
        k = _rope_heads(_heads(self.to_k(context), self.heads), context_rope).transpose(
            1, 2
        )  # (B, H, S_c, d)
        v = _heads(self.to_v(context), self.heads).transpose(1, 2)  # (B, H, S_c, d)
        attn_mask = None
        if context_mask is not None:
            attn_mask = context_mask.bool()[:, None, None, :]  # (B, 1, 1, S_c)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, S, d)
        out = out.transpose(1, 2).flatten(2)  # (B, S, H*d)
        if mask is not None:
            out = out * mask.to(out.dtype)[:, :, None]
        out = self.to_out[1](self.to_out[0](out))
        if out.dtype == torch.float16:
            out = out.clip(-_FP16_MAX, _FP16_MAX)
        return out
