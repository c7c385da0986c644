"""Prompts on a real terminal (a pty): hidden secrets, declined confirmations."""

from __future__ import annotations

import os
import pty
import select
import sys
import termios
import time

from tests.stub_server import Reply


def run_in_pty(args: list[str], env: dict[str, str], answers: list[tuple[str, str, bool]]) -> tuple[int, str]:
    """Run the CLI with a pty as its controlling terminal (as getpass needs); when the output
    shows a prompt's text, type its answer (answers: (prompt text, answer, hidden))."""
    pid, leader = pty.fork()
    if pid == 0:  # the child: becomes the CLI
        os.execve(sys.executable, [sys.executable, "-m", "inspera_cli", *args], env)
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
    code, out = run_in_pty(
        ["delete", "5"], stub.subprocess_env(tmp_path), [("Delete subscription(s) 5?", "n", False)]
    )
    assert code == 1 and "Nothing deleted." in out and "interrupted" not in out
    assert stub.count("DELETE", "/api/v1/subscription/5") == 0
