"""What the page is told: the JSON of a row's detail, and a replay's outcome as a new row."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

from inspera_cli.inspector.store import Entry, SeenAnswer, entry_of
from inspera_cli.listener.policy import record_of
from inspera_cli.listener.report import ForwardResult, Report, RequestKind, SignatureState, iso_now
from inspera_cli.recording import encode_record
from inspera_cli.redaction import redact, redact_bytes
from inspera_cli.signing import SIGNATURE_HEADER, diagnose_signature
from inspera_cli.webhook_body import parse_event


def detail(entry: Entry, *, replay_target: str | None) -> dict[str, Any]:
    """`GET /api/requests/ID`: the record line's fields, plus every header in order, both
    answers, the diagnosis and what the page needs to show the body in any form."""
    report = entry.report
    forward = report.forward
    headers = entry.headers
    return {
        "id": entry.id,
        **record_of(report, headers),
        "forward": None if forward is None else {
            **forward.to_json(),
            "error": None if forward.error is None else redact(forward.error),
            "headers": _pairs(forward.headers, redacted=True),
            **_body(forward.body, redacted=True),
        },
        "size": len(report.body),
        "bodyBase64": base64.b64encode(report.body).decode("ascii"),
        "format": payload_format(report),
        "requestHeaders": _pairs(headers),
        "answer": None if entry.answer is None else _answer(entry.answer),
        "note": report.note,
        "replayOf": entry.replay_of,
        "replayTarget": replay_target,
        "diagnosis": entry.diagnosis,
    }


def record_line(entry: Entry) -> bytes:
    """The row as one `listen --record` line (`replay` and `inspect` read it)."""
    return encode_record(record_of(entry.report, entry.headers))


def payload_format(report: Report) -> str | None:
    """``json`` or ``java-map`` (the format of older documentation) when the body parsed."""
    if report.payload is None:
        return None
    try:
        json.loads(report.body)
    except (ValueError, RecursionError):
        return "java-map"
    return "json"


def diagnose(entry: Entry, secret: str | None) -> dict[str, Any] | None:
    """`verify`'s diagnosis of a rejected signature (None when there is nothing to diagnose or no
    secret to do it with). Takes up to 2 s: call it off the event loop."""
    report = entry.report
    if secret is None or report.signature not in (SignatureState.INVALID, SignatureState.MISSING):
        return None
    if report.status == 413:
        return {"valid": False, "reason": report.note, "notes": []}
    found = diagnose_signature(report.body, entry.header(SIGNATURE_HEADER), secret)
    return {"valid": found.valid, "reason": found.reason, "notes": list(found.notes)}


def replay_entry(original: Entry, url: str, body: bytes, sent: dict[str, str], signed: bool,
                 result: ForwardResult) -> Entry:
    """The row of a replay: what was sent, and the app's answer (in ``forward``)."""
    try:
        parsed = parse_event(body)
        event, object_id, payload = parsed.event, parsed.context_object_id, parsed.fields
    except ValueError:
        event, object_id, payload = None, None, None
    from urllib.parse import urlsplit

    report = Report(
        iso_now(), RequestKind.EVENT, "POST", urlsplit(url).path or "/", result.status or 0,
        SignatureState.VALID if signed else SignatureState.UNCHECKED, event, object_id, payload, body,
        forward=result, note=f"replay of #{original.id} to {url}",
    )
    return entry_of(report, tuple(sent.items()), replay_of=original.id)


def replay_outcome(entry: Entry) -> dict[str, Any]:
    """`POST /api/requests/ID/replay`'s answer: ``{status, latencyMs, error, body}`` and the new
    row's ``id``."""
    result = entry.report.forward
    assert result is not None
    return {
        "id": entry.id,
        "status": result.status,
        "latencyMs": result.latency_ms,
        "error": None if result.error is None else redact(result.error),
        "body": redact(result.body.decode("utf-8", "replace")),
    }


def _answer(answer: SeenAnswer) -> dict[str, Any]:
    return {"status": answer.status or None, "headers": _pairs(answer.headers, redacted=True),
            **_body(answer.body, redacted=True)}


def _pairs(headers: Iterable[tuple[str, str]], *, redacted: bool = False) -> list[list[str]]:
    return [[name, redact(value) if redacted else value] for name, value in headers]


def _body(body: bytes, *, redacted: bool = False) -> dict[str, Any]:
    """An answer's body as text, or base64 when it is not UTF-8; known secrets masked (an app
    may echo what it was configured with), in either form."""
    if redacted:
        body = redact_bytes(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {"body": None, "bodyBase64": base64.b64encode(body).decode("ascii")}
    return {"body": redact(text) if redacted else text, "bodyBase64": None}
