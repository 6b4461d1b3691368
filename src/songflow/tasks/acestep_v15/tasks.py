"""The 1.5 tasks as plan builders: request + host -> :class:`~songflow.tasks.acestep_v15.plan.Plan15`.

Each builder decides the task's source latents, chunk mask, cover flag, instruction and noise, and leaves
the shared work (text and lyric encoding, reference timbre, VAE encoding, the DiT context) to the host,
the 1.5 pipeline (:class:`Host15`). Official behaviours kept or fixed are in docs/reference_behaviour.md
(R24-R29).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from songflow.requests import RequestFieldError
from songflow.requests_v15 import (
    Complete15,
    Cover15,
    Edit15,
    Extract15,
    Lego15,
    Repaint15,
    Request15,
    Retake15,
    Stems15,
    Text2Music15,
)
from songflow.sampling import turbo as v15
from songflow.sampling.noise import trig_mix
from songflow.tasks.acestep_v15 import inputs
from songflow.tasks.acestep_v15.edit import EditPlan15
from songflow.tasks.acestep_v15.plan import Conditioning15, Guidance15, Plan15, Repaint15Spec
from songflow.tasks.acestep_v15.presets import Settings15
from songflow.tasks.edit import edit_step_range
from songflow.text.acestep_v15_prompts import instruction_for

__all__ = ["Host15", "Job15", "build_plan", "resolved_seeds", "task_plan"]


class Host15(Protocol):
    """What a 1.5 task may ask of the pipeline."""

    variant: str
    silence_latent: Tensor  # [1, Ts, C]

    def encode_conditions(
        self, request: Any, instruction: str | Sequence[str], duration_s: float, batch: int
    ) -> tuple[Tensor, Tensor]:
        """Encoder states and mask ``[B, L, H]``, ``[B, L]`` (text, lyrics and reference timbre); one
        ``instruction`` for every row, or one per row (``B`` of them, e.g. the stems of task "stems")."""
        ...

    def context(
        self, src: Tensor, chunk: Tensor, is_cover: Tensor, hints: Tensor | None = None
    ) -> Tensor: ...

    def null_enc(self, enc: Tensor) -> Tensor: ...

    def noise(self, seeds: tuple[int, ...], n_frames: int) -> Tensor: ...

    def renoise_fn(self, seeds: tuple[int, ...], n_frames: int) -> Callable[[int], Tensor]: ...

    def encode_source(self, path: str, seeds: tuple[int, ...]) -> Tensor:
        """The source's VAE latents ``[B, T_src, C]`` (sampled, one row per seed)."""
        ...

    def codes_to_hints(self, codes: tuple[int, ...], batch: int) -> Tensor: ...


@dataclass
class Job15:
    """A built plan plus what the pipeline needs after sampling: the frames to keep (``n_frames``, the
    requested or source length) and, for repaint, the span in frames."""

    plan: Plan15 | EditPlan15
    n_frames: int
    duration_s: float
    splice_span: tuple[int, int] | None = None  # repaint: keep the source outside these frames


def resolved_seeds(seeds: tuple[int, ...] | None) -> tuple[int, ...]:
    """``seeds``, which the pipeline resolved before building the plan."""
    if seeds is None:  # the pipeline resolves seeds before building a plan
        raise ValueError("a 1.5 plan needs resolved seeds (Pipeline15.resolve_seeds)")
    return seeds


def _conditioning(
    host: Host15,
    request: Any,
    instruction: str | Sequence[str],
    duration_s: float,
    src: Tensor,
    chunk: Tensor,
    is_cover: Tensor,
    hints: Tensor | None = None,
) -> Conditioning15:
    enc, enc_mask = host.encode_conditions(request, instruction, duration_s, src.shape[0])
    return Conditioning15(enc, enc_mask, host.context(src, chunk, is_cover, hints))


def task_plan(
    host: Host15, settings: Settings15, request: Any, x_init: Tensor, cond: Conditioning15, **kw: Any
) -> Plan15:
    """The :class:`Plan15` of a task: the settings' schedule (or ``schedule=``), their guidance, the SDE
    re-noise of the request's seeds (or ``row_seeds=``); other ``kw`` go to the plan (after, repaint...)."""
    p = request.params
    guidance = None
    if settings.guided:
        guidance = Guidance15(
            settings.guidance_scale,
            p.guidance,
            (p.cfg_interval_start, p.cfg_interval_end),
            host.null_enc(cond.enc),
        )
    row_seeds = kw.pop("row_seeds", None) or resolved_seeds(p.seeds)  # stems: the request's seed on every row
    renoise = host.renoise_fn(row_seeds, x_init.shape[1]) if p.infer_method == "sde" else None
    schedule = kw.pop("schedule", settings.schedule)
    return Plan15(x_init, schedule, cond, guidance=guidance, renoise=renoise, **kw)


