"""Sample-rate conversion.

:func:`resample` is a band-limited (windowed-sinc) polyphase resampler in pure torch. Its kernel is the
one torchaudio's default ``Resample`` transform uses (Hann-windowed sinc, 6 zero crossings per side,
cut-off at 0.99 of the lower Nyquist frequency), so it reproduces the official ACE-Step pipeline's
48 kHz <-> 44.1 kHz conversions to float32 rounding. :func:`resample_hq` wraps soxr (NumPy, CPU) for
general file I/O where bit-compatibility with the official code does not matter.

The maths, with both rates divided by their gcd into ``orig`` and ``new``:

* time is measured in units of ``1/gcd`` seconds, so input sample ``n`` sits at ``n / orig`` and
  output sample ``m = k·new + j`` (phase ``j`` of block ``k``) at ``k + j / new``;
* the anti-aliasing low-pass cuts off at ``base = rolloff · min(orig, new)`` (in the same units, i.e.
  ``base / 2`` cycles per unit), so the ideal interpolator is ``base/orig · sinc(base · Δ)`` with
  ``Δ = input time − output time`` and ``sinc(x) = sin(πx)/(πx)``;
* the sinc is truncated to ``|base · Δ| <= width_zc`` zero crossings and tapered by the Hann window
  ``cos²(π · base·Δ / (2 · width_zc))``;
* each output block ``k`` reads the input samples ``k·orig − pad … k·orig + orig + pad − 1`` with
  ``pad = ceil(width_zc · orig / base)`` (zero padding outside the signal), which is one strided
  convolution with ``new`` filters (one per output phase) followed by interleaving the phases;
* the output has ``ceil(T · new / orig)`` samples.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from songflow.errors import AudioError

LOWPASS_FILTER_WIDTH = 6
"""Zero crossings of the truncated sinc on each side of its centre."""

ROLLOFF = 0.99
"""Low-pass cut-off as a fraction of the lower of the two Nyquist frequencies."""


def _reduced_rates(orig_hz: int, new_hz: int) -> tuple[int, int]:
    if int(orig_hz) != orig_hz or int(new_hz) != new_hz or orig_hz <= 0 or new_hz <= 0:
        raise AudioError(f"sample rates must be positive integers, got {orig_hz} -> {new_hz}")
    g = math.gcd(int(orig_hz), int(new_hz))
    return int(orig_hz) // g, int(new_hz) // g


def sinc_kernel(orig: int, new: int) -> tuple[Tensor, int]:
    """The polyphase windowed-sinc filters for reduced rates ``orig -> new``.

    Args:
        orig, new: the two sample rates divided by their gcd.

    Returns:
        ``(kernel, pad_samples)``: ``kernel`` float32 ``[new, 1, 2·pad_samples + orig]`` (row ``j`` is
        the filter of output phase ``j``; column ``i`` weights input sample ``k·orig + i − pad_samples``)
        and ``pad_samples``, the zero padding needed on the left of the input.
    """
    base = min(orig, new) * ROLLOFF
    pad_samples = math.ceil(LOWPASS_FILTER_WIDTH * orig / base)
    # Input-sample offsets (i - pad)/orig in float64. The output-phase offsets j/new are rounded to
    # float32 first: that is how the reference kernel (torchaudio's default, float32 result) is
    # evaluated, and we keep its exact values.
    input_offset = torch.arange(-pad_samples, pad_samples + orig, dtype=torch.float64, device="cpu") / orig
    output_offset = (torch.arange(new, device="cpu").float() / new).double()
    zero_crossings = (input_offset[None, :] - output_offset[:, None]) * base  # (new, 2·pad+orig)
    zero_crossings = zero_crossings.clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(zero_crossings * (math.pi / (2 * LOWPASS_FILTER_WIDTH))) ** 2
    phase = zero_crossings * math.pi
    safe_phase = torch.where(phase == 0, torch.ones_like(phase), phase)
    sinc = torch.where(phase == 0, torch.ones_like(phase), torch.sin(safe_phase) / safe_phase)
    kernel = sinc * window * (base / orig)
    return kernel.to(torch.float32)[:, None, :], pad_samples


@lru_cache(maxsize=32)
def _cached_kernel(orig: int, new: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, int]:
    kernel, pad_samples = sinc_kernel(orig, new)
    return kernel.to(device=device, dtype=dtype), pad_samples


def resample(wav: Tensor, orig_hz: int, new_hz: int) -> Tensor:
    """Resample along the last axis with torchaudio-``Resample``-compatible windowed sinc.

    Args:
        wav: ``[..., T]`` floating-point audio at ``orig_hz``.
        orig_hz, new_hz: integer sample rates in Hz.

    Returns:
        ``[..., ceil(T · new_hz / orig_hz)]`` in ``wav``'s dtype and device. The input itself (not a
        copy) when the rates are equal.
    """
    orig, new = _reduced_rates(orig_hz, new_hz)
    if orig == new:
        return wav
    if not wav.is_floating_point():
        raise AudioError(f"resample needs floating-point audio, got {wav.dtype}")
    kernel, pad_samples = _cached_kernel(orig, new, wav.dtype, wav.device)
    lead_shape, n_samples = wav.shape[:-1], wav.shape[-1]
    x = wav.reshape(-1, 1, n_samples)  # (N, 1, T)
    x = F.pad(x, (pad_samples, pad_samples + orig))
    y = F.conv1d(x, kernel, stride=orig)  # (N, new, blocks): phase j of block k
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # (N, blocks·new), interleaved phases
    n_out = math.ceil(new * n_samples / orig)
    return y[:, :n_out].reshape(*lead_shape, n_out)


def resample_hq(wav: Tensor, orig_hz: int, new_hz: int) -> Tensor:
    """High-quality resampling with soxr (CPU, via NumPy), for reading and writing files.

    Not numerically equal to :func:`resample`; use :func:`resample` where parity with the official
    pipeline matters.

    Args:
        wav: ``[..., T]`` floating-point audio at ``orig_hz``.
        orig_hz, new_hz: sample rates in Hz.

    Returns:
        ``[..., T']`` with ``T' ≈ T · new_hz / orig_hz`` (soxr's length rule), same dtype and device.
    """
    _reduced_rates(orig_hz, new_hz)
    if orig_hz == new_hz:
        return wav
    import soxr

    lead_shape, n_samples = wav.shape[:-1], wav.shape[-1]
    x = wav.detach().reshape(-1, n_samples).to("cpu", torch.float64).numpy().T  # (T, N): soxr channels last
    y = soxr.resample(np.ascontiguousarray(x), orig_hz, new_hz, quality="VHQ")
    out = torch.from_numpy(np.ascontiguousarray(y.T))
    return out.reshape(*lead_shape, out.shape[-1]).to(device=wav.device, dtype=wav.dtype)
