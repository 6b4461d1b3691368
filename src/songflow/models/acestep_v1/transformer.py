"""The ACE-Step v1 DiT (official ``ACEStepTransformer2DModel``); quirks: docs/reference_behaviour.md#r1-#r4.

Two entry points, as in the official code:

* :meth:`ACEStepTransformer.encode` builds the condition sequence once per generation:
  ``[speaker token, text tokens, lyric tokens]`` (``[B, 1+Lt+Ll, D]``) and its mask.
* :meth:`ACEStepTransformer.forward` predicts the flow velocity ``[B, 8, 16, L]`` for latents at flow time
  ``sigma`` (``x_sigma = (1-sigma)*x0 + sigma*noise``; the network sees ``t = 1000*sigma``).

Forward pass: sinusoidal timestep features → ``timestep_embedder`` (= e) → ``t_block`` (adaLN
table) ; ``proj_in`` (Conv2d collapsing the 16 frequency rows, GroupNorm over the whole sequence, 1x1 conv)
→ one token per latent frame ; ``num_layers`` adaLN-single blocks (ReLU linear self-attention with RoPE,
un-gated cross-attention on the un-normalised stream, GLU conv feed-forward) ; ``final_layer`` (RMSNorm
modulated by e, Linear, unpatchify).

State-dict keys are the official ones, except the cross-attention's ``add_q_proj``/``add_k_proj``/
``add_v_proj``/``to_add_out`` (present in the official checkpoint, never used by its forward pass: about
1.2 GB in bf16 for the released model). They are not allocated; a loader drops the keys matching
:data:`UNUSED_CHECKPOINT_KEY_PATTERNS`. The REPA ``projectors.*`` (training only) exist only with
``with_projectors=True`` (:data:`OPTIONAL_CHECKPOINT_KEY_PATTERNS`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from songflow.config import JsonConfig
from songflow.errors import ConfigError
from songflow.models.acestep_v1.lyric_encoder import LyricEncoder, LyricEncoderConfig
from songflow.nn.attention import CrossAttention, LinearSelfAttention, RotaryEmbedding, check_query_scale
from songflow.nn.embeddings import TimestepEmbedding, TimestepSinusoid
from songflow.nn.norms import RMSNorm

#: Official checkpoint keys with no parameter here (unused cross-attention projections): drop them on load.
UNUSED_CHECKPOINT_KEY_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(
        r"^transformer_blocks\.\d+\.cross_attn\.(?:add_q_proj|add_k_proj|add_v_proj|to_add_out)\.(?:weight|bias)$"
    ),
)
#: Official checkpoint keys loaded only when the model is built with ``with_projectors=True`` (REPA heads).
OPTIONAL_CHECKPOINT_KEY_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^projectors\.\d+\.\d+\.(?:weight|bias)$"),
)

TIMESTEP_FEATURES = 256  # width of the sinusoidal timestep features (diffusers Timesteps(256, ...))
PATCH_HIDDEN_PER_CHANNEL = 256  # proj_in hidden width = in_channels * 256 (2048 for the released model)
GROUP_NORM_GROUPS = 32


@dataclass(frozen=True)
class TransformerConfig(JsonConfig):
    """``ace_step_transformer/config.json``; defaults are the RELEASED values.

    ``inner_dim`` is accepted from the official file but must equal ``num_attention_heads *
    attention_head_dim`` (the official model silently recomputes it); when omitted it is derived.
    ``max_position``, ``max_height`` and ``max_width`` are kept for the round trip (RoPE tables are built
    for any length; the latent height is read from the input).
    """

    in_channels: int = 8
    num_layers: int = 24
    inner_dim: int | None = None
    attention_head_dim: int = 128
    num_attention_heads: int = 20
    mlp_ratio: float = 2.5
    out_channels: int = 8
    max_position: int = 32768
    rope_theta: float = 1000000.0
    speaker_embedding_dim: int = 512
    text_embedding_dim: int = 768
    ssl_encoder_depths: tuple[int, ...] = (8, 8)
    ssl_names: tuple[str, ...] = ("mert", "m-hubert")
    ssl_latent_dims: tuple[int, ...] = (1024, 768)
    patch_size: tuple[int, int] = (16, 1)
    max_height: int = 16
    max_width: int = 32768
    lyric_encoder_vocab_size: int = 6693
    lyric_hidden_size: int = 1024

    _CLASS_NAME: ClassVar[str | None] = "ACEStepTransformer2DModel"

    def __post_init__(self) -> None:
        expected = self.num_attention_heads * self.attention_head_dim
        if self.inner_dim is None:
            object.__setattr__(self, "inner_dim", expected)
        elif self.inner_dim != expected:
            raise ConfigError(
                f"TransformerConfig: inner_dim {self.inner_dim} != num_attention_heads "
                f"{self.num_attention_heads} * attention_head_dim {self.attention_head_dim} = {expected}"
            )
        if self.attention_head_dim % 2:
            raise ConfigError(
                f"TransformerConfig: attention_head_dim must be even (RoPE), got {self.attention_head_dim}"
            )
        if len(self.patch_size) != 2 or min(self.patch_size) < 1:
            raise ConfigError(
                f"TransformerConfig: patch_size must be two positive ints, got {self.patch_size}"
            )
        if not len(self.ssl_names) == len(self.ssl_latent_dims) == len(self.ssl_encoder_depths):
            raise ConfigError(
                "TransformerConfig: ssl_names, ssl_latent_dims and ssl_encoder_depths differ in length"
            )
        for name in (
            "in_channels",
            "num_layers",
            "num_attention_heads",
            "out_channels",
            "speaker_embedding_dim",
            "text_embedding_dim",
            "lyric_encoder_vocab_size",
            "lyric_hidden_size",
        ):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"TransformerConfig.{name} must be positive, got {getattr(self, name)}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"TransformerConfig.mlp_ratio must be positive, got {self.mlp_ratio}")

    @property
    def ffn_hidden(self) -> int:
        """GLU feed-forward width ``int(inner_dim * mlp_ratio)`` (6400 for the release)."""
        return int(self.inner_dim * self.mlp_ratio)  # type: ignore[operator]

    @classmethod
    def tiny(cls) -> TransformerConfig:
        """A 2-block, 32-wide model for tests (real vocab size and speaker width, so real inputs fit)."""
        return cls(
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            text_embedding_dim=16,
            ssl_encoder_depths=(1, 1),
            ssl_latent_dims=(24, 16),
            lyric_hidden_size=32,
        )


@dataclass
class Conditions:
    """Encoded conditions for the DiT's cross-attention.

    Attributes:
        states: ``[B, S, D]`` — speaker token, text tokens, lyric tokens (in that order).
        mask: ``[B, S]`` float32, 1 = attend.
    """

    states: Tensor
    mask: Tensor


class _Conv(nn.Module):
    """Holder giving the official ``<name>.conv`` key prefix."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv


