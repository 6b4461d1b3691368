"""Pure single-step ODE/SDE solvers for flow matching (k-diffusion style, no hidden state).

A *stepper* is a callable ``(f, x, sigma, sigma_next, noise) -> x_next`` with no hidden state:

* ``f(x, sigma_batch) -> v`` is the velocity field, ``sigma_batch`` a float32 ``[B]`` tensor; ``v`` has
  ``x``'s shape ``[B, ...]``. A stepper may call ``f`` more than once (Heun: twice, except on the last
  step to sigma = 0).
* ``sigma``, ``sigma_next`` are the current and next noise levels (floats or 0-dim tensors; they are used
  as 0-dim float32 tensors, like the official schedulers' sigmas).
* ``noise`` is a fresh N(0, 1) tensor shaped like ``x`` for stochastic steppers (ping-pong), else ignored.

Numerics follow the official ACE-Step schedulers: ``x`` is upcast to float32 for the update, the step
``dx = (sigma_next - sigma) * v`` is formed in ``v``'s dtype (bf16 for a bf16 model), and the result is
cast back to ``v``'s dtype.

The "omega" granularity shift (ACE-Step) rescales a step around its mean,
``dx' = (dx - mean(dx)) * w + mean(dx)`` with ``w = 0.9 + 0.2 * sigmoid(0.1 * omega_scale)``.
The official code takes the mean over the whole batch tensor, which couples the samples of a batch
(docs/reference_behaviour.md#r10); songflow defaults to a per-sample mean and keeps the batch mean as an
option (``omega_mean_over="batch"``) for parity with the official batched runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from songflow.errors import ConfigError

__all__ = [
    "SAMPLERS",
    "STEPPERS",
    "BoundStepper",
    "OmegaMeanOver",
    "Sampler",
    "Stepper",
    "StepperSpec",
    "VelocityFn",
    "count_evals",
    "euler_step",
    "evals_per_step",
    "heun_step",
    "make_stepper",
    "omega_factor",
    "omega_rescale",
    "pingpong_step",
    "stepper_spec",
    "uses_noise",
]

Sampler = Literal["euler", "heun", "pingpong"]
"""The sampler names, as a type; the same names as :data:`SAMPLERS` (the :data:`STEPPERS` registry)."""
OmegaMeanOver = Literal["sample", "batch"]
_OMEGA_MEAN_OVER = ("sample", "batch")

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""The field a stepper integrates: ``f(x [B, ...], sigma_batch [B] float32) -> v [B, ...]``.

Not the task-level velocity, which also takes the evaluation index
(:data:`songflow.sampling.loop.GuidedVelocityFn`).
"""


class Stepper(Protocol):
    """``(f, x, sigma, sigma_next, noise) -> x_next``, see the module docstring; ``uses_noise`` tells the
    sampling loop whether to supply ``noise``."""

    @property
    def uses_noise(self) -> bool: ...

    def __call__(
        self,
        f: VelocityFn,
        x: Tensor,
        sigma: Tensor | float,
        sigma_next: Tensor | float,
        noise: Tensor | None,
    ) -> Tensor: ...


# ----------------------------------------------------------------------------------------------------
# omega ("granularity") rescale


_OMEGA_LOW, _OMEGA_HIGH, _OMEGA_STEEPNESS = 0.9, 1.1, 0.1


def omega_factor(omega_scale: float) -> float:
    """``w = 0.9 + 0.2 * sigmoid(0.1 * omega_scale)`` in (0.9, 1.1); 1.0 for 0, 1.0462117 for 10.

    Evaluated as ``low + (high - low) / (1 + exp(-0.1 * omega))`` with low 0.9, high 1.1, which gives the
    official float64 value to the last bit.
    """
    exponent = -_OMEGA_STEEPNESS * omega_scale
    if exponent > 700.0:  # exp overflows; the official numpy code yields inf here, i.e. the lower bound
        return _OMEGA_LOW
    return _OMEGA_LOW + (_OMEGA_HIGH - _OMEGA_LOW) / (1.0 + math.exp(exponent))


def _per_sample_mean(dx: Tensor) -> Tensor:
    """Mean of each sample ``dx[b]``, shaped ``[B, 1, ..., 1]``.

    Each row is reduced on its own (same data, same reduction as a batch of one), so a sample's mean, and
    hence its step, does not depend on its batch-mates, bit for bit.
    """
    if dx.ndim == 0:
        return dx
    means = torch.stack([dx[b].mean() for b in range(dx.shape[0])])
    return means.reshape((dx.shape[0],) + (1,) * (dx.ndim - 1))


