"""Latent geometry: the one place that knows 44100 Hz, hop 512 and the 8x time downsampling."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LatentGeometry:
    """How audio time maps to latent frames.

    One latent frame covers ``downsample`` mel frames of ``hop_samples`` samples at ``sample_rate_hz``:
    4096 samples = 92.9 ms for the official codec (10.7666 frames per second).
    """

    sample_rate_hz: int = 44100
    hop_samples: int = 512
    downsample: int = 8
    max_duration_s: float = 240.0

    @property
    def samples_per_frame(self) -> int:
        return self.hop_samples * self.downsample

    @property
    def frames_per_s(self) -> float:
        return self.sample_rate_hz / self.samples_per_frame

    @property
    def max_frames(self) -> int:
        """Largest latent length the official pipeline generates (2583 for 240 s)."""
        return self.frames_from_seconds(self.max_duration_s)

    def frames_from_seconds(self, seconds: float) -> int:
        """Latent frames for a duration, truncating as the official pipeline does: int(s * 44100/4096)."""
        return int(seconds * self.sample_rate_hz / self.samples_per_frame)

    def seconds_from_frames(self, n_frames: int) -> float:
        return n_frames * self.samples_per_frame / self.sample_rate_hz

    def samples_from_frames(self, n_frames: int) -> int:
        """Waveform samples at ``sample_rate_hz`` that ``n_frames`` latent frames decode to."""
        return n_frames * self.samples_per_frame

    def padded_samples(self, n_samples: int) -> int:
        """``n_samples`` rounded up to a whole number of latent frames (the codec's input padding)."""
        return math.ceil(n_samples / self.samples_per_frame) * self.samples_per_frame


OFFICIAL_GEOMETRY = LatentGeometry()
