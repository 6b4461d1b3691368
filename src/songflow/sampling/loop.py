"""The sampling loop: the only place in songflow that iterates over a schedule (docs/architecture.md#layers).

Every task (text2music, retake, repaint, extend, audio2audio, both FlowEdit phases) is a call of
:func:`sample` with its own initial latents, sigmas, velocity closure and optional projection.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from songflow.sampling.steppers import Stepper

__all__ = ["GuidedVelocityFn", "sample"]

GuidedVelocityFn = Callable[[Tensor, Tensor, int], Tensor]
"""The velocity a task hands to :func:`sample`: ``velocity(x [B, ...], sigma_batch [B] float32, eval_index)
-> v [B, ...]``. :func:`sample` turns it into the stepper's :data:`~songflow.sampling.steppers.VelocityFn`
``f(x, sigma_batch)`` by counting the evaluations."""


def sample(
    velocity: GuidedVelocityFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    step: Stepper,
    noise: Callable[[int], Tensor] | None = None,
    project: Callable[[Tensor, int], Tensor] | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Integrate from ``sigmas[0]`` down to ``sigmas[-1]`` (normally 0) and return the final latents.

    Args:
        velocity: ``velocity(x, sigma_batch, eval_index) -> v``. ``eval_index`` counts the model
            evaluations of this run, 0, 1, 2, ...: one per step for Euler / ping-pong; for Heun the
            predictor and corrector get consecutive indices (``2N - 1`` in all), which equals the official
            loop index over the Heun timestep list, so guidance intervals and CFG-Zero* see the same ``i``.
        x: initial latents ``[B, ...]`` at noise level ``sigmas[0]``.
        sigmas: float32 ``[n_steps + 1]`` schedule, decreasing (see ``songflow.sampling.schedules``).
        step: a stepper ``(f, x, sigma, sigma_next, noise) -> x_next`` (``make_stepper``).
        noise: ``noise(i)`` -> N(0, 1) tensor shaped like ``x`` for step ``i``; only called when the stepper
            consumes noise (``step.uses_noise``).
        project: ``project(x, i)`` applied after step ``i`` to the latents at ``sigmas[i + 1]`` (repaint
            re-imposes the known region here); returns the new latents.
        callback: ``callback(i, sigmas[i], x)`` after step ``i`` (and after ``project``), for progress and
            tracing.

    A schedule of length 1 (no steps) returns ``x`` unchanged.
    """
    if sigmas.ndim != 1 or sigmas.shape[0] < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}")
    n_evals = 0

    def f(x_in: Tensor, sigma_batch: Tensor) -> Tensor:
        nonlocal n_evals
        v = velocity(x_in, sigma_batch, n_evals)
        n_evals += 1
        return v

    wants_noise = noise is not None and step.uses_noise
    for i in range(sigmas.shape[0] - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        eps = noise(i) if (noise is not None and wants_noise) else None
        x = step(f, x, sigma, sigma_next, eps)
        if project is not None:
            x = project(x, i)
        if callback is not None:
            callback(i, sigma, x)
    return x
