"""retake: a variation of a text2music song from mixed noise (SPEC §7.6, golden README quirk 9)."""

from __future__ import annotations

from torch import Tensor

from songflow.errors import ConfigError
from songflow.sampling.noise import trig_mix
from songflow.tasks.plan import Plan
from songflow.tasks.setup import TaskContext
from songflow.tasks.text2music import build_text2music_plan

__all__ = ["build_retake_plan"]


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
    if retake_noise.shape != noise.shape:
        raise ConfigError(
            f"noise {tuple(noise.shape)} and retake_noise {tuple(retake_noise.shape)} must have one shape"
        )
    return build_text2music_plan(ctx, trig_mix(noise, retake_noise, variance_frac))
