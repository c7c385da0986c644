"""Ctrl-C, SIGTERM and SIGHUP: one policy for the whole command line, installed once by ``cli.py``.

- SIGTERM is handled like Ctrl-C: it raises ``Terminated``, a ``KeyboardInterrupt``, so every
  ``except KeyboardInterrupt`` (cleanup, exit code 130) serves both. So is SIGHUP, what a closed
  terminal window or a dropped ssh session sends: its default, dying on the spot, left the
  subscriptions `listen --subscribe` made calling a receiver that was gone.
- A write in flight is not abandoned: inside ``write()`` the first signal is held and announced;
  the block runs to its end (a request ends at its timeout at most), and only then is the signal
  raised, so the caller has recorded what the request made. A second signal stops the wait: it is
  raised at once, inside the request.
- A message being printed is not cut in half: ``printing()`` holds the first signal, silently,
  until the print returns. An interrupt raised inside Rich's ``Console.print`` (between its
  buffer's enter and exit) left the console buffering for good, and every later line -- the
  summary `listen` ends with -- was lost.
- At most one interrupt is raised per run. Once it has been, the program is stopping: later
  signals are announced, never raised, so cleanup (deleting temporary subscriptions, stopping a
  tunnel, flushing a record file) is never cut short. ``cleanup()`` gives the same protection to
  a cleanup that runs without any signal (an ``--exit-after`` that was reached).

Outside the command line (nothing installed), ``write()`` and ``cleanup()`` change nothing: a
program that embeds the library keeps Python's own Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))
_SIGNAL_NUMBERS = frozenset(int(sig) for sig in SIGNALS)
# Sent to the main thread to interrupt a blocked call (see _Watcher); absent on Windows.
_POKE = getattr(signal, "SIGURG", None)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises KeyboardInterrupt."""


