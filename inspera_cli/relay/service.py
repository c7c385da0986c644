"""``Relay``: receive -> queue -> deliver, in one process, with an admin port.

One event loop (the receiver core's ``Listener``, on a thread) runs the Inspera-facing server,
the delivery lanes and the admin server; one more thread runs the queue (``QueueWorker``).

    relay = Relay(RelayConfig(routes={None: "http://127.0.0.1:5000/hooks"}, queue=path, port=0))
    relay.start()            # raises InsperaError (one line) if it cannot
    ...                      # relay.url takes webhooks, relay.admin_url answers /health, /metrics
    relay.stop()             # stops receiving, lets deliveries finish for up to 10 s
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inspera_cli.errors import InsperaError
from inspera_cli.listener.server import Listener, ListenerConfig, ListenerStats
from inspera_cli.relay.admin import ADMIN_HOST, AdminHandler, AdminServer
from inspera_cli.relay.delivery import DeliveryEngine
from inspera_cli.relay.lock import QueueLock
from inspera_cli.relay.observe import Change, ChangeKind, Metrics
from inspera_cli.relay.queue import SQLiteQueue
from inspera_cli.relay.receiving import RelayPolicy
from inspera_cli.relay.schedule import Clock, RetryPolicy, SystemClock
from inspera_cli.relay.walsync import WalSync
from inspera_cli.relay.worker import QueueWorker

log = logging.getLogger(__name__)

STOP_GRACE = 10.0  # seconds deliveries in flight get to finish on SIGTERM


@dataclass
class RelayConfig:
    """SPEC §10. ``routes`` maps an event name, or None for the default route (required), to
    its app's URL."""

    routes: Mapping[str | None, str]
    queue: str | os.PathLike[str]
    host: str = "127.0.0.1"
    port: int = 8000
    path: str = "/"
    secret: str | None = field(default=None, repr=False)
    tls_cert: str | os.PathLike[str] | None = None
    tls_key: str | os.PathLike[str] | None = None
    concurrency: int = 4
    max_age: float = 72 * 3600.0
    max_backoff: float = 600.0
    admin_port: int = 8001
    max_body: int = 1 << 20
    max_connections: int = 512


