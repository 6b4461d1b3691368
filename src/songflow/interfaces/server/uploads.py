"""Reading a job submission: a JSON body, or a multipart form with a ``request`` JSON field plus audio files
that are saved under ``uploads/`` and fill the request's ``source_path``/``reference_path``."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from songflow.audio.io import load_audio
from songflow.errors import SongflowError
from songflow.interfaces.server.bodies import invalid
from songflow.interfaces.server.deps import ServerContext
from songflow.interfaces.server.jobs import scrub

# multipart file field -> the request field it fills
UPLOAD_FIELDS: dict[str, str] = {"source": "source_path", "reference": "reference_path"}
_SAFE_EXT = re.compile(r"^[a-z0-9]{1,8}$")
# a JSON request (body or multipart 'request' field) is at most this long: the longest valid request
# (lyrics and tags at their limits, every character escaped) is well below it
MAX_JSON_BYTES = 1 << 20
# JSON nested deeper than this is refused (a valid request nests 3 levels: body, params, a list)
MAX_JSON_DEPTH = 16
_FORM_SLACK = 64 * 1024
_TOO_DEEP = object()  # multipart boundaries and part headers


def _too_large(context: ServerContext) -> HTTPException:
    return HTTPException(
        413, f"the upload is larger than {context.max_upload_mb:g} MB", headers={"Connection": "close"}
    )


def _body_too_large(limit: int, what: str = "the request body") -> HTTPException:
    # Connection: close makes the server drop the rest of the body instead of reading it to the end
    return HTTPException(
        413,
        f"{what} is larger than the server's limit of {limit} bytes",
        headers={"Connection": "close"},
    )


def _depth(value: Any, limit: int) -> int:
    """The nesting depth of a parsed JSON value, counting no further than ``limit + 1``."""
    if isinstance(value, dict | list) and limit >= 0:
        items = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(v, limit - 1) for v in items), default=0)
    return 0


def _not_finite(value: Any, loc: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where a parsed JSON value holds NaN or an infinity (Python's json accepts them), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return loc
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _not_finite(item, (*loc, key))
        if found is not None:
            return found
    return None


def parse_json(text: str) -> dict[str, Any]:
    """The submitted JSON object; 422 for invalid JSON, deep nesting, or a NaN or infinite number."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid((), f"the request is not valid JSON: {exc}", "json_invalid") from exc
    except RecursionError:
        data = _TOO_DEEP
    if data is _TOO_DEEP or _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise invalid((), f"the request nests deeper than {MAX_JSON_DEPTH} levels", "json_invalid")
    if not isinstance(data, dict):
        raise invalid((), "the request must be a JSON object", "dict_type")
    loc = _not_finite(data)
    if loc is not None:
        raise invalid(loc, "numbers must be finite (JSON has no NaN or Infinity)", "finite_number")
    return data


def limited_receive(
    receive: Callable[[], Awaitable[Message]], limit: int
) -> Callable[[], Awaitable[Message]]:
    """``receive`` that raises 413 as soon as more than ``limit`` body bytes arrived (chunked or not)."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _body_too_large(limit)
        return message

    return limited


def body_limit(request: Request, context: ServerContext) -> int:
    """The largest body a submission may have: a JSON request, or that plus every upload (multipart)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return MAX_JSON_BYTES + len(UPLOAD_FIELDS) * context.max_upload_bytes + _FORM_SLACK
    return MAX_JSON_BYTES


async def read_submission(request: Request, context: ServerContext) -> tuple[dict[str, Any], FormData | None]:
    """The request dict and, for a multipart submission, its form (whose files are not saved yet).

    The body is capped before it is parsed (413): by its Content-Length when given, else while it streams
    in, so an oversized chunked upload is refused once the limit is passed, not after it was spooled.
    """
    limit = body_limit(request, context)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _body_too_large(limit)
    request = Request(request.scope, receive=limited_receive(request.receive, limit))
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return parse_json((await request.body()).decode("utf-8", errors="replace")), None
    try:
        form = await request.form(max_files=len(UPLOAD_FIELDS), max_fields=8, max_part_size=MAX_JSON_BYTES)
    except StarletteHTTPException as exc:  # starlette's 400 for a malformed form
        if exc.status_code != 400:
            raise
        if "maximum size" in str(exc.detail):
            raise _body_too_large(MAX_JSON_BYTES, "a form field") from None
        raise invalid((), f"the multipart form is malformed: {exc.detail}", "multipart_invalid") from None
    raw = form.get("request")
    if not isinstance(raw, str):
        raise invalid(("request",), "multipart submissions need a 'request' field (a JSON string)", "missing")
    return parse_json(raw), form


