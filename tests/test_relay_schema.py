"""The queue file's versions: a version-1 file (before the accept-rate work) or a version-2 one
(pending events in the finished index) is upgraded by the relay and read as it is by the
subcommands; a newer one is refused in one line."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from inspera_cli.relay.queue import NewEvent, QueueError, SQLiteQueue
from inspera_cli.relay.schema import APPLICATION_ID, SCHEMA_VERSION
from tests.processes import CLI, LineProcess
from tests.receiver import free_port
from tests.relay_harness import AppStub, event_body, relay_env, signed_post

T0 = 1_700_000_000.0
APP = "http://127.0.0.1:1/"

# The version-1 layout, as the first relay build created it.
VERSION_1 = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, digest BLOB NOT NULL, event TEXT,
    context_object_id INTEGER, url TEXT NOT NULL, body BLOB NOT NULL, content_type TEXT, signature TEXT,
    received_at REAL NOT NULL, state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    since REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    app_down INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL, last_error TEXT, finished_at REAL
);
CREATE INDEX events_due ON events (url, next_attempt_at, seq) WHERE state = 'pending';
CREATE INDEX events_digest ON events (digest);
CREATE INDEX events_finished ON events (state, finished_at);
CREATE TABLE routes (url TEXT PRIMARY KEY, last_error TEXT, last_error_at REAL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
"""


def ids(n: int) -> str:
    return str(n) * 32


def version_1_queue(path: Path, app: str = APP, t0: float = T0) -> None:
    """Three events as a version-1 relay stored them: body 1 twice (the second a day later, after
    --max-age: stored again), body 2 delivered."""
    from inspera_cli.relay.queue import body_digest

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript(VERSION_1)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 1")
    for seq, (n, at, state) in enumerate([(1, t0, "pending"), (2, t0, "delivered"),
                                          (1, t0 + 90000, "pending")], start=1):
        body = event_body(n)
        db.execute(
            "INSERT INTO events (id, digest, event, context_object_id, url, body, content_type, signature,"
            " received_at, state, since, next_attempt_at) VALUES (?, ?, 'confirm_final_grades', ?, ?, ?,"
            " 'application/json', 'sig', ?, ?, ?, ?)",
            (ids(seq), body_digest(body), n, app, body, at, state, at,
             at if state == "pending" else None),
        )
    db.close()


