"""The one test receiver: a webhook endpoint (or the user's app) on 127.0.0.1 that keeps every POST
exactly as it arrived and answers as the test says. A real stdlib server on port 0, never a mock.

- ``status``, or ``statuses`` in turn (then ``status``), or ``answer(request)`` for each request
  (a status, or (status, headers)); with ``secret`` set, a request whose signature does not
  verify is answered 401 first, as a real receiver would.
- ``delay`` slows every answer (closing the receiver cuts the wait short); ``body`` and
  ``headers`` go with every answer.
- ``keep_alive``: HTTP/1.1, connections stay open (else HTTP/1.0, one request a connection);
  ``connections`` counts the TCP connections accepted, ``open_connections`` those still open,
  ``max_in_flight`` the most requests answered at once. ``tls``: serve HTTPS with this context.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

from requests.structures import CaseInsensitiveDict

from inspera_cli.signing import SIGNATURE_HEADER, is_valid

Answer = int | tuple[int, dict[str, str]]


class Received(NamedTuple):
    """One POST: its path, headers (any case), and the body's exact bytes."""

    path: str
    headers: CaseInsensitiveDict[str]
    body: bytes

    @property
    def signature(self) -> str | None:
        return self.headers.get(SIGNATURE_HEADER)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Answered(NamedTuple):
    """A POST and the status it was answered, ``at`` (time.monotonic()) once the answer was sent."""

    request: Received
    status: int
    at: float


class Receiver:
    def __init__(
        self,
        status: int = 200,
        *,
        statuses: Iterable[int] = (),
        answer: Callable[[Received], Answer] | None = None,
        secret: str | None = None,
        delay: float = 0.0,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        keep_alive: bool = True,
        tls: Any = None,
        port: int = 0,
        path: str = "/hooks",
    ) -> None:
        self.status, self.statuses, self.answer = status, list(statuses), answer
        self.secret, self.delay, self.body, self.headers = secret, delay, body, dict(headers or {})
        self.received: list[Received] = []
        self.arrivals: list[float] = []  # time.monotonic() of each POST, in arrival order
        self.answered: list[Answered] = []
        self.connections = self.open_connections = self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._open: set[socket.socket] = set()
        self.server = _Server(("127.0.0.1", port), _handler(self, keep_alive))
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port: int = self.server.server_address[1]
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.url = self.base + path
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def _take(self, request: Received) -> Answer:
        with self._lock:
            self.received.append(request)
            self.arrivals.append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.secret is not None and not is_valid(request.body, request.signature, self.secret):
                return 401
            if self.statuses:
                return self.statuses.pop(0)
        return self.answer(request) if self.answer is not None else self.status

    def _done(self, request: Received, status: int | None) -> None:
        """The request is finished: answered ``status``, or None when the answer could not be sent."""
        with self._lock:
            self.in_flight -= 1
            if status is not None:
                self.answered.append(Answered(request, status, time.monotonic()))

    def wait(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The requests received, once there are ``count`` (or ``timeout`` has passed)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        """Stop, and close the connections kept alive too: a closed receiver answers nothing."""
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            for connection in self._open:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up on a slow answer: expected in these tests


def _handler(receiver: Receiver, keep_alive: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

        def setup(self) -> None:
            super().setup()
            with receiver._lock:
                receiver.connections += 1
                receiver.open_connections += 1
                receiver._open.add(self.connection)

        def finish(self) -> None:
            with receiver._lock:
                receiver.open_connections -= 1
                receiver._open.discard(self.connection)
            super().finish()

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = Received(self.path, CaseInsensitiveDict(self.headers.items()), body)
            outcome = receiver._take(request)
            status, extra = outcome if isinstance(outcome, tuple) else (outcome, {})
            sent = None
            try:
                if receiver._closing.wait(receiver.delay):
                    return
                self.send_response(status)
                for name, value in {**receiver.headers, **extra}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(receiver.body)))
                self.end_headers()
                self.wfile.write(receiver.body)
                self.wfile.flush()
                sent = status
            except OSError:
                pass  # the client gave up (timeout tests)
            finally:
                receiver._done(request, sent)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


# Below the ports the system hands out for port 0 (Linux 32768-60999, macOS and Windows 49152 and
# up): one picked from the system's own range could be handed to another test's server between
# this check and the test's bind (it happened: "address already in use", under a parallel run).
_FREE_PORTS = range(20_000, 32_768)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released): connections to it
    are refused, and a server of the test's own may take it."""
    for _ in range(200):
        port = random.choice(_FREE_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
