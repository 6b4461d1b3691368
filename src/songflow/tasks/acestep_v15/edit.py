"""FlowEdit on ACE-Step 1.5: move a song from its caption/lyrics to target ones, keeping the rest.

The algorithm is v1's (:mod:`songflow.tasks.edit`, Kulikov et al. 2024) on the 1.5 schedule and DiT. With
``x_src`` the source latents ``[B, T, C]``, the run's schedule ``t_0 > ... > t_N = 0`` (turbo: its 8-entry
table or the snapped custom timesteps; base/sft: their steps and shift) and ``lo = int(N * n_min_frac)``,
``hi = int(N * n_max_frac)``:

1. Edit phase, steps ``lo <= i < hi`` (steps before ``lo`` are skipped). The state ``z_edit`` starts at
   ``x_src`` and follows the Euler step of ``dV = mean_k [V_tar(z_src_k + (z_edit - x_src)) -
   V_src(z_src_k)]`` with ``z_src_k = t_i * eps_k + (1 - t_i) * x_src`` (``n_avg`` fresh draws ``eps_k``).
   ``V_src`` / ``V_tar`` are the run's guided DiT velocities under the source / target condition (turbo:
   none; base/sft: the preset's APG or ADG, each branch with its own momentum, so identical conditions
   give ``dV == 0`` bit for bit and the source comes back exactly).
2. Sampling phase, steps ``i >= hi``: ``x_tar = (t_hi * eps + (1 - t_hi) * x_src) + (z_edit - x_src)``,
   then the ordinary 1.5 run from ``t_hi`` under the target condition (its ODE/SDE stepper, its guidance
   with a fresh momentum). The result is ``x_tar`` if that phase ran, else ``z_edit``.

Both phases run on :func:`songflow.sampling.loop.sample`: phase 1 with ``dV`` as its velocity and the 1.5
ODE step, phase 2 as :func:`~songflow.tasks.acestep_v15.plan.run_plan15` of the target plan. Every draw
(``eps_k``, the phase-2 start noise, the SDE re-noise) comes in turn from one per-item stream seeded by the
request's seeds, so a run replays exactly and a batch row equals its single run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from songflow.sampling import turbo as v15
from songflow.sampling.guidance import ApgState
from songflow.sampling.loop import sample
from songflow.tasks.acestep_v15.plan import GuidedVelocity15, Plan15, guided_velocity, run_plan15
from songflow.tasks.edit import mean_step_state

__all__ = ["EditPlan15", "run_edit15", "schedule_part"]

StepCallback = Callable[[int, Tensor, Tensor], None]


@dataclass
class EditPlan15:
    """One FlowEdit run. ``source`` / ``target``: the plans of the two conditions over the run's whole
    schedule (their ``cond`` and ``guidance``; ``target.renoise`` is phase 2's SDE noise, ``x_init`` is
    unused); ``edit_steps``: ``(lo, hi)``; ``noise()``: the next N(0, 1) draw ``[B, T, C]``."""

    x_src: Tensor
    source: Plan15
    target: Plan15
    edit_steps: tuple[int, int]
    n_avg: int
    noise: Callable[[], Tensor]

    @property
    def n_steps(self) -> int:
        """Steps of the whole schedule (the callback's step index counts on it)."""
        return self.target.n_steps


def schedule_part(schedule: v15.Schedule15, start: int, stop: int, method: str) -> v15.Schedule15:
    """Steps ``start .. stop - 1`` of ``schedule`` as a schedule of its own, with the whole schedule's noise
    levels (its ``sigmas`` run from ``t_start`` to ``t_stop``)."""
    return v15.Schedule15(
        schedule.variant,
        method,  # type: ignore[arg-type]
        schedule.sigmas[start : stop + 1],
        schedule.values[start:stop],
        schedule.levels[start:stop],
    )


@dataclass
class _EditField:
    """The FlowEdit velocity ``dV`` of ``z_edit`` (phase 1) for the sampling loop."""

    source: GuidedVelocity15
    target: GuidedVelocity15
    x_src: Tensor
    sigmas: Tensor  # the whole schedule [N + 1]
    first_step: int
    n_avg: int
    noise: Callable[[], Tensor]
    guided: bool
    states: list[ApgState | None] = field(init=False)  # the [source, target] APG momentum

    def __post_init__(self) -> None:
        self.states = [ApgState() if self.guided else None for _ in range(2)]

    def __call__(self, z_edit: Tensor, t_batch: Tensor, eval_index: int) -> Tensor:
        step = self.first_step + eval_index  # the ODE step: one evaluation per step
        level = float(self.sigmas[step])
        offset = z_edit - self.x_src  # exactly 0 while nothing was edited
        delta = torch.zeros_like(z_edit)
        drawn: tuple[list[ApgState | None], list[ApgState | None]] = ([], [])
        for _ in range(self.n_avg):
            z_src = v15.renoise(self.x_src, level, self.noise().to(self.x_src))
            v_src, s_src = self.source(z_src, t_batch, step, self.states[0])
            v_tar, s_tar = self.target(z_src + offset, t_batch, step, self.states[1])
            drawn[0].append(s_src)
            drawn[1].append(s_tar)
            delta = delta + (1.0 / self.n_avg) * (v_tar - v_src)
        # every draw started from the branch's momentum at the step start; the step leaves their mean
        self.states = [mean_step_state(list(d), s) for d, s in zip(drawn, self.states, strict=True)]
        return delta


def run_edit15(model: Any, plan: EditPlan15, callback: StepCallback | None = None) -> Tensor:
    """Execute a FlowEdit plan; returns the edited latents ``[B, T, C]``. ``callback(i, t_i, x)`` follows
    every executed step, ``i`` indexing the whole schedule (``x`` is ``z_edit``, then ``x_tar``)."""
    lo, hi = plan.edit_steps
    schedule = plan.target.schedule

    def shifted(offset: int) -> StepCallback | None:
        return None if callback is None else (lambda i, t, x: callback(offset + i, t, x))

    x_src = plan.x_src
    edit_field = _EditField(
        guided_velocity(model, plan.source),
        guided_velocity(model, plan.target),
        x_src,
        schedule.sigmas,
        lo,
        plan.n_avg,
        plan.noise,
        plan.target.guidance is not None,
    )
    with torch.inference_mode():
        part = schedule_part(schedule, lo, hi, "ode")
        z_edit = sample(edit_field, x_src.clone(), part.sigmas, step=part.stepper(), callback=shifted(lo))
        if hi == schedule.n_steps:
            return z_edit
        level = float(schedule.sigmas[hi])
        x_tar = v15.renoise(x_src, level, plan.noise().to(x_src)) + (z_edit - x_src)
    tail = schedule_part(schedule, hi, schedule.n_steps, schedule.method)
    return run_plan15(model, replace(plan.target, x_init=x_tar, schedule=tail), shifted(hi))
