"""tunnel.py against stand-in `cloudflared` and `ngrok` executables (tests/standins) on PATH."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from inspera_cli.errors import ExitCode, UsageError
from inspera_cli.tunnel import INSTALL_URLS, Tunnel, TunnelError, command, error_in, public_url_in
from tests.processes import running_with, standins_first

PUBLIC = {
    "cloudflared": "https://quiet-river-example-tunnel.trycloudflare.com",
    "ngrok": "https://1a2b-203-0-113-7.ngrok-free.app",
}
programs = pytest.mark.parametrize("program", ["cloudflared", "ngrok"])


@pytest.fixture
def info_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-ins on PATH; each writes its argv and pid to the returned file."""
    monkeypatch.setenv("PATH", standins_first(os.environ.get("PATH", "")))
    path = tmp_path / "standin.json"
    monkeypatch.setenv("STANDIN_INFO_FILE", str(path))
    return path


def standin_info(path: Path) -> dict[str, object]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def assert_gone(pid: object) -> None:
    assert isinstance(pid, int)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@programs
def test_start_reads_the_public_url_and_stop_ends_the_program(program: str, info_file: Path) -> None:
    with Tunnel.start(program, 8123) as tunnel:
        assert tunnel.public_url == PUBLIC[program]
        assert tunnel.running
        info = standin_info(info_file)
        assert info["pid"] == tunnel.pid
        assert info["argv"] == command(program, 8123)[1:]
    assert not tunnel.running
    assert_gone(info["pid"])
    tunnel.stop()  # a second stop is harmless


def test_the_commands_are_the_documented_ones() -> None:
    assert command("cloudflared", 8000) == ["cloudflared", "tunnel", "--url", "http://127.0.0.1:8000"]
    assert command("ngrok", 8000) == ["ngrok", "http", "8000", "--log", "stdout", "--log-format", "json"]


@programs
def test_the_program_is_stopped_when_the_block_raises(program: str, info_file: Path) -> None:
    with pytest.raises(RuntimeError), Tunnel.start(program, 8000):
        raise RuntimeError("listen failed")
    assert_gone(standin_info(info_file)["pid"])


@programs
def test_a_program_that_ignores_sigterm_is_killed(
    program: str, info_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_IGNORE_TERM", "1")
    tunnel = Tunnel.start(program, 8000)
    tunnel.stop(timeout=0.3)
    assert tunnel.process.returncode == -9
    assert_gone(tunnel.pid)


@programs
def test_missing_program_names_what_to_install(
    program: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TunnelError, match=f"{program} is not installed") as caught:
        Tunnel.start(program, 8000)
    assert INSTALL_URLS[program] in str(caught.value)
    assert caught.value.exit_code == ExitCode.FAILURE


@programs
def test_silent_program_times_out_and_is_stopped(
    program: str, info_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_MODE", "silent")
    with pytest.raises(TunnelError, match=rf"{program} printed no public URL within 0.3 s") as caught:
        Tunnel.start(program, 8000, timeout=0.3)
    assert INSTALL_URLS[program] in str(caught.value)
    # Under load 0.3 s may end before the stand-in's Python has started: look for the process by
    # its environment, not by the pid it writes once it runs.
    assert running_with(str(info_file)) == []


@pytest.mark.parametrize(
    ("program", "cause"),
    [
        ("cloudflared", "failed to request quick Tunnel"),
        ("ngrok", "authentication failed: Usage of ngrok requires a verified account and authtoken"),
    ],
)
def test_early_exit_says_why_and_what_to_install(
    program: str, cause: str, info_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_MODE", "exit")
    expected = f"{program} exited with status 1 before it printed a public URL"
    with pytest.raises(TunnelError, match=expected) as caught:
        Tunnel.start(program, 8000)
    message = str(caught.value)
    assert cause in message
    assert INSTALL_URLS[program] in message
    assert "ERR " not in message  # the log prefix is stripped
    assert_gone(standin_info(info_file)["pid"])


@programs
def test_the_program_output_goes_to_the_debug_log(
    program: str, info_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="inspera_cli.tunnel"), Tunnel.start(program, 8000) as tunnel:
        pass
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "inspera_cli.tunnel")
    assert tunnel.public_url in logged
    assert f"{program}: " in logged
    assert tunnel.output()  # the last lines are kept for error messages


def test_unknown_program_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown tunnel program 'localtunnel'"):
        Tunnel.start("localtunnel", 8000)


def test_cloudflared_url_is_read_from_the_box_only() -> None:
    disclaimer = (
        "2024-08-01T10:00:00Z INF Thank you for trying Cloudflare Tunnel. ... Terms of Use "
        "(https://www.cloudflare.com/website-terms/), and ... https://developers.cloudflare.com/x"
    )
    assert public_url_in("cloudflared", disclaimer) is None
    assert public_url_in("cloudflared", "2024-08-01T10:00:00Z INF +-----------------+") is None
    box = "2024-08-01T10:00:00Z INF |  https://seasonal-deck-organisms-sf.trycloudflare.com        |"
    assert public_url_in("cloudflared", box) == "https://seasonal-deck-organisms-sf.trycloudflare.com"


def test_ngrok_url_is_read_from_the_started_tunnel_record_only() -> None:
    started = (
        '{"addr":"http://localhost:8000","lvl":"info","msg":"started tunnel","name":"command_line",'
        '"obj":"tunnels","t":"2024-08-01T10:00:00+0000","url":"https://ab12-203-0-113-7.ngrok-free.app"}'
    )
    assert public_url_in("ngrok", started) == "https://ab12-203-0-113-7.ngrok-free.app"
    assert public_url_in("ngrok", started.replace("https://", "tcp://")) is None
    web = '{"lvl":"info","msg":"starting web service","addr":"127.0.0.1:4040"}'
    assert public_url_in("ngrok", web) is None
    assert public_url_in("ngrok", "not json at all") is None


def test_error_lines_are_recognised() -> None:
    assert error_in("ngrok", '{"lvl":"info","msg":"open config file","err":"<nil>"}') is None
    assert error_in("ngrok", '{"lvl":"eror","msg":"session closing","err":"boom"}') == "boom"
    assert error_in("cloudflared", "2024-08-01T10:00:00Z ERR failed to dial") == "failed to dial"
    assert error_in("cloudflared", "2024-08-01T10:00:00Z INF Registered tunnel connection") is None
