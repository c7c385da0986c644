"""The receiver held to SPEC §8 "The receiver", in-process: strict HTTP/1.1 (no smuggling),
connection, header, body and memory limits, the forward deadline, answer order."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from inspera_cli.listener import Listener, ListenerConfig, Report
from inspera_cli.signing import sign
from tests.receiver import Receiver
from tests.test_listen import SECRET, event_body, signed_headers
from tests.test_listen_server import connect, raw_request, read_responses, read_until_closed


@pytest.fixture
def received() -> list[Report]:
    return []


@pytest.fixture
def listener(received: list[Report]) -> Iterator[Listener]:
    lst = Listener(ListenerConfig(port=0, secret=SECRET), on_report=received.append)
    lst.start()
    yield lst
    lst.shutdown()


def exchange(listener: Listener, data: bytes) -> bytes:
    """Send raw bytes, half-close, and read everything until the listener closes."""
    with connect(listener) as sock:
        sock.sendall(data)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return read_until_closed(sock)


def smuggle(head: str, body: bytes) -> bytes:
    """A request whose body hides a second, signed request."""
    hidden = raw_request(event_body())
    return (f"POST / HTTP/1.1\r\nHost: x\r\n{head}\r\n").encode() + body + hidden


CHUNKED = "Transfer-Encoding: chunked\r\n"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (smuggle("Content-Length: 5\r\n" + CHUNKED, b"0\r\n\r\n"), 400),
        (smuggle(CHUNKED + "Content-Length: 5\r\n", b"0\r\n\r\n"), 400),
        (smuggle("Transfer-Encoding: notchunked\r\n", b"0\r\n\r\n"), 501),
        (smuggle("Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), 501),
        (smuggle("Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"), 501),
        (smuggle(CHUNKED, b"0x34\r\n" + b"a" * 52 + b"\r\n0\r\n\r\n"), 400),
        (smuggle(CHUNKED, b"+5\r\nhello\r\n0\r\n\r\n"), 400),
        (smuggle(CHUNKED, b" 5 \r\nhello\r\n0\r\n\r\n"), 400),
        (smuggle(CHUNKED, b"5\r\nhello\r\n-0\r\n\r\n"), 400),
        (smuggle(CHUNKED, b"5\r\nhelloEXTRA\r\n0\r\n\r\n"), 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ²\r\n\r\nhi".encode(), 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\nhi", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nX-A\x00b: 1\r\nContent-Length: 2\r\n\r\nhi", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nX-A: 1\x002\r\nContent-Length: 2\r\n\r\nhi", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nX-A: 1\r2\r\nContent-Length: 2\r\n\r\nhi", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nX-A: 1\n2\r\nContent-Length: 2\r\n\r\nhi", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nX-A\r: 1\r\nContent-Length: 2\r\n\r\nhi", 400),
    ],
    ids=["CL+TE", "TE+CL", "TE notchunked", "TE gzip, chunked", "TE chunked twice", "chunk 0x34",
         "chunk +5", "chunk ' 5 '", "chunk -0", "bytes after chunk data", "CL superscript two",
         "CL +2", "CL twice", "NUL in name", "NUL in value", "CR in value", "LF in value", "CR in name"],
)
def test_smuggling_is_refused_and_the_connection_closed(
    listener: Listener, received: list[Report], data: bytes, status: int
) -> None:
    answer = exchange(listener, data)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
    assert answer.count(b"HTTP/1.1 ") == 1  # nothing hidden in the body was answered
    assert b"Connection: close" in answer
    assert received == [] and listener.stats().bad_requests == 1


def test_a_chunk_extension_and_trailers_are_still_fine(listener: Listener) -> None:
    body = event_body()
    head = f"POST / HTTP/1.1\r\nHost: x\r\n{CHUNKED}X-Inspera-Signature: {sign(body, SECRET)}\r\n\r\n"
    data = head.encode() + b"%x;name=value\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(body), body)
    with connect(listener) as sock:
        sock.sendall(data)
        assert read_responses(sock, 1)[0][0] == 200


def _head(target: str = "/", headers: int = 0, value: str = "v") -> bytes:
    extra = "".join(f"X-Extra-{n}: {value}\r\n" for n in range(headers))
    return f"POST {target} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 2\r\n\r\n{{}}".encode()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (_head(headers=99), 431),  # with Host and Content-Length: 101 headers, one too many
        (_head(headers=1, value="v" * (64 * 1024)), 431),
        (_head(headers=20, value="v" * 4000), 431),  # 80 kB of headers, none large
        (_head(target="/" + "a" * (64 * 1024)), 414),
        (b"POST / HTTP/1.1\r\nHost: x\r\n" + CHUNKED.encode() + b"\r\n2\r\n{}\r\n0\r\n"
         + b"".join(b"X-Trailer-%d: v\r\n" % n for n in range(99)) + b"\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\n" + CHUNKED.encode() + b"\r\n2\r\n{}\r\n0\r\n"
         + b"X-Trailer: " + b"t" * (64 * 1024) + b"\r\n\r\n", 431),
    ],
    ids=["101 headers", "one header of 64 KiB", "20 headers of 4 kB", "a target of 64 KiB",
         "2 headers and 99 trailers", "a trailer of 64 KiB"],
)
def test_a_head_beyond_the_bounds_is_refused_not_held(
    listener: Listener, received: list[Report], data: bytes, status: int
) -> None:
    answer = exchange(listener, data)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
    assert b"Connection: close" in answer
    assert received == [] and listener.stats().bad_requests == 1


def test_a_header_that_never_ends_is_refused_once_past_the_bound(listener: Listener) -> None:
    # Without a count of the bytes the parser holds for a header not yet ended, this header grew
    # until the 10 s deadline closed the connection: memory from one request, unbounded.
    with connect(listener) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        try:
            while sent < (4 << 20):
                sock.sendall(b"v" * 16384)
                sent += 16384
        except OSError:  # closed after the 431: what was still on its way was refused
            pass
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    assert listener.stats().bad_requests == 1


def test_a_trailer_that_never_ends_is_refused_once_past_the_bound(listener: Listener) -> None:
    with connect(listener) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\n{CHUNKED}\r\n2\r\n{{}}\r\n0\r\nX-Endless: ".encode())
        sent = 0
        try:
            while sent < (4 << 20):
                sock.sendall(b"v" * 16384)
                sent += 16384
        except OSError:
            pass
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]


def test_a_chunked_body_cut_anywhere_gets_through(listener: Listener) -> None:
    # 300 kB in chunks of 10 kB, sent in pieces of 999 bytes: many reads end inside a chunk's size
    # line or its data, none of which is head.
    body = b'{"contextObjectId": 1, "event": "confirm_final_grades", "pad": "' + b"p" * 300_000 + b'"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 10_000]), body[i:i + 10_000])
                      for i in range(0, len(body), 10_000))
    data = (f"POST / HTTP/1.1\r\nHost: x\r\nX-Inspera-Signature: {sign(body, SECRET)}\r\n{CHUNKED}\r\n"
            .encode() + chunks + b"0\r\nX-Trailer: t\r\n\r\n")
    with connect(listener) as sock:
        for start in range(0, len(data), 999):
            sock.sendall(data[start : start + 999])
        assert read_responses(sock, 1)[0][0] == 200
    assert listener.stats().bad_requests == 0


def test_heads_within_the_bounds_get_through_however_they_are_cut(listener: Listener) -> None:
    # 100 headers and nearly 64 KiB of them, sent in 1 kB pieces (many reads of head alone), then
    # two requests in one write whose bodies are far larger than a head may be.
    body = event_body()
    big = [(f"X-Filler-{n}", "f" * 600) for n in range(96)]
    head = raw_request(body, extra="".join(f"{name}: {value}\r\n" for name, value in big))
    assert len(head) < 64 * 1024 and head.count(b"\r\n") - 2 == 100
    large = b'{"contextObjectId": 1, "event": "confirm_final_grades", "pad": "' + b"p" * 500_000 + b'"}'
    with connect(listener) as sock:
        for start in range(0, len(head), 1000):
            sock.sendall(head[start : start + 1000])
            time.sleep(0.001)
        assert read_responses(sock, 1)[0][0] == 200
        sock.sendall(raw_request(large) + raw_request(large))
        assert [status for status, _, _ in read_responses(sock, 2)] == [200, 200]
    assert listener.wait_accepted(3, timeout=5) and listener.stats().bad_requests == 0


# -- connections -----------------------------------------------------------------------------------


def start(received: list[Report] | None = None, **config: Any) -> Listener:
    lst = Listener(ListenerConfig(**{"port": 0, "secret": SECRET, **config}),
                   on_report=received.append if received is not None else None)
    lst.start()
    return lst


def post_signed(listener: Listener, timeout: float = 5.0) -> requests.Response:
    body = event_body()
    return requests.post(listener.url, data=body, headers=signed_headers(body), timeout=timeout)


def test_max_connections_caps_what_is_open() -> None:
    lst = start(max_connections=4)
    try:
        # Four connections in the middle of a body: busy, so none can make room.
        busy = [connect(lst) for _ in range(4)]
        for sock in busy:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        with connect(lst) as fifth:
            assert read_until_closed(fifth).startswith(b"HTTP/1.1 503 ")
        assert lst.stats().refused_connections == 1
        for sock in busy:
            sock.close()
        time.sleep(0.2)
        # Four idle ones (waiting for headers): a newcomer replaces the one waiting longest.
        idle = [connect(lst) for _ in range(4)]
        time.sleep(0.2)
        assert post_signed(lst).status_code == 200
        assert read_until_closed(idle[0]) == b""  # dropped for the newcomer
        for sock in idle:
            sock.close()
    finally:
        lst.shutdown()


def test_listen_has_max_connections_512_by_default() -> None:
    defaults = ListenerConfig()
    assert (defaults.max_connections, defaults.header_timeout, defaults.body_timeout) == (512, 10.0, 30.0)


def trickle(sock: socket.socket, data: bytes, stop: threading.Event, every: float = 0.2) -> None:
    for byte in data:
        if stop.wait(every):
            return
        try:
            sock.send(bytes([byte]))
        except OSError:
            return


def test_slowloris_and_body_trickle_are_closed_at_the_deadlines_while_events_get_through() -> None:
    """Headers must arrive within header_timeout, the whole body within body_timeout after them
    (10 s and 30 s in `listen`; shortened here, the mechanism is the same)."""
    lst = start(header_timeout=1.5, body_timeout=3.0)
    stop = threading.Event()
    slow_heads = [connect(lst, timeout=10) for _ in range(100)]
    slow_bodies = [connect(lst, timeout=10) for _ in range(100)]
    threads = []
    try:
        started = time.monotonic()
        for sock in slow_heads:
            head = b"POST / HTTP/1.1\r\nX-A: " + b"a" * 500
            threads.append(threading.Thread(target=trickle, args=(sock, head, stop)))
        for sock in slow_bodies:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            threads.append(threading.Thread(target=trickle, args=(sock, b"b" * 1000, stop)))
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        before = time.monotonic()
        assert post_signed(lst, timeout=1).status_code == 200
        assert time.monotonic() - before < 1
        for sock in slow_heads:
            assert read_until_closed(sock) == b""
        head_closed = time.monotonic() - started
        for sock in slow_bodies:
            assert read_until_closed(sock) == b""
        body_closed = time.monotonic() - started
        assert 1.0 <= head_closed <= 2.7, head_closed
        assert 2.5 <= body_closed <= 4.7, body_closed
        assert lst.stats().timed_out == 200
        assert post_signed(lst, timeout=1).status_code == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for sock in slow_heads + slow_bodies:
            sock.close()
        lst.shutdown()


# -- order, secrets ----------------------------------------------------------------------------------


def test_reports_come_in_the_order_requests_were_answered_even_under_cpu_load(
    received: list[Report],
) -> None:
    burners = [subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 30\n"
                                 "while time.time() < end: pass"]) for _ in range(2)]
    lst = start(received)
    try:
        bodies = [event_body() for _ in range(600)]
        for body in bodies:  # each on a new connection, answered before the next is sent
            with connect(lst) as sock:
                sock.sendall(raw_request(body))
                assert read_responses(sock, 1)[0][0] == 200
    finally:
        lst.shutdown()
        for burner in burners:
            burner.kill()
            burner.wait()
    assert [report.body for report in received] == bodies


def test_a_secret_that_is_not_utf8_verifies_as_the_bytes_it_stands_for(received: list[Report]) -> None:
    """An environment variable holding bytes that are not UTF-8 reaches Python with surrogate
    escapes. The CLI refuses such a secret; the core must still answer, never close silently."""
    secret = b"\xffsecret\xfe".decode("utf-8", "surrogateescape")
    lst = start(received, secret=secret)
    try:
        import hashlib
        import hmac

        body = event_body()
        good = hmac.new(b"\xffsecret\xfe", body, hashlib.sha1).hexdigest()
        answers = [requests.post(lst.url, data=body, headers={"X-Inspera-Signature": sig}, timeout=5)
                   for sig in (good, "0" * 40)]
        assert [a.status_code for a in answers] == [200, 401]
    finally:
        lst.shutdown()


# -- forwarding --------------------------------------------------------------------------------------


class TricklingApp:
    """An app that answers a status line at once, then one header byte every half second."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hooks"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            trickle(conn, b"X-Slow: " + b"z" * 100, self.stop, every=0.5)

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        self.thread.join(5)


