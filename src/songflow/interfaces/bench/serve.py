"""``songflow bench-serve``: throughput and latency of the REST server (a benchmark, not a test).

Loads the checkpoint once, then for each ``--max-batch`` value starts the real server (uvicorn on a free
loopback port, a fresh job store in a temporary folder) and lets ``--concurrency`` HTTP clients submit
``--jobs`` text2music jobs between them, each client waiting for its job to finish before submitting the
next (different tags, lyrics and seeds; one duration and one set of settings, so jobs can batch). One
warm-up job per server is not counted. Printed per run: jobs per minute (finished jobs over the time from
the first submission to the last finish), p50/p95 latency (submission to finish, from the job store's
timestamps), the mean number of jobs that ran together, failures / 429 answers, and the seconds each
pipeline stage took per job (a batch's stage time shared among its jobs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from songflow.errors import ConfigError, SongflowError

_TAGS = (
    "pop, piano, 90 BPM, warm",
    "funk, bass, 105 BPM, energetic, guitar",
    "lofi, hip hop, mellow, vinyl",
    "rock, drums, distorted guitar, 140 BPM",
    "jazz, saxophone, swing, upright bass",
    "ambient, pads, slow, dreamy",
)
_STAGES = ("preprocess", "diffusion", "decode")
_LYRICS = ("[verse]\nwalking down the street tonight", "[inst]", "[chorus]\nla la la, sing along", "")


def add_bench_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench-serve",
        help="measure REST server throughput and latency on loopback (needs the 'serve' extra)",
        description="Start the REST server on loopback and measure jobs per minute and p50/p95 latency "
        "with concurrent clients, once per --max-batch value.",
    )
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped songflow-tiny model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--jobs", type=int, default=40, help="jobs to run per server (default 40)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of audio per job (default 10)")
    p.add_argument("--steps", type=int, default=27, help="sampling steps per job (default 27)")
    p.add_argument(
        "--max-batch",
        default="1,4",
        help="comma-separated --max-batch values, one server run each (default '1,4': without/with batching)",
    )
    p.add_argument(
        "--workers",
        default="",
        help="comma-separated worker counts, e.g. '1,2,3': each run starts that many `songflow worker` "
        "processes over one shared store (the server only accepts jobs); default: the server's own worker",
    )
    p.add_argument(
        "--database",
        default=None,
        help="with --workers: the shared store (default: a SQLite file in the run's temporary folder; "
        "postgresql://... for PostgreSQL)",
    )
    p.add_argument("--json", dest="json_path", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench_serve)
    return p


def _positive_ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"{name} must be comma-separated positive integers, got {text!r}")
    return values


def cmd_bench_serve(args: argparse.Namespace) -> int:
    try:
        import httpx  # noqa: F401

        from songflow.interfaces.cli.serve import BackgroundServer  # noqa: F401
        from songflow.interfaces.server.app import create_app  # noqa: F401
    except ImportError as exc:
        raise SongflowError(
            f"bench-serve needs extra packages ({exc.name} is missing); install them with "
            "`pip install 'songflow[serve]'` (and httpx)"
        ) from exc
    for name in ("jobs", "concurrency", "steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1")
    if args.duration <= 0:
        raise ConfigError("--duration must be positive")
    batches = _positive_ints(args.max_batch, "--max-batch")
    fleets: list[int | None] = _positive_ints(args.workers, "--workers") if args.workers else [None]  # type: ignore[assignment]

    from songflow.checkpoint.hub import resolve_checkpoint
    from songflow.families import load_pipeline

    checkpoint = resolve_checkpoint(args.checkpoint)
    pipe = load_pipeline(args.checkpoint, device=args.device, dtype=args.dtype)
    print(
        f"bench-serve: checkpoint={checkpoint.name} device={pipe.device} dtype={args.dtype} "
        f"jobs={args.jobs} concurrency={args.concurrency} duration={args.duration}s steps={args.steps}"
    )
    header = ("workers", 7), ("max_batch", 9), ("jobs/min", 9), ("p50_s", 8), ("p95_s", 8), ("mean_batch", 10)
    print("  " + " ".join(f"{name:>{width}}" for name, width in (*header, ("failed", 6), ("429s", 5))))
    runs = []
    for workers, max_batch in ((w, b) for w in fleets for b in batches):
        figures = run_server_load(pipe, args, max_batch, checkpoint=checkpoint, workers=workers)
        runs.append(figures)
        print(
            f"  {workers or 'own':>7} {max_batch:>9} {figures['jobs_per_min']:>9.2f} "
            f"{figures['latency_p50_s']:>8.2f} {figures['latency_p95_s']:>8.2f} "
            f"{figures['mean_batch_jobs']:>10.2f} "
            f"{figures['failed']:>6} {figures['retries_429']:>5}   per job: "
            + ", ".join(f"{stage} {figures[f'per_job_{stage}_s']:.2f} s" for stage in _STAGES)
        )
        sys.stdout.flush()
    if args.json_path:
        from songflow.fileio import atomic_write_text

        meta = {
            "checkpoint": checkpoint.name,
            "device": str(pipe.device),
            "dtype": args.dtype,
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "steps": args.steps,
        }
        atomic_write_text(Path(args.json_path), json.dumps({**meta, "runs": runs}, indent=2) + "\n")
    return 0


def _request(i: int, args) -> dict[str, Any]:
    return {
        "task": "text2music",
        "tags": _TAGS[i % len(_TAGS)],
        "lyrics": _LYRICS[i % len(_LYRICS)],
        "duration_s": args.duration,
        "params": {"steps": args.steps, "seeds": [i]},
    }


def run_server_load(pipe, args, max_batch: int, *, checkpoint: Path, workers: int | None = None) -> dict:
    """One server run: ``args.jobs`` jobs from ``args.concurrency`` closed-loop clients; the figures. With
    ``workers``, that many ``songflow worker`` processes run the jobs from a shared store."""
    import httpx

    from songflow.interfaces.cli.serve import BackgroundServer
    from songflow.interfaces.server.app import create_app

    with tempfile.TemporaryDirectory(prefix="songflow-bench-") as data_dir:
        database = None
        if workers is not None:
            database = getattr(args, "database", None) or f"sqlite:///{Path(data_dir) / 'jobs.sqlite3'}"
        app = create_app(
            pipe,
            data_dir=data_dir,
            max_queue=max(args.jobs, args.concurrency) + 1,
            max_batch=max_batch,
            checkpoint_name=checkpoint.resolve().name,
            database=database,
            start_worker=workers is None,
        )
        fleet = _start_workers(workers or 0, args, checkpoint, database, Path(data_dir), max_batch)
        try:
            with BackgroundServer(app) as server:
                with httpx.Client(base_url=server.url, timeout=120.0) as client:
                    warm = [client.post("/v1/jobs", json=_request(10**6 + k, args)).json()["id"]
                            for k in range(max(1, workers or 1))]  # fmt: skip
                    for job_id in warm:
                        _wait(client, job_id)
                load = _ClosedLoopLoad(server.url, args)
                load.run()
                with httpx.Client(base_url=server.url, timeout=120.0) as client:
                    jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in load.done_ids]
        finally:
            for proc in fleet:
                proc.terminate()
            for proc in fleet:
                proc.wait(60)
    for message in load.errors[:5]:
        print(f"    error: {message}", file=sys.stderr)
    return {"workers": workers, **_load_figures(jobs, args.jobs, max_batch, load.retries)}


def _start_workers(n: int, args, checkpoint: Path, database: str | None, data_dir: Path, max_batch: int):
    """``n`` ``songflow worker`` processes, the machine's cores shared out among them (OMP threads)."""
    import os
    import subprocess

    threads = max(1, (os.cpu_count() or 1) // max(1, n))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "songflow", "worker", "--checkpoint", str(checkpoint), "--database",
           str(database), "--data-dir", str(data_dir), "--device", args.device, "--dtype", args.dtype,
           "--max-batch", str(max_batch), "--lease-s", "60"]  # fmt: skip
    return [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL) for _ in range(n)]


