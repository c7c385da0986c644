"""The HTTP vocabulary of the receiver: a whole request, an answer and its bytes, the limits,
and the ``Handler`` that turns one into the other (a policy)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol

import httptools

from inspera_cli._version import __version__
from inspera_cli.listener.report import Report

_NO_BODY_STATUSES = frozenset({204, 304})
_SERVER = f"Server: inspera-hooks/{__version__}\r\n"


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


def status_of(exc: httptools.HttpParserError) -> int:
    """400, except a Transfer-Encoding (alone) that is not chunked: 501."""
    text = str(exc)
    if "Transfer-Encoding" in text and "Content-Length" not in text:
        return HTTPStatus.NOT_IMPLEMENTED
    return HTTPStatus.BAD_REQUEST


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


_date: tuple[int, str] = (0, "")
# The bytes of recent small answers (most are the same "200 OK"), for the current second: building
# them costs more than the lookup. Cleared when the Date changes; bounded in entries and size.
_encoded: dict[tuple[object, ...], bytes] = {}
_CACHED_BODY = 512
_CACHED_ANSWERS = 64


def _http_date() -> str:
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, formatdate(second, usegmt=True))
        _encoded.clear()
    return _date[1]


def encode(answer: Answer, *, close: bool, head: bool = False) -> bytes:
    """The bytes of an answer (a HEAD's without its body)."""
    date = _http_date()
    key = (answer.status, answer.body, answer.content_type, answer.headers, close, head)
    cacheable = len(answer.body) <= _CACHED_BODY
    if cacheable and (data := _encoded.get(key)) is not None:
        return data
    status = answer.status
    lines = f"HTTP/1.1 {status} {reason(status)}\r\n{_SERVER}Date: {date}\r\n"
    body = answer.body
    if status in _NO_BODY_STATUSES:
        body = b""
    else:
        lines += f"Content-Type: {answer.content_type}\r\nContent-Length: {len(body)}\r\n"
    if close:
        lines += "Connection: close\r\n"
    for name, value in answer.headers:
        lines += f"{name}: {value}\r\n"
    head_bytes = (lines + "\r\n").encode("latin-1")
    data = head_bytes if head else head_bytes + body
    if cacheable and len(_encoded) < _CACHED_ANSWERS:
        _encoded[key] = data
    return data
