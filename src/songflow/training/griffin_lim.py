"""Griffin-Lim baseline: waveform from the codec's log-mel without any learned model.

The yardstick a trained vocoder must beat. Two steps:

1. **Mel -> linear magnitude.** The front end (:class:`~songflow.audio.mel.LogMelSpectrogram`) computes
   ``mel = fbᵀ·|S|`` then ``log(max(mel, 1e-5))``. We invert with the Moore-Penrose pseudo-inverse of ``fbᵀ``
   (``|S| ≈ pinv(fbᵀ)·exp(logmel)``), clamped to be non-negative.
2. **Phase.** Griffin & Lim (1984): alternate between imposing the target magnitude on the current STFT and
   projecting onto consistent spectrograms with ``torch.istft``/``torch.stft``; the optional momentum
   ("fast Griffin-Lim", Perraudin et al. 2013) speeds convergence.

Frame alignment: the front end's frame ``f`` covers samples ``[f·hop − (n_fft − hop)/2, ... + n_fft)``,
i.e. it is centred at ``f·hop + hop/2``. A centred ``torch.stft`` of the signal advanced by ``hop/2`` has
the same centres, so we run Griffin-Lim on ``y[n] = x[n + hop/2]`` (``F·hop − hop/2`` samples, exactly
``F`` frames) and shift back (the first ``hop/2`` output samples are zeros).
"""

from __future__ import annotations

import torch
from torch import Tensor

from songflow.audio.mel import LogMelSpectrogram


def mel_to_linear_magnitude(logmel: Tensor, mel_transform: LogMelSpectrogram) -> Tensor:
    """Natural-log mel ``[B, M, F]`` -> linear magnitude ``[B, n_fft//2+1, F]`` (pseudo-inverse, >= 0)."""
    fb = mel_transform.mel_scale.fb.to(device=logmel.device, dtype=torch.float32)  # (n_freqs, M)
    inverse = torch.linalg.pinv(fb.T)  # (n_freqs, M)
    return (inverse @ logmel.float().exp()).clamp_min(0.0)


@torch.no_grad()
def griffin_lim(
    magnitude: Tensor,
    n_fft: int,
    hop: int,
    win_length: int,
    n_samples: int,
    n_iter: int = 64,
    momentum: float = 0.99,
    seed: int = 0,
) -> Tensor:
    """Waveform ``[B, n_samples]`` whose centred STFT magnitude approximates ``magnitude``.

    ``magnitude`` is ``[B, n_fft//2+1, F]`` with ``1 + n_samples // hop == F``. Starts from random phase
    (``seed``); ``momentum`` 0 is the original algorithm, ~0.99 the fast variant.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    window = torch.hann_window(win_length, periodic=True, device=magnitude.device)
    gen = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=gen).to(magnitude.device) * (2 * torch.pi)
    target = magnitude.float()
    spec = target * torch.exp(1j * phase)
    previous = torch.zeros_like(spec)

    def istft(s: Tensor) -> Tensor:
        return torch.istft(s, n_fft, hop_length=hop, win_length=win_length, window=window, length=n_samples)

    for _ in range(n_iter):
        rebuilt = torch.stft(
            istft(spec), n_fft, hop_length=hop, win_length=win_length, window=window, return_complex=True
        )
        accelerated = rebuilt - (momentum / (1 + momentum)) * previous if momentum else rebuilt
        previous = rebuilt
        spec = target * torch.exp(1j * torch.angle(accelerated))
    return istft(spec)


@torch.no_grad()
def griffin_lim_from_logmel(
    logmel: Tensor, mel_transform: LogMelSpectrogram, n_iter: int = 64, momentum: float = 0.99, seed: int = 0
) -> Tensor:
    """Invert the codec's log-mel ``[B, M, F]`` to a waveform ``[B, F·hop]`` (pinv + Griffin-Lim)."""
    hop = mel_transform.hop_samples
    if hop % 2:
        raise ValueError(f"hop {hop} must be even (frames are centred half a hop in)")
    n_frames = logmel.shape[-1]
    magnitude = mel_to_linear_magnitude(logmel, mel_transform)
    y = griffin_lim(
        magnitude,
        mel_transform.n_fft,
        hop,
        mel_transform.win_length,
        n_samples=n_frames * hop - hop // 2,
        n_iter=n_iter,
        momentum=momentum,
        seed=seed,
    )
    return torch.nn.functional.pad(y, (hop // 2, 0))  # x[n] = y[n - hop/2]