def test_a_silent_or_trickling_app_gets_502_at_the_forward_deadline(received: list[Report]) -> None:
    """The forward timeout is a deadline for the app's whole answer (9 s in `listen`: Inspera gives
    up at 10 s; shortened here, the mechanism is the same). The defect: it was a timeout per read,
    so an app trickling its answer got Inspera a 502 only after 14.5–15 s."""
    assert ListenerConfig(port=0).forward_timeout == 9.0
    deadline = 2.0
    trickling = TricklingApp()  # a byte every 0.5 s: no single read ever waits for the deadline
    with Receiver(delay=10, path="") as silent:
        lst = start(received, forward={None: trickling.url, "user_deleted": silent.url},
                    forward_timeout=deadline)
        answers: dict[str, tuple[int, float]] = {}

        def send(event: str) -> None:
            body = event_body(event)
            started = time.monotonic()
            status = requests.post(lst.url, data=body, headers=signed_headers(body), timeout=20).status_code
            answers[event] = (status, time.monotonic() - started)

        senders = [threading.Thread(target=send, args=(e,)) for e in ("confirm_final_grades", "user_deleted")]
        try:
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
        finally:
            trickling.close()
            lst.shutdown()
    for status, elapsed in answers.values():
        assert status == 502 and deadline - 0.05 <= elapsed <= deadline + 3, answers
    forwards = {(r.forward.status, r.forward.error) for r in received if r.forward is not None}
    assert forwards == {(None, "no answer within 2 s")}


