"""A local listener's public presence while `listen` runs: a tunnel and temporary subscriptions.

``Session`` starts the tunnel program (``--tunnel``), works out the public URL (the tunnel's plus
the listener's path, or ``--public-url``), and creates one subscription per event for it. On every
way out -- the end of the ``with`` block, an error, Ctrl-C, SIGTERM, a second Ctrl-C -- it deletes
every subscription it made and stops the tunnel. When a create's outcome is unknown (a second
Ctrl-C stopped the wait, or Inspera accepted it without listing it), the receiver is closed and
the tunnel stopped first, so that no validation can pass any more; then the tenant's subscriptions
for that event and public URL that were not there before the session are deleted.

No Typer, no Rich: the caller hears of each step through a ``Reporter``::

    with Session(client, ["confirm_final_grades"], secret, local_port=8000, tunnel="cloudflared"):
        ...  # serve until done
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import TYPE_CHECKING

from inspera_cli import interrupts
from inspera_cli.errors import APIError, InsperaError
from inspera_cli.subscribing import CreateOutcome, CreateState, create_one

if TYPE_CHECKING:
    from inspera_cli.api_models import Subscription
    from inspera_cli.client import InsperaClient
    from inspera_cli.tunnel import Tunnel

# With a tunnel, how long a create refused because validation failed is tried again: quick
# tunnels print their URL seconds before they carry traffic. A refused create created nothing, so
# this is the one POST that is retried.
TUNNEL_VALIDATION_RETRY = 20.0
RETRY_PAUSE = 1.0
# Refusals that are not a failed endpoint validation, so waiting for the tunnel cannot help.
_NOT_VALIDATION = frozenset({401, 403, 404, 405, 409, 429})


class Reporter:
    """What a session tells its user. Each method does nothing here: override those you show."""

    def busy(self, message: str) -> AbstractContextManager[object]:
        """Wraps a slow step (starting the tunnel, each create): a spinner, say."""
        return nullcontext()

    def tunnel_started(self, public_url: str) -> None: ...

    def waiting_for_tunnel(self, refusal: str, retry_for: float) -> None:
        """A create was refused because validation failed; it is tried again for ``retry_for`` s."""

    def already_subscribed(self, subscription: Subscription) -> None:
        """The pair was subscribed before the session: Inspera delivers to both."""

    def subscribed(self, subscription: Subscription) -> None: ...

    def deleted(self, subscription: Subscription) -> None: ...

    def delete_failed(self, subscription: Subscription, error: InsperaError) -> None: ...

    def lookup_failed(self, event: str, error: InsperaError) -> None:
        """The tenant could not be listed to find a create whose outcome was unknown."""


class Session:
    """The tunnel (if any) and the temporary subscriptions of one `listen`.

    ``client`` is needed only with ``events``. ``close_receiver`` is called before subscriptions
    whose create's outcome is unknown are looked up, so that no validation passes after the lookup.
    """

    def __init__(
        self,
        client: InsperaClient | None,
        events: Sequence[str],
        secret: str,
        *,
        local_port: int,
        path: str = "/",
        public_url: str | None = None,
        tunnel: str | None = None,
        report: Reporter | None = None,
        close_receiver: Callable[[], None] | None = None,
        how_to_pass: str = "",
    ) -> None:
        if events and client is None:
            raise ValueError("a client is needed to subscribe")
        self.public_url = public_url
        self._client = client
        self._events = list(events)
        self._secret = secret
        self._local_port = local_port
        self._path = path
        self._program = tunnel
        self._report = report or Reporter()
        self._close_receiver = close_receiver
        self._how_to_pass = how_to_pass
        self._tunnel: Tunnel | None = None
        self._made: list[Subscription] = []
        self._unknown: list[str] = []
        self._before: set[int] = set()

    @property
    def subscriptions(self) -> list[Subscription]:
        """The subscriptions made so far (and not yet deleted)."""
        return list(self._made)

    def __enter__(self) -> Session:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- opening ------------------------------------------------------------------------------

    def _open(self) -> None:
        if self._program:
            self._tunnel = self._start_tunnel(self._program)
            self.public_url = self._tunnel.public_url + self._path
            self._report.tunnel_started(self.public_url)
        if not self._events:
            return
        if self.public_url is None:
            raise ValueError("subscribing needs a public URL or a tunnel")
        client = self._need_client()
        for sub in client.subscriptions():
            if sub.endpoint == self.public_url and sub.event in self._events:
                self._before.add(sub.subscription_id)
                self._report.already_subscribed(sub)
        retry_for = TUNNEL_VALIDATION_RETRY if self._program else 0.0
        for event in self._events:
            self._subscribe(client, event, self.public_url, retry_for)

    def _start_tunnel(self, program: str) -> Tunnel:
        from inspera_cli import tunnel

        with self._report.busy(f"Starting {program} for port {self._local_port}"):
            # Read at call time, so that tests can shorten it.
            return tunnel.Tunnel.start(program, self._local_port, timeout=tunnel.START_TIMEOUT)

    def _need_client(self) -> InsperaClient:
        if self._client is None:
            raise ValueError("a client is needed to subscribe")
        return self._client

    def _subscribe(self, client: InsperaClient, event: str, endpoint: str, retry_for: float) -> None:
        """Create the subscription; with ``retry_for``, a failed validation is tried again
        until that many seconds have passed (a tunnel that does not carry traffic yet)."""
        deadline = time.monotonic() + retry_for
        waiting = False
        while True:
            outcome = create_one(
                client, event, endpoint, self._secret, self._record, how_to_pass=self._how_to_pass,
                busy=lambda name: self._report.busy(f"Creating the {name} subscription "
                                                    f"(Inspera validates {endpoint})"),
            )
            if outcome.state is CreateState.CREATED:
                return
            if outcome.state is CreateState.UNKNOWN:
                raise InsperaError(outcome.error or "the outcome of a create is unknown")
            error = APIError(outcome.error or "refused", outcome.status)
            if not retry_for or not _validation_refused(outcome.status):
                raise error
            if time.monotonic() + RETRY_PAUSE > deadline:
                raise APIError(f"{error} (still refused after {retry_for:g} s)", outcome.status)
            if not waiting:
                waiting = True
                self._report.waiting_for_tunnel(str(error), retry_for)
            time.sleep(RETRY_PAUSE)

    def _record(self, outcome: CreateOutcome) -> None:
        """Called as soon as a create's outcome is known, before any interrupt is raised."""
        if outcome.state is CreateState.CREATED and outcome.subscription is not None:
            self._made.append(outcome.subscription)
            self._report.subscribed(outcome.subscription)
        elif outcome.state is CreateState.UNKNOWN:
            self._unknown.append(outcome.event)

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Delete what was made, stop the tunnel, find and delete what may have been made.
        Never cut short by a signal; safe to call twice."""
        with interrupts.cleanup("deleting the subscriptions made for this listener"):
            while self._made:
                self._delete(self._made.pop())
            unknown, self._unknown = self._unknown, []
            if unknown and self._close_receiver is not None:
                self._close_receiver()
            if self._tunnel is not None:
                self._tunnel.stop()
                self._tunnel = None
            for event in dict.fromkeys(unknown):
                self._sweep(event)

    def _delete(self, subscription: Subscription) -> None:
        try:
            self._need_client().delete(subscription.subscription_id, missing_ok=True)
        except InsperaError as exc:
            self._report.delete_failed(subscription, exc)
        else:
            self._report.deleted(subscription)

    def _sweep(self, event: str) -> None:
        """Delete the subscriptions for ``event`` at the public URL that the session may have made."""
        try:
            found = self._need_client().subscriptions(event)
        except InsperaError as exc:
            self._report.lookup_failed(event, exc)
            return
        for sub in found:
            if sub.endpoint == self.public_url and sub.subscription_id not in self._before:
                self._delete(sub)


def _validation_refused(status: int | None) -> bool:
    return status is not None and 400 <= status < 500 and status not in _NOT_VALIDATION
