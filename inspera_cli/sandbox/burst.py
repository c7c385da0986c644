"""A burst: one event fired ``count`` times, optionally ``rate`` a second, at every subscription to it.

The limits live here so that the API (``POST /_sandbox/fire``) and ``sandbox fire`` check the same
rules; the module is pure data and cheap to import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from inspera_cli.webhook_body import build_body, utc_timestamp

# Deliveries per fire (count × subscriptions): the answer lists every delivery id.
MAX_DELIVERIES = 1_000_000


def burst_problem(count: object, rate: object, *, names: tuple[str, str] = ("count", "rate")) -> str | None:
    """Why ``count`` and ``rate`` do not make a burst the sandbox accepts; None when they do."""
    count_name, rate_name = names
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_DELIVERIES:
        return f"{count_name} must be a whole number from 1 to {MAX_DELIVERIES}"
    if rate is not None and (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or not math.isfinite(rate)
        or rate <= 0
    ):
        return f"{rate_name} must be a number of events per second greater than 0"
    return None


@dataclass(frozen=True)
class Recipient:
    """A subscription as a burst sees it: fixed when the burst is fired."""

    subscription_id: int
    endpoint: str
    secret: str


@dataclass(frozen=True)
class Burst:
    """Event ``i`` (0-based) has contextObjectId ``first_object_id + i`` and is due ``i / rate``
    seconds after ``started``; its delivery to recipient ``j`` has id
    ``first_delivery_id + i * len(recipients) + j``."""

    event: str
    first_object_id: int
    count: int
    rate: float | None
    recipients: tuple[Recipient, ...]
    first_delivery_id: int
    started: float  # time.monotonic(), the clock of the delivery loop
    started_wall: float  # time.time(), for the payloads' timestamps

    @property
    def delivery_ids(self) -> range:
        return range(self.first_delivery_id, self.first_delivery_id + self.count * len(self.recipients))

    def delivery_id(self, index: int, recipient: int) -> int:
        return self.first_delivery_id + index * len(self.recipients) + recipient

    def offset(self, index: int) -> float:
        """Seconds after the start when event ``index`` is due."""
        return index / self.rate if self.rate else 0.0

    def body(self, index: int) -> bytes:
        """Event ``index`` as Inspera sends it: the same bytes to every recipient and on every retry."""
        timestamp = _timestamp(int(self.started_wall + self.offset(index)))
        return build_body(self.event, self.first_object_id + index, timestamp=timestamp)


@lru_cache(maxsize=4)
def _timestamp(second: int) -> str:
    # Inspera's timestamps have whole seconds: thousands of events share one.
    return utc_timestamp(datetime.fromtimestamp(second, UTC))
