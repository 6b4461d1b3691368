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

Weights: ``weights_sha256`` pins the checkpoint's weights, ``{component: {file name: sha256}}`` (each weight
file of each component the run used: ACE-Step 1.5's dit, vae, text_encoder, and lm when it planned; v1's
four), no machine path, so ``--from`` on another machine can say whether it runs the same weights
(:func:`compare_weights`). Hashes are cached per (absolute path, size, mtime_ns) in
``$XDG_CACHE_HOME/songflow/weight_hashes.json`` (default ``~/.cache``): a checkpoint is read once, not
per run.
Stems (task "stems"): one output per track, named by track (:func:`output_labels`), and a ``stems`` record
with the tracks and the residual of their sum against the mix (:func:`stems_record`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import torch

from songflow import __version__
from songflow.config import read_json_object
from songflow.errors import ConfigError, SongflowError
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
    "weights_sha256",
    "stems",
)
#: the files of a component folder that hold weights (hashed into ``weights_sha256``)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
HASH_CACHE_NAME = "weight_hashes.json"


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
        if schema_of(family).tasks.get(getattr(request, "task", "")) is type(request):
            return family
    return None


def schema_of_request(request: Any) -> RequestSchema:
    """The schema that has ``request``'s class for its task (v1's when none has)."""
    for schema in known_schemas():
        if schema.tasks.get(getattr(request, "task", "")) is type(request):
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
    path: Path,
    result,
    outputs: list[str],
    runtime: dict[str, Any],
    *,
    family: Any = None,
    weights_sha256: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Write the sidecar of ``result`` (``family``: the pipeline's, else the one the request's class
    belongs to; its name and its schema's are recorded) and return what it holds. ``weights_sha256``
    (:func:`pipeline_weight_hashes`) is recorded when given; a stems result gets its ``stems`` record."""
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
    if weights_sha256:
        data["weights_sha256"] = weights_sha256
    stems = stems_record(result)
    if stems is not None:
        data["stems"] = stems
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return data


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


# -- stems ------------------------------------------------------------------------------------------


def output_labels(request: Any, n_outputs: int) -> list[str]:
    """What tells a run's outputs apart in their file names: the track of each row of a stems request
    ("vocals", "drums", ...), else the batch index ("0", "1", ...)."""
    tracks = getattr(request, "track_names", None) if getattr(request, "task", None) == "stems" else None
    if tracks is not None and len(tracks) == n_outputs:
        return list(tracks)
    return [str(i) for i in range(n_outputs)]


def stems_record(result: Any) -> dict[str, Any] | None:
    """For a stems result: ``{"tracks", "residual_db", "mix_samples"}``, the residual of the stems' sum
    against the mix (the source read at the result's rate;
    :func:`songflow.tasks.acestep_v15.output.stem_residual_db`, rounded to 0.001 dB; None when the source
    cannot be read any more or the sum is exact); None for any other result."""
    request = result.request
    if getattr(request, "task", None) != "stems":
        return None
    from songflow.tasks.acestep_v15.output import stem_residual_db

    record: dict[str, Any] = {"tracks": list(request.track_names), "residual_db": None, "mix_samples": None}
    try:
        mix = read_mix(request.source_path, result.sample_rate_hz)
        residual = stem_residual_db(mix, result.audio)
    except (SongflowError, OSError, ValueError):
        return record
    record["mix_samples"] = int(mix.shape[-1])
    record["residual_db"] = round(residual, 3) if math.isfinite(residual) else None
    return record


def read_mix(path: str | Path, sample_rate_hz: int) -> torch.Tensor:
    """An audio file as stereo float32 ``[2, N]`` at ``sample_rate_hz`` (the mix stems are measured on)."""
    from songflow.audio.io import load_audio, to_stereo
    from songflow.audio.resample import resample

    wav, sr = load_audio(path)
    return resample(to_stereo(wav).float(), sr, sample_rate_hz)


# -- weight hashes ----------------------------------------------------------------------------------


def hash_cache_path() -> Path:
    """``$XDG_CACHE_HOME/songflow/weight_hashes.json`` (``~/.cache`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "songflow" / HASH_CACHE_NAME


class HashCache:
    """sha256 of files, cached per (absolute path, size, mtime_ns) in a JSON file (:func:`hash_cache_path`;
    an unreadable cache is started afresh); :meth:`save` writes it atomically when it changed."""

    def __init__(self, path: Path | None = None):
        self.path = path or hash_cache_path()
        self.entries: dict[str, Any] = {}
        self.changed = False
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self.entries = loaded
        except (OSError, ValueError):
            pass

    def sha256(self, path: Path) -> str:
        """The file's sha256, read from the cache while its size and mtime_ns are the ones recorded."""
        path = Path(path).absolute()
        stat = path.stat()
        key = str(path)
        entry = self.entries.get(key)
        if (
            isinstance(entry, dict)
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(entry.get("sha256"), str)
        ):
            return entry["sha256"]
        digest = file_sha256(path)
        self.entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self.changed = True
        return digest

    def save(self) -> None:
        """Write the cache (atomically) when a hash was added; a cache that cannot be written is skipped."""
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
            self.changed = False
        except OSError:
            pass


def checkpoint_weight_hashes(
    root: str | Path, *, with_lm: bool = False, cache: HashCache | None = None
) -> dict[str, dict[str, str]]:
    """``{component: {file name: sha256}}`` of a checkpoint folder: each weight file
    (:data:`WEIGHT_SUFFIXES`) directly in each component's folder, as ``songflow info`` lists the
    components (the 5 Hz LM only ``with_lm``). Raises ``CheckpointError`` for a folder no family knows."""
    from songflow.families import describe_folder

    report = describe_folder(root)
    cache = cache or HashCache()
    hashes: dict[str, dict[str, str]] = {}
    for component in report.components:
        if component.name == "lm" and not with_lm:
            continue
        folder = Path(report.root) / component.folder
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        hashes[component.name] = {p.name: cache.sha256(p) for p in files}
    cache.save()
    return hashes


def pipeline_weight_hashes(
    pipeline: Any, result: Any = None, *, root: str | Path | None = None
) -> dict[str, dict[str, str]] | None:
    """The weight hashes of the checkpoint a loaded pipeline came from: ``root`` as given to the loader
    (a 1.5 DiT folder names its DiT), else the pipeline's ``checkpoint_root``; the LM's too when
    ``result`` was planned. None for a pipeline without a folder or a folder that cannot be read (the
    sidecar is still written, without them)."""
    root = root if root is not None else getattr(pipeline, "checkpoint_root", None)
    if root is None:
        return None
    try:
        return checkpoint_weight_hashes(root, with_lm=bool(getattr(result, "plans", ())))
    except (SongflowError, OSError):
        return None


def compare_weights(recorded: dict[str, Any], current: dict[str, dict[str, str]]) -> list[str]:
    """The components whose recorded weight hashes differ from ``current``'s, each with the files that
    differ (``"dit (model.safetensors)"``) or ``"lm (not in this checkpoint)"``; [] = the same weights."""
    differ = []
    for name, files in sorted(recorded.items()):
        now = current.get(name)
        if now is None:
            differ.append(f"{name} (not in this checkpoint)")
            continue
        files = files if isinstance(files, dict) else {}
        changed = sorted(f for f in set(now) | set(files) if now.get(f) != files.get(f))
        if changed:
            differ.append(f"{name} ({', '.join(changed)})")
    return differ


def weights_verdict(
    data: dict[str, Any], root: str | Path, path: Path | str, *, uses_lm: bool = True
) -> tuple[bool, str]:
    """``(same, line)``: whether checkpoint ``root`` holds the weights sidecar ``data`` (read from
    ``path``) recorded, in one line ("same weights" or which components differ). The LM is compared only
    when the replay ``uses_lm`` (a replay from recorded plans or a planned request does not)."""
    recorded = data.get("weights_sha256")
    if not isinstance(recorded, dict) or not recorded:
        return True, f"note: {path} records no weight hashes, so whether the weights match is unknown"
    if not uses_lm:
        recorded = {k: v for k, v in recorded.items() if k != "lm"}
    current = checkpoint_weight_hashes(root, with_lm="lm" in recorded)
    differ = compare_weights(recorded, current)
    if not differ:
        return True, f"same weights as recorded in {path}"
    return False, f"the weights differ from those recorded in {path}: {'; '.join(differ)}"
