"""The `listen --record` file: written and read here, and nowhere else.

Format: one JSON object per line -- the `listen --json` object plus ``headers`` and the raw body
(``body``, or ``bodyBase64`` when it is not UTF-8). Guarantees:

- Lines are JSON with ASCII escapes only, so ``\\n`` is the only line separator: a body holding
  U+2028 or a header byte 0x85 is ``\\u2028`` / ``\\u0085`` in the file, never a raw separator.
- A line is on disk (written, then fsynced by a sync that began after the write, group-committed)
  before ``RecordWriter.append`` reports success. A write that fails part-way (a full disk) is
  rolled back -- the file is truncated to its last whole line -- before the next write, so a
  later event is never appended to a fragment; a failed sync rolls back every line it did not
  prove durable and fails them all. If even the rollback fails, nothing more is written (every
  later append fails).
- The file is created with mode 0600 whatever the umask (it holds bodies and signatures).

Readers (``RecordReader``: `replay`, `inspect`, `relay`) split on ``\\n`` only and stream: one
line in memory at a time. A torn or corrupt line -- not JSON, absurdly nested, no body -- is
skipped and reported with its line number (``strict`` makes it an error). A reader can resume at
an offset and follow a growing file (``poll``).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from inspera_cli.errors import ConfigError
from inspera_cli.files import PRIVATE_MODE, fsync_directory, open_private, regular_file_head
from inspera_cli.groupcommit import DirectCallback, Done, hand_back, wait_for
from inspera_cli.sending import CONTENT_TYPE
from inspera_cli.webhook_body import VERIFICATION, parse_event

if TYPE_CHECKING:
    import asyncio

    from inspera_cli.syncprocess import SyncPool

log = logging.getLogger(__name__)

RECORD_MODE = PRIVATE_MODE
# Longer lines are not records `listen` writes (its --max-body is far below): skipped unread.
MAX_LINE = 256 << 20
_READ_SIZE = 1 << 20


# --- writing ------------------------------------------------------------------------------------


def _line_encoder() -> Callable[[Any], str]:
    """Compact JSON with ASCII escapes only. JSONEncoder.encode builds its C encoder anew for
    every call (a third of the cost of a line): where the C encoder exists, it is built once."""
    from json import encoder

    plain = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
    make_c_encoder = getattr(encoder, "c_make_encoder", None)
    if make_c_encoder is None:
        return plain.encode
    # JSONEncoder.iterencode's own arguments, without the circularity markers (a parsed body
    # cannot hold a cycle; too deep a payload raises RecursionError either way).
    c_encoder = make_c_encoder(None, plain.default, encoder.encode_basestring_ascii, None, ":", ",",
                               False, False, True)
    return lambda value: "".join(c_encoder(value, 0))


_encode_line = _line_encoder()


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One record line: compact JSON, ASCII escapes only, ending in ``\\n``. A parsed payload
    nested too deeply to encode again is left out (``null``): the body holds it exactly."""
    try:
        text = _encode_line(record)
    except RecursionError:
        text = _encode_line({**record, "payload": None})
    return (text + "\n").encode("ascii")


def body_fields(body: bytes) -> dict[str, str]:
    """``{"body": text}`` for UTF-8 bodies, else ``{"bodyBase64": ...}``."""
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"bodyBase64": base64.b64encode(body).decode("ascii")}


