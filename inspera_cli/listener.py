"""The local webhook receiver behind `inspera-hooks listen` (and `demo`).

A threaded HTTP/1.1 server with keep-alive. For each POST on its path it verifies
X-Inspera-Signature on the raw bytes, parses JSON and Java-map payloads, marks Inspera's retries,
forwards to the user's app, and appends the request to a record file -- fsynced before the answer
is sent, with one fsync shared by the requests that arrive together (group commit). It knows
nothing of Typer or Rich: each request is handed to ``on_request`` as a plain dict, from one
reporting thread, so slow rendering never holds up an answer.

Under load the costs that matter are thread wake-ups and the GIL, so a recorded event's answer
is sent by the record writer right after the fsync that covers it, and its connection's thread
goes straight back to reading the next request.

    lst = Listener(ListenerConfig(port=0, secret="..."), on_request=print)
    lst.start()
    ...  # POST to lst.url
    lst.shutdown()
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import queue
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from inspera_cli._version import __version__
from inspera_cli.errors import InsperaError, SignatureError
from inspera_cli.payload import VERIFICATION, parse_event
from inspera_cli.signing import SIGNATURE_HEADER, verify_signature

log = logging.getLogger(__name__)

#: The keys of one `listen --json` line, in order.
JSON_FIELDS = (
    "receivedAt",
    "event",
    "contextObjectId",
    "payload",
    "raw",
    "signature",
    "delivery",
    "status",
    "forward",
)

UNSIGNED_VERIFICATION_NOTE = (
    "unsigned verification request answered 200 (Inspera may not sign endpoint validation)"
)

_MAX_LINE = 8192  # request line and each header line
_MAX_HEADERS = 100
_RELAY_LIMIT = 64 * 1024  # how much of the app's answer is relayed back
_DRAIN_LIMIT = 16 * 1024 * 1024  # read and discard this much of a refused body so the 413 arrives
_SEEN_LIMIT = 200_000  # bodies remembered for retry detection
_REPORT_SLICE = 0.005  # the reporting thread wakes at most this often under load
_NO_BODY_STATUSES = frozenset({204, 304})
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_KERNEL_TIMEOUTS = sys.platform != "win32" and hasattr(socket, "SO_RCVTIMEO")
# The record writer may send answers itself only where a send can be made not to block.
_WRITER_ANSWERS = bool(_DONTWAIT) and _KERNEL_TIMEOUTS
_SERVER_HEADER = f"Server: inspera-hooks/{__version__}\r\n"


@dataclass
class ListenerConfig:
    """What `listen` was asked to do; see SPEC §4. ``forward`` maps an event name, or None for
    the default route, to the URL of the user's app."""

    host: str = "127.0.0.1"
    port: int = 8000
    path: str = "/"
    secret: str | None = field(default=None, repr=False)
    skip_verify: bool = False
    events: Collection[str] | None = None
    forward: Mapping[str | None, str] = field(default_factory=dict)
    record: str | os.PathLike[str] | None = None
    max_body: int = 1 << 20
    tls_cert: str | os.PathLike[str] | None = None
    tls_key: str | os.PathLike[str] | None = None
    #: Inspera gives up after 10 s; answering 502 before that keeps its retry meaningful.
    forward_timeout: float = 9.0
    socket_timeout: float = 10.0


@dataclass
class ListenerStats:
    """Counters for the summary; ``accepted`` is what `--exit-after` counts."""

    requests: int = 0  # every request answered, any method or path
    events: int = 0  # POSTs on the path
    accepted: int = 0  # answered 2xx, not a verification, passed --events
    verifications: int = 0
    rejected: int = 0  # answered 401: missing or wrong signature
    filtered: int = 0  # acknowledged but dropped by --events
    retries: int = 0  # a body seen before
    forwarded: int = 0
    forward_failures: int = 0  # the app answered non-2xx, or not at all
    recorded: int = 0
    too_large: int = 0
    bad_requests: int = 0  # malformed HTTP, answered 400/431 and closed