def omega_rescale(dx: Tensor, omega_scale: float, *, mean_over: OmegaMeanOver = "sample") -> Tensor:
    """Scale ``dx [B, ...]`` about its mean: ``(dx - m) * omega_factor(omega_scale) + m``.

    ``mean_over="sample"`` (default): ``m`` is each sample's own mean. ``"batch"``: ``m`` is the mean of the
    whole tensor, all samples together (official behaviour; needed to reproduce official batched runs).
    ``omega_scale = 0`` gives factor 1.0 but still evaluates the expression (as the official code does),
    so the result equals ``dx`` only up to rounding.
    """
    if mean_over == "batch":
        m = dx.mean()
    elif mean_over == "sample":
        m = _per_sample_mean(dx)
    else:
        raise ConfigError(f"unknown omega mean_over {mean_over!r}; valid: {', '.join(_OMEGA_MEAN_OVER)}")
    return (dx - m) * omega_factor(omega_scale) + m


# ----------------------------------------------------------------------------------------------------
# steppers


def _as_sigma(sigma: Tensor | float, device: torch.device) -> Tensor:
    """A noise level as a 0-dim float32 tensor on ``device``."""
    return torch.as_tensor(sigma, dtype=torch.float32).reshape(()).to(device)


def _batch(sigma: Tensor, x: Tensor) -> Tensor:
    """``sigma`` repeated for every sample: float32 ``[B]``."""
    return sigma.expand(x.shape[0]) if x.ndim > 0 else sigma


def _apply_omega(dx: Tensor, omega_scale: float | None, mean_over: OmegaMeanOver) -> Tensor:
    return dx if omega_scale is None else omega_rescale(dx, omega_scale, mean_over=mean_over)


def euler_step(
    f: VelocityFn,
    x: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    noise: Tensor | None = None,
    *,
    omega_scale: float | None = 0.0,
    omega_mean_over: OmegaMeanOver = "sample",
) -> Tensor:
    """One Euler step: ``x + omega((sigma_next - sigma) * f(x, sigma))``; ``noise`` is ignored.

    ``omega_scale=None`` skips the omega rescale entirely (the plain update the official repaint loop
    uses); a number applies it (0.0 = factor 1, the official arithmetic). One model evaluation.
    """
    s, s_next = _as_sigma(sigma, x.device), _as_sigma(sigma_next, x.device)
    v = f(x, _batch(s, x))
    dx = (s_next - s) * v  # in v's dtype, as the official scheduler
    dx = _apply_omega(dx, omega_scale, omega_mean_over)
    return (x.to(torch.float32) + dx).to(v.dtype)


def heun_step(
    f: VelocityFn,
    x: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    noise: Tensor | None = None,
    *,
    omega_scale: float | None = 0.0,
    omega_mean_over: OmegaMeanOver = "sample",
) -> Tensor:
    """One Heun (2nd-order) step: Euler predictor, then trapezoidal corrector; ``noise`` is ignored.

    Two model evaluations (at ``sigma``, then at ``sigma_next`` on the predicted point), except a step to
    ``sigma_next == 0``, which is a plain first-order step (one evaluation). Matches the official
    FlowMatchHeunDiscreteScheduler without churn: the derivative is formed as
    ``(x - (x - v * sigma)) / sigma`` (not ``v`` itself), the predictor output is cast to the model dtype
    before the corrector evaluation, the corrector uses ``0.5 * (d_pred + d_corr)``, and the omega rescale
    is applied to ``derivative * dt`` in both the predictor and the corrector.
    """
    s, s_next = _as_sigma(sigma, x.device), _as_sigma(sigma_next, x.device)
    x32 = x.to(torch.float32)
    dt = s_next - s
    v = f(x, _batch(s, x))
    d_pred = (x32 - (x32 - v * s)) / s
    x_pred = (x32 + _apply_omega(d_pred * dt, omega_scale, omega_mean_over)).to(v.dtype)
    if float(sigma_next) == 0.0:  # read from the caller's (CPU) value: no device sync
        return x_pred
    v_corr = f(x_pred, _batch(s_next, x))
    xp32 = x_pred.to(torch.float32)
    d_corr = (xp32 - (xp32 - v_corr * s_next)) / s_next
    d = 0.5 * (d_pred + d_corr)
    return (x32 + _apply_omega(d * dt, omega_scale, omega_mean_over)).to(v_corr.dtype)


def pingpong_step(
    f: VelocityFn,
    x: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    noise: Tensor | None = None,
) -> Tensor:
    """One ping-pong step (Stable Audio Open Small style SDE): predict x0, then re-noise to ``sigma_next``.

    ``x0 = x - sigma * v``; ``x_next = (1 - sigma_next) * x0 + sigma_next * noise``. ``noise`` (N(0, 1),
    shaped like ``x``) is required; the official scheduler draws it as float32. No omega rescale. One
    model evaluation.
    """
    if noise is None:
        raise ConfigError("the pingpong stepper needs a noise tensor for every step")
    s, s_next = _as_sigma(sigma, x.device), _as_sigma(sigma_next, x.device)
    v = f(x, _batch(s, x))
    x0 = x.to(torch.float32) - s * v
    return ((1 - s_next) * x0 + s_next * noise.to(x.device)).to(v.dtype)


