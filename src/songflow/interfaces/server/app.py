"""REST API (FastAPI): a persistent job queue over one pipeline.

``create_app(pipeline, data_dir=...)`` builds the app; there are no module globals, so tests and
servers can hold several. Requests use the same JSON schema as the Python API and the sidecar: the
request schema of the pipeline's model family (``songflow.requests`` for ACE-Step v1,
``songflow.requests_v15`` for 1.5; validated by pydantic models derived from it, ``bodies``); they never
name server paths: audio inputs are uploaded (multipart) and the server fills in
``source_path``/``reference_path``. The tasks offered are those of the pipeline's model family
(``pipeline.family``, else the family of ``pipeline.checkpoint_root``; v1's for a bare pipeline).

Endpoints: ``POST /v1/jobs``, ``GET /v1/jobs``, ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/audio``,
``DELETE /v1/jobs/{id}`` (cancels an active job, deletes a finished one with its files), ``GET /v1/models``,
``GET /v1/loras`` (the adapters of ``--lora-dir``, chosen by name in a request's ``loras``), ``GET /health``,
and for ACE-Step 1.5 checkpoints with a 5 Hz LM ``POST /v1/plan``, ``/v1/format``,
``/v1/understand`` (the planner's answers, in the response); ``/docs`` is a self-contained page over
``/openapi.json`` (no CDN). Bodies are capped before they are parsed (413); the data folder is kept
bounded by ``retention``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from songflow.interfaces.server.bodies import install_body_schema
from songflow.interfaces.server.deps import ServerContext, open_context
from songflow.interfaces.server.docs import install_docs
from songflow.interfaces.server.retention import Retention
from songflow.interfaces.server.routes import ACESTEP15_ROUTERS, PLANNER_ROUTERS, ROUTERS

log = logging.getLogger("songflow.server")


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    context: ServerContext = app.state.context
    # SQLite (one machine): every job left running; PostgreSQL: only the jobs whose lease ran out
    n = context.store.requeue_interrupted(context.retention.max_attempts)
    if n:
        log.info("re-queued %d job(s) interrupted by the last shutdown", n)
    context.sweeper()
    if context.start_worker:
        context.worker.start()
    deliverer = job_deliverer(context)
    deliverer.start()
    try:
        yield
    finally:
        deliverer.stop()
        context.worker.stop()


def job_deliverer(context: ServerContext):
    """The webhook thread: due callbacks of the store, each body the job's client view."""
    from songflow.interfaces.server.routes.jobs import job_view
    from songflow.interfaces.server.webhooks import Deliverer

    return Deliverer(context.store, lambda job: job_view(job, context.loras), key=context.api_key)


def _routers(pipeline, context: ServerContext) -> tuple:
    """Every family's routes; the planner's for a pipeline with one; the official 1.5 API's for 1.5."""
    planner = PLANNER_ROUTERS if hasattr(pipeline, "planner") else ()
    return ROUTERS + planner + (ACESTEP15_ROUTERS if context.family == "acestep-v15" else ())


def create_app(
    pipeline,
    *,
    data_dir: str | Path,
    api_key: str | None = None,
    max_queue: int = 16,
    max_upload_mb: float = 50,
    checkpoint_name: str | None = None,
    max_batch: int = 4,
    start_worker: bool = True,
    retention: Retention | None = None,
    lora_dir: str | Path | None = None,
    database: str | None = None,
) -> FastAPI:
    """The REST app over ``pipeline``: a worker thread runs every job, ``max_batch`` compatible ones at once.
    ``data_dir`` holds ``uploads/``, ``outputs/<id>/`` and ``jobs.sqlite3`` unless ``database`` names a store
    (``open_store``). ``api_key``: ``/v1`` needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. 429 past
    ``max_queue`` queued jobs, 413 past ``max_upload_mb``. ``checkpoint_name``: for ``GET /v1/models``;
    ``start_worker=False`` only stores jobs; ``retention`` bounds data and restarts; ``lora_dir``: LoRAs."""
    context = open_context(
        pipeline,
        Path(data_dir),
        checkpoint_name=checkpoint_name,
        max_batch=max_batch,
        api_key=api_key,
        max_queue=max_queue,
        max_upload_mb=max_upload_mb,
        start_worker=start_worker,
        retention=retention,
        lora_dir=lora_dir,
        database=database,
    )
    return _assemble(pipeline, context)


def _assemble(pipeline, context: ServerContext) -> FastAPI:
    """The FastAPI app of ``context``: its state, routes, body schema and docs page."""
    app = FastAPI(title="songflow", version="1", lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.context = context
    app.state.store, app.state.worker, app.state.data_dir = context.store, context.worker, context.data_dir
    for router in _routers(pipeline, context):
        app.include_router(router)
    install_body_schema(app, context.body)
    install_docs(app)
    return app
