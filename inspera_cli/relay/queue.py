"""The relay's queue: events received and not yet delivered, in one SQLite file.

``EventQueue`` is the small interface the relay needs; ``SQLiteQueue`` implements it with the
standard library's ``sqlite3`` (WAL, ``synchronous=FULL``: a commit is on disk when it returns).
Another engine can implement the same Protocol. One process writes (the relay, on one thread);
other processes (`relay status|events|retry|purge`) open the same file meanwhile -- WAL lets them
read while the relay writes, and their few writes wait for the relay's short transactions.

Schema (``PRAGMA user_version`` = 1, ``application_id`` = 0x49485259 "IHRY")::

    events(
      seq INTEGER PRIMARY KEY,       -- arrival order
      id TEXT UNIQUE,                -- X-Inspera-Delivery-Id: random, 32 hex digits
      digest BLOB,                   -- BLAKE2b-128 of the body: Inspera's retries are stored once
      event TEXT, context_object_id INTEGER,   -- parsed from the body (NULL when it is not JSON/Java-map)
      url TEXT,                      -- the app it goes to (re-routed at start from --forward-to)
      body BLOB, content_type TEXT, signature TEXT,   -- exactly as received
      received_at REAL,              -- seconds since the epoch
      state TEXT,                    -- pending | delivered | dead
      since REAL,                    -- start of the --max-age window: receipt, or the last `retry`
      attempts INTEGER, failures INTEGER,      -- all attempts; failures in a row since `since`
      app_down INTEGER,              -- the last failure was the app being unreachable (resumed early)
      next_attempt_at REAL,          -- pending: when it is due (NULL otherwise)
      last_error TEXT, finished_at REAL)       -- delivered or dead: when
    routes(url TEXT PRIMARY KEY, last_error TEXT, last_error_at REAL)   -- the latest failure per app
    meta(key TEXT PRIMARY KEY, value)          -- the /health probe writes here

Indexes: pending events by (url, next_attempt_at, seq) -- "what is due", in order; events by
digest (duplicates); by (state, finished_at) (counts, purge).

A claim is held in the relay's memory, not in the file: an event claimed when the relay was
killed is simply due again at the next start (at least once; the app dedupes on the id).
"""

from __future__ import annotations

import errno
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

from inspera_cli.errors import ConfigError, NotFoundError
from inspera_cli.files import SYMLINK_REFUSED, open_private

SCHEMA_VERSION = 1
APPLICATION_ID = 0x49485259  # "IHRY": inspera-hooks relay
BUSY_TIMEOUT_MS = 5000
PURGE_CHUNK = 5000  # rows per transaction: a big purge never holds the relay's writes up for long

