"""The relay in-process against a real test app: what the app receives, order, routes,
Retry-After, dead letters on an injected clock, 503 when the queue cannot be written, the admin
port (with a strict Prometheus parse)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from inspera_cli.relay.observe import Change, ChangeKind
from inspera_cli.relay.queue import SQLiteQueue
from inspera_cli.relay.service import Relay, RelayConfig
from inspera_cli.signing import sign
from tests.processes import running_with
from tests.relay_harness import SECRET, AppStub, VirtualClock, event_body, http_get, signed_post

pytestmark = pytest.mark.timeout(60)


@contextmanager
def running(
    tmp_path: Path, routes: dict[str | None, str], *, clock: Any = None, **more: Any
) -> Iterator[Relay]:
    changes: list[Change] = []
    queue = more.pop("queue", tmp_path / "relay.sqlite")
    config = RelayConfig(routes=routes, queue=queue, port=0, admin_port=0, secret=SECRET, **more)
    relay = Relay(config, clock=clock, rng=random.Random(5), on_change=changes.append)
    relay.changes = changes  # type: ignore[attr-defined]
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


def port_of(relay: Relay) -> int:
    return int(relay.url.rsplit(":", 1)[1].strip("/"))


def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def app() -> Iterator[AppStub]:
    test_app = AppStub().start()
    yield test_app
    test_app.stop()


def test_the_app_gets_the_original_body_and_signature_plus_id_and_attempt(
    tmp_path: Path, app: AppStub
) -> None:
    # The app answers only once the retry has been taken, so the delivery is reported after the
    # duplicate (without this the relay may deliver before the retry arrives).
    retried = threading.Event()
    app.answer = lambda d: 200 if retried.wait(10) else 500
    with running(tmp_path, {None: app.url}) as relay:
        body = event_body(35199862)
        assert signed_post(port_of(relay), body) == 200
        assert signed_post(port_of(relay), body) == 200  # Inspera's retry after a lost 200: stored once
        retried.set()
        [got] = app.wait_taken(1, 10)
        time.sleep(0.3)
    assert len(app.deliveries) == 1
    assert got.body == body
    assert got.headers["x-inspera-signature"] == sign(body, SECRET)
    assert got.headers["content-type"] == "application/json"
    assert len(got.delivery_id or "") == 32 and got.attempt == 1
    kinds = [c.kind for c in relay.changes]  # type: ignore[attr-defined]
    # The delivery may finish before or after the retry is found to be a duplicate.
    assert kinds[0] is ChangeKind.RECEIVED
    assert sorted(kinds[1:]) == sorted([ChangeKind.DUPLICATE, ChangeKind.DELIVERED])


def test_unsigned_or_forged_events_are_refused_and_validation_is_not_queued(
    tmp_path: Path, app: AppStub
) -> None:
    import http.client

    with running(tmp_path, {None: app.url}) as relay:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(relay), timeout=5)
        try:
            conn.request("POST", "/", body=event_body(1), headers={"X-Inspera-Signature": "0" * 40})
            assert conn.getresponse().status == 401
        finally:
            conn.close()
        verification = json.dumps({"contextObjectId": 0, "event": "verification"}).encode()
        assert signed_post(port_of(relay), verification) == 200
        time.sleep(0.5)
        queue = SQLiteQueue(relay.config.queue)
        stats = queue.stats(now=time.time())
        queue.close()
    assert (stats.pending, stats.delivered, stats.dead) == (0, 0, 0)
    assert app.deliveries == []


def test_routes_and_arrival_order_per_route(tmp_path: Path) -> None:
    grades, other = AppStub(delay=0.005).start(), AppStub().start()
    try:
        with running(tmp_path, {None: other.url, "confirm_final_grades": grades.url}, concurrency=1) as relay:
            for n in range(30):
                assert signed_post(port_of(relay), event_body(n)) == 200
                assert signed_post(port_of(relay), event_body(1000 + n, "complete_grading")) == 200
            grades.wait_taken(30, 15)
            other.wait_taken(30, 15)
    finally:
        grades.stop()
        other.stop()
    assert [json.loads(d.body)["contextObjectId"] for d in grades.deliveries] == list(range(30))
    assert [json.loads(d.body)["contextObjectId"] for d in other.deliveries] == list(range(1000, 1030))


def test_with_concurrency_first_attempts_start_in_arrival_order(tmp_path: Path, app: AppStub) -> None:
    queue = SQLiteQueue(tmp_path / "relay.sqlite", create=True)
    from inspera_cli.relay.queue import NewEvent

    backlog = [NewEvent(event_body(n), app.url, "e", n) for n in range(40)]
    queue.enqueue(backlog, now=time.time(), dedupe_since=0)
    queue.close()
    started: list[int] = []
    app.answer = lambda d: started.append(json.loads(d.body)["contextObjectId"]) or 200  # type: ignore[func-returns-value]
    with running(tmp_path, {None: app.url}, concurrency=4):
        app.wait_taken(40, 15)
    # Four at a time, in arrival order: event n starts only once n - 3 earlier ones were answered,
    # so the app has seen at least n - 3 events before it (it records each before answering).
    assert sorted(started) == list(range(40))
    assert all(n <= i + 3 for i, n in enumerate(started))


def test_when_the_app_returns_what_waited_for_it_goes_at_once_in_order(
    tmp_path: Path, app: AppStub
) -> None:
    from inspera_cli.relay.queue import NewEvent

    queue = SQLiteQueue(tmp_path / "relay.sqlite", create=True)
    now = time.time()
    queue.enqueue([NewEvent(event_body(n), app.url, "e", n) for n in range(6)], now=now, dedupe_since=0)
    for event in queue.claim_due(app.url, now=now, limit=6, held=()):
        refused = event.context_object_id != 5  # 0-4: the app was down; 5: the app said 500
        error = "connection refused" if refused else "answered 500"
        queue.retry_later(event.seq, next_at=now + 500, error=error, now=now, app_down=refused)
    queue.close()
    with running(tmp_path, {None: app.url}, concurrency=1) as relay:
        assert signed_post(port_of(relay), event_body(99)) == 200
        taken = app.wait_taken(6, 10)
        time.sleep(0.3)
    assert [json.loads(d.body)["contextObjectId"] for d in taken] == [99, 0, 1, 2, 3, 4]
    assert len(app.deliveries) == 6  # the one the app refused keeps its schedule


def test_retry_after_is_honoured(tmp_path: Path, app: AppStub) -> None:
    clock = VirtualClock(time.time())
    date = formatdate(clock.t + 3000, usegmt=True)
    answers = iter([(503, {"Retry-After": "120"}), (429, {"Retry-After": date})])
    app.answer = lambda d: next(answers, 200)
    with running(tmp_path, {None: app.url}, clock=clock, max_backoff=1800) as relay:
        assert signed_post(port_of(relay), event_body(1)) == 200
        app.wait_taken(1, 15)
    changes = relay.changes  # type: ignore[attr-defined]
    retries = [c for c in changes if c.kind is ChangeKind.RETRYING]
    assert [c.next_attempt_at - c.at for c in retries] == [pytest.approx(120), pytest.approx(1800, abs=1)]
    assert retries[0].error == "answered 503 (Retry-After: 2 min)"
    assert [d.attempt for d in app.deliveries] == [1, 2, 3]


@pytest.mark.slow
def test_dead_after_max_age_on_an_injected_clock_then_retry_dead(
    tmp_path: Path, app: AppStub, cli: Any
) -> None:
    clock = VirtualClock(time.time())
    app.answer = lambda d: 500
    queue = tmp_path / "relay.sqlite"
    started = time.monotonic()
    with running(tmp_path, {None: app.url}, clock=clock, max_age=24 * 3600, max_backoff=600) as relay:
        for n in range(2):
            assert signed_post(port_of(relay), event_body(n)) == 200
        wait_for(lambda: relay.metrics.dead == 2, timeout=40)
        elapsed = time.monotonic() - started
        changes = list(relay.changes)  # type: ignore[attr-defined]
        status = cli("relay", "status", "--queue", str(queue), "--json").json
        assert (status["pending"], status["dead"]) == (0, 2)
        assert status["routes"][0]["lastError"] == "answered 500"
        app.answer = lambda d: 200
        cli("relay", "retry", "--queue", str(queue), "--dead")
        app.wait_taken(2, 15)
        wait_for(lambda: relay.metrics.delivered == 2)
    received = {c.id: c.at for c in changes if c.kind is ChangeKind.RECEIVED}
    for event_id, at in received.items():
        mine = [c for c in changes if c.id == event_id and c.kind in (ChangeKind.RETRYING, ChangeKind.DEAD)]
        assert mine[-1].kind is ChangeKind.DEAD and mine[-1].at >= at + 24 * 3600
        waits = [c.next_attempt_at - c.at for c in mine[:-1]]
        assert all(0 <= w <= 600 for w in waits) and len(mine) > 100  # hours of schedule
    assert elapsed < 30  # ...in seconds of real time
    taken = app.taken()
    assert {d.delivery_id for d in taken} == set(received)


@pytest.mark.parametrize("taken", ["port", "admin_port"])
def test_a_port_in_use_is_one_error_and_leaves_the_queue_free(tmp_path: Path, taken: str) -> None:
    import socket

    from inspera_cli.errors import InsperaError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = {"port": 0, "admin_port": 0, taken: busy.getsockname()[1]}
        config = RelayConfig(routes={None: "http://127.0.0.1:1/"}, queue=tmp_path / "q.sqlite", **ports)
        with pytest.raises(InsperaError, match=r"(cannot listen on|cannot serve the admin port on) .*in use"):
            Relay(config).start()
    with running(tmp_path, {None: "http://127.0.0.1:1/"}, queue=tmp_path / "q.sqlite") as relay:
        assert relay.url  # the lock and the queue were given back


def test_admin_health_and_metrics(tmp_path: Path, app: AppStub) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with running(tmp_path, {None: app.url}) as relay:
        for n in range(3):
            signed_post(port_of(relay), event_body(n))
        app.wait_taken(3, 10)
        wait_for(lambda: relay.metrics.delivered == 3)
        assert relay.admin_url.startswith("http://127.0.0.1:")
        admin = int(relay.admin_url.rsplit(":", 1)[1].strip("/"))
        assert http_get(admin, "/health") == (200, '{"pending": 0}\n')
        status, text = http_get(admin, "/metrics")
        assert http_get(admin, "/nope")[0] == 404
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["inspera_relay_received"].type == "counter"
    samples = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
    assert samples["inspera_relay_received_total"] == 3
    assert samples["inspera_relay_delivered_total"] == 3
    assert samples["inspera_relay_dead_total"] == 0
    assert samples["inspera_relay_pending"] == 0
    assert samples["inspera_relay_delivery_seconds_count"] == 3
    assert families["inspera_relay_delivery_seconds"].type == "histogram"
    assert_strict_exposition(text)


def assert_strict_exposition(text: str) -> None:
    """Every family: HELP then TYPE, then only its samples; counters end in _total; histogram
    buckets cumulative, ending in +Inf equal to _count."""
    import re

    lines = text.rstrip("\n").split("\n")
    sample = re.compile(r'([a-z_]+)(\{le="([0-9.]+|\+Inf)"\})? (-?[0-9.e+]+)')
    family = None
    buckets: list[float] = []
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            family = line.split()[2]
            assert lines[i + 1].startswith(f"# TYPE {family} "), line
            continue
        if line.startswith("# TYPE "):
            kind = line.split()[3]
            assert kind in ("counter", "gauge", "histogram")
            assert kind != "counter" or family.endswith("_total")
            continue
        match = sample.fullmatch(line)
        assert match and family and match.group(1).startswith(family), line
        if match.group(2):
            buckets.append(float(match.group(4)))
        if match.group(1).endswith("_count"):
            assert buckets == sorted(buckets) and buckets[-1] == float(match.group(4))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_503_and_unhealthy(tmp_path: Path, app: AppStub) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        with running(tmp_path, {None: app.url + "never"}, queue=mount / "relay.sqlite") as relay:
            app.answer = lambda d: 500  # nothing leaves the queue
            statuses = [signed_post(port_of(relay), event_body(n) + b" " * 20_000) for n in range(40)]
            admin = int(relay.admin_url.rsplit(":", 1)[1].strip("/"))
            health = http_get(admin, "/health")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    assert statuses[0] == 200 and statuses[-1] == 503 and set(statuses) == {200, 503}
    assert health[0] == 503 and "cannot be written" in json.loads(health[1])["error"]


def wal_syncers(marker: str, wal: Path) -> list[int]:
    """The processes started with ``marker`` in their environment that hold ``wal`` open: the
    relay's sync helpers (relay/walsync.py)."""
    found = []
    for pid in running_with(marker):
        try:
            if str(wal) in [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]:
                found.append(pid)
        except OSError:
            continue
    return found


