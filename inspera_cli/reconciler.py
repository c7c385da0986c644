"""Make the tenant match a subscriptions file: plan the changes, then carry them out.

A subscription is identified by its (event, endpoint) pair. Planning compares the file's entries
(``subscriptions_file``) with the live subscriptions; applying runs the creates (and deletes) with
bounded concurrency. No Typer, no Rich: `apply` renders what these functions return.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from inspera_cli.errors import APIError, InsperaError
from inspera_cli.subscribing import explain_refusal

if TYPE_CHECKING:
    from inspera_cli.client import InsperaClient, Subscription
    from inspera_cli.subscriptions_file import DesiredSubscription

DEFAULT_CONCURRENCY = 4


# -- planning --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What applying the file changes: creates, deletes (only with prune), and what stays."""

    create: list[DesiredSubscription]
    delete: list[Subscription]
    unchanged: list[Subscription]
    # Live subscriptions not in the file, left alone because prune was off.
    unmanaged: list[Subscription]

    @property
    def changes(self) -> int:
        return len(self.create) + len(self.delete)


def make_plan(desired: Sequence[DesiredSubscription], live: Sequence[Subscription], *, prune: bool) -> Plan:
    """Compare the file with the live subscriptions, keyed by (event, endpoint).

    A pair subscribed more than once on the tenant keeps its oldest subscription; the others are
    extras like any subscription not in the file (deleted with ``prune``).
    """
    wanted = {d.key: d for d in desired}
    kept: dict[tuple[str, str], Subscription] = {}
    extras: list[Subscription] = []
    for sub in sorted(live, key=lambda s: s.subscription_id):
        key = (sub.event, sub.endpoint)
        if key in wanted and key not in kept:
            kept[key] = sub
        else:
            extras.append(sub)
    create = [d for d in desired if d.key not in kept]
    unchanged = [kept[d.key] for d in desired if d.key in kept]
    return Plan(
        create=create,
        delete=extras if prune else [],
        unchanged=unchanged,
        unmanaged=[] if prune else extras,
    )


# -- applying --------------------------------------------------------------------------------------


class Action(StrEnum):
    CREATE = "create"
    DELETE = "delete"


class OutcomeState(StrEnum):
    DONE = "done"  # made (a delete of one already gone, too: ``existed`` is then False)
    FAILED = "failed"  # tried and refused, or no answer: ``error`` says why
    SKIPPED = "skipped"  # a delete not tried because a create failed (apply again to finish)
    NOT_STARTED = "not started"  # not tried: interrupted (apply again to finish)


# What a person is told about a change that was not tried.
UNTRIED = {
    OutcomeState.SKIPPED: "skipped: a create failed, so nothing is deleted (fix it and apply again)",
    OutcomeState.NOT_STARTED: "not started: interrupted (apply again to finish)",
}


@dataclass(frozen=True)
class Outcome:
    """The result of one planned change."""

    action: Action
    event: str
    endpoint: str
    subscription: Subscription | None = None
    state: OutcomeState = OutcomeState.DONE
    reason: str | None = None  # why it FAILED
    existed: bool = True  # for a delete: False when it was already gone

    @property
    def ok(self) -> bool:
        return self.state is OutcomeState.DONE

    @property
    def started(self) -> bool:
        return self.state in (OutcomeState.DONE, OutcomeState.FAILED)

    @property
    def error(self) -> str | None:
        """Why the change was not made, in words (None when it was)."""
        if self.state is OutcomeState.FAILED:
            return self.reason
        return UNTRIED.get(self.state)


@dataclass
class ApplyResult:
    created: list[Outcome] = field(default_factory=list)
    deleted: list[Outcome] = field(default_factory=list)

    @property
    def outcomes(self) -> list[Outcome]:
        return [*self.created, *self.deleted]

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


class _WorkerClients:
    """One client per worker thread: a ``requests.Session`` is not documented as thread-safe.

    Each worker's client is a shallow copy of the run's client (same settings and the token
    already obtained, so no extra token exchange) with a Session of its own.
    """

    def __init__(self, client: InsperaClient) -> None:
        client.access_token()  # before the threads start, so they share it
        self._client = client
        self._local = threading.local()
        self._made: list[InsperaClient] = []
        self._lock = threading.Lock()

    def get(self) -> InsperaClient:
        worker: InsperaClient | None = getattr(self._local, "client", None)
        if worker is None:
            from inspera_cli.client import make_session

            worker = copy.copy(self._client)
            worker.session = make_session()
            self._local.client = worker
            with self._lock:
                self._made.append(worker)
        return worker

    def close(self) -> None:
        for worker in self._made:
            worker.close()