class RecordWriter:
    """Appends records durably (see the module docstring).

    ``append(record, done)`` encodes the line and returns; ``done(error)`` runs once an fsync
    that began after the line was written has returned -- error None -- or the line was rolled
    back. With ``loop`` (``append`` is then called on it), the lines of one turn of the loop are
    written together at the end of the turn, with one write (to the page cache: microseconds),
    and ``done`` runs on the loop; without it, each line is written at once and ``done`` runs on
    the syncing thread.

    The syncer does nothing but sync: whenever lines are waiting it takes the size written,
    fsyncs (fdatasync where there is one: an append's new size is data it flushes; the times are
    not), and reports every line up to that size as durable -- one sync covers everything written
    before it began, and the loop never waits for the disk, nor the disk for a write. With
    ``loop`` the syncers are two helper processes (``syncprocess.SyncPool``: no GIL to share with
    the loop), asked and answered on the loop, so that lines written during one sync get the other
    at once; otherwise, or with ``sync`` given, or if no helper can start, a thread of this process,
    and lines written while it syncs wait for its next sync. ``write`` (``os.write``) and ``sync``
    are replaceable to simulate a failing disk.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        write: Callable[[int, memoryview], int] = os.write,
        sync: Callable[[int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._write = write
        self._sync = sync or _sync
        self._loop = loop
        existed = self.path.exists()
        if regular_file_head(self.path, 1) not in (None, b"", b"{"):
            # Given another file by mistake: neither chmodded to 0600 nor appended to.
            raise OSError(errno.EINVAL, "not a record file (one `listen --record` wrote starts with a "
                                        "JSON object): give a new file name")
        self._fd = open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            if not existed:
                fsync_directory(self.path.parent)  # make the new directory entry durable too
            self._size = os.fstat(self._fd).st_size  # whole lines written (not all durable yet)
            self._broken: OSError | None = None
            self._end_torn_line()
        except OSError:
            os.close(self._fd)
            raise
        self._durable = self._size
        self._lock = threading.Lock()  # writes, truncation and the waiting lines
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[tuple[int, list[Done]]] = deque()  # (where lines end, their callbacks)
        self._turn: list[tuple[bytes, Done]] = []  # appended on the loop during this turn
        self._closing = False
        self._drained = threading.Event()  # closing, and every line handed back (helper processes)
        self._pool = self._sync_pool(loop) if loop is not None and sync is None else None
        self._syncer: threading.Thread | None = None
        if self._pool is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="record-sync", daemon=True)
            self._syncer.start()

    def _sync_pool(self, loop: asyncio.AbstractEventLoop) -> SyncPool | None:
        from inspera_cli.syncprocess import SyncPool

        try:
            return SyncPool(self.path, self._fd, loop, self._synced_by_pool)
        except OSError as exc:  # no interpreter to run one with: sync on a thread instead
            log.warning("cannot start the record file's sync process (%s): syncing on a thread", exc)
            return None

    def append(self, record: Mapping[str, Any], done: Done) -> None:
        """Write one record; ``done(None)`` once it is durable, ``done(OSError)`` if it is not
        (rolled back). Raises WriterClosed after ``close()``."""
        if self._closing:
            raise WriterClosed("closed: nothing more is recorded")
        line = encode_record(record)
        if self._loop is None or isinstance(done, DirectCallback):
            self._write_lines([line], [done])
            return
        if not self._turn:
            self._loop.call_soon(self._end_of_turn)
        self._turn.append((line, done))

    def _end_of_turn(self) -> None:
        turn, self._turn = self._turn, []
        self._write_lines([line for line, _ in turn], [done for _, done in turn])

    def _write_lines(self, lines: list[bytes], callbacks: list[Done]) -> None:
        """Write whole lines now (one write), to be synced; or roll them back and fail them."""
        with self._lock:
            error = self._broken
            if self._closing:  # the turn ended after close(): not written, not acknowledged
                error = WriterClosed("closed: nothing more is recorded")
            if error is None:
                try:
                    self._write_all(b"".join(lines))
                except OSError as exc:
                    self._roll_back(self._size)
                    error = exc
                else:
                    self._size += sum(map(len, lines))
                    # The thread syncs whatever is written once woken; the pool decides per write.
                    start = self._pool is not None or not self._waiting
                    self._waiting.append((self._size, callbacks))
                    if start:
                        self._start_sync()
                    return
        self._hand_back(callbacks, error)

    def _start_sync(self) -> None:
        """Lines are waiting (the lock held): have them synced."""
        if self._pool is None:
            self._wake.notify()
        else:
            self._pool.request(self._size)

    def _synced_by_pool(self, target: int | None, error: OSError | None) -> None:
        """On the loop: a helper's sync of everything up to ``target`` is done (None: one that no
        longer counts, so only a helper is free again)."""
        assert self._pool is not None
        with self._lock:
            done = [] if target is None else self._settle(target, error)
            if error is not None:
                self._pool.forget()
            if self._waiting:
                self._start_sync()
            elif self._closing:
                self._drained.set()
        hand_back(None, done, error)  # on the loop already

    def append_and_wait(self, record: Mapping[str, Any]) -> None:
        """Write one record durably now, from a thread that is not the loop's; raise OSError
        if that failed."""
        wait_for(lambda done: self.append(record, done))

    def close(self) -> None:
        """Sync what is written and hand back its outcomes, stop the syncer, close the file.
        Idempotent. With helper processes, call it off the loop while the loop runs (the
        outcomes come back through the loop), or on the loop once nothing is waiting."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._wake.notify()
            if not self._waiting:
                self._drained.set()
        if self._syncer is not None:
            self._syncer.join()
        elif self._pool is not None:
            if not self._drained.wait(_CLOSE_WAIT):
                log.warning("the record file's last sync did not come back in %d s", _CLOSE_WAIT)
            self._pool.close()
        os.close(self._fd)

    def _end_torn_line(self) -> None:
        """A file cut mid-line (a crash of some other writer) gets a newline, so the fragment
        stays a line of its own that readers skip, and the next record is whole."""
        if self._size == 0:
            return
        with open(self.path, "rb") as existing:
            existing.seek(self._size - 1)
            if existing.read(1) != b"\n":
                self._write_all(b"\n")
                self._size += 1
                os.fsync(self._fd)

    def _sync_loop(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closing:
                    self._wake.wait()
                if not self._waiting:
                    return  # closing, and every line was handed back
                target = self._size
            error: OSError | None = None
            try:
                self._sync(self._fd)
            except OSError as exc:
                error = exc
            with self._lock:
                done = self._settle(target, error)
            self._hand_back(done, error)

    def _settle(self, target: int, error: OSError | None) -> list[Done]:
        """After a sync up to ``target`` (the lock held): the callbacks it answers."""
        if error is None:
            self._durable = max(self._durable, target)  # helpers may answer out of order
            done = []
            while self._waiting and self._waiting[0][0] <= target:
                done += self._waiting.popleft()[1]
            return done
        # What the sync did not cover -- the lines written since the last good one, as far as
        # anyone can tell -- is truncated away and none of it acknowledged.
        self._roll_back(self._durable)
        done = [callback for _, callbacks in self._waiting for callback in callbacks]
        self._waiting.clear()
        return done

    def _hand_back(self, callbacks: list[Done], error: BaseException | None) -> None:
        hand_back(self._loop, callbacks, error)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._write(self._fd, view) :]

    def _roll_back(self, size: int) -> None:
        """Truncate to ``size`` (the end of a whole line): a write that failed part-way, or
        lines a failed sync did not cover. If even that fails, every later append fails. The
        next sync makes the truncation durable; a crash before it leaves at worst a torn last
        line, which the next writer ends and readers skip -- never an acknowledged line."""
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            self._broken = OSError(exc.errno, f"cannot roll back a failed write: {exc.strerror}")
        self._size = size


