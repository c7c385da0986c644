"""The body of a webhook: Inspera's thin payload (``Event``), parsed from JSON or Java-map text and
built as Inspera builds it. Its signature is ``signing``'s; the REST API's answers ``api_models``'.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

VERIFICATION = "verification"

# `{contextObjectId=35199862, event=confirm_final_grades, timestamp=2018-10-04T16:47:55Z}`:
# a value runs until the next ", key=" or the closing brace, so values may hold commas.
_JAVA_MAP = re.compile(r"\{(.*)\}", re.DOTALL)
_JAVA_ENTRY = re.compile(r"\s*([A-Za-z_][\w.]*)=(.*?)(?=,\s*[A-Za-z_][\w.]*=|$)", re.DOTALL)


@dataclass(frozen=True)
class Event:
    """One webhook delivery's payload, whatever format it came in."""

    event: str
    context_object_id: int | None = None
    timestamp: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def is_verification(self) -> bool:
        return self.event == VERIFICATION


def _java_value(text: str) -> Any:
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text == "null":
        return None
    if text in ("true", "false"):
        return text == "true"
    return text


def _parse_java_map(text: str) -> dict[str, Any]:
    match = _JAVA_MAP.fullmatch(text.strip())
    if not match:
        raise ValueError("body is neither JSON nor a Java map")
    inner = match.group(1)
    fields: dict[str, Any] = {}
    pos = 0
    while pos < len(inner):
        entry = _JAVA_ENTRY.match(inner, pos)
        if not entry or entry.end() == pos:
            raise ValueError("body is neither JSON nor a Java map")
        fields[entry.group(1)] = _java_value(entry.group(2))
        pos = entry.end()
        if inner[pos : pos + 1] == ",":
            pos += 1
    return fields


def as_int(value: Any) -> int | None:
    """An integer, or digits in a string, as Inspera's ids come; anything else is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def parse_event(body: bytes) -> Event:
    """Read a JSON or Java-map webhook body; raise ValueError on anything else."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("body is not UTF-8 text") from exc
    fields: Any
    try:
        fields = json.loads(text)
    except RecursionError:
        raise ValueError("body is JSON nested too deeply") from None
    except ValueError:
        fields = _parse_java_map(text)
    if not isinstance(fields, dict):
        raise ValueError("body is JSON but not an object")
    name = fields.get("event")
    if not isinstance(name, str) or not name:
        raise ValueError("body has no 'event' field")
    timestamp = fields.get("timestamp")
    return Event(
        event=name,
        context_object_id=as_int(fields.get("contextObjectId")),
        timestamp=str(timestamp) if timestamp is not None else None,
        fields=fields,
    )


def utc_timestamp(moment: datetime | None = None) -> str:
    """Inspera's timestamp format: UTC, seconds, trailing Z."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_body(
    event: str,
    context_object_id: int,
    *,
    timestamp: str | None = None,
    legacy: bool = False,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The body Inspera POSTs for an event: thin JSON, or Java-map text with ``legacy``."""
    fields: dict[str, Any] = {
        "contextObjectId": context_object_id,
        "event": event,
        "timestamp": timestamp or utc_timestamp(),
        **(extra or {}),
    }
    # Inspera's serializer writes keys in alphabetical order (see the documented examples).
    fields = dict(sorted(fields.items()))
    if legacy:
        return ("{" + ", ".join(f"{k}={v}" for k, v in fields.items()) + "}").encode("utf-8")
    return json.dumps(fields).encode("utf-8")


def verification_body(*, timestamp: str | None = None, legacy: bool = False) -> bytes:
    """The endpoint-validation request body Inspera sends before accepting a subscription."""
    return build_body(
        VERIFICATION,
        0,
        timestamp=timestamp,
        legacy=legacy,
        extra={"contextObjectTitle": str(uuid.uuid4())},
    )