# -- observers (`inspect`) --------------------------------------------------------------------------


def test_observers_see_every_exchange_and_a_slow_one_slows_nobody() -> None:
    from inspera_cli.listener import Exchange
    from inspera_cli.listener.http import Answer, Request

    lst = start(forward={})
    seen_on_loop: list[tuple[Report, Request, Answer]] = []
    seen_slowly: list[Exchange] = []

    def slow(exchange: Exchange) -> None:
        seen_slowly.append(exchange)
        time.sleep(0.5)

    feed = lst.add_observer(slow, max_items=5)
    lst.add_loop_observer(lambda *answered: seen_on_loop.append(answered))
    try:
        started = time.monotonic()
        with requests.Session() as session:
            for _ in range(40):
                body = event_body()
                answer = session.post(lst.url, data=body, headers=signed_headers(body), timeout=5)
                assert answer.status_code == 200
        assert time.monotonic() - started < 8  # not 40 × 0.5 s
    finally:
        lst.shutdown()
    assert len(seen_on_loop) == 40
    report, request, answer = seen_on_loop[0]
    assert report.body == request.body and report.status == answer.status == 200
    assert ("X-Inspera-Signature", sign(report.body, SECRET)) in request.headers
    assert answer.body == b"OK\n"
    first = seen_slowly[0]
    assert first.report.body == first.report.raw.encode() and first.report.status == 200
    assert ("X-Inspera-Signature", sign(first.report.body, SECRET)) in first.request_headers
    assert first.answer_headers[0][0] == "Content-Type" and first.answer_body == b"OK\n"
    assert feed.dropped > 0 and len(seen_slowly) + feed.dropped == 40


