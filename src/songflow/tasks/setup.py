"""Turn :class:`~songflow.requests.GenerationParams` into sampling pieces shared by every task:
sigma schedule, stepper, guidance spec, and per-step noise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from songflow.requests import GenerationParams
from songflow.sampling.noise import step_noise_fn
from songflow.sampling.schedules import flow_sigmas, oss_sigmas
from songflow.sampling.steppers import Stepper, make_stepper
from songflow.tasks.plan import ConditionSet, DiffusionModel, GuidanceSpec, GuidedVelocityFn, build_velocity


@dataclass
class TaskContext:
    """What every task builder receives besides its own inputs.

    ``generators``: one CPU generator per batch item for the main seeds (already advanced past any
    initial noise drawn from them); ``retake_generators`` likewise for retake seeds (or None).
    """

    model: DiffusionModel
    conds: ConditionSet
    params: GenerationParams
    generators: list[torch.Generator] = field(default_factory=list)
    retake_generators: list[torch.Generator] | None = None
    model_dtype: torch.dtype = torch.float32
    batch_passes: bool = True
    oss_dtype: torch.dtype = torch.float32

    def velocity(self, n_steps: int, conds: ConditionSet | None = None) -> GuidedVelocityFn:
        """The guided velocity for a run of ``n_steps`` sampler steps (interval computed on that N)."""
        return build_velocity(
            self.model,
            conds or self.conds,
            guidance_for(self.params, n_steps),
            model_dtype=self.model_dtype,
            batch_passes=self.batch_passes,
        )


def sigmas_for(params: GenerationParams, *, oss_dtype: torch.dtype = torch.float32) -> Tensor:
    """The sigma schedule [n+1] of a run: ``step_indices`` (oss_steps) if given, else ``steps`` steps."""
    if params.step_indices:
        return oss_sigmas(
            list(params.step_indices),
            params.shift,
            legacy_double_shift=params.legacy_double_shift,
            dtype=oss_dtype,
            sampler=params.sampler,
        )
    return flow_sigmas(params.steps, params.shift, legacy_double_shift=params.legacy_double_shift)


def stepper_for(params: GenerationParams) -> Stepper:
    return make_stepper(
        params.sampler, omega_scale=params.omega_scale, omega_mean_over=params.omega_mean_over
    )


def guidance_for(params: GenerationParams, n_steps: int) -> GuidanceSpec:
    """Guidance settings; ``n_steps`` is the number of sampler steps of the run (N).

    With Heun, the reference counts the interval over its 2N-1 evaluations using N
    (``legacy_heun_interval``); by default both evaluations of step i are guided like step i.
    """
    heun_per_step = params.sampler == "heun" and not params.legacy_heun_interval
    return GuidanceSpec(
        kind=params.guidance,
        scale=params.guidance_scale,
        interval=params.guidance_interval,
        decay=params.guidance_interval_decay,
        min_scale=params.min_guidance_scale,
        scale_text=params.guidance_scale_text,
        scale_lyric=params.guidance_scale_lyric,
        n_steps=n_steps,
        step_of_eval=(lambda k: k // 2) if heun_per_step else (lambda k: k),
    )


def step_noise_for(
    params: GenerationParams, generators: list[torch.Generator], item_shape: tuple[int, ...]
) -> Callable[[int], Tensor] | None:
    """Per-step noise for the ping-pong sampler, drawn on the CPU in float32.

    Each batch item draws from its own generator (continuing after its initial noise), so a batch equals
    its singles; ``legacy_batch_noise`` draws the whole batch from the first generator, as the reference.
    """
    if params.sampler != "pingpong":
        return None
    return step_noise_fn(item_shape, generators, per_sample=not params.legacy_batch_noise)
