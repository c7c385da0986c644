"""`inspera-hooks listen` as users run it: a subprocess on port 0, real HTTP clients, signatures
computed independently with `openssl dgst -sha1 -hmac`."""

from __future__ import annotations

import itertools
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from inspera_cli.listener import JSON_FIELDS
from inspera_cli.webhook_body import verification_body
from tests.conftest import Cli
from tests.openssl import openssl_sign
from tests.processes import CLI, LineProcess, popen, run
from tests.receiver import Receiver, free_port

SECRET = "listen-test-secret-5e1f"
EVENT = "confirm_final_grades"
_ids = itertools.count(35_199_000)


def event_body(event: str = EVENT, object_id: int | None = None, *, java: bool = False) -> bytes:
    object_id = next(_ids) if object_id is None else object_id
    if java:
        return f"{{contextObjectId={object_id}, event={event}, timestamp=2018-10-04T16:47:55Z}}".encode()
    return json.dumps(
        {"contextObjectId": object_id, "event": event, "timestamp": "2018-10-04T16:47:55Z"}
    ).encode()


def signed_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Inspera-Signature": openssl_sign(body, secret), "Content-Type": "application/json"}


class ListenProcess(LineProcess):
    """`inspera-hooks listen --port 0 ARGS` in a subprocess; stdout and stderr collected as lines."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, port: int = 0, read_stdout: bool = True
    ) -> None:
        super().__init__(
            [*CLI, "listen", "--port", str(port), *args],
            {**os.environ, "LISTEN_SECRET": SECRET, **(env or {})},
            read_stdout=read_stdout,
        )
        ready = self.wait_for(lambda: any(line.startswith("Ready:") for line in self.stderr), 20)
        if not ready:
            self.kill()
            pytest.fail(f"listen did not start:\n{self.err_text}")
        line = next(line for line in self.stderr if line.startswith("Ready:"))
        self.url = line.split()[1]

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        return self.wait(predicate, timeout)

    def json_line(self, object_id: int | None = None, *, raw: str | None = None) -> dict[str, Any]:
        """The --json line of the request with this contextObjectId (or this raw body)."""

        def find() -> dict[str, Any] | None:
            for line in self.stdout:
                item = json.loads(line)
                if (raw is not None and item["raw"] == raw) or (
                    object_id is not None and item["contextObjectId"] == object_id
                ):
                    return item
            return None

        assert self.wait_for(lambda: find() is not None), f"no line for {object_id or raw}: {self.stdout}"
        found = find()
        assert found is not None
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        return self.finish(sig, timeout)

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.finish(None, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def post(
    url: str, body: bytes, headers: dict[str, str] | None = None, *, session: Any = requests, **kw: Any
) -> requests.Response:
    """POST on a new connection, or on ``session``'s: requests on one connection are printed in
    the order they were sent (across connections, two answers may be printed either way)."""
    return session.post(url, data=body, headers=headers or {}, timeout=15, **kw)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenProcess]:
    """One listener for the request-by-request checks: --json, a secret, a record file, a path."""
    record = tmp_path_factory.mktemp("listen") / "events.jsonl"
    with ListenProcess(
        "--secret-env", "LISTEN_SECRET", "--json", "--record", str(record), "--path", "/inspera"
    ) as lp:
        lp.record = record  # type: ignore[attr-defined]
        yield lp


def records(lp: ListenProcess) -> list[dict[str, Any]]:
    path: Path = lp.record  # type: ignore[attr-defined]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- one request at a time ---------------------------------------------------------------------


def test_ready_line(receiver: ListenProcess) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/inspera", receiver.url)


def test_valid_signature_is_answered_200_and_printed_as_one_json_line(receiver: ListenProcess) -> None:
    body = event_body()
    response = post(receiver.url, body, signed_headers(body))
    assert response.status_code == 200
    item = receiver.json_line(json.loads(body)["contextObjectId"])
    assert list(item) == list(JSON_FIELDS)
    assert item["event"] == EVENT
    assert item["payload"] == json.loads(body)
    assert item["raw"] == body.decode()
    assert item["signature"] == "valid"
    assert (item["delivery"], item["status"], item["forward"]) == (1, 200, None)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", item["receivedAt"])


def test_the_record_line_is_on_disk_when_the_answer_arrives(receiver: ListenProcess) -> None:
    body = event_body()
    assert post(receiver.url, body, signed_headers(body)).status_code == 200
    line = next(r for r in records(receiver) if r["raw"] == body.decode())
    assert line["body"] == body.decode() and "bodyBase64" not in line
    assert line["headers"]["X-Inspera-Signature"] == openssl_sign(body, SECRET)
    assert line["headers"]["Content-Type"] == "application/json"
    assert {k: line[k] for k in ("event", "signature", "status", "delivery")} == {
        "event": EVENT, "signature": "valid", "status": 200, "delivery": 1,
    }
    assert SECRET not in json.dumps(line)


@pytest.mark.parametrize(
    ("signature", "state"),
    [(None, "missing"), ("0" * 40, "invalid"), ("not-hex", "invalid"), ("", "invalid")],
)
def test_a_missing_or_wrong_signature_is_401_and_not_recorded(
    receiver: ListenProcess, signature: str | None, state: str
) -> None:
    body = event_body()
    headers = {} if signature is None else {"X-Inspera-Signature": signature}
    response = post(receiver.url, body, headers)
    assert response.status_code == 401
    item = receiver.json_line(json.loads(body)["contextObjectId"])
    assert (item["signature"], item["status"]) == (state, 401)
    assert all(r["raw"] != body.decode() for r in records(receiver))


def test_a_signature_with_sha1_prefix_in_upper_case_is_valid(receiver: ListenProcess) -> None:
    body = event_body()
    header = "sha1=" + openssl_sign(body, SECRET).upper()
    assert post(receiver.url, body, {"X-Inspera-Signature": header}).status_code == 200


def test_a_signature_made_with_another_secret_is_401(receiver: ListenProcess) -> None:
    body = event_body()
    assert post(receiver.url, body, signed_headers(body, "another-secret")).status_code == 401


def test_signed_verification_is_answered_200(receiver: ListenProcess) -> None:
    body = verification_body()
    assert post(receiver.url, body, signed_headers(body)).status_code == 200
    item = receiver.json_line(raw=body.decode())
    assert (item["event"], item["signature"], item["status"]) == ("verification", "valid", 200)


def test_unsigned_verification_is_answered_200_too(receiver: ListenProcess) -> None:
    body = verification_body()
    assert post(receiver.url, body).status_code == 200
    item = receiver.json_line(raw=body.decode())
    assert (item["signature"], item["status"]) == ("missing", 200)


def test_a_java_map_body_is_parsed(receiver: ListenProcess) -> None:
    body = event_body(java=True)
    assert post(receiver.url, body, signed_headers(body)).status_code == 200
    item = receiver.json_line(raw=body.decode())
    assert item["event"] == EVENT
    assert isinstance(item["contextObjectId"], int)
    assert item["payload"]["timestamp"] == "2018-10-04T16:47:55Z"


def test_a_signed_body_that_is_not_an_event_is_shown_raw_and_acknowledged(receiver: ListenProcess) -> None:
    body = b"hello, not json \xff\xfe"
    assert post(receiver.url, body, signed_headers(body)).status_code == 200
    item = receiver.json_line(raw=body.decode("utf-8", "replace"))
    assert (item["event"], item["payload"], item["signature"]) == (None, None, "valid")
    line = next(r for r in records(receiver) if r["raw"] == item["raw"])
    assert "body" not in line and line["bodyBase64"] == "aGVsbG8sIG5vdCBqc29uIP/+"


def test_the_same_body_again_is_marked_as_a_retry(receiver: ListenProcess) -> None:
    body = event_body()
    with requests.Session() as session:
        for _ in range(3):
            assert post(receiver.url, body, signed_headers(body), session=session).status_code == 200

    def deliveries() -> list[int]:
        items = [json.loads(line) for line in receiver.stdout]
        return [item["delivery"] for item in items if item["raw"] == body.decode()]

    assert receiver.wait_for(lambda: len(deliveries()) == 3)
    assert deliveries() == [1, 2, 3]
    assert [r["delivery"] for r in records(receiver) if r["raw"] == body.decode()] == [1, 2, 3]


def test_a_two_mib_body_is_413_and_the_listener_serves_on(receiver: ListenProcess) -> None:
    body = b'{"event": "x", "pad": "' + b"a" * (2 << 20) + b'"}'
    assert post(receiver.url, body, {"X-Inspera-Signature": "0" * 40}).status_code == 413
    ok = event_body()
    assert post(receiver.url, ok, signed_headers(ok)).status_code == 200


def test_other_paths_404_other_methods_405_get_200(receiver: ListenProcess) -> None:
    base = receiver.url.rsplit("/", 1)[0]
    body = event_body()
    assert post(base + "/elsewhere", body, signed_headers(body)).status_code == 404
    health = requests.get(receiver.url, timeout=5)
    assert health.status_code == 200 and "listen" in health.text
    assert requests.head(receiver.url, timeout=5).status_code == 200
    for method in ("PUT", "DELETE", "PATCH"):
        response = requests.request(method, receiver.url, timeout=5)
        assert response.status_code == 405
        assert "POST" in response.headers["Allow"]
    assert requests.get(receiver.url + "?probe=1", timeout=5).status_code == 200


def test_keep_alive_serves_many_requests_on_one_connection(receiver: ListenProcess) -> None:
    with requests.Session() as session:
        for _ in range(20):
            body = event_body()
            response = session.post(receiver.url, data=body, headers=signed_headers(body), timeout=5)
            assert response.status_code == 200
            assert response.headers.get("Connection") != "close"


# -- human output, --events ----------------------------------------------------------------------


def test_human_lines_and_the_events_filter(tmp_path: Path) -> None:
    record = tmp_path / "events.jsonl"
    with ListenProcess(
        "--secret-env", "LISTEN_SECRET", "--events", f"{EVENT},resource_created",
        "--record", str(record),
    ) as lp:
        wanted, other, bad = event_body(), event_body("user_deleted"), event_body()
        assert post(lp.url, wanted, signed_headers(wanted)).status_code == 200
        assert post(lp.url, other, signed_headers(other)).status_code == 200  # acknowledged
        assert post(lp.url, bad, {"X-Inspera-Signature": "1" * 40}).status_code == 401
        assert post(lp.url, verification_body()).status_code == 200
        assert lp.wait_for(lambda: len(lp.stdout) >= 3)
        assert lp.stop() == 0
    out = "\n".join(lp.stdout)
    wanted_id, bad_id = json.loads(wanted)["contextObjectId"], json.loads(bad)["contextObjectId"]
    assert re.search(rf"\d\d:\d\d:\d\d +{EVENT} +{wanted_id} +valid +#1 +-> 200", out)
    assert re.search(rf"{EVENT} +{bad_id} +invalid .*-> 401 .*does not match", out)
    assert re.search(r"verification +0 +missing .*-> 200 .*unsigned verification", out)
    assert "user_deleted" not in out
    assert "Stopped after" in lp.err_text and "1 accepted" in lp.err_text
    recorded = [json.loads(line)["event"] for line in record.read_text().splitlines()]
    assert recorded == [EVENT, "user_deleted"]  # filtered but valid: recorded; 401 and unsigned: not


def listen_on_a_pty(global_args: list[str], env: dict[str, str]) -> str:
    """Run `listen` with its stdout on a pseudo-terminal; send a valid, a wrongly signed and a
    second valid event; return what the terminal got."""
    leader, follower = pty.openpty()
    base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    proc = popen(
        [*CLI, *global_args, "listen", "--port", "0",
         "--secret-env", "LISTEN_SECRET", "--exit-after", "2", "--max-time", "20"],
        stdout=follower, stderr=subprocess.PIPE, text=True,
        env={**base, "TERM": "xterm-256color", "COLUMNS": "200", "LISTEN_SECRET": SECRET, **env},
    )
    os.close(follower)
    seen = b""
    try:
        assert proc.stderr is not None
        ready = next(line for line in proc.stderr if line.startswith("Ready:"))
        url = ready.split()[1]
        good, bad, later = event_body(), event_body(), event_body()
        assert post(url, good, signed_headers(good)).status_code == 200
        assert post(url, bad, signed_headers(bad, "another-secret")).status_code == 401
        assert post(url, later, signed_headers(later)).status_code == 200
        assert proc.wait(20) == 0
        while select.select([leader], [], [], 1)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
        os.close(leader)
    return seen.decode("utf-8", "replace")


@pytest.mark.parametrize(
    ("global_args", "env", "coloured"),
    [([], {}, True), ([], {"NO_COLOR": "1"}, False), (["--no-color"], {}, False)],
    ids=["colours", "NO_COLOR", "--no-color"],
)
def test_request_lines_on_a_terminal_honour_no_color(
    global_args: list[str], env: dict[str, str], coloured: bool
) -> None:
    out = listen_on_a_pty(global_args, env)
    assert re.search(r"valid\S* .*-> 200", out) and "invalid" in out, out
    if coloured:
        assert "\x1b[32mvalid" in out and "\x1b[1;31minvalid" in out, repr(out)
    else:
        assert "\x1b[3" not in out, repr(out)  # no foreground colour at all
        assert "valid" in out and "invalid" in out


def test_a_wrongly_signed_copy_is_not_shown_as_a_retry() -> None:
    with ListenProcess("--secret-env", "LISTEN_SECRET") as lp:
        body = event_body()
        object_id = json.loads(body)["contextObjectId"]
        with requests.Session() as s:
            assert post(lp.url, body, signed_headers(body), session=s).status_code == 200
            assert post(lp.url, body, signed_headers(body, "another-secret"), session=s).status_code == 401
            assert post(lp.url, body, {"Content-Type": "application/json"}, session=s).status_code == 401
            assert post(lp.url, body, signed_headers(body), session=s).status_code == 200
        assert lp.wait_for(lambda: len(lp.stdout) >= 4)
        assert lp.stop() == 0
    lines = [line for line in lp.stdout if str(object_id) in line]
    assert re.search(r" valid +#1 +-> 200", lines[0]), lines
    assert re.search(r" invalid +- +-> 401", lines[1]), lines
    assert re.search(r" missing +- +-> 401", lines[2]), lines
    assert re.search(r" valid +retry #2 +-> 200", lines[3]), lines
    assert "1 retry," in lp.err_text and "2 refused by listen (signature: 401)" in lp.err_text


def test_a_reader_that_goes_away_does_not_stop_the_listener(tmp_path: Path) -> None:
    record = tmp_path / "events.jsonl"
    with ListenProcess("--json", "--record", str(record), read_stdout=False) as lp:  # `listen | head -1`
        assert lp.proc.stdout is not None
        first = event_body()
        assert post(lp.url, first).status_code == 200
        assert json.loads(lp.proc.stdout.readline())["raw"] == first.decode()
        lp.proc.stdout.close()
        for _ in range(5):
            body = event_body()
            assert post(lp.url, body).status_code == 200
        assert lp.stop() == 0
    assert len(record.read_text().splitlines()) == 6
    assert "Traceback" not in lp.err_text and "Exception" not in lp.err_text
    assert "6 accepted" in lp.err_text


# -- forwarding ----------------------------------------------------------------------------------


def test_forwarding_relays_the_apps_answer_and_routes_by_event() -> None:
    with Receiver(body=b"app says 200", path="") as ok_app, Receiver(500, path="") as failing_app:
        dead = f"http://127.0.0.1:{free_port()}/gone"
        with ListenProcess(
            "--secret-env", "LISTEN_SECRET", "--json",
            "--forward-to", f"{ok_app.url}/hooks?from=listen",
            "--forward-to", f"resource_created={failing_app.url}/other",
            "--forward-to", f"user_deleted={dead}",
        ) as lp:
            body = event_body(java=True)
            response = post(lp.url, body, {"X-Inspera-Signature": openssl_sign(body, SECRET),
                                           "Content-Type": "text/plain"})
            assert (response.status_code, response.text) == (200, "app says 200")
            path, headers, received = ok_app.received[0]
            assert (path, received) == ("/hooks?from=listen", body)
            assert headers["X-Inspera-Signature"] == openssl_sign(body, SECRET)
            assert headers["Content-Type"] == "text/plain"

            failing = event_body("resource_created")
            assert post(lp.url, failing, signed_headers(failing)).status_code == 500
            assert failing_app.received[0][2] == failing

            unreachable = event_body("user_deleted")
            response = post(lp.url, unreachable, signed_headers(unreachable))
            assert response.status_code == 502 and "did not answer" in response.text

            verification = verification_body()
            assert post(lp.url, verification, signed_headers(verification)).status_code == 200
            bad = event_body()
            assert post(lp.url, bad, {"X-Inspera-Signature": "2" * 40}).status_code == 401
            assert len(ok_app.received) == 1  # neither the verification nor the 401 was forwarded

            forward = lp.json_line(raw=body.decode())["forward"]
            assert forward["url"] == f"{ok_app.url}/hooks?from=listen"
            assert forward["status"] == 200 and forward["error"] is None
            assert forward["latencyMs"] >= 0
            assert lp.json_line(json.loads(failing)["contextObjectId"])["forward"]["status"] == 500
            dead_item = lp.json_line(json.loads(unreachable)["contextObjectId"])
            assert dead_item["status"] == 502
            assert dead_item["forward"]["status"] is None
            assert "refused" in dead_item["forward"]["error"]


# -- durability, TLS -------------------------------------------------------------------------------


def test_sigkill_right_after_a_200_loses_nothing(tmp_path: Path) -> None:
    record = tmp_path / "events.jsonl"
    with ListenProcess("--secret-env", "LISTEN_SECRET", "--record", str(record)) as lp:
        bodies = [event_body() for _ in range(5)]
        with requests.Session() as session:
            for body in bodies:
                response = session.post(lp.url, data=body, headers=signed_headers(body), timeout=5)
                assert response.status_code == 200
        lp.proc.kill()  # SIGKILL: no cleanup, no flush
        lp.proc.wait(10)
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [line["body"].encode() for line in lines] == bodies


def test_https_with_a_trustme_certificate(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    with ListenProcess(
        "--secret-env", "LISTEN_SECRET", "--json", "--tls-cert", str(cert_file), "--tls-key", str(key_file)
    ) as lp:
        assert lp.url.startswith("https://127.0.0.1:")
        with requests.Session() as session:
            for _ in range(3):
                body = event_body()
                response = session.post(
                    lp.url, data=body, headers=signed_headers(body), timeout=5, verify=str(ca_file)
                )
                assert response.status_code == 200
            assert session.get(lp.url, timeout=5, verify=str(ca_file)).status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(lp.url, timeout=5)  # not trusted without the CA
        item = lp.json_line(json.loads(body)["contextObjectId"])
        assert item["signature"] == "valid"
        assert lp.stop() == 0


# -- how it ends -----------------------------------------------------------------------------------


def test_exit_after_counts_accepted_events_only() -> None:
    with ListenProcess("--secret-env", "LISTEN_SECRET", "--exit-after", "2", "--json") as lp:
        verification = verification_body()
        assert post(lp.url, verification, signed_headers(verification)).status_code == 200
        bad = event_body()
        assert post(lp.url, bad, {"X-Inspera-Signature": "3" * 40}).status_code == 401
        first, second = event_body(), event_body()
        assert post(lp.url, first, signed_headers(first)).status_code == 200
        assert lp.proc.poll() is None
        assert post(lp.url, second, signed_headers(second)).status_code == 200
        assert lp.wait_exit() == 0
    assert [json.loads(line)["raw"] for line in lp.stdout][-1] == second.decode()
    assert "2 accepted" in lp.err_text


def test_exit_after_with_a_timeout_fails_when_too_few_came() -> None:
    with ListenProcess("--exit-after", "3", "--max-time", "1") as lp:
        body = event_body()
        assert post(lp.url, body).status_code == 200  # no secret: unchecked, still accepted
        assert lp.wait_exit() == 1
    assert "only 1 of 3 events were accepted within 1 s" in lp.err_text


def test_timeout_alone_stops_and_exits_0(cli: Cli) -> None:
    """In-process; the real program's exit after --max-time: the test above."""
    started = time.monotonic()
    stopped = cli("listen", "--port", "0", "--max-time", "0.5")
    assert time.monotonic() - started < 10
    assert "Stopped after" in stopped.stderr


