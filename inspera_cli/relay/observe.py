"""What the relay tells the world: one ``Change`` per state change (the log) and ``Metrics`` (the
Prometheus text of the admin port's ``/metrics``)."""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from inspera_cli.relay.queue import iso_time

# Seconds; a delivery attempt ends at 10 s at the latest.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Printable ASCII but the quote and the backslash: JSON writes such a string as it is.
_PLAIN = re.compile(r'[ !#-\[\]-~]*')


class ChangeKind(StrEnum):
    RECEIVED = "received"  # committed to the queue (answered 200)
    DUPLICATE = "duplicate"  # the same body again (Inspera's retry): already queued, answered 200
    DELIVERED = "delivered"
    RETRYING = "retrying"  # an attempt failed; ``next_attempt_at`` says when the next one is
    DEAD = "dead"  # failed until --max-age: kept, listed, retryable


@dataclass(slots=True)  # not frozen: one is made per event, and a frozen __init__ costs ~4x
class Change:
    kind: ChangeKind
    at: float
    id: str
    event: str | None
    context_object_id: int | None
    url: str
    attempt: int | None = None
    status: int | None = None
    error: str | None = None
    next_attempt_at: float | None = None
    seconds: float | None = None  # of the attempt

    def to_json(self) -> dict[str, Any]:
        """One `--log-format json` line: fields that do not apply are left out."""
        line: dict[str, Any] = {
            "time": iso_time(self.at),
            "state": self.kind.value,
            "id": self.id,
            "event": self.event,
            "contextObjectId": self.context_object_id,
            "url": self.url,
        }
        optional = {
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
            "nextAttemptAt": None if self.next_attempt_at is None else iso_time(self.next_attempt_at),
            "latencyMs": None if self.seconds is None else round(self.seconds * 1000, 1),
        }
        line.update((key, value) for key, value in optional.items() if value is not None)
        return line

    def json_line(self, *, ensure_ascii: bool = False) -> str:
        """``to_json()`` as one compact JSON text, exactly as ``json.dumps(..., separators=(",",
        ":"))`` writes it, without building the dict: the log writes one per event under load,
        and the dict and the encoder's walk over it were most of the log thread's time."""
        event = "null" if self.event is None else _repeated_string(self.event, ensure_ascii)
        object_id = "null" if self.context_object_id is None else int.__repr__(self.context_object_id)
        text = (f'{{"time":"{iso_time(self.at)}","state":"{self.kind.value}",'
                f'"id":{_string(self.id, ensure_ascii)},"event":{event},"contextObjectId":{object_id},'
                f'"url":{_repeated_string(self.url, ensure_ascii)}')
        if self.attempt is not None:
            text += f',"attempt":{int.__repr__(self.attempt)}'
        if self.status is not None:
            text += f',"status":{int.__repr__(self.status)}'
        if self.error is not None:
            text += f',"error":{_string(self.error, ensure_ascii)}'
        if self.next_attempt_at is not None:
            text += f',"nextAttemptAt":"{iso_time(self.next_attempt_at)}"'
        if self.seconds is not None:
            text += f',"latencyMs":{json.dumps(round(self.seconds * 1000, 1))}'
        return text + "}"


def _string(text: str, ensure_ascii: bool) -> str:
    if _PLAIN.fullmatch(text):
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=ensure_ascii)


_quoted: dict[tuple[str, bool], str] = {}


def _repeated_string(text: str, ensure_ascii: bool) -> str:
    """``_string`` of a value most lines repeat (an event name, a route's URL)."""
    key = (text, ensure_ascii)
    quoted = _quoted.get(key)
    if quoted is None:
        if len(_quoted) >= 1024:  # bodies may name any event: memory stays bounded
            _quoted.clear()
        quoted = _quoted[key] = _string(text, ensure_ascii)
    return quoted


@dataclass
class Metrics:
    """Counters since this relay started; the pending gauge is read from the queue per scrape.
    Updated on the loop only."""

    received: int = 0
    delivered: int = 0
    dead: int = 0
    bucket_counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    seconds_sum: float = 0.0
    seconds_count: int = 0

    def observe(self, seconds: float) -> None:
        """One delivery attempt took ``seconds`` (answered or not)."""
        index = bisect.bisect_left(BUCKETS, seconds)
        if index < len(BUCKETS):
            self.bucket_counts[index] += 1
        self.seconds_sum += seconds
        self.seconds_count += 1

    def count(self, change: Change) -> None:
        if change.kind is ChangeKind.RECEIVED:
            self.received += 1
        elif change.kind is ChangeKind.DELIVERED:
            self.delivered += 1
        elif change.kind is ChangeKind.DEAD:
            self.dead += 1

    def text(self, pending: int) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines = []
        for name, kind, help_text, value in (
            ("inspera_relay_received_total", "counter",
             "Events received and committed to the queue (duplicates not counted).", self.received),
            ("inspera_relay_delivered_total", "counter",
             "Events the app took (answered 2xx).", self.delivered),
            ("inspera_relay_dead_total", "counter",
             "Events given up on after --max-age (kept in the queue, retryable).", self.dead),
            ("inspera_relay_pending", "gauge", "Events in the queue waiting for delivery.", pending),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        name = "inspera_relay_delivery_seconds"
        lines += [f"# HELP {name} Duration of each delivery attempt to the app, answered or not.",
                  f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, count in zip(BUCKETS, self.bucket_counts, strict=True):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        lines += [f'{name}_bucket{{le="+Inf"}} {self.seconds_count}', f"{name}_sum {self.seconds_sum!r}",
                  f"{name}_count {self.seconds_count}"]
        return "\n".join(lines) + "\n"
