"""The tenant's checks: settings found, tenant reachable, credentials accepted, events API answers."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from inspera_cli.checks.certificate import certificate_check
from inspera_cli.checks.result import FAIL, PASS, Check, CheckStream, skipped
from inspera_cli.errors import APIError, CredentialsError, InsperaError, NetworkError
from inspera_cli.network import ca_bundle as network_ca_bundle

if TYPE_CHECKING:
    from inspera_cli.client import InsperaClient

SETTINGS = "settings"
TENANT = "tenant reachable"
CREDENTIALS = "credentials accepted"
EVENTS = "events API answers"


def tenant_checks(
    client_factory: Callable[[], InsperaClient] | None = None, *, ca_bundle: str | None = None
) -> Generator[Check, None, str | None]:
    """Settings, tenant reachable, credentials, events API; returns the tenant URL if one is set."""
    later = (TENANT, CREDENTIALS, EVENTS)
    try:
        if client_factory is None:
            from inspera_cli.client import InsperaClient

            client = InsperaClient()
        else:
            client = client_factory()
    except InsperaError as exc:
        fix = "fix the setting named above (see `inspera-hooks config show`)"
        yield Check(SETTINGS, FAIL, str(exc), fix)
        for name in later:
            yield skipped(name, "the settings could not be read")
        return None
    settings = client.settings
    yield _settings_check(client)
    if not settings.url:
        for name in later:
            yield skipped(name, "no tenant URL")
        return None
    reachable = yield from _reachable_check(client, ca_bundle)
    has_credentials = bool(settings.token or (settings.client_id and settings.api_key))
    if not reachable:
        yield skipped(CREDENTIALS, "the tenant is not reachable")
        yield skipped(EVENTS, "the tenant is not reachable")
    elif not has_credentials:
        yield skipped(CREDENTIALS, "the settings lack a client id or API key")
        yield skipped(EVENTS, "the settings lack a client id or API key")
    else:
        accepted = yield from _credentials_check(client)
        if accepted:
            yield _events_check(client)
        else:
            yield skipped(EVENTS, "the credentials were not accepted")
    return settings.url


def _settings_check(client: InsperaClient) -> Check:
    s = client.settings
    source = s.sources.get
    found: list[str] = []
    missing: list[str] = []
    if s.url:
        found.append(f"tenant URL {s.url} ({source('url')})")
    else:
        missing.append("tenant URL (--url or INSPERA_URL)")
    if s.token:
        found.append(f"access token ({source('token')})")
    if s.client_id:
        found.append(f"client id {s.client_id} ({source('client_id')})")
    elif not s.token:
        missing.append("client id (--client-id or INSPERA_CLIENT_ID)")
    if s.api_key:
        found.append(f"API key ({source('api_key')})")
    elif not s.token:
        missing.append("API key (INSPERA_API_KEY)")
    found.append(f"profile {s.profile} ({source('profile')})")
    if missing:
        return Check(
            SETTINGS,
            FAIL,
            f"missing {', '.join(missing)}; found {', '.join(found)}",
            "run `inspera-hooks login`, or set INSPERA_URL, INSPERA_CLIENT_ID and INSPERA_API_KEY",
        )
    return Check(SETTINGS, PASS, ", ".join(found))


def _reachable_check(client: InsperaClient, ca_bundle: str | None) -> CheckStream:
    import requests

    from inspera_cli.network import describe_network_error

    url = client.settings.url or ""
    timeout = client.settings.timeout
    parts = urlsplit(url)
    host = parts.hostname or ""
    notes: list[str] = []
    if parts.scheme == "https":
        tls = certificate_check(
            TENANT, host, parts.port or 443, timeout=timeout, ca_bundle=ca_bundle, what="the tenant"
        )
        if not tls.ok:
            yield tls
            return False
        notes.append(f"TLS certificate {tls.detail}")
    else:
        notes.append("plain http: fine for a sandbox on this machine; a real Inspera tenant is https")
    started = time.perf_counter()
    try:
        response = client.session.get(
            f"{url}/",
            timeout=(min(timeout, 10.0), timeout),
            allow_redirects=False,
            verify=network_ca_bundle(ca_bundle) or True,
        )
        response.close()
    except requests.RequestException as exc:
        yield Check(
            TENANT,
            FAIL,
            f"{url}: {describe_network_error(exc, timeout, url=url)}",
            "check the tenant URL (https://<your tenant>.inspera.no) and your network, proxy or VPN",
        )
        return False
    elapsed = (time.perf_counter() - started) * 1000
    answered = f"{url} answered {response.status_code} in {elapsed:.0f} ms"
    yield Check(TENANT, PASS, "; ".join([answered, *notes]))
    return True


def _credentials_check(client: InsperaClient) -> CheckStream:
    settings = client.settings
    if settings.token:
        yield Check(CREDENTIALS, PASS, "using the access token from INSPERA_TOKEN (the events call tests it)")
        return True
    try:
        client.check_credentials()  # a real exchange: a cached token proves nothing about the key
    except CredentialsError as exc:
        yield Check(
            CREDENTIALS,
            FAIL,
            str(exc),
            "check INSPERA_API_KEY (the API authorization code from Inspera) and the client id, "
            "or run `inspera-hooks login` again",
        )
        return False
    except InsperaError as exc:
        yield Check(CREDENTIALS, FAIL, str(exc), _fix_for(exc))
        return False
    yield Check(CREDENTIALS, PASS, f"the tenant issued an access token to client {settings.client_id}")
    return True


def _events_check(client: InsperaClient) -> Check:
    try:
        events = client.events()
    except InsperaError as exc:
        return Check(EVENTS, FAIL, str(exc), _fix_for(exc))
    if not events:
        return Check(
            EVENTS,
            FAIL,
            "the tenant lists no event types",
            "ask Inspera support to enable webhooks for this tenant",
        )
    names = [e.event for e in events]
    shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
    return Check(EVENTS, PASS, f"{len(names)} event types: {shown}")


def _fix_for(exc: InsperaError) -> str:
    if isinstance(exc, APIError) and exc.status == 403:
        return "ask an Inspera administrator to give this API user access to webhooks"
    if isinstance(exc, CredentialsError):
        return "check the API key and client id, or run `inspera-hooks login` again"
    if isinstance(exc, NetworkError):
        return "check the tenant URL and your network; raise --timeout if the tenant is slow"
    return "run with --debug to see the HTTP exchange"
