"""Sampling: schedules, pure steppers, guidance combinators, the one sampling loop, and noise.

Layer 3 of songflow: imports torch (and ``songflow.errors``) only, never the models. Time convention:
flow time ``sigma`` in [0, 1], ``x_sigma = (1 - sigma) * x0 + sigma * noise``, sigma 1 = noise; the model
sees ``t = 1000 * sigma``.
"""

from songflow.sampling.guidance import (
    GUIDANCE_TYPES,
    ApgState,
    apg,
    cfg,
    cfg_zero_star,
    double_condition,
    guidance_interval_bounds,
    guidance_scale_at,
    validate_guidance_name,
    weighted_terms,
)
from songflow.sampling.loop import GuidedVelocityFn, sample
from songflow.sampling.noise import (
    make_generators,
    parse_seeds,
    randn_per_sample,
    shared_generator_noise,
    step_noise_fn,
    trig_mix,
)
from songflow.sampling.schedules import (
    N_TRAIN_TIMESTEPS,
    audio2audio_sigmas,
    flow_sigmas,
    legacy_train_sigmas,
    oss_sigmas,
    shift_sigma,
    sigmas_to_timesteps,
    truncate,
)
from songflow.sampling.steppers import (
    SAMPLERS,
    OmegaMeanOver,
    Sampler,
    Stepper,
    VelocityFn,
    count_evals,
    euler_step,
    evals_per_step,
    heun_step,
    make_stepper,
    omega_factor,
    omega_rescale,
    pingpong_step,
    uses_noise,
)

__all__ = [
    "GUIDANCE_TYPES",
    "N_TRAIN_TIMESTEPS",
    "SAMPLERS",
    "ApgState",
    "GuidedVelocityFn",
    "OmegaMeanOver",
    "Sampler",
    "Stepper",
    "VelocityFn",
    "apg",
    "audio2audio_sigmas",
    "cfg",
    "cfg_zero_star",
    "count_evals",
    "double_condition",
    "euler_step",
    "evals_per_step",
    "flow_sigmas",
    "guidance_interval_bounds",
    "guidance_scale_at",
    "heun_step",
    "legacy_train_sigmas",
    "make_generators",
    "make_stepper",
    "omega_factor",
    "omega_rescale",
    "oss_sigmas",
    "parse_seeds",
    "pingpong_step",
    "randn_per_sample",
    "sample",
    "shared_generator_noise",
    "shift_sigma",
    "sigmas_to_timesteps",
    "step_noise_fn",
    "trig_mix",
    "truncate",
    "uses_noise",
    "validate_guidance_name",
    "weighted_terms",
]
