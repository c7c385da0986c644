"""``Inspector``: the `inspect` page and its JSON API on a loopback port.

It serves on the receiver's own event loop (`listen --inspect`: ``start(listener)``) or on one of
its own (`inspect FILE`: ``start()``), and never on the Inspera-facing port. Rows come from the
listener (the store is a loop observer: one flat tuple a request, appended on the loop itself)
and from record files (``load``/``follow``). Pages get new rows at most every 100 ms, at most 50
at a time: under load most rows are never encoded for a page, only counted in a ``gap`` event.

Why not the listener's threaded observer feed: measured under wrk, a second Python thread that
wakes to take rows cost the loop 17-40 µs per request in GIL hand-overs (the loop gives the GIL
up on every system call and waits to get it back).

Security (SPEC §9): a request whose ``Host`` is not ``127.0.0.1:PORT`` or ``localhost:PORT`` is
refused (DNS rebinding); a replay needs a same-origin ``Origin`` and the per-process token the
page carries; every answer has a CSP without inline script; the webhook secret is never sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inspera_cli.errors import InsperaError, UsageError
from inspera_cli.inspector import api
from inspera_cli.inspector.curl import curl_command
from inspera_cli.inspector.http import EventStream, LoopbackServer, Request, Response
from inspera_cli.inspector.store import KEEP, Entry, Query, Store, from_record
from inspera_cli.redaction import register_secret

if TYPE_CHECKING:
    from inspera_cli.listener import Listener
    from inspera_cli.listener.forward import Forwarder
    from inspera_cli.recording import CorruptLine, RecordReader

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_REQUEST = 4 << 20  # an edited body for replay, as JSON
FOLLOW_EVERY = 0.25  # seconds between looks at a followed record file
FLUSH_EVERY = 0.1  # at most this often a page is sent new rows...
ROWS_PER_FLUSH = 50  # ...and at most this many each time (the rest: a `gap` event)
HEARTBEAT = 15.0
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
TOKEN_PLACEHOLDER = b"{{INSPECT_TOKEN}}"


@dataclass
class InspectorConfig:
    """``targets`` are where Replay sends by default: an event name, or None for every other
    event, to a URL (listen's --forward-to routes, or inspect's --to). ``secret`` signs replays.
    ``source`` says on the page what is shown (a listener's URL, a file)."""

    port: int = 4041
    keep: int = KEEP
    secret: str | None = field(default=None, repr=False)
    targets: Mapping[str | None, str] = field(default_factory=dict)
    source: str = ""
    port_option: str = "--port"


class Inspector:
    def __init__(self, config: InspectorConfig,
                 on_corrupt: Callable[[CorruptLine], None] | None = None) -> None:
        self.config = config
        self.store = Store(keep=config.keep)
        self.token = secrets.token_urlsafe(32)
        register_secret(config.secret)  # an app that echoes it back shows *** on the page
        self._on_corrupt = on_corrupt
        self._static = {path: _static(name) for path, (name, _) in STATIC.items()}
        self._server = LoopbackServer(self._handle, max_body=MAX_REQUEST)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_thread: threading.Thread | None = None
        self._listener: Listener | None = None
        self._streams: set[_Stream] = set()
        self._sent_id = 0
        self._last_flush = 0.0
        self._followed: RecordReader | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._forwarder: Forwarder | None = None
        self.port = 0
        self.url = ""

    # -- sources -------------------------------------------------------------------------------

    def attach(self, listener: Listener) -> None:
        """Show every webhook request the listener answers (call before it starts)."""
        listener.add_loop_observer(self.store.add_answered)
        self._listener = listener

    def load(self, path: str | os.PathLike[str], *, missing_ok: bool = True) -> RecordReader:
        """Read the last ``keep`` requests of a record file (none if it does not exist yet,
        unless ``missing_ok`` is false: then RecordError); the reader returned resumes after them."""
        from inspera_cli.recording import RecordReader, tail_start

        offset, line = tail_start(path, self.config.keep)
        reader = RecordReader(path, on_corrupt=self._on_corrupt, offset=offset, line=line)
        if not missing_ok or Path(path).exists():
            self.store.add_all(from_record(record) for record in reader)
        return reader

    def follow(self, path: str | os.PathLike[str]) -> None:
        """``load`` the file (which must exist), then keep adding the requests appended to it,
        like `tail -f`."""
        self._followed = self.load(path, missing_ok=False)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self, listener: Listener | None = None) -> None:
        """Serve on the listener's event loop, or (no listener) on a loop of its own."""
        if listener is not None:
            future = listener.run_on_loop(self._open())
        else:
            future = concurrent.futures.Future()
            self._own_thread = threading.Thread(target=self._run, args=(future,), name="inspector",
                                                daemon=True)
            self._own_thread.start()
        self.port = future.result()
        if listener is not None:
            self._listener = listener
            self.config.source = self.config.source or listener.url
        self.url = f"http://{HOST}:{self.port}/"

    def _run(self, started: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        try:
            started.set_result(loop.run_until_complete(self._open()))
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        loop.run_forever()
        loop.close()

    async def _open(self) -> int:
        self._loop = asyncio.get_running_loop()
        try:
            port = await self._server.open(HOST, self.config.port)
        except (OSError, OverflowError) as exc:
            # asyncio words a bind error in its own sentence around the system's reason.
            reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else exc
            raise InsperaError(
                f"cannot serve the inspector on {HOST}:{self.config.port}: {reason} (pick another "
                f"{self.config.port_option}, or 0 for a free one)"
            ) from exc
        self._sent_id = self.store.last_id
        self.store.on_added = self._added
        self._spawn(self._heartbeat())
        if self._followed is not None:
            self._spawn(self._follow(self._followed))
        return port

    def close(self) -> None:
        """Stop serving (before the listener it runs on shuts down)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        self.store.on_added = None
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
        except (RuntimeError, concurrent.futures.TimeoutError):
            pass  # the loop is already gone
        if self._own_thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._own_thread.join(10)

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._server.close()
        if self._forwarder is not None:
            self._forwarder.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self, reader: RecordReader) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FOLLOW_EVERY)
            try:
                records = await loop.run_in_executor(None, reader.poll)
            except InsperaError as exc:  # gone or unreadable for now: look again later
                log.debug("cannot read the followed file: %s", exc)
                continue
            self.store.add_all(from_record(record) for record in records)  # on the loop: the store's thread

    # -- routes --------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response | EventStream:
        if not self._host_allowed(request.header("host")):
            return _json(403, {"error": "this page answers only http://127.0.0.1:PORT/ or "
                                        "http://localhost:PORT/ (a foreign Host header: DNS rebinding?)"})
        path = request.path
        if path in STATIC:
            if request.method not in ("GET", "HEAD"):
                return _method_not_allowed("GET, HEAD")
            body = self._static[path]
            if path == "/":
                body = body.replace(TOKEN_PLACEHOLDER, self.token.encode("ascii"))
            return Response(200, body, STATIC[path][1])
        if not path.startswith("/api/"):
            return _json(404, {"error": f"no such page: {path[:200]}"})
        try:
            return await self._api(request)
        except _Refused as exc:
            return _json(exc.status, {"error": str(exc)})

    def _host_allowed(self, host: str | None) -> bool:
        return host is not None and host.lower() in (f"127.0.0.1:{self.port}", f"localhost:{self.port}")

    async def _api(self, request: Request) -> Response | EventStream:
        parts = request.path.removeprefix("/api/").split("/")
        if len(parts) == 3 and parts[0] == "requests" and parts[2] == "replay":
            if request.method != "POST":
                return _method_not_allowed("POST")
            self._check_same_origin(request)
            return await self._replay(self._entry(parts[1]), request.body)
        if request.method not in ("GET", "HEAD"):
            return _method_not_allowed("GET, HEAD")
        if parts == ["info"]:
            return _json(200, self._info())
        if parts == ["requests"]:
            return _json(200, self._list(self._query(request.query)))
        if parts == ["stream"]:
            return self._stream(request)
        if len(parts) == 2 and parts[0] == "requests":
            return await self._detail(self._entry(parts[1]))
        if len(parts) == 3 and parts[0] == "requests" and parts[2] == "record":
            entry = self._entry(parts[1])
            name = f"inspera-request-{entry.id}.jsonl"
            return Response(200, api.record_line(entry), "application/x-ndjson",
                            (("Content-Disposition", f'attachment; filename="{name}"'),))
        if len(parts) == 3 and parts[0] == "requests" and parts[2] == "curl":
            entry = self._entry(parts[1])
            url = self._target(entry, request.query.get("to") or None) or "http://127.0.0.1:8000/"
            return _json(200, {"command": curl_command(url, entry.report.body, _curl_headers(entry))})
        return _json(404, {"error": f"no such API: {request.path[:200]}"})

    def _check_same_origin(self, request: Request) -> None:
        """A replay acts (it POSTs to an app): only the page itself may ask (CSRF)."""
        origin = request.header("origin")
        if origin is None or origin.lower() != f"http://{(request.header('host') or '').lower()}":
            raise _Refused(403, "a replay needs the Origin of this page (a request from another site?)")
        token = request.header("x-inspect-token") or ""
        if not hmac.compare_digest(token.encode("utf-8", "replace"), self.token.encode("ascii")):
            raise _Refused(403, "a replay needs this page's X-Inspect-Token (reload the page)")

    def _entry(self, text: str) -> Entry:
        number = _row_id(text)
        entry = None if number is None else self.store.get(number)
        if entry is None:
            raise _Refused(404, f"no request {text[:40]!r} (only the last {self.config.keep} are kept)")
        return entry

    def _target(self, entry: Entry, given: str | None) -> str | None:
        """Where to replay: the URL given, else the route for the event, else the default one."""
        from inspera_cli.network import check_http_url

        if given is not None:
            try:
                check_http_url(given, "to", allow_userinfo=False)
            except UsageError as exc:
                raise _Refused(400, str(exc)) from None
            return given
        targets = self.config.targets
        event = entry.report.event
        return targets[event] if event in targets else targets.get(None)

    def _query(self, params: Mapping[str, str]) -> Query:
        try:
            return Query.parse(params, max_limit=self.config.keep)
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None

    def _info(self) -> dict[str, Any]:
        from inspera_cli._version import __version__

        return {
            "version": __version__,
            "mode": "listen" if self._listener is not None else "file",
            "source": self.config.source,
            "signing": self.config.secret is not None,
            "targets": {name or "*": url for name, url in self.config.targets.items()},
            "keep": self.config.keep,
        }

    def _list(self, query: Query) -> dict[str, Any]:
        rows = [entry.row() for entry in self.store.newest(query)]
        return {"requests": rows, "total": len(self.store), "events": self.store.events(),
                "lastId": self.store.last_id}

    async def _detail(self, entry: Entry) -> Response:
        if entry.diagnosis is None:
            loop = asyncio.get_running_loop()
            diagnosis = await loop.run_in_executor(None, api.diagnose, entry, self.config.secret)
            entry = entry._replace(diagnosis=diagnosis)
            self.store.update(entry)
        return _json(200, api.detail(entry, replay_target=self._target(entry, None)))

    async def _replay(self, entry: Entry, body: bytes) -> Response:
        from inspera_cli.sending import signed_headers

        try:
            asked = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            raise _Refused(400, 'expected a JSON body: {"to": URL or null, "body": text or null}') from None
        if not isinstance(asked, dict) or not all(
            asked.get(key) is None or isinstance(asked[key], str) for key in ("to", "body")
        ):
            raise _Refused(400, 'expected {"to": URL or null, "body": text or null}')
        url = self._target(entry, asked.get("to") or None)
        if url is None:
            raise _Refused(400, "no target to replay to: type a URL (or start with --forward-to / --to)")
        try:
            data = entry.report.body if asked.get("body") is None else asked["body"].encode("utf-8")
        except UnicodeEncodeError:
            raise _Refused(400, "the body is not text: it holds a lone surrogate (\\ud800-\\udfff)") from None
        content_type = entry.header("content-type") or "application/json"
        headers = signed_headers(data, self.config.secret, content_type)
        result = await self._send(url, data, headers)
        row = self.store.add(api.replay_entry(entry, url, data, headers, self.config.secret is not None,
                                              result))
        return _json(200, api.replay_outcome(row))

    async def _send(self, url: str, body: bytes, headers: dict[str, str]) -> Any:
        from inspera_cli.listener.forward import Forwarder
        from inspera_cli.sending import DELIVERY_TIMEOUT

        loop = asyncio.get_running_loop()
        if self._forwarder is None:
            self._forwarder = Forwarder(loop, timeout=DELIVERY_TIMEOUT, workers=4, purpose="inspect replay")
        done: asyncio.Future[Any] = loop.create_future()
        self._forwarder.forward(url, body, headers, lambda result, _answer: done.set_result(result))
        return await done

    # -- live rows (server-sent events) ----------------------------------------------------------

    def _stream(self, request: Request) -> EventStream:
        query = self._query(request.query)
        after_text = request.header("last-event-id") or request.query.get("after", "")
        after = _row_id(after_text)
        if after is None:
            after = self.store.last_id
        stream = _Stream(query)

        def opened(send: Callable[[bytes], bool]) -> None:
            stream.send = send
            send(b"retry: 1000\n\n")
            stream.push(self.store.after(after))
            self._streams.add(stream)

        return EventStream(opened, lambda: self._streams.discard(stream))

    def _added(self) -> None:
        """On the loop, after a new row: flush to the pages soon. Unhooked until that flush, so
        the rows in between (one per request the listener answers) cost no call."""
        if self._loop is not None:
            self.store.on_added = None
            self._loop.call_soon(self._schedule_flush)

    def _schedule_flush(self) -> None:
        wait = self._last_flush + FLUSH_EVERY - time.monotonic()
        if wait > 0:
            asyncio.get_running_loop().call_later(wait, self._flush)
        else:
            self._flush()

    def _flush(self) -> None:
        if self._loop is not None:  # not closed
            self.store.on_added = self._added
        self._last_flush = time.monotonic()
        if not self._streams:
            self._sent_id = self.store.last_id
            return
        rows = self.store.after(self._sent_id)
        if rows:
            self._sent_id = rows[-1].id
            encoded: dict[int, bytes] = {}  # each row encoded once however many pages get it
            for stream in list(self._streams):
                stream.push(rows, encoded)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            for stream in list(self._streams):
                stream.send(b": still here\n\n")


class _Stream:
    """One page's live rows: filtered, at most ROWS_PER_FLUSH per flush (newest kept)."""

    def __init__(self, query: Query) -> None:
        self.query = query
        self.send: Callable[[bytes], bool] = lambda data: False

    def push(self, rows: Sequence[Entry], encoded: dict[int, bytes] | None = None) -> None:
        """Send ``rows`` (oldest first) that match; ``encoded`` caches rows' JSON by id."""
        chosen = rows if self.query.everything else [row for row in rows if self.query.matches(row)]
        skipped = max(0, len(chosen) - ROWS_PER_FLUSH)
        parts = []
        if skipped:
            parts.append(b'event: gap\ndata: {"skipped": %d}\n\n' % skipped)
        cache = {} if encoded is None else encoded
        for row in chosen[skipped:]:
            data = cache.get(row.id)
            if data is None:
                data = cache[row.id] = row.row_json()
            parts.append(b"id: %d\nevent: request\ndata: %s\n\n" % (row.id, data))
        if parts:
            self.send(b"".join(parts))


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _curl_headers(entry: Entry) -> list[tuple[str, str]]:
    headers = [("Content-Type", entry.header("content-type") or "application/json")]
    signature = entry.header("x-inspera-signature")
    if signature is not None:
        headers.append(("X-Inspera-Signature", signature))
    return headers


def _row_id(text: str) -> int | None:
    """A row id from a path or parameter: ASCII digits only (``int`` would take "²" as a digit
    and then fail), and small enough to be one."""
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def _json(status: int, data: Any) -> Response:
    return Response(status, (json.dumps(data, ensure_ascii=True) + "\n").encode("ascii"))


def _method_not_allowed(allow: str) -> Response:
    return Response(405, b'{"error": "method not allowed"}\n', headers=(("Allow", allow),))


def _static(name: str) -> bytes:
    return resources.files("inspera_cli.inspector").joinpath("static", name).read_bytes()