def _silence(host: Host15, batch: int, n_frames: int) -> Tensor:
    return inputs.silence_frames(host.silence_latent, n_frames).expand(batch, -1, -1).clone()


def _text2music(host: Host15, request: Text2Music15, settings: Settings15) -> Job15:
    p = request.params
    n_frames = inputs.frames_for_seconds(request.duration_s)
    total = inputs.generated_frames(n_frames)
    batch = p.batch_size
    src = _silence(host, batch, total)
    chunk = torch.ones_like(src)
    is_cover = torch.zeros(batch)
    hints = None
    task = "text2music"
    if request.audio_codes is not None:  # codes make the request a cover of them (as the reference)
        task = "cover"
        hints = inputs.pad_with_silence(
            host.codes_to_hints(request.audio_codes, batch), host.silence_latent, total
        )
        is_cover = torch.ones(batch)
    instruction = request.instruction or instruction_for(task)
    cond = _conditioning(host, request, instruction, request.duration_s, src, chunk, is_cover, hints)
    x_init = host.noise(resolved_seeds(p.seeds), total)
    if isinstance(request, Retake15):
        retake = host.noise(resolved_seeds(request.retake_seeds), total)
        x_init = trig_mix(x_init, retake, request.variance_frac)
    return Job15(task_plan(host, settings, request, x_init, cond), n_frames, request.duration_s)


def _source(host: Host15, request: Any) -> tuple[Tensor, int, int]:
    """The source latents padded to the generated length, the source's frames and the generated frames."""
    latents = host.encode_source(request.source_path, resolved_seeds(request.params.seeds))
    n_frames = latents.shape[1]
    total = inputs.generated_frames(n_frames)
    return inputs.pad_with_silence(latents, host.silence_latent, total), n_frames, total


def _repaint(host: Host15, request: Repaint15, settings: Settings15) -> Job15:
    p = request.params
    clean, n_frames, total = _source(host, request)
    duration_s = n_frames / inputs.FRAMES_PER_S
    end_s = duration_s if request.end_s is None else request.end_s
    a, b = inputs.span_frames(request.start_s, end_s, n_frames)
    batch = clean.shape[0]
    mask = inputs.span_mask(a, b, total, batch, clean.device)
    src = clean.clone()
    if isinstance(request, Lego15):  # a new layer: the mix stays in the DiT's context (as the reference)
        instruction = request.instruction or instruction_for("lego", request.track)
    else:  # the span is silence in the DiT's context
        instruction = request.instruction or instruction_for("repaint")
        src[:, a:b] = inputs.silence_frames(host.silence_latent, b)[:, a:b].to(src)
    if p.chunk_mask_mode == "explicit":
        chunk = mask[..., None].expand_as(src).to(src.dtype)
    else:  # the reference's "auto" mode: all ones (docs/reference_behaviour.md#r24)
        chunk = torch.ones_like(src)
    cond = _conditioning(host, request, instruction, duration_s, src, chunk, torch.zeros(batch))
    x_init = host.noise(resolved_seeds(p.seeds), total)
    repaint = Repaint15Spec(mask, clean, x_init, request.injection_frac, request.crossfade_frames)
    plan = task_plan(host, settings, request, x_init, cond, repaint=repaint)
    return Job15(plan, n_frames, duration_s, (a, b) if request.keep_source_samples else None)


def is_cover_instruction(instruction: str) -> bool:
    """The reference's cover test on the instruction text (SPEC §5: both phrases, any case)."""
    text = instruction.lower()
    return "generate audio semantic tokens" in text and "based on the given conditions" in text


def _cover(host: Host15, request: Cover15, settings: Settings15) -> Job15:
    p = request.params
    src, n_frames, total = _source(host, request)
    duration_s = n_frames / inputs.FRAMES_PER_S
    batch = src.shape[0]
    chunk = torch.ones_like(src)
    instruction = request.instruction or instruction_for("cover")
    is_cover = torch.ones(batch)
    if request.legacy_cover_detection and not is_cover_instruction(instruction):
        is_cover = torch.zeros(batch)  # the reference's rule: only a cover instruction makes a cover
    cond = _conditioning(host, request, instruction, duration_s, src, chunk, is_cover)
    noise = host.noise(resolved_seeds(p.seeds), total)
    x_init, schedule = v15.cover_noise(settings.schedule, noise, src, request.cover_noise_frac)
    after, switch = None, schedule.n_steps
    if request.cover_strength_frac < 1.0:  # then the plain text2music condition over silence
        switch = v15.cover_switch_step(schedule.n_steps, request.cover_strength_frac)
        silence = _silence(host, batch, total)
        after = _conditioning(
            host, request, instruction_for("text2music"), duration_s, silence, chunk, torch.zeros(batch)
        )
    switching = {"after": after, "switch_step": switch, "schedule": schedule}
    plan = task_plan(host, settings, request, x_init, cond, **switching)
    return Job15(plan, n_frames, duration_s)


