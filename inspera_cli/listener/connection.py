"""One HTTP/1.1 connection of the wire: parsing (httptools), deadlines, body memory, answers in
request order, closing. See ``inspera_cli.listener.wire`` for the rules."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

import httptools

from inspera_cli.listener.http import Answer, Request, encode, reason, status_of
from inspera_cli.listener.report import Report, iso_now

if TYPE_CHECKING:
    from inspera_cli.listener.wire import Wire

log = logging.getLogger(__name__)

SMALL_BODY = 16 * 1024  # the part of each body that never waits for memory
_DRAIN_LIMIT = 16 * 1024 * 1024  # of a refused body, read and dropped so that the 413 arrives
_DRAIN_TIME = 1.0
MAX_HEAD = 64 * 1024  # a request's target and header lines, together: more is a 431 (414: the target)
MAX_HEADERS = 100
_NEVER = math.inf
# Reasons to stop reading a connection (bits of Connection.paused).
_WRITE_FULL, _NO_MEMORY, _QUEUE_FULL = 1, 2, 4


@dataclass
class _Refusal:
    """A queued answer that ends the connection: 413, or a request the parser refused."""

    request: Request | None
    status: int = 413


class _Fatal(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class BodyMemory:
    """Body bytes held beyond SMALL_BODY per request, across connections (see module doc).

    A connection reads on while the *other* connections hold less than ``limit``, so one body
    larger than the limit (a big --max-body) still gets through, alone: at most ``limit`` plus
    one body are held."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.waiting: deque[Connection] = deque()

    def take(self, conn: Connection, size: int) -> None:
        if self.held - conn.held >= self.limit:  # the others hold it all: wait for them
            conn.wanted += size
            conn.pause(_NO_MEMORY)
            self.waiting.append(conn)
            return
        self.held += size
        conn.held += size

    def give_back(self, conn: Connection) -> None:
        self.held -= conn.held
        conn.held = conn.wanted = 0
        while self.waiting and self.held - self.waiting[0].held < self.limit:
            waiter = self.waiting.popleft()
            self.held += waiter.wanted
            waiter.held, waiter.wanted = waiter.held + waiter.wanted, 0
            waiter.resume(_NO_MEMORY)


class Connection(asyncio.Protocol):
    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.limits = wire.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Request | _Refusal] = deque()
        self.busy = self.dispatching = self.parsing_done = self.eof = False
        self.paused = 0
        self.held = self.wanted = 0  # body memory granted, and asked for while paused
        self.drained = 0
        self.draining: asyncio.Transport | None = None
        self.deadline = _NEVER
        self.waiting_since: float | None = None
        self.in_head = False  # from a request's first byte to its headers' end (and see on_chunk_header)
        self.head_read = self.read_size = 0  # see _head_goes_on
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
        self.read_size = len(data)
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
            self._stop_parsing(status_of(exc))
        else:
            if self.in_head:
                self._head_goes_on()

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
        self.in_head, self.head_read = True, -1
        self.waiting_since = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        text = name.decode("latin-1")
        self.headers.append((text, value.decode("latin-1")))
        self.lower[text.lower()] = self.headers[-1][1]

    # -- the head's bounds: MAX_HEAD bytes, MAX_HEADERS headers -------------------------------------
    # Checked where it costs nothing to a request that comes in one read of at most MAX_HEAD bytes
    # (nearly every webhook): its head cannot be larger, so only its header count is looked at.

    def _head_goes_on(self) -> None:
        """After a read that ended inside a head. The parser keeps a header's part until the
        header ends, so a head is also bounded while it goes on: by the reads that were all head
        (the first read of it may have held the end of another request; it is counted when the
        head ends), and by the headers parsed so far."""
        if self.head_read < 0:
            self.head_read = 0  # it began in this read
        else:
            self.head_read += self.read_size
        if self.head_read > MAX_HEAD or len(self.headers) > MAX_HEADERS:
            self._stop_parsing(self._head_refusal())

    def _head_refusal(self) -> int:
        return HTTPStatus.REQUEST_URI_TOO_LONG if len(self.url) > MAX_HEAD else \
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE

    def _head_too_large(self) -> bool:
        """The exact check, for a head that came in more than one read or in a large one."""
        size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        return size > MAX_HEAD

    # A chunked body ends with a chunk of size 0 and trailers: header lines after the body. So from
    # a chunk's size line to its data (or, for the last, to the end of its trailers) the same
    # bounds hold, headers and trailers together.

    def on_chunk_header(self) -> None:
        self.in_head, self.head_read = True, -1

    def on_chunk_complete(self) -> None:
        self.in_head = False
        if len(self.headers) > MAX_HEADERS or (
            (self.head_read >= 0 or self.read_size > MAX_HEAD) and self._head_too_large()
        ):
            raise _Fatal(self._head_refusal())

    def on_headers_complete(self) -> None:
        self.in_head = False  # the check of on_chunk_complete, written out: it runs for every request
        if len(self.headers) > MAX_HEADERS or (
            (self.head_read >= 0 or self.read_size > MAX_HEAD) and self._head_too_large()
        ):
            raise _Fatal(self._head_refusal())
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
        self.in_head = False  # a chunk's data: its size line is over
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
            answer = Answer(refusal.status, f"{reason(refusal.status)}\n".encode(), close=True)
            self._write(answer, head=False)
            self._close()
            return
        answer, report = self.wire.handler.too_large(refusal.request)
        answer.close = True
        self._respond(refusal.request, answer, report)

    def _respond(self, request: Request, answer: Answer, report: Report | None) -> None:
        self.busy = False
        self.wire.memory.give_back(self)
        close = answer.close or not request.keep_alive or self.wire.stopping or self.parsing_done
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
