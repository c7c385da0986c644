"""Which subscription endpoints Inspera can call: one rule for `create`, `apply` and `listen`."""

from __future__ import annotations

from inspera_cli.errors import UsageError
from inspera_cli.network import check_http_url, is_loopback_url

__all__ = ["endpoint_problem", "is_loopback_url"]


def endpoint_problem(endpoint: str, *, allow_http: bool = False) -> str | None:
    """Why Inspera would not call this endpoint, or None.

    Inspera calls HTTPS only; plain http is let through for loopback (the sandbox, local tests)
    and when the user insists (``allow_http``).
    """
    try:
        parts = check_http_url(endpoint, "endpoint")
    except UsageError as exc:
        return str(exc)
    if parts.scheme == "http" and not allow_http and not is_loopback_url(endpoint):
        return f"endpoint {endpoint} is plain http: Inspera calls HTTPS endpoints only"
    return None
