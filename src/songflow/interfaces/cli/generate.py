"""``songflow generate`` and ``songflow bulk``: requests from flags (or a JSONL file) to audio + sidecar.

Flags of ``generate`` are derived from the request dataclasses (``songflow.requests``), so the CLI cannot
drift from the Python API; the loaded model family (``pipeline.family``) says which tasks it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from songflow.errors import ConfigError, SongflowError
from songflow.interfaces.cli.options import add_output_rate_flag, add_runtime_flags

# CLI spellings that differ from the field names
_ALIASES = {"duration_s": ["--duration"], "seeds": ["--seed", "--seeds"], "step_indices": ["--oss-steps"]}


def _task_fields() -> set[str]:
    from songflow.requests import TASKS

    return {f.name for cls in TASKS.values() for f in dataclasses.fields(cls)} - {"params", "loras"}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, skip: set[str]) -> None:
    """One flag per dataclass field (default None = "not given"; the dataclass default applies).

    Field names already in ``skip`` are not added again; added names are put into ``skip``.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        skip.add(f.name)
        hint = hints[f.name]
        names = [f"--{f.name.replace('_', '-')}"] + _ALIASES.get(f.name, [])
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
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs["help"] = f"(default: {default})" if default is not None else None
        parser.add_argument(*names, **kwargs)


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
    """``PATH`` or ``PATH:WEIGHT``."""
    path, sep, weight = text.rpartition(":")
    if sep and path:
        try:
            return {"path": path, "weight": float(weight)}
        except ValueError:
            pass
    return {"path": text, "weight": 1.0}


def _request_from_args(args: argparse.Namespace):
    """The request the flags describe (on top of ``--from`` when given); flags of other tasks are named."""
    from songflow.requests import EDIT_PRESETS, TASKS, GenerationParams, request_from_dict

    params = {f.name: getattr(args, f.name) for f in dataclasses.fields(GenerationParams)}
    params = {k: v for k, v in params.items() if v is not None}
    if args.from_json:
        sidecar = _load_sidecar(Path(args.from_json))
        data = dict(sidecar["request"])
        data["params"] = {**data.get("params", {}), **params}
        _warn_changed_sources(data, sidecar.get("sources_sha256", {}))
    else:
        data = {"task": "text2music", "params": params}
    if args.task:
        data["task"] = args.task
    cls: Any = TASKS.get(data.get("task", "text2music"))
    if cls is None:
        raise ConfigError(f"unknown task {data.get('task')!r}; choose one of {sorted(TASKS)}")
    own = {f.name for f in dataclasses.fields(cls)}
    for name in sorted(_task_fields()):
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in own:
            raise ConfigError(f"--{name.replace('_', '-')} does not apply to task {cls.task!r}")
        data[name] = _read_lyrics(value) if name in ("lyrics", "target_lyrics") else value
    if args.preset:
        if cls.task != "edit":
            raise ConfigError("--preset applies to the edit task only")
        n_min, n_max = EDIT_PRESETS[args.preset]
        data.setdefault("n_min_frac", n_min)
        data.setdefault("n_max_frac", n_max)
    if args.lora:
        data["loras"] = [_parse_lora(text) for text in args.lora]
    if "tags" not in data:
        raise ConfigError("--tags is required, e.g. --tags 'funk, pop, 105 BPM, energetic, guitar'")
    # e.g. a text2music sidecar turned into a retake keeps the fields a retake has
    data = {k: v for k, v in data.items() if k in own or k in ("task", "params", "loras")}
    return request_from_dict(data)


def _warn_changed_sources(request: dict, fingerprints: dict[str, str]) -> None:
    from songflow.interfaces.sidecar import file_sha256

    for field_name, digest in fingerprints.items():
        path = request.get(field_name)
        if path and Path(path).is_file() and file_sha256(path) != digest:
            print(
                f"warning: {path} changed since the parameters were written; the output will differ",
                file=sys.stderr,
            )


def _load_sidecar(path: Path) -> dict:
    from songflow.config import read_json_object

    data = read_json_object(path, "parameters file")
    if "request" not in data:
        raise ConfigError(f"{path} is not a songflow parameters file (no 'request' key)")
    return data


def _output_paths(out: Path, batch: int) -> list[Path]:
    if batch == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(batch)]


