"""Flow-matching noise schedules (sigmas).

Time convention (the only one in songflow): flow time ``sigma`` in [0, 1] with
``x_sigma = (1 - sigma) * x0 + sigma * noise``; ``sigma = 1`` is pure noise, ``sigma = 0`` clean data.
A schedule is a float32 1-D tensor ``[n_steps + 1]`` that decreases and ends with an exact 0. The model
sees ``t = 1000 * sigma`` (see :func:`sigmas_to_timesteps`); nothing else scales by 1000.

Two modes:

* ``legacy_double_shift=True`` (default) reproduces the official ACE-Step v1 schedulers bit for bit
  (docs/reference_behaviour.md#r9). The official constructor builds a training grid that is already shifted,
  and ``set_timesteps`` spaces its steps linearly between that grid's (shifted) end points and then
  applies the shift a second time; explicit ``oss_steps`` sigmas are shifted a third time, and audio2audio
  noises the reference at the once-shifted level while its schedule starts at the twice-shifted one.
* ``legacy_double_shift=False`` shifts exactly once (see :func:`flow_sigmas` for the exact definition).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from songflow.errors import ConfigError

__all__ = [
    "N_TRAIN_TIMESTEPS",
    "audio2audio_sigmas",
    "flow_sigmas",
    "legacy_train_sigmas",
    "oss_sigmas",
    "shift_sigma",
    "sigmas_to_timesteps",
    "truncate",
]

N_TRAIN_TIMESTEPS = 1000
"""Length of the training grid; the model's timestep input is ``N_TRAIN_TIMESTEPS * sigma``."""

_SAMPLERS_WITHOUT_CUSTOM_SIGMAS = ("heun",)


def shift_sigma(sigma, shift: float):
    """The timestep shift ``s(sigma) = shift * sigma / (1 + (shift - 1) * sigma)``.

    Works on Python floats and on tensors (computed in the tensor's dtype, in this operation order, as
    the official schedulers do). ``shift = 1`` is the identity; s(0) = 0 and s(1) = 1 for any shift.
    """
    return shift * sigma / (1 + (shift - 1) * sigma)


def _check_shift(shift: float) -> None:
    if not shift > 0:
        raise ConfigError(f"shift must be > 0, got {shift!r}")


def _check_sigma_max(sigma_max: float) -> None:
    if not 0.0 < sigma_max <= 1.0:
        raise ConfigError(f"sigma_max must be in (0, 1], got {sigma_max!r}")


def _linspace64(start: float, stop: float, num: int) -> torch.Tensor:
    """Float64 linspace with numpy's arithmetic: ``i * ((stop - start) / (num - 1)) + start``, last = stop.

    torch.linspace fills the second half backwards from ``stop``, which can differ in the last bit; the
    official schedules are built with numpy, so this reproduces numpy's rounding.
    """
    if num <= 0:
        return torch.zeros(0, dtype=torch.float64)
    if num == 1:
        return torch.tensor([start], dtype=torch.float64)
    step = (stop - start) / (num - 1)
    y = torch.arange(num, dtype=torch.float64) * step + start
    y[-1] = stop
    return y


def legacy_train_sigmas(
    shift: float = 3.0, *, sigma_max: float = 1.0, n_train: int = N_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """The official scheduler constructor's training grid, float32 ``[n_train]``, decreasing.

    ``linspace(1, n_train * sigma_max, n_train)`` in float32 (numpy rounding), reversed, divided by
    ``n_train`` and shifted, all in float32. Its first entry is the scheduler's ``sigma_max`` (already
    shifted once: s(sigma_max)) and its last the scheduler's ``sigma_min`` (s(1 / n_train)); the legacy
    :func:`flow_sigmas` spaces its steps between these two. Timesteps are ``grid * n_train`` (float32).
    """
    _check_shift(shift)
    grid = _linspace64(1.0, sigma_max * n_train, n_train).to(torch.float32).flip(0)
    return shift_sigma(grid / n_train, shift)


def _legacy_bounds(shift: float, sigma_max: float) -> tuple[float, float]:
    """(sigma_max, sigma_min) of the official scheduler: the end points of its shifted float32 grid."""
    # Only the two end points of the 1000-entry grid matter: linspace keeps its end points exactly.
    ends = torch.tensor([sigma_max * N_TRAIN_TIMESTEPS, 1.0], dtype=torch.float64).to(torch.float32)
    ends = shift_sigma(ends / N_TRAIN_TIMESTEPS, shift)
    return float(ends[0]), float(ends[1])


def _with_trailing_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.to(torch.float32), torch.zeros(1, dtype=torch.float32)])


