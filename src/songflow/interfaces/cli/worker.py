"""``songflow worker``: a GPU (or CPU) worker of a shared job queue, without the HTTP part.

Any number of ``songflow worker --database postgresql://... --checkpoint DIR --data-dir /mnt/songflow``
processes on any number of machines claim the jobs ``songflow serve --database ... --no-worker`` API processes
accept (``SELECT ... FOR UPDATE SKIP LOCKED``), heartbeat while they run them, and write the outputs
atomically under ``--data-dir`` (a folder every node mounts). A worker claims only the jobs for the checkpoint
it holds (its folder name, as the API process records it). A worker that dies loses its lease and its jobs
run again elsewhere; SIGTERM or Ctrl-C stops it after re-queueing what it was running.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from songflow.errors import SongflowError
from songflow.interfaces.cli.options import add_lm_flags


def add_worker_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "worker",
        help="run a worker of a shared job queue (no HTTP): `songflow serve --database ... --no-worker` "
        "takes the jobs",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--database", required=True, help="the shared job store: postgresql://... (or sqlite:///)")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped songflow-tiny model)")
    p.add_argument("--data-dir", required=True, help="uploads and outputs, a folder every node mounts")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 (default float32)")
    p.add_argument("--max-batch", type=int, default=4, help="compatible jobs run together (default 4)")
    p.add_argument("--lora-dir", help="the LoRA adapters the jobs may name (as `songflow serve --lora-dir`)")
    p.add_argument("--api-key", default=None, help="signs webhooks (default $SONGFLOW_API_KEY)")
    p.add_argument(
        "--lease-s",
        type=float,
        default=60.0,
        help="a job this worker runs is its own this long without a heartbeat (one every lease/3); "
        "when it dies, its jobs run again elsewhere after this (default 60)",
    )
    p.add_argument("--offload", action="store_true", help="keep models on the CPU between stages")
    from songflow.interfaces.cli.serve import add_retention_flags

    add_retention_flags(p)
    add_lm_flags(p)
    p.set_defaults(func=cmd_worker)
    return p


def cmd_worker(args: argparse.Namespace) -> int:
    from songflow.checkpoint.hub import resolve_checkpoint
    from songflow.families import load_pipeline
    from songflow.interfaces.cli.generate import lm_options
    from songflow.interfaces.cli.serve import retention_of
    from songflow.interfaces.server.app import job_deliverer
    from songflow.interfaces.server.deps import open_context

    if args.max_batch < 1:
        raise SongflowError("--max-batch must be at least 1")
    if not args.lease_s > 0:
        raise SongflowError("--lease-s must be positive")
    retention = retention_of(args)
    from songflow.interfaces.server.jobs import parse_database

    # a wrong --database is named before the model loads
    parse_database(args.database, Path(args.data_dir).expanduser())
    checkpoint = resolve_checkpoint(args.checkpoint)
    pipe = load_pipeline(
        checkpoint, device=args.device, dtype=args.dtype, offload=args.offload, **lm_options(args)
    )
    name = checkpoint.resolve().name
    context = open_context(
        pipe,
        Path(args.data_dir).expanduser(),
        checkpoint_name=name,
        max_batch=args.max_batch,
        retention=retention,
        lora_dir=args.lora_dir,
        database=args.database,
        worker_models=(name,),
        lease_s=args.lease_s,
        api_key=args.api_key or os.environ.get("SONGFLOW_API_KEY") or None,
        max_queue=1,
        max_upload_mb=1.0,
        start_worker=True,
    )
    deliverer = job_deliverer(context)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    context.worker.start()
    deliverer.start()
    print(f"songflow worker {context.worker.worker_id}: {name} on {pipe.device}, jobs from {args.database}",
          flush=True)  # fmt: skip
    try:
        while not stop.wait(1.0):
            pass
    finally:
        deliverer.stop()
        context.worker.stop()
        context.store.close()
    return 0
