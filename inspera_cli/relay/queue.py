"""The relay's queue: events received and not yet delivered, in one SQLite file.

``EventQueue`` is the small interface the relay needs; ``SQLiteQueue`` implements it with the
standard library's ``sqlite3`` (WAL, ``synchronous=FULL``: a commit is on disk when it returns;
the relay itself turns that off and syncs the WAL in helper processes, ``relay/walsync.py``).
Another engine can implement the same Protocol. One process writes (the relay, on one thread);
other processes (`relay status|events|retry|purge`) open the same file meanwhile -- WAL lets them
read while the relay writes, and their few writes wait for the relay's short transactions.

The schema, and how older files are upgraded: ``relay/schema.py``.

A claim is held in the relay's memory, not in the file: an event claimed when the relay was
killed is simply due again at the next start (at least once; the app dedupes on the id).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from inspera_cli.errors import NotFoundError
from inspera_cli.relay import schema
from inspera_cli.relay.dedupe import Digests, forget
from inspera_cli.relay.schema import QueueError as QueueError  # where callers have always found it

BUSY_TIMEOUT_MS = 5000
PURGE_CHUNK = 5000  # rows per transaction: a big purge never holds the relay's writes up for long
_INSERT = ("INSERT INTO events (id, digest, event, context_object_id, url, body, content_type, signature,"
           " received_at, state, since, next_attempt_at) VALUES ")
_ROW_VALUES = 8  # bound per row; the time (?1) once for the statement: fewer values to bind
ROWS_PER_INSERT = 64  # one statement (and one release of the GIL) for up to this many events


@functools.lru_cache(maxsize=ROWS_PER_INSERT)
def _insert_rows(count: int) -> str:
    """The INSERT of ``count`` rows: parameter 1 is the time (received, since, due), then
    _ROW_VALUES per row."""
    rows = []
    for row in range(count):
        first = 2 + row * _ROW_VALUES
        values = ", ".join(f"?{first + column}" for column in range(_ROW_VALUES))
        rows.append(f"({values}, ?1, 'pending', ?1, ?1)")
    return _INSERT + ", ".join(rows)


class State(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(slots=True)  # not frozen: that __init__ sets each field through object.__setattr__
class NewEvent:
    """A signed event to queue, as received (one per request: nothing changes it)."""

    body: bytes
    url: str
    event: str | None = None
    context_object_id: int | None = None
    content_type: str | None = None
    signature: str | None = None


@dataclass(slots=True)  # not frozen, as NewEvent: one per event
class Stored:
    """The outcome of queuing one event: its id, whether the same body was already queued, and
    when this copy was taken (for a new event its ``received_at``, from which --max-age counts)."""

    id: str
    duplicate: bool
    at: float


@dataclass(slots=True)  # not frozen, as NewEvent: one per delivery
class QueuedEvent:
    """A pending event, claimed for delivery."""

    seq: int
    id: str
    url: str
    body: bytes
    content_type: str | None
    signature: str | None
    event: str | None
    context_object_id: int | None
    received_at: float
    since: float
    attempts: int
    failures: int


@dataclass(frozen=True, slots=True)
class EventInfo:
    """One event as `relay events` lists it."""

    id: str
    event: str | None
    context_object_id: int | None
    url: str
    received_at: float
    state: State
    attempts: int
    next_attempt_at: float | None
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        """The item of `relay events --json` (SPEC §10: fixed)."""
        return {
            "id": self.id,
            "event": self.event,
            "contextObjectId": self.context_object_id,
            "receivedAt": iso_time(self.received_at),
            "state": self.state.value,
            "attempts": self.attempts,
            "nextAttemptAt": None if self.next_attempt_at is None else iso_time(self.next_attempt_at),
            "lastError": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class RouteStats:
    url: str
    pending: int
    dead: int
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "pending": self.pending, "dead": self.dead, "lastError": self.last_error}


@dataclass(frozen=True, slots=True)
class QueueStats:
    pending: int
    delivered: int
    dead: int
    oldest_pending_seconds: float | None
    routes: tuple[RouteStats, ...]

    def to_json(self) -> dict[str, Any]:
        """`relay status --json` (SPEC §10: fixed)."""
        return {
            "pending": self.pending,
            "delivered": self.delivered,
            "dead": self.dead,
            "oldestPendingSeconds": self.oldest_pending_seconds,
            "routes": [route.to_json() for route in self.routes],
        }


class EventQueue(Protocol):
    """What the relay needs from a queue. Writes are durable when they return (``SQLiteQueue``:
    unless told ``sync_commits(False)``, when its caller syncs the WAL); ``transaction`` groups
    several into one commit (group commit)."""

    def transaction(self) -> AbstractContextManager[None]: ...

    def enqueue(self, events: Sequence[NewEvent], *, now: float, dedupe_since: float) -> list[Stored]:
        """Queue each event (due at once) unless the same body was received since ``dedupe_since``."""

    def claim_due(self, url: str, *, now: float, limit: int, held: Collection[int]) -> list[QueuedEvent]:
        """Up to ``limit`` pending events for ``url`` due by ``now`` (earliest due first, then in
        arrival order), leaving out ``held`` (seqs this relay already has in flight)."""

    def next_due(self, url: str, *, held: Collection[int]) -> float | None:
        """When the next pending event for ``url`` not in ``held`` falls due (None: none)."""

    def delivered(self, seq: int, *, now: float) -> None: ...

    def retry_later(
        self, seq: int, *, next_at: float, error: str, now: float, app_down: bool = False
    ) -> None:
        """``app_down``: the failure was the app being unreachable, not a refusal of this event."""

    def resume(self, url: str, *, now: float) -> int:
        """The app at ``url`` answers again: its events waiting only because it was unreachable
        are due now (in arrival order); how many."""

    def dead(self, seq: int, *, error: str, now: float) -> None: ...

    def reroute(self, routes: Mapping[str | None, str]) -> int:
        """Send events not yet delivered where ``routes`` now says (event name, None the default)."""

    def pending_count(self) -> int: ...

    def stats(self, *, now: float) -> QueueStats: ...

    def events(
        self, *, state: State | None = None, event: str | None = None, limit: int = 100
    ) -> list[EventInfo]:
        """Newest first."""

    def retry(self, ids: Sequence[str], *, now: float) -> list[str]:
        """Make these events (ids or unique prefixes) pending and due now, with a fresh --max-age
        window; their full ids. NotFoundError naming the ids that match nothing."""

    def retry_dead(self, *, now: float) -> int: ...

    def purge_delivered(self, *, before: float) -> int:
        """Delete delivered events that finished before ``before``; how many."""

    def touch(self, *, now: float) -> None:
        """A small durable write: does the queue take writes (the /health probe)?"""

    def close(self) -> None: ...


def busy(exc: BaseException) -> bool:
    """Another connection holds the write lock (SQLITE_BUSY)."""
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode == sqlite3.SQLITE_BUSY


def default_queue_path() -> Path:
    """``relay.sqlite`` in the user's data directory (platformdirs)."""
    from platformdirs import user_data_dir

    from inspera_cli.config import APP_NAME

    return Path(user_data_dir(APP_NAME)) / "relay.sqlite"


