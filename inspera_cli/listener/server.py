"""``Listener``: the receiver's event loop on a background thread, for `listen`, `demo` and tests.

It builds the parts -- the wire (connections, limits, TLS), a policy (``ListenPolicy`` from the
config, or one given: `relay`'s) -- runs them on one event loop (uvloop where installed), counts
what was answered, and hands each report to consumers that never hold the loop up:

- ``on_report(report)``: one thread, in the order requests were answered (the terminal);
  ``after_reports()`` on that thread after each batch of them (a display flushes there, once);
  with ``render``, ``on_report`` gets what ``render(report)`` made of each on the loop instead;
- ``add_observer(fn)``: ``fn(exchange)`` on its own thread, with the raw body, every header, the
  answer sent and the app's answer; a slow observer drops its own items, nobody else's;
- ``add_loop_observer(fn)``: ``fn(report, request, answer)`` on the loop itself, for code that
  lives there (an inspector's server started with ``run_on_loop``); it must return at once and
  keep only what it needs (no ``Exchange`` is built for it: that cost 1-2 µs a request).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import ssl
import threading
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

from inspera_cli.errors import InsperaError
from inspera_cli.listener.feed import Feed
from inspera_cli.listener.http import Answer, Limits, Request
from inspera_cli.listener.policy import ListenPolicy, ReceiverPolicy
from inspera_cli.listener.report import Exchange, Report, RequestKind
from inspera_cli.listener.wire import Wire

Observer = Callable[[Exchange], None]
LoopObserver = Callable[[Report, Request, Answer], None]


@dataclass
class ListenerConfig:
    """What `listen` was asked to do; see SPEC §4 and §8. ``forward`` maps an event name, or None
    for the default route, to the URL of the user's app."""

    host: str = "127.0.0.1"
    port: int = 8000
    path: str = "/"
    secret: str | None = field(default=None, repr=False)
    skip_verify: bool = False
    events: Collection[str] | None = None
    forward: Mapping[str | None, str] = field(default_factory=dict)
    record: str | os.PathLike[str] | None = None
    max_body: int = 1 << 20
    tls_cert: str | os.PathLike[str] | None = None
    tls_key: str | os.PathLike[str] | None = None
    #: Inspera gives up after 10 s; answering 502 before that keeps its retry meaningful.
    forward_timeout: float = 9.0
    max_connections: int = 512
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_memory: int = 32 << 20

    def limits(self) -> Limits:
        return Limits(self.max_connections, self.max_body, self.header_timeout, self.body_timeout,
                      self.body_memory)


@dataclass
class ListenerStats:
    """Counters for the summary; ``accepted`` is what `--exit-after` counts."""

    requests: int = 0  # every request answered, any method or path
    events: int = 0  # POSTs on the path
    accepted: int = 0  # answered 2xx, not a verification, passed --events
    verifications: int = 0
    rejected: int = 0  # answered 401 by the receiver: missing or wrong signature
    filtered: int = 0  # acknowledged but dropped by --events
    retries: int = 0  # a body seen before
    forwarded: int = 0
    forward_failures: int = 0  # the app answered non-2xx, or not at all
    app_refusals: int = 0  # of those, the app answered (its status relayed, a 401 included)
    recorded: int = 0
    too_large: int = 0
    bad_requests: int = 0  # malformed HTTP, answered 400/501 and closed
    refused_connections: int = 0  # over --max-connections
    timed_out: int = 0  # closed at the header or body deadline
    dropped_lines: int = 0  # reports not shown because the display fell behind


