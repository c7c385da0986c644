"""The HTTP client of deliveries: webhook POSTs over keep-alive HTTP/1.1 connections on an
asyncio loop, for the sandbox's deliveries (``sandbox/delivery.py``) and `relay`'s
(``relay/delivery.py``). One-off POSTs from the command line (`trigger`, `replay`) are
``sending.py``'s.

A webhook POST is tiny and its answer is only a status, so we speak the little HTTP it needs
ourselves: one request line and a few headers out, a status line, headers and a dropped body in
(Content-Length, chunked, or until close). requests spent about half a millisecond of CPU and a
new connection on every delivery; this spends a few tens of microseconds on a reused one.

    target = target_for("http://127.0.0.1:5000/hooks", headers=[("User-Agent", "me")])
    connection, answer, error = await post(target.origin, None, target.request(body), timeout=10)
    # reuse ``connection`` for the next POST to the same origin (None: it was closed)
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast
from urllib.parse import quote, urlsplit

Resolve = dict[str, tuple[str, int]]

HEAD_LIMIT = 64 * 1024
# An answer's body is read and dropped up to this size; past it the connection is closed instead.
BODY_LIMIT = 1024 * 1024
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: .*)?")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Origin(NamedTuple):
    """Where a connection goes: requests to one origin can share its connections."""

    scheme: str
    host: str
    port: int


@dataclass(frozen=True)
class Target:
    """An endpoint URL made ready to send to (after ``resolve``)."""

    origin: Origin
    head: bytes  # the request line and the headers that never change for this endpoint

    def request(self, body: bytes, headers: bytes = b"") -> bytes:
        """The whole POST: the endpoint's headers, ``headers`` (whole lines, CRLF-terminated), then
        the exact body bytes."""
        return b"%s%sContent-Length: %d\r\n\r\n%s" % (self.head, headers, len(body), body)


def header_lines(headers: Sequence[tuple[str, str]]) -> bytes:
    """``Name: value`` lines for ``Target.request``. Values come from our own code or from a
    request the receiver's strict parser took (no CR, LF or NUL)."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")


def target_for(
    url: str, *, headers: Sequence[tuple[str, str]] = (), resolve: Resolve | None = None
) -> Target:
    """Parse an http(s) endpoint; ``headers`` go into every request to it. A host in ``resolve``
    (curl's ``--resolve``) is reached over plain HTTP at the local address, path and query kept,
    the Host header still the public name, as it would arrive through a tunnel. ValueError for a
    host name that IDNA cannot encode."""
    resolve = resolve or {}
    parts = urlsplit(url)
    hostname = parts.hostname or ""
    if hostname in resolve:
        address, port = resolve[hostname]
        origin = Origin("http", address, port)
    else:
        default_port = 443 if parts.scheme == "https" else 80
        origin = Origin(parts.scheme, hostname, parts.port or default_port)
    # Non-ASCII in the path is percent-encoded as requests would; existing escapes are kept.
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    host = hostname if hostname.isascii() else hostname.encode("idna").decode("ascii")
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode("ascii") + header_lines(headers)
    return Target(origin, head)


def tls_context() -> ssl.SSLContext:
    """Verify as requests does: REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE (a file or a directory),
    else certifi's bundle."""
    from inspera_cli.network import verifying_context

    context = verifying_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class OriginTls:
    """The TLS context for https origins, made on first use (one per sender: it reads the CA
    bundle settings of its time)."""

    def __init__(self) -> None:
        self._context: ssl.SSLContext | None = None

    def __call__(self, origin: Origin) -> ssl.SSLContext | None:
        if origin.scheme != "https":
            return None
        if self._context is None:
            self._context = tls_context()
        return self._context


class AnswerError(Exception):
    """The peer's bytes are not an HTTP/1.1 answer we can read; the message says why."""


class Closed(Exception):
    """The connection ended before a whole answer; ``answered`` if some of it had arrived."""

    def __init__(self, answered: bool) -> None:
        super().__init__("closed mid-answer" if answered else "closed without an answer")
        self.answered = answered


class Answer(NamedTuple):
    status: int
    reusable: bool  # the connection may carry another request


@dataclass(frozen=True, slots=True)
class Reply:
    """What ``post`` got back: the status, and the answer headers it was asked to keep."""

    status: int
    headers: dict[str, str]