class GLUMBConv(nn.Module):
    """DiT feed-forward ``ff``: 1x1 conv → SiLU → depthwise conv (k=3) → GLU → 1x1 conv.

    Keys ``inverted_conv.conv`` ``[2H, D, 1]``, ``depth_conv.conv`` ``[2H, 1, 3]``, ``point_conv.conv``
    ``[D, H, 1]`` (no bias). Computed channels-last: the 1x1 convs are matmuls on ``[B, S, *]`` and the
    depthwise conv is three shifted multiply-adds along the sequence (zero padding at both ends).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.inverted_conv = _Conv(nn.Conv1d(dim, 2 * hidden, 1))
        self.depth_conv = _Conv(nn.Conv1d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden))
        self.point_conv = _Conv(nn.Conv1d(hidden, dim, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, S, D] -> [B, S, D]``."""
        inv = self.inverted_conv.conv
        h = F.silu(F.linear(x, inv.weight[:, :, 0], inv.bias))  # (B, S, 2H)
        dw = self.depth_conv.conv
        w = dw.weight[:, 0, :]  # (2H, 3): taps for s-1, s, s+1
        y = torch.addcmul(dw.bias, h, w[:, 1])  # (B, S, 2H)
        y[:, 1:].addcmul_(h[:, :-1], w[:, 0])  # left neighbour
        y[:, :-1].addcmul_(h[:, 1:], w[:, 2])  # right neighbour
        value, gate = y.chunk(2, dim=-1)  # (B, S, H) each
        return F.linear(value * F.silu(gate), self.point_conv.conv.weight[:, :, 0])


