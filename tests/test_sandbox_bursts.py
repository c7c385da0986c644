"""The sandbox as a busy tenant: bursts, --rate, keep-alive connections, bounded history, and the
HTTP it reads back from receivers. Real servers on 127.0.0.1 throughout."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import signal
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from inspera_cli.delivery_client import AnswerError, Closed, ResponseReader
from inspera_cli.sandbox import Sandbox
from inspera_cli.sandbox.delivery import IDLE_SECONDS, MAX_CONNECTIONS
from tests import test_sandbox, test_sandbox_cli
from tests.conftest import Cli
from tests.receiver import Receiver
from tests.test_sandbox import Api
from tests.test_sandbox_cli import Serve

EVENT = "confirm_final_grades"
receiver = test_sandbox.receiver  # the same fixtures: stdlib receivers and sandboxes on port 0
make_sandbox = test_sandbox.make_sandbox
api = test_sandbox.api


def hmac_sha1(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def events(r: Receiver) -> list[tuple[str, dict[str, str], bytes]]:
    """What a receiver got, the endpoint validation left out."""
    return [item for item in r.received if json.loads(item[2])["event"] != "verification"]


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- sandbox fire --count / --rate ------------------------------------------------------------------


def test_a_burst_reaches_the_receiver_exactly_count_times(
    cli: Cli, sandbox_env: Sandbox, receiver: Callable[..., Receiver]
) -> None:
    r = receiver(keep_alive=True)
    cli("create", "--event", EVENT, "--endpoint", r.url, "--secret-env", "HOOK_SECRET",
        env={"HOOK_SECRET": "burst-secret"})

    fired = cli("sandbox", "fire", EVENT, "--count", "300", "--object-id", "5000", "--json").json
    ids = fired["deliveryIds"]
    assert ids == list(range(ids[0], ids[0] + 300))
    sandbox_env.wait_idle(timeout=30)

    got = events(r)
    assert len(got) == 300
    assert Counter(json.loads(body)["contextObjectId"] for _, _, body in got) == Counter(range(5000, 5300))
    for _, headers, body in got:
        assert headers["X-Inspera-Signature"] == hmac_sha1(body, "burst-secret")
        assert headers["Content-Type"] == "application/json"
    attempts = cli("sandbox", "deliveries", "--json").json
    assert sorted(a["deliveryId"] for a in attempts) == ids
    assert {(a["attempt"], a["status"], a["error"]) for a in attempts} == {(1, 200, None)}


def test_a_burst_goes_to_every_subscription_with_consecutive_ids(
    api: Api, receiver: Callable[..., Receiver]
) -> None:
    first, second = receiver(), receiver()
    sub_a = api.create(first.url, secret="a").json()["subscriptionId"]
    sub_b = api.create(second.url, secret="b").json()["subscriptionId"]

    fired = api("POST", "/_sandbox/fire", json={"event": EVENT, "contextObjectId": 70, "count": 3})
    ids = fired.json()["deliveryIds"]
    assert ids == list(range(ids[0], ids[0] + 6))
    api.sb.wait_idle(timeout=10)
    by_id = {a["deliveryId"]: a["subscriptionId"] for a in api.sb.deliveries()}
    # event i to the j-th subscription is ids[i * 2 + j]
    assert [by_id[i] for i in ids] == [sub_a, sub_b] * 3
    for r, secret in ((first, "a"), (second, "b")):
        got = events(r)
        assert sorted(json.loads(body)["contextObjectId"] for _, _, body in got) == [70, 71, 72]
        assert all(h["X-Inspera-Signature"] == hmac_sha1(body, secret) for _, h, body in got)
    # The same event reaches every subscription as the same bytes.
    assert {body for _, _, body in events(first)} == {body for _, _, body in events(second)}


def test_subscriptions_on_one_endpoint_take_turns(api: Api, receiver: Callable[..., Receiver]) -> None:
    r = receiver(keep_alive=True)
    api.create(r.url, secret="a")
    api.create(r.url.replace("/hook", "/other"), secret="b")
    api.sb.fire(EVENT, count=100)
    api.sb.wait_idle(timeout=20)
    paths = [path for path, _, _ in events(r)]
    assert Counter(paths) == {"/hook": 100, "/other": 100}
    # Not all of one subscription's deliveries before the other's first.
    assert set(paths[:20]) == {"/hook", "/other"}


def test_rate_spaces_the_events(cli: Cli, sandbox_env: Sandbox, receiver: Callable[..., Receiver]) -> None:
    r = receiver(keep_alive=True)
    cli("create", "--event", EVENT, "--endpoint", r.url, "--secret-env", "S", env={"S": "x"})
    started = time.monotonic()
    cli("sandbox", "fire", EVENT, "--count", "6", "--rate", "10", "--object-id", "1")
    sandbox_env.wait_idle(timeout=10)

    bodies = [body for _, _, body in r.received]
    arrived = {json.loads(body)["contextObjectId"]: at for body, at in zip(bodies, r.arrivals, strict=True)}
    assert sorted(arrived) == [0, 1, 2, 3, 4, 5, 6]  # 0: the validation
    for index in range(6):
        # Event i is due i / rate after the fire: never earlier (a loaded machine may make it
        # later, the first one too, so the gaps between arrivals prove nothing more; a burst sent
        # at once fails here from the second event on).
        assert arrived[1 + index] - started >= index / 10 - 0.005


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "0"], "--count must be a whole number from 1 to 1000000"),
        (["--count", "-4"], "--count must be a whole number from 1 to 1000000"),
        (["--count", "1000001"], "--count must be a whole number from 1 to 1000000"),
        (["--rate", "0"], "--rate must be a number of events per second greater than 0"),
        (["--rate", "-1.5"], "--rate must be a number of events per second greater than 0"),
        (["--rate", "nan"], "--rate must be a number of events per second greater than 0"),
        (["--rate", "inf"], "--rate must be a number of events per second greater than 0"),
    ],
)
def test_bad_count_or_rate_is_a_usage_error(
    cli: Cli, sandbox_env: Sandbox, args: list[str], message: str
) -> None:
    result = cli("sandbox", "fire", EVENT, *args, expect=2)
    assert result.stderr == f"inspera-hooks: error: {message}\n"
    assert ("POST", "/_sandbox/fire") not in sandbox_env.requests


def test_a_fire_beyond_a_million_deliveries_is_refused(api: Api, receiver: Callable[..., Receiver]) -> None:
    r = receiver()
    api.create(r.url, secret="a")
    api.create(r.url + "/2", secret="b")
    answer = api("POST", "/_sandbox/fire", json={"event": EVENT, "count": 600_000})
    assert answer.status_code == 400
    assert answer.json()["error"] == (
        "600000 events for 2 subscriptions make 1200000 deliveries; at most 1000000 a fire"
    )
    time.sleep(0.2)
    assert api.sb.attempts == 0 and len(r.received) == 2  # the validations only


# -- connections ---------------------------------------------------------------------------------------


def test_deliveries_reuse_keep_alive_connections(
    make_sandbox: Callable[..., Sandbox], receiver: Callable[..., Receiver]
) -> None:
    sb = make_sandbox()
    r = receiver(keep_alive=True)
    Api(sb).create(r.url)
    assert r.connections == 1  # the validation's own connection

    sb.fire(EVENT, count=400)
    sb.wait_idle(timeout=30)
    assert len(events(r)) == 400
    assert r.connections <= 1 + MAX_CONNECTIONS  # one connection a delivery before
    # Idle connections are closed: nothing stays open per endpoint.
    assert wait_for(lambda: r.open_connections == 0, IDLE_SECONDS + 5)


def test_a_slow_receiver_delays_only_its_own_deliveries(
    make_sandbox: Callable[..., Sandbox], receiver: Callable[..., Receiver]
) -> None:
    sb = make_sandbox(retries=0, delivery_timeout=10.0)
    slow, fast = receiver(), receiver()
    api = Api(sb)
    api.create(slow.url)
    api.create(fast.url)
    slow.delay = 2.0
    started = time.monotonic()
    sb.fire(EVENT, count=40)
    # The slow lane needs at least 40 / MAX_CONNECTIONS rounds of 2 s; the fast one is not held up.
    assert wait_for(lambda: len(events(fast)) == 40, 4.0)
    assert time.monotonic() - started < 4.0
    assert len([a for a in sb.deliveries() if a["endpoint"] == slow.url]) < 40


def test_a_receiver_that_closes_idle_connections_costs_no_attempt(
    make_sandbox: Callable[..., Sandbox], receiver: Callable[..., Receiver]
) -> None:
    """The receiver closes each keep-alive connection 0.1 s after its answer; events come 0.4 s
    apart, so every one finds its connection closed and must go out on a new one."""
    sb = make_sandbox()
    r = receiver(keep_alive=True)
    r.server.RequestHandlerClass.timeout = 0.1  # type: ignore[attr-defined]
    Api(sb).create(r.url)
    sb.fire(EVENT, 1, count=4, rate=2.5)
    sb.wait_idle(timeout=10)
    assert [(a["attempt"], a["status"]) for a in sb.deliveries()] == [(1, 200)] * 4
    assert len(events(r)) == 4


class RawReceiver:
    """A socket server answering with scripted bytes: ``answers[n]`` for the n-th request on a
    connection (None: hang up without answering)."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            reader = conn.makefile("rb")
            for answer in self.answers:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                self.requests.append(head + reader.read(length))
                if answer is None:
                    return
                conn.sendall(answer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_receiver() -> Iterator[Callable[[list[bytes | None]], RawReceiver]]:
    made: list[RawReceiver] = []

    def make(answers: list[bytes | None]) -> RawReceiver:
        made.append(RawReceiver(answers))
        return made[-1]

    yield make
    for r in made:
        r.close()


CHUNKED_OK = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nOK\n\r\n0\r\nX-Trailer: t\r\n\r\n"
)


