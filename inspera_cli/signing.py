"""HMAC-SHA1 signatures of webhook bodies, as Inspera computes them.

One helper signs (sandbox, trigger, sign) and verifies (listen, verify, doctor).
"""

from __future__ import annotations

import hashlib
import hmac
import re

from inspera_cli.errors import SignatureError

SIGNATURE_HEADER = "X-Inspera-Signature"
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")


def sign(body: bytes, secret: str) -> str:
    """Return the lowercase hex HMAC-SHA1 of the raw body bytes, keyed with the secret."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha1).hexdigest()


def normalize_signature(header: str) -> str:
    """Strip whitespace and an optional ``sha1=`` prefix, lower-case the hex."""
    value = header.strip()
    if value[:5].lower() == "sha1=":
        value = value[5:]
    return value.strip().lower()


def verify_signature(body: bytes, header: str | None, secret: str) -> None:
    """Check an ``X-Inspera-Signature`` header against the body; raise SignatureError with why.

    Comparison is constant-time and case-insensitive; a ``sha1=`` prefix is accepted.
    """
    if header is None:
        raise SignatureError("no X-Inspera-Signature header")
    if not header.strip():
        raise SignatureError("the signature is empty")
    given = normalize_signature(header)
    if not _HEX40.fullmatch(given):
        raise SignatureError("the signature is not 40 hexadecimal characters (HMAC-SHA1)")
    if not hmac.compare_digest(given, sign(body, secret)):
        raise SignatureError("the signature does not match the body and secret")


def is_valid(body: bytes, header: str | None, secret: str) -> bool:
    try:
        verify_signature(body, header, secret)
    except SignatureError:
        return False
    return True
