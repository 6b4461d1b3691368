"""What one task declares (:class:`TaskSpec`) and what its runner may ask of the pipeline (:class:`TaskHost`).

A task lives in one module, ``songflow.tasks.<task>``: its plan builder, the seconds -> frames conversion and
window checks of its request, its runner ``run(host, request, ctx, progress) -> latents`` and its
:class:`TaskSpec`. ``songflow.tasks.registry`` collects the specs; the pipeline dispatches through them.
The runner sees the pipeline only through :class:`TaskHost`, so tasks never import the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from songflow.audio.geometry import LatentGeometry
from songflow.tasks.plan import TextInputs
from songflow.tasks.setup import TaskContext, sigmas_for

ProgressFn = Callable[[int, int], None]
"""``progress(steps_done, steps_total)`` after every sampler step."""

StepCallback = Callable[[int, Tensor, Tensor], None]


class TaskHost(Protocol):
    """What a task runner needs from the pipeline that runs it."""

    @property
    def geometry(self) -> LatentGeometry: ...

    def noise(self, generators: list[torch.Generator], n_frames: int) -> Tensor:
        """One N(0, 1) latent draw per batch item ``[B, 8, 16, n_frames]`` on the pipeline's device."""
        ...

    def load_source(self, path: str, *, what: str, allow_long: bool = False) -> Tensor:
        """An audio file's latents ``[1, 8, 16, L]``; ``what`` names it in errors."""
        ...

    def text_inputs(self, tags: str, lyrics: str, batch: int, *, with_erg_text: bool) -> TextInputs:
        """Encoder inputs of one prompt, repeated to ``batch``."""
        ...

    @property
    def output_sample_rate_hz(self) -> int:
        """The rate of the decoded audio that :data:`FinishFn` receives."""
        ...

    def source_audio(self, path: str) -> Tensor:
        """The waveform ``[2, N]`` (float32, CPU) of a source read by :meth:`load_source`, at
        ``output_sample_rate_hz``: the exact samples when the file has that rate."""
        ...


TaskRunner = Callable[[TaskHost, Any, TaskContext, ProgressFn | None], Tensor]
"""``run(host, request, ctx, progress) -> latents [B, 8, 16, L]``, called under ``torch.inference_mode``."""

FinishFn = Callable[[TaskHost, Any, Tensor, Tensor], Tensor]
"""``finish(host, request, audio, latents) -> audio``: the decoded ``audio [B, 2, N]`` (at
``host.output_sample_rate_hz``) of ``latents`` made the task's output: its exact length and, for the
windowed tasks, the source's own samples outside the window (docs/reference_behaviour.md#r22, #r23)."""

InitialNoiseFn = Callable[[TaskHost, Any, list[torch.Generator], int], Tensor]
"""``initial_noise(host, request, generators, n_frames)``: a batchable task's starting noise."""


@dataclass(frozen=True)
class TaskSpec:
    """One task: its name, request class and runner.

    ``initial_noise`` is set for the tasks that ``Pipeline.generate_many`` can run as one text2music batch:
    it gives the request's starting noise from its seed generators (``None``: the task runs alone).
    ``finish`` turns the decoded audio into the output (``None``: the decoded audio as it is).
    """

    name: str
    request_cls: type
    run: TaskRunner
    initial_noise: InitialNoiseFn | None = None
    finish: FinishFn | None = None

    @property
    def batchable(self) -> bool:
        return self.initial_noise is not None


def step_progress(progress: ProgressFn | None, n_steps: int) -> StepCallback | None:
    """A sampling-loop callback reporting ``progress(i + 1, n_steps)`` after step ``i``."""
    if progress is None:
        return None
    return lambda i, sigma, x: progress(i + 1, n_steps)


def full_run_steps(ctx: TaskContext) -> int:
    """The sampler steps of a full run of ``ctx.params`` (for progress over several runs or phases)."""
    return len(sigmas_for(ctx.params)) - 1