def flow_sigmas(
    n_steps: int,
    shift: float = 3.0,
    *,
    legacy_double_shift: bool = True,
    sigma_max: float = 1.0,
) -> torch.Tensor:
    """Sigmas for ``n_steps`` sampling steps: float32 ``[n_steps + 1]``, decreasing, last entry exactly 0.

    ``sigma_max`` is given in *unshifted* units, as the official scheduler's ``sigma_max`` argument
    (1.0 for text2music; ``1 - strength`` for audio2audio).

    Legacy (``legacy_double_shift=True``, bit-exact with the official Euler / ping-pong
    ``retrieve_timesteps``): with ``hi = s(sigma_max)`` and ``lo = s(1/1000)`` taken from the float32
    training grid (:func:`legacy_train_sigmas`), ``sigma_i = s(u_i)`` for
    ``u = linspace(1000*hi, 1000*lo, n_steps) / 1000`` in float64, cast to float32, then a trailing 0.
    So the shift is applied twice: the first sigma is s(s(sigma_max)) (1.0 for sigma_max = 1) and the last
    non-zero one s(s(0.001)) = 0.0089286 for shift 3. ``n_steps = 1`` gives ``[s(hi), 0]``.

    Clean (``legacy_double_shift=False``): the same construction with the shift applied once,
    ``sigma_i = s(u_i)`` for ``u = linspace(sigma_max, 1/1000, n_steps)`` (float64, then float32), then a
    trailing 0. The first sigma is s(sigma_max) (1.0 for sigma_max = 1), the last non-zero one s(0.001)
    (0.0029940 for shift 3), and ``shift = 1`` gives the plain ``linspace(sigma_max, 0.001, n_steps)``.

    The Heun sampler uses the same sigmas (it evaluates the model twice per step, see
    ``songflow.sampling.steppers``); the official Heun scheduler's list with every inner value duplicated
    is only a bookkeeping device of its step counter.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ConfigError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    _check_shift(shift)
    _check_sigma_max(sigma_max)
    if legacy_double_shift:
        hi, lo = _legacy_bounds(shift, sigma_max)
        # matches the official set_timesteps: linspace over timesteps (x1000), back to sigmas, shift again.
        u = _linspace64(hi * N_TRAIN_TIMESTEPS, lo * N_TRAIN_TIMESTEPS, n_steps) / N_TRAIN_TIMESTEPS
    else:
        u = _linspace64(float(sigma_max), 1.0 / N_TRAIN_TIMESTEPS, n_steps)
    return _with_trailing_zero(shift_sigma(u, float(shift)))


def sigmas_to_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """Model timesteps ``t = 1000 * sigma`` (float32) for every step, i.e. without the trailing 0.

    Computed as the official schedulers do (float32 multiply), so ``t`` matches their ``timesteps``.
    """
    return sigmas[:-1].to(torch.float32) * N_TRAIN_TIMESTEPS


def oss_sigmas(
    step_indices: Sequence[int],
    shift: float = 3.0,
    *,
    legacy_double_shift: bool = True,
    dtype: torch.dtype = torch.float32,
    sampler: str = "euler",
) -> torch.Tensor:
    """Sigmas for the official ``oss_steps`` ("optimal steps") option: float32 ``[len(step_indices) + 1]``.

    ``step_indices`` are 1-based step numbers into a schedule of ``max(step_indices)`` steps, strictly
    increasing (e.g. ``[16, 29, 52, 96, 129, 158, 172, 183, 189, 200]``).

    Legacy (bit-exact with the official pipeline): build the legacy schedule for ``max`` steps, take the
    timesteps ``t = 1000 * sigma`` at indices ``k - 1``, store them in ``dtype`` (the pipeline dtype: a
    bfloat16 pipeline rounds them), divide by 1000 in that dtype, go back to float32 and shift a *third*
    time (float32 arithmetic), then append 0. The first sigma is therefore not 1.

    Clean: the once-shifted :func:`flow_sigmas` for ``max`` steps, entries ``k - 1`` taken as they are
    (no dtype round trip, no further shift), then 0.

    The official Heun scheduler cannot take explicit sigmas, so ``sampler="heun"`` raises
    :class:`ConfigError` as the official pipeline raises ``ValueError``.
    """
    if sampler in _SAMPLERS_WITHOUT_CUSTOM_SIGMAS:
        raise ConfigError(
            f"oss_steps cannot be used with the {sampler!r} sampler (the official Heun scheduler takes "
            "no custom sigmas); use 'euler' or 'pingpong'"
        )
    indices = list(step_indices)
    if not indices:
        raise ConfigError("oss step_indices must not be empty")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in indices):
        raise ConfigError(f"oss step_indices must be integers >= 1 (1-based), got {indices!r}")
    if any(b <= a for a, b in zip(indices[:-1], indices[1:], strict=True)):
        raise ConfigError(f"oss step_indices must be strictly increasing, got {indices!r}")
    full = flow_sigmas(max(indices), shift, legacy_double_shift=legacy_double_shift)
    picked = full[torch.tensor([k - 1 for k in indices])]
    if not legacy_double_shift:
        return _with_trailing_zero(picked)
    # matches the official text2music_diffusion_process (oss_steps branch) + set_timesteps(sigmas=...)
    timesteps = (picked * N_TRAIN_TIMESTEPS).to(dtype)
    sigmas = (timesteps / N_TRAIN_TIMESTEPS).to(torch.float32)
    return _with_trailing_zero(shift_sigma(sigmas, float(shift)))


def audio2audio_sigmas(
    n_steps: int,
    strength_frac: float,
    shift: float = 3.0,
    legacy_double_shift: bool = True,
) -> tuple[torch.Tensor, float]:
    """Schedule and initial noise level for audio2audio: ``(sigmas, noise_level)``.

    ``strength_frac`` in [0, 1] is how much of the reference is kept (official ``ref_audio_strength``);
    ``sigma_max = 1 - strength_frac`` and the run has ``int(sigma_max * n_steps)`` steps. The caller starts
    from ``x_init = (1 - noise_level) * x_ref + noise_level * noise``.

    Legacy (official ``add_latents_noise``): ``noise_level = s(sigma_max)`` (the scheduler's once-shifted
    sigma_max, a float32 value) while the schedule is the legacy :func:`flow_sigmas` built with that
    ``sigma_max``, which starts at ``s(s(sigma_max))``: strength 0.5 noises the reference to 0.75 but asks
    the model first at sigma 0.9. Clean: ``noise_level = s(sigma_max)`` and the once-shifted schedule starts
    at the same value.

    With ``int(sigma_max * n_steps) == 0`` (e.g. strength 1) the schedule is ``[0.]``: no step runs and the
    result is ``x_init``; for strength 1 the noise level is 0, so that is the reference itself.
    """
    if not 0.0 <= strength_frac <= 1.0:
        raise ConfigError(f"strength_frac must be in [0, 1], got {strength_frac!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ConfigError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    _check_shift(shift)
    sigma_max = 1 - strength_frac
    steps = int(sigma_max * n_steps)
    if sigma_max > 0:
        if legacy_double_shift:
            noise_level = _legacy_bounds(shift, sigma_max)[0]
        else:
            noise_level = float(shift_sigma(torch.tensor(sigma_max, dtype=torch.float64), shift).float())
    else:
        noise_level = 0.0
    if steps == 0:
        return torch.zeros(1, dtype=torch.float32), noise_level
    sigmas = flow_sigmas(steps, shift, legacy_double_shift=legacy_double_shift, sigma_max=sigma_max)
    return sigmas, noise_level


def truncate(sigmas: torch.Tensor, start_frac: float) -> torch.Tensor:
    """Drop the first ``int(n_steps * start_frac)`` steps of a schedule (``n_steps = len(sigmas) - 1``).

    Used by repaint: the official loop skips iterations ``i < int(n_steps * (1 - variance))``, so call this
    with ``start_frac = 1 - variance``. The result still ends with 0; ``start_frac = 1`` leaves ``[0.]``.
    """
    if not 0.0 <= start_frac <= 1.0:
        raise ConfigError(f"start_frac must be in [0, 1], got {start_frac!r}")
    n_steps = sigmas.shape[0] - 1
    return sigmas[int(n_steps * start_frac) :]
