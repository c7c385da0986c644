"""The checks behind `doctor`: settings, tenant, credentials, events API, and whether an endpoint
would pass Inspera's validation. Each check is a ``Check``; rendering is the command's job.

No Typer, no Rich; ``requests`` is imported only when a check needs it.
"""

from __future__ import annotations

import ipaddress
import math
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from inspera_cli.errors import APIError, CredentialsError, InsperaError, NetworkError
from inspera_cli.network import ca_bundle as network_ca_bundle
from inspera_cli.network import check_http_url, is_loopback_url, verifying_context

if TYPE_CHECKING:
    from inspera_cli.client import InsperaClient

# Inspera gives an endpoint this long to answer its validation POST (and every delivery).
VALIDATION_TIMEOUT = 10.0
# A certificate that expires sooner than this passes, with a reminder.
RENEW_WITHIN_DAYS = 14
TUNNEL_HINT = "a tunnel (`inspera-hooks listen --tunnel cloudflared`)"

SETTINGS = "settings"
TENANT = "tenant reachable"
CREDENTIALS = "credentials accepted"
EVENTS = "events API answers"
ENDPOINT_HTTPS = "endpoint uses HTTPS"
ENDPOINT_DNS = "endpoint DNS is public"
ENDPOINT_TLS = "endpoint TLS certificate"
ENDPOINT_VALIDATION = "endpoint answers validation"

CheckStream = Generator["Check", None, bool]


class CheckStatus(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"  # could not run because an earlier check failed


PASS, FAIL, SKIP = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.SKIP


@dataclass(frozen=True)
class Check:
    """One line of the checklist: what was checked, how it went, what was seen, how to fix it
    (or, for a check that passed, a note)."""

    check: str
    status: CheckStatus
    detail: str
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is PASS

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status.value, "ok": self.ok, "detail": self.detail,
                "fix": self.fix}


def skipped(check: str, why: str) -> Check:
    """A check that could not run because an earlier one failed."""
    return Check(check, SKIP, f"skipped: {why}")


def run_checks(
    client_factory: Callable[[], InsperaClient] | None = None,
    *,
    endpoint: str | None = None,
    secret: str | None = None,
    validation_timeout: float = VALIDATION_TIMEOUT,
    ca_bundle: str | None = None,
) -> list[Check]:
    """Every check, in order (see ``iter_checks``)."""
    return list(
        iter_checks(
            client_factory,
            endpoint=endpoint,
            secret=secret,
            validation_timeout=validation_timeout,
            ca_bundle=ca_bundle,
        )
    )


def iter_checks(
    client_factory: Callable[[], InsperaClient] | None = None,
    *,
    endpoint: str | None = None,
    secret: str | None = None,
    validation_timeout: float = VALIDATION_TIMEOUT,
    ca_bundle: str | None = None,
) -> Iterator[Check]:
    """Yield each check as it completes: the tenant's, then (with ``endpoint``) the endpoint's.

    ``client_factory`` makes the client (default: ``InsperaClient()`` from the environment and
    profile); an error while making it fails the settings check. ``secret`` signs the validation
    POST (else a throwaway secret does); ``validation_timeout`` is Inspera's limit for the answer;
    ``ca_bundle`` overrides the trusted CAs (default: ``REQUESTS_CA_BUNDLE``, else certifi's).
    """
    if endpoint is not None:
        check_endpoint_url(endpoint)
    tenant_url = yield from tenant_checks(client_factory, ca_bundle=ca_bundle)
    if endpoint is not None:
        on_loopback = tenant_url is not None and resolves_to_loopback(urlsplit(tenant_url).hostname or "")
        yield from endpoint_checks(
            endpoint,
            secret,
            tenant_on_loopback=on_loopback,
            validation_timeout=validation_timeout,
            ca_bundle=ca_bundle,
        )


# -- the tenant ------------------------------------------------------------------------------------


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


# -- the endpoint ----------------------------------------------------------------------------------


