"""`listen --tunnel cloudflared|ngrok` in a subprocess, with the stand-in programs of tests/standins on
PATH and a sandbox tenant that routes the stand-in's public host to the listener (`--resolve`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inspera_cli.sandbox import Sandbox, SandboxConfig
from inspera_cli.tunnel import INSTALL_URLS, command
from tests.conftest import SANDBOX_API_KEY, SANDBOX_CLIENT_ID, Cli
from tests.processes import LineProcess, running_with, standins_first
from tests.receiver import free_port
from tests.test_completion import complete_in_process

EVENT = "confirm_final_grades"
HOSTS = {"cloudflared": "listen-test.trycloudflare.com", "ngrok": "listen-test.ngrok-free.app"}
programs = pytest.mark.parametrize("program", ["cloudflared", "ngrok"])

# `python -m inspera_cli` with the tunnel start timeout and the validation retry window shortened.
LAUNCH = (
    "import sys\n"
    "from inspera_cli import tunnel\n"
    "from inspera_cli import public_session\n"
    "tunnel.START_TIMEOUT = float(sys.argv.pop(1))\n"
    "public_session.TUNNEL_VALIDATION_RETRY = float(sys.argv.pop(1))\n"
    "from inspera_cli.cli import main\n"
    "sys.exit(main())\n"
)


class Listen(LineProcess):
    """`inspera-hooks listen --port PORT ARGS` in a subprocess; stdout and stderr read as lines."""

    def __init__(
        self,
        *args: str,
        port: int = 0,
        env: dict[str, str] | None = None,
        search_path: str = standins_first(os.environ.get("PATH", "")),
        start_timeout: float = 30.0,
        retry_for: float = 20.0,
        debug: bool = False,
    ) -> None:
        knobs = [str(start_timeout), str(retry_for), *(["--debug"] if debug else [])]
        super().__init__(
            [sys.executable, "-c", LAUNCH, *knobs, "listen", "--port", str(port), *args],
            {**os.environ, "PATH": search_path, **(env or {})},
        )

    def wait_for(self, text: str) -> bool:
        return self.wait(lambda: text in self.err_text)


@contextlib.contextmanager
def tenant(resolve: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """A sandbox that routes each public host to a local port; INSPERA_* point at it."""
    config = SandboxConfig(
        port=0,
        client_id=SANDBOX_CLIENT_ID,
        api_key=SANDBOX_API_KEY,
        retry_delay=0.05,
        validation_timeout=2.0,
        resolve={host: ("127.0.0.1", port) for host, port in resolve.items()},
    )
    with Sandbox(config) as sandbox:
        monkeypatch.setenv("INSPERA_URL", sandbox.url)
        monkeypatch.setenv("INSPERA_CLIENT_ID", SANDBOX_CLIENT_ID)
        monkeypatch.setenv("INSPERA_API_KEY", SANDBOX_API_KEY)
        yield sandbox


@pytest.fixture
def tenant_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    with tenant({}, monkeypatch) as sandbox:
        yield sandbox


def standin_pid(info: Path) -> int:
    pid = json.loads(info.read_text())["pid"]
    assert isinstance(pid, int)
    return pid


def gone(pid: int) -> bool:
    """No such process, or one that has exited and waits to be reaped by whoever adopted it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a parent-death signal is Linux's")
def test_the_tunnel_ends_with_listen_even_when_listen_is_killed(tmp_path: Path) -> None:
    """SIGKILL (an impatient `kill -9`, the OOM killer) runs none of listen's cleanup; the tunnel
    program it started must not stay behind, still forwarding to a port nobody listens on."""
    with Listen("--tunnel", "cloudflared", env=standin_env(tmp_path, "cloudflared")) as lp:
        assert lp.wait_for("Public URL:"), lp.err_text
        pid = standin_pid(tmp_path / "standin.json")
        assert not gone(pid)
        lp.proc.kill()
        lp.proc.wait(10)
        deadline = time.monotonic() + 10
        while not gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(pid)


