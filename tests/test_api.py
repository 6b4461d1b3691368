"""REST API in process (TestClient): files on disk (sidecar, uploads), upload limits, the Retry-After
estimate and a crashing pipeline. The real server over HTTP is tested in ``test_api_server.py``."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
sf = pytest.importorskip("soundfile")

from fastapi.testclient import TestClient  # noqa: E402

from songflow.interfaces.server.app import create_app  # noqa: E402

FAST = {"steps": 2, "guidance": "cfg", "guidance_scale": 2.0}


def t2m(seed: int = 1, **extra) -> dict:
    params = {**FAST, "seeds": [seed]}
    return {"task": "text2music", "tags": "pop, piano", "duration_s": 1.0, "params": params, **extra}


def wait_done(client: TestClient, job_id: str, timeout: float = 60.0, states=("done",)) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            assert job["state"] in states, job
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def wav_bytes(seconds: float = 1.0, sr: int = 48000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    data = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([data, data], axis=1), sr, format="WAV")
    return buf.getvalue()


def test_text2music_lifecycle_and_downloads(pipe, tmp_path):
    with TestClient(create_app(pipe, data_dir=tmp_path, checkpoint_name="tiny")) as client:
        assert client.get("/health").json()["status"] == "ok"
        models = client.get("/v1/models").json()["models"][0]
        assert models["name"] == "tiny" and "text2music" in models["tasks"] and models["device"] == "cpu"
        r = client.post("/v1/jobs", json=t2m(seed=7))
        assert r.status_code == 202, r.text
        job = wait_done(client, r.json()["id"])
        assert job["progress"] == 1.0
        assert job["request"]["params"]["seeds"] == [7]
        assert set(job["timings_s"]) >= {"preprocess", "diffusion", "decode"}
        for fmt in ("wav", "flac"):
            a = client.get(f"/v1/jobs/{job['id']}/audio", params={"format": fmt})
            assert a.status_code == 200, a.text
            data, sr = sf.read(io.BytesIO(a.content))
            assert sr == pipe.output_sample_rate_hz and data.shape[1] == 2 and len(data) > sr // 2
        assert client.get(f"/v1/jobs/{job['id']}/audio", params={"format": "xyz"}).status_code == 422
        assert client.get(f"/v1/jobs/{job['id']}/audio", params={"index": 3}).status_code == 404
        sidecar = json.loads((tmp_path / "outputs" / job["id"] / "result.json").read_text())
        assert sidecar["request"]["params"]["seeds"] == [7]
        listed = client.get("/v1/jobs", params={"state": "done"}).json()["jobs"]
        assert [j["id"] for j in listed] == [job["id"]]
        assert client.get("/v1/jobs/" + "0" * 32).status_code == 404


def test_multipart_repaint_and_bad_uploads(pipe, tmp_path):
    with TestClient(create_app(pipe, data_dir=tmp_path, max_upload_mb=0.5)) as client:
        req = {"task": "repaint", "tags": "rock", "start_s": 0.2, "end_s": 0.6, "params": FAST}
        r = client.post(
            "/v1/jobs",
            data={"request": json.dumps(req)},
            files={"source": ("in.wav", wav_bytes(1.0, 16000), "audio/wav")},
        )
        assert r.status_code == 202, r.text
        assert r.json()["request"]["source_path"].startswith("upload:")
        job = wait_done(client, r.json()["id"])
        a = client.get(f"/v1/jobs/{job['id']}/audio")
        assert a.status_code == 200 and sf.read(io.BytesIO(a.content))[0].shape[1] == 2

        r = client.post(
            "/v1/jobs",
            data={"request": json.dumps(req)},
            files={"source": ("big.wav", wav_bytes(3.0), "audio/wav")},
        )
        assert r.status_code == 413, r.text
        r = client.post(
            "/v1/jobs",
            data={"request": json.dumps({**req, "source_path": "/x.wav"})},
            files={"source": ("in.wav", wav_bytes(1.0, 16000), "audio/wav")},
        )
        assert r.status_code == 422
        # rejected submissions leave no upload behind
        assert len(list((tmp_path / "uploads").iterdir())) == 1


def test_failed_job_keeps_worker(pipe, tmp_path, monkeypatch):
    app = create_app(pipe, data_dir=tmp_path)
    calls = {"n": 0}
    real = pipe.generate

    def flaky(request, progress=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(request, progress=progress)

    monkeypatch.setattr(app.state.worker, "pipeline", type("P", (), {"generate": staticmethod(flaky)})())
    with TestClient(app) as client:
        bad = client.post("/v1/jobs", json=t2m()).json()["id"]
        job = wait_done(client, bad, states=("failed",))
        assert job["error"] == "internal error"
        wait_done(client, client.post("/v1/jobs", json=t2m()).json()["id"])


def test_retry_after_follows_recent_run_times(pipe, tmp_path):
    import math

    app = create_app(pipe, data_dir=tmp_path, max_queue=1)
    with TestClient(app) as client:
        r = client.post("/v1/jobs", json=t2m(seed=1))
        wait_done(client, r.json()["id"])
        app.state.worker.pause()
        assert client.post("/v1/jobs", json=t2m(seed=2)).status_code == 202
        r = client.post("/v1/jobs", json=t2m(seed=3))
        assert r.status_code == 429 and "queue is full" in r.json()["detail"]
        mean = app.state.store.mean_run_s()
        assert mean is not None and r.headers["Retry-After"] == str(max(1, math.ceil(mean)))


# --- the request body's schema and validation (pydantic models derived from songflow.requests) -------

_JSON_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _json_types(prop: dict) -> set:
    return {p.get("type") for p in [prop, *prop.get("anyOf", [])]} - {None}


def _check_fields(cls, component: dict, schemas: dict) -> None:
    """Every dataclass field of ``cls`` is in ``component`` with its type, default and bounds."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    props = component["properties"]
    for f in dataclasses.fields(cls):
        assert f.name in props, (cls.__name__, f.name)
        prop, hint = props[f.name], hints[f.name]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert f.name in component["required"], (cls.__name__, f.name)
        elif f.default is not dataclasses.MISSING:
            expected = list(f.default) if isinstance(f.default, tuple) else f.default
            assert prop["default"] == expected, (cls.__name__, f.name, prop)
        for key, json_key in _JSON_BOUNDS.items():
            if key in f.metadata:
                assert prop[json_key] == f.metadata[key], (cls.__name__, f.name, prop)
        if hint in _JSON_TYPES:
            assert _json_types(prop) == {_JSON_TYPES[hint]}, (cls.__name__, f.name, prop)
        elif typing.get_origin(hint) is typing.Literal:
            assert set(prop["enum"]) == set(typing.get_args(hint)), (cls.__name__, f.name, prop)
        elif dataclasses.is_dataclass(hint):
            nested = schemas[prop["$ref"].rsplit("/", 1)[1]]
            _check_fields(hint, nested, schemas)
        elif "tuple" in str(hint):
            assert "array" in _json_types(prop), (cls.__name__, f.name, prop)


