"""Creating subscriptions: which endpoints Inspera can call, and creates after which a person
always knows what exists.

``endpoint_problem`` is the one rule for `create`, `apply` and `listen`: Inspera calls HTTPS only.

Inspera validates the endpoint before it answers a create, so a create cut short may still be
made. Each create here is a write that Ctrl-C or SIGTERM does not abandon (``interrupts.write``),
and each ends in a typed ``CreateOutcome`` handed to ``on_outcome`` before any interrupt is raised:
the caller can always say what was made. An (event, endpoint) pair that already exists is refused,
skipped or subscribed again, as the caller chooses. No Typer, no Rich: used by `create` and by
`listen --subscribe` (``public_session.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from inspera_cli import interrupts
from inspera_cli.errors import APIError, NetworkError, SubscriptionNotListed, UsageError
from inspera_cli.network import check_http_url, is_loopback_url

if TYPE_CHECKING:
    from inspera_cli.api_models import Subscription
    from inspera_cli.client import InsperaClient

STOPPED_WAITING = "stopped waiting for Inspera's answer: it may still make this subscription"
# How a validation refused by a receiver that checks signatures reads ("... answered 401; ...").
_RECEIVER_REFUSED = re.compile(r"\banswered\s+(?:HTTP\s+)?(401|403)\b")


class CreateState(StrEnum):
    CREATED = "created"
    EXISTING = "existing"  # the pair was there already and is left alone
    DUPLICATE = "duplicate"  # the pair was there already, so no second one was made
    REFUSED = "refused"  # Inspera answered with an error: nothing was made
    UNKNOWN = "unknown"  # it may or may not exist (no answer, or accepted but not listed)


class Duplicates(StrEnum):
    """What to do when the (event, endpoint) pair is already subscribed."""

    REFUSE = "refuse"
    SKIP = "skip"
    ALLOW = "allow"


@dataclass(frozen=True)
class CreateOutcome:
    state: CreateState
    event: str
    endpoint: str
    # The one made (CREATED) or the one already there (EXISTING, DUPLICATE).
    subscription: Subscription | None = None
    error: str | None = None
    status: int | None = None

    @property
    def in_place(self) -> bool:
        """The pair is subscribed, now or from before."""
        return self.state in (CreateState.CREATED, CreateState.EXISTING)

    def to_json(self) -> dict[str, Any]:
        """The subscription's fields (null when there is none), ``created`` and ``error``."""
        if self.subscription is not None:
            fields = self.subscription.to_json()
        else:
            fields = {"subscriptionId": None, "event": self.event, "endpoint": self.endpoint,
                      "lastModified": None}
        return {**fields, "created": self.state is CreateState.CREATED, "error": self.error}


@dataclass(frozen=True)
class EndpointProblem:
    """Why Inspera would not call an endpoint: ``message`` for the user; ``plain_http`` when the URL
    is otherwise fine and only its scheme is (so ``allow_http`` would let it through)."""

    message: str
    plain_http: bool = False


def endpoint_problem(endpoint: str, *, allow_http: bool = False) -> EndpointProblem | None:
    """Why Inspera would not call this endpoint, or None.

    Inspera calls HTTPS only; plain http is let through for loopback (the sandbox, local tests)
    and when the user insists (``allow_http``).
    """
    try:
        parts = check_http_url(endpoint, "endpoint")
    except UsageError as exc:
        return EndpointProblem(str(exc))
    if parts.scheme == "http" and not allow_http and not is_loopback_url(endpoint):
        return EndpointProblem(f"endpoint {endpoint} is plain http: Inspera calls HTTPS endpoints only",
                               plain_http=True)
    return None


OnOutcome = Callable[[CreateOutcome], None]
Busy = Callable[[str], AbstractContextManager[object]]


def receiver_refused(message: str) -> bool:
    """Whether Inspera's refusal says the endpoint answered its validation 401 or 403."""
    return _RECEIVER_REFUSED.search(message) is not None


def explain_refusal(exc: APIError, how_to_pass: str) -> str:
    """The refusal, plus what a 401/403 from the receiver means and ``how_to_pass`` the secret."""
    message = str(exc)
    if not receiver_refused(message):
        return message
    return (f"{message} -- the receiver verifies signatures with another secret than the one sent: "
            f"{how_to_pass}")


def existing_pairs(client: InsperaClient, endpoint: str) -> dict[str, list[Subscription]]:
    """The subscriptions already at ``endpoint``, by event."""
    found: dict[str, list[Subscription]] = {}
    for sub in client.subscriptions():
        if sub.endpoint == endpoint:
            found.setdefault(sub.event, []).append(sub)
    return found


def create_subscriptions(
    client: InsperaClient,
    events: Sequence[str],
    endpoint: str,
    secret: str,
    *,
    on_outcome: OnOutcome,
    duplicates: Duplicates = Duplicates.REFUSE,
    busy: Busy = lambda event: nullcontext(),
    how_to_pass: str = "",
) -> None:
    """One subscription per event; each outcome goes to ``on_outcome`` as it is known.

    A refused create does not stop the others; a network or credentials error does (after its
    outcome was reported). ``busy(event)`` wraps each request (a spinner).
    """
    existing = existing_pairs(client, endpoint) if duplicates is not Duplicates.ALLOW else {}
    for event in events:
        found = existing.get(event)
        if found:
            ids = ", ".join(str(s.subscription_id) for s in found)
            skip = duplicates is Duplicates.SKIP
            on_outcome(CreateOutcome(
                CreateState.EXISTING if skip else CreateState.DUPLICATE, event, endpoint, found[0],
                error=None if skip else f"a subscription to {event} at {endpoint} already exists (id {ids})",
            ))
            continue
        create_one(client, event, endpoint, secret, on_outcome, busy=busy, how_to_pass=how_to_pass)


def create_one(
    client: InsperaClient,
    event: str,
    endpoint: str,
    secret: str,
    on_outcome: OnOutcome,
    *,
    busy: Busy = lambda event: nullcontext(),
    how_to_pass: str = "",
) -> CreateOutcome:
    """One create, held against a first interrupt; its outcome goes to ``on_outcome`` (once
    ``busy`` has ended) and is returned. A held interrupt is raised after ``on_outcome`` ran; when
    a second one stops the wait, the outcome is UNKNOWN."""
    what = f"Inspera's answer to the {event} subscription (it validates {endpoint} first)"
    with interrupts.write(what):
        try:
            with busy(event):
                created = client.create(event, endpoint, secret)
        except KeyboardInterrupt:
            on_outcome(CreateOutcome(CreateState.UNKNOWN, event, endpoint, error=STOPPED_WAITING))
            raise
        except NetworkError as exc:
            # A create without an answer may still be made (a read timeout, a dropped connection).
            on_outcome(CreateOutcome(CreateState.UNKNOWN, event, endpoint,
                                     error=f"{exc}; Inspera may still make this subscription"))
            raise
        except SubscriptionNotListed as exc:
            outcome = CreateOutcome(CreateState.UNKNOWN, event, endpoint, error=str(exc), status=exc.status)
        except APIError as exc:
            outcome = CreateOutcome(CreateState.REFUSED, event, endpoint,
                                    error=explain_refusal(exc, how_to_pass), status=exc.status)
        else:
            outcome = CreateOutcome(CreateState.CREATED, event, endpoint, created)
        on_outcome(outcome)
    return outcome
