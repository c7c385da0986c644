"""inspera-hooks: the command line and Python library for Inspera Assessment webhooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "Event",
    "InsperaClient",
    "InsperaError",
    "SignatureError",
    "Subscription",
    "__version__",
    "parse_event",
    "sign",
    "verify_signature",
]

from inspera_cli.errors import InsperaError, SignatureError
from inspera_cli.payload import Event, parse_event
from inspera_cli.signing import sign, verify_signature

if TYPE_CHECKING:
    from inspera_cli.client import InsperaClient, Subscription


def __getattr__(name: str) -> object:
    # The client pulls in requests; import it only when asked for, so the CLI starts fast.
    if name in ("InsperaClient", "Subscription"):
        from inspera_cli import client

        return getattr(client, name)
    raise AttributeError(f"module 'inspera_cli' has no attribute {name!r}")
