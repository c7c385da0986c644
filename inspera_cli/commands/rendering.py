"""What more than one command shows: a listener's request line (`listen`, `demo`) and a generated
webhook secret (`create`, `listen --subscribe`)."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from inspera_cli import output

_SIGNATURE_STYLES = {
    "valid": "green",
    "unchecked": "yellow",
    "invalid": "bold red",
    "missing": "bold red",
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


def request_line(item: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The human view of one request: (text, style) pieces of one line."""
    when = (_local_time(item["receivedAt"]) + "  ", "dim")
    status = item["status"]
    answer = (f"-> {status}", _status_style(status))
    if item["kind"] != "event":
        return [when, (f"{item['method']} {item['path']}".ljust(40), "dim"), answer,
                (f"  {item['note']}", "dim")]
    if item["verification"]:
        name = ("verification".ljust(28), "cyan")
    elif item["event"] is None:
        name = ("(not an event)".ljust(28), "magenta")
    else:
        name = (item["event"].ljust(28), "bold")
    object_id = item["contextObjectId"]
    delivery = item["delivery"]
    # Rejected requests (and unread bodies) are not counted as deliveries: no number to show.
    counted = item["signature"] in ("valid", "unchecked") and status != 413
    pieces = [
        when,
        name,
        (f"{'-' if object_id is None else object_id:>10}  ", None),
        (item["signature"].ljust(10), _SIGNATURE_STYLES.get(item["signature"])),
        ((f"retry #{delivery}" if delivery > 1 else "#1" if counted else "-").ljust(10),
         "yellow" if delivery > 1 else "dim"),
        answer,
    ]
    forward = item["forward"]
    if forward is not None:
        if forward["status"] is None:
            pieces.append((f"  app failed: {forward['error']} ({forward['latencyMs']:.0f} ms)", "bold red"))
        else:
            pieces.append((f"  app {forward['status']} in {forward['latencyMs']:.0f} ms",
                           _status_style(forward["status"])))
    if item["verification"] and item["note"] is None:
        pieces.append(("  endpoint validation", "dim"))
    if item["note"]:
        pieces.append((f"  {item['note']}", "yellow" if status < 300 else "red"))
    if item["event"] is None and item["raw"]:
        raw = item["raw"]
        pieces.append((f"  raw: {raw[:80]!r}{'...' if len(raw) > 80 else ''}", "dim"))
    return pieces


def show_secret(secret: str) -> None:
    """A generated secret, once, on a line of its own on stderr: never in a table, never wrapped
    by us, so that it can be copied whole."""
    output.styled_line(f"Webhook secret: {secret}", stderr=True)
