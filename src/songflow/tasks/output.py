"""From decoded audio to a task's output: exact lengths (docs/reference_behaviour.md#r22).

The latent frame count of every task stays the reference's (``int(s · 44100 / 4096)`` for a duration,
``ceil`` of the padded source for a source), so the decoded audio is a whole number of frames long. The
finishers here cut it (or pad it with silence at the end) to the length that was asked for:
``round(duration_s · rate)`` samples for text2music and retake, the source's own length at the output
rate for repaint, audio2audio and edit. ``GenerationParams.legacy_output_length`` skips them (the
pipeline then returns the decoded audio as the reference does).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from songflow.audio.splice import fit_length, seconds_to_samples
from songflow.tasks.spec import FinishFn, TaskHost

__all__ = ["finish_duration", "finish_source_length"]


def finish_duration(host: TaskHost, request: Any, audio: Tensor, latents: Tensor) -> Tensor:
    """``audio`` at exactly ``round(request.duration_s · rate)`` samples."""
    return fit_length(audio, seconds_to_samples(request.duration_s, host.output_sample_rate_hz))


def finish_source_length(path_field: str) -> FinishFn:
    """A finisher giving ``audio`` the length of the source named by ``request.<path_field>``."""

    def finish(host: TaskHost, request: Any, audio: Tensor, latents: Tensor) -> Tensor:
        return fit_length(audio, host.source_audio(getattr(request, path_field)).shape[-1])

    return finish
