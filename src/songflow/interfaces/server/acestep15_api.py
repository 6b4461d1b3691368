"""The ACE-Step 1.5 REST dialect (``acestep-api``, what the official DAW, the VST3 plugin and community
studios speak), translated to and from songflow's own job requests: no second queue, no second validator.

* :class:`ReleaseTaskBody` is ``POST /release_task``'s body with upstream's field names, defaults and aliases
  (``caption`` for ``prompt``, ``duration`` for ``audio_duration``, ...; see docs/acestep15_api.md), typed,
  so ``/openapi.json`` documents it; unknown fields are ignored as upstream does. :func:`merged_body`
  merges ``param_obj`` and ``metas``/``meta``/``metadata``/``user_metadata`` under the body's own fields.
* :func:`songflow_request` turns it into a songflow 1.5 request dict (``songflow.requests_v15``), which then
  goes through the same validation as a ``/v1/jobs`` submission. What songflow does not offer (a sampler other
  than Euler, the analysis-only switches, ``aac``/``opus`` output, another DiT than the loaded one) is refused
  with a 400 that says so, never silently dropped.
* Output files are named by an opaque reference ``<job id>/<output stem>.<format>`` (:func:`output_ref`);
  ``GET /v1/audio?path=`` serves nothing else, and a path field of a request may hold only such a reference
  (a previous job's output, copied in as an upload), never a server path.
* :func:`result_items` is ``/query_result``'s per-output record (``file``, ``metas``, ``seed_value``, ...).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

#: upstream's HTTP status of a ``/query_result`` item: 0 queued or running, 1 succeeded, 2 failed
COMPAT_STATUS: dict[str, int] = {"queued": 0, "running": 0, "done": 1, "failed": 2, "cancelled": 2}
#: ``audio_format`` -> the file suffix songflow writes (``wav32``: songflow's WAV is float32 already)
AUDIO_FORMATS: dict[str, str] = {"mp3": "mp3", "flac": "flac", "wav": "wav", "wav32": "wav", "ogg": "ogg"}
#: multipart file fields -> the request field they fill
UPLOAD_FIELDS: dict[str, str] = {
    "src_audio": "source_path",
    "ctx_audio": "source_path",
    "reference_audio": "reference_path",
    "ref_audio": "reference_path",
}
#: upstream ``task_type`` -> songflow task (``text2music`` with ``sample_mode`` is songflow's ``simple``)
TASK_TYPES: dict[str, str] = {t: t for t in ("text2music", "cover", "repaint", "lego", "extract", "complete")}
_REF = re.compile(r"^([0-9a-f]{32})/([a-z0-9_]{1,64})\.([a-z0-9]{1,8})$")
_MERGED_OBJECTS = ("metas", "meta", "metadata", "user_metadata", "param_obj")  # lowest priority first


class CompatError(Exception):
    """A request the 1.5 dialect refuses: ``status`` (400, 403, ...) and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _alias(*names: str) -> Any:
    return AliasChoices(*names)


