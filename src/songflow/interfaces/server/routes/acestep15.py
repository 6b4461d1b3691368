"""The ACE-Step 1.5 REST API (``acestep-api``) over songflow's job store: ``POST /release_task``,
``/query_result``, ``/format_input``, ``/create_random_sample``, ``GET /v1/audio``, ``/v1/stats``,
``/v1/model_inventory``, ``POST /v1/init``, ``/v1/reinitialize`` and ``/v1/lora/*``; ``/health`` and
``GET /v1/models`` answer both dialects in one body (songflow's fields plus upstream's envelope).

Jobs go through the same validation, queue, worker and retention as ``/v1/jobs`` (translation:
:mod:`songflow.interfaces.server.acestep15_api`). Authentication as upstream: ``ai_token`` in the body or
``Authorization: Bearer KEY`` (a bare key too, or songflow's ``X-API-Key``) on the body routes, the header
on the others, ``/health`` open. ``/v1/lora/*`` keep upstream's "loaded adapter" state per API process, but
it is only the default adapter of the tasks released after it: each job records its own adapters, so a
later unload or scale never changes a queued or running job. Status codes: 400 a refused field (named),
401 the key, 403 a server path in a path field or ``/v1/audio``, 404 an unknown output, 413 a body or upload
over the limit, 415 an unsupported content type, 422 a field of the wrong type or out of range, 429 a full
queue, 503 no 5 Hz LM for ``/format_input``.
"""

from __future__ import annotations

import hmac
import json
import random
import shutil
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from songflow.errors import SongflowError
from songflow.interfaces.server import acestep15_api as api
from songflow.interfaces.server.bodies import check_task, parse_request
from songflow.interfaces.server.deps import BEARER_SCHEME, HEADER_KEY_SCHEME, JOB_ID, Context, ServerContext
from songflow.interfaces.server.routes.audio import MEDIA_TYPES, provide_audio
from songflow.interfaces.server.routes.jobs import job_options
from songflow.interfaces.server.schemas import error_responses
from songflow.interfaces.server.uploads import MAX_JSON_BYTES, limited_receive, save_upload


def _declared_keys(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER_SCHEME)],
    header: Annotated[str | None, Depends(HEADER_KEY_SCHEME)],
) -> None:
    """Declares songflow's key schemes in /openapi.json; the routes check the key themselves (upstream also
    takes it as ``ai_token`` in the body, and ``/health`` is open)."""


router = APIRouter(tags=["acestep-1.5 API"], dependencies=[Depends(_declared_keys)])
_SONGFLOW_UPLOADS = {"src_audio": "source_path", "reference_audio": "reference_path"}
#: songflow field -> the upstream name an error about it is given under
_UPSTREAM_NAMES = {
    "caption": "prompt", "duration_s": "audio_duration", "start_s": "repainting_start",
    "end_s": "repainting_end",
    "cover_strength_frac": "audio_cover_strength", "cover_noise_frac": "cover_noise_strength",
    "track": "track_name", "classes": "track_classes", "source_path": "src_audio",
    "reference_path": "reference_audio", "audio_codes": "audio_code_string", "description": "sample_query",
    "think": "thinking", "steps": "inference_steps", "seeds": "seed", "crossfade_frames":
    "repaint_latent_crossfade_frames", "wav_crossfade_s": "repaint_wav_crossfade_sec",
}  # fmt: skip
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


# ----------------------------------------------------------------------------------------- auth and bodies


