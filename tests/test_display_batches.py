"""`listen` makes each display line on the receiver's loop and writes a batch of them in one piece
(a write syscall, or a line's formatting, per request on the report thread cost the loop a GIL
hand-over each); a reader that leaves still never stops it."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest

from inspera_cli.commands.listen import _Printer
from inspera_cli.listener.feed import Feed
from inspera_cli.listener.report import Report, RequestKind, SignatureState


class CountingStdout(io.StringIO):
    def __init__(self, *, broken: bool = False) -> None:
        super().__init__()
        self.flushes = 0
        self.broken = broken

    def flush(self) -> None:
        if self.broken:
            raise BrokenPipeError
        self.flushes += 1

    def isatty(self) -> bool:
        return False


def report(object_id: int) -> Report:
    return Report("2024-05-01T12:00:00.000Z", RequestKind.EVENT, "POST", "/", 200, SignatureState.VALID,
                  "confirm_final_grades", object_id, accepted=True)


def test_idle_runs_once_after_everything_queued_was_taken() -> None:
    taken: list[Any] = []
    gate = threading.Event()
    finished = threading.Event()

    def consume(item: int) -> None:
        if item == 0:
            assert gate.wait(5)  # the others are queued while the first is being shown
        taken.append(item)

    def idle() -> None:
        taken.append("idle")
        if len(taken) > 100:
            finished.set()

    feed: Feed[int] = Feed(consume, idle=idle)
    try:
        feed.put(0)
        for item in range(1, 100):
            feed.put(item)
        gate.set()
        assert finished.wait(5)
    finally:
        feed.close()
    assert taken == [*range(100), "idle"]


def test_the_printer_flushes_per_batch_not_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    stdout = CountingStdout()
    monkeypatch.setattr("sys.stdout", stdout)
    printer = _Printer(json_mode=True)
    for object_id in (1, 2, 3):
        printer(printer.render(report(object_id)))  # made on the loop, taken by the report thread
    assert (stdout.getvalue(), stdout.flushes) == ("", 0)
    printer.flush()
    assert stdout.flushes == 1
    assert [line.count('"contextObjectId":') for line in stdout.getvalue().splitlines()] == [1, 1, 1]


def test_a_reader_gone_at_the_flush_stops_the_display_not_the_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stdout = CountingStdout(broken=True)
    monkeypatch.setattr("sys.stdout", stdout)
    discarded: list[bool] = []
    monkeypatch.setattr("inspera_cli.output.discard_stdout", lambda: discarded.append(True))
    printer = _Printer(json_mode=False)
    printer(printer.render(report(1)))
    printer.flush()  # BrokenPipeError: `listen | head` ended
    assert printer.render(report(2)) is None  # no line is made for a reader who left
    printer.flush()
    assert discarded == [True]
    assert stdout.getvalue().count("\n") == 1  # nothing more written once the reader left
