"""`sandbox serve` / `fire` / `deliveries` on the command line, and the client against the sandbox."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import requests

from inspera_cli.sandbox import Sandbox, SandboxConfig
from tests import test_sandbox
from tests.conftest import SANDBOX_API_KEY, SANDBOX_CLIENT_ID, Cli
from tests.openssl import openssl_sign
from tests.processes import CLI, popen
from tests.receiver import Receiver, free_port

EVENT = "confirm_final_grades"
receiver = test_sandbox.receiver  # the same fixture: stdlib receivers on port 0


# -- sandbox serve, as a real process ---------------------------------------------------------------


class Serve:
    """`inspera-hooks sandbox serve` in a subprocess; waits for its Ready line."""

    def __init__(self, *args: str) -> None:
        self.proc = popen(
            [*CLI, "sandbox", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        self.stderr: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stderr is not None
        self._pump_thread = threading.Thread(
            target=self._pump, args=(self.proc.stderr, lines), daemon=True
        )
        self._pump_thread.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.stop(signal.SIGKILL)
                pytest.fail("sandbox serve printed no Ready line:\n" + "".join(self.stderr))
            if line.startswith("Ready: "):
                self.url = line.removeprefix("Ready: ").strip()
                break
        assert self.proc.stdout is not None
        self.exports = [self.proc.stdout.readline().rstrip("\n") for _ in range(3)]

    def _pump(self, stream: IO[str], lines: queue.Queue[str]) -> None:
        for line in stream:
            self.stderr.append(line)
            lines.put(line)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=10)
        self._pump_thread.join(5)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


def test_serve_prints_exports_and_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    serve = Serve("--api-key", "k-123", "--client-id", "ci")
    try:
        assert serve.url.startswith("http://127.0.0.1:")
        assert serve.exports == [
            f"export INSPERA_URL={serve.url}",
            "export INSPERA_CLIENT_ID=ci",
            "export INSPERA_API_KEY=k-123",
        ]
        answer = requests.post(
            f"{serve.url}/api/authenticate/token/?grant_type=authorization_code&client_id=ci",
            headers={"code": "k-123"}, timeout=5,
        )
        assert answer.status_code == 200
    finally:
        code = serve.stop(signal.SIGTERM)
    assert code == 0
    log = "".join(serve.stderr)
    assert "POST /api/authenticate/token/ 200" in log and "Sandbox stopped." in log
    assert "k-123" not in log  # the key is printed only in the export line


def test_serve_stops_cleanly_on_ctrl_c() -> None:
    serve = Serve()
    assert serve.stop(signal.SIGINT) == 0


def test_serve_state_and_resolve_options(tmp_path: Path, receiver: Callable[..., Receiver]) -> None:
    """--state survives a restart of the process; --resolve routes a public host to a local port."""
    state = tmp_path / "sandbox.db"
    r = receiver()
    public = "https://abc.trycloudflare.com/inspera"
    serve = Serve("--state", str(state), "--resolve", f"abc.trycloudflare.com=127.0.0.1:{r.port}")
    try:
        with requests.Session() as s:
            s.headers["Authorization"] = "Bearer " + _token(serve.url, "sandbox", "sandbox-key")
            created = s.post(f"{serve.url}/api/v1/subscription", timeout=5,
                             json={"event": EVENT, "endpoint": public, "secret": "tunnel"})
            assert created.status_code == 200, created.text
    finally:
        assert serve.stop() == 0
    [(path, headers, body)] = r.received
    assert path == "/inspera" and headers["Host"] == "abc.trycloudflare.com"
    assert headers["X-Inspera-Signature"] == openssl_sign(body, "tunnel")

    again = Serve("--state", str(state))
    try:
        with requests.Session() as s:
            s.headers["Authorization"] = "Bearer " + _token(again.url, "sandbox", "sandbox-key")
            subs = s.get(f"{again.url}/api/v1/subscription", timeout=5).json()["subscriptions"]
        assert [(x["event"], x["endpoint"]) for x in subs] == [(EVENT, public)]
    finally:
        assert again.stop() == 0


def _token(url: str, client_id: str, code: str) -> str:
    answer = requests.post(
        f"{url}/api/authenticate/token/?grant_type=authorization_code&client_id={client_id}",
        headers={"code": code}, timeout=5,
    )
    return str(answer.json()["access_token"])


@pytest.mark.parametrize(
    "value", ["nohost", "host=127.0.0.1", "host=127.0.0.1:http", "=127.0.0.1:80", "h=127.0.0.1:70000"]
)
def test_serve_rejects_a_bad_resolve(cli: Cli, value: str) -> None:
    result = cli("sandbox", "serve", "--port", "0", "--resolve", value, expect=2)
    assert "HOST=ADDRESS:PORT" in result.stderr


def test_fire_refuses_an_empty_event_before_asking_the_sandbox(cli: Cli, sandbox_env: Sandbox) -> None:
    result = cli("sandbox", "fire", "", expect=2)  # `fire "$EVENT"` unset: was exit 1 "the sandbox refused"
    assert "missing EVENT" in result.stderr
    assert not [path for _, path in sandbox_env.requests if path == "/_sandbox/fire"]


def test_serve_refuses_an_empty_host(cli: Cli) -> None:
    """`--host=$UNSET` would listen on every interface: a tenant with its key for anyone to use."""
    assert "--host is empty" in cli("sandbox", "serve", "--port", "0", "--host=", expect=2).stderr


def test_serve_on_a_taken_port_fails(cli: Cli, sandbox: Sandbox) -> None:
    port = sandbox.url.rsplit(":", 1)[1]
    result = cli("sandbox", "serve", "--port", port, expect=1)
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


# -- sandbox fire / deliveries ----------------------------------------------------------------------


def test_fire_delivers_to_a_subscription_made_with_create(
    cli: Cli, sandbox_env: Sandbox, receiver: Callable[..., Receiver]
) -> None:
    r = receiver()
    env = {"HOOK_SECRET": "from-the-cli"}
    cli("create", "--event", EVENT, "--endpoint", r.url, "--secret-env", "HOOK_SECRET", env=env)

    fired = cli("sandbox", "fire", EVENT, "--object-id", "35199862", "--json").json
    assert fired == {"deliveryIds": [1]}
    [attempt] = sandbox_env.wait_deliveries(1, timeout=5)
    assert attempt["status"] == 200
    _, headers, body = r.received[-1]
    assert json.loads(body)["contextObjectId"] == 35199862
    assert headers["X-Inspera-Signature"] == openssl_sign(body, "from-the-cli")

    human = cli("sandbox", "fire", EVENT)
    assert human.stdout == "2\n"
    assert "1 delivery queued" in human.stderr
    sandbox_env.wait_deliveries(2, timeout=5)
    listed = cli("sandbox", "deliveries", "--json").json
    assert [(d["deliveryId"], d["attempt"], d["status"]) for d in listed] == [(1, 1, 200), (2, 1, 200)]
    assert "DELIVERY" in cli("sandbox", "deliveries").stdout


def test_fire_without_subscriptions_warns(cli: Cli, sandbox: Sandbox) -> None:
    result = cli("--url", sandbox.url, "sandbox", "fire", "complete_grading")
    assert result.stdout == ""
    assert "no subscription to complete_grading" in result.stderr


def test_fire_unknown_event_fails(cli: Cli, sandbox_env: Sandbox) -> None:
    result = cli("sandbox", "fire", "no_such_event", expect=1)
    assert "unknown event 'no_such_event'" in result.stderr


def test_fire_needs_a_url(cli: Cli) -> None:
    assert "no sandbox URL" in cli("sandbox", "fire", EVENT, expect=3).stderr


def test_fire_at_something_that_is_not_a_sandbox(cli: Cli, receiver: Callable[..., Receiver]) -> None:
    r = receiver(status=404)
    result = cli("--url", f"http://127.0.0.1:{r.port}", "sandbox", "fire", EVENT, expect=1)
    assert "is not a sandbox" in result.stderr


def test_fire_when_no_sandbox_runs(cli: Cli) -> None:
    """The client's own wording for a network error, one line."""
    port = free_port()
    result = cli("--url", f"http://127.0.0.1:{port}", "sandbox", "fire", EVENT, expect=1)
    assert result.stderr == (
        f"inspera-hooks: error: 127.0.0.1:{port}: connection refused: is the URL right and the server up?\n"
    )


