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


class ModelList(BaseModel):
    models: list[ModelInfo]


class LoraInfo(BaseModel):
    name: str = Field(description="what a job's loras item gives as 'name'")


class LoraList(BaseModel):
    enabled: bool = Field(description="whether the server was started with --lora-dir")
    loras: list[LoraInfo] = Field(description="the adapters found in --lora-dir at startup, by name")
    hint: str | None = Field(default=None, description="how to offer adapters, when there are none")


class Health(BaseModel):
    status: Literal["ok"]
    worker_alive: bool
    queued: int
    running: int


class ErrorBody(BaseModel):
    detail: str | list[Any] = Field(
        description="what was wrong; a 422 lists the errors, each with 'loc' naming the field "
        "(e.g. ['body', 'params', 'steps']) and 'msg'"
    )


_ERROR_TEXT = {
    400: "an uploaded file is not readable audio (named by its client file name)",
    401: "missing or wrong API key",
    404: "no such job (or output index)",
    409: "the job is not in a state that allows this",
    413: "the request body or an upload is larger than the server's limit",
    422: "the request breaks the schema; each error's 'loc' names the field",
    429: "the queue is full; retry after Retry-After seconds",
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
