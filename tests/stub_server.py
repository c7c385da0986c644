"""A scripted Inspera-like HTTP server on 127.0.0.1 for client tests that need answers the sandbox
never gives (odd shapes, 429s, HTML error pages, dropped connections, redirects to another origin,
answers trickled a byte at a time, bodies that echo the credentials they were sent)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str/bytes sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False  # close the connection without answering (after reading the request)
    trickle: float = 0.0  # send the whole answer one byte at a time, this many seconds apart
    echo: bool = False  # answer 400 with the request's `code`, `Authorization` and body in the error


def redirect(to: str, status: int = 307) -> Reply:
    """A redirect to ``to`` (e.g. another StubInspera's URL: another origin)."""
    return Reply(status, {"error": "moved"}, {"Location": to})


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class StubInspera:
    """Routes map (METHOD, path) to replies served in order; the last one repeats."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply]] = {}
        self.seen: list[Seen] = []
        self.tokens_issued = 0
        self.on("POST", "/api/authenticate/token/", self.token_reply)
        self.on(
            "GET", "/api/v1/subscription/events", Reply(body=["confirm_final_grades", "complete_grading"])
        )
        self.on("GET", "/api/v1/subscription", Reply(body={"subscriptions": []}))
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self.thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def token_reply(self) -> Reply:
        self.tokens_issued += 1
        return Reply(body={"access_token": f"stub-token-{self.tokens_issued}", "expires_in": 3600})

    def on(self, method: str, path: str, *replies: Any) -> None:
        self.routes[(method, path)] = list(replies)

    def subprocess_env(self, home: Path) -> dict[str, str]:
        """The environment for the CLI in a subprocess: this server, config and cache under home."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("INSPERA_")}
        env.update(
            INSPERA_URL=self.url,
            INSPERA_CLIENT_ID="c",
            INSPERA_API_KEY="k",
            XDG_CONFIG_HOME=str(home / "cfg"),
            XDG_CACHE_HOME=str(home / "cache"),
        )
        return env

    def count(self, method: str, path: str) -> int:
        return sum(1 for s in self.seen if s.method == method and s.path == path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next(self, method: str, path: str) -> Reply:
        replies = self.routes.get((method, path))
        if not replies:
            return Reply(404, {"error": "not found"})
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        return reply() if callable(reply) else reply

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stub.seen.append(
                    Seen(
                        self.command,
                        parts.path,
                        parse_qs(parts.query, keep_blank_values=True),
                        dict(self.headers.items()),
                        body,
                    )
                )
                reply = stub._next(self.command, parts.path)
                if reply.echo:
                    said = f"code={self.headers.get('code')} auth={self.headers.get('Authorization')}"
                    reply = Reply(400, {"error": "invalid_request", "description": f"{said} body={body!r}"})
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                if isinstance(reply.body, (dict, list)):
                    data = json.dumps(reply.body).encode()
                    ctype = "application/json"
                elif isinstance(reply.body, str):
                    data, ctype = reply.body.encode(), "text/html; charset=utf-8"
                else:
                    data, ctype = reply.body or b"", "application/octet-stream"
                headers = {"Content-Type": ctype, **reply.headers, "Content-Length": str(len(data))}
                lines = [f"HTTP/1.1 {reply.status} Stub", *(f"{k}: {v}" for k, v in headers.items())]
                head = "".join(f"{line}\r\n" for line in lines)
                answer = head.encode("latin-1") + b"\r\n" + data
                if not reply.trickle:
                    self.wfile.write(answer)
                    return
                try:
                    for i in range(len(answer)):
                        self.wfile.write(answer[i : i + 1])
                        self.wfile.flush()
                        time.sleep(reply.trickle)
                except OSError:
                    self.close_connection = True  # the client gave up

            do_GET = do_POST = do_DELETE = _serve

        return Handler
