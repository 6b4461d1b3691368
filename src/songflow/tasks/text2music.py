"""text2music: sample a song's latents from noise under the tags + lyrics conditions."""

from __future__ import annotations

import torch
from torch import Tensor

from songflow.requests import GenerationParams
from songflow.tasks.plan import ConditionSet, DiffusionModel, Plan, build_velocity
from songflow.tasks.setup import guidance_for, sigmas_for, step_noise_for, stepper_for


def build_text2music_plan(
    model: DiffusionModel,
    conds: ConditionSet,
    params: GenerationParams,
    initial_noise: Tensor,
    generators: list[torch.Generator],
    *,
    model_dtype: torch.dtype = torch.float32,
    batch_passes: bool = True,
    oss_dtype: torch.dtype = torch.float32,
) -> Plan:
    """Plan for text2music: x_init = noise [B,8,16,L], the full schedule, guided velocity.

    ``generators`` (one per batch item, already advanced past ``initial_noise``) feed ping-pong noise.
    """
    sigmas = sigmas_for(params, oss_dtype=oss_dtype)
    n_steps = len(sigmas) - 1
    velocity = build_velocity(
        model, conds, guidance_for(params, n_steps), model_dtype=model_dtype, batch_passes=batch_passes
    )
    return Plan(
        x_init=initial_noise.float(),
        sigmas=sigmas,
        velocity=velocity,
        step=stepper_for(params),
        noise=step_noise_for(params, generators, tuple(initial_noise.shape[1:])),
    )
