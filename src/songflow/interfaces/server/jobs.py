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

Leases (one queue, many workers): a worker claims jobs under its ``worker_id`` with a lease
(``lease_until``), which its heartbeat thread extends every ``lease_s / 3``. A job whose lease ran out (its
worker died) goes back to the queue (:meth:`JobStore.requeue_expired`, swept by every worker's heartbeat),
or fails once it has been started ``max_attempts`` times. A worker records a result only for a job it still
owns (``finish(..., worker_id=...)``), and moves its outputs into place only after checking that it does,
so a job is completed exactly once. Jobs have a ``priority`` (higher first, then oldest first), an optional
``timeout_s`` (:meth:`JobStore.expire_timeouts`) and an optional ``model`` (only a worker holding that model
claims it). :func:`open_store` opens this SQLite store or the PostgreSQL one
(:mod:`songflow.interfaces.server.store_pg`); both follow :class:`JobStoreProtocol`.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from songflow.errors import ConfigError, SongflowError
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
_LATER_COLUMNS = (
    ("batch_jobs", "INTEGER"),
    ("attempts", "INTEGER"),
    ("upload_names", "TEXT"),
    ("worker_id", "TEXT"),  # the worker that claimed the job (kept once it finished)
    ("lease_until", "REAL"),  # epoch s; a running job whose lease ran out is re-queued
    ("priority", "INTEGER DEFAULT 0"),  # higher runs first
    ("timeout_s", "REAL"),  # a run longer than this fails (None: no limit)
    ("model", "TEXT"),  # the checkpoint the job needs (None: any worker's)
    ("client", "TEXT"),  # JSON: what the submitting API dialect needs back (e.g. the 1.5 audio_format)
    ("callback_url", "TEXT"),  # the webhook told when the job reaches a final state (None: none)
    ("callback_state", "TEXT"),  # None: not tried yet; 'pending', 'delivered', 'failed'
    ("callback_attempts", "INTEGER DEFAULT 0"),
    ("callback_at", "REAL"),  # epoch s of the next attempt (or of a claim's expiry)
)
# a row of either backend: sqlite3's or psycopg's dict rows
RowLike = sqlite3.Row | Mapping[str, Any]
_CLAIM_INDEX = "CREATE INDEX IF NOT EXISTS jobs_claim ON jobs(state, priority DESC, seq)"
# the columns finish(**fields) may set
FIELD_COLUMNS: frozenset[str] = frozenset(
    {"progress", "resolved", "error", "timings", "outputs", "started_at", "batch_jobs", "attempts"}
)
# the columns of a job listing (summaries: no request)
_SUMMARY_COLUMNS = (
    "id, state, progress, error, outputs, batch_jobs, created_at, started_at, finished_at, "
    "json_extract(request, '$.task') AS task"
)
# how many queued jobs behind the oldest one are looked at for batch-mates
BATCH_SCAN = 256
# a claimed job's lease when the claimer names none (PostgreSQL) and a worker's default
DEFAULT_LEASE_S = 60.0


def interrupted_error(max_attempts: int) -> str:
    return (
        f"the server stopped while this job ran, {max_attempts} time(s); it is not retried again "
        "(it may be what stops the server)"
    )


def timeout_error(timeout_s: float) -> str:
    return f"timed out after {timeout_s:g} s (the job's timeout_s); it is not retried"


def default_worker_id() -> str:
    """``host-pid-random``: unique across the machines that share one queue."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


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
    worker_id: str | None = None  # the worker that claimed it last
    lease_until: float | None = None  # epoch s (running jobs)
    priority: int = 0
    timeout_s: float | None = None
    model: str | None = None  # the checkpoint it needs (None: any)
    client: dict[str, Any] = field(default_factory=dict)  # the submitting dialect's notes (audio format)
    callback_url: str | None = None  # webhook (songflow.interfaces.server.webhooks)
    callback_state: str | None = None
    callback_attempts: int = 0

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


def row_to_job(row: RowLike) -> Job:
    """A :class:`Job` from a row of either backend (``sqlite3.Row`` or a dict)."""
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
        worker_id=row["worker_id"],
        lease_until=row["lease_until"],
        priority=row["priority"] or 0,
        timeout_s=row["timeout_s"],
        model=row["model"],
        client=json.loads(row["client"]) if row["client"] else {},
        callback_url=row["callback_url"],
        callback_state=row["callback_state"],
        callback_attempts=row["callback_attempts"] or 0,
    )


def summary_of(row: RowLike) -> dict[str, Any]:
    """One ``GET /v1/jobs`` item from a summary row (its ``outputs`` counted, not listed)."""
    item = {k: row[k] for k in row.keys() if k != "outputs"}
    item["progress"] = round(item["progress"], 4)
    item["n_outputs"] = len(json.loads(row["outputs"])) if row["outputs"] else 0
    return item


@dataclass(frozen=True)
class JobOptions:
    """How a job is queued (besides its request): ``priority`` (higher runs first), ``timeout_s`` (a run
    longer than this fails; None: no limit), ``model`` (only a worker holding this checkpoint runs it;
    None: any), ``client`` (what the submitting API dialect needs back, e.g. the 1.5 ``audio_format``),
    ``callback_url`` (the webhook told when the job ends). A ConfigError for what cannot be stored."""

    priority: int = 0
    timeout_s: float | None = None
    model: str | None = None
    client: dict[str, Any] = field(default_factory=dict)
    callback_url: str | None = None

    #: the jobs columns the options fill, in :meth:`values` order
    COLUMNS: ClassVar[tuple[str, ...]] = ("priority", "timeout_s", "model", "client", "callback_url")

    def __post_init__(self) -> None:
        p, t, m = self.priority, self.timeout_s, self.model
        if isinstance(p, bool) or not isinstance(p, int):
            raise ConfigError(f"priority must be an integer, got {p!r}")
        if t is not None and not (isinstance(t, int | float) and t > 0):
            raise ConfigError(f"timeout_s must be a positive number of seconds, got {t!r}")
        if m is not None and not (isinstance(m, str) and m.strip()):
            raise ConfigError(f"model must be a checkpoint name, got {m!r}")

    def values(self) -> tuple[Any, ...]:
        return (self.priority, self.timeout_s, self.model, json.dumps(self.client), self.callback_url)


def insert_values(
    job_id: str,
    request: dict[str, Any],
    uploads: Sequence[str],
    upload_names: dict[str, str] | None,
    options: JobOptions,
) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """The columns and values of a new queued job's row (``created_at`` and ``state`` are the store's)."""
    columns = ("id", "request", "uploads", "upload_names", *JobOptions.COLUMNS)
    values = (job_id, json.dumps(request), json.dumps(list(uploads)), json.dumps(upload_names or {}))
    return columns, values + options.values()


def encode_field(name: str, value: Any) -> Any:
    """A ``finish`` field as stored: numbers and strings as they are, anything else as JSON."""
    if name not in FIELD_COLUMNS:
        raise ValueError(f"finish() cannot set column {name!r}")
    return value if isinstance(value, str | int | float) or value is None else json.dumps(value)


def head_key(
    head: RowLike, max_jobs: int, key_of: Callable[[dict[str, Any]], Hashable | None] | None
) -> Hashable | None:
    """The batch key of the job claimed first (None: it runs alone)."""
    if key_of is None or max_jobs <= 1:
        return None
    return key_of(json.loads(head["request"]))


def pick_mates(
    head: RowLike,
    key: Hashable,
    later: Iterable[RowLike],
    max_jobs: int,
    max_rows: int,
    key_of: Callable[[dict[str, Any]], Hashable | None],
) -> builtins.list[RowLike]:
    """The rows of ``later`` (claim order) that join ``head``'s batch: the same ``key``, at most
    ``max_jobs - 1`` of them, the total ``batch_size`` within ``max_rows``."""
    rows = _rows_of(json.loads(head["request"]))
    mates: builtins.list[RowLike] = []
    for row in later:
        if len(mates) + 1 >= max_jobs:
            break
        request = json.loads(row["request"])
        n = _rows_of(request)
        if rows + n <= max_rows and key_of(request) == key:
            mates.append(row)
            rows += n
    return mates


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


Models = Collection[str] | None
KeyFn = Callable[[dict[str, Any]], Hashable | None]


class JobStoreProtocol(Protocol):
    """What the worker, the routes and retention use of a job store: :class:`JobStore` (SQLite, one
    machine) or :class:`~songflow.interfaces.server.store_pg.PostgresJobStore` (one queue, many machines).
    Every method is thread-safe; both return the same :class:`Job` objects."""

    def close(self) -> None: ...

    def requeue_interrupted(self, max_attempts: int | None = None) -> int: ...

    def requeue_expired(self, max_attempts: int | None = None) -> int: ...

    def expire_timeouts(self) -> builtins.list[str]: ...

    def add(
        self,
        request: dict[str, Any],
        uploads: builtins.list[str],
        max_queued: int,
        upload_names: dict[str, str] | None = None,
        options: JobOptions | None = None,
    ) -> Job | None: ...

    def get(self, job_id: str) -> Job | None: ...

    def list(self, state: str | None = None, limit: int = 100) -> builtins.list[Job]: ...

    def summaries(self, state: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]: ...

    def delete(self, job_id: str) -> Job | None: ...

    def finished_before(self, when: float) -> builtins.list[str]: ...

    def referenced_uploads(self) -> set[str]: ...

    def ids(self) -> set[str]: ...

    def mean_run_s(self, last: int = 20) -> float | None: ...

    def count(self, state: str) -> int: ...

    def claim_next(self) -> Job | None: ...

    def claim_batch(
        self,
        max_jobs: int,
        max_rows: int = MAX_BATCH,
        key_of: KeyFn | None = None,
        *,
        worker_id: str | None = None,
        lease_s: float | None = None,
        models: Models = None,
    ) -> builtins.list[Job]: ...

    def heartbeat(self, worker_id: str, job_ids: Iterable[str], lease_s: float) -> set[str]: ...

    def set_progress(self, job_id: str, progress: float, worker_id: str | None = None) -> None: ...

    def finish(self, job_id: str, state: str, worker_id: str | None = None, **fields: Any) -> bool: ...

    def cancel(self, job_id: str) -> str | None: ...

    def claim_callbacks(self, limit: int = 16, lease_s: float = 60.0) -> builtins.list[Job]: ...

    def record_callback(self, job_id: str, ok: bool, attempts: int, retry_at: float | None) -> None: ...

    def touch_worker(
        self, worker_id: str, models: Sequence[str] | None, running: Sequence[str], ttl_s: float
    ) -> None: ...

    def drop_worker(self, worker_id: str) -> None: ...

    def live_workers(self) -> builtins.list[dict[str, Any]]: ...


def redact_dsn(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)


def parse_database(database: str | None, data_dir: Path) -> tuple[str, str | Path]:
    """``("postgresql", url)`` or ``("sqlite", path)`` of a ``--database`` value (see :func:`open_store`),
    checked without connecting: a ConfigError for another form, ``sqlite:///`` without a path, or a
    postgresql:// URL without psycopg installed."""
    url = (database or "").strip()
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"a postgresql:// database needs psycopg 3 ({exc}); install it with "
                "pip install 'songflow[postgres]'"
            ) from None
        return "postgresql", url
    if url and not url.startswith("sqlite:///"):
        raise ConfigError(
            f"unknown database {redact_dsn(url)!r}: use sqlite:///PATH (a SQLite file) or "
            "postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DBNAME (a queue shared by many machines)"
        )
    if url and not url[len("sqlite:///") :]:
        raise ConfigError("sqlite:/// needs a file path, e.g. sqlite:///jobs.sqlite3")
    return "sqlite", Path(url[len("sqlite:///") :]) if url else data_dir / "jobs.sqlite3"


