"""The sandbox's log lines, written on a thread of their own.

A terminal that scrolls slowly, or a stderr pipe nobody reads, must never stall the API or the
deliveries (thousands of lines a second under a burst): lines wait in a bounded backlog, and when it
is full they are dropped and counted, and the count is logged once the writer catches up.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

BACKLOG = 10_000


def printable(text: str) -> str:
    """The text with control characters escaped: a request path must not drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class LogWriter:
    def __init__(self, write: Callable[[str], None], backlog: int = BACKLOG) -> None:
        self._write = write
        self._backlog = backlog
        self._lines: deque[str] = deque()
        self._dropped = 0
        self._closing = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="sandbox-log", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        with self._changed:
            if len(self._lines) >= self._backlog:
                self._dropped += 1
                return
            if not self._lines:
                self._changed.notify()  # the writer drains everything it finds once awake
            self._lines.append(line)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is waiting (for at most ``timeout`` seconds), then stop."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._lines or self._dropped or self._closing)
                lines, self._lines = self._lines, deque()
                dropped, self._dropped = self._dropped, 0
                if not lines and not dropped:
                    return  # closing, and everything is written
            for line in lines:
                self._emit(line)
            if dropped:
                self._emit(f"({dropped} log lines dropped: the log could not keep up)")

    def _emit(self, line: str) -> None:
        try:
            self._write(line)
        except OSError:
            pass  # a closed stderr: the sandbox serves on without its log
