"""Building blocks of the ACE-Step 1.5 DiT (SPEC §3), with the official parameter names.

* :class:`RMSNorm` (Qwen3 style: normalised in float32, cast back, then times ``weight``),
  :class:`GatedMLP` (``down(silu(gate(x)) * up(x))``, no biases);
* rotary embedding (:func:`rope_cos_sin`, :func:`apply_rope`; ``rotate_half`` convention, positions
  0..L-1 of the sequence at hand);
* :class:`Attention`: GQA with per-head ``q_norm`` / ``k_norm`` applied *before* RoPE; self-attention
  (RoPE on q and k) or cross-attention (k, v from the encoder states, ``k_norm`` applied, no RoPE);
  masks are additive ``[B|1, 1, Lq, Lk]`` float tensors (0 keep, ``finfo.min`` drop) built by
  :func:`attention_bias`, as the official ``create_4d_mask`` (a fully masked row attends uniformly);
* :class:`EncoderLayer` (pre-norm) and :class:`DiTLayer` (AdaLN with ``scale_shift_table [1, 6, H]``);
* :class:`TimestepEmbedding` (``t * 1000``, 256-dim sinusoid with cos first, ``temb [B, H]`` and the
  six modulation vectors ``proj [B, 6, H]``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from songflow.models.acestep_v15.config import AceStep15Config
from songflow.nn.norms import rms_norm

KV = tuple[Tensor, Tensor]  # (keys, values), each [B, kv_heads, Lk, head_dim]


class RMSNorm(nn.Module):
    """Qwen3 RMSNorm over the last dim: ``weight * (x / rms(x))``, the normalisation in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * rms_norm(x, self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class GatedMLP(nn.Module):
    """Qwen3 MLP: ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (no biases)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# -------------------------------------------------------------------------------------------------------
# rotary embedding and masks
# -------------------------------------------------------------------------------------------------------


def rope_cos_sin(length: int, head_dim: int, theta: float, *, device, dtype: torch.dtype) -> KV:
    """``(cos, sin)`` of positions 0..length-1, each ``[length, head_dim]`` (frequencies in float32,
    duplicated halves as Qwen3's default rope), cast to ``dtype``."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    positions = torch.arange(length, device=device, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: Tensor, rope: KV) -> Tensor:
    """Rotate ``x [B, heads, L, head_dim]`` by ``rope = (cos, sin)`` of shape ``[L, head_dim]``."""
    cos, sin = rope
    return x * cos + rotate_half(x) * sin


def attention_bias(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive mask from a boolean ``valid`` mask: 0 where True, ``finfo(dtype).min`` where False."""
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return bias.masked_fill(~valid, torch.finfo(dtype).min)


def band_valid(length: int, window: int, device) -> Tensor:
    """Bidirectional sliding-window geometry ``[1, 1, L, L]``: True where ``|i - j| <= window``."""
    idx = torch.arange(length, device=device)
    return ((idx[:, None] - idx[None, :]).abs() <= window)[None, None]


def self_attention_masks(
    length: int,
    cfg: AceStep15Config,
    key_mask: Tensor | None,
    *,
    device,
    dtype: torch.dtype,
) -> dict[str, Tensor | None]:
    """The additive self-attention masks per layer type, as the official encoders build them.

    ``full_attention``: key padding from ``key_mask [B, L]`` (None when there is no mask);
    ``sliding_attention``: the ``|i - j| <= sliding_window`` band and the key padding, or None when
    ``use_sliding_window`` is off (the official code then passes no mask at all to sliding layers).
    """
    keys = None if key_mask is None else key_mask.to(torch.bool).view(key_mask.shape[0], 1, 1, length)
    full = None if keys is None else attention_bias(keys, dtype)
    sliding = None
    if cfg.use_sliding_window and cfg.sliding_window is not None:
        valid = band_valid(length, cfg.sliding_window, device)
        sliding = attention_bias(valid if keys is None else valid & keys, dtype)
    return {"full_attention": full, "sliding_attention": sliding}


# -------------------------------------------------------------------------------------------------------
# attention
# -------------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """GQA attention with q/k RMSNorm per head (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``q_norm``,
    ``k_norm``). Shapes: ``x [B, Lq, dim]``; ``context [B, Lk, dim]`` for cross-attention."""

    def __init__(self, cfg: AceStep15Config, *, cross: bool = False):
        super().__init__()
        dim, hd = cfg.hidden_size, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        self.is_cross = cross
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(dim, self.heads * hd, bias=bias)
        self.k_proj = nn.Linear(dim, self.kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(dim, self.kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(self.heads * hd, dim, bias=bias)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)

    def _split(self, x: Tensor, heads: int) -> Tensor:
        return x.view(*x.shape[:-1], heads, self.head_dim).transpose(1, 2)

    def project_kv(self, source: Tensor) -> KV:
        """Normalised keys and values ``[B, kv_heads, L, head_dim]`` of ``source [B, L, dim]`` (no RoPE)."""
        k = self.k_norm(self._split(self.k_proj(source), self.kv_heads))
        return k, self._split(self.v_proj(source), self.kv_heads)

    def forward(
        self,
        x: Tensor,
        *,
        rope: KV | None = None,
        mask: Tensor | None = None,
        context: Tensor | None = None,
        kv: KV | None = None,
    ) -> Tensor:
        """Self-attention over ``x`` (RoPE when ``rope`` is given), or cross-attention to ``context``
        (or to precomputed ``kv`` from :meth:`project_kv`). ``mask``: additive ``[B|1, 1, Lq, Lk]``."""
        b, length, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, length, self.heads, self.head_dim)).transpose(1, 2)
        if self.is_cross:
            if kv is None:
                if context is None:
                    raise ValueError("cross-attention needs `context` or precomputed `kv`")
                kv = self.project_kv(context)
            k, v = kv
        else:
            k, v = self.project_kv(x)
            if rope is not None:
                q, k = apply_rope(q, rope), apply_rope(k, rope)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(b, length, self.heads * self.head_dim))


# -------------------------------------------------------------------------------------------------------
# layers
# -------------------------------------------------------------------------------------------------------


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer: ``h += attn(norm(h))``; ``h += mlp(norm(h))``."""

    def __init__(self, cfg: AceStep15Config, layer_idx: int):
        super().__init__()
        self.attention_type = cfg.layer_types[layer_idx]
        self.self_attn = Attention(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, h: Tensor, rope: KV, mask: Tensor | None) -> Tensor:
        h = h + self.self_attn(self.input_layernorm(h), rope=rope, mask=mask)
        return h + self.mlp(self.post_attention_layernorm(h))


def run_encoder_layers(
    layers: nn.ModuleList, h: Tensor, cfg: AceStep15Config, key_mask: Tensor | None = None
) -> Tensor:
    """Run encoder ``layers`` over ``h [B, L, H]`` with RoPE positions 0..L-1 and the per-type masks."""
    rope = rope_cos_sin(h.shape[1], cfg.head_dim, cfg.rope_theta, device=h.device, dtype=h.dtype)
    masks = self_attention_masks(h.shape[1], cfg, key_mask, device=h.device, dtype=h.dtype)
    for layer in layers:
        h = layer(h, rope, masks[layer.attention_type])
    return h


class DiTLayer(nn.Module):
    """DiT layer: AdaLN-modulated self-attention, plain cross-attention, AdaLN-modulated MLP.

    ``temb [B, 6, H]`` plus ``scale_shift_table [1, 6, H]`` gives (shift, scale, gate) for the
    self-attention and for the MLP; the cross-attention has neither modulation nor gate.
    """

    def __init__(self, cfg: AceStep15Config, layer_idx: int):
        super().__init__()
        dim, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.attention_type = cfg.layer_types[layer_idx]
        self.self_attn_norm = RMSNorm(dim, eps)
        self.self_attn = Attention(cfg)
        self.cross_attn_norm = RMSNorm(dim, eps)
        self.cross_attn = Attention(cfg, cross=True)
        self.mlp_norm = RMSNorm(dim, eps)
        self.mlp = GatedMLP(dim, cfg.intermediate_size)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        h: Tensor,
        rope: KV,
        temb: Tensor,
        self_mask: Tensor | None,
        *,
        context: Tensor | None = None,
        cross_kv: KV | None = None,
        cross_mask: Tensor | None = None,
    ) -> Tensor:
        """``h [B, L, H]``, ``temb [B, 6, H]``; ``context [B, Lk, H]`` (already through the condition
        embedder) or its precomputed ``cross_kv``."""
        shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table + temb).chunk(6, dim=1)
        normed = (self.self_attn_norm(h) * (1 + scale) + shift).to(h.dtype)
        h = (h + self.self_attn(normed, rope=rope, mask=self_mask) * gate).to(h.dtype)
        normed = self.cross_attn_norm(h).to(h.dtype)
        h = h + self.cross_attn(normed, mask=cross_mask, context=context, kv=cross_kv)
        normed = (self.mlp_norm(h) * (1 + c_scale) + c_shift).to(h.dtype)
        return (h + self.mlp(normed) * c_gate).to(h.dtype)


class TimestepEmbedding(nn.Module):
    """Timestep -> ``(temb [B, H], proj [B, 6, H])`` (``linear_1``, ``linear_2``, ``time_proj``).

    ``t [B]`` in [0, 1] is scaled by 1000; the sinusoid has ``in_channels`` = 256 entries, cos first,
    frequencies ``exp(-ln(10000) * k / 128)``.
    """

    def __init__(self, dim: int, in_channels: int = 256, scale: float = 1000.0):
        super().__init__()
        self.in_channels, self.scale = in_channels, scale
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.time_proj = nn.Linear(dim, dim * 6)

    def sinusoid(self, t: Tensor) -> Tensor:
        """``[B, in_channels]`` sinusoidal features of ``t [B]`` (float32)."""
        half = self.in_channels // 2
        k = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(10000) * k / half)
        args = (t * self.scale)[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.in_channels % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        temb = self.linear_2(F.silu(self.linear_1(self.sinusoid(t).to(self.linear_1.weight.dtype))))
        proj = self.time_proj(F.silu(temb)).unflatten(1, (6, -1))
        return temb, proj
