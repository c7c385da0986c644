"""The inspect page's API under input no page sends: every request gets an answer (never a dropped
connection and a traceback on listen's terminal), and an app's answer never shows the secret in
any form."""

from __future__ import annotations

import base64
import json
import os
import socket

import pytest

from inspera_cli.webhook_body import build_body
from tests.inspecting import call, inspecting, replay
from tests.receiver import Receiver
from tests.test_inspect import send, wait_rows


def raw_status(port: int, request: bytes) -> bytes:
    """The status line answered to ``request`` (bytes sent as they are), or b"" if none came."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return sock.makefile("rb").readline().rstrip()


@pytest.mark.parametrize(
    ("target", "extra", "status"),
    [
        (b"/api/requests/\xb2", b"", b"404"),  # latin-1 "superscript two": str.isdigit() says yes
        (b"/api/requests/\xb2/record", b"", b"404"),
        (b"/api/requests?limit=%C2%B2", b"", b"400"),
        (b"/api/stream?after=%C2%B2", b"", b"200"),
        (b"/api/stream", b"Last-Event-ID: \xb2\r\n", b"200"),
    ],
)
def test_non_ascii_digits_in_an_id_are_answered(capfd, target: bytes, extra: bytes, status: bytes) -> None:
    with inspecting() as (listener, inspector):
        send(listener.url, build_body("confirm_final_grades", 1))
        wait_rows(inspector, 1)
        host = f"127.0.0.1:{inspector.port}".encode()
        line = raw_status(inspector.port, b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra
                          + b"Connection: close\r\n\r\n")
        still_serving = call(inspector, "GET", "/api/requests").status
    assert line.startswith(b"HTTP/1.1 " + status + b" "), line
    assert still_serving == 200
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    "body",
    [
        b'{"to": null, "body": "\\ud800"}',  # valid JSON, but not text that UTF-8 can carry
        b"[" * 100_000,  # deeper than the JSON parser recurses
    ],
    ids=["lone surrogate", "deep JSON"],
)
def test_a_replay_body_that_is_not_text_or_too_deep_is_refused(capfd, local_app: Receiver,
                                                               body: bytes) -> None:
    with inspecting(forward=local_app.url) as (listener, inspector):
        send(listener.url, build_body("confirm_final_grades", 1))
        wait_rows(inspector, 1)
        assert len(local_app.wait(1)) == 1  # the listener's own forward
        headers = {"Origin": f"http://127.0.0.1:{inspector.port}", "X-Inspect-Token": inspector.token}
        answer = call(inspector, "POST", "/api/requests/1/replay", body=body, headers=headers)
    assert answer.status == 400 and "error" in answer.json
    assert len(local_app.received) == 1  # nothing replayed
    assert "Traceback" not in capfd.readouterr().err


def test_an_app_echoing_the_secret_in_a_binary_answer_does_not_show_it(local_app: Receiver) -> None:
    """A body that is not UTF-8 is shown as base64: the secret inside it is masked all the same."""
    canary = "canary-" + os.urandom(8).hex()
    local_app.body = b"\xff\xfe configured with " + canary.encode() + b"\x00"
    with inspecting(secret=canary, forward=local_app.url) as (listener, inspector):
        send(listener.url, build_body("confirm_final_grades", 1), secret=canary)
        wait_rows(inspector, 1)
        detail = call(inspector, "GET", "/api/requests/1").json
        replayed = replay(inspector, 1).json
    forward = detail["forward"]
    assert forward["body"] is None and forward["bodyBase64"]
    shown = base64.b64decode(forward["bodyBase64"])
    assert shown.startswith(b"\xff\xfe configured with ") and canary.encode() not in shown
    assert b"***" in shown
    assert canary not in json.dumps(replayed)


def test_a_request_without_a_single_header_is_shown_with_none(capfd) -> None:
    # HTTP/1.0 needs no Host, and a POST needs no Content-Length to have no body: a row with no
    # headers at all (its detail failed once, reading "no headers" as one header without a value).
    with inspecting() as (listener, inspector):
        assert raw_status(listener.port, b"POST / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 401 ")
        row = wait_rows(inspector, 1)[0]
        detail = call(inspector, "GET", f"/api/requests/{row['id']}")
        curl = call(inspector, "GET", f"/api/requests/{row['id']}/curl")
    assert detail.status == 200 and detail.json["requestHeaders"] == [], detail.body[:200]
    assert detail.json["signature"] == "missing" and curl.status == 200
    assert "Traceback" not in capfd.readouterr().err
