"""`listen --inspect` and `inspect FILE`: the page's JSON API, its security rules (SPEC §9), Copy
as curl run by a real shell and curl, the bounds of the inspect port, and the commands."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests

from inspera_cli.inspector.store import Query, Store, from_record
from inspera_cli.recording import RecordReader, encode_record, tail_start
from inspera_cli.signing import diagnose_signature, sign
from inspera_cli.webhook_body import build_body
from tests.inspecting import SECRET, EventReader, call, inspecting, replay, rows
from tests.processes import CLI, LineProcess, run
from tests.receiver import Receiver, free_port

STATIC = Path(__file__).resolve().parent.parent / "inspera_cli" / "inspector" / "static"


def send(url: str, body: bytes, *, secret: str | None = SECRET, signature: str | None = None,
         content_type: str = "application/json") -> int:
    headers = {"Content-Type": content_type}
    if signature is not None:
        headers["X-Inspera-Signature"] = signature
    elif secret is not None:
        headers["X-Inspera-Signature"] = sign(body, secret)
    return requests.post(url, data=body, headers=headers, timeout=10).status_code


def wait_rows(inspector: object, count: int, timeout: float = 3.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        found = rows(inspector)  # type: ignore[arg-type]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


# -- the list, the detail, filters -----------------------------------------------------------------


def test_rows_come_newest_first_with_the_spec_fields(local_app: Receiver) -> None:
    with inspecting(forward=local_app.url) as (listener, inspector):
        send(listener.url, build_body("confirm_final_grades", 101))
        send(listener.url, build_body("complete_grading", 102), secret="another-secret")
        found = wait_rows(inspector, 2)
    assert [r["id"] for r in found] == [2, 1]
    newest, oldest = found
    assert set(oldest) >= {"id", "receivedAt", "event", "contextObjectId", "signature", "delivery",
                           "status", "forward"}
    assert (oldest["event"], oldest["contextObjectId"], oldest["signature"], oldest["status"]) == (
        "confirm_final_grades", 101, "valid", 200)
    assert oldest["forward"]["url"] == local_app.url and oldest["forward"]["status"] == 200
    assert (newest["signature"], newest["status"], newest["forward"]) == ("invalid", 401, None)


def test_filters_and_search_narrow_the_list() -> None:
    with inspecting() as (listener, inspector):
        send(listener.url, build_body("confirm_final_grades", 35199862))
        send(listener.url, build_body("complete_grading", 35199899))
        send(listener.url, build_body("confirm_final_grades", 35199877), secret="wrong")
        send(listener.url, build_body("user_deleted", 5), secret=None)
        wait_rows(inspector, 4)
        by = {q: [(r["event"], r["contextObjectId"]) for r in rows(inspector, q)] for q in (
            "?event=confirm_final_grades", "?signature=invalid", "?signature=missing,invalid",
            "?status=4xx", "?status=200", "?q=35199899", "?q=COMPLETE_grading", "?limit=1",
            "?event=confirm_final_grades&signature=valid")}
        refused = [call(inspector, "GET", f"/api/requests{q}").status
                   for q in ("?signature=bogus", "?status=abc", "?limit=0", "?limit=x")]
    assert by["?event=confirm_final_grades"] == [("confirm_final_grades", 35199877),
                                                 ("confirm_final_grades", 35199862)]
    assert by["?signature=invalid"] == [("confirm_final_grades", 35199877)]
    assert by["?signature=missing,invalid"] == [("user_deleted", 5), ("confirm_final_grades", 35199877)]
    assert by["?status=4xx"] == by["?signature=missing,invalid"]
    assert by["?status=200"] == [("complete_grading", 35199899), ("confirm_final_grades", 35199862)]
    assert by["?q=35199899"] == [("complete_grading", 35199899)]
    assert by["?q=COMPLETE_grading"] == [("complete_grading", 35199899)]
    assert by["?limit=1"] == [("user_deleted", 5)]
    assert by["?event=confirm_final_grades&signature=valid"] == [("confirm_final_grades", 35199862)]
    assert refused == [400, 400, 400, 400]


def test_the_detail_holds_the_exact_body_headers_both_answers(local_app: Receiver) -> None:
    local_app.body = b'{"took": "it", "note": "first 64 KiB kept"}'
    body = b'{"contextObjectId": 7, "event": "confirm_final_grades", "timestamp": "t", "x": "\\u00e9"}'
    with inspecting(forward=local_app.url) as (listener, inspector):
        send(listener.url, body)
        binary = b"\xff\xfe\x00binary"
        send(listener.url, binary)
        java = b"{contextObjectId=35199862, event=confirm_final_grades, timestamp=2018-10-04T16:47:55Z}"
        send(listener.url, java)
        wait_rows(inspector, 3)
        json_detail = call(inspector, "GET", "/api/requests/1").json
        binary_detail = call(inspector, "GET", "/api/requests/2").json
        java_detail = call(inspector, "GET", "/api/requests/3").json
        missing = call(inspector, "GET", "/api/requests/99")
    assert json_detail["body"].encode() == body and base64.b64decode(json_detail["bodyBase64"]) == body
    assert json_detail["format"] == "json" and json_detail["payload"]["x"] == "é"
    assert ["X-Inspera-Signature", sign(body, SECRET)] in json_detail["requestHeaders"]
    assert json_detail["answer"]["status"] == 200
    forward = json_detail["forward"]
    assert forward["status"] == 200 and forward["body"] == local_app.body.decode()
    assert ["X-App", "test-app"] in forward["headers"] and forward["latencyMs"] >= 0
    assert "body" not in binary_detail and base64.b64decode(binary_detail["bodyBase64"]) == binary
    assert binary_detail["format"] is None and binary_detail["payload"] is None
    assert java_detail["format"] == "java-map" and java_detail["payload"]["contextObjectId"] == 35199862
    assert missing.status == 404


def test_an_invalid_signature_shows_verify_s_diagnosis() -> None:
    signed = build_body("confirm_final_grades", 9)
    with inspecting() as (listener, inspector):
        send(listener.url, signed + b"\n", signature=sign(signed, SECRET))  # a newline added later
        send(listener.url, signed, secret=None)
        send(listener.url, signed, signature="X-Inspera-Signature: " + sign(signed, SECRET))
        wait_rows(inspector, 3)
        details = [call(inspector, "GET", f"/api/requests/{n}").json for n in (1, 2, 3)]
    newline, missing, pasted = (d["diagnosis"] for d in details)
    assert newline == {"valid": False, "notes": [],
                       "reason": diagnose_signature(signed + b"\n", sign(signed, SECRET), SECRET).reason}
    assert "newline that was not signed" in newline["reason"]
    assert "no X-Inspera-Signature header" in missing["reason"]
    assert "includes the header name" in pasted["reason"]


def test_without_a_secret_there_is_no_diagnosis_and_replays_go_unsigned(local_app: Receiver) -> None:
    with inspecting(secret=None, forward=local_app.url) as (listener, inspector):
        send(listener.url, build_body("confirm_final_grades", 1), secret=None)
        wait_rows(inspector, 1)
        assert call(inspector, "GET", "/api/requests/1").json["diagnosis"] is None
        assert replay(inspector, 1).status == 200
        assert rows(inspector)[0]["signature"] == "unchecked"
    assert "X-Inspera-Signature" not in local_app.wait(2)[1].headers


# -- replay ------------------------------------------------------------------------------------------


def test_replay_resends_re_signed_and_adds_a_row_marked_replay(local_app: Receiver) -> None:
    body = build_body("confirm_final_grades", 35199862)
    with inspecting(forward=local_app.url) as (listener, inspector):
        stream = EventReader(inspector)
        send(listener.url, body)
        wait_rows(inspector, 1)
        local_app.body = b"thanks, again"
        local_app.status = 202
        outcome = replay(inspector, 1)
        edited = body.replace(b"35199862", b"42")
        edited_outcome = replay(inspector, 1, body=edited.decode())
        assert stream.wait(lambda events: len(events) >= 3)
        listed = rows(inspector)
        stream.close()
    first, again, changed = local_app.wait(3)
    assert again.body == body and again.headers["X-Inspera-Signature"] == sign(body, SECRET)
    assert changed.body == edited and changed.headers["X-Inspera-Signature"] == sign(edited, SECRET)
    assert first.headers["X-Inspera-Signature"] == again.headers["X-Inspera-Signature"]
    result = outcome.json
    assert outcome.status == 200 and set(result) >= {"status", "latencyMs", "error", "body"}
    assert (result["status"], result["error"], result["body"]) == (202, None, "thanks, again")
    assert edited_outcome.json["id"] == 3
    assert [(r["id"], r["replayOf"], r["contextObjectId"]) for r in listed] == [
        (3, 1, 42), (2, 1, 35199862), (1, None, 35199862)]
    assert listed[0]["forward"]["status"] == 202 and listed[0]["signature"] == "valid"
    assert [r["id"] for r in stream.requests()] == [1, 2, 3]


def test_replay_goes_to_a_typed_url_and_reports_an_app_that_is_down(local_app: Receiver) -> None:
    down = f"http://127.0.0.1:{free_port()}/hooks"
    with inspecting() as (listener, inspector):
        send(listener.url, build_body("confirm_final_grades", 1))
        wait_rows(inspector, 1)
        no_target = replay(inspector, 1)
        typed = replay(inspector, 1, to=local_app.url)
        failed = replay(inspector, 1, to=down)
        after = rows(inspector)
    assert len(after) == 3 and after[0]["forward"]["error"] == "connection refused"
    assert no_target.status == 400 and "no target" in no_target.json["error"]
    assert typed.json["status"] == 200 and len(local_app.wait(1)) == 1
    assert failed.status == 200
    assert (failed.json["status"], failed.json["error"]) == (None, "connection refused")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "javascript:alert(1)", "ftp://127.0.0.1/x",
                                 "http://user:pw@127.0.0.1/", "http://", "http://a b/", "gopher://x"])
def test_a_replay_url_that_is_not_http_is_refused(url: str) -> None:
    with inspecting() as (listener, inspector):
        send(listener.url, build_body("confirm_final_grades", 1))
        wait_rows(inspector, 1)
        answer = replay(inspector, 1, to=url)
        curl = call(inspector, "GET", f"/api/requests/1/curl?to={requests.utils.quote(url, safe='')}")
        assert len(rows(inspector)) == 1
    assert answer.status == 400 and curl.status == 400


def test_replay_bodies_that_are_not_the_api_s_are_refused() -> None:
    with inspecting() as (listener, inspector):
        send(listener.url, build_body("confirm_final_grades", 1))
        wait_rows(inspector, 1)
        headers = {"Origin": f"http://127.0.0.1:{inspector.port}", "X-Inspect-Token": inspector.token}
        statuses = [call(inspector, "POST", "/api/requests/1/replay", body=data, headers=headers).status
                     for data in (b"not json", b"[]", b'{"to": 5}', b'{"body": ["x"]}')]
        unknown = call(inspector, "POST", "/api/requests/77/replay", body=b"{}", headers=headers).status
        wrong_method = call(inspector, "GET", "/api/requests/1/replay").status
    assert statuses == [400, 400, 400, 400] and unknown == 404 and wrong_method == 405


# -- security (SPEC §9) ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1", "localhost", "127.0.0.1:1",
                                  "127.0.0.2:{port}", "[::1]:{port}", "127.0.0.1:{port}.evil.example",
                                  ""])
def test_a_foreign_host_header_is_refused_on_every_route(host: str) -> None:
    """DNS rebinding: a name the attacker controls that resolves to 127.0.0.1 sends its own Host."""
    with inspecting() as (listener, inspector):
        send(listener.url, build_body("confirm_final_grades", 1))
        wait_rows(inspector, 1)
        given = host.format(port=inspector.port)
        headers = {"Origin": f"http://{given}", "X-Inspect-Token": inspector.token}
        statuses = {path: call(inspector, method, path, host=given, headers=headers,
                               body=b"{}" if method == "POST" else None).status
                    for method, path in (("GET", "/"), ("GET", "/app.js"), ("GET", "/api/info"),
                                         ("GET", "/api/requests"), ("GET", "/api/requests/1"),
                                         ("GET", "/api/stream"), ("GET", "/api/requests/1/record"),
                                         ("POST", "/api/requests/1/replay"))}
        fine = [call(inspector, "GET", "/", host=h).status
                for h in (f"127.0.0.1:{inspector.port}", f"localhost:{inspector.port}",
                          f"LocalHost:{inspector.port}")]
    assert set(statuses.values()) == {403}, statuses
    assert fine == [200, 200, 200]


def test_a_request_without_a_host_header_is_refused() -> None:
    with inspecting() as (_, inspector), socket.create_connection(("127.0.0.1", inspector.port)) as sock:
        sock.sendall(b"GET /api/requests HTTP/1.0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 403 ")


def test_a_replay_needs_this_page_s_origin_and_token(local_app: Receiver) -> None:
    with inspecting(forward=local_app.url) as (listener, inspector):
        send(listener.url, build_body("confirm_final_grades", 1))
        wait_rows(inspector, 1)
        port = inspector.port
        refused = [
            replay(inspector, 1, Origin=None),
            replay(inspector, 1, Origin="http://evil.example"),
            replay(inspector, 1, Origin="null"),
            replay(inspector, 1, Origin=f"http://127.0.0.1:{port + 1}"),
            replay(inspector, 1, Origin=f"https://127.0.0.1:{port}"),
            replay(inspector, 1, Origin=f"http://localhost:{port}"),  # Host is 127.0.0.1: not same-origin
            replay(inspector, 1, X_Inspect_Token=None),
            replay(inspector, 1, X_Inspect_Token="guess"),
            replay(inspector, 1, X_Inspect_Token=inspector.token[:-1]),
        ]
        page = call(inspector, "GET", "/").body.decode()
        from_page = re.search(r'<meta name="inspect-token" content="([^"]+)">', page)
        assert from_page is not None
        accepted = replay(inspector, 1, X_Inspect_Token=from_page.group(1))
    assert [r.status for r in refused] == [403] * len(refused)
    assert accepted.status == 200
    assert len(local_app.wait(2)) == 2  # the event and the one replay that was allowed


def test_every_answer_carries_the_security_headers() -> None:
    with inspecting() as (_, inspector):
        answers = [call(inspector, "GET", path) for path in
                   ("/", "/app.js", "/app.css", "/api/requests", "/api/requests/9", "/nothing")]
        answers.append(call(inspector, "GET", "/", host="evil.example"))
        answers.append(call(inspector, "POST", "/api/requests/1/replay", body=b"{}"))
    for answer in answers:
        csp = answer.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'" and "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["x-frame-options"] == "DENY"
        assert "access-control-allow-origin" not in answer.headers
    assert [a.status for a in answers] == [200, 200, 200, 200, 404, 404, 403, 403]
    assert answers[0].headers["content-type"] == "text/html; charset=utf-8"
    assert answers[1].headers["content-type"] == "text/javascript; charset=utf-8"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


def test_the_page_has_no_inline_script_and_nothing_from_elsewhere() -> None:
    parser = _Tags()
    parser.feed((STATIC / "index.html").read_text())
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts == [{"src": "app.js", "defer": None}] and not parser.script_text.strip()
    for tag, attrs in parser.tags:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        assert "style" not in attrs, tag
        for name in ("src", "href"):
            assert "//" not in (attrs.get(name) or ""), (tag, attrs)  # no CDN, nothing remote
    assert "<style" not in (STATIC / "index.html").read_text()


def test_the_script_never_turns_data_into_html() -> None:
    """Event data only enters the page as text: no HTML parsing sinks in the script at all."""
    script = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", "srcdoc", "DOMParser", "createContextualFragment"):
        assert sink not in script, sink
    assert "http://" not in script.replace("http://127.0.0.1:5000/hooks", "")
    assert "https://" not in script


def test_the_secret_is_in_no_answer_and_no_event(local_app: Receiver) -> None:
    """Canary: a distinctive secret, every route, every kind of row, and an app that echoes it."""
    canary = "canary-" + os.urandom(8).hex()
    local_app.body = f'{{"configured with": "{canary}"}}'.encode()
    body = build_body("confirm_final_grades", 35199862)
    with inspecting(secret=canary, forward=local_app.url) as (listener, inspector):
        stream = EventReader(inspector)
        send(listener.url, body, secret=canary)  # valid
        send(listener.url, body + b"\n", signature=sign(body, canary))  # invalid: diagnosed
        send(listener.url, body, secret=None)  # missing
        send(listener.url, body, secret=canary + "\n")  # signed with secret + newline: diagnosed
        send(listener.url, b"\x00\xff" + canary.encode()[:3], secret=canary)  # binary
        wait_rows(inspector, 5)
        answers = [replay(inspector, 1), replay(inspector, 2, body="edited")]
        paths = ["/", "/app.js", "/app.css", "/favicon.svg", "/api/info", "/api/requests",
                 "/api/requests?q=canary", "/api/stream?after=0"]
        for entry in rows(inspector):
            paths += [f"/api/requests/{entry['id']}{tail}" for tail in ("", "/record", "/curl")]
        for path in paths:
            if path.startswith("/api/stream"):
                continue
            answers.append(call(inspector, "GET", path))
        assert stream.wait(lambda events: len(events) >= 7)
        replayed = EventReader(inspector, "?after=0")
        assert replayed.wait(lambda events: len(events) >= 7)
        stream.close()
        replayed.close()
    assert len(answers) > 25 and all(a.status == 200 for a in answers)
    forms = {canary, json.dumps(canary)[1:-1], base64.b64encode(canary.encode()).decode()}
    for answer in answers:
        text = answer.body + json.dumps(answer.headers).encode()
        for form in forms:
            assert form.encode() not in text, answer.body[:300]
    for form in forms:
        assert form.encode() not in stream.raw and form.encode() not in replayed.raw


def test_the_inspect_port_bounds_what_a_request_may_cost() -> None:
    with inspecting() as (_, inspector):
        port = inspector.port
        huge_header = call(inspector, "GET", "/api/requests", headers={"X-Big": "x" * (40 << 10)})
        too_long = call(inspector, "POST", "/api/requests/1/replay", body=b"x" * ((4 << 20) + 1),
                        headers={"Origin": f"http://127.0.0.1:{port}", "X-Inspect-Token": inspector.token})
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"POST /api/requests/1/replay HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n".encode())
            chunked = sock.recv(100)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
            malformed = sock.recv(100)
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(80)]
        try:
            time.sleep(0.3)
            refused = 0
            for sock in held[64:]:
                sock.settimeout(2)
                try:
                    refused += sock.recv(1) == b""
                except (TimeoutError, ConnectionError):
                    refused += 1
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.3)  # the server sees the 80 go
        after = call(inspector, "GET", "/api/info").status
    assert huge_header.status == 431
    assert too_long.status == 413
    assert chunked.startswith(b"HTTP/1.1 501 ") and malformed.startswith(b"HTTP/1.1 400 ")
    assert refused == 16 and after == 200


# -- live rows -----------------------------------------------------------------------------------------


def test_the_stream_sends_each_new_row_at_once_and_resumes_after_the_last_id() -> None:
    with inspecting() as (listener, inspector):
        everything = EventReader(inspector)
        invalid_only = EventReader(inspector, "?signature=invalid")
        time.sleep(0.1)
        sent_at = time.monotonic()
        send(listener.url, build_body("confirm_final_grades", 1))
        assert everything.wait(lambda events: len(events) == 1, timeout=1.0)
        arrived = time.monotonic() - sent_at
        send(listener.url, build_body("confirm_final_grades", 2), secret="wrong")
        send(listener.url, build_body("confirm_final_grades", 3))
        assert everything.wait(lambda events: len(events) == 3)
        assert invalid_only.wait(lambda events: len(events) == 1)
        resumed = EventReader(inspector, headers={"Last-Event-ID": "1"})
        assert resumed.wait(lambda events: len(events) == 2)
        for reader in (everything, invalid_only, resumed):
            reader.close()
    assert arrived < 1.0
    assert [(n, i) for n, i, _ in everything.events] == [("request", "1"), ("request", "2"), ("request", "3")]
    assert [r["contextObjectId"] for r in everything.requests()] == [1, 2, 3]
    assert [r["contextObjectId"] for r in invalid_only.requests()] == [2]
    assert [r["id"] for r in resumed.requests()] == [2, 3]
    assert everything.raw.split(b"\r\n\r\n")[0].lower().count(b"content-type: text/event-stream") == 1


def test_a_burst_beyond_what_a_page_can_show_is_a_gap_not_a_flood() -> None:
    from inspera_cli.inspector import server

    with inspecting() as (_, inspector):
        reader = EventReader(inspector)
        time.sleep(0.1)
        for number in range(server.ROWS_PER_FLUSH * 3):
            inspector.store.add(from_record(_record(number)))
        assert reader.wait(lambda events: any(name == "gap" for name, _, _ in events))
        assert reader.wait(lambda events: events[-1][1] == str(server.ROWS_PER_FLUSH * 3))
        reader.close()
    assert len(reader.requests()) < server.ROWS_PER_FLUSH * 3


# -- the store, history, download ----------------------------------------------------------------------


def _record(number: int, body: bytes | None = None) -> object:
    from inspera_cli.recording import RecordedRequest

    body = body or build_body("confirm_final_grades", number)
    fields = {"receivedAt": "2024-05-01T12:00:00.000Z", "event": "confirm_final_grades",
              "contextObjectId": number, "signature": "valid", "delivery": 1, "status": 200,
              "forward": None, "body": body.decode()}
    return RecordedRequest("f", number, body, "confirm_final_grades", fields["receivedAt"], 200,
                           fields=fields)


def test_the_store_keeps_the_newest_rows_within_its_bounds() -> None:
    store = Store(keep=3, max_bytes=10 << 20)
    for number in range(5):
        store.add(from_record(_record(number)))  # type: ignore[arg-type]
    assert [e.report.context_object_id for e in store.newest(Query())] == [4, 3, 2]
    assert store.get(1) is None and store.get(5) is not None
    assert [e.id for e in store.after(3)] == [4, 5]
    small = Store(keep=100, max_bytes=(5 << 20) // 2)
    for number in range(6):
        big = build_body("confirm_final_grades", number)[:-1] + b', "pad": "' + b"p" * (1 << 20) + b'"}'
        small.add(from_record(_record(number, big)))  # type: ignore[arg-type]
    assert len(small) == 2  # bodies of 1 MiB: the byte bound, not the count


def test_rows_the_count_bound_dropped_no_longer_count_against_the_byte_bound() -> None:
    # Two bodies of 1 MiB that a store of three rows drops by count, then two more: they fit in
    # its 2.5 MiB beside a small row only if the first two gave their bytes back; a third goes
    # beyond the bytes (live rows, as the listener adds them, too).
    from inspera_cli.listener.http import Answer, Request
    from inspera_cli.listener.report import Report, RequestKind, SignatureState

    bodies = [build_body("confirm_final_grades", number) for number in range(12)]
    for number in (3, 4, 9, 10, 11):
        bodies[number] = bodies[number][:-1] + b', "pad": "' + b"p" * (1 << 20) + b'"}'

    def live(store: Store, body: bytes) -> None:
        headers = [("Host", "127.0.0.1:8000"), ("Content-Length", str(len(body)))]
        store.add_answered(
            Report("2024-05-01T12:00:00.000Z", RequestKind.EVENT, "POST", "/", 200, SignatureState.VALID,
                   "confirm_final_grades", 1, None, body),
            Request("POST", "/", "/", "1.1", headers, {k.lower(): v for k, v in headers}, body,
                    "2024-05-01T12:00:00.000Z", True),
            Answer(200, b"OK\n"))

    for add in (lambda store, body: store.add(from_record(_record(0, body))), live):  # type: ignore[arg-type]
        store = Store(keep=3, max_bytes=(5 << 20) // 2)
        for number in range(9):
            add(store, bodies[number])
            if number == 4:
                assert [e.report.body for e in store.newest(Query())] == bodies[4:1:-1]
        assert len(store) == 3  # rows 6, 7 and 8: the big ones were dropped by count
        add(store, bodies[9])
        add(store, bodies[10])
        assert [e.id for e in store.newest(Query())] == [11, 10, 9], "bytes counted for rows gone"
        add(store, bodies[11])
        assert [e.id for e in store.newest(Query())] == [12, 11]


def test_a_restart_keeps_the_history_from_the_record_file(tmp_path: Path) -> None:
    record = tmp_path / "events.jsonl"
    with inspecting(record=record) as (listener, inspector):
        for number in (1, 2, 3):
            send(listener.url, build_body("confirm_final_grades", number))
        wait_rows(inspector, 3)
        first_download = call(inspector, "GET", "/api/requests/1/record")
    with inspecting(record=record, keep=3) as (listener, inspector):
        assert [r["contextObjectId"] for r in rows(inspector)] == [3, 2, 1]
        send(listener.url, build_body("confirm_final_grades", 4))
        time.sleep(0.3)
        again = wait_rows(inspector, 3)
    assert [r["contextObjectId"] for r in again] == [4, 3, 2]
    assert first_download.body == record.read_bytes().splitlines(keepends=True)[0]
    assert first_download.headers["content-disposition"] == 'attachment; filename="inspera-request-1.jsonl"'


def test_a_downloaded_line_of_any_row_is_a_record_replay_reads(tmp_path: Path) -> None:
    with inspecting() as (listener, inspector):
        send(listener.url, b"\x00\xffnot text", secret="wrong")
        wait_rows(inspector, 1)
        line = call(inspector, "GET", "/api/requests/1/record").body
    path = tmp_path / "one.jsonl"
    path.write_bytes(line)
    (record,) = list(RecordReader(path))
    assert record.body == b"\x00\xffnot text" and record.fields["signature"] == "invalid"
    assert line == encode_record(record.fields)


def test_tail_start_finds_the_last_lines_without_reading_them(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"".join(b"line %d\n" % n for n in range(1, 2001)))
    offset, line = tail_start(path, 3)
    assert path.read_bytes()[offset:] == b"line 1998\nline 1999\nline 2000\n" and line == 1998
    assert tail_start(path, 5000) == (0, 1)
    assert tail_start(tmp_path / "missing", 3) == (0, 1)


# -- Copy as curl, run by a real shell -------------------------------------------------------------------

CURL_BODIES = [
    build_body("confirm_final_grades", 35199862),
    b'{"event": "confirm_final_grades", "quote": "it\'s \\"here\\"",'
    b' "shell": "$(touch pwned) `id` $HOME !x"}',
    b'@/etc/passwd',
    b'{"event": "e", "text": "line one\nline two\r\n\ttabbed"}\n',
    '{"event": "ünïcødé ✓", "contextObjectId": 1}'.encode(),
    b"\x00\x01binary\xff\xfe with NUL and 100% \\ backslash 'quote'",
    b"",
]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_copy_as_curl_reproduces_the_request_exactly(local_app: Receiver, tmp_path: Path, shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    with inspecting() as (listener, inspector):
        for body in CURL_BODIES:
            send(listener.url, body)
        send(listener.url, CURL_BODIES[0], signature="sha1=" + sign(CURL_BODIES[0], "another").upper())
        wait_rows(inspector, len(CURL_BODIES) + 1)
        target = requests.utils.quote(local_app.url, safe="")
        commands = [call(inspector, "GET", f"/api/requests/{n}/curl?to={target}").json["command"]
                    for n in range(1, len(CURL_BODIES) + 2)]
    for command in commands:
        assert SECRET not in command
        done = subprocess.run([shell, "-c", command], cwd=tmp_path, capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
    received = local_app.wait(len(commands))
    assert [r.body for r in received] == [*CURL_BODIES, CURL_BODIES[0]]
    for body, got in zip(CURL_BODIES, received, strict=False):
        assert got.headers["X-Inspera-Signature"] == sign(body, SECRET)
        assert got.headers["Content-Type"] == "application/json"
    assert received[-1].headers["X-Inspera-Signature"] == "sha1=" + sign(CURL_BODIES[0], "another").upper()
    assert not (tmp_path / "pwned").exists()


# -- the commands ----------------------------------------------------------------------------------------


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSPERA_")}
    return {**env, "HOOK_SECRET": SECRET, **more}


def _url(lines: list[str], label: str) -> str:
    return next(line.split(" ", 1)[1] for line in lines if line.startswith(label))


def test_listen_inspect_serves_the_page_on_its_own_port_only() -> None:
    argv = [*CLI, "listen", "--port", "0", "--secret-env", "HOOK_SECRET", "--inspect", "--inspect-port", "0"]
    with LineProcess(argv, _env()) as proc:
        assert proc.wait(lambda: any(line.startswith("Inspect:") for line in proc.stderr))
        ready = next(i for i, line in enumerate(proc.stderr) if line.startswith("Ready:"))
        assert proc.stderr[ready + 1].startswith("Inspect: http://127.0.0.1:")
        page, listener_url = _url(proc.stderr, "Inspect:"), _url(proc.stderr, "Ready:")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", page) and page != listener_url
        assert send(listener_url, build_body("confirm_final_grades", 7)) == 200
        time.sleep(0.3)  # answered: the row is kept as the answer goes out, in the listener's loop
        assert "inspect" not in requests.get(listener_url, timeout=5).text.lower()
        assert requests.get(listener_url + "api/requests", timeout=5).status_code == 404
        assert requests.get(listener_url + "app.js", timeout=5).status_code == 404
        found = requests.get(page + "api/requests", timeout=5).json()["requests"]
        assert [r["contextObjectId"] for r in found] == [7]
        assert "inspect-token" in requests.get(page, timeout=5).text
        assert proc.finish(2) == 0


def test_listen_inspect_options_need_inspect_and_a_free_port(cli: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run([*CLI, "listen", "--port", "0", "--inspect", "--inspect-port", str(port), "--max-time",
                    "5"], capture_output=True, text=True, env=_env(), timeout=30)
    alone = cli("listen", "--inspect-port", "0", expect=2)
    assert "--inspect-port is only used with --inspect" in alone.stderr
    assert busy.returncode == 1
    assert busy.stderr.splitlines() == [  # the error alone: no "Stopped after 0.0 s" summary above it
        f"inspera-hooks: error: cannot serve the inspector on 127.0.0.1:{port}: Address "
        "already in use (pick another --inspect-port, or 0 for a free one)"]
    assert "Traceback" not in busy.stderr


def test_inspect_follows_a_record_file_as_it_grows(tmp_path: Path, local_app: Receiver) -> None:
    record = tmp_path / "events.jsonl"
    lines = [_line(n) for n in (1, 2)]
    record.write_bytes(b"".join(lines) + b"not json\n")
    argv = [*CLI, "inspect", str(record), "--port", "0", "--to", local_app.url, "--secret-env", "HOOK_SECRET"]
    with LineProcess(argv, _env()) as proc:
        assert proc.wait(lambda: any(line.startswith("Inspect:") for line in proc.stderr))
        page = _url(proc.stderr, "Inspect:")
        assert _object_ids(page) == [2, 1]
        with record.open("ab") as file:
            file.write(_line(3)[:20])
            file.flush()
            time.sleep(0.4)
            file.write(_line(3)[20:])
        deadline = time.monotonic() + 3
        found: list[int] = []
        while time.monotonic() < deadline and len(found) < 3:
            found = _object_ids(page)
            time.sleep(0.05)
        assert found == [3, 2, 1]
        token = re.search(r'content="([^"]+)"', requests.get(page, timeout=5).text.split("inspect-token")[1])
        assert token is not None
        answer = requests.post(page + "api/requests/3/replay", json={"to": None, "body": None}, timeout=10,
                               headers={"Origin": page.rstrip("/"), "X-Inspect-Token": token.group(1)})
        assert answer.json()["status"] == 200
        assert proc.finish(2) == 0
    (got,) = local_app.wait(1)
    assert got.body == build_body("confirm_final_grades", 3, timestamp="2024-05-01T12:00:00Z")
    assert got.headers["X-Inspera-Signature"] == sign(got.body, SECRET)
    assert any("line 3: not valid JSON" in line for line in proc.stderr)


def _object_ids(page: str) -> list[int]:
    return [r["contextObjectId"] for r in requests.get(page + "api/requests", timeout=5).json()["requests"]]


def _line(number: int) -> bytes:
    body = build_body("confirm_final_grades", number, timestamp="2024-05-01T12:00:00Z")
    return encode_record({"receivedAt": "2024-05-01T12:00:00.000Z", "event": "confirm_final_grades",
                          "contextObjectId": number, "signature": "valid", "delivery": 1, "status": 200,
                          "forward": None, "headers": {"Content-Type": "application/json"},
                          "body": body.decode()})


@pytest.mark.parametrize(("args", "code", "message"), [
    (["missing.jsonl"], 1, "missing.jsonl: no such file"),
    ([".", "--port", "0"], 1, "is a directory"),
    (["x.jsonl", "--to", "ftp://x/"], 2, "--to 'ftp://x/' is not an http(s) URL"),
    (["x.jsonl", "--secret-env", "UNSET_VAR_FOR_TEST"], 2, "UNSET_VAR_FOR_TEST is not set"),
])
def test_inspect_refuses_bad_input_in_one_line(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               args: list[str], code: int, message: str) -> None:
    (tmp_path / "x.jsonl").write_bytes(_line(1))
    if args == ["missing.jsonl"]:  # one case as the real program runs
        done = run([*CLI, "inspect", *args], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                   timeout=30)
        exit_code, stderr = done.returncode, done.stderr
    else:
        monkeypatch.chdir(tmp_path)
        ran = cli("inspect", *args, expect=None, env={"HOOK_SECRET": SECRET})
        exit_code, stderr = ran.exit_code, ran.stderr
    assert exit_code == code, stderr
    assert message in stderr and "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if "error" in line]) == 1


# -- the package -----------------------------------------------------------------------------------------


def test_an_installed_wheel_serves_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hatchling = pytest.importorskip("hatchling.build",
                                    reason="building the wheel offline needs hatchling (the test extra)")
    # The build backend's PEP 517 hook, which `pip wheel` runs in a process of its own (pip's
    # start-up costs more than the build); then the wheel unpacked, which is what installing a
    # pure-Python wheel does (a file under *.data/ would be missing from the package: a failure).
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    wheel = tmp_path / "dist" / hatchling.build_wheel(str(tmp_path / "dist"))
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("index.html", "app.js", "app.css", "favicon.svg"):
        assert f"inspera_cli/inspector/static/{name}" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    record = tmp_path / "events.jsonl"
    record.write_bytes(_line(1))
    env = {**_env(), "PYTHONPATH": str(target)}
    # -P: the working directory (this source tree) is not put on sys.path before the wheel's copy
    with LineProcess([sys.executable, "-P", "-c", "import inspera_cli, sys; print(inspera_cli.__file__, "
                      "file=sys.stderr); sys.argv[0] = 'inspera-hooks'; from inspera_cli.cli import main; "
                      "main()", "inspect", str(record), "--port", "0"], env) as proc:
        assert proc.wait(lambda: any(line.startswith("Inspect:") for line in proc.stderr))
        assert proc.stderr[0].startswith(str(target))  # the wheel's copy, not the source tree
        page = _url(proc.stderr, "Inspect:")
        for name in ("app.js", "app.css", "favicon.svg"):
            assert requests.get(page + name, timeout=5).content == (STATIC / name).read_bytes()
        assert "inspect-token" in requests.get(page, timeout=5).text
        assert proc.finish(2) == 0