class _Closed(Exception):
    """The client went away mid-request: nothing to answer."""


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class _Request:
    method: str
    target: str
    path: str
    version: str
    headers: list[tuple[str, str]]
    lower: dict[str, str]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.lower.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    extra_headers: str = ""
    item: dict[str, Any] | None = None
    recorded: bool = False

    def __post_init__(self) -> None:
        self.status = int(self.status)


_second_cache: tuple[int, str] = (0, "")


def _iso_now() -> str:
    """UTC, milliseconds, trailing Z: 2024-05-01T12:00:00.123Z."""
    global _second_cache
    now = time.time()
    second = int(now)
    if _second_cache[0] != second:
        _second_cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second_cache[1]}.{int(now % 1 * 1000):03d}Z"


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, formatdate(second, usegmt=True))
    return _date_cache[1]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host name"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed the connection without answering"
    text = str(exc).strip()
    return text or type(exc).__name__


class _Batch:
    __slots__ = ("lines", "callbacks", "flushed", "error")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.callbacks: list[Callable[[OSError | None], None]] = []
        self.flushed = threading.Event()
        self.error: OSError | None = None


class RecordLog:
    """An append-only JSON-lines file whose lines are on disk before anyone acts on them.

    Group commit: a writer thread takes every line queued since its last flush and writes them
    in arrival order with one write and one fsync. ``append(line)`` blocks until its line is on
    disk; ``append(line, then)`` returns at once and the writer calls ``then(error)`` after the
    flush, which spares the caller a sleep and a wake-up (the listener sends its answer there).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        existed = self.path.exists()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o666)
        if not existed:
            _fsync_dir(self.path.parent)  # make the new directory entry durable too
        self._lock = threading.Lock()
        self._pending = threading.Condition(self._lock)
        self._batch = _Batch()
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="record-writer", daemon=True)
        self._writer.start()

    def append(self, line: bytes, then: Callable[[OSError | None], None] | None = None) -> None:
        """Write one line (with its newline) durably. Without ``then``: wait, and raise OSError
        if that failed; with it: return now, ``then(error or None)`` runs after the flush."""
        with self._lock:
            if self._closing:
                raise OSError("the record file is closed")
            batch = self._batch
            batch.lines.append(line)
            if then is not None:
                batch.callbacks.append(then)
            if len(batch.lines) == 1:
                self._pending.notify()
        if then is None:
            batch.flushed.wait()
            if batch.error is not None:
                raise batch.error

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._batch.lines and not self._closing:
                    self._pending.wait()
                batch, self._batch = self._batch, _Batch()
            if not batch.lines:
                return  # closing, and nothing left
            batch.error = self._flush(b"".join(batch.lines))
            batch.flushed.set()
            for then in batch.callbacks:
                try:
                    then(batch.error)
                except Exception:
                    log.warning("record callback failed", exc_info=True)

    def _flush(self, data: bytes) -> OSError | None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            return exc
        return None

    def close(self) -> None:
        """Flush what is queued, stop the writer, close the file."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._pending.notify()
        self._writer.join()
        os.close(self._fd)


def _fsync_dir(directory: Path) -> None:
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


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False  # Listener.shutdown closes idle connections and joins handlers itself
    request_queue_size = 128

    def __init__(self, listener: Listener, address: tuple[str, int], family: int) -> None:
        self.address_family = family
        self.listener = listener
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error while serving %s", client_address, exc_info=True)


