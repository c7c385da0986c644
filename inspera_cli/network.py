"""The standard-library half of the HTTP plumbing: URLs, CA bundle, deadlines, error wording.

No ``requests`` here: shell completion uses this module on every TAB (``fetch``), and the
``requests`` half (``requests_session.py``) builds on it, so both follow one set of rules:

- ``check_http_url``: the one URL validator (http(s), a host, a valid port, no spaces or
  control characters, userinfo only where asked for).
- ``ca_bundle``: the CAs every HTTPS request trusts (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``,
  else certifi's).
- ``Deadline``: a whole request (connect, headers, body) ends at its deadline, however slowly a
  server trickles its answer: a timer shuts the socket down.
- ``describe_network_error``: one short wording for a request that got no HTTP answer.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from inspera_cli._version import __version__
from inspera_cli.errors import UsageError

if TYPE_CHECKING:
    import socket
    import ssl

# ssl, socket and ipaddress are imported where they are used: config.py imports this module on
# every start, and `--help` or a TAB completion must stay fast.

USER_AGENT = f"inspera-hooks/{__version__}"
DEFAULT_PORTS = {"http": 80, "https": 443}
# However long the deadline, a connection attempt gives up after this long.
MAX_CONNECT_TIMEOUT = 10.0


# -- URLs ------------------------------------------------------------------------------------------


def check_http_url(url: str, what: str, *, allow_userinfo: bool = True) -> SplitResult:
    """The parts of an http(s) URL, or UsageError naming ``what`` (e.g. ``--to``).

    ``allow_userinfo=False`` refuses ``https://user:pass@host``: requests would turn it into Basic
    auth in place of the bearer token, and logs would show it.
    """
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise UsageError(f"{what}: the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UsageError(f"{what} {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise UsageError(f"{what} {url!r} is not an http(s) URL, e.g. https://example.inspera.no")
    if not allow_userinfo and "@" in parts.netloc:
        raise UsageError(
            f"{what}: a user name or password in the URL is not supported (give the host only, e.g. "
            f"{parts.scheme}://{parts.netloc.rpartition('@')[2]})"
        )
    return parts


def origin(url: str) -> str:
    """``scheme://host:port`` (default port filled in): what a redirect may not leave."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


def without_userinfo(url: str) -> str:
    """The URL as it may be shown: no ``user:pass@``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def is_loopback_url(url: str) -> bool:
    import ipaddress

    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ca_bundle(explicit: str | None = None) -> str | None:
    """The CA file HTTPS requests trust: ``explicit``, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, certifi's."""
    chosen = explicit or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if chosen:
        return chosen
    try:
        import certifi
    except ImportError:  # pragma: no cover - requests depends on certifi
        return None
    return str(certifi.where())


def verifying_context(explicit: str | None = None) -> ssl.SSLContext:
    """A TLS client context that trusts ``ca_bundle(explicit)`` (a file, or a directory of CAs)."""
    import ssl

    bundle = ca_bundle(explicit)
    if bundle and os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


# -- deadlines -------------------------------------------------------------------------------------


class DeadlineExceeded(TimeoutError):
    """The whole request took longer than its deadline (the socket was shut down)."""


class Deadline:
    """Ends a request at ``seconds``: at the deadline the watched socket is shut down, so a read
    blocked on a server that trickles its answer returns at once.

    Use as a context manager around the whole request; ``watch`` each socket the request uses
    (a retry may use a new one). ``expired`` tells afterwards whether the timer fired.
    """

    _current = threading.local()

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends_at = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._outer: Deadline | None = None

    @classmethod
    def current(cls) -> Deadline | None:
        """The deadline of the request this thread is making, if any."""
        deadline: Deadline | None = getattr(cls._current, "deadline", None)
        return deadline

    def remaining(self) -> float:
        return max(self.ends_at - time.monotonic(), 0.0)

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def __enter__(self) -> Deadline:
        self._outer = Deadline.current()
        Deadline._current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        Deadline._current.deadline = self._outer
        with self._lock:
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    import socket

    try:
        # The plain socket's shutdown, also for a TLS socket: the blocked read sees the end of the
        # stream without the TLS object being changed under it.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


