"""GAN discriminators for codec training (our own implementations of published designs).

Every discriminator's ``forward`` returns ``list[(logits, features)]``: one pair per sub-discriminator, with
``logits`` a tensor of real/fake scores (any shape; losses take means) and ``features`` the activations after
each hidden layer, for feature matching (:mod:`songflow.training.codec_losses`).

Vocoder (waveform ``[B, 1, T]``):
    * :class:`MultiPeriodDiscriminator` — HiFi-GAN's idea (Kong et al. 2020): fold the waveform into a 2-D
      ``[T/p, p]`` grid for several prime periods ``p`` and run ``(k, 1)`` convolutions along time, so each
      sub-discriminator sees one phase of a periodic structure.
    * :class:`MultiResolutionDiscriminator` — UnivNet's idea (Jang et al. 2021): 2-D convolutions on the
      (log-compressed) STFT magnitude at several resolutions.
    * :class:`VocoderDiscriminator` — both together.

DC-AE (normalised log-mel image ``[B, C, M, F]``):
    * :class:`MelPatchDiscriminator` — a PatchGAN (Isola et al. 2017): a small strided 2-D conv stack whose
      output is a grid of per-patch scores.

Weight norm (vocoder discriminators) and spectral norm (patch discriminator) stabilise training. All convs use
stride/padding such that every input length >= 1 gives a non-empty output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from songflow.training.codec_losses import DEFAULT_STFT_RESOLUTIONS, stft_magnitude

DEFAULT_PERIODS: tuple[int, ...] = (2, 3, 5, 7, 11)
DEFAULT_PERIOD_CHANNELS: tuple[int, ...] = (32, 128, 512, 1024)
_SLOPE = 0.1

Outputs = list[tuple[Tensor, list[Tensor]]]


class PeriodDiscriminator(nn.Module):
    """One period: ``[B, 1, T]`` -> pad to a multiple of ``period`` -> ``[B, 1, T/p, p]`` -> 2-D convs.

    Hidden convs have kernel ``(kernel, 1)`` and stride ``(3, 1)`` (the last one stride 1), widths
    ``channels``; a ``(3, 1)`` conv to one channel gives the logits ``[B, 1, T', p]``.
    """

    def __init__(self, period: int, channels: Sequence[int] = DEFAULT_PERIOD_CHANNELS, kernel: int = 5):
        super().__init__()
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period
        widths = [1, *channels, channels[-1]]
        layers = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            stride = 1 if i == len(widths) - 2 else 3
            layers.append(weight_norm(nn.Conv2d(c_in, c_out, (kernel, 1), (stride, 1), (kernel // 2, 0))))
        self.convs = nn.ModuleList(layers)
        self.post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), 1, (1, 0)))

    def forward(self, wav: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, c, t = wav.shape
        pad = (-t) % self.period
        if pad:
            wav = F.pad(wav, (0, pad), mode="reflect" if t > pad else "constant")
        x = wav.reshape(b, c, -1, self.period)  # (B, 1, T/p, p)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), _SLOPE)
            feats.append(x)
        return self.post(x), feats


class MultiPeriodDiscriminator(nn.Module):
    """One :class:`PeriodDiscriminator` per period (default the primes 2, 3, 5, 7, 11)."""

    def __init__(
        self, periods: Sequence[int] = DEFAULT_PERIODS, channels: Sequence[int] = DEFAULT_PERIOD_CHANNELS
    ):
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, channels) for p in periods)

    def forward(self, wav: Tensor) -> Outputs:
        """``wav`` ``[B, 1, T]`` -> one ``(logits [B, 1, T', p], features)`` per period."""
        return [d(wav) for d in self.discriminators]


class ResolutionDiscriminator(nn.Module):
    """2-D convs over ``log(1 + |STFT|)`` ``[B, 1, n_fft/2+1, frames]`` at one resolution.

    A ``(7, 5)`` stem, then ``n_layers`` convs with stride 2 along frequency and kernel ``(5, 3)``, then a
    ``(3, 3)`` conv to one channel.
    """

    window: Tensor

    def __init__(self, n_fft: int, hop: int, win_length: int, channels: int = 32, n_layers: int = 3):
        super().__init__()
        self.n_fft, self.hop, self.win_length = n_fft, hop, win_length
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)
        layers = [weight_norm(nn.Conv2d(1, channels, (7, 5), 1, (3, 2)))]
        for _ in range(n_layers):
            layers.append(weight_norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), (2, 1))))
        self.convs = nn.ModuleList(layers)
        self.post = weight_norm(nn.Conv2d(channels, 1, 3, 1, 1))

    def forward(self, wav: Tensor) -> tuple[Tensor, list[Tensor]]:
        mag = stft_magnitude(wav, self.n_fft, self.hop, self.win_length, self.window)  # (B, F, frames)
        x = torch.log1p(mag)[:, None]  # (B, 1, F, frames)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), _SLOPE)
            feats.append(x)
        return self.post(x), feats


class MultiResolutionDiscriminator(nn.Module):
    """One :class:`ResolutionDiscriminator` per ``(n_fft, hop, win_length)``."""

    def __init__(
        self,
        resolutions: Sequence[Sequence[int]] = DEFAULT_STFT_RESOLUTIONS,
        channels: int = 32,
        n_layers: int = 3,
    ):
        super().__init__()
        self.discriminators = nn.ModuleList(
            ResolutionDiscriminator(int(n), int(h), int(w), channels, n_layers) for n, h, w in resolutions
        )

    def forward(self, wav: Tensor) -> Outputs:
        """``wav`` ``[B, 1, T]`` -> one ``(logits [B, 1, F', frames], features)`` per resolution."""
        return [d(wav) for d in self.discriminators]


class VocoderDiscriminator(nn.Module):
    """Multi-period + multi-resolution discriminators; ``forward`` concatenates their output lists."""

    def __init__(
        self,
        periods: Sequence[int] = DEFAULT_PERIODS,
        period_channels: Sequence[int] = DEFAULT_PERIOD_CHANNELS,
        resolutions: Sequence[Sequence[int]] = DEFAULT_STFT_RESOLUTIONS,
        resolution_channels: int = 32,
    ):
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(periods, period_channels)
        self.mrd = MultiResolutionDiscriminator(resolutions, resolution_channels)

    def forward(self, wav: Tensor) -> Outputs:
        """``wav`` ``[B, 1, T]`` or ``[B, T]`` -> ``len(periods) + len(resolutions)`` output pairs."""
        if wav.dim() == 2:
            wav = wav[:, None]
        return self.mpd(wav) + self.mrd(wav)


class MelPatchDiscriminator(nn.Module):
    """PatchGAN on mel images ``[B, C, M, F]`` (C = audio channels, values ~[-1, 1]).

    ``n_layers`` spectrally normalised 3x3 convs with stride 2 and doubling width (capped at ``8·channels``),
    LeakyReLU(0.2), then a 3x3 conv to one channel: logits ``[B, 1, ceil(M/2^n), ceil(F/2^n)]``, one score per
    receptive-field patch. Returned as a one-element list for the shared loss functions.
    """

    def __init__(self, in_channels: int = 2, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers = []
        c_in = in_channels
        for i in range(n_layers):
            c_out = channels * min(2**i, 8)
            layers.append(spectral_norm(nn.Conv2d(c_in, c_out, 3, 2, 1)))
            c_in = c_out
        self.convs = nn.ModuleList(layers)
        self.post = spectral_norm(nn.Conv2d(c_in, 1, 3, 1, 1))

    def forward(self, mel: Tensor) -> Outputs:
        x = mel
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x)
        return [(self.post(x), feats)]
