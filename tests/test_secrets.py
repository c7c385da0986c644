"""The API key, the access token and webhook secrets never appear in output, logs or records."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SANDBOX_API_KEY
from tests.processes import CLI, popen, run
from tests.receiver import Receiver

HOOK_SECRET = "hook-secret-must-stay-hidden-5e1f"


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r.base


def _input_files(tmp_path: Path, receiver: str) -> tuple[Path, Path]:
    """A webhook body and a subscriptions file whose secret is in $HOOK."""
    body = tmp_path / "body.json"
    body.write_bytes(
        b'{"contextObjectId": 1, "event": "confirm_final_grades", "timestamp": "2024-01-01T00:00:00Z"}'
    )
    hooks = tmp_path / "hooks.toml"
    hooks.write_text(
        f'[[subscription]]\nevent = "complete_grading"\nendpoint = "{receiver}/apply"\nsecret_env = "HOOK"\n'
    )
    return body, hooks


def test_no_command_shows_a_secret(cli, sandbox_env, receiver, monkeypatch, tmp_path, isolated_home):
    monkeypatch.setenv("HOOK", HOOK_SECRET)
    body, hooks = _input_files(tmp_path, receiver)
    record = tmp_path / "record.jsonl"
    runs = [
        cli("--debug", "events", "--json"),
        cli("--debug", "list"),
        cli("--debug", "create", "--event", "confirm_final_grades", "--endpoint", f"{receiver}/x",
            "--secret-env", "HOOK", "--json"),
        cli("--debug", "create", "--event", "confirm_final_grades", "--endpoint", f"{receiver}/y",
            "--secret-stdin", input=HOOK_SECRET + "\n"),
        cli("--debug", "apply", "-f", str(hooks)),
        cli("--debug", "apply", "-f", str(hooks), "--json"),
        cli("--debug", "trigger", "confirm_final_grades", "--to", receiver, "--secret-env", "HOOK"),
        cli("--debug", "trigger", "confirm_final_grades", "--to", receiver, "--secret-env", "HOOK", "--json"),
        cli("sign", "--secret-env", "HOOK", str(body)),
        cli("verify", "--secret-env", "HOOK", "--signature", "0" * 40, str(body), expect=1),
        cli("--debug", "doctor", "--endpoint", f"{receiver}/x", "--secret-env", "HOOK", expect=None),
        cli("--debug", "doctor", "--json", expect=None),
        cli("--debug", "sandbox", "fire", "confirm_final_grades"),
        cli("config", "show"),
        cli("config", "show", "--json"),
        cli("--debug", "login"),
        cli("config", "show"),
        cli("--debug", "list", "--json"),
        cli("--debug", "delete", "--all", "--yes", "--json"),
        cli("--debug", "logout"),
    ]
    record.write_text(
        json.dumps(
            {
                "receivedAt": "2024-01-01T00:00:00+00:00",
                "event": "confirm_final_grades",
                "contextObjectId": 1,
                "payload": None,
                "raw": body.read_text(),
                "signature": "valid",
                "delivery": 1,
                "status": 200,
                "forward": None,
                "body": body.read_text(),
                "headers": {},
            }
        )
        + "\n"
    )
    runs.append(cli("--debug", "replay", str(record), "--to", receiver, "--secret-env", "HOOK"))
    tokens = json.loads((isolated_home / ".cache" / "inspera-hooks" / "tokens.json").read_text() or "{}")
    issued = [entry["access_token"] for entry in tokens.values()]
    assert len(runs) == 21
    for done in runs:
        for secret in (HOOK_SECRET, SANDBOX_API_KEY, *issued):
            assert secret not in done.stdout + done.stderr, (secret, done.stdout, done.stderr)
    assert "debug:" in runs[0].stderr  # the --debug log was on and checked too


def test_inspera_token_is_not_logged(cli, sandbox_env, monkeypatch):
    token = cli("--debug", "events").stderr  # a first exchange, to get a real token below
    from inspera_cli.client import InsperaClient

    real = InsperaClient().access_token()
    monkeypatch.setenv("INSPERA_TOKEN", real)
    run = cli("--debug", "list", "--json")
    assert real not in run.stdout + run.stderr + token


def test_listen_keeps_the_secret_out_of_output_and_record(sandbox_env, tmp_path):
    record = tmp_path / "events.jsonl"
    env = {**os.environ, "HOOK": HOOK_SECRET}
    proc = popen(
        [
            *CLI,
            "--debug",
            "listen",
            "--port",
            "0",
            "--secret-env",
            "HOOK",
            "--record",
            str(record),
            "--json",
            "--exit-after",
            "1",
            "--max-time",
            "20",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    ready = ""
    for line in proc.stderr:
        if line.startswith("Ready:"):
            ready = line.split()[1]
            break
    trigger = run(
        [
            *CLI,
            "--debug",
            "trigger",
            "confirm_final_grades",
            "--to",
            ready,
            "--secret-env",
            "HOOK",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and trigger.returncode == 0, err
    assert json.loads(out.splitlines()[0])["signature"] == "valid"
    for text in (out, err, trigger.stdout, trigger.stderr, record.read_text()):
        assert HOOK_SECRET not in text
    assert Path(record).read_text().count("\n") == 1


# -- the canary: every command, plain and --debug, against a tenant that works and one that echoes ---

CANARY_KEY = "canary-api-key-4f8e2b71"
CANARY_SECRET = "canary-webhook-secret-9a7c1d55"


def _canary_commands(receiver: str, tmp_path: Path) -> list[tuple[tuple[str, ...], str | None]]:
    """(argv, stdin) for every command that can run to completion in-process."""
    body, hooks = _input_files(tmp_path, receiver)
    record = tmp_path / "record.jsonl"
    line = {"event": "confirm_final_grades", "status": 500, "body": body.read_text()}
    record.write_text(json.dumps(line) + "\n")
    sub = ("--event", "confirm_final_grades", "--endpoint", f"{receiver}/x")
    return [
        (("events", "--json"), None),
        (("list",), None),
        (("list", "--event", "confirm_final_grades", "--json"), None),
        (("create", *sub, "--secret-env", "HOOK", "--json"), None),
        (("create", "--event", "complete_grading", "--endpoint", f"{receiver}/y", "--secret-stdin"),
         CANARY_SECRET),
        (("apply", "-f", str(hooks), "--dry-run"), None),
        (("apply", "-f", str(hooks), "--json"), None),
        (("apply", "-f", str(hooks), "--prune", "--json"), None),
        (("trigger", "confirm_final_grades", "--to", receiver, "--secret-env", "HOOK", "--json"), None),
        (("trigger", "--verification", "--to", receiver, "--secret", CANARY_SECRET), None),
        (("replay", str(record), "--to", receiver, "--secret-env", "HOOK"), None),
        (("sign", "--secret-env", "HOOK", str(body)), None),
        (("verify", "--secret-env", "HOOK", "--signature", "0" * 40, str(body)), None),
        (("doctor", "--json"), None),
        (("doctor", "--endpoint", f"{receiver}/x", "--secret-env", "HOOK"), None),
        (("sandbox", "fire", "confirm_final_grades"), None),
        (("config", "show"), None),
        (("config", "show", "--json"), None),
        (("config", "set", "timeout", "12"), None),
        (("config", "path"), None),
        (("delete", "--event", "confirm_final_grades", "--endpoint", f"{receiver}/x", "--yes"), None),
        (("delete", "--all", "--yes", "--json"), None),
        (("delete", "123456", "--yes"), None),
        (("login",), None),
        (("logout",), None),
        (("completion", "bash"), None),
    ]


def _leaks(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


def _files_outside_the_secret_stores(root: Path) -> list[Path]:
    return [
        p for p in root.rglob("*")
        if p.is_file() and p.name not in ("config.toml", "tokens.json") and not p.name.endswith(".lock")
    ]


@pytest.mark.slow
def test_canary_no_command_shows_the_key_token_or_secret(cli, receiver, monkeypatch, tmp_path, isolated_home):
    from tests.stub_server import Reply, StubInspera

    issued: list[str] = []

    def token_reply() -> Reply:
        issued.append(f"canary-token-{len(issued)}-7e3f90")
        return Reply(body={"access_token": issued[-1], "expires_in": 3600})

    monkeypatch.setenv("HOOK", CANARY_SECRET)
    monkeypatch.setenv("INSPERA_API_KEY", CANARY_KEY)
    monkeypatch.setenv("INSPERA_CLIENT_ID", "canary-client")
    secrets = [CANARY_KEY, CANARY_SECRET]
    outputs: list[tuple[tuple[str, ...], str]] = []
    echo = Reply(echo=True)
    # A tenant that answers, one that echoes on every API call, one that echoes the exchange.
    phases = [
        {},
        {("GET", "/api/v1/subscription/events"): echo, ("GET", "/api/v1/subscription"): echo,
         ("POST", "/api/v1/subscription"): echo, ("DELETE", "/api/v1/subscription/123456"): echo},
        {("POST", "/api/authenticate/token/"): echo},
    ]
    for routes in phases:
        stub = StubInspera()
        stub.on("POST", "/api/authenticate/token/", token_reply)
        created = {"subscriptionId": 7, "event": "e", "endpoint": "x"}
        names = ["confirm_final_grades", "complete_grading"]
        stub.on("GET", "/api/v1/subscription/events", Reply(body=names))
        stub.on("POST", "/api/v1/subscription", Reply(201, created))
        stub.on("DELETE", "/api/v1/subscription/123456", Reply(204, b""))
        for (method, path), reply in routes.items():
            stub.on(method, path, reply)
        monkeypatch.setenv("INSPERA_URL", stub.url)
        try:
            for argv, stdin in _canary_commands(receiver, tmp_path):
                for debug in ((), ("--debug",)):
                    given = f"{stub.url}\ncanary-client\n{CANARY_KEY}\n" if argv == ("login",) else stdin
                    run = cli(*debug, *argv, input=given, expect=None)
                    outputs.append((argv, run.stdout + run.stderr))
        finally:
            stub.close()
    all_output = "\n".join(text for _, text in outputs)
    assert "debug: >" in all_output and "Traceback" in all_output  # the log and tracebacks were on
    assert "***" in all_output  # the echoing tenant's answers were shown, redacted
    secrets += issued
    assert len(issued) > 3
    for argv, text in outputs:
        assert not _leaks(text, secrets), (argv, text)
    files = [*_files_outside_the_secret_stores(isolated_home), *_files_outside_the_secret_stores(tmp_path)]
    for path in files:
        if path.name in ("body.json", "hooks.toml", "record.jsonl"):
            continue
        assert not _leaks(path.read_text(errors="replace"), secrets), path


@pytest.mark.fresh_interpreter
def test_canary_debug_traceback_in_a_real_process(tmp_path):
    """Python's own traceback path: a subprocess with --debug, the tenant echoing the key."""
    from tests.processes import CLI, run
    from tests.stub_server import Reply, StubInspera

    stub = StubInspera()
    stub.on("POST", "/api/authenticate/token/", Reply(echo=True))
    try:
        env = {**stub.subprocess_env(tmp_path), "INSPERA_API_KEY": CANARY_KEY}
        done = run([*CLI, "--debug", "list"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        stub.close()
    assert done.returncode == 3 and "Traceback" in done.stderr and "code=***" in done.stderr
    assert CANARY_KEY not in done.stdout + done.stderr
