"""The ``requests`` half of the HTTP plumbing: the one Session factory every request goes through.

A session from ``make_session``:
- sends ``User-Agent: inspera-hooks/<version>`` and trusts ``network.ca_bundle()``;
- treats ``timeout=S`` as a deadline for the whole call (connect, headers, body, retries and
  redirects together; ``network.Deadline``), then raises ``requests.Timeout``;
- follows a redirect only to the same origin (scheme, host, port), so no header it sends (the
  bearer token, Inspera's ``code``) ever reaches another origin; callers that must not follow any
  redirect pass ``allow_redirects=False`` as usual;
- never adds credentials of its own: no ~/.netrc, no Basic auth from URL userinfo;
- retries GET and DELETE (not POST) through urllib3's ``Retry``: connection errors and 429, 502,
  503, 504, 3 tries in all, exponential backoff or ``Retry-After`` (seconds or an HTTP date;
  anything else falls back to the backoff), never past the deadline.

Import it lazily (inside functions): it imports ``requests``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import InvalidHeader, MaxRetryError, NewConnectionError, ResponseError
from urllib3.util.retry import Retry

from inspera_cli.network import MAX_CONNECT_TIMEOUT, USER_AGENT, Deadline, DeadlineExceeded, ca_bundle, origin
from inspera_cli.redaction import redacted_logger

log = redacted_logger("inspera_cli.http")

RETRY_METHODS = frozenset({"GET", "DELETE"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
TRIES = 3
BACKOFF = 0.5
MAX_RETRY_AFTER = 30
MAX_REDIRECTS = 5


class _Retry(Retry):
    """urllib3's Retry, within our rules: only GET/DELETE, not past the request's deadline, and a
    Retry-After that is neither seconds nor an HTTP date means the normal backoff."""

    def get_retry_after(self, response: Any) -> float | None:
        try:
            return super().get_retry_after(response)
        except InvalidHeader:
            return None

    def increment(self, method: str | None = None, url: str | None = None, *args: Any, **kwargs: Any) -> Any:
        response = kwargs.get("response")
        error = kwargs.get("error")
        if method is not None and method.upper() not in RETRY_METHODS:
            # A POST is never retried, not even when the connection failed before it was sent.
            raise MaxRetryError(kwargs.get("_pool"), url or "", error or ResponseError("not retried"))  # type: ignore[arg-type]
        retry = super().increment(method, url, *args, **kwargs)
        wait = (retry.get_retry_after(response) if response is not None else None) or retry.get_backoff_time()
        deadline = Deadline.current()
        if deadline is not None and (deadline.expired or wait >= deadline.remaining()):
            raise MaxRetryError(kwargs.get("_pool"), url or "", error or ResponseError("out of time"))  # type: ignore[arg-type]
        status = getattr(response, "status", None)
        log.debug("%s %s: %s; retrying in %.1f s", method, url, status or type(error).__name__, wait)
        return retry


class _WatchedConnection(HTTPConnection):
    """Hands each socket it opens or reuses to the current request's deadline."""

    def _new_conn(self) -> Any:
        sock = super()._new_conn()
        deadline = Deadline.current()
        if deadline is not None:
            deadline.watch(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = Deadline.current()
        if deadline is not None:
            deadline.watch(self.sock)  # a kept-alive connection (a new one is watched as it opens)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _WatchedPool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedHTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedHTTPSPool}
        return manager


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


class Session(requests.Session):
    """See the module docstring; made by ``make_session``."""

    def request(self, method: str | bytes, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        timeout = kwargs.pop("timeout", None)
        if timeout is None or isinstance(timeout, tuple):
            return super().request(method, url, timeout=timeout, **kwargs)
        seconds = float(timeout)
        with Deadline(seconds) as deadline:
            try:
                response = super().request(
                    method, url, timeout=(min(seconds, MAX_CONNECT_TIMEOUT), seconds), **kwargs
                )
            except requests.RequestException:
                if deadline.expired:
                    raise requests.Timeout(f"no complete answer within {seconds:g} s") from DeadlineExceeded()
                raise
        if deadline.expired:  # a body cut short without an error (no Content-Length) is no answer
            response.close()
            raise requests.Timeout(f"no complete answer within {seconds:g} s") from DeadlineExceeded()
        return response

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target is None or resp.request.url is None:
            return target
        if origin(urljoin(resp.request.url, target)) != origin(resp.request.url):
            log.debug("not following a redirect to another origin: %s", origin(urljoin(resp.url, target)))
            return None
        return target


def make_session(*, accept_json: bool = True) -> Session:
    """A new session (keep-alive) with the rules in the module docstring."""
    session = Session()
    session.headers["User-Agent"] = USER_AGENT
    if accept_json:
        session.headers["Accept"] = "application/json"
    session.verify = ca_bundle() or True
    session.auth = _no_auth
    session.max_redirects = MAX_REDIRECTS
    retry = _Retry(
        total=TRIES - 1,
        allowed_methods=RETRY_METHODS,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=BACKOFF,
        retry_after_max=MAX_RETRY_AFTER,
        raise_on_status=False,
        raise_on_redirect=False,
    )
    adapter = _Adapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def answer_was_lost(response: requests.Response) -> bool:
    """Whether an earlier try of this request may have reached the server but lost its answer
    (a DELETE answered 404 after that was applied by the lost try)."""
    retries = getattr(response.raw, "retries", None)
    history = getattr(retries, "history", ()) or ()
    return any(h.error is not None and not isinstance(h.error, NewConnectionError) for h in history)


def redirect_error_target(response: requests.Response) -> str | None:
    """The origin a 3xx answer that was not followed points at (None when it is no redirect)."""
    if not response.is_redirect:
        return None
    return origin(urljoin(response.url, response.headers.get("location", "")))
