"""Request schema: JSON round trip, unknown keys named, validation, the official-parameters adapter."""

from __future__ import annotations

import json

import pytest

from songflow.errors import ConfigError
from songflow.requests import (
    GenerationParams,
    Text2Music,
    request_from_dict,
    request_from_official,
    request_to_dict,
)


def test_json_round_trip():
    request = Text2Music(
        tags="pop, 120 BPM",
        lyrics="[verse]\nhi",
        duration_s=12.5,
        params=GenerationParams(steps=27, sampler="heun", seeds=(1, 2), batch_size=2, guidance="cfg_star"),
    )
    data = json.loads(json.dumps(request_to_dict(request)))
    assert request_from_dict(data) == request


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"task": "text2music", "tags": "x", "colour": 1}, "unknown field(s) ['colour']"),
        (
            {"task": "text2music", "tags": "x", "params": {"stepz": 3}},
            "unknown generation parameter(s) ['stepz']",
        ),
        ({"task": "karaoke", "tags": "x"}, "unknown task 'karaoke'"),
        ({"task": "text2music", "tags": "x", "params": {"sampler": "ddim"}}, "unknown sampler 'ddim'"),
        ({"task": "text2music", "tags": "x", "params": {"guidance": "pag"}}, "unknown guidance 'pag'"),
        ({"task": "text2music", "tags": "x", "params": {"steps": 0}}, "steps must be"),
        ({"task": "text2music", "tags": "x", "params": {"steps": 2.5}}, "steps must be"),
        ({"task": "text2music", "tags": "x", "params": {"seeds": []}}, "seeds must be"),
        ({"task": "text2music", "tags": "x", "params": {"step_indices": [3, 2]}}, "strictly increasing"),
        ({"task": "text2music", "tags": "x", "params": {"sampler": "heun", "step_indices": [2]}}, "not heun"),
        ({"task": "text2music", "tags": "x", "params": {"omega_scale": float("inf")}}, "finite"),
        ({"task": "text2music", "tags": ""}, "tags must be a non-empty"),
        ({"task": "text2music", "tags": "x", "duration_s": 0}, "duration_s must be a positive"),
        ({"task": "text2music", "tags": "x", "params": {"batch_size": 0}}, "batch_size"),
    ],
)
def test_bad_requests_are_rejected_by_name(data, message):
    with pytest.raises(ConfigError) as exc:
        request_from_dict(data)
    assert message in str(exc.value)


def test_official_parameters_adapter():
    official = {
        "prompt": "funk, pop",
        "lyrics": "[verse]\nhi",
        "audio_duration": 30.0,
        "infer_step": 27,
        "guidance_scale": 15.0,
        "scheduler_type": "pingpong",
        "cfg_type": "cfg",
        "omega_scale": 5.0,
        "actual_seeds": [3, 4],
        "oss_steps": "2, 5, 9",
        "batch_size": 2,
        "format": "mp3",
        "lora_name_or_path": "none",
        "timecosts": {"diffusion": 1.0},
    }
    request = request_from_official(official)
    p = request.params
    assert (request.tags, request.duration_s, p.steps, p.sampler, p.guidance) == (
        "funk, pop",
        30.0,
        27,
        "pingpong",
        "cfg",
    )
    assert p.seeds == (3, 4) and p.step_indices == (2, 5, 9) and p.omega_scale == 5.0
    assert p.omega_mean_over == "sample" and not p.legacy_batch_noise
    legacy = request_from_official(official, reference_behaviour=True).params
    assert legacy.omega_mean_over == "batch" and legacy.legacy_batch_noise and legacy.legacy_heun_interval


def _outside(f) -> list:
    """Values just outside a number field's metadata bounds (the REST schema shows the same bounds)."""
    out = []
    step = 1 if f.type in ("int", int) else 0.5
    if "ge" in f.metadata:
        out.append(f.metadata["ge"] - step)
    if "gt" in f.metadata:
        out.append(f.metadata["gt"])
    if "le" in f.metadata:
        out.append(f.metadata["le"] + step)
    if "lt" in f.metadata:
        out.append(f.metadata["lt"])
    return out


def _valid(task: str) -> dict:
    extra = {"repaint": {"source_path": "a.wav"}, "extend": {"source_path": "a.wav"}}
    extra |= {
        "audio2audio": {"reference_path": "a.wav"},
        "edit": {"source_path": "a.wav", "target_tags": "y"},
    }
    return {"task": task, "tags": "x", **extra.get(task, {})}


def test_metadata_bounds_are_the_checked_bounds():
    import dataclasses

    from songflow.requests import TASKS, RequestFieldError

    checked = 0
    for task, cls in TASKS.items():
        request_from_dict(_valid(task))
        for f in dataclasses.fields(cls):
            for value in _outside(f):
                with pytest.raises(RequestFieldError) as exc:
                    request_from_dict({**_valid(task), f.name: value})
                assert exc.value.loc == (f.name,), (task, f.name, value)
                checked += 1
    for f in dataclasses.fields(GenerationParams):
        for value in _outside(f):
            with pytest.raises(RequestFieldError) as exc:
                request_from_dict({"tags": "x", "params": {f.name: value}})
            assert exc.value.loc == ("params", f.name), (f.name, value)
            checked += 1
    assert checked > 20


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"tags": "x", "params": {"stepz": 3}}, ("params", "stepz")),
        ({"tags": "x", "params": {"step_indices": [3, 2]}}, ("params", "step_indices")),
        ({"tags": "x", "loras": [{"path": "a", "weight": 99}]}, ("loras", 0, "weight")),
        ({"task": "karaoke", "tags": "x"}, ("task",)),
        ({"task": "repaint", "tags": "x"}, ("source_path",)),
        ({"task": "repaint", "tags": "x", "source_path": "a", "start_s": 5, "end_s": 4}, ("end_s",)),
        ({"task": "edit", "tags": "x", "source_path": "a"}, ("target_tags",)),
        ({"tags": "x", "retake": 1}, ("retake",)),
    ],
)
def test_errors_name_their_field(data, loc):
    from songflow.requests import RequestFieldError

    with pytest.raises(RequestFieldError) as exc:
        request_from_dict(data)
    assert exc.value.loc == loc and isinstance(exc.value, ConfigError)
