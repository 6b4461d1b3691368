"""Response models of the REST API and the documented error answers of each route."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class JobView(BaseModel):
    """A job as every endpoint shows it."""

    id: str = Field(description="32 hexadecimal characters")
    state: JobState
    progress: float = Field(description="fraction of the sampling steps done, 0..1")
    request: dict[str, Any] = Field(
        description="the request; once done, the resolved one (seeds filled in) that regenerates the "
        "audio; uploaded files appear as 'upload:<name>', LoRA adapters as {'name', 'weight'}"
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


class JobSummary(BaseModel):
    """A job in a listing: its state and outputs, not its request (``GET /v1/jobs/{id}`` has that)."""

    id: str
    task: str | None = Field(description="the request's task")
    state: JobState
    progress: float
    error: str | None
    n_outputs: int
    batch_jobs: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    audio_urls: list[str]


class JobList(BaseModel):
    jobs: list[JobSummary] = Field(description="newest first")


class ModelInfo(BaseModel):
    name: str
    family: str | None = Field(description="the model family (e.g. acestep_v1); null when unknown")
    device: str
    dtype: str
    sample_rate_hz: int | None
    tasks: list[str] = Field(description="the tasks this model runs (the request's 'task')")
    audio_formats: list[str]


class UpstreamEnvelope(BaseModel):
    """The ACE-Step 1.5 API's wrapper, which ``/health`` and ``GET /v1/models`` carry beside songflow's own
    fields so that both dialects' clients read the same answer."""

    data: dict[str, Any] = Field(description="the ACE-Step 1.5 API's answer")
    code: int = 200
    error: str | None = None
    timestamp: int = Field(description="Unix time in milliseconds")
    extra: Any = None


class ModelList(UpstreamEnvelope):
    models: list[ModelInfo]


class LoraInfo(BaseModel):
    name: str = Field(description="what a job's loras item gives as 'name'")


class LoraList(BaseModel):
    enabled: bool = Field(description="whether the server was started with --lora-dir")
    loras: list[LoraInfo] = Field(description="the adapters found in --lora-dir at startup, by name")
    hint: str | None = Field(default=None, description="how to offer adapters, when there are none")


class WorkerInfo(BaseModel):
    worker_id: str = Field(description="host-pid-random")
    models: list[str] | None = Field(description="the checkpoints it runs jobs for (null: any job)")
    running: list[str] = Field(description="the ids of the jobs it runs now")
    started_at: float = Field(description="Unix time of its first heartbeat")
    last_seen: float = Field(description="Unix time of its last heartbeat")


class WorkerList(BaseModel):
    workers: list[WorkerInfo] = Field(description="the workers whose heartbeat is current, oldest first")


class Health(UpstreamEnvelope):
    status: Literal["ok"]
    worker_alive: bool = Field(description="this process's own worker thread runs (false with --no-worker)")
    workers: int = Field(description="workers of the queue with a current heartbeat, on any machine")
    queued: int
    running: int


class ErrorBody(BaseModel):
    detail: str | list[Any] = Field(
        description="what was wrong; a 422 lists the errors, each with 'loc' naming the field "
        "(e.g. ['body', 'params', 'steps']) and 'msg'"
    )


_ERROR_TEXT = {
    400: "an uploaded file is not readable audio (named by its client file name), or a field this server "
    "does not offer (named)",
    401: "missing or wrong API key",
    403: "a path field or download names a file that is not a finished job's output",
    404: "no such job (or output index)",
    409: "the job is not in a state that allows this",
    413: "the request body or an upload is larger than the server's limit",
    422: "the request breaks the schema; each error's 'loc' names the field",
    415: "the content type is not JSON, multipart or form-encoded",
    429: "the queue is full; retry after Retry-After seconds",
    503: "the model this needs is not loaded (e.g. no 5 Hz LM)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these error codes."""
    out: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": _ERROR_TEXT[code]} for code in codes
    }
    if 429 in codes:
        out[429]["headers"] = {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
        }
    return out