def open_store(database: str | None, data_dir: Path) -> JobStoreProtocol:
    """The job store ``database`` names: None (or empty) is ``data_dir/jobs.sqlite3``; ``sqlite:///PATH``
    a SQLite file (SQLAlchemy's form: ``sqlite:///jobs.db`` is relative to the working directory,
    ``sqlite:////abs/jobs.db`` absolute); ``postgresql://...`` or ``postgres://...`` a PostgreSQL database
    (libpq's URI, e.g. ``postgresql://user:pass@host:5432/songflow``) that many machines share.

    Raises:
        ConfigError: another form (:func:`parse_database`), an unusable SQLite file, a PostgreSQL server
            that cannot be reached, or psycopg missing.
    """
    kind, where = parse_database(database, data_dir)
    if kind == "postgresql":
        from songflow.interfaces.server.store_pg import PostgresJobStore

        return PostgresJobStore(str(where))
    try:
        return JobStore(Path(where))
    except (sqlite3.Error, OSError) as exc:
        raise ConfigError(f"cannot open the job database {where}: {exc}") from None


def _models_sql(models: Models) -> tuple[str, tuple[Any, ...]]:
    """The SQLite condition on ``model`` for a worker holding ``models`` (None: any job)."""
    if models is None:
        return "", ()
    names = tuple(models)
    marks = ", ".join("?" * len(names))
    return (f" AND (model IS NULL OR model IN ({marks}))" if names else " AND model IS NULL"), names


