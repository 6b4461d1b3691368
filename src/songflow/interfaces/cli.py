"""The ``songflow`` command line: generate, bench, download, random-checkpoint.

Flags of ``generate`` are derived from the request dataclasses (``songflow.requests``), so the CLI cannot
drift from the Python API. Every user error prints one ``error:`` line and exits with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path
from typing import Any

from songflow.errors import ConfigError, SongflowError

EXIT_USER_ERROR = 2
DEFAULT_CHECKPOINT_DIR = Path("~/.cache/songflow/checkpoints/ACE-Step-v1-3.5B").expanduser()

# CLI spellings that differ from the field names
_ALIASES = {"duration_s": ["--duration"], "seeds": ["--seed", "--seeds"], "step_indices": ["--oss-steps"]}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, skip: set[str]) -> None:
    """One flag per dataclass field (default None = "not given"; the dataclass default applies)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        names = [f"--{f.name.replace('_', '-')}"] + _ALIASES.get(f.name, [])
        kwargs: dict[str, Any] = {"dest": f.name, "default": None}
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


def _request_from_args(args: argparse.Namespace):
    from songflow.requests import GenerationParams, Text2Music, request_from_dict

    params = {f.name: getattr(args, f.name) for f in dataclasses.fields(GenerationParams)}
    params = {k: v for k, v in params.items() if v is not None}
    if args.from_json:
        sidecar = _load_sidecar(Path(args.from_json))
        data = dict(sidecar["request"])
        data["params"] = {**data.get("params", {}), **params}
    else:
        if args.tags is None:
            raise ConfigError("--tags is required, e.g. --tags 'funk, pop, 105 BPM, energetic, guitar'")
        data = {"task": "text2music", "params": params}
    for f in dataclasses.fields(Text2Music):
        value = getattr(args, f.name, None)
        if f.name == "lyrics":
            value = _read_lyrics(value)
        if f.name != "params" and value is not None:
            data[f.name] = value
    return request_from_dict(data)


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


def cmd_generate(args: argparse.Namespace) -> int:
    from songflow.audio.io import SUPPORTED_FORMATS, save_audio
    from songflow.interfaces.sidecar import sidecar_path, write_sidecar
    from songflow.pipeline import Pipeline

    request = _request_from_args(args)
    out = Path(args.out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in SUPPORTED_FORMATS:
        raise ConfigError(f"unsupported output format {out.suffix!r}; use one of {sorted(SUPPORTED_FORMATS)}")
    ckpt = Path(args.checkpoint).expanduser() if args.checkpoint else DEFAULT_CHECKPOINT_DIR
    pipe = Pipeline.from_pretrained(
        ckpt,
        device=args.device,
        dtype=args.dtype,
        vocab_path=args.vocab,
        offload=args.offload,
        output_sample_rate_hz=args.sample_rate,
    )
    progress = None if args.quiet else _progress_printer()
    result = pipe.generate(request, progress=progress)
    paths = _output_paths(out, request.params.batch_size)
    for path, audio in zip(paths, result.audio, strict=True):
        save_audio(path, audio, result.sample_rate_hz)
    meta = {
        "checkpoint": str(ckpt),
        "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""),
    }
    write_sidecar(sidecar_path(out), result, [p.name for p in paths], meta)
    if not args.quiet:
        t = result.timings_s
        print(
            f"wrote {', '.join(map(str, paths))} and {sidecar_path(out)} "
            f"(seeds {list(result.seeds)}; {sum(t.values()):.2f} s)",
            file=sys.stderr,
        )
    return 0


def _progress_printer():
    def show(step: int, total: int) -> None:
        end = "\n" if step == total else ""
        print(f"\rsampling step {step}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def cmd_download(args: argparse.Namespace) -> int:
    from songflow.hub import download_checkpoint, fetch_lyric_vocab

    root = download_checkpoint(args.repo_id, Path(args.dir).expanduser(), revision=args.revision)
    fetch_lyric_vocab(root)
    print(f"checkpoint ready in {root}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from songflow.interfaces.bench import run_bench

    run_bench(args)
    return 0


def cmd_random_checkpoint(args: argparse.Namespace) -> int:
    from songflow.random_checkpoint import build_random_checkpoint

    path = build_random_checkpoint(Path(args.dir), size=args.size, seed=args.seed)
    print(
        f"random-weight {args.size} checkpoint written to {path} (it makes noise, not music)", file=sys.stderr
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from songflow import __version__
    from songflow.requests import GenerationParams, Text2Music

    parser = argparse.ArgumentParser(prog="songflow", description="ACE-Step music generation")
    parser.add_argument("--version", action="version", version=f"songflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a song from tags and lyrics")
    gen.add_argument("--tags", help="style tags, e.g. 'funk, pop, 105 BPM, energetic, guitar'")
    gen.add_argument("--lyrics", help="lyrics text (type \\n for a line break), or @FILE to read a file")
    _add_dataclass_flags(gen, Text2Music, skip={"tags", "lyrics", "params"})
    _add_dataclass_flags(gen, GenerationParams, skip=set())
    gen.add_argument(
        "--from",
        dest="from_json",
        metavar="PARAMS.json",
        help="regenerate from a sidecar JSON written by an earlier run",
    )
    gen.add_argument("--out", default="song.wav", help="output file; the suffix picks the format")
    _add_runtime_flags(gen)
    gen.add_argument("--sample-rate", type=int, default=48000, choices=[44100, 48000])
    gen.add_argument("--quiet", action="store_true")
    gen.set_defaults(func=cmd_generate)

    bench = sub.add_parser("bench", help="measure speed and memory with random weights")
    bench.add_argument("--config", default="tiny", help="'tiny', 'full' (3.5B) or a checkpoint folder")
    bench.add_argument("--duration", type=float, default=10.0, help="seconds of audio")
    bench.add_argument("--steps", type=int, default=27)
    bench.add_argument("--batch-size", type=int, default=1)
    bench.add_argument("--repeats", type=int, default=3, help="timed DiT forwards")
    _add_runtime_flags(bench)
    bench.set_defaults(func=cmd_bench)

    dl = sub.add_parser("download", help="download the official checkpoint and lyric vocabulary")
    dl.add_argument("--repo-id", default="ACE-Step/ACE-Step-v1-3.5B")
    dl.add_argument("--revision", default=None)
    dl.add_argument("--dir", default=str(DEFAULT_CHECKPOINT_DIR))
    dl.set_defaults(func=cmd_download)

    rnd = sub.add_parser(
        "random-checkpoint", help="write a random-weight checkpoint folder (for tests/demos)"
    )
    rnd.add_argument("dir")
    rnd.add_argument("--size", default="tiny", choices=["tiny", "small"])
    rnd.add_argument("--seed", type=int, default=0)
    rnd.set_defaults(func=cmd_random_checkpoint)
    return parser


def _add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help=f"checkpoint folder (default {DEFAULT_CHECKPOINT_DIR})")
    parser.add_argument("--vocab", help="lyric vocab.json (default: looked up in the checkpoint folder)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--offload", action="store_true", help="keep models on the CPU between stages")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except SongflowError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
