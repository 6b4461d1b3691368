"""Mel -> waveform vocoder of ACE-Step v1 (official ``ADaMoSHiFiGANV1``, Fish Audio's music vocoder).

A ConvNeXt-1D backbone (no time resampling) maps the 128-band natural-log mel spectrogram to a
``num_mels``-channel feature sequence; a HiFi-GAN generator head (multi-receptive-field ResBlocks,
Kong et al. 2020) upsamples it ``hop_length`` times to a mono waveform in [-1, 1]. The module tree
and state-dict keys are the official ones (``backbone.*``, ``head.*``, ``mel_transform.*``), with
legacy weight norm (``weight_g``/``weight_v``) on every head convolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from songflow.audio.mel import LogMelSpectrogram, slaney_mel_filterbank
from songflow.config import JsonConfig
from songflow.errors import ConfigError

# ConvNeXt constants of the official encoder (not in config.json).
_STEM_KERNEL = 7
_LAYER_NORM_EPS = 1e-6
_MLP_RATIO = 4
_LAYER_SCALE_INIT = 1e-6
HEAD_TYPES = ("hifigan", "istft")
# the istft head's log-magnitude is clipped here before exp (e^10 ~ 2e4, far above any real bin)
_MAX_LOG_MAGNITUDE = 10.0


@dataclass(frozen=True)
class VocoderConfig(JsonConfig):
    """Architecture of the vocoder; field names and defaults are the official ``music_vocoder/config.json``.

    Backbone: ``input_channels`` mel bands in, ConvNeXt stages of ``depths`` blocks at widths ``dims``,
    depthwise kernel ``kernel_sizes[0]``. Head: input width ``num_mels`` (= ``dims[-1]``; the official
    name, not a mel count), ``upsample_initial_channel`` after ``conv_pre``, halved by each transposed
    convolution (``upsample_rates``/``upsample_kernel_sizes``), ResBlocks with ``resblock_kernel_sizes``
    and ``resblock_dilation_sizes``. Mel front end: ``sampling_rate`` Hz, ``n_fft``, ``win_length``,
    ``hop_length`` samples, ``f_min``..``f_max`` Hz, ``n_mels`` bands.
    """

    _CLASS_NAME: ClassVar[str] = "ADaMoSHiFiGANV1"

    input_channels: int = 128
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (128, 256, 384, 512)
    drop_path_rate: float = 0.0
    kernel_sizes: tuple[int, ...] = (7,)
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11, 13)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5), (1, 3, 5))
    num_mels: int = 512
    upsample_initial_channel: int = 1024
    use_template: bool = False
    pre_conv_kernel_size: int = 13
    post_conv_kernel_size: int = 13
    sampling_rate: int = 44100
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 512
    f_min: float = 40
    f_max: float = 16000
    n_mels: int = 128
    # songflow extension (absent from the official file): "hifigan" (the release) or "istft", a
    # frame-rate head that predicts STFT magnitude and phase and overlap-adds them (no upsampling
    # convolutions: ~50x cheaper on CPU; the ``upsample_*``/``resblock_*`` fields are then unused).
    head_type: str = "hifigan"
    # istft head only (songflow extension): the phase refiner's reach (the lowest ``phase_refiner_bins``
    # STFT bins, 0 = none) and width; see :class:`ISTFTHead`
    phase_refiner_bins: int = 0
    phase_refiner_channels: int = 24

    _ISTFT_KEYS: ClassVar[tuple[str, ...]] = ("head_type", "phase_refiner_bins", "phase_refiner_channels")

    def to_dict(self) -> dict[str, Any]:
        """The official keys; the songflow extension's keys only when it is not the release's head."""
        out = super().to_dict()
        if self.head_type == "hifigan":
            for key in self._ISTFT_KEYS:
                del out[key]
        return out

    @classmethod
    def tiny(cls) -> VocoderConfig:
        """A few-thousand-parameter vocoder (16 kHz, hop 64, 16 mels) for fast tests."""
        return cls(
            input_channels=16,
            depths=(1, 1),
            dims=(8, 16),
            kernel_sizes=(7,),
            upsample_rates=(4, 4, 4),
            upsample_kernel_sizes=(8, 8, 8),
            resblock_kernel_sizes=(3, 5),
            resblock_dilation_sizes=((1, 3), (1, 3)),
            num_mels=16,
            upsample_initial_channel=16,
            pre_conv_kernel_size=5,
            post_conv_kernel_size=5,
            sampling_rate=16000,
            n_fft=256,
            win_length=256,
            hop_length=64,
            f_min=40,
            f_max=8000,
            n_mels=16,
        )

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ConfigError(f"invalid VocoderConfig: {msg}")

        if self.use_template:
            fail("use_template=True (the noise-template head) is not supported; the release uses False")
        if not self.depths or len(self.depths) != len(self.dims):
            fail(f"depths {self.depths} and dims {self.dims} must be non-empty and of equal length")
        if len(self.kernel_sizes) != 1:
            fail(
                f"kernel_sizes must hold one kernel (parallel ConvNeXt blocks are not supported), "
                f"got {self.kernel_sizes}"
            )
        if self.input_channels != self.n_mels:
            fail(f"input_channels ({self.input_channels}) must equal n_mels ({self.n_mels})")
        if self.num_mels != self.dims[-1]:
            fail(f"num_mels (head input width, {self.num_mels}) must equal dims[-1] ({self.dims[-1]})")
        if not 0.0 <= self.drop_path_rate < 1.0:
            fail(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.head_type not in HEAD_TYPES:
            fail(f"head_type must be one of {HEAD_TYPES}, got {self.head_type!r}")
        if not self.hop_length <= self.win_length <= self.n_fft or (self.n_fft - self.hop_length) % 2:
            fail("need hop_length <= win_length <= n_fft and an even n_fft - hop_length")
        if not 0 <= self.f_min < self.f_max <= self.sampling_rate / 2:
            fail(f"need 0 <= f_min < f_max <= sampling_rate/2, got {self.f_min}, {self.f_max}")
        if not 0 <= self.phase_refiner_bins <= self.n_fft // 2 + 1 or self.phase_refiner_channels < 1:
            fail("need 0 <= phase_refiner_bins <= n_fft/2 + 1 and phase_refiner_channels >= 1")
        if self.head_type == "istft":
            return
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            fail("upsample_rates and upsample_kernel_sizes differ in length")
        if math.prod(self.upsample_rates) != self.hop_length:
            fail(
                f"prod(upsample_rates) = {math.prod(self.upsample_rates)} "
                f"must equal hop_length {self.hop_length}"
            )
        for rate, kernel in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            if kernel < rate or (kernel - rate) % 2:
                fail(f"upsample kernel {kernel} with rate {rate}: kernel - rate must be even and >= 0")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            fail(
                f"upsample_initial_channel {self.upsample_initial_channel} must be divisible by "
                f"2**{len(self.upsample_rates)}"
            )
        if not self.resblock_kernel_sizes or len(self.resblock_kernel_sizes) != len(
            self.resblock_dilation_sizes
        ):
            fail("resblock_kernel_sizes and resblock_dilation_sizes must be non-empty and of equal length")
        odd = [
            self.pre_conv_kernel_size,
            self.post_conv_kernel_size,
            *self.kernel_sizes,
            *self.resblock_kernel_sizes,
        ]
        if any(k < 1 or k % 2 == 0 for k in odd):
            fail(f"conv kernel sizes must be odd, got {odd}")


# ---------------------------------------------------------------------------------------------------
# Backbone: ConvNeXt-1D
# ---------------------------------------------------------------------------------------------------


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``[B, C, T]`` (biased variance), then a per-channel affine."""

    def __init__(self, channels: int, eps: float = _LAYER_NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None] * x + self.bias[:, None]


