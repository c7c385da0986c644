"""Forwarding to the user's app, off the event loop, with a deadline for the whole answer.

Each forward runs on a bounded thread pool (http.client). A timer on the loop enforces the
deadline: when it fires the answer is 502 at once and the thread's socket is shut down, so an
app that trickles its answer a byte at a time cannot hold the request past the deadline (a
per-read socket timeout would restart with every byte). Forwards waiting for a free thread are
on the same clock.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from http import HTTPStatus
from urllib.parse import urlsplit

from inspera_cli._version import __version__
from inspera_cli.listener.http import Answer
from inspera_cli.listener.report import ForwardResult
from inspera_cli.network import describe_network_error

ANSWER_LIMIT = 64 * 1024  # of the app's answer: relayed back, and kept for inspectors
WORKERS = 32

Forwarded = Callable[[ForwardResult, Answer], None]


class Forwarder:
    """``forward(url, body, headers, done)``: ``done(result, answer)`` runs on the loop once,
    with the app's answer to relay or a 502."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, timeout: float = 9.0,
                 workers: int = WORKERS, purpose: str = "listen --forward-to") -> None:
        self.loop = loop
        self.timeout = timeout
        self._user_agent = f"inspera-hooks/{__version__} ({purpose})"
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forward")
        self._jobs: set[_Job] = set()

    def forward(self, url: str, body: bytes, headers: Mapping[str, str], done: Forwarded) -> None:
        job = _Job(url, body, {**headers, "User-Agent": self._user_agent}, self.timeout)
        self._jobs.add(job)

        def finish(result: ForwardResult, answer: Answer) -> None:
            if job in self._jobs:  # first of: the thread's answer, the deadline
                self._jobs.discard(job)
                timer.cancel()
                done(result, answer)

        def expire() -> None:
            job.cut()
            finish(*job.late())

        def ran(future: Future[tuple[ForwardResult, Answer]]) -> None:
            if future.cancelled():  # shut down before a thread took it
                outcome = job.late()
            elif (error := future.exception()) is not None:
                outcome = job.failed(describe_network_error(error, job.timeout, url=job.url))
            else:
                outcome = future.result()
            try:
                self.loop.call_soon_threadsafe(finish, *outcome)
            except RuntimeError:
                pass  # the loop is closed: nobody waits for this answer any more

        timer = self.loop.call_later(self.timeout, expire)
        self._pool.submit(job.run).add_done_callback(ran)

    def close(self) -> None:
        for job in list(self._jobs):
            job.cut()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Job:
    def __init__(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
        self.url, self.body, self.headers, self.timeout = url, body, headers, timeout
        self.started = time.perf_counter()
        self.deadline = self.started + timeout
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._cut = False

    def late(self) -> tuple[ForwardResult, Answer]:
        return self.failed(f"no answer within {self.timeout:g} s")

    def failed(self, error: str) -> tuple[ForwardResult, Answer]:
        result = ForwardResult(self.url, None, self._latency(), error)
        text = f"the app at {self.url} did not answer: {error}\n"
        return result, Answer(HTTPStatus.BAD_GATEWAY, text.encode())

    def _latency(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 1)

    def cut(self) -> None:
        """From the loop: end the exchange now; the thread's next read fails at once."""
        with self._lock:
            self._cut = True
            conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self) -> tuple[ForwardResult, Answer]:
        """On a pool thread: POST the body, read the answer (its first 64 KiB)."""
        remaining = self.deadline - time.perf_counter()
        if remaining <= 0:
            return self.failed("no free connection to the app in time")
        parts = urlsplit(self.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_class(parts.hostname or "127.0.0.1", parts.port, timeout=remaining)
        with self._lock:
            if self._cut:
                return self.failed("cut short")
            self._conn = conn
        try:
            conn.request("POST", target, body=self.body, headers=self.headers)
            response = conn.getresponse()
            data = response.read(ANSWER_LIMIT)
        except (OSError, http.client.HTTPException) as exc:
            return self.failed(describe_network_error(exc, self.timeout, url=self.url))
        finally:
            conn.close()
        headers = tuple(response.getheaders())
        result = ForwardResult(self.url, response.status, self._latency(), None, headers, data)
        content_type = response.getheader("Content-Type") or "text/plain; charset=utf-8"
        return result, Answer(response.status, data, content_type)
