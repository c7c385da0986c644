"""What a receiver does with each request: the webhook policy.

``ReceiverPolicy`` is what every Inspera-facing receiver shares -- routing (404/405/health), the
413 report, signature verification, endpoint-validation answers, retry numbering -- and leaves
one step open: ``accept(request, check, respond)``, called for every request whose signature is
valid or unchecked. `listen` (``ListenPolicy``) records, forwards and relays the app's answer
there; `relay` commits to its queue there. Everything runs on the event loop and must not block:
slow work goes to a thread (``GroupCommit``, the forwarder) whose result comes back to the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

from inspera_cli.errors import SignatureError
from inspera_cli.listener.forward import Forwarder
from inspera_cli.listener.http import Answer, Request, Respond
from inspera_cli.listener.report import ForwardResult, Report, RequestKind, SignatureState
from inspera_cli.recording import RecordWriter, body_fields
from inspera_cli.signing import SIGNATURE_HEADER, Verifier
from inspera_cli.webhook_body import VERIFICATION, parse_event

log = logging.getLogger(__name__)

UNSIGNED_VERIFICATION_NOTE = (
    "unsigned verification request answered 200 (Inspera may not sign endpoint validation)"
)
SEEN_LIMIT = 200_000  # bodies remembered for retry numbering


@dataclass(frozen=True, slots=True)
class Check:
    """What a webhook POST turned out to be, before the policy's own step."""

    signature: SignatureState
    event: str | None
    context_object_id: int | None
    payload: dict[str, Any] | None
    verification: bool
    delivery: int
    shown: bool
    note: str | None

    def report(self, request: Request, status: int, **more: Any) -> Report:
        """The report of this request answered ``status`` (``more``: forward, recorded, note)."""
        accepted = 200 <= status < 300 and not self.verification and self.shown
        fields: dict[str, Any] = {"note": self.note, **more}
        return Report(
            request.received_at, RequestKind.EVENT, request.method, request.path, int(status),
            self.signature, self.event, self.context_object_id, self.payload, request.body,
            self.delivery, verification=self.verification, shown=self.shown, accepted=accepted,
            **fields,
        )


def normalize_path(path: str) -> str:
    path = "/" + path.lstrip("/")
    return path.rstrip("/") or "/"


