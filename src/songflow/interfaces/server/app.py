"""REST API (FastAPI): a persistent job queue over one pipeline.

``create_app(pipeline, data_dir=...)`` builds the app; there are no module globals, so tests and
servers can hold several. Requests use the same JSON schema as the Python API and the sidecar
(``songflow.requests``); they never name server paths: audio inputs are uploaded (multipart) and the
server fills in ``source_path``/``reference_path``.

Endpoints: ``POST /v1/jobs``, ``GET /v1/jobs``, ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/audio``,
``DELETE /v1/jobs/{id}``, ``GET /v1/models``, ``GET /health``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import logging
import math
import re
import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from songflow.audio.io import SUPPORTED_FORMATS, load_audio, save_audio
from songflow.errors import SongflowError
from songflow.interfaces.server.jobs import AUDIO_STEM, STATES, JobStore, Worker
from songflow.requests import TASKS, request_from_dict, request_to_dict

log = logging.getLogger("songflow.server")

# multipart file field -> the request field it fills
UPLOAD_FIELDS: dict[str, str] = {"source": "source_path", "reference": "reference_path"}
_MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}
_SAFE_EXT = re.compile(r"^[a-z0-9]{1,8}$")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")

_SUBMIT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "A request: {'task': one of "
                    + ", ".join(sorted(TASKS))
                    + ", <task fields>, 'params': {...}}. "
                    "Path fields may not be set; upload the audio instead.",
                    "properties": {"task": {"type": "string", "enum": sorted(TASKS)}},
                    "additionalProperties": True,
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "request": {"type": "string", "description": "the request as a JSON string"},
                        "source": {"type": "string", "format": "binary"},
                        "reference": {"type": "string", "format": "binary"},
                    },
                    "required": ["request"],
                }
            },
        },
    }
}


JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class JobView(BaseModel):
    """A job as every endpoint shows it."""

    id: str = Field(description="32 hexadecimal characters")
    state: JobState
    progress: float = Field(description="fraction of the sampling steps done, 0..1")
    request: dict[str, Any] = Field(
        description="the request; once done, the resolved one (seeds filled in) that regenerates the "
        "audio; uploaded files appear as 'upload:<name>'"
    )
    error: str | None = Field(description="why the job failed (or 'cancelled by the client')")
    timings_s: dict[str, float] = Field(
        description="seconds per pipeline stage (preprocess, diffusion, decode); a batch's times"
    )
    n_outputs: int = Field(description="audio files (the request's batch_size) once done")
    batch_jobs: int | None = Field(description="how many jobs ran together in its batch (1: alone)")
    created_at: float = Field(description="Unix time of the submission")
    started_at: float | None = Field(description="Unix time the run started")
    finished_at: float | None = Field(description="Unix time the job reached a final state")
    audio_urls: list[str] = Field(description="one download URL per output (add &format=flac etc.)")


class JobList(BaseModel):
    jobs: list[JobView] = Field(description="newest first")


class ModelInfo(BaseModel):
    name: str
    device: str
    dtype: str
    sample_rate_hz: int | None
    tasks: list[str]
    audio_formats: list[str]


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]
    worker_alive: bool
    queued: int
    running: int


class ErrorBody(BaseModel):
    detail: str | list[Any] = Field(description="what was wrong; names the offending field")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "an uploaded file is not readable audio",
        401: "missing or wrong API key",
        404: "no such job (or output index)",
        409: "the job is not in a state that allows this",
        413: "the upload is larger than the server's limit",
        422: "the request breaks the schema; the message names the field",
        429: "the queue is full; retry after Retry-After seconds",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorBody, "description": text[code]}
    if 429 in codes:
        out[429]["headers"] = {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
        }
    return out


def _path_fields(task: str) -> set[str]:
    cls = TASKS.get(task)
    names = {f.name for f in dataclasses.fields(cls)} if cls else set()
    return {n for n in names if n.endswith("_path")} | {"source_path", "reference_path"}


def _public_request(data: dict[str, Any]) -> dict[str, Any]:
    """The request as a client sees it: server paths reduced to the upload's file name."""
    out = dict(data)
    for key, value in data.items():
        if key.endswith("_path") and isinstance(value, str):
            out[key] = "upload:" + Path(value).name
    return out


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
) -> FastAPI:
    """Build the REST app over ``pipeline`` (loaded once; one worker thread runs every job).

    Args:
        pipeline: a :class:`songflow.pipeline.Pipeline`.
        data_dir: holds ``jobs.sqlite3``, ``uploads/`` and ``outputs/<job id>/``; jobs survive restarts.
        api_key: when set, every ``/v1`` call needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.
        max_queue: queued jobs beyond this are refused with 429.
        max_upload_mb: larger uploads are refused with 413.
        checkpoint_name: shown by ``GET /v1/models``.
        max_batch: up to this many compatible queued jobs run as one pipeline batch (1: no batching);
            each job still gets exactly the audio it would get alone.
        start_worker: start the worker with the app (False: only store jobs; tests).
    """
    data_dir = Path(data_dir)
    uploads_dir = data_dir / "uploads"
    outputs_dir = data_dir / "outputs"
    uploads_dir.mkdir(parents=True, exist_ok=True)
    outputs_dir.mkdir(parents=True, exist_ok=True)
    max_upload_bytes = int(max_upload_mb * 1024 * 1024)
    runtime = {
        "checkpoint": checkpoint_name or "unknown",
        "device": str(pipeline.device),
        "dtype": str(pipeline.dtype).replace("torch.", ""),
    }
    store = JobStore(data_dir / "jobs.sqlite3")
    worker = Worker(pipeline, store, outputs_dir, runtime, max_batch=max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        n = store.requeue_interrupted()
        if n:
            log.info("re-queued %d job(s) interrupted by the last shutdown", n)
        if start_worker:
            worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="songflow", version="1", lifespan=lifespan)
    app.state.store = store
    app.state.worker = worker
    app.state.data_dir = data_dir

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(check_key)]

    def get_job(job_id: str):
        job = store.get(job_id) if _JOB_ID.match(job_id) else None
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    def job_json(job) -> dict[str, Any]:
        data = job.to_json()
        data["request"] = _public_request(data["request"])
        data["audio_urls"] = [f"/v1/jobs/{job.id}/audio?index={i}" for i in range(len(job.outputs))]
        return data

    def retry_after_s() -> int:
        """Seconds until a queue slot is likely free: the worker claims the next job(s) when its current
        run ends, so about the recent mean run time (5 s before any job has run)."""
        mean = store.mean_run_s()
        if mean is None:
            return 5
        return int(min(300, max(1, math.ceil(mean))))

    async def save_upload(upload) -> Path:
        suffix = Path(upload.filename or "").suffix.lower().lstrip(".")
        ext = suffix if _SAFE_EXT.match(suffix) else "bin"
        path = uploads_dir / f"{uuid.uuid4().hex}.{ext}"
        size = 0
        try:
            with open(path, "wb") as f:
                while chunk := await upload.read(1 << 20):
                    size += len(chunk)
                    if size > max_upload_bytes:
                        raise HTTPException(413, f"the upload is larger than {max_upload_mb:g} MB")
                    f.write(chunk)
            try:
                load_audio(path)
            except SongflowError as exc:
                raise HTTPException(
                    400, f"the uploaded {upload.filename!r} is not readable audio: {exc}"
                ) from exc
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "worker_alive": worker.alive,
            "queued": store.count("queued"),
            "running": store.count("running"),
        }

    @app.get("/v1/models", dependencies=auth, response_model=ModelList, responses=_errors(401))
    def models() -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": runtime["checkpoint"],
                    "device": runtime["device"],
                    "dtype": runtime["dtype"],
                    "sample_rate_hz": getattr(pipeline, "output_sample_rate_hz", None),
                    "tasks": sorted(TASKS),
                    "audio_formats": list(SUPPORTED_FORMATS),
                }
            ]
        }

    @app.post(
        "/v1/jobs",
        dependencies=auth,
        status_code=202,
        response_model=JobView,
        responses={
            202: {
                "description": "accepted and queued",
                "headers": {"Location": {"description": "the job's URL", "schema": {"type": "string"}}},
            },
            **_errors(400, 401, 413, 422, 429),
        },
        openapi_extra=_SUBMIT_OPENAPI,
    )
    async def submit(request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        uploads: list[Path] = []
        try:
            if content_type.startswith("multipart/form-data"):
                length = request.headers.get("content-length")
                if length and length.isdigit() and int(length) > max_upload_bytes + (1 << 20):
                    raise HTTPException(413, f"the upload is larger than {max_upload_mb:g} MB")
                form = await request.form(max_files=len(UPLOAD_FIELDS), max_fields=8)
                raw = form.get("request")
                if not isinstance(raw, str):
                    raise HTTPException(422, "multipart submissions need a 'request' field (a JSON string)")
                data = _parse_json(raw)
                _reject_paths(data)
                for field_name, target in UPLOAD_FIELDS.items():
                    upload = form.get(field_name)
                    if upload is None or isinstance(upload, str):
                        continue
                    path = await save_upload(upload)
                    uploads.append(path)
                    data[target] = str(path)
            else:
                data = _parse_json((await request.body()).decode("utf-8", errors="replace"))
                _reject_paths(data)
            try:
                req = request_from_dict(data)
                pipeline.check_request(req)
            except SongflowError as exc:
                raise HTTPException(422, str(exc)) from exc
            if req.loras:
                raise HTTPException(422, "loras: LoRA adapters cannot be chosen over the API")
            job = store.add(request_to_dict(req), [str(p) for p in uploads], max_queue)
            if job is None:
                wait_s = retry_after_s()
                raise HTTPException(
                    429,
                    f"the queue is full ({max_queue} jobs waiting); retry in about {wait_s} s",
                    headers={"Retry-After": str(wait_s)},
                )
        except BaseException:
            for path in uploads:
                path.unlink(missing_ok=True)
            raise
        worker.notify()
        return JSONResponse(job_json(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs", dependencies=auth, response_model=JobList, responses=_errors(401, 422))
    def list_jobs(
        state: str | None = Query(None, description="only jobs in this state: " + ", ".join(STATES)),
        limit: int = Query(100, ge=1, le=1000, description="at most this many, newest first"),
    ) -> dict[str, Any]:
        if state is not None and state not in STATES:
            raise HTTPException(422, f"state must be one of {list(STATES)}, got {state!r}")
        return {"jobs": [job_json(j) for j in store.list(state, limit)]}

    @app.get("/v1/jobs/{job_id}", dependencies=auth, response_model=JobView, responses=_errors(401, 404))
    def job_status(job_id: str) -> dict[str, Any]:
        return job_json(get_job(job_id))

    @app.delete(
        "/v1/jobs/{job_id}", dependencies=auth, response_model=JobView, responses=_errors(401, 404, 409)
    )
    def cancel(job_id: str) -> dict[str, Any]:
        job = get_job(job_id)
        previous = store.cancel(job.id)
        if previous is None:
            raise HTTPException(409, f"job {job.id} is {job.state} and cannot be cancelled")
        if previous == "running":
            worker.request_cancel(job.id)
        return job_json(get_job(job_id))

    @app.get(
        "/v1/jobs/{job_id}/audio",
        dependencies=auth,
        response_class=FileResponse,
        responses={
            200: {
                "description": "the audio file",
                "content": {
                    media: {"schema": {"type": "string", "format": "binary"}}
                    for media in _MEDIA_TYPES.values()
                },
            },
            **_errors(401, 404, 409, 422),
        },
    )
    def audio(
        job_id: str,
        format: str = Query("wav", description="one of " + ", ".join(SUPPORTED_FORMATS)),
        index: int = Query(0, ge=0, description="which output of a batch_size > 1 job"),
    ) -> FileResponse:
        job = get_job(job_id)
        if job.state != "done":
            raise HTTPException(409, f"job {job.id} is {job.state}; audio is available once it is done")
        fmt = format.lower()
        if fmt not in SUPPORTED_FORMATS:
            raise HTTPException(422, f"format must be one of {list(SUPPORTED_FORMATS)}, got {format!r}")
        if index >= len(job.outputs):
            raise HTTPException(
                404, f"job {job.id} has {len(job.outputs)} output(s); index {index} is out of range"
            )
        folder = outputs_dir / job.id
        wav_path = folder / job.outputs[index]
        path = folder / f"{AUDIO_STEM}_{index}.{fmt}"
        if not path.exists():
            try:
                wav, sr = load_audio(wav_path)
                save_audio(path, wav, sr, format=fmt)
            except SongflowError as exc:
                log.error("job %s: cannot provide %s audio: %s", job.id, fmt, exc)
                raise HTTPException(500, f"cannot provide the audio as {fmt}") from exc
        return FileResponse(path, media_type=_MEDIA_TYPES.get(fmt), filename=f"{job.id}_{index}.{fmt}")

    return app


def _parse_json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"the request is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HTTPException(422, "the request must be a JSON object")
    return data


def _reject_paths(data: dict[str, Any]) -> None:
    task = data.get("task", "text2music")
    named = sorted(k for k in data if k in _path_fields(str(task)) or k.endswith("_path"))
    if named:
        raise HTTPException(
            422,
            f"field(s) {named} name server paths and cannot be set; upload the audio as a multipart "
            f"file field ({', '.join(f'{k!r} for {v}' for k, v in UPLOAD_FIELDS.items())})",
        )
