"""The requests an inspector shows: bounded, numbered, filtered.

Every row is an ``Entry``: the receiver's ``Report`` of one request (from a live exchange, a
record file line, or a replay) with the request headers and, when seen live, our answer. Rows are
numbered in the order they arrive (``id``) and kept up to ``keep`` rows and ``max_bytes`` of
bodies; the oldest go first.

A ``Store`` lives on one thread -- the event loop the inspector serves on, where the listener adds
a row as each answer goes out -- so it takes no lock, and adding a row is a few operations: it
happens once per request the receiver answers.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from inspera_cli.listener.report import Exchange, ForwardResult, Report, RequestKind, SignatureState
from inspera_cli.recording import RecordedRequest
from inspera_cli.webhook_body import as_int

KEEP = 1000
MAX_BYTES = 64 << 20  # bodies held at most (a 1,000 rows of 1 MiB would be a gigabyte)
_ENTRY_OVERHEAD = 1024
_ROW_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
_STATUS_CLASSES = frozenset({"1xx", "2xx", "3xx", "4xx", "5xx"})


class SeenAnswer(NamedTuple):
    """An HTTP answer as it went out: status, headers, body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(slots=True, eq=False)
class Entry:
    """One row: ``report`` says what the receiver made of the request; ``replay_of`` is the row
    it replays (then ``report.forward`` holds the app's answer and ``headers`` what was sent)."""

    id: int
    report: Report
    headers: tuple[tuple[str, str], ...]
    answer: SeenAnswer | None = None
    replay_of: int | None = None
    diagnosis: dict[str, Any] | None = None
    size: int = field(default=0, init=False)  # bytes held, about
    _row_json: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        forward = self.report.forward
        self.size = (len(self.report.body) + (len(forward.body) if forward else 0)
                     + (len(self.answer.body) if self.answer else 0) + _ENTRY_OVERHEAD)

    def header(self, name: str) -> str | None:
        """The last value of a request header (any case)."""
        name = name.lower()
        found = None
        for key, value in self.headers:
            if key.lower() == name:
                found = value
        return found

    def row(self) -> dict[str, Any]:
        """The list row (SPEC §9), plus ``replayOf``."""
        report = self.report
        return {
            "id": self.id,
            "receivedAt": report.received_at,
            "event": report.event,
            "contextObjectId": report.context_object_id,
            "signature": report.signature.value,
            "delivery": report.delivery,
            "status": report.status or None,
            "forward": None if report.forward is None else report.forward.to_json(),
            "replayOf": self.replay_of,
        }

    def row_json(self) -> bytes:
        """The row as compact JSON, encoded once however many pages stream it."""
        if self._row_json is None:
            self._row_json = _ROW_ENCODER.encode(self.row()).encode("ascii")
        return self._row_json


def from_exchange(exchange: Exchange) -> Entry:
    answer = SeenAnswer(exchange.report.status, exchange.answer_headers, exchange.answer_body)
    return Entry(0, exchange.report, exchange.request_headers, answer)


def from_record(record: RecordedRequest) -> Entry:
    """A row from a `listen --record` line (written by us, or edited by hand: types checked)."""
    fields = record.fields
    try:
        signature = SignatureState(str(fields.get("signature")))
    except ValueError:
        signature = SignatureState.UNCHECKED
    delivery = fields.get("delivery")
    payload = fields.get("payload")
    report = Report(
        received_at=record.received_at or "",
        kind=RequestKind.EVENT,
        method="POST",
        path="/",
        status=record.status or 0,
        signature=signature,
        event=record.event,
        context_object_id=as_int(fields.get("contextObjectId")),
        payload=payload if isinstance(payload, dict) else None,
        body=record.body,
        delivery=delivery if isinstance(delivery, int) and not isinstance(delivery, bool) else 1,
        forward=_forward_of(fields.get("forward")),
        verification=record.is_verification,
    )
    return Entry(0, report, tuple(record.headers.items()))


def _forward_of(value: Any) -> ForwardResult | None:
    if not isinstance(value, dict) or not isinstance(value.get("url"), str):
        return None
    status, latency, error = value.get("status"), value.get("latencyMs"), value.get("error")
    return ForwardResult(
        value["url"],
        status if isinstance(status, int) and not isinstance(status, bool) else None,
        float(latency) if isinstance(latency, int | float) and not isinstance(latency, bool) else 0.0,
        error if isinstance(error, str) else None,
    )


