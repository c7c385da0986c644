"""Output where people send it: into `| head`, into a cp1252 or ASCII stream, onto a terminal of
80 or 120 columns."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from inspera_cli.cli import app
from tests.processes import CLI, Terminal, popen, run
from tests.stub_server import Reply

SUBS = "/api/v1/subscription"
EVENTS = "/api/v1/subscription/events"


def many_subscriptions(n: int, endpoint: str = "https://hooks.example.edu/in") -> list[dict[str, Any]]:
    return [{"subscriptionId": 1000 + i, "event": "confirm_final_grades", "endpoint": f"{endpoint}/{i}",
             "lastModified": "2021-01-29T13:09:32.287Z"} for i in range(n)]


@pytest.fixture
def big_tenant(stub: Any) -> Any:
    """A tenant whose answers are far larger than a pipe's buffer (64 KiB)."""
    stub.on("GET", SUBS, Reply(body={"subscriptions": many_subscriptions(3000)}))
    events = [{"event": f"event_{i}", "description": "d" * 40} for i in range(3000)]
    stub.on("GET", EVENTS, Reply(body=events))
    stub.on("GET", "/_sandbox/deliveries", Reply(body={"deliveries": [
        {"deliveryId": i, "subscriptionId": 1, "endpoint": "https://h/", "attempt": 1, "status": 200,
         "error": None, "time": "2021-01-29T13:09:32Z"} for i in range(3000)]}))
    return stub


# -- a reader that leaves ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["events"], ["sandbox", "deliveries"]],
                         ids=" ".join)
def test_piping_into_head_1_ends_quietly(big_tenant: Any, tmp_path: Path, args: list[str]) -> None:
    """`inspera-hooks list | head -1` under `set -o pipefail`: one line, exit 0, nothing on stderr."""
    for _ in range(3):
        producer = popen([*CLI, *args], env=big_tenant.subprocess_env(tmp_path), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
        head = popen(["head", "-1"], stdin=producer.stdout, stdout=subprocess.PIPE)
        assert producer.stdout is not None
        producer.stdout.close()  # only head reads it now
        first, _ = head.communicate(timeout=30)
        _, err = producer.communicate(timeout=30)
        assert first.count(b"\n") == 1
        assert (producer.returncode, err) == (0, b"")


@pytest.mark.parametrize(
    "args",
    [["events"], ["list"], ["list", "--json"], ["sandbox", "deliveries"], ["config", "show"],
     ["config", "path"], ["completion", "bash"], ["doctor"], ["--version"], ["--help"], ["create", "--help"],
     ["delete", "9", "--missing-ok", "--json"], ["sign", "--secret-env", "K", "body.json"]],
    ids=" ".join,
)
def test_a_closed_stdout_ends_every_data_command_quietly(stub: Any, tmp_path: Path, args: list[str]) -> None:
    """`… | head -0`: the reader is gone before the first line."""
    stub.on("GET", "/_sandbox/deliveries", Reply(body={"deliveries": []}))
    (tmp_path / "body.json").write_bytes(b"{}")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = run([*CLI, *args], env={**stub.subprocess_env(tmp_path), "K": "s3cret"}, cwd=tmp_path,
                   stdout=write_end, stderr=subprocess.PIPE, timeout=30)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, b"")


# -- streams that cannot take every character ---------------------------------------------------------

ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}


def run_redirected(args: list[str], env: dict[str, str], encoding_env: dict[str, str], out: Path) -> Any:
    with out.open("wb") as stdout:
        return run([*CLI, *args], env={**env, **encoding_env}, stdout=stdout, stderr=subprocess.PIPE,
                   timeout=60)


def test_doctor_redirected_to_a_cp1252_file(stub: Any, tmp_path: Path) -> None:
    """What Windows does to `inspera-hooks doctor > out.txt`."""
    out = tmp_path / "out.txt"
    done = run_redirected(["doctor"], stub.subprocess_env(tmp_path), {"PYTHONIOENCODING": "cp1252"}, out)
    assert done.returncode == 0, done.stderr
    text = out.read_bytes().decode("cp1252")
    assert "+ settings: tenant URL" in text and "+ events API answers" in text
    assert b"Traceback" not in done.stderr and b"unexpected" not in done.stderr


