"""Batching compatible requests: ``Pipeline.generate_many`` equals per-request ``generate``, ``batch_key``
decides what may share a run, the job store claims batch-mates oldest first, and the server's worker
runs them together (same audio as alone, per-job cancel, fallback to singles when a batch fails)."""

from __future__ import annotations

import io
import time
from dataclasses import replace

import pytest
import torch

from conftest import wait_final
from songflow.errors import ConfigError
from songflow.interfaces.server.jobs import JobStore
from songflow.pipeline import batch_key
from songflow.requests import (
    AudioToAudio,
    GenerationParams,
    LoraRef,
    Repaint,
    Retake,
    Text2Music,
    request_to_dict,
)

LYRICS = "[verse]\nhello there my friend\n[chorus]\nla la la"


def _params(**kw) -> GenerationParams:
    return GenerationParams(**{"steps": 4, "guidance_interval": 1.0, **kw})


def _mixed_requests(**params):
    """Three compatible requests with different tags, lyrics, seeds, batch sizes and tasks."""
    return [
        Text2Music(tags="pop, piano", lyrics=LYRICS, duration_s=1.0, params=_params(seeds=(1,), **params)),
        Text2Music(
            tags="funk, rock, 120 bpm, energetic electric guitar, brass section",
            lyrics="",
            duration_s=1.0,
            params=_params(seeds=(2, 3), batch_size=2, **params),
        ),
        Retake(
            tags="jazz",
            lyrics="[chorus]\nla",
            duration_s=1.0,
            variance_frac=0.3,
            retake_seeds=(5,),
            params=_params(seeds=(4,), **params),
        ),
    ]


@pytest.mark.parametrize(
    "params",
    [
        {},  # APG with ERG (tag, lyric, diffusion), Euler
        {"sampler": "pingpong", "guidance": "cfg", "guidance_scale_text": 5.0, "guidance_scale_lyric": 1.5},
        {"sampler": "heun", "guidance": "cfg_star", "use_erg_lyric": False},
    ],
    ids=["apg-euler", "double-condition-pingpong", "cfg-star-heun"],
)
def test_generate_many_equals_singles(pipe, params):
    requests = _mixed_requests(**params)
    batched = pipe.generate_many(requests)
    assert len(batched) == len(requests)
    for request, result in zip(requests, batched, strict=True):
        single = pipe.generate(request)
        assert result.request == single.request  # seeds resolved the same way
        assert result.latents.shape == single.latents.shape
        torch.testing.assert_close(result.latents, single.latents, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result.audio, single.audio, rtol=1e-5, atol=1e-5)
        assert set(result.timings_s) == {"preprocess", "diffusion", "decode"}


def test_generate_many_resolves_random_seeds_and_reports_progress(pipe):
    requests = [replace(r, params=replace(r.params, seeds=None)) for r in _mixed_requests()[:2]]
    steps = []
    results = pipe.generate_many(requests, progress=lambda i, n: steps.append((i, n)))
    assert steps == [(i, 4) for i in range(1, 5)]
    assert [len(r.seeds) for r in results] == [1, 2]
    again = pipe.generate(results[1].request)  # the resolved request regenerates its result
    torch.testing.assert_close(again.latents, results[1].latents, rtol=1e-5, atol=1e-5)


def test_generate_many_refuses_incompatible_requests(pipe):
    a, b, _ = _mixed_requests()
    with pytest.raises(ConfigError, match="compatible"):
        pipe.generate_many([a, replace(b, duration_s=2.0)])
    with pytest.raises(ConfigError, match="at most 64"):
        pipe.generate_many([a, replace(b, params=replace(b.params, batch_size=64, seeds=(1,)))])
    assert pipe.generate_many([]) == []


def test_batch_key():
    t2m = Text2Music(tags="a", duration_s=5.0, params=GenerationParams(seeds=(1,)))
    same = [
        replace(t2m, tags="other tags", lyrics="[verse]\nla"),
        replace(t2m, params=replace(t2m.params, seeds=(9, 8), batch_size=2)),
        Retake(tags="b", duration_s=5.0, variance_frac=0.5, retake_seeds=(3,)),
    ]
    different = [
        replace(t2m, duration_s=6.0),
        replace(t2m, params=replace(t2m.params, steps=10)),
        replace(t2m, params=replace(t2m.params, sampler="heun")),
        replace(t2m, loras=(LoraRef("/some/lora"),)),
    ]
    key = batch_key(t2m)
    assert key is not None and hash(key) is not None
    assert all(batch_key(r) == key for r in same)
    assert all(batch_key(r) != key for r in different)
    # tasks with their own source audio, and settings that couple a batch on purpose, run alone
    alone = [
        Repaint(tags="a", source_path="x.wav"),
        AudioToAudio(tags="a", reference_path="x.wav"),
        replace(t2m, params=replace(t2m.params, omega_mean_over="batch")),
        replace(t2m, params=replace(t2m.params, legacy_batch_noise=True)),
    ]
    assert all(batch_key(r) is None for r in alone)


def _stored(tags: str, duration_s: float = 1.0, batch_size: int = 1, task: str = "text2music") -> dict:
    cls = {"text2music": Text2Music, "retake": Retake}[task]
    params = GenerationParams(steps=2, batch_size=batch_size)
    return request_to_dict(cls(tags=tags, duration_s=duration_s, params=params))


