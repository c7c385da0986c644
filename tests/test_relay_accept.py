"""The relay's accepting path as the accept-rate work left it: a batch of events is a few
inserts; duplicates (within --max-age only) are found through memory and the digests table,
across folds, restarts and rollbacks; `retry` finds ids without an index."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspera_cli.relay.queue import SQLiteQueue
from tests.test_relay_queue import APP, T0, new


@pytest.fixture(name="queue")
def open_queue(tmp_path: Path) -> SQLiteQueue:
    opened = SQLiteQueue(tmp_path / "q.sqlite", create=True)
    yield opened
    opened.close()


def test_a_batch_with_new_events_duplicates_and_a_body_beyond_max_age(queue: SQLiteQueue) -> None:
    [old] = queue.enqueue([new(1)], now=T0, dedupe_since=0)
    [fresh] = queue.enqueue([new(2)], now=T0 + 90, dedupe_since=0)
    later = T0 + 100  # --max-age 60 s: body 1 is beyond it, body 2 within
    batch = [new(3), new(2), new(1), new(3), new(1), new(4)]
    stored = queue.enqueue(batch, now=later, dedupe_since=later - 60)
    assert [s.duplicate for s in stored] == [False, True, False, True, True, False]
    assert stored[1].id == fresh.id
    assert stored[3].id == stored[0].id and stored[4].id == stored[2].id != old.id
    rows = queue._db.execute("SELECT id FROM events ORDER BY seq").fetchall()
    assert [row[0] for row in rows] == [old.id, fresh.id, stored[0].id, stored[2].id, stored[5].id]
    again = queue.enqueue([new(1)], now=later + 1, dedupe_since=later + 1 - 60)[0]
    assert again.id == stored[2].id and again.duplicate


def test_retry_finds_ids_and_prefixes_without_an_index(queue: SQLiteQueue) -> None:
    stored = queue.enqueue([new(n) for n in range(50)], now=T0, dedupe_since=0)
    indexed = {row[0] for row in queue._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert not any("id" in queue._db.execute(f"PRAGMA index_info({name})").fetchall()[0][2:]
                   for name in indexed)
    for event in queue.claim_due(APP, now=T0, limit=50, held=()):
        queue.dead(event.seq, error="boom", now=T0)
    assert queue.retry([stored[7].id.upper(), stored[9].id[:12]], now=T0 + 1) == [stored[7].id, stored[9].id]
    assert {e.id for e in queue.claim_due(APP, now=T0 + 1, limit=50, held=())} == {stored[7].id, stored[9].id}


def test_duplicates_are_found_across_folds_restarts_and_rollbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digests of the latest events live in memory until FOLD_AT of them are folded into the
    table; a restart reads them back, a rolled-back batch forgets them."""
    from inspera_cli.relay import dedupe

    monkeypatch.setattr(dedupe, "FOLD_AT", 5)
    path = tmp_path / "q.sqlite"
    queue = SQLiteQueue(path, create=True)
    first = queue.enqueue([new(n) for n in range(7)], now=T0, dedupe_since=0)  # 7 >= 5: folded
    more = queue.enqueue([new(n) for n in range(7, 10)], now=T0, dedupe_since=0)  # in memory
    indexed = queue._db.execute("SELECT count(*) FROM digests").fetchone()[0]
    assert indexed == 7
    with pytest.raises(RuntimeError), queue.transaction():
        queue.enqueue([new(20)], now=T0, dedupe_since=0)
        raise RuntimeError("the commit failed")
    queue.close()
    queue = SQLiteQueue(path, create=True)  # a restart
    try:
        again = queue.enqueue([new(n) for n in (0, 6, 7, 9, 20)], now=T0 + 1, dedupe_since=0)
        assert [(s.id, s.duplicate) for s in again[:4]] == [(first[0].id, True), (first[6].id, True),
                                                            (more[0].id, True), (more[2].id, True)]
        assert not again[4].duplicate  # body 20 was never committed
        assert queue._db.execute("SELECT count(*) FROM events").fetchone()[0] == 11
    finally:
        queue.close()


def test_purge_removes_the_digests_of_what_it_deletes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inspera_cli.relay import dedupe

    monkeypatch.setattr(dedupe, "FOLD_AT", 1)
    queue = SQLiteQueue(tmp_path / "q.sqlite", create=True)
    try:
        gone, kept = queue.enqueue([new(1), new(2)], now=T0, dedupe_since=0)
        queue.delivered(1, now=T0)
        assert queue.purge_delivered(before=T0 + 1) == 1
        assert queue._db.execute("SELECT count(*) FROM digests").fetchone()[0] == 1
        again = queue.enqueue([new(1), new(2)], now=T0 + 2, dedupe_since=0)
        assert [(s.duplicate, s.id == kept.id) for s in again] == [(False, False), (True, True)]
    finally:
        queue.close()


def test_a_batch_larger_than_one_insert_keeps_arrival_order_and_finds_its_own_duplicates(
    queue: SQLiteQueue,
) -> None:
    from inspera_cli.relay.queue import ROWS_PER_INSERT

    count = 2 * ROWS_PER_INSERT + 10
    bodies = [n % (count - 20) for n in range(count)]  # the last 20 repeat the first 20
    stored = queue.enqueue([new(n) for n in bodies], now=T0, dedupe_since=0)
    assert [s.duplicate for s in stored] == [False] * (count - 20) + [True] * 20
    assert [s.id for s in stored[-20:]] == [s.id for s in stored[:20]]
    rows = queue._db.execute("SELECT seq, id, context_object_id FROM events ORDER BY seq").fetchall()
    assert [(seq, event_id, n) for seq, event_id, n in rows] == [
        (i + 1, stored[i].id, i) for i in range(count - 20)
    ]
