"""``songflow train``: DiT fine-tuning (see :mod:`songflow.training`).

    songflow train CONFIG [--set key.path=value ...]          train (preprocessing the dataset if needed)
    songflow train preprocess [CONFIG] [--set ...] [--dataset DIR --checkpoint DIR --out DIR]

Hook into a CLI with ``add_train_parser(subparsers)``; the parsed namespace carries ``func`` (returns the
exit code). DDP: ``torchrun --nproc_per_node N -m songflow train CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import sys

from songflow.errors import ConfigError


def _load_config(args: argparse.Namespace):
    from songflow.training.config import TrainConfig, apply_overrides

    if args.config:
        return TrainConfig.from_file(args.config, args.set)
    return apply_overrides(TrainConfig(), args.set)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from songflow.training.config import SSLModelConfig
    from songflow.training.data import preprocess
    from songflow.weights import resolve_device

    cfg = _load_config(args)
    dataset = args.dataset or cfg.data.dataset_path
    checkpoint = args.checkpoint or cfg.model.checkpoint_dir
    out = args.out or cfg.data.cache_dir or f"{cfg.output_dir}/cache"
    if not dataset or not checkpoint:
        raise ConfigError(
            "train preprocess needs a dataset and a checkpoint (--dataset/--checkpoint or CONFIG)"
        )
    ssl = [SSLModelConfig(path=p) for p in args.ssl_model] if args.ssl_model else None
    if ssl is None:
        ssl = list(cfg.repa.ssl_models) if cfg.repa.enabled else []
    report = preprocess(
        dataset,
        checkpoint,
        out,
        ssl_models=ssl,
        min_seconds=cfg.data.min_seconds,
        max_seconds=cfg.data.max_seconds,
        shard_size=cfg.data.shard_size,
        device=str(resolve_device(args.device or cfg.device)),
        progress=cfg.progress,
    )
    print(json.dumps(report.to_dict(), indent=1), file=sys.stdout)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.target == "preprocess":
        return cmd_preprocess(args)
    from songflow.training.trainer import train

    if args.config:
        raise ConfigError(f"unexpected argument {args.config!r}; use --set key=value for overrides")
    args.config = args.target
    path = train(_load_config(args))
    print(f"trained weights written to {path}", file=sys.stderr)
    return 0


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train CONFIG`` and ``train preprocess`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "train",
        help="fine-tune the DiT (full or LoRA) from a YAML/JSON config",
        description="songflow train CONFIG [--set k=v ...]  |  songflow train preprocess [CONFIG] [options]",
    )
    p.add_argument("target", metavar="CONFIG|preprocess", help="a train config file, or 'preprocess'")
    p.add_argument("config", nargs="?", default=None, help="(preprocess) optional train config file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    p.add_argument("--dataset", help="(preprocess) official-format dataset folder")
    p.add_argument("--checkpoint", help="(preprocess) base checkpoint folder")
    p.add_argument("--out", help="(preprocess) cache folder to write")
    p.add_argument("--ssl-model", action="append", default=[], help="(preprocess) REPA SSL model folder")
    p.add_argument("--device", help="(preprocess) device, default from the config")
    p.set_defaults(func=cmd_train)
    return p
