"""Webhooks: a job's ``callback_url`` hears of its final state at least once, through restarts, on both
job stores (SQLite and a real PostgreSQL server). A local receiver on 127.0.0.1 answers 500 first and 200
after: the delivery is retried with the same ``X-Songflow-Delivery`` id and a valid HMAC signature, then
recorded as delivered and never sent again; two deliverers on one store never send a callback twice; an
unreachable receiver is given up after ``MAX_ATTEMPTS``; a bad URL is refused at submission (422)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from songflow.errors import ConfigError
from songflow.interfaces.server import webhooks
from songflow.interfaces.server.jobs import JobOptions
from songflow.requests import GenerationParams, Text2Music, request_to_dict
from test_job_store import db, store  # noqa: F401 (the two-backend fixtures)

KEY = "hook-key"


class Receiver:
    """A webhook receiver on a free loopback port: answers ``statuses`` in turn (then 200), records every
    POST as ``(headers, body)``."""

    def __init__(self, statuses: tuple[int, ...] = ()):
        self.statuses, self.posts = list(statuses), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.statuses.pop(0) if outer.statuses else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver((500,))
    yield r
    r.close()


def _finished_job(store, url: str | None, state: str = "done") -> str:  # noqa: F811
    request = request_to_dict(Text2Music(tags="x", duration_s=1.0, params=GenerationParams(seeds=(1,))))
    job = store.add(request, [], 10, options=JobOptions(callback_url=url))
    store.claim_batch(1)
    store.finish(job.id, state, outputs=["audio_0.wav"])
    return job.id


def _deliverer(store, clock=None) -> webhooks.Deliverer:  # noqa: F811
    past = clock or (lambda: time.time() - 3600)  # retries due at once
    return webhooks.Deliverer(store, lambda job: {"id": job.id, "state": job.state}, key=KEY, clock=past)


def test_a_failed_delivery_is_retried_with_the_same_id_then_never_again(store, receiver):  # noqa: F811
    job_id = _finished_job(store, receiver.url)
    plain = _finished_job(store, None)  # no callback: nothing is sent for it
    deliverer = _deliverer(store)
    assert deliverer.run_once() == 1 and store.get(job_id).callback_state == "pending"
    assert deliverer.run_once() == 1 and deliverer.run_once() == 0
    job = store.get(job_id)
    assert (job.callback_state, job.callback_attempts) == ("delivered", 2)
    assert store.get(plain).callback_state is None and len(receiver.posts) == 2
    ids = {headers["x-songflow-delivery"] for headers, _ in receiver.posts}
    assert ids == {f"{job_id}:done"}
    for headers, body in receiver.posts:
        expected = "sha256=" + hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-songflow-signature"] == expected and headers["x-songflow-event"] == "job.done"
        assert json.loads(body) == {"event": "job.done", "job": {"id": job_id, "state": "done"}}


def test_two_deliverers_never_send_one_callback_twice(db, receiver):  # noqa: F811
    first, second = db.open(), db.open()
    receiver.statuses.clear()
    ids = [_finished_job(first, receiver.url, state) for state in ("done", "failed", "cancelled") * 4]
    rounds = [_deliverer(first), _deliverer(second)]
    threads = [threading.Thread(target=d.run_once) for d in rounds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while any(d.run_once() for d in rounds):
        pass
    sent = [headers["x-songflow-delivery"] for headers, _ in receiver.posts]
    assert sorted(sent) == sorted(f"{i}:{first.get(i).state}" for i in ids)  # each exactly once


def test_an_unreachable_receiver_is_given_up(store):  # noqa: F811
    closed = Receiver()
    url = closed.url
    closed.close()  # nothing listens there now
    job_id = _finished_job(store, url)
    deliverer = _deliverer(store)
    for _ in range(webhooks.MAX_ATTEMPTS + 2):
        deliverer.run_once()
    job = store.get(job_id)
    assert (job.callback_state, job.callback_attempts) == ("failed", webhooks.MAX_ATTEMPTS)


def test_a_claim_runs_out_so_a_crashed_deliverer_does_not_lose_the_callback(store, receiver):  # noqa: F811
    job_id = _finished_job(store, receiver.url)
    (claimed,) = store.claim_callbacks(lease_s=0.2)  # a deliverer took it and died before sending
    assert claimed.id == job_id and store.claim_callbacks() == []
    time.sleep(0.3)
    receiver.statuses.clear()
    assert _deliverer(store).run_once() == 1 and store.get(job_id).callback_state == "delivered"


def test_callback_urls_are_checked():
    assert webhooks.check_callback_url(" https://example.com/x?y=1 ") == "https://example.com/x?y=1"
    for bad in ("ftp://example.com/", "file:///etc/passwd", "http://user:pw@example.com/", "https://",
                "http://example.com:99999/", "x" * 3000):  # fmt: skip
        with pytest.raises(ConfigError):
            webhooks.check_callback_url(bad)
    assert [webhooks.retry_delay_s(a) for a in (1, 2, 3, 10, 20)] == [1, 2, 4, 300, 300]


def test_rest_jobs_take_options_and_refuse_a_bad_callback(tmp_path, tmp_path_factory):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from conftest import load_cpu, tiny_v15_root
    from songflow.interfaces.server.app import create_app

    pipe = load_cpu(tiny_v15_root(tmp_path_factory, "hooks", seed=1))
    hook = Receiver()
    try:
        with TestClient(create_app(pipe, data_dir=tmp_path / "data", start_worker=True)) as http:
            body = {"caption": "x", "duration_s": 2.0, "params": {"timesteps": [1.0, 0.5], "seeds": [1]}}
            bad = http.post("/v1/jobs", params={"callback_url": "file:///etc/passwd"}, json=body)
            answer = http.post("/v1/jobs", params={"callback_url": hook.url, "priority": 5}, json=body)
            job_id = answer.json()["id"]
            deadline = time.monotonic() + 60
            while not hook.posts and time.monotonic() < deadline:
                time.sleep(0.1)
            stored = http.app.state.store.get(job_id)
    finally:
        hook.close()
    assert bad.status_code == 422 and "callback_url" in json.dumps(bad.json())
    assert answer.status_code == 202 and stored.priority == 5
    (headers, raw), *_ = hook.posts
    assert headers["x-songflow-delivery"] == f"{job_id}:done" and json.loads(raw)["job"]["state"] == "done"
