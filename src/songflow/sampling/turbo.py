"""ACE-Step 1.5 sampling pieces: schedules, ODE/SDE steps, cover noise and repaint, for ``sample``.

Pure functions and small frozen callables, no models (layer 2). Everything here runs on the one loop
:func:`songflow.sampling.loop.sample`: a :class:`Schedule15` gives the ``sigmas`` and the ``step``;
:func:`repaint_injection` gives the ``project``; :func:`cover_noise` the initial latents;
:func:`repaint_crossfade` is applied to the loop's result. Facts: ``../shared/acestep_v15/SPEC.md`` §4.

Time convention (as everywhere in songflow): ``x_t = t * noise + (1 - t) * x0``, the DiT predicts
``v = noise - x0``, ``t = 1`` is pure noise. Latents are time-major ``[B, T, C]``.

* **turbo**: the fixed 8-step table of the shift snapped to {1, 2, 3} (:func:`turbo_timesteps`), or up to
  20 custom timesteps snapped to the 20 distilled values; a final 0 is appended for the loop.
* **base / sft**: ``t = linspace(1, 0, steps + 1)`` in the model dtype, then ``s * t / (1 + (s - 1) * t)``
  when ``s != 1``; sft also takes an explicit schedule, used as given.
* **ODE** (both): ``x <- x - v * dt``, ``dt = t_n - t_{n+1}`` rounded to the latents' dtype; the final
  step of turbo (``x0 = x - v * t``) is the same arithmetic since ``t_{n+1} = 0``.
* **SDE**: ``x0 = x - v * t``, then ``x <- r * noise + (1 - r) * x0`` with a fresh ``noise``. turbo
  re-noises to ``r = t_{n+1}`` and returns ``x0`` after the last step; base/sft re-noise to
  ``r = 1 - (n + 1) / steps``, *ignoring the shift* (official quirk, SPEC §9.5), so its stepper is built
  from the schedule (:meth:`Schedule15.stepper`).

Numerics follow the official loops: noise levels are Python floats of the schedule's values (turbo's
cover-noise search uses the table's float64 values, base's the schedule's float32 values), tensor-scalar
products in the latents' dtype, the operation order of the official code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Literal

import torch
from torch import Tensor

from songflow.errors import ConfigError
from songflow.sampling.steppers import Stepper, VelocityFn

__all__ = [
    "INFER_METHODS",
    "MAX_TURBO_TIMESTEPS",
    "TURBO_SHIFTS",
    "TURBO_STEPS",
    "VALID_TURBO_TIMESTEPS",
    "VARIANTS_15",
    "FlowOdeStep",
    "FlowSdeStep",
    "InferMethod",
    "RepaintInjection",
    "Schedule15",
    "Variant15",
    "base_schedule",
    "cover_noise",
    "cover_switch_step",
    "renoise",
    "repaint_crossfade",
    "repaint_injection",
    "schedule_15",
    "snap_turbo_shift",
    "snap_turbo_timesteps",
    "soft_repaint_mask",
    "turbo_schedule",
    "turbo_table",
    "turbo_timesteps",
]

Variant15 = Literal["turbo", "base", "sft"]
"""The 1.5 DiT variants; base and sft share one sampler (sft also takes explicit timesteps)."""
VARIANTS_15: tuple[str, ...] = ("turbo", "base", "sft")
InferMethod = Literal["ode", "sde"]
INFER_METHODS: tuple[str, ...] = ("ode", "sde")

TURBO_SHIFTS: tuple[float, ...] = (1.0, 2.0, 3.0)
"""The shifts the turbo model was distilled with; any other shift snaps to the nearest of these."""
TURBO_STEPS = 8
"""Steps of a turbo table (the official ``fix_nfe``; the request's step count is not used by turbo)."""
MAX_TURBO_TIMESTEPS = 20
"""At most this many custom turbo timesteps (after dropping trailing zeros)."""


def turbo_table(shift: float) -> tuple[float, ...]:
    """The 8 turbo timesteps of ``shift`` in {1, 2, 3}: ``t_n = s * u / (1 + (s - 1) * u)``, ``u = 1 - n/8``.

    Exact rationals rounded once to float64 (the official table's values); the final 0 is not included.
    """
    if shift not in TURBO_SHIFTS:
        raise ConfigError(f"turbo tables exist for shift {TURBO_SHIFTS}, got {shift!r}")
    s = Fraction(shift)
    out = []
    for n in range(TURBO_STEPS):
        u = Fraction(TURBO_STEPS - n, TURBO_STEPS)
        out.append(float(s * u / (1 + (s - 1) * u)))
    return tuple(out)


VALID_TURBO_TIMESTEPS: tuple[float, ...] = tuple(
    sorted({t for s in TURBO_SHIFTS for t in turbo_table(s)}, reverse=True)
)
"""The 20 distinct timesteps of the three turbo tables, descending; custom timesteps snap to these."""


def snap_turbo_shift(shift: float) -> float:
    """The turbo shift used for ``shift``: the nearest of 1, 2, 3 (a tie goes to the smaller one).

    Raises :class:`ConfigError` for a shift that is not a positive finite number.
    """
    if not (math.isfinite(shift) and shift > 0):
        raise ConfigError(f"shift must be a positive number (turbo uses 1, 2 or 3), got {shift!r}")
    return min(TURBO_SHIFTS, key=lambda s: abs(s - shift))


def _fmt(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def snap_turbo_timesteps(timesteps: Sequence[float]) -> tuple[float, ...]:
    """Custom turbo timesteps as the turbo model runs them (the final 0 not included).

    Trailing zeros are dropped, then each value maps to the nearest of :data:`VALID_TURBO_TIMESTEPS`
    (a tie goes to the larger one), as the official turbo sampler does. Where the official code would
    run something the model cannot use, this raises :class:`ConfigError` instead: values outside
    [0, 1], nothing left after the trailing zeros (the official code silently falls back to the shift
    table), more than 20 values (officially cut to 20), and values that after snapping are not strictly
    decreasing (officially run as repeated or backward steps; this also catches a zero before the end).
    """
    values = [float(t) for t in timesteps]
    if any(not 0.0 <= t <= 1.0 for t in values):
        raise ConfigError(f"turbo timesteps must lie in [0, 1], from 1 (noise) down; got [{_fmt(values)}]")
    while values and values[-1] == 0.0:
        values.pop()
    if not values:
        raise ConfigError("custom turbo timesteps hold no value above 0; omit them to use the shift table")
    if len(values) > MAX_TURBO_TIMESTEPS:
        raise ConfigError(
            f"turbo takes at most {MAX_TURBO_TIMESTEPS} timesteps (without the final 0), got {len(values)}"
        )
    snapped = tuple(min(VALID_TURBO_TIMESTEPS, key=lambda v: abs(v - t)) for t in values)
    if any(b >= a for a, b in zip(snapped, snapped[1:], strict=False)):
        raise ConfigError(
            f"turbo timesteps [{_fmt(values)}] snap to [{_fmt(snapped)}], which does not strictly "
            f"decrease; pick distinct values, from 1 down, among the turbo timesteps "
            f"[{_fmt(VALID_TURBO_TIMESTEPS)}]"
        )
    return snapped


def turbo_timesteps(shift: float = 3.0, timesteps: Sequence[float] | None = None) -> tuple[float, ...]:
    """The turbo schedule's float64 values without the final 0: snapped custom ``timesteps`` if given
    (non-empty), else the table of :func:`snap_turbo_shift` (``shift``)."""
    if timesteps is not None and len(timesteps) > 0:
        return snap_turbo_timesteps(timesteps)
    return turbo_table(snap_turbo_shift(shift))


# ----------------------------------------------------------------------------------------------------
# steppers


def _level(sigma: Tensor | float, x: Tensor) -> Tensor:
    """A noise level as a 0-dim tensor on ``x.device``, keeping a tensor's own dtype (the schedule's)."""
    if isinstance(sigma, Tensor):
        return sigma.reshape(()).to(x.device)
    return torch.tensor(sigma, dtype=x.dtype, device=x.device)


def _batch(t: Tensor, x: Tensor) -> Tensor:
    return t.expand(x.shape[0])


@dataclass(frozen=True)
class FlowOdeStep:
    """The 1.5 Euler step ``x - v * dt`` with ``dt = t - t_next`` rounded to ``x``'s dtype (a stepper).

    One model evaluation at ``t``; ``noise`` is ignored. With ``t_next = 0`` this is turbo's final
    ``x0 = x - v * t`` bit for bit.
    """

    uses_noise: ClassVar[bool] = False

    def __call__(
        self,
        f: VelocityFn,
        x: Tensor,
        sigma: Tensor | float,
        sigma_next: Tensor | float,
        noise: Tensor | None = None,
    ) -> Tensor:
        t = _level(sigma, x)
        v = f(x, _batch(t, x))
        dt = torch.tensor(float(sigma) - float(sigma_next), dtype=x.dtype, device=x.device)
        return x - v * dt


def renoise(x0: Tensor, level: float, noise: Tensor) -> Tensor:
    """``level * noise + (1 - level) * x0`` with a Python float ``level`` (the official ``renoise``)."""
    return level * noise + (1 - level) * x0


@dataclass(frozen=True)
class FlowSdeStep:
    """The 1.5 SDE step: ``x0 = x - v * t``, then :func:`renoise` to the level reached after the step.

    ``sigmas``: the schedule's values (Python floats) without the final 0; ``levels``: the re-noise level
    after each step (turbo: the next timestep; base/sft: ``1 - (n + 1) / steps``). The step finds its index
    by looking ``sigma`` up in ``sigmas``, so it only runs its own schedule (:meth:`Schedule15.stepper`).
    ``noise`` (N(0, 1) like ``x``) is required except where the level is 0 (the last step), which
    returns ``x0``.
    """

    sigmas: tuple[float, ...]
    levels: tuple[float, ...]
    uses_noise: ClassVar[bool] = True

    def __call__(
        self,
        f: VelocityFn,
        x: Tensor,
        sigma: Tensor | float,
        sigma_next: Tensor | float,
        noise: Tensor | None = None,
    ) -> Tensor:
        try:
            level = self.levels[self.sigmas.index(float(sigma))]
        except ValueError:
            raise ValueError(f"sigma {float(sigma)!r} is not a step of this SDE stepper's schedule") from None
        t = _level(sigma, x)
        v = f(x, _batch(t, x))
        x0 = x - v * t
        if level == 0.0:
            return x0
        if noise is None:
            raise ConfigError("the 1.5 SDE stepper needs a noise tensor for every step but the last")
        return renoise(x0, level, noise.to(device=x.device, dtype=x.dtype))


# ----------------------------------------------------------------------------------------------------
# schedules


@dataclass(frozen=True)
class Schedule15:
    """One 1.5 sampling run's schedule: what :func:`~songflow.sampling.loop.sample` and the helpers need.

    Attributes:
        variant: ``"turbo"``, ``"base"`` or ``"sft"``.
        method: ``"ode"`` or ``"sde"``.
        sigmas: ``[n_steps + 1]`` decreasing noise levels ending with 0, in the model dtype (official:
            the schedule tensor is built in the model's dtype).
        values: the ``n_steps`` start levels as the official code searches them for cover noise (turbo:
            the table's float64 values; base/sft: ``sigmas[:-1].tolist()``).
        levels: the noise level of the latents after each step (the next sigma; base/sft SDE:
            ``1 - (n + 1) / n_steps``), used for SDE re-noising and repaint injection.
    """

    variant: Variant15
    method: InferMethod
    sigmas: Tensor
    values: tuple[float, ...]
    levels: tuple[float, ...]

    @property
    def n_steps(self) -> int:
        return len(self.values)

    def stepper(self) -> Stepper:
        """The stepper of this run: :class:`FlowOdeStep` or :class:`FlowSdeStep` over this schedule."""
        if self.method == "ode":
            return FlowOdeStep()
        return FlowSdeStep(sigmas=tuple(self.sigmas[:-1].tolist()), levels=self.levels)


def _check_method(method: str) -> None:
    if method not in INFER_METHODS:
        raise ConfigError(f"unknown infer method {method!r}; valid: {', '.join(INFER_METHODS)}")


def _make_schedule(
    variant: Variant15, method: InferMethod, sigmas: Tensor, values: Sequence[float] | None = None
) -> Schedule15:
    n = sigmas.shape[0] - 1
    if values is None:
        values = sigmas[:-1].tolist()
    if variant != "turbo" and method == "sde":
        levels = tuple(1.0 - float(i + 1) / n for i in range(n))
    else:
        levels = tuple(sigmas[1:].tolist())
    return Schedule15(variant, method, sigmas, tuple(float(v) for v in values), levels)


def _turbo_from_values(values: Sequence[float], method: InferMethod, dtype: torch.dtype) -> Schedule15:
    sigmas = torch.cat([torch.tensor(list(values), dtype=dtype), torch.zeros(1, dtype=dtype)])
    return _make_schedule("turbo", method, sigmas, values)


def turbo_schedule(
    shift: float = 3.0,
    timesteps: Sequence[float] | None = None,
    *,
    method: InferMethod = "ode",
    dtype: torch.dtype = torch.float32,
) -> Schedule15:
    """The turbo schedule (:func:`turbo_timesteps`) as a tensor in ``dtype`` with the final 0 appended."""
    _check_method(method)
    return _turbo_from_values(turbo_timesteps(shift, timesteps), method, dtype)


def _check_explicit(timesteps: Sequence[float]) -> list[float]:
    values = [float(t) for t in timesteps]
    ok_range = all(0.0 <= t <= 1.0 for t in values)
    decreasing = all(b < a for a, b in zip(values, values[1:], strict=False))
    if len(values) < 2 or not ok_range or not decreasing or values[-1] != 0.0:
        raise ConfigError(
            f"sft timesteps must decrease strictly within [0, 1] and end with 0 (the sampler stops at the "
            f"last value), e.g. [1.0, 0.75, 0.5, 0.25, 0.0]; got [{_fmt(values)}]"
        )
    return values


def base_schedule(
    steps: int = 30,
    shift: float = 1.0,
    *,
    method: InferMethod = "ode",
    variant: Variant15 = "base",
    timesteps: Sequence[float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Schedule15:
    """The base/sft schedule: ``linspace(1, 0, steps + 1)`` in ``dtype``, then ``s*t / (1 + (s-1)*t)``.

    The shift is applied (in ``dtype``, in this order) only when ``shift != 1``. ``timesteps`` (sft only)
    replaces the whole schedule, used as given, and must end with 0; base refuses them (its official
    sampler ignores them).
    """
    _check_method(method)
    if variant not in ("base", "sft"):
        raise ConfigError(f"base_schedule is for the base and sft variants, got {variant!r}")
    if timesteps is not None and len(timesteps) > 0:
        if variant != "sft":
            raise ConfigError("the base model ignores custom timesteps; set steps and shift, or use sft")
        return _make_schedule(variant, method, torch.tensor(_check_explicit(timesteps), dtype=dtype))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    if not (math.isfinite(shift) and shift > 0):
        raise ConfigError(f"shift must be a positive number, got {shift!r}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=dtype)
    if shift != 1.0:
        t = shift * t / (1 + (shift - 1) * t)
    return _make_schedule(variant, method, t)


def schedule_15(
    variant: Variant15,
    *,
    method: InferMethod = "ode",
    shift: float | None = None,
    steps: int = 30,
    timesteps: Sequence[float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Schedule15:
    """The schedule ``variant`` samples with (``generate_audio``'s rule per variant).

    ``shift=None`` takes the variant's default (turbo 3, base/sft 1). turbo ignores ``steps``
    (:data:`TURBO_STEPS` or the custom timesteps).
    """
    if variant not in VARIANTS_15:
        raise ConfigError(f"unknown ACE-Step 1.5 variant {variant!r}; valid: {', '.join(VARIANTS_15)}")
    if variant == "turbo":
        return turbo_schedule(3.0 if shift is None else shift, timesteps, method=method, dtype=dtype)
    return base_schedule(
        steps,
        1.0 if shift is None else shift,
        method=method,
        variant=variant,
        timesteps=timesteps,
        dtype=dtype,
    )


# ----------------------------------------------------------------------------------------------------
# cover noise and the cover-condition switch


def cover_switch_step(n_steps: int, audio_cover_strength: float) -> int:
    """The first step that uses the non-cover condition: ``int(n_steps * audio_cover_strength)``.

    Steps ``0 .. k-1`` use the cover condition; with strength 1 no step switches. ``n_steps`` is the
    run's step count after any :func:`cover_noise` truncation.
    """
    if not 0.0 <= audio_cover_strength <= 1.0:
        raise ConfigError(f"audio_cover_strength must be in [0, 1], got {audio_cover_strength!r}")
    return int(n_steps * audio_cover_strength)


def _truncated(schedule: Schedule15, start: int) -> Schedule15:
    if start == 0:
        return schedule
    values = schedule.values[start:]
    if schedule.variant == "turbo":
        return _turbo_from_values(values, schedule.method, schedule.sigmas.dtype)
    return _make_schedule(schedule.variant, schedule.method, schedule.sigmas[start:], values)


def cover_noise(
    schedule: Schedule15, noise: Tensor, src_latents: Tensor, strength: float
) -> tuple[Tensor, Schedule15]:
    """Initial latents and schedule for ``cover_noise_strength`` (0 = start from pure noise).

    With ``strength > 0`` the run starts at the schedule entry nearest ``1 - strength`` (first on a tie;
    turbo searches its float64 table, base/sft the float32 values), from
    ``x = t * noise + (1 - t) * src_latents``, and the schedule is cut to start there (base/sft SDE
    re-noise levels then follow the shorter step count, as officially). Returns ``(x, schedule)``.
    """
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"cover_noise_strength must be in [0, 1], got {strength!r}")
    if strength == 0.0:
        return noise, schedule
    target = 1.0 - strength
    nearest = min(schedule.values, key=lambda v: abs(v - target))
    start = schedule.values.index(nearest)
    return renoise(src_latents, nearest, noise), _truncated(schedule, start)


# ----------------------------------------------------------------------------------------------------
# repaint


def _bool_mask(mask: Tensor) -> Tensor:
    if mask.ndim != 2:
        raise ValueError(f"repaint mask must be [B, T], got shape {tuple(mask.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


@dataclass(frozen=True)
class RepaintInjection:
    """Latent re-injection for repaint, a ``project(x, i)`` for :func:`~songflow.sampling.loop.sample`.

    After step ``i < n_inject`` the frames outside the repaint span (``mask`` False) are replaced by the
    source noised to the level the latents reached: ``where(mask, x, r * noise + (1 - r) * clean_src)``
    with ``r = levels[i]`` and the run's *initial* noise. ``mask``: ``[B, T]`` bool, True = regenerate;
    ``clean_src`` and ``noise``: ``[B, T, C]``.
    """

    mask: Tensor
    clean_src: Tensor
    noise: Tensor
    levels: tuple[float, ...]
    n_inject: int

    def __call__(self, x: Tensor, i: int) -> Tensor:
        if i >= self.n_inject:
            return x
        r = self.levels[i]
        zt = r * self.noise + (1.0 - r) * self.clean_src
        return torch.where(self.mask.unsqueeze(-1).expand_as(x), x, zt)


def repaint_injection(
    schedule: Schedule15,
    mask: Tensor,
    clean_src: Tensor,
    noise: Tensor,
    *,
    injection_ratio: float = 0.5,
) -> RepaintInjection:
    """The repaint projection of a run: steps ``n < round(injection_ratio * n_steps)`` are injected.

    ``round`` is Python's (half to even: ratio 0.5 of 5 steps injects 2). turbo never injects after its
    last step (it returns ``x0`` there); base/sft do when the cutoff reaches it. ``noise`` is the run's
    initial noise (before any cover-noise mixing).
    """
    if not 0.0 <= injection_ratio <= 1.0:
        raise ConfigError(f"repaint injection ratio must be in [0, 1], got {injection_ratio!r}")
    n = schedule.n_steps
    cutoff = round(injection_ratio * n)
    if schedule.variant == "turbo":
        cutoff = min(cutoff, n - 1)
    return RepaintInjection(_bool_mask(mask), clean_src, noise, schedule.levels, cutoff)


def soft_repaint_mask(mask: Tensor, crossfade_frames: int) -> Tensor:
    """float32 ``[B, T]`` blend weights: ``mask`` (True = generated) with linear ramps outside the span.

    Per row, the span runs from the first to the last True frame; ``crossfade_frames`` frames before it
    ramp 0 -> 1 and as many after it ramp 1 -> 0, exclusive of both ends
    (``linspace(0, 1, k + 2)[1:-1]``), cut at the clip edges. Rows that are all True or all False keep
    their hard mask.
    """
    mask = _bool_mask(mask)
    soft = mask.float().clone()
    n_frames = mask.shape[1]
    for b in range(mask.shape[0]):
        row = mask[b]
        if bool(row.all()) or not bool(row.any()):
            continue
        idx = torch.nonzero(row, as_tuple=False).squeeze(-1)
        left, right = int(idx[0]), int(idx[-1]) + 1
        lo, hi = max(left - crossfade_frames, 0), min(right + crossfade_frames, n_frames)
        if left > lo:
            soft[b, lo:left] = torch.linspace(0, 1, left - lo + 2, device=soft.device)[1:-1]
        if hi > right:
            soft[b, right:hi] = torch.linspace(1, 0, hi - right + 2, device=soft.device)[1:-1]
    return soft


def repaint_crossfade(x: Tensor, clean_src: Tensor, mask: Tensor, crossfade_frames: int) -> Tensor:
    """The repaint result after the loop: ``m * x + (1 - m) * clean_src`` with ``m`` the
    :func:`soft_repaint_mask`; ``crossfade_frames = 0`` returns ``x`` unchanged (as officially).

    ``x``, ``clean_src``: ``[B, T, C]``; ``mask``: ``[B, T]`` (True = regenerated). The blend is formed
    in float32 and returned in ``x``'s dtype.
    """
    if isinstance(crossfade_frames, bool) or not isinstance(crossfade_frames, int) or crossfade_frames < 0:
        raise ConfigError(f"repaint crossfade frames must be an integer >= 0, got {crossfade_frames!r}")
    if crossfade_frames == 0:
        return x
    m = soft_repaint_mask(mask, crossfade_frames).to(x.device).unsqueeze(-1).expand_as(x)
    return (m * x + (1.0 - m) * clean_src).to(x.dtype)
