"""The wire layer: HTTP/1.1 connections on an asyncio event loop, strictly parsed and bounded.

Parsing is httptools (Node's llhttp), which refuses request smuggling by itself: Content-Length
with Transfer-Encoding, chunk sizes that are not bare hex, bytes after chunk data, a non-digit
Content-Length, NUL/CR/LF in headers are all 400. On top of that a Transfer-Encoding other than
exactly ``chunked`` is 501. Either way the connection is closed after the answer.

Limits (``Limits``): at most ``max_connections`` open (at the cap, the connection that has waited
longest for its headers is dropped for the newcomer, else the newcomer gets 503); headers within
``header_timeout`` of the connection going idle, the whole body within ``body_timeout`` after its
headers; bodies over ``max_body`` get 413. Body bytes held in memory beyond the first 16 KiB of
each body count against ``body_memory``: past it, connections still sending bodies stop being
read (their bytes wait in the kernel) until memory is given back. Answers leave each connection
in request order, pipelined or not.

The wire knows nothing of webhooks: a ``Handler`` answers each whole request by calling
``respond(answer, report)`` on the loop, at once or later.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from inspera_cli.listener.connection import BodyMemory, Connection
from inspera_cli.listener.http import Answered, Handler, Limits


@dataclass
class WireStats:
    connections: int = 0  # accepted in all
    refused: int = 0  # turned away at --max-connections (503)
    evicted: int = 0  # dropped at the cap while waiting for headers
    timed_out: int = 0  # closed at the header or body deadline
    bad_requests: int = 0  # answered 400/501 and closed


class Wire:
    """Every connection of one server; ``serve`` opens it, ``close`` ends it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handler: Handler, limits: Limits,
                 answered: Answered) -> None:
        self.loop = loop
        self.handler = handler
        self.limits = limits
        self.answered = answered
        self.stats = WireStats()
        self.connections: dict[Connection, None] = {}
        self.memory = BodyMemory(limits.body_memory)
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def serve(self, host: str, port: int, ssl: Any = None) -> int:
        """Listen; the port listened on."""
        self._server = await self.loop.create_server(
            lambda: Connection(self), host, port, ssl=ssl, backlog=1024, reuse_address=True,
            ssl_handshake_timeout=self.limits.header_timeout if ssl is not None else None,
        )
        self._sweep()
        return int(self._server.sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        """Close connections past their deadline; runs a few times per timeout."""
        now = time.monotonic()
        for conn in [c for c in self.connections if c.deadline < now]:
            self.stats.timed_out += 1
            conn.abort()
        tick = min(0.5, self.limits.header_timeout / 4, self.limits.body_timeout / 4)
        self._sweeper = self.loop.call_later(tick, self._sweep)

    def admit(self, conn: Connection) -> bool:
        """Room for one more connection? At the cap, drop the longest waiter for headers."""
        self.stats.connections += 1
        if len(self.connections) >= self.limits.max_connections:
            waiting = [c for c in self.connections if c.waiting_since is not None]
            if not waiting:
                self.stats.refused += 1
                return False
            self.stats.evicted += 1
            min(waiting, key=lambda c: c.waiting_since or 0.0).abort()
        self.connections[conn] = None
        return True

    def stop_accepting(self) -> None:
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()

    async def close(self, grace: float) -> None:
        """Stop accepting; let requests in flight finish for up to ``grace`` seconds; close all."""
        self.stop_accepting()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.wait_closed()
