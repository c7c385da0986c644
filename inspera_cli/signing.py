"""HMAC-SHA1 signatures of webhook bodies, as Inspera computes them.

One helper signs (sandbox, trigger, sign) and verifies (listen, verify, doctor).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from inspera_cli.errors import SignatureError

SIGNATURE_HEADER = "X-Inspera-Signature"
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: its UTF-8 bytes. A secret read from the environment that is not
    valid UTF-8 arrives with surrogate escapes; those stand for the bytes it was given as."""
    return secret.encode("utf-8", "surrogateescape")


def sign(body: bytes, secret: str) -> str:
    """Return the lowercase hex HMAC-SHA1 of the raw body bytes, keyed with the secret."""
    return hmac.new(secret_key(secret), body, hashlib.sha1).hexdigest()


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
    Verifier(secret).verify(body, header)


class Verifier:
    """``verify_signature`` with the key prepared once, for a receiver checking many bodies."""

    def __init__(self, secret: str) -> None:
        self._mac = hmac.new(secret_key(secret), digestmod=hashlib.sha1)

    def verify(self, body: bytes, header: str | None) -> None:
        if header is None:
            raise SignatureError("no X-Inspera-Signature header")
        if not header.strip():
            raise SignatureError("the signature is empty")
        given = normalize_signature(header)
        if not _HEX40.fullmatch(given):
            raise SignatureError("the signature is not 40 hexadecimal characters (HMAC-SHA1)")
        mac = self._mac.copy()
        mac.update(body)
        if not hmac.compare_digest(given, mac.hexdigest()):
            raise SignatureError("the signature does not match the body and secret")


def is_valid(body: bytes, header: str | None, secret: str) -> bool:
    try:
        verify_signature(body, header, secret)
    except SignatureError:
        return False
    return True


@dataclass(frozen=True)
class SignatureDiagnosis:
    """What ``diagnose_signature`` found: whether the signature is valid, and if not, the likely why.

    ``notes`` lists deviations from what Inspera sends that were accepted (``sha1=``, upper case).
    """

    valid: bool
    reason: str | None = None
    notes: tuple[str, ...] = ()


_PASTED_HEADER = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*:\s*(.*)", re.DOTALL)
_ALGORITHM_PREFIX = re.compile(r"(sha\d+)\s*=(.*)", re.IGNORECASE | re.DOTALL)
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Permuting more keys than this costs more than it is worth; Inspera's payloads have 3–4.
_MAX_PERMUTED_KEYS = 6


# How long the search for a reason may take, whatever the body: then say what was not tried.
DIAGNOSIS_BUDGET = 2.0


def diagnose_signature(
    body: bytes, header: str | None, secret: str, *, budget: float = DIAGNOSIS_BUDGET
) -> SignatureDiagnosis:
    """Like ``verify_signature``, but on failure work out the most likely reason.

    Valid exactly when ``verify_signature`` accepts. Tries the usual accidents: an empty value, a
    pasted header name, a SHA-256 signature, a newline added to (or lost from) the body, changed line
    endings, whitespace around the secret, and the JSON re-serialised after signing -- the last for
    at most ``budget`` seconds in all; the reason then says what it could not check.
    """
    if header is None:
        return SignatureDiagnosis(False, f"no signature given (no {SIGNATURE_HEADER} header)")
    if not header.strip():
        return SignatureDiagnosis(
            False, "the signature is empty (an unset variable, or a request without the header?)"
        )
    pasted = _PASTED_HEADER.fullmatch(header)
    if pasted:
        name, value = pasted.groups()
        hint = f"the signature includes the header name '{name}:'; pass only the value after it"
        inner = diagnose_signature(body, value, secret, budget=budget)
        if inner.valid:
            return SignatureDiagnosis(False, f"{hint} (that value is valid)")
        return SignatureDiagnosis(False, f"{hint} (but that value is not valid either: {inner.reason})")

    notes: list[str] = []
    value = header.strip()
    prefixed = _ALGORITHM_PREFIX.fullmatch(value)
    if prefixed:
        algorithm = prefixed.group(1).lower()
        if algorithm != "sha1":
            return SignatureDiagnosis(
                False, f"a {algorithm} signature: Inspera signs with HMAC-SHA1 (40 hexadecimal characters)"
            )
        notes.append("accepted the 'sha1=' prefix (Inspera itself sends bare hex)")
        value = prefixed.group(2).strip()
    if value != value.lower() and _HEX40.fullmatch(value):
        notes.append("accepted upper-case hex (Inspera itself sends lower-case)")
    value = value.lower()
    if not _HEX40.fullmatch(value):
        if _HEX64.fullmatch(value):
            reason = "64 hexadecimal characters look like HMAC-SHA256: Inspera signs with HMAC-SHA1 (40)"
        else:
            reason = (
                f"the signature is not 40 hexadecimal characters (HMAC-SHA1): it has {len(value)}"
                " characters" + ("" if re.fullmatch(r"[0-9a-f]*", value) else ", not all of them hex")
            )
        return SignatureDiagnosis(False, reason, tuple(notes))
    if hmac.compare_digest(value, sign(body, secret)):
        return SignatureDiagnosis(True, None, tuple(notes))
    return SignatureDiagnosis(False, _likely_reason(body, value, secret, budget), tuple(notes))