def test_sigterm_and_ctrl_c_print_a_summary_and_exit_0() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        with ListenProcess("--secret-env", "LISTEN_SECRET") as lp:
            body = event_body()
            assert post(lp.url, body, signed_headers(body)).status_code == 200
            assert lp.stop(sig) == 0
        assert "Stopped after" in lp.err_text and "1 accepted" in lp.err_text


# -- --subscribe against the sandbox -------------------------------------------------------------


def test_subscribe_creates_verifies_and_deletes_on_sigterm(sandbox_env: Any, cli: Cli) -> None:
    port = free_port()
    public_url = f"http://127.0.0.1:{port}/hooks"
    with ListenProcess(
        "--subscribe", EVENT, "--public-url", public_url, "--json", "--path", "/hooks", port=port
    ) as lp:
        assert lp.wait_for(lambda: "Subscribed:" in lp.err_text, 20), lp.err_text
        live = cli("list", "--json").json
        assert [(s["event"], s["endpoint"]) for s in live] == [(EVENT, public_url)]
        assert lp.wait_for(lambda: bool(lp.stdout))
        verification = json.loads(lp.stdout[0])
        assert (verification["event"], verification["signature"]) == ("verification", "valid")

        sandbox_env.fire(EVENT, 4242)
        item = lp.json_line(4242)
        assert (item["signature"], item["status"]) == ("valid", 200)  # signed with the fresh secret
        assert lp.stop(signal.SIGTERM) == 0
    assert f"Deleted subscription {live[0]['subscriptionId']}" in lp.err_text
    assert cli("list", "--json").json == []
    everything = lp.err_text + "\n".join(lp.stdout)
    # The fresh secret is shown once, on a line of its own (an app behind --forward-to needs it).
    (secret,) = re.findall(r"[0-9a-f]{64}", everything)
    assert f"Webhook secret: {secret}" in lp.stderr


