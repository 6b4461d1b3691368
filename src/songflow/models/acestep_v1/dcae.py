"""Deep-compression autoencoder over stereo log-mel images: ACE-Step's ``music_dcae_f8c8``.

The architecture is DC-AE (Chen et al. 2024, "Deep Compression Autoencoder for Efficient High-Resolution
Diffusion Models") as diffusers' ``AutoencoderDC`` builds it, written from its description with
the same state-dict keys, so the official ``diffusion_pytorch_model.safetensors`` loads with a strict
``load_state_dict``. The released configuration maps a normalised mel image ``[B, 2, 128, F]`` (channel =
stereo side, height = mel bin, width = mel frame) to a latent ``[B, 8, 16, F/8]`` and back: every stage halves
(encoder) or doubles (decoder) both height and width, 8x in total.

Blocks (all convolutions are 2-D over (mel bin, frame), "same" padding):

- ``ResBlock``: conv3x3 -> act -> conv3x3 (no bias) -> channel RMSNorm -> + input.
- ``EfficientViTBlock``: multiscale ReLU linear attention (residual), then a GLU MBConv (residual). The
  attention is global over all H*W positions; :class:`Decoder` can run it with attention summaries computed
  elsewhere, which is what makes exact windowed decoding possible (see ``songflow.models.acestep_v1.codec``).
- down step (``"Conv"``): stride-2 conv3x3, plus a shortcut that pixel-unshuffles the input and averages
  consecutive channel groups. Up step (``"interpolate"``): nearest x2 then conv3x3, plus a shortcut that
  repeats every channel and pixel-shuffles.

No file I/O here: build with ``DCAE(DCAEConfig.from_json(path))`` and load weights outside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from songflow.config import JsonConfig
from songflow.errors import ConfigError
from songflow.nn.norms import RMSNorm

_BLOCK_TYPES = ("ResBlock", "EfficientViTBlock")
_NORM_TYPES = ("rms_norm",)  # diffusers also knows batch_norm/layer_norm; no ACE-Step checkpoint uses them
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "mish": nn.Mish,
}
_DOWNSAMPLE_TYPES = ("Conv", "pixel_unshuffle")
_UPSAMPLE_TYPES = ("interpolate", "pixel_shuffle")

NORM_EPS = 1e-5  # every RMSNorm in the DC-AE
ATTENTION_EPS = 1e-15  # denominator guard of the ReLU linear attention
GLU_EXPAND_RATIO = 4  # GLUMBConv hidden width = 4 x channels (the gate doubles it to 8 x)
RELEASED_BLOCK_TYPES = ("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock")


def _per_stage(value: str | Sequence[str], n_stages: int, name: str) -> tuple[str, ...]:
    """A per-stage option given either once (a string, shared by all stages) or once per stage."""
    if isinstance(value, str):
        return (value,) * n_stages
    values = tuple(value)
    if len(values) != n_stages:
        raise ConfigError(f"{name} has {len(values)} entries for {n_stages} stages")
    return values


@dataclass(frozen=True)
class DCAEConfig(JsonConfig):
    """Architecture of diffusers' ``AutoencoderDC``: every key of its ``config.json``.

    Defaults are the released ``music_dcae_f8c8`` values. Stage ``i`` of the encoder/decoder has
    ``*_block_out_channels[i]`` channels and ``*_layers_per_block[i]`` blocks; stage 0 runs at the input
    resolution and each later stage at half the previous one. ``*_qkv_multiscales[i]`` lists the depthwise
    kernel sizes of the extra q/k/v branches of that stage's EfficientViT blocks (ignored for ResBlocks).
    ``scaling_factor`` is carried for round trips only: ACE-Step applies its own latent shift/scale.
    """

    _CLASS_NAME = "AutoencoderDC"

    in_channels: int = 2
    latent_channels: int = 8
    attention_head_dim: int = 32
    encoder_block_types: str | tuple[str, ...] = RELEASED_BLOCK_TYPES
    decoder_block_types: str | tuple[str, ...] = RELEASED_BLOCK_TYPES
    encoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 1024)
    decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 1024)
    encoder_layers_per_block: tuple[int, ...] = (2, 2, 3, 3)
    decoder_layers_per_block: tuple[int, ...] = (3, 3, 3, 3)
    encoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (5,), (5,))
    decoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (5,), (5,))
    upsample_block_type: str = "interpolate"
    downsample_block_type: str = "Conv"
    decoder_norm_types: str | tuple[str, ...] = "rms_norm"
    decoder_act_fns: str | tuple[str, ...] = "silu"
    encoder_out_shortcut: bool = True
    decoder_in_shortcut: bool = True
    decoder_conv_act_fn: str = "relu"
    scaling_factor: float = 0.41407

    @classmethod
    def tiny(cls) -> DCAEConfig:
        """The released structure (same depths, kernels, head dim) at 1/16 width: 8-16-32-64 channels."""
        return cls(encoder_block_out_channels=(8, 16, 32, 64), decoder_block_out_channels=(8, 16, 32, 64))

    @property
    def n_stages(self) -> int:
        return len(self.encoder_block_out_channels)

    @property
    def spatial_downsample(self) -> int:
        """Factor by which both mel bins and mel frames shrink from input to latent (8 for the release)."""
        return 2 ** (self.n_stages - 1)

    def stage_options(self, side: str) -> list[dict]:
        """Per-stage ``{block_type, channels, layers, multiscales, norm, act}``; ``side``: encoder/decoder."""
        n = self.n_stages
        if side == "encoder":
            norms, acts = ("rms_norm",) * n, ("silu",) * n  # fixed in AutoencoderDC's encoder
        else:
            norms = _per_stage(self.decoder_norm_types, n, "decoder_norm_types")
            acts = _per_stage(self.decoder_act_fns, n, "decoder_act_fns")
        types = _per_stage(getattr(self, f"{side}_block_types"), n, f"{side}_block_types")
        channels = getattr(self, f"{side}_block_out_channels")
        layers = getattr(self, f"{side}_layers_per_block")
        scales = getattr(self, f"{side}_qkv_multiscales")
        return [
            dict(
                block_type=types[i],
                channels=channels[i],
                layers=layers[i],
                multiscales=tuple(scales[i]),
                norm=norms[i],
                act=acts[i],
            )
            for i in range(n)
        ]

    def __post_init__(self) -> None:
        n = self.n_stages
        if n < 1:
            raise ConfigError("encoder_block_out_channels must list at least one stage")
        if min(self.in_channels, self.latent_channels, self.attention_head_dim) < 1:
            raise ConfigError("in_channels, latent_channels and attention_head_dim must be positive")
        for side in ("encoder", "decoder"):
            for key in ("block_out_channels", "layers_per_block", "qkv_multiscales"):
                if len(getattr(self, f"{side}_{key}")) != n:
                    raise ConfigError(
                        f"{side}_{key} has {len(getattr(self, f'{side}_{key}'))} entries; "
                        f"expected {n} (one per stage, as encoder_block_out_channels)"
                    )
            stages = self.stage_options(side)
            for i, st in enumerate(stages):
                where = f"{side} stage {i}"
                if st["block_type"] not in _BLOCK_TYPES:
                    raise ConfigError(
                        f"{where}: block type {st['block_type']!r} is not supported; "
                        f"use one of {_BLOCK_TYPES}"
                    )
                if st["norm"] not in _NORM_TYPES:
                    raise ConfigError(
                        f"{where}: norm type {st['norm']!r} is not supported; use one of {_NORM_TYPES}"
                    )
                if st["act"] not in _ACTIVATIONS:
                    raise ConfigError(
                        f"{where}: activation {st['act']!r} is not supported; "
                        f"use one of {sorted(_ACTIVATIONS)}"
                    )
                if st["layers"] < 1:
                    raise ConfigError(
                        f"{where}: layers_per_block must be >= 1 (stages without blocks are not supported)"
                    )
                if st["channels"] < 1:
                    raise ConfigError(f"{where}: block_out_channels must be positive")
                if st["block_type"] == "EfficientViTBlock":
                    if st["channels"] % self.attention_head_dim:
                        raise ConfigError(
                            f"{where}: {st['channels']} channels is not a multiple of attention_head_dim"
                        )
                    if any(k < 1 or k % 2 == 0 for k in st["multiscales"]):
                        raise ConfigError(f"{where}: qkv multiscale kernel sizes must be odd and positive")
            widths = [st["channels"] for st in stages]
            # every resolution step between consecutive stages
            for c_hi, c_lo in zip(widths[:-1], widths[1:], strict=True):
                if (4 * c_hi) % c_lo or (4 * c_lo) % c_hi:
                    raise ConfigError(f"{side}: channel step {c_hi} <-> {c_lo} does not fit the 2x2 shortcut")
                if self.downsample_block_type == "pixel_unshuffle" and c_lo % 4:
                    raise ConfigError(f"{side}: pixel_unshuffle downsampling needs channels divisible by 4")
            if widths[-1] % self.latent_channels:
                raise ConfigError(f"{side}: {widths[-1]} channels is not a multiple of latent_channels")
        if self.downsample_block_type not in _DOWNSAMPLE_TYPES:
            raise ConfigError(
                f"downsample_block_type {self.downsample_block_type!r}: use one of {_DOWNSAMPLE_TYPES}"
            )
        if self.upsample_block_type not in _UPSAMPLE_TYPES:
            raise ConfigError(
                f"upsample_block_type {self.upsample_block_type!r}: use one of {_UPSAMPLE_TYPES}"
            )
        if self.decoder_conv_act_fn not in _ACTIVATIONS:
            raise ConfigError(
                f"decoder_conv_act_fn {self.decoder_conv_act_fn!r}: use one of {sorted(_ACTIVATIONS)}"
            )


# ----------------------------------------------------------------------------------------------------
# Blocks


class ChannelRMSNorm(RMSNorm):
    """RMS norm over the channel axis of ``[B, C, H, W]`` (weight and bias ``[C]``), eps 1e-5."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=NORM_EPS, elementwise_affine=True, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _conv3x3(c_in: int, c_out: int, *, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=bias)