class _Handler(socketserver.BaseRequestHandler):
    """HTTP/1.1 plumbing for one connection: parse requests, keep-alive, answer. The webhook
    logic is in Listener.

    A recorded event's answer is sent by the record writer right after its fsync (``_defer``),
    so this thread goes straight back to reading the next request. Anything this thread sends
    itself waits until those deferred answers are out, which keeps answers in request order.
    """

    server: _Server
    idle = False
    thread: threading.Thread | None = None
    raw: socket.socket
    conn: socket.socket

    def setup(self) -> None:
        self.deferred = 0
        self.deferred_done = threading.Condition(threading.Lock())

    def handle(self) -> None:
        listener = self.server.listener
        self.raw = self.conn = self.request
        rfile: Any = None
        listener._register(self)
        try:
            timeout = listener.config.socket_timeout
            if listener._ssl is not None:
                self.raw.settimeout(timeout)
                # wrap_socket detaches the plain socket: from now on there is only the TLS one.
                self.conn = listener._ssl.wrap_socket(self.raw, server_side=True)
                self.raw = self.conn
            elif not _KERNEL_TIMEOUTS:
                self.raw.settimeout(timeout)
            else:
                # Kernel-side timeouts on a blocking socket: each recv/send is one system call,
                # where Python's settimeout() would add a poll() before every one.
                interval = struct.pack("@ll", int(timeout), int(timeout % 1 * 1_000_000))
                self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
                self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
                self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rfile = self.conn.makefile("rb", 65536)
            while listener._begin_wait(self):
                line = rfile.readline(_MAX_LINE + 1)
                self.idle = False
                if not line:  # closed, or timed out (a blocking read that would block)
                    break
                if line in (b"\r\n", b"\n"):
                    continue
                if not self._serve_one(listener, line, rfile):
                    break
        except (_Closed, OSError, ValueError):
            pass  # client gone, timed out, TLS handshake failed, or shut down: just close
        except Exception:
            log.debug("unexpected error in the listener", exc_info=True)
        finally:
            self._wait_deferred()
            listener._unregister(self)
            if rfile is not None:
                rfile.close()
            if self.conn is not self.request:  # socketserver closes the plain socket itself
                self.conn.close()

    def _serve_one(self, listener: Listener, line: bytes, rfile: BinaryIO) -> bool:
        """Answer one request; return whether the connection stays open."""
        try:
            return self._answer(listener, _read_head(line, rfile), rfile)
        except _BadRequest as exc:
            listener._count_bad()
            self._send(_Answer(exc.status, f"{_reason(exc.status)}\n".encode()), close=True)
            return False

    def _answer(self, listener: Listener, req: _Request, rfile: BinaryIO) -> bool:
        keep = req.keep_alive and not listener._stopping
        if not listener._on_path(req.path):
            keep = self._skip_body(req, rfile, listener) and keep
            answer = listener._other(req, HTTPStatus.NOT_FOUND)
        elif req.method == "POST":
            return self._post(listener, req, rfile, keep)
        elif req.method in ("GET", "HEAD"):
            keep = self._skip_body(req, rfile, listener) and keep
            answer = listener._other(req, HTTPStatus.OK)
        else:
            keep = self._skip_body(req, rfile, listener) and keep
            answer = listener._other(req, HTTPStatus.METHOD_NOT_ALLOWED)
        self._send(answer, close=not keep, head=req.method == "HEAD")
        listener._finish(answer)
        return keep

    def _post(self, listener: Listener, req: _Request, rfile: BinaryIO, keep: bool) -> bool:
        max_body = listener.config.max_body
        chunked = "chunked" in req.lower.get("transfer-encoding", "").lower()
        length = _content_length(req)
        if length is not None and length > max_body:
            answer = listener._too_large(req)
            self._send(answer, close=True)
            listener._finish(answer)
            self._drain(length)
            return False
        if req.lower.get("expect", "").lower() == "100-continue" and req.version == "HTTP/1.1":
            self._wait_deferred()
            self.conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        received_at = _iso_now()
        if chunked:
            body = _read_chunked(rfile, max_body)
            if body is None:
                answer = listener._too_large(req)
                self._send(answer, close=True)
                listener._finish(answer)
                return False
        elif length:
            body = _read_exact(rfile, length)
        else:
            body = b""
        answer, line = listener._process(req, body, received_at)
        record = listener._record
        if line is None or record is None:
            self._send(answer, close=not keep)
            listener._finish(answer)
        elif keep and self.conn is self.request and _WRITER_ANSWERS:
            self._defer(listener, record, answer, line)
        else:
            try:
                record.append(line)
            except OSError as exc:
                answer = listener._unrecorded(answer, exc)
            self._send(answer, close=not keep)
            listener._finish(answer)
        return keep

    def _defer(self, listener: Listener, record: RecordLog, answer: _Answer, line: bytes) -> None:
        """Hand the line to the record writer, which sends the answer once it is on disk."""
        with self.deferred_done:
            self.deferred += 1
        conn = self.conn

        def send_when_recorded(error: OSError | None) -> None:
            nonlocal answer
            if error is not None:
                answer = listener._unrecorded(answer, error)
            data = _encode(answer, close=False)
            try:
                # Never block the writer: an answer of a few hundred bytes fits any socket
                # buffer, except a client's that reads nothing -- then it is hung up on.
                if conn.send(data, _DONTWAIT) < len(data):
                    _hang_up(conn)
            except OSError:
                _hang_up(conn)
            finally:
                with self.deferred_done:
                    self.deferred -= 1
                    if not self.deferred:
                        self.deferred_done.notify_all()
            listener._finish(answer)

        try:
            record.append(line, send_when_recorded)
        except OSError as exc:  # the record file is closed: shutting down
            with self.deferred_done:
                self.deferred -= 1
            failed = listener._unrecorded(answer, exc)
            self._send(failed, close=True)
            listener._finish(failed)

    def _wait_deferred(self) -> None:
        with self.deferred_done:
            # Bounded, though the writer answers within one fsync: never hang a thread for good.
            self.deferred_done.wait_for(lambda: not self.deferred, timeout=60)

    def _skip_body(self, req: _Request, rfile: BinaryIO, listener: Listener) -> bool:
        """Read past a body we do not want, if small; False means close the connection."""
        if "chunked" in req.lower.get("transfer-encoding", "").lower():
            return _read_chunked(rfile, listener.config.max_body) is not None
        length = _content_length(req)
        if not length:
            return True
        if length > listener.config.max_body:
            return False
        _read_exact(rfile, length)
        return True

    def _drain(self, length: int) -> None:
        # A client still sending its body would get a reset instead of our 413 if we closed now.
        try:
            self.conn.settimeout(1.0)
            left = min(length, _DRAIN_LIMIT)
            while left > 0:
                data = self.conn.recv(min(left, 65536))
                if not data:
                    break
                left -= len(data)
        except OSError:
            pass

    def _send(self, answer: _Answer, *, close: bool = False, head: bool = False) -> None:
        self._wait_deferred()
        self.conn.sendall(_encode(answer, close=close, head=head))


