"""ACE-Step 1.5 (2 B DiT over the Oobleck VAE at 48 kHz, Qwen3-Embedding text states, optional 5 Hz LM
planner) as a model family.

A 1.5 folder is the official ``checkpoints/`` root or one DiT folder beside ``vae/`` and
``Qwen3-Embedding-0.6B/`` (layout and loading: :mod:`songflow.checkpoint.acestep_v15`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from songflow.checkpoint import acestep_v15 as ckpt
from songflow.families.base import ComponentInfo, FolderReport, ModelFamily
from songflow.requests_v15 import V15_SCHEMA, Params15

#: the song tasks (extract/stems/lego/complete: base and sft checkpoints only; ``simple``: the 5 Hz LM writes
#: caption, lyrics and metadata from a description); the planner's own requests (plan, format,
#: understand) are ``songflow.requests_v15.V15_PLANNER_SCHEMA``'s
TASKS = (
    "text2music", "retake", "repaint", "cover", "extend", "edit",
    "extract", "stems", "lego", "complete", "simple",
)  # fmt: skip
PLANNER_TASKS = ("plan", "format", "understand")


def recognises(root: Path) -> bool:
    """A root holding a DiT folder (``acestep-v15-*`` or a ``config.json`` with ``model_type "acestep"``)
    beside ``vae/`` and ``Qwen3-Embedding-0.6B/``, or such a DiT folder itself. Incomplete folders are left
    to the registry's full check, which names what is missing. No v1 folder has this layout."""
    root = Path(root)
    shared = (ckpt.VAE_FOLDER, ckpt.TEXT_ENCODER_FOLDER)
    if all((root / name).is_dir() for name in shared):
        return bool(ckpt.dit_folders(root))
    return ckpt.is_dit_folder(root) and all((root.parent / name).is_dir() for name in shared)


def validate(root: Path) -> Path:
    """The full check (:func:`~songflow.checkpoint.acestep_v15.validate_v15`); returns the given folder made
    absolute (a DiT folder stays the DiT folder, so loading it picks that DiT)."""
    ckpt.validate_v15(root)
    return ckpt.absolute(root)


def _component(name: str, folder: Path, root: Path, kind: str, weights: str) -> ComponentInfo:
    n_params, dtypes = ckpt.weights_summary(ckpt.weight_files(folder, weights))
    return ComponentInfo(name, ckpt.relative_path(folder, root), kind, n_params, ", ".join(dtypes))


def describe(root: Path) -> FolderReport:
    """Variant and components (DiT, VAE, text encoder, LM when present) with parameter counts read from
    the safetensors headers."""
    layout = ckpt.validate_v15(root)
    variant = ckpt.dit_variant(ckpt.read_v15_config(layout.dit_dir))
    parts = [
        _component("dit", layout.dit_dir, layout.root, f"DiT ({variant})", ckpt.WEIGHTS_NAME),
        _component("vae", layout.vae_dir, layout.root, "Oobleck VAE (48 kHz)", ckpt.VAE_WEIGHTS_NAME),
        _component(
            "text_encoder", layout.text_encoder_dir, layout.root, "Qwen3 text encoder", ckpt.WEIGHTS_NAME
        ),
    ]
    if layout.lm_dir is not None:
        parts.append(
            _component("lm", layout.lm_dir, layout.root, "5 Hz LM planner (Qwen3)", ckpt.WEIGHTS_NAME)
        )
    return FolderReport(family=ACESTEP_V15.name, root=layout.root, components=tuple(parts), variant=variant)


def variant_tasks(variant: str) -> tuple[str, ...]:
    """The tasks a ``variant`` (turbo/base/sft) checkpoint runs, in :data:`TASKS` order (simple mode runs
    wherever text2music does)."""
    from songflow.tasks.acestep_v15.presets import PRESETS

    runs = set(PRESETS[variant].tasks) | {"simple"}
    return tuple(t for t in TASKS if t in runs)


def folder_tasks(root: Path) -> tuple[str, ...]:
    """The tasks of the DiT the loader picks in ``root`` (read from its config.json; no weights)."""
    layout = ckpt.validate_v15(root)
    return variant_tasks(ckpt.dit_variant(ckpt.read_v15_config(layout.dit_dir)))


def _load(root: Path, *, dit: str | None = None, lm: str | None = None, **options: Any):
    """The 1.5 pipeline of a validated folder: ``songflow.pipeline_v15.load_v15_pipeline(layout, **options)``;
    ``dit`` names the DiT folder of a root holding several (default: turbo), ``lm`` the 5 Hz LM folder
    (default: the preferred one there; loaded on first use)."""
    from songflow.pipeline_v15 import load_v15_pipeline

    pipe = load_v15_pipeline(ckpt.validate_v15(root, dit, lm=lm), **options)
    pipe.family = ACESTEP_V15
    pipe.tasks = variant_tasks(pipe.variant)
    return pipe


ACESTEP_V15 = ModelFamily(
    name="acestep-v15",
    title="ACE-Step 1.5",
    recognises=recognises,
    validate=validate,
    describe=describe,
    load=_load,
    tasks=TASKS,
    folder_tasks=folder_tasks,
    default_params=Params15(),  # None fields: the checkpoint's preset (songflow.tasks.acestep_v15.presets)
    sample_rate_hz=48000,
    schema=V15_SCHEMA,
)
