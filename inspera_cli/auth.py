"""The token rules, in one place for the client and for shell completion.

- The exchange (SPEC §1): ``exchange_request`` builds it, ``token_from_answer`` reads the answer
  (a redirect is an error naming where it pointed: the exchange never follows one).
- The cache (mode 0600, under an exclusive lock): keyed by tenant URL, client id and a SHA-256 of
  the API key (never the key), so a changed or mistyped key is never masked by a cached token;
  reused until 60 s before expiry.
- ``Tokens``: INSPERA_TOKEN, else the cache, else an exchange; ``with_bearer`` calls the API with
  it and refreshes once on 401.

No HTTP library here: the caller sends the exchange (``requests`` in the client, the standard
library in completion) and hands back a ``network.Answer``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from inspera_cli.config import Settings, cache_dir
from inspera_cli.errors import APIError, ConfigError, CredentialsError
from inspera_cli.files import describe_os_error, locked, read_small_text, write_private
from inspera_cli.network import Answer, redirect_target
from inspera_cli.redaction import redacted_logger, register_secret

log = redacted_logger("inspera_cli.auth")

EXCHANGE_PATH = "/api/authenticate/token/"
# Reuse a cached token until this many seconds before it expires.
EXPIRY_MARGIN = 60.0
# Seconds to wait for another run that is writing the token cache; then go on without the cache.
CACHE_LOCK_TIMEOUT = 5.0

Exchange = Callable[[str, Mapping[str, str]], Answer]
T = TypeVar("T")


@dataclass(frozen=True)
class Token:
    access_token: str
    expires_at: float

    def fresh(self, now: float | None = None) -> bool:
        return (now or time.time()) < self.expires_at - EXPIRY_MARGIN


def key_fingerprint(api_key: str) -> str:
    """What the cache keeps of the API key: enough to tell keys apart, nothing to recover it."""
    return "sha256:" + hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).hexdigest()


class TokenCache:
    """Tokens on disk, one per (tenant URL, client id, API key fingerprint)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "tokens.json"

    @staticmethod
    def key(url: str, client_id: str, api_key: str) -> str:
        return f"{url} {client_id} {key_fingerprint(api_key)}"

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(read_small_text(self.path))
        except (OSError, ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, url: str, client_id: str, api_key: str) -> Token | None:
        entry = self._load().get(self.key(url, client_id, api_key))
        if not isinstance(entry, dict):
            return None
        try:
            token = Token(str(entry["access_token"]), float(entry["expires_at"]))
        except (TypeError, KeyError, ValueError):
            return None
        register_secret(token.access_token)
        return token if token.fresh() else None

    def put(self, url: str, client_id: str, api_key: str, token: Token) -> None:
        """Cache a token; a cache that cannot be written only costs the next run an exchange."""
        entry = {"access_token": token.access_token, "expires_at": token.expires_at}

        def change(data: dict[str, Any]) -> bool:
            now = time.time()
            for key in [k for k, v in data.items() if not _unexpired(v, now)]:
                del data[key]
            data[self.key(url, client_id, api_key)] = entry
            return True

        self._update(change)

    def forget(self, url: str, client_id: str) -> bool:
        """Forget the tokens of this tenant and client id, whatever key they were issued for."""
        prefix = f"{url} {client_id} "

        def change(data: dict[str, Any]) -> bool:
            mine = [k for k in data if k.startswith(prefix)]
            for key in mine:
                del data[key]
            return bool(mine)

        return self._update(change)

    def _update(self, change: Callable[[dict[str, Any]], bool]) -> bool:
        """Read, change and write the cache under its lock; whether ``change`` changed anything
        and it was saved."""
        try:
            with locked(self.path, timeout=CACHE_LOCK_TIMEOUT):
                data = self._load()
                if not change(data):
                    return False
                write_private(self.path, json.dumps(data, indent=2).encode("utf-8"))
        except OSError as exc:
            log.warning(
                "inspera-hooks: warning: cannot write the token cache %s (%s); going on without it",
                self.path,
                describe_os_error(exc),
            )
            return False
        except ConfigError as exc:  # the lock timed out: a busy cache only costs an exchange
            log.warning("inspera-hooks: warning: token cache %s: %s; going on without it", self.path, exc)
            return False
        return True


