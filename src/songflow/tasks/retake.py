"""retake: a variation of a text2music song from mixed noise (docs/reference_behaviour.md#r14)."""

from __future__ import annotations

import torch
from torch import Tensor

from songflow.errors import ConfigError
from songflow.requests import Retake
from songflow.sampling.noise import make_generators, trig_mix
from songflow.tasks.output import finish_duration
from songflow.tasks.plan import Plan
from songflow.tasks.setup import TaskContext
from songflow.tasks.spec import ProgressFn, TaskHost, TaskSpec
from songflow.tasks.text2music import build_text2music_plan, run_initial_noise

__all__ = ["SPEC", "build_retake_plan", "retake_noise", "run_retake"]


def build_retake_plan(ctx: TaskContext, *, noise: Tensor, retake_noise: Tensor, variance_frac: float) -> Plan:
    """Plan for retake: text2music started from ``cos(θ)·noise + sin(θ)·retake_noise``, θ = variance·π/2.

    Args:
        noise: ``[B, 8, 16, L]`` the original song's initial noise (its seeds).
        retake_noise: ``[B, 8, 16, L]`` noise from the retake seeds.
        variance_frac: in [0, 1]; 0 reproduces the original run exactly, 1 is (up to cos(π/2) rounding,
            ~4e-8) a fresh song from the retake seeds. The mix keeps unit variance.

    Otherwise a plain text2music run (full schedule, chosen sampler, guidance on N), as the official
    pipeline's retake (a repaint window covering the whole song, which it does not treat as repaint).
    """
    return build_text2music_plan(ctx, _mixed(noise, retake_noise, variance_frac))


def retake_noise(host: TaskHost, request: Retake, generators: list[torch.Generator], n_frames: int) -> Tensor:
    """The initial noise of a retake: the main seeds' noise mixed with the retake seeds' noise."""
    assert request.retake_seeds is not None  # filled in by the pipeline
    noise = host.noise(generators, n_frames)
    retake = host.noise(make_generators(list(request.retake_seeds)), n_frames)
    return _mixed(noise, retake, request.variance_frac)


def _mixed(noise: Tensor, retake_noise: Tensor, variance_frac: float) -> Tensor:
    if retake_noise.shape != noise.shape:
        raise ConfigError(
            f"noise {tuple(noise.shape)} and retake_noise {tuple(retake_noise.shape)} must have one shape"
        )
    return trig_mix(noise, retake_noise, variance_frac)


def run_retake(host: TaskHost, request: Retake, ctx: TaskContext, progress: ProgressFn | None) -> Tensor:
    """Latents of a retake request: text2music from the mixed noise of both seed sets."""
    assert ctx.retake_generators is not None
    n_frames = host.geometry.frames_from_seconds(request.duration_s)
    noise = host.noise(ctx.generators, n_frames)
    mixed = _mixed(noise, host.noise(ctx.retake_generators, n_frames), request.variance_frac)
    return run_initial_noise(ctx, mixed, progress)


SPEC = TaskSpec("retake", Retake, run_retake, initial_noise=retake_noise, finish=finish_duration)
