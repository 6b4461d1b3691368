"""``songflow generate`` and ``songflow bulk``: requests from flags (or a JSONL file) to audio + sidecar.

Flags of ``generate`` are derived from the request schemas of every model family (``songflow.requests``
for ACE-Step v1, ``songflow.requests_v15`` for 1.5), so the CLI cannot drift from the Python API: one flag
per field name, its help from the field's ``help`` metadata, grouped by the tasks that use it. Where two
families have a field of the same name with different choices or number types, the flag takes either
(choices: their union) and the request dataclass validates the value. The family is known before the
request is built (:func:`resolve_family`: ``--checkpoint``'s, or the one a ``--from`` sidecar records);
its schema reads the flags, a JSONL line of ``bulk`` and a sidecar, and a flag its task lacks is refused
naming the family and the task (e.g. ``--tags`` for a 1.5 checkpoint, whose prompt is ``--caption``).

Everything a run would trip over is checked before the model loads (``preflight``): the request, the
output path (a file name with a known extension in a writable folder with room), the input audio and
LoRA files, the duration and whether the checkpoint's family runs the task. A mistake costs a second,
not a generation.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import shutil
import sys
import tempfile
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from songflow.errors import AudioError, ConfigError, SongflowError
from songflow.interfaces.cli.options import add_lm_flags, add_output_rate_flag, add_runtime_flags

# CLI spellings that differ from the field names
_ALIASES = {"duration_s": ["--duration"], "seeds": ["--seed", "--seeds"], "step_indices": ["--oss-steps"]}
# fields with their own flags (--tags, --lyrics, --lora) or none (params); every other field of every
# family's request classes gets one generic flag (1.5's prompt is --caption, a generic one)
_SPECIAL = frozenset({"tags", "lyrics", "params", "loras"})
_SAMPLING_GROUP = "sampler, guidance and seeds (all tasks)"


@dataclass(frozen=True)
class _Owner:
    """One schema's field behind a flag: the schema, the tasks having the field, the field, its type."""

    schema: Any  # songflow.requests.RequestSchema
    tasks: tuple[str, ...]
    field: dataclasses.Field
    hint: Any


def _schemas() -> tuple[Any, ...]:
    from songflow.interfaces.sidecar import known_schemas

    return known_schemas()


def _title(schema: Any) -> str:
    """The family title of a schema ("ACE-Step 1.5"), its name where no family is registered."""
    from songflow.interfaces.sidecar import known_families

    family = known_families().get(schema.name)
    return family.title if family is not None else schema.name


def _owners(params: bool) -> dict[str, list[_Owner]]:
    """Each flag's field name -> its owners, one per schema having it (schemas in ``_schemas`` order):
    the settings fields (``params``) or the request fields without a flag of their own."""
    found: dict[str, list[_Owner]] = {}
    for schema in _schemas():
        classes = [(None, schema.params_cls)] if params else list(schema.tasks.items())
        tasks_of: dict[str, list[str]] = {}
        fields: dict[str, tuple[dataclasses.Field, Any]] = {}
        for task, cls in classes:
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if params or f.name not in _SPECIAL:
                    tasks_of.setdefault(f.name, []).append(task or "")
                    fields.setdefault(f.name, (f, hints[f.name]))
        for name, (f, hint) in fields.items():
            tasks = () if params else tuple(tasks_of[name])
            found.setdefault(name, []).append(_Owner(schema, tasks, f, hint))
    return found


