"""Small files we own: bounded reads, atomic private (0600) writes, and an exclusive lock around
every read-modify-write, so that concurrent runs lose no profile and no token.

The lock is ``filelock``'s (fcntl ``flock`` on POSIX, ``msvcrt`` on Windows, with a timeout, and
safe against the lock file being removed while another process waits for it).
"""

from __future__ import annotations

import errno
import os
import stat
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inspera_cli.errors import ConfigError

# A settings or subscriptions file is a few hundred bytes; anything this large is not one.
MAX_FILE_BYTES = 1024 * 1024
LOCK_TIMEOUT = 20.0
PRIVATE_MODE = 0o600
SYMLINK_REFUSED = "it is a symbolic link (refused: it could point at any file)"
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def read_small_text(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of a small file (a byte-order mark dropped), reading at most ``limit`` bytes.

    Raises OSError as ``open`` does, and ValueError for a file that is too large or not UTF-8.
    """
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit // 1024} KiB, so not a file this program wrote or reads")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text (a binary file?)") from None


def loads_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads``; absurdly deep nesting is a ValueError like any other syntax error."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ValueError("invalid TOML: arrays or tables nested too deeply") from None


def describe_os_error(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open`` a file that holds secrets or events: created with mode 0600 whatever the umask
    (an existing regular file of ours is tightened to it), and never through a symbolic link, so
    that a link planted at the path cannot make us write over, or chmod, the file it points to.

    Raises OSError; for a symbolic link, one saying so.
    """
    try:
        fd = os.open(path, flags | _NO_FOLLOW, PRIVATE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise OSError(errno.ELOOP, SYMLINK_REFUSED, os.fspath(path)) from None
        raise
    try:
        info = os.fstat(fd)
        # Only a regular file: a device such as /dev/null is everyone's, even when root owns it.
        ours = stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()
        if ours and info.st_mode & 0o777 != PRIVATE_MODE:
            os.fchmod(fd, PRIVATE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def regular_file_head(path: str | os.PathLike[str], size: int) -> bytes | None:
    """The first ``size`` bytes of a regular file, read without following a symbolic link or
    waiting on a FIFO; None when there is no such file to read (missing, a link, a device, not
    readable). For checking what a file is before ``open_private`` makes it ours."""
    try:
        fd = os.open(path, os.O_RDONLY | _NO_FOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        return os.read(fd, size) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries durable (a file created in it survives a power loss), where
    the system can; best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write a file atomically with mode 0600 (temp file in the same folder, fsync, rename, and
    the folder synced so that the rename survives a power loss too).

    The temp file is created exclusively: a stale one (or a link planted in its place) is
    removed, never written through.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = open_private(tmp, flags)
    except FileExistsError:
        tmp.unlink()
        fd = open_private(tmp, flags)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


@contextmanager
def locked(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (through ``path.lock``) for a read-modify-write.

    Raises OSError when the lock file cannot be created, ConfigError when another process holds
    the lock for longer than ``timeout`` seconds.
    """
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = FileLock(path.with_name(path.name + ".lock"), timeout=timeout, mode=0o600)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(
            f"{path} is being changed by another inspera-hooks for over {timeout:g} s; try again"
        ) from None
    try:
        yield
    finally:
        lock.release()
