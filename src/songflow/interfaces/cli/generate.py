"""``songflow generate`` and ``songflow bulk``: requests from flags (or a JSONL file) to audio + sidecar.

Flags of ``generate`` are derived from the request dataclasses (``songflow.requests``), so the CLI cannot
drift from the Python API: one flag per field, its help from the field's ``help`` metadata, grouped by
the tasks that use it. The loaded model family (``pipeline.family``) says which tasks it runs.

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
import typing
from pathlib import Path
from typing import Any

from songflow.errors import AudioError, ConfigError, SongflowError
from songflow.interfaces.cli.options import add_output_rate_flag, add_runtime_flags

# CLI spellings that differ from the field names
_ALIASES = {"duration_s": ["--duration"], "seeds": ["--seed", "--seeds"], "step_indices": ["--oss-steps"]}
# fields every task has; they get their own flags (--tags, --lyrics, --lora) or none (params)
_COMMON = {"tags", "lyrics", "params", "loras"}


def _field_tasks() -> dict[str, list[str]]:
    """Each task-specific field name and the tasks that have it (in ``TASKS`` order)."""
    from songflow.requests import TASKS

    owners: dict[str, list[str]] = {}
    for task, cls in TASKS.items():
        for f in dataclasses.fields(cls):
            if f.name not in _COMMON:
                owners.setdefault(f.name, []).append(task)
    return owners


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _add_field_flag(group: Any, f: dataclasses.Field, hint: Any) -> None:
    """The flag of one dataclass field (default None = "not given"; the dataclass default applies)."""
    names = list(dict.fromkeys([f"--{f.name.replace('_', '-')}", *_ALIASES.get(f.name, [])]))
    kwargs: dict[str, Any] = {"dest": f.name, "default": None}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if type(None) in args and len(args) == 2 and "tuple" not in str(hint):  # X | None -> X
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is typing.Literal:
        kwargs["choices"] = list(args)
    elif hint in (int, float, str):
        kwargs["type"] = hint
    elif "tuple" in str(hint):
        kwargs["type"] = _int_list
        kwargs["metavar"] = "N,N,..."
    else:
        raise TypeError(f"no CLI flag for the field {f.name} of type {hint}")
    text = f.metadata.get("help") or f.name.replace("_", " ")
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        text += " (required)"
    elif f.default not in (None, (), dataclasses.MISSING):
        text += f" (default: {f.default})"
    group.add_argument(*names, help=text, **kwargs)


def _add_task_flags(gen: argparse.ArgumentParser) -> dict[tuple[str, ...], Any]:
    """One argument group per set of tasks sharing fields (e.g. "repaint, extend, edit"); returns them."""
    from songflow.requests import TASKS, GenerationParams

    groups: dict[tuple[str, ...], Any] = {}
    done: set[str] = set()
    owners = _field_tasks()
    for cls in TASKS.values():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in _COMMON or f.name in done:
                continue
            done.add(f.name)
            tasks = tuple(owners[f.name])
            if tasks not in groups:
                groups[tasks] = gen.add_argument_group(
                    f"{', '.join(tasks)} options", f"only for --task {' or '.join(tasks)}"
                )
            _add_field_flag(groups[tasks], f, hints[f.name])
    sampling = gen.add_argument_group("sampler, guidance and seeds (all tasks)")
    hints = typing.get_type_hints(GenerationParams)
    for f in dataclasses.fields(GenerationParams):
        _add_field_flag(sampling, f, hints[f.name])
    return groups


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


def _from_sidecar(path: Path) -> dict[str, Any]:
    """The request of a sidecar as a dict, checked key by key (a typo is named with its close match)."""
    from songflow.interfaces.sidecar import read_sidecar
    from songflow.requests import request_from_dict

    sidecar = read_sidecar(path)
    try:
        request_from_dict(sidecar["request"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    _warn_changed_sources(sidecar["request"], sidecar.get("sources_sha256", {}))
    return dict(sidecar["request"])


def _request_from_args(args: argparse.Namespace):
    """The request the flags describe (on top of ``--from`` when given); flags of other tasks are named."""
    from songflow.requests import EDIT_PRESETS, TASKS, GenerationParams, request_from_dict

    params = {f.name: getattr(args, f.name) for f in dataclasses.fields(GenerationParams)}
    params = {k: v for k, v in params.items() if v is not None}
    data: dict[str, Any] = {"task": "text2music"}
    if args.from_json:
        data = _from_sidecar(Path(args.from_json))
    data["params"] = {**(data.get("params") or {}), **params}
    base_task = data.get("task", "text2music")
    if args.task:
        data["task"] = args.task
    cls: Any = TASKS.get(data.get("task", "text2music"))
    if cls is None:
        raise ConfigError(f"unknown task {data.get('task')!r}; choose one of {sorted(TASKS)}")
    own = {f.name for f in dataclasses.fields(cls)}
    for name in sorted(_field_tasks()):
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in own:
            raise ConfigError(f"--{name.replace('_', '-')} does not apply to task {cls.task!r}")
        data[name] = _read_lyrics(value) if name == "target_lyrics" else value
    if args.tags is not None:
        data["tags"] = args.tags
    if args.lyrics is not None:
        data["lyrics"] = _read_lyrics(args.lyrics)
    if args.preset:
        if cls.task != "edit":
            raise ConfigError("--preset applies to the edit task only")
        n_min, n_max = EDIT_PRESETS[args.preset]
        data.setdefault("n_min_frac", n_min)
        data.setdefault("n_max_frac", n_max)
    if args.lora:
        from songflow.checkpoint.hub import resolve_lora

        data["loras"] = [
            {**ref, "path": str(resolve_lora(ref["path"]))} for ref in map(_parse_lora, args.lora)
        ]
    if "tags" not in data:
        raise ConfigError("--tags is required, e.g. --tags 'funk, pop, 105 BPM, energetic, guitar'")
    if cls.task != base_task:  # e.g. a text2music sidecar turned into a retake keeps the fields a retake has
        other = set(_field_tasks()) - own
        data = {k: v for k, v in data.items() if k not in other}
    return request_from_dict(data)


def _warn_changed_sources(request: dict, fingerprints: dict[str, str]) -> None:
    from songflow.interfaces.sidecar import file_sha256

    for field_name, digest in fingerprints.items():
        path = request.get(field_name)
        if isinstance(path, str) and path and Path(path).is_file() and file_sha256(path) != digest:
            print(
                f"warning: {path} changed since the parameters were written; the output will differ",
                file=sys.stderr,
            )


def _output_paths(out: Path, batch: int) -> list[Path]:
    if batch == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(batch)]


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
    """Refuse a request whose input audio (``*_path`` fields) or LoRA files are missing, and a duration
    shorter than one latent frame."""
    from songflow.audio.geometry import LatentGeometry
    from songflow.checkpoint.lora import resolve_lora_files
    from songflow.tasks.registry import check_duration

    for f in dataclasses.fields(request):
        if f.name.endswith("_path"):
            path = Path(getattr(request, f.name)).expanduser()
            if not path.is_file():
                what = "is a folder, not an audio file" if path.is_dir() else "does not exist"
                raise ConfigError(f"{f.name} {path} {what}")
    for ref in request.loras:
        resolve_lora_files(ref.path)
    check_duration(LatentGeometry(), getattr(request, "duration_s", None))


def check_checkpoint_runs(args: argparse.Namespace, tasks: set[str]) -> None:
    """The checkpoint folder exists, has a known family's layout and that family runs ``tasks``
    (a cheap look at the folder; nothing is loaded)."""
    from songflow.checkpoint.hub import resolve_checkpoint
    from songflow.families import family_for

    family = family_for(resolve_checkpoint(args.checkpoint))
    missing = sorted(tasks - set(family.tasks))
    if missing:
        raise ConfigError(
            f"{family.title} checkpoints do not run the {missing[0]!r} task; "
            f"they run {', '.join(family.tasks)}"
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
    )
    return pipe, ckpt


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


def _save_result(pipe, ckpt: Path, result, out: Path) -> list[Path]:
    """Write the audio file(s) (``out``, or ``out_0``, ``out_1``... for a batch), then the sidecar."""
    from songflow.audio.io import save_audio
    from songflow.interfaces.sidecar import sidecar_path, write_sidecar

    paths = _output_paths(out, len(result.audio))
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
    try:
        write_sidecar(sidecar_path(out), result, [p.name for p in paths], meta)
    except OSError as exc:
        raise _write_error(sidecar_path(out), exc, 0) from exc
    return paths


def cmd_generate(args: argparse.Namespace) -> int:
    from songflow.interfaces.sidecar import sidecar_path

    request = _request_from_args(args)
    out = Path(args.out)
    check_output_path(args.out, expected_bytes=_expected_bytes(request, args.sample_rate))
    check_inputs(request)
    check_checkpoint_runs(args, {request.task})
    pipe, ckpt = load_checkpoint_pipeline(args)
    check_family_runs(pipe, request.task)
    result = pipe.generate(request, progress=None if args.quiet else _progress_printer())
    paths = _save_result(pipe, ckpt, result, out)
    if not args.quiet:
        total_s = sum(result.timings_s.values())
        print(
            f"wrote {', '.join(map(str, paths))} and {sidecar_path(out)} "
            f"(seeds {list(result.seeds)}; {total_s:.2f} s)",
            file=sys.stderr,
        )
    return 0


def _read_jobs(path: Path) -> list[tuple[int, str, Any]]:
    """(line number, output name, request) per non-empty line of a JSONL file, every line checked (its
    request, input and LoRA files, a unique name) before anything runs; errors name the line."""
    from songflow.requests import request_from_dict

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
            request = request_from_dict(data)
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
    jobs = _read_jobs(Path(args.requests))
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
    from songflow.requests import EDIT_PRESETS, TASKS

    gen = subparsers.add_parser(
        "generate",
        help="generate a song from tags and lyrics (or repaint, extend, restyle or edit one)",
        description="Generate audio. Flags are grouped by the tasks that use them; the sampler flags "
        "apply to every task. Every input is checked before the model loads.",
    )
    common = gen.add_argument_group("what to generate (all tasks)")
    common.add_argument("--task", choices=list(TASKS), help="what to do (default: text2music)")
    common.add_argument("--tags", help="style tags, e.g. 'funk, pop, 105 BPM, energetic, guitar' (required)")
    common.add_argument("--lyrics", help="lyrics text (type \\n for a line break), or @FILE to read a file")
    common.add_argument(
        "--lora",
        action="append",
        metavar="PATH[:WEIGHT]",
        help="apply a LoRA, weight 1 by default (repeatable)",
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
    output = gen.add_argument_group("output and runtime")
    output.add_argument(
        "--out", default="song.wav", help="output file; the suffix picks the format (default: song.wav)"
    )
    add_output_rate_flag(output)
    output.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_runtime_flags(output)
    gen.set_defaults(func=cmd_generate)
    return gen


def add_bulk_parser(subparsers: Any) -> argparse.ArgumentParser:
    bulk = subparsers.add_parser(
        "bulk", help="generate every request of a JSONL file (resumes where it stopped)"
    )
    bulk.add_argument(
        "requests", help="JSONL: one request per line ({'task', fields, 'params', 'name'}), names unique"
    )
    bulk.add_argument("--out-dir", required=True, help="folder for the outputs, NAME.FORMAT + NAME.json")
    bulk.add_argument("--format", default="wav", help="output format: wav, flac, ogg or mp3 (default: wav)")
    add_output_rate_flag(bulk)
    bulk.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_runtime_flags(bulk)
    bulk.set_defaults(func=cmd_bulk)
    return bulk
