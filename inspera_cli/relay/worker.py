"""The queue on a thread of its own, for code on the event loop: group commit of every write.

``QueueWorker.write(fn, done)`` and ``read(fn, done)`` queue a call ``fn(queue)``, and
``enqueue(new, done)`` an event received; one thread runs them in batches -- everything submitted
during one turn of the loop, or while the previous batch was being committed -- with all the
batch's writes in one SQLite transaction (one fsync): its events first, in one ``receive`` call
(one insert statement for them all), then the other writes; then its reads. ``done(result,
error)`` comes back on the loop. A failed transaction fails every call in its batch (an event not
committed is answered 503, never 200). The events of one turn travel as one call, and their
outcomes come back in one callback (not one hand-off each: under load a turn carries dozens).
With a ``WalSync`` (the queue then commits without an fsync), a write's ``done`` waits on the loop
for a sync of the WAL that began after its commit returned -- and then there is no thread: the
batch runs on the loop itself. A commit that does not wait for the disk takes a few hundred µs;
handing it to a thread and back cost more than that, in the GIL passed to and fro and the
threads' wake-ups (bench_relay, accept rate / listen --record: 0.52 -> 0.60 at 32 connections,
0.88 -> 0.97 at 256). The events of a turn are committed at its end; or, while a sync is under
way, at the end of the turn in which it returned, with the events of every turn meanwhile. Their
answers would wait for it anyway (a sync that covers a commit begins after it), and most of a
commit's cost is the same for one event or fifty -- locks, a WAL frame per page, the index pages
-- so fewer, larger commits cost less CPU per event (bench_relay at 32 connections: 13 events a
commit -> 18, CPU per request 92 -> 82 us and 83 -> 77 in two paired runs; then waiting for the
end of that turn: 18 -> 21, 79 -> 73 us). Then the queue must not wait for a lock on the loop: while
another process (`relay retry`, `purge`) holds the write lock, the batch is tried again every
few ms, up to the usual BUSY_TIMEOUT_MS, and the loop serves on meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from inspera_cli.groupcommit import CommitterClosed, GroupCommit, run_on_loop
from inspera_cli.relay.queue import BUSY_TIMEOUT_MS, EventQueue, NewEvent, Stored, busy
from inspera_cli.relay.walsync import WalSync

R = TypeVar("R")
Done = Callable[[R | None, BaseException | None], None]
Receive = Callable[[EventQueue, list[NewEvent]], list[Stored]]
Finished = Callable[[BaseException | None], None]
BUSY_RETRY = 0.005  # seconds between tries while another process holds the write lock


class _Call(Generic[R]):
    __slots__ = ("commit", "error", "fn", "new", "result", "writes")

    def __init__(
        self, fn: Callable[[EventQueue], R] | None, writes: bool, new: list[NewEvent] | None = None
    ) -> None:
        self.fn = fn
        self.writes = writes
        self.new = new
        self.result: R | None = None
        self.error: BaseException | None = None
        self.commit = 0  # of a write: the number of the commit that made it


class QueueWorker:
    """Runs calls on ``queue`` from one thread; see the module docstring. ``receive(queue, events)``
    queues a batch's events (on that thread) and says what became of each."""

    def __init__(
        self, queue: EventQueue, loop: asyncio.AbstractEventLoop, receive: Receive, *,
        wal_sync: WalSync | None = None,
    ) -> None:
        self.queue = queue
        self._loop = loop
        self._receive = receive
        self._wal_sync = wal_sync
        self._commits = 0  # on the thread (or the loop): transactions committed
        self._committer: GroupCommit[_Call[Any]] | None = (
            None if wal_sync is not None else GroupCommit(self._run, loop=loop, name="relay-queue"))
        self._batch: list[tuple[_Call[Any], Finished]] = []  # on the loop, without a committer
        self._batch_due = False  # a run of the batch is scheduled
        self._busy_since: float | None = None
        self._held = False  # the batch waits for the sync under way to end
        if wal_sync is not None:
            wal_sync.on_idle = self._sync_ended
        self._closed = False
        self._turn: list[NewEvent] = []  # received during this turn of the loop
        self._turn_done: list[Done[Stored]] = []

    def enqueue(self, new: NewEvent, done: Done[Stored]) -> None:
        """On the loop: queue ``new`` with the other events of the batch."""
        if not self._turn:
            self._loop.call_soon(self._end_of_turn)
        self._turn.append(new)
        self._turn_done.append(done)

    def _end_of_turn(self) -> None:
        if not self._turn:  # taken already, by _after_sync
            return
        news, dones, self._turn, self._turn_done = self._turn, self._turn_done, [], []

        def done(stored: list[Stored] | None, error: BaseException | None) -> None:
            outcomes: list[Stored | None] = [None] * len(dones) if stored is None else list(stored)
            for each, outcome in zip(dones, outcomes, strict=True):
                each(outcome, error)

        self._submit(_Call(None, True, news), done, now=True)

    def write(self, fn: Callable[[EventQueue], R], done: Done[R]) -> None:
        """On the loop: ``fn(queue)`` inside the batch's transaction."""
        self._submit(_Call(fn, True), done)

    def read(self, fn: Callable[[EventQueue], R], done: Done[R]) -> None:
        """On the loop: ``fn(queue)`` after the batch's transaction committed."""
        self._submit(_Call(fn, False), done)

    async def call(self, fn: Callable[[EventQueue], R], *, writes: bool = False) -> R:
        """``fn(queue)`` awaited; raises what it (or its batch) raised."""
        future: asyncio.Future[R] = self._loop.create_future()

        def done(result: R | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        self._submit(_Call(fn, writes), done)
        return await future

    def _submit(self, call: _Call[R], done: Done[R], *, now: bool = False) -> None:
        def finished(error: BaseException | None) -> None:
            error = error or call.error
            if error is None and call.writes and self._wal_sync is not None:
                self._wal_sync.after(call.commit, lambda bad: done(None if bad else call.result, bad))
                return
            done(None if error else call.result, error)

        if self._committer is None:
            self._add(call, finished, now=now)
            return
        try:
            (self._committer.submit_now if now else self._committer.submit)(call, finished)
        except OSError as exc:  # closed: shutting down
            done(None, exc)

    def _add(self, call: _Call[Any], finished: Finished, *, now: bool = False) -> None:
        """On the loop: into the batch run at the end of this turn (``now``: at once, with what
        is waiting -- the events of a turn, gathered by ``_end_of_turn``; unless a lock is, or
        once the WAL sync under way has ended)."""
        if self._closed:
            finished(CommitterClosed("closed: nothing more is committed"))
            return
        self._batch.append((call, finished))
        if now and self._busy_since is None:
            if self._wal_sync is not None and self._wal_sync.syncing:
                self._held = True  # _sync_ended runs it
                return
            self._run_batch()
        elif not self._batch_due:
            self._batch_due = True
            self._loop.call_soon(self._run_batch)

    def _sync_ended(self) -> None:
        """The sync under way has returned: the events held for it go at the end of this turn,
        with those received in it (a sync's answer is one of the turn's many reads)."""
        if self._held:
            self._loop.call_soon(self._after_sync)

    def _after_sync(self) -> None:
        if self._turn:
            self._end_of_turn()  # and with it what is held
        elif self._held and not self._batch_due:
            self._run_batch()

    def _run_batch(self) -> None:
        """On the loop: what the committer thread does with a batch."""
        self._batch_due = self._held = False
        batch, self._batch = self._batch, []
        if not batch:
            return
        error: BaseException | None = None
        try:
            self._run([call for call, _ in batch])
        except Exception as exc:
            now = self._loop.time()
            if busy(exc) and not self._closed and now - (self._busy_since or now) < BUSY_TIMEOUT_MS / 1000:
                self._busy_since = self._busy_since or now
                self._batch[:0] = batch  # first, when tried again
                self._batch_due = True
                self._loop.call_later(BUSY_RETRY, self._run_batch)
                return
            error = exc
        self._busy_since = None
        for _, finished in batch:
            finished(error)

    def close(self) -> None:
        """Run what is queued, then stop the thread (the queue itself stays open) and the syncs.
        Without a thread, the batch left runs on the loop (waited for, from another thread)."""
        if self._committer is not None:
            self._committer.close()
        else:
            self._close_batch()
        if self._wal_sync is not None:
            self._wal_sync.close()

    def _close_batch(self) -> None:
        def last_run() -> None:
            self._closed = True
            self._run_batch()

        try:
            run_on_loop(self._loop, last_run, BUSY_TIMEOUT_MS / 1000 + 30)
        except TimeoutError:
            self._closed = True

    def _run(self, calls: Sequence[_Call[Any]]) -> None:
        received = [call for call in calls if call.new is not None]
        writes = [(call, call.fn) for call in calls if call.writes and call.fn is not None]
        if received or writes:
            with self.queue.transaction():
                if received:
                    stored = self._receive(self.queue, [new for call in received for new in call.new or ()])
                    start = 0
                    for call in received:
                        end = start + len(call.new or ())
                        call.result, start = stored[start:end], end
                for call, fn in writes:
                    call.result = fn(self.queue)
            self._commits += 1
            for call in received:
                call.commit = self._commits
            for call, _ in writes:
                call.commit = self._commits
        for call in calls:
            if not call.writes and call.fn is not None:
                try:
                    call.result = call.fn(self.queue)
                except Exception as exc:  # a failed read fails only itself
                    call.error = exc
