"""Ctrl-C and SIGTERM: one policy for the whole command line, installed once by ``cli.py``.

- SIGTERM is handled like Ctrl-C: it raises ``Terminated``, a ``KeyboardInterrupt``, so every
  ``except KeyboardInterrupt`` (cleanup, exit code 130) serves both.
- A write in flight is not abandoned: inside ``write()`` the first signal is held and announced;
  the block runs to its end (a request ends at its timeout at most), and only then is the signal
  raised, so the caller has recorded what the request made. A second signal stops the wait: it is
  raised at once, inside the request.
- At most one interrupt is raised per run. Once it has been, the program is stopping: later
  signals are announced, never raised, so cleanup (deleting temporary subscriptions, stopping a
  tunnel, flushing a record file) is never cut short. ``cleanup()`` gives the same protection to
  a cleanup that runs without any signal (an ``--exit-after`` that was reached).

Outside the command line (nothing installed), ``write()`` and ``cleanup()`` change nothing: a
program that embeds the library keeps Python's own Ctrl-C.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt."""


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@dataclass
class _Guard:
    """A block that a signal must not cut short: a write (held once) or a cleanup (never)."""

    what: str
    hold_once: bool
    held: int | None = None
    signalled: threading.Event = field(default_factory=threading.Event)


class _Policy:
    def __init__(self, notices: queue.SimpleQueue[str | None]) -> None:
        # A handler may run in the middle of the main thread's own write to stderr, or of another
        # handler: it never writes itself (a reentrant write raises), it queues the notice.
        self.notices = notices
        self.guards: list[_Guard] = []
        self.stopping = False

    def announce(self, notice: str) -> None:
        self.notices.put(notice)  # SimpleQueue.put is safe in a signal handler

    def handle(self, signum: int, frame: FrameType | None) -> None:
        guard = self.guards[-1] if self.guards else None
        if guard is not None:
            guard.signalled.set()
        if guard is not None and guard.hold_once and guard.held is None and not self.stopping:
            guard.held = signum
            self.announce(f"Interrupted: waiting for {guard.what}, so that nothing is left unknown "
                          "(press Ctrl-C again to stop waiting)")
            return
        if self.stopping or (guard is not None and not guard.hold_once):
            self.announce(f"Stopping: {guard.what} first." if guard else "Stopping...")
            self.stopping = True
            return
        self.stopping = True
        raise _interrupt(signum)


_policy: _Policy | None = None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def handled(announce: Callable[[str], None]) -> Iterator[None]:
    """Install the policy for one run; ``announce`` shows a one-line notice (on stderr), from a
    thread of its own.

    A signal that the parent process set to be ignored (``nohup``, a background job) stays ignored.
    """
    global _policy
    if not _in_main_thread():
        yield
        return
    notices: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    announcer = threading.Thread(target=_announce_each, args=(notices, announce), name="interrupts",
                                 daemon=True)
    announcer.start()
    policy = _Policy(notices)
    previous = {}
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, policy.handle)
    outer, _policy = _policy, policy
    try:
        yield
    finally:
        _policy = outer
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        notices.put(None)
        announcer.join(1.0)


def _announce_each(notices: queue.SimpleQueue[str | None], announce: Callable[[str], None]) -> None:
    while (notice := notices.get()) is not None:
        announce(notice)


@contextmanager
def _guarded(guard: _Guard) -> Iterator[threading.Event]:
    policy = _policy
    if policy is None or not _in_main_thread():
        yield guard.signalled
        return
    policy.guards.append(guard)
    try:
        yield guard.signalled
    finally:
        policy.guards.remove(guard)
    if guard.held is not None:
        policy.stopping = True
        raise _interrupt(guard.held)


def write(what: str) -> AbstractContextManager[threading.Event]:
    """Hold the first Ctrl-C/SIGTERM until the block ends (then raise it); a second one raises at
    once. ``what`` completes "waiting for …". The event yielded is set by the first signal, so
    that workers can stop starting new writes."""
    return _guarded(_Guard(what, hold_once=True))


def cleanup(what: str) -> AbstractContextManager[threading.Event]:
    """Signals during the block are announced ("Stopping: <what> first.") and never raised."""
    return _guarded(_Guard(what, hold_once=False))