class Listener:
    """``start()`` returns once it listens; ``url`` is where; ``shutdown()`` stops it and returns
    once every answered request was reported."""

    def __init__(
        self,
        config: ListenerConfig,
        on_report: Callable[[Any], None] | None = None,
        *,
        policy: ReceiverPolicy | None = None,
        after_reports: Callable[[], None] | None = None,
        render: Callable[[Report], Any] | None = None,
    ) -> None:
        self.config = config
        self.policy = policy or ListenPolicy(
            path=config.path, secret=config.secret, skip_verify=config.skip_verify,
            events=config.events, max_body=config.max_body, forward=config.forward,
            record=None if config.record is None else Path(config.record),
            forward_timeout=config.forward_timeout,
        )
        self._stats = ListenerStats()
        # ``render`` (on the loop) turns each report into what ``on_report`` gets, None for
        # nothing: a display makes its line there, so that its thread needs Python's lock only to
        # take lines and write them. A second thread doing a request's worth of Python work for
        # each one fought the loop for the lock: a hand-over, a context switch, about 30 µs of
        # CPU for each line shown under load, and a different share of lines dropped in each run.
        self._render = render
        self._reports: Feed[Any] | None = None
        if on_report is not None:
            self._reports = Feed(on_report, size=_report_size if render is None else len,
                                 name="listener-report", idle=after_reports)
        self._observers: list[Feed[Exchange]] = []
        self._loop_observers: list[LoopObserver] = []
        self._wake_at: float = float("inf")
        self._accepted_changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wire: Wire | None = None
        self._thread: threading.Thread | None = None
        self._port = config.port
        self.url = ""

    # -- consumers ----------------------------------------------------------------------------

    def add_observer(self, observer: Observer, *, max_items: int = 1000) -> Feed[Exchange]:
        """Call ``observer(exchange)`` for every answered request, on a thread of its own;
        its Feed counts what it dropped by falling behind."""
        feed = Feed(observer, max_items=max_items, size=lambda e: len(e.report.body), name="observer")
        self._observers.append(feed)
        return feed

    def add_loop_observer(self, observer: LoopObserver) -> None:
        """Call ``observer(report, request, answer)`` on the event loop for every answered
        request: it must not block (append to a buffer, wake a waiter)."""
        self._loop_observers.append(observer)

    def run_on_loop(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run ``coro`` on the listener's loop (e.g. start a second server there)."""
        if self._loop is None:
            raise RuntimeError("the listener is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Listen and serve from a background thread. Raises InsperaError (a one-line reason) if
        it cannot, with nothing left open: ``shutdown()`` is then a no-op."""
        if self._thread is not None:
            raise RuntimeError("this listener is already started")
        context = _tls_context(self.config)
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(context, started), name="listener-loop",
                                        daemon=True)
        self._thread.start()
        try:
            self._port = started.result()
        except BaseException:
            self._thread.join()
            self._thread = None
            self._close_feeds()
            raise
        cfg = self.config
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self.url = f"{'https' if context else 'http'}://{host}:{self._port}{self.policy.path}"

    def _run(self, context: ssl.SSLContext | None, started: concurrent.futures.Future[int]) -> None:
        loop = _new_loop()
        self._loop = loop
        try:
            started.set_result(loop.run_until_complete(self._open(loop, context)))
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            self._loop = None
            return
        loop.run_forever()
        loop.close()

    async def _open(self, loop: asyncio.AbstractEventLoop, context: ssl.SSLContext | None) -> int:
        cfg = self.config
        try:
            self.policy.open(loop)
        except OSError as exc:
            raise InsperaError(f"cannot open the record file {cfg.record}: {exc.strerror or exc}") from exc
        self._wire = Wire(loop, self.policy, cfg.limits(), self._answered)
        try:
            return await self._wire.serve(cfg.host, cfg.port, context)
        except (OSError, OverflowError) as exc:
            self.policy.close()
            reason = (exc.strerror if isinstance(exc, OSError) else None) or exc
            raise InsperaError(
                f"cannot listen on {cfg.host}:{cfg.port}: {reason} (pick another --port, or 0 for a free one)"
            ) from exc

    def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting, close idle connections, let requests in flight finish (up to ``grace``
        seconds), report everything answered, close the record file."""
        thread, loop, self._thread = self._thread, self._loop, None
        if thread is None or loop is None:
            return  # never started, start() failed, or already shut down
        try:
            asyncio.run_coroutine_threadsafe(self._close(grace), loop).result(grace + 30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            self._close_feeds()

    async def _close(self, grace: float) -> None:
        assert self._wire is not None and self._loop is not None
        await self._wire.close(grace)
        # Answers still queued (a record being written) come back to this loop while the policy
        # closes on another thread.
        await self._loop.run_in_executor(None, self.policy.close)

    def _close_feeds(self) -> None:
        for observer in self._observers:
            observer.close()
        if self._reports is not None:
            self._reports.close()
        self._stats.dropped_lines = self._reports.dropped if self._reports else 0

    def __enter__(self) -> Listener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- state for callers --------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (the one picked, with port 0)."""
        return self._port

    @property
    def accepted(self) -> int:
        return self._stats.accepted

    def stats(self) -> ListenerStats:
        stats = replace(self._stats)
        if self._wire is not None:
            wire = self._wire.stats
            stats.bad_requests, stats.timed_out = wire.bad_requests, wire.timed_out
            stats.refused_connections = wire.refused
        if self._reports is not None:
            stats.dropped_lines = self._reports.dropped
        return stats

    def wait_accepted(self, count: int, timeout: float | None = None) -> bool:
        """Block until ``count`` events were accepted (answer sent); False on timeout."""
        with self._accepted_changed:
            self._wake_at = min(self._wake_at, count)
            return self._accepted_changed.wait_for(lambda: self._stats.accepted >= count, timeout)

    # -- on the loop ----------------------------------------------------------------------------

    def _answered(self, request: Request, answer: Answer, report: Report) -> None:
        """After each answer went out: count it, hand it on."""
        self._count(report)
        if self._reports is not None:
            if self._render is None:
                self._reports.put(report)
            elif (item := self._render(report)) is not None:
                self._reports.put(item)
        for observer in self._loop_observers:
            observer(report, request, answer)
        if self._observers:
            exchange = Exchange(report, tuple(request.headers),
                                (("Content-Type", answer.content_type), *answer.headers), answer.body)
            for feed in self._observers:
                feed.put(exchange)

    def _count(self, report: Report) -> None:
        stats = self._stats
        stats.requests += 1
        if report.kind is not RequestKind.EVENT:
            return
        stats.events += 1
        stats.retries += report.delivery > 1
        if report.status == HTTPStatus.UNAUTHORIZED and report.forward is None:
            stats.rejected += 1
        elif report.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            stats.too_large += 1
        elif report.verification:
            stats.verifications += 1
        elif not report.shown:
            stats.filtered += 1
        stats.recorded += report.recorded
        if report.forward is not None:
            stats.forwarded += 1
            stats.forward_failures += not report.forward.ok
            stats.app_refusals += not report.forward.ok and report.forward.status is not None
        if report.accepted:
            stats.accepted += 1
            if stats.accepted >= self._wake_at:
                with self._accepted_changed:
                    self._wake_at = float("inf")
                    self._accepted_changed.notify_all()


def _report_size(report: Report) -> int:
    return len(report.body) + 512


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _tls_context(cfg: ListenerConfig) -> ssl.SSLContext | None:
    if not (cfg.tls_cert or cfg.tls_key):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cfg.tls_cert or "", cfg.tls_key)
    except ssl.SSLError as exc:
        detail = f" ({exc.reason})" if exc.reason else ""
        raise InsperaError(
            f"cannot load the TLS certificate {cfg.tls_cert} / key {cfg.tls_key}: not a "
            f"PEM certificate and its matching private key{detail}"
        ) from exc
    except OSError as exc:
        raise InsperaError(
            f"cannot load the TLS certificate {cfg.tls_cert} / key {cfg.tls_key}: {exc.strerror or exc}"
        ) from exc
    return context