def test_chunked_answers_keep_the_connection_and_a_stale_one_is_resent(
    make_sandbox: Callable[..., Sandbox], raw_receiver: Callable[[list[bytes | None]], RawReceiver]
) -> None:
    """Each connection gets a chunked 200, then a hang-up on its second request, as from a receiver
    closing an idle connection just as it is reused. The second delivery goes out again on a new
    connection, and is not a failed attempt."""
    sb = make_sandbox(retries=0)
    r = raw_receiver([CHUNKED_OK, None])
    Api(sb).create(r.url)  # a connection of its own, closed after
    sb.fire(EVENT, 1, count=2, rate=5)
    sb.wait_idle(timeout=10)
    assert [(a["attempt"], a["status"]) for a in sb.deliveries()] == [(1, 200), (1, 200)]
    bodies = [request.partition(b"\r\n\r\n")[2] for request in r.requests]
    # validation, event 1 (chunked answer, kept), event 2 (hung up on), event 2 again (answered)
    assert [json.loads(b)["contextObjectId"] for b in bodies] == [0, 1, 2, 2]
    assert bodies[2] == bodies[3]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "the connection was closed mid-answer"),
        (b"", "the connection was closed without an answer"),
        (b"SMTP ready\r\n\r\n", "invalid answer (not an HTTP/1.x answer)"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx", "invalid answer (invalid Content-Length)"),
    ],
)
def test_a_broken_answer_is_a_failed_attempt_with_the_reason(
    make_sandbox: Callable[..., Sandbox],
    raw_receiver: Callable[[list[bytes | None]], RawReceiver],
    answer: bytes,
    error: str,
) -> None:
    sb = make_sandbox(retries=0)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    r = raw_receiver([ok])
    Api(sb).create(r.url)
    r.answers = [answer or None]
    sb.fire(EVENT)
    sb.wait_idle(timeout=10)
    assert [(a["status"], a["error"]) for a in sb.deliveries()] == [(None, error)]


