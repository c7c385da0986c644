"""Shared fixtures: an isolated home for config and cache, the CLI runner helper, the sandbox."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from inspera_cli.cli import app

# Bytecode caches on for the suite, whatever PYTHONDONTWRITEBYTECODE says (this machine sets it):
# otherwise each xdist worker rewrites and compiles every test module again (3 s of CPU each),
# and each of the ~500 CLI children compiles the package modules it imports. Measured on 2
# cores: about 86 s -> 70 s for the whole suite. The caches go to __pycache__/ (git ignores it).
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def pytest_configure(config: pytest.Config) -> None:
    """The xdist controller imports the test modules (and compiles the package) once, before the
    workers start: pytest rewrites a test module's asserts on import and caches the result in
    __pycache__, so the workers read it instead of each rewriting and compiling everything again
    (a first run: about 1.5 s of CPU per worker)."""
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    import compileall
    import importlib

    import inspera_cli

    compileall.compile_dir(os.path.dirname(inspera_cli.__file__), quiet=1)
    for module in sorted(Path(__file__).parent.glob("test_*.py")):
        importlib.import_module(f"tests.{module.stem}")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On xdist workers: the slow tests first, one at the start of each worker's share in turn.
    `--dist worksteal` hands each worker a contiguous share of this list and steals from the ends
    of the shares, so a slow test near an end ran alone while the other workers had finished.
    The slow tests run at the same time, so a test with a tight time bound is better not marked."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    slow = [item for item in items if item.get_closest_marker("slow")]
    if workers < 2 or not slow:
        return
    rest = iter([item for item in items if not item.get_closest_marker("slow")])
    ordered: list[pytest.Item] = []
    for share in range(workers):  # the shares as worksteal cuts them
        size = (len(items) - len(ordered)) // (workers - share)
        first = slow[share::workers]
        ordered += first + [next(rest) for _ in range(size - len(first))]
    ordered += list(rest)
    items[:] = ordered


@pytest.fixture(autouse=True)
def interpreter_per_child(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test about the process itself (start-up, memory, the entry point) starts each CLI child
    in a new interpreter, never from the fork server (tests/forkserver.py)."""
    if request.node.get_closest_marker("fresh_interpreter"):
        from tests import forkserver

        monkeypatch.setattr(forkserver, "fresh_interpreter", True)


SANDBOX_CLIENT_ID = "sandbox"
SANDBOX_API_KEY = "sandbox-key-for-tests-9f1c"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Config and token cache under tmp_path; no INSPERA_* variables from the developer's shell."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    for name in list(os.environ):
        if name.startswith("INSPERA_") or name == "NO_COLOR":
            monkeypatch.delenv(name)
    return home


@pytest.fixture(autouse=True)
def fresh_redactions() -> Iterator[None]:
    """Each test starts with the secrets registered before it: the registry is process-wide, and a
    secret one test registers (hypothesis draws words of our own code, such as "create") would be
    redacted from every later test's output."""
    from inspera_cli import redaction

    forms, ordered = set(redaction._forms), list(redaction._ordered)
    yield
    with redaction._lock:
        redaction._forms.clear()
        redaction._forms.update(forms)
        redaction._ordered[:] = ordered


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


class Cli:
    """Runs the app in-process; fails loudly (with stderr) on an unexpected exit code."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(
        self,
        *args: str,
        expect: int | None = 0,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Result:
        result = self.runner.invoke(app, list(args), input=input, env=env, catch_exceptions=False)
        out = Result(result.exit_code, result.stdout, result.stderr)
        if expect is not None and out.exit_code != expect:
            pytest.fail(
                f"inspera-hooks {' '.join(args)} exited {out.exit_code}, expected {expect}\n"
                f"--- stdout ---\n{out.stdout}\n--- stderr ---\n{out.stderr}"
            )
        return out


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def sandbox() -> Iterator[Any]:
    """A running sandbox tenant on 127.0.0.1, port 0, fast retries."""
    from inspera_cli.sandbox import Sandbox, SandboxConfig

    sb = Sandbox(
        SandboxConfig(
            port=0,
            client_id=SANDBOX_CLIENT_ID,
            api_key=SANDBOX_API_KEY,
            retry_delay=0.05,
            validation_timeout=2.0,
        )
    )
    sb.start()
    try:
        yield sb
    finally:
        sb.shutdown()


@pytest.fixture
def sandbox_env(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The sandbox, with INSPERA_URL / INSPERA_CLIENT_ID / INSPERA_API_KEY pointing at it."""
    monkeypatch.setenv("INSPERA_URL", sandbox.url)
    monkeypatch.setenv("INSPERA_CLIENT_ID", SANDBOX_CLIENT_ID)
    monkeypatch.setenv("INSPERA_API_KEY", SANDBOX_API_KEY)
    return sandbox


DEFAULT_LISTEN_PORT = 8000


@pytest.fixture
def default_listen_port() -> Iterator[int]:
    """Port 8000, where `listen` receives and `trigger` sends by default: held by one test at a
    time across the test runs on this machine (a file lock), and free when it is handed over."""
    from filelock import FileLock

    lock = FileLock(os.path.join(tempfile.gettempdir(), "inspera-hooks-tests-port-8000.lock"))
    with lock.acquire(timeout=600):
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", DEFAULT_LISTEN_PORT))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail("port 8000 stays in use by a program outside the test suite")
            time.sleep(0.2)
        yield DEFAULT_LISTEN_PORT


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A scripted Inspera-like server, with INSPERA_URL / CLIENT_ID / API_KEY pointing at it."""
    from tests.stub_server import StubInspera

    server = StubInspera()
    monkeypatch.setenv("INSPERA_URL", server.url)
    monkeypatch.setenv("INSPERA_CLIENT_ID", "stub-client")
    monkeypatch.setenv("INSPERA_API_KEY", "stub-api-key-3c9d")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def local_app() -> Iterator[Any]:
    """A local app on 127.0.0.1 that keeps every POST it receives (tests/inspecting.py)."""
    from tests.inspecting import new_local_app

    with new_local_app() as local:
        yield local
