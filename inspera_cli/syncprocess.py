"""fdatasync in helper processes, asked and answered through the event loop (`listen --record`).

Why a process and not a thread: a syncing thread needs the GIL to start each sync and again to
return from it, and under load the event loop holds the GIL -- the thread waited for the loop's
switch interval (5 ms) at each hand-over, so every acknowledgement waited too, and each hand-over
cost the loop a context switch. The helper has a GIL of its own: the loop asks with one byte on a
pipe and learns the outcome (an errno, 0 for success) from a reader callback -- no lock, no
thread. An fdatasync flushes the file's data whoever wrote it, so a sync the helper begins after
a write covers that write.

``SyncPool`` keeps two helpers, so that lines written while one sync is under way get a sync of
their own at once instead of waiting for it to end (up to half a sync less to wait on average;
less where the file system commits one journal transaction at a time, as ext4 does). Each helper
syncs through a file description of its own (the file opened again, checked to be the same
file): Linux reports a writeback error once per file description, so two syncs sharing one could
see one fail and the other succeed without the lost data. With their own, both learn of it.

The helper exits when its pipe closes: when ``close()`` closes it, or when the receiver dies
(SIGKILL included). It ignores Ctrl-C, which a terminal sends to the whole process group: the
receiver decides when to stop. If it dies first, every sync asked of it fails (EIO).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

# -I -S: no site, no user paths, no PYTHON* variables: the interpreter and this text only.
_HELPER = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
fd = int(sys.argv[1])
sync = getattr(os, "fdatasync", os.fsync)
try:
    os.write(1, bytes(4))  # ready
    while os.read(0, 1):
        try:
            sync(fd)
            code = 0
        except OSError as exc:
            code = exc.errno or 5
        os.write(1, code.to_bytes(4, "little"))
except OSError:
    pass
"""

Synced = Callable[[OSError | None], None]
_START_TIME = 10  # seconds for the helper to say it runs
_STOP_TIME = 30  # seconds for the helpers to stop


class SyncProcess:
    """A helper process that syncs the file ``fd`` is open on (through a file description of its
    own, opened from ``path``). ``request()`` (on ``loop``) starts one sync; ``synced`` runs on
    the loop with its outcome. One request at a time: the next after the last answer."""

    def __init__(self, path: str | os.PathLike[str], fd: int, loop: asyncio.AbstractEventLoop,
                 synced: Synced, what: str = "the record file") -> None:
        self._what = what  # what the messages call the file
        self._loop = loop
        self._synced = synced
        self._gone: OSError | None = None
        if os.name != "posix":  # pass_fds, and a loop reader on a pipe, are POSIX's
            raise OSError(errno.ENOSYS, "a helper process needs POSIX")
        if getattr(sys, "frozen", False):  # sys.executable is the program itself, not Python
            raise OSError(errno.ENOEXEC, "no Python interpreter to run the helper with")
        own = _open_again(path, fd)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HELPER, str(own)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(own,), bufsize=0,
            )
        finally:
            os.close(own)
        assert self._process.stdin is not None and self._process.stdout is not None
        self._ask = self._process.stdin.fileno()
        self._answers = self._process.stdout.fileno()
        self._wait_ready()
        os.set_blocking(self._answers, False)
        loop.add_reader(self._answers, self._answered)

    def _wait_ready(self) -> None:
        """Its first answer says it runs (an interpreter that is not Python -- a frozen build --
        would not give it): OSError, the helper stopped, if it does not come."""
        import select

        ready, _, _ = select.select([self._answers], [], [], _START_TIME)
        if ready and os.read(self._answers, 4) == bytes(4):
            return
        self.close()
        raise OSError(errno.ECHILD, f"the helper did not start within {_START_TIME} s")

    @property
    def gone(self) -> bool:
        return self._gone is not None

    def request(self) -> None:
        """Ask for one sync; its outcome comes to ``synced`` on a later turn of the loop."""
        if self._gone is None:
            try:
                os.write(self._ask, b"s")
                return
            except OSError as exc:
                self._lost(f"cannot reach it ({exc.strerror or exc})")
        self._loop.call_soon_threadsafe(self._synced, self._gone)

    def _answered(self) -> None:
        try:
            answer = os.read(self._answers, 4)
        except BlockingIOError:
            return
        except OSError as exc:
            answer, reason = b"", exc.strerror or str(exc)
        else:
            reason = f"it exited ({self._process.poll()})"
        if len(answer) != 4:  # a pipe carries 4 bytes whole: anything else is its end
            self._lost(reason)
            self._synced(self._gone)
            return
        code = int.from_bytes(answer, "little")
        self._synced(None if code == 0 else OSError(code, os.strerror(code)))

    def _lost(self, reason: str) -> None:
        log.warning("%s's sync process is gone: %s", self._what, reason)
        self._gone = OSError(errno.EIO, f"{self._what}'s sync process is gone: {reason}")
        self._loop.remove_reader(self._answers)

    def close(self) -> None:
        """On the loop: stop the helper (it has answered every request by then)."""
        if self._gone is None:
            self._loop.remove_reader(self._answers)  # a no-op before it was added
            self._gone = OSError(errno.EIO, f"{self._what} is closed")
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _open_again(path: str | os.PathLike[str], fd: int) -> int:
    """A new file description of the file ``fd`` is open on, found at ``path``."""
    own = os.open(path, os.O_RDONLY)
    mine, theirs = os.fstat(own), os.fstat(fd)
    if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
        os.close(own)
        raise OSError(errno.ESTALE, f"{path} is not the file being written any more")
    return own