def _reason(exc: BaseException, secret_env: str | None = None) -> str:
    if isinstance(exc, APIError) and secret_env:
        return explain_refusal(exc, f"set {secret_env} to the secret the receiver verifies with")
    if isinstance(exc, InsperaError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


def apply_plan(
    client: InsperaClient,
    plan: Plan,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_done: Callable[[Outcome], None] | None = None,
    stop: threading.Event | None = None,
) -> ApplyResult:
    """Carry out a plan: the creates first, concurrently, then the deletes.

    A failed create does not stop the others; it is reported in its :class:`Outcome`. When any
    create failed, the deletes are skipped (reported as failed): the subscriptions being replaced
    stay until their replacements exist, and re-running the plan finishes the job.
    ``on_done`` is called in the calling thread as each change completes (progress bars). Once
    ``stop`` is set (Ctrl-C, held while changes are in flight), no further change starts: each
    is reported as not started, and re-running the plan finishes the job.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    result = ApplyResult()
    if not plan.changes:
        return result
    workers = _WorkerClients(client)
    halt = stop or threading.Event()

    def create(d: DesiredSubscription) -> Outcome:
        if halt.is_set():
            return Outcome(Action.CREATE, d.event, d.endpoint, state=OutcomeState.NOT_STARTED)
        try:
            sub = workers.get().create(d.event, d.endpoint, d.secret)
        except Exception as exc:
            return Outcome(Action.CREATE, d.event, d.endpoint, state=OutcomeState.FAILED,
                           reason=_reason(exc, d.secret_env))
        return Outcome(Action.CREATE, d.event, d.endpoint, subscription=sub)

    def delete(sub: Subscription) -> Outcome:
        if halt.is_set():
            return Outcome(Action.DELETE, sub.event, sub.endpoint, sub, state=OutcomeState.NOT_STARTED)
        try:
            existed = workers.get().delete(sub.subscription_id, missing_ok=True)
        except Exception as exc:
            return Outcome(Action.DELETE, sub.event, sub.endpoint, sub, state=OutcomeState.FAILED,
                           reason=_reason(exc))
        return Outcome(Action.DELETE, sub.event, sub.endpoint, sub, existed=existed)

    result.created = _run(create, plan.create, concurrency, on_done)
    if any(not o.ok for o in result.created):
        result.deleted = [
            Outcome(Action.DELETE, s.event, s.endpoint, s, state=OutcomeState.SKIPPED) for s in plan.delete
        ]
        for outcome in result.deleted:
            if on_done:
                on_done(outcome)
    else:
        result.deleted = _run(delete, plan.delete, concurrency, on_done)
    workers.close()
    return result


def _run(
    task: Callable[[Any], Outcome],
    items: Sequence[Any],
    concurrency: int,
    on_done: Callable[[Outcome], None] | None,
) -> list[Outcome]:
    """Run ``task`` on every item, at most ``concurrency`` at a time; outcomes come back in the
    items' order. The workers are daemon threads: when an interrupt stops the wait, the program
    does not wait for them at exit either, and the items not yet taken never start."""
    pending: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
    for index, item in enumerate(items):
        pending.put((index, item))
    finished: queue.SimpleQueue[tuple[int, Outcome]] = queue.SimpleQueue()
    abandoned = threading.Event()

    def work() -> None:
        while not abandoned.is_set():
            try:
                index, item = pending.get_nowait()
            except queue.Empty:
                return
            finished.put((index, task(item)))

    for _ in range(min(concurrency, len(items))):
        threading.Thread(target=work, name="apply", daemon=True).start()
    outcomes: list[Outcome | None] = [None] * len(items)
    try:
        for _ in items:
            index, outcome = finished.get()
            outcomes[index] = outcome
            if on_done:
                on_done(outcome)
    except BaseException:
        abandoned.set()  # interrupted: queued changes never start; those in flight end on their own
        raise
    return [o for o in outcomes if o is not None]
