"""The reproducibility sidecar: a versioned JSON written next to every output.

It holds the resolved request (seeds included), the runtime (checkpoint, device, dtype), the output
files and per-stage timings; ``songflow generate --from FILE`` regenerates the same audio from it.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch

from songflow import __version__
from songflow.fileio import atomic_write_text
from songflow.requests import request_to_dict

SIDECAR_FORMAT_VERSION = 1


def sidecar_path(audio_path: Path) -> Path:
    """``song.wav`` -> ``song.json``."""
    return audio_path.with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_fingerprints(request) -> dict[str, str]:
    """sha256 of every input audio file a request names (``*_path`` fields)."""
    return {
        f.name: file_sha256(getattr(request, f.name))
        for f in dataclasses.fields(request)
        if f.name.endswith("_path") and getattr(request, f.name)
    }


def write_sidecar(path: Path, result, outputs: list[str], runtime: dict[str, Any]) -> None:
    data = {
        "songflow_version": __version__,
        "sidecar_format_version": SIDECAR_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "request": request_to_dict(result.request),
        "sources_sha256": source_fingerprints(result.request),
        "outputs": outputs,
        "sample_rate_hz": result.sample_rate_hz,
        "timings_s": {k: round(v, 4) for k, v in result.timings_s.items()},
        "runtime": {**runtime, "torch": torch.__version__, "python": platform.python_version()},
    }
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
