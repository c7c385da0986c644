"""The API key, the access token and webhook secrets never appear in output, logs or records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import SANDBOX_API_KEY

HOOK_SECRET = "hook-secret-must-stay-hidden-5e1f"


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_no_command_shows_a_secret(cli, sandbox_env, receiver, monkeypatch, tmp_path, isolated_home):
    monkeypatch.setenv("HOOK", HOOK_SECRET)
    body = tmp_path / "body.json"
    body.write_bytes(
        b'{"contextObjectId": 1, "event": "confirm_final_grades", "timestamp": "2024-01-01T00:00:00Z"}'
    )
    hooks = tmp_path / "hooks.toml"
    hooks.write_text(
        f'[[subscription]]\nevent = "complete_grading"\nendpoint = "{receiver}/apply"\nsecret_env = "HOOK"\n'
    )
    record = tmp_path / "record.jsonl"
    runs = [
        cli("--debug", "events", "--json"),
        cli("--debug", "list"),
        cli(
            "--debug",
            "create",
            "--event",
            "confirm_final_grades",
            "--endpoint",
            f"{receiver}/x",
            "--secret-env",
            "HOOK",
            "--json",
        ),
        cli(
            "--debug",
            "create",
            "--event",
            "confirm_final_grades",
            "--endpoint",
            f"{receiver}/y",
            "--secret-stdin",
            input=HOOK_SECRET + "\n",
        ),
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
    for run in runs:
        for secret in (HOOK_SECRET, SANDBOX_API_KEY, *issued):
            assert secret not in run.stdout + run.stderr, (secret, run.stdout, run.stderr)
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
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inspera_cli",
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
            "--timeout",
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
    trigger = subprocess.run(
        [
            sys.executable,
            "-m",
            "inspera_cli",
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
