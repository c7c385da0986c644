"""The relay's queue and schedule as a library: SQLite file, dedupe, claims, outcomes, retry,
purge, durations, backoff and Retry-After."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
from email.utils import formatdate
from pathlib import Path

import pytest

from inspera_cli.errors import NotFoundError
from inspera_cli.relay.queue import NewEvent, QueueError, SQLiteQueue, State
from inspera_cli.relay.schedule import RetryPolicy, parse_duration, retry_after_seconds

APP = "http://127.0.0.1:5000/hooks"
T0 = 1_700_000_000.0


@pytest.fixture
def queue(tmp_path: Path) -> SQLiteQueue:
    q = SQLiteQueue(tmp_path / "q.sqlite", create=True)
    yield q
    q.close()


def new(n: int, url: str = APP, event: str = "confirm_final_grades") -> NewEvent:
    return NewEvent(f'{{"contextObjectId": {n}}}'.encode(), url, event, n, "application/json", f"sig{n}")


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("10m", 600), ("72h", 259200), ("7d", 604800),
                                               ("1h30m", 5400), ("0.5s", 0.5), (" 2H ", 7200)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "72", "h", "10x", "-5m", "5m3", "0s", "1 d e"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    expected = r"(not a duration: give a number and a unit, s, m, h or d|more than zero)"
    with pytest.raises(ValueError, match=expected):
        parse_duration(text)


def test_backoff_is_full_jitter_doubling_up_to_the_cap() -> None:
    policy = RetryPolicy(max_age=86400, max_backoff=600, rng=random.Random(3))
    for failures, cap in [(1, 1), (2, 2), (3, 4), (10, 512), (11, 600), (500, 600)]:
        waits = [policy.backoff(failures) for _ in range(300)]
        assert all(0 <= wait <= cap for wait in waits)
        assert max(waits) > 0.8 * cap and min(waits) < 0.2 * cap  # spread over [0, cap]


def test_the_last_attempt_is_at_max_age_then_dead() -> None:
    policy = RetryPolicy(max_age=3600, max_backoff=600, rng=random.Random(1))
    assert policy.next_attempt(now=T0 + 3500, since=T0, failures=20, retry_after=None) <= T0 + 3600
    assert policy.next_attempt(now=T0 + 3599, since=T0, failures=20, retry_after=900) == T0 + 3600
    assert policy.next_attempt(now=T0 + 3600, since=T0, failures=21, retry_after=None) is None


def test_retry_after_is_honoured_within_bounds() -> None:
    policy = RetryPolicy(max_age=86400, max_backoff=600, rng=random.Random(1))
    assert policy.next_attempt(now=T0, since=T0, failures=1, retry_after=30) == T0 + 30
    assert policy.next_attempt(now=T0, since=T0, failures=1, retry_after=0) == T0 + 1  # not hammered
    assert policy.next_attempt(now=T0, since=T0, failures=1, retry_after=86400) == T0 + 600  # capped


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds("120", T0) == 120
    assert retry_after_seconds(formatdate(T0 + 90, usegmt=True), T0) == pytest.approx(90)
    assert retry_after_seconds(formatdate(T0 - 90, usegmt=True), T0) == 0
    for junk in (None, "", "soon", "-5", "1.5", "Fri, 99 Foo 2024"):
        assert retry_after_seconds(junk, T0) is None


def test_the_queue_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        q = SQLiteQueue(tmp_path / "data" / "q.sqlite", create=True)
        q.enqueue([new(1)], now=T0, dedupe_since=0)
    finally:
        os.umask(old)
    for name in ("q.sqlite", "q.sqlite-wal", "q.sqlite-shm"):
        assert stat.S_IMODE((tmp_path / "data" / name).stat().st_mode) == 0o600, name
    q.close()


def test_sqlite_settings(queue: SQLiteQueue) -> None:
    db = sqlite3.connect(queue.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert queue._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()


def test_the_same_body_within_max_age_is_stored_once(queue: SQLiteQueue) -> None:
    first, again = queue.enqueue([new(1), new(1)], now=T0, dedupe_since=T0 - 60)
    assert again.duplicate and again.id == first.id and not first.duplicate
    later = queue.enqueue([new(1)], now=T0 + 30, dedupe_since=T0 + 30 - 60)[0]
    assert later == first.__class__(first.id, True, T0 + 30)
    beyond = queue.enqueue([new(1)], now=T0 + 100, dedupe_since=T0 + 100 - 60)[0]
    assert not beyond.duplicate and beyond.id != first.id
    assert queue.stats(now=T0 + 100).pending == 2


def test_claims_are_due_first_then_arrival_order_and_skip_held(queue: SQLiteQueue) -> None:
    stored = [s.id for s in queue.enqueue([new(n) for n in range(5)], now=T0, dedupe_since=0)]
    claimed = queue.claim_due(APP, now=T0, limit=3, held=())
    assert [c.id for c in claimed] == stored[:3]
    queue.retry_later(claimed[0].seq, next_at=T0 + 10, error="answered 500", now=T0)
    again = queue.claim_due(APP, now=T0 + 1, limit=10, held={claimed[1].seq})
    assert [c.id for c in again] == [stored[2], stored[3], stored[4]]
    assert queue.next_due(APP, held={c.seq for c in again} | {claimed[1].seq}) == T0 + 10
    assert queue.claim_due("http://other/", now=T0 + 1, limit=10, held=()) == []


def test_outcomes_counts_and_routes(queue: SQLiteQueue) -> None:
    queue.enqueue([new(1), new(2), new(3, "http://127.0.0.1:6000/")], now=T0, dedupe_since=0)
    one, two = queue.claim_due(APP, now=T0, limit=5, held=())
    queue.delivered(one.seq, now=T0 + 1)
    queue.dead(two.seq, error="answered 500", now=T0 + 2)
    stats = queue.stats(now=T0 + 10)
    assert stats.to_json() == {
        "pending": 1, "delivered": 1, "dead": 1, "oldestPendingSeconds": 10.0,
        "routes": [
            {"url": "http://127.0.0.1:5000/hooks", "pending": 0, "dead": 1, "lastError": "answered 500"},
            {"url": "http://127.0.0.1:6000/", "pending": 1, "dead": 0, "lastError": None},
        ],
    }
    listed = queue.events(state=State.DEAD)
    assert [e.to_json() for e in listed] == [{
        "id": two.id, "event": "confirm_final_grades", "contextObjectId": 2,
        "receivedAt": "2023-11-14T22:13:20.000Z", "state": "dead", "attempts": 1, "nextAttemptAt": None,
        "lastError": "answered 500",
    }]


def test_retry_by_id_prefix_and_dead(queue: SQLiteQueue) -> None:
    ids = [s.id for s in queue.enqueue([new(n) for n in range(3)], now=T0, dedupe_since=0)]
    for event in queue.claim_due(APP, now=T0, limit=3, held=()):
        queue.dead(event.seq, error="boom", now=T0)
    assert queue.retry([ids[0][:10]], now=T0 + 5) == [ids[0]]
    with pytest.raises(NotFoundError, match="no such event .*: nope"):
        queue.retry([ids[1], "nope"], now=T0 + 5)
    assert queue.events(state=State.DEAD, limit=10)[-1].id == ids[1]  # nothing changed
    assert queue.retry_dead(now=T0 + 6) == 2
    due = queue.claim_due(APP, now=T0 + 6, limit=5, held=())
    assert {d.id for d in due} == set(ids) and all(d.since >= T0 + 5 and d.failures == 0 for d in due)


def test_purge_removes_delivered_ones_only(queue: SQLiteQueue) -> None:
    queue.enqueue([new(n) for n in range(4)], now=T0, dedupe_since=0)
    a, b, c, _ = queue.claim_due(APP, now=T0, limit=4, held=())
    queue.delivered(a.seq, now=T0)
    queue.delivered(b.seq, now=T0 + 86400 * 8)
    queue.dead(c.seq, error="x", now=T0)
    assert queue.purge_delivered(before=T0 + 86400) == 1
    stats = queue.stats(now=T0)
    assert (stats.pending, stats.delivered, stats.dead) == (1, 1, 1)


def test_reroute_follows_the_routes_given_at_start(queue: SQLiteQueue) -> None:
    queue.enqueue([new(1, event="a"), new(2, event="b")], now=T0, dedupe_since=0)
    assert queue.reroute({None: "http://new/", "a": "http://a/"}) == 2
    assert {e.url for e in queue.events()} == {"http://new/", "http://a/"}


def test_a_file_that_is_not_a_queue_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """`--queue` pointed at the app's own database by mistake: refused, and not touched -- its
    mode tightened to 0600 first would lock out the app's other users (a web server's group)."""
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    text = tmp_path / "text.sqlite"
    text.write_text("hello, not sqlite at all" * 100)
    for path in (other, text):
        path.chmod(0o644)
    before = {path: path.read_bytes() for path in (other, text)}
    with pytest.raises(QueueError, match="is not a relay queue"):
        SQLiteQueue(other, create=True)
    with pytest.raises(QueueError, match="cannot (open|use) the relay queue .*text.sqlite"):
        SQLiteQueue(text, create=True)
    with pytest.raises(QueueError, match="cannot (open|use) the relay queue .*text.sqlite"):
        SQLiteQueue(text)
    for path, data in before.items():
        assert (path.stat().st_mode & 0o777, path.read_bytes()) == (0o644, data)
    with pytest.raises(QueueError, match="no relay queue at"):
        SQLiteQueue(tmp_path / "missing.sqlite")
    assert not (tmp_path / "missing.sqlite").exists()
