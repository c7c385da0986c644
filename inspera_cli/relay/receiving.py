"""The Inspera-facing side of the relay: the receiver core's policy, with one step of its own.

``RelayPolicy`` is a ``ReceiverPolicy`` (routes, limits, signatures, validation answers -- exactly
`listen`'s), whose ``accept`` commits each signed event to the queue and answers only then: 200
once it is durable (or the same body is already queued), 503 when it cannot be written, so that
Inspera tries again. Endpoint validations are answered 200 and not queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from http import HTTPStatus
from typing import Any

from inspera_cli.listener.http import Answer, Request, Respond
from inspera_cli.listener.policy import Check, ReceiverPolicy
from inspera_cli.relay.observe import Change, ChangeKind
from inspera_cli.relay.queue import EventQueue, NewEvent, Stored
from inspera_cli.relay.schedule import Clock
from inspera_cli.relay.worker import QueueWorker

_OK = b"OK\n"


class RelayPolicy(ReceiverPolicy):
    """``routes`` maps an event name (None: the default) to its app's URL. ``on_open(loop)``
    returns the worker to queue through; ``on_close()`` runs when the receiver has stopped;
    ``on_change`` gets a RECEIVED or DUPLICATE change per committed event, on the loop."""

    def __init__(
        self,
        *,
        routes: Mapping[str | None, str],
        clock: Clock,
        max_age: float,
        on_open: Callable[[asyncio.AbstractEventLoop], QueueWorker],
        on_close: Callable[[], None],
        on_change: Callable[[Change], None],
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self._routes = dict(routes)
        self._clock = clock
        self._max_age = max_age
        self._on_open, self._on_close, self._on_change = on_open, on_close, on_change
        self._worker: QueueWorker | None = None
        self._last = 0.0
        #: Why the last event could not be committed (None once one is committed again).
        self.write_problem: str | None = None

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._worker = self._on_open(loop)

    def close(self) -> None:
        self._on_close()

    def route(self, event: str | None) -> str:
        return self._routes[event] if event in self._routes else self._routes[None]

    def receive(self, queue: EventQueue, events: list[NewEvent]) -> list[Stored]:
        """On the queue's thread, in its transaction: queue a batch of events received together."""
        # Never earlier than the last batch: arrival order stays the order of due times even if
        # the wall clock steps back.
        now = self._last = max(self._clock.now(), self._last)
        return queue.enqueue(events, now=now, dedupe_since=now - self._max_age)

    def accept(self, request: Request, check: Check, respond: Respond) -> None:
        if check.verification or self._worker is None:
            respond(Answer(HTTPStatus.OK, _OK), check.report(request, HTTPStatus.OK))
            return
        url = self.route(check.event)
        new = NewEvent(request.body, url, check.event, check.context_object_id,
                       request.header("content-type"), request.header("x-inspera-signature"))

        def committed(stored: Stored | None, error: BaseException | None) -> None:
            if error is not None or stored is None:
                self.write_problem = _reason(error)
                respond(*_not_queued(request, check, error))
                return
            self.write_problem = None
            respond(Answer(HTTPStatus.OK, _OK), check.report(request, HTTPStatus.OK, recorded=True))
            kind = ChangeKind.DUPLICATE if stored.duplicate else ChangeKind.RECEIVED
            # The time it was queued at, from which --max-age counts: the answer waits for a
            # sync of the disk, and meanwhile the clock goes on (an injected one, hours).
            self._on_change(Change(kind, stored.at, stored.id, check.event, check.context_object_id, url))

        self._worker.enqueue(new, committed)


def _reason(error: BaseException | None) -> str:
    return str((error.strerror if isinstance(error, OSError) else None) or error or "not stored")


def _not_queued(request: Request, check: Check, error: BaseException | None) -> tuple[Answer, Any]:
    """Not durable, so not acknowledged: 503, and Inspera retries."""
    reason = _reason(error)
    status = HTTPStatus.SERVICE_UNAVAILABLE
    report = replace(check.report(request, status), note=f"could not queue the event: {reason}")
    return Answer(status, b"could not queue the event: try again\n"), report
