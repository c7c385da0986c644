"""What TAB offers: event names and subscription ids from the tenant's API (the script that asks
is `completion`'s); offline commands check event names against the same cached list.

A completion runs on every TAB, so it must be fast and must never print an error into the user's
prompt. Hence: settings come from the same flags / environment / profile as any command, answers are
cached for a minute (``completion.json`` in the user cache dir, mode 0600, names and ids only), the
API is called through the standard library with one try and a ~2 s deadline (the client's retries
and ``requests`` import are for real commands), and every failure yields no candidates.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from inspera_cli.errors import APIError

# Every command module imports this one for its completion callbacks: what they need is imported on a TAB.
if TYPE_CHECKING:
    from inspera_cli.config import Settings
    from inspera_cli.network import Answer

CACHE_TTL = 60.0
DEADLINE = 2.0
CACHE_FILE = "completion.json"
MAX_BODY = 4 * 1024 * 1024

Candidate = tuple[str, str]


def complete_event(ctx: Any, incomplete: str) -> list[Candidate]:
    """Event names (with their descriptions) for `--event` options."""
    items = _cached(ctx, "events")
    return [(name, help_) for name, help_ in items if name.startswith(incomplete)]


def complete_event_list(ctx: Any, incomplete: str) -> list[Candidate]:
    """Comma-separated event names (`listen --events a,b`): completes the name after the last comma."""
    head, _, tail = incomplete.rpartition(",")
    given = set(head.split(",")) if head else set()
    prefix = f"{head}," if head else ""
    items = _cached(ctx, "events")
    return [(prefix + name, help_) for name, help_ in items if name.startswith(tail) and name not in given]


def complete_subscription_id(ctx: Any, incomplete: str) -> list[Candidate]:
    """Subscription ids, each with its event and endpoint as help, for `delete`."""
    items = _cached(ctx, "subscriptions")
    return [(sid, help_) for sid, help_ in items if sid.startswith(incomplete)]


def tenant_event_names(ctx: Any) -> list[str]:
    """The tenant's event names when it is configured and answers within the deadline (or a
    minute-old answer is cached), else none."""
    return [name for name, _ in _cached(ctx, "events")]


def cache_path() -> Path:
    from inspera_cli.config import cache_dir

    return cache_dir() / CACHE_FILE


def _settings(ctx: Any) -> Settings | None:
    """The connection settings the command would use: global flags, environment, profile."""
    from inspera_cli.config import resolve_settings

    params = ctx.find_root().params if ctx is not None else {}
    settings = resolve_settings(
        params.get("url"),
        params.get("client_id"),
        profile=params.get("profile"),
    )
    if not settings.url or not (settings.token or (settings.client_id and settings.api_key)):
        return None
    return settings


def _cached(ctx: Any, kind: str) -> list[Candidate]:
    import json

    from inspera_cli.files import locked, write_private

    try:
        settings = _settings(ctx)
        if settings is None or settings.url is None:
            return []
        key = f"{settings.url} {settings.client_id or ''} {kind}"
        path = cache_path()
        entry = _load(path).get(key)
        now = time.time()
        if isinstance(entry, dict) and _fresh(entry, now):
            return [(str(v), str(h)) for v, h in entry.get("items", [])]
        items = _fetch(settings, kind, deadline=time.monotonic() + DEADLINE)
        with locked(path, timeout=DEADLINE):
            cache = {k: v for k, v in _load(path).items() if _fresh(v, now)}
            cache[key] = {"time": now, "items": items}
            write_private(path, json.dumps(cache).encode("utf-8"))
        return items
    except Exception:
        # Completion is best effort: no network, a bad profile or an odd answer means no candidates.
        return []


def _fresh(entry: Any, now: float) -> bool:
    return isinstance(entry, dict) and 0 <= now - float(entry.get("time", 0)) < CACHE_TTL


def _load(path: Path) -> dict[str, Any]:
    import json

    from inspera_cli.files import read_small_text

    try:
        data = json.loads(read_small_text(path))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _fetch(settings: Settings, kind: str, *, deadline: float) -> list[Candidate]:
    if kind == "events":
        return _event_items(_api_get(settings, "/v1/subscription/events", deadline))
    return _subscription_items(_api_get(settings, "/v1/subscription", deadline))


def _api_get(settings: Settings, path: str, deadline: float) -> Any:
    """GET an API path with the client's token rules (auth.Tokens, one refresh on 401)."""
    import json

    from inspera_cli.auth import Tokens, with_bearer
    from inspera_cli.network import fetch

    assert settings.url is not None
    url = f"{settings.url}/api{path}"

    def send(method: str, target: str, headers: Mapping[str, str]) -> Answer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("completion deadline passed")
        return fetch(method, target, headers, deadline=remaining, max_body=MAX_BODY)

    answer = with_bearer(
        Tokens(settings),
        lambda target, headers: send("POST", target, headers),
        lambda token: send("GET", url, {"Authorization": f"Bearer {token}", "Accept": "application/json"}),
        lambda a: a.status,
    )
    if answer.status != 200:
        raise PermissionError(f"the API answered {answer.status}")
    return json.loads(answer.body or b"null")


def _event_items(data: Any) -> list[Candidate]:
    from inspera_cli.api_models import parse_event_types

    try:
        events = parse_event_types(data)
    except APIError:
        return []
    items: dict[str, str] = {}
    for e in events:
        items.setdefault(e.event, " ".join((e.description or "").split()))
    return sorted(items.items())


def _subscription_items(data: Any) -> list[Candidate]:
    from inspera_cli.api_models import parse_subscriptions

    try:
        subs = parse_subscriptions(data)
    except APIError:
        return []
    items = [(str(s.subscription_id), f"{s.event} → {_public_url(s.endpoint)}".strip(" →")) for s in subs]
    return sorted(items, key=lambda i: int(i[0]))


def _public_url(url: str) -> str:
    """The endpoint without credentials or query (some put a token there): nothing secret is cached."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", "")) if parts.scheme and host else ""
