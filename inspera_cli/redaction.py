"""Secret values: one redaction for every message, log line and traceback, and the checks of a
secret taken from the environment.

The API key, access tokens and webhook secrets are registered where they enter the process
(settings, the token exchange, ``--secret-env``); ``redact`` replaces each of them, in the forms a
message may show it (as is, stripped, JSON- or repr-escaped), with ``***``, so that even a server
that echoes a secret back never gets it printed. URL userinfo (``https://user:pass@host``) is
masked the same way.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

# json and logging are imported where used: every run imports this module (output.py), few need them.
if TYPE_CHECKING:
    import logging

REDACTED = "***"
# Shorter values are left alone: replacing every "k" would only garble the text. Real keys,
# tokens and secrets are far longer.
MIN_LENGTH = 4
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]+@")

_lock = threading.Lock()
_forms: set[str] = set()
_ordered: list[str] = []


def register_secret(value: str | None) -> None:
    """Never show ``value`` again in a message, log line or traceback of this process."""
    if not value:
        return
    import json

    forms = {value, value.strip(), repr(value)[1:-1], json.dumps(value)[1:-1]}
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    new = {f for f in forms if len(f) >= MIN_LENGTH} - _forms
    if not new:
        return
    with _lock:
        _forms.update(new)
        # Longest first, so that a value is replaced whole before a part of it could be.
        _ordered[:] = sorted(_forms, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every registered secret and any URL userinfo replaced by ``***``."""
    for form in _ordered:
        if form in text:
            text = text.replace(form, REDACTED)
    if "@" in text:
        text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    return text


def redact_bytes(data: bytes) -> bytes:
    """``data`` with every registered secret's UTF-8 bytes replaced by ``***``: for a body shown
    as base64 because it is not UTF-8 text as a whole (``redact`` never sees it)."""
    for form in _ordered:
        try:
            raw = form.encode("utf-8")
        except UnicodeEncodeError:
            continue
        if raw in data:
            data = data.replace(raw, REDACTED.encode("ascii"))
    return data


def is_valid_utf8(value: str) -> bool:
    """False for text decoded with surrogateescape from bytes that are not UTF-8 (os.environ, argv)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def env_secret_problem(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """Why the environment variable ``name`` holds no usable secret, or None (one wording for
    `--secret-env` and `apply`'s ``secret_env``)."""
    value = (os.environ if env is None else env).get(name)
    if value is None:
        return f"the environment variable {name} is not set"
    if not value:
        return f"the environment variable {name} is empty"
    register_secret(value)
    if not is_valid_utf8(value):
        return f"the environment variable {name} is not valid UTF-8 text"
    return None


class _RedactingFilter:
    """A logging filter (any object with this method is one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


def redacted_logger(name: str) -> logging.Logger:
    """A logger whose records are redacted as they are made, so that a handler an embedding
    program adds never sees a secret either."""
    import logging

    logger = logging.getLogger(name)
    if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
        logger.addFilter(_RedactingFilter())
    return logger
