"""Losses for training the music codec: the vocoder (mel -> waveform) and the DC-AE (mel autoencoder).

Reconstruction terms
    * :class:`MultiResolutionSTFTLoss` — spectral convergence ``‖|S| − |Ŝ|‖_F / ‖|S|‖_F`` plus the mean
      absolute difference of log magnitudes, averaged over several STFT resolutions
      (Yamamoto et al. 2020, Parallel WaveGAN). Both terms are exactly 0 for identical signals.
    * :func:`mel_l1` — mean absolute difference of log-mels (HiFi-GAN's reconstruction term).
    * :func:`phase_advance_loss` — wrap-free error of the frame-to-frame phase advance (instantaneous
      frequency) of two complex STFTs on the same framing, weighted by magnitude (after APNet's
      instantaneous-angular-frequency loss, Ai & Ling 2023). The absolute phase of a signal is arbitrary;
      its advance per hop is what places a partial at its pitch.

Adversarial terms
    Discriminators return ``list[(logits, features)]`` (one entry per sub-discriminator, see
    :mod:`songflow.training.discriminators`). :func:`discriminator_loss` / :func:`generator_adversarial_loss`
    implement least squares (LSGAN, Mao et al. 2017: real -> 1, fake -> 0) or hinge (Lim & Ye 2017) losses,
    summed over sub-discriminators; :func:`feature_matching_loss` is the L1 distance between the
    discriminator's intermediate activations on real and generated inputs (Larsen et al. 2016), averaged over
    layers and summed over sub-discriminators.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AdversarialLoss = Literal["lsgan", "hinge"]
DiscriminatorOutputs = Sequence[tuple[Tensor, Sequence[Tensor]]]
"""One ``(logits, [feature maps])`` pair per sub-discriminator."""

DEFAULT_STFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = (
    (512, 128, 512),
    (1024, 256, 1024),
    (2048, 512, 2048),
)
"""``(n_fft, hop, win_length)`` triples of the multi-resolution STFT loss (44.1 kHz audio)."""

_MAG_FLOOR = 1e-7


def phase_advance_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean ``|wrap(Δφ_pred − Δφ_target)|`` in radians over complex STFTs ``[B, K, F]`` (same framing),
    where ``Δφ`` is the phase change from frame f−1 to f and ``wrap`` maps to [−π, π); each (bin, frame
    pair) weighs ``sqrt(|S_f|·|S_{f−1}|)`` of the target, so silent bins, whose phase is noise, do not count.
    0 iff every weighted advance matches."""
    advance_pred = torch.angle(pred[..., 1:] * pred[..., :-1].conj())
    advance_target = torch.angle(target[..., 1:] * target[..., :-1].conj())
    err = advance_pred - advance_target
    err = err - 2 * torch.pi * torch.round(err / (2 * torch.pi))
    weight = (target[..., 1:].abs() * target[..., :-1].abs()).sqrt()
    return (weight * err.abs()).sum() / weight.sum().clamp_min(1e-8)


