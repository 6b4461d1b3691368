"""The ``songflow`` command line: generate, bulk, plan, format, understand, bench, corpus, eval, train,
train-codec, serve, worker, bench-serve, ui, download, random-checkpoint, info.

One module per group of subcommands registers its parsers; this one assembles them and runs ``main``.
Every user error prints one ``error:`` line and exits with code 2.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import Any

from songflow.errors import SongflowError
from songflow.interfaces.cli.options import add_runtime_flags

EXIT_USER_ERROR = 2


def cmd_bench(args: argparse.Namespace) -> int:
    from songflow.interfaces.bench.speed import RANDOM_CONFIGS, run_bench

    if getattr(args, "planner", None) is not None:  # the 5 Hz LM planner alone
        from songflow.interfaces.bench.speed_planner import run_planner_bench

        # the official LM precision (bf16 on CUDA, float32 elsewhere) unless a half precision is asked for
        args.dtype = "auto" if args.dtype == "float32" else args.dtype
        run_planner_bench(args)
        return 0
    args.duration = args.duration or 10.0

    if args.config not in RANDOM_CONFIGS and args.config != "songflow-tiny":
        from songflow.families import family_for

        if family_for(args.config).name == "acestep-v15":
            from songflow.interfaces.bench.speed_v15 import run_bench_v15

            run_bench_v15(args)
            return 0
    run_bench(args)
    return 0


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    bench = subparsers.add_parser("bench", help="measure speed and memory of generation")
    bench.add_argument(
        "--config",
        default="tiny",
        help="'tiny' or 'full' (3.5B) with random weights; 'songflow-tiny' or a checkpoint folder",
    )
    bench.add_argument(
        "--duration", type=float, default=None, help="seconds of audio (default: 10; --planner: 60)"
    )
    bench.add_argument("--steps", type=int, default=27, help="diffusion steps (default: 27)")
    bench.add_argument("--batch-size", type=int, default=1, help="songs per run (default: 1)")
    bench.add_argument("--repeats", type=int, default=3, help="timed DiT forwards")
    v15 = bench.add_argument_group("ACE-Step 1.5 checkpoints")
    v15.add_argument("--no-steps", action="store_true", help="skip the per-step DiT timing")
    v15.add_argument("--vae", action=argparse.BooleanOptionalAction, default=True, help="time the VAE decode")
    v15.add_argument("--e2e", action=argparse.BooleanOptionalAction, default=True, help="time a whole song")
    v15.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    v15.add_argument("--json-out", help="append the JSON line of figures to this file")
    planner = bench.add_argument_group("ACE-Step 1.5 5 Hz LM planner")
    planner.add_argument(
        "--planner",
        metavar="DIR",
        default=None,
        help="time planning one --duration song with this acestep-5Hz-lm-* folder (or 1.5 root)",
    )
    planner.add_argument(
        "--cfg", type=float, nargs="+", default=None, help="--planner: LM CFG scales to time (default: 1 2)"
    )
    add_runtime_flags(bench)
    bench.set_defaults(func=cmd_bench)
    return bench


def build_parser() -> argparse.ArgumentParser:
    from songflow import __version__
    from songflow.interfaces.bench.serve import add_bench_serve_parser
    from songflow.interfaces.cli.checkpoint import add_checkpoint_parsers
    from songflow.interfaces.cli.codec_train import add_codec_train_parser
    from songflow.interfaces.cli.corpus import add_corpus_parser
    from songflow.interfaces.cli.eval import add_eval_parser
    from songflow.interfaces.cli.generate import add_bulk_parser, add_generate_parser
    from songflow.interfaces.cli.plan import add_plan_parsers
    from songflow.interfaces.cli.serve import add_serve_parser
    from songflow.interfaces.cli.train import add_train_parser
    from songflow.interfaces.cli.ui import add_ui_parser
    from songflow.interfaces.cli.worker import add_worker_parser

    parser = argparse.ArgumentParser(prog="songflow", description="ACE-Step music generation")
    parser.add_argument("--version", action="version", version=f"songflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        add_generate_parser,
        add_bulk_parser,
        add_plan_parsers,
        add_bench_parser,
        add_corpus_parser,
        add_eval_parser,
        add_train_parser,
        add_codec_train_parser,
        add_serve_parser,
        add_worker_parser,
        add_bench_serve_parser,
        add_ui_parser,
        add_checkpoint_parsers,
    ):
        add(sub)
    return parser


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
    except OSError as exc:
        if exc.errno != errno.ENOSPC or args.verbose:
            raise
        print(f"error: no space left on device writing {exc.filename or 'the output'}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
