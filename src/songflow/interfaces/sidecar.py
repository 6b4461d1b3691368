"""The reproducibility sidecar: a versioned JSON written next to every output.

It holds the resolved request (seeds included), the runtime (checkpoint, device, dtype), the output
files and per-stage timings; ``songflow generate --from FILE`` regenerates the same audio from it.
"""

from __future__ import annotations

import datetime
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


def write_sidecar(path: Path, result, outputs: list[str], runtime: dict[str, Any]) -> None:
    data = {
        "songflow_version": __version__,
        "sidecar_format_version": SIDECAR_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "request": request_to_dict(result.request),
        "outputs": outputs,
        "sample_rate_hz": result.sample_rate_hz,
        "timings_s": {k: round(v, 4) for k, v in result.timings_s.items()},
        "runtime": {**runtime, "torch": torch.__version__, "python": platform.python_version()},
    }
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