# -- refused command lines -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "pyproject.toml"], "--tls-cert and --tls-key go together"),
        (["--subscribe", EVENT], "--subscribe needs --public-url"),
        (["--public-url", "https://x.example"], "only used with --subscribe"),
        (["--forward-to", "not a url"], "contains spaces"),
        (["--forward-to", "ftp://x.example/"], "not an http(s) URL"),
        # each was an "unexpected ValueError", or accepted and then failed every event
        (["--forward-to", "http://[::1"], "is not a valid URL (Invalid IPv6 URL)"),
        (["--forward-to", "http://127.0.0.1:99999/"], "Port out of range"),
        (["--subscribe", EVENT, "--public-url", "https://[::1"], "is not a valid URL"),
        # never sent to the app, only shown in --json, the record file and the inspect page
        (["--forward-to", "http://user:pass@127.0.0.1:5000/"], "a user name or password in the URL"),
        (["--host="], "--host is empty"),  # `--host=$UNSET` listened on every interface
        (["--forward-to", "http://a.example", "--forward-to", "http://b.example"], "given twice"),
        (["--secret-env", "LISTEN_NOT_SET"], "LISTEN_NOT_SET is not set"),
    ],
)
def test_usage_errors_exit_2(cli: Cli, args: list[str], message: str) -> None:
    result = cli("listen", "--port", "0", "--max-time", "1", *args, expect=2)
    assert message in result.stderr


