"""repaint: regenerate a time window of a song; everything outside the window stays latent-exact.

Repaint is SDEdit with a mask (docs/reference_behaviour.md#r15). With a mask M over frames and a
fixed noise ``z0`` (the retake-mixed noise inside M, the original noise outside):

1. skip the first ``n_min = int(N * (1 - variance))`` of the N steps of the full schedule;
2. start at ``x = (1 - s) * src + s * z0`` with ``s = sigmas[n_min]``;
3. after every step to ``s'``, put the re-noised source ``(1 - s') * src + s' * z0`` back outside M —
   at ``s' = 0`` that is ``src`` itself, so the unmasked frames of the result equal the source exactly.

:func:`build_masked_plan` is that procedure for any mask and ``z0``; extend (``tasks/extend.py``) uses it
with variance 1 and a mask over the new frames.

Steps and guidance, compared with the official ``text2music_diffusion_process`` (repaint branch):

* The guidance interval is computed on the full N and indexed with the official loop index ``n_min + k``
  (:func:`masked_guidance`), so the same steps are guided as officially.
* The official branch ignores ``scheduler_type`` and ``omega_scale``: every step is a plain Euler update.
  Here the chosen sampler runs, without the omega rescale: ``euler`` is therefore exactly the official
  update, while ``heun`` and ``pingpong`` are honoured (officially they silently fall back to Euler).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from songflow.audio.geometry import LatentGeometry
from songflow.audio.splice import DEFAULT_CROSSFADE_S, fit_length, seconds_to_samples, splice
from songflow.errors import ConfigError
from songflow.requests import GenerationParams, Repaint
from songflow.sampling.noise import trig_mix
from songflow.sampling.steppers import make_stepper
from songflow.tasks.plan import GuidanceSpec, Plan, build_velocity, run_plan
from songflow.tasks.setup import TaskContext, guidance_for, sigmas_for, step_noise_for
from songflow.tasks.spec import ProgressFn, TaskHost, TaskSpec, step_progress

__all__ = [
    "SPEC",
    "build_masked_plan",
    "build_repaint_plan",
    "finish_repaint",
    "frame_mask",
    "masked_guidance",
    "repaint_window",
    "run_repaint",
    "start_step",
]


def start_step(n_steps: int, variance_frac: float) -> int:
    """``n_min = int(n_steps * (1 - variance_frac))``: the first executed step (official arithmetic)."""
    _check_variance(variance_frac)
    return int(n_steps * (1 - variance_frac))


def _check_variance(variance_frac: float) -> None:
    if isinstance(variance_frac, bool) or not isinstance(variance_frac, int | float):
        raise ConfigError(f"variance_frac must be a number in [0, 1], got {variance_frac!r}")
    if not 0.0 <= variance_frac <= 1.0:
        raise ConfigError(f"variance_frac must be in [0, 1], got {variance_frac!r}")


def frame_mask(n_frames: int, start_frame: int, end_frame: int, *, device=None) -> Tensor:
    """Bool ``[n_frames]``, True on the repaint window ``[start_frame, end_frame)``.

    Raises :class:`ConfigError` for an empty window or one reaching outside ``[0, n_frames]``.
    """
    for name, value in (("start_frame", start_frame), ("end_frame", end_frame)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer frame index, got {value!r}")
    if end_frame <= start_frame:
        raise ConfigError(
            f"the repaint window [{start_frame}, {end_frame}) is empty: end_frame must be > start_frame"
        )
    if start_frame < 0 or end_frame > n_frames:
        raise ConfigError(
            f"the repaint window [{start_frame}, {end_frame}) reaches outside the source's "
            f"{n_frames} frames [0, {n_frames}); clip it to the source (or use extend to add audio)"
        )
    mask = torch.zeros(n_frames, dtype=torch.bool, device=device)
    mask[start_frame:end_frame] = True
    return mask


def masked_guidance(params: GenerationParams, n_steps: int, first_step: int) -> GuidanceSpec:
    """Guidance of a run that starts at step ``first_step`` of an ``n_steps`` schedule.

    The interval is computed on the full ``n_steps`` and evaluation ``k`` is treated as step
    ``first_step + k`` (Heun: ``first_step + k // 2``, both evaluations of a step alike), matching the
    official loop index. ``legacy_heun_interval`` does not apply: the official repaint never runs Heun.
    """
    spec = guidance_for(params, n_steps)
    if params.sampler == "heun":
        return dataclasses.replace(spec, step_of_eval=lambda k: first_step + k // 2)
    return dataclasses.replace(spec, step_of_eval=lambda k: first_step + k)


def _check_latents(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"{name} must be a latent tensor [B, 8, 16, L], got {shape}")


def build_masked_plan(
    ctx: TaskContext,
    *,
    src_latents: Tensor,
    mask: Tensor,
    z0: Tensor,
    variance_frac: float,
) -> Plan:
    """Masked SDEdit plan: regenerate the frames where ``mask`` is True, keep the others exactly.

    Args:
        src_latents: ``[1 or B, C, H, L]`` latents to keep outside the mask (broadcast over the batch).
        mask: bool ``[L]``, True on the frames to generate.
        z0: ``[B, C, H, L]`` the fixed noise the run starts from and re-noises the kept frames with.
        variance_frac: in [0, 1]; the run starts at step ``int(N * (1 - variance_frac))`` of the full
            N-step schedule (1 = from pure ``z0``, 0 = no step: the result is ``src_latents``).

    The plan's final latents equal ``src_latents`` on every frame outside the mask, bit for bit.
    """
    _check_latents("src_latents", src_latents)
    _check_latents("z0", z0)
    if src_latents.shape[0] not in (1, z0.shape[0]) or src_latents.shape[1:] != z0.shape[1:]:
        raise ConfigError(
            f"src_latents {tuple(src_latents.shape)} and the noise {tuple(z0.shape)} must have the same "
            "[C, H, L] and a batch of 1 or the noise's batch"
        )
    if mask.dtype != torch.bool or mask.shape != (z0.shape[-1],):
        raise ConfigError(
            f"mask must be a bool tensor [{z0.shape[-1]}], got {mask.dtype} {tuple(mask.shape)}"
        )
    full = sigmas_for(ctx.params, oss_dtype=ctx.oss_dtype)
    n_steps = full.shape[0] - 1
    first = start_step(n_steps, variance_frac)
    sigmas = full[first:]
    src = src_latents.float()
    noise = z0.float()
    keep_new = mask.to(src.device).view(1, 1, 1, -1)

    def renoised(sigma: Tensor) -> Tensor:
        return (1 - sigma) * src + sigma * noise

    def project(x: Tensor, i: int) -> Tensor:
        # matches official text2music_diffusion_process (repaint branch): re-impose the kept frames
        return torch.where(keep_new, x.float(), renoised(sigmas[i + 1]))

    return Plan(
        x_init=renoised(sigmas[0]),
        sigmas=sigmas,
        velocity=build_velocity(
            ctx.model,
            ctx.conds,
            masked_guidance(ctx.params, n_steps, first),
            model_dtype=ctx.model_dtype,
            batch_passes=ctx.batch_passes,
        ),
        step=make_stepper(ctx.params.sampler, omega_scale=None),
        noise=step_noise_for(ctx.params, ctx.generators, tuple(noise.shape[1:])),
        project=project,
    )


def build_repaint_plan(
    ctx: TaskContext,
    *,
    src_latents: Tensor,
    start_frame: int,
    end_frame: int,
    variance_frac: float,
    noise: Tensor,
    retake_noise: Tensor,
) -> Plan:
    """Plan for repaint: regenerate frames ``[start_frame, end_frame)`` of ``src_latents``.

    Args:
        src_latents: ``[1 or B, 8, 16, L]`` source latents (a batch of 1 is shared by every item).
        start_frame, end_frame: the window, ``0 <= start_frame < end_frame <= L``.
        variance_frac: in [0, 1]; how far the window departs from the source: it sets both the
            retake-noise mix inside the window (cos/sin of variance·π/2) and the first step
            ``int(N * (1 - variance))`` (official ``retake_variance``).
        noise, retake_noise: ``[B, 8, 16, L]`` N(0, 1) draws from the main and the retake seeds.

    The result equals ``src_latents`` exactly outside the window. A window covering the whole source is
    repainted like any other (SDEdit from ``int(N * (1 - variance))``); the official pipeline instead
    treats ``repaint_start = 0, repaint_end = duration`` as a retake (:mod:`songflow.tasks.retake`).
    Raises :class:`ConfigError` for an empty window, one outside ``[0, L]``, or variance outside [0, 1].
    """
    _check_latents("src_latents", src_latents)
    _check_latents("noise", noise)
    if retake_noise.shape != noise.shape:
        raise ConfigError(
            f"noise {tuple(noise.shape)} and retake_noise {tuple(retake_noise.shape)} must have one shape"
        )
    if src_latents.shape[1:] != noise.shape[1:]:
        raise ConfigError(
            f"src_latents {tuple(src_latents.shape)} and noise {tuple(noise.shape)} must have the same "
            "[8, 16, L]"
        )
    _check_variance(variance_frac)
    mask = frame_mask(src_latents.shape[-1], start_frame, end_frame, device=noise.device)
    z0 = torch.where(mask.view(1, 1, 1, -1), trig_mix(noise, retake_noise, variance_frac), noise)
    return build_masked_plan(ctx, src_latents=src_latents, mask=mask, z0=z0, variance_frac=variance_frac)


def repaint_window(geometry: LatentGeometry, start_s: float, end_s: float, n_frames: int) -> tuple[int, int]:
    """The repaint window ``[start_s, end_s)`` in frames of an ``n_frames`` source, its end clipped to the
    source. Raises :class:`ConfigError` when the window starts at or after the source's end."""
    start = geometry.frames_from_seconds(start_s)
    end = geometry.frames_from_seconds(end_s)
    if start >= n_frames:
        source_s = geometry.seconds_from_frames(n_frames)
        raise ConfigError(
            f"the repaint window starts at {start_s} s, after the source ends ({source_s:.2f} s)"
        )
    return start, min(end, n_frames)


def run_repaint(host: TaskHost, request: Repaint, ctx: TaskContext, progress: ProgressFn | None) -> Tensor:
    """Latents of a repaint request: the source file with ``[start_s, end_s)`` regenerated."""
    assert ctx.retake_generators is not None
    src = host.load_source(request.source_path, what="source audio")
    n_frames = src.shape[-1]
    start, end = repaint_window(host.geometry, request.start_s, request.end_s, n_frames)
    plan = build_repaint_plan(
        ctx,
        src_latents=src,
        start_frame=start,
        end_frame=end,
        variance_frac=request.variance_frac,
        noise=host.noise(ctx.generators, n_frames),
        retake_noise=host.noise(ctx.retake_generators, n_frames),
    )
    return run_plan(plan, callback=step_progress(progress, len(plan.sigmas) - 1))


def repaint_samples(
    geometry: LatentGeometry, request: Repaint, n_frames: int, sample_rate_hz: int
) -> tuple[int, int]:
    """The samples ``[start, stop)`` at ``sample_rate_hz`` that a repaint takes from the decoded audio: the
    requested window where the model regenerated it (the frames ``[start_f, end_f)`` begin at or before
    ``start_s`` and end at or before ``end_s``; after ``end_f`` the decoded audio is the source's)."""
    _, end_f = repaint_window(geometry, request.start_s, request.end_s, n_frames)
    start = seconds_to_samples(request.start_s, sample_rate_hz)
    stop = min(
        seconds_to_samples(request.end_s, sample_rate_hz),
        seconds_to_samples(geometry.seconds_from_frames(end_f), sample_rate_hz),
    )
    return start, stop


def finish_repaint(host: TaskHost, request: Repaint, audio: Tensor, latents: Tensor) -> Tensor:
    """The repaint's output: the source's length; with ``keep_source_samples`` the source's own samples
    outside the window, joined to the regenerated audio by equal-power crossfades inside the window
    (docs/reference_behaviour.md#r22, #r23)."""
    source = host.source_audio(request.source_path)
    rate = host.output_sample_rate_hz
    decoded = fit_length(audio, source.shape[-1])
    if not request.keep_source_samples:
        return decoded
    start, stop = repaint_samples(host.geometry, request, latents.shape[-1], rate)
    fade = seconds_to_samples(DEFAULT_CROSSFADE_S, rate)
    return splice(source.to(decoded), decoded, start, stop, fade)


SPEC = TaskSpec("repaint", Repaint, run_repaint, finish=finish_repaint)
