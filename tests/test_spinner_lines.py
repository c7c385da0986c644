"""A spinner on stderr while another thread writes lines to stdout (`listen --subscribe`: the
display shows Inspera's validation POST while the subscription's spinner spins)."""

from __future__ import annotations

import io
import re
import sys
import threading
import time

import pytest
from rich.console import Console

from inspera_cli import output


def test_a_line_written_as_a_spinner_stops_leaves_no_spinner_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rich sends what is written to stdout while a spinner spins through the spinner: the line,
    # then the spinner drawn again under it. A line whose turn came just before the spinner
    # stopped drew it again after it had been erased, and the next message went on the same line
    # as that stale spinner: `listen --subscribe`'s "Webhook secret:" line, once in ~20 runs.
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=80, color_system=None)
    monkeypatch.setitem(output._consoles, True, terminal)
    monkeypatch.setattr(output, "is_terminal", lambda stream: True)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    stop = threading.Event()

    def display() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            output.write_stdout(f"line {number}\n")
            output.flush_stdout()
            time.sleep(0.0002)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads take turns often: the moment of the race comes round
    writer = threading.Thread(target=display)
    writer.start()
    try:
        for number in range(60):
            with output.spinner("Creating the subscription"):
                time.sleep(0.001)
            terminal.print(f"MARK {number}")
    finally:
        stop.set()
        writer.join()
        sys.setswitchinterval(interval)
    shown = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).rsplit("\r", 1)[-1]
             for line in screen.getvalue().split("\n")]
    marks = [line for line in shown if "MARK" in line]
    assert len(marks) == 60
    stale = [line for line in marks if not line.startswith("MARK")]
    assert stale == [], stale[:3]
