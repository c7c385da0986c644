"""The Listener in-process (as `demo` embeds it): its Python API, HTTP edge cases over raw
sockets, group-committed records under concurrency, and a hypothesis fuzz of bad input."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspera_cli.errors import InsperaError
from inspera_cli.listener import Listener, ListenerConfig, Report, RequestKind
from inspera_cli.signing import sign
from tests.openssl import openssl_sign
from tests.receiver import Receiver, free_port
from tests.test_listen import SECRET, event_body, signed_headers

# Raw-socket checks sign hundreds of bodies with the package's own helper, which
# test_openssl_agrees_with_the_signatures_used_here cross-checks.


@pytest.fixture
def received() -> list[Report]:
    return []


def start(received: list[Report] | None = None, **config: Any) -> Listener:
    options: dict[str, Any] = {"port": 0, "secret": SECRET, **config}
    on_report = received.append if received is not None else None
    listener = Listener(ListenerConfig(**options), on_report=on_report)
    listener.start()
    return listener


@pytest.fixture
def listener(received: list[Report], tmp_path: Path) -> Iterator[Listener]:
    lst = start(received, record=tmp_path / "events.jsonl", header_timeout=2.0)
    yield lst
    lst.shutdown()


def raw_request(body: bytes, *, path: str = "/", extra: str = "", signature: str | None = None) -> bytes:
    signature = sign(body, SECRET) if signature is None else signature
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Inspera-Signature: {signature}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``count`` HTTP responses from a socket (Content-Length framed)."""
    buffer = b""
    answers = []
    while len(answers) < count:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            lines = buffer[:end].decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", 0))
            if len(buffer) >= end + 4 + length:
                answers.append((int(lines[0].split()[1]), headers, buffer[end + 4 : end + 4 + length]))
                buffer = buffer[end + 4 + length :]
                continue
        data = sock.recv(65536)
        if not data:
            break
        buffer += data
    return answers


def connect(listener: Listener, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", listener.port), timeout=timeout)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


# -- the Python API -----------------------------------------------------------------------------


def test_python_api_start_url_callback_wait_stats_shutdown(received: list[Report]) -> None:
    lst = start(received, path="/inspera")
    try:
        assert lst.url == f"http://127.0.0.1:{lst.port}/inspera"
        body = event_body()
        assert requests.post(lst.url, data=body, headers=signed_headers(body), timeout=5).status_code == 200
        assert lst.wait_accepted(1, timeout=5)
        assert not lst.wait_accepted(2, timeout=0.05)
        requests.get(lst.url, timeout=5)
    finally:
        lst.shutdown()
        lst.shutdown()  # twice is harmless
    event, health = received
    assert (event.kind, event.accepted, event.shown) == (RequestKind.EVENT, True, True)
    assert event.verification is False
    assert (health.kind, health.status, health.method) == (RequestKind.HEALTH, 200, "GET")
    stats = lst.stats()
    assert (stats.requests, stats.events, stats.accepted, stats.recorded) == (2, 1, 1, 0)


def test_a_failed_start_leaves_nothing_open_and_shutdown_is_safe(tmp_path: Path) -> None:
    never = Listener(ListenerConfig(port=0))
    never.shutdown()  # never started: nothing to do, no waiting
    port = free_port()
    before = set(threading.enumerate())
    lst = Listener(ListenerConfig(port=port, record=tmp_path / "missing" / "events.jsonl"))
    with pytest.raises(InsperaError, match="cannot open the record file .*No such file or directory"):
        lst.start()
    started = time.monotonic()
    lst.shutdown()
    lst.shutdown()
    assert time.monotonic() - started < 1
    assert lst.url == ""
    assert set(threading.enumerate()) <= before  # no accept, report or writer thread left behind
    with pytest.raises(ConnectionRefusedError):  # the listening socket was closed
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_shutdown_is_prompt_with_idle_keep_alive_connections(listener: Listener) -> None:
    sockets = [connect(listener) for _ in range(5)]
    body = event_body()
    sockets[0].sendall(raw_request(body))
    assert read_responses(sockets[0], 1)[0][0] == 200
    started = time.monotonic()
    listener.shutdown()
    assert time.monotonic() - started < 2
    for sock in sockets:
        sock.close()


def test_a_forward_slower_than_the_timeout_is_502(received: list[Report]) -> None:
    with Receiver(delay=2, path="") as slow:
        lst = start(received, forward={None: slow.url}, forward_timeout=0.3)
        try:
            body = event_body()
            started = time.monotonic()
            response = requests.post(lst.url, data=body, headers=signed_headers(body), timeout=5)
            assert response.status_code == 502
            assert time.monotonic() - started < 1.5
        finally:
            lst.shutdown()
    forward = received[0].forward
    assert forward is not None
    assert forward.status is None and forward.error == "no answer within 0.3 s"
    assert lst.stats().forward_failures == 1


# -- HTTP over raw sockets ---------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(listener: Listener) -> None:
    first, second = event_body(), event_body()
    with connect(listener) as sock:
        sock.sendall(
            raw_request(first)
            + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
            + raw_request(second, signature="0" * 40)
            + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            + raw_request(second)
        )
        answers = read_responses(sock, 5)
    assert [status for status, _, _ in answers] == [200, 404, 401, 200, 200]
    assert answers[3][2].startswith(b"inspera-hooks listen is running")


def test_connection_close_and_http_1_0_are_honoured(listener: Listener) -> None:
    with connect(listener) as sock:
        sock.sendall(raw_request(event_body(), extra="Connection: close\r\n"))
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in data
    body = event_body()
    with connect(listener) as sock:
        sock.sendall(raw_request(body).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"OK\n")


def test_chunked_bodies_and_expect_100_continue(listener: Listener) -> None:
    body = event_body()
    head = (
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n"
        f"X-Inspera-Signature: {sign(body, SECRET)}\r\n\r\n"
    ).encode()
    with connect(listener) as sock:
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:]))
        assert read_responses(sock, 1)[0][0] == 200


