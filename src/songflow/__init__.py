"""songflow: an independent implementation of the ACE-Step v1 music generation model.

The public API, imported on first use (``import songflow`` stays cheap)::

    import songflow

    pipe = songflow.load_pipeline()  # the shipped songflow-tiny model; or load_pipeline("path/to/ckpt")
    result = pipe.generate(songflow.Text2Music(tags="funk, 105 bpm", duration_s=10.0))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Pipeline": "songflow.pipeline",
    "Result": "songflow.pipeline",
    "load_pipeline": "songflow.families",
    "describe_folder": "songflow.families",
    "GenerationParams": "songflow.requests",
    "LoraRef": "songflow.requests",
    "Text2Music": "songflow.requests",
    "Retake": "songflow.requests",
    "Repaint": "songflow.requests",
    "Extend": "songflow.requests",
    "AudioToAudio": "songflow.requests",
    "Edit": "songflow.requests",
    "request_from_dict": "songflow.requests",
    "request_to_dict": "songflow.requests",
}

__all__ = [
    "AudioToAudio",
    "Edit",
    "Extend",
    "GenerationParams",
    "LoraRef",
    "Pipeline",
    "Repaint",
    "Result",
    "Retake",
    "Text2Music",
    "__version__",
    "describe_folder",
    "load_pipeline",
    "request_from_dict",
    "request_to_dict",
]

if TYPE_CHECKING:
    from songflow.families import describe_folder, load_pipeline
    from songflow.pipeline import Pipeline, Result
    from songflow.requests import (
        AudioToAudio,
        Edit,
        Extend,
        GenerationParams,
        LoraRef,
        Repaint,
        Retake,
        Text2Music,
        request_from_dict,
        request_to_dict,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'songflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
