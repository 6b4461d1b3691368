"""Model families and the one loader: ``family_for(folder)`` and ``load_pipeline(checkpoint)``.

Each family is declared once (``songflow.families.<name>``) and listed in :data:`FAMILIES`; a new family
slots in by adding its module and one entry here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from songflow.errors import CheckpointError
from songflow.families.acestep_v1 import ACESTEP_V1
from songflow.families.acestep_v15 import ACESTEP_V15
from songflow.families.base import ComponentInfo, FolderReport, ModelFamily

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (ACESTEP_V1, ACESTEP_V15)}


def family_for(path: str | Path) -> ModelFamily:
    """The family whose layout ``path`` has.

    Raises ``CheckpointError`` saying what is wrong: the path does not exist, is a file or an empty folder,
    or holds no known family's layout (then each family's own check says what it misses, e.g. that the
    path is one component folder rather than the checkpoint root).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CheckpointError(f"checkpoint folder {root} does not exist (get one with `songflow download`)")
    if not root.is_dir():
        raise CheckpointError(
            f"{root} is a file; pass the checkpoint folder (e.g. one made by `songflow download`)"
        )
    for family in FAMILIES.values():
        if family.recognises(root):
            return family
    problems = []
    for family in FAMILIES.values():  # e.g. a Hugging Face cache folder: the family's full check resolves it
        try:
            family.validate(root)
        except CheckpointError as exc:
            problems.append(f"{family.title} ({family.name}): {exc}")
            continue
        return family
    what = "not a checkpoint folder of any known model family"
    if not any(root.iterdir()):
        what = "an empty folder, not a checkpoint folder"
    raise CheckpointError(f"{root} is {what}:\n" + "\n".join(problems))


def describe_folder(path: str | Path) -> FolderReport:
    """Family, components and parameter counts of a checkpoint folder (``songflow info``); raises
    ``CheckpointError`` naming what is missing (see :func:`family_for` and the family's ``validate``)."""
    return family_for(path).describe(Path(path).expanduser())


def load_pipeline(checkpoint: str | Path | None = None, **options: Any):
    """Load the pipeline of a checkpoint folder (default: the shipped songflow-tiny model).

    ``options`` are the family loader's: ``device``, ``dtype``, ``offload``, ``vocab_path``, ``geometry``,
    ``output_sample_rate_hz``, ``batch_passes``, ``merge_loras``. The returned pipeline carries its family
    as ``pipeline.family`` and the resolved folder as ``pipeline.checkpoint_root``.
    """
    from songflow.checkpoint.hub import resolve_checkpoint

    root = resolve_checkpoint(checkpoint)
    family = family_for(root)
    return family.load(family.validate(root), **options)


__all__ = [
    "FAMILIES",
    "ComponentInfo",
    "FolderReport",
    "ModelFamily",
    "describe_folder",
    "family_for",
    "load_pipeline",
]
