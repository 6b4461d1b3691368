"""ACE-Step v1 (3.5 B DiT over a mel DC-AE + vocoder, UMT5 tags, Conformer lyrics) as a model family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from songflow.checkpoint.weights import CHECKPOINT_FOLDERS, validate_checkpoint_dir
from songflow.families.base import ComponentInfo, FolderReport, ModelFamily

TASKS = ("text2music", "retake", "repaint", "extend", "audio2audio", "edit")

# component name, folder, weights file, what it is
_COMPONENTS = (
    ("transformer", "ace_step_transformer", "diffusion_pytorch_model.safetensors", "DiT + lyric Conformer"),
    ("dcae", "music_dcae_f8c8", "diffusion_pytorch_model.safetensors", "mel DC-AE (f8c8)"),
    ("vocoder", "music_vocoder", "diffusion_pytorch_model.safetensors", "mel vocoder"),
    ("text_encoder", "umt5-base", "model.safetensors", "UMT5 tag encoder"),
)


def recognises(root: Path) -> bool:
    """A v1 folder holds at least one of the four official component folders."""
    return any((root / folder).is_dir() for folder in CHECKPOINT_FOLDERS)


def describe(root: Path) -> FolderReport:
    from songflow.checkpoint.weights import safetensors_summary

    root = validate_checkpoint_dir(root)
    parts = []
    for name, folder, weights, kind in _COMPONENTS:
        n_params, dtypes = safetensors_summary(root / folder / weights)
        parts.append(ComponentInfo(name, folder, kind, n_params, ", ".join(dtypes)))
    return FolderReport(family=ACESTEP_V1.name, root=root, components=tuple(parts))


def load(root: Path, **options: Any):
    from songflow.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(root, **options)
    pipe.family = ACESTEP_V1
    return pipe


ACESTEP_V1 = ModelFamily(
    name="acestep-v1",
    title="ACE-Step v1",
    recognises=recognises,
    validate=validate_checkpoint_dir,
    describe=describe,
    load=load,
    tasks=TASKS,
)
