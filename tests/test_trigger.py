"""`trigger` against real HTTP servers: a stdlib receiver on port 0, and the sandbox tenant."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from inspera_cli import sending
from inspera_cli.signing import sign
from inspera_cli.webhook_body import parse_event
from tests.conftest import SANDBOX_API_KEY, SANDBOX_CLIENT_ID, Cli
from tests.receiver import Receiver, free_port

SECRET = "trigger-test-secret-7c1d"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def trigger(cli: Cli, *args: str, expect: int = 0) -> Any:
    return cli("trigger", *args, "--secret-env", "HOOK_SECRET", env={"HOOK_SECRET": SECRET},
               expect=expect)


def test_trigger_sends_a_signed_thin_payload(cli: Cli, receiver: Receiver) -> None:
    result = trigger(cli, "confirm_final_grades", "--to", receiver.url, "--object-id", "42", "--json")
    [item] = result.json
    assert item["attempt"] == 1 and item["status"] == 200 and item["error"] is None
    assert isinstance(item["latencyMs"], float)
    [got] = receiver.received
    assert got.path == "/hooks"
    assert got.headers["content-type"] == "application/json"
    assert got.signature == sign(got.body, SECRET)
    event = parse_event(got.body)
    assert (event.event, event.context_object_id) == ("confirm_final_grades", 42)
    assert list(json.loads(got.body)) == ["contextObjectId", "event", "timestamp"]
    assert SECRET not in result.stdout + result.stderr


def test_trigger_human_output(cli: Cli, receiver: Receiver) -> None:
    result = trigger(cli, "confirm_final_grades", "--to", receiver.url)
    assert result.stdout.startswith("#1  200 OK  ")
    assert result.stdout.rstrip().endswith(" ms")
    assert f"POST {receiver.url}" in result.stderr and "signed" in result.stderr


def test_trigger_repeat_sends_identical_bytes(cli: Cli, receiver: Receiver) -> None:
    result = trigger(cli, "resource_created", "--to", receiver.url, "--repeat", "3", "--json")
    assert [r["attempt"] for r in result.json] == [1, 2, 3]
    assert len(receiver.received) == 3
    assert len({(r.body, r.signature) for r in receiver.received}) == 1
    assert "3 of 3 answered 200" in result.stderr


def test_trigger_legacy_format(cli: Cli, receiver: Receiver) -> None:
    trigger(cli, "confirm_final_grades", "--to", receiver.url, "--object-id", "35199862",
            "--legacy-format")
    [got] = receiver.received
    assert got.body.startswith(b"{contextObjectId=35199862, event=confirm_final_grades, timestamp=")
    assert got.signature == sign(got.body, SECRET)
    assert parse_event(got.body).context_object_id == 35199862


def test_trigger_verification(cli: Cli, receiver: Receiver) -> None:
    trigger(cli, "--verification", "--to", receiver.url)
    [got] = receiver.received
    data = json.loads(got.body)
    assert data["event"] == "verification" and data["contextObjectId"] == 0
    assert len(data["contextObjectTitle"]) == 36  # a UUID
    assert got.signature == sign(got.body, SECRET)


def test_trigger_non_200_exits_1(cli: Cli) -> None:
    with Receiver(statuses=(500, 200)) as r:
        result = trigger(cli, "confirm_final_grades", "--to", r.url, "--repeat", "2", "--json",
                         expect=1)
    assert [item["status"] for item in result.json] == [500, 200]
    assert result.json[0]["error"] is None


def test_trigger_shows_a_refusal_and_its_answer(cli: Cli) -> None:
    with Receiver(secret="the-receivers-own-secret", body=b"nope") as r:
        result = trigger(cli, "confirm_final_grades", "--to", r.url, expect=1)
    assert result.stdout.startswith("#1  401 Unauthorized — nope")
    assert "0 of 1 answered 200" in result.stderr


def test_trigger_redirect_is_not_followed(cli: Cli) -> None:
    with Receiver(answer=lambda request: (302, {"Location": "/elsewhere"})) as r:
        result = trigger(cli, "confirm_final_grades", "--to", r.url, "--json", expect=1)
        assert len(r.received) == 1
    assert result.json[0]["status"] == 302


def test_trigger_connection_refused(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    result = trigger(cli, "confirm_final_grades", "--to", url, "--repeat", "2", "--json", "--wait", "0",
                     expect=1)
    for item in result.json:
        assert item["status"] is None
        assert item["error"] == "connection refused"
    human = trigger(cli, "confirm_final_grades", "--to", url, "--wait", "0", expect=1)
    assert "no answer: connection refused" in human.stdout
    assert "Traceback" not in human.stderr


def test_trigger_sends_to_a_default_listen_when_to_is_left_out(cli: Cli, default_listen_port: int) -> None:
    with Receiver(port=default_listen_port) as r:
        result = trigger(cli, "confirm_final_grades", "--json")
    assert result.json[0]["status"] == 200
    assert [got.path for got in r.received] == ["/"]
    assert "POST http://127.0.0.1:8000/ " in result.stderr


def test_trigger_waits_for_a_receiver_that_is_still_starting(cli: Cli) -> None:
    port = free_port()
    receivers: list[Receiver] = []
    starting = threading.Timer(1.0, lambda: receivers.append(Receiver(port=port).__enter__()))
    starting.start()
    try:
        result = trigger(cli, "confirm_final_grades", "--to", f"http://127.0.0.1:{port}/", "--json")
    finally:
        starting.join()
        for r in receivers:
            r.__exit__(None, None, None)
    assert [item["status"] for item in result.json] == [200]
    assert len(receivers[0].received) == 1  # a refused try reaches no one: sent once


def test_trigger_stops_waiting_after_wait_seconds(cli: Cli) -> None:
    started = time.monotonic()
    result = trigger(cli, "confirm_final_grades", "--to", f"http://127.0.0.1:{free_port()}/",
                     "--wait", "1", "--json", expect=1)
    assert 1.0 <= time.monotonic() - started < 8
    assert [item["error"] for item in result.json] == ["connection refused"]
    assert "(tried for 1 s): start `inspera-hooks listen`, or give --to URL." in result.stderr


def test_post_reports_a_timeout() -> None:
    with Receiver(delay=1.0) as r, sending.new_session() as session:
        result = sending.post(session, r.url, b"{}", {}, timeout=0.2)
    assert result.status is None
    assert result.error == "no answer within 0.2 s"


def test_trigger_without_secret_sends_unsigned_with_a_warning(cli: Cli, receiver: Receiver) -> None:
    result = cli("trigger", "confirm_final_grades", "--to", receiver.url)
    assert "no secret given" in result.stderr and "unsigned" in result.stderr
    [got] = receiver.received
    assert got.signature is None


def test_trigger_secret_flag_warns_and_is_not_echoed(cli: Cli, receiver: Receiver) -> None:
    result = cli("trigger", "confirm_final_grades", "--to", receiver.url, "--secret", SECRET, "--json")
    assert "shell history" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert receiver.received[0].signature == sign(receiver.received[0].body, SECRET)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "http://127.0.0.1:9/"], "missing EVENT"),
        (["confirm_final_grades", "--to", "127.0.0.1:9"], "not an http(s) URL"),
        (["confirm_final_grades", "--to", "http://[::1"], "is not a valid URL"),  # was sent, exit 1
        (["--verification", "--object-id", "5", "--to", "http://127.0.0.1:9/"], "--object-id"),
        (["other_event", "--verification", "--to", "http://127.0.0.1:9/"], "drop the EVENT"),
        (["confirm_final_grades", "--to", "http://127.0.0.1:9/", "--repeat", "0"], "--repeat"),
        (["confirm_final_grades", "--to", "http://127.0.0.1:9/", "--secret-env", "UNSET_VAR"],
         "UNSET_VAR"),
    ],
)
def test_trigger_usage_errors(cli: Cli, args: list[str], message: str) -> None:
    result = cli("trigger", *args, expect=2)
    assert message in result.stderr


# --- end to end with the sandbox tenant ----------------------------------------------------------


def test_trigger_matches_what_the_sandbox_sends(cli: Cli, sandbox: Any) -> None:
    """A receiver that takes `trigger --verification` passes the sandbox's endpoint validation,
    and a `trigger`ed event has the same shape and headers as the sandbox's delivery."""
    from inspera_cli.client import InsperaClient

    with Receiver(secret=SECRET) as r:
        trigger(cli, "--verification", "--to", r.url)
        trigger(cli, "confirm_final_grades", "--to", r.url, "--object-id", "7")
        with InsperaClient(url=sandbox.url, client_id=SANDBOX_CLIENT_ID,
                           api_key=SANDBOX_API_KEY) as client:
            client.create("confirm_final_grades", r.url, SECRET)
        sandbox.fire("confirm_final_grades", 7)
        sandbox.wait_deliveries(1, timeout=10)
        ours_check, ours_event, theirs_check, theirs_event = r.received

    for ours, theirs in ((ours_check, theirs_check), (ours_event, theirs_event)):
        assert ours.signature == sign(ours.body, SECRET)
        assert theirs.signature == sign(theirs.body, SECRET)
        assert ours.headers["content-type"] == theirs.headers["content-type"]
        mine, inspera = json.loads(ours.body), json.loads(theirs.body)
        assert list(mine) == list(inspera)
        assert {k: v for k, v in mine.items() if k not in ("timestamp", "contextObjectTitle")} == {
            k: v for k, v in inspera.items() if k not in ("timestamp", "contextObjectTitle")
        }
    assert [d["status"] for d in sandbox.deliveries()] == [200]


def test_an_empty_event_name_is_a_usage_error(cli) -> None:
    assert "missing EVENT" in cli("trigger", "", "--to", "http://127.0.0.1:9/", expect=2).stderr
