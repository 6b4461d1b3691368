"""Reading a job submission: a JSON body, or a multipart form with a ``request`` JSON field plus audio files
that are saved under ``uploads/`` and fill the request's ``source_path``/``reference_path``."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import FormData

from songflow.audio.io import load_audio
from songflow.errors import SongflowError
from songflow.interfaces.server.bodies import invalid
from songflow.interfaces.server.deps import ServerContext

# multipart file field -> the request field it fills
UPLOAD_FIELDS: dict[str, str] = {"source": "source_path", "reference": "reference_path"}
_SAFE_EXT = re.compile(r"^[a-z0-9]{1,8}$")


def _too_large(context: ServerContext) -> HTTPException:
    return HTTPException(413, f"the upload is larger than {context.max_upload_mb:g} MB")


def parse_json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid((), f"the request is not valid JSON: {exc}", "json_invalid") from exc
    if not isinstance(data, dict):
        raise invalid((), "the request must be a JSON object", "dict_type")
    return data


async def read_submission(request: Request, context: ServerContext) -> tuple[dict[str, Any], FormData | None]:
    """The request dict and, for a multipart submission, its form (whose files are not saved yet)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return parse_json((await request.body()).decode("utf-8", errors="replace")), None
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > context.max_upload_bytes + (1 << 20):
        raise _too_large(context)
    form = await request.form(max_files=len(UPLOAD_FIELDS), max_fields=8)
    raw = form.get("request")
    if not isinstance(raw, str):
        raise invalid(("request",), "multipart submissions need a 'request' field (a JSON string)", "missing")
    return parse_json(raw), form


async def save_uploads(
    form: FormData, data: dict[str, Any], context: ServerContext, saved: list[Path]
) -> None:
    """Save the form's audio files (appending each to ``saved``) and fill their request fields."""
    for field_name, target in UPLOAD_FIELDS.items():
        upload = form.get(field_name)
        if upload is None or isinstance(upload, str):
            continue
        path = await _save_upload(upload, context)
        saved.append(path)
        data[target] = str(path)


async def _save_upload(upload: Any, context: ServerContext) -> Path:
    suffix = Path(upload.filename or "").suffix.lower().lstrip(".")
    ext = suffix if _SAFE_EXT.match(suffix) else "bin"
    path = context.uploads_dir / f"{uuid.uuid4().hex}.{ext}"
    size = 0
    try:
        with open(path, "wb") as f:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > context.max_upload_bytes:
                    raise _too_large(context)
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
