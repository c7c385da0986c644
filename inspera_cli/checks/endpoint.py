"""The endpoint's checks: whether Inspera's validation of a subscription to it would pass.

HTTPS, DNS (a public address, unless the tenant runs on this machine too), the TLS certificate,
and a signed ``verification`` POST answered 200 within Inspera's limit.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

from inspera_cli.checks.certificate import certificate_check
from inspera_cli.checks.result import FAIL, PASS, TUNNEL_HINT, Check, skipped
from inspera_cli.network import check_http_url, is_loopback_url

# Inspera gives an endpoint this long to answer its validation POST (and every delivery).
VALIDATION_TIMEOUT = 10.0

ENDPOINT_HTTPS = "endpoint uses HTTPS"
ENDPOINT_DNS = "endpoint DNS is public"
ENDPOINT_TLS = "endpoint TLS certificate"
ENDPOINT_VALIDATION = "endpoint answers validation"


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
    from inspera_cli.sending import new_session, post, signed_headers
    from inspera_cli.webhook_body import verification_body

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
        if result.no_answer is not None and result.no_answer.timed_out:
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
