"""Log-mel front end of the ACE-Step codec (the vocoder's ``mel_transform``).

:class:`LogMelSpectrogram` turns a waveform into the natural-log magnitude mel spectrogram the DCAE
encodes and the vocoder inverts: reflect padding of ``(n_fft − hop)/2`` samples per side, an uncentred
STFT with a periodic Hann window, magnitude ``sqrt(re² + im² + 1e-6)`` (not power), a Slaney-scale,
Slaney-normalised triangular filterbank and ``log(max(x, 1e-5))``. It replaces the torchaudio
``MelScale`` + hand-written STFT of the official code and keeps its buffer names, so the official
checkpoint keys ``mel_transform.spectrogram.window`` and ``mel_transform.mel_scale.fb`` load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Slaney's mel scale (Auditory Toolbox): linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL  # 15.0
_SLANEY_LOG_STEP = math.log(6.4) / 27.0  # natural-log width of one mel above the break


def hz_to_slaney_mel(freq_hz: float) -> float:
    """Frequency in Hz -> Slaney mel (linear ``f / (200/3)`` below 1 kHz, log-spaced above)."""
    if freq_hz < _SLANEY_BREAK_HZ:
        return freq_hz / _SLANEY_HZ_PER_MEL
    return _SLANEY_BREAK_MEL + math.log(freq_hz / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP


def slaney_mel_to_hz(mel: Tensor) -> Tensor:
    """Slaney mel -> Hz, elementwise on a tensor (inverse of :func:`hz_to_slaney_mel`)."""
    linear_hz = mel * _SLANEY_HZ_PER_MEL
    log_hz = _SLANEY_BREAK_HZ * torch.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_BREAK_MEL))
    return torch.where(mel >= _SLANEY_BREAK_MEL, log_hz, linear_hz)


def slaney_mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate_hz: int, f_min_hz: float, f_max_hz: float
) -> Tensor:
    """Triangular mel filters on the Slaney scale with Slaney (constant-area) normalisation.

    Computed in float32 with the same operation order as torchaudio's ``melscale_fbanks`` (so the
    values equal the official checkpoint buffer): STFT bin centres ``linspace(0, sr // 2, n_freqs)``,
    ``n_mels + 2`` band edges equally spaced in mel between ``f_min_hz`` and ``f_max_hz``, filter ``m``
    rising from edge ``m`` to ``m+1`` and falling to ``m+2``, scaled by ``2 / (edge[m+2] − edge[m])``.

    Args:
        n_freqs: number of STFT bins (``n_fft // 2 + 1``).
        n_mels: number of mel bands.
        sample_rate_hz: audio sample rate.
        f_min_hz, f_max_hz: lowest and highest band edges.

    Returns:
        ``[n_freqs, n_mels]`` float32; ``spectrum[..., n_freqs] @ fb`` gives the mel spectrum.
    """
    bin_hz = torch.linspace(0, sample_rate_hz // 2, n_freqs)
    mel_edges = torch.linspace(hz_to_slaney_mel(f_min_hz), hz_to_slaney_mel(f_max_hz), n_mels + 2)
    edge_hz = slaney_mel_to_hz(mel_edges)  # (n_mels + 2,)
    edge_gap_hz = edge_hz[1:] - edge_hz[:-1]  # (n_mels + 1,)
    offset_hz = edge_hz[None, :] - bin_hz[:, None]  # (n_freqs, n_mels + 2): edge minus bin
    rising = -offset_hz[:, :-2] / edge_gap_hz[:-1]  # (n_freqs, n_mels)
    falling = offset_hz[:, 2:] / edge_gap_hz[1:]  # (n_freqs, n_mels)
    fb = torch.clamp(torch.minimum(rising, falling), min=0.0)
    band_norm = 2.0 / (edge_hz[2 : n_mels + 2] - edge_hz[:n_mels])  # (n_mels,)
    return fb * band_norm[None, :]


class _Spectrogram(nn.Module):
    """Holder of the persistent STFT window buffer (state-dict key ``spectrogram.window``)."""

    def __init__(self, win_length: int):
        super().__init__()
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=True)


class _MelScale(nn.Module):
    """Holder of the persistent filterbank buffer ``fb`` ``[n_freqs, n_mels]`` (key ``mel_scale.fb``)."""

    def __init__(self, fb: Tensor):
        super().__init__()
        self.register_buffer("fb", fb, persistent=True)


class LogMelSpectrogram(nn.Module):
    """Waveform -> natural-log magnitude mel spectrogram (official ``LogMelSpectrogram``).

    Args:
        sample_rate_hz: audio sample rate.
        n_fft: FFT size; ``n_fft // 2 + 1`` frequency bins.
        win_length: Hann window length in samples (zero-padded to ``n_fft`` by the STFT).
        hop_samples: frame hop in samples.
        f_min_hz, f_max_hz: mel filterbank range.
        n_mels: number of mel bands.

    Buffers (persistent, official key names): ``spectrogram.window`` ``[win_length]`` periodic Hann and
    ``mel_scale.fb`` ``[n_fft // 2 + 1, n_mels]`` Slaney filterbank.
    """

    def __init__(
        self,
        sample_rate_hz: int = 44100,
        n_fft: int = 2048,
        win_length: int = 2048,
        hop_samples: int = 512,
        f_min_hz: float = 40.0,
        f_max_hz: float = 16000.0,
        n_mels: int = 128,
    ):
        super().__init__()
        self.sample_rate_hz = sample_rate_hz
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_samples = hop_samples
        self.n_mels = n_mels
        self.spectrogram = _Spectrogram(win_length)
        self.mel_scale = _MelScale(
            slaney_mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate_hz, f_min_hz, f_max_hz)
        )

    def stft(self, wav: Tensor) -> Tensor:
        """Complex STFT ``[B, n_fft//2+1, T // hop]`` of ``wav`` ``[B, T]`` in float32: frame f covers samples
        ``[f·hop − (n_fft − hop)/2, f·hop + (n_fft + hop)/2)`` (reflect padding, uncentred frames)."""
        pad = (self.n_fft - self.hop_samples) // 2
        x = F.pad(wav.float()[:, None, :], (pad, pad), mode="reflect")[:, 0]  # (B, T + 2·pad)
        return torch.stft(
            x,
            self.n_fft,
            hop_length=self.hop_samples,
            win_length=self.win_length,
            window=self.spectrogram.window.float(),
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )  # (B, n_freqs, frames)

    def magnitude(self, wav: Tensor) -> Tensor:
        """Linear STFT magnitude ``[B, n_fft//2+1, T // hop]`` of ``wav`` ``[B, T]``, computed in float32."""
        spec = torch.view_as_real(self.stft(wav))
        return torch.sqrt(spec.pow(2).sum(-1) + 1e-6)

    def forward(self, wav: Tensor) -> Tensor:
        """Log-mel of a batch of mono waveforms.

        Args:
            wav: ``[B, T]`` audio at ``sample_rate_hz`` (any float dtype; the STFT runs in float32).

        Returns:
            ``[B, n_mels, T // hop_samples]`` natural-log mel magnitudes in ``wav``'s dtype.
        """
        if wav.dim() != 2:
            raise ValueError(f"LogMelSpectrogram expects [B, T] audio, got shape {tuple(wav.shape)}")
        magnitude = self.magnitude(wav).to(wav.dtype)  # (B, n_freqs, frames)
        mel = torch.matmul(magnitude.transpose(-1, -2), self.mel_scale.fb.to(wav.dtype)).transpose(-1, -2)
        return torch.log(torch.clamp(mel, min=1e-5))
