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
