"""The TLS certificate check, for the tenant and for an endpoint: verified as an HTTPS client
would, with the reason a certificate fails in words (expired, self-signed, wrong host, ...)."""

from __future__ import annotations

import math
import ssl
from datetime import UTC, datetime

from inspera_cli.checks.result import FAIL, PASS, TUNNEL_HINT, Check
from inspera_cli.network import verifying_context
from inspera_cli.tls import certificate_not_after, peer_certificate, unverified_certificate

# A certificate that expires sooner than this passes, with a reminder.
RENEW_WITHIN_DAYS = 14


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
        der = peer_certificate(host, port, context, timeout)
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


def _certificate_failure(
    name: str, host: str, port: int, exc: ssl.SSLCertVerificationError, timeout: float, what: str
) -> Check:
    code = exc.verify_code
    if code == _EXPIRED:
        der = unverified_certificate(host, port, timeout)
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


