"""25 Hz -> 5 Hz audio tokenizer and detokenizer of ACE-Step 1.5 (``tokenizer.*``, ``detokenizer.*``).

:class:`ResidualFSQ` reproduces the numerics of ``vector_quantize_pytorch`` 1.32.0
``ResidualFSQ(dim, levels, num_quantizers)`` in eval mode with its defaults (hard-clamped,
symmetry-preserving FSQ layers, ``soft_clamp_input_value = 1 + 1 / (levels - 1)``):

1. ``z = project_in(x)`` (Linear dim -> len(levels), bias); ``z = tanh(z / c) * c`` with ``c = 1 + 1/(L-1)``;
2. per quantizer q (scale ``s_q = L ** -q``): ``u = clamp(residual / s_q, -1, 1)``,
   ``k = floor((L - 1) * (u + 1) / 2 + 0.5)`` (the level index, 0..L-1), code ``k * 2/(L-1) - 1``;
   index ``round(sum(((code + 1) / (2/(L-1))) * basis))`` with ``basis = cumprod([1, L_0, ..., L_{d-2}])``;
   ``quantized += code * s_q``, ``residual -= code * s_q``;
3. ``project_out`` (Linear len(levels) -> dim, bias).

The quantisation runs in float32. ``levels``, ``basis`` and ``scales`` are computed from the config (the
library keeps them as non-persistent buffers, so they are not in ``model.safetensors``); this module
registers no buffers, so it can be built on the meta device and loaded strictly.

:class:`AudioTokenizer`: ``audio_acoustic_proj`` (C -> H) on ``[B, T5, P, C]`` windows of ``P =
pool_window_size`` frames, :class:`AttentionPooler` (``embed_tokens``, a learned ``special_token`` prepended
to every window, encoder layers with RoPE positions 0..P, ``norm``, output token 0) and the quantizer.
:class:`AudioDetokenizer`: ``embed_tokens``, each 5 Hz token repeated P times plus ``special_tokens
[1, P, H]``, encoder layers per window, ``norm``, ``proj_out`` (H -> C) -> ``[B, P * T5, C]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from songflow.models.acestep_v15.config import AceStep15Config
from songflow.models.acestep_v15.layers import EncoderLayer, RMSNorm, run_encoder_layers


class ResidualFSQ(nn.Module):
    """Residual finite scalar quantizer (``project_in``, ``project_out``); see the module doc.

    ``forward(x [..., dim]) -> (quantized [..., dim], indices [..., num_quantizers] int64)``.
    """

    def __init__(self, dim: int, levels: Sequence[int], num_quantizers: int = 1):
        super().__init__()
        self.levels = tuple(int(v) for v in levels)
        self.num_quantizers = num_quantizers
        self.dim = dim
        width = len(self.levels)
        self.project_in: nn.Module = nn.Linear(dim, width) if dim != width else nn.Identity()
        self.project_out: nn.Module = nn.Linear(width, dim) if dim != width else nn.Identity()

    @property
    def codebook_size(self) -> int:
        size = 1
        for level in self.levels:
            size *= level
        return size

    def _constants(self, device) -> tuple[Tensor, Tensor, Tensor]:
        """(levels int32 [d], basis int32 [d], scales float32 [q, d])."""
        levels = torch.tensor(self.levels, dtype=torch.int32, device=device)
        basis = torch.cumprod(torch.tensor((1, *self.levels[:-1]), device=device), dim=0).to(torch.int32)
        scales = torch.stack([levels.float() ** -q for q in range(self.num_quantizers)])
        return levels, basis, scales

    def _out(self, codes: Tensor) -> Tensor:
        weight = getattr(self.project_out, "weight", None)
        return self.project_out(codes if weight is None else codes.to(weight.dtype))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        levels, basis, scales = self._constants(x.device)
        steps = levels - 1
        z = self.project_in(x).float()
        clamp_value = 1 + (1 / steps)
        z = (z / clamp_value).tanh() * clamp_value
        quantized = torch.zeros_like(z)
        residual = z
        all_indices = []
        for q in range(self.num_quantizers):
            u = (residual / scales[q]).clamp(-1.0, 1.0)
            bracket = torch.floor(steps * (u + 1) / 2.0 + 0.5)
            codes = (2.0 / steps) * bracket - 1.0
            index = (((codes + 1.0) / (2.0 / steps)) * basis).sum(dim=-1).round().to(torch.int64)
            all_indices.append(index)
            codes = codes * scales[q]
            residual = residual - codes
            quantized = quantized + codes
        return self._out(quantized), torch.stack(all_indices, dim=-1)

    def codes_to_quantized(self, indices: Tensor) -> Tensor:
        """``indices [..., num_quantizers]`` (int; -1 = dropped) -> ``[..., dim]`` (the library's
        ``get_output_from_indices``)."""
        levels, basis, scales = self._constants(indices.device)
        if indices.shape[-1] != self.num_quantizers:
            raise ValueError(
                f"indices must end in {self.num_quantizers} quantizer(s), got {tuple(indices.shape)}"
            )
        total = torch.zeros(*indices.shape[:-1], len(self.levels), device=indices.device)
        for q in range(self.num_quantizers):
            index = indices[..., q].to(torch.int64)
            dropped = index == -1
            level_idx = (index.clamp_min(0)[..., None] // basis) % levels
            codes = level_idx * (2.0 / (levels - 1)) - 1.0
            total = total + codes.masked_fill(dropped[..., None], 0.0) * scales[q]
        return self._out(total)


class AttentionPooler(nn.Module):
    """Pools each window ``[P, H]`` to one vector through a learned ``special_token`` (CLS)."""

    def __init__(self, cfg: AceStep15Config):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.special_token = nn.Parameter(torch.randn(1, 1, cfg.hidden_size) * 0.02)
        layers = range(cfg.num_attention_pooler_hidden_layers)
        self.layers = nn.ModuleList(EncoderLayer(cfg, i) for i in layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, T5, P, H]`` -> ``[B, T5, H]``."""
        b, t5, p, d = x.shape
        h = self.embed_tokens(x)
        h = torch.cat([self.special_token.expand(b, t5, 1, d).to(h.dtype), h], dim=2)
        h = run_encoder_layers(self.layers, h.reshape(b * t5, p + 1, d), self.config)
        return self.norm(h)[:, 0, :].reshape(b, t5, d)


