"""What more than one command shows: a listener's request line (`listen`, `demo`), a generated
webhook secret (`create`, `listen --subscribe`) and a record file's corrupt lines (`replay`, `inspect`)."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import TYPE_CHECKING

from inspera_cli import output
from inspera_cli.listener.report import Report, RequestKind, SignatureState

if TYPE_CHECKING:
    from inspera_cli.recording import CorruptLine

_SIGNATURE_STYLES = {
    SignatureState.VALID: "green",
    SignatureState.UNCHECKED: "yellow",
    SignatureState.INVALID: "bold red",
    SignatureState.MISSING: "bold red",
}


@functools.lru_cache(maxsize=4)
def _local_second(utc_second: str) -> str:
    try:
        return datetime.fromisoformat(utc_second + "+00:00").astimezone().strftime("%H:%M:%S")
    except ValueError:
        return utc_second


def _local_time(received_at: str) -> str:
    return _local_second(received_at[:19])


def _status_style(status: int | None) -> str:
    return "green" if status is not None and 200 <= status < 300 else "bold red"


# The event column: confirm_final_grades fits; a longer name pushes the line, whose end is then cut
# to the terminal's width (output.print_segments).
EVENT_WIDTH = 20


def request_line(report: Report) -> list[tuple[str, str | None]]:
    """The human view of one request: (text, style) pieces of one line, 80 columns or less up to
    the answer and the app's (notes after that are cut on a narrower terminal)."""
    when = (_local_time(report.received_at) + " ", "dim")
    status = report.status
    answer = (f"-> {status}", _status_style(status))
    if report.kind is not RequestKind.EVENT:
        return [when, (f"{report.method} {report.path} ", "dim"), answer, (f"  {report.note}", "dim")]
    if report.verification:
        name = ("verification".ljust(EVENT_WIDTH), "cyan")
    elif report.event is None:
        name = ("(not an event)".ljust(EVENT_WIDTH), "magenta")
    else:
        name = (report.event.ljust(EVENT_WIDTH), "bold")
    object_id = report.context_object_id
    delivery = report.delivery
    # Rejected requests (and unread bodies) are not counted as deliveries: no number to show.
    pieces = [
        when,
        name,
        (f" {'-' if object_id is None else object_id:>8} ", None),
        (report.signature.value.ljust(10), _SIGNATURE_STYLES.get(report.signature)),
        ((f"retry #{delivery}" if delivery > 1 else "#1" if report.counted else "-").ljust(9),
         "yellow" if delivery > 1 else "dim"),
        answer,
    ]
    forward = report.forward
    if forward is not None:
        if forward.status is None:
            pieces.append((f"  app failed: {forward.error} ({forward.latency_ms:.0f} ms)", "bold red"))
        else:
            pieces.append((f"  app {forward.status} {forward.latency_ms:.0f} ms",
                           _status_style(forward.status)))
    if report.verification and report.note is None:
        pieces.append(("  endpoint validation", "dim"))
    if report.note:
        pieces.append((f"  {report.note}", "yellow" if status < 300 else "red"))
    if report.event is None and report.body:
        raw = report.raw
        pieces.append((f"  raw: {raw[:80]!r}{'...' if len(raw) > 80 else ''}", "dim"))
    return pieces


def show_secret(secret: str) -> None:
    """A generated secret, once, on a line of its own on stderr: never in a table, never wrapped
    by us, so that it can be copied whole."""
    output.styled_line(f"Webhook secret: {secret}", stderr=True)


class CorruptWarnings:
    """One warning per corrupt line, up to a point; then how many more there were."""

    LIMIT = 10

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, corrupt: CorruptLine) -> None:
        self.count += 1
        if self.count <= self.LIMIT:
            output.warn(f"skipped {corrupt}")
        elif self.count == self.LIMIT + 1:
            output.warn("more corrupt lines skipped (not listed)")