class PatchEmbed(nn.Module):
    """``proj_in``: latents ``[B, C, H, W]`` → tokens ``[B, (H/ph)*(W/pw), D]``.

    ``early_conv_layers`` = Conv2d(C → C*256, kernel = stride = patch) → GroupNorm(32, eps 1e-6) → 1x1 Conv2d.
    The GroupNorm statistics span the whole sequence, so a frame's token depends on every frame
    (docs/reference_behaviour.md#r3).
    """

    def __init__(self, in_channels: int, dim: int, patch_size: tuple[int, int]):
        super().__init__()
        hidden = in_channels * PATCH_HIDDEN_PER_CHANNEL
        self.patch_size = tuple(patch_size)
        self.early_conv_layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=self.patch_size, stride=self.patch_size),
            nn.GroupNorm(GROUP_NORM_GROUPS, hidden, eps=1e-6, affine=True),
            nn.Conv2d(hidden, dim, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.early_conv_layers(x)  # (B, D, H/ph, W/pw)
        return h.flatten(2).transpose(1, 2).contiguous()  # (B, S, D)


class FinalLayer(nn.Module):
    """``final_layer``: RMSNorm modulated by the timestep embedding e (not the adaLN table), Linear,
    unpatchify.

    Keys ``scale_shift_table`` ``[2, D]`` (row 0 shift, row 1 scale) and ``linear`` (``D -> ph*pw*C``).
    """

    def __init__(self, dim: int, patch_size: tuple[int, int], out_channels: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.out_channels = out_channels
        self.norm_final = RMSNorm(dim, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size[0] * patch_size[1] * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)

    def forward(self, x: Tensor, emb: Tensor, grid: tuple[int, int]) -> Tensor:
        """
        Args:
            x: ``[B, S, D]`` tokens, ``S = gh * gw``.
            emb: ``[B, D]`` timestep embedding e.
            grid: ``(gh, gw)`` token grid (frequency patches, time patches).
        Returns:
            ``[B, C, gh*ph, gw*pw]``.
        """
        shift, scale = (self.scale_shift_table[None] + emb[:, None, :]).unbind(1)  # (B, D) each
        h = self.norm_final(x) * (1 + scale[:, None]) + shift[:, None]
        out = self.linear(h)  # (B, S, ph*pw*C), feature index = (p*pw + q)*C + c
        b, (gh, gw), (ph, pw) = x.shape[0], grid, self.patch_size
        out = out.reshape(b, gh, gw, ph, pw, self.out_channels)
        return out.permute(0, 5, 1, 3, 2, 4).reshape(b, self.out_channels, gh * ph, gw * pw)


class LinearTransformerBlock(nn.Module):
    """One DiT block (adaLN-single, Sana style; docs/reference_behaviour.md#r3)::

    shift1, scale1, gate1, shift2, scale2, gate2 = scale_shift_table + temb
    x = x + gate1 * attn(RMSNorm(x) * (1 + scale1) + shift1)
    x = x + cross_attn(x, context)                   # un-normalised input, no gate
    x = x + gate2 * ff(RMSNorm(x) * (1 + scale2) + shift2)
    """

    def __init__(self, dim: int, heads: int, head_dim: int, ffn_hidden: int):
        super().__init__()
        self.norm1 = RMSNorm(dim, eps=1e-6)
        self.attn = LinearSelfAttention(dim, heads, head_dim)
        self.cross_attn = CrossAttention(dim, heads, head_dim)
        self.norm2 = RMSNorm(dim, eps=1e-6)
        self.ff = GLUMBConv(dim, ffn_hidden)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self,
        x: Tensor,
        temb: Tensor,
        context: Tensor,
        *,
        rope: tuple[Tensor, Tensor],
        context_rope: tuple[Tensor, Tensor],
        context_mask: Tensor | None,
        mask: Tensor | None = None,
        query_scale: float | None = None,
    ) -> Tensor:
        """
        Args:
            x: ``[B, S, D]``; temb: ``[B, 6D]``; context: ``[B, S_c, D]``.
            rope / context_rope: ``(cos, sin)`` ``[S, d]`` / ``[S_c, d]``.
            context_mask: ``[B, S_c]`` bool; mask: ``[B, S]`` latent mask or None.
            query_scale: ERG tau applied to both ``attn.to_q`` and ``cross_attn.to_q`` outputs.
        """
        mod = self.scale_shift_table[None] + temb.unflatten(1, (6, -1))  # (B, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod[:, :, None, :].unbind(
            1
        )  # (B, 1, D)
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attn(h, rope=rope, mask=mask, query_scale=query_scale)
        x = x + self.cross_attn(
            x,
            context,
            rope=rope,
            context_rope=context_rope,
            context_mask=context_mask,
            mask=mask,
            query_scale=query_scale,
        )
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.ff(h)


