"""Signed POSTs as the sandbox sends them, over the shared keep-alive sender (``inspera_cli.sender``).

Only what is the sandbox's own lives here: its User-Agent and fixed headers, and signing each
body with the subscription's secret. The HTTP client itself (connections, answers, reasons) is
``inspera_cli.sender``, re-exported for the sandbox's callers.
"""

from __future__ import annotations

from inspera_cli.sender import (
    Answer,
    AnswerError,
    Closed,
    Connection,
    Origin,
    OriginTls,
    Resolve,
    ResponseReader,
    Target,
    connect,
    describe,
    header_lines,
    post,
    tls_context,
)
from inspera_cli.signing import SIGNATURE_HEADER, sign

__all__ = [
    "USER_AGENT",
    "Answer",
    "AnswerError",
    "Closed",
    "Connection",
    "Origin",
    "OriginTls",
    "Resolve",
    "ResponseReader",
    "Target",
    "connect",
    "describe",
    "post",
    "signed_request",
    "target_for",
    "tls_context",
]

USER_AGENT = "inspera-hooks-sandbox"
_HEADERS = (("User-Agent", USER_AGENT), ("Accept", "*/*"), ("Content-Type", "application/json"))


def target_for(url: str, resolve: Resolve) -> Target:
    """An endpoint with the sandbox's headers; see ``sender.target_for``."""
    from inspera_cli import sender

    return sender.target_for(url, headers=_HEADERS, resolve=resolve)


def signed_request(target: Target, body: bytes, secret: str) -> bytes:
    """The whole signed POST: Inspera's headers, then the exact body bytes."""
    return target.request(body, header_lines([(SIGNATURE_HEADER, sign(body, secret))]))
