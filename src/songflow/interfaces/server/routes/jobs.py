"""``/v1/jobs``: submit, list, look up and cancel jobs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from songflow.interfaces.server.bodies import BODY_SCHEMA_NAME, check_task, parse_request, reject_paths
from songflow.interfaces.server.deps import Context, ExistingJob, ServerContext, Store, require_api_key
from songflow.interfaces.server.jobs import STATES, Job, JobOptions
from songflow.interfaces.server.loras import LoraLibrary, public_loras
from songflow.interfaces.server.retention import delete_job
from songflow.interfaces.server.schemas import JobList, JobView, error_responses
from songflow.interfaces.server.uploads import UPLOAD_FIELDS, check_window, read_submission, save_uploads

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])

_SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "$ref": f"#/components/schemas/{BODY_SCHEMA_NAME}",
                    "description": "A request: 'task' (default text2music), its fields and 'params'. Path "
                    "fields are read-only: upload the audio instead (multipart). 'loras' name adapters "
                    "of the server's --lora-dir (GET /v1/loras).",
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "request": {"type": "string", "description": "the request as a JSON string"},
                        **{
                            name: {"type": "string", "format": "binary", "description": f"fills {target}"}
                            for name, target in UPLOAD_FIELDS.items()
                        },
                    },
                    "required": ["request"],
                }
            },
        },
    }
}
_ACCEPTED = {
    "description": "accepted and queued",
    "headers": {"Location": {"description": "the job's URL", "schema": {"type": "string"}}},
}


def job_view(job: Job, loras: LoraLibrary | None = None) -> dict[str, Any]:
    """A job as the client sees it: server paths reduced to the upload's file name, adapters to their
    names in ``loras`` (``{"name", "weight"}``), download URLs."""
    data = job.to_json()
    data["request"] = {
        key: "upload:" + job.upload_names.get(value, Path(value).name)
        if key.endswith("_path") and isinstance(value, str)
        else value
        for key, value in data["request"].items()
    }
    if "loras" in data["request"]:
        data["request"]["loras"] = public_loras(data["request"]["loras"], loras)
    data["audio_urls"] = _audio_urls(job.id, data["n_outputs"])
    return data


def job_options(
    context: ServerContext,
    priority: int,
    timeout_s: float | None,
    callback_url: str | None,
    client: dict[str, Any] | None = None,
) -> JobOptions:
    """The queueing options of a submission (both API dialects): the job needs this server's checkpoint
    (a worker of another one does not claim it); a bad ``callback_url`` is a 422."""
    from songflow.errors import ConfigError
    from songflow.interfaces.server.bodies import invalid
    from songflow.interfaces.server.webhooks import check_callback_url

    try:
        url = check_callback_url(callback_url) if callback_url else None
    except ConfigError as exc:
        raise invalid(("callback_url",), str(exc)) from None
    model = context.runtime["checkpoint"]
    return JobOptions(priority, timeout_s, model, client or {}, url)


def _audio_urls(job_id: str, n: int) -> list[str]:
    return [f"/v1/jobs/{job_id}/audio?index={i}" for i in range(n)]


def _queue_full(context: ServerContext) -> HTTPException:
    """429 with the seconds until a queue slot is likely free: the worker claims the next job(s) when its
    current run ends, so about the recent mean run time (5 s before any job has run)."""
    mean = context.store.mean_run_s()
    wait_s = 5 if mean is None else int(min(300, max(1, math.ceil(mean))))
    return HTTPException(
        429,
        f"the queue is full ({context.max_queue} jobs waiting); retry in about {wait_s} s",
        headers={"Retry-After": str(wait_s)},
    )


@router.post(
    "",
    status_code=202,
    response_model=JobView,
    responses={202: _ACCEPTED, **error_responses(400, 401, 413, 422, 429)},
    openapi_extra=_SUBMIT_BODY,
)
async def submit(
    request: Request,
    context: Context,
    priority: int = Query(0, ge=-1000, le=1000, description="higher runs first (default 0)"),
    timeout_s: float | None = Query(None, gt=0, le=86400, description="fail the job if it runs longer"),
    callback_url: str | None = Query(
        None, max_length=2048, description="webhook POSTed when the job reaches a final state (retried)"
    ),
) -> JSONResponse:
    uploads: dict[str, str] = {}  # server path -> client file name
    try:
        data, form = await read_submission(request, context)
        reject_paths(data, UPLOAD_FIELDS)
        check_task(data, context.tasks, context.family, context.known_tasks)
        frames = await save_uploads(form, data, context, uploads) if form is not None else {}
        req = parse_request(
            context.body,
            context.pipeline,
            data,
            UPLOAD_FIELDS,
            uploads,
            context.data_dir,
            context.schema,
            context.loras,
        )
        check_window(req, frames, context)
        options = job_options(context, priority, timeout_s, callback_url)
        job = context.store.add(
            context.schema.to_dict(req), list(uploads), context.max_queue, uploads, options
        )
        if job is None:
            raise _queue_full(context)
    except BaseException:
        for path in uploads:
            Path(path).unlink(missing_ok=True)
        raise
    context.worker.notify()
    return JSONResponse(
        job_view(job, context.loras), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
    )


@router.get("", response_model=JobList, responses=error_responses(401, 422))
def list_jobs(
    store: Store,
    state: str | None = Query(None, description="only jobs in this state: " + ", ".join(STATES)),
    limit: int = Query(100, ge=1, le=1000, description="at most this many, newest first"),
) -> dict[str, Any]:
    if state is not None and state not in STATES:
        raise HTTPException(422, f"state must be one of {list(STATES)}, got {state!r}")
    jobs = store.summaries(state, limit)
    return {"jobs": [{**j, "audio_urls": _audio_urls(j["id"], j["n_outputs"])} for j in jobs]}


@router.get("/{job_id}", response_model=JobView, responses=error_responses(401, 404))
def job_status(job: ExistingJob, context: Context) -> dict[str, Any]:
    return job_view(job, context.loras)


@router.delete("/{job_id}", response_model=JobView, responses=error_responses(401, 404, 409))
def cancel(job: ExistingJob, context: Context) -> dict[str, Any]:
    """Cancel a queued or running job; delete a finished one with its audio and uploads (then 404)."""
    previous = context.store.cancel(job.id)
    if previous == "running":
        context.worker.request_cancel(job.id)
    if previous is not None:
        return job_view(context.store.get(job.id) or job, context.loras)
    deleted = delete_job(context.store, job.id, context.outputs_dir)
    if deleted is None:  # it started or finished meanwhile
        raise HTTPException(409, f"job {job.id} changed state; try again")
    return job_view(deleted, context.loras)