def run_listen(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """`inspera-hooks [GLOBAL] listen ARGS` to its end; a hang fails the test (TimeoutExpired kills it)."""
    return run(
        [*CLI, *args],
        capture_output=True, text=True, encoding="utf-8", timeout=timeout,
        env={**os.environ, "LISTEN_SECRET": SECRET, **(env or {})},
    )


def _taken_port() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


@pytest.mark.parametrize(
    "case", ["record in a missing directory", "record under a file", "garbage TLS files",
             "TLS key of another certificate", "port in use"],
)
def test_a_listener_that_cannot_start_says_why_in_one_line_and_exits_1(
    cli: Cli, tmp_path: Path, case: str
) -> None:
    args = ["--secret-env", "LISTEN_SECRET", "--port", "0"]
    expected: str
    with _taken_port() as taken:
        if case == "record in a missing directory":
            record = tmp_path / "nonexistdir" / "x.jsonl"
            args += ["--record", str(record)]
            expected = f"cannot open the record file {record}: No such file or directory"
        elif case == "record under a file":
            (tmp_path / "plain").write_text("")
            args += ["--record", str(tmp_path / "plain" / "x.jsonl")]
            expected = "cannot open the record file"
        elif case == "port in use":
            port = taken.getsockname()[1]
            args += ["--port", str(port)]
            expected = f"cannot listen on 127.0.0.1:{port}"
        else:
            garbage = tmp_path / "garbage.pem"
            garbage.write_text("not a certificate\n")
            cert, key = garbage, garbage
            if case == "TLS key of another certificate":
                trustme = pytest.importorskip("trustme")
                ca = trustme.CA()
                cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
                ca.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(cert))
                ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(key))
            args += ["--tls-cert", str(cert), "--tls-key", str(key)]
            expected = "cannot load the TLS certificate"
        started = time.monotonic()
        if case == "record in a missing directory":  # one case as the real program runs
            result = run_listen("listen", *args)
            code, stdout, stderr = result.returncode, result.stdout, result.stderr
        else:
            ran = cli("listen", *args, expect=None, env={"LISTEN_SECRET": SECRET})
            code, stdout, stderr = ran.exit_code, ran.stdout, ran.stderr
    assert time.monotonic() - started < 10
    assert code == 1, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("inspera-hooks: error: "), result.stderr
    assert expected in lines[0]
    assert "Ready:" not in stderr and "Traceback" not in stderr
    assert stdout == ""


