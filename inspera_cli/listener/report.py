"""What the receiver made of one request: a typed report, and its `listen --json` form.

``Report`` is what `listen` prints and counts; ``Exchange`` adds what an inspector shows (every
request header, the answer sent, the app's answer), built only when someone observes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

#: The keys of one `listen --json` line, in order (SPEC §4: fixed).
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


class SignatureState(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    MISSING = "missing"
    UNCHECKED = "unchecked"

    @property
    def trusted(self) -> bool:
        """What Inspera may have sent: counted as a delivery, recorded, forwarded."""
        return self in (SignatureState.VALID, SignatureState.UNCHECKED)


class RequestKind(StrEnum):
    EVENT = "event"  # a POST on the path: a webhook
    HEALTH = "health"  # GET or HEAD on the path
    OTHER = "other"  # another path (404) or method (405)


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """The app's answer to a forwarded event; ``status`` None when none came (``error`` says why).
    ``headers`` and ``body`` (its first 64 KiB) are for inspectors; `--json` shows the rest."""

    url: str
    status: int | None
    latency_ms: float
    error: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "latencyMs": self.latency_ms, "error": self.error}


@dataclass(frozen=True, slots=True)
class Report:
    """One answered request. ``shown`` is false for events filtered out by `--events`;
    ``accepted`` is what `--exit-after` counts (2xx, not a verification, shown); ``note`` says why
    a request was refused, or what else to know."""

    received_at: str
    kind: RequestKind
    method: str
    path: str
    status: int
    signature: SignatureState = SignatureState.UNCHECKED
    event: str | None = None
    context_object_id: int | None = None
    payload: dict[str, Any] | None = None
    body: bytes = b""
    delivery: int = 1
    forward: ForwardResult | None = None
    verification: bool = False
    shown: bool = True
    accepted: bool = False
    recorded: bool = False
    note: str | None = None

    @property
    def raw(self) -> str:
        """The body as text, invalid UTF-8 replaced."""
        return self.body.decode("utf-8", "replace")

    @property
    def counted(self) -> bool:
        """Counted as a delivery of its body (rejected copies and unread bodies are not)."""
        return self.signature.trusted and self.status != 413

    def to_json(self) -> dict[str, Any]:
        """The `listen --json` object (JSON_FIELDS, in order)."""
        return {
            "receivedAt": self.received_at,
            "event": self.event,
            "contextObjectId": self.context_object_id,
            "payload": self.payload,
            "raw": self.raw,
            "signature": self.signature.value,
            "delivery": self.delivery,
            "status": self.status,
            "forward": None if self.forward is None else self.forward.to_json(),
        }


@dataclass(slots=True)
class Exchange:
    """A report with everything on the wire around it, for observers such as `inspect`. Read
    it, never change it: one is built per request answered while someone observes, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) cost 0.6 µs of it."""

    report: Report
    request_headers: tuple[tuple[str, str], ...]
    answer_headers: tuple[tuple[str, str], ...]
    answer_body: bytes


_second: tuple[int, str] = (0, "")


def iso_now() -> str:
    """UTC, milliseconds, trailing Z: 2024-05-01T12:00:00.123Z."""
    global _second
    now = time.time()
    second = int(now)
    if _second[0] != second:
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second[1]}.{int(now % 1 * 1000):03d}Z"