class ReleaseTaskBody(BaseModel):
    """``POST /release_task`` (JSON, multipart or form-encoded): upstream's fields, defaults and aliases."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    task_type: str = Field("text2music", description="text2music, cover, repaint, lego, extract, complete")
    prompt: str = Field("", validation_alias=_alias("prompt", "caption"), description="the caption")
    lyrics: str = Field("", description="lyrics; '[Instrumental]' for none")
    thinking: bool = Field(False, description="the 5 Hz LM plans the song and writes its audio codes first")
    sample_mode: bool = Field(False, description="simple mode: the LM writes caption, lyrics and metadata")
    sample_query: str = Field(
        "", validation_alias=_alias("sample_query", "description", "desc"), description="simple mode's text"
    )
    use_format: bool = Field(False, validation_alias=_alias("use_format", "format"))
    model: str | None = Field(None, validation_alias=_alias("model", "model_name", "dit_model"))
    bpm: int | None = Field(None, description="30-300; none = the model (or the LM) decides")
    key_scale: str = Field("", validation_alias=_alias("key_scale", "keyscale", "key"))
    time_signature: str = Field("", description="beats per bar: 2, 3, 4 or 6 ('4/4' is read as 4)")
    vocal_language: str = Field("en", validation_alias=_alias("vocal_language", "language"))
    audio_duration: float | None = Field(
        None,
        validation_alias=_alias("audio_duration", "duration", "target_duration"),
        description="seconds (10-600); none or -1 = automatic",
    )
    inference_steps: int = Field(8, ge=1, le=200)
    guidance_scale: float = Field(7.0, description="base/sft only (a turbo model has no guidance)")
    use_random_seed: bool = True
    seed: int | str = Field(
        -1, description="an int, or '1,2,3' (one per batch item) with use_random_seed false"
    )
    batch_size: int = Field(2, ge=1, le=16, description="songs per task")
    shift: float = Field(3.0, gt=0, le=10)
    infer_method: Literal["ode", "sde"] = "ode"
    timesteps: str | list[float] | None = Field(None, description="'0.97,0.76,...,0': overrides steps/shift")
    sampler_mode: Literal["euler", "heun"] = "euler"
    use_adg: bool = False
    cfg_interval_start: float = Field(0.0, ge=0, le=1)
    cfg_interval_end: float = Field(1.0, ge=0, le=1)
    instruction: str | None = None
    src_audio_path: str | None = Field(
        None,
        validation_alias=_alias("src_audio_path", "ctx_audio_path", "sourceAudioPath"),
        description="only a previous job's file reference (the 'file' of a /query_result item); upload new "
        "audio as the multipart file field src_audio",
    )
    reference_audio_path: str | None = Field(
        None,
        validation_alias=_alias("reference_audio_path", "ref_audio_path"),
        description="as src_audio_path",
    )
    repainting_start: float = 0.0
    repainting_end: float | None = Field(None, description="seconds; none or -1 = the end")
    repaint_latent_crossfade_frames: int | None = Field(None, ge=0)
    repaint_wav_crossfade_sec: float | None = Field(None, ge=0)
    audio_cover_strength: float = Field(
        1.0, ge=0, le=1, validation_alias=_alias("audio_cover_strength", "cover_strength")
    )
    cover_noise_strength: float = Field(0.0, ge=0, le=1)
    chunk_mask_mode: Literal["auto", "explicit"] | None = None
    track_name: str | None = None
    track_classes: list[str] | str | None = Field(
        None, validation_alias=_alias("track_classes", "instruments")
    )
    audio_code_string: str | list[int] | None = Field(
        None, validation_alias=_alias("audio_code_string", "audio_codes")
    )
    lm_temperature: float = 0.85
    lm_cfg_scale: float = 2.5
    lm_top_k: int | None = None
    lm_top_p: float | None = 0.9
    lm_repetition_penalty: float = 1.0
    lm_negative_prompt: str = "NO USER INPUT"
    use_cot_caption: bool = True
    use_cot_language: bool = True
    constrained_decoding: bool = True
    analysis_only: bool = False
    full_analysis_only: bool = False
    extract_codes_only: bool = False
    audio_format: str = Field("mp3", description="mp3, flac, wav, wav32 (float WAV) or ogg")
    ai_token: str | None = Field(None, description="the server's API key (or Authorization: Bearer KEY)")
    priority: int = Field(0, ge=-1000, le=1000, description="songflow: higher runs first")
    timeout_s: float | None = Field(None, gt=0, le=86400, description="songflow: fail it past this run time")
    callback_url: str | None = Field(
        None, max_length=2048, description="songflow: a webhook POSTed when the task ends (retried)"
    )
    lora_name: str | None = Field(None, description="songflow: an adapter of --lora-dir for this task only")
    lora_scale: float = Field(1.0, ge=0, le=2, description="songflow: that adapter's weight")


def _object(value: Any, name: str) -> dict[str, Any]:
    """A ``param_obj``/``metas`` value: a JSON object, or a string holding one."""
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise CompatError(400, f"{name} is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise CompatError(400, f"{name} must be a JSON object")
    return value


def merged_body(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` over ``param_obj`` over ``metas``/``meta``/``metadata``/``user_metadata`` (upstream's
    order)."""
    merged: dict[str, Any] = {}
    canonical = _canonical_names()
    for name in _MERGED_OBJECTS:
        if raw.get(name) is not None:
            merged.update({canonical.get(k, k): v for k, v in _object(raw[name], name).items()})
    merged.update({canonical.get(k, k): v for k, v in raw.items() if k not in _MERGED_OBJECTS})
    return merged


def _canonical_names() -> dict[str, str]:
    """Every alias of a :class:`ReleaseTaskBody` field -> the field's name (so a body's ``keyscale`` beats
    its ``metas``' ``key_scale``: priority goes by source, not by which alias is spelt)."""
    out = {}
    for name, info in ReleaseTaskBody.model_fields.items():
        alias = info.validation_alias
        for choice in alias.choices if isinstance(alias, AliasChoices) else ():
            out[str(choice)] = name
    return out


