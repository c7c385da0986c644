"""The relay's accepting path as the accept-rate work left it: a batch of events is one insert,
duplicates are found by the digest's UNIQUE index (within --max-age only), and `retry` finds ids
without an index."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspera_cli.relay.queue import NewEvent, SQLiteQueue

APP = "http://127.0.0.1:5000/hooks"
T0 = 1_700_000_000.0


@pytest.fixture
def queue(tmp_path: Path) -> SQLiteQueue:
    q = SQLiteQueue(tmp_path / "q.sqlite", create=True)
    yield q
    q.close()


def new(n: int) -> NewEvent:
    return NewEvent(f'{{"contextObjectId": {n}}}'.encode(), APP, "confirm_final_grades", n)


def test_a_batch_with_new_events_duplicates_and_a_body_beyond_max_age(queue: SQLiteQueue) -> None:
    [old] = queue.enqueue([new(1)], now=T0, dedupe_since=0)
    [fresh] = queue.enqueue([new(2)], now=T0 + 90, dedupe_since=0)
    later = T0 + 100  # --max-age 60 s: body 1 is beyond it, body 2 within
    batch = [new(3), new(2), new(1), new(3), new(1), new(4)]
    stored = queue.enqueue(batch, now=later, dedupe_since=later - 60)
    assert [s.duplicate for s in stored] == [False, True, False, True, True, False]
    assert stored[1].id == fresh.id
    assert stored[3].id == stored[0].id and stored[4].id == stored[2].id != old.id
    rows = queue._db.execute("SELECT id, digest IS NULL FROM events ORDER BY seq").fetchall()
    # Stored in arrival order; the first copy of body 1 no longer dedupes (its digest went to the new one).
    assert rows == [(old.id, 1), (fresh.id, 0), (stored[0].id, 0), (stored[2].id, 0), (stored[5].id, 0)]
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


def test_the_log_feed_flushes_once_per_run_of_lines_it_took() -> None:
    from inspera_cli.listener.feed import Feed

    seen: list[object] = []
    feed: Feed[int] = Feed(seen.append, idle=lambda: seen.append("flush"), name="test-feed")
    for n in range(1000):
        feed.put(n)
    feed.close()
    assert [item for item in seen if item != "flush"] == list(range(1000))
    assert seen[-1] == "flush" and 1 <= seen.count("flush") < 10  # not one per line
