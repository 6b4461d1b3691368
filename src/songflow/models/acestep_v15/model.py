"""``AceStep15DiT``: the ACE-Step 1.5 DiT checkpoint as one module with the official state-dict keys
(``decoder.*``, ``encoder.*``, ``tokenizer.*``, ``detokenizer.*``, ``null_condition_emb``).

Networks only (no file I/O, no sampling loop). Latents are time-major ``[B, T, C]`` at 25 Hz; 5 Hz
tokens cover ``pool_window_size`` latent frames each. The module registers no buffers, so it can be
built on the meta device (``with torch.device("meta"): AceStep15DiT(cfg)``) and filled with
``songflow.checkpoint.strict.load_state_dict_strict``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from songflow.models.acestep_v15.condition import ConditionEncoder
from songflow.models.acestep_v15.config import AceStep15Config
from songflow.models.acestep_v15.decoder import CrossKV, DiTDecoder
from songflow.models.acestep_v15.fsq import AudioDetokenizer, AudioTokenizer


def _per_item(value: Tensor | float, like: Tensor) -> Tensor:
    """A time as a ``[B]`` tensor in ``like``'s dtype and device (scalars are broadcast)."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return value.reshape(-1).expand(like.shape[0]) if value.numel() == 1 else value.reshape(like.shape[0])


class AceStep15DiT(nn.Module):
    """Decoder (DiT) + condition encoder + audio tokenizer/detokenizer + ``null_condition_emb [1, 1, H_enc]``.

    The encoder, tokenizer and detokenizer are built from :meth:`AceStep15Config.encoder_side` (the
    decoder's widths unless the config sets ``encoder_*``, as XL does); ``null_condition_emb`` stands in for
    the encoder states in classifier-free guidance, so it has the encoder width.
    """

    def __init__(self, config: AceStep15Config):
        super().__init__()
        self.config = config
        enc_cfg = config.encoder_side()
        self.decoder = DiTDecoder(config)
        self.encoder = ConditionEncoder(enc_cfg)
        self.tokenizer = AudioTokenizer(enc_cfg)
        self.detokenizer = AudioDetokenizer(enc_cfg)
        self.null_condition_emb = nn.Parameter(torch.randn(1, 1, enc_cfg.hidden_size))

    def encode_conditions(
        self,
        text_states: Tensor,
        text_mask: Tensor,
        lyric_embeds: Tensor,
        lyric_mask: Tensor,
        refer_latents: Tensor,
        refer_order: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Packed cross-attention states ``(enc [B, L, H_enc], enc_mask [B, L] bool)``.

        Args:
            text_states: Qwen3 hidden states ``[B, Lt, text_hidden_dim]``; ``text_mask [B, Lt]``.
            lyric_embeds: lyric token embeddings ``[B, Ll, text_hidden_dim]``; ``lyric_mask [B, Ll]``.
            refer_latents: packed reference latents ``[N, Tr, C]``; ``refer_order [N]`` int64 batch index.
        """
        return self.encoder(text_states, text_mask, lyric_embeds, lyric_mask, refer_latents, refer_order)

    def precompute_cross(self, enc: Tensor) -> CrossKV:
        """Per-layer cross-attention keys/values of ``enc`` (reuse across steps via ``velocity(cross=)``)."""
        return self.decoder.precompute_cross(enc)

    def velocity(
        self,
        x_t: Tensor,
        t: Tensor | float,
        context: Tensor,
        enc: Tensor | None,
        *,
        r: Tensor | float | None = None,
        cross: CrossKV | None = None,
        enc_mask: Tensor | None = None,
    ) -> Tensor:
        """DiT velocity ``v [B, T, C]`` of ``x_t [B, T, C]`` at time ``t`` (scalar or ``[B]``).

        ``r`` defaults to ``t`` (inference: the mean-flow term embeds ``t - r = 0``); ``context [B, T,
        in_channels - C]``; ``enc [B, L, H_enc]`` or ``cross`` from :meth:`precompute_cross`. With
        ``enc_mask [B, L]`` the cross-attention skips the masked (padded) encoder tokens; without it every
        token is attended, as the official model does (docs/reference_behaviour.md#r36).
        """
        t_ = _per_item(t, x_t)
        r_ = t_ if r is None else _per_item(r, x_t)
        return self.decoder(
            x_t, t_, r_, enc, context, cross=cross, enc_mask=enc_mask, mask_padding=enc_mask is not None
        )

    def tokenize(
        self, latents: Tensor, silence_latent: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """25 Hz latents -> 5 Hz tokens, as the official ``model.tokenize``.

        ``latents [B, T, C]`` are padded up to a multiple of ``pool_window_size`` with the first frames of
        ``silence_latent [1, Ts, C]`` (mask padded with 0). Returns ``(quantized [B, T5, H_enc], codes
        [B, T5, num_quantizers] int64, mask_5hz [B, T5])`` with the mask max-pooled per window (in the
        latents' dtype).
        """
        window = self.config.pool_window_size
        pad = (-latents.shape[1]) % window
        if pad:
            fill = silence_latent[:1, :pad].to(latents.dtype).expand(latents.shape[0], -1, -1)
            latents = torch.cat([latents, fill], dim=1)
            mask = F.pad(mask, (0, pad), value=0)
        b, t, c = latents.shape
        windows = latents.reshape(b, t // window, window, c)
        chunk = math.ceil(mask.shape[1] / windows.shape[1])
        mask_5hz = F.max_pool1d(mask.to(latents.dtype).unsqueeze(1), chunk, chunk, ceil_mode=True).squeeze(1)
        quantized, codes = self.tokenizer(windows)
        return quantized, codes, mask_5hz

    def detokenize(self, quantized: Tensor) -> Tensor:
        """5 Hz states ``[B, T5, H_enc]`` -> 25 Hz latents ``[B, pool_window_size * T5, C]``."""
        return self.detokenizer(quantized)

    def codes_to_quantized(self, codes: Tensor) -> Tensor:
        """FSQ codes ``[B, T5, num_quantizers]`` (int) -> quantized 5 Hz states ``[B, T5, H_enc]``."""
        weight = self.tokenizer.audio_acoustic_proj.weight
        return self.tokenizer.quantizer.codes_to_quantized(codes).to(weight.dtype)