def parse_urlencoded(text: str) -> dict[str, Any]:
    """A form-encoded body as a dict (the last value of a repeated key)."""
    return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}


def sniff_body(text: str) -> dict[str, Any]:
    """A body without a content type: JSON when it looks like an object, else ``k=v&...``."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CompatError(400, f"the body is not valid JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise CompatError(400, "the body must be a JSON object")
        return data
    return parse_urlencoded(text)


# ----------------------------------------------------------------------------------------- file references


def output_ref(job_id: str, output_name: str, suffix: str) -> str:
    """The opaque reference of a finished job's output (``audio_0.wav`` as ``mp3``: ``<id>/audio_0.mp3``)."""
    return f"{job_id}/{output_name.rsplit('.', 1)[0]}.{suffix}"


def audio_url(ref: str) -> str:
    from urllib.parse import quote

    return f"/v1/audio?path={quote(ref, safe='')}"


def parse_ref(text: str) -> tuple[str, str, str]:
    """``(job id, output stem, suffix)`` of a reference, given bare or as its ``/v1/audio?path=`` URL.
    A file system path (absolute, ``..``, a backslash, a ``~``) is a 403; anything else malformed a 404."""
    value = text.strip()
    if value.startswith(("/v1/audio", "http://", "https://")):
        query = parse_qs(urlsplit(value).query).get("path", [""])
        value = query[-1]
    value = unquote(value) if "%" in value else value
    if value.startswith(("/", "~")) or "\\" in value or ".." in value or re.match(r"^[A-Za-z]:", value):
        raise CompatError(403, "only files of finished jobs can be read (the 'file' of a /query_result item)")
    match = _REF.match(value)
    if match is None:
        raise CompatError(404, "no such output (use the 'file' of a /query_result item)")
    return match.group(1), match.group(2), match.group(3)


# ----------------------------------------------------------------------------------------- translation


def _seeds(body: ReleaseTaskBody) -> tuple[int, ...] | None:
    """The per-item seeds: None (random, recorded with the job) unless ``use_random_seed`` is false."""
    if body.use_random_seed:
        return None
    text = str(body.seed).strip()
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CompatError(
            400, f"seed must be an int or a comma-separated list of ints, got {text!r}"
        ) from None
    if not values or any(v < 0 for v in values):
        return None  # -1: random, as upstream
    return tuple(values)


def _codes(value: str | list[int] | None) -> tuple[int, ...] | None:
    """``audio_code_string``: ``<|audio_code_12|>...`` tokens, or numbers separated by commas/spaces."""
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    found = re.findall(r"audio_code_(\d+)", value) or re.findall(r"\d+", value)
    if not found:
        raise CompatError(400, "audio_code_string holds no audio codes (<|audio_code_N|> tokens or numbers)")
    return tuple(int(v) for v in found)


def _timesteps(value: str | list[float] | None) -> tuple[float, ...]:
    if value is None or value == "":
        return ()
    try:
        return tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except ValueError:
        raise CompatError(400, f"timesteps must be numbers separated by commas, got {value!r}") from None


def _params(body: ReleaseTaskBody, turbo: bool) -> dict[str, Any]:
    """The songflow ``params`` of ``body`` (defaults the client did not set are the checkpoint's preset)."""
    given = body.model_fields_set
    params: dict[str, Any] = {"batch_size": body.batch_size, "infer_method": body.infer_method}
    seeds = _seeds(body)
    if seeds is not None:
        params["seeds"] = list(seeds)
    if "inference_steps" in given and not turbo:
        params["steps"] = body.inference_steps
    if "shift" in given:
        params["shift"] = body.shift
    if not turbo and "guidance_scale" in given:
        params["guidance_scale"] = body.guidance_scale
    if not turbo and body.use_adg:
        params["guidance"] = "adg"
    if body.timesteps:
        params["timesteps"] = list(_timesteps(body.timesteps))
    if body.chunk_mask_mode is not None:
        params["chunk_mask_mode"] = body.chunk_mask_mode
    params.update(cfg_interval_start=body.cfg_interval_start, cfg_interval_end=body.cfg_interval_end)
    params.update(
        lm_temperature=body.lm_temperature, lm_cfg_scale=max(1.0, body.lm_cfg_scale), lm_top_k=body.lm_top_k,
        lm_top_p=body.lm_top_p, lm_repetition_penalty=body.lm_repetition_penalty,
        lm_negative_prompt=body.lm_negative_prompt, use_cot_caption=body.use_cot_caption,
        use_cot_language=body.use_cot_language, constrained_decoding=body.constrained_decoding,
    )  # fmt: skip
    return params


