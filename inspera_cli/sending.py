"""One-off signed webhook POSTs, sent the way Inspera sends them and waited for: `trigger`,
`replay` of what ``recording`` reads back, `doctor`'s validation POST and the inspector's replay.

Blocking, through ``requests`` (``requests_session``): a person waits for each answer. The
deliveries of the sandbox and of `relay`, many at a time, go through ``delivery_client``.
Knows nothing of Typer or Rich.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from inspera_cli.network import NoAnswer, describe_network_error, no_answer
from inspera_cli.redaction import redact
from inspera_cli.signing import SIGNATURE_HEADER, sign

if TYPE_CHECKING:
    import requests

    from inspera_cli.recording import RecordedRequest

# Inspera gives a subscriber 10 s to answer; anything but 200 counts as a failed delivery.
DELIVERY_TIMEOUT = 10.0
CONTENT_TYPE = "application/json"
# How often a refused first request is tried again while the receiver starts.
REFUSED_RETRY_PAUSE = 0.05


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
    context_object_id: Any = None  # of a replayed record
    no_answer: NoAnswer | None = None  # why ``status`` is None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def refused(self) -> bool:
        """Nothing listened: the request reached no server."""
        return self.no_answer is NoAnswer.REFUSED

    def to_json(self, *, with_event: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "attempt": self.attempt,
            "status": self.status,
            "latencyMs": self.latency_ms,
            "error": self.error,
        }
        if with_event:
            data["event"] = self.event
            data["contextObjectId"] = self.context_object_id
        return data


def new_session() -> requests.Session:
    """A session for webhook POSTs: ``requests_session.make_session`` (the one factory), no JSON Accept."""
    from inspera_cli.requests_session import make_session

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
        return DeliveryResult(attempt, None, round(latency, 1), error, event=event,
                              no_answer=no_answer(exc))
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
    wait: float = 0.0,
) -> Iterable[DeliveryResult]:
    """Send the identical signed bytes ``repeat`` times, as Inspera's retries would; yield each answer.

    A first request that finds nothing listening is sent again for up to ``wait`` seconds, so a
    receiver started just before (`listen … & trigger …`) is not raced.
    """
    own_session = session is None
    session = session or new_session()
    headers = signed_headers(body, secret)
    deadline = time.monotonic() + wait
    try:
        for attempt in range(1, repeat + 1):
            result = post(session, url, body, headers, attempt=attempt, timeout=timeout)
            while attempt == 1 and result.refused and time.monotonic() < deadline:
                time.sleep(min(REFUSED_RETRY_PAUSE, max(deadline - time.monotonic(), 0)))
                result = post(session, url, body, headers, attempt=attempt, timeout=timeout)
            yield result
    finally:
        if own_session:
            session.close()


def replay(
    records: Iterable[RecordedRequest],
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
            result = post(
                session, url, record.body, headers, attempt=attempt, event=record.event,
                timeout=timeout,
            )
            yield replace(result, context_object_id=record.context_object_id)
    finally:
        if own_session:
            session.close()
