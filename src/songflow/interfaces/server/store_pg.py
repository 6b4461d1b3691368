"""The job store on PostgreSQL (psycopg 3): one queue shared by API processes and workers on many machines.

Same methods, semantics and :class:`~songflow.interfaces.server.jobs.Job` objects as the SQLite
:class:`~songflow.interfaces.server.jobs.JobStore` (both follow
:class:`~songflow.interfaces.server.jobs.JobStoreProtocol`); what differs is how concurrency is made safe:

- the table (``songflow_jobs``) and its indexes are created on open, idempotently, under a transaction-level
  advisory lock, so several processes may open a new database at once;
- ``add`` takes another advisory lock for the queue-length check and the insert, so concurrent API
  processes never admit more than ``max_queued`` jobs;
- ``claim_batch`` locks the first queued job with ``SELECT ... FOR UPDATE SKIP LOCKED`` (highest priority,
  then oldest), then locks its batch-mates the same way: concurrent claimers never wait on each other and
  never claim one job twice. A claim always carries a lease (``DEFAULT_LEASE_S`` when none is named);
- the sweeps (``requeue_expired``, ``expire_timeouts``) skip rows other transactions hold, and
  ``heartbeat`` locks its rows in id order, so the sweeps of many workers cannot deadlock;
- every timestamp is the database's clock (``now()``), so leases do not depend on the machines' clocks.
  Times are ``DOUBLE PRECISION`` epoch seconds (PostgreSQL's ``REAL`` is single precision).

``requeue_interrupted`` (the API's start-up call) re-queues only jobs whose lease ran out: other
processes' workers may be running the rest. Connections come from a small pool shared by the threads.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from songflow.errors import ConfigError
from songflow.interfaces.server.jobs import (
    BATCH_SCAN,
    CALLBACK_DUE,
    DEFAULT_LEASE_S,
    FINISHED_STATES,
    WORKER_GONE_S,
    Job,
    JobOptions,
    KeyFn,
    Models,
    callback_state,
    encode_field,
    head_key,
    insert_values,
    interrupted_error,
    pick_mates,
    redact_dsn,
    row_to_job,
    summary_of,
    timeout_error,
    worker_row,
)
from songflow.requests import MAX_BATCH

TABLE = "songflow_jobs"
WORKERS = "songflow_workers"
_NOW = "extract(epoch from now())"  # the transaction's start, on the database's clock
_DDL_LOCK = 0x736F6E67666C01  # pg_advisory_xact_lock keys (per database): schema changes
_ADMIT_LOCK = 0x736F6E67666C02  # the queue-length check of add()
_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    request TEXT NOT NULL,
    resolved TEXT,
    error TEXT,
    timings TEXT,
    outputs TEXT,
    uploads TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    batch_jobs INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    upload_names TEXT,
    worker_id TEXT,
    lease_until DOUBLE PRECISION,
    priority INTEGER NOT NULL DEFAULT 0,
    timeout_s DOUBLE PRECISION,
    model TEXT,
    client TEXT,
    callback_url TEXT,
    callback_state TEXT,
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    callback_at DOUBLE PRECISION
)""",
    # columns added after the table's first version (a database made by it gets them on open)
    *(
        f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {column}"
        for column in (
            "client TEXT",
            "callback_url TEXT",
            "callback_state TEXT",
            "callback_attempts INTEGER NOT NULL DEFAULT 0",
            "callback_at DOUBLE PRECISION",
        )
    ),  # fmt: skip
    f"CREATE TABLE IF NOT EXISTS {WORKERS} (worker_id TEXT PRIMARY KEY, models TEXT, running TEXT, "
    "started_at DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL, "
    "expires_at DOUBLE PRECISION NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_claim ON {TABLE} (state, priority DESC, seq)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_lease ON {TABLE} (lease_until) WHERE state = 'running'",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_finished ON {TABLE} (finished_at) "
    "WHERE state IN ('done', 'failed', 'cancelled')",
)
_SUMMARY_COLUMNS = (
    "id, state, progress, error, outputs, batch_jobs, created_at, started_at, finished_at, "
    "(request::jsonb ->> 'task') AS task"
)
_FINISHED = "('done', 'failed', 'cancelled')"
_REQUEUE_SET = (
    "state='queued', progress=0, started_at=NULL, batch_jobs=NULL, worker_id=NULL, lease_until=NULL"
)