class ReceiverPolicy:
    """The shared part (see the module docstring); subclasses implement ``accept``."""

    def __init__(
        self,
        *,
        path: str = "/",
        secret: str | None = None,
        skip_verify: bool = False,
        events: Collection[str] | None = None,
        max_body: int = 1 << 20,
    ) -> None:
        self.path = normalize_path(path)
        self.max_body = max_body
        self._verifier = Verifier(secret) if secret and not skip_verify else None
        self._events = frozenset(events) if events is not None else None
        self._seen: dict[bytes, int] = {}

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Before serving, on the loop: open what ``accept`` needs (raise InsperaError)."""

    def close(self) -> None:
        """After the last answer: finish what is queued, close files and threads."""

    def handle(self, request: Request, respond: Respond) -> None:
        if normalize_path(request.path) != self.path:
            text = f"not found: this listener takes webhooks on {self.path}\n"
            respond(*self._plain(request, HTTPStatus.NOT_FOUND, text, RequestKind.OTHER))
        elif request.method == "POST":
            self._webhook(request, respond)
        elif request.method in ("GET", "HEAD"):
            text = f"inspera-hooks listen is running: POST Inspera webhooks to {self.path}\n"
            respond(*self._plain(request, HTTPStatus.OK, text, RequestKind.HEALTH))
        else:
            text = f"{request.method} is not allowed here: Inspera POSTs webhooks to {self.path}\n"
            answer, report = self._plain(request, HTTPStatus.METHOD_NOT_ALLOWED, text, RequestKind.OTHER)
            answer.headers = (("Allow", "GET, HEAD, POST"),)
            respond(answer, report)

    def too_large(self, request: Request) -> tuple[Answer, Report]:
        """413, the body unread. Its signature is labelled as one that failed the check would be:
        with a secret, ``missing`` without the header and ``invalid`` with one (it could not be
        checked, so it is not valid); ``unchecked`` when signatures are not checked at all."""
        note = f"body larger than --max-body ({self.max_body} bytes): not read"
        signature = SignatureState.UNCHECKED
        if self._verifier is not None:
            if request.header("x-inspera-signature") is None:
                signature = SignatureState.MISSING
            else:
                signature = SignatureState.INVALID
                note += ", so its signature could not be checked"
        status = int(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        report = Report(request.received_at, RequestKind.EVENT, request.method, request.path,
                        status, signature, note=note)
        return Answer(status, f"{note}\n".encode(), close=True), report

    def accept(self, request: Request, check: Check, respond: Respond) -> None:
        """A request with a valid or unchecked signature: answer it."""
        raise NotImplementedError

    def _plain(self, request: Request, status: int, text: str, kind: RequestKind) -> tuple[Answer, Report]:
        report = Report(request.received_at, kind, request.method, request.path, int(status),
                        note=text.strip())
        return Answer(status, text.encode()), report

    def _webhook(self, request: Request, respond: Respond) -> None:
        check = self.check(request)
        if check.signature.trusted:
            self.accept(request, check, respond)
        elif check.verification and check.signature is SignatureState.MISSING:
            respond(Answer(HTTPStatus.OK, b"OK\n"), check.report(request, HTTPStatus.OK))
        else:
            text = f"{check.signature} signature: {check.note}\n".encode()
            status = HTTPStatus.UNAUTHORIZED
            respond(Answer(status, text), replace(check.report(request, status), shown=True))

    def check(self, request: Request) -> Check:
        """Verify, parse, number: what the request is."""
        body = request.body
        note: str | None = None
        signature = SignatureState.UNCHECKED
        if self._verifier is not None:
            header = request.header("x-inspera-signature")
            try:
                self._verifier.verify(body, header)
                signature = SignatureState.VALID
            except SignatureError as exc:
                signature = SignatureState.MISSING if header is None else SignatureState.INVALID
                note = str(exc)
        event = payload = context_object_id = None
        try:
            parsed = parse_event(body)
        except ValueError as exc:
            if note is None:
                note = f"shown raw: {exc}"
        else:
            event, payload, context_object_id = parsed.event, parsed.fields, parsed.context_object_id
        verification = event == VERIFICATION
        if verification and signature is SignatureState.MISSING:
            note = UNSIGNED_VERIFICATION_NOTE
        # Only what Inspera may have sent counts: a forged or wrongly signed copy of a body is not
        # its retry, and must not make the next genuine delivery look like a later one.
        delivery = self._number(body) if signature.trusted else 1
        shown = verification or self._events is None or event in self._events
        return Check(signature, event, context_object_id, payload, verification, delivery, shown, note)

    def _number(self, body: bytes) -> int:
        key = hashlib.blake2b(body, digest_size=16).digest()
        delivery = self._seen.get(key, 0) + 1
        self._seen[key] = delivery
        if len(self._seen) > SEEN_LIMIT:
            del self._seen[next(iter(self._seen))]
        return delivery


class ListenPolicy(ReceiverPolicy):
    """`listen`: forward to the app (its answer is relayed), record, then answer.

    The record holds the answer sent -- so `replay --failed` can find what the app did not take
    -- hence the forward comes before the record, and the answer after both."""

    def __init__(
        self,
        *,
        forward: Mapping[str | None, str] | None = None,
        record: str | Path | None = None,
        forward_timeout: float = 9.0,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self._routes = dict(forward or {})
        self._record_path = record
        self._forward_timeout = forward_timeout
        self._recorder: RecordWriter | None = None
        self._forwarder: Forwarder | None = None

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._routes:
            self._forwarder = Forwarder(loop, timeout=self._forward_timeout)
        if self._record_path is not None:
            self._recorder = RecordWriter(self._record_path, loop=loop)

    def close(self) -> None:
        if self._recorder is not None:
            # Writes and answers what is queued; a straggler then gets a 500, never an
            # acknowledgement without a record.
            self._recorder.close()
        if self._forwarder is not None:
            self._forwarder.close()

    def accept(self, request: Request, check: Check, respond: Respond) -> None:
        url = self._route(check)
        if url is None or self._forwarder is None:
            self._record(request, check, Answer(HTTPStatus.OK, b"OK\n"), None, respond)
            return

        def forwarded(result: ForwardResult, answer: Answer) -> None:
            self._record(request, check, answer, result, respond)

        headers = {"Content-Type": request.header("content-type") or "application/json"}
        signature = request.header("x-inspera-signature")
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        self._forwarder.forward(url, request.body, headers, forwarded)

    def _route(self, check: Check) -> str | None:
        if check.verification or not check.shown:
            return None
        return self._routes.get(check.event) if check.event in self._routes else self._routes.get(None)

    def _record(self, request: Request, check: Check, answer: Answer, forward: ForwardResult | None,
                respond: Respond) -> None:
        recording = self._recorder is not None
        report = check.report(request, answer.status, forward=forward, recorded=recording)
        if self._recorder is None:
            respond(answer, report)
            return
        line = record_of(report, request.headers)

        def recorded(error: BaseException | None) -> None:
            if error is None:
                respond(answer, report)
            else:
                respond(*_unrecorded(report, error))

        try:
            self._recorder.append(line, recorded)
        except OSError as exc:  # closed: shutting down
            respond(*_unrecorded(report, exc))


def _unrecorded(report: Report, error: BaseException) -> tuple[Answer, Report]:
    """Not on disk, so not acknowledged: Inspera will retry."""
    log.warning("cannot write the record file: %s", error)
    reason = error.strerror if isinstance(error, OSError) and error.strerror else error
    status = int(HTTPStatus.INTERNAL_SERVER_ERROR)
    failed = replace(report, status=status, accepted=False, recorded=False,
                     note=f"could not write the record file: {reason}")
    return Answer(status, b"could not record the event\n"), failed


def record_of(report: Report, headers: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The `--record` line of a report: its `--json` object, the request headers (repeated ones
    joined with ", ") and the raw body."""
    return {**report.to_json(), "headers": _header_dict(headers), **body_fields(report.body)}


def _header_dict(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for name, value in headers:
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged
