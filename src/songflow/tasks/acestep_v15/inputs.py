"""Frame arithmetic and masks of the 1.5 tasks (25 latent frames/s at 48 kHz, hop 1920).

The reference always generates at least :data:`MIN_FRAMES` latent frames (5.12 s) and pads what it has with
the silence latent; span boundaries are ``int(seconds * 48000 // 1920)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from songflow.audio.geometry import LatentGeometry
from songflow.errors import AudioError

__all__ = [
    "FRAMES_PER_S",
    "GEOMETRY",
    "HOP_SAMPLES",
    "MIN_FRAMES",
    "SAMPLE_RATE_HZ",
    "frames_for_seconds",
    "generated_frames",
    "pad_with_silence",
    "span_frames",
    "silence_frames",
    "span_mask",
]

SAMPLE_RATE_HZ = 48000
HOP_SAMPLES = 1920
FRAMES_PER_S = SAMPLE_RATE_HZ / HOP_SAMPLES  # 25.0
MIN_FRAMES = 128
#: the 1.5 latent geometry: 1920 samples per frame at 48 kHz, songs up to 600 s
GEOMETRY = LatentGeometry(SAMPLE_RATE_HZ, HOP_SAMPLES, 1, 600.0)
REFERENCE_FRAMES = 750  # 30 s of reference audio, the timbre encoder's fixed length


def frames_for_seconds(seconds: float) -> int:
    """Latent frames of ``seconds`` of audio, truncating: ``int(s * 48000 / 1920)``."""
    return int(seconds * SAMPLE_RATE_HZ / HOP_SAMPLES)


def generated_frames(n_frames: int) -> int:
    """Frames the DiT runs over for ``n_frames`` wanted: at least :data:`MIN_FRAMES` (SPEC §9.7)."""
    return max(MIN_FRAMES, n_frames)


def silence_frames(silence: Tensor, n_frames: int) -> Tensor:
    """The first ``n_frames`` of ``silence [1, Ts, C]``, repeated when the file holds fewer (the reference
    would come up short; the silence latent is near constant, so repeating it stays silence)."""
    if n_frames > silence.shape[1]:
        silence = silence.repeat(1, -(-n_frames // silence.shape[1]), 1)
    return silence[:, :n_frames]


def pad_with_silence(latents: Tensor, silence: Tensor, n_frames: int) -> Tensor:
    """``latents [B, T, C]`` cut or padded to ``n_frames`` with the first frames of ``silence [1, Ts, C]``
    (the reference pads with ``silence[:, :pad]``, from its start)."""
    have = latents.shape[1]
    if have >= n_frames:
        return latents[:, :n_frames]
    fill = silence_frames(silence, n_frames - have).to(latents).expand(latents.shape[0], -1, -1)
    return torch.cat([latents, fill], dim=1)


def span_frames(start_s: float, end_s: float, n_frames: int) -> tuple[int, int]:
    """Frame range ``[a, b)`` of the span ``[start_s, end_s)``, as the reference rounds it, clipped to the
    song; an empty range is an error naming the span."""
    a = int(start_s * SAMPLE_RATE_HZ // HOP_SAMPLES)
    b = min(int(end_s * SAMPLE_RATE_HZ // HOP_SAMPLES), n_frames)
    if not 0 <= a < b:
        raise AudioError(
            f"the span {start_s:g}-{end_s:g} s covers no latent frame of this "
            f"{n_frames / FRAMES_PER_S:.2f} s "
            "source; choose a span inside the source, at least 40 ms long"
        )
    return a, b


def span_mask(a: int, b: int, n_frames: int, batch: int, device: torch.device | str = "cpu") -> Tensor:
    """Bool ``[batch, n_frames]``, True on ``[a, b)``."""
    mask = torch.zeros(batch, n_frames, dtype=torch.bool, device=device)
    mask[:, a:b] = True
    return mask
