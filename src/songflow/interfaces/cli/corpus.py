"""``songflow corpus make``: the offline synthetic labelled corpus (see :mod:`songflow.data.synth.corpus`).

Hook into a CLI with ``add_corpus_parser(subparsers)``; the parsed namespace carries ``func`` (returns the
exit code) like the other songflow commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from songflow.errors import ConfigError


def parse_clip_seconds(text: str) -> tuple[float, float]:
    """``"20"`` -> (20, 20); ``"10-30"`` or ``"10:30"`` -> (10, 30)."""
    parts = text.replace(":", "-").split("-")
    try:
        values = [float(p) for p in parts if p.strip()]
    except ValueError:
        values = []
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2 and values[0] <= values[1]:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"expected SECONDS or MIN-MAX (e.g. 10-30), got {text!r}")


def cmd_corpus_make(args: argparse.Namespace) -> int:
    from songflow.data.synth.corpus import CorpusConfig, make_corpus

    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers must be >= 1")
    cfg = CorpusConfig(
        out=args.out,
        hours=args.hours,
        seed=args.seed,
        workers=args.workers or min(2, os.cpu_count() or 1),
        sample_rate=args.sample_rate,
        channels=args.channels,
        clip_seconds=args.clip_seconds,
        vocal_share=args.vocal_share,
        loudness_lufs=args.loudness,
        peak_dbfs=args.peak_dbfs,
        soundfont=args.soundfont,
        progress=not args.quiet,
    )
    report = make_corpus(cfg)
    print(json.dumps(report, indent=1), file=sys.stdout)
    return 0


def cmd_corpus_prompts(args: argparse.Namespace) -> int:
    from songflow.data.synth.corpus import eval_requests
    from songflow.fileio import atomic_write_text

    if args.duration <= 0:
        raise ConfigError("--duration must be > 0 seconds")
    lines = eval_requests(args.corpus, duration_s=args.duration, limit=args.limit)
    if not lines:
        raise ConfigError(f"no clip labels in {args.corpus}/labels; make a corpus first")
    atomic_write_text(args.out, "".join(json.dumps(line) + "\n" for line in lines))
    print(f"wrote {len(lines)} requests to {args.out}", file=sys.stderr)
    return 0


def add_corpus_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``corpus make`` on an ``argparse`` subparsers object; returns the ``corpus`` parser."""
    corpus = subparsers.add_parser("corpus", help="make a labelled synthetic music corpus offline")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True)
    make = corpus_sub.add_parser(
        "make",
        help="compose, render (FluidSynth) and sing (MBROLA) labelled clips, then write an HF dataset",
        description=(
            "Writes OUT/audio/*.flac, OUT/vocals/*.flac, OUT/midi/*.mid, OUT/labels/*.json and "
            "OUT/dataset (datasets.load_from_disk). Deterministic from --seed; re-running resumes. "
            "Needs scripts/install_synth_deps.sh."
        ),
    )
    make.add_argument("--hours", type=float, required=True, help="hours of audio to make")
    make.add_argument("--out", required=True, help="output folder")
    make.add_argument("--seed", type=int, default=0, help="corpus seed (clip i uses a seed derived from it)")
    make.add_argument("--workers", type=int, default=None, help="worker processes (default min(2, cores))")
    make.add_argument("--sample-rate", type=int, default=44100)
    make.add_argument("--channels", type=int, default=2, choices=[1, 2])
    make.add_argument(
        "--clip-seconds",
        type=parse_clip_seconds,
        default=(10.0, 30.0),
        metavar="MIN-MAX",
        help="clip length in seconds, fixed (20) or a range (default 10-30)",
    )
    make.add_argument("--vocal-share", type=float, default=0.6, help="share of clips with sung lyrics")
    make.add_argument("--loudness", type=float, default=-16.0, help="mix loudness in LUFS (default -16)")
    make.add_argument("--peak-dbfs", type=float, default=-1.0, help="limiter ceiling (default -1 dBFS)")
    make.add_argument("--soundfont", default=None, help="an .sf2 file (default: installed FluidR3_GM)")
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    make.set_defaults(func=cmd_corpus_make)
    prompts = corpus_sub.add_parser(
        "prompts",
        help="turn a corpus's labels into requests for `songflow eval --generate`",
        description="One text2music request per clip (its tags and lyrics) with the labels the checkers "
        "read. Use a corpus made with another --seed than the training corpus to test unseen prompts.",
    )
    prompts.add_argument("corpus", help="corpus folder (made by `songflow corpus make`)")
    prompts.add_argument("--out", required=True, help="JSONL file to write")
    prompts.add_argument("--duration", type=float, default=10.0, help="seconds per request (default 10)")
    prompts.add_argument("--limit", type=int, default=None, help="only the first N clips")
    prompts.set_defaults(func=cmd_corpus_prompts)
    return corpus
