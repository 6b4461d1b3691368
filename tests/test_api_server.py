"""The REST server end to end: uvicorn on a free loopback port, httpx clients.

Every endpoint and every task (uploads included), a failing job, 422 naming the field, 400 for an
unreadable upload, auth, cancel (queued and running), many concurrent clients against a bounded queue
(429 + Retry-After, nothing lost), restart after a graceful stop and after a crash (``songflow serve``
killed with SIGKILL) with queued and finished jobs, and an OpenAPI schema that lists every route.
In-process checks of the same app (sidecar files, upload limits, a crashing pipeline) are in
``test_api.py``; batching is in ``test_batching.py``.
"""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
sf = pytest.importorskip("soundfile")

from conftest import FINAL_JOB_STATES, start_serve, wait_final  # noqa: E402
from songflow.errors import SongflowError  # noqa: E402
from songflow.interfaces.cli.serve import BackgroundServer  # noqa: E402
from songflow.interfaces.server.app import create_app  # noqa: E402
from songflow.interfaces.server.jobs import STATES, JobStore  # noqa: E402

FAST = {"steps": 2, "guidance": "cfg", "guidance_scale": 2.0}
FINAL = FINAL_JOB_STATES


def t2m(seed: int = 1, duration_s: float = 1.0, **params) -> dict:
    return {
        "task": "text2music",
        "tags": "pop, piano",
        "duration_s": duration_s,
        "params": {**FAST, "seeds": [seed], **params},
    }


def wav_bytes(seconds: float = 1.0, sr: int = 16000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    data = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([data, 0.5 * data], axis=1), sr, format="WAV")
    return buf.getvalue()


def submit_multipart(client: httpx.Client, request: dict, **files: bytes) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        data={"request": json.dumps(request)},
        files={name: (f"{name}.wav", data, "audio/wav") for name, data in files.items()},
    )