class AudioTokenizer(nn.Module):
    """``audio_acoustic_proj`` + :class:`AttentionPooler` + :class:`ResidualFSQ` (``quantizer``)."""

    def __init__(self, cfg: AceStep15Config):
        super().__init__()
        self.pool_window_size = cfg.pool_window_size
        self.audio_acoustic_proj = nn.Linear(cfg.audio_acoustic_hidden_dim, cfg.hidden_size)
        self.attention_pooler = AttentionPooler(cfg)
        self.quantizer = ResidualFSQ(cfg.fsq_dim, cfg.fsq_input_levels, cfg.fsq_input_num_quantizers)

    def pool(self, windows: Tensor) -> Tensor:
        """``windows [B, T5, P, C]`` -> pre-quantisation states ``[B, T5, H]``."""
        return self.attention_pooler(self.audio_acoustic_proj(windows))

    def forward(self, windows: Tensor, trace: dict | None = None) -> tuple[Tensor, Tensor]:
        """``windows [B, T5, P, C]`` -> ``(quantized [B, T5, H], indices [B, T5, num_quantizers] int64)``;
        ``trace`` receives ``pooled_5hz_pre_fsq``."""
        pooled = self.pool(windows)
        if trace is not None:
            trace["pooled_5hz_pre_fsq"] = pooled
        quantized, indices = self.quantizer(pooled)
        return quantized.to(pooled.dtype), indices


class AudioDetokenizer(nn.Module):
    """5 Hz tokens ``[B, T5, H]`` -> 25 Hz latents ``[B, P * T5, C]``."""

    def __init__(self, cfg: AceStep15Config):
        super().__init__()
        self.config = cfg
        self.pool_window_size = cfg.pool_window_size
        self.embed_tokens = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.special_tokens = nn.Parameter(torch.randn(1, cfg.pool_window_size, cfg.hidden_size) * 0.02)
        layers = range(cfg.num_attention_pooler_hidden_layers)
        self.layers = nn.ModuleList(EncoderLayer(cfg, i) for i in layers)
        self.proj_out = nn.Linear(cfg.hidden_size, cfg.audio_acoustic_hidden_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        b, t5, d = tokens.shape
        p = self.pool_window_size
        h = self.embed_tokens(tokens).unsqueeze(2).expand(b, t5, p, d)
        h = (h + self.special_tokens.unsqueeze(0)).reshape(b * t5, p, d)
        h = self.proj_out(self.norm(run_encoder_layers(self.layers, h, self.config)))
        return h.reshape(b, t5 * p, -1)
