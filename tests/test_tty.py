"""A real terminal (a pty): hidden prompts, declined confirmations, secrets a person can copy."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import sys
import termios
import time
from typing import Any

import pytest

from tests import processes
from tests.conftest import SANDBOX_API_KEY, SANDBOX_CLIENT_ID
from tests.openssl import openssl_sign
from tests.receiver import Receiver, free_port
from tests.stub_server import Reply
from tests.test_listen import EVENT


def run_in_pty(args: list[str], env: dict[str, str], answers: list[tuple[str, str, bool]]) -> tuple[int, str]:
    """Run the CLI with a pty as its controlling terminal (as getpass needs); when the output
    shows a prompt's text, type its answer (answers: (prompt text, answer, hidden))."""
    pid, leader = pty.fork()
    if pid == 0:  # the child: becomes the CLI
        processes.default_signals()
        os.execve(sys.executable, [*processes.CLI, *args], env)
    seen = b""
    pending = list(answers)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if pending and pending[0][0].encode() in seen:
            # A hidden prompt turns echo off (flushing what was typed before): wait for that.
            hidden = pending[0][2]
            if not hidden or not termios.tcgetattr(leader)[3] & termios.ECHO:
                os.write(leader, (pending.pop(0)[1] + "\n").encode())
    os.close(leader)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_secret_stdin_on_a_terminal_is_a_hidden_prompt(stub, tmp_path):
    stub.on(
        "POST",
        "/api/v1/subscription",
        Reply(201, {"subscriptionId": 4, "event": "complete_grading", "endpoint": "https://h/"}),
    )
    code, out = run_in_pty(
        ["create", "--event", "complete_grading", "--endpoint", "https://h/", "--secret-stdin"],
        stub.subprocess_env(tmp_path),
        [("Webhook secret", "typed-secret-4242", True)],
    )
    assert code == 0, out
    assert "typed-secret-4242" not in out
    sent = [s for s in stub.seen if s.method == "POST" and s.path == "/api/v1/subscription"][0]
    assert b'"secret": "typed-secret-4242"' in sent.body


def test_declining_delete_deletes_nothing_and_exits_1(stub, tmp_path):
    stub.on("GET", "/api/v1/subscription", Reply(body=[
        {"subscriptionId": 5, "event": "complete_grading", "endpoint": "https://hooks.example.edu/a"},
        {"subscriptionId": 6, "event": "confirm_final_grades", "endpoint": "https://hooks.example.edu/b"},
    ]))
    code, out = run_in_pty(
        ["delete", "5", "6"], stub.subprocess_env(tmp_path), [("Delete these 2 subscriptions?", "n", False)]
    )
    assert code == 1 and "Nothing deleted." in out and "interrupted" not in out
    # the prompt shows what each id is
    assert "5  complete_grading      https://hooks.example.edu/a" in out
    assert "6  confirm_final_grades  https://hooks.example.edu/b" in out
    assert stub.count("DELETE", "/api/v1/subscription/5") == 0


def test_delete_checks_the_id_before_it_asks(stub, tmp_path):
    code, out = run_in_pty(["delete", "7"], stub.subprocess_env(tmp_path), [])
    assert code == 4 and "no subscription with id 7" in out and "Delete" not in out


# -- generated secrets, copied from a terminal ---------------------------------------------------


class Terminal(processes.Terminal):
    """The CLI on a pty, as a person runs it, copying a secret from the screen."""

    def copy_secret(self) -> str:
        """The secret as a person copies it: the rest of its line as the terminal shows it (control
        sequences, such as a spinner's line erase, are not seen), which must hold all of it."""
        shown = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).rsplit("\r", 1)[-1]
                 for line in self.screen.split("\r\n")]
        found = [line.removeprefix("Webhook secret: ") for line in shown
                 if line.startswith("Webhook secret: ")]
        assert len(found) == 1, repr(self.screen)  # what the terminal showed, control sequences too
        (secret,) = found
        assert re.fullmatch(r"[0-9a-f]{64}", secret), self.screen
        assert self.screen.count(secret) == 1, self.screen  # whole in the bytes, and not in a table
        return secret


def sandbox_env(sandbox: Any) -> dict[str, str]:
    return {**os.environ, "INSPERA_URL": sandbox.url, "INSPERA_CLIENT_ID": SANDBOX_CLIENT_ID,
            "INSPERA_API_KEY": SANDBOX_API_KEY}


@pytest.mark.parametrize("columns", [60, 120])
def test_the_secret_create_generates_is_one_line_that_verifies_a_delivery(sandbox: Any, columns: int) -> None:
    with Receiver(path="") as app:
        term = Terminal(["create", "--event", EVENT, "--endpoint", f"{app.url}/hooks"], sandbox_env(sandbox),
                        columns)
        assert term.exit_code() == 0, term.screen
        secret = term.copy_secret()
        sandbox.fire(EVENT, 6001)
        sandbox.wait_deliveries(1)
    (_, headers, body) = app.received[-1]  # [0] is the endpoint validation
    assert json.loads(body)["contextObjectId"] == 6001
    assert headers["X-Inspera-Signature"] == openssl_sign(body, secret)


def test_the_secret_listen_generates_lets_the_app_behind_it_verify(sandbox: Any) -> None:
    port = free_port()
    with Receiver(path="") as app:
        term = Terminal(["listen", "--port", str(port), "--subscribe", EVENT, "--public-url",
                         f"http://127.0.0.1:{port}/", "--forward-to", app.url], sandbox_env(sandbox), 80)
        assert term.read_until("Subscribed:"), term.screen
        secret = term.copy_secret()
        sandbox.fire(EVENT, 6002)
        assert term.read_until("app 200"), term.screen
        term.ctrl_c()
        assert term.exit_code() == 0, term.screen
    (_, headers, body) = app.received[-1]
    assert json.loads(body)["contextObjectId"] == 6002
    assert headers["X-Inspera-Signature"] == openssl_sign(body, secret)
    assert "Deleted subscription" in term.screen and sandbox.subscriptions() == []


def test_closing_the_terminal_deletes_what_listen_subscribed(sandbox: Any) -> None:
    """A terminal window closed, an ssh session dropped: the kernel hangs up (SIGHUP), and `listen`
    ends as on SIGTERM -- the subscription it made is deleted, not left pointing Inspera at a
    receiver that is gone."""
    port = free_port()
    term = Terminal(["listen", "--port", str(port), "--subscribe", EVENT, "--public-url",
                     f"http://127.0.0.1:{port}/"], sandbox_env(sandbox), 80)
    assert term.read_until("Subscribed:"), term.screen
    assert len(sandbox.subscriptions()) == 1
    os.close(term.leader)  # the window closes: the terminal hangs up
    deadline = time.monotonic() + 30
    while (ended := os.waitpid(term.pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if ended[0] == 0:  # never left running after the test
        os.kill(term.pid, signal.SIGKILL)
        os.waitpid(term.pid, 0)
        pytest.fail("listen did not end when its terminal hung up")
    status = ended[1]
    assert sandbox.subscriptions() == []
    assert os.WIFEXITED(status)  # it ran its cleanup and exited; SIGHUP's default killed it