class ResBlock(nn.Module):
    """``x + norm(conv2(act(conv1(x))))`` at constant width. ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, channels: int, act: str):
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.act = _ACTIVATIONS[act]()
        self.conv2 = _conv3x3(channels, channels, bias=False)
        self.norm = ChannelRMSNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.norm(self.conv2(self.act(self.conv1(x))))


class MultiscaleProjection(nn.Module):
    """Extra q|k|v branch: depthwise ``k x k`` conv then a 1x1 conv grouped per head and per q/k/v.

    ``[B, 3C, H, W] -> [B, 3C, H, W]`` (keys ``proj_in``, ``proj_out``; neither has a bias).
    """

    def __init__(self, qkv_channels: int, n_heads: int, kernel_size: int):
        super().__init__()
        self.proj_in = nn.Conv2d(
            qkv_channels, qkv_channels, kernel_size, padding=kernel_size // 2, groups=qkv_channels, bias=False
        )
        self.proj_out = nn.Conv2d(qkv_channels, qkv_channels, 1, groups=3 * n_heads, bias=False)

    def forward(self, qkv: Tensor) -> Tensor:
        return self.proj_out(self.proj_in(qkv))


class MultiscaleLinearAttention(nn.Module):
    """Sana/EfficientViT multiscale ReLU linear attention over all ``H * W`` positions, with a residual.

    ``q|k|v`` (three bias-free 1x1 projections, C channels each) and one extra ``q|k|v`` per multiscale
    branch are concatenated on channels (``3C * (1 + n_scales)``) and cut into ``G`` consecutive groups of
    ``3d`` channels (d = head dim); in each group the first d channels act as queries, the next d as keys
    and the last d as values. With the released 2 branches that is ``G = 2C/d`` groups, and a group does
    *not* line up with the ``to_q/to_k/to_v`` split (e.g. group 0 takes its q, k and v all from ``to_q``):
    this regrouping is what the checkpoint was trained with. ReLU on q and k, then per group

        out_n = sum_m v_m (k_m . q_n) / (sum_m k_m . q_n + 1e-15)

    in float32. The sums over m only enter through the group's summary ``[v; 1] k^T`` (``[d+1, d]``), so
    the layer can also run with a summary accumulated elsewhere (windowed decoding). For ``H*W <= d`` the
    reference evaluates the same formula in quadratic form (``[N, N]`` scores); so do we, for parity.
    Output ``[2C] -> to_out -> RMSNorm -> + input``. ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(
        self, channels: int, head_dim: int, kernel_sizes: Sequence[int], *, eps: float = ATTENTION_EPS
    ):
        super().__init__()
        n_heads = channels // head_dim
        self.head_dim = head_dim
        self.eps = eps
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_qkv_multiscale = nn.ModuleList(
            MultiscaleProjection(3 * channels, n_heads, k) for k in kernel_sizes
        )
        self.to_out = nn.Linear(channels * (1 + len(kernel_sizes)), channels, bias=False)
        self.norm_out = ChannelRMSNorm(channels)

    @property
    def n_groups(self) -> int:
        """Number of attention groups G (each with d queries, keys and values)."""
        return self.to_out.in_features // self.head_dim

    def grouped_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, C, H, W]`` -> ``q, k, v`` each ``[B, G, d, H, W]`` in float32, ReLU applied to q and k."""
        b, _, h, w = x.shape
        x_last = x.movedim(1, -1)  # (B, H, W, C)
        qkv = torch.cat([self.to_q(x_last), self.to_k(x_last), self.to_v(x_last)], dim=-1).movedim(-1, 1)
        branches = [qkv] + [proj(qkv) for proj in self.to_qkv_multiscale]
        groups = torch.cat(branches, dim=1).float()  # (B, 3C(1 + n_scales), H, W)
        groups = groups.reshape(b, -1, 3, self.head_dim, h, w)  # (B, G, 3, d, H, W): consecutive channels
        q, k, v = groups.unbind(dim=2)
        return q.relu(), k.relu(), v

    def summary(self, x: Tensor, columns: slice = slice(None)) -> Tensor:
        """Attention summary ``[v; 1] k^T`` summed over the positions of ``columns`` (a slice of W).

        Args:
            x: ``[B, C, H, W]`` block input.
            columns: the width (time) columns whose keys/values are summed.
        Returns:
            ``[B, G, d + 1, d]`` float32; row d holds the key sum (the normaliser).
        """
        _, k, v = self.grouped_qkv(x)
        k = k[..., columns].flatten(-2)  # (B, G, d, N)
        v = v[..., columns].flatten(-2)
        v_one = torch.cat([v, torch.ones_like(v[:, :, :1])], dim=2)  # (B, G, d+1, N)
        return v_one @ k.transpose(-1, -2)

    def forward(self, x: Tensor, summary: Tensor | None = None) -> Tensor:
        """``x [B, C, H, W]`` -> same shape. ``summary`` (``[B, G, d+1, d]``) replaces the global sums."""
        b, c, h, w = x.shape
        q, k, v = self.grouped_qkv(x)
        q, k, v = (t.flatten(-2) for t in (q, k, v))  # (B, G, d, N), N = H*W
        if summary is None and h * w <= self.head_dim:
            scores = k.transpose(-1, -2) @ q  # (B, G, N_key, N_query)
            scores = scores / (scores.sum(dim=2, keepdim=True) + self.eps)
            out = v @ scores  # (B, G, d, N)
        else:
            if summary is None:
                v_one = torch.cat([v, torch.ones_like(v[:, :, :1])], dim=2)  # (B, G, d+1, N)
                summary = v_one @ k.transpose(-1, -2)  # (B, G, d+1, d)
            weighted = summary.float() @ q  # (B, G, d+1, N)
            out = weighted[:, :, :-1] / (weighted[:, :, -1:] + self.eps)
        out = out.to(x.dtype).reshape(b, -1, h, w)  # (B, G*d, H, W)
        out = self.to_out(out.movedim(1, -1)).movedim(-1, 1)
        return x + self.norm_out(out)


class GLUMBConv(nn.Module):
    """Gated inverted-bottleneck conv: 1x1 up to 2 x 4C -> SiLU -> depthwise 3x3 -> value * SiLU(gate)
    -> 1x1 down to C -> RMSNorm -> + input. ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = GLU_EXPAND_RATIO * channels
        self.conv_inverted = nn.Conv2d(channels, 2 * hidden, 1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, channels, 1, bias=False)
        self.norm = ChannelRMSNorm(channels)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.conv_depth(self.act(self.conv_inverted(x))).chunk(2, dim=1)
        return x + self.norm(self.conv_point(value * self.act(gate)))