def _check_token(context: ServerContext, request: Request, body_token: Any = None) -> None:
    """Upstream's check: ``ai_token`` (body routes) or the ``Authorization`` header, ``Bearer`` optional."""
    if context.api_key is None:
        return
    header = request.headers.get("authorization", "").strip()
    header = header[7:].strip() if header.lower().startswith("bearer ") else header
    given = str(body_token or "").strip() or header or request.headers.get("x-api-key", "").strip()
    if not given:
        raise HTTPException(401, "Missing ai_token or Authorization header", {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.encode(), context.api_key.encode()):
        raise HTTPException(401, "Invalid ai_token" if body_token else "Invalid API key")


async def _read_body(request: Request, context: ServerContext, files: bool) -> tuple[dict, dict]:
    """The body as a dict (JSON, multipart, form-encoded; no content type: sniffed) and, with ``files``,
    the multipart audio files by field; capped before it is parsed (413)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = MAX_JSON_BYTES + (len(_SONGFLOW_UPLOADS) * context.max_upload_bytes if files else 0) + (1 << 16)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"the body is larger than the server's limit of {limit} bytes")
    request = Request(request.scope, receive=limited_receive(request.receive, limit))
    if ctype in _FORM_TYPES:
        try:
            form = await request.form(
                max_files=4 if files else 0, max_fields=256, max_part_size=MAX_JSON_BYTES
            )
        except HTTPException:
            raise
        except Exception as exc:  # starlette's MultiPartException / 400 for a malformed form
            raise HTTPException(400, f"the form is malformed: {getattr(exc, 'detail', exc)}") from None
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        uploads = {k: v for k, v in form.multi_items() if isinstance(v, UploadFile)}
        unknown = sorted(set(uploads) - set(api.UPLOAD_FIELDS))
        if unknown:
            raise HTTPException(400, f"unknown file field(s) {unknown}; use {sorted(api.UPLOAD_FIELDS)}")
        return fields, uploads
    if ctype not in ("", "application/json", "text/plain"):
        raise HTTPException(415, f"unsupported content type {ctype!r}: send JSON, multipart or a form")
    text = (await request.body()).decode("utf-8", errors="replace")
    try:
        data = api.sniff_body(text) if ctype != "application/json" or text.strip() else {}
    except api.CompatError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return data, {}


def _upstream_loc(loc: tuple) -> list:
    return [_UPSTREAM_NAMES.get(str(part), part) for part in loc]


def _validation_422(errors: list[dict[str, Any]]) -> HTTPException:
    detail = [{"loc": _upstream_loc(tuple(e.get("loc", ()))), "msg": e.get("msg", "")} for e in errors]
    return HTTPException(422, detail)


def _model_names(context: ServerContext) -> dict[str, str]:
    """The loaded DiT's folder name (``acestep-v15-turbo``: what upstream's clients call the model) and the
    5 Hz LM's ("" without one)."""
    planner = getattr(context.pipeline, "planner", None)
    lm_dir = getattr(planner, "lm_dir", None)
    dit = getattr(planner, "dit_name", None) or context.runtime["checkpoint"]
    return {"dit": dit, "lm": Path(lm_dir).name if lm_dir is not None else ""}


# ----------------------------------------------------------------------------------------- release_task


def _finished_output(context: ServerContext, job_id: str, stem: str) -> Path:
    """The output file ``stem`` (``audio_0``) of finished job ``job_id``; a 404 CompatError otherwise."""
    job = context.store.get(job_id)
    names = {n.rsplit(".", 1)[0]: n for n in (job.outputs if job is not None and job.state == "done" else [])}
    if stem not in names:
        raise api.CompatError(404, "no such output (use the 'file' of a /query_result item)")
    return context.outputs_dir / job_id / names[stem]


def _copy_ref(context: ServerContext, ref: str, saved: dict[str, str]) -> str:
    """A previous job's output named by ``ref``, copied in as an upload (so retention cannot take it away
    before this job runs); 403/404 for anything that is not a finished job's output."""
    job_id, stem, _ = api.parse_ref(ref)
    source = _finished_output(context, job_id, stem)
    target = context.uploads_dir / f"{uuid.uuid4().hex}{source.suffix}"
    saved[str(target)] = f"{job_id}/{source.name}"
    shutil.copyfile(source, target)
    return str(target)


async def _fill_sources(
    context: ServerContext, body: api.ReleaseTaskBody, data: dict, files: dict, saved: dict[str, str]
) -> None:
    """``source_path``/``reference_path`` from the uploaded files or a job output reference."""
    refs = {"source_path": body.src_audio_path, "reference_path": body.reference_audio_path}
    for field_name, upload in files.items():
        target = api.UPLOAD_FIELDS[field_name]
        if target in data or refs[target]:
            raise api.CompatError(400, f"{target} is given twice (two files, or a file and a path)")
        path, _ = await save_upload(upload, field_name, context, saved, data.get("task") == "extend")
        data[target] = str(path)
    for target, ref in refs.items():
        if ref:
            data[target] = _copy_ref(context, ref, saved)


def _with_default_loras(context: ServerContext, data: dict[str, Any]) -> dict[str, Any]:
    """The adapters ``/v1/lora/*`` made the default, for a task that names none (recorded with the job)."""
    state: LoraState = _lora_state(context)
    if data.get("task") != "simple" and "loras" not in data and state.use_lora and state.scales:
        data["loras"] = [{"name": state.names[a], "weight": w} for a, w in state.scales.items()]
    return data