class WriterClosed(OSError):
    """A record was appended after ``close()``: it was not written."""


_CLOSE_WAIT = 30  # seconds close() waits for the last sync's outcome


# fdatasync flushes an append's data and the new file size (what reading it back needs) and
# skips the times; fsync where there is no fdatasync.
_sync = getattr(os, "fdatasync", os.fsync)


# --- reading ------------------------------------------------------------------------------------


class RecordError(ConfigError):
    """A record file that cannot be read, or (``strict``) a corrupt line in it."""


@dataclass(frozen=True)
class CorruptLine:
    """A line that is not a record: where it is and why."""

    source: str
    line: int
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source} line {self.line}: {self.reason}"


@dataclass(frozen=True)
class RecordedRequest:
    """One line of a `listen --record` file: the exact body plus what listen made of it.
    ``fields`` is the whole JSON object; ``offset`` where its line starts in the file."""

    source: str
    line: int
    body: bytes
    event: str | None
    received_at: str | None
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    offset: int = 0
    fields: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def where(self) -> str:
        return f"{self.source} line {self.line}"

    @property
    def is_verification(self) -> bool:
        return self.event == VERIFICATION

    @property
    def answered_2xx(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def context_object_id(self) -> Any:
        return self.fields.get("contextObjectId")

    @property
    def content_type(self) -> str:
        for name, value in self.headers.items():
            if name.lower() == "content-type" and value:
                return value
        return CONTENT_TYPE


class RecordReader:
    """Streams the records of a file, from ``offset`` (the start of line ``line``) on.

    Iterating reads to the end of the file as it is now; a last line without its ``\\n`` counts
    as torn. ``poll()`` instead returns the records completed since the last call and keeps a
    partial last line for the next one (following a file that `listen` is writing). Corrupt lines
    go to ``on_corrupt``, or raise RecordError with ``strict``. ``offset``/``line`` say where the
    next read starts, so a reader can be resumed later.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        strict: bool = False,
        on_corrupt: Callable[[CorruptLine], None] | None = None,
        offset: int = 0,
        line: int = 1,
    ) -> None:
        self.path = Path(path)
        self.strict = strict
        self.on_corrupt = on_corrupt
        self.offset = offset
        self.line = line
        self.corrupt = 0
        self.read = 0
        self._identity: tuple[int, int] | None = None  # the file last read (device, inode)

    def __iter__(self) -> Iterator[RecordedRequest]:
        with self._open() as stream:
            yield from self._records(stream, final=True)

    def poll(self) -> list[RecordedRequest]:
        """The records whose lines were completed since the last read (for `tail -f`). A file that
        was truncated or replaced since (log rotation) is read from its start, as `tail -F` does."""
        with self._open(follow=True) as stream:
            return list(self._records(stream, final=False))

    def _open(self, *, follow: bool = False) -> BinaryIO:
        stream = _open_record(self.path)
        info = os.fstat(stream.fileno())
        identity = (info.st_dev, info.st_ino)
        if follow and (info.st_size < self.offset or identity != (self._identity or identity)):
            self.offset, self.line = 0, 1
        self._identity = identity
        stream.seek(self.offset)
        return stream

    def _records(self, stream: BinaryIO, *, final: bool) -> Iterator[RecordedRequest]:
        for start, number, text, length, whole in _lines(stream, self.offset, self.line):
            if not whole and not final:
                return  # a line still being written: read it next time
            self.offset, self.line = start + length + whole, number + 1
            if text is not None and not text.strip():
                continue
            try:
                if text is None:
                    raise ValueError(f"longer than {MAX_LINE} bytes: not a record line")
                if not whole:
                    raise ValueError("torn line (no newline at the end of the file)")
                record = _decode(str(self.path), number, start, text)
            except ValueError as exc:
                self._corrupt(CorruptLine(str(self.path), number, start, str(exc)))
                continue
            self.read += 1
            yield record

    def _corrupt(self, corrupt: CorruptLine) -> None:
        self.corrupt += 1
        if self.strict:
            raise RecordError(f"{corrupt} (--strict)")
        if self.on_corrupt is not None:
            self.on_corrupt(corrupt)


def _open_record(path: str | os.PathLike[str]) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller's with
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file (record one with `listen --record FILE`)") from None
    except IsADirectoryError:
        raise RecordError(f"{path}: is a directory, not a `listen --record` file") from None
    except OSError as exc:
        raise RecordError(f"{path}: cannot read: {exc.strerror or exc}") from None


def tail_start(path: str | os.PathLike[str], count: int) -> tuple[int, int]:
    """Where the last ``count`` lines of a file start, as (offset, line number): pass both to
    ``RecordReader`` to read only a long file's tail. Reads the file backwards to find them, then
    counts the newlines before them (a fast scan, no JSON decoded). A missing file starts at 0."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if not os.path.lexists(path):
        return 0, 1
    with _open_record(path) as stream:
        end = position = stream.seek(0, os.SEEK_END)
        if end and _byte_at(stream, end - 1) == b"\n":
            count += 1  # the newline that ends the last line does not start one
        offset = 0
        while position > 0 and count > 0:
            size = min(_READ_SIZE, position)
            position -= size
            stream.seek(position)
            chunk = stream.read(size)
            cut = len(chunk)
            while count > 0 and (cut := chunk.rfind(b"\n", 0, cut)) >= 0:
                count -= 1
            if count == 0:
                offset = position + cut + 1
        stream.seek(0)
        newlines, remaining = 0, offset
        while remaining > 0 and (chunk := stream.read(min(_READ_SIZE, remaining))):
            newlines += chunk.count(b"\n")
            remaining -= len(chunk)
    return offset, newlines + 1


def _byte_at(stream: BinaryIO, offset: int) -> bytes:
    stream.seek(offset)
    return stream.read(1)


def _lines(stream: BinaryIO, offset: int, number: int) -> Iterator[tuple[int, int, bytes | None, int, bool]]:
    """(offset, line number, bytes without the newline or None if longer than MAX_LINE, length,
    ended by a newline) for each line from the stream's position on."""
    parts: list[bytes] = []
    size = 0
    start = offset
    while chunk := stream.read(_READ_SIZE):
        begin = 0
        while (end := chunk.find(b"\n", begin)) >= 0:
            size += end - begin
            text = b"".join([*parts, chunk[begin:end]]) if size <= MAX_LINE else None
            yield start, number, text, size, True
            start += size + 1
            number += 1
            parts, size, begin = [], 0, end + 1
        size += len(chunk) - begin
        if size <= MAX_LINE:
            parts.append(chunk[begin:])
        else:
            parts = []  # far too long to be a record: only its length is kept
    if size:
        yield start, number, b"".join(parts) if size <= MAX_LINE else None, size, False


def _decode(source: str, number: int, offset: int, text: bytes) -> RecordedRequest:
    """A record from one line, or ValueError saying why it is not one."""
    try:
        data = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not valid JSON (not UTF-8)") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply to be a record") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object as written by `listen --record`")
    body = _body(data)
    event = data.get("event")
    if not isinstance(event, str) or not event:
        try:
            event = parse_event(body).event
        except ValueError:
            event = None
    status = data.get("status")
    received_at = data.get("receivedAt")
    return RecordedRequest(
        source=source,
        line=number,
        body=body,
        event=event,
        received_at=received_at if isinstance(received_at, str) else None,
        status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        headers=_headers(data.get("headers")),
        offset=offset,
        fields=data,
    )