class EfficientViTBlock(nn.Module):
    """Global attention then local gated conv, both residual. ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, channels: int, head_dim: int, kernel_sizes: Sequence[int]):
        super().__init__()
        self.attn = MultiscaleLinearAttention(channels, head_dim, kernel_sizes)
        self.conv_out = GLUMBConv(channels)

    def forward(self, x: Tensor, summary: Tensor | None = None) -> Tensor:
        return self.conv_out(self.attn(x, summary))


class Downsample(nn.Module):
    """Halve H and W: ``[B, C_in, H, W] -> [B, C_out, H/2, W/2]``.

    ``"Conv"``: stride-2 conv3x3. ``"pixel_unshuffle"``: conv3x3 to C_out/4 then pixel-unshuffle by 2.
    Shortcut (always on here): pixel-unshuffle the input to 4 C_in channels and average consecutive groups of
    4 C_in / C_out channels.
    """

    def __init__(self, c_in: int, c_out: int, mode: str):
        super().__init__()
        self.is_unshuffle = mode == "pixel_unshuffle"
        self.group_size = 4 * c_in // c_out
        self.conv = nn.Conv2d(
            c_in,
            c_out // 4 if self.is_unshuffle else c_out,
            3,
            stride=1 if self.is_unshuffle else 2,
            padding=1,
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.is_unshuffle:
            y = F.pixel_unshuffle(y, 2)
        b, _, h, w = y.shape
        shortcut = F.pixel_unshuffle(x, 2).reshape(b, -1, self.group_size, h, w).mean(dim=2)
        return y + shortcut


class Upsample(nn.Module):
    """Double H and W: ``[B, C_in, H, W] -> [B, C_out, 2H, 2W]``.

    ``"interpolate"``: nearest x2 then conv3x3. ``"pixel_shuffle"``: conv3x3 to 4 C_out then pixel-shuffle by
    2. Shortcut (always on here): repeat every input channel 4 C_out / C_in times, then pixel-shuffle.
    """

    def __init__(self, c_in: int, c_out: int, mode: str):
        super().__init__()
        self.is_interpolate = mode == "interpolate"
        self.repeats = 4 * c_out // c_in
        self.conv = _conv3x3(c_in, c_out if self.is_interpolate else 4 * c_out)

    def forward(self, x: Tensor) -> Tensor:
        if self.is_interpolate:
            y = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        else:
            y = F.pixel_shuffle(self.conv(x), 2)
        return y + F.pixel_shuffle(x.repeat_interleave(self.repeats, dim=1), 2)


def _make_block(stage: dict, head_dim: int) -> nn.Module:
    if stage["block_type"] == "ResBlock":
        return ResBlock(stage["channels"], stage["act"])
    return EfficientViTBlock(stage["channels"], head_dim, stage["multiscales"])


# ----------------------------------------------------------------------------------------------------
# Encoder / decoder


class Encoder(nn.Module):
    """Normalised mel ``[B, C_in, H, W]`` -> latent ``[B, C_lat, H/f, W/f]`` (f = spatial_downsample).

    Keys: ``conv_in``, ``down_blocks.{stage}.{j}`` (blocks, then the down step in all stages but the last),
    ``conv_out``. The output shortcut adds the mean of consecutive groups of ``C_last / C_lat`` channels.
    """

    def __init__(self, config: DCAEConfig):
        super().__init__()
        stages = config.stage_options("encoder")
        self.factor = config.spatial_downsample
        self.conv_in = _conv3x3(config.in_channels, stages[0]["channels"])
        down_blocks = []
        for i, stage in enumerate(stages):
            blocks: list[nn.Module] = [
                _make_block(stage, config.attention_head_dim) for _ in range(stage["layers"])
            ]
            if i < len(stages) - 1:
                blocks.append(
                    Downsample(stage["channels"], stages[i + 1]["channels"], config.downsample_block_type)
                )
            down_blocks.append(nn.Sequential(*blocks))
        self.down_blocks = nn.ModuleList(down_blocks)
        self.conv_out = _conv3x3(stages[-1]["channels"], config.latent_channels)
        self.out_group_size = (
            stages[-1]["channels"] // config.latent_channels if config.encoder_out_shortcut else 0
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(
                f"DC-AE encoder input must be [B, C, H, W] with H and W multiples of {self.factor}; "
                f"got {tuple(x.shape)}"
            )
        h = self.conv_in(x)
        for stage in self.down_blocks:
            h = stage(h)
        out = self.conv_out(h)
        if self.out_group_size:
            b, _, hh, ww = h.shape
            out = out + h.reshape(b, -1, self.out_group_size, hh, ww).mean(dim=2)
        return out


class Decoder(nn.Module):
    """Latent ``[B, C_lat, h, w]`` -> normalised mel ``[B, C_in, f h, f w]``.

    Keys: ``conv_in``, ``up_blocks.{stage}.{j}`` (the up step first in all stages but the last, then the
    blocks), ``norm_out``, ``conv_out``. Stages run from the last (lowest resolution) to stage 0. The input
    shortcut repeats every latent channel ``C_last / C_lat`` times.

    Every EfficientViT attention layer ("attention layer i", numbered in execution order) is global over
    its whole input. :meth:`forward` accepts their summaries precomputed (:meth:`attention_summary`), which
    turns the decoder into a purely local (finite receptive field) network: the basis of exact windowed
    decoding in ``songflow.models.acestep_v1.codec``.
    """

    def __init__(self, config: DCAEConfig):
        super().__init__()
        stages = config.stage_options("decoder")
        n = len(stages)
        self.conv_in = _conv3x3(config.latent_channels, stages[-1]["channels"])
        self.in_repeats = (
            stages[-1]["channels"] // config.latent_channels if config.decoder_in_shortcut else 0
        )
        up_blocks = []
        for i, stage in enumerate(stages):
            blocks: list[nn.Module] = []
            if i < n - 1:
                blocks.append(
                    Upsample(stages[i + 1]["channels"], stage["channels"], config.upsample_block_type)
                )
            blocks += [_make_block(stage, config.attention_head_dim) for _ in range(stage["layers"])]
            up_blocks.append(nn.ModuleList(blocks))
        self.up_blocks = nn.ModuleList(up_blocks)
        self.norm_out = ChannelRMSNorm(stages[0]["channels"])
        self.conv_act = _ACTIVATIONS[config.decoder_conv_act_fn]()
        self.conv_out = _conv3x3(stages[0]["channels"], config.in_channels)
        # (stage index, block) in execution order, for the attention layers
        self._attention_stages = [
            i
            for i in reversed(range(n))
            for block in self.up_blocks[i]
            if isinstance(block, EfficientViTBlock)
        ]

    @property
    def n_attention_layers(self) -> int:
        return len(self._attention_stages)

    def attention_width_scale(self, layer: int) -> int:
        """How many of attention layer ``layer``'s width columns one latent frame spans (1 at latent rate)."""
        return 2 ** (len(self.up_blocks) - 1 - self._attention_stages[layer])

    def local_receptive_radius_frames(self) -> float:
        """Upper bound on how far (latent frames, either side) one output column looks into ``z`` when the
        attention summaries are given (i.e. through the convolutions only).

        Sum of half-widths in latent frames: ``conv_in``; per EfficientViT block the widest multiscale
        kernel plus the GLU depthwise 3x3; 2 per ResBlock; 1 input column per up step; ``conv_out``. A
        column of stage ``i`` spans ``2**-(n-1-i)`` latent frames. Released config: 17.125 (the gradient
        measurement in ``tests/test_codec.py`` finds 17).
        """
        n = len(self.up_blocks)
        radius = 1.0  # conv_in, 3x3 at latent resolution
        for i in reversed(range(n)):
            column = 2.0 ** -(n - 1 - i)
            for block in self.up_blocks[i]:
                if isinstance(block, Upsample):
                    radius += 2 * column  # one column of the coarser input
                elif isinstance(block, ResBlock):
                    radius += 2 * column
                elif isinstance(block, EfficientViTBlock):
                    widest = max((p.proj_in.kernel_size[1] for p in block.attn.to_qkv_multiscale), default=1)
                    radius += (widest // 2 + 1) * column
        return radius + 2.0 ** -(n - 1)  # conv_out, 3x3 at full resolution

    def _run(self, z: Tensor, summaries: Sequence[Tensor | None], stop_at_layer: int | None = None):
        """Run the decoder; with ``stop_at_layer`` return ``(attention module, its input)`` instead."""
        h = self.conv_in(z)
        if self.in_repeats:
            h = h + z.repeat_interleave(self.in_repeats, dim=1)
        layer = 0
        for stage in reversed(self.up_blocks):
            for block in stage:
                if isinstance(block, EfficientViTBlock):
                    if layer == stop_at_layer:
                        return block.attn, h
                    h = block(h, summaries[layer])
                    layer += 1
                else:
                    h = block(h)
        return self.conv_out(self.conv_act(self.norm_out(h)))

    def forward(self, z: Tensor, attention_summaries: Sequence[Tensor] | None = None) -> Tensor:
        """Decode ``z [B, C_lat, h, w]`` -> ``[B, C_in, f h, f w]``.

        ``attention_summaries``: one ``[B, G, d+1, d]`` tensor per attention layer (execution order) to use
        instead of the summaries of ``z`` itself; ``None`` decodes ``z`` on its own (the reference behaviour).
        """
        if z.ndim != 4:
            raise ValueError(f"DC-AE decoder input must be [B, C, h, w]; got {tuple(z.shape)}")
        if attention_summaries is None:
            summaries: Sequence[Tensor | None] = [None] * self.n_attention_layers
        else:
            summaries = list(attention_summaries)
            if len(summaries) != self.n_attention_layers:
                raise ValueError(
                    f"expected {self.n_attention_layers} attention summaries, got {len(summaries)}"
                )
        return self._run(z, summaries)

    def attention_summary(
        self, z: Tensor, layer: int, previous: Sequence[Tensor], frames: slice = slice(None)
    ) -> Tensor:
        """Summary of attention layer ``layer`` restricted to the latent ``frames`` of ``z``.

        The layer's input is computed from ``z`` with the summaries ``previous`` (one per earlier attention
        layer) standing in for the earlier layers' global sums. Summing the results over disjoint frame
        ranges of windows (each with enough context, see the codec) gives the summary of the whole sequence.

        Returns ``[B, G, d+1, d]`` float32.
        """
        if len(previous) != layer:
            raise ValueError(f"attention layer {layer} needs {layer} previous summaries, got {len(previous)}")
        attn, h = self._run(z, list(previous), stop_at_layer=layer)
        scale = self.attention_width_scale(layer)
        start = None if frames.start is None else frames.start * scale
        stop = None if frames.stop is None else frames.stop * scale
        return attn.summary(h, slice(start, stop))


class DCAE(nn.Module):
    """``AutoencoderDC`` with submodules ``encoder`` and ``decoder`` (state-dict keys as in diffusers).

    ``encoder(mel [B, 2, 128, F]) -> z [B, 8, 16, F/8]``; ``decoder(z) -> mel [B, 2, 128, 8 L]`` (released
    config; both in the DC-AE's own normalised units: the codec handles mel and latent scaling).
    """

    def __init__(self, config: DCAEConfig | None = None):
        super().__init__()
        self.config = config if config is not None else DCAEConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    @property
    def spatial_downsample(self) -> int:
        return self.config.spatial_downsample

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct ``x [B, C_in, H, W]`` through the latent (H, W multiples of ``spatial_downsample``)."""
        return self.decoder(self.encoder(x))
