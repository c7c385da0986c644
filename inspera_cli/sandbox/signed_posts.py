"""Signed POSTs as the sandbox sends them, over the shared delivery client
(``inspera_cli.delivery_client``: connections, answers, reasons).

Only what is the sandbox's own lives here: its User-Agent and fixed headers, and signing each
body with the subscription's secret.
"""

from __future__ import annotations

from inspera_cli import delivery_client
from inspera_cli.delivery_client import Resolve, Target, header_lines
from inspera_cli.signing import SIGNATURE_HEADER, sign

USER_AGENT = "inspera-hooks-sandbox"
_HEADERS = (("User-Agent", USER_AGENT), ("Accept", "*/*"), ("Content-Type", "application/json"))


def target_for(url: str, resolve: Resolve) -> Target:
    """An endpoint with the sandbox's headers; see ``delivery_client.target_for``."""
    return delivery_client.target_for(url, headers=_HEADERS, resolve=resolve)


def signed_request(target: Target, body: bytes, secret: str) -> bytes:
    """The whole signed POST: Inspera's headers, then the exact body bytes."""
    return target.request(body, header_lines([(SIGNATURE_HEADER, sign(body, secret))]))
