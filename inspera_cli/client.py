"""Every HTTP call to the Inspera API: one Session per client, retries, domain errors.

Knows nothing of Typer or Rich: the CLI, the tests and other programs use it alike.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from inspera_cli.api_models import (
    EventType,
    Subscription,
    parse_event_types,
    parse_subscription,
    parse_subscriptions,
)
from inspera_cli.auth import TokenCache, Tokens, with_bearer
from inspera_cli.config import Settings, resolve_settings
from inspera_cli.errors import APIError, CredentialsError, NetworkError, NotFoundError, SubscriptionNotListed
from inspera_cli.network import Answer, describe_network_error, host_of, without_userinfo
from inspera_cli.redaction import REDACTED, redacted_logger

if TYPE_CHECKING:
    from collections.abc import Mapping

    import requests

__all__ = ["EventType", "InsperaClient", "Subscription", "make_session"]

log = redacted_logger("inspera_cli.http")

# Inspera validates the endpoint (up to 10 s) before it answers a create.
CREATE_TIMEOUT = 20.0
# When a create answers empty, how long to wait between listings for the new subscription.
LIST_LAG_DELAYS = (0.5, 1.0)
# JSON fields whose values are never logged, whatever their name's case.
SECRET_FIELD_WORDS = ("token", "secret", "key", "code", "password", "authorization")


def make_session() -> requests.Session:
    """The one Session factory (``requests_session.make_session``), kept here for older importers."""
    from inspera_cli.requests_session import make_session as transport_session

    return transport_session()


# What the user can do, by the start of the shared wording.
_HINTS = {
    "no answer within": " (raise it with --timeout)",
    "could not connect within": ": is the URL right? (raise the limit with --timeout)",
    "TLS": "; for a private CA set REQUESTS_CA_BUNDLE",
    "cannot resolve": ": is the URL right?",
    "connection refused": ": is the URL right and the server up?",
}


def network_error(exc: BaseException, url: str, timeout: float) -> NetworkError:
    """A failed request as a NetworkError: the host, the shared wording, and what to do about it."""
    reason = describe_network_error(exc, timeout, url=url)
    hint = next((h for start, h in _HINTS.items() if reason.startswith(start)), "")
    return NetworkError(f"{host_of(url)}: {reason}{hint}")


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
        settings = resolve_settings(url, client_id, api_key, token=token, profile=profile, timeout=timeout)
        self._setup(settings, None)

    @classmethod
    def from_settings(cls, settings: Settings, token_cache: TokenCache | None = None) -> InsperaClient:
        """A client on settings already resolved (e.g. the embedded sandbox of `demo`)."""
        client = cls.__new__(cls)
        client._setup(settings, token_cache)
        return client

    def _setup(self, settings: Settings, token_cache: TokenCache | None) -> None:
        self.settings = settings
        self.session = make_session()
        self.tokens = Tokens(settings, token_cache)

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.settings.url:
            raise CredentialsError("no tenant URL: pass --url, set INSPERA_URL, or run `inspera-hooks login`")
        return self.settings.url

    @property
    def token_cache(self) -> TokenCache:
        return self.tokens.cache

    @property
    def token_exchanges(self) -> int:
        return self.tokens.exchanges

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> InsperaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _log_exchange(self, response: requests.Response, elapsed: float, body: Any) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        request = response.request
        headers = {
            k: (REDACTED if k.lower() in ("authorization", "code") else v) for k, v in request.headers.items()
        }
        log.debug("> %s %s %s", request.method, without_userinfo(request.url or ""), headers)
        if body is not None:
            log.debug("> %s", json.dumps(_redact_fields(body)))
        log.debug("< %s %s (%.0f ms)", response.status_code, response.reason, elapsed * 1000)
        text = response.text[:2000]
        if text:
            log.debug("< %s", _redact_json_text(text))

    def _send(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        data: str | None = None,
        timeout: float | None = None,
        allow_redirects: bool = True,
    ) -> requests.Response:
        """One call through the session: GET/DELETE retried, one deadline for it all."""
        import requests

        seconds = max(self.settings.timeout, timeout or 0)
        started = time.monotonic()
        try:
            response = self.session.request(
                method,
                url,
                json=json_body,
                data=data,
                headers=dict(headers or {}),
                timeout=seconds,
                allow_redirects=allow_redirects,
            )
        except requests.RequestException as exc:
            raise network_error(exc, url, seconds) from exc
        self._log_exchange(response, time.monotonic() - started, json_body)
        return response

    def _exchange(self, url: str, headers: Mapping[str, str]) -> Answer:
        # Never follows a redirect: the `code` header (the API key) goes to the tenant only.
        response = self._send("POST", url, headers=headers, data="", allow_redirects=False)
        return Answer(response.status_code, response.content, response.headers)

    def access_token(self, *, refresh: bool = False) -> str:
        """A bearer token: INSPERA_TOKEN, else the cached one, else a fresh exchange."""
        return self.tokens.get(self._exchange, refresh=refresh)

    def check_credentials(self) -> str:
        """One real token exchange, whatever is cached (INSPERA_TOKEN is used as it is)."""
        return self.tokens.get(self._exchange, use_cache=False)

    def forget_token(self) -> bool:
        return self.tokens.forget()

    def request(
        self, method: str, path: str, *, json_body: Any = None, timeout: float | None = None
    ) -> requests.Response:
        """An authenticated API call; refreshes the token once on 401."""
        url = f"{self.url}/api{path}"

        def call(token: str) -> requests.Response:
            headers = {"Authorization": f"Bearer {token}"}
            return self._send(method, url, json_body=json_body, headers=headers, timeout=timeout)

        return with_bearer(self.tokens, self._exchange, call, lambda r: r.status_code)

    def _check(self, response: requests.Response, what: str) -> Any:
        """Raise the right error for a failed answer; return the parsed JSON (None when empty)."""
        from inspera_cli.requests_session import redirect_error_target

        status = response.status_code
        target = redirect_error_target(response)
        if target is not None:
            raise APIError(
                f"{what}: the server answered {status}, a redirect to {target}; not followed "
                "(another origin): is the tenant URL right?",
                status,
            )
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
        except (ValueError, RecursionError):
            raise APIError(
                f"{what}: the server answered {status} with {_describe_body(response)}: is "
                f"{self.url} an Inspera tenant?",
                status,
            ) from None

    # -- the API -----------------------------------------------------------------------------

    def events(self) -> list[EventType]:
        """The event types the tenant supports."""
        response = self.request("GET", "/v1/subscription/events")
        return parse_event_types(self._check(response, "listing event types"))

    def subscriptions(self, event: str | None = None) -> list[Subscription]:
        """The subscriptions of this API user, optionally only those for one event."""
        response = self.request("GET", "/v1/subscription")
        data = self._check(response, "listing subscriptions")
        subs = parse_subscriptions(data if data is not None else [])
        return [s for s in subs if event is None or s.event == event]

    def create(self, event: str, endpoint: str, secret: str) -> Subscription:
        """Register a subscription; Inspera validates the endpoint first. Never retried."""
        response = self.request(
            "POST",
            "/v1/subscription",
            json_body={"event": event, "endpoint": endpoint, "secret": secret},
            timeout=CREATE_TIMEOUT,
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
        from inspera_cli.requests_session import answer_was_lost

        response = self.request("DELETE", f"/v1/subscription/{subscription_id}")
        if response.status_code == 404:
            if answer_was_lost(response):
                return True  # our first try was applied but its answer was lost
            if missing_ok:
                return False
            raise NotFoundError(f"no subscription with id {subscription_id}")
        self._check(response, f"deleting subscription {subscription_id}")
        return True


def _error_detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except (ValueError, RecursionError):
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
        return json.dumps(_redact_fields(json.loads(text)), ensure_ascii=False)
    except (ValueError, RecursionError):
        return text
