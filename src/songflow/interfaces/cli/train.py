"""``songflow train``: DiT fine-tuning (see :mod:`songflow.training`).

    songflow train CONFIG [--set key.path=value ...]          train (preprocessing the dataset if needed)
    songflow train preprocess [CONFIG] [--set ...] [--dataset DIR --checkpoint DIR --out DIR]
    songflow train init --dataset DIR --dcae DIR --vocoder DIR --out DIR   a fresh songflow-tiny checkpoint
    songflow train package CHECKPOINT --out DIR [--card FILE]            a self-contained copy to ship

Hook into a CLI with ``add_train_parser(subparsers)``; the parsed namespace carries ``func`` (returns the
exit code). DDP: ``torchrun --nproc_per_node N -m songflow train CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from songflow.errors import ConfigError


def _load_config(args: argparse.Namespace):
    from songflow.checkpoint.hub import DEFAULT_MODEL_NAME, resolve_checkpoint
    from songflow.training.config import TrainConfig, apply_overrides

    cfg = (
        TrainConfig.from_file(args.config, args.set)
        if args.config
        else apply_overrides(TrainConfig(), args.set)
    )
    if cfg.model.checkpoint_dir == DEFAULT_MODEL_NAME:  # fine-tune the shipped model by name
        cfg.model.checkpoint_dir = str(resolve_checkpoint(None))
    return cfg


def cmd_preprocess(args: argparse.Namespace) -> int:
    from songflow.checkpoint.device import resolve_device
    from songflow.training.config import SSLModelConfig
    from songflow.training.data import preprocess
    from songflow.training.trainer import preprocess_options

    cfg = _load_config(args)
    dataset = args.dataset or cfg.data.dataset_path
    checkpoint = args.checkpoint or cfg.model.checkpoint_dir
    out = args.out or cfg.data.cache_dir or f"{cfg.output_dir}/cache"
    if not dataset or not checkpoint:
        raise ConfigError(
            "train preprocess needs a dataset and a checkpoint (--dataset/--checkpoint or CONFIG)"
        )
    from songflow.training.v15 import is_v15_checkpoint

    if is_v15_checkpoint(checkpoint):
        return _preprocess_v15(cfg, dataset, checkpoint, out, args)
    ssl = [SSLModelConfig(path=p) for p in args.ssl_model] if args.ssl_model else None
    if ssl is None:
        ssl = list(cfg.repa.ssl_models) if cfg.repa.enabled else []
    options = preprocess_options(cfg, str(resolve_device(args.device or cfg.device)))
    report = preprocess(dataset, checkpoint, out, ssl_models=ssl, **options)
    print(json.dumps(report.to_dict(), indent=1), file=sys.stdout)
    return 0


def _preprocess_v15(cfg, dataset: str, checkpoint: str, out: str, args: argparse.Namespace) -> int:
    """``train preprocess`` of an ACE-Step 1.5 checkpoint (its cache of latents and encoder states)."""
    from songflow.checkpoint.device import resolve_device
    from songflow.training.trainer import preprocess_options
    from songflow.training.v15_data import preprocess_v15

    if args.ssl_model:
        raise ConfigError("--ssl-model (REPA) is for v1 checkpoints; leave it out for ACE-Step 1.5")
    options = preprocess_options(cfg, str(resolve_device(args.device or cfg.device)))
    conditions = cfg.v15.conditions
    report = preprocess_v15(dataset, checkpoint, out, load_host=load_host, conditions=conditions, **options)
    print(json.dumps(report.to_dict(), indent=1), file=sys.stdout)
    return 0


def load_host(root: str | Path, device: str) -> Any:
    """The pipeline whose condition code builds a 1.5 training cache (float32, on ``device``)."""
    from songflow.families import load_pipeline

    return load_pipeline(root, device=device, dtype="float32")


def cmd_init(args: argparse.Namespace) -> int:
    from songflow.training.default_model import build_initial_checkpoint

    missing = [f"--{k}" for k in ("dataset", "dcae", "vocoder", "out") if not getattr(args, k)]
    if missing:
        raise ConfigError(f"train init needs {', '.join(missing)}")
    path = build_initial_checkpoint(args.out, dataset=args.dataset, dcae=args.dcae, vocoder=args.vocoder)
    print(f"untrained songflow-tiny checkpoint written to {path}", file=sys.stderr)
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from songflow.training.default_model import package_model

    if not args.config or not args.out:
        raise ConfigError("usage: songflow train package CHECKPOINT --out DIR [--card MODEL_CARD.md]")
    path = package_model(args.config, args.out, card=args.card)
    print(f"packaged {args.config} into {path}", file=sys.stderr)
    return 0


def sample_renderer(cfg):
    """``on_export`` hook of :func:`songflow.training.trainer.train` that renders ``cfg.samples`` with the
    exported weights into ``<output_dir>/samples/step=N/sample_<i>.wav`` (None when no samples are set)."""
    if not cfg.samples.tags:
        return None

    def render(folder: Path, step: int) -> None:
        from songflow.audio.io import save_audio
        from songflow.families import load_pipeline
        from songflow.requests import LoraRef

        s = cfg.samples
        base, loras = (
            (cfg.model.checkpoint_dir, (LoraRef(str(folder)),)) if cfg.lora.enabled else (folder, ())
        )
        pipe = load_pipeline(base, device=cfg.device)
        out = Path(cfg.output_dir) / "samples" / f"step={step}"
        for i, tags in enumerate(s.tags):
            request = _sample_request(pipe, tags, s.lyrics[i] if s.lyrics else "", s, s.seed + i, loras)
            result = pipe.generate(request)
            save_audio(out / f"sample_{i}.wav", result.audio[0], result.sample_rate_hz)
        print(f"step {step}: rendered {len(s.tags)} samples into {out}", file=sys.stderr)

    return render


def _sample_request(pipe, tags: str, lyrics: str, s, seed: int, loras: tuple):
    """One ``samples:`` render request for ``pipe``'s family (1.5: a caption; its turbo steps are fixed)."""
    if getattr(pipe.family, "name", "") == "acestep-v15":
        from songflow.requests_v15 import Params15, Text2Music15

        return Text2Music15(
            caption=tags, lyrics=lyrics, duration_s=s.duration_s, params=Params15(seeds=(seed,)), loras=loras
        )
    from songflow.requests import GenerationParams, Text2Music

    return Text2Music(
        tags=tags,
        lyrics=lyrics or "[inst]",
        duration_s=s.duration_s,
        params=GenerationParams(steps=s.steps, seeds=(seed,)),
        loras=loras,
    )