def _refuse_unoffered(body: ReleaseTaskBody, model_names: tuple[str, ...]) -> None:
    if body.sampler_mode != "euler":
        raise CompatError(400, "sampler_mode 'heun' is not offered by this server; use 'euler'")
    for name in ("analysis_only", "full_analysis_only", "extract_codes_only"):
        if getattr(body, name):
            raise CompatError(400, f"{name} is not offered as a task; POST /v1/understand reads a song back")
    if body.use_format:
        raise CompatError(400, "use_format is not offered inside a task; call POST /format_input first")
    if body.model and body.model not in model_names:
        raise CompatError(400, f"this server runs {model_names[0]!r}, not {body.model!r}; leave 'model' out")
    if body.audio_format.lower() not in AUDIO_FORMATS:
        raise CompatError(400, f"audio_format {body.audio_format!r}: choose one of {sorted(AUDIO_FORMATS)}")


def _metas(body: ReleaseTaskBody) -> dict[str, Any]:
    out: dict[str, Any] = {"caption": body.prompt, "lyrics": body.lyrics}
    if body.bpm:
        out["bpm"] = body.bpm
    if body.key_scale.strip():
        out["key_scale"] = " ".join(body.key_scale.split())
    meter = body.time_signature.strip().split("/")[0]
    if meter:
        out["time_signature"] = meter
    if body.vocal_language:
        out["vocal_language"] = body.vocal_language
    if body.instruction:
        out["instruction"] = body.instruction
    return out


def _task_fields(task: str, body: ReleaseTaskBody) -> dict[str, Any]:
    """The fields only ``task`` has."""
    if task == "text2music":
        out: dict[str, Any] = {"think": body.thinking}
        if body.audio_duration is not None and body.audio_duration > 0:
            out["duration_s"] = body.audio_duration
        codes = _codes(body.audio_code_string)
        if codes is not None:
            out["audio_codes"] = list(codes)
        return out
    if task == "cover":
        return {
            "cover_strength_frac": body.audio_cover_strength,
            "cover_noise_frac": body.cover_noise_strength,
        }
    if task in ("repaint", "lego"):
        end = body.repainting_end
        out = {"start_s": body.repainting_start, "end_s": None if end is None or end < 0 else end}
        if body.repaint_latent_crossfade_frames is not None:
            out["crossfade_frames"] = body.repaint_latent_crossfade_frames
        if body.repaint_wav_crossfade_sec is not None:
            out["wav_crossfade_s"] = body.repaint_wav_crossfade_sec
        if task == "lego" and body.track_name:
            out["track"] = body.track_name
        return out
    if task == "extract":
        return {"track": body.track_name} if body.track_name else {}
    classes = body.track_classes  # complete
    text = ", ".join(classes) if isinstance(classes, list) else str(classes or "")
    return {"classes": text} if text else {}


def songflow_request(body: ReleaseTaskBody, *, turbo: bool, model_names: tuple[str, ...]) -> dict[str, Any]:
    """The songflow 1.5 request dict of an upstream task (path fields not filled in yet); ``model_names``:
    what ``model`` may name (the loaded DiT folder, the checkpoint's name)."""
    _refuse_unoffered(body, model_names)
    task = TASK_TYPES.get(body.task_type.strip().lower())
    if task is None:
        raise CompatError(400, f"unknown task_type {body.task_type!r}; choose one of {sorted(TASK_TYPES)}")
    params = _params(body, turbo)
    if task == "text2music" and (body.sample_mode or body.sample_query.strip()):
        request: dict[str, Any] = {
            "task": "simple", "description": body.sample_query or body.prompt, "think": body.thinking,
            "instrumental": body.lyrics.strip().lower() == "[instrumental]", "params": params,
        }  # fmt: skip
        if "vocal_language" in body.model_fields_set:
            request["vocal_language"] = body.vocal_language
        if body.audio_duration is not None and body.audio_duration > 0:
            request["duration_s"] = body.audio_duration
        return request
    request = {"task": task, **_metas(body), **_task_fields(task, body), "params": params}
    if body.lora_name:
        request["loras"] = [{"name": body.lora_name, "weight": body.lora_scale}]
    return request


# ----------------------------------------------------------------------------------------- results


