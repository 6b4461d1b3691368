"""text2music: sample a song's latents from noise under the tags + lyrics conditions."""

from __future__ import annotations

import torch
from torch import Tensor

from songflow.requests import Text2Music
from songflow.tasks.output import finish_duration
from songflow.tasks.plan import Plan, run_plan
from songflow.tasks.setup import TaskContext, sigmas_for, step_noise_for, stepper_for
from songflow.tasks.spec import ProgressFn, TaskHost, TaskSpec, step_progress


def build_text2music_plan(ctx: TaskContext, initial_noise: Tensor) -> Plan:
    """Plan for text2music: x_init = noise [B,8,16,L], the full schedule, guided velocity.

    ``ctx.generators`` (one per batch item, already advanced past ``initial_noise``) feed ping-pong noise.
    """
    sigmas = sigmas_for(ctx.params, oss_dtype=ctx.oss_dtype)
    return Plan(
        x_init=initial_noise.float(),
        sigmas=sigmas,
        velocity=ctx.velocity(len(sigmas) - 1),
        step=stepper_for(ctx.params),
        noise=step_noise_for(ctx.params, ctx.generators, tuple(initial_noise.shape[1:])),
    )


def text2music_noise(
    host: TaskHost, request: Text2Music, generators: list[torch.Generator], n_frames: int
) -> Tensor:
    """The initial noise of a text2music run: one draw per seed generator."""
    return host.noise(generators, n_frames)


def run_text2music(
    host: TaskHost, request: Text2Music, ctx: TaskContext, progress: ProgressFn | None
) -> Tensor:
    """Latents of a text2music request (``duration_s`` -> frames as the official pipeline truncates)."""
    n_frames = host.geometry.frames_from_seconds(request.duration_s)
    return run_initial_noise(ctx, text2music_noise(host, request, ctx.generators, n_frames), progress)


def run_initial_noise(ctx: TaskContext, noise: Tensor, progress: ProgressFn | None) -> Tensor:
    """Sample a text2music plan from ``noise`` (also one ``generate_many`` batch of several requests)."""
    plan = build_text2music_plan(ctx, noise)
    return run_plan(plan, callback=step_progress(progress, len(plan.sigmas) - 1))


SPEC = TaskSpec(
    "text2music", Text2Music, run_text2music, initial_noise=text2music_noise, finish=finish_duration
)