_HEAD, _LENGTH, _CHUNK_SIZE_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ResponseReader:
    """Reads one answer incrementally, keeping only its status, whether the connection can be
    reused and (in ``kept``) the headers named in ``keep`` (lower case); the body is dropped as it
    arrives."""

    def __init__(self, keep: Collection[bytes] = ()) -> None:
        self._keep = keep
        self.kept: dict[str, str] = {}
        self._buffer = bytearray()
        self._state = _HEAD
        self._status = 0
        self._keep_alive = False
        self._remaining = 0
        self._body_bytes = 0
        self.started = False

    def feed(self, data: bytes) -> Answer | None:
        """The answer once it is complete, else None; AnswerError if it is not HTTP."""
        self.started = True
        self._buffer += data
        return self._advance()

    def feed_eof(self) -> Answer:
        """The peer closed: complete only for a body that runs until close."""
        if self._state == _UNTIL_CLOSE:
            return Answer(self._status, False)
        raise Closed(self.started)

    def _advance(self) -> Answer | None:
        buffer = self._buffer
        while True:
            state = self._state
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > HEAD_LIMIT:
                        raise AnswerError(f"answer headers larger than {HEAD_LIMIT // 1024} KiB")
                    return None
                head = bytes(buffer[:end])
                del buffer[: end + 4]
                self._read_head(head)
            elif state == _DONE:
                return self._done()
            elif state in (_LENGTH, _CHUNK_DATA, _UNTIL_CLOSE):
                taken = len(buffer) if state == _UNTIL_CLOSE else min(len(buffer), self._remaining)
                del buffer[:taken]
                self._remaining -= taken
                self._body_bytes += taken
                if self._body_bytes > BODY_LIMIT:
                    return Answer(self._status, False)
                if state == _UNTIL_CLOSE or self._remaining:
                    return None
                if state == _LENGTH:
                    return self._done()
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buffer) < 2:
                    return None
                if buffer[:2] != b"\r\n":
                    raise AnswerError("malformed chunked body")
                del buffer[:2]
                self._state = _CHUNK_SIZE_LINE
            else:  # a chunk-size line or a trailer line
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > HEAD_LIMIT:
                        raise AnswerError("malformed chunked body")
                    return None
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                if state == _TRAILERS:
                    if not line:
                        return self._done()
                    continue
                size = line.partition(b";")[0].strip(b" \t")
                if not _CHUNK_SIZE.fullmatch(size):
                    raise AnswerError("malformed chunked body")
                self._remaining = int(size, 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS

    def _done(self) -> Answer:
        # Bytes after the answer were never asked for: the connection's state is unknown.
        return Answer(self._status, self._keep_alive and not self._buffer)

    def _read_head(self, head: bytes) -> None:
        status_line, *lines = head.split(b"\r\n")
        match = _STATUS_LINE.fullmatch(status_line)
        if not match:
            raise AnswerError("not an HTTP/1.x answer")
        status = int(match.group(3))
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        fields: dict[bytes, list[bytes]] = {}
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise AnswerError("malformed header line")
            fields.setdefault(name.lower(), []).append(value.strip(b" \t"))
        version = (int(match.group(1)), int(match.group(2)))
        tokens = {t.strip().lower() for v in fields.get(b"connection", []) for t in v.split(b",")}
        self._status = status
        kept = [name for name in self._keep if name in fields]
        self.kept = {name.decode(): fields[name][-1].decode("latin-1") for name in kept}
        self._keep_alive = (version >= (1, 1) and b"close" not in tokens) or b"keep-alive" in tokens
        self._frame_body(status, fields)

    def _frame_body(self, status: int, fields: dict[bytes, list[bytes]]) -> None:
        """How the body ends (RFC 9112 §6.3)."""
        if status in (101, 204, 304):
            self._keep_alive = self._keep_alive and status != 101
            self._state = _DONE
        elif b"transfer-encoding" in fields:
            codings = b",".join(fields[b"transfer-encoding"]).split(b",")
            if codings[-1].strip().lower() == b"chunked":
                self._state = _CHUNK_SIZE_LINE
            else:
                self._state, self._keep_alive = _UNTIL_CLOSE, False
        elif b"content-length" in fields:
            values = {v.strip() for item in fields[b"content-length"] for v in item.split(b",")}
            value = values.pop() if len(values) == 1 else b""
            if not value.isdigit():
                raise AnswerError("invalid Content-Length")
            self._remaining = int(value)
            self._state = _LENGTH if self._remaining else _DONE
        else:
            self._state, self._keep_alive = _UNTIL_CLOSE, False


class Connection(asyncio.Protocol):
    """One client connection carrying one request at a time."""

    def __init__(self, keep: Collection[bytes] = ()) -> None:
        self.keep = keep  # answer headers to keep (lower case)
        self.kept: dict[str, str] = {}  # of the last answer
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.answered = 0  # answers read on this connection: a reused one can be stale
        self._reader: ResponseReader | None = None
        self._waiter: asyncio.Future[Answer] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport
        self.open = True

    def exchange(self, request: bytes) -> asyncio.Future[Answer]:
        """Send a request; the future gets its answer, or Closed / AnswerError."""
        assert self.transport is not None and self._waiter is None
        self._reader = ResponseReader(self.keep)
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:  # bytes nobody asked for: the stream cannot be trusted any more
            self.close()
            return
        try:
            answer = reader.feed(data)
        except AnswerError as exc:
            self._settle(exc)
            self.close()
            return
        if answer is not None:
            self._settle(answer)

    def eof_received(self) -> bool:
        if self._reader is not None:
            try:
                self._settle(self._reader.feed_eof())
            except Closed as exc:
                self._settle(exc)
        self.open = False
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self._reader is not None:
            self._settle(Closed(self._reader.started))

    def _settle(self, outcome: Answer | Exception) -> None:
        reader, waiter, self._waiter, self._reader = self._reader, self._waiter, None, None
        if isinstance(outcome, Answer):
            self.answered += 1
            self.kept = reader.kept if reader is not None else {}
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, Answer):
            waiter.set_result(outcome)
        else:
            waiter.set_exception(outcome)

    def close(self) -> None:
        """Drop the connection at once (nothing is left to send on it)."""
        self.open = False
        if self.transport is not None:
            self.transport.abort()


