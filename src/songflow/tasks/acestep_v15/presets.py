"""Per-checkpoint presets of the 1.5 family and the settings a checkpoint cannot use.

Turbo checkpoints are step- and guidance-distilled: 8 steps from a fixed table (shift 1, 2 or 3), no CFG.
Base and SFT run a plain schedule (50 steps, shift 1) with APG at scale 7, as the official UI sets them.
:func:`resolve_settings` applies the preset to a request's :class:`~songflow.requests_v15.Params15` and
refuses, with what to use instead, a setting the checkpoint would silently ignore.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from songflow.errors import ConfigError
from songflow.requests_v15 import Params15
from songflow.sampling import turbo as v15

__all__ = ["PRESETS", "Preset15", "Settings15", "resolve_settings"]


@dataclass(frozen=True)
class Preset15:
    """The defaults of one checkpoint variant (shown in the sidecar and ``songflow info``)."""

    steps: int
    shift: float
    guidance_scale: float  # 1.0 = no guidance
    tasks: tuple[str, ...]


_TURBO_TASKS = ("text2music", "retake", "repaint", "cover", "extend", "edit")
_BASE_TASKS = (*_TURBO_TASKS, "extract", "stems", "lego", "complete")  # + official TASK_TYPES_BASE
PRESETS = {
    "turbo": Preset15(steps=8, shift=3.0, guidance_scale=1.0, tasks=_TURBO_TASKS),
    "base": Preset15(steps=50, shift=1.0, guidance_scale=7.0, tasks=_BASE_TASKS),
    "sft": Preset15(steps=50, shift=1.0, guidance_scale=7.0, tasks=_BASE_TASKS),
}


@dataclass(frozen=True)
class Settings15:
    """Resolved settings of one run: the schedule (``Schedule15``: sigmas ending at 0, its stepper and
    noise levels), the guidance scale (1.0 = none) and the values the sidecar records."""

    schedule: v15.Schedule15
    guidance_scale: float
    steps: int
    shift: float

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0

    def applied_to(self, params: Params15) -> Params15:
        """``params`` with the preset's values written in (steps unless custom timesteps, shift, guidance
        scale): the same run, spelled out for the sidecar."""
        steps = params.steps if params.timesteps else self.steps
        return replace(params, steps=steps, shift=self.shift, guidance_scale=self.guidance_scale)


def _turbo(params: Params15, preset: Preset15) -> Settings15:
    if params.guidance_scale is not None and params.guidance_scale > 1.0:
        raise ConfigError(
            f"guidance_scale {params.guidance_scale:g} does not apply to a turbo checkpoint (it is "
            "guidance-distilled); leave guidance_scale out, or load a base/sft checkpoint for CFG"
        )
    if params.steps is not None and params.steps != preset.steps and not params.timesteps:
        raise ConfigError(
            f"a turbo checkpoint always runs {preset.steps} steps (got steps={params.steps}); give "
            "params.timesteps (up to 20 values) for another schedule, or use a base/sft checkpoint"
        )
    shift = preset.shift if params.shift is None else params.shift
    if not params.timesteps and shift not in v15.TURBO_SHIFTS:
        raise ConfigError(f"a turbo checkpoint runs at shift 1, 2 or 3 (got {shift:g}); choose one of them")
    schedule = v15.schedule_15(
        "turbo", method=params.infer_method, shift=shift, timesteps=params.timesteps or None
    )
    return Settings15(schedule, 1.0, schedule.n_steps, shift)


def _base(params: Params15, preset: Preset15, variant: str) -> Settings15:
    steps = preset.steps if params.steps is None else params.steps
    shift = preset.shift if params.shift is None else params.shift
    scale = preset.guidance_scale if params.guidance_scale is None else params.guidance_scale
    schedule = v15.schedule_15(
        variant,  # type: ignore[arg-type]
        method=params.infer_method,
        shift=shift,
        steps=steps,
        timesteps=params.timesteps or None,
    )
    return Settings15(schedule, scale, schedule.n_steps, shift)


def resolve_settings(variant: str, params: Params15, task: str) -> Settings15:
    """The run settings of ``params`` on a ``variant`` checkpoint; :class:`ConfigError` for a task or a
    setting the checkpoint cannot use, saying what to use instead."""
    preset = PRESETS.get(variant)
    if preset is None:
        raise ConfigError(f"unknown ACE-Step 1.5 variant {variant!r}; expected one of {sorted(PRESETS)}")
    if task not in preset.tasks:
        raise ConfigError(
            f"task {task!r} does not run on a {variant} checkpoint; it runs {list(preset.tasks)}"
            + ("; load a base checkpoint for extract/lego/complete" if variant == "turbo" else "")
        )
    if variant == "turbo":
        return _turbo(params, preset)
    return _base(params, preset, variant)