def _encode(answer: _Answer, *, close: bool, head: bool = False) -> bytes:
    status = answer.status
    head_lines = f"HTTP/1.1 {status} {_reason(status)}\r\n{_SERVER_HEADER}Date: {_http_date()}\r\n"
    body = answer.body
    if status in _NO_BODY_STATUSES:
        body = b""
    else:
        head_lines += f"Content-Type: {answer.content_type}\r\nContent-Length: {len(body)}\r\n"
    if close:
        head_lines += "Connection: close\r\n"
    data = (head_lines + answer.extra_headers + "\r\n").encode("latin-1")
    return data if head else data + body


def _read_exact(rfile: BinaryIO, length: int) -> bytes:
    data = rfile.read(length)
    if not data or len(data) < length:  # None: timed out
        raise _Closed
    return data


def _read_head(line: bytes, rfile: BinaryIO) -> _Request:
    if len(line) > _MAX_LINE:
        raise _BadRequest(HTTPStatus.REQUEST_URI_TOO_LONG)
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    try:
        method = parts[0].decode("ascii")
        version = parts[2].decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequest(HTTPStatus.BAD_REQUEST) from None
    if not method.isalpha() or version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    target = parts[1].decode("latin-1")
    headers: list[tuple[str, str]] = []
    while True:
        raw = rfile.readline(_MAX_LINE + 1)
        if not raw:
            raise _Closed
        if len(raw) > _MAX_LINE or len(headers) >= _MAX_HEADERS:
            raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        if raw in (b"\r\n", b"\n"):
            break
        raw_name, sep, raw_value = raw.partition(b":")
        if not sep or not raw_name or raw_name != raw_name.strip():
            raise _BadRequest(HTTPStatus.BAD_REQUEST)
        headers.append((raw_name.decode("latin-1"), raw_value.strip().decode("latin-1")))
    lower: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key == "content-length" and key in lower and lower[key] != value:
            raise _BadRequest(HTTPStatus.BAD_REQUEST)
        lower[key] = value
    path = target
    if target.startswith(("http://", "https://")):
        path = urlsplit(target).path or "/"
    path = path.split("?", 1)[0].split("#", 1)[0]
    return _Request(method, target, path, version, headers, lower)


