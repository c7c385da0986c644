"""The sandbox tenant over real HTTP: token exchange, subscription API, validation, deliveries."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from inspera_cli.sandbox import Sandbox, SandboxConfig
from tests.openssl import openssl_sign
from tests.receiver import Receiver, free_port

CLIENT_ID = "sandbox"
API_KEY = "sandbox-key-for-tests-9f1c"
EVENT = "confirm_final_grades"


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(status: int = 200, delay: float = 0.0, keep_alive: bool = False, tls: Any = None) -> Receiver:
        made.append(Receiver(status, delay=delay, keep_alive=keep_alive, tls=tls, path="/hook"))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """Sandboxes with fast defaults; any SandboxConfig field can be overridden."""
    started: list[Sandbox] = []

    def make(**overrides: Any) -> Sandbox:
        settings: dict[str, Any] = {
            "port": 0, "client_id": CLIENT_ID, "api_key": API_KEY, "retry_delay": 0.02,
            "validation_timeout": 1.0, "delivery_timeout": 1.0,
        }
        sb = Sandbox(SandboxConfig(**{**settings, **overrides}))
        sb.start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.shutdown()


class Api:
    """A logged-in requests session on one sandbox."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.session = requests.Session()
        self.token = token(sb)
        self.session.headers["Authorization"] = f"Bearer {self.token}"

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.sb.url + path, timeout=10, **kwargs)

    def create(self, endpoint: str, secret: str = "s3cret", event: str = EVENT) -> requests.Response:
        return self("POST", "/api/v1/subscription",
                    json={"event": event, "endpoint": endpoint, "secret": secret})


@pytest.fixture
def api(make_sandbox: Callable[..., Sandbox]) -> Iterator[Api]:
    client = Api(make_sandbox())
    yield client
    client.session.close()


