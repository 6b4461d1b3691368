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
from songflow.config import read_json_object
from songflow.errors import ConfigError
from songflow.fileio import atomic_write_text
from songflow.requests import request_to_dict, unknown_key_message

SIDECAR_FORMAT_VERSION = 1
#: every top-level key a sidecar has (``write_sidecar``); reading one refuses any other key by name
SIDECAR_KEYS = (
    "songflow_version",
    "sidecar_format_version",
    "created",
    "request",
    "sources_sha256",
    "outputs",
    "sample_rate_hz",
    "timings_s",
    "runtime",
)


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


def read_sidecar(path: Path) -> dict[str, Any]:
    """A sidecar written by :func:`write_sidecar`, its keys checked (a typo is named, not dropped).

    The ``request`` inside is checked when it is built (``request_from_dict``), key by key as well.
    """
    data = read_json_object(path, "parameters file")
    if "request" not in data:
        raise ConfigError(f"{path} is not a songflow parameters file (no 'request' key)")
    for key in data:
        if key not in SIDECAR_KEYS:
            raise ConfigError(f"{path}: {unknown_key_message(key, SIDECAR_KEYS, 'sidecar key')}")
    version = data.get("sidecar_format_version", SIDECAR_FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version > SIDECAR_FORMAT_VERSION:
        raise ConfigError(
            f"{path}: sidecar_format_version {version!r} is not one this songflow reads "
            f"(up to {SIDECAR_FORMAT_VERSION}); update songflow"
        )
    if not isinstance(data["request"], dict):
        raise ConfigError(f"{path}: 'request' must be a JSON object")
    if not isinstance(data.get("sources_sha256", {}), dict):
        raise ConfigError(f"{path}: 'sources_sha256' must be a JSON object")
    return data
