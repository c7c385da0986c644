"""What `listen` tells a person: what it does (under `Ready:`), one line per request that never
wraps on an 80-column terminal, and a summary that says who refused what."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import requests

from tests.conftest import Cli
from tests.processes import Terminal
from tests.receiver import Receiver, free_port
from tests.test_listen import EVENT, SECRET, ListenProcess, event_body, post, signed_headers


def test_the_banner_says_what_listen_does(tmp_path: Path) -> None:
    record = tmp_path / "events.jsonl"
    with Receiver(path="") as app, ListenProcess(
        "--secret-env", "LISTEN_SECRET", "--events", f"{EVENT},complete_grading",
        "--forward-to", app.url, "--forward-to", f"complete_grading={app.url}/grading",
        "--record", str(record), "--exit-after", "1", "--max-time", "30",
    ) as lp:
        assert lp.wait_for(lambda: any(line.startswith("  Exiting after") for line in lp.stderr))
        assert lp.stop() == 0
    ready = next(i for i, line in enumerate(lp.stderr) if line.startswith("Ready:"))
    assert lp.stderr[ready + 1 : ready + 7] == [
        "  Verifying X-Inspera-Signature with the secret in $LISTEN_SECRET",
        f"  Showing and forwarding only {EVENT}, complete_grading (other events get 200)",
        f"  Forwarding complete_grading to {app.url}/grading",
        f"  Forwarding every other event to {app.url}",
        f"  Recording every verified request to {record}",
        "  Exiting after 1 accepted event (exit 1 if they have not come within 30 s)",
    ]
    assert "never for actions" not in "\n".join(lp.stderr[: ready + 7])  # no long reminder up front


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ([], "  Not verifying signatures: no secret given (pass --secret-env VAR)"),
        (["--skip-verify"], "  Not verifying signatures (--skip-verify): every request is accepted"),
        (["--secret", "s3cret-on-the-line", "--forward-to", "http://127.0.0.1:9/app"],
         "  Verifying X-Inspera-Signature with the secret given with --secret"),
        (["--max-time", "0.2"], "  Stopping after 0.2 s"),
    ],
)
def test_the_banner_for_each_way_of_verifying(cli: Cli, args: list[str], line: str) -> None:
    expected = [line]
    if "--forward-to" in args:
        expected.append("  Forwarding every event to http://127.0.0.1:9/app")
    if "--max-time" not in args:
        args = [*args, "--max-time", "0.2"]
    stderr = cli("listen", "--port", "0", *args).stderr
    assert all(e in stderr.splitlines() for e in expected), stderr
    assert "s3cret-on-the-line" not in stderr


def test_the_summary_counts_the_apps_refusals_apart_from_its_own() -> None:
    with Receiver(401, path="") as app, \
            ListenProcess("--secret-env", "LISTEN_SECRET", "--forward-to", app.url) as lp:
        verification = b'{"contextObjectId": 0, "event": "verification", "timestamp": "2024-01-01T00:00:00Z"}'
        assert post(lp.url, verification, signed_headers(verification)).status_code == 200
        body = event_body()
        assert post(lp.url, body, signed_headers(body, "another-secret")).status_code == 401  # listen's
        assert post(lp.url, body, signed_headers(body)).status_code == 401  # the app's, relayed
        assert lp.stop() == 0
    summary = next(line for line in lp.stderr if line.startswith("Stopped after"))
    assert ": 3 webhook requests, 0 accepted, 1 verification, 1 refused by listen (signature: 401), " \
        "1 refused by the app (its status relayed)." in summary
    assert "1 verifications" not in summary
    # nothing was accepted: now is when the audience rule helps
    assert "No event was accepted. Inspera sends an event only to users who are contributors" in lp.err_text


def test_an_unreachable_app_is_counted_as_such() -> None:
    with ListenProcess("--forward-to", f"http://127.0.0.1:{free_port()}/") as lp:
        body = event_body()
        assert post(lp.url, body).status_code == 502
        assert lp.stop() == 0
    assert "1 not answered by the app (unreachable, or slower than 9 s: 502)" in lp.err_text
    assert "refused by listen" not in lp.err_text


@pytest.mark.parametrize("columns", [80, 120])
def test_a_request_line_never_wraps(columns: int, tmp_path: Path) -> None:
    """Forward routes, an unreachable app, a bad signature, a retry, another path: one line each."""
    env = {**os.environ, "LISTEN_SECRET": SECRET}
    unreachable = f"http://127.0.0.1:{free_port()}/grading"
    with Receiver(path="") as app:
        term = Terminal(["listen", "--port", "0", "--secret-env", "LISTEN_SECRET", "--forward-to", app.url,
                         "--forward-to", f"complete_grading={unreachable}"], env, columns)
        assert term.read_until("Ready: "), term.screen
        url = re.search(r"Ready: (\S+)", term.screen)
        assert url is not None
        target = url.group(1)
        with requests.Session() as s:
            body = event_body(object_id=35199862)
            assert post(target, body, signed_headers(body), session=s).status_code == 200
            assert post(target, body, signed_headers(body), session=s).status_code == 200  # retry #2
            grading = event_body("complete_grading", 35199863)
            assert post(target, grading, signed_headers(grading), session=s).status_code == 502
            assert post(target, body, signed_headers(body, "another-secret"), session=s).status_code == 401
            assert s.get(f"{target}nowhere/at/all", timeout=10).status_code == 404
        assert term.read_until("GET /nowhere"), term.screen
        term.ctrl_c()
        assert term.exit_code() == 0, term.screen
    lines = [line for line in term.lines if " -> " in line]
    assert len(lines) == 5, term.screen  # every request on one line of its own
    assert all(len(line) <= columns for line in lines), "\n".join(lines)
    assert re.search(r"confirm_final_grades +35199862 valid +#1 +-> 200 +app 200 \d+ ms", lines[0])
    assert re.search(r"confirm_final_grades +35199862 valid +retry #2 +-> 200", lines[1])
    assert "complete_grading" in lines[2] and "-> 502" in lines[2] and "app failed" in lines[2]
    assert "invalid" in lines[3] and "-> 401" in lines[3]
    if columns == 80:
        assert lines[3].endswith("…")  # the note is cut at the terminal's edge, not wrapped
    else:
        assert "the signature does not match" in lines[3]


def test_piped_lines_are_whole(tmp_path: Path) -> None:
    with ListenProcess("--secret-env", "LISTEN_SECRET") as lp:
        body = event_body()
        assert post(lp.url, body, signed_headers(body, "another-secret")).status_code == 401
        assert lp.wait_for(lambda: len(lp.stdout) == 1)
        lp.stop(signal.SIGTERM)
    assert "the signature does not match" in lp.stdout[0] and "…" not in lp.stdout[0]


HOSTILE_EVENT = "ev\x1b]0;pwned\x07\x1b[31mred\r\nforged line\u202e"


def test_control_characters_in_an_event_never_reach_the_terminal(tmp_path: Path) -> None:
    """Anyone who can reach the port may send an event name holding ESC sequences, a CR or a bidi
    override: on the terminal they show as escapes, never retitle, recolour or forge a line."""
    term = Terminal(["listen", "--port", "0"], dict(os.environ), 120)
    assert term.read_until("Ready: "), term.screen
    url = re.search(r"Ready: (\S+)", term.screen)
    assert url is not None
    body = json.dumps({"contextObjectId": 7, "event": HOSTILE_EVENT}).encode()
    assert requests.post(url.group(1), data=body, timeout=10).status_code == 200
    assert term.read_until("forged line"), term.screen
    term.ctrl_c()
    assert term.exit_code() == 0, term.screen
    assert b"\x1b]0;" not in term.seen and b"\x07" not in term.seen and b"\r\nforged" not in term.seen
    assert "\\x1b]0;pwned\\x07\\x1b[31mred\\r\\nforged line\\u202e" in term.screen


def test_control_characters_in_an_event_are_escaped_when_piped_too() -> None:
    """A piped log read later with `cat` or `less -R` is a terminal too."""
    with ListenProcess() as lp:
        body = json.dumps({"contextObjectId": 7, "event": HOSTILE_EVENT}).encode()
        assert requests.post(lp.url, data=body, timeout=10).status_code == 200
        assert lp.wait_for(lambda: len(lp.stdout) >= 1)
        lp.stop(signal.SIGTERM)
    assert len(lp.stdout) == 1 and "\\x1b]0;pwned\\x07" in lp.stdout[0] and "\x1b" not in lp.stdout[0]
