"""Subscriptions of the sandbox tenant: in memory, or in a SQLite file that survives a restart."""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inspera_cli.errors import ConfigError
from inspera_cli.files import open_private

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    subscription_id INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    secret TEXT NOT NULL,
    last_modified TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class StoredSubscription:
    subscription_id: int
    event: str
    endpoint: str
    secret: str
    last_modified: str

    def to_json(self) -> dict[str, Any]:
        """The shape Inspera's API answers; the secret is never part of it."""
        return {
            "subscriptionId": self.subscription_id,
            "event": self.event,
            "endpoint": self.endpoint,
            "lastModified": self.last_modified,
        }


def iso_now() -> str:
    # Inspera's lastModified carries milliseconds: 2021-01-29T13:09:32.287Z
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class SubscriptionStore:
    """Thread-safe subscription table; ``path=None`` keeps it in memory.

    AUTOINCREMENT so that an id is never handed out twice, even after a delete (as Inspera does).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        target = ":memory:"
        if path is not None:
            path = path.expanduser()
            # The file holds webhook secrets: create it private before SQLite opens it.
            try:
                os.close(open_private(path, os.O_CREAT | os.O_RDWR))
            except OSError as exc:
                raise ConfigError(f"cannot open the sandbox state file {path}: {exc.strerror}") from exc
            target = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ConfigError(f"{path} is not a sandbox state file (SQLite: {exc})") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, event: str, endpoint: str, secret: str) -> StoredSubscription:
        modified = iso_now()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO subscriptions (event, endpoint, secret, last_modified)"
                " VALUES (?, ?, ?, ?)",
                (event, endpoint, secret, modified),
            )
            new_id = cursor.lastrowid
        assert new_id is not None
        return StoredSubscription(new_id, event, endpoint, secret, modified)

    def all(self, event: str | None = None) -> list[StoredSubscription]:
        query = "SELECT subscription_id, event, endpoint, secret, last_modified FROM subscriptions"
        params: tuple[str, ...] = ()
        if event is not None:
            query += " WHERE event = ?"
            params = (event,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY subscription_id", params).fetchall()
        return [StoredSubscription(*row) for row in rows]

    def delete(self, subscription_id: int) -> bool:
        """Remove one subscription; False if there was none with that id."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM subscriptions WHERE subscription_id = ?", (subscription_id,)
            )
        return cursor.rowcount > 0