def _field_tasks() -> dict[str, list[str]]:
    """Each generic request field name and the tasks of any family that have it."""
    return {name: [t for o in owners for t in o.tasks] for name, owners in _owners(False).items()}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _number(text: str) -> int | float:
    """An integer where the text is one, else a float (a flag whose field is an int in one family and a
    float in another: the request dataclass checks the type)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _kind(hint: Any) -> tuple[str, tuple[Any, ...]]:
    """``(kind, choices)`` of a field type: bool, choice, int, float, str, ints or floats (``X | None``
    is ``X``)."""
    members = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and len(members) == 1:
        hint = members[0]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "bool", ()
    if origin is typing.Literal:
        return "choice", args
    if hint in (int, float, str):
        return hint.__name__, ()
    if origin is tuple and args and args[0] in (int, float):
        return f"{args[0].__name__}s", ()
    raise TypeError(f"no CLI flag for a field of type {hint}")


def _merged_kind(owners: list[_Owner]) -> dict[str, Any]:
    """The argparse keywords of one flag over every family's field of that name: the same kind as
    theirs; choices merged (their union); an int in one family and a float in another takes either."""
    kinds = [_kind(o.hint) for o in owners]
    names = {k for k, _ in kinds}
    if names == {"choice"}:
        return {"choices": list(dict.fromkeys(c for _, choices in kinds for c in choices))}
    if names == {"bool"}:
        return {"action": argparse.BooleanOptionalAction}
    types_of = {"int": int, "float": float, "str": str, "ints": _int_list, "floats": _float_list}
    if len(names) == 1 and names <= types_of.keys():
        (name,) = names
        listed = {"ints": "N,N,...", "floats": "X,X,..."}
        return {"type": types_of[name], **({"metavar": listed[name]} if name in listed else {})}
    if names <= {"int", "float"}:
        return {"type": _number}
    if names <= {"ints", "floats"}:
        return {"type": _float_list, "metavar": "X,X,..."}
    return {"type": str}


def _flag_help(owners: list[_Owner]) -> str:
    """The help of the first family's field, its default, and where the other families use it."""
    first = owners[0]
    f = first.field
    text = f.metadata.get("help") or f.name.replace("_", " ")
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        text += " (required)"
    elif f.default not in (None, (), "", dataclasses.MISSING):
        text += f" (default: {f.default})"
    if len(_schemas()) > 1 and len(owners) == 1:
        return f"{text} [{_title(first.schema)} only]"
    for other in owners[1:]:
        where = " too" if other.tasks == first.tasks else f": --task {' or '.join(other.tasks)}"
        text += f" [{_title(other.schema)}{where}]"
    return text


def _add_flag(group: Any, name: str, owners: list[_Owner]) -> None:
    """The flag of one field name (default None = "not given": the request's default applies)."""
    names = list(dict.fromkeys([f"--{name.replace('_', '-')}", *_ALIASES.get(name, [])]))
    group.add_argument(*names, dest=name, default=None, help=_flag_help(owners), **_merged_kind(owners))


def _group_title(owner: _Owner) -> tuple[str, str]:
    """(title, description) of the argument group of fields whose first family's tasks are ``owner``'s."""
    tasks = owner.tasks
    if owner.schema is not _schemas()[0] and set(tasks) == set(owner.schema.tasks):
        return f"what to generate ({_title(owner.schema)}, all tasks)", f"only for {_title(owner.schema)}"
    title = f"{', '.join(tasks)} options"
    if owner.schema is not _schemas()[0]:
        title += f" ({_title(owner.schema)})"
    return title, f"only for --task {' or '.join(tasks)}"


def _add_task_flags(gen: argparse.ArgumentParser) -> dict[tuple[str, ...], Any]:
    """One argument group per set of tasks sharing fields (e.g. "repaint, extend, edit"), keyed by the
    first family having the fields; then the settings of every family. Returns the task groups."""
    groups: dict[tuple[str, ...], Any] = {}
    for name, owners in _owners(False).items():
        key = (owners[0].schema.name, *owners[0].tasks)
        if key not in groups:
            groups[key] = gen.add_argument_group(*_group_title(owners[0]))
        _add_flag(groups[key], name, owners)
    sampling = gen.add_argument_group(_SAMPLING_GROUP)
    for name, owners in _owners(True).items():
        _add_flag(sampling, name, owners)
    return {key[1:]: group for key, group in groups.items() if key[0] == _schemas()[0].name}


def _read_lyrics(value: str | None) -> str | None:
    """``--lyrics`` text (a typed ``\\n`` becomes a line break) or ``@FILE``."""
    if value is None:
        return None
    if not value.startswith("@"):
        return value.replace("\\n", "\n")
    path = Path(value[1:])
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SongflowError(f"cannot read lyrics file {path}: {exc.strerror}") from exc


def _parse_lora(text: str) -> dict:
    """``PATH`` or ``PATH:WEIGHT``; a weight that is not a number is refused (unless the whole text is a
    path that exists, or the part after the colon looks like a path, e.g. ``C:\\loras\\x``)."""
    path, sep, weight = text.rpartition(":")
    if not sep or not path or "/" in weight or "\\" in weight or Path(text).exists():
        return {"path": text, "weight": 1.0}
    try:
        return {"path": path, "weight": float(weight)}
    except ValueError:
        raise ConfigError(
            f"--lora {text}: the weight {weight!r} is not a number "
            f"(give PATH or PATH:WEIGHT, e.g. {path}:0.8)"
        ) from None


