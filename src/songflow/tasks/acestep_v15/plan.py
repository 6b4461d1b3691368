"""A 1.5 run as data (:class:`Plan15`) and the one function that executes it over the sampling loop.

Every 1.5 task (text2music, retake, repaint, cover, with or without reference timbre or audio codes) builds
a :class:`Plan15`: the starting latents, the timestep schedule, the DiT conditions (and the ones the cover
strength switches to), the guidance and the repaint re-injection. :func:`run_plan15` turns it into one call
of :func:`songflow.sampling.loop.sample` — the same loop the v1 tasks use.

Shapes: latents ``[B, T, C]``, encoder states ``[B, L, H]``, context latents ``[B, T, 2C]`` (source latents or
5 Hz hints, then the chunk mask), timesteps float32 ``[n + 1]`` from 1 down to 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from songflow.sampling import turbo as v15
from songflow.sampling.guidance import ApgState, guide_v15
from songflow.sampling.loop import sample

__all__ = [
    "Conditioning15",
    "Guidance15",
    "GuidedVelocity15",
    "Plan15",
    "Repaint15Spec",
    "build_context",
    "guided_velocity",
    "run_plan15",
]


@dataclass
class Conditioning15:
    """What the DiT is conditioned on: encoder states ``enc [B, L, H]`` (+ mask), ``context [B, T, 2C]``."""

    enc: Tensor
    enc_mask: Tensor
    context: Tensor


@dataclass
class Guidance15:
    """Classifier-free guidance of base/sft: the scale, APG or ADG, the guided ``t`` interval, and the
    unconditional encoder states (``null_condition_emb`` broadcast to ``enc``'s shape; the same vector
    at every position, so it is broadcast again to each condition's length)."""

    scale: float
    kind: str  # "apg" | "adg"
    interval: tuple[float, float]
    null_enc: Tensor


@dataclass
class Repaint15Spec:
    """Repaint: frames where ``mask [B, T]`` is True are generated; the others are re-injected from
    ``clean_src [B, T, C]`` (noised with the run's initial ``noise``) after each step of the first
    ``injection_frac`` of the run, then crossfaded over ``crossfade_frames`` at the span edges."""

    mask: Tensor
    clean_src: Tensor
    noise: Tensor
    injection_frac: float
    crossfade_frames: int


@dataclass
class Plan15:
    """One 1.5 sampling run. ``after`` (cover strength < 1) replaces ``cond`` from step ``switch_step`` on;
    ``renoise(i)`` gives the SDE noise of step ``i`` (turbo/base SDE only)."""

    x_init: Tensor
    schedule: v15.Schedule15
    cond: Conditioning15
    after: Conditioning15 | None = None
    switch_step: int = 0
    guidance: Guidance15 | None = None
    repaint: Repaint15Spec | None = None
    renoise: Callable[[int], Tensor] | None = None

    @property
    def n_steps(self) -> int:
        return self.schedule.n_steps


def build_context(
    model: Any,
    src_latents: Tensor,
    chunk_mask: Tensor,
    is_cover: Tensor,
    silence_latent: Tensor,
    hints: Tensor | None = None,
) -> Tensor:
    """The DiT's context latents ``[B, T, 2C]``: ``where(is_cover, hints, src)`` then the chunk mask.

    ``hints [B, T, C]`` are the 25 Hz hints of cover rows (e.g. decoded from audio codes); when None and a
    row is a cover, they come from the 5 Hz FSQ round trip of ``src_latents`` (tokenize, detokenize, crop
    to T), as the reference's ``prepare_condition``. ``chunk_mask [B, T, C]`` is 1 where the DiT generates.
    """
    n_frames = src_latents.shape[1]
    if hints is None and bool(is_cover.any()):
        mask = torch.ones(src_latents.shape[:2], dtype=src_latents.dtype, device=src_latents.device)
        quantized, _codes, _mask5 = model.tokenize(src_latents, silence_latent, mask)
        hints = model.detokenize(quantized)[:, :n_frames]
    src = src_latents
    if hints is not None:
        src = torch.where(is_cover.view(-1, 1, 1).bool(), hints[:, :n_frames].to(src.dtype), src_latents)
    return torch.cat([src, chunk_mask.to(src.dtype)], dim=-1)


def padding_mask(enc_mask: Tensor) -> Tensor | None:
    """``enc_mask [B, L]`` as a bool key mask when some row is padded (rows of a batch with prompts of
    different lengths, e.g. the instructions of a stems run), else None: rows without padding attend every
    token as the official model does, and a padded row then gives what it gives alone
    (docs/reference_behaviour.md#r36)."""
    mask = enc_mask.to(torch.bool)
    return None if bool(mask.all()) else mask


GuidedVelocity15 = Callable[[Tensor, Tensor, int, ApgState | None], tuple[Tensor, ApgState | None]]
"""``(x [B, T, C], t_batch [B], i, apg_state) -> (v, new_apg_state)``: a plan's guided velocity at step ``i``
of its schedule, the APG momentum passed in and returned (None without guidance)."""


def guided_velocity(model: Any, plan: Plan15) -> GuidedVelocity15:
    """The guided velocity of the plan, its APG momentum threaded by the caller (:func:`run_plan15` keeps
    one per run; FlowEdit one per branch). The cross-attention keys/values and key mask of each condition
    are computed once per run (the decoder's ``precompute_cross``; identical numbers, one projection per
    run), not per step."""
    guidance = plan.guidance
    prepared: dict[int, tuple[object, Tensor | None]] = {}

    def prepare(cond: Conditioning15) -> tuple[object, Tensor | None]:
        """The condition's cross-attention K/V and key mask for the model's batch, once per run."""
        if id(cond) not in prepared:
            enc, mask = cond.enc, padding_mask(cond.enc_mask)
            if guidance is not None:  # [cond; uncond]: the null states share the rows' mask
                null = guidance.null_enc[:, :1].to(enc.dtype).expand(enc.shape[0], enc.shape[1], -1)
                enc = torch.cat([enc, null], dim=0)  # per condition: a cover's 'after' has its own length
                mask = None if mask is None else torch.cat([mask, mask])
            prepared[id(cond)] = (model.precompute_cross(enc), mask)
        return prepared[id(cond)]

    def velocity(
        x: Tensor, t_batch: Tensor, i: int, state: ApgState | None
    ) -> tuple[Tensor, ApgState | None]:
        cond = plan.after if (plan.after is not None and i >= plan.switch_step) else plan.cond
        t_batch = t_batch.to(x.dtype)
        cross, mask = prepare(cond)
        if guidance is None:
            v = model.velocity(x, t_batch, cond.context, None, cross=cross, enc_mask=mask)
            return v, state
        v2 = model.velocity(
            torch.cat([x, x]),
            torch.cat([t_batch, t_batch]),
            torch.cat([cond.context, cond.context]),
            None,
            cross=cross,
            enc_mask=mask,
        )
        v_cond, v_uncond = v2.chunk(2)
        return guide_v15(
            v_cond,
            v_uncond,
            x,
            plan.schedule.sigmas[i],
            guidance.scale,
            state,
            kind=guidance.kind,  # type: ignore[arg-type]
            interval=guidance.interval,
        )

    return velocity


def _velocity_fn(model: Any, plan: Plan15) -> Callable[[Tensor, Tensor, int], Tensor]:
    """:func:`guided_velocity` for the sampling loop, one APG momentum threaded through the run."""
    guided = guided_velocity(model, plan)
    state = ApgState() if plan.guidance is not None else None

    def velocity(x: Tensor, t_batch: Tensor, i: int) -> Tensor:
        nonlocal state
        v, state = guided(x, t_batch, i, state)
        return v

    return velocity


def run_plan15(
    model: Any, plan: Plan15, callback: Callable[[int, Tensor, Tensor], None] | None = None
) -> Tensor:
    """Execute ``plan`` and return the final latents ``[B, T, C]``."""
    schedule, repaint = plan.schedule, plan.repaint
    project = None
    if repaint is not None:
        project = v15.repaint_injection(
            schedule, repaint.mask, repaint.clean_src, repaint.noise, injection_ratio=repaint.injection_frac
        )
    with torch.inference_mode():
        x = sample(
            _velocity_fn(model, plan),
            plan.x_init,
            schedule.sigmas,
            step=schedule.stepper(),
            noise=plan.renoise,
            project=project,
            callback=callback,
        )
        if repaint is not None and repaint.crossfade_frames > 0:
            x = v15.repaint_crossfade(x, repaint.clean_src, repaint.mask, repaint.crossfade_frames)
    return x