def _check_output(out: Path) -> None:
    from songflow.audio.io import SUPPORTED_FORMATS

    fmt = out.suffix.lstrip(".").lower()
    if fmt not in SUPPORTED_FORMATS:
        raise ConfigError(f"unsupported output format {out.suffix!r}; use one of {sorted(SUPPORTED_FORMATS)}")


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


def _save_result(pipe, ckpt: Path, result, out: Path) -> list[Path]:
    """Write the audio file(s) (``out``, or ``out_0``, ``out_1``... for a batch), then the sidecar."""
    from songflow.audio.io import save_audio
    from songflow.interfaces.sidecar import sidecar_path, write_sidecar

    paths = _output_paths(out, len(result.audio))
    for path, audio in zip(paths, result.audio, strict=True):
        save_audio(path, audio, result.sample_rate_hz)
    meta = {
        "checkpoint": str(ckpt),
        "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""),
    }
    write_sidecar(sidecar_path(out), result, [p.name for p in paths], meta)
    return paths


def cmd_generate(args: argparse.Namespace) -> int:
    from songflow.interfaces.sidecar import sidecar_path

    request = _request_from_args(args)
    out = Path(args.out)
    _check_output(out)
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
    """(line number, output name, request) per non-empty line of a JSONL file; errors name the line."""
    from songflow.requests import request_from_dict

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SongflowError(f"cannot read {path}: {exc.strerror}") from exc
    jobs: list[tuple[int, str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ConfigError("each line must be a JSON object")
            name = str(data.pop("name", f"{number:05d}"))
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise ConfigError(f"invalid name {name!r}")
            jobs.append((number, name, request_from_dict(data)))
        except (json.JSONDecodeError, ConfigError) as exc:
            raise ConfigError(f"{path} line {number}: {exc}") from exc
    return jobs


def cmd_bulk(args: argparse.Namespace) -> int:
    """Generate every request of a JSONL file; a line whose sidecar exists is done and skipped."""
    from tqdm import tqdm

    from songflow.fileio import atomic_write_text
    from songflow.interfaces.sidecar import sidecar_path

    out_dir = Path(args.out_dir)
    _check_output(out_dir / f"x.{args.format}")
    jobs = _read_jobs(Path(args.requests))
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


def _progress_printer():
    def show(step: int, total: int) -> None:
        end = "\n" if step == total else ""
        print(f"\rsampling step {step}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def add_generate_parser(subparsers: Any) -> argparse.ArgumentParser:
    from songflow.requests import EDIT_PRESETS, TASKS, GenerationParams

    gen = subparsers.add_parser("generate", help="generate a song from tags and lyrics")
    gen.add_argument("--task", choices=sorted(TASKS), help="what to do (default text2music)")
    gen.add_argument("--tags", help="style tags, e.g. 'funk, pop, 105 BPM, energetic, guitar'")
    gen.add_argument("--lyrics", help="lyrics text (type \\n for a line break), or @FILE to read a file")
    seen = {"tags", "lyrics", "params", "loras"}
    for cls in TASKS.values():
        _add_dataclass_flags(gen, cls, skip=seen)
    _add_dataclass_flags(gen, GenerationParams, skip=set())
    gen.add_argument("--preset", choices=sorted(EDIT_PRESETS), help="edit preset for n_min/n_max")
    gen.add_argument("--lora", action="append", metavar="PATH[:WEIGHT]", help="apply a LoRA (repeatable)")
    gen.add_argument(
        "--from",
        dest="from_json",
        metavar="PARAMS.json",
        help="regenerate from a sidecar JSON written by an earlier run",
    )
    gen.add_argument("--out", default="song.wav", help="output file; the suffix picks the format")
    add_runtime_flags(gen)
    add_output_rate_flag(gen)
    gen.add_argument("--quiet", action="store_true")
    gen.set_defaults(func=cmd_generate)
    return gen


def add_bulk_parser(subparsers: Any) -> argparse.ArgumentParser:
    bulk = subparsers.add_parser(
        "bulk", help="generate every request of a JSONL file (resumes where it stopped)"
    )
    bulk.add_argument("requests", help="JSONL: one request per line ({'task', fields, 'params', 'name'})")
    bulk.add_argument("--out-dir", required=True)
    bulk.add_argument("--format", default="wav")
    add_output_rate_flag(bulk)
    bulk.add_argument("--quiet", action="store_true")
    add_runtime_flags(bulk)
    bulk.set_defaults(func=cmd_bulk)
    return bulk