PoolSynced = Callable[[int | None, OSError | None], None]


class SyncPool:
    """Up to ``size`` helpers syncing at once. ``request(target)`` (on the loop): have the file
    synced by a sync that begins now, unless one under way began after ``target`` bytes were
    written, or none is free (then ask again after the next answer). ``synced(target, error)`` runs
    on the loop for each sync; ``synced(None, None)`` when a forgotten one ends (a helper freed)."""

    def __init__(self, path: str | os.PathLike[str], fd: int, loop: asyncio.AbstractEventLoop,
                 synced: PoolSynced, size: int = 2, what: str = "the record file") -> None:
        self._synced = synced
        self._loop = loop
        self._helpers: list[SyncProcess] = []
        self._targets: list[int | None] = []  # what each helper's sync covers; None: free
        self._current: list[bool] = []  # its outcome still counts (not forgotten)
        try:
            for index in range(size):
                self._helpers.append(
                    SyncProcess(path, fd, loop, functools.partial(self._answered, index), what)
                )
                self._targets.append(None)
                self._current.append(True)
        except OSError:
            if not self._helpers:
                raise
            log.warning("started %d of %d sync processes", len(self._helpers), size, exc_info=True)

    def request(self, target: int) -> None:
        covered = max((t for t, c in zip(self._targets, self._current, strict=True) if t is not None and c),
                      default=-1)
        if covered >= target:
            return
        free = [index for index, busy in enumerate(self._targets) if busy is None]
        # A helper that died fails what it is asked; the others carry on while there are any.
        for index in sorted(free, key=lambda i: self._helpers[i].gone)[:1]:
            self._targets[index], self._current[index] = target, True
            self._helpers[index].request()

    @property
    def idle(self) -> bool:
        """No sync under way."""
        return all(target is None for target in self._targets)

    def forget(self) -> None:
        """The syncs under way no longer count (a sync failed and the file was rolled back)."""
        self._current = [False] * len(self._current)

    def _answered(self, index: int, error: OSError | None) -> None:
        target, self._targets[index] = self._targets[index], None
        if target is None:
            return  # the helper died between syncs: the next request learns it
        self._synced(target if self._current[index] else None, error if self._current[index] else None)

    def close(self) -> None:
        """Stop every helper: on the loop, from any thread (waiting for it), or once it stopped."""
        from inspera_cli.groupcommit import run_on_loop

        def stop() -> None:
            for helper in self._helpers:
                helper.close()

        run_on_loop(self._loop, stop, _STOP_TIME)