def check_endpoint_url(endpoint: str) -> None:
    """Refuse (UsageError) an endpoint that is not an http(s) URL with a host."""
    check_http_url(endpoint, "--endpoint")


def endpoint_checks(
    endpoint: str,
    secret: str | None = None,
    *,
    tenant_on_loopback: bool = False,
    validation_timeout: float = VALIDATION_TIMEOUT,
    ca_bundle: str | None = None,
) -> Iterator[Check]:
    """HTTPS, DNS, TLS certificate, and the validation POST, as Inspera would see the endpoint.

    ``tenant_on_loopback``: the tenant runs on this machine (the sandbox), so a private address
    is reachable for it, and a plain-http endpoint on this machine is what the sandbox calls.
    """
    check_endpoint_url(endpoint)
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    local_http = not https and tenant_on_loopback and is_loopback_url(endpoint)
    if https:
        yield Check(ENDPOINT_HTTPS, PASS, "https")
    elif local_http:
        yield Check(ENDPOINT_HTTPS, PASS, "plain http on this machine: fine with a tenant on "
                    "this machine too (the sandbox); Inspera itself calls HTTPS endpoints only")
    else:
        yield Check(
            ENDPOINT_HTTPS,
            FAIL,
            "plain http: Inspera calls HTTPS endpoints only",
            f"serve it over HTTPS with a certificate from a public CA, or use {TUNNEL_HINT}",
        )
    dns, resolved = _dns(host, port, tenant_on_loopback)
    yield dns
    tls_ok = True
    if local_http:
        yield Check(ENDPOINT_TLS, PASS, "none needed: plain http on this machine")
    elif not https:
        yield skipped(ENDPOINT_TLS, "the endpoint is not HTTPS")
    elif not resolved:
        yield skipped(ENDPOINT_TLS, "the host does not resolve")
    else:
        tls = certificate_check(
            ENDPOINT_TLS, host, port, timeout=validation_timeout, ca_bundle=ca_bundle, what="the endpoint"
        )
        tls_ok = tls.ok
        yield tls
    if not resolved:
        yield skipped(ENDPOINT_VALIDATION, "the host does not resolve")
    elif not tls_ok:
        yield skipped(ENDPOINT_VALIDATION, "the TLS certificate is not valid, so Inspera would not connect")
    else:
        yield validation_check(endpoint, secret, validation_timeout=validation_timeout, ca_bundle=ca_bundle)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)


def resolve(host: str, port: int = 443) -> list[str]:
    """The addresses a host name resolves to (raises OSError when it does not)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolves_to_loopback(host: str) -> bool:
    """True if every address of ``host`` is a loopback address (the tenant is on this machine)."""
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        addresses = resolve(host)
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(_address(a).is_loopback for a in addresses)


def dns_check(host: str, port: int = 443, *, tenant_on_loopback: bool = False) -> Check:
    """The host resolves, and to at least one public address (unless the tenant is on loopback)."""
    return _dns(host, port, tenant_on_loopback)[0]


def _dns(host: str, port: int, tenant_on_loopback: bool) -> tuple[Check, bool]:
    """The DNS check, and whether the host resolved at all."""
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        fix = "check the host name, and that its DNS record is published"
        return Check(ENDPOINT_DNS, FAIL, f"cannot resolve {host}: {reason}", fix), False
    shown = ", ".join(addresses)
    if any(_address(a).is_global for a in addresses):
        return Check(ENDPOINT_DNS, PASS, f"{host} resolves to {shown}"), True
    if tenant_on_loopback:
        detail = (
            f"{host} resolves only to private or loopback addresses ({shown}); fine here, since the "
            "tenant runs on this machine too"
        )
        return Check(ENDPOINT_DNS, PASS, detail), True
    detail = f"{host} resolves only to private or loopback addresses ({shown}): Inspera cannot reach it"
    fix = f"expose the receiver publicly: {TUNNEL_HINT}, or a public host name"
    return Check(ENDPOINT_DNS, FAIL, detail, fix), True


# -- TLS certificates ------------------------------------------------------------------------------


# OpenSSL's X509_V_ERR_* codes that deserve their own explanation.
_EXPIRED = 10
_NOT_YET_VALID = 9
_SELF_SIGNED = (18, 19)
_UNKNOWN_ISSUER = (2, 20, 21)
_HOSTNAME_MISMATCH = 62


def certificate_check(
    name: str,
    host: str,
    port: int,
    *,
    timeout: float,
    ca_bundle: str | None = None,
    what: str = "the server",
) -> Check:
    """Verify the server's certificate as an HTTPS client would; on success say when it expires."""
    context = verifying_context(ca_bundle)
    try:
        der = _peer_certificate(host, port, context, timeout)
    except ssl.SSLCertVerificationError as exc:
        return _certificate_failure(name, host, port, exc, timeout, what)
    except ssl.SSLError as exc:
        return Check(
            name,
            FAIL,
            f"the TLS handshake with {host}:{port} failed: {exc.reason or exc}",
            f"is {what} serving HTTPS on port {port}?",
        )
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or "timed out"
        return Check(
            name,
            FAIL,
            f"cannot connect to {host}:{port}: {reason}",
            f"is {what} running, and is port {port} open to the internet?",
        )
    not_after = certificate_not_after(der)
    days = math.floor((not_after - datetime.now(UTC)).total_seconds() / 86400)
    detail = f"valid, expires in {_days(days)} ({not_after:%Y-%m-%d})"
    if days < RENEW_WITHIN_DAYS:
        return Check(name, PASS, detail, f"the certificate expires in {_days(days)}: renew it soon")
    return Check(name, PASS, detail)


