"""Conformance tests of the job stores: every test runs on SQLite and on a real PostgreSQL server
(``conftest_pg``; those cases skip when PostgreSQL or psycopg is missing).

Concurrency is tested with threads that each hold their own store object (their own connection): a queue
never admits more than ``max_queued`` jobs, and concurrent claimers never claim one job twice. Leases,
heartbeats, timeouts, model affinity and the attempts limit use leases of a fraction of a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from songflow.errors import ConfigError
from songflow.interfaces.server.jobs import (
    JobOptions,
    JobStore,
    JobStoreProtocol,
    Worker,
    interrupted_error,
    open_store,
)
from songflow.requests import GenerationParams, Text2Music, request_to_dict


class Database:
    """One fresh database of a backend: its ``url`` (what ``--database`` takes) and ``open()``, a new
    store object with its own connection(s); all are closed after the test."""

    def __init__(self, url: str, data_dir: Path):
        self.url, self.data_dir, self.opened = url, data_dir, []

    def open(self) -> JobStoreProtocol:
        self.opened.append(open_store(self.url, self.data_dir))
        return self.opened[-1]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    else:
        pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'songflow[postgres]')")
        url = request.getfixturevalue("postgres_db")
    database = Database(url, tmp_path)
    yield database
    for store in database.opened:
        store.close()


@pytest.fixture
def store(db: Database) -> JobStoreProtocol:
    return db.open()


def req(name: str, group: str | None = None, batch_size: int = 1) -> dict[str, Any]:
    """A stored request; ``group`` is its batch key for :func:`by_group`."""
    return {"task": "text2music", "tags": name, "group": group, "params": {"batch_size": batch_size}}


def by_group(request: dict[str, Any]) -> str | None:
    return request.get("group")


def tags(jobs) -> list[str]:
    return [job.request["tags"] for job in jobs]


def add(store: JobStoreProtocol, name: str, **options: Any) -> str:
    job = store.add(req(name, options.pop("group", None)), [], 1000, options=JobOptions(**options))
    assert job is not None
    return job.id


# -- the basics ---------------------------------------------------------------------------------------


def test_add_get_list_summaries_cancel_finish_delete(store: JobStoreProtocol):
    a = store.add(req("a"), ["/data/uploads/x.wav"], 10, {"/data/uploads/x.wav": "mine.wav"})
    assert a is not None and a.state == "queued" and a.attempts == 0 and a.priority == 0
    assert a.upload_names == {"/data/uploads/x.wav": "mine.wav"} and a.uploads == ["/data/uploads/x.wav"]
    b, c = add(store, "b"), add(store, "c")
    assert store.get(a.id) == a and store.get("0" * 32) is None
    assert tags(store.list()) == ["c", "b", "a"] and tags(store.list("queued", limit=1)) == ["c"]
    assert store.count("queued") == 3 and store.ids() == {a.id, b, c}
    assert store.referenced_uploads() == {"/data/uploads/x.wav"}

    assert store.cancel(b) == "queued" and store.cancel(b) is None and store.cancel("nope") is None
    assert store.get(b).state == "cancelled" and store.get(b).error == "cancelled by the client"
    (job,) = store.claim_batch(1)
    assert job.id == a.id and job.state == "running" and job.attempts == 1 and job.started_at is not None
    assert store.delete(a.id) is None  # not finished
    store.set_progress(a.id, 0.5)
    assert store.get(a.id).progress == 0.5
    assert store.finish(a.id, "done", progress=1.0, outputs=["audio_0.wav"], timings={"total": 1.5})
    assert not store.finish(a.id, "failed", error="again")  # no longer running
    done = store.get(a.id)
    assert done.state == "done" and done.outputs == ["audio_0.wav"] and done.timings_s == {"total": 1.5}
    assert store.mean_run_s() is not None and store.mean_run_s() >= 0

    summaries = {s["id"]: s for s in store.summaries()}
    assert list(summaries) == [c, b, a.id] and summaries[a.id]["task"] == "text2music"
    assert summaries[a.id]["n_outputs"] == 1 and "outputs" not in summaries[a.id]
    assert [s["id"] for s in store.summaries("cancelled")] == [b]
    assert set(store.finished_before(time.time() + 60)) == {a.id, b} and store.finished_before(0) == []
    deleted = store.delete(a.id)
    assert deleted is not None and deleted.id == a.id and store.get(a.id) is None
    assert store.count("queued") == 1


def test_claims_follow_priority_then_age(store: JobStoreProtocol):
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:
        add(store, name, priority=priority)
    assert [tags(store.claim_batch(1)) for _ in range(6)] == [["b"], ["d"], ["a"], ["c"], ["e"], []]


def test_batch_mates_share_the_key_and_the_model_within_max_rows(store: JobStoreProtocol):
    add(store, "a", group="g")
    add(store, "other", group="h")
    add(store, "b", group="g", model="M")  # another model: never in a's batch
    store.add(req("big", "g", batch_size=3), [], 100)
    add(store, "c", group="g")
    add(store, "d", group="g")
    batch = store.claim_batch(3, max_rows=3, key_of=by_group)
    assert tags(batch) == ["a", "c", "d"]  # "big" would make 4 rows
    assert all(job.batch_jobs == 3 and job.state == "running" for job in batch)
    assert tags(store.claim_batch(3, max_rows=3, key_of=by_group)) == ["other"]
    assert tags(store.claim_batch(3, max_rows=3, key_of=by_group)) == ["b"]
    assert tags(store.claim_batch(3, max_rows=3, key_of=by_group)) == ["big"]


def test_bad_job_options_are_refused(store: JobStoreProtocol):
    for options in ({"priority": 1.5}, {"timeout_s": 0}, {"timeout_s": "1"}, {"model": " "}):
        with pytest.raises(ConfigError):
            store.add(req("x"), [], 10, options=JobOptions(**options))
    assert store.count("queued") == 0


# -- concurrency --------------------------------------------------------------------------------------


def _together(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """``fn(0..n-1)`` on ``n`` threads started at once; their results (an exception is re-raised)."""
    barrier, results, errors = threading.Barrier(n), [None] * n, []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    if errors:
        raise errors[0]
    return results


def test_max_queued_never_over_admits_under_concurrent_adders(db: Database):
    stores = [db.open() for _ in range(8)]

    def adder(i: int) -> int:
        return sum(stores[i].add(req(f"{i}-{k}"), [], 20) is not None for k in range(6))

    admitted = _together(8, adder)
    assert sum(admitted) == 20 and stores[0].count("queued") == 20


def test_concurrent_claimers_claim_every_job_exactly_once(db: Database):
    first = db.open()
    ids = {add(first, f"j{k}", group=f"g{k % 3}") for k in range(40)}
    stores = [db.open() for _ in range(4)]

    def claimer(i: int) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            jobs = stores[i].claim_batch(3, key_of=by_group, worker_id=f"w{i}", lease_s=30)
            if not jobs and stores[i].count("queued") == 0:
                return got
            for job in jobs:
                assert job.worker_id == f"w{i}"
                assert stores[i].finish(job.id, "done", worker_id=f"w{i}", progress=1.0)
                got.append(job.id)
        raise AssertionError("the queue did not drain")

    claimed = [job_id for got in _together(4, claimer) for job_id in got]
    assert len(claimed) == len(set(claimed)) == 40 and set(claimed) == ids
    assert first.count("done") == 40 and first.count("running") == 0


# -- leases, heartbeats, timeouts, models, attempts ---------------------------------------------------


def test_an_expired_lease_requeues_and_the_stale_worker_cannot_finish(store: JobStoreProtocol):
    job_id = add(store, "a")
    (job,) = store.claim_batch(1, worker_id="w1", lease_s=0.2)
    assert job.worker_id == "w1" and job.lease_until is not None
    assert store.requeue_expired(3) == 0  # not yet
    time.sleep(0.35)
    assert store.requeue_expired(3) == 1
    requeued = store.get(job_id)
    assert requeued.state == "queued" and requeued.worker_id is None and requeued.lease_until is None
    assert not store.finish(job_id, "done", worker_id="w1", progress=1.0)
    (again,) = store.claim_batch(1, worker_id="w2", lease_s=30)
    assert again.attempts == 2 and again.worker_id == "w2"
    store.set_progress(job_id, 0.9, "w1")  # the stale worker's progress is ignored
    assert store.get(job_id).progress == 0
    assert store.heartbeat("w1", [job_id], 30) == set()
    assert not store.finish(job_id, "done", worker_id="w1", progress=1.0)
    assert store.finish(job_id, "done", worker_id="w2", progress=1.0)
    assert store.get(job_id).state == "done"


def test_a_heartbeat_keeps_the_lease(store: JobStoreProtocol):
    a, b = add(store, "a"), add(store, "b")
    claimed = store.claim_batch(2, key_of=lambda r: 1, worker_id="w1", lease_s=0.4)
    assert {job.id for job in claimed} == {a, b}
    for _ in range(3):
        time.sleep(0.2)
        assert store.heartbeat("w1", [a, b], 0.4) == {a, b}
        assert store.requeue_expired(3) == 0
    assert store.heartbeat("w2", [a], 0.4) == set()  # not its job
    assert store.cancel(b) == "running"
    assert store.heartbeat("w1", [a, b], 0.4) == {a}  # a cancelled job is no longer owned
    assert store.get(a).state == "running" and store.get(b).state == "cancelled"


def test_a_job_past_its_timeout_fails(store: JobStoreProtocol):
    slow, other, waiting = (
        add(store, "slow", timeout_s=0.2),
        add(store, "other"),
        add(store, "wait", timeout_s=0.1),
    )
    store.claim_batch(1, worker_id="w1", lease_s=30)
    store.claim_batch(1, worker_id="w1", lease_s=30)
    assert store.expire_timeouts() == []
    time.sleep(0.35)
    assert store.expire_timeouts() == [slow]
    failed = store.get(slow)
    assert failed.state == "failed" and failed.error.startswith("timed out after 0.2 s"), failed.error
    assert not store.finish(slow, "done", worker_id="w1")
    assert store.get(other).state == "running" and store.get(waiting).state == "queued"  # no clock yet
    assert store.heartbeat("w1", [slow, other], 30) == {other}


def test_a_job_waits_for_a_worker_holding_its_model(store: JobStoreProtocol):
    add(store, "for-b", model="B")
    add(store, "for-a", model="A")
    add(store, "any")
    assert tags(store.claim_batch(1, worker_id="wa", models=["A"])) == ["for-a"]
    assert tags(store.claim_batch(1, worker_id="wa", models=["A"])) == ["any"]
    assert store.claim_batch(1, worker_id="wa", models=["A"]) == []
    assert store.claim_batch(1, worker_id="none", models=[]) == []  # holds no model: only model-free jobs
    (job,) = store.claim_batch(1, worker_id="wb", models=("B", "C"))
    assert job.model == "B" and job.request["tags"] == "for-b"


def test_a_job_whose_lease_runs_out_max_attempts_times_fails(store: JobStoreProtocol):
    job_id = add(store, "crashy")
    for attempt in (1, 2):
        (job,) = store.claim_batch(1, worker_id=f"w{attempt}", lease_s=0.1)
        assert job.attempts == attempt
        time.sleep(0.2)
        assert store.requeue_expired(2) == (1 if attempt == 1 else 0)
    failed = store.get(job_id)
    assert failed.state == "failed" and failed.error == interrupted_error(2)
    assert store.claim_batch(1) == []


# -- the factory ----------------------------------------------------------------------------------------


def test_open_store_accepts_sqlite_forms_and_names_the_accepted_ones(tmp_path: Path):
    default = open_store(None, tmp_path)
    assert isinstance(default, JobStore) and (tmp_path / "jobs.sqlite3").exists()
    default.close()
    named = open_store(f"sqlite:///{tmp_path / 'sub' / 'queue.db'}", tmp_path)
    assert isinstance(named, JobStore) and (tmp_path / "sub" / "queue.db").exists()
    named.close()
    for bad in ("mysql://user:secret@host/db", "jobs.db", "sqlite://jobs.db"):
        with pytest.raises(ConfigError, match="sqlite:///PATH") as info:
            open_store(bad, tmp_path)
        assert "postgresql://" in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(ConfigError, match="needs a file path"):
        open_store("sqlite:///", tmp_path)
    (tmp_path / "adir").mkdir()
    with pytest.raises(ConfigError, match="cannot open the job database"):
        open_store(f"sqlite:///{tmp_path / 'adir'}", tmp_path)


def test_an_unreachable_postgres_server_is_a_clear_error(tmp_path: Path):
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed")
    with pytest.raises(ConfigError, match="cannot connect to the job database") as info:
        open_store(f"postgresql://songflow:secret@/nowhere?host={tmp_path}&port=1", tmp_path)
    assert "secret" not in str(info.value)


def test_many_processes_may_create_the_postgres_schema_at_once(postgres_db: str, tmp_path: Path):
    stores = _together(6, lambda i: open_store(postgres_db, tmp_path))
    try:
        assert stores[0].add(req("a"), [], 10) is not None and stores[5].count("queued") == 1
    finally:
        for store in stores:
            store.close()


# -- the worker ---------------------------------------------------------------------------------------


class _FakePipeline:
    """Runs ``steps`` steps of ``step_s`` each, calling ``during(step)`` before each; no audio."""

    device, dtype = "cpu", "float32"

    def __init__(self, steps: int, step_s: float, during: Callable[[int], None] = lambda step: None):
        self.steps, self.step_s, self.during = steps, step_s, during

    def generate(self, request, progress=None):
        for step in range(self.steps):
            self.during(step)
            time.sleep(self.step_s)
            if progress is not None:
                progress(step + 1, self.steps)
        return SimpleNamespace(request=request, timings_s={"total": self.steps * self.step_s}, audio=[])


class _TextWorker(Worker):
    """A worker whose outputs are one text file (no audio, no sidecar)."""

    def _write_outputs(self, job_id: str, result, folder: Path | None = None) -> list[str]:
        folder = self.outputs_dir / job_id if folder is None else folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "audio_0.txt").write_text(f"{job_id} by {self.worker_id}")
        return ["audio_0.txt"]


def _v1_request() -> dict[str, Any]:
    return request_to_dict(Text2Music(tags="x", duration_s=1.0, params=GenerationParams(steps=2)))


def _wait(predicate: Callable[[], bool], timeout_s: float = 8.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_the_worker_heartbeat_keeps_a_long_run_its_own(db: Database, tmp_path: Path):
    store, sweeper = db.open(), db.open()
    job = store.add(_v1_request(), [], 10)
    assert job is not None
    worker = _TextWorker(_FakePipeline(10, 0.1), store, tmp_path / "out", {}, lease_s=0.3, worker_id="w1")
    worker.start()
    try:
        deadline = time.monotonic() + 8
        while store.get(job.id).state in ("queued", "running") and time.monotonic() < deadline:
            assert sweeper.requeue_expired(3) == 0  # another worker's sweep never takes it away
            time.sleep(0.05)
    finally:
        worker.stop()
    done = store.get(job.id)
    assert done.state == "done" and done.worker_id == "w1" and done.attempts == 1, done
    assert (tmp_path / "out" / job.id / "audio_0.txt").read_text() == f"{job.id} by w1"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [job.id]  # no staging folder left


def test_a_worker_that_lost_its_job_writes_nothing(db: Database, tmp_path: Path):
    store, other = db.open(), db.open()
    job = store.add(_v1_request(), [], 10)
    assert job is not None

    stolen_at: list[float] = []

    def steal(step: int) -> None:  # the job goes to another worker while this one runs it
        if step == 2:
            assert other.finish(job.id, "queued")
            assert [j.id for j in other.claim_batch(1, worker_id="w2", lease_s=30)] == [job.id]
            stolen_at.append(time.monotonic())

    worker = _TextWorker(_FakePipeline(30, 0.05, steal), store, tmp_path / "out", {}, lease_s=0.3)
    worker.start()
    try:
        _wait(lambda: store.get(job.id).worker_id == "w2")
        _wait(lambda: worker.current == ())
        assert time.monotonic() - stolen_at[0] < 1.0  # dropped at its next heartbeat, not at the end (1.4 s)
    finally:
        worker.stop()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    running = store.get(job.id)
    assert running.state == "running" and running.worker_id == "w2" and running.outputs == []
    assert other.finish(job.id, "done", worker_id="w2", progress=1.0)


# -- the REST app on either store ---------------------------------------------------------------------


def test_the_rest_app_runs_jobs_on_either_store(db: Database, pipe, tmp_path: Path):
    """Submit, list, fetch the audio, cancel and delete through ``create_app(..., database=...)``."""
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    from conftest import wait_final
    from songflow.interfaces.server.app import create_app

    probe = db.open()
    body = {"task": "text2music", "tags": "pop", "duration_s": 1.0, "params": {"steps": 2, "seeds": [3]}}
    with TestClient(create_app(pipe, data_dir=tmp_path / "data", database=db.url)) as client:
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        job = wait_final(client, job_id)
        assert job["state"] == "done" and job["n_outputs"] == 1, job
        assert client.get(f"/v1/jobs/{job_id}/audio").status_code == 200
        listed = client.get("/v1/jobs").json()["jobs"]
        assert [(j["id"], j["task"], j["n_outputs"]) for j in listed] == [(job_id, "text2music", 1)]
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert probe.ids() == set() and not (tmp_path / "data" / "outputs" / job_id).exists()


def test_workers_advertise_themselves_and_expire(db: Database) -> None:
    first, second = db.open(), db.open()
    first.touch_worker("gpu-a", ["acestep-v15-turbo"], ["j1"], ttl_s=30)
    second.touch_worker("gpu-b", None, [], ttl_s=0.3)
    live = {w["worker_id"]: w for w in second.live_workers()}
    assert live["gpu-a"]["models"] == ["acestep-v15-turbo"] and live["gpu-a"]["running"] == ["j1"]
    assert live["gpu-b"]["models"] is None
    time.sleep(0.5)  # gpu-b stopped beating: it is gone once its ttl passed
    assert [w["worker_id"] for w in first.live_workers()] == ["gpu-a"]
    first.touch_worker("gpu-a", ["acestep-v15-turbo"], [], ttl_s=30)  # a beat updates, not duplicates
    assert [w["running"] for w in second.live_workers()] == [[]]
    first.drop_worker("gpu-a")
    assert second.live_workers() == []


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["serve", "--database", "mysql://u:secret@db/x"], "unknown database"),
        (["worker", "--database", "sqlite:///", "--data-dir", "d"], "needs a file path"),
    ],
)
def test_a_wrong_database_is_named_before_any_model_loads(argv, words, tmp_path, capsys):
    from songflow.interfaces.cli.commands import EXIT_USER_ERROR, main

    missing = str(tmp_path / "no-such-checkpoint")  # loading it would fail with another message
    assert main([*argv, "--checkpoint", missing]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert words in err and "secret" not in err and "no-such-checkpoint" not in err