def _unexpired(entry: Any, now: float) -> bool:
    try:
        return float(entry["expires_at"]) > now
    except (TypeError, KeyError, ValueError):
        return False


def exchange_request(url: str, client_id: str, api_key: str) -> tuple[str, dict[str, str]]:
    """The token request as documented: the full URL (with its query) and the headers."""
    query = urlencode({"grant_type": "authorization_code", "client_id": client_id})
    headers = {"code": api_key, "Content-Type": "application/x-www-form-urlencoded"}
    return f"{url}{EXCHANGE_PATH}?{query}", headers


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def token_from_answer(answer: Answer, url: str) -> Token:
    """Turn the exchange's answer into a Token or a helpful error (never showing the key)."""
    status = answer.status
    body = _json(answer.body)
    fields = body if isinstance(body, dict) else {}
    error = str(fields.get("error") or "")
    description = str(fields.get("description") or fields.get("message") or "")
    detail = f": {description}" if description else ""
    if status == 200:
        try:
            token = Token(str(fields["access_token"]), time.time() + float(fields.get("expires_in") or 3600))
        except (KeyError, TypeError, ValueError):
            raise APIError(
                f"the token exchange at {url} answered 200 but not with an access_token: "
                "is the URL an Inspera tenant?",
                status,
            ) from None
        register_secret(token.access_token)
        return token
    if 300 <= status < 400:
        raise APIError(
            f"the token exchange at {url} answered {status}, a redirect to "
            f"{redirect_target(answer.headers, url)}; not followed (the API key goes to the tenant "
            "only): use the tenant's own URL",
            status,
        )
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


class Tokens:
    """The bearer token of one run: INSPERA_TOKEN, else the cached one, else a fresh exchange."""

    def __init__(self, settings: Settings, cache: TokenCache | None = None) -> None:
        self.settings = settings
        self.cache = cache or TokenCache()
        self.exchanges = 0
        self._token: str | None = settings.token

    @property
    def fixed(self) -> bool:
        """A ready token (INSPERA_TOKEN) that cannot be refreshed."""
        return bool(self.settings.token)

    def get(self, exchange: Exchange, *, refresh: bool = False, use_cache: bool = True) -> str:
        """A token; ``refresh`` (after a 401) or ``use_cache=False`` force a real exchange."""
        if self.settings.token:
            return self.settings.token
        if self._token and not refresh and use_cache:
            return self._token
        url, client_id, api_key = self._credentials()
        if not refresh and use_cache:
            cached = self.cache.get(url, client_id, api_key)
            if cached:
                self._token = cached.access_token
                return self._token
        request_url, headers = exchange_request(url, client_id, api_key)
        token = token_from_answer(exchange(request_url, headers), url)
        self.exchanges += 1
        self.cache.put(url, client_id, api_key, token)
        self._token = token.access_token
        return self._token

    def forget(self) -> bool:
        self._token = None
        if self.settings.url and self.settings.client_id:
            return self.cache.forget(self.settings.url, self.settings.client_id)
        return False

    def _credentials(self) -> tuple[str, str, str]:
        s = self.settings
        if not s.url:
            raise CredentialsError("no tenant URL: pass --url, set INSPERA_URL, or run `inspera-hooks login`")
        if not s.client_id:
            raise CredentialsError(
                "no client id: pass --client-id, set INSPERA_CLIENT_ID, or run `inspera-hooks login`"
            )
        if not s.api_key:
            raise CredentialsError(
                "no API key: set INSPERA_API_KEY (the API authorization code from Inspera) or "
                "run `inspera-hooks login`"
            )
        return s.url, s.client_id, s.api_key


def with_bearer(
    tokens: Tokens, exchange: Exchange, call: Callable[[str], T], status: Callable[[T], int]
) -> T:
    """``call(token)``; on 401 once more with a freshly exchanged token."""
    for refreshed in (False, True):
        result = call(tokens.get(exchange, refresh=refreshed))
        if status(result) != 401:
            return result
        if tokens.fixed:
            raise CredentialsError("Inspera rejected INSPERA_TOKEN (401): set a valid token or unset it")
        log.debug("401: refreshing the token once")
    raise CredentialsError(
        "Inspera rejected a freshly issued token (401): does this API client have access to webhooks?"
    )
