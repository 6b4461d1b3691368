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