def test_openapi_lists_every_task_and_its_fields(pipe, tmp_path):
    from songflow.requests import TASKS

    client = TestClient(create_app(pipe, data_dir=tmp_path, start_worker=False))
    schema = client.get("/openapi.json").json()
    schemas = schema["components"]["schemas"]
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    union = schemas[body["$ref"].rsplit("/", 1)[1]]
    assert union["discriminator"]["propertyName"] == "task"
    mapping = union["discriminator"]["mapping"]
    assert set(mapping) == set(TASKS)
    for task, cls in TASKS.items():
        component = schemas[mapping[task].rsplit("/", 1)[1]]
        assert component["properties"]["task"]["const"] == task
        assert component["additionalProperties"] is False
        _check_fields(cls, component, schemas)


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"params": {"steps": "ten"}}, ["params", "steps"]),
        ({"params": {"steps": True}}, ["params", "steps"]),
        ({"params": {"steps": 0}}, ["params", "steps"]),
        ({"params": {"use_erg_tag": "no"}}, ["params", "use_erg_tag"]),
        ({"params": {"seeds": ["1"]}}, ["params", "seeds", 0]),
        ({"params": {"guidance_interval": 2}}, ["params", "guidance_interval"]),
        ({"duration_s": True}, ["duration_s"]),
        ({"duration_s": "60"}, ["duration_s"]),
        ({"colour": "red"}, ["colour"]),
        # the request's own checks after the schema: still a field error
        ({"tags": "   "}, ["tags"]),
        ({"params": {"sampler": "heun", "step_indices": [2]}}, ["params", "step_indices"]),
    ],
)
def test_a_bad_field_gets_422_naming_it(pipe, tmp_path, change, loc):
    client = TestClient(create_app(pipe, data_dir=tmp_path, start_worker=False))
    body = {"task": "text2music", "tags": "pop", "duration_s": 1.0, **change}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    locs = [e["loc"] for e in r.json()["detail"]]
    assert ["body", *loc] in locs, locs  # the field's path in the body
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_body_without_task_is_text2music(pipe, tmp_path):
    client = TestClient(create_app(pipe, data_dir=tmp_path, start_worker=False))
    r = client.post("/v1/jobs", json={"tags": "pop", "duration_s": 1.0, "params": FAST})
    assert r.status_code == 202, r.text
    assert r.json()["request"]["task"] == "text2music"