def _describe(dsn: str) -> str:
    """The database a DSN names, for messages (never its password)."""
    try:
        parts = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return redact_dsn(dsn)
    where = ", ".join(f"{k}={parts[k]}" for k in ("dbname", "host", "port", "user") if parts.get(k))
    return where or redact_dsn(dsn)


def _connect(dsn: str) -> psycopg.Connection[dict[str, Any]]:
    try:
        return psycopg.connect(
            dsn, autocommit=True, row_factory=dict_row, connect_timeout=10, application_name="songflow"
        )
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot connect to the job database ({_describe(dsn)}): {first}") from None


class _Pool:
    """Up to ``size`` connections shared by a process's threads; a call borrows one, waiting while all
    are in use. A connection that broke is dropped and a new one made on the next call."""

    def __init__(self, dsn: str, size: int):
        self._dsn, self._size = dsn, size
        self._idle: list[psycopg.Connection[dict[str, Any]]] = []
        self._open = 0
        self._closed = False
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        conn = self._take()
        try:
            yield conn
        finally:
            self._give(conn)

    def _take(self) -> psycopg.Connection[dict[str, Any]]:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the job store is closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self._size:
                    self._open += 1
                    break
                self._cond.wait()
        try:
            return _connect(self._dsn)
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _give(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        usable = not conn.closed and not conn.broken
        if usable and conn.info.transaction_status != TransactionStatus.IDLE:
            try:
                conn.rollback()
            except psycopg.Error:
                usable = False
        with self._cond:
            keep = usable and not self._closed
            if keep:
                self._idle.append(conn)
            else:
                self._open -= 1
            self._cond.notify()
        if not keep:
            conn.close()

    def close(self) -> None:
        with self._cond:
            self._closed, idle, self._idle = True, self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.close()


def _models_sql(models: Models) -> tuple[str, tuple[Any, ...]]:
    """The condition on ``model`` for a worker holding ``models`` (None: any job)."""
    if models is None:
        return "", ()
    return " AND (model IS NULL OR model = ANY(%s))", (list(models),)


class PostgresJobStore:
    """The job table in a PostgreSQL database (``dsn``: a libpq URI or ``key=value`` string); every
    method is thread-safe (``pool_size`` connections at most). See the module docstring."""

    def __init__(self, dsn: str, pool_size: int = 8):
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.dsn = dsn
        self._pool = _Pool(dsn, pool_size)
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                for statement in _SCHEMA:
                    conn.execute(statement)
        except psycopg.Error as exc:
            self._pool.close()
            raise ConfigError(f"cannot set up the job table in {_describe(dsn)}: {exc}") from None
        except BaseException:
            self._pool.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresJobStore({_describe(self.dsn)})"

    def close(self) -> None:
        self._pool.close()

    def _all(self, sql: str, args: tuple = ()) -> builtins.list[dict[str, Any]]:
        with self._pool.connection() as conn:
            cur = conn.execute(sql, args)
            return cur.fetchall() if cur.description is not None else []

    def _rowcount(self, sql: str, args: tuple = ()) -> int:
        with self._pool.connection() as conn:
            return conn.execute(sql, args).rowcount

    # -- recovery ------------------------------------------------------------------------------------

    def requeue_interrupted(self, max_attempts: int | None = None) -> int:
        """At an API process's start-up: re-queue the jobs whose lease ran out (other processes' workers
        may still run the others), as :meth:`requeue_expired`."""
        return self.requeue_expired(max_attempts)

    def requeue_expired(self, max_attempts: int | None = None) -> int:
        """Re-queue the running jobs whose lease ran out (their worker died or hung); one started
        ``max_attempts`` times fails instead. The count re-queued."""
        expired = f"state='running' AND lease_until < {_NOW}"
        with self._pool.connection() as conn, conn.transaction():
            if max_attempts is not None:
                conn.execute(
                    f"UPDATE {TABLE} SET state='failed', finished_at={_NOW}, error=%s, lease_until=NULL "
                    f"WHERE id IN (SELECT id FROM {TABLE} WHERE {expired} AND attempts >= %s "
                    "FOR UPDATE SKIP LOCKED)",
                    (interrupted_error(max_attempts), max_attempts),
                )
            cur = conn.execute(
                f"UPDATE {TABLE} SET {_REQUEUE_SET} "
                f"WHERE id IN (SELECT id FROM {TABLE} WHERE {expired} FOR UPDATE SKIP LOCKED)"
            )
            return cur.rowcount

    def expire_timeouts(self) -> builtins.list[str]:
        """Fail the running jobs that ran past their ``timeout_s``; their ids."""
        with self._pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                f"SELECT id, timeout_s FROM {TABLE} WHERE state='running' AND timeout_s IS NOT NULL "
                f"AND started_at + timeout_s < {_NOW} FOR UPDATE SKIP LOCKED"
            ).fetchall()
            for row in rows:
                conn.execute(
                    f"UPDATE {TABLE} SET state='failed', finished_at={_NOW}, error=%s, lease_until=NULL "
                    "WHERE id=%s",
                    (timeout_error(row["timeout_s"]), row["id"]),
                )
        return [row["id"] for row in rows]

    # -- jobs ----------------------------------------------------------------------------------------

    def add(
        self,
        request: dict[str, Any],
        uploads: builtins.list[str],
        max_queued: int,
        upload_names: dict[str, str] | None = None,
        options: JobOptions | None = None,
    ) -> Job | None:
        """Insert a queued job, or return None when ``max_queued`` jobs are already queued (checked and
        inserted under one advisory lock: no over-admission across processes)."""
        columns, values = insert_values(
            uuid.uuid4().hex, request, uploads, upload_names, options or JobOptions()
        )
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADMIT_LOCK,))
            row = conn.execute(f"SELECT COUNT(*) AS n FROM {TABLE} WHERE state='queued'").fetchone()
            if row is not None and row["n"] >= max_queued:
                return None
            row = conn.execute(
                f"INSERT INTO {TABLE} ({', '.join(columns)}, state, created_at) "
                f"VALUES ({', '.join(['%s'] * len(columns))}, 'queued', {_NOW}) RETURNING *",
                values,
            ).fetchone()
        assert row is not None
        return row_to_job(row)

    def get(self, job_id: str) -> Job | None:
        rows = self._all(f"SELECT * FROM {TABLE} WHERE id=%s", (job_id,))
        return row_to_job(rows[0]) if rows else None

    def list(self, state: str | None = None, limit: int = 100) -> builtins.list[Job]:
        where, args = ("", (limit,)) if state is None else ("WHERE state=%s ", (state, limit))
        rows = self._all(f"SELECT * FROM {TABLE} {where}ORDER BY seq DESC LIMIT %s", args)
        return [row_to_job(r) for r in rows]

    def summaries(self, state: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Newest-first job summaries (no request): what ``GET /v1/jobs`` lists."""
        where, args = ("", (limit,)) if state is None else ("WHERE state=%s ", (state, limit))
        rows = self._all(f"SELECT {_SUMMARY_COLUMNS} FROM {TABLE} {where}ORDER BY seq DESC LIMIT %s", args)
        return [summary_of(row) for row in rows]

    def delete(self, job_id: str) -> Job | None:
        """Remove a finished job's row; returns it (None if there is none or it is not finished)."""
        rows = self._all(f"DELETE FROM {TABLE} WHERE id=%s AND state IN {_FINISHED} RETURNING *", (job_id,))
        return row_to_job(rows[0]) if rows else None

    def finished_before(self, when: float) -> builtins.list[str]:
        """Ids of the finished jobs that reached their final state before ``when``, oldest first."""
        rows = self._all(
            f"SELECT id FROM {TABLE} WHERE state IN {_FINISHED} AND finished_at < %s ORDER BY finished_at",
            (when,),
        )
        return [row["id"] for row in rows]

    def referenced_uploads(self) -> set[str]:
        """The upload paths some stored job still refers to."""
        rows = self._all(f"SELECT uploads FROM {TABLE} WHERE uploads IS NOT NULL")
        return {path for row in rows for path in json.loads(row["uploads"])}

    def ids(self) -> set[str]:
        return {row["id"] for row in self._all(f"SELECT id FROM {TABLE}")}

    def mean_run_s(self, last: int = 20) -> float | None:
        """Mean wall time (start to finish) of the last ``last`` finished jobs, or None if none ran."""
        (row,) = self._all(
            f"SELECT AVG(finished_at - started_at) AS mean FROM (SELECT finished_at, started_at FROM {TABLE} "
            "WHERE state='done' AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT %s) AS recent",
            (last,),
        )
        return None if row["mean"] is None else float(row["mean"])

    def count(self, state: str) -> int:
        return int(self._all(f"SELECT COUNT(*) AS n FROM {TABLE} WHERE state=%s", (state,))[0]["n"])

    # -- running -------------------------------------------------------------------------------------

    def claim_next(self) -> Job | None:
        """Mark the first queued job running and return it (None when the queue is empty)."""
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
        """As :meth:`JobStore.claim_batch`; the rows are taken with ``FOR UPDATE SKIP LOCKED``, so a
        job locked by another claimer is passed over, never claimed twice. The lease is ``lease_s``
        (``DEFAULT_LEASE_S`` when None)."""
        model_sql, model_args = _models_sql(models)
        with self._pool.connection() as conn, conn.transaction():
            head = conn.execute(
                f"SELECT * FROM {TABLE} WHERE state='queued'{model_sql} ORDER BY priority DESC, seq "
                "LIMIT 1 FOR UPDATE SKIP LOCKED",
                model_args,
            ).fetchone()
            if head is None:
                return []
            chosen = [head["id"]]
            key = head_key(head, max_jobs, key_of)
            if key is not None and key_of is not None:
                later = conn.execute(
                    f"SELECT id, request FROM {TABLE} WHERE state='queued' AND id <> %s "
                    f"AND model IS NOT DISTINCT FROM %s{model_sql} ORDER BY priority DESC, seq LIMIT %s",
                    (head["id"], head["model"], *model_args, BATCH_SCAN),
                ).fetchall()
                mates = [row["id"] for row in pick_mates(head, key, later, max_jobs, max_rows, key_of)]
                if mates:  # lock them; one another claimer took meanwhile is skipped
                    locked = conn.execute(
                        f"SELECT id FROM {TABLE} WHERE id = ANY(%s) AND state='queued' "
                        "FOR UPDATE SKIP LOCKED",
                        (mates,),
                    ).fetchall()
                    got = {row["id"] for row in locked}
                    chosen += [job_id for job_id in mates if job_id in got]
            rows = conn.execute(
                f"UPDATE {TABLE} SET state='running', progress=0, started_at={_NOW}, batch_jobs=%s, "
                f"attempts=attempts + 1, worker_id=%s, lease_until={_NOW} + %s "
                "WHERE id = ANY(%s) RETURNING *",
                (len(chosen), worker_id, DEFAULT_LEASE_S if lease_s is None else lease_s, chosen),
            ).fetchall()
        order = {job_id: i for i, job_id in enumerate(chosen)}
        return sorted((row_to_job(row) for row in rows), key=lambda job: order[job.id])

    def heartbeat(self, worker_id: str, job_ids: Iterable[str], lease_s: float) -> set[str]:
        """Extend by ``lease_s`` the leases ``worker_id`` still holds on ``job_ids``; the ids it still
        owns (rows locked in id order: concurrent heartbeats cannot deadlock)."""
        ids = sorted(set(job_ids))
        if not ids:
            return set()
        rows = self._all(
            f"UPDATE {TABLE} SET lease_until={_NOW} + %s WHERE id IN (SELECT id FROM {TABLE} "
            "WHERE id = ANY(%s) AND state='running' AND worker_id=%s ORDER BY id FOR UPDATE) "
            "AND state='running' AND worker_id=%s RETURNING id",
            (lease_s, ids, worker_id, worker_id),
        )
        return {row["id"] for row in rows}

    def set_progress(self, job_id: str, progress: float, worker_id: str | None = None) -> None:
        owner, args = (" AND worker_id=%s", (worker_id,)) if worker_id is not None else ("", ())
        self._rowcount(
            f"UPDATE {TABLE} SET progress=%s WHERE id=%s AND state='running'{owner}",
            (progress, job_id, *args),
        )

    def finish(self, job_id: str, state: str, worker_id: str | None = None, **fields: Any) -> bool:
        """Move a running job to a final state (or back to queued: its lease is dropped); False if it is
        no longer running, or (with ``worker_id``) no longer owned by that worker."""
        sets = ["state=%s"]
        args: builtins.list[Any] = [state]
        if state in FINISHED_STATES:
            sets.append(f"finished_at={_NOW}")
        if state == "queued":
            sets += ["worker_id=NULL", "lease_until=NULL"]
        for name, value in fields.items():
            sets.append(f"{name}=%s")
            args.append(encode_field(name, value))
        where = "id=%s AND state='running'" + (" AND worker_id=%s" if worker_id is not None else "")
        owner = (worker_id,) if worker_id is not None else ()
        return (
            self._rowcount(f"UPDATE {TABLE} SET {', '.join(sets)} WHERE {where}", (*args, job_id, *owner))
            == 1
        )

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns the state it had, or None if it was not cancellable."""
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(f"SELECT state FROM {TABLE} WHERE id=%s FOR UPDATE", (job_id,)).fetchone()
            if row is None or row["state"] not in ("queued", "running"):
                return None
            conn.execute(
                f"UPDATE {TABLE} SET state='cancelled', finished_at={_NOW}, "
                "error='cancelled by the client' WHERE id=%s",
                (job_id,),
            )
            return row["state"]

    # -- webhooks (songflow.interfaces.server.webhooks) ---------------------------------------------

    def claim_callbacks(self, limit: int = 16, lease_s: float = 60.0) -> builtins.list[Job]:
        """Finished jobs whose callback is due, taken for ``lease_s`` (rows other deliverers hold are
        skipped: ``FOR UPDATE SKIP LOCKED``)."""
        due = CALLBACK_DUE.replace("?", _NOW)
        with self._pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                f"SELECT * FROM {TABLE} WHERE {due} ORDER BY finished_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (limit,),
            ).fetchall()
            if rows:
                conn.execute(
                    f"UPDATE {TABLE} SET callback_state='pending', callback_at={_NOW} + %s "
                    "WHERE id = ANY(%s)",
                    (lease_s, [r["id"] for r in rows]),
                )
        return [row_to_job(r) for r in rows]

    def record_callback(self, job_id: str, ok: bool, attempts: int, retry_at: float | None) -> None:
        """A delivery's outcome: delivered, retried at ``retry_at``, or (None and not ok) given up."""
        self._rowcount(
            f"UPDATE {TABLE} SET callback_state=%s, callback_attempts=%s, callback_at=%s WHERE id=%s",
            (callback_state(ok, retry_at), attempts, retry_at, job_id),
        )

    # -- the workers that serve this queue -----------------------------------------------------------

    def touch_worker(
        self, worker_id: str, models: Sequence[str] | None, running: Sequence[str], ttl_s: float
    ) -> None:
        """Record that ``worker_id`` (holding ``models``; None: any) is alive for ``ttl_s`` more seconds
        (the database's clock) and runs ``running``; rows of workers gone for a day are removed on the way."""
        self._rowcount(f"DELETE FROM {WORKERS} WHERE expires_at < {_NOW} - %s", (WORKER_GONE_S,))
        self._rowcount(
            f"INSERT INTO {WORKERS} (worker_id, models, running, started_at, last_seen, expires_at) "
            f"VALUES (%s, %s, %s, {_NOW}, {_NOW}, {_NOW} + %s) ON CONFLICT (worker_id) DO UPDATE SET "
            "models=excluded.models, running=excluded.running, last_seen=excluded.last_seen, "
            "expires_at=excluded.expires_at",
            (worker_id, json.dumps(None if models is None else list(models)), json.dumps(list(running)),
             ttl_s),
        )  # fmt: skip

    def drop_worker(self, worker_id: str) -> None:
        self._rowcount(f"DELETE FROM {WORKERS} WHERE worker_id=%s", (worker_id,))

    def live_workers(self) -> builtins.list[dict[str, Any]]:
        """The workers whose last heartbeat has not expired, oldest first (a read: ``/health`` asks)."""
        rows = self._all(f"SELECT * FROM {WORKERS} WHERE expires_at >= {_NOW} ORDER BY started_at")
        return [worker_row(r) for r in rows]