_second: tuple[int, str] = (0, "")
_SQLITE_MAX_INT = 2**63 - 1
_LAST_SECOND = 253402300799.0  # 9999-12-31T23:59:59Z, the last second a datetime holds


def iso_time(seconds: float) -> str:
    """UTC with milliseconds and a Z, as `listen` prints times: 2024-05-01T12:00:00.123Z."""
    global _second
    seconds = min(max(seconds, 0.0), _LAST_SECOND)  # a queue from an older build may hold any time
    whole = int(seconds // 1)
    if _second[0] != whole or not _second[1]:  # one strftime per second: a log line per event
        _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S."))
    return f"{_second[1]}{int(seconds % 1 * 1000):03d}Z"


def body_digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


class SQLiteQueue:
    """``EventQueue`` in one SQLite file; use each instance from one thread (its connection's)."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.path = Path(path)
        try:
            if create:
                schema.create_private(self.path)
            elif not self.path.exists():
                raise QueueError(f"no relay queue at {self.path} (start `inspera-hooks relay` first, "
                                 "or give --queue FILE)")
            uri = self.path.absolute().as_uri() + ("" if create else "?mode=rw")
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                                       cached_statements=256)
        except (OSError, sqlite3.Error) as exc:
            raise QueueError(f"cannot open the relay queue {self.path}: {_describe(exc)}") from exc
        self._depth = 0
        self._known_routes: set[str] = set()
        self._digests = Digests(self._db)
        #: The version of the file before this relay upgraded it (None: it did not).
        self.upgraded_from: int | None = None
        self.version = 0
        try:
            self._prepare(create)
        except sqlite3.Error as exc:
            self._db.close()
            raise QueueError(f"cannot use the relay queue {self.path}: {_describe(exc)}") from exc
        except QueueError:
            self._db.close()
            raise

    def _prepare(self, create: bool) -> None:
        """Check the file is a queue; create its tables (or, for the relay, upgrade an older file)."""
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = self.version = schema.check(db, self.path, create=create)
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise QueueError(f"cannot use the relay queue {self.path}: WAL mode is not available there")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA temp_store = MEMORY")  # a statement's undo journal: no temporary file
        if version == 0 or (create and version < schema.SCHEMA_VERSION):
            with self.transaction():
                if version == 0:
                    schema.create(db)
                else:
                    schema.upgrade(db, version)
                    self.upgraded_from = version
            self.version = schema.SCHEMA_VERSION

    @property
    def wal(self) -> Path:
        """The WAL file, where a commit's pages go first."""
        return self.path.with_name(self.path.name + "-wal")

    def wait_for_locks(self, wait: bool) -> None:
        """Whether a write waits (up to BUSY_TIMEOUT_MS) while another process holds the write
        lock, or fails at once with ``sqlite3.OperationalError`` "database is locked" (``busy``):
        a caller on an event loop must not block it, and tries again later itself."""
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS if wait else 0}")

    def sync_commits(self, sync: bool) -> None:
        """Whether a commit ends in an fsync of the WAL (``synchronous=FULL``, the default) or
        leaves it to the caller (``NORMAL``: checkpoints still sync); before any transaction."""
        self._db.execute(f"PRAGMA synchronous = {'FULL' if sync else 'NORMAL'}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One commit for everything inside (nested calls join the outer one)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._digests.reset()  # it may have counted on what is rolled back
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    # -- the relay's side --------------------------------------------------------------------------

    def enqueue(self, events: Sequence[NewEvent], *, now: float, dedupe_since: float) -> list[Stored]:
        digests = [body_digest(new.body) for new in events]
        ids = os.urandom(16 * len(events)).hex()  # one system call for the batch
        with self.transaction():
            for url in {new.url for new in events} - self._known_routes:
                self._db.execute("INSERT OR IGNORE INTO routes (url) VALUES (?)", (url,))
                self._known_routes.add(url)
            latest = self._digests.stored(digests)
            stored, rows = [], []
            for i, (new, digest) in enumerate(zip(events, digests, strict=True)):
                before = latest.get(digest)
                if before is not None and before[1] >= dedupe_since:
                    stored.append(Stored(before[0], True, now))
                    continue
                event_id = ids[32 * i:32 * i + 32]
                latest[digest] = (event_id, now)  # a later copy in this batch is its duplicate
                rows.append((event_id, digest, new.event, new.context_object_id, new.url, new.body,
                             new.content_type, new.signature))
                stored.append(Stored(event_id, False, now))
            for start in range(0, len(rows), ROWS_PER_INSERT):
                chunk = rows[start:start + ROWS_PER_INSERT]
                values: list[object] = [now]
                for row in chunk:
                    values += row
                self._db.execute(_insert_rows(len(chunk)), values)
            self._digests.added((row[1], row[0], now) for row in rows)
        return stored

    def claim_due(self, url: str, *, now: float, limit: int, held: Collection[int]) -> list[QueuedEvent]:
        rows = self._db.execute(
            "SELECT seq, id, url, body, content_type, signature, event, context_object_id, received_at,"
            " since, attempts, failures FROM events"
            " WHERE state = 'pending' AND url = ? AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, seq LIMIT ?",
            (url, now, limit + len(held)),
        ).fetchall()
        return [QueuedEvent(*row) for row in rows if row[0] not in held][:limit]

    def next_due(self, url: str, *, held: Collection[int]) -> float | None:
        rows = self._db.execute(
            "SELECT seq, next_attempt_at FROM events WHERE state = 'pending' AND url = ?"
            " ORDER BY next_attempt_at, seq LIMIT ?",
            (url, len(held) + 1),
        ).fetchall()
        return next((due for seq, due in rows if seq not in held), None)

    def delivered(self, seq: int, *, now: float) -> None:
        self._db.execute(
            "UPDATE events SET state = 'delivered', attempts = attempts + 1, failures = 0,"
            " next_attempt_at = NULL, last_error = NULL, finished_at = ? WHERE seq = ?",
            (now, seq),
        )

    def retry_later(
        self, seq: int, *, next_at: float, error: str, now: float, app_down: bool = False
    ) -> None:
        with self.transaction():
            url = self._finish(seq, "UPDATE events SET attempts = attempts + 1, failures = failures + 1,"
                               " next_attempt_at = ?, last_error = ?, app_down = ? WHERE seq = ?"
                               " AND state = 'pending' RETURNING url", (next_at, error, int(app_down), seq))
            self._route_failed(url, error, now)

    def resume(self, url: str, *, now: float) -> int:
        with self.transaction():
            return self._db.execute(
                "UPDATE events SET next_attempt_at = ?, app_down = 0 WHERE state = 'pending' AND url = ?"
                " AND app_down = 1 AND next_attempt_at > ?",
                (now, url, now),
            ).rowcount

    def dead(self, seq: int, *, error: str, now: float) -> None:
        with self.transaction():
            url = self._finish(seq, "UPDATE events SET state = 'dead', attempts = attempts + 1,"
                               " failures = failures + 1, next_attempt_at = NULL, last_error = ?,"
                               " finished_at = ? WHERE seq = ? AND state = 'pending' RETURNING url",
                               (error, now, seq))
            self._route_failed(url, error, now)

    def _finish(self, seq: int, statement: str, values: tuple[Any, ...]) -> str | None:
        rows = self._db.execute(statement, values).fetchall()  # RETURNING: run it to its end
        return str(rows[0][0]) if rows else None

    def _route_failed(self, url: str | None, error: str, now: float) -> None:
        if url is not None:
            self._db.execute(
                "INSERT INTO routes (url, last_error, last_error_at) VALUES (?, ?, ?) ON CONFLICT (url)"
                " DO UPDATE SET last_error = excluded.last_error, last_error_at = excluded.last_error_at",
                (url, error, now),
            )

    def reroute(self, routes: Mapping[str | None, str]) -> int:
        default = routes.get(None)
        named = [(event, url) for event, url in routes.items() if event is not None]
        moved = 0
        with self.transaction():
            for event, url in named:
                moved += self._db.execute(
                    "UPDATE events SET url = ? WHERE state != 'delivered' AND event = ? AND url != ?",
                    (url, event, url),
                ).rowcount
            for url in routes.values():
                self._db.execute("INSERT OR IGNORE INTO routes (url) VALUES (?)", (url,))
            if default is not None:
                placeholders = ", ".join("?" for _ in named)
                moved += self._db.execute(
                    "UPDATE events SET url = ? WHERE state != 'delivered' AND url != ?"
                    f" AND (event IS NULL OR event NOT IN ({placeholders}))",
                    (default, default, *(event for event, _ in named)),
                ).rowcount
        return moved

    def touch(self, *, now: float) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('health_checked_at', ?)", (now,)
            )

    # -- anyone's side -----------------------------------------------------------------------------

    def pending_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM events WHERE state = 'pending'").fetchone()[0])

    def stats(self, *, now: float) -> QueueStats:
        counts = dict(self._db.execute(
            "SELECT state, count(*) FROM events WHERE state != 'pending' GROUP BY state").fetchall())
        counts["pending"] = self.pending_count()
        oldest = self._db.execute("SELECT min(received_at) FROM events WHERE state = 'pending'").fetchone()[0]
        per_route = {
            url: (pending, dead)
            for url, pending, dead in self._db.execute(
                "SELECT url, sum(state = 'pending'), sum(state = 'dead') FROM events"
                " WHERE state != 'delivered' GROUP BY url"
            )
        }
        errors = dict(self._db.execute("SELECT url, last_error FROM routes").fetchall())
        routes = tuple(
            RouteStats(url, *per_route.get(url, (0, 0)), errors.get(url))
            for url in sorted(set(per_route) | set(errors))
        )
        return QueueStats(
            counts.get("pending", 0), counts.get("delivered", 0), counts.get("dead", 0),
            None if oldest is None else round(max(0.0, now - oldest), 3), routes,
        )

    def events(
        self, *, state: State | None = None, event: str | None = None, limit: int = 100
    ) -> list[EventInfo]:
        where, values = [], []
        if state is not None:
            where.append("state = ?")
            values.append(state.value)
        if event is not None:
            where.append("event = ?")
            values.append(event)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(
            "SELECT id, event, context_object_id, url, received_at, state, attempts, next_attempt_at,"
            f" last_error FROM events {clause} ORDER BY seq DESC LIMIT ?",
            (*values, min(limit, _SQLITE_MAX_INT)),  # more than SQLite can count: every event
        ).fetchall()
        return [
            EventInfo(id_, event_, object_id, url, received, State(state_), attempts, due, error)
            for id_, event_, object_id, url, received, state_, attempts, due, error in rows
        ]

    def retry(self, ids: Sequence[str], *, now: float) -> list[str]:
        # Found before the write transaction: ``id`` has no index, and reading the table must
        # not hold the relay's commits up.
        found: dict[int, str] = {}
        unknown: list[str] = []
        for given in ids:
            key = given.strip().lower()
            matches = self._matching(key) if key else []
            if len(matches) == 1:
                found.update(matches)
            else:
                unknown.append(given if not matches else f"{given} (matches more than one event)")
        with self.transaction():
            for seq, event_id in found.items():
                if not self._db.execute(
                    "UPDATE events SET state = 'pending', since = ?, failures = 0, next_attempt_at = ?,"
                    " finished_at = NULL WHERE seq = ? AND id = ?",
                    (now, now, seq, event_id),
                ).rowcount:
                    unknown.append(event_id)  # purged meanwhile
            if unknown:
                raise NotFoundError(
                    f"no such event in {self.path}: {', '.join(unknown)} (nothing was changed)"
                )
        return list(found.values())

    def _matching(self, prefix: str) -> list[tuple[int, str]]:
        """At most two (seq, id) whose id starts with ``prefix`` (ids are lower-case hex)."""
        rows = self._db.execute(
            "SELECT seq, id FROM events WHERE id >= ? AND id < ? LIMIT 2", (prefix, prefix + "\x7f")
        )
        return [(seq, event_id) for seq, event_id in rows]

    def retry_dead(self, *, now: float) -> int:
        with self.transaction():
            return self._db.execute(
                "UPDATE events SET state = 'pending', since = ?, failures = 0, next_attempt_at = ?,"
                " finished_at = NULL WHERE state = 'dead'",
                (now, now),
            ).rowcount

    def purge_delivered(self, *, before: float) -> int:
        removed = 0
        while True:
            with self.transaction():
                rows = self._db.execute(
                    "SELECT digest, seq FROM events WHERE state = 'delivered' AND state != 'pending'"
                    " AND finished_at < ? LIMIT ?",  # the second term: the index (relay/schema.py)
                    (before, PURGE_CHUNK),
                ).fetchall()
                if self.version >= 2:
                    forget(self._db, rows)
                self._db.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for _, seq in rows])
            removed += len(rows)
            if len(rows) < PURGE_CHUNK:
                return removed

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass
