"""inspera-hooks: the command line and Python library for Inspera Assessment webhooks.

The public, typed API (a breaking change to rename or remove)::

    from inspera_cli import (
        InsperaClient,     # events(), subscriptions(event=None), create(event, endpoint, secret), delete(id)
        Subscription,      # subscription_id, event, endpoint, last_modified
        Event,             # event, context_object_id, timestamp, fields
        sign,              # sign(body, secret) -> lowercase hex HMAC-SHA1
        verify_signature,  # verify_signature(body, header, secret) -> None, or raises SignatureError
        parse_event,       # parse_event(body) -> Event; JSON or Java-map text, else ValueError
        SignatureError,    # why a signature did not verify
        InsperaError,      # base of every error raised on purpose (one line for the user)
    )

A receiver verifies the raw body bytes first, then parses them::

    verify_signature(body, headers.get("X-Inspera-Signature"), secret)
    event = parse_event(body)

Every name is imported on first use (``InsperaClient`` pulls in requests), so that
``import inspera_cli`` -- which every run of the command line does -- stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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

from inspera_cli._version import __version__

if TYPE_CHECKING:
    from inspera_cli.api_models import Subscription
    from inspera_cli.client import InsperaClient
    from inspera_cli.errors import InsperaError, SignatureError
    from inspera_cli.signing import sign, verify_signature
    from inspera_cli.webhook_body import Event, parse_event

# Each public name and the module that defines it.
_LAZY = {
    "Event": "webhook_body",
    "InsperaClient": "client",
    "InsperaError": "errors",
    "SignatureError": "errors",
    "Subscription": "api_models",
    "parse_event": "webhook_body",
    "sign": "signing",
    "verify_signature": "signing",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        # __import__ rather than importlib.import_module, which `python -X importtime` does not see.
        value = getattr(__import__(f"inspera_cli.{_LAZY[name]}", fromlist=[name]), name)
        globals()[name] = value  # once: later lookups find it without this function
        return value
    raise AttributeError(f"module 'inspera_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