async def connect(origin: Origin, tls: ssl.SSLContext | None, keep: Collection[bytes] = ()) -> Connection:
    loop = asyncio.get_running_loop()
    if origin.scheme == "https":
        assert tls is not None
        _, connection = await loop.create_connection(
            lambda: Connection(keep), origin.host, origin.port, ssl=tls, server_hostname=origin.host
        )
    else:
        _, connection = await loop.create_connection(lambda: Connection(keep), origin.host, origin.port)
    return connection


async def post(
    origin: Origin,
    connection: Connection | None,
    request: bytes,
    timeout: float,
    tls: ssl.SSLContext | None = None,
    keep: Collection[bytes] = (),
) -> tuple[Connection | None, Reply | None, str | None]:
    """Send ``request`` on ``connection`` (or a new one) within ``timeout`` for the whole exchange:
    the connection left to reuse, and the reply (with the answer headers named in ``keep``) or,
    when none came, one short reason."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                if connection is None or not connection.open:
                    if connection is not None:
                        connection.close()
                    connection = await connect(origin, tls, keep)
                try:
                    answer = await connection.exchange(request)
                    break
                except Closed as exc:
                    # A kept-alive connection the receiver closed as we reused it: the request
                    # never reached it, so send it again on a new connection.
                    if exc.answered or not connection.answered:
                        raise
                    connection.close()
                    connection = None
    except (OSError, TimeoutError, ValueError, Closed, AnswerError) as exc:
        if connection is not None:
            connection.close()
        return None, None, describe(exc, timeout)
    reply = Reply(answer.status, connection.kept)
    if not answer.reusable:
        connection.close()
        connection = None
    return connection, reply, None


def describe(exc: BaseException, timeout: float) -> str:
    """One short reason for a POST that got no answer, as the delivery log shows it."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {float(timeout)} s"
    if isinstance(exc, Closed):
        return f"the connection was {exc}"
    if isinstance(exc, AnswerError):
        return f"invalid answer ({exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS error (certificate verify failed: {exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host name not found (DNS)"
    if isinstance(exc, OSError) and exc.strerror:
        return f"connection failed ({exc.strerror[:1].lower()}{exc.strerror[1:]})"
    return f"connection failed ({exc or type(exc).__name__})"
