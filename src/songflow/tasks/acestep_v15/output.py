"""From decoded audio to what a 1.5 request returns: anti-clipping, the repaint splice, the exact length.

1. Anti-clipping, as the reference: an item whose peak exceeds 1 is divided by its peak (others untouched).
2. Repaint (``keep_source_samples``): outside the span the result is the source's own samples; a linear
   crossfade of ``wav_crossfade_s`` (the reference: 25 ms) runs just outside each span edge, from the
   source into the decoded audio and back (weights ``linspace(0, 1, n + 2)[1:-1]``, as the reference).
3. The length: the requested duration or the source's length (``legacy_output_length`` keeps the
   reference's whole generated length, at least 5.12 s).
4. Optionally (``normalization_db``) the peak normalisation the official top-level ``generate_music`` does.

Stems (task "stems"): :func:`stem_residual_db` measures how far the extracted stems are from summing to
the mix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from songflow.tasks.acestep_v15.inputs import HOP_SAMPLES, SAMPLE_RATE_HZ

__all__ = ["anti_clip", "finish_audio", "peak_normalize", "splice_source", "stem_residual_db"]


def anti_clip(audio: Tensor) -> Tensor:
    """``audio [B, 2, N]`` with every item whose peak exceeds 1 scaled down to peak 1."""
    peak = audio.abs().amax(dim=(1, 2), keepdim=True)
    if bool((peak > 1.0).any()):
        audio = audio / peak.clamp(min=1.0)
    return audio


def splice_source(audio: Tensor, source: Tensor, span_frames: tuple[int, int], fade_samples: int) -> Tensor:
    """``audio [B, 2, N]`` with the source ``[2, Ns]`` outside the span ``[a, b)`` latent frames, linear
    crossfades of ``fade_samples`` just outside each edge; past the source's end the audio is kept."""
    out = audio.clone()
    a, b = span_frames[0] * HOP_SAMPLES, span_frames[1] * HOP_SAMPLES
    n_src = min(source.shape[-1], out.shape[-1])
    src = source[:, :n_src].to(out)
    keep = torch.ones(n_src, dtype=torch.bool)
    keep[a:b] = False
    fade = torch.linspace(0, 1, fade_samples + 2)[1:-1]
    start = max(0, a - fade_samples)
    if a > start:  # into the span: weight of the decoded audio rises
        w = fade[fade_samples - (a - start) :]
        out[:, :, start:a] = src[:, start:a] * (1 - w) + out[:, :, start:a] * w
        keep[start:a] = False
    stop = min(n_src, b + fade_samples)
    if stop > b:  # out of the span: weight of the decoded audio falls
        w = fade.flip(0)[: stop - b]
        out[:, :, b:stop] = src[:, b:stop] * (1 - w) + out[:, :, b:stop] * w
        keep[b:stop] = False
    out[:, :, :n_src][:, :, keep] = src[:, keep].expand(out.shape[0], -1, -1)
    return out


def finish_audio(
    audio: Tensor,
    *,
    duration_s: float,
    legacy_length: bool,
    source: Tensor | None = None,
    span_frames: tuple[int, int] | None = None,
    fade_s: float = 0.025,
) -> Tensor:
    """The returned audio ``[B, 2, N]`` of a decoded run (module docstring, steps 1-3)."""
    audio = anti_clip(audio)
    if source is not None and span_frames is not None:
        audio = splice_source(audio, source, span_frames, int(round(fade_s * SAMPLE_RATE_HZ)))
    if not legacy_length:
        audio = audio[..., : int(round(duration_s * SAMPLE_RATE_HZ))]
    return audio


def peak_normalize(audio: Tensor, target_db: float) -> Tensor:
    """``audio [B, 2, N]`` with each item scaled so its peak is ``target_db`` dBFS (official
    ``normalize_audio``: items quieter than 1e-6 are left alone)."""
    peak = audio.abs().amax(dim=(1, 2), keepdim=True)
    gain = torch.where(peak < 1e-6, torch.ones_like(peak), 10 ** (target_db / 20.0) / peak)
    return audio * gain


def stem_residual_db(mix: Tensor, stems: Tensor) -> float:
    """``20 log10(||mix - sum(stems)|| / ||mix||)`` in dB over the mix's length (L2 norms over both
    channels, float64): ``mix [2, N]``, ``stems [S, 2, M]`` at the mix's rate, cut to ``N`` samples (or
    zero-padded: missing samples count as residual). ``-inf`` when the stems sum to the mix exactly; 0 dB
    when their sum is silent. A silent mix has no residual level: ValueError."""
    if mix.dim() != 2 or stems.dim() != 3 or stems.shape[1] != mix.shape[0]:
        shapes = f"{list(mix.shape)}, {list(stems.shape)}"
        raise ValueError(f"expected mix [2, N] and stems [S, 2, M], got {shapes}")
    n = mix.shape[-1]
    total = stems.to(torch.float64).sum(dim=0)[:, :n]
    if total.shape[-1] < n:
        total = torch.nn.functional.pad(total, (0, n - total.shape[-1]))
    reference = mix.to(torch.float64)
    mix_norm = float(torch.linalg.vector_norm(reference))
    if mix_norm == 0.0:
        raise ValueError("the mix is silent: a stem residual needs a non-silent mix")
    residual = float(torch.linalg.vector_norm(reference - total))
    return -math.inf if residual == 0.0 else 20.0 * math.log10(residual / mix_norm)