def client_name(upload: Any) -> str:
    """The file name the client gave an upload (no folders, at most 120 characters)."""
    name = Path(str(upload.filename or "").replace("\\", "/")).name
    return (name or "upload")[:120]


async def save_uploads(
    form: FormData, data: dict[str, Any], context: ServerContext, saved: dict[str, str]
) -> dict[str, int]:
    """Save the form's audio files (``saved``: server path -> client file name) and fill their fields;
    returns each filled field's length in latent frames."""
    frames: dict[str, int] = {}
    for field_name, target in UPLOAD_FIELDS.items():
        upload = form.get(field_name)
        if upload is None or isinstance(upload, str):
            continue
        # extend loads its source whole (allow_long); every other task caps it at the model's length
        path, frames[target] = await save_upload(
            upload, field_name, context, saved, data.get("task") == "extend"
        )
        data[target] = str(path)
    return frames


def check_window(request: Any, frames: dict[str, int], context: ServerContext) -> None:
    """Refuse at submission a repaint window that starts after the uploaded source ends (422 on
    ``start_s``), the check the job would otherwise fail at run time."""
    from songflow.errors import ConfigError
    from songflow.tasks.repaint import repaint_window

    n_frames = frames.get("source_path")
    geometry = getattr(context.pipeline, "geometry", None)
    if request.task != "repaint" or n_frames is None or geometry is None:
        return
    try:
        repaint_window(geometry, request.start_s, request.end_s, n_frames)
    except ConfigError as exc:
        raise invalid(("start_s",), str(exc)) from exc


def check_upload_audio(
    path: Path, name: str, field_name: str, context: ServerContext, allow_long: bool = False
) -> int:
    """Refuse an upload no job could use: unreadable (400), or a sample rate, silence or length that
    the pipeline would reject when the job runs (422 naming the multipart field); named by ``name``."""
    from songflow.audio.geometry import LatentGeometry
    from songflow.errors import AudioError
    from songflow.pipeline import check_source_audio

    try:
        wav, rate = load_audio(path)
    except SongflowError as exc:
        message = scrub(str(exc), {str(path): name}, context.data_dir)
        raise HTTPException(400, f"the uploaded {name!r} is not readable audio: {message}") from exc
    pipeline = context.pipeline
    if getattr(pipeline, "geometry", None) is None and hasattr(pipeline, "read_audio"):
        return _check_with_pipeline(path, name, field_name, context)
    geometry = getattr(pipeline, "geometry", None) or LatentGeometry()
    try:
        return check_source_audio(
            wav,
            rate,
            f"the uploaded {name!r}",
            geometry,
            getattr(pipeline, "codec", None),
            allow_long=allow_long,
        )
    except AudioError as exc:
        raise invalid((field_name,), str(exc)) from exc


def _check_with_pipeline(path: Path, name: str, field_name: str, context: ServerContext) -> int:
    """An upload checked as a pipeline without a v1 geometry (1.5) reads it (``read_audio``: rate,
    silence, length); 422 naming the multipart field, the file named by ``name``. Returns 0 frames
    (only v1's repaint window is checked against the source length at submission)."""
    from songflow.errors import AudioError

    try:
        context.pipeline.read_audio(str(path), what="uploaded audio")
    except AudioError as exc:
        raise invalid((field_name,), scrub(str(exc), {str(path): name}, context.data_dir)) from exc
    return 0


async def save_upload(
    upload: Any, field_name: str, context: ServerContext, saved: dict[str, str], allow_long: bool
) -> tuple[Path, int]:
    name = client_name(upload)
    suffix = Path(name).suffix.lower().lstrip(".")
    ext = suffix if _SAFE_EXT.match(suffix) else "bin"
    path = context.uploads_dir / f"{uuid.uuid4().hex}.{ext}"
    saved[str(path)] = name
    size = 0
    try:
        with open(path, "wb") as f:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > context.max_upload_bytes:
                    raise _too_large(context)
                f.write(chunk)
        frames = check_upload_audio(path, name, field_name, context, allow_long)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, frames
