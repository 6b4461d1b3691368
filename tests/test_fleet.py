"""Fault tests of the job queue with real processes on loopback (slow: ``pytest -m slow
tests/test_fleet.py``).

PostgreSQL (a private server, ``conftest_pg``): 2 API processes (``songflow serve --no-worker``) and 3
workers (``songflow worker --lease-s 3``) over one tiny 1.5 checkpoint and one data folder. 200 jobs are
submitted concurrently through both APIs. Mid-run, one worker that holds a running job is killed with
SIGKILL, then one API process (its clients move to the other, as behind a load balancer). Shown: all 200
jobs are accepted, and every accepted job (a 202) ends ``done`` exactly once (one "done"
line across all workers' logs, the killed worker's jobs re-run by the others after its lease), with a
complete output of the requested length and its own seed in the sidecar; none lost, none duplicated.
SQLite: one ``songflow serve`` (worker inside) is killed with SIGKILL mid-queue and started again; every
accepted job ends done exactly once. Each run prints its throughput.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
httpx = pytest.importorskip("httpx")
sf = pytest.importorskip("soundfile")

from conftest import songflow_process, start_serve, tiny_v15_root  # noqa: E402

N_JOBS = 200
SECONDS = 2.0


class Proc:
    """A ``songflow`` subprocess (``conftest.songflow_process``) with its output in ``log``."""

    def __init__(self, args: list[str], log: Path, popen=None):
        self.log = log
        self.popen = popen or songflow_process(args, log)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def _serve(ckpt: Path, data: Path, log: Path, *extra: str) -> tuple[Proc, str]:
    popen, url = start_serve(ckpt, data, log, "--max-queue", "1000", *extra)
    return Proc([], log, popen), url


def _body(i: int) -> dict:
    return {"caption": "tiny song", "duration_s": SECONDS, "params": {"timesteps": [1.0, 0.5], "seeds": [i]}}


def _submit_all(urls: list[str], n: int, accepted: dict[int, str]) -> None:
    """Submit jobs 0..n-1 round-robin over ``urls`` from 8 threads, each retried on the next API process
    when its own is gone; ``accepted``: seed -> job id (202s)."""

    def one(i: int) -> None:
        for k in range(len(urls)):  # as a load balancer does: the next API process when one is gone
            try:
                answer = httpx.post(urls[(i + k) % len(urls)] + "/v1/jobs", json=_body(i), timeout=30)
            except httpx.HTTPError:
                continue
            if answer.status_code == 202:
                accepted[i] = answer.json()["id"]
            return

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def _states(url: str, ids: list[str]) -> Counter:
    return Counter(httpx.get(f"{url}/v1/jobs/{i}", timeout=30).json()["state"] for i in ids)


def _wait_all_final(url: str, ids: list[str], timeout_s: float) -> Counter:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = _states(url, ids)
        if states["queued"] + states["running"] == 0:
            return states
        time.sleep(1.0)
    raise AssertionError(f"jobs still unfinished after {timeout_s} s: {states}")


def _check_outputs(data: Path, accepted: dict[int, str], logs: list[Path]) -> None:
    """Each job's one output is complete and its own (seed in the sidecar); one "done" line per job."""
    for seed, job_id in accepted.items():
        folder = data / "outputs" / job_id
        sidecar = json.loads((folder / "result.json").read_text())
        assert sidecar["request"]["params"]["seeds"] == [seed], job_id
        info = sf.info(str(folder / sidecar["outputs"][0]))
        assert abs(info.duration - SECONDS) < 1e-3 and info.channels == 2, (job_id, info)
    done = Counter(m for log in logs for m in re.findall(r"job ([0-9a-f]{32}) done by", log.read_text()))
    assert {i for i, n in done.items() if n > 1} == set(), "a job was recorded done twice"
    assert set(accepted.values()) <= set(done), "a job was never recorded done"


def _running_worker_pid(dsn: str) -> int | None:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT worker_id FROM songflow_jobs WHERE state='running' LIMIT 1").fetchone()
    return int(row[0].split("-")[-2]) if row else None


def test_postgres_fleet_survives_a_killed_worker_and_api(tmp_path_factory, postgres_db, tmp_path):
    pytest.importorskip("psycopg")
    ckpt = tiny_v15_root(tmp_path_factory, "fleet", seed=2)
    data = tmp_path / "shared"
    procs: list[Proc] = []
    try:
        apis = [_serve(ckpt, data, tmp_path / f"api{i}.log", "--database", postgres_db, "--no-worker")
                for i in range(2)]  # fmt: skip
        procs += [p for p, _ in apis]
        workers = [Proc(["worker", "--checkpoint", str(ckpt), "--data-dir", str(data), "--database",
                         postgres_db, "--device", "cpu", "--lease-s", "3", "--max-batch", "1"],
                        tmp_path / f"worker{i}.log") for i in range(3)]  # fmt: skip
        procs += workers
        accepted: dict[int, str] = {}
        t0 = time.monotonic()
        submitter = threading.Thread(target=_submit_all, args=([u for _, u in apis], N_JOBS, accepted))
        submitter.start()
        while len(accepted) < N_JOBS // 2 and submitter.is_alive():
            time.sleep(0.05)
        apis[1][0].kill()  # an API process dies mid-submission
        pid = None
        while pid is None:
            pid = _running_worker_pid(postgres_db)
            time.sleep(0.05)
        victim = next(w for w in workers if w.popen.pid == pid)
        victim.kill()  # a worker dies mid-job
        submitter.join()
        states = _wait_all_final(apis[0][1], list(accepted.values()), timeout_s=600)
        wall = time.monotonic() - t0
        assert states == Counter({"done": len(accepted)}), states
        assert len(accepted) == N_JOBS
        # a job the killed API stored but could not acknowledge was re-submitted; it ran too
        listed = httpx.get(apis[0][1] + "/v1/jobs", params={"limit": 1000}, timeout=30).json()["jobs"]
        assert {j["state"] for j in listed} == {"done"} and len(listed) - N_JOBS <= 8
        _check_outputs(data, accepted, [w.log for w in workers])
        alive = httpx.get(apis[0][1] + "/v1/workers", timeout=30).json()["workers"]
        assert sorted(int(w["worker_id"].split("-")[-2]) for w in alive) == sorted(
            w.popen.pid for w in workers if w is not victim
        )  # the killed worker dropped out once its lease ran out
        print(f"\npostgres fleet: {len(accepted)} accepted jobs done in {wall:.1f} s "
              f"({len(accepted) / wall:.2f} jobs/s) with a worker and an API process killed")  # fmt: skip
    finally:
        for p in procs:
            p.stop()


def test_sqlite_server_killed_and_restarted_loses_nothing(tmp_path_factory, tmp_path):
    ckpt = tiny_v15_root(tmp_path_factory, "sqlite_kill", seed=2)
    data = tmp_path / "data"
    n = 40
    server, url = _serve(ckpt, data, tmp_path / "serve1.log")
    try:
        accepted: dict[int, str] = {}
        _submit_all([url], n, accepted)
        assert len(accepted) == n
        while _states(url, list(accepted.values()))["done"] < 5:
            time.sleep(0.1)
        server.kill()
        server, url = _serve(ckpt, data, tmp_path / "serve2.log")
        states = _wait_all_final(url, list(accepted.values()), timeout_s=600)
    finally:
        server.stop()
    assert states == Counter({"done": n}), states
    _check_outputs(data, accepted, [tmp_path / "serve1.log", tmp_path / "serve2.log"])