def resolve_family(args: argparse.Namespace):
    """The model family of a run, known before its request is built: that of ``--checkpoint``; for
    ``--from`` without ``--checkpoint`` the checkpoint the sidecar records (when it is still there; it
    becomes ``args.checkpoint``); else the shipped songflow-tiny model's (v1). Nothing is loaded."""
    from songflow.checkpoint.hub import resolve_checkpoint
    from songflow.families import family_for

    if args.checkpoint is None and getattr(args, "from_json", None):
        args.checkpoint = _recorded_checkpoint(Path(args.from_json))
    return family_for(resolve_checkpoint(args.checkpoint))


def _recorded_checkpoint(path: Path) -> str | None:
    """The checkpoint folder a sidecar records, if it still holds the recorded family; None (the default
    model) for a v1 sidecar whose folder is gone; a ``ConfigError`` for another family's."""
    from songflow.errors import CheckpointError
    from songflow.families import family_for
    from songflow.interfaces.sidecar import DEFAULT_FAMILY, read_sidecar, sidecar_family

    sidecar = read_sidecar(path)
    family = sidecar_family(sidecar, path)
    runtime = sidecar.get("runtime")
    folder = runtime.get("checkpoint") if isinstance(runtime, dict) else None
    if isinstance(folder, str) and Path(folder).is_dir():
        try:
            if family_for(folder).name == family.name:
                return folder
        except CheckpointError:
            pass
    if family.name == DEFAULT_FAMILY:
        return None
    raise ConfigError(
        f"{path} was written by the {family.title} checkpoint {folder!r}, which is not there any more; "
        f"pass --checkpoint with a {family.title} checkpoint folder"
    )


def _from_sidecar(path: Path, family) -> dict[str, Any]:
    """The request of a sidecar as a dict, checked key by key with the schema of the family it was
    written by (a typo is named with its close match), which must be the run's family."""
    from songflow.interfaces.sidecar import read_sidecar, sidecar_family, sidecar_request

    sidecar = read_sidecar(path)
    recorded = sidecar_family(sidecar, path)
    if recorded.name != family.name:
        raise ConfigError(
            f"{path} was written by a {recorded.title} checkpoint; --checkpoint is a {family.title} "
            f"one (pass a {recorded.title} checkpoint to regenerate it)"
        )
    sidecar_request(sidecar, path)
    _warn_changed_sources(sidecar["request"], sidecar.get("sources_sha256", {}))
    return dict(sidecar["request"])


def _not_for(flag: str, task: str, family) -> ConfigError:
    return ConfigError(f"{flag} does not apply to task {task!r} of {family.title} checkpoints")


def _task_class(family, task: Any) -> Any:
    """The request class of ``task`` in ``family``'s schema; errors name the tasks the family runs."""
    from songflow.interfaces.sidecar import schema_of

    cls = schema_of(family).tasks.get(task) if isinstance(task, str) else None
    if cls is not None and task in family.tasks:
        return cls
    if any(task in schema.tasks for schema in _schemas()):
        raise ConfigError(
            f"{family.title} checkpoints do not run the {task!r} task; they run {', '.join(family.tasks)}"
        )
    raise ConfigError(f"unknown task {task!r}; choose one of {list(family.tasks)}")


def _given(args: argparse.Namespace, params: bool) -> dict[str, Any]:
    """The generic flags given on the command line (settings or request fields), by field name."""
    names = _owners(params)
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _request_from_args(args: argparse.Namespace, family=None):
    """The request the flags describe for ``family`` (default: ``resolve_family(args)``), on top of
    ``--from`` when given; flags the family's task does not have are refused naming both."""
    from songflow.interfaces.sidecar import schema_of

    family = family or resolve_family(args)
    schema = schema_of(family)
    data: dict[str, Any] = {"task": "text2music"}
    if args.from_json:
        data = _from_sidecar(Path(args.from_json), family)
    base_task = data.get("task", "text2music")
    if args.task:
        data["task"] = args.task
    _stems_flag(args, data)
    cls = _task_class(family, data.get("task", "text2music"))
    settings = {f.name for f in dataclasses.fields(schema.params_cls)}
    params = _given(args, params=True)
    for name in params:
        if name not in settings:
            raise _not_for(f"--{name.replace('_', '-')}", cls.task, family)
    data["params"] = {**(data.get("params") or {}), **params}
    own = {f.name for f in dataclasses.fields(cls)}
    for name, value in sorted(_given(args, params=False).items()):
        if name not in own:
            raise _not_for(f"--{name.replace('_', '-')}", cls.task, family)
        data[name] = _read_lyrics(value) if name in ("target_lyrics",) else value
    _own_flags(args, data, cls, family)
    if cls.task != base_task:  # e.g. a text2music sidecar turned into a retake keeps the fields a retake has
        other = set(_field_tasks()) - own
        data = {k: v for k, v in data.items() if k not in other}
    return schema.from_dict(data)


