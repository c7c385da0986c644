"""The relay queue's SQLite schema: creating it, checking a file is one, upgrading older ones.

Version 3 (``PRAGMA user_version``; ``application_id`` = 0x49485259 "IHRY")::

    events(
      seq INTEGER PRIMARY KEY,       -- arrival order
      id TEXT,                       -- X-Inspera-Delivery-Id: random, 32 hex digits (not indexed)
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
    digests(digest BLOB PRIMARY KEY, seq INTEGER) WITHOUT ROWID   -- the latest event per body,
                                     -- up to meta.indexed_through (relay/dedupe.py: kept in bulk)
    routes(url TEXT PRIMARY KEY, last_error TEXT, last_error_at REAL)   -- the latest failure per app
    meta(key TEXT PRIMARY KEY, value)          -- indexed_through; the /health probe writes here

Indexes: pending events by (url, next_attempt_at, seq) -- "what is due", in order; events
delivered or dead by (state, finished_at) (counts, purge: a query names ``state != 'pending'``
for SQLite to use it). Both grow at their end, and a new event enters only the first, so a commit
writes few pages; ``id`` and ``digest`` have none for that reason (`relay retry ID` reads the
table).

Version 2 indexed every event by (state, finished_at), pending ones too: one more page in each
commit of new events (enqueue in batches of 12: 138 -> 111 us a commit without it). Version 1
(before the relay's accept-rate work) also had ``id`` UNIQUE, an index on ``digest`` and no
``digests``. The relay upgrades either when it starts (one transaction), and the subcommands read
and change all three versions.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from inspera_cli.errors import ConfigError
from inspera_cli.files import SYMLINK_REFUSED, open_private, regular_file_head

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # the subcommands' statements work on each
APPLICATION_ID = 0x49485259  # "IHRY": inspera-hooks relay

_EVENTS = """
CREATE TABLE {name} (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
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
)"""
_INDEXES = [
    "CREATE INDEX events_due ON events (url, next_attempt_at, seq) WHERE state = 'pending'",
    "CREATE INDEX events_finished ON events (state, finished_at) WHERE state != 'pending'",
]
_OTHER_TABLES = [
    "CREATE TABLE digests (digest BLOB PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE routes (url TEXT PRIMARY KEY, last_error TEXT, last_error_at REAL)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
]
_COLUMNS = ("seq, id, digest, event, context_object_id, url, body, content_type, signature, received_at,"
            " state, since, attempts, failures, app_down, next_attempt_at, last_error, finished_at")


class QueueError(ConfigError):
    """The queue file cannot be opened or used; the message says which file and why."""


def check(db: sqlite3.Connection, path: Path, *, create: bool) -> int:
    """Raise QueueError unless ``db`` is a relay queue this build reads (or an empty file, with
    ``create``); its version (0: empty)."""
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if (application_id != APPLICATION_ID and tables) or (application_id == 0 and not create):
        raise QueueError(f"{path} is not a relay queue (another SQLite database)")
    if version > SCHEMA_VERSION:
        raise QueueError(f"{path} was made by a newer inspera-hooks (queue version {version}): "
                         "upgrade inspera-hooks")
    if version and version not in READABLE_VERSIONS:
        raise QueueError(f"{path} is a relay queue of version {version}, which this inspera-hooks "
                         "cannot read")
    return version


def create(db: sqlite3.Connection) -> None:
    """The tables and indexes, in the caller's transaction."""
    for statement in [_EVENTS.format(name="events"), *_INDEXES, *_OTHER_TABLES]:
        db.execute(statement)
    _stamp(db)


def upgrade(db: sqlite3.Connection, version: int) -> None:
    """From ``version`` to SCHEMA_VERSION, in the caller's transaction."""
    if version == 1:
        db.execute(_EVENTS.format(name="events_upgraded"))
        db.execute(f"INSERT INTO events_upgraded ({_COLUMNS}) SELECT {_COLUMNS} FROM events")
        db.execute("DROP TABLE events")
        db.execute("ALTER TABLE events_upgraded RENAME TO events")
        for statement in _INDEXES:
            db.execute(statement)
        db.execute(_OTHER_TABLES[0])
        db.execute("INSERT INTO digests (digest, seq) SELECT digest, max(seq) FROM events GROUP BY digest")
        db.execute("INSERT INTO meta (key, value) SELECT 'indexed_through', coalesce(max(seq), 0)"
                   " FROM events")
    elif version == 2:
        db.execute("DROP INDEX events_finished")
        db.execute(_INDEXES[1])
    _stamp(db)


def _stamp(db: sqlite3.Connection) -> None:
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def create_private(path: Path) -> None:
    """The queue file, created 0600 (SQLite gives its -wal and -shm files the same mode); neither
    it nor those files may be symbolic links, which SQLite would write through. A file that is
    there already is tightened to 0600 only if it is a queue (or empty): another file -- the app's
    own database, given by mistake -- is left as it is, and ``check`` refuses it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.is_symlink():
            raise OSError(errno.ELOOP, f"{side.name}: {SYMLINK_REFUSED}")
    if _queue_or_nothing(path):
        os.close(open_private(path, os.O_RDWR | os.O_CREAT))


def _queue_or_nothing(path: Path) -> bool:
    """No file, an empty one, or a SQLite file stamped with our application id (its header holds
    it at bytes 68-71). Nothing readable as a file (a link, a FIFO) counts as one: ``open_private``
    refuses a link, saying why, and leaves what is not a regular file as it is."""
    head = regular_file_head(path, 72)
    return not head or (head.startswith(b"SQLite format 3\x00")
                        and int.from_bytes(head[68:72], "big") == APPLICATION_ID)
