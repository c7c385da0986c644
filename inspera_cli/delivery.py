"""Send signed webhook bodies the way Inspera does, and read back what `listen --record` kept.

Used by `trigger` and `replay`; knows nothing of Typer or Rich.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inspera_cli.errors import ConfigError
from inspera_cli.network import describe_network_error
from inspera_cli.payload import VERIFICATION, parse_event
from inspera_cli.redaction import redact
from inspera_cli.signing import SIGNATURE_HEADER, sign

if TYPE_CHECKING:
    import requests

# Inspera gives a subscriber 10 s to answer; anything but 200 counts as a failed delivery.
DELIVERY_TIMEOUT = 10.0
CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class DeliveryResult:
    """The answer to one POST: ``status`` is None when no HTTP answer came (then ``error`` says why)."""

    attempt: int
    status: int | None
    latency_ms: float
    error: str | None = None
    reason: str = ""
    answer_excerpt: str = ""
    event: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    def to_json(self, *, with_event: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "attempt": self.attempt,
            "status": self.status,
            "latencyMs": self.latency_ms,
            "error": self.error,
        }
        if with_event:
            data["event"] = self.event
        return data


def new_session() -> requests.Session:
    """A session for webhook POSTs: ``transport.make_session`` (the one factory), no JSON Accept."""
    from inspera_cli.transport import make_session

    return make_session(accept_json=False)


def signed_headers(body: bytes, secret: str | None, content_type: str = CONTENT_TYPE) -> dict[str, str]:
    """The headers Inspera sends with a body; no signature header when there is no secret."""
    headers = {"Content-Type": content_type}
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    return headers


def post(
    session: requests.Session,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    attempt: int = 1,
    event: str | None = None,
    timeout: float = DELIVERY_TIMEOUT,
) -> DeliveryResult:
    """POST the exact bytes once; never raises for network trouble (the result says what happened)."""
    import requests

    started = time.perf_counter()
    try:
        # Inspera does not follow redirects: a 30x is a failed delivery, so show it as one.
        response = session.post(
            url, data=body, headers=dict(headers), timeout=timeout, allow_redirects=False
        )
    except requests.RequestException as exc:
        latency = (time.perf_counter() - started) * 1000
        error = describe_network_error(exc, timeout, url=url)
        return DeliveryResult(attempt, None, round(latency, 1), error, event=event)
    latency = (time.perf_counter() - started) * 1000
    # A receiver that echoes what it got must not show the secret (`redact`).
    excerpt = redact(" ".join(response.text.split())[:200]) if response.status_code != 200 else ""
    return DeliveryResult(
        attempt,
        response.status_code,
        round(latency, 1),
        None,
        reason=response.reason or "",
        answer_excerpt=excerpt,
        event=event,
    )


def send_repeated(
    url: str,
    body: bytes,
    secret: str | None,
    *,
    repeat: int = 1,
    timeout: float = DELIVERY_TIMEOUT,
    session: requests.Session | None = None,
) -> Iterable[DeliveryResult]:
    """Send the identical signed bytes ``repeat`` times, as Inspera's retries would; yield each answer."""
    own_session = session is None
    session = session or new_session()
    headers = signed_headers(body, secret)
    try:
        for attempt in range(1, repeat + 1):
            yield post(session, url, body, headers, attempt=attempt, timeout=timeout)
    finally:
        if own_session:
            session.close()


# --- replaying a `listen --record` file -------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One line of a `listen --record` file: the exact body plus what listen made of it."""

    source: str
    line: int
    body: bytes
    event: str | None
    received_at: str | None
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.source} line {self.line}"

    @property
    def is_verification(self) -> bool:
        return self.event == VERIFICATION

    @property
    def answered_2xx(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def content_type(self) -> str:
        for name, value in self.headers.items():
            if name.lower() == "content-type" and value:
                return value
        return CONTENT_TYPE


def read_recording(path: Path) -> list[RecordedRequest]:
    """Every request in a `listen --record` file, in file order; ConfigError names a bad line."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (record one with `listen --record FILE`)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a `listen --record` file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a `listen --record` file (not UTF-8 text)") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            records.append(_record_from_line(path, number, line))
    return records


def _record_from_line(path: Path, number: int, line: str) -> RecordedRequest:
    where = f"{path} line {number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg}); is this a `listen --record` file?") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object as written by `listen --record`")
    if isinstance(data.get("body"), str):
        body = data["body"].encode("utf-8")
    elif isinstance(data.get("bodyBase64"), str):
        try:
            body = base64.b64decode(data["bodyBase64"], validate=True)
        except binascii.Error:
            raise ConfigError(f"{where}: 'bodyBase64' is not valid base64") from None
    else:
        raise ConfigError(f"{where}: no 'body' or 'bodyBase64' field, so nothing to replay")
    event = data.get("event")
    if not isinstance(event, str) or not event:
        try:
            event = parse_event(body).event
        except ValueError:
            event = None
    status = data.get("status")
    received_at = data.get("receivedAt")
    return RecordedRequest(
        source=str(path),
        line=number,
        body=body,
        event=event,
        received_at=received_at if isinstance(received_at, str) else None,
        status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        headers=_headers(data.get("headers")),
    )


def _headers(value: Any) -> dict[str, str]:
    """Headers as a mapping, or as [name, value] pairs; anything else is ignored."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return {
            str(item[0]): str(item[1])
            for item in value
            if isinstance(item, list | tuple) and len(item) == 2
        }
    return {}


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is local time. Raises ValueError."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment


def select_recorded(
    records: Sequence[RecordedRequest],
    *,
    event: str | None = None,
    since: datetime | None = None,
    last: int | None = None,
    failed: bool = False,
) -> list[RecordedRequest]:
    """The events to replay, in their original order: verifications never; then the filters;
    ``last`` keeps the last N of what the other filters let through."""
    chosen = []
    for record in records:
        if record.is_verification:
            continue
        if event is not None and record.event != event:
            continue
        if failed and record.answered_2xx:
            continue
        if since is not None and _received_at(record) < since:
            continue
        chosen.append(record)
    if last is not None:
        chosen = chosen[-last:] if last > 0 else []
    return chosen


def _received_at(record: RecordedRequest) -> datetime:
    if record.received_at is None:
        raise ConfigError(f"{record.where}: no 'receivedAt', so --since cannot place it")
    try:
        return parse_time(record.received_at)
    except ValueError:
        raise ConfigError(
            f"{record.where}: 'receivedAt' {record.received_at!r} is not an ISO time"
        ) from None


def replay(
    records: Sequence[RecordedRequest],
    url: str,
    secret: str | None,
    *,
    timeout: float = DELIVERY_TIMEOUT,
    session: requests.Session | None = None,
) -> Iterable[DeliveryResult]:
    """Re-send each recorded body byte for byte, re-signed with ``secret``, in order; yield answers."""
    own_session = session is None
    session = session or new_session()
    try:
        for attempt, record in enumerate(records, start=1):
            headers = signed_headers(record.body, secret, record.content_type)
            yield post(
                session, url, record.body, headers, attempt=attempt, event=record.event,
                timeout=timeout,
            )
    finally:
        if own_session:
            session.close()