def _content_length(req: _Request) -> int | None:
    value = req.lower.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    return int(value)


def _read_chunked(rfile: BinaryIO, limit: int) -> bytes | None:
    """A chunked body, or None if it is larger than ``limit``."""
    parts: list[bytes] = []
    total = 0
    while True:
        line = rfile.readline(_MAX_LINE + 1)
        if not line:
            raise _Closed
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BadRequest(HTTPStatus.BAD_REQUEST) from None
        if size < 0:
            raise _BadRequest(HTTPStatus.BAD_REQUEST)
        if size == 0:
            while True:  # trailers
                trailer = rfile.readline(_MAX_LINE + 1)
                if not trailer:
                    raise _Closed
                if trailer in (b"\r\n", b"\n"):
                    return b"".join(parts)
        total += size
        if total > limit:
            return None
        parts.append(_read_exact(rfile, size) if size else b"")
        if not rfile.readline(_MAX_LINE + 1):
            raise _Closed


class Listener:
    """The receiver: ``start()`` returns once it listens; ``url`` is where; ``shutdown()`` stops.

    ``on_request(item)`` is called once per answered request, in order, from one reporting
    thread, after the answer went out; ``shutdown()`` returns once all of them were reported.
    ``item`` holds the `--json` fields (JSON_FIELDS) plus ``kind`` ("event" for a POST on the
    path, "health" for GET/HEAD on it, "other" for 404/405), ``method``, ``path``,
    ``verification``, ``shown`` (passed --events), ``accepted`` and ``note`` (why it was
    refused, or what to know).
    """

    def __init__(
        self,
        config: ListenerConfig,
        on_request: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self._path = _normalize_path(config.path)
        self._on_request = on_request
        self._events = frozenset(config.events) if config.events is not None else None
        self._verify = bool(config.secret) and not config.skip_verify
        self._ssl: ssl.SSLContext | None = None
        self._server: _Server | None = None
        self._record: RecordLog | None = None
        self._lock = threading.Lock()
        self._accepted_cond = threading.Condition(self._lock)
        self._stats = ListenerStats()
        self._seen: dict[bytes, int] = {}
        self._handlers: set[_Handler] = set()
        self._conn_lock = threading.Lock()
        self._stopping = False
        self._reports: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._port = config.port
        self._serving = False
        self.url = ""

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Listen, and serve from background threads. Raises InsperaError (a one-line reason)
        if it cannot, with nothing left open: ``shutdown()`` is then a no-op."""
        if self._server is not None:
            raise RuntimeError("this listener is already started")
        try:
            self._open()
        except BaseException:
            self._abandon()
            raise

    def _open(self) -> None:
        cfg = self.config
        if cfg.tls_cert or cfg.tls_key:
            self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                self._ssl.load_cert_chain(cfg.tls_cert or "", cfg.tls_key)
            except ssl.SSLError as exc:
                detail = f" ({exc.reason})" if exc.reason else ""
                raise InsperaError(
                    f"cannot load the TLS certificate {cfg.tls_cert} / key {cfg.tls_key}: not a "
                    f"PEM certificate and its matching private key{detail}"
                ) from exc
            except OSError as exc:
                raise InsperaError(
                    f"cannot load the TLS certificate {cfg.tls_cert} / key {cfg.tls_key}: "
                    f"{exc.strerror or exc}"
                ) from exc
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        try:
            self._server = _Server(self, (cfg.host, cfg.port), family)
        except (OSError, OverflowError) as exc:
            reason = (exc.strerror if isinstance(exc, OSError) else None) or exc
            raise InsperaError(
                f"cannot listen on {cfg.host}:{cfg.port}: {reason} "
                "(pick another --port, or 0 for a free one)"
            ) from exc
        if cfg.record is not None:
            try:
                self._record = RecordLog(cfg.record)
            except OSError as exc:
                raise InsperaError(
                    f"cannot open the record file {cfg.record}: {exc.strerror or exc}"
                ) from exc
        port = self._server.server_address[1]
        host = f"[{cfg.host}]" if family == socket.AF_INET6 else cfg.host
        scheme = "https" if self._ssl else "http"
        if self._on_request is not None:
            self._spawn(self._report_loop, "listener-report")
        self._spawn(lambda: self._serve(), "listener-accept")
        # Only now may shutdown() wait for serve_forever: BaseServer.shutdown() waits for a loop
        # that was never started for good. (Asked before the loop begins, it just ends at once.)
        self._serving = True
        self._port = port
        self.url = f"{scheme}://{host}:{port}{self._path}"

    def _abandon(self) -> None:
        """Undo a start() that failed part-way: close whatever it opened, stop its threads."""
        server, self._server = self._server, None
        if server is not None:
            server.server_close()
        record, self._record = self._record, None
        if record is not None:
            record.close()
        self._ssl = None
        if self._threads:
            self._reports.put(None)
            for thread in self._threads:
                thread.join(5.0)
            self._threads.clear()

    def _serve(self) -> None:
        assert self._server is not None
        self._server.serve_forever(poll_interval=0.1)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def port(self) -> int:
        """The port listened on (the one picked, with port 0)."""
        return self._port

    def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting, close idle connections, let requests in flight finish (up to
        ``grace`` seconds), report everything answered, close the record file."""
        if self._server is None:
            return  # never started, start() failed, or already shut down
        server, self._server = self._server, None
        if self._serving:
            self._serving = False
            server.shutdown()
        with self._conn_lock:
            self._stopping = True
            handlers = list(self._handlers)
            for handler in handlers:
                if handler.idle:
                    _hang_up(handler.raw)
        deadline = time.monotonic() + grace
        for handler in handlers:
            if handler.thread is not None:
                handler.thread.join(max(0.0, deadline - time.monotonic()))
        with self._conn_lock:
            for handler in self._handlers:  # still busy after the grace period
                _hang_up(handler.raw)
        server.server_close()
        if self._record is not None:
            # Flushes and answers what is queued. The closed log stays in place: a straggler
            # then gets a 500 rather than an acknowledgement without a record.
            self._record.close()
        self._reports.put(None)
        for thread in self._threads:
            thread.join(5.0)
        self._threads.clear()

    def __enter__(self) -> Listener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- state for callers --------------------------------------------------------------------

    def stats(self) -> ListenerStats:
        with self._lock:
            return replace(self._stats)

    @property
    def accepted(self) -> int:
        return self._stats.accepted

    def wait_accepted(self, count: int, timeout: float | None = None) -> bool:
        """Block until ``count`` events were accepted (answer sent); False on timeout."""
        with self._accepted_cond:
            return self._accepted_cond.wait_for(lambda: self._stats.accepted >= count, timeout)

    # -- connections --------------------------------------------------------------------------

    def _register(self, handler: _Handler) -> None:
        handler.thread = threading.current_thread()
        with self._conn_lock:
            self._handlers.add(handler)

    def _unregister(self, handler: _Handler) -> None:
        with self._conn_lock:
            self._handlers.discard(handler)

    def _begin_wait(self, handler: _Handler) -> bool:
        """Mark the connection idle (between requests) unless shutting down."""
        with self._conn_lock:
            if self._stopping:
                return False
            handler.idle = True
            return True

    def _on_path(self, path: str) -> bool:
        return _normalize_path(path) == self._path

    # -- requests -----------------------------------------------------------------------------

    def _base_item(self, req: _Request, kind: str, status: int) -> dict[str, Any]:
        return {
            "receivedAt": _iso_now(),
            "event": None,
            "contextObjectId": None,
            "payload": None,
            "raw": "",
            "signature": "unchecked",
            "delivery": 1,
            "status": status,
            "forward": None,
            "kind": kind,
            "method": req.method,
            "path": req.path,
            "verification": False,
            "shown": True,
            "accepted": False,
            "note": None,
        }

    def _other(self, req: _Request, status: int) -> _Answer:
        if status == HTTPStatus.OK:
            text = f"inspera-hooks listen is running: POST Inspera webhooks to {self._path}\n"
            answer = _Answer(status, text.encode(), item=self._base_item(req, "health", status))
        elif status == HTTPStatus.METHOD_NOT_ALLOWED:
            text = f"{req.method} is not allowed here: Inspera POSTs webhooks to {self._path}\n"
            answer = _Answer(status, text.encode(), extra_headers="Allow: GET, HEAD, POST\r\n",
                             item=self._base_item(req, "other", status))
        else:
            text = f"not found: this listener takes webhooks on {self._path}\n"
            answer = _Answer(status, text.encode(), item=self._base_item(req, "other", status))
        assert answer.item is not None
        answer.item["note"] = text.strip()
        return answer

    def _too_large(self, req: _Request) -> _Answer:
        """413, the body unread. Its signature is labelled as one that failed the check would be:
        with a secret, ``missing`` without the header and ``invalid`` with one (it could not be
        checked, so it is not valid); ``unchecked`` when signatures are not checked at all."""
        item = self._base_item(req, "event", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        item["note"] = f"body larger than --max-body ({self.config.max_body} bytes): not read"
        if self._verify:
            if "x-inspera-signature" not in req.lower:
                item["signature"] = "missing"
            else:
                item["signature"] = "invalid"
                item["note"] += ", so its signature could not be checked"
        return _Answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, (item["note"] + "\n").encode(), item=item)

    def _process(
        self, req: _Request, body: bytes, received_at: str
    ) -> tuple[_Answer, bytes | None]:
        """Check, parse, route one webhook POST: its answer, and its record line if it is to be
        recorded (the caller writes it, then sends the answer)."""
        cfg = self.config
        header = req.lower.get("x-inspera-signature")
        note: str | None = None
        if self._verify:
            assert cfg.secret is not None
            try:
                verify_signature(body, header, cfg.secret)
                signature = "valid"
            except SignatureError as exc:
                signature = "missing" if header is None else "invalid"
                note = str(exc)
        else:
            signature = "unchecked"
        try:
            parsed = parse_event(body)
        except ValueError as exc:
            event = payload = context_object_id = None
            if note is None:
                note = f"shown raw: {exc}"
        else:
            event, payload, context_object_id = (
                parsed.event, parsed.fields, parsed.context_object_id,
            )
        verification = event == VERIFICATION
        delivery = 1
        if signature in ("valid", "unchecked"):
            # Only what Inspera may have sent counts: a forged or wrongly signed copy of a body is
            # not its retry, and must not make the next genuine delivery look like a later one.
            key = hashlib.blake2b(body, digest_size=16).digest()
            with self._lock:
                delivery = self._seen.get(key, 0) + 1
                self._seen[key] = delivery
                if len(self._seen) > _SEEN_LIMIT:
                    del self._seen[next(iter(self._seen))]
        shown = verification or self._events is None or event in self._events
        forward: dict[str, Any] | None = None
        answer = _Answer(HTTPStatus.OK, b"OK\n")
        if signature == "invalid" or (signature == "missing" and not verification):
            shown = True
            answer = _Answer(HTTPStatus.UNAUTHORIZED, f"{signature} signature: {note}\n".encode())
        elif verification:
            if signature == "missing":
                note = UNSIGNED_VERIFICATION_NOTE
        elif shown:
            url = cfg.forward.get(event) if event in cfg.forward else cfg.forward.get(None)
            if url:
                forward, answer = self._forward(url, body, req)
        item = {
            "receivedAt": received_at,
            "event": event,
            "contextObjectId": context_object_id,
            "payload": payload,
            "raw": body.decode("utf-8", "replace"),
            "signature": signature,
            "delivery": delivery,
            "status": answer.status,
            "forward": forward,
        }
        item.update(
            kind="event",
            method=req.method,
            path=req.path,
            verification=verification,
            shown=shown,
            accepted=200 <= answer.status < 300 and not verification and shown,
            note=note,
        )
        answer.item = item
        line = None
        if self._record is not None and signature in ("valid", "unchecked"):
            record = {key: item[key] for key in JSON_FIELDS}
            record["headers"] = _header_dict(req.headers)
            try:
                record["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                record["bodyBase64"] = base64.b64encode(body).decode("ascii")
            line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            answer.recorded = True
        return answer, line

    def _unrecorded(self, answer: _Answer, exc: OSError) -> _Answer:
        """The answer when the record could not be written: not on disk, so not acknowledged
        (Inspera will retry)."""
        log.warning("cannot write the record file: %s", exc)
        failed = _Answer(HTTPStatus.INTERNAL_SERVER_ERROR, b"could not record the event\n")
        if answer.item is not None:
            failed.item = dict(answer.item, status=failed.status, accepted=False,
                               note=f"could not write the record file: {exc.strerror or exc}")
        return failed

    def _forward(self, url: str, body: bytes, req: _Request) -> tuple[dict[str, Any], _Answer]:
        """POST the raw body to the app; relay its answer, or 502 if none within the timeout."""
        timeout = self.config.forward_timeout
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {
            "Content-Type": req.lower.get("content-type", "application/json"),
            "User-Agent": f"inspera-hooks/{__version__} (listen --forward-to)",
        }
        signature = req.lower.get("x-inspera-signature")
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        conn_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        status: int | None = None
        error: str | None = None
        data = b""
        content_type = "text/plain; charset=utf-8"
        start = time.perf_counter()
        conn = conn_class(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
        try:
            conn.request("POST", target, body=body, headers=headers)
            if conn.sock is not None:
                conn.sock.settimeout(max(0.01, timeout - (time.perf_counter() - start)))
            response = conn.getresponse()
            data = response.read(_RELAY_LIMIT)
            status = response.status
            content_type = response.getheader("Content-Type") or content_type
        except TimeoutError:
            error = f"no answer within {timeout:g} s"
        except (OSError, http.client.HTTPException) as exc:
            error = _describe(exc)
        finally:
            conn.close()
        latency = (time.perf_counter() - start) * 1000
        if status is not None and latency > timeout * 1000:
            status, error = None, f"no answer within {timeout:g} s"
        info = {"url": url, "status": status, "latencyMs": round(latency, 1), "error": error}
        if status is None:
            text = f"the app at {url} did not answer: {error}\n"
            return info, _Answer(HTTPStatus.BAD_GATEWAY, text.encode())
        return info, _Answer(status, data, content_type)

    def _finish(self, answer: _Answer) -> None:
        """After the answer went out: hand the item to the reporter, then count it."""
        item = answer.item
        if item is None:
            return
        if self._on_request is not None:
            self._reports.put(item)
        with self._lock:
            stats = self._stats
            stats.requests += 1
            if item["kind"] != "event":
                return
            stats.events += 1
            if item["delivery"] > 1:
                stats.retries += 1
            status = item["status"]
            if status == HTTPStatus.UNAUTHORIZED:
                stats.rejected += 1
            elif status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
                stats.too_large += 1
            elif item["verification"]:
                stats.verifications += 1
            elif not item["shown"]:
                stats.filtered += 1
            if answer.recorded:
                stats.recorded += 1
            forward = item["forward"]
            if forward is not None:
                stats.forwarded += 1
                if forward["status"] is None or not 200 <= forward["status"] < 300:
                    stats.forward_failures += 1
            if item["accepted"]:
                stats.accepted += 1
                self._accepted_cond.notify_all()

    def _count_bad(self) -> None:
        with self._lock:
            self._stats.bad_requests += 1

    def _report_loop(self) -> None:
        assert self._on_request is not None
        while True:
            items = [self._reports.get()]
            while not self._reports.empty():
                items.append(self._reports.get())
            for item in items:
                if item is None:
                    return
                try:
                    self._on_request(item)
                except Exception:
                    log.warning("on_request failed", exc_info=True)
            # Under load, wake up once per slice rather than once per request: thread switches
            # cost the request threads more than a 5 ms delay on screen costs anyone.
            time.sleep(_REPORT_SLICE)


def _hang_up(sock: socket.socket) -> None:
    try:
        # socket.socket.shutdown, not SSLSocket's, which would unwrap under a reading thread.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _normalize_path(path: str) -> str:
    path = "/" + path.lstrip("/")
    return path.rstrip("/") or "/"


def _header_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for name, value in headers:
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged
