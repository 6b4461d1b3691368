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
