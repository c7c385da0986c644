"""The wire layer: HTTP/1.1 connections on an asyncio event loop, strictly parsed and bounded.

Parsing is httptools (Node's llhttp), which refuses request smuggling by itself: Content-Length
with Transfer-Encoding, chunk sizes that are not bare hex, bytes after chunk data, a non-digit
Content-Length, NUL/CR/LF in headers are all 400. On top of that a Transfer-Encoding other than
exactly ``chunked`` is 501. Either way the connection is closed after the answer.

Limits (``Limits``): at most ``max_connections`` open (at the cap, the connection that has waited
longest for its headers is dropped for the newcomer, else the newcomer gets 503); headers within
``header_timeout`` of the connection going idle, the whole body within ``body_timeout`` after its
headers; bodies over ``max_body`` get 413. Body bytes held in memory beyond the first 16 KiB of
each body count against ``body_memory``: past it, connections still sending bodies stop being
read (their bytes wait in the kernel) until memory is given back. Answers leave each connection
in request order, pipelined or not.

The wire knows nothing of webhooks: a ``Handler`` answers each whole request by calling
``respond(answer, report)`` on the loop, at once or later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol, cast

import httptools

from inspera_cli._version import __version__
from inspera_cli.listener.report import Report, iso_now

log = logging.getLogger(__name__)

SMALL_BODY = 16 * 1024  # the part of each body that never waits for memory
_DRAIN_LIMIT = 16 * 1024 * 1024  # of a refused body, read and dropped so that the 413 arrives
_DRAIN_TIME = 1.0
_NO_BODY_STATUSES = frozenset({204, 304})
_SERVER = f"Server: inspera-hooks/{__version__}\r\n"
_NEVER = math.inf
# Reasons to stop reading a connection (bits of _Connection.paused).
_WRITE_FULL, _NO_MEMORY, _QUEUE_FULL = 1, 2, 4


@dataclass(frozen=True)
class Limits:
    max_connections: int = 512
    max_body: int = 1 << 20
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_memory: int = 32 << 20
    max_pipelined: int = 16


@dataclass(slots=True)
class Request:
    """One request, whole. ``lower`` maps lower-case header names to their (last) value."""

    method: str
    target: str
    path: str
    version: str
    headers: list[tuple[str, str]]
    lower: dict[str, str]
    body: bytes
    received_at: str
    keep_alive: bool

    def header(self, name: str) -> str | None:
        return self.lower.get(name)


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False


Respond = Callable[[Answer, "Report | None"], None]


class Handler(Protocol):
    """What answers requests (a policy). Both methods run on the loop and must not block."""

    def handle(self, request: Request, respond: Respond) -> None:
        """Answer ``request`` by calling ``respond`` exactly once, now or later, on the loop."""

    def too_large(self, request: Request) -> tuple[Answer, Report]:
        """The 413 for a request whose body is over the limit (``request.body`` is empty)."""


Answered = Callable[[Request, Answer, Report], None]


@dataclass
class WireStats:
    connections: int = 0  # accepted in all
    refused: int = 0  # turned away at --max-connections (503)
    evicted: int = 0  # dropped at the cap while waiting for headers
    timed_out: int = 0  # closed at the header or body deadline
    bad_requests: int = 0  # answered 400/501 and closed


@dataclass
class _Refusal:
    """A queued answer that ends the connection: 413, or a request the parser refused."""

    request: Request | None
    status: int = 413


class _Fatal(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Wire:
    """Every connection of one server; ``serve`` opens it, ``close`` ends it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handler: Handler, limits: Limits,
                 answered: Answered) -> None:
        self.loop = loop
        self.handler = handler
        self.limits = limits
        self.answered = answered
        self.stats = WireStats()
        self.connections: dict[_Connection, None] = {}
        self.memory = _BodyMemory(limits.body_memory)
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def serve(self, host: str, port: int, ssl: Any = None) -> int:
        """Listen; the port listened on."""
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, ssl=ssl, backlog=1024, reuse_address=True,
            ssl_handshake_timeout=self.limits.header_timeout if ssl is not None else None,
        )
        self._sweep()
        return int(self._server.sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        """Close connections past their deadline; runs a few times per timeout."""
        now = time.monotonic()
        for conn in [c for c in self.connections if c.deadline < now]:
            self.stats.timed_out += 1
            conn.abort()
        tick = min(0.5, self.limits.header_timeout / 4, self.limits.body_timeout / 4)
        self._sweeper = self.loop.call_later(tick, self._sweep)

    def admit(self, conn: _Connection) -> bool:
        """Room for one more connection? At the cap, drop the longest waiter for headers."""
        self.stats.connections += 1
        if len(self.connections) >= self.limits.max_connections:
            waiting = [c for c in self.connections if c.waiting_since is not None]
            if not waiting:
                self.stats.refused += 1
                return False
            self.stats.evicted += 1
            min(waiting, key=lambda c: c.waiting_since or 0.0).abort()
        self.connections[conn] = None
        return True

    def stop_accepting(self) -> None:
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()

    async def close(self, grace: float) -> None:
        """Stop accepting; let requests in flight finish for up to ``grace`` seconds; close all."""
        self.stop_accepting()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.wait_closed()


class _BodyMemory:
    """Body bytes held beyond SMALL_BODY per request, across connections (see module doc)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.waiting: deque[_Connection] = deque()

    def take(self, conn: _Connection, size: int) -> None:
        self.held += size
        conn.held += size
        if self.held > self.limit:
            conn.pause(_NO_MEMORY)
            self.waiting.append(conn)

    def give_back(self, conn: _Connection) -> None:
        self.held -= conn.held
        conn.held = 0
        while self.waiting and self.held <= self.limit:
            self.waiting.popleft().resume(_NO_MEMORY)


class _Connection(asyncio.Protocol):
    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.limits = wire.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Request | _Refusal] = deque()
        self.busy = self.dispatching = self.parsing_done = self.eof = False
        self.paused = 0
        self.held = 0
        self.drained = 0
        self.draining: asyncio.Transport | None = None
        self.deadline = _NEVER
        self.waiting_since: float | None = None
        self._reset_request()

    def _reset_request(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.lower: dict[str, str] = {}
        self.parts: list[bytes] = []
        self.size = 0
        self.refused = self.reserved = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if not self.wire.admit(self):
            self.transport.write(encode(Answer(503, b"too many connections\n"), close=True))
            self.transport.close()
            self.transport = None
            return
        self._idle(time.monotonic())

    def data_received(self, data: bytes) -> None:
        if self.parsing_done:
            self.drained += len(data)  # a refused body, or bytes after an upgrade: dropped
            if self.draining is not None and self.drained > _DRAIN_LIMIT:
                self.draining.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop_parsing(None)
        except httptools.HttpParserCallbackError as exc:
            fatal = exc.__context__
            if not isinstance(fatal, _Fatal):
                raise
            if fatal.status:
                self._stop_parsing(fatal.status)
        except httptools.HttpParserError as exc:
            self._stop_parsing(_status_of(exc))

    def eof_received(self) -> bool:
        self.eof = True
        if self.draining is not None:
            self.draining.close()
            return False
        if not self.busy and not self.queue:
            self._close()
        return True  # keep the write side open: answers may still be owed

    def connection_lost(self, exc: Exception | None) -> None:
        self.wire.connections.pop(self, None)
        self.wire.memory.give_back(self)
        self.transport = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.pause(_WRITE_FULL)

    def resume_writing(self) -> None:
        self.resume(_WRITE_FULL)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.parsing_done:
            raise _Fatal(0)  # a request after a refused one: not read
        self._reset_request()
        self.waiting_since = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        text = name.decode("latin-1")
        self.headers.append((text, value.decode("latin-1")))
        self.lower[text.lower()] = self.headers[-1][1]

    def on_headers_complete(self) -> None:
        coding = self.lower.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            raise _Fatal(HTTPStatus.NOT_IMPLEMENTED)
        self.deadline = time.monotonic() + self.limits.body_timeout
        length = self.lower.get("content-length")
        size = int(length) if length is not None else 0
        if size > self.limits.max_body:
            self._refuse()
            return
        if size > SMALL_BODY:  # the whole body's memory, before any more of it is read
            self.wire.memory.take(self, size - SMALL_BODY)
            self.reserved = True
        if (self.lower.get("expect", "").lower() == "100-continue" and not self.paused
                and self.parser.get_http_version() == "1.1" and not self.busy and not self.queue):
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, data: bytes) -> None:
        if self.refused:
            return
        self.size += len(data)
        if self.size > self.limits.max_body:
            self.parts = []
            self._refuse()
            return
        self.parts.append(data)
        if self.size > SMALL_BODY and not self.reserved:
            self.wire.memory.take(self, min(len(data), self.size - SMALL_BODY))

    def on_message_complete(self) -> None:
        if self.refused:
            return
        self.queue.append(self._request(b"".join(self.parts)))
        self.parts = []
        self.deadline = _NEVER
        if len(self.queue) > self.limits.max_pipelined:
            self.pause(_QUEUE_FULL)
        self._dispatch()

    # -- answering ----------------------------------------------------------------------------

    def _request(self, body: bytes) -> Request:
        target = self.url.decode("latin-1")
        path = target
        if path.startswith(("http://", "https://")):
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        path = path.split("?", 1)[0].split("#", 1)[0]
        return Request(
            method=self.parser.get_method().decode("ascii", "replace"),
            target=target,
            path=path,
            version=f"HTTP/{self.parser.get_http_version()}",
            headers=self.headers,
            lower=self.lower,
            body=body,
            received_at=iso_now(),
            keep_alive=self.parser.should_keep_alive(),
        )

    def _refuse(self) -> None:
        """The body is over --max-body: queue the 413 and stop reading requests."""
        self.refused = True
        self.queue.append(_Refusal(self._request(b"")))
        self.parsing_done = True
        self._dispatch()

    def _stop_parsing(self, status: int | None) -> None:
        self.parsing_done = True
        if status is not None:
            self.wire.stats.bad_requests += 1
            self.queue.append(_Refusal(None, status))
        self._dispatch()
        if not self.busy and not self.queue:
            self._close()

    def _dispatch(self) -> None:
        """Hand queued requests to the handler one at a time, in order."""
        if self.dispatching:
            return  # a respond() called from inside handle(): the loop below goes on
        self.dispatching = True
        try:
            while self.queue and not self.busy and self.transport is not None:
                self.busy = True
                item = self.queue.popleft()
                if isinstance(item, _Refusal):
                    self._answer_refusal(item)
                else:
                    self._handle(item)
        finally:
            self.dispatching = False

    def _handle(self, request: Request) -> None:
        def respond(answer: Answer, report: Report | None) -> None:
            self._respond(request, answer, report)

        try:
            self.wire.handler.handle(request, respond)
        except Exception:
            log.warning("the request handler failed", exc_info=True)
            respond(Answer(500, b"internal error\n", close=True), None)

    def _answer_refusal(self, refusal: _Refusal) -> None:
        if refusal.request is None:
            answer = Answer(refusal.status, f"{_reason(refusal.status)}\n".encode(), close=True)
            self._write(answer, head=False)
            self._close()
            return
        answer, report = self.wire.handler.too_large(refusal.request)
        answer.close = True
        self._respond(refusal.request, answer, report)

    def _respond(self, request: Request, answer: Answer, report: Report | None) -> None:
        self.busy = False
        self.wire.memory.give_back(self)
        close = answer.close or not request.keep_alive or self.wire.stopping
        if self.transport is not None:
            self._write(answer, head=request.method == "HEAD", close=close)
        if report is not None:
            self.wire.answered(request, answer, report)
        if self.transport is None:
            return
        if close:
            self._close()
        elif not self.queue and self.eof:
            self._close()
        else:
            self._idle(time.monotonic())
            self.resume(_QUEUE_FULL)
            self._dispatch()

    def _write(self, answer: Answer, *, head: bool, close: bool = True) -> None:
        assert self.transport is not None
        self.transport.write(encode(answer, close=close, head=head))

    def _idle(self, now: float) -> None:
        self.deadline = now + self.limits.header_timeout
        self.waiting_since = now

    # -- closing ------------------------------------------------------------------------------

    def _close(self) -> None:
        """Close after what was written; a client still sending a refused body is read and
        ignored for a moment, so that it sees the answer rather than a reset."""
        if self.transport is None:
            return
        transport, self.transport = self.transport, None
        self.wire.connections.pop(self, None)
        self.wire.memory.give_back(self)
        if self.refused and not self.eof:
            self.draining = transport
            self.wire.loop.call_later(_DRAIN_TIME, transport.abort)
            self.paused = 0
            transport.resume_reading()
            if transport.can_write_eof():
                transport.write_eof()
            return
        transport.close()

    def close_if_idle(self) -> None:
        if not self.busy and not self.queue:
            self._close()

    def abort(self) -> None:
        transport, self.transport = self.transport, None
        self.wire.connections.pop(self, None)
        self.wire.memory.give_back(self)
        if transport is not None:
            transport.abort()

    def pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.transport is not None:
            self.transport.resume_reading()


def _status_of(exc: httptools.HttpParserError) -> int:
    """400, except a Transfer-Encoding (alone) that is not chunked: 501."""
    text = str(exc)
    if "Transfer-Encoding" in text and "Content-Length" not in text:
        return HTTPStatus.NOT_IMPLEMENTED
    return HTTPStatus.BAD_REQUEST


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


_date: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, formatdate(second, usegmt=True))
    return _date[1]


def encode(answer: Answer, *, close: bool, head: bool = False) -> bytes:
    """The bytes of an answer (a HEAD's without its body)."""
    status = answer.status
    lines = f"HTTP/1.1 {status} {_reason(status)}\r\n{_SERVER}Date: {_http_date()}\r\n"
    body = answer.body
    if status in _NO_BODY_STATUSES:
        body = b""
    else:
        lines += f"Content-Type: {answer.content_type}\r\nContent-Length: {len(body)}\r\n"
    if close:
        lines += "Connection: close\r\n"
    for name, value in answer.headers:
        lines += f"{name}: {value}\r\n"
    data = (lines + "\r\n").encode("latin-1")
    return data if head else data + body