# -- the client against the sandbox: validation failures and token refresh ---------------------------


@pytest.fixture
def quick_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """A sandbox whose validation gives up after 0.3 s, with the CLI pointed at it."""
    sb = Sandbox(SandboxConfig(port=0, client_id=SANDBOX_CLIENT_ID, api_key=SANDBOX_API_KEY,
                               validation_timeout=0.3, retry_delay=0.02))
    sb.start()
    monkeypatch.setenv("INSPERA_URL", sb.url)
    monkeypatch.setenv("INSPERA_CLIENT_ID", SANDBOX_CLIENT_ID)
    monkeypatch.setenv("INSPERA_API_KEY", SANDBOX_API_KEY)
    yield sb
    sb.shutdown()


@pytest.mark.parametrize(
    ("setup", "cause"),
    [
        ("500", "answered 500"),
        ("slow", "timed out after 0.3 s"),
        ("refused", "connection refused"),
    ],
)
def test_create_fails_with_the_validation_cause(
    cli: Cli, quick_sandbox: Sandbox, receiver: Callable[..., Receiver], setup: str, cause: str
) -> None:
    if setup == "refused":
        endpoint = f"http://127.0.0.1:{free_port()}/hook"
    else:
        endpoint = receiver(status=500 if setup == "500" else 200, delay=5 if setup == "slow" else 0).url
    result = cli("create", "--event", EVENT, "--endpoint", endpoint, expect=1)
    assert "endpoint validation failed" in result.stderr and cause in result.stderr
    assert cli("list", "--json").json == []


def test_expired_token_is_refreshed_transparently(cli: Cli, sandbox_env: Sandbox) -> None:
    assert cli("list", "--json").json == []
    assert sandbox_env.expire_tokens() == 1
    assert cli("list", "--json").json == []
    calls = sandbox_env.requests
    assert calls.count(("POST", "/api/authenticate/token/")) == 2
    # the second list: rejected with 401 once, then answered with the fresh token
    assert calls.count(("GET", "/api/v1/subscription")) == 3


def test_token_ttl_shorter_than_a_run(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, receiver: Callable[..., Receiver]
) -> None:
    """Tokens that really expire (--token-ttl) never surface as errors to the user."""
    with Sandbox(SandboxConfig(port=0, client_id=SANDBOX_CLIENT_ID, api_key=SANDBOX_API_KEY,
                               token_ttl=0.2)) as sb:
        for name, value in (("INSPERA_URL", sb.url), ("INSPERA_CLIENT_ID", SANDBOX_CLIENT_ID),
                            ("INSPERA_API_KEY", SANDBOX_API_KEY)):
            monkeypatch.setenv(name, value)
        r = receiver()
        cli("create", "--event", EVENT, "--endpoint", r.url, "--json")
        time.sleep(0.3)
        listed: list[dict[str, Any]] = cli("list", "--json").json
        assert [s["endpoint"] for s in listed] == [r.url]