def test_tasks_come_from_the_model_family(pipe, tmp_path):
    from types import SimpleNamespace

    class OneTaskPipeline:
        family = SimpleNamespace(name="tiny_family", tasks=("text2music", "retake"))

        def __getattr__(self, name):
            return getattr(pipe, name)

    client = TestClient(create_app(OneTaskPipeline(), data_dir=tmp_path, start_worker=False))
    model = client.get("/v1/models").json()["models"][0]
    assert model["tasks"] == ["retake", "text2music"] and model["family"] == "tiny_family"
    r = client.post("/v1/jobs", json={"task": "extend", "tags": "pop", "right_s": 1.0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "task"], r.text
    assert "tiny_family" in r.json()["detail"][0]["msg"]
    union = client.get("/openapi.json").json()["components"]["schemas"]["JobRequest"]
    assert set(union["discriminator"]["mapping"]) == {"text2music", "retake"}
    assert client.post("/v1/jobs", json=t2m()).status_code == 202


def test_create_app_is_a_short_factory():
    import inspect

    assert len(inspect.getsource(create_app).splitlines()) < 40


# --- issue 12: body limits, malformed bodies, server paths, retention ------------------------------


def test_an_oversized_json_body_is_413_before_it_is_parsed(pipe, tmp_path):
    client = TestClient(create_app(pipe, data_dir=tmp_path, start_worker=False))
    r = client.post("/v1/jobs", json={**t2m(), "lyrics": "la " * 10_000_000})  # 30 MB
    assert r.status_code == 413 and "limit" in r.json()["detail"], r.text[:300]
    # without a Content-Length the body is counted as it streams in
    huge = (b"x" * (1 << 20) for _ in range(3))
    r = client.post("/v1/jobs", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413
    # a multipart 'request' field is capped the same way
    big = json.dumps({**t2m(), "lyrics": "a" * (2 << 20)})
    r = client.post("/v1/jobs", data={"request": big}, files={"source": ("a.wav", b"", "audio/wav")})
    assert r.status_code == 413, r.text
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_lyrics_over_the_limit_are_422_at_submission(pipe, tmp_path):
    from songflow.text.lyric_tokenizer import MAX_LYRICS_CHARS

    client = TestClient(create_app(pipe, data_dir=tmp_path, start_worker=False))
    r = client.post("/v1/jobs", json={**t2m(), "lyrics": "a" * (MAX_LYRICS_CHARS + 1)})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "lyrics"], r.text[:300]
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_job_listing_returns_summaries(pipe, tmp_path):
    client = TestClient(create_app(pipe, data_dir=tmp_path, start_worker=False))
    job = client.post("/v1/jobs", json={**t2m(), "lyrics": "[verse]\n" + "la " * 5000}).json()
    (listed,) = client.get("/v1/jobs").json()["jobs"]
    assert "request" not in listed and listed["id"] == job["id"] and listed["task"] == "text2music"
    assert listed["state"] == "queued" and listed["n_outputs"] == 0 and listed["audio_urls"] == []
    assert len(json.dumps(listed)) < 1000
    assert "la la" in client.get(f"/v1/jobs/{job['id']}").json()["request"]["lyrics"]


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        ({"params": 5}, ["params"]),
        ({"params": {"seeds": 5}}, ["params", "seeds"]),
        ({"params": {"step_indices": 5}}, ["params", "step_indices"]),
        ({"task": ["x"]}, ["task"]),
        ({"task": {}}, ["task"]),
        ({"task": None}, ["task"]),
        ({"params": None}, ["params"]),
        ({"loras": 5}, ["loras"]),
        ({"lyrics": 5}, ["lyrics"]),
        ({"params": {"batch_size": 2, "seeds": [1, 2, 3]}}, ["params", "seeds"]),
    ],
)
def test_malformed_bodies_are_422_naming_the_field(pipe, tmp_path, raw, loc):
    client = TestClient(
        create_app(pipe, data_dir=tmp_path, start_worker=False), raise_server_exceptions=False
    )
    r = client.post("/v1/jobs", json={"tags": "pop", "duration_s": 1.0, **raw})
    assert r.status_code == 422, r.text
    assert ["body", *loc] in [e["loc"] for e in r.json()["detail"]], r.text


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deeply_nested_json_is_422_not_500(pipe, tmp_path, opener):
    app = create_app(pipe, data_dir=tmp_path, start_worker=False)
    client = TestClient(app, raise_server_exceptions=False)
    closer = "]" if opener == "[" else "}"
    for depth in (50, 20_000):
        text = '{"tags": "pop", "params": ' + opener * depth + "1" + closer * depth + "}"
        r = client.post("/v1/jobs", content=text, headers={"content-type": "application/json"})
        assert r.status_code == 422, (depth, r.text[:300])
        assert r.json()["detail"][0]["loc"][0] == "body"
        r = client.post("/v1/jobs", data={"request": text}, files={"source": ("a.wav", b"", "audio/wav")})
        assert r.status_code == 422, (depth, r.text[:300])
    assert client.get("/v1/jobs").json()["jobs"] == []


