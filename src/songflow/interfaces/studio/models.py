"""The models the studio offers: what ``--checkpoint`` holds, one :class:`ModelChoice` per loadable model.

``--checkpoint`` may be one model folder (a v1 checkpoint, a 1.5 DiT folder), an ACE-Step 1.5
``checkpoints/`` root holding several DiT folders (``acestep-v15-turbo``, ``-base``, ``-sft``: one choice
each, sharing the root's VAE, text encoder and 5 Hz LM), or a folder of such folders (each sub-folder a
family recognises, e.g. a v1 checkpoint beside a 1.5 root). The families decide what a folder is
(:func:`songflow.families.family_for`, ``describe`` for the variant and components, ``folder_tasks``);
nothing here reads weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from songflow.errors import CheckpointError, ConfigError

log = logging.getLogger("songflow.ui")

V15_FAMILY = "acestep-v15"


@dataclass(frozen=True)
class ModelChoice:
    """One model of ``--checkpoint``: the folder the loader takes (a v1 checkpoint or one 1.5 DiT
    folder), its family, variant (1.5: turbo/base/sft; None without variants), the tasks it runs and
    whether a 5 Hz LM planner sits beside it. ``label`` is what the model selector shows."""

    path: Path
    family: str
    family_title: str
    variant: str | None
    tasks: tuple[str, ...]
    has_lm: bool = False
    label: str = ""

    @property
    def key(self) -> str:
        """The selector's value for this model (its folder)."""
        return str(self.path)

    @property
    def description(self) -> str:
        """What the model is, in words: "ACE-Step 1.5 base, with the 5 Hz LM"."""
        text = self.family_title + (f" {self.variant}" if self.variant else "")
        return text + (", with the 5 Hz LM" if self.has_lm else "")


def _family_choices(folder: Path, family: Any) -> list[ModelChoice]:
    """The models of one folder ``family`` recognises: each DiT folder of a 1.5 root, else the folder."""
    folders = [folder]
    if family.name == V15_FAMILY:
        from songflow.checkpoint.acestep_v15 import dit_folders

        folders = dit_folders(folder) or [folder]
    out = []
    for path in folders:
        try:
            resolved = family.validate(path)
            report = family.describe(resolved)
            tasks = family.folder_tasks(resolved) if family.folder_tasks else family.tasks
        except CheckpointError as exc:  # an incomplete folder: offer the others, say why in the log
            log.warning("the studio does not offer %s: %s", path, exc)
            continue
        has_lm = any(c.name == "lm" for c in report.components)
        out.append(
            ModelChoice(Path(resolved), family.name, family.title, report.variant, tuple(tasks), has_lm)
        )
    return out


def _with_labels(choices: list[ModelChoice], given: Path) -> list[ModelChoice]:
    """Each choice labelled by its folder name (its path under ``given`` where two names are alike)."""
    names = [c.path.name for c in choices]
    out = []
    for choice, name in zip(choices, names, strict=True):
        if names.count(name) > 1:
            try:
                name = str(choice.path.relative_to(given))
            except ValueError:
                name = str(choice.path)
        out.append(replace(choice, label=f"{name} ({choice.description})"))
    return out


def discover_models(checkpoint: str | Path | None) -> list[ModelChoice]:
    """Every model ``checkpoint`` holds (None: the shipped default model), the loader's default first
    (a 1.5 root: turbo, as ``songflow generate`` picks).

    Raises:
        CheckpointError: nothing loadable there; the message is the family check's of the folder itself
            (what it misses), as ``songflow generate`` says it.
    """
    from songflow.checkpoint.hub import resolve_checkpoint
    from songflow.families import family_for

    given = resolve_checkpoint(checkpoint)
    try:
        return _with_labels(_family_choices(given, family_for(given)), given)
    except CheckpointError as exc:
        problem = exc
    found: list[ModelChoice] = []
    for sub in sorted(given.iterdir()) if given.is_dir() else ():
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        try:
            found += _family_choices(sub, family_for(sub))
        except CheckpointError:
            continue
    if not found:
        raise problem
    return _with_labels(found, given)


def pick_model(models: Sequence[ModelChoice], name: str | None) -> ModelChoice:
    """The model ``name`` names (a folder name, a path or a label; None: the first); ConfigError listing
    the models otherwise."""
    if not models:
        raise ConfigError("no model to load")
    if name is None:
        return models[0]
    for choice in models:
        if name in (choice.path.name, choice.key, choice.label) or Path(name).expanduser() == choice.path:
            return choice
    raise ConfigError(
        f"--model {name!r} is not in --checkpoint; choose one of {[m.path.name for m in models]}"
    )
