"""When the relay tries again: durations, the clock, backoff with full jitter, Retry-After.

Everything that depends on time takes a ``Clock`` and everything random a ``random.Random``, so
tests run hours of a retry schedule in milliseconds (a clock whose ``sleep`` jumps ahead).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Protocol

BASE_BACKOFF = 1.0  # seconds: the first retry waits up to this long
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


class Clock(Protocol):
    """Wall-clock time (seconds since the epoch: it is stored in the queue) and a way to wait."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


MAX_DURATION = 3650 * 86400.0


def parse_duration(text: str) -> float:
    """``30s``, ``10m``, ``72h``, ``7d`` (or a sum: ``1h30m``) in seconds; ValueError saying what
    is expected otherwise."""
    compact = text.strip().lower().replace(" ", "")
    matches = list(_DURATION.finditer(compact))
    if not compact or "".join(m.group(0) for m in matches) != compact:
        raise ValueError(f"{text!r} is not a duration: give a number and a unit, s, m, h or d "
                         "(e.g. 30s, 10m, 72h, 7d)")
    seconds = sum(float(m.group(1)) * _UNITS[m.group(2)] for m in matches)
    if seconds <= 0:
        raise ValueError(f"{text!r}: the duration must be more than zero")
    if seconds > MAX_DURATION:
        # Times that far ahead are past what a date can hold (and what a queue means).
        raise ValueError(f"{text!r}: the duration must be at most {MAX_DURATION // 86400:.0f}d (10 years)")
    return seconds


def format_duration(seconds: float) -> str:
    """Short and readable: ``0.4 s``, ``42 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header as seconds from ``now``: delta-seconds or an HTTP date (RFC 9110
    §10.2.3); None for anything else (the normal backoff applies)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # an HTTP date is GMT; a bare asctime date has no zone
        return None
    return max(0.0, moment.timestamp() - now)


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter from BASE_BACKOFF up to ``max_backoff``, until an event
    is ``max_age`` old (counted from its receipt, or from a `relay retry`), then it is dead."""

    max_age: float = 72 * 3600.0
    max_backoff: float = 600.0
    rng: random.Random = field(default_factory=random.Random)

    def backoff(self, failures: int) -> float:
        """The wait after the ``failures``-th failed attempt in a row: uniform in [0, cap], the cap
        doubling from BASE_BACKOFF up to ``max_backoff``."""
        cap = min(self.max_backoff, BASE_BACKOFF * 2.0 ** min(failures - 1, 64))
        return self.rng.uniform(0.0, cap)

    def retry_after(self, seconds: float) -> float:
        """The app's own Retry-After, within [min(1 s, max_backoff), max_backoff]: an app asking
        for 0 is not hammered, and one asking for a day does not hold the event past the cap."""
        return min(max(seconds, min(BASE_BACKOFF, self.max_backoff)), self.max_backoff)

    def next_attempt(
        self, *, now: float, since: float, failures: int, retry_after: float | None
    ) -> float | None:
        """When to try again after a failure at ``now`` (the ``failures``-th in a row since
        ``since``); None once ``max_age`` has passed: the event is dead. The last attempt is made
        at ``since + max_age`` itself."""
        deadline = since + self.max_age
        if now >= deadline:
            return None
        wait = self.retry_after(retry_after) if retry_after is not None else self.backoff(failures)
        return min(now + wait, deadline)