_SCHEMA = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    digest BLOB NOT NULL,
    event TEXT,
    context_object_id INTEGER,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT,
    signature TEXT,
    received_at REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    since REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    app_down INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error TEXT,
    finished_at REAL
);
CREATE INDEX events_due ON events (url, next_attempt_at, seq) WHERE state = 'pending';
CREATE INDEX events_digest ON events (digest);
CREATE INDEX events_finished ON events (state, finished_at);
CREATE TABLE routes (url TEXT PRIMARY KEY, last_error TEXT, last_error_at REAL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
"""


class QueueError(ConfigError):
    """The queue file cannot be opened or used; the message says which file and why."""


class State(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A signed event to queue, as received."""

    body: bytes
    url: str
    event: str | None = None
    context_object_id: int | None = None
    content_type: str | None = None
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """The outcome of queuing one event: its id, and whether the same body was already queued."""

    id: str
    duplicate: bool


@dataclass(frozen=True, slots=True)
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
    """What the relay needs from a queue. Writes are durable when they return; ``transaction``
    groups several into one commit (group commit)."""

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
                _create_private(self.path)
            elif not self.path.exists():
                raise QueueError(f"no relay queue at {self.path} (start `inspera-hooks relay` first, "
                                 "or give --queue FILE)")
            uri = self.path.absolute().as_uri() + ("" if create else "?mode=rw")
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise QueueError(f"cannot open the relay queue {self.path}: {_describe(exc)}") from exc
        self._depth = 0
        self._known_routes: set[str] = set()
        try:
            self._prepare(create)
        except sqlite3.Error as exc:
            self._db.close()
            raise QueueError(f"cannot use the relay queue {self.path}: {_describe(exc)}") from exc
        except QueueError:
            self._db.close()
            raise

    def _prepare(self, create: bool) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if (application_id != APPLICATION_ID and tables) or (application_id == 0 and not create):
            raise QueueError(f"{self.path} is not a relay queue (another SQLite database)")
        if version > SCHEMA_VERSION:
            raise QueueError(f"{self.path} was made by a newer inspera-hooks (queue version {version}): "
                             "upgrade inspera-hooks")
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise QueueError(f"cannot use the relay queue {self.path}: WAL mode is not available there")
        db.execute("PRAGMA synchronous = FULL")
        if version == 0:
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    # -- the relay's side --------------------------------------------------------------------------

    def enqueue(self, events: Sequence[NewEvent], *, now: float, dedupe_since: float) -> list[Stored]:
        stored = []
        with self.transaction():
            for url in {new.url for new in events} - self._known_routes:
                self._db.execute("INSERT OR IGNORE INTO routes (url) VALUES (?)", (url,))
                self._known_routes.add(url)
            for new in events:
                digest = body_digest(new.body)
                row = self._db.execute(
                    "SELECT id FROM events WHERE digest = ? AND received_at >= ? LIMIT 1",
                    (digest, dedupe_since),
                ).fetchone()
                if row is not None:
                    stored.append(Stored(row[0], True))
                    continue
                event_id = os.urandom(16).hex()
                self._db.execute(
                    "INSERT INTO events (id, digest, event, context_object_id, url, body, content_type,"
                    " signature, received_at, state, since, next_attempt_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (event_id, digest, new.event, new.context_object_id, new.url, new.body, new.content_type,
                     new.signature, now, now, now),
                )
                stored.append(Stored(event_id, False))
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
        counts = dict(self._db.execute("SELECT state, count(*) FROM events GROUP BY state").fetchall())
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
        found: list[str] = []
        unknown: list[str] = []
        with self.transaction():
            for given in ids:
                key = given.strip().lower()
                matches = self._matching(key) if key else []
                if len(matches) != 1:
                    unknown.append(given if not matches else f"{given} (matches more than one event)")
                    continue
                self._db.execute(
                    "UPDATE events SET state = 'pending', since = ?, failures = 0, next_attempt_at = ?,"
                    " finished_at = NULL WHERE id = ?",
                    (now, now, matches[0]),
                )
                found.append(matches[0])
            if unknown:
                raise NotFoundError(
                    f"no such event in {self.path}: {', '.join(unknown)} (nothing was changed)"
                )
        return found

    def _matching(self, prefix: str) -> list[str]:
        """At most two ids that start with ``prefix`` (ids are lower-case hex)."""
        rows = self._db.execute(
            "SELECT id FROM events WHERE id >= ? AND id < ? LIMIT 2", (prefix, prefix + "\x7f")
        )
        return [row[0] for row in rows]

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
                count = self._db.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE state = 'delivered'"
                    " AND finished_at < ? LIMIT ?)",
                    (before, PURGE_CHUNK),
                ).rowcount
            removed += count
            if count < PURGE_CHUNK:
                return removed

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass


def _create_private(path: Path) -> None:
    """The queue file, created 0600 (SQLite gives its -wal and -shm files the same mode); neither
    it nor those files may be symbolic links, which SQLite would write through."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.is_symlink():
            raise OSError(errno.ELOOP, f"{side.name}: {SYMLINK_REFUSED}")
    os.close(open_private(path, os.O_RDWR | os.O_CREAT))