# ----------------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class StepperSpec:
    """A stepper family: its update function and what the sampling loop and the tasks must know about it.

    ``step(f, x, sigma, sigma_next, noise, **options)`` is the raw update; ``uses_noise``: whether it needs
    a fresh N(0, 1) tensor every step; ``evals_per_step``: model evaluations of one non-final step;
    ``takes_omega``: whether it accepts the ``omega_scale`` / ``omega_mean_over`` options.
    """

    name: str
    step: Callable[..., Tensor]
    uses_noise: bool
    evals_per_step: int
    takes_omega: bool


@dataclass(frozen=True)
class BoundStepper:
    """A :class:`StepperSpec` with its omega options bound: a :class:`Stepper` (see :func:`make_stepper`)."""

    spec: StepperSpec
    omega_scale: float | None = 0.0
    omega_mean_over: OmegaMeanOver = "sample"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def uses_noise(self) -> bool:
        return self.spec.uses_noise

    @property
    def evals_per_step(self) -> int:
        return self.spec.evals_per_step

    def __call__(
        self,
        f: VelocityFn,
        x: Tensor,
        sigma: Tensor | float,
        sigma_next: Tensor | float,
        noise: Tensor | None = None,
    ) -> Tensor:
        if not self.spec.takes_omega:
            return self.spec.step(f, x, sigma, sigma_next, noise)
        return self.spec.step(
            f, x, sigma, sigma_next, noise, omega_scale=self.omega_scale, omega_mean_over=self.omega_mean_over
        )


STEPPERS: dict[str, StepperSpec] = {
    spec.name: spec
    for spec in (
        StepperSpec("euler", euler_step, uses_noise=False, evals_per_step=1, takes_omega=True),
        StepperSpec("heun", heun_step, uses_noise=False, evals_per_step=2, takes_omega=True),
        StepperSpec("pingpong", pingpong_step, uses_noise=True, evals_per_step=1, takes_omega=False),
    )
}
"""Every sampler by name; :data:`SAMPLERS` and the :data:`Sampler` literal list the same names."""

SAMPLERS: tuple[str, ...] = tuple(STEPPERS)


def stepper_spec(name: str) -> StepperSpec:
    """The registry entry called ``name``; unknown names raise :class:`ConfigError` listing the valid ones."""
    spec = STEPPERS.get(name)
    if spec is None:
        raise ConfigError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    return spec


def make_stepper(
    name: Sampler,
    *,
    omega_scale: float | None = 0.0,
    omega_mean_over: OmegaMeanOver = "sample",
) -> BoundStepper:
    """The stepper called ``name`` with its options bound: a callable ``(f, x, sigma, sigma_next, noise)``.

    ``omega_scale`` / ``omega_mean_over`` apply to Euler and Heun (ping-pong ignores omega, as the
    official scheduler does); ``omega_scale=None`` disables the rescale. Unknown names raise
    :class:`ConfigError` listing the valid ones. The result carries its registry metadata (``name``,
    ``uses_noise``, ``evals_per_step``).
    """
    spec = stepper_spec(name)
    if omega_mean_over not in _OMEGA_MEAN_OVER:
        raise ConfigError(
            f"unknown omega mean_over {omega_mean_over!r}; valid: {', '.join(_OMEGA_MEAN_OVER)}"
        )
    return BoundStepper(spec, omega_scale=omega_scale, omega_mean_over=omega_mean_over)


def evals_per_step(name: Sampler) -> int:
    """Model evaluations of one (non-final) step: 1 for Euler and ping-pong, 2 for Heun."""
    return stepper_spec(name).evals_per_step


def count_evals(name: Sampler, n_steps: int) -> int:
    """Model evaluations of a run of ``n_steps`` steps ending at sigma = 0 (Heun: ``2 * n_steps - 1``).

    This is also the number of official loop iterations (the official Heun timestep list has
    ``2N - 1`` entries), i.e. the range of the ``eval_index`` that ``sample`` passes to the velocity.
    The final step (to sigma = 0) is first-order, one evaluation, for every stepper.
    """
    if n_steps <= 0:
        return 0
    return evals_per_step(name) * (n_steps - 1) + 1


def uses_noise(name: Sampler) -> bool:
    """Whether the sampler consumes per-step noise (only ping-pong)."""
    return stepper_spec(name).uses_noise