def _likely_reason(body: bytes, signature: str, secret: str, budget: float) -> str:
    """Which accident turns this body and secret into ``signature`` (cheap guesses first)."""
    deadline = time.monotonic() + budget
    for other, why in _secret_alternatives(secret):
        if hmac.compare_digest(signature, sign(body, other)):
            return why
    for candidate, why in _body_alternatives(body):
        if hmac.compare_digest(signature, sign(candidate, secret)):
            return why
        if time.monotonic() > deadline:
            return (f"{_NO_MATCH}; not checked within {budget:g} s: every other key order and "
                    "spacing of the JSON (the body is large)")
    return _NO_MATCH


_NO_MATCH = (
    "the signature does not match this body with this secret: most likely it was made with a "
    "different secret (each subscription has its own), or the body is not the exact bytes that "
    "were signed"
)


def _body_alternatives(body: bytes) -> Iterator[tuple[bytes, str]]:
    """Bodies that could have been signed before this one was changed, each with what changed."""
    if body.endswith(b"\n"):
        yield (
            body.rstrip(b"\r\n"),
            "the body ends with a newline that was not signed (added by an editor, echo or a "
            "heredoc): use the exact bytes, e.g. printf '%s' instead of echo",
        )
    else:
        yield body + b"\n", "the signed body ended with a newline that this body lacks"
    if b"\r\n" in body:
        yield body.replace(b"\r\n", b"\n"), "the line endings were changed (CRLF) after signing"
    elif b"\n" in body:
        yield body.replace(b"\n", b"\r\n"), "the line endings were changed (LF) after signing"
    reserialised = (
        "the JSON was re-serialised after signing (key order or spacing changed): verify the raw "
        "bytes exactly as received, before any JSON parsing"
    )
    for candidate in _json_serialisations(body):
        yield candidate, reserialised


def _json_serialisations(body: bytes) -> Iterator[bytes]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # nested too deeply to be an event: nothing to re-serialise
        return
    if not isinstance(data, dict):
        return
    items = list(data.items())
    if len(items) <= _MAX_PERMUTED_KEYS:
        orders: Iterable[tuple[tuple[str, Any], ...]] = itertools.permutations(items)
    else:
        orders = (tuple(items), tuple(sorted(items)))
    seen = {body}
    styles: list[dict[str, Any]] = [
        {"separators": (", ", ": ")},
        {"separators": (",", ":")},
        {"indent": 2},
        {"indent": 4},
    ]
    for order in orders:
        for style in styles:
            for ensure_ascii in (True, False):
                try:
                    text = json.dumps(dict(order), ensure_ascii=ensure_ascii, **style)
                except RecursionError:
                    return
                for candidate in (text.encode("utf-8"), (text + "\n").encode("utf-8")):
                    if candidate not in seen:
                        seen.add(candidate)
                        yield candidate


def _secret_alternatives(secret: str) -> Iterator[tuple[str, str]]:
    if secret.strip() != secret:
        yield (
            secret.strip(),
            "the secret has whitespace around it (a newline from a file or echo?); the signature "
            "matches the secret without it",
        )
    yield (
        secret + "\n",
        "the signature was made with the secret plus a trailing newline (read from a file or "
        "echo?): strip it where the signature is computed",
    )