@dataclass(frozen=True)
class Query:
    """The filters of `GET /api/requests` and `/api/stream`: each given one must match.
    ``status`` holds codes (``401``) and classes (``4xx``); ``text`` is searched for in the raw
    body, ignoring ASCII case."""

    events: frozenset[str] = frozenset()
    signatures: frozenset[SignatureState] = frozenset()
    statuses: frozenset[str] = frozenset()
    text: bytes = b""
    limit: int = KEEP

    @classmethod
    def parse(cls, params: Mapping[str, str], *, max_limit: int = KEEP) -> Query:
        """From query parameters (comma-separated lists); ValueError says what is wrong."""
        signatures = set()
        for value in _split(params.get("signature")):
            try:
                signatures.add(SignatureState(value))
            except ValueError:
                raise ValueError(
                    f"signature={value}: expected valid, invalid, missing or unchecked"
                ) from None
        statuses = set()
        for value in _split(params.get("status")):
            value = value.lower()
            if not (value in _STATUS_CLASSES or (value.isdigit() and len(value) == 3)):
                raise ValueError(f"status={value}: expected a status code (401) or a class (4xx)")
            statuses.add(value)
        limit = max_limit
        if params.get("limit"):
            text = params["limit"]
            if not (text.isascii() and text.isdigit()) or int(text) < 1:
                raise ValueError(f"limit={text}: expected a positive whole number")
            limit = min(int(text), max_limit)
        return cls(frozenset(_split(params.get("event"))), frozenset(signatures), frozenset(statuses),
                   params.get("q", "").encode("utf-8").lower(), limit)

    def matches(self, entry: Entry) -> bool:
        report = entry.report
        if self.events and report.event not in self.events:
            return False
        if self.signatures and report.signature not in self.signatures:
            return False
        if self.statuses:
            code = str(report.status)
            if code not in self.statuses and f"{code[:1]}xx" not in self.statuses:
                return False
        return not self.text or self.text in report.body.lower()


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


class Store:
    """Rows by id, oldest first, on one thread (see the module docstring). ``on_added`` (set by
    the server) is called after each new row and must return at once."""

    def __init__(self, *, keep: int = KEEP, max_bytes: int = MAX_BYTES) -> None:
        self.keep, self.max_bytes = keep, max_bytes
        self._entries: deque[Entry] = deque()  # ids are consecutive: the first's + position
        self._bytes = 0
        self._last_id = 0
        self.on_added: Callable[[], None] | None = None

    @property
    def last_id(self) -> int:
        return self._last_id

    def add(self, entry: Entry) -> Entry:
        """Number the entry and keep it (dropping the oldest beyond the bounds). Called once per
        request the listener answers: kept to a few dictionary operations."""
        entries = self._entries
        self._last_id = entry.id = self._last_id + 1
        entries.append(entry)
        self._bytes += entry.size
        while len(entries) > self.keep or (self._bytes > self.max_bytes and len(entries) > 1):
            self._bytes -= entries.popleft().size
        if self.on_added is not None:
            self.on_added()
        return entry

    def add_all(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.add(entry)

    def get(self, entry_id: int) -> Entry | None:
        entries = self._entries
        index = entry_id - entries[0].id if entries else -1
        return entries[index] if 0 <= index < len(entries) else None

    def __len__(self) -> int:
        return len(self._entries)

    def events(self) -> list[str]:
        """The event names among the rows kept, sorted."""
        return sorted({e.report.event for e in self._entries if e.report.event is not None})

    def newest(self, query: Query) -> list[Entry]:
        """Matching rows, newest first, at most ``query.limit``."""
        found: list[Entry] = []
        for entry in reversed(self._entries):
            if query.matches(entry):
                found.append(entry)
                if len(found) >= query.limit:
                    break
        return found

    def after(self, entry_id: int) -> list[Entry]:
        """Rows newer than ``entry_id``, oldest first."""
        entries = self._entries
        if entry_id >= self._last_id or not entries:
            return []
        return list(itertools.islice(entries, max(0, entry_id + 1 - entries[0].id), None))
