"""Delivering queued events to the app, on the relay's event loop.

Each route (an app URL) gets a lane: up to ``concurrency`` POSTs in flight on keep-alive
connections (``inspera_cli.delivery_client``), so a slow or dead app holds only its own lane. A lane claims
due events from the queue a little ahead of its free slots and starts them in the order claimed:
earliest due first, then arrival order -- so first attempts start in arrival order.

Each POST carries the original body, ``X-Inspera-Signature`` and ``Content-Type``, plus
``X-Inspera-Delivery-Id`` (the event's id: the app dedupes on it) and ``X-Inspera-Attempt``. A 2xx
answer is delivered; anything else, no answer within 10 s or no connection is retried on the
``RetryPolicy`` (the app's ``Retry-After`` honoured) until ``--max-age``, then the event is dead.
Outcomes are written back through the ``QueueWorker`` (group commit); an event stays claimed until
its outcome is committed, so it is never started twice at once. When the app takes an event after
it was unreachable (no answer, or 502/503/504 without Retry-After), the events that were waiting
only for it are due at once, in arrival order: a backlog drains when the app returns, not over
the next --max-backoff.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from inspera_cli import delivery_client
from inspera_cli._version import __version__
from inspera_cli.relay.observe import Change, ChangeKind, Metrics
from inspera_cli.relay.queue import EventQueue, QueuedEvent
from inspera_cli.relay.schedule import Clock, RetryPolicy, format_duration, retry_after_seconds
from inspera_cli.relay.worker import QueueWorker
from inspera_cli.signing import SIGNATURE_HEADER

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT = 10.0  # Inspera's own: an app that answers Inspera in time answers us in time
POLL_SECONDS = 1.0  # look at the queue at least this often (events made due by `relay retry`)
RELEASE_AFTER_FAILED_WRITE = 5.0  # seconds an event stays claimed when its outcome was not saved
# A lane claims this many events (and at least its slots twice over) at a time, once fewer than
# its slots are left ready: under load a claim (two queries on the queue's thread and a trip
# there and back) per delivery or two cost as much as the delivery itself.
CLAIM_BATCH = 32
# While events flood in -- far faster than any Inspera tenant sends them -- each lane keeps one
# delivery in flight instead of --concurrency, and starts one at most every FLOOD_PACE: a trickle.
# Acknowledging (what Inspera waits for, and retries when it times out) gets the CPU: each delivery
# costs the loop about what a dozen acknowledgements do (the POST wakes the app, its outcome is a
# commit of its own), and one at a time back to back still took a tenth of the loop (bench_relay:
# 1,100 deliveries in a 4-s flood; paced, 200, and 8 us less CPU per acknowledgement). The app (often
# on the same machine) is not driven at full speed meanwhile, and the deliveries catch up at full
# --concurrency once the flood is over.
BURST_EVENTS = 100  # received within
BURST_WINDOW = 0.1  # seconds (1,000 events/s) is a flood; it ends a window after the last such count
FLOOD_PACE = 0.02  # seconds between the starts of a lane's deliveries in a flood (50 a second)
DELIVERY_ID_HEADER = "X-Inspera-Delivery-Id"
ATTEMPT_HEADER = "X-Inspera-Attempt"
USER_AGENT = f"inspera-hooks/{__version__} (relay)"
_KEEP = (b"retry-after",)
_APP_DOWN = frozenset({502, 503, 504})


@dataclass
class _Lane:
    url: str
    target: delivery_client.Target
    ready: deque[QueuedEvent] = field(default_factory=deque)  # claimed, not started
    running: set[asyncio.Task[None]] = field(default_factory=set)
    held: set[int] = field(default_factory=set)  # claimed: ready, running, or outcome not saved
    idle: list[delivery_client.Connection] = field(default_factory=list)
    # An attempt found the app unreachable since its last 2xx (at start: maybe, in an earlier run).
    app_down: bool = True
    next_due: float | None = 0.0  # None: nothing pending; 0: look now
    paced_until: float = 0.0  # in a flood, no delivery starts before this (time.monotonic())
    pace_timer: asyncio.TimerHandle | None = None  # then starts the next one


class DeliveryEngine:
    """``run()`` delivers until ``stop()``; ``notify()`` says new events are due."""

    def __init__(
        self,
        worker: QueueWorker,
        urls: Iterable[str],
        *,
        concurrency: int = 4,
        retry: RetryPolicy,
        clock: Clock,
        metrics: Metrics,
        on_change: Callable[[Change], None] = lambda change: None,
        timeout: float = DELIVERY_TIMEOUT,
    ) -> None:
        self.worker = worker
        self.concurrency = concurrency
        self.retry = retry
        self.clock = clock
        self.metrics = metrics
        self.on_change = on_change
        self.timeout = timeout
        self.lanes = {url: _Lane(url, _target(url)) for url in dict.fromkeys(urls)}
        self._woken = False  # new work may be due since the lanes were last looked at
        self._waiter: asyncio.Future[bool] | None = None  # run() sleeping: True when the poll ends it
        self._stopping = False
        self._window_start = self._flood_until = 0.0
        self._window_events = 0
        self._tls_for = delivery_client.OriginTls()

    def received(self, url: str) -> None:
        """On the loop: an event for ``url`` was queued: it is due now."""
        now = time.monotonic()
        if now - self._window_start >= BURST_WINDOW:
            self._window_start, self._window_events = now, 0
        self._window_events += 1
        if self._window_events >= BURST_EVENTS:
            self._flood_until = now + BURST_WINDOW
        self.notify(url)

    def notify(self, url: str | None = None) -> None:
        """On the loop: events were queued (for ``url``, or any lane): look for due work now."""
        for lane in self.lanes.values() if url is None else [self.lanes[url]] if url in self.lanes else []:
            lane.next_due = 0.0
        self._wake()

    def _wake(self, polled: bool = False) -> None:
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(polled)

    def _due(self, sleep: asyncio.Future[None]) -> None:
        if not sleep.cancelled():
            self._wake()

    async def run(self) -> None:
        while not self._stopping:
            self._woken = False
            now = self.clock.now()
            for lane in self.lanes.values():
                if self._room(lane) and lane.next_due is not None and lane.next_due <= now:
                    await self._fill(lane, now)
            if not self._stopping and not self._woken:
                await self._sleep()

    def _room(self, lane: _Lane) -> bool:
        """Whether the lane would claim more: fewer events ready than it has slots."""
        return len(lane.ready) < self.concurrency

    async def _fill(self, lane: _Lane, now: float) -> None:
        """Claim what is due (a batch), start what fits."""
        wanted = max(CLAIM_BATCH, 2 * self.concurrency) - len(lane.ready) - len(lane.running)
        held = frozenset(lane.held)
        try:
            events, lane.next_due = await self.worker.call(
                lambda q: _claim(q, lane.url, now=now, limit=wanted, held=held)
            )
        except Exception as exc:  # the queue cannot be read now: the poll tries again
            log.warning("cannot read the relay queue: %s", exc)
            lane.next_due = None
            return
        for event in events:
            lane.held.add(event.seq)
            lane.ready.append(event)
        self._start(lane)

    def _start(self, lane: _Lane) -> None:
        """Start ready events while the lane has a free slot: --concurrency of them, or while
        events flood in one, started at most every FLOOD_PACE (see BURST_EVENTS)."""
        now = time.monotonic()
        flooding = now < self._flood_until
        slots = 1 if flooding else self.concurrency
        while lane.ready and len(lane.running) < slots and not self._stopping:
            if flooding:
                if now < lane.paced_until:
                    if lane.pace_timer is None:
                        lane.pace_timer = asyncio.get_running_loop().call_later(
                            lane.paced_until - now, self._paced, lane)
                    return
                lane.paced_until = now + FLOOD_PACE
            task = asyncio.create_task(self._attempt(lane, lane.ready.popleft()))
            lane.running.add(task)
            task.add_done_callback(functools.partial(self._ended, lane))

    def _paced(self, lane: _Lane) -> None:
        lane.pace_timer = None
        self._start(lane)

    def _ended(self, lane: _Lane, task: asyncio.Task[None]) -> None:
        """An attempt's task ended: its slot is free, so the next ready event starts. (Starting it
        from the attempt's own outcome is not enough: that may run before the task has ended,
        while the slot still counts as taken -- one slot in a flood, and nothing went on.)"""
        lane.running.discard(task)
        self._start(lane)

    async def _sleep(self) -> None:
        """Until new work may be due: a notification, the next due time (on the clock), or the
        poll (real time: it finds events that `relay retry` made due)."""
        now = self.clock.now()
        dues = [lane.next_due for lane in self.lanes.values()
                if lane.next_due is not None and self._room(lane)]
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        poll = loop.call_later(POLL_SECONDS, self._wake, True)
        due = asyncio.ensure_future(self.clock.sleep(max(0.0, min(dues) - now))) if dues else None
        if due is not None:
            due.add_done_callback(self._due)
        try:
            polled = await waiter
        finally:
            self._waiter = None
            poll.cancel()
            if due is not None:
                due.cancel()
        if polled:
            for lane in self.lanes.values():
                lane.next_due = 0.0

    async def _attempt(self, lane: _Lane, event: QueuedEvent) -> None:
        try:
            await self._deliver(lane, event)
        except Exception:  # a bug, not the app: keep the event claimed a while, then due again
            log.exception("delivering event %s failed", event.id)
            self._release_later(lane, event)

    def _release_later(self, lane: _Lane, event: QueuedEvent) -> None:
        def release() -> None:
            lane.held.discard(event.seq)
            lane.next_due = 0.0
            self._wake()

        asyncio.get_running_loop().call_later(RELEASE_AFTER_FAILED_WRITE, release)

    async def _deliver(self, lane: _Lane, event: QueuedEvent) -> None:
        attempt = event.attempts + 1
        headers = [(SIGNATURE_HEADER, event.signature)] if event.signature is not None else []
        headers += [
            ("Content-Type", event.content_type or "application/json"),
            (DELIVERY_ID_HEADER, event.id),
            (ATTEMPT_HEADER, str(attempt)),
        ]
        request = lane.target.request(event.body, delivery_client.header_lines(headers))
        connection = _reusable(lane.idle)
        started = time.perf_counter()
        connection, reply, error = await delivery_client.post(
            lane.target.origin, connection, request, self.timeout, self._tls_for(lane.target.origin), _KEEP
        )
        seconds = time.perf_counter() - started
        if connection is not None:
            lane.idle.append(connection)
        self.metrics.observe(seconds)
        now = self.clock.now()
        change = Change(ChangeKind.DELIVERED, now, event.id, event.event, event.context_object_id, lane.url,
                        attempt, reply.status if reply else None, seconds=seconds)
        if reply is not None and 200 <= reply.status < 300:
            if lane.app_down:  # the app is back: what waited for it goes now, in arrival order
                lane.app_down = False

                def deliver_and_resume(queue: EventQueue) -> None:
                    queue.delivered(event.seq, now=now)
                    queue.resume(lane.url, now=now)

                self._save(lane, event, change, deliver_and_resume)
                lane.next_due = 0.0
            else:
                self._save(lane, event, change, lambda q: q.delivered(event.seq, now=now))
            return
        retry_after = retry_after_seconds(reply.headers.get("retry-after"), now) if reply else None
        if reply is not None:
            error = f"answered {reply.status}"
            if retry_after is not None:
                error += f" (Retry-After: {format_duration(retry_after)})"
        reason = error or "no answer"
        next_at = self.retry.next_attempt(now=now, since=event.since, failures=event.failures + 1,
                                          retry_after=retry_after)
        # No answer, or a gateway's "the app is not there": not about this event, so it may go as
        # soon as the app takes another one (an app's own Retry-After is kept).
        down = retry_after is None and (reply is None or reply.status in _APP_DOWN)
        lane.app_down = lane.app_down or down
        if next_at is None:
            change = replace(change, kind=ChangeKind.DEAD, error=reason)
            self._save(lane, event, change, lambda q: q.dead(event.seq, error=reason, now=now))
        else:
            change = replace(change, kind=ChangeKind.RETRYING, error=reason, next_attempt_at=next_at)
            self._save(lane, event, change, lambda q: q.retry_later(
                event.seq, next_at=next_at, error=reason, now=now, app_down=down))

    def _save(
        self, lane: _Lane, event: QueuedEvent, change: Change, write: Callable[[EventQueue], None]
    ) -> None:
        """Write the outcome; the event stays claimed until it is saved (a while longer if that
        failed: it is then delivered again, at least once, rather than lost)."""

        def saved(_: None, error: BaseException | None) -> None:
            if error is None:
                lane.held.discard(event.seq)
                self.on_change(change)
                due = change.next_attempt_at
                if due is not None and (lane.next_due is None or due < lane.next_due):
                    lane.next_due = due
            else:
                log.warning("cannot save the outcome of event %s: %s", event.id, error)
                self._release_later(lane, event)
            self._start(lane)
            if self._room(lane):
                self._wake()

        self.worker.write(write, saved)

    def stop_starting(self) -> None:
        """On the loop: start nothing more (what runs may finish)."""
        self._stopping = True
        self._wake()

    async def finish(self, grace: float) -> None:
        """Let deliveries in flight finish for up to ``grace`` seconds, then cut them off (they
        stay pending and are delivered after the next start); close the connections."""
        self.stop_starting()
        running = [task for lane in self.lanes.values() for task in lane.running]
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for lane in self.lanes.values():
            if lane.pace_timer is not None:
                lane.pace_timer.cancel()
                lane.pace_timer = None
            for connection in lane.idle:
                connection.close()
            lane.idle.clear()

    @property
    def in_flight(self) -> int:
        return sum(len(lane.running) for lane in self.lanes.values())


def _claim(queue: EventQueue, url: str, *, now: float, limit: int, held: frozenset[int]
           ) -> tuple[list[QueuedEvent], float | None]:
    """Due events, and when the next one after them falls due."""
    events = queue.claim_due(url, now=now, limit=limit, held=held)
    return events, queue.next_due(url, held=held | {event.seq for event in events})


def _reusable(idle: list[delivery_client.Connection]) -> delivery_client.Connection | None:
    while idle:
        connection = idle.pop()
        if connection.open:
            return connection
        connection.close()
    return None


def _target(url: str) -> delivery_client.Target:
    return delivery_client.target_for(url, headers=[("User-Agent", USER_AGENT), ("Accept", "*/*")])

