"""``songflow ui``: the Gradio studio over one loaded checkpoint (extra ``ui``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from songflow.errors import ConfigError, SongflowError
from songflow.interfaces.cli.options import add_lm_flags

DEFAULT_OUTPUT_DIR = "songflow-studio"


def add_ui_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ui",
        help="run the studio in the browser (needs the 'ui' extra: gradio)",
        description="The studio: a model selector over the models in --checkpoint, every task the loaded "
        "model runs in a browser tab, with LoRA selection, presets, the advanced settings, a history of "
        "outputs (reloadable into the form) and downloads in every format.",
    )
    p.add_argument(
        "--checkpoint",
        help="a checkpoint folder, an ACE-Step 1.5 checkpoints/ folder with several DiT folders, or a folder "
        "of such folders: the studio offers every model there (default: the shipped songflow-tiny model)",
    )
    p.add_argument(
        "--model", help="the model of --checkpoint to load first, by folder name (default: the first found)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--lora-dir", help="folder of LoRA adapters to offer (sub-folders or .safetensors files)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_DIR,
        help=f"history and audio files, one folder per output (default ./{DEFAULT_OUTPUT_DIR})",
    )
    add_lm_flags(p)
    p.set_defaults(func=cmd_ui)
    return p


def _model_loader(args: argparse.Namespace, models) -> Callable[[Any], Any]:
    """``loader(choice) -> pipeline`` with the command line's device, dtype and (1.5 models) LM options;
    ConfigError when --lm/--lm-offload are given and no ACE-Step 1.5 model is there."""
    from songflow.families import load_pipeline
    from songflow.interfaces.studio.models import V15_FAMILY

    lm: dict[str, Any] = {"lm": args.lm} if args.lm else {}
    lm |= {"lm_offload": True} if args.lm_offload else {}
    if lm and not any(m.family == V15_FAMILY for m in models):
        flags = " and ".join(f"--{k.replace('_', '-')}" for k in lm)
        raise ConfigError(
            f"{flags}: the 5 Hz LM planner belongs to ACE-Step 1.5 checkpoints, and --checkpoint holds none"
        )

    def load(choice) -> Any:
        options = lm if choice.family == V15_FAMILY else {}
        return load_pipeline(choice.path, device=args.device, dtype=args.dtype, **options)

    return load


def cmd_ui(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from songflow.interfaces.studio.app import build_ui, launch_ui
    except ImportError as exc:
        raise SongflowError(
            f"the studio needs extra packages ({exc.name} is missing); install them with "
            "`pip install 'songflow[ui]'`"
        ) from exc
    if not 0 < args.port < 65536:
        raise SongflowError(f"--port must be in 1..65535, got {args.port}")
    studio = make_studio(args)
    launch_ui(build_ui(studio), output_dir=studio.history.root, host=args.host, port=args.port)
    return 0


def make_studio(args: argparse.Namespace) -> Any:
    """The :class:`~songflow.interfaces.studio.engine.Studio` the command line describes: the models of
    --checkpoint offered, the --model one (else the first) loaded, --lora-dir's adapters offered."""
    from songflow.checkpoint.lora import discover_loras
    from songflow.interfaces.studio.engine import History, Studio
    from songflow.interfaces.studio.models import discover_models, pick_model

    loras = discover_loras(args.lora_dir)
    models = discover_models(args.checkpoint)
    first = pick_model(models, args.model)
    loader = _model_loader(args, models)
    pipe = loader(first)
    return Studio(
        pipe,
        History(Path(args.output_dir).expanduser()),
        runtime={
            "checkpoint": str(first.path),
            "device": str(pipe.device),
            "dtype": str(pipe.dtype).replace("torch.", ""),
        },
        loras=loras,
        models=models,
        loader=loader,
        current=first.key,
    )
