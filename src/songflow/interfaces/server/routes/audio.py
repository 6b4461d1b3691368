"""``/v1/jobs/{id}/audio``: a finished job's audio, as WAV or converted on first request."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse

from songflow.audio.io import SUPPORTED_FORMATS, load_audio, save_audio
from songflow.errors import SongflowError
from songflow.interfaces.server.deps import Context, ExistingJob, require_api_key
from songflow.interfaces.server.schemas import error_responses

log = logging.getLogger("songflow.server")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])

MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}
_AUDIO_RESPONSE = {
    "description": "the audio file",
    "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()},
}


@router.get(
    "/{job_id}/audio",
    response_class=FileResponse,
    responses={200: _AUDIO_RESPONSE, **error_responses(401, 404, 409, 422)},
)
def audio(
    job: ExistingJob,
    context: Context,
    format: str = Query("wav", description="one of " + ", ".join(SUPPORTED_FORMATS)),
    index: int = Query(0, ge=0, description="which output of a batch_size > 1 job"),
) -> FileResponse:
    if job.state != "done":
        raise HTTPException(409, f"job {job.id} is {job.state}; audio is available once it is done")
    fmt = format.lower()
    if fmt not in SUPPORTED_FORMATS:
        raise HTTPException(422, f"format must be one of {list(SUPPORTED_FORMATS)}, got {format!r}")
    if index >= len(job.outputs):
        raise HTTPException(
            404, f"job {job.id} has {len(job.outputs)} output(s); index {index} is out of range"
        )
    path = provide_audio(context.outputs_dir / job.id, job.outputs[index], fmt)
    return FileResponse(path, media_type=MEDIA_TYPES.get(fmt), filename=f"{job.id}_{index}.{fmt}")


def provide_audio(folder: Path, output_name: str, fmt: str) -> Path:
    """``folder/output_name`` as ``fmt``: the file itself, or its conversion (written once, atomically by
    ``save_audio``, beside it); a 500 when it cannot be converted."""
    path = folder / f"{output_name.rsplit('.', 1)[0]}.{fmt}"
    if not path.exists():
        try:
            wav, sr = load_audio(folder / output_name)
            save_audio(path, wav, sr, format=fmt)
        except SongflowError as exc:
            log.error("%s: cannot provide %s audio: %s", folder.name, fmt, exc)
            raise HTTPException(500, f"cannot provide the audio as {fmt}") from exc
    return path
