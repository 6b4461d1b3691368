"""``songflow eval DIR_OR_JSONL``: score clips against their labels with the offline checkers.

Hook into a CLI with :func:`add_eval_parser`; ``python -m songflow.interfaces.cli.eval`` also works.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from songflow.eval import report as rp


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``eval`` sub-command on an ``argparse`` sub-parsers object; returns its parser."""
    p = subparsers.add_parser(
        "eval",
        help="score audio against its labels (tempo, meter, key, instruments, vocals, pitch, loudness, WER)",
        description="Offline adherence metrics. INPUT is a corpus folder (<key>.flac + <key>.json "
        "[+ <key>_vocals.flac]) or a JSONL of requests with a 'labels' object and an 'audio' path.",
    )
    p.add_argument("input", help="corpus folder or requests JSONL")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="write the summary + per-clip results")
    p.add_argument("--csv", dest="csv_out", metavar="FILE", help="write one row per clip")
    p.add_argument("--plots", metavar="DIR", help="write one PNG per metric (needs matplotlib)")
    p.add_argument(
        "--checks",
        default=",".join(rp.DEFAULT_CHECKS),
        help=f"comma-separated subset of {','.join(rp.ALL_CHECKS)} (default: all)",
    )
    p.add_argument(
        "--genre-prior", action="store_true", help="fold tempo octave errors into the genre's range"
    )
    p.add_argument("--target-lufs", type=float, help="loudness passes within 2 LU of this")
    p.add_argument("--vocal-threshold", type=float, default=0.05, help="sung-frame share that means vocals")
    p.add_argument(
        "--vocal-backend",
        default="auto",
        choices=["auto", "whisper", "pyin"],
        help="vocal detector: whisper (words heard; default when installed) or the pyin heuristic",
    )
    p.add_argument("--limit", type=int, help="score only the first N clips")
    p.add_argument("--generate", action="store_true", help="JSONL only: generate each request first")
    p.add_argument("--checkpoint", help="checkpoint folder for --generate (default: songflow-tiny)")
    p.add_argument("--device", default="auto", help="device for --generate")
    p.add_argument(
        "--audio-dir", help="where --generate writes (and a JSONL without 'audio' looks for) clips"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_eval)
    return p


_NON_REQUEST_KEYS = ("labels", "audio", "name", "key", "vocals_audio")


def generate_missing(jsonl: Path, out_dir: Path, checkpoint: str | None, device: str, quiet: bool) -> Path:
    """Generate every request of ``jsonl`` into ``out_dir``; returns a JSONL pointing at the audio."""
    from songflow.audio.io import save_audio
    from songflow.families import load_pipeline
    from songflow.requests import request_from_dict

    lines = rp.read_jsonl(jsonl)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(checkpoint, device=device)
    written = []
    for i, line in enumerate(lines):
        name = str(line.get("name") or line.get("key") or f"line{i:04d}")
        wav_path = out_dir / f"{name}.wav"
        if not wav_path.exists():
            req = {k: v for k, v in line.items() if k not in _NON_REQUEST_KEYS}
            if "duration" in req and "duration_s" not in req:
                req["duration_s"] = req.pop("duration")
            if "seed" in req:  # the request format keeps seeds in params
                req.setdefault("params", {}).setdefault("seeds", [req.pop("seed")])
            result = pipe.generate(request_from_dict(req))
            save_audio(wav_path, result.audio[0], result.sample_rate_hz)
            if not quiet:
                print(f"generated {wav_path}", flush=True)
        written.append({**line, "name": name, "audio": str(wav_path.resolve())})
    out = out_dir / "generated.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in written))
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    src = Path(args.input)
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = sorted(set(checks) - set(rp.ALL_CHECKS))
    if unknown:
        print(f"error: unknown check(s) {unknown}; choose from {list(rp.ALL_CHECKS)}", file=sys.stderr)
        return 2
    if not src.exists():
        print(f"error: {src} does not exist", file=sys.stderr)
        return 2
    if src.is_dir():
        if args.generate:
            print("error: --generate needs a JSONL of requests", file=sys.stderr)
            return 2
        items = rp.items_from_corpus(src)
    else:
        if args.generate:
            out_dir = Path(args.audio_dir or src.with_suffix("").as_posix() + "_audio")
            src = generate_missing(src, out_dir, args.checkpoint, args.device, args.quiet)
        try:
            items = rp.items_from_jsonl(src, audio_dir=args.audio_dir)
        except (ValueError, json.JSONDecodeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.limit:
        items = items[: args.limit]
    if not items:
        print(f"error: no labelled clips found in {args.input}", file=sys.stderr)
        return 2
    reports = rp.evaluate(
        items,
        checks,
        progress=not args.quiet,
        genre_prior=args.genre_prior,
        target_lufs=args.target_lufs,
        vocal_threshold=args.vocal_threshold,
        vocal_backend=args.vocal_backend,
    )
    summary = rp.summarize(reports)
    print(rp.format_table(reports, summary))
    if args.json_out:
        rp.write_json(args.json_out, reports, summary)
    if args.csv_out:
        rp.write_csv(args.csv_out, reports)
    if args.plots:
        rp.write_plots(args.plots, reports)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="songflow")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
