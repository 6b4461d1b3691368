"""The reproducibility sidecar: a versioned JSON written next to every output.

It holds the model family and the name of its request schema, the resolved request (seeds included),
the runtime (checkpoint, device, dtype), the output files and per-stage timings; ``songflow generate
--from FILE`` regenerates the same audio from it, reading the request with the recorded family's schema
(a sidecar without ``family`` was written by ACE-Step v1). A 1.5 run that planned with the 5 Hz LM also
records its ``plans`` (one ``SongPlan`` per song) and the request as given (``planned_from``); its
``request`` is the planned one (audio codes and metadata, ``think`` off) for a single song, or, for a
batch, the request as given, which ``--from`` replays with the recorded plans, so no replay runs the LM.
The front ends also find a pipeline's family and schema here (:func:`pipeline_family`,
:func:`schema_of`), so all of them read requests alike.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch

from songflow import __version__
from songflow.config import read_json_object
from songflow.errors import ConfigError
from songflow.fileio import atomic_write_text
from songflow.requests import V1_SCHEMA, RequestSchema, unknown_key_message

SIDECAR_FORMAT_VERSION = 1
#: the family of a sidecar that names none (every sidecar written before 1.5 existed)
DEFAULT_FAMILY = "acestep-v1"
#: every top-level key a sidecar has (``write_sidecar``); reading one refuses any other key by name
SIDECAR_KEYS = (
    "songflow_version",
    "sidecar_format_version",
    "created",
    "family",
    "request_schema",
    "request",
    "sources_sha256",
    "outputs",
    "sample_rate_hz",
    "timings_s",
    "runtime",
    "plans",
    "planned_from",
)


def sidecar_path(audio_path: Path) -> Path:
    """``song.wav`` -> ``song.json``."""
    return audio_path.with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_fingerprints(request) -> dict[str, str]:
    """sha256 of every input audio file a request names (``*_path`` fields)."""
    return {
        f.name: file_sha256(getattr(request, f.name))
        for f in dataclasses.fields(request)
        if f.name.endswith("_path") and getattr(request, f.name)
    }


def known_families() -> dict[str, Any]:
    """The registered model families by name (``songflow.families.FAMILIES``)."""
    from songflow.families import FAMILIES

    return dict(FAMILIES)


def schema_of(family: Any) -> RequestSchema:
    """The request schema of a model family (v1's for None: a bare pipeline, as in tests)."""
    return getattr(family, "schema", None) or V1_SCHEMA


def known_schemas() -> tuple[RequestSchema, ...]:
    """Every request schema: v1's, 1.5's and those of the registered families (once each, by name)."""
    from songflow.requests_v15 import V15_SCHEMA

    schemas = {s.name: s for s in (V1_SCHEMA, V15_SCHEMA)}
    for family in known_families().values():
        schemas.setdefault(schema_of(family).name, schema_of(family))
    return tuple(schemas.values())


def family_of_request(request: Any) -> Any:
    """The registered family whose schema has ``request``'s class for its task, or None."""
    for family in known_families().values():
        if schema_of(family).tasks.get(getattr(request, "task", None)) is type(request):
            return family
    return None


def schema_of_request(request: Any) -> RequestSchema:
    """The schema that has ``request``'s class for its task (v1's when none has)."""
    for schema in known_schemas():
        if schema.tasks.get(getattr(request, "task", None)) is type(request):
            return schema
    return V1_SCHEMA


def pipeline_tasks(pipeline: Any) -> tuple[str, ...]:
    """The tasks a loaded pipeline runs: its own ``tasks`` (e.g. a 1.5 turbo checkpoint's), else its
    family's, else its schema's."""
    family = pipeline_family(pipeline)
    return tuple(
        getattr(pipeline, "tasks", None) or getattr(family, "tasks", None) or schema_of(family).tasks
    )


def pipeline_family(pipeline: Any) -> Any:
    """A pipeline's model family: ``pipeline.family``, else the family of its ``checkpoint_root``
    (a pipeline built without the loader), else None."""
    family = getattr(pipeline, "family", None)
    root = getattr(pipeline, "checkpoint_root", None)
    if family is None and root is not None:
        from songflow.errors import CheckpointError
        from songflow.families import family_for

        try:
            family = family_for(root)
        except CheckpointError:
            return None
    return family


def write_sidecar(
    path: Path, result, outputs: list[str], runtime: dict[str, Any], *, family: Any = None
) -> None:
    """Write the sidecar of ``result`` (``family``: the pipeline's, else the one the request's class
    belongs to; its name and its schema's are recorded)."""
    family = family or family_of_request(result.request)
    schema = schema_of(family) if family is not None else schema_of_request(result.request)
    data = {
        "songflow_version": __version__,
        "sidecar_format_version": SIDECAR_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "family": getattr(family, "name", schema.name),
        "request_schema": schema.name,
        "request": schema.to_dict(result.request),
        "sources_sha256": source_fingerprints(result.request),
        "outputs": outputs,
        "sample_rate_hz": result.sample_rate_hz,
        "timings_s": {k: round(v, 4) for k, v in result.timings_s.items()},
        "runtime": {**runtime, "torch": torch.__version__, "python": platform.python_version()},
    }
    plans = getattr(result, "plans", ())
    if plans:
        data["plans"] = [plan.to_dict() for plan in plans]
        data["planned_from"] = schema.to_dict(result.planned_from)
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_sidecar(path: Path) -> dict[str, Any]:
    """A sidecar written by :func:`write_sidecar`, its keys checked (a typo is named, not dropped).

    The ``request`` inside is checked when it is built (:func:`sidecar_request`, with the schema of the
    recorded family), key by key as well; an unknown family is refused here.
    """
    data = read_json_object(path, "parameters file")
    if "request" not in data:
        raise ConfigError(f"{path} is not a songflow parameters file (no 'request' key)")
    for key in data:
        if key not in SIDECAR_KEYS:
            raise ConfigError(f"{path}: {unknown_key_message(key, SIDECAR_KEYS, 'sidecar key')}")
    version = data.get("sidecar_format_version", SIDECAR_FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version > SIDECAR_FORMAT_VERSION:
        raise ConfigError(
            f"{path}: sidecar_format_version {version!r} is not one this songflow reads "
            f"(up to {SIDECAR_FORMAT_VERSION}); update songflow"
        )
    if not isinstance(data["request"], dict):
        raise ConfigError(f"{path}: 'request' must be a JSON object")
    if not isinstance(data.get("sources_sha256", {}), dict):
        raise ConfigError(f"{path}: 'sources_sha256' must be a JSON object")
    sidecar_family(data, path)
    return data


def sidecar_family(data: dict[str, Any], path: Path | str = "the parameters file") -> Any:
    """The model family a sidecar was written by (``family``; v1 when absent); a ``ConfigError`` naming
    the families this songflow knows when it is not one of them."""
    name = data.get("family", DEFAULT_FAMILY)
    families = known_families()
    if not isinstance(name, str) or name not in families:
        raise ConfigError(
            f"{path}: written by the model family {name!r}, which this songflow does not know "
            f"(it knows {', '.join(sorted(families))})"
        )
    return families[name]


def sidecar_request(data: dict[str, Any], path: Path | str = "the parameters file"):
    """The request of a sidecar, read with its family's schema; errors name the file and the field."""
    schema = schema_of(sidecar_family(data, path))
    try:
        return schema.from_dict(data["request"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def sidecar_plans(data: dict[str, Any], path: Path | str = "the parameters file") -> list[Any] | None:
    """The recorded song plans of a sidecar (``songflow.tasks.acestep_v15.planner.SongPlan``), None
    when it has none; errors name the file."""
    plans = data.get("plans")
    if plans is None:
        return None
    from songflow.tasks.acestep_v15.planner import SongPlan

    if not isinstance(plans, list) or not all(isinstance(p, dict) for p in plans):
        raise ConfigError(f"{path}: 'plans' must be a list of song plan objects")
    try:
        return [SongPlan.from_dict(p) for p in plans]
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
