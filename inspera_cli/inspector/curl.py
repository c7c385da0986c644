"""`Copy as curl`: a shell command that sends a recorded body again, byte for byte.

A UTF-8 body without NUL goes in one single-quoted word (``--data-raw``: curl reads no ``@file``
from it and strips nothing); any other body -- binary, or holding NUL, which no shell word can
carry -- is written by ``printf`` from octal escapes and piped to ``--data-binary @-``. Headers
are the ones given (the signature as received): the secret is never part of the command.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

# Bytes printf's format may hold as they are; every other byte becomes \ooo.
_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("\\"), ord("%"), ord("'")}


def curl_command(url: str, body: bytes, headers: Iterable[tuple[str, str]]) -> str:
    """A POSIX shell command (bash, zsh, dash) that POSTs ``body`` with ``headers`` to ``url``."""
    words = ["curl", "-sS", "-i", shlex.quote(url)]
    for name, value in headers:
        words += ["-H", shlex.quote(f"{name}: {value}")]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\0" not in text:
        return " ".join([*words, "--data-raw", shlex.quote(text)])
    escaped = "".join(chr(b) if b in _PLAIN else f"\\{b:03o}" for b in body)
    return f"printf '{escaped}' | " + " ".join([*words, "--data-binary", "@-"])