def _stems_flag(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """``--stems TRACKS`` (with --task extract or stems, or none): the stems task over ``TRACKS``, as
    ``--task stems --tracks TRACKS``."""
    stems = getattr(args, "stems", None)
    if stems is None:
        return
    if data.get("task") not in ("extract", "stems") and args.task is not None:
        raise ConfigError(f"--stems extracts stems; it goes with --task extract (or stems), not {args.task}")
    if getattr(args, "track", None) is not None or getattr(args, "tracks", None) is not None:
        raise ConfigError(
            "give the stems once: --stems TRACKS, or --track for one, or --tracks with --task stems"
        )
    data.pop("track", None)
    data.update(task="stems", tracks=stems)


def _own_flags(args: argparse.Namespace, data: dict[str, Any], cls: Any, family) -> None:
    """``--tags``, ``--lyrics``, ``--preset`` and ``--lora`` into ``data`` (where ``cls`` has them)."""
    from songflow.requests import EDIT_PRESETS

    own = {f.name for f in dataclasses.fields(cls)}
    for flag, name, value in (("--tags", "tags", args.tags), ("--lyrics", "lyrics", args.lyrics)):
        if value is not None:
            if name not in own:
                raise _not_for(flag, cls.task, family)
            data[name] = _read_lyrics(value) if name == "lyrics" else value
    if args.preset:
        if cls.task != "edit":
            raise ConfigError("--preset applies to the edit task only")
        n_min, n_max = EDIT_PRESETS[args.preset]
        data.setdefault("n_min_frac", n_min)
        data.setdefault("n_max_frac", n_max)
    if args.lora:
        if "loras" not in own:
            raise _not_for("--lora", cls.task, family)
        from songflow.checkpoint.hub import resolve_lora

        data["loras"] = [
            {**ref, "path": str(resolve_lora(ref["path"]))} for ref in map(_parse_lora, args.lora)
        ]
    if "tags" in own and "tags" not in data:
        raise ConfigError("--tags is required, e.g. --tags 'funk, pop, 105 BPM, energetic, guitar'")


def _warn_changed_sources(request: dict, fingerprints: dict[str, str]) -> None:
    from songflow.interfaces.sidecar import file_sha256

    for field_name, digest in fingerprints.items():
        path = request.get(field_name)
        if isinstance(path, str) and path and Path(path).is_file() and file_sha256(path) != digest:
            print(
                f"warning: {path} changed since the parameters were written; the output will differ",
                file=sys.stderr,
            )


def _output_paths(out: Path, labels: list[str], *, labelled: bool = False) -> list[Path]:
    """``out`` for one output (unless ``labelled``), else ``<stem>_<label><suffix>`` per output label
    (``song_0.wav``, ``song_1.wav`` for a batch; ``song_vocals.wav``, ``song_drums.wav`` for stems)."""
    if len(labels) == 1 and not labelled:
        return [out]
    return [out.with_name(f"{out.stem}_{label}{out.suffix}") for label in labels]


def _existing_folder(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (the folder a new file would be made under)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_path(out: str | Path, *, expected_bytes: int = 0, flag: str = "--out") -> None:
    """Refuse an output that would fail after the generation: a folder, no or an unknown extension, a
    folder that cannot be written to, or a disk without room for about ``expected_bytes``."""
    from songflow.audio.io import SUPPORTED_FORMATS

    path = Path(out)
    formats = sorted(SUPPORTED_FORMATS)
    if path.is_dir() or str(out).endswith(("/", "\\")):
        raise ConfigError(f"{flag} {out} is a folder; give a file name such as {path / 'song.wav'}")
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ConfigError(f"{flag} {out} has no extension; the suffix picks the format, one of {formats}")
    if fmt not in SUPPORTED_FORMATS:
        raise ConfigError(f"unsupported output format {path.suffix!r} in {flag} {out}; use one of {formats}")
    folder = _existing_folder(path.parent)
    if not folder.is_dir():
        raise ConfigError(f"cannot write {out}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: folder {folder} is not writable ({exc.strerror})") from None
    free = shutil.disk_usage(folder).free
    if expected_bytes and free < expected_bytes:
        raise ConfigError(
            f"no space left on device for {out}: it needs about {expected_bytes / 1e6:.0f} MB, "
            f"{free / 1e6:.0f} MB are free in {folder}"
        )


def _expected_bytes(request: Any, sample_rate_hz: int) -> int:
    """A rough size of the outputs (stereo float32 WAV, the largest format) where the duration is known."""
    duration_s = getattr(request, "duration_s", None)
    if duration_s is None:
        return 0
    return int(duration_s * sample_rate_hz * 2 * 4 * request.params.batch_size)


def check_inputs(request: Any) -> None:
    """Refuse a request whose input audio (``*_path`` fields given, of any family: ``source_path``,
    ``reference_path``) or LoRA files are missing, and (v1) a duration outside the model's window."""
    from songflow.audio.geometry import LatentGeometry
    from songflow.checkpoint.lora import resolve_lora_files
    from songflow.requests import V1_SCHEMA
    from songflow.tasks.registry import check_duration

    for f in dataclasses.fields(request):
        if f.name.endswith("_path") and getattr(request, f.name) is not None:
            path = Path(getattr(request, f.name)).expanduser()
            if not path.is_file():
                what = "is a folder, not an audio file" if path.is_dir() else "does not exist"
                raise ConfigError(f"{f.name} {path} {what}")
    for ref in getattr(request, "loras", ()):
        resolve_lora_files(ref.path)
    if type(request) in V1_SCHEMA.tasks.values():  # 1.5's bounds are the request's own (10 to 600 s)
        check_duration(LatentGeometry(), getattr(request, "duration_s", None))


def check_checkpoint_runs(args: argparse.Namespace, tasks: set[str]) -> None:
    """The checkpoint folder exists, has a known family's layout and that family runs ``tasks``
    (a cheap look at the folder; nothing is loaded)."""
    from songflow.checkpoint.hub import resolve_checkpoint
    from songflow.families import family_for

    root = resolve_checkpoint(args.checkpoint)
    family = family_for(root)
    missing = sorted(tasks - set(family.tasks))
    if missing:
        raise ConfigError(
            f"{family.title} checkpoints do not run the {missing[0]!r} task; "
            f"they run {', '.join(family.tasks)}"
        )
    runs = family.folder_tasks(root) if family.folder_tasks is not None else family.tasks
    missing = sorted(tasks - set(runs))
    if missing:
        raise ConfigError(
            f"the {family.title} checkpoint in {root} does not run the {missing[0]!r} task; it runs "
            f"{', '.join(runs)} (extract, stems, lego and complete need a base or sft checkpoint)"
        )


def load_checkpoint_pipeline(args: argparse.Namespace):
    """The pipeline of ``--checkpoint`` (its family decides how it loads) and the folder, for the sidecar."""
    from songflow.checkpoint.hub import resolve_checkpoint
    from songflow.families import load_pipeline

    ckpt = resolve_checkpoint(args.checkpoint)
    pipe = load_pipeline(
        args.checkpoint,
        device=args.device,
        dtype=args.dtype,
        vocab_path=args.vocab,
        offload=args.offload,
        output_sample_rate_hz=args.sample_rate,
        **lm_options(args),
    )
    return pipe, ckpt


def lm_options(args: argparse.Namespace) -> dict[str, Any]:
    """The loader options of ``--lm`` / ``--lm-offload`` where given (ACE-Step 1.5 checkpoints only)."""
    options: dict[str, Any] = {}
    if getattr(args, "lm", None):
        options["lm"] = args.lm
    if getattr(args, "lm_offload", False):
        options["lm_offload"] = True
    if options:
        flags = " and ".join(f"--{k.replace('_', '-')}" for k in options)
        require_v15_checkpoint(args.checkpoint, f"{flags}: the 5 Hz LM planner")
    return options


def require_v15_checkpoint(checkpoint: str, what: str) -> Path:
    """The resolved ``checkpoint`` root; ConfigError saying ``what`` belongs to ACE-Step 1.5 when it is
    another family's."""
    from songflow.checkpoint.hub import resolve_checkpoint
    from songflow.families import family_for

    root = resolve_checkpoint(checkpoint)
    family = family_for(root)
    if family.name != "acestep-v15":
        raise ConfigError(
            f"{what} belongs to ACE-Step 1.5 checkpoints; {root} is a {family.title} one "
            "(pass --checkpoint with an ACE-Step 1.5 checkpoints/ folder)"
        )
    return root


def recorded_plans(args: argparse.Namespace, request: Any, family: Any) -> list[Any] | None:
    """The song plans of the ``--from`` sidecar when the run is its recorded request unchanged (a batch
    planned with the LM replays from them, without the LM); None otherwise."""
    if not getattr(args, "from_json", None):
        return None
    from songflow.interfaces.sidecar import read_sidecar, schema_of, sidecar_plans

    path = Path(args.from_json)
    sidecar = read_sidecar(path)
    plans = sidecar_plans(sidecar, path)
    if plans is None or schema_of(family).to_dict(request) != sidecar["request"]:
        return None
    return plans


def check_family_runs(pipe, task: str) -> None:
    """A ``ConfigError`` when the loaded model family does not run ``task``."""
    family = getattr(pipe, "family", None)
    if family is not None and task not in family.tasks:
        raise ConfigError(
            f"{family.title} checkpoints do not run the {task!r} task; they run {', '.join(family.tasks)}"
        )


def _write_error(path: Path, exc: Exception, needed_bytes: int) -> SongflowError:
    """A full disk as "no space left on device writing X" (libsndfile reports it as "System error.")."""
    full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    if not full:
        try:
            full = shutil.disk_usage(_existing_folder(path.parent)).free < needed_bytes + (1 << 20)
        except OSError:
            full = False
    if full:
        return SongflowError(f"no space left on device writing {path}")
    if isinstance(exc, SongflowError):
        return exc
    return SongflowError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}")


def _save_result(pipe, ckpt: Path, result, out: Path) -> tuple[list[Path], dict[str, Any]]:
    """Write the audio file(s) (``out``, or ``out_0``, ``out_1``... for a batch, ``out_<track>`` for
    stems), then one sidecar ``out.json`` (the pipeline's family, the weight hashes of ``ckpt``; for
    stems the tracks and their residual against the mix); returns the paths and the sidecar's data."""
    from songflow.audio.io import save_audio
    from songflow.interfaces.sidecar import (
        output_labels,
        pipeline_family,
        pipeline_weight_hashes,
        sidecar_path,
        write_sidecar,
    )

    labels = output_labels(result.request, len(result.audio))
    paths = _output_paths(out, labels, labelled=result.request.task == "stems")
    for path, audio in zip(paths, result.audio, strict=True):
        try:
            save_audio(path, audio, result.sample_rate_hz)
        except (OSError, AudioError) as exc:
            raise _write_error(path, exc, audio.numel() * 4) from exc
    meta = {
        "checkpoint": str(ckpt),
        "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""),
    }
    weights = pipeline_weight_hashes(pipe, result, root=ckpt)
    try:
        family = pipeline_family(pipe)
        data = write_sidecar(
            sidecar_path(out), result, [p.name for p in paths], meta, family=family, weights_sha256=weights
        )
    except OSError as exc:
        raise _write_error(sidecar_path(out), exc, 0) from exc
    return paths, data


def cmd_generate(args: argparse.Namespace) -> int:
    from songflow.interfaces.sidecar import sidecar_path

    family = resolve_family(args)
    request = _request_from_args(args, family)
    out = Path(args.out)
    check_output_path(args.out, expected_bytes=_expected_bytes(request, args.sample_rate))
    check_inputs(request)
    check_checkpoint_runs(args, {request.task})
    plans = recorded_plans(args, request, family)
    check_recorded_weights(args, uses_lm=plans is None and needs_planner(request))
    pipe, ckpt = load_checkpoint_pipeline(args)
    check_family_runs(pipe, request.task)
    progress = None if args.quiet else _progress_printer()
    result = pipe.generate(request, progress=progress, **({"plans": plans} if plans else {}))
    paths, sidecar = _save_result(pipe, ckpt, result, out)
    if not args.quiet:
        total_s = sum(result.timings_s.values())
        print(
            f"wrote {', '.join(map(str, paths))} and {sidecar_path(out)} "
            f"(seeds {list(result.seeds)}; {total_s:.2f} s)",
            file=sys.stderr,
        )
        if "stems" in sidecar:
            print(stems_line(sidecar["stems"]), file=sys.stderr)
    return 0


def stems_line(record: dict[str, Any]) -> str:
    """The line ``generate`` prints for stems: the tracks and the residual of their sum against the mix."""
    residual = record.get("residual_db")
    level = "unknown (the source could not be read)" if residual is None else f"{residual:.2f} dB"
    return (
        f"stems {', '.join(record['tracks'])}: residual of their sum against the mix "
        f"20 log10(||mix - sum|| / ||mix||) = {level}"
    )


def needs_planner(request: Any) -> bool:
    """Whether a request runs the 1.5 planner LM (simple mode or ``think``)."""
    return getattr(request, "task", None) == "simple" or bool(getattr(request, "think", False))


def check_recorded_weights(args: argparse.Namespace, *, uses_lm: bool = True) -> None:
    """With ``--from``: one line saying whether ``--checkpoint`` holds the weights the sidecar recorded
    ("same weights", or which components differ: a warning; an error with ``--strict-weights``); the LM
    counts only when the run ``uses_lm``."""
    from songflow.checkpoint.hub import resolve_checkpoint
    from songflow.interfaces.sidecar import read_sidecar, weights_verdict

    strict = getattr(args, "strict_weights", False)
    if not getattr(args, "from_json", None):
        if strict:
            raise ConfigError("--strict-weights checks the weights a --from sidecar recorded; add --from")
        return
    path = Path(args.from_json)
    same, line = weights_verdict(
        read_sidecar(path), resolve_checkpoint(args.checkpoint), path, uses_lm=uses_lm
    )
    if not same and strict:
        raise ConfigError(f"{line} (--strict-weights; leave it out to run anyway)")
    if not same:
        print(f"warning: {line}; the output may differ (--strict-weights refuses)", file=sys.stderr)
    elif not args.quiet:
        print(f"weights: {line}", file=sys.stderr)


def _read_jobs(path: Path, family=None) -> list[tuple[int, str, Any]]:
    """(line number, output name, request) per non-empty line of a JSONL file, every line checked (its
    request in ``family``'s schema, input and LoRA files, a unique name) before anything runs; errors
    name the line."""
    from songflow.interfaces.sidecar import schema_of

    from_dict = schema_of(family).from_dict
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SongflowError(f"cannot read {path}: {exc.strerror}") from exc
    jobs: list[tuple[int, str, Any]] = []
    used: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ConfigError("each line must be a JSON object")
            name = data.pop("name", f"{number:05d}")
            if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
                raise ConfigError(f"invalid name {name!r} (a file name without folders)")
            if name.lower() in used:  # lower: two names one case-insensitive disk would merge
                raise ConfigError(
                    f"the name {name!r} is already used on line {used[name.lower()]}; "
                    "give every line its own name (the outputs would overwrite each other)"
                )
            used[name.lower()] = number
            request = from_dict(data)
            check_inputs(request)
            jobs.append((number, name, request))
        except (json.JSONDecodeError, SongflowError) as exc:
            raise ConfigError(f"{path} line {number}: {exc}") from exc
    return jobs


def cmd_bulk(args: argparse.Namespace) -> int:
    """Generate every request of a JSONL file; a line whose sidecar exists is done and skipped."""
    from tqdm import tqdm

    from songflow.fileio import atomic_write_text
    from songflow.interfaces.sidecar import sidecar_path

    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out-dir {out_dir} is a file, not a folder")
    check_output_path(out_dir / f"x.{args.format}", flag="--out-dir/--format")
    jobs = _read_jobs(Path(args.requests), resolve_family(args))
    check_checkpoint_runs(args, {job[2].task for job in jobs})
    todo = [job for job in jobs if not sidecar_path(out_dir / f"{job[1]}.{args.format}").exists()]
    print(f"{len(jobs)} requests: {len(jobs) - len(todo)} already done, {len(todo)} to go", file=sys.stderr)
    if not todo:
        return 0
    pipe, ckpt = load_checkpoint_pipeline(args)
    failures = []
    for number, name, request in tqdm(todo, unit="song", disable=args.quiet):
        try:
            check_family_runs(pipe, request.task)
            _save_result(pipe, ckpt, pipe.generate(request), out_dir / f"{name}.{args.format}")
        except SongflowError as exc:
            failures.append({"line": number, "name": name, "error": str(exc)})
    if failures:
        atomic_write_text(out_dir / "failures.jsonl", "".join(json.dumps(f) + "\n" for f in failures))
        print(f"{len(failures)} request(s) failed; see {out_dir / 'failures.jsonl'}", file=sys.stderr)
        return 1
    return 0


def _duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _progress_printer():
    """``sampling step 5/60, about 3 min left (3.1 s/step)``: the time left is the steps left times the
    mean time per step measured so far (from the first step on), so it is shown from step 2."""
    first: dict[str, float] = {}

    def show(step: int, total: int) -> None:
        now = time.perf_counter()
        first.setdefault("time", now)
        first.setdefault("step", step)
        line = f"sampling step {step}/{total}"
        done = step - first["step"]
        if done > 0 and step < total:
            per_step = (now - first["time"]) / done
            line += f", about {_duration_text(per_step * (total - step))} left ({per_step:.2f} s/step)"
        end = "\n" if step == total else ""
        print(f"\r{line:<60}", end=end, file=sys.stderr, flush=True)

    return show


def add_generate_parser(subparsers: Any) -> argparse.ArgumentParser:
    from songflow.requests import EDIT_PRESETS

    gen = subparsers.add_parser(
        "generate",
        help="generate a song from tags and lyrics (or repaint, extend, restyle or edit one; 1.5: --think "
        "plans it with the 5 Hz LM, --task simple writes it from a --description)",
        description="Generate audio. Flags are grouped by the tasks that use them; the sampler flags "
        "apply to every task. The checkpoint's model family (ACE-Step v1 or 1.5) decides which flags "
        "apply: v1 takes --tags, 1.5 --caption and its metadata. Every input is checked before the "
        "model loads.",
    )
    common = gen.add_argument_group("what to generate (all tasks)")
    tasks = list(dict.fromkeys(task for schema in _schemas() for task in schema.tasks))
    common.add_argument("--task", choices=tasks, help="what to do (default: text2music)")
    common.add_argument(
        "--tags", help="style tags, e.g. 'funk, pop, 105 BPM, energetic, guitar' (required; ACE-Step v1)"
    )
    common.add_argument("--lyrics", help="lyrics text (type \\n for a line break), or @FILE to read a file")
    common.add_argument(
        "--lora",
        action="append",
        metavar="PATH[:WEIGHT]",
        help="apply a LoRA adapter (a folder, or a LoRA/LoKr/LoHa .safetensors file), weight 1 by default "
        "(repeatable; ACE-Step v1 and 1.5)",
    )
    common.add_argument(
        "--from",
        dest="from_json",
        metavar="PARAMS.json",
        help="regenerate from a sidecar JSON written by an earlier run (flags given override it)",
    )
    groups = _add_task_flags(gen)
    groups[("edit",)].add_argument(
        "--preset", choices=sorted(EDIT_PRESETS), help="edit preset setting n_min_frac/n_max_frac"
    )
    common.add_argument(
        "--stems",
        metavar="TRACKS",
        help="ACE-Step 1.5 base/sft, with --task extract: extract several stems in one batched run, 'all' "
        "or a comma list (e.g. vocals,drums), written side by side as OUT_<track>.wav with one sidecar "
        "(the same as --task stems --tracks TRACKS)",
    )
    common.add_argument(
        "--strict-weights",
        action="store_true",
        help="with --from: refuse to run when --checkpoint's weights differ from those the sidecar "
        "recorded (default: a warning)",
    )
    output = gen.add_argument_group("output and runtime")
    output.add_argument(
        "--out", default="song.wav", help="output file; the suffix picks the format (default: song.wav)"
    )
    add_output_rate_flag(output)
    output.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_runtime_flags(output)
    add_lm_flags(output)
    gen.set_defaults(func=cmd_generate)
    return gen


def add_bulk_parser(subparsers: Any) -> argparse.ArgumentParser:
    bulk = subparsers.add_parser(
        "bulk", help="generate every request of a JSONL file (resumes where it stopped)"
    )
    bulk.add_argument(
        "requests",
        help="JSONL: one request per line ({'task', fields, 'params', 'name'}) in the request schema of "
        "the checkpoint's family, names unique",
    )
    bulk.add_argument("--out-dir", required=True, help="folder for the outputs, NAME.FORMAT + NAME.json")
    bulk.add_argument("--format", default="wav", help="output format: wav, flac, ogg or mp3 (default: wav)")
    add_output_rate_flag(bulk)
    bulk.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_runtime_flags(bulk)
    add_lm_flags(bulk)
    bulk.set_defaults(func=cmd_bulk)
    return bulk
