"""The requests an inspector shows: bounded, numbered, filtered.

Every row is an ``Entry``: what the receiver made of one request (from a live exchange, a record
file line, or a replay), the request headers and, when seen live, our answer. Rows are numbered in
the order they arrive (``id``) and kept up to ``keep`` rows and ``max_bytes`` of bodies; the
oldest go first.

A row is kept as a plain tuple of strings, numbers and bytes (see ``Row``) -- not the receiver's
``Report`` with its parsed payload, nor a tuple per header -- because the listener adds one per
request it answers and a thousand are kept, long after the request, out of the CPU's caches: what
a row holds costs a miss to free. What a detail page needs is rebuilt when it is asked for:
``report`` (the payload parsed again from the body), ``headers``, ``answer``.

A ``Store`` lives on one thread -- the event loop the inspector serves on -- so it takes no lock.
"""

from __future__ import annotations

import itertools
import json
import sys
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
    what was sent). Read the request's headers as ``headers`` and
    our answer as ``answer`` (None when it was not seen: a record line); the fields behind them
    are kept in the form cheapest to keep (see ``Store.add_answered``)."""

    body: bytes  # these three first: where a kept row of either form has them (see _held)
    forward: ForwardResult | None
    answer_body: bytes
    id: int
    received_at: str
    kind: str  # RequestKind's value, and signature SignatureState's: see Store.add_answered
    method: str
    path: str
    status: int
    signature: str
    event: str | None
    context_object_id: int | None
    delivery: int
    verification: bool
    note: str | None
    raw_headers: str | Headers  # a live row's: names and values in one string, NUL between them
    answer_type: str | None  # our answer's Content-Type; None: the answer was not seen
    answer_headers: Headers  # its other headers
    payload: dict[str, Any] | None
    replay_of: int | None
    diagnosis: dict[str, Any] | None

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
        if not raw:
            return ()
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
_intern = sys.intern
_NUL = "\x00"
_EVENT, _OTHER = RequestKind.EVENT, RequestKind.OTHER


def entry_of(report: Report, headers: Headers, *, replay_of: int | None = None) -> Entry:
    """A row, not numbered yet, of a report that did not come from a live answer (a record
    line, a replay)."""
    return Entry(
        body=report.body, forward=report.forward, answer_body=b"", id=0, received_at=report.received_at,
        kind=report.kind.value, method=report.method, path=report.path, status=report.status,
        signature=report.signature.value, event=report.event, context_object_id=report.context_object_id,
        delivery=report.delivery, verification=report.verification, note=report.note, raw_headers=headers,
        answer_type=None, answer_headers=(), payload=report.payload, replay_of=replay_of, diagnosis=None,
    )


# How the Store keeps a row: a plain tuple, in one of two forms.
# - An Entry's fields: rows from record files and replays.
# - A live row (the listener's, one per request answered), made to be cheap to keep: every
#   object a row holds is freed a thousand requests later, long out of the CPU's caches, and
#   each costs a miss to free then (measured under wrk: --inspect-keep 10 cost 3.3 µs a request,
#   the default 1,000 rows 7.1 µs). So the strings that are the request's own -- its time, its
#   contextObjectId, its headers -- are one string, NUL between them (the parser refuses a NUL
#   in a header, and the other two are ours); the event name is interned, one string for all the
#   rows of an event. Its method is always POST; its id is its place; its size is worked out from
#   its lengths. That leaves three blocks a row (the tuple, that string, the body) of nine.
# The cyclic GC untracks a tuple -- an exact tuple, not a NamedTuple -- that holds only strings,
# numbers, bytes and such tuples at its first collections, so kept rows are not traversed again
# and again as they age; hence the enums' plain string values, not the members.
Row = tuple[Any, ...]
_LIVE = 14  # a live row's length: (body, forward, answer_body, packed, event, status, signature,
# delivery, verification, note, kind, path, answer_type, answer_headers)
_EVENT_FIELD = Entry._fields.index("event")
_POST = "POST"


def _held(row: Row) -> int:
    """The bytes a row is counted for (either form: body, forward and answer_body come first)."""
    forward = row[1]
    return len(row[0]) + len(row[2]) + _ENTRY_OVERHEAD + (len(forward.body) if forward is not None else 0)


def _entry(row: Row, entry_id: int) -> Entry:
    """The Entry a kept row stands for; ``entry_id``: its place."""
    if len(row) != _LIVE:
        return _new_entry(Entry, row)
    (body, forward, answer_body, packed, event, status, signature, delivery, verification, note, kind,
     path, answer_type, answer_headers) = row
    received_at, object_id, *headers = packed.split(_NUL, 2)
    return Entry(body, forward, answer_body, entry_id, received_at, kind, _POST, path, status, signature,
                 event, int(object_id) if object_id else None, delivery, verification, note,
                 headers[0] if headers else "", answer_type, answer_headers, None, None, None)


def _event_of(row: Row) -> str | None:
    return row[4 if len(row) == _LIVE else _EVENT_FIELD]  # type: ignore[no-any-return]


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
        # Ids are consecutive: the oldest's is last_id + 1 - len. An append beyond ``keep``
        # drops the oldest.
        self._rows: deque[Row] = deque(maxlen=keep)
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

        It makes a live row (see Row), in one function: it runs for every request. The
        enums' plain values are read as ``_value_`` (an attribute; ``value`` is two Python
        calls). The headers are flattened by ``sum``: its copies grow with the square of the
        count, but the receiver takes at most 100 headers, and for the few a webhook has it is
        the quickest way. The answer's parts are the listener's own (shared by the answers
        that are alike)."""
        kind = report.kind
        if kind is _EVENT or (kind is _OTHER and report.method == "POST"):
            self._last_id += 1
            body, forward, answer_body, event = report.body, report.forward, answer.body, report.event
            object_id = report.context_object_id
            own = (report.received_at, "" if object_id is None else str(object_id))
            size = len(body) + len(answer_body) + _ENTRY_OVERHEAD
            self._keep((
                body, forward, answer_body, _NUL.join(sum(request.headers, own)), event and _intern(event),
                report.status, report.signature._value_, report.delivery, report.verification, report.note,
                kind._value_, _intern(report.path), answer.content_type, answer.headers,
            ), size if forward is None else size + len(forward.body))

    def add(self, entry: Entry) -> Entry:
        """Number the entry and keep it (dropping the oldest beyond the bounds); the entry as kept."""
        self._last_id += 1
        entry = entry._replace(id=self._last_id)
        row = tuple(entry)
        self._keep(row, _held(row))
        return entry

    def _keep(self, row: Row, size: int) -> None:
        rows = self._rows
        if len(rows) == self.keep:  # the append drops the oldest: _held(rows[0]), written out
            old = rows[0]
            forward = old[1]
            self._bytes -= len(old[0]) + len(old[2]) + _ENTRY_OVERHEAD + (
                len(forward.body) if forward is not None else 0)
        rows.append(row)
        self._bytes += size
        if self._bytes > self.max_bytes:
            self._trim()
        if self.on_added is not None:
            self.on_added()

    def _trim(self) -> None:
        """Drop the oldest rows until their bodies are within ``max_bytes`` (the newest stays)."""
        rows = self._rows
        while self._bytes > self.max_bytes and len(rows) > 1:
            self._bytes -= _held(rows.popleft())

    def add_all(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.add(entry)

    def _first_id(self) -> int:
        return self._last_id + 1 - len(self._rows)

    def get(self, entry_id: int) -> Entry | None:
        index = entry_id - self._first_id()
        return _entry(self._rows[index], entry_id) if 0 <= index < len(self._rows) else None

    def update(self, entry: Entry) -> None:
        """Keep this version of a row (e.g. with its diagnosis), if the row is still kept."""
        index = entry.id - self._first_id()
        if 0 <= index < len(self._rows):
            self._rows[index] = tuple(entry)

    def __len__(self) -> int:
        return len(self._rows)

    def events(self) -> list[str]:
        """The event names among the rows kept, sorted."""
        return sorted({event for row in self._rows if (event := _event_of(row)) is not None})

    def newest(self, query: Query) -> list[Entry]:
        """Matching rows, newest first, at most ``query.limit``."""
        found: list[Entry] = []
        for entry_id, row in zip(itertools.count(self._last_id, -1), reversed(self._rows)):
            entry = _entry(row, entry_id)
            if query.matches(entry):
                found.append(entry)
                if len(found) >= query.limit:
                    break
        return found

    def after(self, entry_id: int) -> Sequence[Entry]:
        """Rows newer than ``entry_id``, oldest first (made Entries as they are read: a page sent
        the newest 50 of a burst's thousands reads 50)."""
        if entry_id >= self._last_id or not self._rows:
            return []
        start = max(0, entry_id + 1 - self._first_id())
        return _Rows(self._first_id() + start, list(itertools.islice(self._rows, start, None)))


class _Rows(Sequence[Entry]):
    """Kept rows read as Entries; ``first``: the id of the first."""

    __slots__ = ("_first", "_kept")

    def __init__(self, first: int, kept: list[Row]) -> None:
        self._first, self._kept = first, kept

    def __len__(self) -> int:
        return len(self._kept)

    @overload
    def __getitem__(self, index: int) -> Entry: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Entry]: ...

    def __getitem__(self, index: int | slice) -> Entry | Sequence[Entry]:
        if isinstance(index, slice):
            start, _, step = index.indices(len(self._kept))
            if step != 1:
                raise ValueError("rows are read in order, one after the other")
            return _Rows(self._first + start, self._kept[index])
        if index < 0:
            index += len(self._kept)
        return _entry(self._kept[index], self._first + index)
