"""The relay's admin port, always on 127.0.0.1: ``GET /health`` and ``GET /metrics``.

- ``/health``: 200 ``{"pending": n}`` when a small write to the queue commits (so a full or
  read-only disk shows) and the last event received could be committed, else 503
  ``{"pending": n | null, "error": "..."}``.
- ``/metrics``: the Prometheus text format (``observe.Metrics``).

It runs on the relay's loop over the receiver core's wire (strict HTTP/1.1, limits), never on the
Inspera-facing port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http import HTTPStatus

from inspera_cli.listener.http import Answer, Limits, Request, Respond
from inspera_cli.listener.report import Report, RequestKind
from inspera_cli.listener.wire import Wire
from inspera_cli.relay.observe import Metrics
from inspera_cli.relay.queue import EventQueue
from inspera_cli.relay.schedule import Clock
from inspera_cli.relay.worker import QueueWorker

ADMIN_HOST = "127.0.0.1"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LIMITS = Limits(max_connections=32, max_body=64 * 1024, header_timeout=10.0, body_timeout=10.0,
                 body_memory=1 << 20)


class AdminHandler:
    """Answers the admin routes; a ``listener.http.Handler``."""

    def __init__(self, worker: QueueWorker, metrics: Metrics, clock: Clock,
                 write_problem: Callable[[], str | None] = lambda: None) -> None:
        self.worker = worker
        self.metrics = metrics
        self.clock = clock
        self.write_problem = write_problem

    def handle(self, request: Request, respond: Respond) -> None:
        path = request.path.split("?", 1)[0]
        if path not in ("/health", "/metrics"):
            respond(*_plain(request, HTTPStatus.NOT_FOUND, "not found: GET /health or /metrics\n"))
        elif request.method not in ("GET", "HEAD"):
            text = f"{request.method} is not allowed\n"
            answer, report = _plain(request, HTTPStatus.METHOD_NOT_ALLOWED, text)
            answer.headers = (("Allow", "GET, HEAD"),)
            respond(answer, report)
        elif path == "/health":
            self._health(request, respond)
        else:
            self._metrics(request, respond)

    def too_large(self, request: Request) -> tuple[Answer, Report]:
        answer, report = _plain(request, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too large\n")
        answer.close = True
        return answer, report

    def _health(self, request: Request, respond: Respond) -> None:
        now = self.clock.now()

        def probe(queue: EventQueue) -> int:
            queue.touch(now=now)
            return queue.pending_count()

        def checked(pending: int | None, error: BaseException | None) -> None:
            problem = self.write_problem()
            if error is None and problem is None:
                respond(*_json(request, HTTPStatus.OK, {"pending": pending}))
                return
            if error is not None:
                problem = (error.strerror if isinstance(error, OSError) else None) or str(error)
            body = {"pending": pending, "error": f"the queue cannot be written: {problem}"}
            respond(*_json(request, HTTPStatus.SERVICE_UNAVAILABLE, body))

        self.worker.write(probe, checked)

    def _metrics(self, request: Request, respond: Respond) -> None:
        def counted(pending: int | None, error: BaseException | None) -> None:
            if error is not None:
                respond(*_plain(request, HTTPStatus.SERVICE_UNAVAILABLE, f"cannot read the queue: {error}\n"))
                return
            answer = Answer(HTTPStatus.OK, self.metrics.text(pending or 0).encode(), METRICS_TYPE)
            respond(answer, _report(request, HTTPStatus.OK))

        self.worker.read(lambda queue: queue.pending_count(), counted)


class AdminServer:
    """``start(port)`` on the loop returns the port (0 picks one); ``close()`` stops it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handler: AdminHandler) -> None:
        self._wire = Wire(loop, handler, _LIMITS, lambda request, answer, report: None)

    async def start(self, port: int) -> int:
        return await self._wire.serve(ADMIN_HOST, port)

    async def close(self) -> None:
        await self._wire.close(1.0)


def _report(request: Request, status: int) -> Report:
    return Report(request.received_at, RequestKind.OTHER, request.method, request.path, int(status))


def _plain(request: Request, status: int, text: str) -> tuple[Answer, Report]:
    return Answer(status, text.encode()), _report(request, status)


def _json(request: Request, status: int, body: object) -> tuple[Answer, Report]:
    data = (json.dumps(body) + "\n").encode()
    return Answer(status, data, "application/json"), _report(request, status)
