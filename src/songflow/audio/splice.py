"""Exact output lengths and splicing regenerated audio into original audio (docs/reference_behaviour.md#r22).

All functions work on ``[..., N]`` waveforms (the last axis is time) and broadcast a shared source over
a batch. Samples outside the spliced region are copied, never recomputed, so they equal the base exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_CROSSFADE_S",
    "equal_power_ramps",
    "fit_length",
    "keep_span",
    "seconds_to_samples",
    "splice",
    "window",
]

DEFAULT_CROSSFADE_S = 0.05
"""Length of the crossfades that join regenerated audio to the original samples (50 ms)."""


def seconds_to_samples(seconds: float, sample_rate_hz: int) -> int:
    """``round(seconds · rate)``: the sample count (or index) of a duration at a rate."""
    return int(round(seconds * sample_rate_hz))


def fit_length(audio: Tensor, n_samples: int) -> Tensor:
    """``audio`` ``[..., N]`` cut to ``n_samples``, or padded with silence at the end when shorter."""
    n = audio.shape[-1]
    if n >= n_samples:
        return audio[..., :n_samples]
    return torch.nn.functional.pad(audio, (0, n_samples - n))


def window(audio: Tensor, start: int, n_samples: int) -> Tensor:
    """``audio[..., start : start + n_samples]`` where ``start`` may be negative or the end past ``N``:
    samples outside ``audio`` are silence."""
    n = audio.shape[-1]
    lo, hi = max(start, 0), min(start + n_samples, n)
    body = audio[..., lo:hi] if hi > lo else audio[..., :0]
    return torch.nn.functional.pad(body, (lo - start, n_samples - (lo - start) - body.shape[-1]))


def equal_power_ramps(n_samples: int, *, dtype=torch.float32, device=None) -> tuple[Tensor, Tensor]:
    """``(fade_out, fade_in)`` ``[n]``: ``cos`` and ``sin`` of ``θ_k = (k + ½) / n · π/2``, so
    ``fade_out² + fade_in² = 1`` at every sample (equal power)."""
    k = torch.arange(n_samples, dtype=torch.float64, device=device)
    theta = (k + 0.5) / max(n_samples, 1) * math.pi / 2
    return theta.cos().to(dtype), theta.sin().to(dtype)


def splice(base: Tensor, new: Tensor, start: int, stop: int, fade_samples: int) -> Tensor:
    """``base`` with ``[start, stop)`` taken from ``new``, joined by equal-power crossfades that lie
    inside ``[start, stop)`` (none at an edge that is the signal's own start or end).

    ``base`` and ``new`` share the length ``N`` (``base`` may have a batch of 1); every sample outside
    ``[start, stop)`` is ``base``'s exactly. A region shorter than two crossfades gets shorter ones.
    """
    n = new.shape[-1]
    out = (base.expand_as(new) if base.shape != new.shape else base).clone()
    start, stop = max(0, start), min(n, stop)
    if stop <= start:
        return out
    out[..., start:stop] = new[..., start:stop]
    edges = int(start > 0) + int(stop < n)
    fade = min(fade_samples, (stop - start) // max(edges, 1))
    if fade <= 0:
        return out
    fade_out, fade_in = equal_power_ramps(fade, dtype=new.dtype, device=new.device)
    if start > 0:
        a, b = start, start + fade
        out[..., a:b] = out_of(base, new, a, b) * fade_out + new[..., a:b] * fade_in
    if stop < n:
        a, b = stop - fade, stop
        out[..., a:b] = new[..., a:b] * fade_out + out_of(base, new, a, b) * fade_in
    return out


def out_of(base: Tensor, new: Tensor, a: int, b: int) -> Tensor:
    """``base[..., a:b]`` broadcast to ``new``'s batch."""
    return base[..., a:b].expand(*new.shape[:-1], b - a)


def keep_span(audio: Tensor, source: Tensor, start: int, fade_samples: int) -> Tensor:
    """``audio`` with ``[start, start + len(source))`` replaced by ``source`` exactly.

    The neighbours (new audio that has no original to crossfade with) absorb the join instead: the
    difference ``source - audio`` at the span's edge, mirrored into the neighbour, fades out over
    ``fade_samples`` with the equal-power ``cos`` ramp, so the signal stays continuous at the join while
    the span itself is the source's samples bit for bit.
    """
    n, n_src = audio.shape[-1], source.shape[-1]
    stop = start + n_src
    if start < 0 or stop > n:
        raise ValueError(f"the span [{start}, {stop}) lies outside the audio's {n} samples")
    out = audio.clone()
    residual = source - audio[..., start:stop]
    out[..., start:stop] = source.expand_as(out[..., start:stop])
    left = min(fade_samples, start, n_src)
    if left > 0:
        ramp, _ = equal_power_ramps(left, dtype=audio.dtype, device=audio.device)
        # out[start - 1 - k] += residual[k] * ramp[k]
        out[..., start - left : start] += (residual[..., :left] * ramp).flip(-1)
    right = min(fade_samples, n - stop, n_src)
    if right > 0:
        ramp, _ = equal_power_ramps(right, dtype=audio.dtype, device=audio.device)
        # out[stop + k] += residual[n_src - 1 - k] * ramp[k]
        out[..., stop : stop + right] += residual[..., n_src - right :].flip(-1) * ramp
    return out