def _peer_certificate(host: str, port: int, context: ssl.SSLContext, timeout: float) -> bytes:
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server sent no certificate")
    return der


def _unverified_certificate(host: str, port: int, timeout: float) -> bytes | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        return _peer_certificate(host, port, context, timeout)
    except (OSError, UnicodeError):
        return None


def _certificate_failure(
    name: str, host: str, port: int, exc: ssl.SSLCertVerificationError, timeout: float, what: str
) -> Check:
    code = exc.verify_code
    if code == _EXPIRED:
        der = _unverified_certificate(host, port, timeout)
        if der is not None:
            not_after = certificate_not_after(der)
            ago = math.floor((datetime.now(UTC) - not_after).total_seconds() / 86400)
            when = "today" if ago <= 0 else f"{_days(ago)} ago"
            return Check(
                name,
                FAIL,
                f"the certificate of {host} expired on {not_after:%Y-%m-%d %H:%M} UTC",
                f"certificate expired {when}: renew it and reload {what}",
            )
        return Check(name, FAIL, f"the certificate of {host} has expired", f"renew it and reload {what}")
    if code == _NOT_YET_VALID:
        return Check(
            name, FAIL, f"the certificate of {host} is not valid yet", f"is the clock of {what} right?"
        )
    if code in _SELF_SIGNED:
        return Check(
            name,
            FAIL,
            f"the certificate of {host} is self-signed",
            "Inspera trusts only certificates from public CAs: get one (e.g. Let's Encrypt), "
            f"or use {TUNNEL_HINT}, which brings its own",
        )
    if code in _UNKNOWN_ISSUER:
        return Check(
            name,
            FAIL,
            f"the certificate of {host} is not issued by a trusted CA, or the server does not send its "
            "intermediate certificates",
            "serve the full chain (e.g. fullchain.pem) of a certificate from a public CA",
        )
    if code == _HOSTNAME_MISMATCH:
        return Check(
            name,
            FAIL,
            f"the certificate is not for {host}",
            f"use a certificate whose names include {host}",
        )
    return Check(
        name,
        FAIL,
        f"the certificate of {host} did not verify: {exc.verify_message or exc.reason}",
        "use a valid certificate from a public CA",
    )


def _days(n: int) -> str:
    return "1 day" if n == 1 else f"{n} days"


