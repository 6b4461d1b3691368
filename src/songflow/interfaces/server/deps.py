"""What the routes share: the server context (pipeline, job store, worker, limits) and the dependencies
that hand it out, check the API key and look a job up."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter

from songflow.interfaces.server.bodies import body_adapter
from songflow.interfaces.server.jobs import DEFAULT_LEASE_S, Job, JobStoreProtocol, Worker, open_store
from songflow.interfaces.server.loras import LoraLibrary
from songflow.interfaces.server.retention import Retention, Sweeper
from songflow.interfaces.sidecar import known_schemas, pipeline_family, pipeline_tasks, schema_of
from songflow.requests import RequestSchema

JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ServerContext:
    """One app's state: the pipeline, its job store and worker, the limits and the request validator."""

    pipeline: Any
    store: JobStoreProtocol  # SQLite (jobs.sqlite3) or PostgreSQL (--database)
    worker: Worker
    data_dir: Path
    runtime: dict[str, str]  # checkpoint name, device, dtype (GET /v1/models and each job's sidecar)
    family: str | None  # the pipeline's model family, when it carries one
    tasks: tuple[str, ...]  # the tasks the family runs, in the order of its schema's tasks
    body: TypeAdapter
    api_key: str | None
    max_queue: int
    max_upload_mb: float
    start_worker: bool
    retention: Retention
    sweeper: Sweeper
    schema: RequestSchema  # the family's request schema (v1's for a pipeline without a family)
    loras: LoraLibrary | None = None  # the adapters of --lora-dir (None: none can be chosen)
    # the ACE-Step 1.5 API's /v1/lora/* default adapters (routes.acestep15.LoraState), made on first use
    acestep15_loras: Any = None

    @property
    def known_tasks(self) -> frozenset[str]:
        """Every task of every family's schema (a task this model lacks is named as such)."""
        return frozenset(t for s in known_schemas() for t in s.tasks)

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
    pipeline: Any,
    data_dir: Path,
    *,
    checkpoint_name: str | None,
    max_batch: int,
    retention: Retention | None,
    lora_dir: str | Path | None = None,
    database: str | None = None,
    worker_models: tuple[str, ...] | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    **limits: Any,
) -> ServerContext:
    """Create the data folders, open the job store ``database`` names (:func:`open_store`; None:
    ``data_dir/jobs.sqlite3``) and make the (not yet started) worker; find the adapters of ``lora_dir``
    (:class:`LoraLibrary`)."""
    loras = LoraLibrary.discover(lora_dir) if lora_dir is not None else None
    for sub in ("uploads", "outputs"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    runtime = {
        "checkpoint": checkpoint_name or "unknown",
        "device": str(pipeline.device),
        "dtype": str(pipeline.dtype).replace("torch.", ""),
    }
    family = pipeline_family(pipeline)
    schema = schema_of(family)
    supported = set(pipeline_tasks(pipeline))
    tasks = tuple(t for t in schema.tasks if t in supported)
    store = open_store(database, data_dir)
    retention = retention or Retention()
    sweeper = Sweeper(store, data_dir, retention)
    if not hasattr(pipeline, "generate_many"):  # a pipeline that runs one request at a time (1.5)
        max_batch = 1
    worker = Worker(
        pipeline,
        store,
        data_dir / "outputs",
        runtime,
        max_batch=max_batch,
        sweep=sweeper,
        family=family,
        loras=loras,
        max_attempts=retention.max_attempts,
        models=worker_models,
        lease_s=lease_s,
    )
    name = getattr(family, "name", None)
    adapter = body_adapter(tasks, schema)
    return ServerContext(
        pipeline,
        store,
        worker,
        data_dir,
        runtime,
        name,
        tasks,
        adapter,
        **limits,
        retention=retention,
        sweeper=sweeper,
        schema=schema,
        loras=loras,
    )


def get_context(request: Request) -> ServerContext:
    return request.app.state.context


Context = Annotated[ServerContext, Depends(get_context)]


def get_store(context: Context) -> JobStoreProtocol:
    return context.store


Store = Annotated[JobStoreProtocol, Depends(get_store)]


_WHEN = " (when the server has a key)"
BEARER_SCHEME = HTTPBearer(
    scheme_name="bearer", auto_error=False, description="Authorization: Bearer KEY" + _WHEN
)
HEADER_KEY_SCHEME = APIKeyHeader(
    name="X-API-Key", scheme_name="apiKey", auto_error=False, description="X-API-Key: KEY" + _WHEN
)


def require_api_key(
    context: Context,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER_SCHEME)],
    header: Annotated[str | None, Depends(HEADER_KEY_SCHEME)],
) -> None:
    """With an API key set, every ``/v1`` call needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``
    (an empty ``X-API-Key`` counts as absent, so it does not hide the bearer token)."""
    if context.api_key is None:
        return
    given = (header or "").strip() or (bearer.credentials.strip() if bearer is not None else None)
    if not given or not hmac.compare_digest(given.encode(), context.api_key.encode()):
        raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})


def get_job(job_id: str, store: Store) -> Job:
    job = store.get(job_id) if JOB_ID.match(job_id) else None
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


ExistingJob = Annotated[Job, Depends(get_job)]
