"""The requests an inspector shows: bounded, numbered, filtered.

Every row is an ``Entry``: what the receiver made of one request (from a live exchange, a record
file line, or a replay), the request headers and, when seen live, our answer. Rows are numbered in
the order they arrive (``id``) and kept up to ``keep`` rows and ``max_bytes`` of bodies; the
oldest go first.

An entry is one flat tuple of strings, numbers and bytes -- not the receiver's ``Report`` with its
parsed payload, nor a tuple per header (a live row's headers are one string) -- because the
listener adds one per request it answers and a thousand are kept: measured on the loop, keeping
the exchange as it came (some thirty objects a row) cost about 3 µs a request (the objects
outlive the CPU cache before they are freed), keeping this one about 0.3 µs. What a detail page
needs is rebuilt when it is asked for: ``report`` (the payload parsed again from the body),
``headers``, ``answer``.

A ``Store`` lives on one thread -- the event loop the inspector serves on -- so it takes no lock.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

from inspera_cli.listener.http import Answer, Request
from inspera_cli.listener.report import ForwardResult, Report, RequestKind, SignatureState
from inspera_cli.recording import RecordedRequest
from inspera_cli.webhook_body import as_int, parse_event

KEEP = 1000
MAX_BYTES = 64 << 20  # bodies held at most (a 1,000 rows of 1 MiB would be a gigabyte)
_ENTRY_OVERHEAD = 1024
_ROW_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
_STATUS_CLASSES = frozenset({"1xx", "2xx", "3xx", "4xx", "5xx"})

Headers = tuple[tuple[str, str], ...]


class SeenAnswer(NamedTuple):
    """An HTTP answer as it went out: status, headers, body."""

    status: int
    headers: Headers
    body: bytes


class Entry(NamedTuple):
    """One row. ``payload`` is None for a live row: parsed from the body when asked.
    ``replay_of`` is the row it replays (then ``forward`` holds the app's answer and the headers
    what was sent). ``size``: bytes held, about. Read the request's headers as ``headers`` and
    our answer as ``answer`` (None when it was not seen: a record line); the fields behind them
    are kept in the form cheapest to keep (see ``Store.add_answered``)."""

    id: int
    received_at: str
    kind: str  # RequestKind's value, and signature SignatureState's: see _kept_fields
    method: str
    path: str
    status: int
    signature: str
    event: str | None
    context_object_id: int | None
    delivery: int
    forward: ForwardResult | None
    verification: bool
    note: str | None
    body: bytes
    raw_headers: str | Headers  # a live row's: names and values in one string, NUL between them
    answer_type: str | None  # our answer's Content-Type; None: the answer was not seen
    answer_headers: Headers  # its other headers
    answer_body: bytes
    payload: dict[str, Any] | None
    replay_of: int | None
    diagnosis: dict[str, Any] | None
    size: int

    @property
    def report(self) -> Report:
        """The receiver's report of the request, as it was made."""
        payload = self.payload
        if payload is None and self.event is not None:
            try:
                payload = parse_event(self.body).fields
            except ValueError:
                payload = None
        return Report(
            self.received_at, RequestKind(self.kind), self.method, self.path, self.status,
            SignatureState(self.signature),
            self.event, self.context_object_id, payload, self.body, self.delivery, self.forward,
            self.verification, note=self.note,
        )

    @property
    def headers(self) -> Headers:
        """The request's headers as received, in order."""
        raw = self.raw_headers
        if not isinstance(raw, str):
            return raw
        parts = raw.split(_NUL)
        return tuple(zip(parts[::2], parts[1::2], strict=True))

    @property
    def answer(self) -> SeenAnswer | None:
        if self.answer_type is None:
            return None
        return SeenAnswer(self.status, (("Content-Type", self.answer_type), *self.answer_headers),
                          self.answer_body)

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
        return {
            "id": self.id,
            "receivedAt": self.received_at,
            "event": self.event,
            "contextObjectId": self.context_object_id,
            "signature": self.signature,
            "delivery": self.delivery,
            "status": self.status or None,
            "forward": None if self.forward is None else self.forward.to_json(),
            "replayOf": self.replay_of,
        }

    def row_json(self) -> bytes:
        """The row as compact JSON."""
        return _ROW_ENCODER.encode(self.row()).encode("ascii")


_new_entry = tuple.__new__
_flat = itertools.chain.from_iterable
_NUL = "\x00"
_EVENT, _OTHER = RequestKind.EVENT, RequestKind.OTHER


def entry_of(report: Report, headers: Headers, *, replay_of: int | None = None) -> Entry:
    """A row, not numbered yet, of a report that did not come from a live answer (a record
    line, a replay)."""
    return _new_entry(Entry, _kept_fields(0, report, headers, None, (), b"", report.payload, replay_of))


# How the Store keeps a row: the Entry's fields in a plain tuple. The cyclic GC untracks a tuple
# -- an exact tuple, not a NamedTuple -- that holds only strings, numbers, bytes and such tuples
# at its first collections, so a thousand kept rows are not traversed again and again as they
# age; hence also the enums' plain string values, not the members (a member is a tracked object
# and would keep the row tracked). Measured with the display off: --inspect / listen 0.84 -> 0.87-0.89.
Fields = tuple[Any, ...]
_ID, _EVENT_NAME, _SIZE = (Entry._fields.index(name) for name in ("id", "event", "size"))


