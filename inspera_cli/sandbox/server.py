"""The sandbox tenant: Inspera's webhook API (SPEC §1) served on localhost, plus ``/_sandbox`` routes.

Everything a test or a user's CI needs from a tenant, with no account: the token exchange, bearer
tokens that expire, the subscription API with endpoint validation, and signed deliveries with
retries. ``POST /_sandbox/fire`` stands in for a teacher confirming grades.
"""

from __future__ import annotations

import hmac
import json
import math
import random
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from inspera_cli.errors import NetworkError
from inspera_cli.event_names import BUILT_IN_EVENTS
from inspera_cli.sandbox.burst import MAX_DELIVERIES, Burst, Recipient, burst_problem
from inspera_cli.sandbox.delivery import Attempt, DeliveryLog, DeliveryLoop
from inspera_cli.sandbox.log_writer import LogWriter, printable
from inspera_cli.sandbox.store import SubscriptionStore
from inspera_cli.webhook_body import verification_body

# The event types a sandbox offers unless told otherwise.
DEFAULT_EVENTS = BUILT_IN_EVENTS

MAX_BODY = 1024 * 1024
REQUEST_HISTORY = 10_000  # (method, path) pairs kept for Sandbox.requests
_SUBSCRIPTION_ID = re.compile(r"/api/v1/subscription/([^/]+)")
_MAX_ID = 2**63 - 1  # SQLite's INTEGER


@dataclass
class SandboxConfig:
    """Settings of one sandbox tenant; the defaults are those of ``sandbox serve``."""

    host: str = "127.0.0.1"
    port: int = 8765
    client_id: str = "sandbox"
    api_key: str = "sandbox-key"
    state: Path | None = None
    token_ttl: float = 3600.0
    validation_timeout: float = 10.0
    delivery_timeout: float = 10.0
    retries: int = 3
    retry_delay: float = 1.0
    resolve: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Delivery attempts kept in memory for /_sandbox/deliveries (the newest).
    keep: int = 10_000
    # Event names, or (name, description) pairs, that the tenant supports.
    events: Sequence[str | tuple[str, str | None]] = DEFAULT_EVENTS
    # Called with one line per API request and per delivery attempt (``sandbox serve`` prints them),
    # from a thread of its own; lines are dropped and counted when it falls far behind.
    log: Callable[[str], None] | None = None


class _ApiError(Exception):
    def __init__(self, status: int, payload: dict[str, Any], allow: str | None = None) -> None:
        super().__init__(payload.get("error"))
        self.status = status
        self.payload = payload
        self.allow = allow