def test_demo_on_a_cp1252_stream(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSPERA_")}
    done = run_redirected(["demo"], env, {"PYTHONIOENCODING": "cp1252"}, out)
    assert done.returncode == 0, done.stderr
    text = out.read_bytes().decode("cp1252")
    assert "confirm_final_grades -> http://127.0.0.1:" in text and "+ delivered and verified" in text


def test_non_ascii_data_under_an_ascii_locale(stub: Any, tmp_path: Path) -> None:
    endpoint = "https://bücher.example.edu/hook"
    stub.on("GET", SUBS, Reply(body=[{"subscriptionId": 7, "event": "confirm_final_grades",
                                      "endpoint": endpoint, "description": "Prüfung"}]))
    env = stub.subprocess_env(tmp_path)
    table = run_redirected(["list"], env, ASCII_LOCALE, tmp_path / "table.txt")
    assert table.returncode == 0, table.stderr
    # Data is never silently changed: a character the stream lacks is written as an escape.
    assert "https://b\\xfccher.example.edu/hook" in (tmp_path / "table.txt").read_text("ascii")
    as_json = run_redirected(["list", "--json"], env, ASCII_LOCALE, tmp_path / "list.json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads((tmp_path / "list.json").read_bytes())[0]["endpoint"] == endpoint


@pytest.mark.parametrize(
    ("args", "code"),
    [(["--help"], 0), (["delete", "--help"], 0), (["doctor"], 0), (["list"], 0), (["list", "--json"], 0),
     (["events"], 0), (["create", "--event", "nope", "--endpoint", "https://h/"], 2),
     (["apply", "-f", "missing.toml"], 1), (["demo"], 0)],
    ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
)
def test_every_command_works_on_an_ascii_stdout(stub: Any, args: list[str], code: int) -> None:
    stub.on("GET", SUBS, Reply(body=many_subscriptions(2, "https://bücher.example.edu")))
    stub.on("GET", EVENTS, Reply(body=[{"event": "confirm_final_grades", "description": "Prüfung → ✓"}]))
    result = CliRunner(charset="ascii").invoke(app, args, catch_exceptions=False)
    assert result.exit_code == code, result.stderr
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr
    result.stdout_bytes.decode("ascii")


# -- tables on a terminal ---------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", [80, 120])
def test_a_table_never_splits_a_cell_on_a_terminal(cli: Any, stub: Any, tmp_path: Path, columns: int) -> None:
    long_endpoint = "https://hooks.example.edu/inspera/receivers/grading/confirm-final-grades/production"
    stub.on("GET", SUBS, Reply(body={"subscriptions": many_subscriptions(3, long_endpoint)}))
    term = Terminal(["list"], stub.subprocess_env(tmp_path), columns)
    assert term.exit_code() == 0, term.screen
    rows = [line for line in term.lines if "confirm_final_grades" in line]
    assert len(rows) == 3, term.screen  # one line per subscription: no cell wrapped onto a second
    for row, sid in zip(rows, (1000, 1001, 1002), strict=True):
        assert len(row) <= columns
        assert f" {sid} " in row and "2021-01-29T13:09" in row and "https://hooks.exam" in row
        if columns == 120:
            assert "2021-01-29T13:09:32.287Z" in row
    if columns == 80:
        assert all("…" in row for row in rows)  # the endpoint (and the timestamp) cut, with …
    # piped (here: not a terminal), every value is whole
    assert f"{long_endpoint}/2" in cli("list").stdout


def test_a_tenant_cannot_send_control_characters_to_the_terminal(stub: Any) -> None:
    """A table cell holds data from the tenant: ESC [2J (clear the screen) shows as an escape."""
    hostile = [{"subscriptionId": 1, "event": "confirm_final_grades\x1b[2J",
                "endpoint": "https://h.example/\x1b]0;pwned\x07", "lastModified": None}]
    stub.on("GET", SUBS, Reply(body={"subscriptions": hostile}))
    out = CliRunner().invoke(app, ["list"]).stdout
    assert "\x1b" not in out and "\x07" not in out
    assert "confirm_final_grades\\x1b[2J" in out and "https://h.example/\\x1b]0;pwned\\x07" in out


def test_an_empty_list_on_a_terminal_says_so(cli: Any, stub: Any, tmp_path: Path) -> None:
    term = Terminal(["list"], stub.subprocess_env(tmp_path), 80)
    assert term.exit_code() == 0, term.screen
    assert "No subscriptions." in term.screen and "┏" not in term.screen and "ID" not in term.screen
    # piped (here: not a terminal), an empty list is still its header
    assert cli("list").stdout.split() == ["ID", "EVENT", "ENDPOINT", "LAST", "MODIFIED"]
