"""REST API: job lifecycle, validation, uploads, auth, queue bound, cancel and restart persistence."""

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

from songflow.interfaces.api import create_app  # noqa: E402

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


def test_validation_errors(pipe, tmp_path):
    with TestClient(create_app(pipe, data_dir=tmp_path)) as client:
        r = client.post("/v1/jobs", json=t2m(bogus=1))
        assert r.status_code == 422 and "bogus" in r.json()["detail"]
        r = client.post("/v1/jobs", json={**t2m(), "params": {"steps": 0}})
        assert r.status_code == 422 and "steps" in r.json()["detail"]
        r = client.post("/v1/jobs", json={"task": "repaint", "tags": "x", "source_path": "/etc/passwd"})
        assert r.status_code == 422 and "source_path" in r.json()["detail"]
        r = client.post("/v1/jobs", json={"task": "repaint", "tags": "x"})
        assert r.status_code == 422 and "source_path" in r.json()["detail"]
        r = client.post("/v1/jobs", content=b"not json", headers={"content-type": "application/json"})
        assert r.status_code == 422


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
            "/v1/jobs", data={"request": json.dumps(req)}, files={"source": ("x.wav", b"hello", "audio/wav")}
        )
        assert r.status_code == 400, r.text
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


def test_api_key(pipe, tmp_path):
    with TestClient(create_app(pipe, data_dir=tmp_path, api_key="s3cret")) as client:
        assert client.get("/v1/jobs").status_code == 401
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/v1/jobs", headers={"X-API-Key": "nope"}).status_code == 401
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200


def test_queue_full_and_cancel(pipe, tmp_path):
    app = create_app(pipe, data_dir=tmp_path, max_queue=2)
    app.state.worker.pause()
    with TestClient(app) as client:
        ids = [client.post("/v1/jobs", json=t2m(seed=i)).json()["id"] for i in range(2)]
        r = client.post("/v1/jobs", json=t2m(seed=3))
        assert r.status_code == 429 and "Retry-After" in r.headers
        assert client.get(f"/v1/jobs/{ids[0]}/audio").status_code == 409
        r = client.delete(f"/v1/jobs/{ids[0]}")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert client.delete(f"/v1/jobs/{ids[0]}").status_code == 409
        assert client.post("/v1/jobs", json=t2m(seed=4)).status_code == 202
        listed = client.get("/v1/jobs").json()["jobs"]
        assert len(listed) == 3 and listed[-1]["id"] == ids[0]  # newest first
        app.state.worker.resume()
        wait_done(client, ids[1])
        assert client.get(f"/v1/jobs/{ids[0]}").json()["state"] == "cancelled"


def test_cancel_running_job(pipe, tmp_path):
    app = create_app(pipe, data_dir=tmp_path)
    with TestClient(app) as client:
        r = client.post("/v1/jobs", json={**t2m(), "params": {**FAST, "steps": 400}})
        job_id = r.json()["id"]
        deadline = time.time() + 30
        while client.get(f"/v1/jobs/{job_id}").json()["progress"] == 0 and time.time() < deadline:
            time.sleep(0.02)
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
        deadline = time.time() + 30
        while job_id in app.state.worker.current and time.time() < deadline:
            time.sleep(0.02)
        assert app.state.worker.current == ()
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "cancelled" and job["progress"] < 1.0
        # the worker is still alive and runs the next job
        wait_done(client, client.post("/v1/jobs", json=t2m()).json()["id"])


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


def test_restart_requeues_and_keeps_outputs(pipe, tmp_path):
    app_a = create_app(pipe, data_dir=tmp_path)
    with TestClient(app_a) as client:
        done_id = client.post("/v1/jobs", json=t2m(seed=5)).json()["id"]
        wait_done(client, done_id)
        first = client.get(f"/v1/jobs/{done_id}/audio").content
        app_a.state.worker.pause()
        pending = [client.post("/v1/jobs", json=t2m(seed=s)).json()["id"] for s in (6, 7)]
    app_a.state.store.close()

    app_b = create_app(pipe, data_dir=tmp_path)
    with TestClient(app_b) as client:
        for job_id in pending:
            wait_done(client, job_id)
        assert client.get(f"/v1/jobs/{done_id}/audio").content == first


def test_openapi_lists_endpoints(pipe, tmp_path):
    with TestClient(create_app(pipe, data_dir=tmp_path)) as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/audio", "/v1/models", "/health"} <= set(paths)
    assert {"get", "post"} <= set(paths["/v1/jobs"]) and "delete" in paths["/v1/jobs/{job_id}"]
    assert "multipart/form-data" in paths["/v1/jobs"]["post"]["requestBody"]["content"]