def _interrupt(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


@dataclass
class _Guard:
    """A block that a signal must not cut short: a write (held once) or a cleanup (never)."""

    what: str
    hold_once: bool
    quiet: bool = False  # hold without announcing it (a line being printed: a moment)
    held: int | None = None
    signalled: threading.Event = field(default_factory=threading.Event)


class _Channel:
    """Bytes one way between non-blocking ends that select() watches: a pipe, or on Windows (whose
    select() takes sockets only) a socket pair. A pipe spares every run the import of `socket`."""

    def __init__(self) -> None:
        self._sockets: tuple[Any, Any] | None = None
        if os.name == "nt":
            import socket

            self._sockets = socket.socketpair()
            for end in self._sockets:
                end.setblocking(False)
            self.read_fd, self.write_fd = (end.fileno() for end in self._sockets)
        else:
            self.read_fd, self.write_fd = os.pipe()
            os.set_blocking(self.read_fd, False)
            os.set_blocking(self.write_fd, False)

    def fileno(self) -> int:
        return self.read_fd

    def send(self, data: bytes) -> None:
        """Raises OSError when it cannot (full, closed): the caller decides what that means."""
        if self._sockets is not None:
            self._sockets[1].send(data)
        else:
            os.write(self.write_fd, data)

    def recv(self, size: int) -> bytes:
        if self._sockets is not None:
            data: bytes = self._sockets[0].recv(size)
            return data
        return os.read(self.read_fd, size)

    def end_writing(self) -> None:
        """The reader then sees the end, once it has read what was sent."""
        if self._sockets is not None:
            import socket

            self._sockets[1].shutdown(socket.SHUT_WR)
        else:
            fd, self.write_fd = self.write_fd, -1  # as in close()
            os.close(fd)

    def close(self) -> None:
        if self._sockets is not None:
            for end in self._sockets:
                end.close()
            return
        # Forgotten before closed: a late read or write fails instead of hitting a reused fd.
        ends, self.read_fd, self.write_fd = (self.read_fd, self.write_fd), -1, -1
        for fd in ends:
            if fd >= 0:
                os.close(fd)


class _Watcher:
    """A thread that shows the handler's notices and makes sure the main thread hears each signal.

    The kernel may deliver a process's signal to any of its threads (two signals back to back, the
    second often lands elsewhere); CPython then runs the Python handler in the main thread at its
    next bytecode, which a main thread blocked in a socket read (a create waiting for Inspera) only
    reaches when the read ends. Every signal also writes its number to the wakeup channel
    (``signal.set_wakeup_fd``); on SIGINT or SIGTERM the watcher pokes the main thread with SIGURG
    (ignored by its handler, default-ignored anyway, as Go's runtime uses it), which interrupts the
    blocked call so that the pending handler runs.

    A handler may also run in the middle of the main thread's own write to stderr, or of another
    handler: it never writes to stderr itself (a reentrant write raises), it sends the notice here.
    """

    def __init__(self, announce: Callable[[str], None]) -> None:
        self._announce = announce
        self._wake = _Channel()
        self._notes = _Channel()
        self._poke = _POKE if hasattr(signal, "pthread_kill") else None
        self._previous_fd: int | None = None
        self._previous_poke: Any = None
        if self._poke is not None:
            self._previous_poke = signal.signal(self._poke, _ignore)
            self._previous_fd = signal.set_wakeup_fd(self._wake.write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._run, name="interrupts", daemon=True)
        self._thread.start()

    def note(self, notice: str) -> None:
        """From a signal handler: a plain write, no Python-level lock to re-enter."""
        with suppress(OSError):
            self._notes.send(notice.encode("utf-8", "replace") + b"\n")

    def close(self) -> None:
        if self._poke is not None and self._previous_fd is not None:
            signal.set_wakeup_fd(self._previous_fd)
            signal.signal(self._poke, self._previous_poke)
        self._notes.end_writing()  # the thread shows what is left, then ends
        self._thread.join(1.0)
        self._wake.close()
        self._notes.close()

    def _run(self) -> None:
        import select

        main = threading.main_thread().ident
        pending = b""
        while True:
            ready, _, _ = select.select([self._wake, self._notes], [], [])
            if self._wake in ready:
                with suppress(OSError):
                    woken = self._wake.recv(512)
                    if self._poke is not None and main and any(n in _SIGNAL_NUMBERS for n in woken):
                        signal.pthread_kill(main, self._poke)
            if self._notes in ready:
                try:
                    chunk = self._notes.recv(4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    with suppress(OSError, ValueError):  # stderr closed: nobody to tell
                        self._announce(line.decode("utf-8", "replace"))


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The poke's handler: its only effect is that a blocked call returns and pending handlers run."""


class _Policy:
    def __init__(self, watcher: _Watcher) -> None:
        self.announce = watcher.note
        self.guards: list[_Guard] = []
        self.stopping = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        guard = self.guards[-1] if self.guards else None
        if guard is not None:
            guard.signalled.set()
        if guard is not None and guard.hold_once and guard.held is None and not self.stopping:
            guard.held = signum
            if not guard.quiet:
                self.announce(f"Interrupted: waiting for {guard.what}, so that nothing is left "
                              "unknown (press Ctrl-C again to stop waiting)")
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
    watcher = _Watcher(announce)
    policy = _Policy(watcher)
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
        watcher.close()


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


@contextmanager
def printing() -> Iterator[None]:
    """Hold the first signal, silently, until the block (one print) ends, then raise it; inside
    another guard (a write, a cleanup), that guard's rule applies."""
    policy = _policy
    if policy is None or policy.guards or not _in_main_thread():
        yield
        return
    with _guarded(_Guard("a line", hold_once=True, quiet=True)):
        yield


def cleanup(what: str) -> AbstractContextManager[threading.Event]:
    """Signals during the block are announced ("Stopping: <what> first.") and never raised."""
    return _guarded(_Guard(what, hold_once=False))