def _metas_of(request: Mapping[str, Any], plans: list[Mapping[str, Any]], duration_s: float | None) -> dict:
    plan = plans[0] if plans else {}
    return {
        "bpm": plan.get("bpm") or request.get("bpm"),
        "duration": plan.get("duration_s") or request.get("duration_s") or duration_s,
        "genres": "",
        "keyscale": plan.get("keyscale") or request.get("key_scale") or "",
        "timesignature": plan.get("timesignature") or request.get("time_signature") or "",
        "prompt": plan.get("caption") or request.get("caption") or request.get("description") or "",
        "lyrics": plan.get("lyrics") or request.get("lyrics") or "",
    }


def result_items(
    job: Any,
    sidecar: Mapping[str, Any],
    suffix: str,
    models: Mapping[str, str],
    durations: list[float | None],
) -> list[dict[str, Any]]:
    """``/query_result``'s decoded ``result`` of a finished job: one item per output audio (``file`` a
    ``/v1/audio`` URL of its opaque reference), or one item with ``error`` for a failed or cancelled job."""
    request = dict(sidecar.get("request") or job.resolved or job.request)
    created = int(job.finished_at or job.created_at)
    base = {"wave": "", "create_time": created, "env": "songflow", "dit_model": models.get("dit", ""),
            "lm_model": models.get("lm", ""), "progress": 1.0}  # fmt: skip
    if job.state != "done":
        return [{**base, "file": "", "status": 2, "stage": job.state, "error": job.error or job.state}]
    seeds = (request.get("params") or {}).get("seeds") or []
    plans = list(sidecar.get("plans") or [])
    params = request.get("params") or {}
    info = f"{job.state}; {params.get('steps') or 'preset'} steps; seeds {seeds}; {job.timings_s}"
    items = []
    for i, name in enumerate(job.outputs):
        metas = _metas_of(request, plans[i : i + 1] or plans, durations[i] if i < len(durations) else None)
        items.append(
            {
                **base, "file": audio_url(output_ref(job.id, name, suffix)), "status": 1,
                "stage": "succeeded", "prompt": metas["prompt"], "lyrics": metas["lyrics"], "metas": metas,
                "generation_info": info, "seed_value": ",".join(str(s) for s in seeds),
            }
        )  # fmt: skip
    return items


def progress_text(job: Any, position: int | None) -> str:
    if job.state == "queued":
        return f"queued (position {position})" if position else "queued"
    if job.state == "running":
        return f"running: {round(100 * job.progress)}%"
    return "succeeded" if job.state == "done" else f"{job.state}: {job.error or ''}".rstrip(": ")


def envelope(data: Any, code: int = 200, error: str | None = None) -> dict[str, Any]:
    """Upstream's response wrapper."""
    return {"data": data, "code": code, "error": error, "timestamp": int(time.time() * 1000), "extra": None}


# ----------------------------------------------------------------------------------------- response models


class Envelope(BaseModel):
    """Upstream's wrapper around every answer: ``data`` plus ``code`` (200; a soft failure is 400 or 500
    with HTTP 200), ``error``, ``timestamp`` (Unix ms) and ``extra``."""

    code: int = Field(description="200, or the soft failure's status (HTTP stays 200)")
    error: str | None
    timestamp: int = Field(description="Unix time in milliseconds")
    extra: Any = None


class ReleasedTask(BaseModel):
    task_id: str = Field(description="the job's id: poll it with /query_result")
    status: Literal["queued"]
    queue_position: int = Field(description="1-based place in the queue")


class ReleaseTaskAnswer(Envelope):
    data: ReleasedTask


class TaskResult(BaseModel):
    task_id: str
    status: int = Field(description="0 queued or running (and an unknown id), 1 succeeded, 2 failed")
    result: str = Field(
        description="a JSON string: a list with one item per output audio ('[]' while waiting)"
    )
    progress_text: str


class QueryResultAnswer(Envelope):
    data: list[TaskResult]


class Stats(BaseModel):
    jobs: dict[str, int] = Field(description="total, queued, running, succeeded, failed")
    queue_size: int
    queue_maxsize: int
    avg_job_seconds: float | None


class StatsAnswer(Envelope):
    data: Stats


class FormattedInput(BaseModel):
    caption: str
    lyrics: str
    bpm: int | None
    key_scale: str
    time_signature: str
    duration: float | None
    vocal_language: str


class FormattedAnswer(Envelope):
    data: FormattedInput


class LoraStatus(BaseModel):
    lora_loaded: bool
    use_lora: bool
    lora_scale: float
    adapter_type: str | None
    scales: dict[str, float]
    active_adapter: str | None
    adapters: list[str]
    synthetic_default_mode: bool = False


class LoraStatusAnswer(Envelope):
    data: LoraStatus


class MessageAnswer(Envelope):
    data: dict[str, Any] | None