def test_a_display_nobody_reads_is_waited_for_briefly_at_the_end_and_the_rest_counted() -> None:
    """A consumer stuck on a terminal nobody reads: closing waits ``timeout`` for it, then counts
    what it did not take as dropped, and nothing is handed to it after that."""
    from inspera_cli.listener.feed import Feed

    taken: list[int] = []
    release = threading.Event()

    def stuck(item: int) -> None:
        taken.append(item)
        release.wait(10)

    feed = Feed(stuck)
    for item in range(10):
        feed.put(item)
    deadline = time.monotonic() + 10
    while not taken and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    feed.close(timeout=0.3)
    waited = time.monotonic() - started
    release.set()
    time.sleep(0.1)
    assert taken == [0] and feed.dropped == 9
    assert 0.3 <= waited < 5


def test_an_upgrade_request_is_answered_then_closed(listener: Listener) -> None:
    """httptools stops at an Upgrade: the request is answered, and nothing after it is read."""
    data = (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n"
            + raw_request(event_body()))
    with connect(listener) as sock:
        sock.sendall(data)
        started = time.monotonic()
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 1
    assert time.monotonic() - started < 2  # closed, not left to the 10 s header deadline


def test_a_body_larger_than_the_shared_body_memory_still_gets_through() -> None:
    """--max-body above the memory bodies share: such a body is read alone, never stalled."""
    lst = start(max_body=4 << 20, body_memory=1 << 20)
    try:
        body = event_body()[:-1] + b', "pad": "' + b"p" * (3 << 20) + b'"}'
        for _ in range(2):
            answer = requests.post(lst.url, data=body, headers=signed_headers(body), timeout=10)
            assert answer.status_code == 200
    finally:
        lst.shutdown()


def test_a_forward_url_the_http_client_refuses_is_a_502_at_once(received: list[Report]) -> None:
    """A host name label over 63 characters: the HTTP client raises UnicodeError, not OSError."""
    lst = start(received, forward={None: "http://" + "a" * 70 + ".example/hooks"})
    try:
        started = time.monotonic()
        assert post_signed(lst).status_code == 502
        assert time.monotonic() - started < 3  # not the 9 s deadline
    finally:
        lst.shutdown()
    assert received[0].forward is not None and received[0].forward.error


def test_absurdly_nested_json_is_shown_raw_and_acknowledged(received: list[Report]) -> None:
    lst = start(received)
    try:
        body = b"[" * 100_000 + b"]" * 100_000
        assert requests.post(lst.url, data=body, headers=signed_headers(body), timeout=5).status_code == 200
    finally:
        lst.shutdown()
    assert (received[0].event, received[0].note) == (None, "shown raw: body is JSON nested too deeply")