def wait_running(client: httpx.Client, job_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "running" and job["progress"] > 0:
            return
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not start")


def read_audio(content: bytes) -> tuple[np.ndarray, int]:
    data, sr = sf.read(io.BytesIO(content), dtype="float32")
    return data, sr


@pytest.fixture
def live(tmp_path):
    """``start(pipeline, **create_app kwargs) -> (server, httpx client)``; stops everything afterwards."""
    started: list[tuple[BackgroundServer, httpx.Client]] = []

    def start(pipeline, *, headers: dict | None = None, data_dir: Path | None = None, **kwargs):
        app = create_app(pipeline, data_dir=data_dir or tmp_path / "data", **kwargs)
        server = BackgroundServer(app).start()
        client = httpx.Client(base_url=server.url, timeout=60.0, headers=headers or {})
        started.append((server, client))
        return server, client

    yield start
    for server, client in started:
        client.close()
        server.stop()


def test_every_task_and_endpoint(pipe, live, monkeypatch):
    # every input a job could fail on is refused at submission now, so a run-time failure is injected
    real_generate = pipe.generate

    def generate(request, **kwargs):
        if request.tags == "fail at run time":
            raise SongflowError("the model produced non-finite audio (NaN/inf); try other settings")
        return real_generate(request, **kwargs)

    monkeypatch.setattr(pipe, "generate", generate)
    server, client = live(pipe, checkpoint_name="tiny")
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["worker_alive"] is True
    models = client.get("/v1/models").json()["models"]
    assert len(models) == 1 and models[0]["name"] == "tiny"
    assert set(models[0]["tasks"]) == {"text2music", "retake", "repaint", "extend", "audio2audio", "edit"}
    assert {"wav", "flac", "mp3", "ogg"} <= set(models[0]["audio_formats"])

    source = wav_bytes(1.0)
    base = {"tags": "rock, guitar", "lyrics": "[verse]\nhello", "params": FAST}
    submitted = {
        "text2music": client.post("/v1/jobs", json=t2m(seed=3)),
        "retake": client.post(
            "/v1/jobs", json={**t2m(seed=3), "task": "retake", "variance_frac": 0.5, "retake_seeds": [4]}
        ),
        "repaint": submit_multipart(
            client, {**base, "task": "repaint", "start_s": 0.2, "end_s": 0.7}, source=source
        ),
        "extend": submit_multipart(client, {**base, "task": "extend", "right_s": 0.5}, source=source),
        "audio2audio": submit_multipart(
            client, {**base, "task": "audio2audio", "strength_frac": 0.5}, reference=source
        ),
        "edit": submit_multipart(client, {**base, "task": "edit", "target_tags": "jazz, sax"}, source=source),
        "failing": submit_multipart(
            client,
            {**base, "tags": "fail at run time", "task": "repaint", "start_s": 0.2, "end_s": 0.7},
            source=source,
        ),
    }
    for task, r in submitted.items():
        assert r.status_code == 202, (task, r.text)
        assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        assert r.json()["state"] == "queued"
    ids = {task: r.json()["id"] for task, r in submitted.items()}
    jobs = {task: wait_final(client, job_id) for task, job_id in ids.items()}

    failed = jobs.pop("failing")
    assert failed["state"] == "failed" and "non-finite audio" in failed["error"]
    assert client.get(f"/v1/jobs/{failed['id']}/audio").status_code == 409
    lengths = {}
    for task, job in jobs.items():
        assert job["state"] == "done", job
        assert job["progress"] == 1.0 and job["error"] is None
        assert {"preprocess", "diffusion", "decode"} <= set(job["timings_s"])
        assert job["request"]["task"] == task and job["request"]["params"]["steps"] == 2
        assert len(job["request"]["params"]["seeds"]) == 1  # resolved, so the job can be re-run exactly
        for key, value in job["request"].items():
            if key.endswith("_path"):
                assert value.startswith("upload:") and "/" not in value  # no server path leaks out
        assert job["audio_urls"] == [f"/v1/jobs/{job['id']}/audio?index=0"]
        r = client.get(job["audio_urls"][0])
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        data, sr = read_audio(r.content)
        assert sr == pipe.output_sample_rate_hz and data.shape[1] == 2 and np.isfinite(data).all()
        lengths[task] = len(data) / sr
    assert lengths["extend"] > lengths["repaint"] + 0.4  # 0.5 s added to the 1 s source
    assert lengths["text2music"] == pytest.approx(1.0, abs=0.1)

    job_id = ids["text2music"]
    for fmt, media in (("flac", "audio/flac"), ("mp3", "audio/mpeg"), ("ogg", "audio/ogg")):
        r = client.get(f"/v1/jobs/{job_id}/audio", params={"format": fmt})
        assert r.status_code == 200 and r.headers["content-type"] == media, (fmt, r.text)
        data, _ = read_audio(r.content)
        assert data.shape[1] == 2 and abs(len(data) / pipe.output_sample_rate_hz - 1.0) < 0.2

    listed = client.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == list(ids.values())[::-1]  # newest first
    assert {j["id"] for j in client.get("/v1/jobs", params={"state": "failed"}).json()["jobs"]} == {
        ids["failing"]
    }
    assert len(client.get("/v1/jobs", params={"limit": 2}).json()["jobs"]) == 2
    assert client.get("/health").json()["queued"] == 0


def test_openapi_schema_matches_the_routes(pipe, live):
    from fastapi.routing import APIRoute

    server, client = live(pipe)
    schema = client.get("/openapi.json").json()

    def api_routes(routes) -> list[APIRoute]:
        # newer FastAPI keeps an included router as one entry holding the router (no prefix is added
        # on inclusion here: each router carries its own)
        out = []
        for route in routes:
            if isinstance(route, APIRoute):
                out.append(route)
            elif hasattr(route, "original_router"):
                out += api_routes(route.original_router.routes)
        return out

    routes = {
        (route.path, method.lower())
        for route in api_routes(server.server.config.app.routes)
        for method in route.methods
    }
    documented = {(path, method) for path, ops in schema["paths"].items() for method in ops}
    assert routes == documented
    assert {
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}", "delete"),
        ("/v1/jobs/{job_id}/audio", "get"),
        ("/v1/models", "get"),
        ("/v1/loras", "get"),
        ("/v1/workers", "get"),
        ("/health", "get"),
    } == routes
    post = schema["paths"]["/v1/jobs"]["post"]
    assert {"application/json", "multipart/form-data"} <= set(post["requestBody"]["content"])
    assert {"202", "401", "413", "422", "429"} <= set(post["responses"])
    assert "Retry-After" in post["responses"]["429"]["headers"]
    audio_op = schema["paths"]["/v1/jobs/{job_id}/audio"]["get"]
    assert {p["name"] for p in audio_op["parameters"]} == {"job_id", "format", "index"}
    assert {"audio/wav", "audio/flac", "audio/mpeg", "audio/ogg"} <= set(
        audio_op["responses"]["200"]["content"]
    )

    # the documented response models are exactly what the server sends
    def model(path: str, method: str, code: str) -> dict:
        content = schema["paths"][path][method]["responses"][code]["content"]["application/json"]
        return schema["components"]["schemas"][content["schema"]["$ref"].rsplit("/", 1)[1]]

    job_model = schema["components"]["schemas"]["JobView"]
    assert set(job_model["properties"]["state"]["enum"]) == set(STATES)
    r = client.post("/v1/jobs", json=t2m(seed=1))
    assert (
        set(r.json()) == set(model("/v1/jobs", "post", "202")["properties"]) == set(job_model["properties"])
    )
    job = wait_final(client, r.json()["id"])
    assert set(job) == set(model("/v1/jobs/{job_id}", "get", "200")["properties"])
    assert set(job_model["required"]) <= set(job)
    listed = client.get("/v1/jobs").json()
    assert set(listed) == set(model("/v1/jobs", "get", "200")["properties"]) == {"jobs"}
    models = client.get("/v1/models").json()
    assert set(models["models"][0]) == set(schema["components"]["schemas"]["ModelInfo"]["properties"])
    assert set(client.get("/health").json()) == set(model("/health", "get", "200")["properties"])
    error = client.get("/v1/jobs/" + "0" * 32)
    assert error.status_code == 404 and set(error.json()) == set(
        model("/v1/jobs/{job_id}", "get", "404")["properties"]
    )


