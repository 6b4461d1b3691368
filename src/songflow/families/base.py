"""What a model family declares: how it recognises a checkpoint folder, loads it, what it can do.

A family is one small frozen object (:class:`ModelFamily`). The registry in ``songflow.families`` asks each
family in turn whether it recognises a folder; the pipeline loader, the CLI, the server and the studio ask
the family (``pipeline.family``) for its tasks and default settings instead of assuming ACE-Step v1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from songflow.requests import V1_SCHEMA, GenerationParams, RequestSchema


@dataclass(frozen=True)
class ComponentInfo:
    """One component of a checkpoint folder, as ``songflow info`` prints it."""

    name: str  # e.g. "transformer"
    folder: str  # folder relative to the checkpoint root, e.g. "ace_step_transformer"
    kind: str  # what it is, e.g. "DiT (ACEStepTransformer) + lyric Conformer"
    n_params: int | None = None  # from the safetensors header (no weights read); None when unknown
    dtype: str | None = None  # stored dtype(s), e.g. "bfloat16"


@dataclass(frozen=True)
class FolderReport:
    """What a checkpoint folder holds: its family, root (resolved) and components."""

    family: str
    root: Path
    components: tuple[ComponentInfo, ...]
    variant: str | None = None  # e.g. "turbo", "base", "xl-sft" (families with variants)

    @property
    def n_params(self) -> int:
        return sum(c.n_params or 0 for c in self.components)


@dataclass(frozen=True)
class ModelFamily:
    """A model family: a name, how it recognises and loads a checkpoint folder, and what it supports.

    - ``recognises(root) -> bool``: a cheap look at the folder's layout (no weights read).
    - ``validate(root) -> Path``: the full check; raises ``CheckpointError`` naming every missing part and
      returns the resolved root (e.g. the snapshot inside a Hugging Face cache folder).
    - ``describe(root) -> FolderReport``: components and parameter counts, for ``songflow info``.
    - ``load(root, *, device, dtype, offload, vocab_path, **options)``: the family's pipeline.
    - ``tasks``: the task names of ``songflow.requests.TASKS`` the family runs.
    - ``folder_tasks(root) -> tasks``: those one folder's checkpoint runs (e.g. by variant; a cheap look,
      no weights); None: all of ``tasks``. A loaded pipeline may carry its own ``tasks`` likewise.
    - ``default_params``: the generation settings of the official defaults for this family.
    - ``schema``: the family's request schema (request class per task, settings class, JSON round trip).
    """

    name: str
    title: str
    recognises: Callable[[Path], bool]
    validate: Callable[[Path], Path]
    describe: Callable[[Path], FolderReport]
    load: Callable[..., Any]
    tasks: tuple[str, ...]
    default_params: Any = field(default_factory=GenerationParams)  # an instance of schema.params_cls
    folder_tasks: Callable[[Path], tuple[str, ...]] | None = None
    sample_rate_hz: int = 44100
    schema: RequestSchema = V1_SCHEMA
