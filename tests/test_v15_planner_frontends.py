"""The ACE-Step 1.5 5 Hz LM planner in the front ends: request validation, ``songflow plan`` /
``generate --think`` end to end (the sidecar replays without the LM), the server's planner routes and the
studio's planner controls.

One tiny random 1.5 checkpoint with a tiny random LM (``build_random_v15_checkpoint(lm=True)``) per module;
every song is 10 s over two custom timesteps and its metadata are given, so the planner writes only the 50
audio codes (phase 1 is skipped). Format/understand/simple answers of a random LM are thousands of random
tokens, so those tests stand in a fixed answer for the LM flow (they test the wiring, not the LM).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from songflow.interfaces.cli import main

FAST = ["--duration", "10", "--timesteps", "1,0.5", "--lm-temperature", "0"]
METAS = ["--bpm", "100", "--key-scale", "C major", "--time-signature", "4"]
FAST_PARAMS = {"timesteps": [1.0, 0.5], "lm_temperature": 0.0}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint

    return build_random_v15_checkpoint(tmp_path_factory.mktemp("v15_lm_ckpt"), lm=True)


@pytest.fixture(scope="module")
def pipe(ckpt):
    from songflow.families import load_pipeline

    return load_pipeline(ckpt, device="cpu")


def _fixed_answer(**fields):
    """A stand-in for a planner flow (format/understand/simple): returns a fixed SongPlan."""
    from songflow.tasks.acestep_v15.planner import SongPlan

    def answer(lm, *args, seed, **kwargs):
        codes = tuple(int(c) for c in args[0]) if args and not isinstance(args[0], str) else None
        return SongPlan(seed=seed, audio_codes=codes, **fields)

    return answer


# -- requests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"task": "plan", "duration_s": 5}, "duration_s", "10, 600"),
        ({"task": "plan", "bpm": 1000}, "bpm", "[30, 300]"),
        ({"task": "plan", "key_scale": "H major"}, "key_scale", "note A-G"),
        ({"task": "format", "time_signature": "5"}, "time_signature", "'2', '3', '4', '6'"),
        ({"task": "plan", "vocal_language": "klingon"}, "vocal_language", "choose one of"),
        ({"task": "plan", "params": {"lm_top_p": 0}}, "lm_top_p", "up to 1.0"),
        ({"task": "plan", "params": {"lm_temperature": -1}}, "lm_temperature", "[0.0, 5.0]"),
        ({"task": "plan", "params": {"lm_cfg_scale": 0.5}}, "lm_cfg_scale", "[1.0, 20.0]"),
        ({"task": "plan", "params": {"constrained_decoding": False}}, "constrained_decoding", "stay on"),
        ({"task": "plan", "params": {"lm_seeds": [1, 2]}}, "lm_seeds", "batch_size 1"),
        ({"task": "understand"}, "source_path", "needs field"),
    ],
)
def test_v15_planner_requests_refuse_bad_values_clearly(data, field, words):
    from songflow.requests import RequestFieldError
    from songflow.requests_v15 import planner_request15_from_dict

    with pytest.raises(RequestFieldError) as info:
        planner_request15_from_dict(data)
    assert info.value.loc[-1] == field and words in str(info.value)


def test_v15_planner_song_requests_refuse_bad_values_clearly():
    from songflow.requests import RequestFieldError
    from songflow.requests_v15 import request15_from_dict

    with pytest.raises(RequestFieldError, match="limit is 4000") as info:
        request15_from_dict({"task": "simple", "description": "x" * 100_000})
    assert info.value.loc == ("description",)
    with pytest.raises(RequestFieldError, match="10..600 s, the lengths the planner writes") as info:
        request15_from_dict({"task": "text2music", "think": True, "duration_s": 5.0})
    assert request15_from_dict({"task": "text2music", "duration_s": 5.0}).duration_s == 5.0  # no planning


@settings(max_examples=30, deadline=None)
@given(
    bpm=st.none() | st.integers(30, 300),
    duration_s=st.none() | st.floats(10, 600),
    with_codes=st.booleans(),
    temperature=st.floats(0, 5),
)
def test_v15_planner_request_round_trips(bpm, duration_s, with_codes, temperature):
    from songflow.requests_v15 import V15_PLANNER_SCHEMA, Params15, Plan15

    request = Plan15(
        caption="c", bpm=bpm, duration_s=duration_s, with_codes=with_codes,
        params=Params15(lm_temperature=temperature),
    )  # fmt: skip
    data = json.loads(json.dumps(V15_PLANNER_SCHEMA.to_dict(request)))
    assert V15_PLANNER_SCHEMA.from_dict(data) == request


# -- CLI -------------------------------------------------------------------------------------------------


def test_v15_planner_cli_plan_prints_and_writes_the_blueprint(ckpt, tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = main(["plan", "--checkpoint", str(ckpt), "--caption", "jazz", *FAST[:2], *FAST[4:], *METAS,
                 "--seed", "5", "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "keyscale: C major" in text and "audio_codes: 50 codes" in text
    data = json.loads(out.read_text())
    (plan,) = data["plans"]
    assert data["request"]["task"] == "plan" and len(plan["audio_codes"]) == 50 and plan["seed"] == 5
    assert main(["plan", "--checkpoint", str(ckpt), *METAS, "--duration", "10", "--no-codes",
                 "--seed", "5", "--json", "--device", "cpu"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["plans"][0]["audio_codes"] is None


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--duration", "5"], "duration_s must be in [10, 600]"),
        (["--bpm", "1000"], "bpm must be an integer in [30, 300]"),
        (["--key-scale", "H major"], "unknown key_scale 'H major'"),
        (["--description", "x" * 100_000], "the limit is 4000"),
        (["--description", "a song", "--caption", "x"], "leave out --caption"),
    ],
)
def test_v15_planner_cli_refuses_bad_plans_before_loading(ckpt, capsys, flags, words):
    assert main(["plan", "--checkpoint", str(ckpt), *flags]) == 2
    assert words in capsys.readouterr().err


def test_v15_planner_cli_think_replays_from_the_sidecar_without_the_lm(ckpt, tmp_path):
    """``generate --think``: the sidecar's request is the planned one (codes + metas, think off) and
    ``--from`` replays it bit-exactly with the LM folder gone; a batch replays from the recorded plans."""
    lm_folder = next(ckpt.glob("acestep-5Hz-lm-*"))
    first, batch = tmp_path / "a.wav", tmp_path / "b.wav"
    common = ["generate", "--checkpoint", str(ckpt), "--caption", "jazz", *FAST, *METAS, "--quiet"]
    assert main([*common, "--think", "--seed", "3", "--out", str(first)]) == 0
    assert main([*common, "--think", "--seed", "3,4", "--batch-size", "2", "--out", str(batch)]) == 0
    sidecar = json.loads(first.with_suffix(".json").read_text())
    assert sidecar["request"]["think"] is False and len(sidecar["request"]["audio_codes"]) == 50
    assert sidecar["planned_from"]["think"] is True and sidecar["plans"][0]["keyscale"] == "C major"
    assert json.loads(batch.with_suffix(".json").read_text())["request"]["think"] is True
    hidden = tmp_path / "lm_gone"
    shutil.move(str(lm_folder), hidden)
    try:
        for song in (first, batch):
            again = song.with_name(f"again_{song.name}")
            assert (
                main(["generate", "--from", str(song.with_suffix(".json")), "--out", str(again), "--quiet"])
                == 0
            )
            for i in [""] if song is first else ["_0", "_1"]:
                a = sf.read(song.with_name(f"{song.stem}{i}.wav"))[0]
                b = sf.read(again.with_name(f"{again.stem}{i}.wav"))[0]
                assert (a == b).all()
    finally:
        shutil.move(str(hidden), lm_folder)


def test_v15_planner_cli_think_without_an_lm_says_what_to_download(ckpt, tmp_path, capsys):
    lm_folder = next(ckpt.glob("acestep-5Hz-lm-*"))
    hidden = tmp_path / "lm_gone"
    shutil.move(str(lm_folder), hidden)
    try:
        code = main(
            ["generate", "--checkpoint", str(ckpt), "--think", *FAST, "--out", str(tmp_path / "x.wav")]
        )
    finally:
        shutil.move(str(hidden), lm_folder)
    assert code == 2
    assert "songflow download --model acestep-v15-turbo --lm acestep-5Hz-lm-1.7B" in capsys.readouterr().err


def test_v15_planner_cli_lm_flags_are_refused_for_v1(tmp_path, capsys):
    assert main(["generate", "--tags", "pop", "--lm-offload", "--out", str(tmp_path / "x.wav")]) == 2
    assert "ACE-Step 1.5" in capsys.readouterr().err


def test_v15_planner_cli_bench_has_the_planner_flags():
    from songflow.interfaces.cli.commands import build_parser

    args = build_parser().parse_args(["bench", "--planner", "lm", "--cfg", "1", "2", "--duration", "30"])
    assert (args.planner, args.cfg, args.duration) == ("lm", [1.0, 2.0], 30.0)


# -- pipeline: simple mode ---------------------------------------------------------------------------------


def test_v15_planner_simple_mode_sings_the_description(pipe, monkeypatch):
    """Simple mode: the LM's caption, lyrics and metadata become the song's request (think off: no codes)."""
    from songflow.requests_v15 import Params15, Simple15
    from songflow.tasks.acestep_v15 import planner

    answer = dict(
        caption="dreamy synth", lyrics="[verse]\nla", bpm=96, keyscale="A minor", timesignature="4",
        duration_s=12.0, language="en",
    )  # fmt: skip
    monkeypatch.setattr(planner, "describe_song", _fixed_answer(**answer))
    result = pipe.generate(
        Simple15(description="a dreamy song", params=Params15(seeds=(2,), timesteps=(1.0, 0.5)))
    )
    ran = result.request
    assert (ran.task, ran.caption, ran.lyrics, ran.bpm, ran.key_scale) == (
        "text2music", "dreamy synth", "[verse]\nla", 96, "A minor",
    )  # fmt: skip
    assert ran.duration_s == 12.0 and result.audio.shape[-1] == 12 * 48000 and ran.audio_codes is None
    assert result.planned_from.task == "simple"
    fast = Params15(seeds=(2,), timesteps=(1.0, 0.5), lm_temperature=0.0)
    planned = pipe.generate(Simple15(description="a dreamy song", think=True, params=fast))
    assert (
        len(planned.request.audio_codes) == 5 * 12
        and planned.plans[0].audio_codes == planned.request.audio_codes
    )


# -- server ------------------------------------------------------------------------------------------------


@pytest.fixture
def client(pipe, tmp_path):
    from fastapi.testclient import TestClient

    from songflow.interfaces.server.app import create_app

    with TestClient(create_app(pipe, data_dir=tmp_path / "data", start_worker=False)) as c:
        yield c


def test_v15_planner_server_plan_route(client):
    body = {"caption": "jazz", "bpm": 100, "key_scale": "C major", "time_signature": "4", "duration_s": 10.0,
            "params": {"seeds": [5], "lm_temperature": 0.0}}  # fmt: skip
    answer = client.post("/v1/plan", json=body)
    assert answer.status_code == 200, answer.text
    (plan,) = answer.json()["plans"]
    assert len(plan["audio_codes"]) == 50 and plan["keyscale"] == "C major" and plan["seed"] == 5
    bad = client.post("/v1/plan", json={"bpm": 1000, "duration_s": 5})
    assert bad.status_code == 422
    assert {tuple(e["loc"]) for e in bad.json()["detail"]} >= {("body", "bpm"), ("body", "duration_s")}
    assert client.post("/v1/plan", json={"task": "format"}).status_code == 422
    assert client.post("/v1/plan", json={"description": "x" * 100_000}).status_code == 422


def test_v15_planner_server_format_and_understand_routes(client, monkeypatch):
    from songflow.tasks.acestep_v15 import planner

    monkeypatch.setattr(planner, "format_song", _fixed_answer(caption="tidy", lyrics="[verse]\nok", bpm=90))
    monkeypatch.setattr(planner, "understand_codes", _fixed_answer(caption="heard", language="en"))
    answer = client.post("/v1/format", json={"caption": "messy", "lyrics": "ok", "params": {"seeds": [1]}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["plans"][0]["caption"] == "tidy"
    buffer = io.BytesIO()
    sf.write(buffer, (0.1 * torch.randn(48000 * 2)).numpy(), 48000, format="WAV")
    files = {"source": ("song.wav", buffer.getvalue(), "audio/wav")}
    heard = client.post(
        "/v1/understand", data={"request": json.dumps({"params": {"seeds": [1]}})}, files=files
    )
    assert heard.status_code == 200, heard.text
    data = heard.json()
    assert data["plans"][0]["caption"] == "heard" and len(data["plans"][0]["audio_codes"]) == 10
    assert data["request"]["source_path"] == "upload:song.wav"
    assert client.post("/v1/understand", json={}).status_code == 422  # no upload


def test_v15_planner_server_think_job_is_accepted(client):
    body = {"caption": "jazz", "duration_s": 10.0, "think": True, "params": FAST_PARAMS}
    answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == 202, answer.text
    assert answer.json()["request"]["think"] is True
    assert client.post("/v1/jobs", json={**body, "duration_s": 5.0}).status_code == 422


# -- studio ------------------------------------------------------------------------------------------------


def test_v15_planner_studio_has_the_planner_controls(pipe, tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from songflow.interfaces.studio.app import ask_planner, build_ui
    from songflow.interfaces.studio.engine import History, Studio
    from songflow.tasks.acestep_v15 import planner

    studio = Studio(pipe, History(tmp_path / "history"))
    config = build_ui(studio).get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"text2music-think", "simple-description", "simple-instrumental"} <= ids
    assert {"planner-format", "planner-understand", "planner-audio"} <= ids
    monkeypatch.setattr(planner, "format_song", _fixed_answer(caption="tidy", bpm=90, keyscale="D minor"))
    values = {"caption": "messy", "lyrics": "", "vocal_language": "en"}
    answer = ask_planner(studio, "format", values, {"seeds": "4"})
    assert (answer["caption"], answer["bpm"], answer["key_scale"]) == ("tidy", 90, "D minor")
    assert "tidied" in answer["note"]


def test_v15_official_format_input_route(client, monkeypatch):
    """``POST /format_input`` (the official 1.5 API): the LM's format in upstream's envelope and names."""
    from songflow.tasks.acestep_v15 import planner

    seen = {}

    def answer(lm, *args, seed, **kwargs):
        seen.update(kwargs)
        return planner.SongPlan(seed=seed, caption="tidy", lyrics="[verse]\nok", bpm=90, keyscale="D minor",
                                timesignature="3", duration_s=30.0, language="en")  # fmt: skip

    monkeypatch.setattr(planner, "format_song", answer)
    body = {"prompt": "messy", "lyrics": "ok", "temperature": 0.5,
            "param_obj": json.dumps({"bpm": 90, "key": "D minor", "time_signature": "3/4"})}  # fmt: skip
    reply = client.post("/format_input", json=body)
    assert reply.status_code == 200, reply.text
    envelope = reply.json()
    assert envelope["code"] == 200 and envelope["error"] is None and envelope["timestamp"] > 0
    assert envelope["data"] == {"caption": "tidy", "lyrics": "[verse]\nok", "bpm": 90, "key_scale": "D minor",
                                "time_signature": "3", "duration": 30.0, "vocal_language": "en"}  # fmt: skip
    assert client.post("/format_input", json={"prompt": "x", "param_obj": "{bad"}).status_code == 400
