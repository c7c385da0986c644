"""Which bodies the queue already holds: Inspera's retries are stored once within --max-age.

A B-tree index on a body digest takes each new event into a random leaf page: one more page per
event for the WAL to write and the commit to sync, which was most of the relay's commit. So the
``digests`` table (digest -> the latest event with that body) is brought up to date in bulk, once
``FOLD_AT`` events have come since the last time (a few pages per thousand events), and the
events since then are known from memory. ``meta.indexed_through`` is the last seq the table
covers: after a restart the events past it are read back into memory (one indexed range read).

The relay's connection is the only one that adds events (one relay per queue), so its memory is
the whole truth about them; `purge` (any process) removes the digests of what it deletes.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable, Sequence

# Events known from memory at most (about 250 bytes each: 4 MB). The digests are random, so a
# fold writes every leaf of the table that one of them falls into: folding more at once writes
# fewer pages per event (enqueue in batches of 12, over 96,000 events: 18.4 us an event with
# 4,096, 16.7 with 16,384; 32,768 gained nothing more).
FOLD_AT = 16384
_LOOKUP_CHUNK = 64


class Digests:
    """The digests of the events queued through one connection; see the module docstring."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._recent: dict[bytes, tuple[str, float]] | None = None  # digest -> (id, received_at)
        self._indexed_through = 0

    def stored(self, digests: Sequence[bytes]) -> dict[bytes, tuple[str, float]]:
        """The latest event (id, received_at) stored with each of these body digests, if any."""
        recent = self._known()
        found = {digest: recent[digest] for digest in digests if digest in recent}
        unknown = list(dict.fromkeys(digest for digest in digests if digest not in recent))
        for start in range(0, len(unknown), _LOOKUP_CHUNK):
            chunk = unknown[start:start + _LOOKUP_CHUNK]
            rows = self._db.execute(_lookup(len(chunk)), chunk)
            found.update((digest, (event_id, received_at)) for digest, event_id, received_at in rows)
        return found

    def added(self, events: Iterable[tuple[bytes, str, float]]) -> None:
        """In the transaction that stored them: (digest, id, received_at) of new events. Folds
        them into the table once there are enough."""
        recent = self._known()
        recent.update((digest, (event_id, received_at)) for digest, event_id, received_at in events)
        if len(recent) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Bring the table up to date (in the caller's transaction)."""
        last = self._db.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        if last > self._indexed_through:
            self._db.execute(
                "INSERT INTO digests (digest, seq) SELECT digest, max(seq) FROM events WHERE seq > ?"
                " GROUP BY digest ON CONFLICT (digest) DO UPDATE SET seq = excluded.seq",
                (self._indexed_through,),
            )
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('indexed_through', ?)",
                             (last,))
        self._indexed_through = last
        self._recent = {}

    def reset(self) -> None:
        """A transaction was rolled back: what memory holds is read again from the file."""
        self._recent = None

    def _known(self) -> dict[bytes, tuple[str, float]]:
        if self._recent is None:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'indexed_through'").fetchone()
            self._indexed_through = int(row[0]) if row else 0
            rows = self._db.execute("SELECT digest, id, received_at FROM events WHERE seq > ? ORDER BY seq",
                                    (self._indexed_through,))
            self._recent = {digest: (event_id, received_at) for digest, event_id, received_at in rows}
        return self._recent


def forget(db: sqlite3.Connection, removed: Iterable[tuple[bytes, int]]) -> None:
    """Events (digest, seq) are being deleted: their digests go too, unless a later event has
    the same body."""
    db.executemany("DELETE FROM digests WHERE digest = ? AND seq = ?", removed)


@functools.lru_cache(maxsize=_LOOKUP_CHUNK)
def _lookup(count: int) -> str:
    marks = ", ".join("?" * count)
    return ("SELECT d.digest, e.id, e.received_at FROM digests AS d JOIN events AS e ON e.seq = d.seq"
            f" WHERE d.digest IN ({marks})")