def _kept_fields(entry_id: int, report: Report, headers: str | Headers, answer_type: str | None,
                 answer_headers: Headers, answer_body: bytes, payload: dict[str, Any] | None,
                 replay_of: int | None) -> Fields:
    body, forward = report.body, report.forward
    size = len(body) + (len(forward.body) if forward else 0) + len(answer_body) + _ENTRY_OVERHEAD
    return (
        entry_id, report.received_at, report.kind.value, report.method, report.path, report.status,
        report.signature.value, report.event, report.context_object_id, report.delivery, forward,
        report.verification, report.note, body, headers, answer_type, answer_headers, answer_body,
        payload, replay_of, None, size,
    )


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
    return entry_of(report, tuple(record.headers.items()))


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
        if self.events and entry.event not in self.events:
            return False
        if self.signatures and entry.signature not in self.signatures:
            return False
        if self.statuses:
            code = str(entry.status)
            if code not in self.statuses and f"{code[:1]}xx" not in self.statuses:
                return False
        return not self.text or self.text in entry.body.lower()

    @property
    def everything(self) -> bool:
        """No filter: every row matches."""
        return not (self.events or self.signatures or self.statuses or self.text)


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


class Store:
    """Rows by id, oldest first, on one thread (see the module docstring). ``on_added``, when
    set, is called after each new row and must return at once."""

    def __init__(self, *, keep: int = KEEP, max_bytes: int = MAX_BYTES) -> None:
        self.keep, self.max_bytes = keep, max_bytes
        self._entries: deque[Fields] = deque()  # ids are consecutive: the first's + position
        self._bytes = 0
        self._last_id = 0
        self.on_added: Callable[[], None] | None = None

    @property
    def last_id(self) -> int:
        return self._last_id

    def add_answered(self, report: Report, request: Request, answer: Answer) -> None:
        """Keep a request the listener answered, if the page lists it: webhooks, and POSTs to
        another path (a subscription with the wrong URL); not the health checks of tunnels and
        load balancers. The listener's loop observer: called for every request it answers.

        The request's headers are kept as one string, not the parser's pairs: a thousand rows
        of some twenty objects each, freed long after they were made, cost the loop 1.7 µs a
        request in freeing alone. The parser refuses a NUL in a header, so NUL separates them.
        The answer's parts are the listener's own (shared by the answers that are alike)."""
        kind = report.kind
        if kind is _EVENT or (kind is _OTHER and report.method == "POST"):
            self._last_id += 1
            self._keep(_kept_fields(self._last_id, report, _NUL.join(_flat(request.headers)),
                                    answer.content_type, answer.headers, answer.body, None, None))

    def add(self, entry: Entry) -> Entry:
        """Number the entry and keep it (dropping the oldest beyond the bounds); the entry as kept."""
        self._last_id += 1
        entry = entry._replace(id=self._last_id)
        self._keep(tuple(entry))
        return entry

    def _keep(self, fields: Fields) -> None:
        entries = self._entries
        entries.append(fields)
        self._bytes += fields[_SIZE]
        while len(entries) > self.keep or (self._bytes > self.max_bytes and len(entries) > 1):
            self._bytes -= entries.popleft()[_SIZE]
        if self.on_added is not None:
            self.on_added()

    def add_all(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.add(entry)

    def get(self, entry_id: int) -> Entry | None:
        entries = self._entries
        index = entry_id - entries[0][_ID] if entries else -1
        return _new_entry(Entry, entries[index]) if 0 <= index < len(entries) else None

    def update(self, entry: Entry) -> None:
        """Keep this version of a row (e.g. with its diagnosis), if the row is still kept."""
        entries = self._entries
        index = entry.id - entries[0][_ID] if entries else -1
        if 0 <= index < len(entries):
            entries[index] = tuple(entry)

    def __len__(self) -> int:
        return len(self._entries)

    def events(self) -> list[str]:
        """The event names among the rows kept, sorted."""
        return sorted({e[_EVENT_NAME] for e in self._entries if e[_EVENT_NAME] is not None})

    def newest(self, query: Query) -> list[Entry]:
        """Matching rows, newest first, at most ``query.limit``."""
        found: list[Entry] = []
        for fields in reversed(self._entries):
            entry = _new_entry(Entry, fields)
            if query.matches(entry):
                found.append(entry)
                if len(found) >= query.limit:
                    break
        return found

    def after(self, entry_id: int) -> Sequence[Entry]:
        """Rows newer than ``entry_id``, oldest first (made Entries as they are read: a page sent
        the newest 50 of a burst's thousands reads 50)."""
        entries = self._entries
        if entry_id >= self._last_id or not entries:
            return []
        return _Rows(list(itertools.islice(entries, max(0, entry_id + 1 - entries[0][_ID]), None)))


class _Rows(Sequence[Entry]):
    """Kept rows (plain tuples) read as Entries."""

    __slots__ = ("_kept",)

    def __init__(self, kept: list[Fields]) -> None:
        self._kept = kept

    def __len__(self) -> int:
        return len(self._kept)

    @overload
    def __getitem__(self, index: int) -> Entry: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Entry]: ...

    def __getitem__(self, index: int | slice) -> Entry | Sequence[Entry]:
        if isinstance(index, slice):
            return _Rows(self._kept[index])
        return _new_entry(Entry, self._kept[index])
