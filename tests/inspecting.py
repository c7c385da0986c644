"""What the inspector tests share: the local app it forwards to, a listener with the
inspector page beside it, plain HTTP to that page, and a server-sent-events reader."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from inspera_cli.inspector import Inspector, InspectorConfig
from inspera_cli.listener import Listener, ListenerConfig
from tests.receiver import Receiver

SECRET = "inspect-secret-0f3c9a"


def new_local_app() -> Receiver:
    """A local app: keeps every POST, answers ``status`` with ``body`` (JSON by default)."""
    return Receiver(body=b'{"ok": true}', headers={"Content-Type": "application/json", "X-App": "test-app"})


@contextmanager
def inspecting(*, secret: str | None = SECRET, forward: str | None = None, keep: int = 1000,
               record: Any = None) -> Iterator[tuple[Listener, Inspector]]:
    """A listener (port 0) with the inspector (port 0) on its loop, as `listen --inspect` runs."""
    config = ListenerConfig(port=0, secret=secret, forward={None: forward} if forward else {},
                            record=record)
    listener = Listener(config)
    inspector = Inspector(InspectorConfig(port=0, keep=keep, secret=secret, targets=dict(config.forward)))
    if record is not None:
        inspector.load(record)
    inspector.attach(listener)
    listener.start()
    try:
        inspector.start(listener)
        yield listener, inspector
    finally:
        inspector.close()
        listener.shutdown()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def call(inspector: Inspector, method: str, path: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None, host: str | None = None) -> Answer:
    """One request to the inspector; ``host`` replaces the Host header (None: 127.0.0.1:PORT)."""
    conn = http.client.HTTPConnection("127.0.0.1", inspector.port, timeout=15)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", f"127.0.0.1:{inspector.port}" if host is None else host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def replay(inspector: Inspector, entry_id: int, to: str | None = None, body: str | None = None,
           **overrides: Any) -> Answer:
    """POST a replay as the page does (same Origin, the token), unless ``overrides`` say otherwise."""
    headers = {"Origin": f"http://127.0.0.1:{inspector.port}", "X-Inspect-Token": inspector.token,
               "Content-Type": "application/json"}
    headers.update({k.replace("_", "-"): v for k, v in overrides.items() if v is not None})
    for name in [k.replace("_", "-") for k, v in overrides.items() if v is None]:
        headers.pop(name, None)
    return call(inspector, "POST", f"/api/requests/{entry_id}/replay",
                body=json.dumps({"to": to, "body": body}).encode(), headers=headers)


def rows(inspector: Inspector, query: str = "") -> list[dict[str, Any]]:
    answer = call(inspector, "GET", f"/api/requests{query}")
    assert answer.status == 200, answer.body
    requests: list[dict[str, Any]] = answer.json["requests"]
    return requests


class EventReader:
    """Reads /api/stream in the background: ``events`` fills with (event, id, data) as they come;
    ``raw`` keeps every byte."""

    def __init__(self, inspector: Inspector, query: str = "", headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", inspector.port), timeout=30)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET /api/stream{query} HTTP/1.1\r\nHost: 127.0.0.1:{inspector.port}\r\n"
                          f"Accept: text/event-stream\r\n{extra}\r\n".encode())
        self.raw = b""
        self._ended = False
        self.events: list[tuple[str, str | None, str]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        # Open once the inspector has sent its first line ("retry:"): the stream then gets every
        # row that comes after. A test that sent a webhook right after the GET could see its row
        # kept and flushed before the inspector had read that GET (a busy machine), and the
        # stream, which starts with the rows that come next, never got it.
        with self._changed:
            self._changed.wait_for(lambda: b"retry:" in self.raw or self._ended, 30)

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            with self._changed:
                if not data:
                    self._ended = True
                    self._changed.notify_all()
                    return
                self.raw += data
                buffer += data
                if b"\r\n\r\n" in buffer and buffer.startswith(b"HTTP/"):
                    buffer = buffer.split(b"\r\n\r\n", 1)[1]
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self._parse(block.decode())
                self._changed.notify_all()

    def _parse(self, block: str) -> None:
        name, event_id, data = "message", None, []
        for line in block.split("\n"):
            key, _, value = line.partition(": ")
            if key == "event":
                name = value
            elif key == "id":
                event_id = value
            elif key == "data":
                data.append(value)
        if data:
            self.events.append((name, event_id, "\n".join(data)))

    def wait(self, predicate: Callable[[list[tuple[str, str | None, str]]], bool],
             timeout: float = 5.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.events), timeout)

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(data) for name, _, data in self.events if name == "request"]

    def close(self) -> None:
        # shutdown() wakes the reading thread's recv(); close() alone would leave it blocked.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the server closed the stream first
        self._thread.join(5)
        self.sock.close()