def _stem_instructions(request: Extract15 | Complete15 | Stems15) -> str | list[str]:
    """The instruction of extract / complete, or one per row for stems (the extract of each track)."""
    if isinstance(request, Stems15):
        if request.instruction is not None:
            raise RequestFieldError(
                ("instruction",),
                "stems gives each row its track's extract instruction; leave instruction out "
                "(or run --task extract with your instruction)",
            )
        return [instruction_for("extract", track) for track in request.track_names]
    if isinstance(request, Extract15):
        return request.instruction or instruction_for("extract", request.track)
    return request.instruction or instruction_for("complete", classes=request.class_names)


def _stems(host: Host15, request: Extract15 | Complete15 | Stems15, settings: Settings15) -> Job15:
    """extract / complete: the source's latents as the DiT's context over the whole clip (not a cover:
    ``is_covers = 0``), the task said by the instruction only, as the reference. stems: one row per track
    in one DiT batch, each row the extract of its track with the request's seed (the same source latents,
    noise and SDE draws on every row; the row's own instruction)."""
    instruction = _stem_instructions(request)
    src, n_frames, total = _source(host, request)  # [len(seeds), T, C]
    duration_s = n_frames / inputs.FRAMES_PER_S
    seeds = resolved_seeds(request.params.seeds)
    if not isinstance(instruction, str):  # stems: batch_size 1, one row per track
        src = src.repeat(len(instruction), 1, 1)
        seeds = seeds * len(instruction)
    batch = src.shape[0]
    cond = _conditioning(
        host, request, instruction, duration_s, src, torch.ones_like(src), torch.zeros(batch)
    )
    x_init = host.noise(seeds, total)
    return Job15(task_plan(host, settings, request, x_init, cond, row_seeds=seeds), n_frames, duration_s)


def _edit_target(request: Edit15) -> Edit15 | None:
    """The request as the target condition reads it (an unspecified target part is the source's); None
    when the target is the source."""
    caption = request.caption if request.target_caption is None else request.target_caption
    lyrics = request.lyrics if request.target_lyrics is None else request.target_lyrics
    if (caption, lyrics) == (request.caption, request.lyrics):
        return None
    return replace(request, caption=caption, lyrics=lyrics)


def _edit(host: Host15, request: Edit15, settings: Settings15) -> Job15:
    """FlowEdit (:mod:`songflow.tasks.acestep_v15.edit`) of the source's latents. Both conditions see the
    text2music context (silence, all-ones chunk mask, no cover: a repaint of the whole clip) and the
    text2music instruction, so the two velocities differ by the caption/lyrics alone, as FlowEdit assumes.
    Every draw (edit noise, phase-2 start, SDE) comes from one per-item stream of the seeds."""
    p = request.params
    x_src, n_frames, total = _source(host, request)
    duration_s = n_frames / inputs.FRAMES_PER_S
    batch = x_src.shape[0]
    silence = _silence(host, batch, total)
    instruction = request.instruction or instruction_for("text2music")
    chunk, no_cover = torch.ones_like(silence), torch.zeros(batch)
    source = _conditioning(host, request, instruction, duration_s, silence, chunk, no_cover)
    target, target_request = source, _edit_target(request)
    if target_request is not None:
        enc, enc_mask = host.encode_conditions(target_request, instruction, duration_s, batch)
        target = Conditioning15(enc, enc_mask, source.context)
    draw = host.renoise_fn(resolved_seeds(p.seeds), total)
    sde_noise = draw if p.infer_method == "sde" else None
    steps = edit_step_range(settings.schedule.n_steps, request.n_min_frac, request.n_max_frac)
    plan = EditPlan15(
        x_src,
        task_plan(host, settings, request, x_src, source),
        replace(task_plan(host, settings, request, x_src, target), renoise=sde_noise),
        steps,
        request.n_avg,
        lambda: draw(0),
    )
    return Job15(plan, n_frames, duration_s)


_BUILDERS: dict[str, Callable[[Host15, Any, Settings15], Job15]] = {
    "text2music": _text2music,
    "retake": _text2music,
    "repaint": _repaint,
    "lego": _repaint,
    "cover": _cover,
    "extract": _stems,
    "stems": _stems,
    "complete": _stems,
    "edit": _edit,
}


def build_plan(host: Host15, request: Request15, settings: Settings15) -> Job15:
    """The plan of one request (seeds already resolved)."""
    return _BUILDERS[request.task](host, request, settings)
