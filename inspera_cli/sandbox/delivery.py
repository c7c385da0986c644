"""Deliveries as Inspera makes them: signed POSTs with retries, and the log of every attempt.

One asyncio loop on a thread of its own sends everything. Each endpoint origin (scheme, host, port)
gets a lane: up to MAX_CONNECTIONS keep-alive connections, each driven by a sender that takes the
lane's next due work (a retry, or the next event of a burst). So a slow or dead receiver holds only
its own lane's connections, never the API or other subscribers. A lane takes at most WINDOW
deliveries at a time (in flight or waiting for a retry) and reads a burst lazily, so neither a burst
of a million nor a dead receiver makes memory grow; an idle lane closes its connections after
IDLE_SECONDS and is forgotten.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from inspera_cli import delivery_client
from inspera_cli.sandbox import signed_posts
from inspera_cli.sandbox.burst import Burst, Recipient

MAX_CONNECTIONS = 16  # per endpoint origin
WINDOW = 1000  # per endpoint origin: deliveries taken from bursts and not yet finished
IDLE_SECONDS = 1.0  # below the keep-alive timeouts of common servers (gunicorn's is 2 s)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One finished delivery attempt."""

    delivery_id: int
    subscription_id: int
    event: str
    endpoint: str
    attempt: int
    status: int | None
    error: str | None
    time: float  # time.time() when it finished

    @property
    def ok(self) -> bool:
        return self.status == 200

    def to_json(self) -> dict[str, Any]:
        """The item of ``GET /_sandbox/deliveries``."""
        moment = datetime.fromtimestamp(self.time, UTC)
        return {
            "deliveryId": self.delivery_id,
            "subscriptionId": self.subscription_id,
            "endpoint": self.endpoint,
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
            # Inspera's timestamps carry milliseconds: 2021-01-29T13:09:32.287Z
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        }


@dataclass(frozen=True)
class PostResult:
    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status == 200


class DeliveryLog:
    """The newest ``keep`` attempts, the count of all of them, and the deliveries still pending.

    ``wait`` and ``wait_idle`` let tests and callers block until attempts are done. Waiters are
    woken only when what they wait for may have come, not on every attempt: a woken thread takes
    the GIL from the delivery loop.
    """

    def __init__(self, keep: int) -> None:
        self._items: deque[Attempt] = deque(maxlen=keep)
        self._attempts = 0
        self._pending = 0
        self._next_id = 1
        self._changed = threading.Condition()
        self._wake_at: list[int] = []  # attempt counts that waiters wait for (a heap)
        self._idle_waiters = 0

    def reserve(self, count: int) -> int:
        """Number ``count`` new deliveries; the first id (the others follow it)."""
        with self._changed:
            first = self._next_id
            self._next_id += count
            self._pending += count
            return first

    def add(self, attempt: Attempt, *, final: bool) -> None:
        with self._changed:
            self._items.append(attempt)
            self._attempts += 1
            if final:
                self._pending -= 1
            wake_at = self._wake_at
            if (wake_at and wake_at[0] <= self._attempts) or (self._idle_waiters and self._pending <= 0):
                while wake_at and wake_at[0] <= self._attempts:
                    heapq.heappop(wake_at)
                self._changed.notify_all()

    def items(self) -> list[Attempt]:
        with self._changed:
            return list(self._items)

    @property
    def attempts(self) -> int:
        """Attempts finished since the start, including those no longer kept."""
        with self._changed:
            return self._attempts

    def wait(self, count: int, timeout: float) -> list[Attempt]:
        with self._changed:
            heapq.heappush(self._wake_at, count)
            if not self._changed.wait_for(lambda: self._attempts >= count, timeout):
                self._wake_at.remove(count)
                heapq.heapify(self._wake_at)
                raise TimeoutError(
                    f"{self._attempts} delivery attempts finished within {timeout:g} s, expected {count}"
                )
            return list(self._items)

    def wait_idle(self, timeout: float) -> None:
        with self._changed:
            self._idle_waiters += 1
            try:
                if not self._changed.wait_for(lambda: self._pending <= 0, timeout):
                    raise TimeoutError(f"{self._pending} deliveries still pending after {timeout:g} s")
            finally:
                self._idle_waiters -= 1


class _Job:
    """One delivery of one event to one subscription, across its attempts."""

    __slots__ = ("attempt", "delivery_id", "request", "stream")

    def __init__(self, stream: _Stream, delivery_id: int, request: bytes) -> None:
        self.stream = stream
        self.delivery_id = delivery_id
        self.request = request
        self.attempt = 1