def _uploads_and_outputs(data) -> list:
    return sorted(p.name for sub in ("uploads", "outputs") for p in (data / sub).iterdir())


def test_messages_name_uploads_by_their_client_file_name(pipe, tmp_path, monkeypatch):
    from songflow.errors import AudioError

    app = create_app(pipe, data_dir=tmp_path)
    req = {"task": "repaint", "tags": "rock", "start_s": 0.2, "end_s": 0.6, "params": FAST}

    def broken(request, progress=None):
        raise AudioError(f"the source audio {request.source_path} cannot be decoded")

    monkeypatch.setattr(app.state.worker, "pipeline", type("P", (), {"generate": staticmethod(broken)})())
    with TestClient(app) as client:
        r = client.post(
            "/v1/jobs",
            data={"request": json.dumps(req)},
            files={"source": ("my take.wav", b"junk", "audio/wav")},
        )
        assert r.status_code == 400 and "'my take.wav'" in r.json()["detail"], r.text
        assert str(tmp_path) not in r.text and "uploads" not in r.text
        silent = wav_bytes(1.0, 16000)[:44] + b"\0" * 64000
        r = client.post(
            "/v1/jobs",
            data={"request": json.dumps(req)},
            files={"source": ("quiet.wav", silent, "audio/wav")},
        )
        assert r.status_code == 422 and "'quiet.wav' is silent" in r.text and str(tmp_path) not in r.text
        r = client.post(
            "/v1/jobs",
            data={"request": json.dumps(req)},
            files={"source": ("song.wav", wav_bytes(1.0, 16000), "audio/wav")},
        )
        assert r.status_code == 202 and r.json()["request"]["source_path"] == "upload:song.wav", r.text
        job = wait_done(client, r.json()["id"], states=("failed",))
        assert job["error"] == "the source audio 'song.wav' cannot be decoded", job
        assert str(tmp_path) not in json.dumps(job)


def test_delete_removes_a_finished_job_with_its_files(pipe, tmp_path):
    with TestClient(create_app(pipe, data_dir=tmp_path)) as client:
        req = {"task": "repaint", "tags": "rock", "start_s": 0.2, "end_s": 0.6, "params": FAST}
        r = client.post(
            "/v1/jobs", data={"request": json.dumps(req)}, files={"source": ("in.wav", wav_bytes(1.0, 16000))}
        )
        job = wait_done(client, r.json()["id"])
        assert len(_uploads_and_outputs(tmp_path)) == 2
        r = client.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 200 and r.json()["state"] == "done"
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert _uploads_and_outputs(tmp_path) == []