class _ClosedLoopLoad:
    """``args.concurrency`` clients sharing ``args.jobs`` job indices; each waits for its job to finish
    before submitting the next, and sleeps out a 429 answer (counted in ``retries``)."""

    def __init__(self, url: str, args) -> None:
        self.url = url
        self.args = args
        self.lock = threading.Lock()
        self.next_index = 0
        self.done_ids: list[str] = []
        self.errors: list[str] = []
        self.retries = 0

    def run(self) -> None:
        threads = [threading.Thread(target=self._client_loop) for _ in range(self.args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _take_index(self) -> int:
        with self.lock:
            i = self.next_index
            self.next_index += 1
        return i

    def _client_loop(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=120.0) as c:
            while (i := self._take_index()) < self.args.jobs:
                try:
                    job_id = self._submit(c, i)
                    _wait(c, job_id)
                    with self.lock:
                        self.done_ids.append(job_id)
                except Exception as exc:  # a benchmark reports errors rather than stopping
                    with self.lock:
                        self.errors.append(f"job {i}: {exc}")

    def _submit(self, c, i: int) -> str:
        while True:
            r = c.post("/v1/jobs", json=_request(i, self.args))
            if r.status_code != 429:
                break
            with self.lock:
                self.retries += 1
            time.sleep(float(r.headers.get("retry-after", "1")))
        r.raise_for_status()
        return r.json()["id"]


def _load_figures(jobs: list[dict], n_jobs: int, max_batch: int, retries: int) -> dict[str, Any]:
    """Throughput, latency percentiles, batching and per-stage seconds of the finished jobs."""
    import numpy as np

    ok = [j for j in jobs if j["state"] == "done"]
    latencies = np.array([j["finished_at"] - j["created_at"] for j in ok]) if ok else np.array([np.nan])
    span_s = (max(j["finished_at"] for j in ok) - min(j["created_at"] for j in ok)) if ok else float("nan")
    return {
        "max_batch": max_batch,
        "jobs_done": len(ok),
        "failed": n_jobs - len(ok),
        "wall_s": span_s,
        "jobs_per_min": 60.0 * len(ok) / span_s if ok else 0.0,
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p95_s": float(np.percentile(latencies, 95)),
        "mean_batch_jobs": float(np.mean([j["batch_jobs"] or 1 for j in ok])) if ok else 0.0,
        "mean_run_s": float(np.mean([j["finished_at"] - j["started_at"] for j in ok])) if ok else 0.0,
        "retries_429": retries,
        # seconds of each stage per job (a batch's stage time shared among its jobs)
        **{
            f"per_job_{stage}_s": float(np.mean([j["timings_s"][stage] / (j["batch_jobs"] or 1) for j in ok]))
            if ok
            else 0.0
            for stage in _STAGES
        },
    }


def _wait(client, job_id: str, poll_s: float = 0.1, timeout_s: float = 3600.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(poll_s)
    raise SongflowError(f"job {job_id} did not finish within {timeout_s:.0f} s")