def test_the_relay_upgrades_a_version_1_queue_keeping_every_event(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    version_1_queue(path)
    queue = SQLiteQueue(path, create=True)
    try:
        assert queue.upgraded_from == 1
        db = queue._db
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        rows = db.execute("SELECT seq, id, state FROM events ORDER BY seq").fetchall()
        assert rows == [(1, ids(1), "pending"), (2, ids(2), "delivered"), (3, ids(3), "pending")]
        assert db.execute("SELECT seq FROM digests ORDER BY seq").fetchall() == [(2,), (3,)]  # the latest
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # Duplicates are still found among the upgraded events, within --max-age only.
        again = queue.enqueue([NewEvent(event_body(1), APP), NewEvent(event_body(2), APP)],
                              now=T0 + 90010, dedupe_since=T0 + 90010 - 3600)
        assert [(s.id, s.duplicate) for s in again][0] == (ids(3), True)
        assert not again[1].duplicate and again[1].id != ids(2)
        assert queue.retry([ids(1)[:5]], now=T0 + 90020) == [ids(1)]
    finally:
        queue.close()
    assert SQLiteQueue(path, create=True).upgraded_from is None  # once


def test_the_subcommands_read_a_version_1_queue_without_upgrading_it(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    version_1_queue(path)
    status = cli("relay", "status", "--queue", str(path), "--json").json
    assert (status["pending"], status["delivered"]) == (2, 1)
    assert len(cli("relay", "events", "--queue", str(path), "--json").json) == 3
    assert cli("relay", "retry", "--queue", str(path), ids(2)).exit_code == 0
    assert cli("relay", "purge", "--queue", str(path), "--delivered", "--older-than", "1d").exit_code == 0
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()


def version_2_queue(path: Path) -> None:
    """A version-2 file: this build's, with the finished index over every event, pending ones too;
    one event delivered, one pending."""
    queue = SQLiteQueue(path, create=True)
    stored = queue.enqueue([NewEvent(event_body(1), APP), NewEvent(event_body(2), APP)], now=T0,
                           dedupe_since=0)
    seq = queue._db.execute("SELECT seq FROM events WHERE id = ?", (stored[0].id,)).fetchone()[0]
    queue.delivered(seq, now=T0 + 1)
    queue.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP INDEX events_finished")
    db.execute("CREATE INDEX events_finished ON events (state, finished_at)")
    db.execute("PRAGMA user_version = 2")
    db.close()


def finished_index(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return str(db.execute("SELECT sql FROM sqlite_master WHERE name = 'events_finished'").fetchone()[0])
    finally:
        db.close()


def test_the_relay_upgrades_a_version_2_queue_to_a_finished_index_without_pending_events(
    cli: Any, tmp_path: Path,
) -> None:
    path = tmp_path / "q.sqlite"
    version_2_queue(path)
    status = cli("relay", "status", "--queue", str(path), "--json").json  # read as it is
    assert (status["pending"], status["delivered"]) == (1, 1)
    assert "WHERE" not in finished_index(path)
    queue = SQLiteQueue(path, create=True)
    try:
        assert queue.upgraded_from == 2
        assert queue._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert queue._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # What the subcommands ask goes through the index; new events do not enter it.
        plan = " ".join(row[-1] for row in queue._db.execute(
            "EXPLAIN QUERY PLAN SELECT digest, seq FROM events WHERE state = 'delivered'"
            " AND state != 'pending' AND finished_at < 5 LIMIT 10"))
        assert "USING INDEX events_finished" in plan
        stats = queue.stats(now=T0 + 10)
        assert (stats.pending, stats.delivered, stats.dead) == (1, 1, 0)
        assert queue.purge_delivered(before=T0 + 2) == 1
    finally:
        queue.close()
    assert finished_index(path).endswith("WHERE state != 'pending'")
    assert cli("relay", "status", "--queue", str(path), "--json").json["delivered"] == 0


def test_a_queue_of_a_newer_version_is_refused_in_one_line(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    SQLiteQueue(path, create=True).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(QueueError, match="made by a newer inspera-hooks"):
        SQLiteQueue(path, create=True)
    result = cli("relay", "status", "--queue", str(path), expect=1)
    assert result.stderr.strip().splitlines() == [
        f"inspera-hooks: error: {path} was made by a newer inspera-hooks (queue version "
        f"{SCHEMA_VERSION + 1}): upgrade inspera-hooks"
    ]


def test_a_relay_started_on_a_version_1_queue_says_it_upgraded_it_and_delivers_its_events(
    tmp_path: Path,
) -> None:
    app = AppStub().start()
    try:
        path = tmp_path / "q.sqlite"
        version_1_queue(path, app.url, time.time() - 90000 - 3600)  # event 3 came an hour ago
        port = free_port()
        argv = [*CLI, "relay", "--secret-env", "RELAY_SECRET", "--forward-to", app.url, "--port", str(port),
                "--admin-port", "0", "--queue", str(path)]
        with LineProcess(argv, relay_env()) as proc:
            assert proc.wait(lambda: any(line.startswith("Admin:") for line in proc.stderr), 20), proc.stderr
            taken = app.wait_taken(2, timeout=20)
            assert sorted(d.delivery_id for d in taken) == [ids(1), ids(3)]
            assert signed_post(port, event_body(1)) == 200  # the same body as event 3: stored once
            assert signed_post(port, event_body(7)) == 200
            assert len(app.wait_taken(3, timeout=20)) == 3
            assert proc.finish(signal.SIGTERM, 15) == 0
        assert "Upgraded the queue from version 1: an older inspera-hooks refuses it now." in proc.stderr
        assert len(app.taken()) == 3
    finally:
        app.stop()