def test_a_200_waits_for_a_sync_of_the_wal_and_without_one_the_answer_is_503(
    tmp_path: Path, app: AppStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = tmp_path / "relay.sqlite-wal"
    marker = f"RELAY_WAL_TEST={uuid.uuid4().hex}"
    monkeypatch.setenv(*marker.split("="))  # what the helpers are started with
    with running(tmp_path, {None: app.url}) as relay:
        assert signed_post(port_of(relay), event_body(1)) == 200
        syncers = wal_syncers(marker, wal)
        assert len(syncers) == 2  # the commits are synced by helper processes, not at commit
        for pid in syncers:
            os.kill(pid, 9)
        wait_for(lambda: not wal_syncers(marker, wal))
        statuses = [signed_post(port_of(relay), event_body(n)) for n in (2, 3)]
        admin = int(relay.admin_url.rsplit(":", 1)[1].strip("/"))
        health = http_get(admin, "/health")
        app.wait_taken(1, 10)
    assert statuses == [503, 503]  # committed, maybe, but not known to be on disk: Inspera retries
    assert health[0] == 503 and "sync process is gone" in json.loads(health[1])["error"]
    assert [json.loads(d.body)["contextObjectId"] for d in app.taken()][:1] == [1]


def test_while_another_process_holds_the_write_lock_events_wait_and_the_relay_serves_on(
    tmp_path: Path, app: AppStub
) -> None:
    """`relay retry` or `purge` in another process holds the queue's write lock: an event is not
    acknowledged before it is written (it waits, then 200), and meanwhile the relay still answers
    what needs no write -- the batch waits off the event loop, never blocking it. A lock held past
    the usual 5 s: 503, so that Inspera retries."""
    import sqlite3

    from inspera_cli.webhook_body import verification_body

    with running(tmp_path, {None: app.url}) as relay:
        holder = sqlite3.connect(tmp_path / "relay.sqlite", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        answers: list[int | None] = []
        waiting = threading.Thread(target=lambda: answers.append(signed_post(port_of(relay), event_body(1))))
        waiting.start()
        time.sleep(0.5)
        started = time.monotonic()
        assert signed_post(port_of(relay), verification_body()) == 200  # no write: answered at once
        assert time.monotonic() - started < 0.5
        assert waiting.is_alive() and answers == []  # not acknowledged while it cannot be written
        holder.execute("COMMIT")
        waiting.join(10)
        assert answers == [200]
        app.wait_taken(1, 15)

        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        try:
            assert signed_post(port_of(relay), event_body(2), timeout=15) == 503
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert 4.5 < time.monotonic() - started < 10
        assert signed_post(port_of(relay), event_body(2)) == 200  # free again: taken