class JobStore:
    """SQLite-backed job table; every method is thread-safe (one connection behind a lock). Several
    processes of one machine may share the file (claims are serialised by ``BEGIN IMMEDIATE``)."""

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
            self._db.execute(_CLAIM_INDEX)
            self._db.execute(_WORKERS_TABLE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _all(self, sql: str, args: tuple = ()) -> builtins.list[sqlite3.Row]:
        """Every row of ``sql`` (read under the lock: a ``RETURNING`` statement ends when it is read)."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def requeue_interrupted(self, max_attempts: int | None = None) -> int:
        """Re-queue the jobs a stopped process left running; one that has already been started
        ``max_attempts`` times fails instead (it may be what crashed the process). The count re-queued.
        For one process at start-up only: it re-queues running jobs whatever their lease."""
        if max_attempts is not None:
            self._exec(
                "UPDATE jobs SET state='failed', finished_at=?, error=?, lease_until=NULL "
                "WHERE state='running' AND COALESCE(attempts, 0) >= ?",
                (time.time(), interrupted_error(max_attempts), max_attempts),
            )
        cur = self._exec(
            "UPDATE jobs SET state='queued', progress=0, started_at=NULL, batch_jobs=NULL, "
            "worker_id=NULL, lease_until=NULL WHERE state='running'"
        )
        return cur.rowcount

    def requeue_expired(self, max_attempts: int | None = None) -> int:
        """Re-queue the running jobs whose lease ran out (their worker died or hung); one started
        ``max_attempts`` times fails instead (:func:`interrupted_error`). The count re-queued."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if max_attempts is not None:
                    self._db.execute(
                        "UPDATE jobs SET state='failed', finished_at=?, error=?, lease_until=NULL "
                        "WHERE state='running' AND lease_until < ? AND COALESCE(attempts, 0) >= ?",
                        (now, interrupted_error(max_attempts), now, max_attempts),
                    )
                cur = self._db.execute(
                    "UPDATE jobs SET state='queued', progress=0, started_at=NULL, batch_jobs=NULL, "
                    "worker_id=NULL, lease_until=NULL WHERE state='running' AND lease_until < ?",
                    (now,),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return cur.rowcount

    def expire_timeouts(self) -> builtins.list[str]:
        """Fail the running jobs that ran past their ``timeout_s`` (:func:`timeout_error`); their ids
        (their workers stop them: they no longer own them)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT id, timeout_s FROM jobs WHERE state='running' AND timeout_s IS NOT NULL "
                    "AND started_at + timeout_s < ?",
                    (now,),
                ).fetchall()
                for row in rows:
                    self._db.execute(
                        "UPDATE jobs SET state='failed', finished_at=?, error=?, lease_until=NULL "
                        "WHERE id=? AND state='running'",
                        (now, timeout_error(row["timeout_s"]), row["id"]),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [row["id"] for row in rows]

    def add(
        self,
        request: dict[str, Any],
        uploads: builtins.list[str],
        max_queued: int,
        upload_names: dict[str, str] | None = None,
        options: JobOptions | None = None,
    ) -> Job | None:
        """Insert a queued job (queued as ``options`` say), or return None when ``max_queued`` jobs are
        already queued."""
        job_id, now = uuid.uuid4().hex, time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (n,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()
                if n >= max_queued:
                    self._db.execute("ROLLBACK")
                    return None
                columns, values = insert_values(
                    job_id, request, uploads, upload_names, options or JobOptions()
                )
                self._db.execute(
                    f"INSERT INTO jobs ({', '.join(columns)}, state, created_at, attempts) "
                    f"VALUES ({', '.join('?' * len(columns))}, 'queued', ?, 0)",
                    (*values, now),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        rows = self._all("SELECT * FROM jobs WHERE id=?", (job_id,))
        return row_to_job(rows[0]) if rows else None

    def list(self, state: str | None = None, limit: int = 100) -> builtins.list[Job]:
        if state is None:
            rows = self._all("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            rows = self._all("SELECT * FROM jobs WHERE state=? ORDER BY seq DESC LIMIT ?", (state, limit))
        return [row_to_job(r) for r in rows]

    def summaries(self, state: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Newest-first job summaries (no request): what ``GET /v1/jobs`` lists."""
        where, args = ("", (limit,)) if state is None else ("WHERE state=? ", (state, limit))
        rows = self._all(f"SELECT {_SUMMARY_COLUMNS} FROM jobs {where}ORDER BY seq DESC LIMIT ?", args)
        return [summary_of(row) for row in rows]

    def delete(self, job_id: str) -> Job | None:
        """Remove a finished job's row; returns it (None if there is none or it is not finished)."""
        rows = self._all(
            "DELETE FROM jobs WHERE id=? AND state IN ('done', 'failed', 'cancelled') RETURNING *", (job_id,)
        )
        return row_to_job(rows[0]) if rows else None

    def finished_before(self, when: float) -> builtins.list[str]:
        """Ids of the finished jobs that reached their final state before ``when``, oldest first."""
        rows = self._all(
            "SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished_at < ? "
            "ORDER BY finished_at",
            (when,),
        )
        return [row["id"] for row in rows]

    def referenced_uploads(self) -> set[str]:
        """The upload paths some stored job still refers to."""
        rows = self._all("SELECT uploads FROM jobs WHERE uploads IS NOT NULL")
        return {path for row in rows for path in json.loads(row["uploads"])}

    def ids(self) -> set[str]:
        return {row["id"] for row in self._all("SELECT id FROM jobs")}

    def mean_run_s(self, last: int = 20) -> float | None:
        """Mean wall time (start to finish) of the last ``last`` finished jobs, or None if none ran."""
        (row,) = self._all(
            "SELECT AVG(finished_at - started_at) FROM (SELECT finished_at, started_at FROM jobs "
            "WHERE state='done' AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?)",
            (last,),
        )
        return None if row[0] is None else float(row[0])

    def count(self, state: str) -> int:
        return self._all("SELECT COUNT(*) FROM jobs WHERE state=?", (state,))[0][0]

    def claim_next(self) -> Job | None:
        """Mark the oldest queued job running and return it (None when the queue is empty)."""
        jobs = self.claim_batch(1)
        return jobs[0] if jobs else None

    def claim_batch(
        self,
        max_jobs: int,
        max_rows: int = MAX_BATCH,
        key_of: KeyFn | None = None,
        *,
        worker_id: str | None = None,
        lease_s: float | None = None,
        models: Models = None,
    ) -> builtins.list[Job]:
        """Mark the first queued job (highest ``priority``, then oldest) running, with up to
        ``max_jobs - 1`` later queued jobs of the same ``model`` whose ``key_of(request)`` equals its key
        (None: never batched), keeping the total of their ``batch_size`` within ``max_rows``; return them
        in claim order ([] when the queue is empty). ``worker_id`` owns them, for ``lease_s`` seconds
        (None: no lease; :meth:`requeue_interrupted` alone re-queues them); ``models``: only jobs whose
        model is None or one of these (None: any job)."""
        model_sql, model_args = _models_sql(models)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                head = self._db.execute(
                    f"SELECT * FROM jobs WHERE state='queued'{model_sql} ORDER BY priority DESC, seq LIMIT 1",
                    model_args,
                ).fetchone()
                chosen = [head] if head is not None else []
                key = head_key(head, max_jobs, key_of) if head is not None else None
                if key is not None and key_of is not None:
                    later = self._db.execute(
                        f"SELECT * FROM jobs WHERE state='queued' AND id<>? AND model IS ?{model_sql} "
                        "ORDER BY priority DESC, seq LIMIT ?",
                        (head["id"], head["model"], *model_args, BATCH_SCAN),
                    ).fetchall()
                    chosen += pick_mates(head, key, later, max_jobs, max_rows, key_of)
                now = time.time()
                claimed = [
                    self._db.execute(
                        "UPDATE jobs SET state='running', progress=0, started_at=?, batch_jobs=?, attempts="
                        "COALESCE(attempts, 0) + 1, worker_id=?, lease_until=? WHERE id=? RETURNING *",
                        (now, len(chosen), worker_id, None if lease_s is None else now + lease_s, row["id"]),
                    ).fetchone()
                    for row in chosen
                ]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [row_to_job(row) for row in claimed]

    def heartbeat(self, worker_id: str, job_ids: Iterable[str], lease_s: float) -> set[str]:
        """Extend by ``lease_s`` the leases ``worker_id`` still holds on ``job_ids``; the ids it still
        owns (a job cancelled, timed out or re-queued meanwhile is not among them)."""
        ids = sorted(set(job_ids))
        if not ids:
            return set()
        marks = ", ".join("?" * len(ids))
        rows = self._all(
            f"UPDATE jobs SET lease_until=? WHERE state='running' AND worker_id=? AND id IN ({marks}) "
            "RETURNING id",
            (time.time() + lease_s, worker_id, *ids),
        )
        return {row["id"] for row in rows}

    def set_progress(self, job_id: str, progress: float, worker_id: str | None = None) -> None:
        owner, args = (" AND worker_id=?", (worker_id,)) if worker_id is not None else ("", ())
        self._exec(
            f"UPDATE jobs SET progress=? WHERE id=? AND state='running'{owner}", (progress, job_id, *args)
        )

    def finish(self, job_id: str, state: str, worker_id: str | None = None, **fields: Any) -> bool:
        """Move a running job to a final state (or back to queued: its lease is dropped); False if it is
        no longer running, or (with ``worker_id``) no longer owned by that worker: a worker that lost
        its lease never records a result."""
        sets = ["state=?"]
        args: builtins.list[Any] = [state]
        if state in FINISHED_STATES:
            sets.append("finished_at=?")
            args.append(time.time())
        if state == "queued":
            sets += ["worker_id=NULL", "lease_until=NULL"]
        for name, value in fields.items():
            sets.append(f"{name}=?")
            args.append(encode_field(name, value))
        where = "id=? AND state='running'" + (" AND worker_id=?" if worker_id is not None else "")
        owner = (worker_id,) if worker_id is not None else ()
        cur = self._exec(f"UPDATE jobs SET {', '.join(sets)} WHERE {where}", (*args, job_id, *owner))
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

    # -- webhooks (songflow.interfaces.server.webhooks) ---------------------------------------------

    def claim_callbacks(self, limit: int = 16, lease_s: float = 60.0) -> builtins.list[Job]:
        """Finished jobs whose callback is due (never tried, or a retry whose time came), taken for
        ``lease_s`` (another process skips them meanwhile; a crashed deliverer's claim runs out)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    f"SELECT * FROM jobs WHERE {CALLBACK_DUE} ORDER BY finished_at LIMIT ?", (now, limit)
                ).fetchall()
                self._db.executemany(
                    "UPDATE jobs SET callback_state='pending', callback_at=? WHERE id=?",
                    [(now + lease_s, row["id"]) for row in rows],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [row_to_job(r) for r in rows]

    def record_callback(self, job_id: str, ok: bool, attempts: int, retry_at: float | None) -> None:
        """A delivery's outcome: delivered, retried at ``retry_at``, or (None and not ok) given up."""
        self._exec(
            "UPDATE jobs SET callback_state=?, callback_attempts=?, callback_at=? WHERE id=?",
            (callback_state(ok, retry_at), attempts, retry_at, job_id),
        )

    # -- the workers that serve this queue -----------------------------------------------------------

    def touch_worker(
        self, worker_id: str, models: Sequence[str] | None, running: Sequence[str], ttl_s: float
    ) -> None:
        """Record that ``worker_id`` (holding ``models``; None: any) is alive for ``ttl_s`` more seconds
        and runs ``running``; rows of workers gone for a day are removed on the way."""
        now = time.time()
        self._exec("DELETE FROM workers WHERE expires_at < ?", (now - WORKER_GONE_S,))
        self._exec(
            "INSERT INTO workers (worker_id, models, running, started_at, last_seen, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(worker_id) DO UPDATE SET models=excluded.models, "
            "running=excluded.running, last_seen=excluded.last_seen, expires_at=excluded.expires_at",
            (worker_id, json.dumps(None if models is None else list(models)), json.dumps(list(running)),
             now, now, now + ttl_s),
        )  # fmt: skip

    def drop_worker(self, worker_id: str) -> None:
        self._exec("DELETE FROM workers WHERE worker_id=?", (worker_id,))

    def live_workers(self) -> builtins.list[dict[str, Any]]:
        """The workers whose last heartbeat has not expired, oldest first (a read: ``/health`` asks)."""
        rows = self._exec(
            "SELECT * FROM workers WHERE expires_at >= ? ORDER BY started_at", (time.time(),)
        ).fetchall()
        return [worker_row(r) for r in rows]


#: the WHERE clause of a due callback (one parameter: now)
CALLBACK_DUE = (
    "state IN ('done', 'failed', 'cancelled') AND callback_url IS NOT NULL AND (callback_state IS NULL "
    "OR (callback_state = 'pending' AND callback_at <= ?))"
)


_WORKERS_TABLE = (
    "CREATE TABLE IF NOT EXISTS workers (worker_id TEXT PRIMARY KEY, models TEXT, running TEXT, "
    "started_at REAL NOT NULL, last_seen REAL NOT NULL, expires_at REAL NOT NULL)"
)
WORKER_GONE_S = 86400.0  # a worker row this long past its expiry is removed


def worker_row(row: RowLike) -> dict[str, Any]:
    """A ``GET /v1/workers`` item from a workers row."""
    return {
        "worker_id": row["worker_id"],
        "models": json.loads(row["models"]) if row["models"] else None,
        "running": json.loads(row["running"]) if row["running"] else [],
        "started_at": row["started_at"],
        "last_seen": row["last_seen"],
    }


def callback_state(ok: bool, retry_at: float | None) -> str:
    return "delivered" if ok else "pending" if retry_at is not None else "failed"


class Worker:
    """The one thread that owns the pipeline and runs queued jobs, oldest first (``max_batch`` > 1:
    compatible queued jobs together, see the module docstring), and its heartbeat thread (leases,
    expired leases and timeouts of the whole queue)."""

    def __init__(
        self,
        pipeline,
        store: JobStoreProtocol,
        outputs_dir: Path,
        runtime: dict[str, Any],
        *,
        max_batch: int = 1,
        sweep: Callable[[], Any] | None = None,
        sweep_every_s: float = 60.0,
        family: Any = None,
        loras: Any = None,
        lease_s: float = DEFAULT_LEASE_S,
        max_attempts: int | None = 3,
        models: Collection[str] | None = None,
        worker_id: str | None = None,
    ):
        """``family``: the pipeline's model family; its request schema reads the stored requests and
        writes the resolved ones (None: ACE-Step v1's). ``loras``: the server's
        :class:`~songflow.interfaces.server.loras.LoraLibrary`; sidecars and errors name its adapters.
        ``lease_s``: how long a claimed job stays this worker's without a heartbeat (one every
        ``lease_s / 3``); ``max_attempts``: a job whose lease ran out this often fails; ``models``: the
        checkpoints this worker holds (it claims only jobs for one of them or for none; None: any job);
        ``worker_id``: its name in the store (default :func:`default_worker_id`)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not lease_s > 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
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
        self._cancelled: set[str] = set()  # cancelled, timed out or lost: their results are dropped
        self._thread: threading.Thread | None = None
        self._beats: threading.Thread | None = None
        self.current: tuple[str, ...] = ()  # ids of the job(s) running now
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.models = None if models is None else tuple(models)
        self.worker_id = worker_id or default_worker_id()

    # -- control -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="songflow-worker", daemon=True)
        self._beats = threading.Thread(target=self._beat_loop, name="songflow-heartbeat", daemon=True)
        self.beat()  # advertise this worker (and sweep) before the first claim
        self._thread.start()
        self._beats.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._resumed.set()
        for thread in (self._thread, self._beats):
            if thread is not None:
                thread.join(timeout)
        if self._thread is not None:
            try:
                self.store.drop_worker(self.worker_id)
            except Exception:  # the store may be gone already; the row expires by itself
                log.debug("could not remove worker %s from the store", self.worker_id)
        self._thread = self._beats = None

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
                jobs = self.store.claim_batch(
                    self.max_batch,
                    MAX_BATCH,
                    self._batch_key,
                    worker_id=self.worker_id,
                    lease_s=self.lease_s,
                    models=self.models,
                )
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
                with self._cancel_lock:
                    self.current = ()
                    self._cancelled.difference_update(job.id for job in jobs)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            self.beat()

    def beat(self) -> None:
        """One heartbeat: extend the leases of the running jobs (a job this worker no longer owns is
        dropped from its run), re-queue the jobs whose lease ran out (their worker died) and fail the
        jobs past their timeout. Errors are logged (the store may be briefly unreachable)."""
        try:
            running = self.current
            self.store.touch_worker(self.worker_id, self.models, running, self.lease_s)
            if running:
                owned = self.store.heartbeat(self.worker_id, running, self.lease_s)
                self._drop(set(running) - owned, "is no longer this worker's (cancelled or lease lost)")
            n = self.store.requeue_expired(self.max_attempts)
            if n:
                log.info("re-queued %d job(s) whose worker stopped sending heartbeats", n)
            self._drop(set(self.store.expire_timeouts()), "timed out")
        except Exception:
            log.exception("the heartbeat failed")

    def _drop(self, job_ids: set[str], why: str) -> None:
        """Stop running ``job_ids`` (those this worker runs now) without recording a result."""
        with self._cancel_lock:
            for job_id in job_ids:
                if job_id in self.current and job_id not in self._cancelled:
                    self._cancelled.add(job_id)
                    log.info("job %s %s; its run is dropped", job_id, why)

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
                    self.store.set_progress(job_id, min(1.0, step / max(total, 1)), self.worker_id)

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
                    self.store.finish(job.id, "running", self.worker_id, batch_jobs=1)  # it now runs alone
                    self._run(job)
            return
        for job, result in zip(jobs, results, strict=True):
            if self._is_cancelled(job.id):
                log.info("job %s cancelled", job.id)
                continue
            self._deliver(job, result)

    def _requeue(self, job: Job) -> None:
        """Back to the queue after a graceful stop; that run does not count as an attempt."""
        attempts = max(0, job.attempts - 1)
        self.store.finish(
            job.id,
            "queued",
            self.worker_id,
            progress=0.0,
            started_at=None,
            batch_jobs=None,
            attempts=attempts,
        )

    def _record_failure(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, SongflowError):
            names = {**job.upload_names, **(self.loras.scrub_names() if self.loras is not None else {})}
            message = scrub(str(exc), names, self.outputs_dir.parent)
            self.store.finish(job.id, "failed", self.worker_id, error=message)
            log.info("job %s failed: %s", job.id, exc)
        else:
            log.error("job %s failed with an internal error", job.id, exc_info=exc)
            self.store.finish(job.id, "failed", self.worker_id, error="internal error")

    def _deliver(self, job: Job, result) -> None:
        """Write a run's audio and sidecar into a folder of this worker's, then, if the job is still
        this worker's, move it to ``outputs/<id>`` and record the job done; a job that was cancelled,
        timed out or re-queued meanwhile gets nothing (exactly once: see the module docstring)."""
        staging = self.outputs_dir / f".{job.id}.{self.worker_id}.partial"
        try:
            outputs = self._write_outputs(job.id, result, staging)
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self._record_failure(job, exc)
            return
        # the check extends the lease, so no other worker can take the job before it is recorded
        if job.id not in self.store.heartbeat(self.worker_id, [job.id], self.lease_s):
            shutil.rmtree(staging, ignore_errors=True)
            log.info("job %s is no longer this worker's; its result is dropped", job.id)
            return
        try:
            _publish(staging, self.outputs_dir / job.id)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self._record_failure(job, exc)
            return
        timings = {k: round(v, 4) for k, v in result.timings_s.items()}
        done = self.store.finish(
            job.id,
            "done",
            self.worker_id,
            progress=1.0,
            resolved=self.schema.to_dict(result.request),
            timings=timings,
            outputs=outputs,
        )
        if not done:
            log.warning("job %s changed state while its outputs were moved into place", job.id)
        else:
            log.info("job %s done by %s", job.id, self.worker_id)

    def _run(self, job: Job) -> None:
        try:
            request = self.schema.from_dict(job.request)
            result = self.pipeline.generate(request, progress=self._progress_fn([job.id]))
            if self._is_cancelled(job.id):
                raise Cancelled()
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
        self._deliver(job, result)

    def _is_cancelled(self, job_id: str) -> bool:
        """True once the job was cancelled (or deleted) while it ran."""
        with self._cancel_lock:
            if job_id in self._cancelled:
                return True
        job = self.store.get(job_id)
        return job is None or job.state == "cancelled"

    def _write_outputs(self, job_id: str, result, folder: Path | None = None) -> list[str]:
        """Write ``result``'s audio and sidecar into ``folder`` (default ``outputs/<job_id>``)."""
        from songflow.audio.io import save_audio
        from songflow.interfaces.sidecar import output_labels, pipeline_weight_hashes, write_sidecar

        folder = self.outputs_dir / job_id if folder is None else folder
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


def _publish(staging: Path, final: Path) -> None:
    """Move a finished run's folder to ``final``, replacing what an abandoned earlier run left there."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.{secrets.token_hex(4)}.old")
        final.rename(old)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _stored_batch_key(request: dict[str, Any], schema: RequestSchema = V1_SCHEMA) -> Hashable | None:
    """``batch_key`` of a stored request of ``schema`` (None for one that no longer parses: it runs
    alone and fails; always None outside v1, whose pipeline alone batches requests)."""
    if schema.name != V1_SCHEMA.name:
        return None
    try:
        return batch_key(schema.from_dict(request))
    except SongflowError:
        return None