def _body(data: dict[str, Any]) -> bytes:
    if isinstance(data.get("body"), str):
        try:
            return bytes(data["body"].encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("'body' holds a lone surrogate, not text") from None
    if isinstance(data.get("bodyBase64"), str):
        try:
            return base64.b64decode(data["bodyBase64"], validate=True)
        except binascii.Error:
            raise ValueError("'bodyBase64' is not valid base64") from None
    raise ValueError("no 'body' or 'bodyBase64' field, so nothing to replay")


def _headers(value: Any) -> dict[str, str]:
    """Headers as a mapping, or as [name, value] pairs; anything else is ignored."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return {
            str(item[0]): str(item[1])
            for item in value
            if isinstance(item, list | tuple) and len(item) == 2
        }
    return {}


# --- choosing what to replay ----------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is local time. Raises ValueError."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment


def matches(
    record: RecordedRequest,
    *,
    event: str | None = None,
    since: datetime | None = None,
    failed: bool = False,
) -> bool:
    """Whether `replay` sends this record: verifications never; then the filters."""
    if record.is_verification:
        return False
    if event is not None and record.event != event:
        return False
    if failed and record.answered_2xx:
        return False
    return since is None or _received_at(record) >= since


class Selection:
    """The records `replay` sends from a file: counted in a first pass (``total`` records,
    ``count`` chosen), streamed in a second when iterated -- one record in memory at a time.
    Lines appended after the count are not part of it. ``last`` keeps the last N that match.

    ``failed`` chooses each failed event once: the latest copy of each body (Inspera's retries
    send the same bytes), when that copy was not answered 2xx -- an event a later retry delivered
    is not failed. With ``all_attempts``, every copy that was not answered 2xx.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        strict: bool = False,
        on_corrupt: Callable[[CorruptLine], None] | None = None,
        event: str | None = None,
        since: datetime | None = None,
        failed: bool = False,
        all_attempts: bool = False,
        last: int | None = None,
    ) -> None:
        self.path = path
        self._event, self._since, self._failed = event, since, failed
        self.once = failed and not all_attempts
        self._chosen: set[int] | None = None  # offsets of the copies --failed sends once
        latest: dict[bytes, tuple[int, bool]] = {}  # a body's digest: its latest copy's offset, 2xx
        counting = RecordReader(path, strict=strict, on_corrupt=on_corrupt)
        self.total = matching = 0
        for record in counting:
            self.total += 1
            if self.once:
                if matches(record, event=event, since=since):
                    latest[_digest(record.body)] = (record.offset, record.answered_2xx)
            else:
                matching += self._wanted(record)
        if counting.corrupt and not self.total:
            raise RecordError(f"{path}: not a `listen --record` file (none of its lines is a record)")
        if self.once:
            self._chosen = {offset for offset, ok in latest.values() if not ok}
            matching = len(self._chosen)
        self._end = counting.offset
        self._skip = max(0, matching - last) if last is not None else 0
        self.count = matching - self._skip

    def __iter__(self) -> Iterator[RecordedRequest]:
        seen = 0
        for record in RecordReader(self.path):
            if record.offset >= self._end:
                return
            if self._wanted(record):
                seen += 1
                if seen > self._skip:
                    yield record

    def _wanted(self, record: RecordedRequest) -> bool:
        if self._chosen is not None:
            return record.offset in self._chosen
        return matches(record, event=self._event, since=self._since, failed=self._failed)


def _digest(body: bytes) -> bytes:
    """Which event a body is: its copies (Inspera's retries) have the same bytes."""
    return hashlib.blake2b(body, digest_size=16).digest()


def _received_at(record: RecordedRequest) -> datetime:
    if record.received_at is None:
        raise RecordError(f"{record.where}: no 'receivedAt', so --since cannot place it")
    try:
        return parse_time(record.received_at)
    except ValueError:
        raise RecordError(
            f"{record.where}: 'receivedAt' {record.received_at!r} is not an ISO time"
        ) from None
