"""Flags several ``songflow`` subcommands share: the checkpoint and where/how it runs."""

from __future__ import annotations

import argparse
from typing import Any

DTYPES = ["float32", "bfloat16", "float16"]


def add_runtime_flags(parser: argparse.ArgumentParser | Any) -> None:
    """``--checkpoint``, ``--vocab``, ``--device``, ``--dtype``, ``--offload`` (on a parser or a group)."""
    parser.add_argument("--checkpoint", help="checkpoint folder (default: the shipped songflow-tiny model)")
    parser.add_argument("--vocab", help="lyric vocab.json (default: looked up in the checkpoint folder)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument(
        "--dtype", default="float32", choices=DTYPES, help="weights and compute precision (default: float32)"
    )
    parser.add_argument("--offload", action="store_true", help="keep models on the CPU between stages")


def add_lm_flags(parser: argparse.ArgumentParser | Any) -> None:
    """``--lm`` (which acestep-5Hz-lm-* folder) and ``--lm-offload``."""
    parser.add_argument(
        "--lm", default=None, help="ACE-Step 1.5: the 5 Hz LM folder to plan with (default: the one there)"
    )
    parser.add_argument(
        "--lm-offload", action="store_true", help="keep the 5 Hz LM on the CPU between uses (frees the GPU)"
    )


def add_output_rate_flag(parser: argparse.ArgumentParser | Any) -> None:
    parser.add_argument(
        "--sample-rate",
        type=int,
        default=48000,
        choices=[44100, 48000],
        help="sample rate of the written audio in Hz (default: 48000)",
    )
