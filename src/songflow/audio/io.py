"""Reading and writing audio files with soundfile (libsndfile).

Audio is a float32 tensor ``[C, T]`` (channels, samples) plus an integer sample rate in Hz.
Every problem a user can cause (missing file, unreadable or unsupported format, empty or non-finite
audio) is raised as :class:`~songflow.errors.AudioError` with the path in the message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from songflow.errors import AudioError
from songflow.fileio import atomic_path

# format name -> (libsndfile major format, subtype, needs clipping to [-1, 1])
_WRITE_FORMATS: dict[str, tuple[str, str, bool]] = {
    "wav": ("WAV", "FLOAT", False),
    "flac": ("FLAC", "PCM_24", True),
    "ogg": ("OGG", "VORBIS", True),
    "mp3": ("MP3", "MPEG_LAYER_III", True),
}

SUPPORTED_FORMATS: tuple[str, ...] = tuple(
    name
    for name, (major, subtype, _) in _WRITE_FORMATS.items()
    if major in sf.available_formats() and subtype in sf.available_subtypes(major)
)
"""Output formats :func:`save_audio` can write with the installed libsndfile (file suffixes)."""


def load_audio(path: str | Path) -> tuple[Tensor, int]:
    """Read an audio file (wav, flac, ogg, mp3, … whatever libsndfile decodes).

    Args:
        path: the file to read.

    Returns:
        ``(wav, sample_rate_hz)``: ``wav`` float32 ``[C, T]`` in the file's channel layout, samples
        in [-1, 1] for integer formats (float files are returned unscaled).

    Raises:
        AudioError: the file is missing, not readable as audio, empty, or holds NaN/inf samples.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    if not path.is_file():
        raise AudioError(f"not an audio file (a directory or special file): {path}")
    try:
        data, sample_rate_hz = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        readable = ", ".join(sorted(sf.available_formats()))
        raise AudioError(
            f"cannot read audio file {path}: {exc} (readable container formats: {readable})"
        ) from exc
    if data.size == 0:
        raise AudioError(f"audio file {path} holds no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file {path} contains NaN or infinite samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.T))  # (C, T)
    return wav, int(sample_rate_hz)


def to_stereo(wav: Tensor) -> Tensor:
    """Make ``wav`` ``[C, T]`` (or mono ``[T]``) two-channel: mono is duplicated, channels past 2 dropped.

    Returns:
        ``[2, T]`` (the official loader's rule: L and R stay separate, no downmix).
    """
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2 or wav.shape[0] == 0:
        raise AudioError(f"expected audio shaped [channels, samples], got {tuple(wav.shape)}")
    if wav.shape[0] == 1:
        return wav.expand(2, -1).clone()
    return wav[:2]


def _resolve_format(path: Path, format: str | None) -> str:
    name = (format or path.suffix).lower().lstrip(".")
    if name not in SUPPORTED_FORMATS:
        what = f"format {format!r}" if format else f"file suffix {path.suffix!r}"
        raise AudioError(
            f"cannot write {path}: unsupported {what}; supported formats: {', '.join(SUPPORTED_FORMATS)}"
        )
    return name


def save_audio(path: str | Path, wav: Tensor, sample_rate_hz: int, format: str | None = None) -> None:
    """Write ``wav`` ``[C, T]`` (or mono ``[T]``) to ``path`` atomically.

    Formats (from ``format`` or the file suffix): ``wav`` 32-bit float PCM (not clipped), ``flac``
    24-bit PCM, ``ogg`` Vorbis, ``mp3`` (if libsndfile has MPEG support); the last three are clipped
    to [-1, 1] first. A reader never sees a half-written file.

    Raises:
        AudioError: unsupported format, empty or non-finite audio, a bad sample rate, or a write error.
    """
    path = Path(path)
    name = _resolve_format(path, format)
    major, subtype, clip = _WRITE_FORMATS[name]
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2 or wav.numel() == 0:
        raise AudioError(
            f"cannot write {path}: expected non-empty audio [channels, samples], got {tuple(wav.shape)}"
        )
    if int(sample_rate_hz) != sample_rate_hz or sample_rate_hz <= 0:
        raise AudioError(f"cannot write {path}: sample rate must be a positive integer, got {sample_rate_hz}")
    data = wav.detach().to("cpu", torch.float32)
    if not torch.isfinite(data).all():
        raise AudioError(f"cannot write {path}: audio contains NaN or infinite samples")
    if clip:
        data = data.clamp(-1.0, 1.0)
    frames = np.ascontiguousarray(data.numpy().T)  # (T, C)
    try:
        # the temporary file's suffix is ".part.<ext>", so the format is always passed explicitly
        with atomic_path(path) as tmp:
            sf.write(str(tmp), frames, int(sample_rate_hz), format=major, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"cannot write {path} as {name} at {sample_rate_hz} Hz: {exc}") from exc