def test_a_record_file_that_is_some_other_file_is_refused_untouched(cli: Cli, tmp_path: Path) -> None:
    """`--record notes.txt` by mistake: appending JSON lines to it, and tightening its mode to
    0600 first, would damage a file the user cares about. A file `listen --record` wrote, or an
    empty one, is appended to as before."""
    notes = tmp_path / "notes.txt"
    notes.write_text("meeting notes\nnot a record\n")
    notes.chmod(0o644)
    ran = cli("listen", "--port", "0", "--record", str(notes), "--max-time", "0.1", expect=None)
    assert ran.exit_code == 1
    assert ran.stderr.splitlines() == [
        f"inspera-hooks: error: cannot open the record file {notes}: not a record file (one "
        "`listen --record` wrote starts with a JSON object): give a new file name"]
    assert (notes.read_text(), notes.stat().st_mode & 0o777) == ("meeting notes\nnot a record\n", 0o644)
    record = tmp_path / "events.jsonl"
    record.write_text("")
    for _ in range(2):  # empty, then one it wrote: both taken
        with ListenProcess("--secret-env", "LISTEN_SECRET", "--record", str(record)) as lp:
            body = event_body()
            assert post(lp.url, body, signed_headers(body)).status_code == 200
            assert lp.stop(signal.SIGTERM) == 0
    assert len(record.read_text().splitlines()) == 2