def _der_item(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at ``pos``."""
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[pos : pos + size], "big")
        pos += size
    return tag, pos, pos + length


def certificate_not_after(der: bytes) -> datetime:
    """The notAfter time of a DER certificate (read directly: the ssl module only shows it for
    certificates that verified, and an expired one does not)."""
    try:
        _, certificate, _ = _der_item(der, 0)
        _, pos, _ = _der_item(der, certificate)  # tbsCertificate
        tag, _, end = _der_item(der, pos)
        if tag == 0xA0:  # explicit version
            pos = end
        for _ in range(3):  # serialNumber, signature, issuer
            _, _, pos = _der_item(der, pos)
        _, validity, _ = _der_item(der, pos)
        _, _, pos = _der_item(der, validity)  # notBefore
        tag, start, end = _der_item(der, pos)
        text = der[start:end].decode("ascii")
        if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ
            year = int(text[:2])
            text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
        return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    except (IndexError, ValueError) as exc:
        raise ValueError("not a DER X.509 certificate") from exc


# -- the validation POST ---------------------------------------------------------------------------


def validation_check(
    endpoint: str,
    secret: str | None = None,
    *,
    validation_timeout: float = VALIDATION_TIMEOUT,
    ca_bundle: str | None = None,
) -> Check:
    """POST a signed ``verification`` body as Inspera does before it accepts a subscription.

    Passes on 200 within ``validation_timeout``; waits twice as long so a slow answer can be timed.
    """
    from inspera_cli.delivery import new_session, post, signed_headers
    from inspera_cli.payload import verification_body

    body = verification_body()
    signing = "the given secret" if secret else "a throwaway secret"
    headers = signed_headers(body, secret or secrets.token_hex(32))
    session = new_session()
    if ca_bundle:
        session.verify = ca_bundle
    wait = 2 * validation_timeout
    try:
        result = post(session, endpoint, body, headers, timeout=wait)
    finally:
        session.close()
    limit = f"Inspera gives up after {validation_timeout:g} s"
    quick = "answer at once and do slow work afterwards (a queue or a background thread)"
    seconds = result.latency_ms / 1000
    status = result.status
    if status is None:
        error = result.error or "no answer"
        if "within" in error:
            return Check(ENDPOINT_VALIDATION, FAIL, f"no answer: {error}", f"{limit}: {quick}")
        return Check(
            ENDPOINT_VALIDATION,
            FAIL,
            f"no answer: {error}",
            "is the receiver running, and reachable at this URL?",
        )
    answered = f"answered {status} {result.reason}".rstrip() + f" in {_duration(seconds)}"
    if status == 200 and seconds > validation_timeout:
        return Check(ENDPOINT_VALIDATION, FAIL, answered, f"took {seconds:.1f} s: {limit}; {quick}")
    if status == 200:
        return Check(ENDPOINT_VALIDATION, PASS, f"{answered} (signed with {signing})")
    said = f" ({result.answer_excerpt[:80]})" if result.answer_excerpt else ""
    return Check(ENDPOINT_VALIDATION, FAIL, f"{answered}{said}", _status_fix(status, secret is not None))


def _status_fix(status: int, real_secret: bool) -> str:
    if status in (401, 403):
        if not real_secret:
            return (
                f"answered {status} to a request signed with a throwaway secret: pass the subscription's "
                "real secret (--secret-env VAR) so doctor signs like Inspera"
            )
        return (
            f"answered {status} to a request signed with the given secret: the receiver checks another "
            "secret, or verifies parsed JSON instead of the raw body (try `inspera-hooks verify`)"
        )
    if status == 404:
        return f"answered {status}: is the path right? Inspera POSTs to exactly this URL"
    if status == 405:
        return f"answered {status}: the receiver does not take POST on this path"
    if 300 <= status < 400:
        return f"answered {status} (a redirect): Inspera does not follow redirects; subscribe the final URL"
    if 200 <= status < 300:
        return f"answered {status}: Inspera accepts only 200"
    if status >= 500:
        return f"answered {status}: the receiver failed; check its logs"
    return f"answered {status}: answer the verification request with 200"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