class ReplicatePadConv1d(nn.Conv1d):
    """``Conv1d`` with 'same' replicate padding (the backbone stem); keys ``weight``, ``bias``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        pad = (self.kernel_size[0] - 1) // 2
        return F.conv1d(F.pad(x, (pad, pad), mode="replicate"), self.weight, self.bias)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block on ``[B, C, T]``: depthwise conv -> LayerNorm -> Linear(4C) -> GELU -> Linear(C)
    -> layer scale ``gamma`` -> stochastic depth -> residual add."""

    def __init__(self, dim: int, kernel_size: int, drop_path_frac: float = 0.0):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(dim, _MLP_RATIO * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(_MLP_RATIO * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), _LAYER_SCALE_INIT))
        self.drop_path_frac = drop_path_frac

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).transpose(1, 2)  # (B, T, C)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = (self.gamma * y).transpose(1, 2)  # (B, C, T)
        if self.training and self.drop_path_frac > 0.0:
            keep_frac = 1.0 - self.drop_path_frac
            keep = y.new_empty((y.shape[0], 1, 1)).bernoulli_(keep_frac)
            y = y * keep / keep_frac
        return x + y


class ConvNeXtBackbone(nn.Module):
    """ConvNeXt-1D encoder ``[B, input_channels, F] -> [B, dims[-1], F]`` (official ``ConvNeXtEncoder``).

    ``channel_layers.0`` = stem (replicate-padded conv k7, channels-first LayerNorm);
    ``channel_layers.i`` (i >= 1) = channels-first LayerNorm then a k1 conv ``dims[i-1] -> dims[i]``;
    ``stages.i`` = ``depths[i]`` ConvNeXt blocks; ``norm`` = final channels-first LayerNorm.
    """

    def __init__(self, config: VocoderConfig):
        super().__init__()
        dims = config.dims
        self.channel_layers = nn.ModuleList(
            [
                nn.Sequential(
                    ReplicatePadConv1d(config.input_channels, dims[0], _STEM_KERNEL),
                    ChannelsFirstLayerNorm(dims[0]),
                )
            ]
        )
        for i in range(1, len(dims)):
            self.channel_layers.append(
                nn.Sequential(ChannelsFirstLayerNorm(dims[i - 1]), nn.Conv1d(dims[i - 1], dims[i], 1))
            )
        # stochastic-depth rate grows linearly from 0 to drop_path_rate over all blocks
        n_blocks = sum(config.depths)
        rates = [config.drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.stages = nn.ModuleList()
        first = 0
        for dim, depth in zip(dims, config.depths, strict=True):
            blocks = [ConvNeXtBlock(dim, config.kernel_sizes[0], rates[first + j]) for j in range(depth)]
            self.stages.append(nn.Sequential(*blocks))
            first += depth
        self.norm = ChannelsFirstLayerNorm(dims[-1])

    def forward(self, x: Tensor) -> Tensor:
        for channel_layer, stage in zip(self.channel_layers, self.stages, strict=True):
            x = stage(channel_layer(x))
        return self.norm(x)


# ---------------------------------------------------------------------------------------------------
# Head: HiFi-GAN generator with legacy weight norm
# ---------------------------------------------------------------------------------------------------


class _WeightNormConv(nn.Module):
    """Base of convolutions with legacy weight norm: ``weight = weight_g · weight_v / ‖weight_v‖``.

    The norm runs over every axis but 0 (output channels for ``Conv1d``, *input* channels for
    ``ConvTranspose1d``, whose weight is ``[in, out, k]``), as ``torch.nn.utils.weight_norm(dim=0)``.
    Parameters (in the official state-dict order): ``bias`` ``[out]``, ``weight_g`` ``[w0, 1, 1]``,
    ``weight_v`` (the weight's shape). :meth:`fold` caches the effective weight in the non-persistent
    buffer ``weight_folded`` (not in ``state_dict()``), which forward then uses; loading a state dict
    clears it.
    """

    weight_folded: Tensor | None

    def __init__(self, weight_shape: tuple[int, int, int], out_channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_g = nn.Parameter(torch.empty(weight_shape[0], 1, 1))
        self.weight_v = nn.Parameter(torch.empty(weight_shape))
        self.register_buffer("weight_folded", None, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """HiFi-GAN initialisation: v ~ N(0, 0.01), bias 0, g = ‖v‖ (so the initial weight equals v)."""
        with torch.no_grad():
            nn.init.normal_(self.weight_v, 0.0, 0.01)
            nn.init.zeros_(self.bias)
            self.weight_g.copy_(self._v_norm())
        self.weight_folded = None

    def _v_norm(self) -> Tensor:
        return torch.linalg.vector_norm(self.weight_v, dim=(1, 2), keepdim=True)

    def weight(self) -> Tensor:
        """The effective convolution weight (folded if :meth:`fold` was called)."""
        if self.weight_folded is not None:
            return self.weight_folded
        return self.weight_v * (self.weight_g / self._v_norm())

    def fold(self) -> None:
        """Precompute the effective weight (inference; gradients no longer reach g and v)."""
        with torch.no_grad():
            self.weight_folded = None
            self.weight_folded = self.weight().detach().clone()

    def unfold(self) -> None:
        """Drop the cached weight; forward recomputes it from ``weight_g``/``weight_v`` again."""
        self.weight_folded = None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.weight_folded = None
        super()._load_from_state_dict(*args, **kwargs)


class WeightNormConv1d(_WeightNormConv):
    """Weight-normed ``Conv1d`` with 'same' zero padding ``(k·d − d)/2`` (odd ``k``), stride 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__((out_channels, in_channels, kernel_size), out_channels)
        self.dilation = dilation
        self.padding = (kernel_size * dilation - dilation) // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, dilation=self.dilation)


class WeightNormConvTranspose1d(_WeightNormConv):
    """Weight-normed ``ConvTranspose1d``: ``[B, in, L] -> [B, out, L·stride]``, padding ``(k − stride)/2``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__((in_channels, out_channels, kernel_size), out_channels)
        self.stride = stride
        self.padding = (kernel_size - stride) // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose1d(x, self.weight(), self.bias, stride=self.stride, padding=self.padding)


class ResBlock1(nn.Module):
    """HiFi-GAN ResBlock1: for each dilation d, ``x += conv2(silu(conv1_d(silu(x))))`` (length-preserving)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList([WeightNormConv1d(channels, channels, kernel_size, d) for d in dilations])
        self.convs2 = nn.ModuleList([WeightNormConv1d(channels, channels, kernel_size, 1) for _ in dilations])

    def forward(self, x: Tensor) -> Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            x = x + conv2(F.silu(conv1(F.silu(x))))
        return x


class HiFiGANHead(nn.Module):
    """HiFi-GAN generator ``[B, num_mels, F] -> [B, 1, F·prod(upsample_rates)]`` in (-1, 1).

    ``conv_pre`` (k ``pre_conv_kernel_size``) to ``upsample_initial_channel``; per stage i: SiLU,
    ``ups.i`` (×``upsample_rates[i]``, channels halved), mean of the stage's ResBlocks
    ``resblocks.{i·K + j}``; then SiLU, ``conv_post`` to 1 channel, tanh.
    """

    def __init__(self, config: VocoderConfig):
        super().__init__()
        c0 = config.upsample_initial_channel
        self.conv_pre = WeightNormConv1d(config.num_mels, c0, config.pre_conv_kernel_size)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(
            zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True)
        ):
            self.ups.append(WeightNormConvTranspose1d(c0 >> i, c0 >> (i + 1), kernel, rate))
        for i in range(len(self.ups)):
            for kernel, dilations in zip(
                config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
            ):
                self.resblocks.append(ResBlock1(c0 >> (i + 1), kernel, tuple(dilations)))
        self.conv_post = WeightNormConv1d(c0 >> len(self.ups), 1, config.post_conv_kernel_size)
        self.blocks_per_stage = len(config.resblock_kernel_sizes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_pre(x)
        k = self.blocks_per_stage
        for i, up in enumerate(self.ups):
            x = up(F.silu(x))
            stage_sum = self.resblocks[i * k](x)
            for j in range(1, k):
                stage_sum = stage_sum + self.resblocks[i * k + j](x)
            x = stage_sum / k
        return torch.tanh(self.conv_post(F.silu(x)))


class ISTFTHead(nn.Module):
    """Frame-rate head (songflow's ``head_type="istft"``): a 1x1 conv ``out`` predicts, per mel frame,
    ``n_fft/2 + 1`` log-magnitudes and as many phase *advances*; :meth:`synthesize` overlap-adds the
    inverse FFTs.

    Phases are integrated over frames (:meth:`integrate_phase`): bin ``k`` advances by its centre
    frequency's ``2π·k·hop/n_fft`` per hop plus the predicted deviation. A stationary input (a held
    note) gives constant features from a convolutional backbone; predicting absolute phases would then
    repeat the same phase every frame, which only frequencies at multiples of ``sr/hop`` survive (a
    86 Hz buzz comb at 44.1 kHz/hop 512), whereas a constant advance is a steady sinusoid at any pitch.

    Where pitch is decided by less than a bin (the lowest ``phase_refiner_bins``: 21.5 Hz per bin is a
    semitone near 370 Hz), a small ``phase_refiner`` corrects the deviations with convolutions along
    frequency over each frame's log-magnitudes, deviations and input mel energy spread on the STFT bins:
    where a partial lies between mel band centres is a local pattern of neighbouring bands, the same at
    any pitch, which a 1x1 conv from the backbone's features learns slowly.

    Synthesis frame f covers the same samples as analysis frame f of the mel front end
    (``[f·hop − (n_fft − hop)/2, f·hop + (n_fft + hop)/2)``), with a Hann window of ``win_length``
    (zero-padded to ``n_fft``) and the usual squared-window normalisation, so ``[B, C, F]`` features give
    exactly ``hop · F`` samples, aligned with the input mel: ``synthesize(mel_transform.stft(x)) == x``.
    """

    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.n_fft = config.n_fft
        self.hop = config.hop_length
        self.out = nn.Conv1d(config.num_mels, config.n_fft + 2, 1)
        window = torch.hann_window(config.win_length, periodic=True)
        left = (config.n_fft - config.win_length) // 2
        window = F.pad(window, (left, config.n_fft - config.win_length - left))
        self.register_buffer("window", window, persistent=False)
        self.refine_bins = config.phase_refiner_bins
        if self.refine_bins:
            width = config.phase_refiner_channels
            self.phase_refiner = nn.Sequential(
                nn.Conv1d(4, width, 7, padding=3),
                nn.GELU(),
                nn.Conv1d(width, width, 7, padding=3),
                nn.GELU(),
                nn.Conv1d(width, 1, 1),
            )
            nn.init.zeros_(self.phase_refiner[-1].weight)  # starts as the identity
            nn.init.zeros_(self.phase_refiner[-1].bias)
            fb = slaney_mel_filterbank(
                config.n_fft // 2 + 1, config.n_mels, config.sampling_rate, config.f_min, config.f_max
            )[: self.refine_bins]
            spread = fb / fb.sum(0, keepdim=True).clamp_min(1e-8)  # (bins, n_mels): band energy per bin
            self.register_buffer("mel_spread", spread, persistent=False)

    def forward(self, x: Tensor, logmel: Tensor) -> Tensor:
        return self.render(self.frame_features(x, logmel)).to(x.dtype)

    def frame_features(self, x: Tensor, logmel: Tensor) -> Tensor:
        """Backbone features ``[B, C, F]`` and the input log-mel ``[B, n_mels, F]`` -> ``[B, n_fft + 2, F]``
        float32: log-magnitudes, then phase deviations. Frame f depends on backbone frame f and mel frame
        f only (the part windowed vocoding may cut)."""
        features = self.out(x).float()
        if not self.refine_bins:
            return features
        log_magnitude, deviation = features.chunk(2, dim=1)
        n_batch, _, n_frames = features.shape
        low = slice(0, self.refine_bins)
        spread = (self.mel_spread @ logmel.float().exp()).clamp_min(1e-7).log()  # (B, bins, F)
        position = torch.linspace(0, 1, self.refine_bins, device=x.device)[None, :, None]
        inputs = torch.stack(
            [log_magnitude[:, low], deviation[:, low], spread, position.expand_as(spread)], dim=1
        )  # (B, 4, bins, F): one frequency "sequence" per frame
        inputs = inputs.permute(0, 3, 1, 2).reshape(n_batch * n_frames, 4, self.refine_bins)
        correction = self.phase_refiner(inputs).reshape(n_batch, n_frames, self.refine_bins).transpose(1, 2)
        deviation = torch.cat([deviation[:, low] + correction, deviation[:, self.refine_bins :]], dim=1)
        return torch.cat([log_magnitude, deviation], dim=1)

    def render(self, features: Tensor) -> Tensor:
        """:meth:`frame_features` of a whole song -> ``[B, 1, hop · F]`` float32 waveform in [-1, 1]."""
        return self.synthesize(self.to_spectrum(features)).clamp(-1.0, 1.0)

    def spectrum(self, x: Tensor, logmel: Tensor) -> Tensor:
        """Features ``[B, C, F]`` (+ log-mel) -> the complex STFT ``[B, n_fft/2 + 1, F]`` it synthesises."""
        return self.to_spectrum(self.frame_features(x, logmel))

    def to_spectrum(self, features: Tensor) -> Tensor:
        log_magnitude, deviation = features.chunk(2, dim=1)  # (B, n_freqs, F) each
        magnitude = torch.exp(log_magnitude.clamp(max=_MAX_LOG_MAGNITUDE))
        return torch.polar(magnitude, self.integrate_phase(deviation))

    def integrate_phase(self, deviation_rad: Tensor) -> Tensor:
        """Phase ``[B, K, F]`` of frame f, bin k: ``π·k + Σ_{s≤f} (2π·k·hop/n_fft + deviation[s])``.

        A sinusoid at ``ω`` rad/sample advances every bin of its main lobe by ``ω·hop`` per frame, so their
        deviations ``(ω − ω_k)·hop`` differ, and ``π·k`` lines the lobe's bins up (the window is centred
        at ``n_fft/2`` of its frame): constant deviations are one steady sinusoid. The bin-centre sum is
        exact integer arithmetic and the deviations' sum float64 (float32 where the device has no
        float64), both wrapped to [0, 2π), so hours of audio keep full phase precision.
        """
        n_bins, n_frames = deviation_rad.shape[-2:]
        device = deviation_rad.device
        k = torch.arange(n_bins, device=device)[:, None]
        f = torch.arange(n_frames, device=device)[None, :]
        cycles = (k * (self.hop * (f + 1) + self.n_fft // 2)) % self.n_fft  # int64, exact
        base = cycles.to(torch.float32) * (2 * math.pi / self.n_fft)
        acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        drift = torch.remainder(torch.cumsum(deviation_rad.to(acc_dtype), dim=-1), 2 * math.pi)
        return base + drift.to(torch.float32)

    def synthesize(self, spec: Tensor) -> Tensor:
        """Complex STFT ``[B, n_fft/2 + 1, F]`` -> ``[B, 1, hop · F]`` by windowed overlap-add."""
        n_frames = spec.shape[-1]
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * self.window[:, None]  # (B, n_fft, F)
        pad = (self.n_fft - self.hop) // 2
        full = (n_frames - 1) * self.hop + self.n_fft
        fold = dict(output_size=(1, full), kernel_size=(1, self.n_fft), stride=(1, self.hop))
        wav = F.fold(frames, **fold)[:, 0, 0]  # (B, full)
        squared = self.window.square()[None, :, None].expand(1, -1, n_frames)
        envelope = F.fold(squared, **fold)[:, 0, 0]
        wav = wav / envelope.clamp(min=1e-8)
        return wav[:, None, pad : pad + self.hop * n_frames]


# ---------------------------------------------------------------------------------------------------
# Vocoder
# ---------------------------------------------------------------------------------------------------


class Vocoder(nn.Module):
    """ACE-Step's music vocoder: natural-log mel ``[B, n_mels, F]`` -> mono waveform ``[B, 1, hop·F]``.

    Submodules (official keys): ``backbone`` (:class:`ConvNeXtBackbone`), ``head``
    (:class:`HiFiGANHead`), ``mel_transform`` (:class:`~songflow.audio.mel.LogMelSpectrogram`, the
    matching analysis transform; its buffers are part of the state dict). Construction does no
    data-dependent work, so it can run under ``torch.device("meta")``. For inference call
    :meth:`fold_weight_norm` once after loading weights.
    """

    def __init__(self, config: VocoderConfig | None = None):
        super().__init__()
        self.config = config = config or VocoderConfig()
        self.backbone = ConvNeXtBackbone(config)
        self.head = ISTFTHead(config) if config.head_type == "istft" else HiFiGANHead(config)
        self.mel_transform = LogMelSpectrogram(
            sample_rate_hz=config.sampling_rate,
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_samples=config.hop_length,
            f_min_hz=float(config.f_min),
            f_max_hz=float(config.f_max),
            n_mels=config.n_mels,
        )

    @property
    def sample_rate_hz(self) -> int:
        return self.config.sampling_rate

    @property
    def hop_samples(self) -> int:
        return self.config.hop_length

    def forward(self, logmel: Tensor) -> Tensor:
        """Synthesise audio.

        Args:
            logmel: ``[B, n_mels, F]`` natural-log mel magnitudes (as :meth:`encode_mel` computes).

        Returns:
            ``[B, 1, hop_length · F]`` waveform in (-1, 1) at ``sampling_rate`` Hz.
        """
        if logmel.dim() != 3 or logmel.shape[1] != self.config.n_mels:
            raise ValueError(
                f"Vocoder expects [B, {self.config.n_mels}, F] log-mel, got {tuple(logmel.shape)}"
            )
        if isinstance(self.head, ISTFTHead):
            return self.head(self.backbone(logmel), logmel)
        return self.head(self.backbone(logmel))

    def encode_mel(self, wav: Tensor) -> Tensor:
        """Log-mel of ``wav`` ``[B, T]`` -> ``[B, n_mels, T // hop_length]`` (the vocoder's input space)."""
        return self.mel_transform(wav)

    def fold_weight_norm(self) -> None:
        """Cache every head weight ``g·v/‖v‖`` for faster inference.

        ``state_dict()`` still holds ``weight_g``/``weight_v``; loading a state dict drops the cache.
        """
        for module in self.modules():
            if isinstance(module, _WeightNormConv):
                module.fold()

    def unfold_weight_norm(self) -> None:
        """Undo :meth:`fold_weight_norm` (needed before training or editing ``weight_g``/``weight_v``)."""
        for module in self.modules():
            if isinstance(module, _WeightNormConv):
                module.unfold()
