"""What the routes share: the server context (pipeline, job store, worker, limits) and the dependencies
that hand it out, check the API key and look a job up."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from pydantic import TypeAdapter

from songflow.interfaces.server.bodies import body_adapter
from songflow.interfaces.server.jobs import Job, JobStore, Worker
from songflow.requests import TASKS

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ServerContext:
    """One app's state: the pipeline, its job store and worker, the limits and the request validator."""

    pipeline: Any
    store: JobStore
    worker: Worker
    data_dir: Path
    runtime: dict[str, str]  # checkpoint name, device, dtype (GET /v1/models and each job's sidecar)
    family: str | None  # the pipeline's model family, when it carries one
    tasks: tuple[str, ...]  # the tasks the family runs, in songflow.requests.TASKS order
    body: TypeAdapter
    api_key: str | None
    max_queue: int
    max_upload_mb: float
    start_worker: bool

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def open_context(
    pipeline: Any, data_dir: Path, *, checkpoint_name: str | None, max_batch: int, **limits: Any
) -> ServerContext:
    """Create the data folders, open the job store and make the (not yet started) worker."""
    for sub in ("uploads", "outputs"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    runtime = {
        "checkpoint": checkpoint_name or "unknown",
        "device": str(pipeline.device),
        "dtype": str(pipeline.dtype).replace("torch.", ""),
    }
    family = getattr(pipeline, "family", None)
    supported = set(getattr(family, "tasks", None) or TASKS)
    tasks = tuple(t for t in TASKS if t in supported)
    store = JobStore(data_dir / "jobs.sqlite3")
    worker = Worker(pipeline, store, data_dir / "outputs", runtime, max_batch=max_batch)
    name = getattr(family, "name", None)
    return ServerContext(
        pipeline, store, worker, data_dir, runtime, name, tasks, body_adapter(tasks), **limits
    )


def get_context(request: Request) -> ServerContext:
    return request.app.state.context


Context = Annotated[ServerContext, Depends(get_context)]


def get_store(context: Context) -> JobStore:
    return context.store


Store = Annotated[JobStore, Depends(get_store)]


def require_api_key(request: Request, context: Context) -> None:
    """With an API key set, every ``/v1`` call needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    if context.api_key is None:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given is None or not hmac.compare_digest(given.encode(), context.api_key.encode()):
        raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})


def get_job(job_id: str, store: Store) -> Job:
    job = store.get(job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


ExistingJob = Annotated[Job, Depends(get_job)]
