"""``songflow serve``: the REST API (FastAPI + uvicorn) over one loaded checkpoint."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from songflow.errors import SongflowError
from songflow.interfaces.cli.options import add_lm_flags


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="run the REST API server (needs the 'serve' extra: fastapi, uvicorn, python-multipart)",
        description="Serve the REST API: a persistent job queue over one loaded model. "
        "Jobs, uploads and outputs live in --data-dir and survive restarts.",
    )
    p.add_argument(
        "--checkpoint", help="checkpoint folder (official layout; default: the shipped songflow-tiny model)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 (default float32)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--data-dir", default="songflow-data", help="job store, uploads and outputs")
    p.add_argument(
        "--api-key",
        default=None,
        help="require this key (Authorization: Bearer KEY or X-API-Key); default $SONGFLOW_API_KEY "
        "(or $ACESTEP_API_KEY) or none",
    )
    p.add_argument("--max-queue", type=int, default=16, help="queued jobs beyond this get 429 (default 16)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="upload size limit in MB (default 50)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=4,
        help="run up to this many compatible queued jobs as one batch; 1 disables batching (default 4)",
    )
    add_retention_flags(p)
    p.add_argument(
        "--database",
        help="the job store: postgresql://user:pass@host/db (one queue for many API processes and "
        "`songflow worker`s on any machines) or sqlite:///PATH (default: DATA_DIR/jobs.sqlite3)",
    )
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="only accept jobs (an API process); `songflow worker` processes run them",
    )
    p.add_argument(
        "--lora-dir",
        help="offer the LoRA adapters in this folder (sub-folders or .safetensors files): a job's 'loras' "
        "name them, GET /v1/loras lists them; without it no job may choose one",
    )
    p.add_argument("--offload", action="store_true", help="keep models on the CPU between stages")
    add_lm_flags(p)
    p.set_defaults(func=cmd_serve)
    return p


def add_retention_flags(p: argparse.ArgumentParser) -> None:
    """``--keep-hours``, ``--max-data-mb`` and ``--max-attempts`` (serve and worker)."""
    p.add_argument(
        "--keep-hours",
        type=float,
        default=24.0 * 7,
        help="delete finished jobs (their audio and uploads too) this many hours after they finished; "
        "0 keeps them (default 168)",
    )
    p.add_argument(
        "--max-data-mb",
        type=float,
        default=10240.0,
        help="while uploads and outputs exceed this, delete the oldest finished jobs; 0: no limit "
        "(default 10240)",
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="a job that was running when the server stopped this many times fails instead of being "
        "re-queued (default 3)",
    )


def retention_of(args: argparse.Namespace):
    """The retention settings of the ``--keep-hours``, ``--max-data-mb`` and ``--max-attempts`` flags."""
    from songflow.interfaces.server.retention import Retention

    if args.keep_hours < 0 or args.max_data_mb < 0:
        raise SongflowError("--keep-hours and --max-data-mb must not be negative (0: no limit)")
    if args.max_attempts < 1:
        raise SongflowError("--max-attempts must be at least 1")
    return Retention(
        keep_hours=args.keep_hours or None,
        max_data_mb=args.max_data_mb or None,
        max_attempts=args.max_attempts,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from songflow.interfaces.server.app import create_app
    except ImportError as exc:
        raise SongflowError(
            f"the server needs extra packages ({exc.name} is missing); install them with "
            "`pip install 'songflow[serve]'`"
        ) from exc
    from songflow.checkpoint.hub import resolve_checkpoint
    from songflow.families import load_pipeline
    from songflow.interfaces.cli.generate import lm_options

    if args.max_queue < 1:
        raise SongflowError("--max-queue must be at least 1")
    if args.max_upload_mb <= 0:
        raise SongflowError("--max-upload-mb must be positive")
    if args.max_batch < 1:
        raise SongflowError("--max-batch must be at least 1")
    retention = retention_of(args)
    from songflow.interfaces.server.jobs import parse_database

    # a wrong --database is named before the model loads
    parse_database(args.database, Path(args.data_dir).expanduser())
    if args.lora_dir is not None:  # a wrong folder is named before the model loads
        from songflow.checkpoint.lora import discover_loras

        discover_loras(args.lora_dir)
    checkpoint = resolve_checkpoint(args.checkpoint)
    pipe = load_pipeline(
        checkpoint, device=args.device, dtype=args.dtype, offload=args.offload, **lm_options(args)
    )
    app = create_app(
        pipe,
        data_dir=Path(args.data_dir).expanduser(),
        api_key=args.api_key or os.environ.get("SONGFLOW_API_KEY") or os.environ.get("ACESTEP_API_KEY"),
        max_queue=args.max_queue,
        max_upload_mb=args.max_upload_mb,
        checkpoint_name=checkpoint.resolve().name,
        max_batch=args.max_batch,
        retention=retention,
        lora_dir=args.lora_dir,
        database=args.database,
        start_worker=not args.no_worker,
    )
    uvicorn.run(app, host=args.host, port=args.port, workers=1)
    return 0


class BackgroundServer:
    """Serve ``app`` with uvicorn on a thread (the benchmark and tests use it on loopback).

    ``port=0`` binds a free port; ``url`` is the base URL once started. ``stop()`` shuts the server down
    gracefully (the app's lifespan stops its worker).
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import socket
        import threading

        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, name="songflow-http", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> BackgroundServer:
        import time

        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise SongflowError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