def token(sb: Sandbox, client_id: str = CLIENT_ID, code: str = API_KEY) -> str:
    response = requests.post(
        f"{sb.url}/api/authenticate/token/",
        params={"grant_type": "authorization_code", "client_id": client_id},
        headers={"code": code, "Content-Type": "application/x-www-form-urlencoded"},
        data="",
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


# -- token exchange ---------------------------------------------------------------------------------


def test_token_exchange_answers_token_and_expiry(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(token_ttl=120.0)
    response = requests.post(
        f"{sb.url}/api/authenticate/token/?grant_type=authorization_code&client_id={CLIENT_ID}",
        headers={"code": API_KEY}, timeout=10,
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_in"}
    assert body["expires_in"] == 120 and len(body["access_token"]) >= 32


@pytest.mark.parametrize(
    ("query", "headers", "status", "error"),
    [
        ("client_id=sandbox", {"code": API_KEY}, 400, "invalid_request"),
        ("grant_type=authorization_code", {"code": API_KEY}, 400, "invalid_request"),
        ("grant_type=authorization_code&client_id=sandbox", {}, 400, "invalid_request"),
        ("grant_type=password&client_id=sandbox", {"code": API_KEY}, 400, "unsupported_grant_type"),
        ("grant_type=authorization_code&client_id=sandbox", {"code": "wrong"}, 401, "invalid_grant"),
        ("grant_type=authorization_code&client_id=other", {"code": API_KEY}, 401, "invalid_grant"),
    ],
)
def test_token_exchange_errors(
    make_sandbox: Callable[..., Sandbox], query: str, headers: dict[str, str], status: int, error: str
) -> None:
    sb = make_sandbox()
    response = requests.post(f"{sb.url}/api/authenticate/token/?{query}", headers=headers, timeout=10)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert API_KEY not in response.text


def test_bearer_token_expires_after_ttl(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(token_ttl=0.3)
    headers = {"Authorization": f"Bearer {token(sb)}"}
    assert requests.get(f"{sb.url}/api/v1/subscription", headers=headers, timeout=10).status_code == 200
    time.sleep(0.4)
    response = requests.get(f"{sb.url}/api/v1/subscription", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token", "description": "the access token has expired"}


def test_expire_tokens_route_makes_issued_tokens_fail(api: Api) -> None:
    assert api("GET", "/api/v1/subscription").status_code == 200
    assert api("POST", "/_sandbox/expire-tokens").json() == {"expired": 1}
    assert api("GET", "/api/v1/subscription").status_code == 401


# -- subscription API -------------------------------------------------------------------------------


def test_events_lists_names_with_descriptions(api: Api) -> None:
    events = api("GET", "/api/v1/subscription/events").json()
    names = [e["event"] for e in events]
    assert EVENT in names and len(names) >= 8
    assert all(isinstance(e["description"], str) for e in events)


def test_configured_events_replace_the_defaults(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(events=["a_event", ("b_event", "B happened")])
    headers = {"Authorization": f"Bearer {token(sb)}"}
    events = requests.get(f"{sb.url}/api/v1/subscription/events", headers=headers, timeout=10).json()
    assert events == [{"event": "a_event", "description": None},
                      {"event": "b_event", "description": "B happened"}]


def test_create_list_delete_round_trip(api: Api, receiver: Callable[..., Receiver]) -> None:
    r = receiver()
    created = api.create(r.url, secret="round-trip")
    assert created.status_code == 200, created.text
    sub = created.json()
    assert set(sub) == {"subscriptionId", "event", "endpoint", "lastModified"}
    assert (sub["event"], sub["endpoint"]) == (EVENT, r.url)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", sub["lastModified"])
    assert api("GET", "/api/v1/subscription").json() == {"subscriptions": [sub]}

    deleted = api("DELETE", f"/api/v1/subscription/{sub['subscriptionId']}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert api("GET", "/api/v1/subscription").json() == {"subscriptions": []}
    assert api("DELETE", f"/api/v1/subscription/{sub['subscriptionId']}").status_code == 404


def test_create_validates_with_a_signed_verification_post(
    api: Api, receiver: Callable[..., Receiver]
) -> None:
    r = receiver()
    assert api.create(r.url, secret="validate-me").status_code == 200
    [(path, headers, body)] = r.received
    assert path == "/hook"
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert payload["event"] == "verification" and payload["contextObjectId"] == 0
    assert re.fullmatch(r"[0-9a-f-]{36}", payload["contextObjectTitle"])
    assert headers["X-Inspera-Signature"] == openssl_sign(body, "validate-me")


def test_validation_answered_500_fails_without_retry(
    api: Api, receiver: Callable[..., Receiver]
) -> None:
    r = receiver(status=500)
    response = api.create(r.url)
    assert response.status_code == 400
    assert response.json()["error"] == (
        f"endpoint validation failed: {r.url} answered 500; it must answer 200 OK"
    )
    assert len(r.received) == 1  # validation requests are never retried
    assert api("GET", "/api/v1/subscription").json() == {"subscriptions": []}


def test_validation_refused_connection(api: Api) -> None:
    port = free_port()  # a port nobody listens on
    response = api.create(f"http://127.0.0.1:{port}/hook")
    assert response.status_code == 400
    assert response.json()["error"].endswith(": connection refused")


def test_validation_timeout(make_sandbox: Callable[..., Sandbox], receiver: Callable[..., Receiver]) -> None:
    api = Api(make_sandbox(validation_timeout=0.3))
    r = receiver(delay=5)
    started = time.monotonic()
    response = api.create(r.url)
    assert time.monotonic() - started < 2
    assert response.status_code == 400
    assert response.json()["error"] == f"endpoint validation failed: {r.url}: timed out after 0.3 s"
    assert len(r.received) == 1
    api.session.close()


BAD_REQUESTS = [
    # (method, path, kwargs, status, words in the error)
    ("POST", "/api/v1/subscription", {"data": b"{not json"}, 400, "malformed JSON"),
    ("POST", "/api/v1/subscription", {"data": b""}, 400, "no body"),
    ("POST", "/api/v1/subscription", {"json": ["a list"]}, 400, "must be an object"),
    ("POST", "/api/v1/subscription", {"json": {"event": EVENT}}, 400, "missing field(s): endpoint, secret"),
    ("POST", "/api/v1/subscription",
     {"json": {"event": "no_such_event", "endpoint": "https://x.example", "secret": "s"}}, 400,
     "unknown event 'no_such_event'"),
    ("POST", "/api/v1/subscription",
     {"json": {"event": EVENT, "endpoint": "ftp://x.example/", "secret": "s"}}, 400, "not an http(s) URL"),
    ("POST", "/api/v1/subscription",
     {"json": {"event": EVENT, "endpoint": "https://", "secret": "s"}}, 400, "not an http(s) URL"),
    ("POST", "/api/v1/subscription",
     {"json": {"event": EVENT, "endpoint": "https://x.example", "secret": ""}}, 400, "non-empty string"),
    ("POST", "/api/v1/subscription",
     {"json": {"event": EVENT, "endpoint": 7, "secret": "s"}}, 400, "non-empty string"),
    ("DELETE", "/api/v1/subscription/abc", {}, 400, "must be an integer"),
    ("DELETE", "/api/v1/subscription/-1", {}, 400, "must be an integer"),
    ("DELETE", "/api/v1/subscription/99999999999999999999999", {}, 404, "not found"),
    ("GET", "/api/v1/nothing-here", {}, 404, "no such API route"),
    ("PUT", "/api/v1/subscription", {}, 405, "not allowed"),
    ("POST", "/_sandbox/fire", {"json": {"event": "no_such_event"}}, 400, "unknown event"),
    ("POST", "/_sandbox/fire", {"json": {"contextObjectId": 1}}, 400, "field event"),
    ("POST", "/_sandbox/fire", {"json": {"event": EVENT, "contextObjectId": "x"}}, 400, "integer"),
    ("POST", "/_sandbox/fire", {"data": b"[1, 2"}, 400, "malformed JSON"),
    ("POST", "/_sandbox/fire", {"data": b"[" * 100_000}, 400, "malformed JSON"),  # was a 500 "sandbox bug"
    ("POST", "/api/v1/subscription", {"data": b'{"a":' * 100_000}, 400, "malformed JSON"),
    *[
        ("POST", "/_sandbox/fire", {"json": {"event": EVENT, "count": count}}, 400,
         "field count must be a whole number from 1 to 1000000")
        for count in (0, -1, 1_000_001, 1.5, "5", True)
    ],
    *[
        ("POST", "/_sandbox/fire", {"json": {"event": EVENT, "rate": rate}}, 400,
         "field rate must be a number of events per second greater than 0")
        for rate in (0, -2.5, "fast", True, [1])
    ],
    ("POST", "/_sandbox/fire", {"data": b'{"event": "confirm_final_grades", "rate": Infinity}'}, 400,
     "field rate must be a number"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "words"), BAD_REQUESTS)
def test_bad_requests_get_4xx_json(
    api: Api, method: str, path: str, kwargs: dict[str, Any], status: int, words: str
) -> None:
    response = api(method, path, **kwargs)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert words in response.json()["error"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer not-a-token"}],
)
def test_api_without_a_valid_bearer_token_is_401(api: Api, headers: dict[str, str]) -> None:
    response = requests.get(f"{api.sb.url}/api/v1/subscription", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"] in ("unauthorized", "invalid_token")


def raw_exchange(sb: Sandbox, data: bytes) -> bytes:
    port = int(sb.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /_sandbox/fire HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
        (b"POST /_sandbox/fire HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 413),
        (b"POST /_sandbox/fire HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        (b"GET /\xff\xfe HTTP/1.1\r\nConnection: close\r\n\r\n", 404),
    ],
)
def test_malformed_http_gets_a_json_answer(
    make_sandbox: Callable[..., Sandbox], request_bytes: bytes, status: int
) -> None:
    sb = make_sandbox()
    answer = raw_exchange(sb, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode()
    assert "error" in json.loads(body)
    # and the server serves on
    assert requests.get(sb.url + "/", timeout=5).json()["name"] == "inspera-hooks sandbox"


# -- deliveries -------------------------------------------------------------------------------------


def test_fire_delivers_signed_thin_event_to_matching_subscriptions(
    api: Api, receiver: Callable[..., Receiver]
) -> None:
    grades, other = receiver(), receiver()
    api.create(grades.url, secret="first-secret")
    api.create(grades.url.replace("/hook", "/second"), secret="second-secret")
    api.create(other.url, secret="other-secret", event="complete_grading")

    fired = api("POST", "/_sandbox/fire", json={"event": EVENT, "contextObjectId": 35199862})
    assert fired.status_code == 200
    ids = fired.json()["deliveryIds"]
    assert len(ids) == 2

    attempts = api.sb.wait_deliveries(2, timeout=5)
    assert sorted(a["deliveryId"] for a in attempts) == sorted(ids)
    assert all(a["status"] == 200 and a["error"] is None and a["attempt"] == 1 for a in attempts)
    assert api("GET", "/_sandbox/deliveries").json() == {"deliveries": attempts}
    assert len(other.received) == 1  # only its validation

    events = grades.received[2:]  # after the two validations
    secrets_by_path = {"/hook": "first-secret", "/second": "second-secret"}
    for path, headers, body in events:
        assert json.loads(body) == {
            "contextObjectId": 35199862, "event": EVENT,
            "timestamp": json.loads(body)["timestamp"],
        }
        assert headers["X-Inspera-Signature"] == openssl_sign(body, secrets_by_path[path])
    assert sorted(path for path, _, _ in events) == ["/hook", "/second"]


def test_failing_receiver_gets_one_attempt_plus_retries(
    make_sandbox: Callable[..., Sandbox], receiver: Callable[..., Receiver]
) -> None:
    sb = make_sandbox(retries=3, retry_delay=0.05)
    ok = receiver()
    api = Api(sb)
    api.create(ok.url, secret="k")
    ok.status = 500  # validation passed; now the app is broken
    [delivery_id] = sb.fire(EVENT, 42)

    attempts = sb.wait_deliveries(4, timeout=5)
    time.sleep(0.3)  # no fifth attempt comes
    assert sb.deliveries() == attempts
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert {(a["deliveryId"], a["status"], a["error"]) for a in attempts} == {
        (delivery_id, 500, "answered 500")
    }
    bodies = {body for _, _, body in ok.received[1:]}
    assert len(ok.received) == 5 and len(bodies) == 1  # retries send the identical bytes
    api.session.close()


def test_slow_receiver_is_counted_failed_and_never_blocks_the_api(
    make_sandbox: Callable[..., Sandbox], receiver: Callable[..., Receiver]
) -> None:
    sb = make_sandbox(retries=0, delivery_timeout=0.3)
    r = receiver()
    api = Api(sb)
    api.create(r.url)
    r.delay = 5
    sb.fire(EVENT)
    started = time.monotonic()
    assert api("GET", "/api/v1/subscription").status_code == 200
    assert api("GET", "/_sandbox/deliveries").json() == {"deliveries": []}
    assert time.monotonic() - started < 0.25
    [attempt] = sb.wait_deliveries(1, timeout=5)
    assert attempt["status"] is None
    assert attempt["error"] == "timed out after 0.3 s"
    api.session.close()


def test_fire_with_no_subscription_delivers_nothing(api: Api) -> None:
    assert api("POST", "/_sandbox/fire", json={"event": EVENT}).json() == {"deliveryIds": []}
    with pytest.raises(ValueError, match="unknown event 'nope'"):
        api.sb.fire("nope")
    with pytest.raises(TimeoutError, match="0 delivery attempts"):
        api.sb.wait_deliveries(1, timeout=0.1)


# -- --resolve, --state, bookkeeping ----------------------------------------------------------------


def test_resolve_sends_a_public_host_to_a_local_port(
    make_sandbox: Callable[..., Sandbox], receiver: Callable[..., Receiver]
) -> None:
    r = receiver()
    sb = make_sandbox(resolve={"Hooks.Example.TEST": ("127.0.0.1", r.port)})
    api = Api(sb)
    endpoint = "https://hooks.example.test/inspera/hook?tenant=1"
    assert api.create(endpoint).status_code == 200
    sb.fire(EVENT)
    [attempt] = sb.wait_deliveries(1, timeout=5)
    assert attempt["endpoint"] == endpoint and attempt["status"] == 200
    assert [(path, headers["Host"]) for path, headers, _ in r.received] == [
        ("/inspera/hook?tenant=1", "hooks.example.test")
    ] * 2
    api.session.close()


def test_state_file_keeps_subscriptions_across_a_restart(
    tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    state = tmp_path / "sandbox.db"
    r = receiver()
    config = {"port": 0, "client_id": CLIENT_ID, "api_key": API_KEY, "state": state}
    with Sandbox(SandboxConfig(**config)) as first:
        api = Api(first)
        kept = api.create(r.url, secret="kept").json()
        gone = api.create(r.url, secret="gone").json()
        api("DELETE", f"/api/v1/subscription/{gone['subscriptionId']}")
        api.session.close()
    assert state.stat().st_mode & 0o777 == 0o600  # it holds secrets

    with Sandbox(SandboxConfig(**config)) as second:
        api = Api(second)
        assert api("GET", "/api/v1/subscription").json() == {"subscriptions": [kept]}
        newer = api.create(r.url + "/new", secret="newer").json()
        assert newer["subscriptionId"] > gone["subscriptionId"]  # ids are never reused
        second.fire(EVENT)
        attempts = second.wait_deliveries(2, timeout=5)
        assert {a["subscriptionId"] for a in attempts} == {kept["subscriptionId"], newer["subscriptionId"]}
        api.session.close()
    # the secret survived the restart: the kept subscription's delivery is signed with it
    [(_, headers, body)] = [(p, h, b) for p, h, b in r.received[-2:] if p == "/hook"]
    assert headers["X-Inspera-Signature"] == openssl_sign(body, "kept")


def test_state_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    from inspera_cli.errors import ConfigError

    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a database, " * 100)
    with pytest.raises(ConfigError, match="is not a sandbox state file"):
        Sandbox(SandboxConfig(port=0, state=bad)).start()


def test_port_in_use_is_a_clear_error(make_sandbox: Callable[..., Sandbox]) -> None:
    from inspera_cli.errors import NetworkError

    taken = int(make_sandbox().url.rsplit(":", 1)[1])
    with pytest.raises(NetworkError, match=f"cannot listen on 127.0.0.1:{taken}"):
        Sandbox(SandboxConfig(port=taken)).start()


def test_requests_records_method_and_path_without_query(api: Api) -> None:
    api("GET", "/api/v1/subscription?event=x")
    assert api.sb.requests == [
        ("POST", "/api/authenticate/token/"),
        ("GET", "/api/v1/subscription"),
    ]
