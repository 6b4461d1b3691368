"""The ACE-Step 1.5 REST dialect (``/release_task``, ``/query_result``, ``/v1/audio``, ...) on a tiny 1.5 base
checkpoint, driven by a client that polls as the official plugin and DAW do (``acestep15_client``).

Shown: text2music released as JSON gives the Python API's songs bit for bit (seeds "5,6", batch 2) with
upstream's result records; a cover with a multipart upload and a form-encoded repaint that names the cover's
output as its source; ``param_obj``/``metas`` merging and aliases; an unknown id answers status 0 "[]";
bad bodies (wrong types, unknown task, server paths and traversal in every path field and in /v1/audio,
malformed or oversized uploads, unsupported content types, missing or wrong tokens) each get their documented
status and leave no upload or job behind; /v1/lora/* set the default adapter of later tasks only; /health and
/v1/models answer both dialects; /openapi.json types the body.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
sf = pytest.importorskip("soundfile")

import acestep15_client as plugin  # noqa: E402
from conftest import load_cpu, tiny_v15_root  # noqa: E402
from songflow.interfaces.server import acestep15_api as api  # noqa: E402
from songflow.requests_v15 import Params15, Text2Music15  # noqa: E402

FAST = 2  # inference_steps (a base model takes no custom timesteps)


@pytest.fixture(scope="module")
def ckpt15(tmp_path_factory) -> Path:
    return tiny_v15_root(tmp_path_factory, "compat15", seed=4, variant="base")


@pytest.fixture(scope="module")
def pipe15(ckpt15):
    return load_cpu(ckpt15)


def _client(pipeline, tmp_path: Path, **kwargs):
    from fastapi.testclient import TestClient

    from songflow.interfaces.server.app import create_app

    kwargs.setdefault("checkpoint_name", "checkpoints")  # a 1.5 root: upstream names the DiT folder
    return TestClient(create_app(pipeline, data_dir=tmp_path / "data", **kwargs))


def _wav_bytes(seconds: float = 6.0, sr: int = 48000) -> bytes:
    t = torch.arange(int(seconds * sr)) / sr
    x = 0.3 * torch.sin(2 * torch.pi * 220 * t)
    buf = io.BytesIO()
    sf.write(buf, torch.stack([x, 0.5 * x], 1).numpy(), sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _read(data: bytes) -> torch.Tensor:
    wav, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return torch.from_numpy(wav.T.copy())


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "data" / "uploads").iterdir())


def test_text2music_as_the_plugin_polls_it_is_the_python_api_song(pipe15, tmp_path):
    body = {"prompt": "dark synth", "lyrics": "[verse]\nla la", "audio_duration": 10, "batch_size": 2,
            "use_random_seed": False, "seed": "5,6", "inference_steps": FAST, "audio_format": "wav",
            "bpm": 120, "key_scale": "A minor", "time_signature": "4/4", "vocal_language": "en",
            "model": "acestep-v15-base"}  # fmt: skip
    with _client(pipe15, tmp_path) as http:
        task = plugin.release(http, body)
        unknown = str(uuid.uuid4())
        (waiting,) = http.post("/query_result", json={"task_id_list": [unknown]}).json()["data"]
        item = plugin.poll(http, task)
        assert item["status"] == 1, item
        songs = plugin.download(http, item)
        dashed = str(uuid.UUID(task))  # clients that keep the dashed uuid form
        (again,) = http.post("/query_result", json={"task_id_list": [dashed]}).json()["data"]
    assert waiting == {"task_id": unknown, "status": 0, "result": "[]", "progress_text": ""}
    assert item["status"] == 1 and again["status"] == 1 and len(item["result"]) == 2
    first = item["result"][0]
    assert first["seed_value"] == "5,6" and first["dit_model"] == "acestep-v15-base"
    assert first["metas"]["bpm"] == 120 and first["metas"]["keyscale"] == "A minor"
    assert first["metas"]["timesignature"] == "4" and first["metas"]["duration"] == 10
    assert first["file"].startswith("/v1/audio?path=") and first["file"].endswith(".wav")
    expected = pipe15.generate(
        Text2Music15(
            caption="dark synth",
            lyrics="[verse]\nla la",
            duration_s=10.0,
            bpm=120,
            key_scale="A minor",
            time_signature="4",
            vocal_language="en",
            params=Params15(seeds=(5, 6), batch_size=2, steps=FAST),
        )  # fmt: skip
    )
    for song, audio in zip(songs, expected.audio, strict=True):
        assert torch.equal(_read(song), audio)


def test_multipart_cover_then_a_form_encoded_repaint_of_its_output(pipe15, tmp_path):
    with _client(pipe15, tmp_path) as http:
        task = plugin.release(
            http, task_type="cover", prompt="bright piano", audio_cover_strength="0.5", inference_steps=FAST,
            audio_format="mp3", batch_size="1", files={"src_audio": ("mine.wav", _wav_bytes(), "audio/wav")},
        )  # fmt: skip
        cover = plugin.poll(http, task)
        assert cover["status"] == 1, cover
        (mp3,) = plugin.download(http, cover)
        ref = cover["result"][0]["file"]
        form = {"task_type": "repaint", "src_audio_path": ref, "repainting_start": "2",
                "repainting_end": "4", "inference_steps": FAST, "batch_size": "1", "audio_format": "wav",
                "use_random_seed": "false", "seed": "3"}  # fmt: skip
        answer = http.post("/release_task", data=form)  # application/x-www-form-urlencoded
        assert answer.status_code == 200, answer.text
        repaint = plugin.poll(http, answer.json()["data"]["task_id"])
        (wav,) = plugin.download(http, repaint)
        cover_wav = http.get(ref.replace(".mp3", ".wav")).content
    assert ref.endswith(".mp3") and (mp3[:3] == b"ID3" or mp3[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"))
    assert repaint["status"] == 1, repaint
    source, out = _read(cover_wav), _read(wav)
    assert out.shape == source.shape  # the source's length


def test_merging_and_aliases_follow_upstream():
    raw = {"caption": "x", "keyscale": "C major", "language": "de", "duration": 20,
           "param_obj": json.dumps({"bpm": 100, "duration": 30, "time_signature": "3"}),
           "metas": {"bpm": 90, "key_scale": "D minor", "vocal_language": "fr"}}  # fmt: skip
    body = api.ReleaseTaskBody.model_validate(api.merged_body(raw))
    assert (body.prompt, body.key_scale, body.vocal_language) == ("x", "C major", "de")
    assert (body.audio_duration, body.bpm, body.time_signature) == (20, 100, "3")
    request = api.songflow_request(body, turbo=True, model_names=("m",))
    assert request["params"].get("guidance_scale") is None and "steps" not in request["params"]
    assert request["duration_s"] == 20 and request["time_signature"] == "3"
    base = api.songflow_request(
        api.ReleaseTaskBody.model_validate({"guidance_scale": 5, "inference_steps": 30, "use_adg": True}),
        turbo=False,
        model_names=("m",),
    )
    assert base["params"]["guidance_scale"] == 5 and base["params"]["steps"] == 30
    assert base["params"]["guidance"] == "adg"
    simple = api.songflow_request(
        api.ReleaseTaskBody.model_validate({"sample_mode": True, "description": "a sea shanty"}),
        turbo=True,
        model_names=("m",),
    )
    assert simple["task"] == "simple" and simple["description"] == "a sea shanty"
    codes = api.ReleaseTaskBody.model_validate({"audio_codes": "<|audio_code_5|><|audio_code_70|>"})
    assert api.songflow_request(codes, turbo=True, model_names=("m",))["audio_codes"] == [5, 70]
    assert api.parse_ref(api.audio_url("0" * 32 + "/audio_0.mp3")) == ("0" * 32, "audio_0", "mp3")


@pytest.mark.parametrize(
    "field", ["src_audio_path", "ctx_audio_path", "sourceAudioPath", "reference_audio_path", "ref_audio_path"]
)
def test_every_path_field_refuses_server_paths(pipe15, tmp_path, field):
    with _client(pipe15, tmp_path) as http:
        for value, status in (("/etc/passwd", 403), ("../../data/jobs.sqlite3", 403), ("~/x.wav", 403),
                              ("C:\\x.wav", 403), ("%2Fetc%2Fpasswd", 403),
                              ("0" * 32 + "/audio_0.wav", 404)):  # fmt: skip
            body = {"task_type": "cover", field: value, "inference_steps": FAST}
            answer = http.post("/release_task", json=body)
            assert answer.status_code == status, (field, value, answer.text)
        assert http.get("/v1/stats").json()["data"]["jobs"]["total"] == 0
    assert _leftovers(tmp_path) == []


def test_bad_bodies_get_their_documented_status(pipe15, tmp_path):
    with _client(pipe15, tmp_path, max_upload_mb=0.2, api_key="sekrit") as http:
        key = {"Authorization": "Bearer sekrit"}
        assert http.get("/health").status_code == 200  # open
        assert http.post("/release_task", json={"prompt": "x"}).status_code == 401
        assert http.post("/release_task", json={"prompt": "x", "ai_token": "nope"}).status_code == 401
        assert http.get("/v1/stats").status_code == 401
        assert http.get("/v1/stats", headers={"Authorization": "sekrit"}).status_code == 200  # bare key
        cover = {"task_type": "cover"}
        cases = [
            ({"json": {"bpm": "fast"}}, 422),
            ({"json": {"batch_size": 99}}, 422),
            ({"json": {"task_type": "karaoke"}}, 400),
            ({"json": {"audio_format": "aac"}}, 400),
            ({"json": {"sampler_mode": "heun"}}, 400),
            ({"json": {"model": "acestep-v15-xl-turbo"}}, 400),
            ({"json": {"audio_duration": 5000, "inference_steps": FAST}}, 422),
            ({"json": {"param_obj": "{not json"}}, 400),
            ({"json": {"task_type": "cover", "inference_steps": FAST}}, 422),  # no source
            ({"content": b"{\"prompt\": ", "headers": {"Content-Type": "application/json"}}, 400),
            ({"content": b"<xml/>", "headers": {"Content-Type": "application/xml"}}, 415),
            ({"data": cover, "files": {"src_audio": ("x.wav", b"not audio", "audio/wav")}}, 400),
            ({"data": cover, "files": {"src_audio": ("x.wav", b"\0" * 400_000, "audio/wav")}}, 413),
            ({"data": cover, "files": {"evil": ("x.wav", _wav_bytes(0.3), "audio/wav")}}, 400),
            ({"content": b"--b\r\n\r\nx", "headers": {"Content-Type": "multipart/form-data"}}, 400),
        ]  # fmt: skip
        for kwargs, status in cases:
            headers = {**key, **kwargs.pop("headers", {})}
            answer = http.post("/release_task", headers=headers, **kwargs)
            assert answer.status_code == status, (kwargs, answer.status_code, answer.text)
        for path, status in (("/etc/passwd", 403), ("..%2F..%2Fjobs.sqlite3", 403), ("nope", 404),
                             ("0" * 32 + "/audio_0.wav", 404)):  # fmt: skip
            assert http.get("/v1/audio", params={"path": path}, headers=key).status_code == status, path
        stats = http.get("/v1/stats", headers=key).json()["data"]
    assert stats["jobs"]["total"] == 0 and stats["queue_maxsize"] == 16
    assert _leftovers(tmp_path) == []


def test_a_full_queue_answers_429_and_stores_nothing(pipe15, tmp_path):
    with _client(pipe15, tmp_path, max_queue=1) as http:
        http.app.state.worker.pause()
        body = {"prompt": "x", "audio_duration": 10, "inference_steps": FAST, "batch_size": 1}
        plugin.release(http, body)
        full = http.post("/release_task", data={**body, "task_type": "cover"},
                         files={"src_audio": ("mine.wav", _wav_bytes(1.0), "audio/wav")})  # fmt: skip
        stats = http.get("/v1/stats").json()["data"]
    assert full.status_code == 429 and full.json()["detail"] == "Server busy: queue is full"
    assert stats["jobs"]["total"] == 1 and _leftovers(tmp_path) == []  # the refused upload is gone


def test_lora_routes_set_the_default_adapter_of_later_tasks_only(pipe15, tmp_path):
    from test_v15_lora import _lora_pairs, _write_peft

    root = tmp_path / "loras"
    _write_peft(root / "waltz", _lora_pairs(pipe15.dit.decoder, 4, seed=1), r=4, alpha=8)
    with _client(pipe15, tmp_path, lora_dir=root) as http:
        http.app.state.worker.pause()
        body = {"prompt": "x", "audio_duration": 10, "inference_steps": FAST, "batch_size": 1}
        assert http.post("/v1/lora/toggle", json={"use_lora": True}).json()["code"] == 400  # soft failure
        assert http.post("/v1/lora/load", json={"lora_path": "../elsewhere"}).status_code == 400
        assert (
            http.post("/v1/lora/load", json={"lora_path": "waltz"}).json()["data"]["adapter_name"] == "waltz"
        )
        first = plugin.release(http, body)
        assert http.post("/v1/lora/scale", json={"scale": 0.5}).json()["data"]["scale"] == 0.5
        assert http.post("/v1/lora/scale", json={"scale": 3}).json()["code"] == 400
        second = plugin.release(http, body)
        assert http.post("/v1/lora/toggle", json={"use_lora": False}).json()["data"]["use_lora"] is False
        third = plugin.release(http, body)
        status = http.get("/v1/lora/status").json()["data"]
        http.post("/v1/lora/unload")
        views = [http.get(f"/v1/jobs/{t}").json()["request"] for t in (first, second, third)]
        cleared = http.get("/v1/lora/status").json()["data"]
    assert status["lora_loaded"] and status["scales"] == {"waltz": 0.5} and status["use_lora"] is False
    assert views[0]["loras"] == [{"name": "waltz", "weight": 1.0}]
    assert views[1]["loras"] == [{"name": "waltz", "weight": 0.5}]
    assert not views[2].get("loras") and cleared["lora_loaded"] is False


def test_health_models_stats_and_the_typed_schema(pipe15, tmp_path):
    with _client(pipe15, tmp_path) as http:
        health = http.get("/health").json()
        models = http.get("/v1/models").json()
        stats = http.get("/v1/stats").json()
        inventory = http.get("/v1/model_inventory").json()["data"]
        schema = http.get("/openapi.json").json()
        no_lm = http.post("/format_input", json={"prompt": "x"})
        sample = http.post("/create_random_sample", json={"sample_type": "custom_mode"}).json()["data"]
    assert health["status"] == "ok" and health["data"]["status"] == "ok" and health["code"] == 200
    assert health["data"]["loaded_model"] == "acestep-v15-base" and "worker_alive" in health
    assert models["models"][0]["family"] and models["data"]["models"][0]["name"] == "acestep-v15-base"
    assert set(models["data"]["models"][0]["supported_task_types"]) >= {"text2music", "cover", "extract"}
    assert inventory == models["data"]
    assert stats["data"]["jobs"] == {"total": 0, "queued": 0, "running": 0, "succeeded": 0, "failed": 0}
    assert no_lm.status_code == 503
    assert (
        sample["caption"] and 30 <= sample["bpm"] <= 300 and sample["time_signature"] in ("2", "3", "4", "6")
    )
    body = schema["paths"]["/release_task"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    props = body["properties"]
    assert props["inference_steps"]["type"] == "integer" and props["thinking"]["type"] == "boolean"
    for path in ("/query_result", "/v1/audio", "/v1/stats", "/v1/lora/load", "/format_input"):
        assert path in schema["paths"], path