class Relay:
    """See the module docstring. ``on_change`` gets every state change on the loop: it must not
    block (hand it to a thread, e.g. ``listener.feed.Feed``)."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        on_change: Callable[[Change], None] | None = None,
    ) -> None:
        if None not in config.routes:
            raise ValueError("the relay needs a default route (routes[None])")
        self.config = config
        self.clock = clock or SystemClock()
        self.retry = RetryPolicy(config.max_age, config.max_backoff, rng or random.Random())
        self.metrics = Metrics()
        self._on_change = on_change or (lambda change: None)
        self._lock = QueueLock(Path(config.queue))
        self._queue: SQLiteQueue | None = None
        self._worker: QueueWorker | None = None
        self._engine: DeliveryEngine | None = None
        self._admin: AdminServer | None = None
        self._engine_task: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self._policy: RelayPolicy | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_deadline = 0.0
        self.rerouted = 0
        self.upgraded_from: int | None = None  # the queue file's version before this start upgraded it
        self.admin_port = 0
        self.url = ""

    @property
    def admin_url(self) -> str:
        return f"http://{ADMIN_HOST}:{self.admin_port}/"

    def start(self) -> None:
        """Lock the queue, open it, listen, serve the admin port, start delivering."""
        cfg = self.config
        try:
            self._lock.acquire()
        except OSError as exc:
            raise InsperaError(f"cannot lock the relay queue {cfg.queue} ({self._lock.path.name}): "
                               f"{exc.strerror or exc}") from exc
        try:
            self._queue = SQLiteQueue(cfg.queue, create=True)
            self.upgraded_from = self._queue.upgraded_from
            self.rerouted = self._queue.reroute(cfg.routes)
            self._listen()
            self._start_admin_and_delivery()
            assert self._listener is not None
            self.url = self._listener.url  # set once everything runs
        except BaseException:
            self._abandon()
            raise

    def _listen(self) -> None:
        cfg = self.config
        policy = self._policy = RelayPolicy(
            routes=cfg.routes, clock=self.clock, max_age=cfg.max_age, on_open=self._opened,
            on_close=self._closing, on_change=self._changed, path=cfg.path, secret=cfg.secret,
            max_body=cfg.max_body,
        )
        listener_config = ListenerConfig(
            host=cfg.host, port=cfg.port, path=cfg.path, secret=cfg.secret, max_body=cfg.max_body,
            tls_cert=cfg.tls_cert, tls_key=cfg.tls_key, max_connections=cfg.max_connections,
        )
        self._listener = Listener(listener_config, policy=policy)
        self._listener.start()

    def _start_admin_and_delivery(self) -> None:
        assert self._listener is not None and self._admin is not None and self._engine is not None
        try:
            self.admin_port = self._listener.run_on_loop(self._admin.start(self.config.admin_port)).result(30)
        except (OSError, OverflowError) as exc:
            reason = (exc.strerror if isinstance(exc, OSError) else None) or exc
            raise InsperaError(
                f"cannot serve the admin port on {ADMIN_HOST}:{self.config.admin_port}: {reason} "
                "(pick another --admin-port, or 0 for a free one)"
            ) from exc
        self._listener.run_on_loop(self._run_engine()).result(30)

    async def _run_engine(self) -> None:
        assert self._engine is not None
        self._engine_task = asyncio.create_task(self._engine.run())

    def _opened(self, loop: asyncio.AbstractEventLoop) -> QueueWorker:
        """On the loop, before serving: the worker, the delivery lanes, the admin handler."""
        assert self._queue is not None and self._policy is not None
        self._loop = loop
        self._worker = QueueWorker(self._queue, loop, self._policy.receive, wal_sync=self._wal_sync(loop))
        urls = dict.fromkeys(self.config.routes.values())
        self._engine = DeliveryEngine(
            self._worker, urls, concurrency=self.config.concurrency, retry=self.retry, clock=self.clock,
            metrics=self.metrics, on_change=self._changed,
        )
        policy = self._policy
        handler = AdminHandler(self._worker, self.metrics, self.clock,
                               write_problem=lambda: policy.write_problem if policy else None)
        self._admin = AdminServer(loop, handler)
        return self._worker

    def _wal_sync(self, loop: asyncio.AbstractEventLoop) -> WalSync | None:
        """Commits are synced by helper processes (relay/walsync.py); or, when none can start,
        each commit syncs as it ends."""
        assert self._queue is not None
        try:
            wal_sync = WalSync(self._queue.wal, loop)
        except OSError as exc:
            log.warning("cannot start the queue's sync processes (%s): each commit syncs itself", exc)
            return None
        self._queue.sync_commits(False)
        self._queue.wait_for_locks(False)  # the batches then run on the loop: see relay/worker.py
        return wal_sync

    def _changed(self, change: Change) -> None:
        self.metrics.count(change)
        if self._engine is not None and change.kind is ChangeKind.RECEIVED:
            self._engine.received(change.url)
        self._on_change(change)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop receiving; deliveries in flight get ``grace`` seconds (from now) to finish; then
        everything is closed. Safe to call twice."""
        self._stop_deadline = time.monotonic() + grace
        listener, self._listener = self._listener, None
        if listener is None:
            return
        if self._engine is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._engine.stop_starting)
        listener.shutdown(grace)  # ends with RelayPolicy.close -> _closing

    def _closing(self) -> None:
        """On a thread of the listener's, its loop still running: finish deliveries, close the
        admin port, commit what is queued, close the queue, release the lock. When the listener
        could not start, this runs on the loop itself: then there is nothing to finish."""
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if self._loop is not None and not on_loop:
            future = asyncio.run_coroutine_threadsafe(self._finish(), self._loop)
            try:
                future.result(STOP_GRACE + 5)
            except (concurrent.futures.TimeoutError, Exception):
                log.warning("the relay did not stop cleanly", exc_info=True)
        self._close_queue()

    async def _finish(self) -> None:
        remaining = max(0.0, self._stop_deadline - time.monotonic()) if self._stop_deadline else STOP_GRACE
        if self._engine is not None:
            await self._engine.finish(remaining)
        if self._engine_task is not None:
            self._engine_task.cancel()
            await asyncio.gather(self._engine_task, return_exceptions=True)
        if self._admin is not None:
            await self._admin.close()

    def _abandon(self) -> None:
        """When start() fails half-way: stop the listener if it started (its policy's close
        finishes the rest), then close what is still open."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(0.0)
        self._close_queue()

    def _close_queue(self) -> None:
        """Commit what is queued, close the queue, release the lock (idempotent)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.close()
        self._lock.release()

    def listener_stats(self) -> ListenerStats | None:
        return self._listener.stats() if self._listener is not None else None

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
