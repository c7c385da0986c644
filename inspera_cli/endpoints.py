"""Which subscription endpoints Inspera can call: one rule for `create`, `apply` and `listen`."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_problem(endpoint: str, *, allow_http: bool = False) -> str | None:
    """Why Inspera would not call this endpoint, or None.

    Inspera calls HTTPS only; plain http is let through for loopback (the sandbox, local tests)
    and when the user insists (``allow_http``).
    """
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"endpoint {endpoint!r} is not an http(s) URL"
    if parts.scheme == "http" and not allow_http and not is_loopback_url(endpoint):
        return f"endpoint {endpoint} is plain http: Inspera calls HTTPS endpoints only"
    return None