def test_https_endpoints_are_verified_against_requests_ca_bundle(
    make_sandbox: Callable[..., Sandbox],
    receiver: Callable[..., Receiver],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    r = receiver(keep_alive=True, tls=context)
    assert r.url.startswith("https://")

    refused = Api(make_sandbox()).create(r.url)
    assert refused.status_code == 400
    assert refused.json()["error"].startswith(
        f"endpoint validation failed: {r.url}: TLS error (certificate verify failed: "
    )

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    trusting = Api(make_sandbox())
    assert trusting.create(r.url).status_code == 200
    trusting.sb.fire(EVENT, count=5)
    trusting.sb.wait_idle(timeout=10)
    assert [(a["status"], a["error"]) for a in trusting.sb.deliveries()] == [(200, None)] * 5
    assert len(events(r)) == 5


# -- bounded memory ------------------------------------------------------------------------------------


def test_keep_bounds_the_history_to_the_newest_attempts(receiver: Callable[..., Receiver]) -> None:
    r = receiver(keep_alive=True)
    serve = Serve("--keep", "5")
    try:
        with requests.Session() as s:
            token = test_sandbox_cli._token(serve.url, "sandbox", "sandbox-key")
            s.headers["Authorization"] = f"Bearer {token}"
            s.post(f"{serve.url}/api/v1/subscription", timeout=5,
                   json={"event": EVENT, "endpoint": r.url, "secret": "k"}).raise_for_status()
            def kept() -> list[int]:
                answer = s.get(f"{serve.url}/_sandbox/deliveries", timeout=5).json()
                return sorted(a["deliveryId"] for a in answer["deliveries"])

            def fire(count: int) -> list[int]:
                fired = s.post(f"{serve.url}/_sandbox/fire", json={"event": EVENT, "count": count}, timeout=5)
                ids: list[int] = fired.json()["deliveryIds"]
                return ids

            # One at a time: "newest" is the order attempts finish in, and a burst's deliveries
            # finish in any order over parallel connections.
            first: list[int] = []
            for _ in range(7):
                [latest] = fire(1)
                assert wait_for(lambda latest=latest: latest in kept(), 10)
                first.append(latest)
            assert kept() == first[2:]
            second = fire(5)  # the newest five now, however they finished among themselves
            assert wait_for(lambda: kept() == second, 10)
    finally:
        assert serve.stop() == 0
    assert len(events(r)) == 12


def test_history_and_connections_stay_bounded_over_many_deliveries(
    make_sandbox: Callable[..., Sandbox], receiver: Callable[..., Receiver]
) -> None:
    sb = make_sandbox(keep=50)
    r = receiver(keep_alive=True)
    Api(sb).create(r.url)
    for _ in range(3):
        sb.fire(EVENT, count=1000)
    sb.wait_idle(timeout=60)
    assert sb.attempts == 3000
    assert len(sb.deliveries()) == 50
    assert sb.wait_deliveries(3000, timeout=1) == sb.deliveries()
    assert r.connections <= 1 + MAX_CONNECTIONS


# -- the log --------------------------------------------------------------------------------------------


def test_serve_logs_a_refused_request_with_its_reason(receiver: Callable[..., Receiver]) -> None:
    refusing = receiver(status=401)
    serve = Serve("--api-key", "k-9b2")
    try:
        bad = requests.post(
            f"{serve.url}/api/authenticate/token/?grant_type=authorization_code&client_id=sandbox",
            headers={"code": "wrong-key-77"}, timeout=5,
        )
        assert bad.status_code == 401
        headers = {"Authorization": "Bearer " + test_sandbox_cli._token(serve.url, "sandbox", "k-9b2")}
        refused = requests.post(f"{serve.url}/api/v1/subscription", headers=headers, timeout=5,
                                json={"event": EVENT, "endpoint": refusing.url, "secret": "sec-r3t"})
        assert refused.status_code == 400
        fired = requests.post(f"{serve.url}/_sandbox/fire", json={"event": EVENT, "count": 0}, timeout=5)
        assert fired.status_code == 400
    finally:
        assert serve.stop(signal.SIGTERM) == 0
    log = "".join(serve.stderr)
    assert "POST /api/authenticate/token/ 401 (invalid_grant)\n" in log
    assert (
        f"POST /api/v1/subscription 400 (endpoint validation failed: {refusing.url} answered 401; "
        "it must answer 200 OK)\n"
    ) in log
    assert "POST /_sandbox/fire 400 (field count must be a whole number from 1 to 1000000)\n" in log
    assert "wrong-key-77" not in log and "sec-r3t" not in log


def test_a_log_that_cannot_keep_up_drops_lines_and_says_how_many() -> None:
    from inspera_cli.sandbox.log_writer import LogWriter

    release = threading.Event()
    written: list[str] = []

    def slow_write(line: str) -> None:
        release.wait(10)  # a terminal nobody scrolls
        written.append(line)

    writer = LogWriter(slow_write, backlog=3)
    started = time.monotonic()
    for n in range(20):
        writer.put(f"line {n}")  # never blocks the caller
    assert time.monotonic() - started < 1
    release.set()
    writer.close()
    assert written[-1].endswith("log lines dropped: the log could not keep up)")
    dropped = int(written[-1].strip("(").split()[0])
    assert len(written) - 1 + dropped == 20


def test_log_lines_escape_control_characters(make_sandbox: Callable[..., Sandbox]) -> None:
    lines: list[str] = []
    sb = make_sandbox(log=lines.append)
    test_sandbox.raw_exchange(sb, b"GET /\x1b[2J HTTP/1.1\r\nConnection: close\r\n\r\n")
    sb.shutdown()
    assert lines == ["GET /\\x1b[2J 404 (no such API route: /\\x1b[2J)"]


# -- reading answers ----------------------------------------------------------------------------------


ANSWERS = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nOK\n", 200, True),
    (CHUNKED_OK, 200, True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n", 201, True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", 204, True),
    (b"HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno", 500, False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 200, False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", 200, True),
    (b"HTTP/1.1 200\r\nContent-Length: 2, 2\r\n\r\nOK", 200, True),
]


@pytest.mark.parametrize(("data", "status", "reusable"), ANSWERS)
def test_answers_are_read_whatever_the_split(data: bytes, status: int, reusable: bool) -> None:
    for cut in range(len(data) + 1):
        reader = ResponseReader()
        answer = reader.feed(data[:cut]) if cut else None
        if answer is None:
            answer = reader.feed(data[cut:])
        assert answer == (status, reusable), cut


def test_bytes_after_the_answer_make_the_connection_unusable() -> None:
    assert ResponseReader().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKextra") == (200, False)


def test_a_body_until_close_ends_with_the_connection() -> None:
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\n\r\nwhatever comes") is None
    assert reader.feed_eof() == (200, False)
    with pytest.raises(Closed, match="closed mid-answer"):
        half = ResponseReader()
        half.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        half.feed_eof()


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOKxx",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 70_000,
    ],
)
def test_what_is_not_an_answer_is_refused(data: bytes) -> None:
    with pytest.raises(AnswerError):
        ResponseReader().feed(data)


def test_a_huge_answer_body_is_not_read_to_its_end() -> None:
    reader = ResponseReader()
    big = 10 * 1024 * 1024
    assert reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % big) is None
    answer = None
    for _ in range(math.ceil(big / 65536)):
        answer = reader.feed(b"x" * 65536)
        if answer is not None:
            break
    assert answer == (200, False)
