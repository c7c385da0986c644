"""Signed POSTs to subscribers, as Inspera sends them: endpoint validation and event deliveries.

Deliveries run on a small pool of worker threads with a schedule for retries, so a slow or dead
receiver delays only its own attempts, never the API or other subscribers.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from inspera_cli.sandbox.store import iso_now
from inspera_cli.signing import SIGNATURE_HEADER, sign

Resolve = Mapping[str, tuple[str, int]]


@dataclass(frozen=True)
class PostResult:
    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status == 200


def route(url: str, resolve: Resolve) -> tuple[str, dict[str, str]]:
    """The URL to connect to and extra headers, after ``--resolve HOST=ADDR:PORT``.

    A resolved host is reached over plain HTTP on the local port, path and query kept; the Host
    header stays the public name, as it would arrive through a tunnel.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host not in resolve:
        return url, {}
    address, port = resolve[host]
    netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    local = urlunsplit(("http", netloc, parts.path or "/", parts.query, ""))
    return local, {"Host": parts.netloc}


def _cause(exc: BaseException) -> str:
    """One short reason for a failed request, from the exception chain requests builds."""
    import socket

    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS error ({_innermost(exc)})"
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, socket.gaierror):
            return "host name not found (DNS)"
        for arg in current.args:
            if isinstance(arg, BaseException) and id(arg) not in seen:
                current = arg
                break
        else:
            current = current.__cause__ or current.__context__
    text = str(_innermost(exc))
    if "Name or service not known" in text or "NameResolutionError" in text:
        return "host name not found (DNS)"
    return f"connection failed ({text})"


def _innermost(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def post_signed(url: str, body: bytes, secret: str, timeout: float, resolve: Resolve) -> PostResult:
    """POST the body signed with the secret; never raises for network trouble."""
    import requests

    target, headers = route(url, resolve)
    headers.update({
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(body, secret),
        "User-Agent": "inspera-hooks-sandbox",
    })
    try:
        with requests.Session() as session:
            # Inspera does not follow redirects: anything but 200 is a failure.
            with session.post(
                target, data=body, headers=headers, timeout=(timeout, timeout),
                allow_redirects=False, stream=True,
            ) as response:
                status = response.status_code
    except requests.exceptions.Timeout:
        return PostResult(None, f"timed out after {float(timeout)} s")
    except requests.exceptions.RequestException as exc:
        return PostResult(None, _cause(exc))
    if status != 200:
        return PostResult(status, f"answered {status}")
    return PostResult(status, None)


@dataclass
class _Job:
    delivery_id: int
    subscription_id: int
    event: str
    endpoint: str
    secret: str
    body: bytes
    attempt: int = 1


class DeliveryLog:
    """Every finished attempt, in order; ``wait`` lets tests block until attempts are done."""

    def __init__(self) -> None:
        self._items: list[dict[str, Any]] = []
        self._changed = threading.Condition()

    def add(self, item: dict[str, Any]) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def items(self) -> list[dict[str, Any]]:
        with self._changed:
            return [dict(item) for item in self._items]

    def wait(self, count: int, timeout: float) -> list[dict[str, Any]]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._items) >= count, timeout):
                raise TimeoutError(
                    f"{len(self._items)} delivery attempts finished within {timeout:g} s, "
                    f"expected {count}"
                )
            return [dict(item) for item in self._items]


class DeliveryQueue:
    """Worker threads that deliver queued events with ``retries`` retries ``retry_delay`` apart."""

    def __init__(
        self,
        *,
        timeout: float,
        retries: int,
        retry_delay: float,
        resolve: Resolve,
        log: DeliveryLog,
        on_attempt: Callable[[dict[str, Any]], None] | None = None,
        workers: int = 16,
    ) -> None:
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.resolve = resolve
        self.log = log
        self.on_attempt = on_attempt
        self._due: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"sandbox-delivery-{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def enqueue(
        self, subscription_id: int, event: str, endpoint: str, secret: str, body: bytes
    ) -> int:
        """Queue one event for one subscription; the id names all its attempts."""
        with self._cond:
            delivery_id = next(self._ids)
            job = _Job(delivery_id, subscription_id, event, endpoint, secret, body)
            self._schedule(job, time.monotonic())
        return delivery_id

    def _schedule(self, job: _Job, when: float) -> None:
        heapq.heappush(self._due, (when, next(self._order), job))
        self._cond.notify()

    def _next_job(self) -> _Job | None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                if self._due and self._due[0][0] <= now:
                    return heapq.heappop(self._due)[2]
                self._cond.wait(self._due[0][0] - now if self._due else None)
            return None

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            result = post_signed(job.endpoint, job.body, job.secret, self.timeout, self.resolve)
            item = {
                "deliveryId": job.delivery_id,
                "subscriptionId": job.subscription_id,
                "endpoint": job.endpoint,
                "attempt": job.attempt,
                "status": result.status,
                "error": result.error,
                "time": iso_now(),
            }
            with self._cond:
                if self._stopped:
                    return
                # Schedule the retry before the attempt is visible, so whoever waits for this
                # attempt sees a consistent queue.
                if not result.ok and job.attempt <= self.retries:
                    job.attempt += 1
                    self._schedule(job, time.monotonic() + self.retry_delay)
            self.log.add(item)
            if self.on_attempt is not None:
                self.on_attempt({**item, "event": job.event})

    def stop(self, wait: float = 1.0) -> None:
        """Stop the workers; attempts in flight are abandoned (daemon threads) after ``wait``."""
        with self._cond:
            self._stopped = True
            self._due.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
