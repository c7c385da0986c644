"""The token exchange (SPEC §1) and the access-token cache (mode 0600, keyed by URL + client id)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inspera_cli.config import cache_dir, write_private
from inspera_cli.errors import APIError, CredentialsError

if TYPE_CHECKING:
    import requests

log = logging.getLogger("inspera_cli.auth")

# Reuse a cached token until this many seconds before it expires.
EXPIRY_MARGIN = 60.0


@dataclass(frozen=True)
class Token:
    access_token: str
    expires_at: float

    def fresh(self, now: float | None = None) -> bool:
        return (now or time.time()) < self.expires_at - EXPIRY_MARGIN


class TokenCache:
    """Tokens on disk, one per (tenant URL, client id)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "tokens.json"

    @staticmethod
    def key(url: str, client_id: str) -> str:
        return f"{url} {client_id}"

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, url: str, client_id: str) -> Token | None:
        entry = self._load().get(self.key(url, client_id))
        try:
            token = Token(str(entry["access_token"]), float(entry["expires_at"]))  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            return None
        return token if token.fresh() else None

    def put(self, url: str, client_id: str, token: Token) -> None:
        """Cache a token; a cache that cannot be written only costs the next run an exchange."""
        data = self._load()
        data[self.key(url, client_id)] = {
            "access_token": token.access_token,
            "expires_at": token.expires_at,
        }
        self._save(data)

    def forget(self, url: str, client_id: str) -> bool:
        data = self._load()
        if data.pop(self.key(url, client_id), None) is None:
            return False
        return self._save(data)

    def _save(self, data: dict[str, Any]) -> bool:
        try:
            write_private(self.path, json.dumps(data, indent=2).encode("utf-8"))
        except OSError as exc:
            log.warning(
                "inspera-hooks: warning: cannot write the token cache %s (%s); going on without it",
                self.path,
                exc.strerror or exc,
            )
            return False
        return True


def _error_fields(response: requests.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    return str(body.get("error") or ""), str(body.get("description") or body.get("message") or "")


def token_from_response(response: requests.Response, url: str) -> Token:
    """Turn the exchange's answer into a Token or a helpful error (never showing the key)."""
    status = response.status_code
    error, description = _error_fields(response)
    detail = f": {description}" if description else ""
    if status == 200:
        try:
            body = response.json()
            access_token = str(body["access_token"])
            expires_in = float(body.get("expires_in") or 3600)
        except (ValueError, KeyError, TypeError):
            raise APIError(
                f"the token exchange at {url} answered 200 but not with an access_token: "
                "is the URL an Inspera tenant?",
                status,
            ) from None
        return Token(access_token, time.time() + expires_in)
    if status == 401 or error == "invalid_grant":
        raise CredentialsError(
            "Inspera rejected the API key or client id (invalid_grant): check the API key "
            "(INSPERA_API_KEY or the profile's) and the client id, or run `inspera-hooks login` again"
        )
    if status == 409:
        raise CredentialsError(
            f"Inspera refused a new token: multiple tokens for this user (409){detail}; wait for "
            "the other token to expire or revoke it in Inspera, then retry"
        )
    if status == 400:
        raise CredentialsError(
            f"Inspera refused the token request as malformed (400 {error or 'bad request'})"
            f"{detail}; check the client id"
        )
    if status >= 500:
        raise APIError(
            f"Inspera's token service failed ({status} {error or 'server error'}){detail}; try again later",
            status,
        )
    raise APIError(f"the token exchange answered {status}{detail}", status)
