"""What the Inspera REST API answers (subscriptions, event types), as typed objects, and tolerant
parsers for its shapes. What a webhook itself carries is ``webhook_body``'s.

No HTTP here (and no `requests` import): the client and shell completion both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inspera_cli.errors import APIError
from inspera_cli.webhook_body import as_int


@dataclass(frozen=True)
class Subscription:
    """One webhook subscription on the tenant."""

    subscription_id: int
    event: str
    endpoint: str
    last_modified: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "subscriptionId": self.subscription_id,
            "event": self.event,
            "endpoint": self.endpoint,
            "lastModified": self.last_modified,
        }


@dataclass(frozen=True)
class EventType:
    """An event type the tenant lets you subscribe to."""

    event: str
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "description": self.description}


def _unwrap_list(data: Any, what: str) -> list[Any]:
    """A bare array, or an object wrapping one array under a single key (e.g. {"events": [...]})."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
        if not data:
            return []
    raise APIError(f"unexpected answer shape for {what}: expected a JSON array of {what}")


def parse_event_types(data: Any) -> list[EventType]:
    result = []
    for item in _unwrap_list(data, "events"):
        if isinstance(item, str):
            result.append(EventType(item))
        elif isinstance(item, dict):
            name = next((item[k] for k in ("event", "name", "eventType") if item.get(k)), None)
            if name is None:
                continue
            description = item.get("description")
            result.append(EventType(str(name), str(description) if description else None))
    return result


def parse_subscription(item: Any) -> Subscription | None:
    """One subscription object; only the id is required (an item without one cannot be managed)."""
    if not isinstance(item, dict):
        return None
    sid = as_int(item.get("subscriptionId", item.get("id")))
    if sid is None:
        return None
    event, endpoint, modified = (item.get(k) for k in ("event", "endpoint", "lastModified"))
    return Subscription(
        sid,
        "" if event is None else str(event),
        "" if endpoint is None else str(endpoint),
        None if modified is None else str(modified),
    )


def parse_subscriptions(data: Any) -> list[Subscription]:
    items = (parse_subscription(item) for item in _unwrap_list(data, "subscriptions"))
    return [s for s in items if s is not None]
