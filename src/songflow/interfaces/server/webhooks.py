"""Webhooks: a job's ``callback_url`` is told when the job reaches a final state (done, failed, cancelled).

Delivery is at least once and survives restarts: the job store keeps each pending callback
(``callback_url``, attempts, next attempt time), and a :class:`Deliverer` thread in every server and
worker process claims due callbacks, POSTs them and records the outcome. A delivery counts as received on
any 2xx answer; anything else (a refused connection, a timeout, a 5xx, also a 4xx) is retried after
:func:`retry_delay_s` until :data:`MAX_ATTEMPTS`, then given up and logged.

The POST body is the job's view (``{"event": "job.done", "job": {...}}``, JSON), with headers
``X-Songflow-Event``, ``X-Songflow-Delivery`` (``<job id>:<state>``: the same on every retry, so a receiver
can drop duplicates) and, when the server has an API key, ``X-Songflow-Signature: sha256=<hex>``, the
HMAC-SHA256 of the body under that key. Only ``http``/``https`` URLs without credentials are accepted
(:func:`check_callback_url`); a server that must not call into its own network should run behind an
egress proxy, as usual for webhooks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from songflow.errors import ConfigError

log = logging.getLogger("songflow.server")

MAX_ATTEMPTS = 8
MAX_URL_CHARS = 2048
TIMEOUT_S = 10.0


def check_callback_url(url: str) -> str:
    """``url`` when it can be a webhook: http(s), a host, no user:password, at most 2048 characters;
    a ConfigError saying what is wrong otherwise."""
    text = url.strip()
    if len(text) > MAX_URL_CHARS:
        raise ConfigError(f"callback_url is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (reading it raises ValueError on a bad port)
    except ValueError as exc:
        raise ConfigError(f"callback_url is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("callback_url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("callback_url must not carry a user name or password")
    return text


def retry_delay_s(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1-based): 1, 2, 4, ... capped at 5 minutes."""
    return float(min(300, 2 ** max(0, attempt - 1)))


def payload(event: str, job_view: dict[str, Any]) -> bytes:
    return json.dumps({"event": event, "job": job_view}, sort_keys=True).encode()


def signature(body: bytes, key: str) -> str:
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float = TIMEOUT_S) -> int:
    """POST ``body``; the HTTP status, or 0 when no answer came (refused, timed out, unreadable)."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 (checked scheme)
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return 0


def deliver(url: str, job_id: str, state: str, job_view: dict[str, Any], key: str | None) -> int:
    """One attempt at telling ``url`` that job ``job_id`` reached ``state``; the HTTP status (0: none)."""
    event = f"job.{state}"
    body = payload(event, job_view)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "songflow-webhook",
        "X-Songflow-Event": event,
        "X-Songflow-Delivery": f"{job_id}:{state}",
    }
    if key:
        headers["X-Songflow-Signature"] = signature(body, key)
    return post(url, body, headers)


class Deliverer:
    """A thread that delivers due callbacks of ``store`` (``claim_callbacks``/``record_callback``: a job
    is taken for a while, so no other process sends it meanwhile), each job's body built by ``view``."""

    def __init__(
        self,
        store: Any,
        view: Callable[[Any], dict[str, Any]],
        key: str | None = None,
        every_s: float = 1.0,
        clock: Callable[[], float] | None = None,
    ):
        import time

        self.store, self.view, self.key, self.every_s = store, view, key, every_s
        self.clock = clock or time.time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Send every due callback once; how many were sent (whatever their outcome)."""
        due = self.store.claim_callbacks()
        for job in due:
            status = deliver(job.callback_url, job.id, job.state, self.view(job), self.key)
            attempt = job.callback_attempts + 1
            ok = 200 <= status < 300
            retry_at = None if ok or attempt >= MAX_ATTEMPTS else self.clock() + retry_delay_s(attempt)
            if not ok and retry_at is None:
                log.warning("job %s: giving up on its callback after %d attempts (HTTP %s)", job.id,
                            attempt, status or "no answer")  # fmt: skip
            self.store.record_callback(job.id, ok, attempt, retry_at)
        return len(due)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="songflow-webhooks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # a store hiccup must not end deliveries
                log.exception("webhook delivery round failed")
            self._stop.wait(self.every_s)
