"""audio2audio: re-generate a reference song under new tags/lyrics, keeping ``strength_frac`` of it.

SDEdit over the whole song (docs/reference_behaviour.md#r18): noise the reference to
``noise_level`` and sample the shorter schedule ``audio2audio_sigmas`` builds from there. With
``legacy_double_shift`` (official) the reference is noised to s(1 - strength) while the schedule starts at
s(s(1 - strength)) (strength 0.5: noise level 0.75, first model sigma 0.9); without it both agree.
"""

from __future__ import annotations

from torch import Tensor

from songflow.errors import ConfigError
from songflow.requests import AudioToAudio
from songflow.sampling.schedules import audio2audio_sigmas
from songflow.tasks.output import finish_source_length
from songflow.tasks.plan import Plan, run_plan
from songflow.tasks.setup import TaskContext, step_noise_for, stepper_for
from songflow.tasks.spec import ProgressFn, TaskHost, TaskSpec, step_progress

__all__ = ["SPEC", "build_audio2audio_plan", "run_audio2audio"]


def build_audio2audio_plan(
    ctx: TaskContext, *, ref_latents: Tensor, strength_frac: float, noise: Tensor
) -> Plan:
    """Plan for audio2audio.

    Args:
        ref_latents: ``[1 or B, 8, 16, L]`` reference latents (a batch of 1 is shared by every item).
        strength_frac: in [0, 1], how much of the reference is kept (official ``ref_audio_strength``):
            the run makes ``int((1 - strength) * N)`` steps; 1 returns the reference exactly (no step),
            0 is text2music from ``noise``.
        noise: ``[B, 8, 16, L]`` N(0, 1) from the main seeds.

    ``x_init = (1 - noise_level) * ref + noise_level * noise``; the chosen sampler (with its omega and
    ping-pong noise from ``ctx.generators``) runs the shorter schedule, and the guidance interval is
    computed on its N' steps, as officially. Raises :class:`ConfigError` for a strength outside [0, 1].
    """
    if isinstance(strength_frac, bool) or not isinstance(strength_frac, int | float):
        raise ConfigError(f"strength_frac must be a number in [0, 1], got {strength_frac!r}")
    if ref_latents.ndim != 4 or noise.ndim != 4:
        raise ConfigError(
            f"ref_latents {tuple(ref_latents.shape)} and noise {tuple(noise.shape)} must be [B, 8, 16, L]"
        )
    if ref_latents.shape[0] not in (1, noise.shape[0]) or ref_latents.shape[1:] != noise.shape[1:]:
        raise ConfigError(
            f"ref_latents {tuple(ref_latents.shape)} and noise {tuple(noise.shape)} must have the same "
            "[8, 16, L] and a batch of 1 or the noise's batch"
        )
    p = ctx.params
    sigmas, noise_level = audio2audio_sigmas(
        p.steps, float(strength_frac), p.shift, legacy_double_shift=p.legacy_double_shift
    )
    noise = noise.float()
    x_init = (1.0 - noise_level) * ref_latents.float() + noise_level * noise
    return Plan(
        x_init=x_init,
        sigmas=sigmas,
        velocity=ctx.velocity(len(sigmas) - 1),
        step=stepper_for(p),
        noise=step_noise_for(p, ctx.generators, tuple(noise.shape[1:])),
    )


def run_audio2audio(
    host: TaskHost, request: AudioToAudio, ctx: TaskContext, progress: ProgressFn | None
) -> Tensor:
    """Latents of an audio2audio request: the reference file restyled (as long as the reference)."""
    ref = host.load_source(request.reference_path, what="reference audio")
    plan = build_audio2audio_plan(
        ctx,
        ref_latents=ref,
        strength_frac=request.strength_frac,
        noise=host.noise(ctx.generators, ref.shape[-1]),
    )
    return run_plan(plan, callback=step_progress(progress, len(plan.sigmas) - 1))


SPEC = TaskSpec("audio2audio", AudioToAudio, run_audio2audio, finish=finish_source_length("reference_path"))