class ACEStepTransformer(nn.Module):
    """ACE-Step v1 DiT with its condition encoders (speaker, text projection, lyric embedding + encoder).

    Args:
        config: architecture (official ``config.json``).
        lyric_config: lyric encoder sizes; ``None`` → the official encoder with ``input_size =
            lyric_hidden_size``. Its ``input_size`` and ``output_size`` must equal ``lyric_hidden_size``.
        with_projectors: build the REPA ``projectors`` (training only).

    Attributes:
        gradient_checkpointing: recompute each DiT block in backward (only in training with grad enabled).
    """

    def __init__(
        self,
        config: TransformerConfig,
        lyric_config: LyricEncoderConfig | None = None,
        *,
        with_projectors: bool = False,
    ):
        super().__init__()
        if lyric_config is None:
            lyric_config = LyricEncoderConfig.official(input_size=config.lyric_hidden_size)
        if (
            lyric_config.input_size != config.lyric_hidden_size
            or lyric_config.output_size != config.lyric_hidden_size
        ):
            raise ConfigError(
                f"lyric encoder input_size {lyric_config.input_size} / output_size "
                f"{lyric_config.output_size} "
                f"must both equal lyric_hidden_size {config.lyric_hidden_size}"
            )
        self.config = config
        self.lyric_config = lyric_config
        dim = int(config.inner_dim)  # type: ignore[arg-type]

        # timestep: features -> e ("embedded_timestep") -> adaLN table temb
        self.time_proj = TimestepSinusoid(TIMESTEP_FEATURES, flip_sin_to_cos=True, freq_shift=0.0)
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_FEATURES, dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

        # condition encoders
        self.speaker_embedder = nn.Linear(config.speaker_embedding_dim, dim)
        self.genre_embedder = nn.Linear(config.text_embedding_dim, dim)
        self.lyric_embs = nn.Embedding(config.lyric_encoder_vocab_size, config.lyric_hidden_size)
        self.lyric_encoder = LyricEncoder(lyric_config)
        self.lyric_proj = nn.Linear(config.lyric_hidden_size, dim)

        if with_projectors:
            self.projectors = nn.ModuleList(
                nn.Sequential(
                    nn.Linear(dim, 2 * dim),
                    nn.SiLU(),
                    nn.Linear(2 * dim, 2 * dim),
                    nn.SiLU(),
                    nn.Linear(2 * dim, ssl_dim),
                )
                for ssl_dim in config.ssl_latent_dims
            )
        else:
            self.projectors = None

        # latent path
        self.proj_in = PatchEmbed(config.in_channels, dim, config.patch_size)
        self.rotary_emb = RotaryEmbedding(config.attention_head_dim, config.rope_theta)
        self.transformer_blocks = nn.ModuleList(
            LinearTransformerBlock(
                dim, config.num_attention_heads, config.attention_head_dim, config.ffn_hidden
            )
            for _ in range(config.num_layers)
        )
        self.final_layer = FinalLayer(dim, config.patch_size, config.out_channels)
        self.gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        """Activation dtype (that of the parameters)."""
        return self.final_layer.scale_shift_table.dtype

    @property
    def device(self) -> torch.device:
        return self.final_layer.scale_shift_table.device

    def encode(
        self,
        text_states: Tensor,
        text_mask: Tensor,
        speaker_embeds: Tensor,
        lyric_ids: Tensor,
        lyric_mask: Tensor,
        *,
        lyric_query_scale: dict[int, float] | None = None,
    ) -> Conditions:
        """Build the cross-attention condition sequence (docs/reference_behaviour.md#r2, #r5).

        Args:
            text_states: ``[B, Lt, text_embedding_dim]`` text-encoder (UMT5) last hidden states.
            text_mask: ``[B, Lt]`` (1 = token).
            speaker_embeds: ``[B, speaker_embedding_dim]`` (the released pipeline always passes zeros).
            lyric_ids: ``[B, Ll]`` int64 lyric token ids.
            lyric_mask: ``[B, Ll]`` (1 = token).
            lyric_query_scale: ERG-lyric ``{lyric_block: tau}`` (the pipeline uses ``{4: 0.01, 5: 0.01}``).
        Returns:
            :class:`Conditions` with ``states [B, 1+Lt+Ll, D]`` and float32 ``mask [B, 1+Lt+Ll]``.
        """
        dtype = self.dtype
        speaker = self.speaker_embedder(speaker_embeds.to(dtype))[:, None, :]  # (B, 1, D)
        text = self.genre_embedder(text_states.to(dtype))  # (B, Lt, D)
        lyric = self.lyric_embs(lyric_ids)  # (B, Ll, lyric_hidden)
        lyric = self.lyric_encoder(lyric, lyric_mask, query_scale=lyric_query_scale)
        lyric = self.lyric_proj(lyric)  # (B, Ll, D)
        states = torch.cat([speaker, text, lyric], dim=1)
        ones = torch.ones(speaker.shape[0], 1, dtype=torch.float32, device=speaker.device)
        mask = torch.cat([ones, text_mask.to(torch.float32), lyric_mask.to(torch.float32)], dim=1)
        return Conditions(states=states, mask=mask)

    def forward(
        self,
        x: Tensor,
        sigma: Tensor,
        cond: Conditions,
        *,
        latent_mask: Tensor | None = None,
        query_scale: dict[int, float] | None = None,
        return_hidden_at: int | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Predict the flow velocity (noise − x0 direction).

        Args:
            x: ``[B, C, H, L]`` latents (``[B, 8, 16, L]``), any float dtype (computed in the model dtype).
            sigma: ``[B]`` (or scalar) flow time in [0, 1]; the timestep embedding sees
                ``float32(sigma) * 1000``.
            cond: output of :meth:`encode`; ``cond.mask`` masks the cross-attention keys.
            latent_mask: ``[B, L]`` (1 = frame), or None for all ones.
            query_scale: ERG-diffusion ``{block: tau}``; scales the ``attn.to_q`` and ``cross_attn.to_q``
                outputs of those blocks (the pipeline uses ``{15..19: 0.01}``).
            return_hidden_at: also return the ``[B, S, D]`` output of that block (REPA uses block 8).
        Returns:
            velocity ``[B, C_out, H, L]`` in ``x``'s dtype; ``(velocity, hidden)`` with ``return_hidden_at``.
        """
        in_dtype = x.dtype
        dtype = self.dtype
        b = x.shape[0]
        grid, scales = self._check_forward_args(x, query_scale, return_hidden_at)

        # 1. timestep: t = 1000 * sigma in float32, as the official schedulers compute it
        t = self._timesteps(sigma, b, x.device)
        emb = self.timestep_embedder(self.time_proj(t).to(dtype))  # (B, D) "e"
        temb = self.t_block(emb)  # (B, 6D)

        # 2. tokens and position tables
        h = self.proj_in(x.to(dtype))  # (B, S, D)
        seq = h.shape[1]
        context = cond.states.to(dtype)
        block_kwargs = dict(
            rope=self.rotary_emb(seq, h.device, dtype),
            context_rope=self.rotary_emb(context.shape[1], h.device, dtype),
            context_mask=cond.mask.bool(),
            mask=self._latent_mask(latent_mask, b, seq, dtype),
        )

        # 3. blocks
        h, hidden = self._run_blocks(h, temb, context, block_kwargs, scales, return_hidden_at)

        # 4. final layer (modulated by e) and unpatchify
        velocity = self.final_layer(h, emb, grid).to(in_dtype)
        if return_hidden_at is not None:
            return velocity, hidden  # type: ignore[return-value]
        return velocity

    def _check_forward_args(
        self, x: Tensor, query_scale: dict[int, float] | None, return_hidden_at: int | None
    ) -> tuple[tuple[int, int], dict[int, float]]:
        """Validate the latent size and block indices; return the token grid and the per-block scales."""
        _, _, height, width = x.shape
        ph, pw = self.config.patch_size
        if height % ph or width % pw:
            raise ValueError(f"latent size {height}x{width} is not divisible by patch_size {(ph, pw)}")
        n_blocks = len(self.transformer_blocks)
        scales = check_query_scale(query_scale, n_blocks, "DiT block")
        if return_hidden_at is not None and not 0 <= return_hidden_at < n_blocks:
            raise ValueError(
                f"return_hidden_at={return_hidden_at} out of range (the model has {n_blocks} blocks)"
            )
        return (height // ph, width // pw), scales

    @staticmethod
    def _timesteps(sigma: Tensor, batch: int, device: torch.device) -> Tensor:
        """``[B]`` float32 timesteps ``1000 * sigma`` from a scalar or ``[B]`` flow time."""
        t = torch.as_tensor(sigma, device=device).to(torch.float32).reshape(-1) * 1000.0
        if t.numel() == 1:
            return t.expand(batch)
        if t.numel() != batch:
            raise ValueError(
                f"sigma must be a scalar or [B] = [{batch}], got {tuple(torch.as_tensor(sigma).shape)}"
            )
        return t

    @staticmethod
    def _latent_mask(latent_mask: Tensor | None, batch: int, seq: int, dtype: torch.dtype) -> Tensor | None:
        """The ``[B, S]`` latent mask in the model dtype (None: every frame is real)."""
        if latent_mask is None:
            return None
        if latent_mask.shape != (batch, seq):
            raise ValueError(f"latent_mask must be [B, S] = {(batch, seq)}, got {tuple(latent_mask.shape)}")
        return latent_mask.to(dtype)

    def _run_blocks(
        self,
        h: Tensor,
        temb: Tensor,
        context: Tensor,
        block_kwargs: dict,
        scales: dict[int, float],
        return_hidden_at: int | None,
    ) -> tuple[Tensor, Tensor | None]:
        """Run every DiT block (checkpointed when training); also return block ``return_hidden_at``."""
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        hidden = None
        for i, block in enumerate(self.transformer_blocks):
            kwargs = dict(block_kwargs, query_scale=scales.get(i))
            if use_ckpt:
                h = checkpoint(block, h, temb, context, use_reentrant=False, **kwargs)
            else:
                h = block(h, temb, context, **kwargs)
            if i == return_hidden_at:
                hidden = h
        return h, hidden