class _Stream:
    """A burst's deliveries to one recipient, made one at a time as the lane takes them."""

    __slots__ = ("burst", "next_index", "position", "recipient", "target")

    def __init__(
        self, burst: Burst, position: int, recipient: Recipient, target: delivery_client.Target
    ) -> None:
        self.burst = burst
        self.position = position
        self.recipient = recipient
        self.target = target
        self.next_index = 0

    @property
    def due(self) -> float:
        return self.burst.started + self.burst.offset(self.next_index)

    @property
    def exhausted(self) -> bool:
        return self.next_index >= self.burst.count

    def take(self) -> _Job:
        index = self.next_index
        self.next_index += 1
        request = signed_posts.signed_request(self.target, self.burst.body(index), self.recipient.secret)
        return _Job(self, self.burst.delivery_id(index, self.position), request)


class _Lane:
    """The work and the connections of one endpoint origin."""

    def __init__(self, origin: delivery_client.Origin) -> None:
        self.origin = origin
        self.streams: deque[_Stream] = deque()
        self.retries: list[tuple[float, int, _Job]] = []  # a heap by due time
        self.taken = 0  # deliveries in flight or waiting for a retry
        self.senders = 0
        self.opening = False  # a new connection has not carried its first request yet
        self.idle: deque[asyncio.Future[bool]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf

    def next_due(self) -> float:
        """When the next piece of work may start (inf: none)."""
        due = self.retries[0][0] if self.retries else math.inf
        if self.taken < WINDOW:
            for stream in self.streams:
                due = min(due, stream.due)
                if stream.burst.rate is None:
                    break  # due at once; later streams cannot be earlier
        return due

    def take(self, now: float) -> _Job | None:
        if self.retries and self.retries[0][0] <= now:
            return heapq.heappop(self.retries)[2]
        if self.taken >= WINDOW:
            return None
        for stream in self.streams:
            if stream.due <= now:
                job = stream.take()
                # Round robin: every subscription and burst on this endpoint moves on together.
                self.streams.remove(stream)
                if not stream.exhausted:
                    self.streams.append(stream)
                self.taken += 1
                return job
        return None

    @property
    def finished(self) -> bool:
        return not (self.senders or self.streams or self.retries or self.taken)


class DeliveryLoop:
    """Sends bursts and endpoint validations; ``start()`` runs its event loop on a thread."""

    def __init__(
        self,
        *,
        timeout: float,
        retries: int,
        retry_delay: float,
        resolve: delivery_client.Resolve,
        log: DeliveryLog,
        on_attempt: Callable[[Attempt], None] | None = None,
    ) -> None:
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.resolve = resolve
        self.log = log
        self.on_attempt = on_attempt
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="sandbox-delivery", daemon=True)
        self._lanes: dict[delivery_client.Origin, _Lane] = {}
        self._order = itertools.count()
        self._tls_for = delivery_client.OriginTls()
        self._stopped = False

    # -- any thread --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def send(self, burst: Burst) -> None:
        """Queue a burst (its ids come from ``log.reserve``)."""
        self._loop.call_soon_threadsafe(self._add, burst)

    def validate(self, url: str, body: bytes, secret: str, timeout: float) -> PostResult:
        """One signed POST on a connection of its own, never retried; blocks until it is answered."""
        shutting_down = PostResult(None, "the sandbox is shutting down")
        if self._stopped:
            return shutting_down
        try:
            future = asyncio.run_coroutine_threadsafe(self._validate(url, body, secret, timeout), self._loop)
            # The POST has its own deadline; this one only guards against a loop stopped meanwhile.
            return future.result(timeout + 5)
        except (concurrent.futures.CancelledError, TimeoutError, RuntimeError):
            return shutting_down

    def stop(self, wait: float = 1.0) -> None:
        """Stop sending; pending deliveries are dropped, attempts in flight cut off."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._begin_shutdown)
            self._thread.join(wait)
        else:
            self._loop.close()

    # -- the loop's thread -------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _begin_shutdown(self) -> None:
        self._loop.create_task(self._shutdown())

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self._lanes.values():
            if lane.timer is not None:
                lane.timer.cancel()
        self._lanes.clear()
        await asyncio.sleep(0)  # let the aborted transports finish closing
        self._loop.stop()

    def _add(self, burst: Burst) -> None:
        for position, recipient in enumerate(burst.recipients):
            target = signed_posts.target_for(recipient.endpoint, self.resolve)
            lane = self._lanes.get(target.origin)
            if lane is None:
                lane = self._lanes[target.origin] = _Lane(target.origin)
            lane.streams.append(_Stream(burst, position, recipient, target))
            self._kick(lane)

    def _kick(self, lane: _Lane) -> None:
        """Get the lane's due work moving, or wake it when the next piece falls due."""
        due = lane.next_due()
        if due <= self._loop.time():
            self._wake(lane)
        elif due < lane.timer_at:
            if lane.timer is not None:
                lane.timer.cancel()
            lane.timer_at = due
            lane.timer = self._loop.call_at(due, self._on_timer, lane)

    def _on_timer(self, lane: _Lane) -> None:
        lane.timer, lane.timer_at = None, math.inf
        self._kick(lane)

    def _wake(self, lane: _Lane) -> None:
        """An idle sender takes the work, else a new one (a new connection) if the lane has room.

        New connections open one at a time, each once the previous one has carried a request: a
        burst must not flood a receiver's accept queue (a stdlib server's holds 5; past it SYNs are
        dropped and retried a second later).
        """
        if self._stopped:
            return
        while lane.idle:
            waiter = lane.idle.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        if lane.senders < MAX_CONNECTIONS and not lane.opening:
            lane.senders += 1
            lane.opening = True
            self._loop.create_task(self._sender(lane))

    async def _sender(self, lane: _Lane) -> None:
        connection: delivery_client.Connection | None = None
        opening = True
        try:
            while True:
                job = lane.take(self._loop.time())
                if job is None:
                    if opening:
                        opening = lane.opening = False
                    self._kick(lane)
                    if not await self._await_work(lane):
                        return
                    continue
                if lane.next_due() <= self._loop.time():
                    self._wake(lane)  # more is due: let another connection take it
                connection, result = await self._post(lane.origin, connection, job.request, self.timeout)
                if opening:
                    opening = lane.opening = False
                self._finish(lane, job, result)
        finally:
            if opening:
                lane.opening = False
            if connection is not None:
                connection.close()
            lane.senders -= 1
            if lane.finished and self._lanes.get(lane.origin) is lane:
                del self._lanes[lane.origin]

    async def _await_work(self, lane: _Lane) -> bool:
        """Whether work came within IDLE_SECONDS (False: close the connection)."""
        waiter: asyncio.Future[bool] = self._loop.create_future()
        lane.idle.append(waiter)
        expiry = self._loop.call_later(IDLE_SECONDS, _settle, waiter, False)
        try:
            return await waiter
        finally:
            expiry.cancel()
            if waiter in lane.idle:
                lane.idle.remove(waiter)

    def _finish(self, lane: _Lane, job: _Job, result: PostResult) -> None:
        stream = job.stream
        final = result.ok or job.attempt > self.retries
        attempt = Attempt(
            job.delivery_id, stream.recipient.subscription_id, stream.burst.event,
            stream.recipient.endpoint, job.attempt, result.status, result.error, time.time(),
        )
        if final:
            lane.taken -= 1
        else:
            job.attempt += 1
            heapq.heappush(lane.retries, (self._loop.time() + self.retry_delay, next(self._order), job))
            self._kick(lane)
        self.log.add(attempt, final=final)
        if self.on_attempt is not None:
            self.on_attempt(attempt)

    async def _validate(self, url: str, body: bytes, secret: str, timeout: float) -> PostResult:
        try:
            target = signed_posts.target_for(url, self.resolve)
        except ValueError as exc:  # a host name IDNA refuses: it cannot be reached either
            return PostResult(None, f"invalid host name ({exc})")
        request = signed_posts.signed_request(target, body, secret)
        connection, result = await self._post(target.origin, None, request, timeout)
        if connection is not None:
            connection.close()
        return result

    async def _post(
        self,
        origin: delivery_client.Origin,
        connection: delivery_client.Connection | None,
        request: bytes,
        timeout: float,
    ) -> tuple[delivery_client.Connection | None, PostResult]:
        """POST on the given connection (or a new one); the connection left to reuse, and the result."""
        tls = self._tls_for(origin)
        connection, answer, error = await delivery_client.post(origin, connection, request, timeout, tls)
        if answer is None:
            return None, PostResult(None, error)
        status = answer.status
        return connection, PostResult(status, None if status == 200 else f"answered {status}")


def _settle(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)
