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
        ({"task": "text2music", "tags": "x", "colour": 1}, "unknown field 'colour' for task 'text2music'"),
        (
            {"task": "text2music", "tags": "x", "params": {"stepz": 3}},
            "unknown generation parameter 'stepz' (did you mean 'steps'?)",
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


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"use_erg_tag": "no"}, ("params", "use_erg_tag")),
        ({"use_erg_lyric": 0}, ("params", "use_erg_lyric")),
        ({"batch_size": True}, ("params", "batch_size")),
        ({"steps": True}, ("params", "steps")),
        ({"legacy_double_shift": 5}, ("params", "legacy_double_shift")),
        ({"legacy_batch_noise": "false"}, ("params", "legacy_batch_noise")),
        ({"guidance_scale": "15"}, ("params", "guidance_scale")),
        ({"shift": False}, ("params", "shift")),
        ({"sampler": 1}, ("params", "sampler")),
        ({"omega_mean_over": "Sample"}, ("params", "omega_mean_over")),
        ({"seeds": [1, True]}, ("params", "seeds")),
        ({"seeds": "1,2"}, ("params", "seeds")),
        ({"step_indices": [1.0, 2.0]}, ("params", "step_indices")),
    ],
)
def test_wrong_types_are_rejected_for_every_field(params, loc):
    """Issue 12.3: the dataclasses themselves refuse a truthy string for a bool, a bool for an int..."""
    from songflow.requests import RequestFieldError

    with pytest.raises(RequestFieldError) as exc:
        request_from_dict({"tags": "x", "params": params})
    assert exc.value.loc == loc
    with pytest.raises(RequestFieldError):  # the Python API too, not only the JSON entry point
        GenerationParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"tags": 5}, ("tags",)),
        ({"tags": "x", "lyrics": None}, ("lyrics",)),
        ({"tags": "x", "lyrics": ["la"]}, ("lyrics",)),
        ({"tags": "x", "duration_s": "60"}, ("duration_s",)),
        ({"tags": "x", "duration_s": True}, ("duration_s",)),
        ({"task": "repaint", "tags": "x", "source_path": 3}, ("source_path",)),
        ({"task": "edit", "tags": "x", "source_path": "a", "target_lyrics": 1}, ("target_lyrics",)),
        ({"task": "edit", "tags": "x", "source_path": "a", "target_tags": "y", "n_avg": 2.0}, ("n_avg",)),
        ({"tags": "x", "loras": [{"path": "a", "weight": "1"}]}, ("loras", 0, "weight")),
        ({"tags": "x", "loras": [{"path": "a", "wieght": 1.0}]}, ("loras", 0, "wieght")),
        ({"tags": "x", "loras": ["a"]}, ("loras", 0)),
        ({"tags": "x", "params": [1]}, ("params",)),
    ],
)
def test_wrong_types_of_task_fields_are_rejected(data, loc):
    from songflow.requests import RequestFieldError

    with pytest.raises(RequestFieldError) as exc:
        request_from_dict(data)
    assert exc.value.loc == loc


def test_unknown_keys_name_the_close_match():
    with pytest.raises(ConfigError, match=r"unknown field 'duraton_s' .*\(did you mean 'duration_s'\?\)"):
        request_from_dict({"tags": "x", "duraton_s": 30})
    with pytest.raises(ConfigError, match=r"'use_erg_tags' \(did you mean 'use_erg_tag'\?\)"):
        request_from_dict({"tags": "x", "params": {"use_erg_tags": False}})
    with pytest.raises(ConfigError, match="valid ones are"):
        request_from_dict({"tags": "x", "zzzz": 1})


def test_lyrics_length_is_a_request_limit():
    """Issue 12.3: the tokenizer's lyrics limit is checked at submission, from the field's metadata."""
    import dataclasses

    from songflow.requests import RequestFieldError
    from songflow.text.lyric_tokenizer import MAX_LYRICS_CHARS

    lyrics = next(f for f in dataclasses.fields(Text2Music) if f.name == "lyrics")
    assert lyrics.metadata["max_length"] == MAX_LYRICS_CHARS
    Text2Music(tags="x", lyrics="a" * MAX_LYRICS_CHARS)
    with pytest.raises(RequestFieldError, match="lyrics is 20001 characters long") as exc:
        request_from_dict({"tags": "x", "lyrics": "a" * (MAX_LYRICS_CHARS + 1)})
    assert exc.value.loc == ("lyrics",)


def test_duration_past_the_model_window_is_refused_at_submission():
    from songflow.requests import MAX_DURATION_S

    assert MAX_DURATION_S == 240.0
    Text2Music(tags="x", duration_s=240.0)
    with pytest.raises(ConfigError, match="up to 240"):
        Text2Music(tags="x", duration_s=240.5)


@pytest.mark.parametrize(
    ("params", "ok"),
    [
        ({"seeds": (1,), "batch_size": 3}, True),
        ({"seeds": (1, 2, 3), "batch_size": 3}, True),
        ({"seeds": (1, 2), "batch_size": 3}, False),
        ({"seeds": (1, 2, 3), "batch_size": 2}, False),
    ],
)
def test_seed_count_must_match_the_batch(params, ok):
    """Issue 12.11: --seeds 1,2 --batch-size 3 is refused instead of silently becoming [1, 2, 2]."""
    if ok:
        GenerationParams(**params)
        return
    with pytest.raises(ConfigError, match="give one seed or"):
        GenerationParams(**params)


def test_retake_seed_count_must_match_the_batch():
    from songflow.requests import Retake

    with pytest.raises(ConfigError, match="retake_seeds has 2 seeds for batch_size 3"):
        Retake(tags="x", params=GenerationParams(batch_size=3), retake_seeds=(1, 2))


def test_every_field_has_help():
    import dataclasses

    from songflow.requests import TASKS

    for cls in (*TASKS.values(), GenerationParams):
        for f in dataclasses.fields(cls):
            if f.name not in ("params", "loras"):
                assert f.metadata.get("help"), (cls.__name__, f.name)
