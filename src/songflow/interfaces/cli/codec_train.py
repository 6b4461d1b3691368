"""``songflow train-codec {vocoder,dcae} CONFIG [--set key=value ...]``: train the codec's networks.

Hook into a CLI with ``add_codec_train_parser(subparsers)``; the parsed namespace carries ``func`` (returns
the exit code). CONFIG is a JSON or YAML file of
:class:`~songflow.training.codec_config.VocoderTrainConfig` / ``DCAETrainConfig`` fields, loaded with
``--set`` by the same code as ``songflow train`` (values parsed as YAML, then coerced to the field's type:
``--set steps=10``, ``--set betas=[0.8,0.99]``, ``--set data=/music``); dotted keys reach into mappings
(``--set model_overrides.dims=[16,32]``).
Prints the folder of the saved component.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from songflow.errors import ConfigError


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b.c": "x"}`` (values parsed as by ``songflow train --set``)."""
    from songflow.training.config import parse_override

    try:
        return dict(parse_override(item) for item in items or [])
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"--set: {exc}") from exc


def cmd_train_codec(args: argparse.Namespace) -> int:
    from songflow.training.codec_trainer import (
        VocoderTrainConfig,
        load_train_config,
        train_dcae,
        train_vocoder,
    )

    try:
        overrides = parse_set(args.overrides)
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = load_train_config(args.component, args.config, overrides)
    folder = train_vocoder(cfg) if isinstance(cfg, VocoderTrainConfig) else train_dcae(cfg)  # type: ignore[arg-type]
    print(str(folder), file=sys.stdout)
    return 0


def add_codec_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train-codec`` on an ``argparse`` subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "train-codec",
        help="train the codec's vocoder (mel -> audio) or DC-AE (mel autoencoder)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("component", choices=("vocoder", "dcae"), help="which network to train")
    parser.add_argument("config", nargs="?", default=None, help="JSON/YAML training config (optional)")
    parser.add_argument(
        "--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a config field"
    )
    parser.set_defaults(func=cmd_train_codec)
    return parser
