"""``songflow ui``: the Gradio studio over one loaded checkpoint (extra ``ui``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from songflow.errors import SongflowError
from songflow.interfaces.cli.options import add_lm_flags

DEFAULT_OUTPUT_DIR = "songflow-studio"


def add_ui_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ui",
        help="run the studio in the browser (needs the 'ui' extra: gradio)",
        description="The studio: every task the model family runs in a browser tab, with LoRA selection, "
        "presets, the advanced settings, a history of outputs (reloadable into the form) and downloads in "
        "every format.",
    )
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped songflow-tiny model)")
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


def cmd_ui(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from songflow.interfaces.studio.app import build_ui, launch_ui
    except ImportError as exc:
        raise SongflowError(
            f"the studio needs extra packages ({exc.name} is missing); install them with "
            "`pip install 'songflow[ui]'`"
        ) from exc
    from songflow.checkpoint.hub import resolve_checkpoint
    from songflow.families import load_pipeline
    from songflow.interfaces.cli.generate import lm_options
    from songflow.interfaces.studio.engine import History, Studio, discover_loras

    if not 0 < args.port < 65536:
        raise SongflowError(f"--port must be in 1..65535, got {args.port}")
    loras = discover_loras(args.lora_dir)
    checkpoint = resolve_checkpoint(args.checkpoint)
    pipe = load_pipeline(args.checkpoint, device=args.device, dtype=args.dtype, **lm_options(args))
    output_dir = Path(args.output_dir).expanduser()
    studio = Studio(
        pipe,
        History(output_dir),
        runtime={
            "checkpoint": str(checkpoint),
            "device": str(pipe.device),
            "dtype": str(pipe.dtype).replace("torch.", ""),
        },
        loras=loras,
    )
    launch_ui(build_ui(studio), output_dir=output_dir, host=args.host, port=args.port)
    return 0