def test_retention_sweeps_old_and_oversized_data(pipe, tmp_path):
    import os

    from songflow.interfaces.server.retention import ORPHAN_AGE_S, Retention

    app = create_app(pipe, data_dir=tmp_path, retention=Retention(keep_hours=1, max_data_mb=None))
    with TestClient(app) as client:
        ids = [client.post("/v1/jobs", json=t2m(seed=s)).json()["id"] for s in (1, 2, 3)]
        for job_id in ids:
            wait_done(client, job_id)
        app.state.worker.pause()
        queued = client.post("/v1/jobs", json=t2m(seed=4)).json()["id"]
        orphan = tmp_path / "uploads" / "leftover.wav"
        orphan.write_bytes(b"x" * 10)
        sweeper = app.state.context.sweeper
        assert sweeper() == 0 and orphan.exists()  # nothing is old yet
        # an hour later: every finished job goes, the queued one stays, so does nothing else
        now = time.time() + 3600 + ORPHAN_AGE_S
        os.utime(orphan, (now - ORPHAN_AGE_S - 1, now - ORPHAN_AGE_S - 1))
        assert sweeper(now=now) == 3
        assert [j["id"] for j in client.get("/v1/jobs").json()["jobs"]] == [queued]
        assert _uploads_and_outputs(tmp_path) == []

    # a size limit removes the oldest finished jobs first, until the data fits
    data = tmp_path / "second"
    app = create_app(pipe, data_dir=data, retention=Retention(keep_hours=None, max_data_mb=1e-9))
    with TestClient(app) as client:
        ids = [client.post("/v1/jobs", json=t2m(seed=s)).json()["id"] for s in (1, 2)]
        for job_id in ids:
            wait_done(client, job_id)
        size = sum(p.stat().st_size for p in (data / "outputs" / ids[1]).rglob("*"))
        app.state.context.sweeper.retention = Retention(keep_hours=None, max_data_mb=1.5 * size / 2**20)
        assert app.state.context.sweeper() == 1
        assert [j["id"] for j in client.get("/v1/jobs").json()["jobs"]] == [ids[1]]


def test_a_job_interrupted_max_attempts_times_fails(pipe, tmp_path):
    from songflow.interfaces.server.jobs import JobStore
    from songflow.interfaces.server.retention import Retention

    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.add(t2m(), [], 10)
    store.close()
    for attempt in (1, 2, 3):
        store = JobStore(tmp_path / "jobs.sqlite3")
        (claimed,) = store.claim_batch(1)  # the process "crashes" while this job runs
        assert claimed.attempts == attempt
        store.close()
        app = create_app(pipe, data_dir=tmp_path, start_worker=False, retention=Retention(max_attempts=3))
        with TestClient(app) as client:
            state = client.get(f"/v1/jobs/{job.id}").json()
        if attempt < 3:
            assert state["state"] == "queued", state
    assert state["state"] == "failed" and "3 time(s)" in state["error"], state


def test_serve_flags_make_the_retention():
    import argparse

    from songflow.interfaces.cli.serve import add_serve_parser, retention_of

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--keep-hours", "2", "--max-data-mb", "0", "--max-attempts", "5"])
    retention = retention_of(args)
    assert (retention.keep_hours, retention.max_data_mb, retention.max_attempts) == (2.0, None, 5)
    defaults = retention_of(parser.parse_args(["serve"]))
    assert defaults.keep_hours and defaults.max_data_mb and defaults.max_attempts == 3


def test_upload_limits_are_checked_at_submission(pipe, tmp_path):
    def pcm(seconds: float, sr: int) -> bytes:
        t = np.arange(int(seconds * sr)) / sr
        buf = io.BytesIO()
        sf.write(
            buf, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format="WAV", subtype="PCM_16"
        )
        return buf.getvalue()

    client = TestClient(create_app(pipe, data_dir=tmp_path, start_worker=False))
    repaint = {"task": "repaint", "tags": "rock", "start_s": 0.2, "end_s": 0.6, "params": FAST}
    extend = {"task": "extend", "tags": "rock", "right_s": 1.0, "params": FAST}
    long_s = pipe.geometry.max_frames * pipe.geometry.samples_per_frame / pipe.geometry.sample_rate_hz + 2
    for req, audio, status in (
        (repaint, pcm(1.0, 4000), 422),  # sample rate below the pipeline's minimum
        (repaint, pcm(long_s, 8000), 422),  # longer than repaint handles
        (extend, pcm(long_s, 8000), 202),  # extend reads a long source
    ):
        files = {"source": ("take.wav", audio, "audio/wav")}
        r = client.post("/v1/jobs", data={"request": json.dumps(req)}, files=files)
        assert r.status_code == status, r.text
        if status == 422:
            assert r.json()["detail"][0]["loc"] == ["body", "source"] and "'take.wav'" in r.text, r.text
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1
    assert len(list((tmp_path / "uploads").iterdir())) == 1
    # a repaint window that starts after the uploaded source ends is refused at submission, not at run time
    late = {**repaint, "start_s": 5.0, "end_s": 6.0}
    r = client.post(
        "/v1/jobs",
        data={"request": json.dumps(late)},
        files={"source": ("take.wav", pcm(1.0, 8000), "audio/wav")},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "start_s"], r.text
    assert "after the source ends" in r.text
    assert len(list((tmp_path / "uploads").iterdir())) == 1  # the refused upload is not kept
