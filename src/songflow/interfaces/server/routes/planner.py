"""``POST /v1/plan``, ``/v1/format``, ``/v1/understand``: the ACE-Step 1.5 5 Hz LM planner's answers.

Each body is the planner request of the route (``songflow.requests_v15``: ``Plan15``, ``Format15``,
``Understand15``; ``task`` may be left out), validated like a job's (422 naming the field); understand
takes its audio as the multipart file field ``source``. The answer comes back in the response (no job):
``{"task", "request", "plans": [SongPlan...], "seconds"}``, one plan per batch item. Planner calls run one
at a time (the LM is shared with the job worker, whose ``think`` and simple-mode jobs use it too); a server
whose model has no planner answers 404.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from songflow.errors import SongflowError
from songflow.interfaces.server.bodies import body_adapter, invalid, parse_request, reject_paths
from songflow.interfaces.server.deps import Context, ServerContext, require_api_key
from songflow.interfaces.server.schemas import error_responses
from songflow.interfaces.server.uploads import UPLOAD_FIELDS, read_submission, save_uploads

router = APIRouter(prefix="/v1", tags=["planner"], dependencies=[Depends(require_api_key)])
_RESPONSES = error_responses(401, 404, 413, 422)


def _planner_schema(context: ServerContext) -> Any:
    """The planner schema, 404 when the server's model has no 5 Hz LM planner."""
    from songflow.requests_v15 import V15_PLANNER_SCHEMA

    planner = getattr(context.pipeline, "planner", None)
    if planner is None:
        raise HTTPException(404, "this server's model has no 5 Hz LM planner (ACE-Step 1.5 checkpoints only)")
    if getattr(planner, "lm_dir", None) is None:
        raise HTTPException(
            404,
            "this server's checkpoint has no acestep-5Hz-lm-* folder; download one with "
            "`songflow download --model <dit> --lm acestep-5Hz-lm-1.7B` and restart the server",
        )
    return V15_PLANNER_SCHEMA


def _run(pipeline: Any, request: Any) -> list[Any]:
    method = {"plan": pipeline.plan, "format": pipeline.format, "understand": pipeline.understand}
    return method[request.task](request)


def _client_request(request: Any, schema: Any, uploads: dict[str, str]) -> dict[str, Any]:
    """The request as the client may see it (an uploaded file by its client name, never a server path)."""
    data = schema.to_dict(request)
    for key, value in data.items():
        if key.endswith("_path") and isinstance(value, str):
            data[key] = "upload:" + uploads.get(value, Path(value).name)
    return data


async def _answer(task: str, http: Request, context: ServerContext) -> dict[str, Any]:
    schema = _planner_schema(context)
    uploads: dict[str, str] = {}  # server path -> client file name
    try:
        data, form = await read_submission(http, context)
        reject_paths(data, UPLOAD_FIELDS)
        if data.setdefault("task", task) != task:
            raise invalid(("task",), f"POST /v1/{task} answers task {task!r}; leave 'task' out")
        if form is not None:
            await save_uploads(form, data, context, uploads)
        adapter = body_adapter((task,), schema)
        request = parse_request(adapter, None, data, UPLOAD_FIELDS, uploads, context.data_dir, schema)
        pipeline = context.pipeline
        request = pipeline.resolve_seeds(request)
        t0 = time.perf_counter()
        try:
            plans = await run_in_threadpool(_run, pipeline, request)
        except SongflowError as exc:
            message = str(exc)
            for path, name in uploads.items():
                message = message.replace(path, repr(name))
            raise invalid((), message) from exc
        seconds = round(time.perf_counter() - t0, 3)
        client = _client_request(request, schema, uploads)
    finally:
        for path in uploads:
            Path(path).unlink(missing_ok=True)
    return {"task": task, "request": client, "plans": [p.to_dict() for p in plans], "seconds": seconds}


@router.post("/plan", responses=_RESPONSES)
async def plan(request: Request, context: Context) -> dict[str, Any]:
    """A song's blueprint (metadata the LM fills in and, with ``with_codes``, its 5 Hz audio codes)."""
    return await _answer("plan", request, context)


@router.post("/format", responses=_RESPONSES)
async def format_text(request: Request, context: Context) -> dict[str, Any]:
    """The caption and lyrics tidied by the LM (and the metadata it fills in)."""
    return await _answer("format", request, context)


@router.post("/understand", responses=_RESPONSES)
async def understand(request: Request, context: Context) -> dict[str, Any]:
    """Caption, lyrics and metadata read back from the uploaded audio (multipart field ``source``)."""
    return await _answer("understand", request, context)