async def _release(request: Request, context: ServerContext) -> dict[str, Any]:
    raw, files = await _read_body(request, context, files=True)
    _check_token(context, request, raw.get("ai_token"))
    saved: dict[str, str] = {}  # server path -> what the client calls it
    try:
        try:
            body = api.ReleaseTaskBody.model_validate(api.merged_body(raw))
        except ValidationError as exc:
            raise _validation_422(exc.errors(include_url=False, include_input=False)) from None
        turbo = getattr(context.pipeline, "variant", "turbo") == "turbo"
        names = (_model_names(context)["dit"], context.runtime["checkpoint"])
        data = api.songflow_request(body, turbo=turbo, model_names=names)
        check_task(data, context.tasks, context.family, context.known_tasks)
        await _fill_sources(context, body, data, files, saved)
        args = (context.body, context.pipeline, _with_default_loras(context, data), _SONGFLOW_UPLOADS, saved)
        req = parse_request(*args, context.data_dir, context.schema, context.loras)
        client = {"dialect": "acestep15", "audio_format": api.AUDIO_FORMATS[body.audio_format.lower()]}
        options = job_options(context, body.priority, body.timeout_s, body.callback_url, client)
        job = context.store.add(context.schema.to_dict(req), list(saved), context.max_queue, saved, options)
        if job is None:
            raise HTTPException(429, "Server busy: queue is full")
    except api.CompatError as exc:
        _drop(saved)
        raise HTTPException(exc.status, str(exc)) from None
    except RequestValidationError as exc:
        _drop(saved)
        raise _validation_422(list(exc.errors())) from None
    except BaseException:
        _drop(saved)
        raise
    context.worker.notify()
    position = max(1, context.store.count("queued"))
    return api.envelope({"task_id": job.id, "status": "queued", "queue_position": position})


def _drop(saved: dict[str, str]) -> None:
    for path in saved:
        Path(path).unlink(missing_ok=True)


@router.post(
    "/release_task",
    response_model=api.ReleaseTaskAnswer,
    responses=error_responses(400, 401, 413, 422, 429),
    openapi_extra={
        "requestBody": {
            "content": {
                ctype: {"schema": api.ReleaseTaskBody.model_json_schema(by_alias=True)}
                for ctype in ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
            }
        }
    },
)
async def release_task(request: Request, context: Context) -> dict[str, Any]:
    """Queue a task (upstream's fields and aliases; audio as the multipart file field ``src_audio`` or
    ``reference_audio``, or a previous job's ``file`` reference in ``src_audio_path``)."""
    return await _release(request, context)


# ----------------------------------------------------------------------------------------- query_result