def cmd_train(args: argparse.Namespace) -> int:
    if args.target in _ACTIONS:
        return _ACTIONS[args.target](args)
    from songflow.training.trainer import train

    if args.config:
        raise ConfigError(f"unexpected argument {args.config!r}; use --set key=value for overrides")
    args.config = args.target
    cfg = _load_config(args)
    path = train(cfg, on_export=sample_renderer(cfg), load_host=load_host)
    print(f"trained weights written to {path}", file=sys.stderr)
    return 0


_ACTIONS = {"preprocess": cmd_preprocess, "init": cmd_init, "package": cmd_package}


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train CONFIG`` and ``train preprocess`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "train",
        help="fine-tune the DiT (full or LoRA) from a YAML/JSON config",
        description="songflow train CONFIG [--set k=v ...]  |  songflow train preprocess [CONFIG] [options]"
        "  |  songflow train init [options]  |  songflow train package CHECKPOINT --out DIR",
    )
    p.add_argument(
        "target",
        metavar="CONFIG|preprocess|init|package",
        help="a train config file, or one of the actions preprocess, init, package",
    )
    p.add_argument(
        "config", nargs="?", default=None, help="(preprocess) train config file; (package) checkpoint"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    p.add_argument("--dataset", help="(preprocess, init) official-format dataset folder")
    p.add_argument("--checkpoint", help="(preprocess) base checkpoint folder")
    p.add_argument("--out", help="(preprocess) cache folder; (init, package) checkpoint folder to write")
    p.add_argument("--dcae", help="(init) trained music_dcae_f8c8 folder (train-codec dcae output)")
    p.add_argument("--vocoder", help="(init) trained music_vocoder folder (train-codec vocoder output)")
    p.add_argument("--card", help="(package) model card to ship beside the weights")
    p.add_argument("--ssl-model", action="append", default=[], help="(preprocess) REPA SSL model folder")
    p.add_argument("--device", help="(preprocess) device, default from the config")
    p.set_defaults(func=cmd_train)
    return p