def test_max_body_is_the_limit_exactly(received: list[Report]) -> None:
    lst = start(received, max_body=200)
    try:
        fits = event_body()
        fits = fits[:-1] + b" " * (200 - len(fits)) + b"}"
        assert len(fits) == 200
        assert requests.post(lst.url, data=fits, headers=signed_headers(fits), timeout=5).status_code == 200
        over = fits[:-1] + b" }"
        assert requests.post(lst.url, data=over, headers=signed_headers(over), timeout=5).status_code == 413
        with connect(lst) as sock:  # announced as too large: refused before the body is read
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n" + b"x" * 1000)
            sock.shutdown(socket.SHUT_WR)
            data = read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 413 ")
    finally:
        lst.shutdown()
    assert received[-1].status == 413 and received[-1].kind is RequestKind.EVENT


@pytest.mark.parametrize(
    ("config", "headers", "signature"),
    [
        ({}, {}, "missing"),
        ({}, {"X-Inspera-Signature": "0" * 40}, "invalid"),
        ({"secret": None}, {"X-Inspera-Signature": "0" * 40}, "unchecked"),
        ({"skip_verify": True}, {}, "unchecked"),
    ],
    ids=["secret, no header", "secret, a header", "no secret", "--skip-verify"],
)
def test_a_413_reports_the_signature_it_could_not_check(
    received: list[Report], config: dict[str, Any], headers: dict[str, str], signature: str
) -> None:
    lst = start(received, max_body=64, **config)
    try:
        body = event_body() + b" " * 100
        for chunked in (False, True):  # refused from Content-Length, and part-way through chunks
            data: Any = iter([body[:50], body[50:]]) if chunked else body
            assert requests.post(lst.url, data=data, headers=headers, timeout=5).status_code == 413
    finally:
        lst.shutdown()
    assert [(item.status, item.signature, item.delivery) for item in received] == [
        (413, signature, 1), (413, signature, 1)
    ]
    assert lst.stats().too_large == 2 and lst.stats().retries == 0


def test_only_validly_signed_requests_count_as_deliveries(received: list[Report]) -> None:
    lst = start(received)
    try:
        first, later = event_body(), event_body()
        sends = [
            (first, {"X-Inspera-Signature": sign(first, "another-secret")}, 401),  # forged, before
            (first, {"X-Inspera-Signature": sign(first, SECRET)}, 200),  # the genuine one: #1
            (first, {}, 401),  # a copy without a signature
            (first, {"X-Inspera-Signature": "0" * 40}, 401),  # a copy with a wrong one
            (first, {"X-Inspera-Signature": sign(first, SECRET)}, 200),  # Inspera's retry: #2
            (later, {"X-Inspera-Signature": sign(later, SECRET)}, 200),
        ]
        # One keep-alive connection: its requests are reported in the order they were sent.
        with requests.Session() as session:
            for body, headers, status in sends:
                assert session.post(lst.url, data=body, headers=headers, timeout=5).status_code == status
        assert lst.wait_accepted(3, timeout=5)
    finally:
        lst.shutdown()
    assert [(item.signature, item.delivery) for item in received] == [
        ("invalid", 1), ("valid", 1), ("missing", 1), ("invalid", 1), ("valid", 2), ("valid", 1)
    ]
    assert lst.stats().retries == 1


