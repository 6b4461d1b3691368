"""The ACE-Step 1.5 DiT decoder (``decoder.*`` keys; SPEC §3 "AceStepDiTModel").

``v = decoder(x_t, t, r, enc, context)``: ``x_t [B, T, C]`` noisy latents, ``context [B, T, in_channels - C]``
(source latents then chunk mask), ``enc [B, L, condition_width]`` packed condition states, ``t``, ``r [B]``.
Steps: ``temb = time_embed(t) + time_embed_r(t - r)``; ``[context, x_t]`` padded with zeros to a multiple of
``patch_size`` frames and patchified by ``proj_in`` (Conv1d, stride = kernel = patch); the encoder states go
through ``condition_embedder``; the DiT layers (RoPE over patch positions 0..T/p-1); the final AdaLN
(``scale_shift_table [1, 2, H]``) and ``proj_out`` (ConvTranspose1d) back to ``[B, T, C]``, cropped to T.

Masks (official quirk, SPEC §3 step 5 / §9.2): the released model runs with **no padding masks** — full
layers attend to every patch, sliding layers only use the ``|i - j| <= sliding_window`` band, and the
cross-attention sees every encoder token including padding. That is the default here; pass
``mask_padding=True`` with ``enc_mask`` to drop padded encoder tokens from the cross-attention instead.

Cross-attention keys/values depend only on ``enc``: :meth:`DiTDecoder.precompute_cross` computes them once
per condition, and ``forward(..., cross=...)`` reuses them across sampling steps (numerically identical).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from songflow.models.acestep_v15.config import AceStep15Config
from songflow.models.acestep_v15.layers import (
    KV,
    DiTLayer,
    RMSNorm,
    TimestepEmbedding,
    attention_bias,
    band_valid,
    rope_cos_sin,
)

CrossKV = tuple[KV, ...]  # one (keys, values) pair per DiT layer


class _SwapTime(nn.Module):
    """``[B, T, C] <-> [B, C, T]`` (no parameters; keeps the official ``proj_in.1``, ``proj_out.1`` keys)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2)


class DiTDecoder(nn.Module):
    """The DiT: patchify, ``num_hidden_layers`` :class:`DiTLayer`, AdaLN output, de-patchify."""

    def __init__(self, cfg: AceStep15Config):
        super().__init__()
        dim, patch = cfg.hidden_size, cfg.patch_size
        self.config = cfg
        self.patch_size = patch
        self.layers = nn.ModuleList(DiTLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.proj_in = nn.Sequential(
            _SwapTime(), nn.Conv1d(cfg.in_channels, dim, kernel_size=patch, stride=patch), _SwapTime()
        )
        self.time_embed = TimestepEmbedding(dim)
        self.time_embed_r = TimestepEmbedding(dim)
        self.condition_embedder = nn.Linear(cfg.condition_width, dim, bias=True)
        self.norm_out = RMSNorm(dim, cfg.rms_norm_eps)
        self.proj_out = nn.Sequential(
            _SwapTime(),
            nn.ConvTranspose1d(dim, cfg.audio_acoustic_hidden_dim, kernel_size=patch, stride=patch),
            _SwapTime(),
        )
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def precompute_cross(self, enc: Tensor) -> CrossKV:
        """Per-layer cross-attention ``(keys, values)`` of ``enc [B, L, condition_width]``."""
        states = self.condition_embedder(enc)
        return tuple(layer.cross_attn.project_kv(states) for layer in self.layers)

    def _embed_time(self, t: Tensor, r: Tensor, trace: dict | None) -> tuple[Tensor, Tensor]:
        temb_t, proj_t = self.time_embed(t)
        temb_r, proj_r = self.time_embed_r(t - r)
        if trace is not None:
            trace.update(time_embed_temb=temb_t, time_embed_proj=proj_t)
            trace.update(time_embed_r_temb=temb_r, time_embed_r_proj=proj_r)
        return temb_t + temb_r, proj_t + proj_r

    def _patchify(self, x_t: Tensor, context: Tensor) -> Tensor:
        h = torch.cat([context, x_t], dim=-1)
        pad = (-h.shape[1]) % self.patch_size
        if pad:
            h = F.pad(h, (0, 0, 0, pad))
        return self.proj_in(h)

    def _masks(
        self, length: int, h: Tensor, enc_mask: Tensor | None, mask_padding: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        """(sliding-layer band mask, cross-attention key mask); both additive or None."""
        cfg = self.config
        band = None
        if cfg.use_sliding_window and cfg.sliding_window is not None:
            band = attention_bias(band_valid(length, cfg.sliding_window, h.device), h.dtype)
        cross = None
        if mask_padding:
            if enc_mask is None:
                raise ValueError("mask_padding=True needs enc_mask [B, L]")
            cross = attention_bias(enc_mask.to(torch.bool)[:, None, None, :], h.dtype)
        return band, cross

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        r: Tensor,
        enc: Tensor | None,
        context: Tensor,
        trace: dict | None = None,
        *,
        cross: CrossKV | None = None,
        enc_mask: Tensor | None = None,
        mask_padding: bool = False,
    ) -> Tensor:
        """Velocity ``v [B, T, C]`` for ``x_t [B, T, C]`` at times ``t``, ``r [B]``.

        Args:
            enc: encoder states ``[B, L, condition_width]`` (may be None when ``cross`` is given).
            context: ``[B, T, in_channels - C]`` (source latents, chunk mask).
            trace: when a dict, the intermediates are stored in it under the fixture names
                (``time_embed_temb``, ..., ``proj_in_out``, ``condition_embedder_out``, ``layer_NN_out``,
                ``norm_out_out``).
            cross: per-layer keys/values from :meth:`precompute_cross` (skips ``condition_embedder``).
            enc_mask, mask_padding: see the module doc (default: no masking, as the official model).
        """
        seq_len = x_t.shape[1]
        temb, proj = self._embed_time(t, r, trace)
        h = self._patchify(x_t, context)
        states = None
        if cross is None:
            if enc is None:
                raise ValueError("DiTDecoder.forward needs `enc` or precomputed `cross`")
            states = self.condition_embedder(enc)
        if trace is not None:
            trace["proj_in_out"] = h
            if states is not None:
                trace["condition_embedder_out"] = states
        length = h.shape[1]
        rope = rope_cos_sin(
            length, self.config.head_dim, self.config.rope_theta, device=h.device, dtype=h.dtype
        )
        band, cross_mask = self._masks(length, h, enc_mask, mask_padding)
        for i, layer in enumerate(self.layers):
            self_mask = band if layer.attention_type == "sliding_attention" else None
            kv = cross[i] if cross is not None else None
            h = layer(h, rope, proj, self_mask, context=states, cross_kv=kv, cross_mask=cross_mask)
            if trace is not None:
                trace[f"layer_{i:02d}_out"] = h
        shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        normed = self.norm_out(h)
        if trace is not None:
            trace["norm_out_out"] = normed
        h = (normed * (1 + scale) + shift).to(h.dtype)
        return self.proj_out(h)[:, :seq_len, :]
