"""Every HTTP call to the Inspera API: one Session per client, retries, domain errors.

Knows nothing of Typer or Rich: the CLI, the tests and other programs use it alike.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import requests

from inspera_cli._version import __version__
from inspera_cli.auth import Token, TokenCache, token_from_response
from inspera_cli.config import Settings, resolve_settings
from inspera_cli.errors import APIError, CredentialsError, NetworkError, NotFoundError, SubscriptionNotListed
from inspera_cli.models import (
    EventType,
    Subscription,
    parse_event_types,
    parse_subscription,
    parse_subscriptions,
)

__all__ = ["EventType", "InsperaClient", "Subscription", "make_session"]

log = logging.getLogger("inspera_cli.http")

RETRY_METHODS = frozenset({"GET", "DELETE"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
TRIES = 3
BACKOFF = 0.5
MAX_RETRY_AFTER = 30.0
# Inspera validates the endpoint (up to 10 s) before it answers a create.
CREATE_READ_TIMEOUT = 20.0
# When a create answers empty, how long to wait between listings for the new subscription.
LIST_LAG_DELAYS = (0.5, 1.0)
REDACTED = "***"
MIN_REDACT_LENGTH = 4
# JSON fields whose values are never logged, whatever their name's case.
SECRET_FIELD_WORDS = ("token", "secret", "key", "code", "password", "authorization")


def make_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = f"inspera-hooks/{__version__}"
    session.headers["Accept"] = "application/json"
    return session


def _retry_after(response: requests.Response | None, attempt: int) -> float:
    delay: float = BACKOFF * (2**attempt)
    value = response.headers.get("Retry-After") if response is not None else None
    if value:
        try:
            delay = float(value)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if value else None
            if parsed is not None:
                delay = parsed.timestamp() - time.time()
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def _network_error(exc: requests.RequestException, url: str, timeout: float) -> NetworkError:
    host = urlsplit(url).netloc
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return NetworkError(
            f"TLS verification failed for {host}: {_short_ssl(text)}; for a private CA set REQUESTS_CA_BUNDLE"
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return NetworkError(f"no answer from {host} within {timeout:g} s (raise it with --timeout)")
    if "NameResolution" in text or "Name or service not known" in text or "getaddrinfo" in text:
        name = urlsplit(url).hostname
        return NetworkError(f"cannot resolve host {name!r}: is the URL right?")
    if "Connection refused" in text or "ConnectionRefused" in text:
        return NetworkError(f"connection refused by {host}: is the URL right and the server up?")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return NetworkError(f"connection to {host} failed: {_short_ssl(text)}")
    return NetworkError(f"request to {host} failed: {type(exc).__name__}")


def _short_ssl(text: str) -> str:
    for marker in (
        "certificate verify failed",
        "CERTIFICATE_VERIFY_FAILED",
        "hostname mismatch",
        "self-signed certificate",
        "certificate has expired",
        "Connection aborted",
        "Connection reset",
        "RemoteDisconnected",
    ):
        if marker in text:
            return marker
    return text.splitlines()[0][:200] if text else "unknown error"


def _describe_body(response: requests.Response) -> str:
    ctype = response.headers.get("Content-Type", "")
    text = response.text.lstrip()[:200].lower()
    if "html" in ctype or text.startswith(("<!doctype", "<html")):
        return "an HTML page, not JSON"
    if not text:
        return "an empty body"
    return "a body that is not JSON"


class InsperaClient:
    """The Inspera webhooks API: events, subscriptions, create, delete.

    Arguments left out are read from the environment and the config profile
    (flag > environment > profile > default), as on the command line.
    """

    def __init__(
        self,
        url: str | None = None,
        client_id: str | None = None,
        api_key: str | None = None,
        *,
        token: str | None = None,
        profile: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.settings: Settings = resolve_settings(
            url, client_id, api_key, token=token, profile=profile, timeout=timeout
        )
        self.session = make_session()
        self.token_cache = TokenCache()
        self._token: str | None = self.settings.token
        self.token_exchanges = 0

    @classmethod
    def from_settings(cls, settings: Settings, token_cache: TokenCache | None = None) -> InsperaClient:
        """A client on settings already resolved (e.g. the embedded sandbox of `demo`)."""
        client = cls.__new__(cls)
        client.settings = settings
        client.session = make_session()
        client.token_cache = token_cache or TokenCache()
        client._token = settings.token
        client.token_exchanges = 0
        return client

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.settings.url:
            raise CredentialsError("no tenant URL: pass --url, set INSPERA_URL, or run `inspera-hooks login`")
        return self.settings.url

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> InsperaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _secrets(self) -> Iterable[str]:
        return [s for s in (self.settings.api_key, self._token, self.settings.token) if s]

    def redact(self, text: str) -> str:
        """A safety net under the field-based redaction: known secret values, also JSON-escaped.

        Values shorter than MIN_REDACT_LENGTH are left to the field-based redaction: replacing
        every "k" would only garble the log.
        """
        for secret in self._secrets():
            if len(secret) < MIN_REDACT_LENGTH:
                continue
            for form in {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}:
                text = text.replace(form, REDACTED)
        return text

    def _log_exchange(self, response: requests.Response, elapsed: float, body: Any) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        request = response.request
        headers = {
            k: (REDACTED if k.lower() in ("authorization", "code") else v) for k, v in request.headers.items()
        }
        log.debug("> %s %s %s", request.method, self.redact(request.url or ""), headers)
        if body is not None:
            log.debug("> %s", self.redact(json.dumps(_redact_fields(body))))
        log.debug("< %s %s (%.0f ms)", response.status_code, response.reason, elapsed * 1000)
        text = response.text[:2000]
        if text:
            log.debug("< %s", self.redact(_redact_json_text(text)))

    def _send(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        data: str | None = None,
        read_timeout: float | None = None,
    ) -> tuple[requests.Response, bool]:
        """Send with retries for GET/DELETE; returns (response, whether an earlier try was lost)."""
        timeout = self.settings.timeout
        tries = TRIES if method in RETRY_METHODS else 1
        lost = False
        for attempt in range(tries):
            started = time.monotonic()
            try:
                response = self.session.request(
                    method,
                    url,
                    json=json_body,
                    data=data,
                    headers=headers,
                    params=params,
                    timeout=(min(timeout, 10.0), max(timeout, read_timeout or 0)),
                )
            except requests.exceptions.ConnectionError as exc:
                if attempt + 1 >= tries or isinstance(exc, requests.exceptions.SSLError):
                    raise _network_error(exc, url, timeout) from exc
                log.debug("%s %s failed (%s); retrying", method, url, type(exc).__name__)
                lost = True
                time.sleep(_retry_after(None, attempt))
                continue
            except requests.RequestException as exc:
                raise _network_error(exc, url, timeout) from exc
            self._log_exchange(response, time.monotonic() - started, json_body)
            if response.status_code in RETRY_STATUSES and attempt + 1 < tries:
                delay = _retry_after(response, attempt)
                log.debug("%s answered %s; retrying in %.1f s", url, response.status_code, delay)
                time.sleep(delay)
                continue
            return response, lost
        raise AssertionError("unreachable")  # pragma: no cover

    def _exchange(self) -> str:
        s = self.settings
        url = self.url
        if not s.client_id:
            raise CredentialsError(
                "no client id: pass --client-id, set INSPERA_CLIENT_ID, or run `inspera-hooks login`"
            )
        if not s.api_key:
            raise CredentialsError(
                "no API key: set INSPERA_API_KEY (the API authorization code from Inspera) or "
                "run `inspera-hooks login`"
            )
        response, _ = self._send(
            "POST",
            f"{url}/api/authenticate/token/",
            params={"grant_type": "authorization_code", "client_id": s.client_id},
            headers={"code": s.api_key, "Content-Type": "application/x-www-form-urlencoded"},
            data="",
        )
        self.token_exchanges += 1
        token: Token = token_from_response(response, url)
        self.token_cache.put(url, s.client_id, token)
        return token.access_token

    def access_token(self, *, refresh: bool = False) -> str:
        """A bearer token: INSPERA_TOKEN, else the cached one, else a fresh exchange."""
        if self.settings.token:
            return self.settings.token
        if self._token and not refresh:
            return self._token
        url, client_id = self.url, self.settings.client_id
        if client_id and not refresh:
            cached = self.token_cache.get(url, client_id)
            if cached:
                self._token = cached.access_token
                return self._token
        self._token = self._exchange()
        return self._token

    def forget_token(self) -> bool:
        self._token = None
        if self.settings.url and self.settings.client_id:
            return self.token_cache.forget(self.settings.url, self.settings.client_id)
        return False

    def request(
        self, method: str, path: str, *, json_body: Any = None, read_timeout: float | None = None
    ) -> tuple[requests.Response, bool]:
        """An authenticated API call; refreshes the token once on 401."""
        url = f"{self.url}/api{path}"
        for refreshed in (False, True):
            headers = {"Authorization": f"Bearer {self.access_token(refresh=refreshed)}"}
            response, lost = self._send(
                method, url, json_body=json_body, headers=headers, read_timeout=read_timeout
            )
            if response.status_code != 401:
                return response, lost
            if self.settings.token:
                raise CredentialsError("Inspera rejected INSPERA_TOKEN (401): set a valid token or unset it")
            log.debug("401 from %s: refreshing the token once", url)
        raise CredentialsError(
            "Inspera rejected a freshly issued token (401): does this API client have access to webhooks?"
        )

    def _check(self, response: requests.Response, what: str) -> Any:
        """Raise the right error for a failed answer; return the parsed JSON (None when empty)."""
        status = response.status_code
        if status >= 400:
            detail = _error_detail(response)
            if status == 403:
                hint = "the API user needs webhook permissions"
                raise APIError(f"{what}: forbidden (403){detail}; {hint}", status)
            reason = f"{status} {response.reason}".strip()
            raise APIError(f"{what}: the server answered {reason}{detail}", status)
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError:
            raise APIError(
                f"{what}: the server answered {status} with {_describe_body(response)}: is "
                f"{self.url} an Inspera tenant?",
                status,
            ) from None

    # -- the API -----------------------------------------------------------------------------

    def events(self) -> list[EventType]:
        """The event types the tenant supports."""
        response, _ = self.request("GET", "/v1/subscription/events")
        return parse_event_types(self._check(response, "listing event types"))

    def subscriptions(self, event: str | None = None) -> list[Subscription]:
        """The subscriptions of this API user, optionally only those for one event."""
        response, _ = self.request("GET", "/v1/subscription")
        data = self._check(response, "listing subscriptions")
        subs = parse_subscriptions(data if data is not None else [])
        return [s for s in subs if event is None or s.event == event]

    def create(self, event: str, endpoint: str, secret: str) -> Subscription:
        """Register a subscription; Inspera validates the endpoint first. Never retried."""
        response, _ = self.request(
            "POST",
            "/v1/subscription",
            json_body={"event": event, "endpoint": endpoint, "secret": secret},
            read_timeout=CREATE_READ_TIMEOUT,
        )
        if response.status_code >= 400:
            detail = _error_detail(response)
            raise APIError(
                f"Inspera refused the subscription to {event} at {endpoint} ({response.status_code}){detail}",
                response.status_code,
            )
        data = self._check(response, "creating a subscription")
        if isinstance(data, dict):
            created = parse_subscription(data) or parse_subscription(
                next((v for v in data.values() if isinstance(v, dict)), None)
            )
            if created:
                return created
        # An empty (or unrecognised) answer: find the new subscription by listing, giving the
        # tenant a moment in case its list lags behind.
        for delay in (0.0, *LIST_LAG_DELAYS):
            time.sleep(delay)
            matches = [s for s in self.subscriptions(event) if s.endpoint == endpoint]
            if matches:
                return max(matches, key=lambda s: s.subscription_id)
        raise SubscriptionNotListed(
            f"Inspera accepted the subscription to {event} at {endpoint} but does not list it; "
            "check `inspera-hooks list` in a moment"
        )

    def delete(self, subscription_id: int, *, missing_ok: bool = False) -> bool:
        """Remove a subscription; False if it did not exist (with ``missing_ok``)."""
        response, lost = self.request("DELETE", f"/v1/subscription/{subscription_id}")
        if response.status_code == 404:
            if lost:
                return True  # our first try was applied but its answer was lost
            if missing_ok:
                return False
            raise NotFoundError(f"no subscription with id {subscription_id}")
        self._check(response, f"deleting subscription {subscription_id}")
        return True


def _error_detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        kind = _describe_body(response)
        return f" with {kind}" if kind != "an empty body" else ""
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("error", "message", "description", "detail") if body.get(k)]
        if parts:
            return ": " + " — ".join(dict.fromkeys(parts))
    return ""


def _redact_fields(data: Any) -> Any:
    """A copy of JSON data with the values of secret-looking fields replaced."""
    if isinstance(data, dict):
        return {
            k: REDACTED
            if any(word in str(k).lower() for word in SECRET_FIELD_WORDS) and v is not None
            else _redact_fields(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [_redact_fields(v) for v in data]
    return data


def _redact_json_text(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text
    return json.dumps(_redact_fields(data), ensure_ascii=False)