def test_auth_validation_and_bad_uploads(pipe, live, tmp_path):
    server, client = live(pipe, api_key="s3cret", data_dir=tmp_path / "d")
    anon = httpx.Client(base_url=server.url, timeout=30.0)
    try:
        for method, path in (("get", "/v1/jobs"), ("post", "/v1/jobs"), ("get", "/v1/models")):
            r = anon.request(method, path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (method, path)
        assert anon.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert anon.get("/v1/jobs", headers={"X-API-Key": "wrong"}).status_code == 401
        assert anon.get("/v1/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        # an empty X-API-Key does not hide a valid bearer token; a wrong one still fails
        both = {"Authorization": "Bearer s3cret", "X-API-Key": ""}
        assert anon.get("/v1/jobs", headers=both).status_code == 200
        assert anon.get("/v1/jobs", headers={**both, "Authorization": "Bearer no"}).status_code == 401
        assert (
            anon.get("/v1/jobs", headers={"X-API-Key": "s3cret", "Authorization": "Basic x"}).status_code
            == 200
        )
        assert anon.get("/health").status_code == 200  # liveness needs no key
    finally:
        anon.close()

    client.headers["X-API-Key"] = "s3cret"
    for body, field in (
        ({**t2m(), "bogus": 1}, "bogus"),
        ({**t2m(), "params": {"steps": 0}}, "steps"),
        ({**t2m(), "params": {"sampler": "nope"}}, "sampler"),
        ({**t2m(), "duration_s": -1}, "duration_s"),
        ({**t2m(), "duration_s": 10_000}, "duration_s"),
        ({**t2m(), "task": "dance"}, "task"),
        ({"task": "text2music", "tags": ""}, "tags"),
        ({"task": "repaint", "tags": "x"}, "source_path"),
        ({"task": "repaint", "tags": "x", "source_path": "/etc/passwd"}, "source_path"),
        ({**t2m(), "loras": [{"path": "/srv/lora"}]}, "loras"),
    ):
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 422 and field in json.dumps(r.json()["detail"]), (body, r.text)
    r = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in json.dumps(r.json()["detail"])
    r = client.post("/v1/jobs", data={"nothing": "here"}, files={"source": ("a.wav", b"x", "audio/wav")})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "request"]
    assert client.get("/v1/jobs", params={"state": "sleeping"}).status_code == 422
    r = client.get("/v1/jobs", params={"limit": 0})
    assert r.status_code == 422 and "limit" in json.dumps(r.json()["detail"])
    assert client.get("/v1/jobs/" + "0" * 32).status_code == 404
    assert client.get("/v1/jobs/../../etc/passwd").status_code == 404
    assert client.delete("/v1/jobs/not-an-id").status_code == 404

    repaint = {"task": "repaint", "tags": "x", "start_s": 0.1, "end_s": 0.5, "params": FAST}
    for junk in (b"hello, not audio", b"RIFF\x00\x00\x00\x00WAVEjunk", b""):
        r = submit_multipart(client, repaint, source=junk)
        assert r.status_code == 400 and "not readable audio" in r.json()["detail"], r.text
    assert not any((tmp_path / "d" / "uploads").iterdir())  # rejected uploads are removed
    assert client.get("/v1/jobs").json()["jobs"] == []  # and no job was created


def test_an_oversized_chunked_upload_is_refused_while_it_streams(pipe, live, tmp_path):
    """No Content-Length: the server counts the body as it arrives and answers 413 once it passes the
    limit, long before the client has sent it all (nothing is kept in uploads/)."""
    server, client = live(pipe, data_dir=tmp_path / "d", max_upload_mb=0.25)
    boundary = "songflowboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="request"\r\n\r\n'
        + json.dumps({"task": "repaint", "tags": "x", "start_s": 0.1, "end_s": 0.5})
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="source"; filename="big.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    sent = [0]
    total = 256 * (1 << 20)

    def body():
        yield head
        chunk = b"\0" * (1 << 18)
        while sent[0] < total:
            sent[0] += len(chunk)
            yield chunk

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    try:
        r = client.post("/v1/jobs", content=body(), headers=headers)
        assert r.status_code == 413, r.text
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server closed the connection after answering 413
    assert sent[0] < total // 4
    assert not any((tmp_path / "d" / "uploads").iterdir())
    assert client.get("/health").status_code == 200


def test_docs_are_offline_and_openapi_declares_the_key(pipe, live):
    server, client = live(pipe, api_key="k")
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
    assert "http://" not in page.text and "https://" not in page.text and "cdn" not in page.text.lower()
    assert client.get("/redoc").status_code == 404
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, ops in schema["paths"].items():
        for op in ops.values():
            names = {name for entry in op.get("security", []) for name in entry}
            assert names == (set() if path == "/health" else {"bearer", "apiKey"}), (path, op.get("security"))


def test_cancel_queued_and_running_jobs(pipe, live):
    server, client = live(pipe, max_batch=1)
    running = client.post("/v1/jobs", json=t2m(seed=1, steps=400)).json()["id"]
    queued = client.post("/v1/jobs", json=t2m(seed=2)).json()["id"]
    after = client.post("/v1/jobs", json=t2m(seed=3)).json()["id"]
    wait_running(client, running)

    r = client.delete(f"/v1/jobs/{queued}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = client.delete(f"/v1/jobs/{running}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    cancelled = wait_final(client, running)
    assert cancelled["state"] == "cancelled" and cancelled["progress"] < 1.0
    assert cancelled["error"] == "cancelled by the client"
    # the worker stops the cancelled run at its next step and goes on with the queue
    assert wait_final(client, after)["state"] == "done"
    assert client.get(f"/v1/jobs/{queued}").json()["state"] == "cancelled"
    for job_id in (running, queued):
        assert client.get(f"/v1/jobs/{job_id}/audio").status_code == 409
    # a second DELETE (or the first on a finished job) removes the job with its files
    output = server.server.config.app.state.data_dir / "outputs" / after
    assert output.is_dir()
    for job_id in (queued, after):
        r = client.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["id"] == job_id, r.text
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert not output.exists()


def test_many_concurrent_clients_with_a_bounded_queue(pipe, live):
    max_queue = 4
    server, client = live(pipe, max_queue=max_queue, max_batch=4)
    worker = server.server.config.app.state.worker

    # 1. a burst while the worker is held: exactly max_queue accepted, the rest told when to retry
    worker.pause()
    n_burst = 10
    barrier = threading.Barrier(n_burst)
    burst: list[httpx.Response] = [None] * n_burst  # type: ignore[list-item]

    def burst_client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60.0) as c:
            barrier.wait()
            burst[i] = c.post("/v1/jobs", json=t2m(seed=100 + i, duration_s=0.5))

    threads = [threading.Thread(target=burst_client, args=(i,)) for i in range(n_burst)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [r.json()["id"] for r in burst if r.status_code == 202]
    refused = [r for r in burst if r.status_code != 202]
    assert len(accepted) == max_queue
    assert all(r.status_code == 429 for r in refused)
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    worker.resume()

    # 2. clients that honour Retry-After: every job is eventually accepted and finishes
    n_clients, jobs_each = 8, 2
    results: dict[int, list[str]] = {}
    n_429 = [0]
    lock = threading.Lock()

    def polite_client(i: int) -> None:
        mine = []
        with httpx.Client(base_url=server.url, timeout=60.0) as c:
            for k in range(jobs_each):
                while True:
                    r = c.post("/v1/jobs", json=t2m(seed=1000 * i + k, duration_s=0.5))
                    if r.status_code != 429:
                        break
                    with lock:
                        n_429[0] += 1
                    time.sleep(min(float(r.headers["retry-after"]), 2.0))
                assert r.status_code == 202, r.text
                mine.append(r.json()["id"])
            for job_id in mine:
                assert wait_final(c, job_id)["state"] == "done"
        results[i] = mine

    threads = [threading.Thread(target=polite_client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(results) == list(range(n_clients)), "a client failed (see the thread's error above)"
    all_ids = accepted + [j for ids in results.values() for j in ids]
    assert len(set(all_ids)) == len(all_ids) == max_queue + n_clients * jobs_each
    for job_id in accepted:
        assert wait_final(client, job_id)["state"] == "done"
    listed = client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]
    assert {j["id"] for j in listed} == set(all_ids)  # nothing lost, nothing extra
    assert all(j["state"] == "done" and j["n_outputs"] == 1 for j in listed)
    assert max(j["batch_jobs"] for j in listed) > 1  # queued jobs were batched


def test_graceful_restart_keeps_queued_and_finished_jobs(pipe, live, tmp_path):
    data = tmp_path / "store"
    server, client = live(pipe, data_dir=data, max_batch=1)
    finished = client.post("/v1/jobs", json=t2m(seed=5)).json()["id"]
    assert wait_final(client, finished)["state"] == "done"
    audio = client.get(f"/v1/jobs/{finished}/audio").content
    interrupted = client.post("/v1/jobs", json=t2m(seed=6, steps=400)).json()["id"]
    queued = [client.post("/v1/jobs", json=t2m(seed=s)).json()["id"] for s in (7, 8)]
    wait_running(client, interrupted)
    server.stop()  # mid-queue and mid-job: the running job goes back to the queue
    store = JobStore(data / "jobs.sqlite3")
    assert [store.get(i).state for i in (finished, interrupted, *queued)] == ["done"] + ["queued"] * 3
    store.close()

    server, client = live(pipe, data_dir=data, max_batch=1)
    assert client.get(f"/v1/jobs/{finished}/audio").content == audio
    for job_id in [interrupted, *queued]:
        job = wait_final(client, job_id)
        assert job["state"] == "done" and job["progress"] == 1.0
    assert client.get(f"/v1/jobs/{finished}").json()["state"] == "done"


def test_crash_restart_of_songflow_serve(tiny_ckpt, tmp_path):
    """Kill ``songflow serve`` (SIGKILL) with a running and queued jobs; a new process finishes them."""
    data, log = tmp_path / "store", tmp_path / "serve.log"
    proc, url = start_serve(tiny_ckpt, data, log)
    try:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            finished = client.post("/v1/jobs", json=t2m(seed=5)).json()["id"]
            assert wait_final(client, finished)["state"] == "done"
            audio = client.get(f"/v1/jobs/{finished}/audio", params={"format": "flac"}).content
            running = client.post("/v1/jobs", json=t2m(seed=6, steps=300)).json()["id"]
            queued = [client.post("/v1/jobs", json=t2m(seed=s)).json()["id"] for s in (7, 8)]
            wait_running(client, running)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    store = JobStore(data / "jobs.sqlite3")  # as the crash left it
    states = [store.get(i).state for i in (finished, running, *queued)]
    assert states == ["done", "running", "queued", "queued"]
    store.close()

    proc, url = start_serve(tiny_ckpt, data, log)
    try:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            assert client.get(f"/v1/jobs/{finished}/audio", params={"format": "flac"}).content == audio
            for job_id in [running, *queued]:
                assert wait_final(client, job_id)["state"] == "done"
            assert len(client.get("/v1/jobs").json()["jobs"]) == 4
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
