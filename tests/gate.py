"""A local HTTP server that holds chosen requests until the test releases them: a validation target,
a tunnel or a tenant that answers exactly as slowly as the test needs, with no sleeps to tune.

With ``upstream`` it is a proxy (each request is forwarded there and the answer relayed; 502 when
the upstream cannot be reached); without, it answers 200 itself.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOLD_LIMIT = 30.0  # a forgotten release() never hangs the suite


class Gate:
    """Holds the requests for ``hold`` (method, path without query), after letting ``skip`` of
    them through: ``before`` the upstream sees them, or ``after`` its answer (then the upstream
    has acted, and only the answer is late)."""

    def __init__(
        self,
        hold: tuple[str, str],
        *,
        upstream: str | None = None,
        when: str = "before",
        skip: int = 0,
    ) -> None:
        self.hold = hold
        self.upstream = urlsplit(upstream) if upstream else None
        self.when = when
        self.skip = skip
        self.arrived = threading.Event()  # a request is being held
        self.finished = threading.Event()  # a held request has been answered
        self._open = threading.Event()
        self._lock = threading.Lock()
        self._matched = 0
        self._held = 0
        self._held_changed = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def release(self) -> None:
        """Let every held request, and all later ones, through."""
        self._open.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _should_hold(self, method: str, target: str) -> bool:
        if (method, urlsplit(target).path) != self.hold:
            return False
        with self._lock:
            self._matched += 1
            return self._matched > self.skip

    def wait_held(self, count: int, timeout: float) -> bool:
        """Whether ``count`` requests are being held (or have been) within ``timeout`` seconds."""
        with self._held_changed:
            return self._held_changed.wait_for(lambda: self._held >= count, timeout)

    def _wait(self) -> None:
        with self._held_changed:
            self._held += 1
            self._held_changed.notify_all()
        self.arrived.set()
        self._open.wait(HOLD_LIMIT)

    def _forward(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, bytes, str]:
        if self.upstream is None:
            return 200, b"", "text/plain"
        conn = http.client.HTTPConnection(self.upstream.hostname or "", self.upstream.port, timeout=20)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            conn.request(method, path, body=body, headers=sent)
            answer = conn.getresponse()
            return answer.status, answer.read(), answer.getheader("Content-Type") or "text/plain"
        except OSError as exc:
            return 502, f"gate: upstream unreachable: {exc}".encode(), "text/plain"
        finally:
            conn.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                held = gate._should_hold(self.command, self.path)
                if held and gate.when == "before":
                    gate._wait()
                status, data, ctype = gate._forward(self.command, self.path, self.headers, body)
                if held and gate.when == "after":
                    gate._wait()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up waiting
                if held:
                    gate.finished.set()

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
