"""text2music: sample a song's latents from noise under the tags + lyrics conditions."""

from __future__ import annotations

from torch import Tensor

from songflow.tasks.plan import Plan
from songflow.tasks.setup import TaskContext, sigmas_for, step_noise_for, stepper_for


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