def test_store_claims_compatible_jobs_oldest_first(tmp_path):
    from songflow.interfaces.server.jobs import _stored_batch_key

    store = JobStore(tmp_path / "jobs.sqlite3")
    ids = {}
    for name, req in [
        ("a", _stored("a")),
        ("long", _stored("long", duration_s=2.0)),
        ("b", _stored("b", task="retake")),
        ("big", _stored("big", batch_size=3)),
        ("c", _stored("c", batch_size=2)),
        ("d", _stored("d")),
    ]:
        ids[name] = store.add(req, [], max_queued=100).id
    names = {v: k for k, v in ids.items()}

    batch = store.claim_batch(3, max_rows=4, key_of=_stored_batch_key)
    # "long" has another duration; "big" would make 5 rows > 4; "d" is past max_jobs
    assert [names[j.id] for j in batch] == ["a", "b", "c"]
    assert all(j.state == "running" and j.batch_jobs == 3 for j in batch)
    assert [names[j.id] for j in store.claim_batch(3, max_rows=4, key_of=_stored_batch_key)] == ["long"]
    assert [names[j.id] for j in store.claim_batch(3, max_rows=4, key_of=_stored_batch_key)] == ["big", "d"]
    assert store.claim_batch(3, key_of=_stored_batch_key) == []
    # requeue after a crash clears the batch
    assert store.requeue_interrupted() == 6
    assert store.get(ids["a"]).batch_jobs is None
    assert [names[j.id] for j in store.claim_batch(1, key_of=_stored_batch_key)] == ["a"]
    store.close()


# -- the server's worker ---------------------------------------------------------------------------

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("multipart")
sf = pytest.importorskip("soundfile")

from fastapi.testclient import TestClient  # noqa: E402

from songflow.interfaces.server.app import create_app  # noqa: E402

FAST = {"steps": 2, "guidance": "cfg", "guidance_scale": 2.0}


def _job(tags: str, seed: int, **params) -> dict:
    return {
        "task": "text2music",
        "tags": tags,
        "duration_s": 1.0,
        "params": {**FAST, "seeds": [seed], **params},
    }


def _audio(client, job_id: str):
    r = client.get(f"/v1/jobs/{job_id}/audio")
    assert r.status_code == 200, r.text
    return torch.from_numpy(sf.read(io.BytesIO(r.content), dtype="float32")[0])


def test_worker_batches_compatible_jobs_with_single_job_audio(pipe, tmp_path):
    app = create_app(pipe, data_dir=tmp_path / "batched", max_batch=4)
    app.state.worker.pause()
    jobs = [
        _job("pop", 1),
        _job("rock, guitar, 120 bpm", 2),
        {**_job("x", 3), "duration_s": 2.0},
        _job("jazz", 4),
    ]
    jobs.append({**_job("folk", 5), "task": "retake", "retake_seeds": [6], "variance_frac": 0.4})
    with TestClient(app) as client:
        ids = [client.post("/v1/jobs", json=j).json()["id"] for j in jobs]
        app.state.worker.resume()
        done = [wait_final(client, i) for i in ids]
        assert [j["state"] for j in done] == ["done"] * 5
        assert [j["batch_jobs"] for j in done] == [4, 4, 1, 4, 4]
        batched = [_audio(client, i) for i in ids]

    app = create_app(pipe, data_dir=tmp_path / "alone", max_batch=1)
    with TestClient(app) as client:
        for job, audio in zip(jobs, batched, strict=True):
            single = wait_final(client, client.post("/v1/jobs", json=job).json()["id"])
            assert single["batch_jobs"] == 1
            torch.testing.assert_close(_audio(client, single["id"]), audio, rtol=1e-5, atol=1e-5)


def test_cancel_one_job_of_a_running_batch(pipe, tmp_path):
    app = create_app(pipe, data_dir=tmp_path, max_batch=4)
    app.state.worker.pause()
    with TestClient(app) as client:
        ids = [
            client.post("/v1/jobs", json=_job(t, s, steps=150)).json()["id"] for t, s in (("a", 1), ("b", 2))
        ]
        app.state.worker.resume()
        deadline = time.time() + 60
        while client.get(f"/v1/jobs/{ids[0]}").json()["progress"] == 0 and time.time() < deadline:
            time.sleep(0.02)
        r = client.delete(f"/v1/jobs/{ids[0]}")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        kept = wait_final(client, ids[1])
        assert kept["state"] == "done" and kept["batch_jobs"] == 2 and kept["progress"] == 1.0
        cancelled = client.get(f"/v1/jobs/{ids[0]}").json()
        assert cancelled["state"] == "cancelled" and cancelled["n_outputs"] == 0
        assert client.get(f"/v1/jobs/{ids[0]}/audio").status_code == 409


def test_failed_batch_falls_back_to_single_jobs(pipe, tmp_path, monkeypatch):
    """A batch that fails is re-run one job at a time, so the error lands on the job that caused it."""
    from songflow.errors import SongflowError

    app = create_app(pipe, data_dir=tmp_path, max_batch=4)
    calls = []
    real_generate = pipe.generate

    def broken_many(requests, progress=None):
        calls.append(len(requests))
        raise SongflowError("one of the batch is bad")

    def generate(request, progress=None):
        if request.tags == "bad":
            raise SongflowError("the tags 'bad' cannot be sung")
        return real_generate(request, progress=progress)

    monkeypatch.setattr(pipe, "generate_many", broken_many)
    monkeypatch.setattr(pipe, "generate", generate)
    app.state.worker.pause()
    with TestClient(app) as client:
        ids = [
            client.post("/v1/jobs", json=_job(t, s)).json()["id"] for t, s in (("a", 1), ("bad", 2), ("c", 3))
        ]
        app.state.worker.resume()
        done = [wait_final(client, i) for i in ids]
        assert app.state.worker.alive
    assert calls == [3]
    assert [j["state"] for j in done] == ["done", "failed", "done"]
    assert done[1]["error"] == "the tags 'bad' cannot be sung"
    assert [j["batch_jobs"] for j in done] == [1, 1, 1]
