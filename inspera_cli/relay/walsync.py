"""Acknowledging only what is on disk, without the queue's thread waiting for the disk.

With ``synchronous=FULL`` every SQLite commit ended in an fsync of the WAL file, on the queue's
thread: the next batch waited for it (1-4 ms on a busy disk, each of 32 connections waiting for
one), and its kernel time was the queue thread's. So the relay commits with ``synchronous=NORMAL``
-- a commit writes its pages to the WAL (the page cache) and returns; checkpoints still sync, as
SQLite does in that mode -- and what FULL did at the end of each commit is done here: an
fdatasync of the WAL file that begins after the commit returned. Two helper processes do it
(``syncprocess.SyncPool``, as for `listen --record`), asked on the loop when a commit's results
arrive there, so the queue's thread goes on with the next batch meanwhile and one sync covers
every commit before it began. A SIGKILL loses nothing either way (the page cache survives it);
this is about power loss, where a commit now counts once the sync that covers it has returned.

A failed sync fails every commit it covers, and every later one until the relay restarts (their
calls get the error, the events a 503): after a failed fdatasync the kernel may have dropped
pages that a later, successful sync would not write again.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from inspera_cli.files import fsync_directory

if TYPE_CHECKING:
    import asyncio

    from inspera_cli.syncprocess import SyncPool

log = logging.getLogger(__name__)

Synced = Callable[[OSError | None], None]
DRAIN_TIME = 10.0  # seconds the commits left at close get to be synced


class WalSync:
    """Syncs of the WAL file ``wal`` in helper processes, for calls on ``loop``. Raises OSError
    when no helper can start (the caller then keeps ``synchronous=FULL``)."""

    def __init__(self, wal: Path, loop: asyncio.AbstractEventLoop) -> None:
        from inspera_cli.syncprocess import SyncPool

        fd = os.open(wal, os.O_RDONLY)
        try:
            self._pool: SyncPool = SyncPool(wal, fd, loop, self._synced, what="the relay queue")
        finally:
            os.close(fd)
        # The WAL may be new (SQLite removes it when the last connection closes): a sync of the
        # file does not make its directory entry durable, and SQLite would sync the directory
        # only at the first checkpoint, a thousand pages on.
        fsync_directory(wal.parent)
        self._loop = loop
        self._waiting: deque[tuple[int, Synced]] = deque()  # (commit, done), commits in order
        self._durable = 0  # every commit up to this one is on disk
        self._failed: OSError | None = None
        #: On the loop, when the last sync under way has returned and none follows (``syncing``).
        self.on_idle: Callable[[], None] = lambda: None

    @property
    def syncing(self) -> bool:
        """A sync is under way (and they still work): a commit made now waits for it to end
        before a sync that covers it can begin."""
        return self._failed is None and not self._pool.idle

    def after(self, commit: int, done: Synced) -> None:
        """On the loop, once commit number ``commit`` (1, 2, ... in the order of the commits) has
        returned: ``done(None)`` when it is on disk, ``done(error)`` when it cannot be."""
        if self._failed is not None:
            done(self._failed)
        elif commit <= self._durable:
            done(None)
        else:
            self._waiting.append((commit, done))
            self._pool.request(commit)

    def _synced(self, commit: int | None, error: OSError | None) -> None:
        """On the loop: a sync that covers every commit up to ``commit`` has returned (None: one
        that no longer counts; only a helper is free again)."""
        if error is not None and self._failed is None:
            log.warning("cannot sync the relay queue: %s", error.strerror or error)
            self._failed = error
            self._pool.forget()
        if commit is not None and error is None:
            self._durable = max(self._durable, commit)
        waiting = self._waiting
        while waiting and (self._failed is not None or waiting[0][0] <= self._durable):
            _, done = waiting.popleft()
            done(self._failed)
        if waiting:  # commits that came while both helpers were busy
            self._pool.request(waiting[-1][0])
        if not self.syncing:
            self.on_idle()

    def close(self) -> None:
        """From a thread that is not the loop's while it runs: let the commits handed back to it
        be synced (up to DRAIN_TIME), then stop the helpers; on the loop, or once it stopped: stop
        them now. A commit still waiting fails."""
        import asyncio

        async def drain_and_stop() -> None:
            deadline = self._loop.time() + DRAIN_TIME
            while self._waiting and self._loop.time() < deadline:
                await asyncio.sleep(0.005)
            self._stop()

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop or not self._loop.is_running():
            self._stop()
            return
        asyncio.run_coroutine_threadsafe(drain_and_stop(), self._loop).result(DRAIN_TIME + 35)

    def _stop(self) -> None:
        self._pool.close()
        closed = OSError(errno.EIO, "the relay queue is closed")
        while self._waiting:
            _, done = self._waiting.popleft()
            done(closed)
