"""Keeping the data folder bounded: finished jobs (row, output folder and uploads) are deleted once they
are older than ``keep_hours`` or, oldest first, while ``uploads/`` and ``outputs/`` together exceed
``max_data_mb``; files no job refers to are removed once they are an hour old. The worker thread calls a
:class:`Sweeper` between jobs (and the app once at start-up); ``DELETE /v1/jobs/{id}`` uses
:func:`delete_job`. Queued and running jobs are never swept."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from songflow.interfaces.server.jobs import Job, JobStoreProtocol

log = logging.getLogger("songflow.server")

ORPHAN_AGE_S = 3600.0  # an unreferenced file younger than this may belong to a submission in progress


@dataclass(frozen=True)
class Retention:
    """How long finished jobs are kept, how much disk the data folder may use, how often a job that
    was running when the server stopped is started again (None: no limit)."""

    keep_hours: float | None = 24.0 * 7
    max_data_mb: float | None = 10 * 1024.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.keep_hours is not None and not self.keep_hours > 0:
            raise ValueError(f"keep_hours must be positive, got {self.keep_hours}")
        if self.max_data_mb is not None and not self.max_data_mb > 0:
            raise ValueError(f"max_data_mb must be positive, got {self.max_data_mb}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def remove_job_files(job: Job, outputs_dir: Path) -> int:
    """Delete a job's output folder and uploads; the bytes freed."""
    freed = 0
    for path in [outputs_dir / job.id, *(Path(p) for p in job.uploads)]:
        try:
            freed += _size(path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("job %s: cannot remove %s: %s", job.id, path.name, exc)
    return freed


def delete_job(store: JobStoreProtocol, job_id: str, outputs_dir: Path) -> Job | None:
    """Remove a finished job with its files (None when it is not finished or not there)."""
    job = store.delete(job_id)
    if job is not None:
        remove_job_files(job, outputs_dir)
    return job


class Sweeper:
    """One retention pass over a data folder (``__call__``; returns the number of jobs deleted)."""

    def __init__(self, store: JobStoreProtocol, data_dir: Path, retention: Retention):
        self.store = store
        self.uploads_dir = data_dir / "uploads"
        self.outputs_dir = data_dir / "outputs"
        self.retention = retention

    def __call__(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        deleted = 0
        if self.retention.keep_hours is not None:
            for job_id in self.store.finished_before(now - self.retention.keep_hours * 3600):
                deleted += delete_job(self.store, job_id, self.outputs_dir) is not None
        self._remove_orphans(now)
        if self.retention.max_data_mb is not None:
            deleted += self._shrink(int(self.retention.max_data_mb * 1024 * 1024))
        if deleted:
            log.info("retention: deleted %d finished job(s) and their files", deleted)
        return deleted

    def _remove_orphans(self, now: float) -> None:
        referenced, ids = self.store.referenced_uploads(), self.store.ids()
        for path in [*self.uploads_dir.glob("*"), *self.outputs_dir.glob("*")]:
            known = str(path) in referenced if path.parent == self.uploads_dir else path.name in ids
            try:
                if known or now - path.stat().st_mtime < ORPHAN_AGE_S:
                    continue
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            except OSError:
                continue

    def _shrink(self, max_bytes: int) -> int:
        total = _size(self.uploads_dir) + _size(self.outputs_dir)
        deleted = 0
        for job_id in self.store.finished_before(float("inf")):
            if total <= max_bytes:
                break
            job = self.store.delete(job_id)
            if job is not None:
                total -= remove_job_files(job, self.outputs_dir)
                deleted += 1
        return deleted
