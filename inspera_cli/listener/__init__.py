"""The receiver core behind `listen` (and `demo`, `inspect`, `relay`); knows nothing of Typer or Rich.

Rooms, each used only through its public names:

- ``wire`` (and its ``connection``): HTTP/1.1 on an asyncio loop -- strict parsing (httptools),
  connection, header, body and memory limits, TLS, answers in request order. Hands whole
  ``Request``s to a ``Handler``; ``http`` holds that vocabulary (Request, Answer, Limits).
- ``policy``: what to do with a request. ``ReceiverPolicy`` (routes, signatures, validation,
  retry numbers) with one open step, ``accept``; ``ListenPolicy`` forwards, records, answers.
- ``forward``: the app's answer, off the loop, within a deadline for the whole answer.
- ``report``: ``Report`` (frozen, ``to_json()`` gives the `listen --json` object), ``Exchange``.
- ``feed``: bounded, non-blocking hand-off to slow consumers.
- ``server``: ``Listener``, the loop on a thread with a synchronous face.

    listener = Listener(ListenerConfig(port=0, secret="..."), on_report=print)
    listener.start()
    ...  # POST to listener.url
    listener.shutdown()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inspera_cli.listener.http import Answer, Limits, Request, Respond
    from inspera_cli.listener.policy import Check, ListenPolicy, ReceiverPolicy
    from inspera_cli.listener.report import (
        JSON_FIELDS,
        Exchange,
        ForwardResult,
        Report,
        RequestKind,
        SignatureState,
    )
    from inspera_cli.listener.server import Listener, ListenerConfig, ListenerStats

# Importing the package (or its light `report` room) must not start asyncio, ssl and httptools:
# `listen` renders reports in a command module that every start of the CLI imports.
_HOMES = {
    "policy": ("Check", "ListenPolicy", "ReceiverPolicy"),
    "report": ("JSON_FIELDS", "Exchange", "ForwardResult", "Report", "RequestKind", "SignatureState"),
    "server": ("Listener", "ListenerConfig", "ListenerStats"),
    "http": ("Answer", "Limits", "Request", "Respond"),
}
_HOME_OF = {name: room for room, names in _HOMES.items() for name in names}
__all__ = [
    "JSON_FIELDS",
    "Answer",
    "Check",
    "Exchange",
    "ForwardResult",
    "Limits",
    "ListenPolicy",
    "Listener",
    "ListenerConfig",
    "ListenerStats",
    "ReceiverPolicy",
    "Report",
    "RequestKind",
    "Request",
    "Respond",
    "SignatureState",
]


def __getattr__(name: str) -> Any:
    room = _HOME_OF.get(name)
    if room is None:
        raise AttributeError(f"module 'inspera_cli.listener' has no attribute {name!r}")
    return getattr(importlib.import_module(f"inspera_cli.listener.{room}"), name)