def standin_env(tmp_path: Path, program: str, **extra: str) -> dict[str, str]:
    return {"STANDIN_HOST": HOSTS[program], "STANDIN_INFO_FILE": str(tmp_path / "standin.json"), **extra}


@programs
def test_tunnel_subscribes_its_public_url_and_everything_ends_on_sigterm(
    program: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    public_url = f"https://{HOSTS[program]}/hooks"
    with tenant({HOSTS[program]: port}, monkeypatch) as sandbox:
        with Listen(
            "--tunnel",
            program,
            "--subscribe",
            EVENT,
            "--path",
            "/hooks",
            "--json",
            port=port,
            env=standin_env(tmp_path, program),
        ) as lp:
            assert lp.wait_for("Subscribed:"), lp.err_text
            assert f"Public URL: {public_url}" in lp.stderr
            info = json.loads((tmp_path / "standin.json").read_text())
            assert info["argv"] == command(program, port)[1:]
            pid = standin_pid(tmp_path / "standin.json")
            assert not gone(pid)
            live = sandbox.subscriptions()
            assert [(s["event"], s["endpoint"]) for s in live] == [(EVENT, public_url)]
            assert "Waiting for the tunnel" not in lp.err_text

            sandbox.fire(EVENT, 4242)  # delivered through the "tunnel", signed with the fresh secret
            assert lp.wait(lambda: any(json.loads(line)["contextObjectId"] == 4242 for line in lp.stdout))
            assert lp.finish(signal.SIGTERM) == 0
        assert sandbox.subscriptions() == []
    items = [json.loads(line) for line in lp.stdout]
    assert [(i["event"], i["signature"], i["status"]) for i in items] == [
        ("verification", "valid", 200),
        (EVENT, "valid", 200),
    ]
    assert f"Deleted subscription {live[0]['subscriptionId']}" in lp.err_text
    assert gone(pid)


class _Forwarder(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, target: int) -> None:
        self.target = target
        super().__init__(("127.0.0.1", port), _Relay)


@contextlib.contextmanager
def relay(port: int, target: int) -> Iterator[None]:
    """A TCP relay from one local port to another: the moment the tunnel starts carrying traffic."""
    server = _Forwarder(port, target)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _Relay(socketserver.BaseRequestHandler):
    server: _Forwarder

    def handle(self) -> None:
        with socket.create_connection(("127.0.0.1", self.server.target), timeout=10) as upstream:
            back = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
            back.start()
            _pipe(self.request, upstream)
            back.join(10)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


def test_a_refused_validation_is_retried_until_the_tunnel_carries_traffic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    port, relay_port = free_port(), free_port()
    host = HOSTS["cloudflared"]
    with (
        tenant({host: relay_port}, monkeypatch) as sandbox,
        Listen(
            "--tunnel",
            "cloudflared",
            "--subscribe",
            EVENT,
            port=port,
            env=standin_env(tmp_path, "cloudflared"),
        ) as lp,
    ):
        assert lp.wait_for("Waiting for the tunnel to carry traffic"), lp.err_text
        assert "endpoint validation failed" in lp.err_text  # nothing listens on the relay port yet
        assert sandbox.subscriptions() == []
        with relay(relay_port, port):
            assert lp.wait_for("Subscribed:"), lp.err_text
            assert [s["endpoint"] for s in cli("list", "--json").json] == [f"https://{host}/"]
            assert lp.finish(signal.SIGTERM) == 0
        assert cli("list", "--json").json == []
    assert lp.err_text.count("Waiting for the tunnel") == 1
    assert gone(standin_pid(tmp_path / "standin.json"))


def test_the_retry_gives_up_and_the_tunnel_still_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    with (
        tenant({HOSTS["ngrok"]: free_port()}, monkeypatch),
        Listen(
            "--tunnel", "ngrok", "--subscribe", EVENT, retry_for=1.5, env=standin_env(tmp_path, "ngrok")
        ) as lp,
    ):
        assert lp.finish() == 1
    assert "Waiting for the tunnel to carry traffic" in lp.err_text
    assert "endpoint validation failed" in lp.err_text and "still refused after 1.5 s" in lp.err_text
    assert time.monotonic() - started < 10
    assert gone(standin_pid(tmp_path / "standin.json"))


def test_without_tunnel_a_refused_create_is_not_retried(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    with tenant({}, monkeypatch):
        closed = free_port()
        result = cli(
            "listen",
            "--port",
            "0",
            "--subscribe",
            EVENT,
            "--public-url",
            f"http://127.0.0.1:{closed}/",
            expect=1,
        )
    assert "endpoint validation failed" in result.stderr
    assert "Waiting for the tunnel" not in result.stderr


@programs
def test_a_missing_program_names_what_to_install(cli: Cli, program: str, tmp_path: Path) -> None:
    """In-process; the real program's exit 1 when a tunnel cannot start: the tests below."""
    stopped = cli("listen", "--port", "0", "--tunnel", program, "--max-time", "5",
                  env={"PATH": str(tmp_path)}, expect=1)
    assert f"{program} is not installed" in stopped.stderr
    assert INSTALL_URLS[program] in stopped.stderr


@programs
def test_a_silent_program_is_the_documented_error(program: str, tmp_path: Path) -> None:
    env = standin_env(tmp_path, program, STANDIN_MODE="silent")
    with Listen("--tunnel", program, start_timeout=0.5, env=env) as lp:
        assert lp.finish() == 1
    assert f"{program} printed no public URL within 0.5 s" in lp.err_text
    assert INSTALL_URLS[program] in lp.err_text
    assert "Public URL:" not in lp.err_text
    # 0.5 s may end before the stand-in's Python has started: find it by its environment.
    assert running_with(env["STANDIN_INFO_FILE"]) == []


def test_an_early_exit_says_why_and_debug_shows_the_programs_output(tmp_path: Path) -> None:
    env = standin_env(tmp_path, "ngrok", STANDIN_MODE="exit")
    with Listen("--tunnel", "ngrok", env=env, debug=True) as lp:
        assert lp.finish() == 1
    assert "ngrok exited with status 1 before it printed a public URL: authentication failed" in lp.err_text
    assert "debug: ngrok: " in lp.err_text and '"msg":"starting web service"' in lp.err_text


def test_without_subscribe_the_url_is_shown_and_timeout_stops_the_tunnel(tmp_path: Path) -> None:
    with Listen(
        "--max-time", "0.5", "--tunnel", "cloudflared", env=standin_env(tmp_path, "cloudflared")
    ) as lp:
        assert lp.finish() == 0
    assert "Public URL: https://listen-test.trycloudflare.com/" in lp.stderr
    assert "debug:" not in lp.err_text  # the program's output only with --debug
    assert gone(standin_pid(tmp_path / "standin.json"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--tunnel", "ngrok", "--public-url", "https://x.example/"],
            "--tunnel and --public-url are exclusive",
        ),
        (["--tunnel", "localtunnel"], "'--tunnel'"),
        (["--tunnel", "ngrok", "--host", "192.0.2.1"], "--tunnel forwards to 127.0.0.1"),
        (
            ["--tunnel", "ngrok", "--tls-cert", "pyproject.toml", "--tls-key", "pyproject.toml"],
            "drop --tls-cert",
        ),
        (["--subscribe", EVENT], "or --tunnel cloudflared|ngrok"),
    ],
)
def test_usage_errors_exit_2(cli: Cli, args: list[str], message: str) -> None:
    result = cli("listen", "--port", "0", "--max-time", "1", *args, expect=2)
    assert message in result.stderr


def test_event_names_complete_for_events_and_subscribe(tenant_env: Sandbox) -> None:
    names = sorted(tenant_env.events)
    assert complete_in_process("inspera-hooks listen --subscribe ").stdout.split() == names
    listed = complete_in_process(f"inspera-hooks listen --events {EVENT},").stdout.split()
    assert listed == [f"{EVENT},{name}" for name in names if name != EVENT]
    assert complete_in_process("inspera-hooks listen --tunnel ").stdout.split() == ["cloudflared", "ngrok"]
