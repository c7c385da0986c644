"""One running relay per queue file: an exclusive lock on ``QUEUE.lock`` that holds its pid.

The lock is the kernel's (``flock`` on POSIX, ``msvcrt.locking`` on Windows): it ends with the
process however that ends, SIGKILL included, so a stale lock file never blocks a restart.
`relay status|events|retry|purge` do not take it: they share the queue through SQLite.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from inspera_cli.errors import InsperaError
from inspera_cli.files import open_private


class RelayRunning(InsperaError):
    """Another relay holds the queue."""


class QueueLock:
    def __init__(self, queue: Path) -> None:
        self.queue = queue
        self.path = queue.with_name(queue.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise RelayRunning naming the holder's pid (OSError: no lock file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            _lock(fd)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise RelayRunning(
                f"another relay ({who}) is already using the queue {self.queue}: stop it first, "
                "or give this one its own --queue FILE"
            ) from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # closing ends the lock


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


if sys.platform == "win32":
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
