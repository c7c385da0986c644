"""Group commit: durable writes made by one thread, in batches, off the caller's event loop.

Callers ``submit(item, done)`` from any thread (typically an asyncio loop). A committer thread
takes everything queued since its last commit and makes it durable with one call of ``commit``
(for `listen --record`: one write and one fsync; for a queue: one SQLite transaction). Each item's
``done(error)`` then learns the batch's outcome -- ``None``, or the exception that failed the whole
batch -- delivered through ``hand_back``: with ``loop.call_soon_threadsafe`` the loop is woken once
per batch, not once per item, and every callback runs on the loop.

    committer = GroupCommit(write_and_fsync, hand_back=loop.call_soon_threadsafe, name="record")
    committer.submit(line, lambda error: answer(500 if error else 200))
    ...
    committer.close()  # commits what is queued, then stops the thread
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Done = Callable[[BaseException | None], None]
HandBack = Callable[..., Any]


class CommitterClosed(OSError):
    """An item was submitted after ``close()``: it was not committed."""


class GroupCommit(Generic[T]):
    """One committer thread; see the module docstring. ``commit(items)`` raises to fail a batch."""

    def __init__(
        self,
        commit: Callable[[Sequence[T]], None],
        *,
        hand_back: HandBack | None = None,
        name: str = "group-commit",
    ) -> None:
        self._commit = commit
        self._hand_back = hand_back
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
        self._enqueue(item, done)

    def submit_and_wait(self, item: T, timeout: float | None = None) -> None:
        """Queue ``item`` and block until it is committed; raise what failed the batch. Its
        outcome is reported on the committer thread, never through ``hand_back`` (whose loop may
        be the caller)."""
        finished = threading.Event()
        outcome: list[BaseException | None] = []

        def done(error: BaseException | None) -> None:
            outcome.append(error)
            finished.set()

        self._enqueue(item, _Direct(done))
        if not finished.wait(timeout):
            raise TimeoutError("the commit did not finish in time")
        if outcome[0] is not None:
            raise outcome[0]

    def _enqueue(self, item: T, done: Done) -> None:
        with self._lock:
            if self._closing:
                raise CommitterClosed("closed: nothing more is committed")
            self._items.append(item)
            self._callbacks.append(done)
            if len(self._items) == 1:
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
        direct = [cb for cb in callbacks if isinstance(cb, _Direct)]
        handed = [cb for cb in callbacks if not isinstance(cb, _Direct)]
        for callback in direct:
            callback(error)
        if not handed:
            return
        if self._hand_back is None:
            _run_callbacks(handed, error)
            return
        try:
            self._hand_back(_run_callbacks, handed, error)
        except RuntimeError:  # the loop is closed: nobody is waiting for these any more
            log.debug("group commit: the hand-back target is gone", exc_info=True)


class _Direct:
    """A callback run on the committer thread itself (``submit_and_wait``)."""

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