def test_truncated_bodies_and_silent_clients_are_hung_up_on(received: list[Report]) -> None:
    lst = start(received, header_timeout=0.3)
    try:
        with connect(lst) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"event\"")
            sock.shutdown(socket.SHUT_WR)
            assert read_until_closed(sock) == b""
        with connect(lst) as sock:  # says nothing: closed after the socket timeout
            started = time.monotonic()
            assert read_until_closed(sock) == b""
            assert time.monotonic() - started < 3
        body = event_body()
        assert requests.post(lst.url, data=body, headers=signed_headers(body), timeout=5).status_code == 200
    finally:
        lst.shutdown()


def test_malformed_requests_get_400(listener: Listener) -> None:
    for garbage in (b"HELLO\r\n\r\n", b"POST / HTTP/1.1\r\nno colon here\r\n\r\n",
                    b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b"\xff\xfe / HTTP/1.1\r\n\r\n"):
        with connect(listener) as sock:
            sock.sendall(garbage)
            assert read_until_closed(sock).startswith(b"HTTP/1.1 400 "), garbage
    assert listener.stats().bad_requests == 4


# -- the record file -----------------------------------------------------------------------------


def test_concurrent_events_are_each_recorded_once(listener: Listener, tmp_path: Path) -> None:
    bodies = [event_body() for _ in range(400)]

    def send(share: list[bytes]) -> None:
        with connect(listener) as sock:
            for body in share:
                sock.sendall(raw_request(body))
                assert read_responses(sock, 1)[0][0] == 200

    threads = [threading.Thread(target=send, args=(bodies[i::16],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert sorted(line["body"].encode() for line in lines) == sorted(bodies)
    # Counters are updated just after each answer goes out: give the last ones a moment.
    assert listener.wait_accepted(400, timeout=5)
    assert listener.stats().recorded == listener.stats().accepted == 400


def test_an_event_that_cannot_be_recorded_is_not_acknowledged(received: list[Report]) -> None:
    lst = start(received, record="/dev/full")  # every write fails with ENOSPC
    try:
        body = event_body()
        with requests.Session() as session:  # keep-alive: the writer thread answers
            response = session.post(lst.url, data=body, headers=signed_headers(body), timeout=5)
            assert response.status_code == 500
        with connect(lst) as sock:  # Connection: close: the request thread answers
            sock.sendall(raw_request(body, extra="Connection: close\r\n"))
            assert read_until_closed(sock).startswith(b"HTTP/1.1 500 ")
        assert not lst.wait_accepted(1, timeout=0.1)
    finally:
        lst.shutdown()
    assert [item.status for item in received] == [500, 500]
    assert "could not write the record file" in (received[0].note or "")


# -- anything at all, then a good event ----------------------------------------------------------

FUZZ_SECRET = "fuzz-secret"

methods = st.one_of(
    st.sampled_from(["POST", "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "post"]),
    st.binary(min_size=1, max_size=8),
)
paths = st.one_of(st.sampled_from(["/", "/hook", "//", "*", "/?a=b", "http://x/"]), st.binary(max_size=30))
header_lines = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Expect", b"Connection",
                             b"X-Inspera-Signature", b"Content-Type"]),
            st.one_of(st.sampled_from([b"0", b"5", b"99999999", b"-1", b"chunked", b"100-continue",
                                       b"close", b"keep-alive", b"0" * 40]), st.binary(max_size=20)),
        ).map(lambda kv: kv[0] + b": " + kv[1]),
        st.binary(max_size=40),
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=methods,
    path=paths,
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b""]),
    headers=header_lines,
    body=st.binary(max_size=400),
    cut=st.integers(min_value=0, max_value=600),
    garbage=st.one_of(st.none(), st.binary(max_size=300)),
)
def test_fuzz_then_a_signed_event_is_still_accepted(
    fuzz_listener: Listener, method: bytes | str, path: bytes | str, version: bytes,
    headers: list[bytes], body: bytes, cut: int, garbage: bytes | None,
) -> None:
    if garbage is not None:
        data = garbage
    else:
        as_bytes = [x.encode() if isinstance(x, str) else x for x in (method, path)]
        data = b" ".join([*as_bytes, version]) + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
        data = (data + b"\r\n" + body)[: len(data) + 2 + cut]  # maybe truncated mid-body
    with connect(fuzz_listener, timeout=3) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        answer = read_until_closed(sock)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
    good = event_body()
    response = requests.post(
        fuzz_listener.url, data=good, headers={"X-Inspera-Signature": sign(good, FUZZ_SECRET)}, timeout=5
    )
    assert response.status_code == 200


@pytest.fixture
def fuzz_listener() -> Iterator[Listener]:
    lst = Listener(ListenerConfig(port=0, secret=FUZZ_SECRET, max_body=256, header_timeout=1.0))
    lst.start()
    yield lst
    lst.shutdown()
    assert lst.stats().accepted >= 1


def test_openssl_agrees_with_the_signatures_used_here() -> None:
    body = event_body()
    assert openssl_sign(body, SECRET) == sign(body, SECRET)
