"""A real PostgreSQL server for the tests (no mock): ``postgres_dsn`` (one per session) and
``postgres_db`` (a fresh, empty database per test).

The server is a throw-away cluster: ``initdb --auth=trust -U songflow`` into a temporary folder, started
with ``pg_ctl`` on a Unix socket in another temporary folder and no TCP listener
(``listen_addresses=''``), so nothing outside this machine's processes can reach it, and stopped
(``pg_ctl stop -m fast``) when the session ends. The binaries come from ``PATH`` or Debian's
``/usr/lib/postgresql/<version>/bin`` (the ``postgresql`` package: ``scripts/install_postgres.sh``).

PostgreSQL refuses to run as root; when the tests run as root the server runs as the unprivileged user
``nobody`` (``runuser -u nobody``), which owns the two temporary folders. They live directly under the
system temp folder (``/tmp/sfpg-*``): pytest's own ``tmp_path`` is private to root, and a Unix socket path
must stay under about 100 characters.

Tests skip, saying why, when the binaries or psycopg 3 are missing; a server that is there but does not
start fails the test with the end of its log.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_UNPRIVILEGED = "nobody"


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def _as_server_user(cmd: list[str]) -> list[str]:
    """``cmd`` run as an unprivileged user when we are root (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("the tests run as root and runuser is missing: cannot start PostgreSQL as another user")
    return [runuser, "-u", _UNPRIVILEGED, "--", *cmd]


def _private_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if os.path.isdir("/tmp") else None))
    if os.geteuid() == 0:
        shutil.chown(path, user=_UNPRIVILEGED)
    return path


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
    if done.returncode != 0:
        tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        pytest.fail(f"{what} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}{tail}")


def dsn_for(sock_dir: Path, port: int, dbname: str) -> str:
    return f"postgresql:///{dbname}?host={sock_dir}&port={port}&user=songflow"


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The DSN of the session's server (database ``postgres``, user ``songflow``, trust auth)."""
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'songflow[postgres]')")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (scripts/install_postgres.sh)")
    root, sock = _private_dir("sfpg-"), _private_dir("sfpgs-")
    data, log = root / "data", root / "server.log"
    port = random.randint(20000, 60000)  # names the socket file only: there is no TCP listener
    try:
        _run(
            _as_server_user([initdb, "-D", str(data), "--auth=trust", "-U", "songflow", "-E", "UTF8"]),
            "initdb",
        )
        options = f"-k {sock} -c listen_addresses='' -p {port} -c fsync=off -c max_connections=200"
        start = [pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start"]
        _run(_as_server_user(start), "pg_ctl start", log)
        try:
            yield dsn_for(sock, port, "postgres")
        finally:
            stop = [pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]
            subprocess.run(_as_server_user(stop), capture_output=True, timeout=120, cwd="/")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(sock, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_dsn: str) -> Iterator[str]:
    """The DSN of a new, empty database on the session's server; dropped after the test."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres_dsn.replace("postgresql:///postgres?", f"postgresql:///{name}?", 1)
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