def _bad_request(message: str) -> _ApiError:
    return _ApiError(400, {"error": message})


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise _bad_request("the request has no body; send a JSON object")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise _bad_request(f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise _bad_request("malformed JSON body: nested too deeply") from None
    if not isinstance(data, dict):
        raise _bad_request("the JSON body must be an object")
    return data


def _is_http_url(url: str) -> bool:
    if any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class Sandbox:
    """One sandbox tenant. ``start()`` serves it on background threads; ``shutdown()`` stops it."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.events: dict[str, str | None] = {}
        for item in self.config.events:
            name, description = (item, None) if isinstance(item, str) else item
            self.events[name] = description
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self._fire_lock = threading.Lock()  # ids and bursts enter the delivery loop in one order
        self._requests: deque[tuple[str, str]] = deque(maxlen=REQUEST_HISTORY)
        self._log = DeliveryLog(self.config.keep)
        self._log_writer: LogWriter | None = None
        self._store: SubscriptionStore | None = None
        self._delivery: DeliveryLoop | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Bind, open the state, start the workers and the server; return once it accepts."""
        config = self.config
        server_class = _Server6 if ":" in config.host else _Server
        try:
            server = server_class((config.host, config.port), _Handler)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise NetworkError(
                f"cannot listen on {config.host}:{config.port}: {reason} "
                "(pick another port, or 0 for a free one)"
            ) from exc
        try:
            self._store = SubscriptionStore(config.state)
        except Exception:
            server.server_close()
            raise
        server.sandbox = self
        self._server = server
        if config.log is not None:
            self._log_writer = LogWriter(config.log)
        self._delivery = DeliveryLoop(
            timeout=config.delivery_timeout,
            retries=config.retries,
            retry_delay=config.retry_delay,
            resolve=self._resolve,
            log=self._log,
            on_attempt=self._log_attempt,
        )
        self._delivery.start()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="sandbox-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving, close open connections, abandon pending deliveries, close the state."""
        if self._server is not None:
            self._server.shutdown()
            self._server.close_connections()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(2)
        if self._delivery is not None:
            self._delivery.stop()
        if self._store is not None:
            self._store.close()
        if self._log_writer is not None:
            self._log_writer.close()
        self._server = self._thread = self._delivery = self._store = self._log_writer = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def url(self) -> str:
        """The tenant URL (the API is under ``/api``)."""
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        host, port = self._server.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def _resolve(self) -> dict[str, tuple[str, int]]:
        return {host.lower(): target for host, target in self.config.resolve.items()}

    # -- the Python side of the /_sandbox routes -------------------------------------------------

    def fire(
        self,
        event: str,
        context_object_id: int | None = None,
        *,
        count: int = 1,
        rate: float | None = None,
    ) -> range:
        """Queue the event for every subscription to it, ``count`` times (``rate`` a second, or as
        fast as the receivers answer); the delivery ids, consecutive: event ``i`` (contextObjectId
        ``context_object_id + i``) to the ``j``-th of ``n`` subscriptions is ``ids[i * n + j]``.

        ValueError for an unknown event or a burst beyond the limits (``burst.MAX_DELIVERIES``).
        """
        if event not in self.events:
            raise ValueError(f"unknown event {event!r}; supported: {', '.join(self.events)}")
        if problem := burst_problem(count, rate):
            raise ValueError(problem)
        store, delivery = self._running()
        recipients = tuple(Recipient(s.subscription_id, s.endpoint, s.secret) for s in store.all(event))
        if count * len(recipients) > MAX_DELIVERIES:
            raise ValueError(
                f"{count} events for {len(recipients)} subscriptions make {count * len(recipients)} "
                f"deliveries; at most {MAX_DELIVERIES} a fire"
            )
        if not recipients:
            return range(0)
        if context_object_id is None:
            context_object_id = random.randint(10_000_000, 99_999_999)
        with self._fire_lock:
            burst = Burst(
                event, context_object_id, count, rate, recipients,
                first_delivery_id=self._log.reserve(count * len(recipients)),
                started=time.monotonic(), started_wall=time.time(),
            )
            delivery.send(burst)
        return burst.delivery_ids

    def deliveries(self) -> list[dict[str, Any]]:
        """The newest finished delivery attempts (``keep`` of them), oldest first."""
        return [attempt.to_json() for attempt in self._log.items()]

    def wait_deliveries(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until at least ``n`` attempts have finished since the start; then the kept ones, as
        ``deliveries()``. TimeoutError if they do not finish in time."""
        return [attempt.to_json() for attempt in self._log.wait(n, timeout)]

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until every delivery fired so far has finished (succeeded or run out of retries)."""
        self._log.wait_idle(timeout)

    @property
    def attempts(self) -> int:
        """Delivery attempts finished since the start, including those no longer kept."""
        return self._log.attempts

    def subscriptions(self) -> list[dict[str, Any]]:
        store, _ = self._running()
        return [sub.to_json() for sub in store.all()]

    def expire_tokens(self) -> int:
        """Make every issued access token expired now (tests of the client's refresh)."""
        with self._lock:
            count = len(self._tokens)
            self._tokens = dict.fromkeys(self._tokens, 0.0)
        return count

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path without query) of every request received, in order."""
        with self._lock:
            return list(self._requests)

    def _running(self) -> tuple[SubscriptionStore, DeliveryLoop]:
        if self._store is None or self._delivery is None:
            raise RuntimeError("the sandbox is not started")
        return self._store, self._delivery

    def _emit(self, line: str) -> None:
        if self._log_writer is not None:
            self._log_writer.put(printable(line))

    def _log_attempt(self, attempt: Attempt) -> None:
        outcome = "200 OK" if attempt.error is None else f"failed: {attempt.error}"
        self._emit(
            f"delivery {attempt.delivery_id} attempt {attempt.attempt} {attempt.event} "
            f"-> {attempt.endpoint}: {outcome}"
        )

    # -- HTTP ------------------------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any] | list[Any] | None, dict[str, str]]:
        """Answer one request: (status, JSON body or None, extra headers). Never raises."""
        parts = urlsplit(target)
        path = parts.path
        with self._lock:
            self._requests.append((method, path))
        try:
            status, payload = self._route(method, path.rstrip("/") or "/", parts.query, headers, body)
            extra: dict[str, str] = {}
        except _ApiError as exc:
            status, payload = exc.status, exc.payload
            extra = {"Allow": exc.allow} if exc.allow else {}
        except Exception as exc:  # an answer, never a dropped connection
            status, payload, extra = 500, {"error": f"sandbox bug: {type(exc).__name__}: {exc}"}, {}
        line = f"{method} {path} {status}"
        if status >= 400 and isinstance(payload, dict) and payload.get("error"):
            line += f" ({_reason(payload)})"
        self._emit(line)
        return status, payload, extra

    def _route(
        self, method: str, path: str, query: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any] | list[Any] | None]:
        routes: dict[str, dict[str, Callable[[], tuple[int, Any]]]] = {
            "/": {"GET": self._root},
            "/api/authenticate/token": {"POST": lambda: self._token(query, headers)},
            "/api/v1/subscription/events": {"GET": self._authorized(headers, self._list_events)},
            "/api/v1/subscription": {
                "GET": self._authorized(headers, self._list_subscriptions),
                "POST": self._authorized(headers, lambda: self._create(body)),
            },
            "/_sandbox/fire": {"POST": lambda: self._fire(body)},
            "/_sandbox/deliveries": {"GET": lambda: (200, {"deliveries": self.deliveries()})},
            "/_sandbox/expire-tokens": {"POST": lambda: (200, {"expired": self.expire_tokens()})},
        }
        methods = routes.get(path)
        if methods is None and (match := _SUBSCRIPTION_ID.fullmatch(path)):
            methods = {"DELETE": self._authorized(headers, lambda: self._delete(match.group(1)))}
        if methods is None:
            raise _ApiError(404, {"error": f"no such API route: {path}"})
        if method == "HEAD" and "GET" in methods:
            method = "GET"
        if method not in methods:
            raise _ApiError(
                405, {"error": f"method {method} not allowed on {path}"}, allow=", ".join(methods)
            )
        return methods[method]()

    def _root(self) -> tuple[int, dict[str, Any]]:
        return 200, {"name": "inspera-hooks sandbox", "api": f"{self.url}/api"}

    def _token(self, query: str, headers: Any) -> tuple[int, dict[str, Any]]:
        params = parse_qs(query)
        for name in ("grant_type", "client_id"):
            if not params.get(name, [""])[0]:
                raise _bad_request_oauth(f"missing query parameter {name}")
        if params["grant_type"][0] != "authorization_code":
            raise _ApiError(
                400,
                {"error": "unsupported_grant_type",
                 "description": "grant_type must be authorization_code"},
            )
        code = headers.get("code")
        if not code:
            raise _bad_request_oauth("missing header code (the API authorization code)")
        client_ok = hmac.compare_digest(params["client_id"][0].encode(), self.config.client_id.encode())
        code_ok = hmac.compare_digest(code.encode(), self.config.api_key.encode())
        if not (client_ok and code_ok):
            raise _ApiError(401, {"error": "invalid_grant"})
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + self.config.token_ttl
        return 200, {"access_token": token, "expires_in": math.ceil(self.config.token_ttl)}

    def _authorized(
        self, headers: Any, answer: Callable[[], tuple[int, Any]]
    ) -> Callable[[], tuple[int, Any]]:
        def checked() -> tuple[int, Any]:
            auth = headers.get("Authorization") or ""
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _ApiError(
                    401,
                    {"error": "unauthorized",
                     "description": "send Authorization: Bearer <access token>"},
                )
            with self._lock:
                expires = self._tokens.get(token.strip())
            if expires is None:
                raise _ApiError(
                    401, {"error": "invalid_token", "description": "unknown access token"}
                )
            if expires <= time.monotonic():
                raise _ApiError(
                    401, {"error": "invalid_token", "description": "the access token has expired"}
                )
            return answer()

        return checked

    def _list_events(self) -> tuple[int, list[dict[str, Any]]]:
        return 200, [{"event": name, "description": d} for name, d in self.events.items()]

    def _list_subscriptions(self) -> tuple[int, dict[str, Any]]:
        return 200, {"subscriptions": self.subscriptions()}

    def _create(self, body: bytes) -> tuple[int, dict[str, Any]]:
        data = _json_object(body)
        missing = [name for name in ("event", "endpoint", "secret") if name not in data]
        if missing:
            raise _bad_request(f"missing field(s): {', '.join(missing)}")
        for name in ("event", "endpoint", "secret"):
            if not isinstance(data[name], str) or not data[name]:
                raise _bad_request(f"field {name} must be a non-empty string")
        event, endpoint, secret = data["event"], data["endpoint"], data["secret"]
        if event not in self.events:
            raise _bad_request(f"unknown event {event!r}; supported: {', '.join(self.events)}")
        if not _is_http_url(endpoint):
            raise _bad_request(f"endpoint is not an http(s) URL: {endpoint!r}")
        store, delivery = self._running()
        # Validation is one signed POST, never retried.
        result = delivery.validate(endpoint, verification_body(), secret, self.config.validation_timeout)
        if not result.ok:
            if result.status is not None:
                reason = f"{endpoint} answered {result.status}; it must answer 200 OK"
            else:
                reason = f"{endpoint}: {result.error}"
            raise _bad_request(f"endpoint validation failed: {reason}")
        return 200, store.add(event, endpoint, secret).to_json()

    def _delete(self, raw_id: str) -> tuple[int, None]:
        if not re.fullmatch(r"\d+", raw_id):
            raise _bad_request(f"subscription id must be an integer, not {raw_id!r}")
        subscription_id = int(raw_id)
        store, _ = self._running()
        if subscription_id > _MAX_ID or not store.delete(subscription_id):
            raise _ApiError(404, {"error": f"subscription {subscription_id} not found"})
        return 204, None

    def _fire(self, body: bytes) -> tuple[int, dict[str, Any]]:
        data = _json_object(body)
        event = data.get("event")
        if not isinstance(event, str) or not event:
            raise _bad_request("field event must be a non-empty string")
        object_id = data.get("contextObjectId")
        if object_id is not None and (isinstance(object_id, bool) or not isinstance(object_id, int)):
            raise _bad_request("field contextObjectId must be an integer")
        count = 1 if data.get("count") is None else data["count"]
        rate = data.get("rate")
        if problem := burst_problem(count, rate, names=("field count", "field rate")):
            raise _bad_request(problem)
        try:
            ids = self.fire(event, object_id, count=count, rate=rate)
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        return 200, {"deliveryIds": list(ids)}


def _reason(payload: dict[str, Any]) -> str:
    """An error answer in one line for the log: the error, and its description when there is one."""
    error, description = payload.get("error"), payload.get("description")
    text = f"{error}: {description}" if description else str(error)
    return " ".join(text.split())


def _bad_request_oauth(description: str) -> _ApiError:
    return _ApiError(400, {"error": "invalid_request", "description": description})


class _Server(ThreadingHTTPServer):
    """Tracks open connections so that shutdown can close keep-alive sockets at once."""

    daemon_threads = True
    sandbox: Sandbox

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            sockets: Iterable[socket.socket] = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request is not worth a traceback on the console.
        pass


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Answer even a garbled request line with a status line and headers, not a bare HTTP/0.9 body.
    default_request_version = "HTTP/1.0"
    server_version = "InsperaSandbox/1"
    # Headers and body go out in two writes: with Nagle on, the body waits for the client's
    # delayed ACK, some 40 ms on every keep-alive request.
    disable_nagle_algorithm = True
    timeout = 10  # seconds a silent client may hold a connection

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = do_HEAD = do_GET  # noqa: N815

    def _dispatch(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            self._send(411, {"error": "send the body with a Content-Length"})
            return
        raw_length = self.headers.get("Content-Length", "0").strip() or "0"
        if not raw_length.isdigit():
            self.close_connection = True
            self._send(400, {"error": f"bad Content-Length: {raw_length!r}"})
            return
        length = int(raw_length)
        if length > MAX_BODY:
            self.close_connection = True
            self._send(413, {"error": f"body larger than {MAX_BODY} bytes"})
            return
        try:
            body = self.rfile.read(length) if length else b""
        except OSError:
            self.close_connection = True
            return
        if len(body) < length:
            self.close_connection = True
            return
        status, payload, extra = self.server.sandbox.handle(self.command, self.path, self.headers, body)
        self._send(status, payload, extra)

    def _send(
        self, status: int, payload: Any, extra: dict[str, str] | None = None
    ) -> None:
        data = b"" if payload is None else json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and data:
                self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed HTTP gets a JSON error too (http.server would send an HTML page)."""
        self.close_connection = True
        text = message or HTTPStatus(code).phrase
        self._send(code, {"error": text})

    def log_message(self, format: str, *args: Any) -> None:
        # Requests are reported through SandboxConfig.log by Sandbox.handle.
        pass
