"""The checks behind `doctor`: settings, tenant, credentials, events API, and whether an endpoint
would pass Inspera's validation. Each check is a ``Check``; rendering is the command's job.

Rooms: ``result`` (``Check``, ``CheckStatus``), ``tenant``, ``endpoint``, ``certificate`` (the TLS
check both use; the certificate itself is read by ``inspera_cli.tls``). No Typer, no Rich;
``requests`` is imported only when a check needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from inspera_cli.checks.certificate import certificate_check
from inspera_cli.checks.endpoint import (
    ENDPOINT_DNS,
    ENDPOINT_HTTPS,
    ENDPOINT_TLS,
    ENDPOINT_VALIDATION,
    VALIDATION_TIMEOUT,
    check_endpoint_url,
    dns_check,
    endpoint_checks,
    resolves_to_loopback,
    validation_check,
)
from inspera_cli.checks.result import Check, CheckStatus
from inspera_cli.checks.tenant import CREDENTIALS, EVENTS, SETTINGS, TENANT, tenant_checks

if TYPE_CHECKING:
    from inspera_cli.client import InsperaClient

__all__ = [
    "CREDENTIALS",
    "ENDPOINT_DNS",
    "ENDPOINT_HTTPS",
    "ENDPOINT_TLS",
    "ENDPOINT_VALIDATION",
    "EVENTS",
    "SETTINGS",
    "TENANT",
    "VALIDATION_TIMEOUT",
    "Check",
    "CheckStatus",
    "certificate_check",
    "dns_check",
    "endpoint_checks",
    "iter_checks",
    "run_checks",
    "tenant_checks",
    "validation_check",
]


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