def test_a_port_in_use_is_a_clear_error(cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("listen", "--port", str(port), "--max-time", "1", expect=1)
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


# -- bounded memory ----------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def hold_bodies(port: int, count: int, size: int) -> list[socket.socket]:
    """``count`` connections that each send all but the last byte of a ``size`` body, and wait."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sock.setblocking(False)
        data, sent, until = b"a" * (size - 1), 0, time.monotonic() + 0.2
        while sent < len(data) and time.monotonic() < until:  # as much as the listener takes
            try:
                sent += sock.send(data[sent:])
            except BlockingIOError:
                time.sleep(0.005)
        held.append(sock)
    return held


@pytest.mark.fresh_interpreter
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_memory_stays_bounded_with_300_held_one_mib_bodies() -> None:
    """The defect: 300 unsigned 1 MiB bodies in flight took 364 MB. Body bytes beyond the first
    16 KiB of each body share 32 MiB; past that, connections wait in the kernel. Bound: 32 MiB,
    plus one body, plus one read (at most 256 KiB) per connection."""
    with ListenProcess("--secret-env", "LISTEN_SECRET") as lp:
        port = int(lp.url.rsplit(":", 1)[1].strip("/"))
        before = rss_mib(lp.proc.pid)
        held = hold_bodies(port, 300, 1 << 20)
        try:
            time.sleep(1)
            grown = rss_mib(lp.proc.pid) - before
            body = event_body()
            started = time.monotonic()
            assert post(lp.url, body, signed_headers(body)).status_code == 200
            assert time.monotonic() - started < 1
        finally:
            for sock in held:
                sock.close()
    assert grown < 32 + 1 + 300 * 0.25, grown


@pytest.mark.slow
def test_stdout_not_read_drops_display_lines_but_never_records(tmp_path: Path) -> None:
    """The defect: with stdout unread, the display queue grew without bound. Now lines are
    dropped and counted; every event is still recorded."""
    record = tmp_path / "events.jsonl"
    with ListenProcess("--json", "--record", str(record), read_stdout=False) as lp:
        before = rss_mib(lp.proc.pid)
        bodies = []
        with requests.Session() as session:
            # 50 MB of events in bodies of half a MiB: past the display's 32 MiB bound in 100
            # requests (the bound is in bytes; the count of requests only costs time).
            for number in range(100):
                body = event_body(object_id=number)[:-1] + b', "pad": "' + b"p" * 500_000 + b'"}'
                bodies.append(body)
                assert post(lp.url, body, session=session).status_code == 200
        grown = rss_mib(lp.proc.pid) - before
        lp.proc.send_signal(signal.SIGTERM)
        assert lp.proc.stdout is not None
        # Read from now on, so the display drains what it kept at once (a display nobody reads
        # at the end is waited for briefly: test_listen_limits.py, the Feed closing on a stuck
        # consumer).
        shown = sum(1 for _ in lp.proc.stdout)
        assert lp.wait_exit() == 0
    counted = re.search(r"(\d+) lines not shown \(stdout not read\)", lp.err_text)
    assert counted is not None, lp.err_text
    dropped = int(counted.group(1))
    # Each line is shown or counted; one may have been on its way out when the count was made.
    assert dropped > 0 and shown + dropped in (99, 100), (shown, dropped)
    assert [json.loads(line)["body"].encode() for line in record.read_text().splitlines()] == bodies
    assert grown < 120, grown  # the display holds at most 32 MiB of lines
