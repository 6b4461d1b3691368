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
from songflow.interfaces.server.routes import PLANNER_ROUTERS, ROUTERS

log = logging.getLogger("songflow.server")


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    context: ServerContext = app.state.context
    n = context.store.requeue_interrupted(context.retention.max_attempts)
    if n:
        log.info("re-queued %d job(s) interrupted by the last shutdown", n)
    context.sweeper()
    if context.start_worker:
        context.worker.start()
    try:
        yield
    finally:
        context.worker.stop()


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
) -> FastAPI:
    """The REST app over ``pipeline`` (one worker thread runs every job). ``data_dir`` holds ``jobs.sqlite3``,
    ``uploads/`` and ``outputs/<job id>/`` (jobs survive restarts). With ``api_key`` every ``/v1`` call needs
    ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. Queued jobs beyond ``max_queue`` get 429, uploads
    above ``max_upload_mb`` 413. Up to ``max_batch`` compatible queued jobs run as one batch (each gets its
    solo audio). ``checkpoint_name``: shown by ``GET /v1/models``; ``start_worker=False`` only stores jobs;
    ``retention`` bounds the data and restarts; ``lora_dir`` holds the adapters ``loras`` may name."""
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
    )
    app = FastAPI(title="songflow", version="1", lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.context = context
    app.state.store, app.state.worker, app.state.data_dir = context.store, context.worker, context.data_dir
    for router in ROUTERS + (PLANNER_ROUTERS if hasattr(pipeline, "planner") else ()):
        app.include_router(router)
    install_body_schema(app, context.body)
    install_docs(app)
    return app
