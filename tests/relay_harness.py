"""Shared by the relay tests and tests/bench_relay.py: a test app, signed events, a sender that
retries like Inspera, a virtual clock, and the SIGKILL crash loop."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from requests.structures import CaseInsensitiveDict

from inspera_cli.signing import sign
from tests.processes import CLI, popen, run
from tests.receiver import Answer, Received, Receiver, free_port

SECRET = "relay-test-secret-0123456789"


def event_body(n: int, event: str = "confirm_final_grades") -> bytes:
    return json.dumps({"contextObjectId": n, "event": event, "timestamp": "2024-05-01T12:00:00Z"}).encode()


def signed_post(port: int, body: bytes, timeout: float = 5.0) -> int | None:
    """One signed POST as Inspera makes it; the status, or None when no answer came."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/", body=body, headers={"Content-Type": "application/json",
                                                      "X-Inspera-Signature": sign(body, SECRET)})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


@dataclass
class Delivery:
    """One POST the test app received."""

    delivery_id: str | None
    attempt: int | None
    body: bytes
    headers: CaseInsensitiveDict[str]
    status: int
    at: float  # time.monotonic() when it was answered

    @classmethod
    def of(cls, request: Received, status: int = 0, at: float = 0.0) -> Delivery:
        attempt = request.headers.get("x-inspera-attempt")
        return cls(request.headers.get("x-inspera-delivery-id"), int(attempt) if attempt else None,
                   request.body, request.headers, status, at)


@dataclass
class AppStub:
    """The user's app (tests/receiver.py's Receiver, on a port that stays the same across
    ``stop``/``start``, to simulate an outage): records every POST and answers what ``answer``
    says (a status, or (status, headers))."""

    port: int = 0
    answer: Callable[[Delivery], Answer] = lambda delivery: 200
    delay: float = 0.0
    _receiver: Receiver | None = None
    _before: list[Delivery] = field(default_factory=list)  # answered before the last stop

    def start(self) -> AppStub:
        self._receiver = Receiver(port=self.port, delay=self.delay,
                                  answer=lambda request: self.answer(Delivery.of(request)))
        self.port = self._receiver.port
        return self

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.close()
            self._before = self.deliveries
            self._receiver = None

    @property
    def running(self) -> bool:
        return self._receiver is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def deliveries(self) -> list[Delivery]:
        """What the app answered, in the order it answered."""
        answered = list(self._receiver.answered) if self._receiver is not None else []
        return self._before + [Delivery.of(a.request, a.status, a.at) for a in answered]

    def taken(self) -> list[Delivery]:
        return [d for d in self.deliveries if 200 <= d.status < 300]

    def wait_taken(self, count: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(taken := self.taken()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return taken


class VirtualClock:
    """Time that jumps: ``sleep(s)`` yields to the loop briefly, then moves ``now`` by ``s``."""

    def __init__(self, start: float) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0.001)
        self.t += seconds


def relay_argv(queue: Path, app_url: str, port: int, admin_port: int, *more: str) -> list[str]:
    return [*CLI, "relay", "--secret-env", "RELAY_SECRET", "--forward-to", app_url, "--queue", str(queue),
            "--port", str(port), "--admin-port", str(admin_port), "--log-format", "json", *more]


def relay_env() -> dict[str, str]:
    return {**os.environ, "RELAY_SECRET": SECRET}


def start_relay(argv: list[str], timeout: float = 20.0) -> subprocess.Popen[str]:
    """Start a relay child and return once it said Ready (its stdout is read on a thread)."""
    proc = popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=relay_env(), text=True)
    assert proc.stderr is not None and proc.stdout is not None
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    deadline = time.monotonic() + timeout
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("Ready:"):
            threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    proc.wait()
    proc.stderr.close()
    raise AssertionError("relay did not start:\n" + "".join(lines))


def _drain(stream: Any) -> None:
    """Read a child's output to its end (a pipe nobody reads would fill up), then close it."""
    with stream:
        for _ in stream:
            pass


def queue_status(queue: Path) -> dict[str, Any]:
    done = run([*CLI, "relay", "status", "--queue", str(queue), "--json"], capture_output=True, text=True,
                timeout=30)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def http_get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


class InsperaLike:
    """Sends ``count`` distinct signed events from threads, each until it is answered 200 (Inspera
    with unlimited retries): ``acknowledged`` holds the bodies answered 200."""

    def __init__(self, port: int, count: int, *, threads: int = 4, first: int = 0) -> None:
        self.port = port
        self.todo = list(range(first, first + count))
        self.acknowledged: set[bytes] = set()
        self.refused = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> InsperaLike:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self.todo:
                    return
                n = self.todo.pop(0)
            body = event_body(n)
            while signed_post(self.port, body, timeout=3) != 200:
                with self._lock:
                    self.refused += 1
                time.sleep(0.05)
            with self._lock:
                self.acknowledged.add(body)

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)


@dataclass
class CrashReport:
    kills: list[float]  # time.monotonic() of each SIGKILL
    acknowledged: int
    delivered_ids: int
    duplicates: list[str]  # delivery ids the app took more than once
    unexplained: list[str]  # duplicates with no kill between the app's first 2xx and the next
    missing: int  # acknowledged bodies the app never took
    split: int  # bodies the app took under more than one delivery id (a dedupe failure)


def crash_loop(tmp: Path, *, events: int, kills: int, seed: int = 7, drain_timeout: float = 60.0,
               between: tuple[float, float] = (0.2, 0.8)) -> CrashReport:
    """SIGKILL the relay at random moments while ``InsperaLike`` sends and the app goes up and
    down; restart it each time; then, app up, drain and compare what the app took."""
    rng = random.Random(seed)
    app = AppStub().start()
    queue = tmp / "crash.sqlite"
    port, admin = free_port(), free_port()
    argv = relay_argv(queue, app.url, port, admin, "--max-backoff", "1s", "--concurrency", "4")
    sender = InsperaLike(port, events).start()
    kill_times: list[float] = []
    proc = start_relay(argv)
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(*between))
            if rng.random() < 0.3:  # the app goes down (or comes back) now and then
                app.stop() if app.running else app.start()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kill_times.append(time.monotonic())
            proc = start_relay(argv)
        if not app.running:
            app.start()
        assert sender.join(drain_timeout), "the sender did not get every event acknowledged"
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and queue_status(queue)["pending"]:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        app.stop()
    return _compare(app, sender, kill_times)


def _compare(app: AppStub, sender: InsperaLike, kill_times: list[float]) -> CrashReport:
    taken = app.taken()
    first_taken: dict[str, float] = {}
    seen: dict[str, int] = {}
    unexplained = []
    for delivery in sorted(taken, key=lambda d: d.at):
        key = delivery.delivery_id or ""
        seen[key] = seen.get(key, 0) + 1
        if key in first_taken:
            if not any(first_taken[key] <= kill <= delivery.at for kill in kill_times):
                unexplained.append(key)
        else:
            first_taken[key] = delivery.at
    bodies = {d.body for d in taken}
    ids_of: dict[bytes, set[str]] = {}
    for delivery in taken:
        ids_of.setdefault(delivery.body, set()).add(delivery.delivery_id or "")
    return CrashReport(
        kills=kill_times, acknowledged=len(sender.acknowledged), delivered_ids=len(seen),
        duplicates=[key for key, n in seen.items() if n > 1], unexplained=unexplained,
        missing=len(sender.acknowledged - bodies), split=sum(len(ids) > 1 for ids in ids_of.values()),
    )
