"""Group commit: durable writes made by one thread, in batches, off the caller's event loop.

Callers ``submit(item, done)``. A committer thread takes everything queued since its last commit
and makes it durable with one call of ``commit`` (for `listen --record`: one write and one fsync;
for a queue: one SQLite transaction). Each item's ``done(error)`` then learns the batch's outcome
-- ``None``, or the exception that failed the whole batch.

With ``loop`` (an asyncio loop; ``submit`` is then called on it), items submitted during one turn
of the loop reach the committer together, at the end of the turn -- so one fsync covers every
request that arrived together, and the committer is woken once per turn, not per item -- and
each batch's callbacks come back to the loop in one ``call_soon_threadsafe``. Without it,
``submit`` may be called from any thread and callbacks run on the committer thread.

    committer = GroupCommit(write_and_fsync, loop=loop, name="record")
    committer.submit(line, lambda error: answer(500 if error else 200))
    ...
    committer.close()  # commits what is queued, then stops the thread
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

T = TypeVar("T")
Done = Callable[[BaseException | None], None]


class CommitterClosed(OSError):
    """An item was submitted after ``close()``: it was not committed."""


class GroupCommit(Generic[T]):
    """One committer thread; see the module docstring. ``commit(items)`` raises to fail a batch."""

    def __init__(
        self,
        commit: Callable[[Sequence[T]], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        name: str = "group-commit",
    ) -> None:
        self._commit = commit
        self._loop = loop
        self._turn: list[tuple[T, Done]] = []  # submitted on the loop during this turn
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._items: list[T] = []
        self._callbacks: list[Done] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T, done: Done) -> None:
        """Queue ``item``; ``done(None)`` once it is committed, ``done(error)`` if that failed.
        Raises CommitterClosed after ``close()``."""
        if self._loop is None:
            self._enqueue([(item, done)])
            return
        if self._closing:
            raise CommitterClosed("closed: nothing more is committed")
        if not self._turn:
            self._loop.call_soon(self._end_of_turn)
        self._turn.append((item, done))

    def submit_now(self, item: T, done: Done) -> None:
        """``submit``, for a caller on the loop that gathered a turn's items itself: the item goes
        to the committer at once, not at the end of the next turn. Raises CommitterClosed."""
        self._enqueue([(item, done)])

    def _end_of_turn(self) -> None:
        turn, self._turn = self._turn, []
        try:
            self._enqueue(turn)
        except CommitterClosed as exc:
            for _, done in turn:
                done(exc)

    def submit_and_wait(self, item: T, timeout: float | None = None) -> None:
        """From a thread that is not the loop's: queue ``item`` and block until it is committed;
        raise what failed the batch (reported on the committer thread, never through the loop)."""
        wait_for(lambda done: self._enqueue([(item, done)]), timeout)

    def _enqueue(self, entries: list[tuple[T, Done]]) -> None:
        with self._lock:
            if self._closing:
                raise CommitterClosed("closed: nothing more is committed")
            wake = not self._items
            for item, done in entries:
                self._items.append(item)
                self._callbacks.append(done)
            if wake:
                self._wake.notify()

    def close(self) -> None:
        """Commit what is queued, hand back its outcomes, stop the thread. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._items and not self._closing:
                    self._wake.wait()
                items, self._items = self._items, []
                callbacks, self._callbacks = self._callbacks, []
            if not items:
                return  # closing, and nothing left
            error: BaseException | None = None
            try:
                self._commit(items)
            except Exception as exc:  # the batch failed: every item in it learns why
                error = exc
            self._report(callbacks, error)

    def _report(self, callbacks: list[Done], error: BaseException | None) -> None:
        hand_back(self._loop, callbacks, error)


def hand_back(loop: asyncio.AbstractEventLoop | None, callbacks: list[Done],
              error: BaseException | None) -> None:
    """From a committing thread: run ``callbacks`` with the outcome -- DirectCallbacks here, the
    others on ``loop`` (in one call) when there is one."""
    direct = [cb for cb in callbacks if isinstance(cb, DirectCallback)]
    handed = [cb for cb in callbacks if not isinstance(cb, DirectCallback)]
    for callback in direct:
        callback(error)
    if not handed:
        return
    if loop is None:
        _run_callbacks(handed, error)
        return
    try:
        loop.call_soon_threadsafe(_run_callbacks, handed, error)
    except RuntimeError:  # the loop is closed: nobody is waiting for these any more
        log.debug("group commit: the loop is gone", exc_info=True)


def wait_for(start: Callable[[DirectCallback], None], timeout: float | None = None) -> None:
    """``start(done)`` something that calls ``done(error)`` on another thread once; block until
    it does and raise its error (TimeoutError if it does not come within ``timeout``)."""
    finished = threading.Event()
    outcome: list[BaseException | None] = []

    def done(error: BaseException | None) -> None:
        outcome.append(error)
        finished.set()

    start(DirectCallback(done))
    if not finished.wait(timeout):
        raise TimeoutError("the commit did not finish in time")
    if outcome[0] is not None:
        raise outcome[0]


def run_on_loop(loop: asyncio.AbstractEventLoop, function: Callable[[], None], timeout: float) -> None:
    """Run ``function`` on ``loop``: now, when called on the loop or once it has stopped; else
    (from another thread) on the loop, waiting for it up to ``timeout`` (then TimeoutError)."""
    import asyncio

    try:
        on_loop = asyncio.get_running_loop() is loop
    except RuntimeError:
        on_loop = False
    if on_loop or not loop.is_running():
        function()
        return
    asyncio.run_coroutine_threadsafe(_call(function), loop).result(timeout)


async def _call(function: Callable[[], None]) -> None:
    function()


class DirectCallback:
    """A callback run on the committing thread itself (a caller blocked waiting for it)."""

    __slots__ = ("done",)

    def __init__(self, done: Done) -> None:
        self.done = done

    def __call__(self, error: BaseException | None) -> None:
        self.done(error)


def _run_callbacks(callbacks: list[Done], error: BaseException | None) -> None:
    for callback in callbacks:
        try:
            callback(error)
        except Exception:
            log.warning("a group-commit callback failed", exc_info=True)