def _ids(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip().startswith("[") else value.split(",")
        except json.JSONDecodeError:
            raise HTTPException(400, "task_id_list must be a list of ids or a JSON string of one") from None
    if not isinstance(value, list) or len(value) > 1000:
        raise HTTPException(400, "task_id_list must be a list of at most 1000 ids")
    return [str(v).strip() for v in value]


def _durations(folder: Path, names: list[str]) -> list[float | None]:
    import soundfile as sf

    out: list[float | None] = []
    for name in names:
        try:
            out.append(round(sf.info(str(folder / name)).duration, 3))
        except (RuntimeError, OSError):
            out.append(None)
    return out


def _task_result(context: ServerContext, task_id: str) -> dict[str, Any]:
    job_id = task_id.replace("-", "").lower()
    job = context.store.get(job_id) if JOB_ID.match(job_id) else None
    if job is None:  # upstream: an unknown id is "still waiting"
        return {"task_id": task_id, "status": 0, "result": "[]", "progress_text": ""}
    status = api.COMPAT_STATUS[job.state]
    position = context.store.count("queued") if job.state == "queued" else None
    if status == 0:
        return {
            "task_id": task_id,
            "status": 0,
            "result": "[]",
            "progress_text": api.progress_text(job, position),
        }
    folder = context.outputs_dir / job.id
    try:
        sidecar = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        sidecar = {}
    suffix = job.client.get("audio_format", "wav")
    items = api.result_items(job, sidecar, suffix, _model_names(context), _durations(folder, job.outputs))
    return {
        "task_id": task_id,
        "status": status,
        "result": json.dumps(items),
        "progress_text": api.progress_text(job, None),
    }


@router.post("/query_result", response_model=api.QueryResultAnswer, responses=error_responses(400, 401))
async def query_result(request: Request, context: Context) -> dict[str, Any]:
    """Status and results of ``task_id_list`` (an unknown id answers status 0 with ``"[]"``, as upstream)."""
    raw, _ = await _read_body(request, context, files=False)
    _check_token(context, request, raw.get("ai_token"))
    ids = _ids(raw.get("task_id_list", raw.get("task_ids", [])))
    return api.envelope([_task_result(context, i) for i in ids])


# ------------------------------------------------------------------------------------ audio, stats, models


@router.get("/v1/audio", response_class=FileResponse, responses=error_responses(401, 404))
def audio(request: Request, context: Context, path: str = Query(..., max_length=512)) -> FileResponse:
    """A finished job's output by its reference (``/query_result``'s ``file``); nothing else is served."""
    _check_token(context, request)
    try:
        job_id, stem, suffix = api.parse_ref(path)
        output = _finished_output(context, job_id, stem)
        if suffix not in MEDIA_TYPES:
            raise api.CompatError(404, "no such output (use the 'file' of a /query_result item)")
    except api.CompatError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    file = provide_audio(output.parent, output.name, suffix)
    return FileResponse(file, media_type=MEDIA_TYPES[suffix], filename=f"{job_id}_{stem}.{suffix}")


@router.get("/v1/stats", response_model=api.StatsAnswer, responses=error_responses(401))
def stats(request: Request, context: Context) -> dict[str, Any]:
    _check_token(context, request)
    store = context.store
    counts = {state: store.count(state) for state in ("queued", "running", "done", "failed", "cancelled")}
    jobs = {
        "total": sum(counts.values()), "queued": counts["queued"], "running": counts["running"],
        "succeeded": counts["done"], "failed": counts["failed"] + counts["cancelled"],
    }  # fmt: skip
    mean = store.mean_run_s()
    return api.envelope(
        {
            "jobs": jobs,
            "queue_size": counts["queued"],
            "queue_maxsize": context.max_queue,
            "avg_job_seconds": None if mean is None else round(mean, 3),
        }  # fmt: skip
    )


def upstream_inventory(context: ServerContext) -> dict[str, Any]:
    """``GET /v1/models``' ``data`` as upstream writes it: the one loaded DiT and LM."""
    names = _model_names(context)
    lm = [{"name": names["lm"], "is_loaded": True}] if names["lm"] else []
    return {
        "models": [{"name": names["dit"], "is_default": True, "is_loaded": True,
                    "supported_task_types": [t for t in api.TASK_TYPES if t in context.tasks]}],
        "default_model": names["dit"], "lm_models": lm, "loaded_lm_model": names["lm"] or None,
        "llm_initialized": bool(names["lm"]), "gpus": [], "gpu_mapping": {}, "device_map": {},
    }  # fmt: skip


def upstream_health(context: ServerContext) -> dict[str, Any]:
    names = _model_names(context)
    return {
        "status": "ok", "service": "ACE-Step API", "version": "1.0", "models_initialized": True,
        "llm_initialized": bool(names["lm"]), "loaded_model": names["dit"],
        "loaded_lm_model": names["lm"] or None, "gpus": [], "gpu_mapping": {}, "device_map": {},
    }  # fmt: skip


@router.get("/v1/model_inventory", response_model=api.MessageAnswer, responses=error_responses(401))
def model_inventory(request: Request, context: Context) -> dict[str, Any]:
    _check_token(context, request)
    return api.envelope(upstream_inventory(context))


@router.post("/v1/init", response_model=api.MessageAnswer, responses=error_responses(400, 401))
async def init_model(request: Request, context: Context) -> dict[str, Any]:
    """Upstream switches DiT slots; a songflow process serves one model, so only that one is accepted."""
    _check_token(context, request)
    raw, _ = await _read_body(request, context, files=False)
    names = _model_names(context)
    wanted = raw.get("model")
    if wanted and wanted != names["dit"]:
        raise HTTPException(
            400,
            f"this server runs {names['dit']!r}; start a songflow worker with --checkpoint for {wanted!r}",
        )
    inventory = upstream_inventory(context)
    answer = {
        "message": "model already loaded", "slot": 1, "loaded_model": names["dit"],
        "loaded_lm_model": names["lm"] or None, "models": inventory["models"],
        "lm_models": inventory["lm_models"], "llm_initialized": bool(names["lm"]),
    }  # fmt: skip
    return api.envelope(answer)


@router.post("/v1/reinitialize", response_model=api.MessageAnswer, responses=error_responses(401))
def reinitialize(request: Request, context: Context) -> dict[str, Any]:
    _check_token(context, request)
    return api.envelope({"message": "Service reinitialized (songflow keeps its model loaded)"})


# ----------------------------------------------------------------------------------------- the planner


def _body_metas(raw: dict[str, Any]) -> dict[str, Any]:
    params = (
        api.merged_body({k: v for k, v in raw.items() if k == "param_obj"}) if raw.get("param_obj") else {}
    )
    out: dict[str, Any] = {}
    for ours, theirs in (("bpm", "bpm"), ("key_scale", "key"), ("time_signature", "time_signature"),
                         ("vocal_language", "language"), ("duration_s", "duration")):  # fmt: skip
        value = params.get(theirs, params.get(ours))
        if value not in (None, "", -1, "-1"):
            out[ours] = str(value).split("/")[0] if ours == "time_signature" else value
    return out


@router.post("/format_input", response_model=api.FormattedAnswer, responses=error_responses(400, 401, 422))
async def format_input(request: Request, context: Context) -> dict[str, Any]:
    """The 5 Hz LM tidies ``prompt`` and ``lyrics`` and fills in the metadata of ``param_obj``."""
    from songflow.requests_v15 import V15_PLANNER_SCHEMA

    raw, _ = await _read_body(request, context, files=False)
    _check_token(context, request, raw.get("ai_token"))
    planner = getattr(context.pipeline, "planner", None)
    if planner is None or getattr(planner, "lm_dir", None) is None:
        raise HTTPException(503, "LLM not initialized: this server's checkpoint has no 5 Hz LM")
    try:
        data = {"task": "format", "caption": str(raw.get("prompt", raw.get("caption", ""))),
                "lyrics": str(raw.get("lyrics", "")), **_body_metas(raw),
                "params": {"lm_temperature": float(raw.get("temperature", 0.85))}}  # fmt: skip
        req = V15_PLANNER_SCHEMA.from_dict(data)
        plans = await run_in_threadpool(context.pipeline.format, context.pipeline.resolve_seeds(req))
    except api.CompatError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    except (SongflowError, ValueError, TypeError) as exc:
        raise HTTPException(400, str(exc)) from None
    plan = plans[0]
    return api.envelope(
        {
            "caption": plan.caption or data["caption"],
            "lyrics": plan.lyrics or data["lyrics"],
            "bpm": plan.bpm,
            "key_scale": plan.keyscale or "",
            "time_signature": plan.timesignature or "",
            "duration": plan.duration_s,
            "vocal_language": plan.language or "unknown",
        }  # fmt: skip
    )


@router.post("/create_random_sample", response_model=api.FormattedAnswer, responses=error_responses(401, 503))
async def create_random_sample(request: Request, context: Context) -> dict[str, Any]:
    """A random example song (songflow composes one with its synthetic-music composer)."""
    raw, _ = await _read_body(request, context, files=False)
    _check_token(context, request, raw.get("ai_token"))
    try:
        from songflow.data.synth.compose import compose_song
    except ImportError:
        raise HTTPException(
            503, "random samples need songflow's synth extra: pip install 'songflow[synth]'"
        ) from None
    rng = random.SystemRandom()
    labels = (
        await run_in_threadpool(compose_song, rng.randrange(2**31), float(rng.choice((30, 60, 90))))
    ).labels
    key = f"{labels.get('tonic')} {labels.get('mode')}"
    from songflow.requests_v15 import VALID_KEYSCALES

    return api.envelope(
        {
            "caption": labels.get("caption", ""),
            "lyrics": labels.get("lyrics") or "[Instrumental]",
            "bpm": int(labels["bpm"]),
            "key_scale": key if key in VALID_KEYSCALES else "",
            "time_signature": str(labels.get("time_signature", "4")).split("/")[0],
            "duration": float(labels.get("duration", 30)),
            "vocal_language": "en" if labels.get("lyrics") else "unknown",
        }  # fmt: skip
    )


# ----------------------------------------------------------------------------------------- LoRA


class LoraState:
    """Upstream's "loaded adapter" state of one API process: the adapters (``alias -> weight``) a task
    released without its own ``lora_name`` gets, and whether they are on. ``names``: alias -> the name in
    ``--lora-dir``."""

    def __init__(self) -> None:
        self.scales: dict[str, float] = {}
        self.names: dict[str, str] = {}
        self.use_lora = False
        self.active: str | None = None

    def status(self) -> dict[str, Any]:
        return {
            "lora_loaded": bool(self.scales), "use_lora": self.use_lora,
            "lora_scale": self.scales.get(self.active or "", 1.0) if self.scales else 1.0,
            "adapter_type": "lora" if self.scales else None, "scales": dict(self.scales),
            "active_adapter": self.active, "adapters": list(self.scales), "synthetic_default_mode": False,
        }  # fmt: skip


def _lora_state(context: ServerContext) -> LoraState:
    if context.acestep15_loras is None:
        context.acestep15_loras = LoraState()
    return context.acestep15_loras


def _library_name(context: ServerContext, lora_path: str) -> str:
    """The ``--lora-dir`` name of ``lora_path`` (a name, or the adapter's path inside that folder)."""
    from songflow.interfaces.server.loras import NO_LORA_DIR

    library = context.loras
    if library is None:
        raise HTTPException(400, NO_LORA_DIR)
    name = library.lookup(lora_path) if lora_path else None
    if name is None:
        raise HTTPException(400, library.unknown_message(lora_path) if lora_path else "lora_path is required")
    return name


@router.post("/v1/lora/load", response_model=api.MessageAnswer, responses=error_responses(400, 401))
async def lora_load(request: Request, context: Context) -> dict[str, Any]:
    """Make an adapter of ``--lora-dir`` (by name, or its path inside that folder) the default of the tasks
    released next; ``adapter_name`` adds it beside the ones loaded (upstream's multi-adapter load)."""
    _check_token(context, request)
    raw, _ = await _read_body(request, context, files=False)
    name = _library_name(context, str(raw.get("lora_path", "")))
    alias = str(raw.get("adapter_name") or name)
    state = _lora_state(context)
    if not raw.get("adapter_name"):
        state.scales.clear()
        state.names.clear()
    state.scales[alias], state.names[alias], state.use_lora, state.active = 1.0, name, True, alias
    return api.envelope({"message": f"LoRA {name!r} loaded", "lora_path": name, "adapter_name": alias})


@router.post("/v1/lora/unload", response_model=api.MessageAnswer, responses=error_responses(401))
def lora_unload(request: Request, context: Context) -> dict[str, Any]:
    _check_token(context, request)
    state = _lora_state(context)
    state.scales.clear()
    state.names.clear()
    state.use_lora, state.active = False, None
    return api.envelope({"message": "LoRA unloaded"})


@router.post("/v1/lora/toggle", response_model=api.MessageAnswer, responses=error_responses(401))
async def lora_toggle(request: Request, context: Context) -> dict[str, Any]:
    _check_token(context, request)
    raw, _ = await _read_body(request, context, files=False)
    state = _lora_state(context)
    if not state.scales:
        return api.envelope(None, 400, "no LoRA is loaded: POST /v1/lora/load first")
    state.use_lora = str(raw.get("use_lora", True)).lower() not in ("false", "0", "")
    return api.envelope({"message": f"LoRA {'on' if state.use_lora else 'off'}", "use_lora": state.use_lora})


@router.post("/v1/lora/scale", response_model=api.MessageAnswer, responses=error_responses(401))
async def lora_scale(request: Request, context: Context) -> dict[str, Any]:
    _check_token(context, request)
    raw, _ = await _read_body(request, context, files=False)
    state = _lora_state(context)
    alias = str(raw.get("adapter_name") or state.active or "")
    try:
        scale = float(raw.get("scale"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return api.envelope(None, 400, "scale must be a number from 0 to 1")
    if alias not in state.scales:
        return api.envelope(None, 400, f"no LoRA {alias!r} is loaded: POST /v1/lora/load first")
    if not 0.0 <= scale <= 1.0:
        return api.envelope(None, 400, f"scale must be from 0 to 1, got {scale}")
    state.scales[alias] = scale
    return api.envelope({"message": f"LoRA {alias!r} scale {scale}", "scale": scale, "adapter_name": alias})


@router.get("/v1/lora/status", response_model=api.LoraStatusAnswer, responses=error_responses(401))
def lora_status(request: Request, context: Context) -> dict[str, Any]:
    _check_token(context, request)
    return api.envelope(_lora_state(context).status())
