"""The relay's queue worker with its WAL synced by helpers (relay/worker.py): events received while
a sync is under way wait for it to end, then go in one commit with those of the turn in which it
ended, and are answered only once a sync that began after that commit has returned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inspera_cli.relay.queue import NewEvent, SQLiteQueue, Stored
from inspera_cli.relay.worker import QueueWorker
from tests.relay_harness import event_body

APP = "http://127.0.0.1:1/"


class Syncs:
    """Stands in for WalSync: the test says when a sync is under way and when it returns."""

    def __init__(self) -> None:
        self.syncing = False
        self.on_idle: Callable[[], None] = lambda: None
        self.waiting: list[tuple[int, Callable[[OSError | None], None]]] = []
        self.started: list[int] = []  # the latest commit each sync began after

    def after(self, commit: int, done: Callable[[OSError | None], None]) -> None:
        self.waiting.append((commit, done))
        if not self.syncing:
            self.syncing = True
            self.started.append(commit)

    def end(self) -> None:
        """The sync under way returns: it covers the commits it began after."""
        covered = self.started[-1]
        done = [each for commit, each in self.waiting if commit <= covered]
        self.waiting = [(commit, each) for commit, each in self.waiting if commit > covered]
        self.syncing = False
        for each in done:
            each(None)
        if self.waiting:  # commits that came meanwhile: the next sync
            self.syncing = True
            self.started.append(self.waiting[-1][0])
        else:
            self.on_idle()

    def close(self) -> None:
        pass


def rows(path: Path) -> int:
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        db.close()


@pytest.mark.timeout(30)
def test_events_received_while_a_sync_is_under_way_wait_for_it_and_go_in_one_commit(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    queue = SQLiteQueue(path, create=True)
    queue.sync_commits(False)
    queue.wait_for_locks(False)
    syncs = Syncs()
    answered: list[tuple[int, Stored | None, BaseException | None]] = []

    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        worker = QueueWorker(queue, loop, lambda q, events: q.enqueue(events, now=1.0, dedupe_since=0),
                             wal_sync=syncs)  # type: ignore[arg-type]

        def receive(n: int) -> None:
            worker.enqueue(NewEvent(event_body(n), APP),
                           lambda stored, error: answered.append((n, stored, error)))

        receive(1)  # nothing under way: committed at the end of this turn, and a sync begins
        await asyncio.sleep(0)
        seen = [rows(path), list(syncs.started)]
        for n in (2, 3, 4):  # three more turns while that sync is under way
            receive(n)
            await asyncio.sleep(0)
        seen += [rows(path), [n for n, _, _ in answered]]
        syncs.end()  # the first sync returns: event 1 is answered, 2-4 are committed
        receive(5)  # in the same turn: with them
        await asyncio.sleep(0)
        seen += [rows(path), [n for n, _, _ in answered], list(syncs.started)]
        syncs.end()
        await asyncio.sleep(0)
        seen.append([n for n, _, _ in answered])
        worker.close()
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        queue.close()
    assert seen == [
        1, [1],  # event 1: its commit (number 1), then a sync
        1, [],  # 2-4 wait in memory; nothing is answered before its sync
        5, [1], [1, 2],  # at the end of that turn: one commit (number 2) for 2-5, a sync of it
        [1, 2, 3, 4, 5],
    ]
    assert all(error is None and stored is not None and not stored.duplicate for _, stored, error in answered)
