"""The REST server's persistent job store and its single worker thread.

Jobs live in ``<data_dir>/jobs.sqlite3`` (WAL). One worker thread per process owns the one pipeline and
runs queued jobs oldest first; finished audio is written atomically under ``<data_dir>/outputs/<id>/``
with the reproducibility sidecar. On startup, jobs left ``running`` by a previous process are re-queued,
unless they were already started ``max_attempts`` times (then they fail with the reason). Error messages
name uploads by their client file names (``scrub``), never by a server path.

Batching: when the oldest queued job can share a sampling run (``songflow.pipeline.batch_key``), the
worker claims up to ``max_batch`` queued jobs with the same key (oldest first, jobs with other keys keep
their place) and runs them with ``Pipeline.generate_many``; every job still gets exactly the audio it
would get alone. Progress is recorded per job. Cancelling a job of a running batch marks it cancelled at
once and drops its output; the run stops when every job of the batch is cancelled. If a batch fails, its
jobs are run one at a time, so an error is recorded on the job that caused it.

A job is cancelled through the sampler's progress callback, which raises :class:`Cancelled` at the next
sampling step. A failed job records its error and never stops the worker.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from songflow.errors import SongflowError
from songflow.pipeline import batch_key
from songflow.requests import MAX_BATCH, V1_SCHEMA, RequestSchema

log = logging.getLogger("songflow.server")

STATES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled")
FINISHED_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})
AUDIO_STEM = "audio"
SIDECAR_NAME = "result.json"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    request TEXT NOT NULL,
    resolved TEXT,
    error TEXT,
    timings TEXT,
    outputs TEXT,
    uploads TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
"""
# columns added after the first release: (name, SQL type); added to older databases on open
_LATER_COLUMNS = (("batch_jobs", "INTEGER"), ("attempts", "INTEGER"), ("upload_names", "TEXT"))
# the columns of a job listing (summaries: no request)
_SUMMARY_COLUMNS = (
    "id, state, progress, error, outputs, batch_jobs, created_at, started_at, finished_at, "
    "json_extract(request, '$.task') AS task"
)
# how many queued jobs behind the oldest one are looked at for batch-mates
_BATCH_SCAN = 256


def interrupted_error(max_attempts: int) -> str:
    return (
        f"the server stopped while this job ran, {max_attempts} time(s); it is not retried again "
        "(it may be what stops the server)"
    )


class Cancelled(Exception):
    """Raised from the progress callback to stop a job at the next sampling step (internal)."""


class _Shutdown(Exception):
    """Raised from the progress callback when the server stops; the job is re-queued."""


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    progress: float
    request: dict[str, Any]
    resolved: dict[str, Any] | None
    error: str | None
    timings_s: dict[str, float]
    outputs: list[str]
    uploads: list[str]
    created_at: float
    started_at: float | None
    finished_at: float | None
    batch_jobs: int | None = None
    attempts: int = 0
    upload_names: dict[str, str] = field(default_factory=dict)  # server path -> client file name

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "progress": round(self.progress, 4),
            "request": self.resolved if self.resolved is not None else self.request,
            "error": self.error,
            "timings_s": self.timings_s,
            "n_outputs": len(self.outputs),
            "batch_jobs": self.batch_jobs,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        state=row["state"],
        progress=row["progress"],
        request=json.loads(row["request"]),
        resolved=json.loads(row["resolved"]) if row["resolved"] else None,
        error=row["error"],
        timings_s=json.loads(row["timings"]) if row["timings"] else {},
        outputs=json.loads(row["outputs"]) if row["outputs"] else [],
        uploads=json.loads(row["uploads"]) if row["uploads"] else [],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        batch_jobs=row["batch_jobs"],
        attempts=row["attempts"] or 0,
        upload_names=json.loads(row["upload_names"]) if row["upload_names"] else {},
    )


