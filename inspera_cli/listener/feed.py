"""Bounded hand-off from the event loop to a slow consumer (a terminal, an inspector page).

``Feed.put`` never blocks and takes no lock: the loop appends to a deque and wakes the
consumer's thread only when it sleeps. The consumer gets items in the order they were put (the
order requests were answered). When the consumer falls behind by more than ``max_items`` or
``max_bytes``, new items are dropped and counted (``dropped``) -- a display may lose lines, the
receiver never slows down or grows without bound. ``idle()``, if given, runs each time the
consumer has taken everything queued: a display flushes there, once per batch rather than per line.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
# The consumer looks for new items this often; the loop never wakes it. Every wake-up of a second
# Python thread costs the loop a GIL hand-over, and waking it per item (or even per 5 ms) made the
# slowest 1% of answers wait over a second at 256 connections; 50 ms on screen costs nobody.
POLL = 0.05


class Feed(Generic[T]):
    def __init__(
        self,
        consume: Callable[[T], None],
        *,
        max_items: int = 10_000,
        max_bytes: int = 32 << 20,
        size: Callable[[T], int] = lambda item: 0,
        name: str = "feed",
        idle: Callable[[], None] | None = None,
    ) -> None:
        self._consume = consume
        self._idle = idle
        self._max_items, self._max_bytes, self._size = max_items, max_bytes, size
        self._items: deque[tuple[T, int]] = deque()
        # Each counter has one writer (put: the loop; taken: the consumer), so no lock is needed.
        self._put_bytes = self._taken_bytes = 0
        self.dropped = 0
        self._wake = threading.Event()
        self._closing = self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        size = self._size(item)
        if len(self._items) >= self._max_items or (
            self._put_bytes - self._taken_bytes + size > self._max_bytes and self._items
        ):
            self.dropped += 1
            return
        self._put_bytes += size
        self._items.append((item, size))

    def close(self, timeout: float = 5.0) -> None:
        """Let the consumer take what is queued (for up to ``timeout`` s), then stop it; what it
        did not take by then counts as dropped (a consumer stuck on a terminal nobody reads)."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        self._stopped = True
        self.dropped += len(self._items)
        self._items.clear()

    def _run(self) -> None:
        while True:
            self._wake.wait(POLL)
            taken = bool(self._items)
            while self._items and not self._stopped:
                item, size = self._items.popleft()
                self._taken_bytes += size
                try:
                    self._consume(item)
                except Exception:
                    log.warning("a report consumer failed", exc_info=True)
            if taken and self._idle is not None:
                try:
                    self._idle()
                except Exception:
                    log.warning("a report consumer failed", exc_info=True)
            if self._closing or self._stopped:
                return