def stft_magnitude(
    wav: Tensor, n_fft: int, hop: int, win_length: int, window: Tensor | None = None
) -> Tensor:
    """Linear STFT magnitude ``[B, n_fft//2+1, frames]`` of ``wav`` ``[B, T]`` or ``[B, 1, T]`` (float32).

    Centred STFT with a periodic Hann window; signals shorter than ``n_fft // 2 + 1`` are zero-padded first so
    the reflect padding is always valid. Magnitudes are floored at ``1e-7`` (finite logs and gradients).
    """
    if wav.dim() == 3:
        wav = wav.reshape(-1, wav.shape[-1])
    wav = wav.float()
    if wav.shape[-1] <= n_fft // 2:
        wav = F.pad(wav, (0, n_fft // 2 + 1 - wav.shape[-1]))
    if window is None:
        window = torch.hann_window(win_length, periodic=True, device=wav.device)
    spec = torch.stft(wav, n_fft, hop_length=hop, win_length=win_length, window=window, return_complex=True)
    # floor before the sqrt: sqrt'(0) is infinite and would turn a silent bin's gradient into NaN
    return (spec.real.square() + spec.imag.square()).clamp_min(_MAG_FLOOR**2).sqrt()


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1, averaged over STFT resolutions.

    Args:
        resolutions: ``(n_fft, hop, win_length)`` per resolution.

    ``forward(pred, target)`` takes waveforms ``[B, T]`` or ``[B, C, T]`` (channels are treated as batch) and
    returns ``(spectral_convergence, log_magnitude)``, two scalars; the total loss is their sum.
    """

    def __init__(self, resolutions: Sequence[Sequence[int]] = DEFAULT_STFT_RESOLUTIONS):
        super().__init__()
        self.resolutions = tuple((int(n), int(h), int(w)) for n, h, w in resolutions)
        if not self.resolutions or any(not 0 < h <= w <= n for n, h, w in self.resolutions):
            raise ValueError(f"need (n_fft, hop, win) triples with 0 < hop <= win <= n_fft: {resolutions}")
        for i, (_, _, w) in enumerate(self.resolutions):
            self.register_buffer(f"window_{i}", torch.hann_window(w, periodic=True), persistent=False)

    def forward(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        pred = pred.reshape(-1, pred.shape[-1])  # (B·C, T)
        target = target.reshape(-1, target.shape[-1])
        sc_total = pred.new_zeros((), dtype=torch.float32)
        mag_total = pred.new_zeros((), dtype=torch.float32)
        for i, (n_fft, hop, win) in enumerate(self.resolutions):
            window = getattr(self, f"window_{i}")
            s_pred = stft_magnitude(pred, n_fft, hop, win, window)
            s_true = stft_magnitude(target, n_fft, hop, win, window)
            # per item, then batch mean: loud items do not dominate quiet ones
            diff = torch.linalg.vector_norm(s_true - s_pred, dim=(1, 2))
            sc_total = sc_total + (diff / torch.linalg.vector_norm(s_true, dim=(1, 2)).clamp_min(1e-7)).mean()
            mag_total = mag_total + (s_true.log() - s_pred.log()).abs().mean()
        n = len(self.resolutions)
        return sc_total / n, mag_total / n


def mel_l1(pred_logmel: Tensor, target_logmel: Tensor) -> Tensor:
    """Mean absolute difference of two log spectrograms (mel or linear bins) of equal shape (natural log)."""
    if pred_logmel.shape != target_logmel.shape:
        raise ValueError(f"mel shapes differ: {tuple(pred_logmel.shape)} vs {tuple(target_logmel.shape)}")
    return (pred_logmel.float() - target_logmel.float()).abs().mean()


def _check_kind(kind: str) -> None:
    if kind not in ("lsgan", "hinge"):
        raise ValueError(f"unknown adversarial loss {kind!r}; valid: ['hinge', 'lsgan']")


def discriminator_loss(
    real: DiscriminatorOutputs, fake: DiscriminatorOutputs, kind: AdversarialLoss = "lsgan"
) -> Tensor:
    """Discriminator objective, summed over sub-discriminators (pass ``fake`` computed on detached audio).

    LSGAN: ``E[(1 − D(x))²] + E[D(x̂)²]``; hinge: ``E[relu(1 − D(x))] + E[relu(1 + D(x̂))]``.
    """
    _check_kind(kind)
    total = None
    for (r, _), (f, _) in zip(real, fake, strict=True):
        if kind == "lsgan":
            term = (1 - r.float()).square().mean() + f.float().square().mean()
        else:
            term = F.relu(1 - r.float()).mean() + F.relu(1 + f.float()).mean()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no discriminator outputs")
    return total


def generator_adversarial_loss(fake: DiscriminatorOutputs, kind: AdversarialLoss = "lsgan") -> Tensor:
    """Generator objective, summed over sub-discriminators. LSGAN: ``E[(1 − D(x̂))²]``; hinge: ``−E[D(x̂)]``."""
    _check_kind(kind)
    terms = [(1 - f.float()).square().mean() if kind == "lsgan" else -f.float().mean() for f, _ in fake]
    if not terms:
        raise ValueError("no discriminator outputs")
    return torch.stack(terms).sum()


def feature_matching_loss(real: DiscriminatorOutputs, fake: DiscriminatorOutputs) -> Tensor:
    """L1 between real and generated discriminator features (real ones detached).

    Averaged over the feature maps of each sub-discriminator, summed over sub-discriminators.
    """
    terms = []
    for (_, real_feats), (_, fake_feats) in zip(real, fake, strict=True):
        if len(real_feats) != len(fake_feats):
            raise ValueError("real and fake feature lists differ in length")
        per_layer = [
            (r.detach().float() - f.float()).abs().mean() for r, f in zip(real_feats, fake_feats, strict=True)
        ]
        if per_layer:
            terms.append(torch.stack(per_layer).mean())
    if not terms:
        raise ValueError("no discriminator features")
    return torch.stack(terms).sum()
