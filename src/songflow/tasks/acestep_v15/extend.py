"""extend on ACE-Step 1.5: new audio before and/or after a song, window by window; the song stays exact.

The result has ``left + L + right`` latent frames (25 per second): ``L`` the source's VAE latents
(``N // 1920`` frames of its ``N`` samples), ``left = ceil(n_left / 1920)`` and
``right = ceil((N + n_right) / 1920) - L`` so that the new frames cover the requested
``n_left = round(left_s · 48000)`` and ``n_right`` samples exactly (``right = 0`` when ``right_s`` is 0).

The windows are v1's (:func:`songflow.tasks.extend.plan_extend_windows`): one window when the whole result
fits in :data:`WINDOW_FRAMES` (600 s, the official longest generation), else one-sided windows of at most
that many frames, the right side first, each seeing as much known context (source or earlier windows'
frames) as fits and at least half a window of it. Each window is one 1.5 repaint (SPEC §4-5) whose span is
the window's new frames: the context latents are the known frames with the new ones set to the silence
latent, the chunk mask all ones (``chunk_mask_mode`` "explicit": 1 on the new frames only), the repaint
instruction, and for the first :data:`INJECTION_FRAC` of the steps the known frames are re-injected
(noised with the run's own noise). The new frames start from the retake seeds' noise, the known ones from
the main seeds'; window ``w`` draws with the seeds shifted by ``w ·`` :data:`WINDOW_SEED_STRIDE`. A window
shorter than the 1.5 minimum (128 frames) is padded at its end with silence-latent context. Only the new
frames of a window are written into the result, so the source latents are copied, never regenerated (the
latent crossfade of repaint would only touch known frames: it is off).

The audio (:func:`finish_extend15`): the decoded result, aligned on the source's first sample and cut to
``n_left + N + n_right`` samples; with ``keep_source_samples`` the source span is the source's own samples
and the joins fade into the new parts (:func:`songflow.audio.splice.keep_span`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from songflow.audio.splice import DEFAULT_CROSSFADE_S, keep_span, seconds_to_samples, window
from songflow.errors import ConfigError
from songflow.requests_v15 import Extend15
from songflow.tasks.acestep_v15 import inputs
from songflow.tasks.acestep_v15.output import anti_clip
from songflow.tasks.acestep_v15.plan import Conditioning15, Plan15, Repaint15Spec
from songflow.tasks.acestep_v15.presets import Settings15
from songflow.tasks.acestep_v15.tasks import Host15, resolved_seeds, task_plan
from songflow.tasks.extend import ExtendWindow, plan_extend_windows
from songflow.tasks.spec import ProgressFn
from songflow.text.acestep_v15_prompts import instruction_for

__all__ = [
    "INJECTION_FRAC",
    "WINDOW_FRAMES",
    "WINDOW_SEED_STRIDE",
    "ExtendSpan15",
    "RunPlan15",
    "extend_latents",
    "extend_span",
    "finish_extend15",
    "plan_windows15",
    "window_seeds",
]

#: the longest window one DiT run samples: 600 s (official ``DURATION_MAX``, the 1.5 geometry's limit)
WINDOW_FRAMES = inputs.GEOMETRY.max_frames
#: fraction of a window's steps that re-inject its known frames (the official repaint default)
INJECTION_FRAC = 0.5
#: window ``w`` draws its noise with every seed shifted by ``w`` times this
WINDOW_SEED_STRIDE = 0x9E37_79B9

RunPlan15 = Callable[[Plan15, Callable[[int, Tensor, Tensor], None] | None], Tensor]
"""``run(plan, callback) -> latents [B, T, C]``: one DiT run (the pipeline's ``run_plan15``)."""


@dataclass(frozen=True)
class ExtendSpan15:
    """Where the source sits in an extend's result: samples at 48 kHz and latent frames."""

    n_left: int  # samples added before the source
    n_source: int  # the source's samples
    n_right: int  # samples added after it
    left_frames: int
    source_frames: int
    right_frames: int

    @property
    def total_frames(self) -> int:
        return self.left_frames + self.source_frames + self.right_frames

    @property
    def n_samples(self) -> int:
        """The result's length in samples: ``n_left + n_source + n_right``."""
        return self.n_left + self.n_source + self.n_right


def extend_span(n_source_samples: int, source_frames: int, left_s: float, right_s: float) -> ExtendSpan15:
    """The frames an extend of a source of ``n_source_samples`` (``source_frames`` latents) generates
    so that the new frames cover ``left_s`` / ``right_s`` seconds exactly (module docstring)."""
    hop, rate = inputs.HOP_SAMPLES, inputs.SAMPLE_RATE_HZ
    if source_frames < 1 or source_frames * hop > n_source_samples:
        raise ConfigError(
            f"a source of {n_source_samples} samples has at most {n_source_samples // hop} latent frames, "
            f"got {source_frames}"
        )
    n_left, n_right = seconds_to_samples(left_s, rate), seconds_to_samples(right_s, rate)
    if n_left == 0 and n_right == 0:
        raise ConfigError(
            f"extend adds no sample (left_s {left_s}, right_s {right_s}); give left_s or right_s"
        )
    right = math.ceil((n_source_samples + n_right) / hop) - source_frames if n_right else 0
    return ExtendSpan15(n_left, n_source_samples, n_right, math.ceil(n_left / hop), source_frames, right)


def plan_windows15(
    span: ExtendSpan15, window_frames: int = WINDOW_FRAMES, min_context_frames: int | None = None
) -> list[ExtendWindow]:
    """The DiT runs of an extend (:func:`songflow.tasks.extend.plan_extend_windows` over ``span``)."""
    return plan_extend_windows(
        span.source_frames, span.left_frames, span.right_frames, window_frames, min_context_frames
    )


def window_seeds(seeds: tuple[int, ...], index: int) -> tuple[int, ...]:
    """The seeds window ``index`` draws with (window 0: ``seeds`` themselves)."""
    return tuple((s + index * WINDOW_SEED_STRIDE) % 2**63 for s in seeds)


class _Conditions:
    """The condition encoder's states per window length (most windows share one), built once each."""

    def __init__(self, host: Host15, request: Extend15, instruction: str, batch: int):
        self.host, self.request, self.instruction, self.batch = host, request, instruction, batch
        self._enc: dict[int, tuple[Tensor, Tensor]] = {}

    def __call__(self, n_frames: int) -> tuple[Tensor, Tensor]:
        if n_frames not in self._enc:
            duration_s = n_frames / inputs.FRAMES_PER_S
            self._enc[n_frames] = self.host.encode_conditions(
                self.request, self.instruction, duration_s, self.batch
            )
        return self._enc[n_frames]


def _window_plan(
    host: Host15,
    request: Extend15,
    settings: Settings15,
    known: Tensor,
    win: ExtendWindow,
    index: int,
    conditions: _Conditions,
) -> tuple[Plan15, Tensor]:
    """The repaint plan of window ``index`` over ``known [B, n, C]`` (zeros on its new frames) and its
    mask ``[B, T]`` (True on the new frames; ``T >= n``: short windows are padded with silence)."""
    batch, n = known.shape[0], win.n_frames
    total = inputs.generated_frames(n)
    mask = torch.zeros(batch, total, dtype=torch.bool, device=known.device)
    mask[:, :n] = win.mask(known.device)
    silence = inputs.silence_frames(host.silence_latent, total).to(known)
    clean = torch.where(mask[..., None], silence, inputs.pad_with_silence(known, host.silence_latent, total))
    if request.params.chunk_mask_mode == "explicit":
        chunk = mask[..., None].expand_as(clean).to(clean.dtype)
    else:  # the reference's "auto" mode: all ones (docs/reference_behaviour.md#r24)
        chunk = torch.ones_like(clean)
    enc, enc_mask = conditions(total)
    cond = Conditioning15(enc, enc_mask, host.context(clean, chunk, torch.zeros(batch)))
    seeds = window_seeds(resolved_seeds(request.params.seeds), index)
    retake = window_seeds(resolved_seeds(request.retake_seeds), index)
    main = host.noise(seeds, total)
    x_init = torch.where(mask[..., None].to(main.device), host.noise(retake, total), main)
    repaint = Repaint15Spec(mask, clean, x_init, INJECTION_FRAC, 0)
    return task_plan(host, settings, request, x_init, cond, repaint=repaint, row_seeds=seeds), mask


def extend_latents(
    host: Host15,
    request: Extend15,
    settings: Settings15,
    src_latents: Tensor,
    span: ExtendSpan15,
    run: RunPlan15,
    *,
    window_frames: int = WINDOW_FRAMES,
    progress: ProgressFn | None = None,
    timings: dict[str, float] | None = None,
) -> Tensor:
    """The extend's latents ``[B, left + L + right, C]`` of ``src_latents [B, L, C]`` (one row per seed):
    frames ``[left, left + L)`` are ``src_latents`` exactly. ``progress(done, total)`` counts the steps of
    every window; ``timings`` gains the seconds spent on conditions and on diffusion."""
    if src_latents.ndim != 3 or src_latents.shape[1] != span.source_frames:
        raise ConfigError(
            f"src_latents must be [B, {span.source_frames}, C] for this span, got {tuple(src_latents.shape)}"
        )
    windows = plan_windows15(span, window_frames)
    batch = src_latents.shape[0]
    out = torch.zeros(batch, span.total_frames, src_latents.shape[2], dtype=src_latents.dtype)
    out = out.to(src_latents.device)
    out[:, span.left_frames : span.left_frames + span.source_frames] = src_latents
    conditions = _Conditions(host, request, request.instruction or instruction_for("repaint"), batch)
    timings = {} if timings is None else timings
    n_steps = settings.schedule.n_steps
    for w, win in enumerate(windows):
        t0 = time.perf_counter()
        known = out[:, win.start : win.stop].clone()  # zeros on the frames still to generate
        plan, mask = _window_plan(host, request, settings, known, win, w, conditions)
        t1 = time.perf_counter()
        callback = None
        if progress is not None:
            callback = lambda i, t, x, w=w: progress(w * n_steps + i + 1, len(windows) * n_steps)  # noqa: E731
        result = run(plan, callback)[:, : win.n_frames].to(out)
        new = mask[:, : win.n_frames, None].to(out.device)
        out[:, win.start : win.stop] = torch.where(new, result, known)
        timings["conditions"] = timings.get("conditions", 0.0) + t1 - t0
        timings["diffusion"] = timings.get("diffusion", 0.0) + time.perf_counter() - t1
    return out


def finish_extend15(audio: Tensor, source: Tensor, span: ExtendSpan15, keep_source_samples: bool) -> Tensor:
    """The returned audio ``[B, 2, n_left + N + n_right]`` of the decoded result ``audio [B, 2, T · 1920]``
    (anti-clipped as every 1.5 output): the source's first sample at ``n_left``; with
    ``keep_source_samples`` the source ``[2, N]`` itself there, joined by fades into the new audio."""
    offset = span.left_frames * inputs.HOP_SAMPLES - span.n_left
    out = window(anti_clip(audio), offset, span.n_samples)
    if not keep_source_samples:
        return out
    fade = seconds_to_samples(DEFAULT_CROSSFADE_S, inputs.SAMPLE_RATE_HZ)
    return keep_span(out, source.to(out), span.n_left, fade)
