"""A small HTTP/1.1 server for a loopback page: bounded, strict, every answer hardened.

It is not the receiver's wire (``listener/``): it serves one person's browser, so it favours
simple over fast, but it still bounds what a request may cost -- headers within 32 KiB and 10 s,
a body within ``max_body`` bytes and 10 s, at most ``max_connections`` at once -- and refuses
what it does not parse (no Transfer-Encoding, Content-Length digits only). Every answer carries
the page's security headers (CSP without inline script, nosniff, no referrer, no framing).

A handler answers with a ``Response``, or with an ``EventStream`` to keep the connection open
for server-sent events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

from inspera_cli._version import __version__

log = logging.getLogger(__name__)

HEADER_LIMIT = 32 << 10
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
LINGER, LINGER_BYTES = 2.0, 8 << 20  # after refusing a request, what of it is still read (and dropped)

SECURITY_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
     "frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"})


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class EventStream:
    """Answer 200 text/event-stream and keep the connection: ``opened(send)`` is called with a
    function that writes to it (False once the client is gone or too far behind), ``closed()``
    when it ends. The stream is delimited by closing the connection."""

    opened: Callable[[Callable[[bytes], bool]], None]
    closed: Callable[[], None]
    max_buffer: int = 1 << 20


Handler = Callable[[Request], Awaitable[Response | EventStream]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class LoopbackServer:
    handler: Handler
    max_body: int = 4 << 20
    max_connections: int = MAX_CONNECTIONS
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def open(self, host: str, port: int) -> int:
        """Listen; the port listened on (a free one for 0). Raises OSError."""
        self._server = await asyncio.start_server(self._connection, host, port, limit=HEADER_LIMIT)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self.max_connections:
            writer.close()
            return
        self._writers.add(writer)
        try:
            while await self._exchange(reader, writer):
                pass
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.warning("the inspector failed to answer a request", exc_info=True)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request and its answer; whether the connection stays open for another."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT)
        except asyncio.LimitOverrunError:
            await _refuse(reader, writer, BadRequest(431, "request headers too large"))
            return False
        except (TimeoutError, asyncio.IncompleteReadError):
            return False
        try:
            request, keep_alive = await self._read(head, reader)
        except BadRequest as exc:
            await _refuse(reader, writer, exc)
            return False
        try:
            answer = await self.handler(request)
        except Exception as exc:  # a bug costs one answer, not the connection and a traceback
            log.warning("the inspector could not answer %s %s: %s", request.method, request.path[:200],
                        exc or type(exc).__name__)
            log.debug("the inspector's traceback", exc_info=True)
            answer, keep_alive = Response(500, b'{"error": "the inspector failed to answer"}\n'), False
        if isinstance(answer, EventStream):
            await self._stream(answer, reader, writer)
            return False
        writer.write(_encode(answer, close=not keep_alive, head=request.method == "HEAD"))
        await writer.drain()
        return keep_alive

    async def _read(self, head: bytes, reader: asyncio.StreamReader) -> tuple[Request, bool]:
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise BadRequest(400, "malformed request line")
        method, target, version = (p.decode("latin-1") for p in parts)
        if method not in _METHODS:
            raise BadRequest(501, f"method {method[:20]!r} is not supported")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name) or any(c in value for c in b"\0\r\n"):
                raise BadRequest(400, "malformed header line")
            headers[name.decode("ascii").lower()] = value.strip(b" \t").decode("latin-1")
        if "transfer-encoding" in headers:
            raise BadRequest(501, "Transfer-Encoding is not supported here: send a Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isascii() or not length_text.isdigit():
            raise BadRequest(400, "Content-Length is not a number")
        length = int(length_text)
        if length > self.max_body:
            raise BadRequest(413, f"the request body is larger than {self.max_body} bytes")
        body = await asyncio.wait_for(reader.readexactly(length), BODY_TIMEOUT) if length else b""
        split = urlsplit(target)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
        return Request(method, split.path or "/", query, headers, body), keep_alive

    async def _stream(self, stream: EventStream, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, "text/event-stream; charset=utf-8", None, close=True))
        transport = writer.transport

        def send(data: bytes) -> bool:
            if transport.is_closing():
                return False
            if transport.get_write_buffer_size() > stream.max_buffer:
                transport.close()  # not reading: it reconnects and resumes from its last id
                return False
            transport.write(data)
            return True

        stream.opened(send)
        try:
            while await reader.read(4096):
                pass  # nothing is expected from an event-stream client; read to see it go
        finally:
            stream.closed()


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: BadRequest) -> None:
    """Answer, then read (and drop) what the client is still sending for a moment before closing:
    closing with unread data resets the connection, and the client would lose the answer."""
    import json

    body = (json.dumps({"error": str(error)}) + "\n").encode()
    writer.write(_encode(Response(error.status, body), close=True))
    with contextlib.suppress(OSError, RuntimeError):
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    deadline = asyncio.get_running_loop().time() + LINGER
    drained = 0
    with contextlib.suppress(TimeoutError, OSError):
        while drained < LINGER_BYTES:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - asyncio.get_running_loop().time())
            if not chunk:
                break
            drained += len(chunk)


def _head(status: int, content_type: str, length: int | None, *, close: bool,
          headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    lines = [f"HTTP/1.1 {status} {phrase}", f"Server: inspera-hooks/{__version__}",
             f"Date: {formatdate(usegmt=True)}", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if close:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in (*SECURITY_HEADERS, *headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _encode(response: Response, *, close: bool, head: bool = False) -> bytes:
    data = _head(response.status, response.content_type, len(response.body), close=close,
                 headers=response.headers)
    return data if head else data + response.body
