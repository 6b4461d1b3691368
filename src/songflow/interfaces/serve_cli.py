"""``songflow serve``: the REST API (FastAPI + uvicorn) over one loaded checkpoint."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from songflow.errors import SongflowError


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="run the REST API server (needs the 'serve' extra: fastapi, uvicorn, python-multipart)",
        description="Serve the REST API: a persistent job queue over one loaded model. "
        "Jobs, uploads and outputs live in --data-dir and survive restarts.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (official layout)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 (default float32)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--data-dir", default="songflow-data", help="job store, uploads and outputs")
    p.add_argument(
        "--api-key",
        default=None,
        help="require this key (Authorization: Bearer KEY or X-API-Key); default $SONGFLOW_API_KEY or none",
    )
    p.add_argument("--max-queue", type=int, default=16, help="queued jobs beyond this get 429 (default 16)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="upload size limit in MB (default 50)")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from songflow.interfaces.api import create_app
    except ImportError as exc:
        raise SongflowError(
            f"the server needs extra packages ({exc.name} is missing); install them with "
            "`pip install 'songflow[serve]'`"
        ) from exc
    from songflow.pipeline import Pipeline

    if args.max_queue < 1:
        raise SongflowError("--max-queue must be at least 1")
    if args.max_upload_mb <= 0:
        raise SongflowError("--max-upload-mb must be positive")
    checkpoint = Path(args.checkpoint).expanduser()
    pipe = Pipeline.from_pretrained(checkpoint, device=args.device, dtype=args.dtype)
    app = create_app(
        pipe,
        data_dir=Path(args.data_dir).expanduser(),
        api_key=args.api_key or os.environ.get("SONGFLOW_API_KEY") or None,
        max_queue=args.max_queue,
        max_upload_mb=args.max_upload_mb,
        checkpoint_name=checkpoint.resolve().name,
    )
    uvicorn.run(app, host=args.host, port=args.port, workers=1)
    return 0