def scrub(text: str, names: dict[str, str], data_dir: Path) -> str:
    """``text`` with every server path replaced: an upload's by its client file name, others by a tag."""
    for path, name in names.items():
        text = text.replace(path, repr(name))
    for prefix in sorted({str(data_dir.resolve()), str(data_dir)}, key=len, reverse=True):
        text = re.sub(re.escape(prefix) + r"[^\s'\"]*", "<server file>", text)
    return text


def _rows_of(request: dict[str, Any]) -> int:
    """Batch items a stored request asks for (``params.batch_size``)."""
    n = (request.get("params") or {}).get("batch_size", 1)
    return n if isinstance(n, int) and n >= 1 else 1


class JobStore:
    """SQLite-backed job table; every method is thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            have = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for name, sql_type in _LATER_COLUMNS:
                if name not in have:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {sql_type}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def requeue_interrupted(self, max_attempts: int | None = None) -> int:
        """Re-queue the jobs a stopped process left running; one that has already been started
        ``max_attempts`` times fails instead (it may be what crashed the process). The count re-queued."""
        if max_attempts is not None:
            self._exec(
                "UPDATE jobs SET state='failed', finished_at=?, error=? "
                "WHERE state='running' AND COALESCE(attempts, 0) >= ?",
                (time.time(), interrupted_error(max_attempts), max_attempts),
            )
        cur = self._exec(
            "UPDATE jobs SET state='queued', progress=0, started_at=NULL, batch_jobs=NULL "
            "WHERE state='running'"
        )
        return cur.rowcount

    def add(
        self,
        request: dict[str, Any],
        uploads: list[str],
        max_queued: int,
        upload_names: dict[str, str] | None = None,
    ) -> Job | None:
        """Insert a queued job, or return None when ``max_queued`` jobs are already queued."""
        job_id, now = uuid.uuid4().hex, time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (n,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()
                if n >= max_queued:
                    self._db.execute("ROLLBACK")
                    return None
                self._db.execute(
                    "INSERT INTO jobs (id, state, request, uploads, upload_names, created_at, attempts) "
                    "VALUES (?, 'queued', ?, ?, ?, ?, 0)",
                    (job_id, json.dumps(request), json.dumps(uploads), json.dumps(upload_names or {}), now),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        row = self._exec("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    def list(self, state: str | None = None, limit: int = 100) -> list[Job]:
        if state is None:
            rows = self._exec("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        else:
            rows = self._exec(
                "SELECT * FROM jobs WHERE state=? ORDER BY seq DESC LIMIT ?", (state, limit)
            ).fetchall()
        return [_row_to_job(r) for r in rows]

    def summaries(self, state: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Newest-first job summaries (no request): what ``GET /v1/jobs`` lists."""
        where, args = ("", (limit,)) if state is None else ("WHERE state=? ", (state, limit))
        rows = self._exec(
            f"SELECT {_SUMMARY_COLUMNS} FROM jobs {where}ORDER BY seq DESC LIMIT ?", args
        ).fetchall()
        out = []
        for row in rows:
            item = {k: row[k] for k in row.keys() if k != "outputs"}
            item["progress"] = round(item["progress"], 4)
            item["n_outputs"] = len(json.loads(row["outputs"])) if row["outputs"] else 0
            out.append(item)
        return out

    def delete(self, job_id: str) -> Job | None:
        """Remove a finished job's row; returns it (None if there is none or it is not finished)."""
        with self._lock:
            row = self._db.execute(
                "DELETE FROM jobs WHERE id=? AND state IN ('done', 'failed', 'cancelled') RETURNING *",
                (job_id,),
            ).fetchone()
        return _row_to_job(row) if row else None

    def finished_before(self, when: float) -> builtins.list[str]:
        """Ids of the finished jobs that reached their final state before ``when``, oldest first."""
        rows = self._exec(
            "SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished_at < ? "
            "ORDER BY finished_at",
            (when,),
        ).fetchall()
        return [row["id"] for row in rows]

    def referenced_uploads(self) -> set[str]:
        """The upload paths some stored job still refers to."""
        rows = self._exec("SELECT uploads FROM jobs WHERE uploads IS NOT NULL").fetchall()
        return {path for row in rows for path in json.loads(row["uploads"])}

    def ids(self) -> set[str]:
        return {row["id"] for row in self._exec("SELECT id FROM jobs").fetchall()}

    def mean_run_s(self, last: int = 20) -> float | None:
        """Mean wall time (start to finish) of the last ``last`` finished jobs, or None if none ran."""
        row = self._exec(
            "SELECT AVG(finished_at - started_at) FROM (SELECT finished_at, started_at FROM jobs "
            "WHERE state='done' AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?)",
            (last,),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def count(self, state: str) -> int:
        return self._exec("SELECT COUNT(*) FROM jobs WHERE state=?", (state,)).fetchone()[0]

    def claim_next(self) -> Job | None:
        """Mark the oldest queued job running and return it (None when the queue is empty)."""
        jobs = self.claim_batch(1)
        return jobs[0] if jobs else None

    def claim_batch(
        self,
        max_jobs: int,
        max_rows: int = MAX_BATCH,
        key_of: Callable[[dict[str, Any]], Hashable | None] | None = None,
    ) -> builtins.list[Job]:
        """Mark the oldest queued job running, with up to ``max_jobs - 1`` later queued jobs whose
        ``key_of(request)`` equals its key (None: never batched), keeping the total of their
        ``batch_size`` within ``max_rows``; return them oldest first ([] when the queue is empty)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                head = self._db.execute(
                    "SELECT * FROM jobs WHERE state='queued' ORDER BY seq LIMIT 1"
                ).fetchone()
                if head is None:
                    self._db.execute("ROLLBACK")
                    return []
                chosen = [head]
                key = key_of(json.loads(head["request"])) if key_of is not None and max_jobs > 1 else None
                if key is not None and key_of is not None:
                    rows = _rows_of(json.loads(head["request"]))
                    later = self._db.execute(
                        "SELECT * FROM jobs WHERE state='queued' AND seq > ? ORDER BY seq LIMIT ?",
                        (head["seq"], _BATCH_SCAN),
                    ).fetchall()
                    for row in later:
                        if len(chosen) >= max_jobs:
                            break
                        request = json.loads(row["request"])
                        n = _rows_of(request)
                        if rows + n <= max_rows and key_of(request) == key:
                            chosen.append(row)
                            rows += n
                now = time.time()
                claimed = []
                for row in chosen:
                    claimed.append(
                        self._db.execute(
                            "UPDATE jobs SET state='running', progress=0, started_at=?, batch_jobs=?, "
                            "attempts=COALESCE(attempts, 0) + 1 WHERE id=? RETURNING *",
                            (now, len(chosen), row["id"]),
                        ).fetchone()
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [_row_to_job(row) for row in claimed]

    def set_progress(self, job_id: str, progress: float) -> None:
        self._exec("UPDATE jobs SET progress=? WHERE id=? AND state='running'", (progress, job_id))

    def finish(self, job_id: str, state: str, **fields: Any) -> bool:
        """Move a running job to a final state (or back to queued); False if it is no longer running."""
        sets = ["state=?"]
        args: builtins.list[Any] = [state]
        if state in FINISHED_STATES:
            sets.append("finished_at=?")
            args.append(time.time())
        for name, value in fields.items():
            sets.append(f"{name}=?")
            args.append(value if isinstance(value, str | int | float) or value is None else json.dumps(value))
        cur = self._exec(f"UPDATE jobs SET {', '.join(sets)} WHERE id=? AND state='running'", (*args, job_id))
        return cur.rowcount == 1

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns the state it had, or None if it was not cancellable."""
        with self._lock:
            row = self._db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["state"] not in ("queued", "running"):
                return None
            self._db.execute(
                "UPDATE jobs SET state='cancelled', finished_at=?, error='cancelled by the client' "
                "WHERE id=? AND state IN ('queued', 'running')",
                (time.time(), job_id),
            )
            return row["state"]


class Worker:
    """The one thread that owns the pipeline and runs queued jobs, oldest first (``max_batch`` > 1:
    compatible queued jobs together, see the module docstring)."""

    def __init__(
        self,
        pipeline,
        store: JobStore,
        outputs_dir: Path,
        runtime: dict[str, Any],
        *,
        max_batch: int = 1,
        sweep: Callable[[], Any] | None = None,
        sweep_every_s: float = 60.0,
        family: Any = None,
        loras: Any = None,
    ):
        """``family``: the pipeline's model family; its request schema reads the stored requests and
        writes the resolved ones (None: ACE-Step v1's). ``loras``: the server's
        :class:`~songflow.interfaces.server.loras.LoraLibrary`; sidecars and errors name its adapters."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.pipeline = pipeline
        self.store = store
        self.outputs_dir = outputs_dir
        self.runtime = runtime
        self.max_batch = max_batch
        self.family = family
        self.loras = loras
        self.schema: RequestSchema = getattr(family, "schema", None) or V1_SCHEMA
        self.sweep = sweep  # retention: called from this thread between jobs, every sweep_every_s
        self.sweep_every_s = sweep_every_s
        self._last_sweep = time.monotonic()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._resumed = threading.Event()
        self._resumed.set()
        self._cancel_lock = threading.Lock()
        self._cancelled: set[str] = set()
        self._thread: threading.Thread | None = None
        self.current: tuple[str, ...] = ()  # ids of the job(s) running now

    # -- control -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="songflow-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._resumed.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def pause(self) -> None:
        """Hold the worker before it takes the next job (tests, maintenance)."""
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def notify(self) -> None:
        self._wake.set()

    def request_cancel(self, job_id: str) -> None:
        with self._cancel_lock:
            self._cancelled.add(job_id)

    # -- loop ----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._resumed.wait()
            if self._stop.is_set():
                break
            try:
                jobs = self.store.claim_batch(self.max_batch, MAX_BATCH, self._batch_key)
            except Exception:  # a broken store must not kill the thread; try again shortly
                log.exception("cannot claim the next job")
                jobs = []
                self._stop.wait(1.0)
            self._maybe_sweep()
            if not jobs:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self.current = tuple(job.id for job in jobs)
            try:
                if len(jobs) == 1:
                    self._run(jobs[0])
                else:
                    self._run_batch(jobs)
            except Exception:  # never let a job kill the worker
                log.exception("jobs %s: unexpected error while recording their results", self.current)
            finally:
                self.current = ()
                with self._cancel_lock:
                    self._cancelled.difference_update(job.id for job in jobs)

    def _maybe_sweep(self) -> None:
        if self.sweep is None or time.monotonic() - self._last_sweep < self.sweep_every_s:
            return
        self._last_sweep = time.monotonic()
        try:
            self.sweep()
        except Exception:  # retention must never stop the worker
            log.exception("the retention sweep failed")

    def _progress_fn(self, job_ids: list[str]):
        """Progress callback of a run over ``job_ids``: records each live job's progress; raises
        :class:`_Shutdown` when the server stops and :class:`Cancelled` once every job is cancelled."""
        last = [0.0]

        def progress(step: int, total: int) -> None:
            if self._stop.is_set():
                raise _Shutdown()
            with self._cancel_lock:
                live = [i for i in job_ids if i not in self._cancelled]
            if not live:
                raise Cancelled()
            now = time.monotonic()
            if step >= total or now - last[0] >= 0.1:
                last[0] = now
                for job_id in live:
                    self.store.set_progress(job_id, min(1.0, step / max(total, 1)))

        return progress

    def _run_batch(self, jobs: list[Job]) -> None:
        ids = [job.id for job in jobs]
        try:
            requests = [self.schema.from_dict(job.request) for job in jobs]
            results = self.pipeline.generate_many(requests, progress=self._progress_fn(ids))
        except Cancelled:
            log.info("jobs %s cancelled", ids)
            return
        except _Shutdown:
            for job in jobs:
                self._requeue(job)
            log.info("jobs %s interrupted by shutdown; re-queued", ids)
            return
        except Exception as exc:
            log.warning("a batch of %d jobs failed (%s); running them one at a time", len(jobs), exc)
            for job in jobs:
                if self._stop.is_set():
                    self._requeue(job)
                elif not self._is_cancelled(job.id):
                    self.store.finish(job.id, "running", batch_jobs=1)  # it now runs alone
                    self._run(job)
            return
        for job, result in zip(jobs, results, strict=True):
            if self._is_cancelled(job.id):
                log.info("job %s cancelled", job.id)
                continue
            try:
                outputs = self._write_outputs(job.id, result)
            except Exception as exc:
                self._record_failure(job, exc)
                continue
            self._record_done(job.id, result, outputs)

    def _requeue(self, job: Job) -> None:
        """Back to the queue after a graceful stop; that run does not count as an attempt."""
        attempts = max(0, job.attempts - 1)
        self.store.finish(job.id, "queued", progress=0.0, started_at=None, batch_jobs=None, attempts=attempts)

    def _record_failure(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, SongflowError):
            names = {**job.upload_names, **(self.loras.scrub_names() if self.loras is not None else {})}
            message = scrub(str(exc), names, self.outputs_dir.parent)
            self.store.finish(job.id, "failed", error=message)
            log.info("job %s failed: %s", job.id, exc)
        else:
            log.error("job %s failed with an internal error", job.id, exc_info=exc)
            self.store.finish(job.id, "failed", error="internal error")

    def _record_done(self, job_id: str, result, outputs: list[str]) -> None:
        timings = {k: round(v, 4) for k, v in result.timings_s.items()}
        self.store.finish(
            job_id,
            "done",
            progress=1.0,
            resolved=self.schema.to_dict(result.request),
            timings=timings,
            outputs=outputs,
        )

    def _run(self, job: Job) -> None:
        try:
            request = self.schema.from_dict(job.request)
            result = self.pipeline.generate(request, progress=self._progress_fn([job.id]))
            if self._is_cancelled(job.id):
                raise Cancelled()
            outputs = self._write_outputs(job.id, result)
        except Cancelled:
            log.info("job %s cancelled", job.id)
            return  # the store already holds state 'cancelled'
        except _Shutdown:
            self._requeue(job)
            log.info("job %s interrupted by shutdown; re-queued", job.id)
            return
        except Exception as exc:
            self._record_failure(job, exc)
            return
        self._record_done(job.id, result, outputs)

    def _is_cancelled(self, job_id: str) -> bool:
        """True once the job was cancelled (or deleted) while it ran."""
        with self._cancel_lock:
            if job_id in self._cancelled:
                return True
        job = self.store.get(job_id)
        return job is None or job.state == "cancelled"

    def _write_outputs(self, job_id: str, result) -> list[str]:
        from songflow.audio.io import save_audio
        from songflow.interfaces.sidecar import output_labels, pipeline_weight_hashes, write_sidecar

        folder = self.outputs_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        names = []  # audio_0.wav, audio_1.wav...; a stems job's by track: audio_vocals.wav, audio_drums.wav
        for label, audio in zip(output_labels(result.request, len(result.audio)), result.audio, strict=True):
            name = f"{AUDIO_STEM}_{label}.wav"
            save_audio(folder / name, audio, result.sample_rate_hz)
            names.append(name)
        weights = pipeline_weight_hashes(self.pipeline, result)
        record = self.loras.named_result(result) if self.loras is not None else result  # adapters by name
        write_sidecar(
            folder / SIDECAR_NAME, record, names, self.runtime, family=self.family, weights_sha256=weights
        )
        return names

    def _batch_key(self, request: dict[str, Any]) -> Hashable | None:
        return _stored_batch_key(request, self.schema)


def _stored_batch_key(request: dict[str, Any], schema: RequestSchema = V1_SCHEMA) -> Hashable | None:
    """``batch_key`` of a stored request of ``schema`` (None for one that no longer parses: it runs
    alone and fails; always None outside v1, whose pipeline alone batches requests)."""
    if schema.name != V1_SCHEMA.name:
        return None
    try:
        return batch_key(schema.from_dict(request))
    except SongflowError:
        return None
