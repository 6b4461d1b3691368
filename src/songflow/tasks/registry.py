"""The task registry: one :class:`~songflow.tasks.spec.TaskSpec` per task, in the order of
``songflow.requests.TASKS``. A new task adds its module (plan builder, runner, ``SPEC``) and one entry
here."""

from __future__ import annotations

from songflow.audio.geometry import LatentGeometry
from songflow.errors import ConfigError
from songflow.tasks import audio2audio, edit, extend, repaint, retake, text2music
from songflow.tasks.spec import TaskSpec

TASK_SPECS: dict[str, TaskSpec] = {
    m.SPEC.name: m.SPEC for m in (text2music, retake, repaint, extend, audio2audio, edit)
}


def spec_for(task: str) -> TaskSpec:
    """The spec of ``task``; raises :class:`ConfigError` listing the valid task names."""
    spec = TASK_SPECS.get(task)
    if spec is None:
        raise ConfigError(f"task {task!r} is not supported; choose one of {sorted(TASK_SPECS)}")
    return spec


def check_duration(geometry: LatentGeometry, duration_s: float | None) -> None:
    """Refuse a requested duration longer than the model's window or shorter than one latent frame."""
    if duration_s is None:
        return
    max_s = geometry.max_duration_s
    if duration_s > max_s:
        raise ConfigError(f"duration_s {duration_s} is longer than the model's maximum of {max_s} s")
    if geometry.frames_from_seconds(duration_s) < 1:
        min_s = geometry.seconds_from_frames(1)
        raise ConfigError(f"duration_s {duration_s} is too short; the minimum is {min_s:.3f} s")