# -- what went wrong -------------------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    """Every exception in a chain, outermost first (requests and urllib3 wrap the OSError in
    ``args``, ``reason``, ``__cause__`` and ``__context__``)."""
    seen: set[int] = set()
    found: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        nested = (getattr(current, "reason", None), current.__cause__, current.__context__, *current.args)
        for inner in nested:
            if isinstance(inner, BaseException):
                stack.append(inner)
    return found


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def host_of(url: str) -> str:
    """``host:port`` of a URL as it may be shown (no userinfo)."""
    try:
        return urlsplit(url).netloc.rpartition("@")[2] or url
    except ValueError:
        return url


class NoAnswer(StrEnum):
    """Why a request got no HTTP answer."""

    CONNECT_TIMEOUT = "connect timeout"
    TIMEOUT = "timeout"  # connected, but the answer did not come in time
    TLS_VERIFICATION = "TLS verification"
    TLS = "TLS"
    DNS = "DNS"
    REFUSED = "refused"
    CLOSED = "closed"
    INVALID_URL = "invalid URL"
    OTHER = "other"

    @property
    def timed_out(self) -> bool:
        return self in (NoAnswer.CONNECT_TIMEOUT, NoAnswer.TIMEOUT)


def no_answer(exc: BaseException) -> NoAnswer:
    """What kind of failure an exception from a request (requests, urllib3 or the socket) is."""
    import socket
    import ssl

    chain = _chain(exc)
    kinds = {type(e).__name__ for e in chain}
    if kinds & {"ConnectTimeout", "ConnectTimeoutError"} and not kinds & {"NewConnectionError"}:
        return NoAnswer.CONNECT_TIMEOUT
    if any(isinstance(e, TimeoutError) for e in chain) or kinds & {"ReadTimeout", "Timeout"}:
        return NoAnswer.TIMEOUT
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        return NoAnswer.TLS_VERIFICATION
    if any(isinstance(e, ssl.SSLError) for e in chain) or "SSLError" in kinds:
        return NoAnswer.TLS
    if any(isinstance(e, socket.gaierror) for e in chain) or "NameResolutionError" in kinds:
        return NoAnswer.DNS
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return NoAnswer.REFUSED
    if kinds & {"RemoteDisconnected", "IncompleteRead", "ConnectionResetError", "BrokenPipeError"}:
        return NoAnswer.CLOSED
    if kinds & {"InvalidURL", "MissingSchema", "InvalidSchema", "LocationParseError"}:
        return NoAnswer.INVALID_URL
    return NoAnswer.OTHER


def describe_network_error(exc: BaseException, timeout: float, *, url: str | None = None) -> str:
    """One short reason for a request that got no HTTP answer, the same wording everywhere:
    e.g. ``connection refused`` rather than urllib3's essay. Callers add the host and what the
    user can do about it."""
    import ssl

    chain = _chain(exc)
    kind = no_answer(exc)
    if kind is NoAnswer.CONNECT_TIMEOUT:
        return f"could not connect within {min(timeout, MAX_CONNECT_TIMEOUT):g} s"
    if kind is NoAnswer.TIMEOUT:
        return f"no answer within {timeout:g} s"
    if kind is NoAnswer.TLS_VERIFICATION:
        verify = next(e for e in chain if isinstance(e, ssl.SSLCertVerificationError))
        return f"TLS verification failed: {verify.verify_message or 'certificate verify failed'}"
    if kind is NoAnswer.TLS:
        return f"TLS error: {_innermost_text(chain)}"
    if kind is NoAnswer.DNS:
        name = _hostname(url) if url else None
        return f"cannot resolve host {name!r}" if name else "cannot resolve the host name"
    if kind is NoAnswer.REFUSED:
        return "connection refused"
    if kind is NoAnswer.CLOSED:
        return "the connection was closed without an answer"
    if kind is NoAnswer.INVALID_URL:
        return f"invalid URL: {_innermost_text(chain)}"
    return _innermost_text(chain)


def _innermost_text(chain: list[BaseException]) -> str:
    for exc in reversed(chain):
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror[:1].lower() + exc.strerror[1:]
    text = str(chain[-1]) if chain else ""
    return text.splitlines()[0][:200] if text else type(chain[0]).__name__


# -- a request without requests (shell completion) -------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, whichever library fetched it."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


def fetch(
    method: str, url: str, headers: Mapping[str, str], *, deadline: float, max_body: int
) -> Answer:
    """One request with the standard library, never following a redirect, ended at ``deadline``
    seconds (connect, headers and body together). Raises OSError on network trouble."""
    import http.client

    parts = check_http_url(url, "URL", allow_userinfo=False)
    target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    with Deadline(deadline) as limit:
        if parts.scheme == "https":
            context = verifying_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=deadline, context=context
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=deadline)
        try:
            conn.connect()
            limit.watch(conn.sock)
            body = b"" if method == "POST" else None
            conn.request(method, target, body=body, headers={"User-Agent": USER_AGENT, **headers})
            response = conn.getresponse()
            data = response.read(max_body)
        finally:
            conn.close()
    if limit.expired:
        raise DeadlineExceeded(f"no complete answer within {deadline:g} s")
    return Answer(response.status, data, {k.lower(): v for k, v in response.getheaders()})


def redirect_target(answer_headers: Mapping[str, Any], base: str) -> str:
    """The origin a 3xx answer points at, for the message that it was not followed."""
    from urllib.parse import urljoin

    location = str(answer_headers.get("location") or answer_headers.get("Location") or "")
    return origin(urljoin(base, location)) if location else "(no Location header)"
